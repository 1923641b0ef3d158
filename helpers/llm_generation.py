"""Batched generation with any Hugging Face causal LM and a KV cache, for reasoning experiments.

:func:`generate` returns, for every completion, its text, its generated-token count, the sum
of the model's own log-probabilities of those tokens (temperature 1, before any filtering)
and why it stopped (``eos``, ``newline``, ``answer`` — a closed ``\\boxed{}`` — or
``length``); the token prefix shared by every prompt is read once, and finished rows leave the
batch at once. :func:`continue_generation` resumes completions from their kept key/value
caches (:class:`DecodeState`), so a step-wise search never reads its text twice.
:func:`sample_next` draws top-k / nucleus samples without sorting the whole vocabulary;
:func:`chat_prompt` formats a few-shot chat prompt; :func:`measure_throughput` times
generation per batch size. (Decoding of the course's own character and sequence models is in
:mod:`helpers.generation`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from helpers.generation import filter_logits
from helpers.nb import runtime


@dataclass
class Completion:
    """One generated continuation: ``n_tokens`` generated tokens (the stop token included),
    ``logprob`` their summed log-probability under the model, ``finish`` the stop reason,
    ``token_ids`` the generated ids; ``state`` what :func:`continue_generation` needs (kept on
    request)."""

    text: str
    n_tokens: int
    logprob: float
    finish: str  # "eos" | "newline" | "answer" | "length"
    token_ids: tuple[int, ...] = ()
    state: DecodeState | None = field(default=None, repr=False, compare=False)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.n_tokens, 1)


def newline_token_ids(tokenizer) -> Tensor:
    """Ids of every vocabulary token whose text contains a line break, ``(n,)``."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))],
                                    skip_special_tokens=False)
    return torch.tensor([i for i, piece in enumerate(pieces) if "\n" in piece],
                        dtype=torch.long)


def sample_next(logits: Tensor, top_p: float | None = None, top_k: int | None = None,
                generator: torch.Generator | None = None, shortlist: int = 64) -> Tensor:
    """One token per row from ``softmax(logits)`` restricted to the top-k and the nucleus of
    mass ``top_p`` (as :func:`helpers.generation.filter_logits`), ``(rows, vocab) -> (rows,)``.

    Rows whose nucleus lies within their ``shortlist`` most likely tokens are sampled from
    that shortlist (the same distribution, without sorting the whole vocabulary); the
    others fall back to the full filter.
    """
    rows = len(logits)
    small_top_k = top_k is not None and 0 < top_k <= shortlist
    k = min(top_k if small_top_k else shortlist, logits.shape[-1])
    values, index = logits.topk(k, dim=-1)  # (rows, k), most likely first
    if small_top_k:  # the shortlist is the whole top-k set
        base_lse = values.logsumexp(-1)
    else:
        base = filter_logits(logits, top_k) if top_k else logits
        base_lse = base.logsumexp(-1)
    probs = (values - base_lse[:, None]).exp()  # the shortlist's probabilities, (rows, k)
    nucleus = top_p is not None and top_p < 1.0
    if small_top_k:
        covered = torch.ones(rows, dtype=torch.bool, device=logits.device)
        if nucleus:
            probs = probs / probs.sum(-1, keepdim=True)
    else:
        covered = probs.sum(-1) >= top_p if nucleus else torch.zeros(
            rows, dtype=torch.bool, device=logits.device)
    if nucleus:  # as filter_logits: drop tokens once the mass before them reaches top_p
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)
    next_ids = torch.empty(rows, dtype=torch.long, device=logits.device)
    if covered.any():
        drawn = torch.multinomial(probs[covered], 1, generator=generator)
        next_ids[covered] = index[covered].gather(-1, drawn).squeeze(-1)
    if not covered.all():
        full = filter_logits(logits[~covered], top_k, top_p).softmax(-1)
        next_ids[~covered] = torch.multinomial(full, 1, generator=generator).squeeze(-1)
    return next_ids


def _stop_ids(tokenizer) -> list[int]:
    eos = tokenizer.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return [i for i in ids if i is not None]


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix shared by every row, leaving each row at least one token."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


@dataclass
class DecodeState:
    """What a finished completion needs to be continued without reading its text again: its
    key/value cache (one ``(kv_heads, L, head_dim)`` pair per layer), the attention mask of
    those ``L`` positions (0 on padding), the position of the next token and that token
    (``pending``: chosen by the model, not yet read)."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    mask: Tensor
    position: int
    pending: int


@dataclass
class _Decoding:
    """The decoding settings shared by every batch of one call."""

    max_new_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    is_newline: Tensor
    generator: torch.Generator | None
    stop_at_answer: bool
    keep_states: bool


def _prompt_batch(rows: Sequence[Sequence[int]], prefix_cache, prefix_len: int, pad: int,
                  device) -> tuple[object, Tensor, Tensor, Tensor]:
    """``(cache, ids, mask, positions)`` to read prompt rows (ids after the shared prefix whose
    cache is ``prefix_cache``), left-padded: the padding sits between prefix and row."""
    import copy

    from transformers import DynamicCache

    n, width = len(rows), max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    mask = torch.cat([torch.ones(n, prefix_len, dtype=mask.dtype, device=device), mask], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
    if prefix_len:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
    else:
        cache = DynamicCache()
    return cache, ids, mask, positions


def _state_batch(states: Sequence[DecodeState], device) -> tuple[object, Tensor, Tensor, Tensor]:
    """``(cache, ids, mask, positions)`` to continue ``states``: their caches left-padded to the
    longest and stacked, the pending tokens as the ids to read."""
    from transformers import DynamicCache

    length = max(len(s.mask) for s in states)
    layers = []
    for layer in range(len(states[0].keys)):
        pair = []
        for kind in ("keys", "values"):
            first = getattr(states[0], kind)[layer]  # (kv_heads, L, head_dim)
            stacked = first.new_zeros(len(states), first.shape[0], length, first.shape[2])
            for i, state in enumerate(states):
                part = getattr(state, kind)[layer]
                stacked[i, :, length - part.shape[1]:] = part
            pair.append(stacked)
        layers.append(tuple(pair))
    mask = torch.zeros(len(states), length + 1, dtype=torch.long, device=device)
    for i, state in enumerate(states):
        mask[i, length - len(state.mask):length] = state.mask
    mask[:, -1] = 1  # the pending token
    ids = torch.tensor([[s.pending] for s in states], device=device)
    positions = torch.tensor([[s.position] for s in states], device=device)
    return DynamicCache(ddp_cache_data=layers), ids, mask, positions


@torch.inference_mode()
def _decode(model: nn.Module, tokenizer, cache, step_ids: Tensor, mask: Tensor,
            step_pos: Tensor, repeats: int, settings: _Decoding) -> list[Completion]:
    """``repeats`` continuations of every row of a batch about to read ``step_ids (n, w)``
    (positions ``step_pos``, ``mask`` covering the cache and these ids), in row-major order.
    The rows are read once and their caches then repeated; finished rows leave the batch."""
    from helpers.answer_grading import last_boxed

    device = step_ids.device
    stop = torch.tensor(_stop_ids(tokenizer), device=device)
    n = len(step_ids) * repeats
    alive = torch.arange(n, device=device)  # original row of every batch row
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs = [0.0] * n
    finish = ["length"] * n
    states: list[DecodeState | None] = [None] * n
    texts = [""] * n  # decoded so far, kept only with stop_at_answer
    pieces: dict[int, str] = {}  # token id -> its text
    for step in range(settings.max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                    cache=cache, use_cache=True, logits_to_keep=1)  # no logits for the prompt
        cache = out.cache
        logits = out.logits[:, -1, :].float()  # (rows, vocab)
        if step == 0 and repeats > 1:  # the prompt was read once; now one row per sample
            cache.batch_repeat_interleave(repeats)
            logits, mask, step_pos = (t.repeat_interleave(repeats, 0)
                                      for t in (logits, mask, step_pos))
        if settings.temperature <= 0:
            next_ids = logits.argmax(-1)
        else:
            next_ids = sample_next(logits / settings.temperature, settings.top_p, settings.top_k,
                                   settings.generator)
        chosen = logits.log_softmax(-1).gather(-1, next_ids[:, None]).squeeze(-1)
        done = torch.isin(next_ids, stop)
        newline = settings.is_newline[next_ids] & ~done
        answered = torch.zeros_like(done)
        for row, (original, tok, lp) in enumerate(zip(alive.tolist(), next_ids.tolist(),
                                                      chosen.tolist(), strict=True)):
            tokens[original].append(tok)
            logprobs[original] += lp
            if done[row]:
                finish[original] = "eos"
            elif newline[row]:
                finish[original] = "newline"
            elif settings.stop_at_answer:
                piece = pieces.get(tok)
                if piece is None:
                    piece = pieces[tok] = tokenizer.decode([tok])
                texts[original] += piece
                if "}" in piece and last_boxed(texts[original]) is not None:
                    finish[original] = "answer"
                    answered[row] = True
        keep = ~(done | newline | answered)
        if step == settings.max_new_tokens - 1:
            keep[:] = False
        if settings.keep_states:  # the cache holds every token read; the new one is pending
            for row in (~keep).nonzero().squeeze(-1).tolist():
                states[int(alive[row])] = DecodeState(
                    tuple(layer.keys[row].clone() for layer in cache.layers),
                    tuple(layer.values[row].clone() for layer in cache.layers),
                    mask[row].clone(), int(step_pos[row, -1]) + 1, int(next_ids[row]))
        if not keep.any():
            break
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype, device=device)], 1)
        step_ids = next_ids[:, None]
        if not keep.all():  # finished rows leave the batch and its cache
            index = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(index)
            alive, mask, step_pos, step_ids = (alive[index], mask[index], step_pos[index],
                                               step_ids[index])
    completions = []
    for row in range(n):
        ids = tokens[row][:-1] if finish[row] == "eos" else tokens[row]
        completions.append(Completion(tokenizer.decode(ids, skip_special_tokens=True),
                                      len(tokens[row]), logprobs[row], finish[row],
                                      tuple(tokens[row]), states[row]))
    return completions


def _settings(model: nn.Module, tokenizer, max_new_tokens: int, num_samples: int,
              batch_size: int, temperature: float, top_p: float | None, top_k: int | None,
              stop_at_newline: bool, newline_ids: Tensor | None, generator,
              stop_at_answer: bool, keep_states: bool) -> _Decoding:
    if max_new_tokens < 1 or num_samples < 1 or batch_size < 1:
        raise ValueError("max_new_tokens, num_samples and batch_size must be positive")
    device = next(model.parameters()).device
    vocab = max(len(tokenizer), getattr(model.config, "vocab_size", 0) or 0)  # padded heads
    is_newline = torch.zeros(vocab, dtype=torch.bool, device=device)
    if stop_at_newline:
        ids = newline_ids if newline_ids is not None else newline_token_ids(tokenizer)
        is_newline[ids.to(device)] = True
    return _Decoding(max_new_tokens, temperature, top_p, top_k, is_newline, generator,
                     stop_at_answer, keep_states)


def _in_batches(lengths: Sequence[int], num_samples: int, batch_size: int, desc: str | None,
                run) -> list[list[Completion]]:
    """``run(indices)`` over chunks of ``batch_size // num_samples`` items, longest first (less
    padding, and rows of a batch finish at similar times); results as ``[item][sample]``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    per_batch = max(1, batch_size // num_samples)
    results: list[list[Completion]] = [[] for _ in lengths]
    starts = range(0, len(order), per_batch)
    for start in runtime.progress(starts, desc) if desc else starts:
        chunk = order[start:start + per_batch]
        done = run(chunk)
        for j, i in enumerate(chunk):
            results[i] = done[j * num_samples:(j + 1) * num_samples]
    return results


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 0.0, top_p: float | None = None,
             top_k: int | None = None, stop_at_newline: bool = False,
             stop_at_answer: bool = False, batch_size: int = 16,
             generator: torch.Generator | None = None, newline_ids: Tensor | None = None,
             keep_states: bool = False, desc: str | None = None) -> list[list[Completion]]:
    """``num_samples`` completions of every prompt (``temperature`` 0: greedy).

    Prompts are already formatted text (see :func:`chat_prompt`). The token prefix shared by
    all prompts (the system prompt and worked examples) is run through the model once and its
    KV cache reused by every row; the rest is left-padded and generated ``batch_size`` rows
    at a time. With ``stop_at_newline`` a completion ends after the first token containing a
    line break (one reasoning step); pass ``newline_ids`` (from :func:`newline_token_ids`) to
    avoid recomputing them. With ``stop_at_answer`` a completion ends at the brace that closes
    its first complete ``\\boxed{...}`` (finish ``answer``): tokens after the final answer
    cost time and change nothing. With ``keep_states`` every completion carries its
    :class:`DecodeState`, for :func:`continue_generation`. ``desc`` shows a progress bar over
    the batches. Returns ``[prompt][sample]``.
    """
    settings = _settings(model, tokenizer, max_new_tokens, num_samples, batch_size, temperature,
                         top_p, top_k, stop_at_newline, newline_ids, generator, stop_at_answer,
                         keep_states)
    if not prompts:
        return []
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prefix_len = _common_prefix_length(encoded)
    prefix_cache = None
    if prefix_len:
        with torch.inference_mode():
            prefix_cache = model(input_ids=torch.tensor([encoded[0][:prefix_len]], device=device),
                                 use_cache=True, logits_to_keep=1).cache
    rows = [ids[prefix_len:] for ids in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def run(chunk):
        batch = _prompt_batch([rows[i] for i in chunk], prefix_cache, prefix_len, pad, device)
        return _decode(model, tokenizer, *batch, num_samples, settings)

    return _in_batches([len(r) for r in rows], num_samples, batch_size, desc, run)


def continue_generation(model: nn.Module, tokenizer, states: Sequence[DecodeState], *,
                        max_new_tokens: int, num_samples: int = 1, temperature: float = 0.0,
                        top_p: float | None = None, top_k: int | None = None,
                        stop_at_newline: bool = False, stop_at_answer: bool = False,
                        batch_size: int = 16, generator: torch.Generator | None = None,
                        newline_ids: Tensor | None = None, keep_states: bool = False,
                        desc: str | None = None) -> list[list[Completion]]:
    """``num_samples`` continuations of every :class:`DecodeState` (from a completion made with
    ``keep_states``), as :func:`generate` would have produced had it not stopped: the cached
    keys and values are reused, nothing is read twice. Same options; ``[state][sample]``."""
    settings = _settings(model, tokenizer, max_new_tokens, num_samples, batch_size, temperature,
                         top_p, top_k, stop_at_newline, newline_ids, generator, stop_at_answer,
                         keep_states)
    if not states:
        return []
    device = next(model.parameters()).device

    def run(chunk):
        batch = _state_batch([states[i] for i in chunk], device)
        return _decode(model, tokenizer, *batch, num_samples, settings)

    return _in_batches([len(s.mask) for s in states], num_samples, batch_size, desc, run)


def chat_prompt(tokenizer, user: str, system: str | None = None,
                examples: Sequence[tuple[str, str]] = (), assistant_prefix: str = "") -> str:
    """The model's chat template applied to ``examples`` (worked (question, answer) turns, a
    few-shot prompt) and one user turn, ready for the assistant's reply, followed by
    ``assistant_prefix`` (a partial answer to continue). Tokenizers without a template get a
    plain ``Question:/Answer:`` layout."""
    turns = [*examples, (user, None)]
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        for question, answer in turns:
            messages.append({"role": "user", "content": question})
            if answer is not None:
                messages.append({"role": "assistant", "content": answer})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = (f"{system}\n\n" if system else "") + "".join(
            f"Question: {q}\nAnswer: " + (f"{a}\n\n" if a is not None else "") for q, a in turns)
    return text + assistant_prefix


def measure_throughput(model: nn.Module, tokenizer, prompt: str, batch_sizes: Sequence[int],
                       new_tokens: int, temperature: float = 0.7, top_p: float | None = 0.95,
                       generator: torch.Generator | None = None) -> list[dict[str, float]]:
    """Generated tokens per second of :func:`generate` when ``batch`` samples of one
    ``prompt`` (read once) are decoded together for up to ``new_tokens`` tokens, for every
    batch size: one row per size with ``tokens``, wall ``seconds``, ``cpu_seconds`` (all
    threads) and ``tokens_per_s`` (tokens / wall seconds)."""
    from helpers.nb.runtime import measure_cost

    device = next(model.parameters()).device
    rows = []
    for batch in batch_sizes:
        with measure_cost(device) as cost:
            (samples,) = generate(model, tokenizer, [prompt], max_new_tokens=new_tokens,
                                  num_samples=batch, temperature=temperature, top_p=top_p,
                                  batch_size=batch, generator=generator)
        tokens = sum(c.n_tokens for c in samples)
        rows.append({"batch": batch, "tokens": tokens, "seconds": cost.seconds,
                     "cpu_seconds": cost.cpu_seconds, "tokens_per_s": tokens / cost.seconds})
    return rows
