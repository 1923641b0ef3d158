"""Batched generation with any Hugging Face causal LM and a KV cache, for reasoning experiments.

:func:`generate` returns, for every completion, its text, its generated-token count, the sum
of the model's own log-probabilities of those tokens (temperature 1, before any filtering)
and why it stopped (``eos``, ``newline`` or ``length``); the token prefix shared by every
prompt is read once, and finished rows leave the batch at once. :func:`sample_next` draws
top-k / nucleus samples without sorting the whole vocabulary; :func:`chat_prompt` formats a
few-shot chat prompt. (Decoding of the course's own character and sequence models is in
:mod:`helpers.generation`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from helpers.generation import filter_logits
from helpers.nb import runtime


@dataclass
class Completion:
    """One generated continuation: ``n_tokens`` generated tokens (the stop token included),
    ``logprob`` their summed log-probability under the model, ``finish`` the stop reason,
    ``token_ids`` the generated ids."""

    text: str
    n_tokens: int
    logprob: float
    finish: str  # "eos" | "newline" | "length"
    token_ids: tuple[int, ...] = ()

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.n_tokens, 1)


def newline_token_ids(tokenizer) -> Tensor:
    """Ids of every vocabulary token whose text contains a line break, ``(n,)``."""
    ids = [i for i in range(len(tokenizer))
           if "\n" in tokenizer.decode([i], skip_special_tokens=False)]
    return torch.tensor(ids, dtype=torch.long)


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


@torch.inference_mode()
def _generate_batch(model: nn.Module, tokenizer, rows: Sequence[Sequence[int]], prefix_cache,
                    prefix_len: int, repeats: int, max_new_tokens: int, temperature: float,
                    top_p: float | None, top_k: int | None, is_newline: Tensor,
                    generator: torch.Generator | None) -> list[Completion]:
    """``repeats`` continuations of every row of ``rows`` (prompt ids after the shared prefix
    whose KV cache is ``prefix_cache``), in row-major order. Rows are left-padded (padding
    sits between prefix and row) and read once; their caches are then repeated."""
    import copy

    from transformers import DynamicCache

    device = next(model.parameters()).device
    n, width = len(rows), max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    step_ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    mask = torch.cat([torch.ones(n, prefix_len, dtype=mask.dtype, device=device), mask], 1)
    step_pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
    if prefix_len:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
    else:
        cache = DynamicCache()
    stop = torch.tensor(_stop_ids(tokenizer), device=device)
    n *= repeats
    alive = torch.arange(n, device=device)  # original row of every batch row
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs = [0.0] * n
    finish = ["length"] * n
    for step in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                    cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1, :].float()  # (rows, vocab)
        if step == 0 and repeats > 1:  # the prompt was read once; now one row per sample
            cache.batch_repeat_interleave(repeats)
            logits, mask, step_pos = (t.repeat_interleave(repeats, 0)
                                      for t in (logits, mask, step_pos))
        if temperature <= 0:
            next_ids = logits.argmax(-1)
        else:
            next_ids = sample_next(logits / temperature, top_p, top_k, generator)
        chosen = logits.log_softmax(-1).gather(-1, next_ids[:, None]).squeeze(-1)
        done = torch.isin(next_ids, stop)
        newline = is_newline[next_ids] & ~done
        for row, (original, tok, lp) in enumerate(zip(alive.tolist(), next_ids.tolist(),
                                                      chosen.tolist(), strict=True)):
            tokens[original].append(tok)
            logprobs[original] += lp
            if done[row]:
                finish[original] = "eos"
            elif newline[row]:
                finish[original] = "newline"
        keep = ~(done | newline)
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
                                      tuple(tokens[row])))
    return completions


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 0.0, top_p: float | None = None,
             top_k: int | None = None, stop_at_newline: bool = False, batch_size: int = 16,
             generator: torch.Generator | None = None, newline_ids: Tensor | None = None,
             desc: str | None = None) -> list[list[Completion]]:
    """``num_samples`` completions of every prompt (``temperature`` 0: greedy).

    Prompts are already formatted text (see :func:`chat_prompt`). The token prefix shared by
    all prompts (the system prompt and worked examples) is run through the model once and its
    KV cache reused by every row; the rest is left-padded and generated ``batch_size`` rows
    at a time. With ``stop_at_newline`` a completion ends after the first token containing a
    line break (one reasoning step); pass ``newline_ids`` (from :func:`newline_token_ids`) to
    avoid recomputing them. ``desc`` shows a progress bar over the batches. Returns
    ``[prompt][sample]``.
    """
    if max_new_tokens < 1 or num_samples < 1 or batch_size < 1:
        raise ValueError("max_new_tokens, num_samples and batch_size must be positive")
    if not prompts:
        return []
    device = next(model.parameters()).device
    vocab = max(len(tokenizer), getattr(model.config, "vocab_size", 0) or 0)  # padded heads
    is_newline = torch.zeros(vocab, dtype=torch.bool, device=device)
    if stop_at_newline:
        ids = newline_ids if newline_ids is not None else newline_token_ids(tokenizer)
        is_newline[ids.to(device)] = True
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prefix_len = _common_prefix_length(encoded)
    prefix_cache = None
    if prefix_len:
        with torch.inference_mode():
            prefix_cache = model(input_ids=torch.tensor([encoded[0][:prefix_len]], device=device),
                                 use_cache=True).cache
    rows = [ids[prefix_len:] for ids in encoded]
    # longest prompts together: less padding, and rows of a batch finish at similar times
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    per_batch = max(1, batch_size // num_samples)  # prompts per batch
    results: list[list[Completion]] = [[] for _ in prompts]
    starts = range(0, len(order), per_batch)
    for start in runtime.progress(starts, desc) if desc else starts:
        chunk = order[start:start + per_batch]
        done = _generate_batch(model, tokenizer, [rows[i] for i in chunk], prefix_cache,
                               prefix_len, num_samples, max_new_tokens, temperature, top_p,
                               top_k, is_newline, generator)
        for j, i in enumerate(chunk):
            results[i] = done[j * num_samples:(j + 1) * num_samples]
    return results


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
