"""One decoder self-attention layer decoded token by token: without a cache, with a KV cache,
with Multi-Query (1 key/value head) and Grouped-Query (g key/value heads) attention, and
(bonus) Multi-head Latent Attention, whose cache holds one small latent vector per token.
Beside it, the cost formulas that the notebook checks against ``FlopCounterMode`` and the
cache tensors' real ``numel()``: the step without a cache read both ways (the layer re-run over
all tokens, or keys and values recomputed for one query), with a cache, and MLA's step with and
without absorbing its up-projections.

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

    def last_token_without_cache(self, x: Tensor) -> Tensor:
        """The newest token's output with no cache, computed as cheaply as that allows: keys
        and values of all T tokens recomputed, the query of the last one only.
        ``x (B, T, d)`` -> ``(B, 1, d)``, equal to ``self(x)[0][:, -1:]``."""
        q = self._heads(self.q_proj(x[:, -1:]), self.n_heads)  # (B, n_h, 1, d_h)
        k = self._heads(self.k_proj(x), self.n_kv_heads)  # (B, n_kv, T, d_h)
        v = self._heads(self.v_proj(x), self.n_kv_heads)
        out = causal_attention(q, k, v, self.n_heads // self.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], 1, -1))


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

    def absorbed_step(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """One decoding step as DeepSeek runs it: W_UK absorbed into the query and W_UV applied
        after the weighted sum, so attention runs against the cached latents themselves and no
        key or value is re-created. ``x (B, 1, d)``, ``cache (B, T, d_latent)`` ->
        ``(out (B, 1, d), cache (B, T+1, d_latent))``; ``out`` equals ``self(x, cache)[0]``."""
        latent = torch.cat([cache, self.down_kv(x)], 1)  # (B, T+1, d_c)
        b, d_c = x.shape[0], latent.shape[-1]
        q = self.q_proj(x).view(b, self.n_heads, self.d_head)  # (B, n_h, d_h)
        w_uk = self.up_k.weight.view(self.n_heads, self.d_head, d_c)  # k_h = W_UK[h] c
        w_uv = self.up_v.weight.view(self.n_heads, self.d_head, d_c)
        q_latent = torch.einsum("bhe,hec->bhc", q, w_uk)  # q_h W_UK[h]: (B, n_h, d_c)
        scores = q_latent @ latent.transpose(1, 2) / math.sqrt(self.d_head)  # (B, n_h, T+1)
        context = scores.softmax(-1) @ latent  # weighted sum of latents: (B, n_h, d_c)
        heads = torch.einsum("bhc,hec->bhe", context, w_uv)  # (B, n_h, d_h)
        return self.o_proj(heads.reshape(b, 1, -1)), latent


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


def step_flops_recompute_kv(n: int, d: int, d_h: int, n_h: int, n_kv: int | None = None) -> int:
    """Matmul FLOPs of the cheapest step without a cache
    (:meth:`DecoderAttention.last_token_without_cache`): keys and values of all n tokens
    recomputed, the query, one row of scores and the output of the newest token only:
    ``2d·n_h·d_h + 4n·d·n_kv·d_h + 4n·n_h·d_h + 2n_h·d_h·d``."""
    n_kv = n_h if n_kv is None else n_kv
    return 2 * d * n_h * d_h + 4 * n * d * n_kv * d_h + 4 * n * n_h * d_h + 2 * n_h * d_h * d


def mla_step_flops(n: int, d: int, d_h: int, n_h: int, d_latent: int, d_rope: int = 0,
                   absorbed: bool = True) -> int:
    """Matmul FLOPs of one cached MLA decoding step (n tokens in context, the newest included).

    Both ways project the query (2d·n_h·d_h) and the new latent (2d·d_c) and end with the output
    projection (2n_h·d_h·d). ``absorbed=False`` (:class:`LatentAttention` called with a cache)
    re-creates the keys and values of all n tokens from the latents, 4n·d_c·n_h·d_h, then attends
    as MHA, 4n·n_h·d_h. ``absorbed=True`` (:meth:`LatentAttention.absorbed_step`) maps each query
    into latent space, 2n_h·d_h·d_c, attends against the latents, 4n·n_h·d_c, and applies W_UV
    once, 2n_h·d_c·d_h. ``d_rope`` adds DeepSeek's decoupled RoPE part: the per-head RoPE queries
    2d·n_h·d_R, the shared RoPE key 2d·d_R, and its scores 2n·n_h·d_R.
    """
    ends = 2 * d * n_h * d_h + 2 * d * d_latent + 2 * n_h * d_h * d
    if absorbed:
        middle = 2 * n_h * d_h * d_latent + 4 * n * n_h * d_latent + 2 * n_h * d_latent * d_h
    else:
        middle = 4 * n * d_latent * n_h * d_h + 4 * n * n_h * d_h
    rope = 2 * d * n_h * d_rope + 2 * d * d_rope + 2 * n * n_h * d_rope
    return ends + middle + rope


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
