"""Reasoning with a causal LM and inference-time scaling, model-agnostic.

- generation: :func:`generate`, a batched sampler over any HF causal LM with a KV cache that
  returns, for every completion, its text, its generated-token count, the sum of the model's
  own log-probabilities of those tokens (temperature 1, before any filtering) and why it
  stopped (``eos``, ``newline`` or ``length``); finished rows leave the batch at once;
- answers: :func:`extract_answer` (last ``\\boxed{...}`` with nested braces, then an
  "answer is" phrase), :func:`normalize_answer` and :func:`answers_equivalent` (string, number,
  tuple/interval/matrix and sympy checks);
- problems: :func:`arithmetic_problems` (seeded word problems with exact answers at graded
  difficulties) and loaders for GSM8K and MATH-500 lines;
- methods: chain of thought, best-of-N, majority vote, step-wise beam search and
  self-refinement, each returning one :class:`Attempt` per problem with its token cost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from helpers.generation import filter_logits
from helpers.nb import runtime

# ---------------------------------------------------------------------------- generation


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
                    past_key_values=cache, use_cache=True)
        cache = out.past_key_values
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
                                 use_cache=True).past_key_values
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


# ---------------------------------------------------------------------------- answers

def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the balanced ``{...}`` group opening at ``text[start]`` and the index
    after it; ``None`` when the group never closes (a truncated answer)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces kept;
    ``\\boxed 5`` (no braces) gives ``5``."""
    found = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        end = match.end()
        if end < len(text) and text[end] == "{":
            group = _braced(text, end)
            if group is not None:
                found = group[0]
        else:
            token = re.match(r"[^\s$.,]+", text[end:])
            if token:
                found = token.group(0)
    return found


_ANSWER_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def find_answer(text: str) -> tuple[str | None, str]:
    """``(answer, source)``: the last ``\\boxed{}`` (source ``"boxed"``), else the last "the
    answer is ..." or ``#### ...`` line (``"phrase"``), else ``(None, "none")``."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip(), "boxed"
    for line in reversed(text.splitlines()):
        match = _ANSWER_PHRASE.search(line) or re.search(r"^\s*####\s*(.+)", line)
        if match:
            answer = match.group(1).strip().rstrip(".").strip().strip("$").strip()
            if answer:
                return answer, "phrase"
    return None, "none"


def extract_answer(text: str) -> str | None:
    """The final answer of a solution (see :func:`find_answer`), or ``None``."""
    return find_answer(text)[0]


_UNIT_WORDS = re.compile(r"^(-?[\d.,/]+)\s*(?:[a-zA-Z]+\.?\s*)+$")


def _unwrap(command: str, s: str) -> str:
    """Replace every ``\\command{x}`` by ``x`` (nested braces handled)."""
    pattern = "\\" + command
    while (i := s.find(pattern + "{")) != -1:
        group = _braced(s, i + len(pattern))
        if group is None:
            break
        s = s[:i] + group[0] + s[group[1]:]
    return s


def normalize_answer(answer: str) -> str:
    """A canonical string for an answer: no ``$``, spacing, ``\\left``/``\\right``, ``\\text``,
    degree or percent signs, units after a number, a leading ``x =``; ``\\dfrac``/``\\tfrac`` as
    ``\\frac``; ``\\frac12`` as ``\\frac{1}{2}``; thousands separators removed; ``.5`` as
    ``0.5``; a trailing period dropped."""
    s = answer.strip().strip("$").strip()
    for command in ("text", "textbf", "mathrm", "mathbf", "mbox", "textit", "boxed"):
        s = _unwrap(command, s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"(?<!\\)\\[!,;: ]", "", s)  # spacing commands; a matrix row break is kept
    for token in ("\\left", "\\right", "\\displaystyle"):
        s = s.replace(token, "")
    for token in ("^{\\circ}", "^\\circ", "°", "\\%", "%", "\\$"):
        s = s.replace(token, "")
    s = s.strip().rstrip(".").strip()
    if (m := re.fullmatch(r"[a-zA-Z]\w*\s*=\s*(.+)", s)) and "=" not in m.group(1):
        s = m.group(1).strip()
    if m := _UNIT_WORDS.match(s):
        s = m.group(1)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)
    s = s.rstrip(".")
    return s


def _as_number(s: str) -> float | None:
    """``s`` (normalised) as a number: integers, decimals, ``a/b`` and ``\\frac{a}{b}``."""
    if re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", s):
        return float(s)
    if m := re.fullmatch(r"([-+]?)(?:\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}"
                         r"|(-?\d+(?:\.\d+)?)/(-?\d+(?:\.\d+)?))", s):
        num, den = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
        if float(den) == 0:
            return None
        return (-1 if m.group(1) == "-" else 1) * float(num) / float(den)
    return None


def _split_top_level(s: str, sep: str = ",") -> list[str]:
    """``s`` split at the separators that are not inside brackets or braces."""
    parts, depth, current = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _wrapped(s: str) -> bool:
    """Whether the bracket opening ``s`` closes at its last character: ``(1,2]`` yes,
    ``(a+5)(b+2)`` no."""
    if len(s) < 2 or s[0] not in "([{" or s[-1] not in ")]}":
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0:
            return i == len(s) - 1
    return False


def _matrix_entries(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s)
    if not m:
        return None
    return [row.split("&") for row in m.group(1).split("\\\\") if row]


def _latex_to_sympy(s: str):
    """A sympy expression for simple LaTeX (fractions, roots, powers, pi), or ``None``."""
    if len(s) > 200:
        return None
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    text = s
    for _ in range(10):  # innermost first, so nested fractions and roots unwind
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", text)
        new = re.sub(r"\\sqrt\[([^{}\[\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", new)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        new = re.sub(r"\^\{([^{}]*)\}", r"**(\1)", new)
        if new == text:
            break
        text = new
    text = (text.replace("^", "**").replace("\\pi", "pi").replace("\\cdot", "*")
            .replace("\\times", "*").replace("\\infty", "oo").replace("{", "(").replace("}", ")"))
    if "\\" in text or "=" in text:
        return None
    try:
        return parse_expr(text, transformations=(*standard_transformations,
                                                 implicit_multiplication_application),
                          local_dict={"e": sympy.E, "pi": sympy.pi})
    except Exception:  # noqa: BLE001 - anything sympy cannot parse is "not equivalent"
        return None


def _sympy_equal(a: str, b: str) -> bool:
    import sympy

    ea, eb = _latex_to_sympy(a), _latex_to_sympy(b)
    if ea is None or eb is None:
        return False
    try:
        return bool(sympy.simplify(ea - eb) == 0)
    except Exception:  # noqa: BLE001
        return False


def _equal_normalized(a: str, b: str) -> bool:
    if a == b:
        return True
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return abs(na - nb) <= 1e-6 * max(1.0, abs(nb))
    ma, mb = _matrix_entries(a), _matrix_entries(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and len(ma) == len(mb)
                and all(len(ra) == len(rb) and all(map(_equal_normalized, ra, rb))
                        for ra, rb in zip(ma, mb, strict=True)))
    if _wrapped(a) and _wrapped(b):
        if (a[0], a[-1]) != (b[0], b[-1]):  # (1,2] is not [1,2]
            return False
        pa, pb = _split_top_level(a[1:-1]), _split_top_level(b[1:-1])
        return len(pa) == len(pb) and all(map(_equal_normalized, pa, pb))
    pa, pb = _split_top_level(a), _split_top_level(b)
    if len(pa) > 1 or len(pb) > 1:  # unbracketed lists: a set of solutions, order-free
        return len(pa) == len(pb) and all(
            any(_equal_normalized(x, y) for y in pb) for x in pa) and all(
            any(_equal_normalized(y, x) for x in pa) for y in pb)
    return _sympy_equal(a, b)


def answers_equivalent(predicted: str | None, gold: str) -> bool:
    """Whether ``predicted`` and ``gold`` are the same answer: equal after
    :func:`normalize_answer`, equal as numbers, element-wise equal tuples, intervals (bracket
    types must match) and matrices, order-free equal unbracketed lists, or expressions whose
    difference sympy simplifies to 0."""
    if predicted is None:
        return False
    return _equal_normalized(normalize_answer(predicted), normalize_answer(gold))


# ---------------------------------------------------------------------------- problems

@dataclass(frozen=True)
class Problem:
    """A question with its exact answer; ``level`` names its difficulty group."""

    id: str
    question: str
    answer: str
    level: str
    source: str


_NAMES = ("Tom", "Sara", "Ali", "Maryam", "Ben", "Lily", "Omid", "Nina", "Reza", "Emma")
_THINGS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "coins", "cards")
_BOXES = (("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"))

#: the generated difficulty levels, easiest first
ARITHMETIC_LEVELS = ("add/subtract 1-digit", "add/subtract 2- and 1-digit",
                     "add/subtract 2-digit", "multiply 1-digit", "2 steps")


def _arithmetic_problem(level: str, rng) -> tuple[str, int]:
    name, thing, (box, boxes) = rng.choice(_NAMES), rng.choice(_THINGS), rng.choice(_BOXES)
    add = rng.random() < 0.5
    if level in ARITHMETIC_LEVELS[:3]:
        digits = {0: ((2, 9), (2, 9)), 1: ((11, 99), (2, 9)), 2: ((11, 99), (11, 99))}
        (a_low, a_high), (b_low, b_high) = digits[ARITHMETIC_LEVELS.index(level)]
        a, b = rng.randint(a_low, a_high), rng.randint(b_low, b_high)
        if add:
            return f"{name} has {a} {thing} and gets {b} more. How many {thing} does " \
                   f"{name} have now?", a + b
        a, b = max(a, b), min(a, b) - (a == b)  # a positive difference, digits kept
        return f"{name} has {a} {thing} and gives away {b}. How many {thing} does " \
               f"{name} have left?", a - b
    if level == ARITHMETIC_LEVELS[3]:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"Each {box} holds {a} {thing}. How many {thing} are in {b} {boxes}?", a * b
    if level == ARITHMETIC_LEVELS[4]:
        a, b, c = rng.randint(10, 30), rng.randint(2, 9), rng.randint(2, 9)
        if add:
            return f"{name} has {a} {thing}, gets {b} more and then gives away {c}. How many " \
                   f"{thing} does {name} have now?", a + b - c
        return f"{name} buys {b} {boxes} with {c} {thing} in each {box} and already had {a} " \
               f"{thing}. How many {thing} does {name} have now?", a + b * c
    raise ValueError(f"unknown level {level!r}; known: {', '.join(ARITHMETIC_LEVELS)}")


def arithmetic_problems(per_level: int, seed: int,
                        levels: Sequence[str] = ARITHMETIC_LEVELS) -> list[Problem]:
    """``per_level`` seeded word problems of every level of :data:`ARITHMETIC_LEVELS`, each
    with its exact integer answer; the same seed gives the same problems."""
    import random

    rng = random.Random(seed)
    problems = []
    for level in levels:
        for i in range(per_level):
            question, answer = _arithmetic_problem(level, rng)
            problems.append(Problem(f"arith-{ARITHMETIC_LEVELS.index(level)}-{i}", question,
                                    str(answer), level, "generated"))
    return problems


def _jsonl(path) -> list[dict]:
    import json
    from pathlib import Path

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not a JSON line: {error}") from None
    return rows


def load_gsm8k(path, n: int) -> list[Problem]:
    """The first ``n`` problems of a GSM8K ``.jsonl`` file (answer after ``####``)."""
    problems = []
    for i, row in enumerate(_jsonl(path)[:n]):
        if "####" not in row.get("answer", ""):
            raise ValueError(f"{path}: row {i} has no '#### answer'")
        answer = row["answer"].split("####")[-1].strip().replace(",", "")
        problems.append(Problem(f"gsm8k-{i}", row["question"], answer, "GSM8K", "gsm8k"))
    return problems


def load_math500(path, n: int, max_level: int = 5) -> list[Problem]:
    """The first ``n`` MATH-500 problems of difficulty level ``<= max_level`` (file order)."""
    rows = [r for r in _jsonl(path) if int(r["level"]) <= max_level][:n]
    return [Problem(f"math500-{r['unique_id']}", r["problem"], r["answer"],
                    f"MATH level {r['level']}" if max_level < 5 else "MATH-500", "math500")
            for r in rows]


# ---------------------------------------------------------------------------- methods

@dataclass
class Solver:
    """A model with its prompt and decoding settings; every method generates through it.

    ``system`` and ``examples`` (worked question/answer turns) form the chain-of-thought
    prompt; sampled calls use ``temperature`` and ``top_p``; every completion is capped at
    ``max_new_tokens``.
    """

    model: nn.Module
    tokenizer: object
    system: str
    examples: Sequence[tuple[str, str]] = ()
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float | None = 0.95
    batch_size: int = 16
    generator: torch.Generator | None = None

    def prompt(self, question: str, prefix: str = "") -> str:
        return chat_prompt(self.tokenizer, question, self.system, self.examples, prefix)

    def complete(self, prompts: Sequence[str], *, sample: bool = False, num_samples: int = 1,
                 max_new_tokens: int | None = None, **kwargs) -> list[list[Completion]]:
        return generate(self.model, self.tokenizer, prompts,
                        max_new_tokens=max_new_tokens or self.max_new_tokens,
                        num_samples=num_samples,
                        temperature=self.temperature if sample else 0.0, top_p=self.top_p,
                        batch_size=self.batch_size, generator=self.generator, **kwargs)


@dataclass
class Attempt:
    """A method's final solution of one problem and what it cost: ``n_tokens`` generated
    tokens over all ``n_calls`` completions made for this problem."""

    problem: Problem
    method: str
    text: str
    finish: str
    n_tokens: int
    n_calls: int
    answer: str | None = field(init=False, default=None)
    answer_source: str = field(init=False, default="none")
    correct: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.answer, self.answer_source = find_answer(self.text)
        self.correct = answers_equivalent(self.answer, self.problem.answer)

    @property
    def outcome(self) -> str:
        """``correct``, ``truncated`` (no answer, hit the token cap), ``no answer`` or ``wrong``."""
        if self.correct:
            return "correct"
        if self.answer is None:
            return "truncated" if self.finish == "length" else "no answer"
        return "wrong"


def chain_of_thought(solver: Solver, problems: Sequence[Problem]) -> list[Attempt]:
    """One greedy step-by-step solution per problem."""
    outs = solver.complete([solver.prompt(p.question) for p in problems], desc="chain of thought")
    return [Attempt(p, "chain of thought", c.text, c.finish, c.n_tokens, 1)
            for p, (c,) in zip(problems, outs, strict=True)]


def sample_solutions(solver: Solver, problems: Sequence[Problem],
                     n: int) -> list[list[Completion]]:
    """``n`` sampled solutions per problem (``[problem][sample]``), shared by best-of-N and
    majority vote so that both are scored on the same samples."""
    return solver.complete([solver.prompt(p.question) for p in problems], sample=True,
                           num_samples=n, desc=f"{n} samples per problem")


def best_of_n(problems: Sequence[Problem], samples: Sequence[Sequence[Completion]],
              n: int) -> list[Attempt]:
    """Of the first ``n`` samples of every problem, the one with the highest mean token
    log-probability; the cost is all ``n`` samples."""
    attempts = []
    for problem, pool in zip(problems, samples, strict=True):
        pool = pool[:n]
        best = max(pool, key=lambda c: c.mean_logprob)
        attempts.append(Attempt(problem, f"best-of-{n}", best.text, best.finish,
                                sum(c.n_tokens for c in pool), len(pool)))
    return attempts


def majority_vote(problems: Sequence[Problem], samples: Sequence[Sequence[Completion]],
                  n: int) -> list[Attempt]:
    """Self-consistency: of the first ``n`` samples, answers are grouped by
    :func:`answers_equivalent` and a sample of the largest group is returned (ties: the
    group with the higher summed mean log-probability); samples without an answer abstain."""
    attempts = []
    for problem, pool in zip(problems, samples, strict=True):
        pool = list(pool[:n])
        groups: list[list[Completion]] = []
        for completion in pool:
            answer = extract_answer(completion.text)
            if answer is None:
                continue
            for group in groups:
                if answers_equivalent(answer, extract_answer(group[0].text)):
                    group.append(completion)
                    break
            else:
                groups.append([completion])
        if groups:
            winner = max(groups, key=lambda g: (len(g), sum(c.mean_logprob for c in g)))
            chosen = max(winner, key=lambda c: c.mean_logprob)
        else:
            chosen = max(pool, key=lambda c: c.mean_logprob)
        attempts.append(Attempt(problem, f"majority-of-{n}", chosen.text, chosen.finish,
                                sum(c.n_tokens for c in pool), len(pool)))
    return attempts


@dataclass
class _Beam:
    text: str
    logprob: float
    done: bool
    finish: str = "length"


def stepwise_beam_search(solver: Solver, problems: Sequence[Problem], beam_width: int = 3,
                         top_k: int = 2, max_steps: int = 5,
                         step_tokens: int = 64) -> list[Attempt]:
    """Step-level beam search: a step is one line (at most ``step_tokens`` tokens).

    The first step samples ``beam_width * top_k`` lines, later steps ``top_k`` continuations
    of every unfinished beam; finished beams (an end of text or a ``\\boxed{}``) stay in the
    pool, and the ``beam_width`` candidates of highest cumulative log-probability survive.
    After ``max_steps`` the best beam is returned; if it is unfinished it is completed
    greedily (up to ``max_new_tokens``) so that every problem gets an answer attempt.
    """
    newline_ids = newline_token_ids(solver.tokenizer)
    beams = [[_Beam("", 0.0, False)] for _ in problems]
    tokens, calls = [0] * len(problems), [0] * len(problems)
    for step in range(max_steps):
        jobs = [(i, beam) for i, pool in enumerate(beams) for beam in pool if not beam.done]
        if not jobs:
            break
        children = beam_width * top_k if step == 0 else top_k
        outs = solver.complete([solver.prompt(problems[i].question, beam.text)
                                for i, beam in jobs], sample=True, num_samples=children,
                               max_new_tokens=step_tokens, stop_at_newline=True,
                               newline_ids=newline_ids, desc=f"beam step {step + 1}")
        pools = [[beam for beam in pool if beam.done] for pool in beams]
        for (i, beam), completions in zip(jobs, outs, strict=True):
            for c in completions:
                tokens[i] += c.n_tokens
                calls[i] += 1
                done = c.finish == "eos" or last_boxed(c.text) is not None
                pools[i].append(_Beam(beam.text + c.text, beam.logprob + c.logprob, done,
                                      c.finish))
        beams = [sorted(pool, key=lambda b: -b.logprob)[:beam_width] for pool in pools]
    best = [pool[0] for pool in beams]
    unfinished = [i for i, beam in enumerate(best) if not beam.done]
    if unfinished:
        outs = solver.complete([solver.prompt(problems[i].question, best[i].text)
                                for i in unfinished], desc="finish unfinished beams")
        for i, (c,) in zip(unfinished, outs, strict=True):
            best[i] = _Beam(best[i].text + c.text, best[i].logprob + c.logprob, True, c.finish)
            tokens[i] += c.n_tokens
            calls[i] += 1
    return [Attempt(p, "beam search", b.text, b.finish, tokens[i], calls[i])
            for i, (p, b) in enumerate(zip(problems, best, strict=True))]


REVIEW_PROMPT = ("Check this solution of a math problem.\n\nProblem: {question}\n\n"
                 "Solution: {solution}\n\nIf any step or the final answer is wrong, reply "
                 "NEEDS_REFINE: yes. If everything is correct, reply NEEDS_REFINE: no.")
REFINE_PROMPT = ("{question}\n\nA previous attempt, which may contain a mistake:\n{solution}\n\n"
                 "Solve the problem again step by step, correcting any mistake, and give the "
                 "final answer as \\boxed{{answer}}.")


def review_verdict(reply: str) -> str:
    """``yes``/``no`` from a reviewer's reply (``unclear`` when neither word appears first)."""
    match = re.search(r"\b(yes|no)\b", reply.lower())
    return match.group(1) if match else "unclear"


def self_refine(solver: Solver, problems: Sequence[Problem], initial: Sequence[Attempt],
                rounds: int = 2, review_prompt: str = REVIEW_PROMPT,
                refine_prompt: str = REFINE_PROMPT, review_tokens: int = 4,
                always_refine: bool = False) -> tuple[list[Attempt], list[list[str]]]:
    """Self-refinement from the ``initial`` solutions (their cost is included): each round the
    model reviews every open solution (an answer continuing ``NEEDS_REFINE:``, greedy,
    ``review_tokens`` tokens); a ``yes`` gets a greedy rewrite, anything else closes the
    problem. ``always_refine`` skips the review and rewrites every solution every round (to
    see what the rewrite alone does). Returns the attempts and every problem's verdicts."""
    texts = [a.text for a in initial]
    finishes = [a.finish for a in initial]
    tokens = [a.n_tokens for a in initial]
    calls = [a.n_calls for a in initial]
    verdicts: list[list[str]] = [[] for _ in problems]
    open_ = list(range(len(problems)))
    for _ in range(rounds):
        if not open_:
            break
        if always_refine:
            refine = open_
        else:
            refine = _review(solver, problems, texts, open_, review_prompt, review_tokens,
                             tokens, calls, verdicts)
        outs = solver.complete([solver.prompt(refine_prompt.format(
            question=problems[i].question, solution=texts[i])) for i in refine],
            desc="rewrite") if refine else []
        for i, (c,) in zip(refine, outs, strict=True):
            texts[i], finishes[i] = c.text, c.finish
            tokens[i] += c.n_tokens
            calls[i] += 1
        open_ = refine
    name = "refine without review" if always_refine else "self-refine"
    attempts = [Attempt(p, name, texts[i], finishes[i], tokens[i], calls[i])
                for i, p in enumerate(problems)]
    return attempts, verdicts


def _review(solver: Solver, problems: Sequence[Problem], texts: list[str], open_: list[int],
            review_prompt: str, review_tokens: int, tokens: list[int], calls: list[int],
            verdicts: list[list[str]]) -> list[int]:
    """Ask for a verdict on every open solution (costs added in place); those judged ``yes``."""
    reviews = solver.complete([chat_prompt(solver.tokenizer, review_prompt.format(
        question=problems[i].question, solution=texts[i]), assistant_prefix="NEEDS_REFINE:")
        for i in open_], max_new_tokens=review_tokens, desc="review")
    flagged = []
    for i, (c,) in zip(open_, reviews, strict=True):
        tokens[i] += c.n_tokens
        calls[i] += 1
        verdicts[i].append(review_verdict(c.text))
        if verdicts[i][-1] == "yes":
            flagged.append(i)
    return flagged


def attempts_frame(attempts: Sequence[Attempt]):
    """One row per attempt: method, problem id, level, gold and predicted answers, whether
    correct, outcome, answer source, generated tokens and calls (a ``pandas.DataFrame``)."""
    import pandas as pd

    return pd.DataFrame([{
        "method": a.method, "problem": a.problem.id, "level": a.problem.level,
        "gold": a.problem.answer, "predicted": a.answer, "correct": a.correct,
        "outcome": a.outcome, "answer_source": a.answer_source, "tokens": a.n_tokens,
        "calls": a.n_calls} for a in attempts])
