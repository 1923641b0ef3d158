"""Decoding helpers shared by the language-model notebooks: top-k / nucleus filtering, greedy
and sampled decoding, beam search and no-repeat-n-gram blocking for recurrent models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass ``top_p``.

    ``logits (..., vocab)``. The most likely token always survives. ``top_p`` keeps the
    smallest set of tokens whose probability reaches ``top_p`` (Holtzman et al. 2020).
    """
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


# --- recurrent decoding: greedy, sampling, beam search, n-gram blocking -----------------------
# ``model(ids (B, T), hidden) -> (logits (B, T, V), hidden)``, the hidden state (a tensor, or a
# tuple of tensors, with the batch on dim 1: ``(L, B, H)``) carried between calls.


def _reorder(hidden, index: Tensor):
    """Select batch rows ``index`` of a recurrent state (tensor or tuple, batch on dim 1)."""
    if isinstance(hidden, tuple):
        return tuple(h.index_select(1, index) for h in hidden)
    return hidden.index_select(1, index)


def ngram_bans(seq: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an ``n``-gram already present in ``seq`` (no-repeat-n-gram
    blocking, Paulus et al. 2018): every token that followed an earlier occurrence of the last
    ``n - 1`` tokens."""
    if n <= 0 or len(seq) < n:
        return set() if n != 1 else set(seq)
    if n == 1:
        return set(seq)
    suffix, bans = list(seq[len(seq) - n + 1:]), set()
    if max(seq) < 256 and min(seq) >= 0:  # fast path for byte-level ids
        data, key = bytes(seq), bytes(suffix)
        start = data.find(key)
        while 0 <= start < len(data) - n + 1:
            bans.add(data[start + n - 1])
            start = data.find(key, start + 1)
        return bans
    for i in range(len(seq) - n + 1):
        if list(seq[i:i + n - 1]) == suffix:
            bans.add(int(seq[i + n - 1]))
    return bans


def _ban(logits: Tensor, rows: Sequence[Sequence[int]], banned: Sequence[int],
         no_repeat_ngram: int) -> Tensor:
    """``logits (B, V)`` with ``banned`` tokens and each row's n-gram bans set to -inf."""
    logits = logits.clone()
    if banned:
        logits[:, list(banned)] = float("-inf")
    if no_repeat_ngram > 0:
        for b, seq in enumerate(rows):
            bans = ngram_bans(seq, no_repeat_ngram)
            if bans and len(bans) < logits.shape[-1]:
                logits[b, list(bans)] = float("-inf")
    return logits


@torch.no_grad()
def sample(model: nn.Module, prompt: Tensor, steps: int, *, num_samples: int = 1,
           greedy: bool = False, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, no_repeat_ngram: int = 0, banned: Sequence[int] = (),
           generator: torch.Generator | None = None) -> Tensor:
    """Continue ``prompt (T,)`` by ``steps`` tokens: greedy (argmax) or sampled from the
    temperature-scaled, top-k / nucleus-filtered distribution.
    Returns ``(num_samples, T + steps)``."""
    model.eval()
    seqs = prompt.unsqueeze(0).repeat(num_samples, 1)  # (S, T)
    logits, hidden = model(seqs, None)
    rows = [seqs[0].tolist() for _ in range(num_samples)]
    for _ in range(steps):
        last = _ban(logits[:, -1].float(), rows, banned, no_repeat_ngram)  # (S, V)
        if greedy:
            nxt = last.argmax(-1)
        else:
            probs = filter_logits(last / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        for row, token in zip(rows, nxt.tolist(), strict=True):
            row.append(token)
        logits, hidden = model(nxt.unsqueeze(1), hidden)
    return torch.tensor(rows, dtype=prompt.dtype)


@torch.no_grad()
def beam_search(model: nn.Module, prompt: Tensor, steps: int, k: int, *,
                length_penalty: float = 0.0, eos_id: int | Sequence[int] | None = None,
                no_repeat_ngram: int = 0, banned: Sequence[int] = ()) -> list[tuple[Tensor, float]]:
    """Beam search of width ``k`` continuing ``prompt (T,)`` by up to ``steps`` tokens.

    Keeps the ``k`` highest cumulative log-probabilities; a hypothesis that ends with
    ``eos_id`` (one token, or a sequence of tokens such as the two bytes of a blank line) is
    finished. Scores are ``log p / lp`` with GNMT's ``lp = ((5 + n) / 6) ** length_penalty``
    (``n`` generated tokens), which only matters when hypotheses differ in length (with an
    ``eos_id``): 0 favours the shortest, larger values longer ones. Returns up to ``k``
    ``(ids (T + n,), score)`` pairs, best first.
    """
    model.eval()
    eos = [eos_id] if isinstance(eos_id, int) else list(eos_id or [])

    def ends(row: list[int]) -> bool:
        return bool(eos) and len(row) - len(prompt) >= len(eos) and row[-len(eos):] == eos

    def lp(n: int) -> float:
        return ((5 + n) / 6) ** length_penalty

    logits, hidden = model(prompt.unsqueeze(0), None)
    rows, scores = [prompt.tolist()], torch.zeros(1)  # alive beams
    finished: list[tuple[list[int], float]] = []
    for step in range(1, steps + 1):
        logp = _ban(logits[:, -1].float(), rows, banned, no_repeat_ngram).log_softmax(-1)
        total = (scores.unsqueeze(1) + logp).flatten()  # (beams * V,)
        top = total.topk(min(2 * k, int(torch.isfinite(total).sum())))
        vocab = logp.shape[-1]
        keep_rows, keep_tokens, keep_scores, keep_from = [], [], [], []
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            beam, token = divmod(flat, vocab)
            row = rows[beam] + [token]
            if ends(row):
                finished.append((row, value / lp(step)))
                continue
            keep_rows.append(row)
            keep_tokens.append(token)
            keep_scores.append(value)
            keep_from.append(beam)
            if len(keep_rows) == k:
                break
        if len(finished) >= k or not keep_rows:
            break
        rows, scores = keep_rows, torch.tensor(keep_scores)
        hidden = _reorder(hidden, torch.tensor(keep_from))
        logits, hidden = model(torch.tensor(keep_tokens, dtype=prompt.dtype).unsqueeze(1), hidden)
    else:
        finished += [(row, s / lp(steps)) for row, s in zip(rows, scores.tolist(), strict=True)]
    if len(finished) < k:  # stopped early: the alive beams compete too
        done = {tuple(r) for r, _ in finished}
        finished += [(row, s / lp(len(row) - len(prompt))) for row, s
                     in zip(rows, scores.tolist(), strict=True) if tuple(row) not in done]
    finished.sort(key=lambda pair: pair[1], reverse=True)
    return [(torch.tensor(row, dtype=prompt.dtype), score) for row, score in finished[:k]]
