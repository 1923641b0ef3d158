"""One decoder self-attention layer decoded token by token: without a cache, with a KV cache,
with Multi-Query (1 key/value head) and Grouped-Query (g key/value heads) attention, and
(bonus) Multi-head Latent Attention, whose cache holds one small latent vector per token.
Beside it, the cost formulas that the notebook checks against ``FlopCounterMode`` and the
cache tensors' real ``numel()``.

FLOPs count 2 per multiply-add and only the matrix products (softmax, scaling and masking
are O(n·n_h) and left out); projections have no bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far: ``k, v (B, n_kv, T, d_h)``."""

    k: Tensor
    v: Tensor

    def numel(self) -> int:
        return self.k.numel() + self.v.numel()

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class DecoderAttention(nn.Module):
    """Causal multi-head attention with ``n_kv_heads`` key/value heads shared by groups of
    query heads: ``n_kv_heads = n_heads`` is MHA, ``1`` is MQA, ``g`` is GQA.

    ``forward(x (B, T, d), cache=None)`` -> ``(out (B, T, d), cache)``. Given a cache, ``x``
    holds only the new tokens, whose keys/values are appended to it.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, n_kv_heads: int | None = None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, d_head
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=False)
        self.o_proj = nn.Linear(n_heads * d_head, d_model, bias=False)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.d_head).transpose(1, 2)  # (B, n, T, d_h)

    def forward(self, x: Tensor, cache: KVCache | None = None,
                use_cache: bool = False) -> tuple[Tensor, KVCache | None]:
        q = self._heads(self.q_proj(x), self.n_heads)
        k = self._heads(self.k_proj(x), self.n_kv_heads)
        v = self._heads(self.v_proj(x), self.n_kv_heads)
        if cache is not None:
            k, v = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
        new_cache = KVCache(k, v) if (use_cache or cache is not None) else None
        out = causal_attention(q, k, v, self.n_heads // self.n_kv_heads)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), new_cache


def causal_attention(q: Tensor, k: Tensor, v: Tensor, group: int) -> Tensor:
    """softmax(q kᵀ/√d_h) v with each key/value head shared by ``group`` query heads.

    ``q (B, n_h, Tq, d_h)``, ``k, v (B, n_h/group, Tk, d_h)``; the Tq queries are the last Tq
    of the Tk positions. Returns ``(B, n_h, Tq, d_h)``.
    """
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    tq, tk = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, n_h, Tq, Tk)
    if tq > 1:
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


class LatentAttention(nn.Module):
    """Multi-head Latent Attention (DeepSeek-V2/V3/R1) without its decoupled RoPE part: keys
    and values are up-projected from one cached latent ``c_t = W_DKV x_t (d_latent)``.

    ``forward(x (B, T, d), cache=None)`` -> ``(out, cache (B, T_total, d_latent))``.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_latent: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.down_kv = nn.Linear(d_model, d_latent, bias=False)
        self.up_k = nn.Linear(d_latent, n_heads * d_head, bias=False)
        self.up_v = nn.Linear(d_latent, n_heads * d_head, bias=False)
        self.o_proj = nn.Linear(n_heads * d_head, d_model, bias=False)

    def forward(self, x: Tensor, cache: Tensor | None = None,
                use_cache: bool = False) -> tuple[Tensor, Tensor | None]:
        latent = self.down_kv(x)  # (B, T, d_latent)
        if cache is not None:
            latent = torch.cat([cache, latent], 1)
        b, t, _ = x.shape
        split = lambda z: z.view(b, z.shape[1], self.n_heads, self.d_head).transpose(1, 2)  # noqa: E731
        out = causal_attention(split(self.q_proj(x)), split(self.up_k(latent)),
                               split(self.up_v(latent)), 1)
        keep = latent if (use_cache or cache is not None) else None
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), keep


@torch.no_grad()
def decode(layer: nn.Module, xs: Tensor, use_cache: bool) -> Tensor:
    """Feed ``xs (B, n, d)`` one token at a time; each step's output for the newest token.

    Without a cache every step re-runs the layer over the whole prefix; with one, each step
    runs on the new token only. Returns ``(B, n, d)``.
    """
    outs, cache = [], None
    for t in range(xs.shape[1]):
        if use_cache:
            out, cache = layer(xs[:, t:t + 1], cache, use_cache=True)
        else:
            out, _ = layer(xs[:, : t + 1])
        outs.append(out[:, -1])
    return torch.stack(outs, 1)


# ----------------------------------------------------------------------------- formulas


def step_flops(n: int, d: int, d_h: int, n_h: int, n_kv: int | None = None,
               cache: bool = True) -> int:
    """Matmul FLOPs of the decoding step that produces token n's output (n tokens in context).

    No cache: the layer re-runs over all n tokens: Q, K, V and output projections of n tokens
    and the full n×n scores and weighted sums (no causal saving):
    ``2n·d·n_h·d_h + 4n·d·n_kv·d_h + 4n²·n_h·d_h + 2n·n_h·d_h·d``.
    With a cache: projections of one token, one row of scores against n keys:
    ``2d·n_h·d_h + 4d·n_kv·d_h + 4n·n_h·d_h + 2n_h·d_h·d``.
    ``n_kv`` = n_h (MHA, default), 1 (MQA) or g (GQA).
    """
    n_kv = n_h if n_kv is None else n_kv
    rows = 1 if cache else n
    projections = 2 * rows * d * n_h * d_h + 4 * rows * d * n_kv * d_h + 2 * rows * n_h * d_h * d
    attention = 4 * rows * n * n_h * d_h
    return projections + attention


def cache_elements(n: int, d_h: int, n_kv: int) -> int:
    """Numbers stored by a KV cache of one layer for one sequence of n tokens: 2·n·n_kv·d_h."""
    return 2 * n * n_kv * d_h


def mla_cache_elements(n: int, d_latent: int, d_rope: int = 0) -> int:
    """MLA stores one latent (and, in DeepSeek, one shared RoPE key) per token: n·(d_c + d_R)."""
    return n * (d_latent + d_rope)


def measured_flops(fn, *args, **kwargs) -> int:
    """Total FLOPs ``torch.utils.flop_counter.FlopCounterMode`` counts for ``fn(*args)``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()
