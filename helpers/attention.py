"""Scaled dot-product attention and multi-head attention, written out, and the numerical checks of
the attention theory questions: the 1/√d_k moments and softmax saturation, single- vs multi-head
attention as a query over noisy keys, self-attention as one input-dependent matrix (its
token-by-token blocks, the span of its matrices), and what more heads cost.

Masks follow PyTorch SDPA's boolean convention: ``True`` means *may attend*.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers.kv_cache import measured_flops


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """softmax over the last axis of ``scores (..., Lq, Lk)`` where the boolean ``mask``
    (broadcastable, True = may attend) allows; a row with every key masked becomes uniform."""
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1)


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d) v, returning the values and the attention weights.

    q ``(..., Lq, d)``, k ``(..., Lk, d)``, v ``(..., Lk, dv)``; ``mask`` boolean,
    broadcastable to ``(..., Lq, Lk)``. Returns ``(output (..., Lq, dv), weights (..., Lq, Lk))``.
    A query row whose keys are all masked gets uniform weights rather than NaN.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}; need q (..., Lq, d), k (..., Lk, d), "
                         "v (..., Lk, dv)")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    weights = masked_softmax(scores, mask)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017) with separate q/k/v/output projections.

    ``forward(query (B, Lq, d_model), key (B, Lk, d_model), value (B, Lk, d_model), mask)``
    returns ``(output (B, Lq, d_model), weights (B, n_heads, Lq, Lk))``. With
    ``need_weights=False`` the weights are not formed: PyTorch's fused
    ``F.scaled_dot_product_attention`` computes the same output faster, and ``None`` is
    returned in their place. The heads' outputs meet in :meth:`merge_heads`, the one place
    a subclass changes to weigh them (``helpers.head_masking.MaskableMultiHeadAttention``).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_k = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.last_weights: Tensor | None = None  # kept for plots, (B, n_heads, Lq, Lk)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_k).transpose(1, 2)  # (B, nh, L, dk)

    def merge_heads(self, heads: Tensor) -> Tensor:
        """The heads' outputs ``(B, n_heads, Lq, d_k)`` concatenated, ``(B, Lq, d_model)``: the
        input of ``out_proj``."""
        batch, _, length, _ = heads.shape
        return heads.transpose(1, 2).reshape(batch, length, self.d_model)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
                need_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query must be (batch, seq, {self.d_model}), "
                             f"got {tuple(query.shape)}")
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, Lq|1, Lk) -> (B, 1, Lq|1, Lk): same for all heads
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=p)
            self.last_weights = weights.detach()
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            weights = None
        return self.out_proj(self.merge_heads(out)), weights


def torch_multihead_like(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    """An ``nn.MultiheadAttention`` (batch_first) holding a copy of ``mha``'s weights."""
    bias = mha.q_proj.bias is not None
    ref = nn.MultiheadAttention(mha.d_model, mha.n_heads, dropout=mha.dropout, bias=bias,
                                batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight,
                                            mha.v_proj.weight]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
            ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.to(mha.q_proj.weight.dtype)


# ----------------------------------------------------------- why 1/√d_k (sharif-1402-hw3 T2)


def dot_product_moments(d_k: int, n_samples: int, generator: torch.Generator | None = None,
                        scaled: bool = False) -> tuple[float, float]:
    """Sample mean and variance of q·k (or q·k/√d_k) for q, k ~ N(0, I_{d_k}) independent."""
    q = torch.randn(n_samples, d_k, generator=generator, dtype=torch.float64)
    k = torch.randn(n_samples, d_k, generator=generator, dtype=torch.float64)
    s = (q * k).sum(-1)
    if scaled:
        s = s / math.sqrt(d_k)
    return s.mean().item(), s.var().item()


def softmax_saturation(d_k: int, n_keys: int, n_samples: int, scaled: bool,
                       generator: torch.Generator | None = None) -> dict[str, float]:
    """Mean largest softmax weight and mean Frobenius norm of the softmax Jacobian
    ``diag(p) − p pᵀ`` for one random query against ``n_keys`` random keys, entries N(0, 1)."""
    q = torch.randn(n_samples, 1, d_k, generator=generator, dtype=torch.float64)
    k = torch.randn(n_samples, n_keys, d_k, generator=generator, dtype=torch.float64)
    logits = (q * k).sum(-1) / (math.sqrt(d_k) if scaled else 1.0)  # (S, n)
    p = logits.softmax(-1)
    jac = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (S, n, n)
    return {"max_weight": p.max(-1).values.mean().item(),
            "jacobian_norm": jac.flatten(1).norm(dim=-1).mean().item(),
            "logit_std": logits.std().item()}


# ----------------------------------- single- vs multi-head attention (sharif-1402/1404-hw3 T3)


def orthonormal_columns(d: int, m: int, generator: torch.Generator | None = None) -> Tensor:
    """``(d, m)`` with orthonormal columns (QR of a Gaussian matrix), float64."""
    q, _ = torch.linalg.qr(torch.randn(d, m, generator=generator, dtype=torch.float64))
    return q


def projector(basis: Tensor) -> Tensor:
    """``M = A Aᵀ (d, d)`` for orthonormal columns ``A (d, m)``: projects onto span(A)."""
    return basis @ basis.T


def attend(q: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Single-query attention without scaling: ``q (..., d)``, ``keys (..., n, d)``,
    ``values (n, d_v)`` -> ``c (..., d_v)``, ``alpha (..., n)`` with α = softmax(Kq)."""
    alpha = (keys @ q.unsqueeze(-1)).squeeze(-1).softmax(-1)
    return alpha @ values, alpha


def sample_keys(means: Tensor, alpha: float, n_samples: int, stretched: int | None = None,
                stretch: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """``n_samples`` draws of the keys ``k_i ~ N(μ_i, Σ_i)``: ``means (n, d)`` -> ``(S, n, d)``.

    Σ_i = α I, except Σ_a = α I + stretch · μ_a μ_aᵀ for ``a = stretched`` (a key whose norm
    along its mean direction varies a lot).
    """
    n, d = means.shape
    noise = torch.randn(n_samples, n, d, generator=generator, dtype=means.dtype) * math.sqrt(alpha)
    keys = means + noise
    if stretched is not None:
        z = torch.randn(n_samples, generator=generator, dtype=means.dtype) * math.sqrt(stretch)
        keys[:, stretched] += z.unsqueeze(-1) * means[stretched]  # adds N(0, stretch μμᵀ)
    return keys


def weight_on(c: Tensor, v_a: Tensor, v_b: Tensor) -> Tensor:
    """For ``c`` in span(v_a, v_b) with orthonormal values: the coefficient on ``v_a``
    (1 = c is v_a, ½ = the average, 0 = c is v_b). ``c (..., d)`` -> ``(...)``."""
    return c @ v_a


def noisy_key_averaging(d: int, n_keys: int, beta: float, alpha: float, stretch: float,
                        n_samples: int, generator: torch.Generator | None = None,
                        ) -> dict[str, Tensor]:
    """Parts (c) and (d) of the single- vs multi-head question, simulated with a = 0, b = 1:
    orthonormal means μ and values v ``(n_keys, d)``, ``n_samples`` draws of the keys with
    Σ_i = αI ("calm") and with Σ_a = αI + stretch · μ_a μ_aᵀ ("stretched").

    Returns the weight of v_a in c per sample (1 = v_a, ½ = the average, 0 = v_b), each
    ``(S,)``: ``one_head_calm`` and ``one_head_stretched`` for q = β(μ_a + μ_b);
    ``two_heads_stretched`` for q₁ = βμ_a, q₂ = βμ_b and c = ½(c₁ + c₂); and ``head1_key_score``,
    k_a·q₁ per sample (the question lets us ignore the draws where it is negative).
    """
    a, b = 0, 1
    mu = orthonormal_columns(d, n_keys, generator).T  # (n, d) orthonormal means
    values = orthonormal_columns(d, n_keys, generator).T  # orthonormal values
    calm = sample_keys(mu, alpha, n_samples, generator=generator)  # (S, n, d)
    stretched = sample_keys(mu, alpha, n_samples, stretched=a, stretch=stretch,
                            generator=generator)
    q_single, q1, q2 = beta * (mu[a] + mu[b]), beta * mu[a], beta * mu[b]

    def weight(c: Tensor) -> Tensor:
        return weight_on(c, values[a], values[b])

    two_heads = 0.5 * (attend(q1, stretched, values)[0] + attend(q2, stretched, values)[0])
    return {"one_head_calm": weight(attend(q_single, calm, values)[0]),
            "one_head_stretched": weight(attend(q_single, stretched, values)[0]),
            "two_heads_stretched": weight(two_heads),
            "head1_key_score": stretched[:, a] @ q1}


def averaging_fractions(w: Tensor) -> dict[str, float]:
    """Of the per-sample weights of v_a in c ``w (S,)``: the fractions within 0.05 of ½
    (``near_average``), above 0.95 (``at_a``, c ≈ v_a), below 0.05 (``at_b``) and either
    (``at_a_or_b``)."""
    def fraction(hit: Tensor) -> float:
        return hit.double().mean().item()

    return {"near_average": fraction((w - 0.5).abs() < 0.05), "at_a": fraction(w > 0.95),
            "at_b": fraction(w < 0.05), "at_a_or_b": fraction((w > 0.95) | (w < 0.05))}


# ------------------------------------------ self-attention as one matrix (sharif-1404-hw3 T2)


def attention_weights(x: Tensor, w_q: Tensor, w_k: Tensor, causal: bool = False) -> Tensor:
    """softmax(X W_q (X W_k)ᵀ / √d_k): ``x (N, D)``, ``w_q, w_k (D, d_k)`` -> ``(N, N)``."""
    scores = (x @ w_q) @ (x @ w_k).T / math.sqrt(w_q.shape[1])
    if causal:
        n = x.shape[0]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1)


def self_attention_as_matrix(x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                             causal: bool = False) -> Tensor:
    """The ``(N·D_v, N·D)`` matrix M(X) with vec(Y) = M(X) vec(X) for Y = A(X) X W_v
    (row-major vec): M = A ⊗ W_vᵀ, block (i, j) = A_ij W_vᵀ. It depends on X through A."""
    return torch.kron(attention_weights(x, w_q, w_k, causal), w_v.T.contiguous())


@torch.no_grad()
def matrix_of_linear_map(fn: Callable[[Tensor], Tensor], in_shape: tuple[int, ...],
                         dtype: torch.dtype = torch.float64) -> Tensor:
    """The matrix of a linear ``fn`` on tensors of ``in_shape`` (row-major vec): column k is
    vec(fn(e_k)) for the k-th basis tensor e_k. Returns ``(fn's output numel, prod(in_shape))``."""
    n_in = math.prod(in_shape)
    basis = torch.eye(n_in, dtype=dtype).reshape(n_in, *in_shape)
    return torch.stack([fn(e).flatten() for e in basis], 1)


def token_blocks(matrix: Tensor, n_tokens: int) -> Tensor:
    """The ``(N·D_out, N·D_in)`` matrix of a map on sequences as its token-by-token blocks
    ``(N, N, D_out, D_in)``: block (i, j) says how token j's input moves token i's output."""
    rows, cols = matrix.shape
    blocks = matrix.reshape(n_tokens, rows // n_tokens, n_tokens, cols // n_tokens)
    return blocks.permute(0, 2, 1, 3)  # (i, j, D_out, D_in)


def attention_matrix_span(n: int, d: int, d_k: int, n_samples: int, shared_weights: bool,
                          generator: torch.Generator | None = None) -> int:
    """Dimension of the span of the matrices M(X) (:func:`self_attention_as_matrix`, ``(n·d,
    n·d)``) over ``n_samples`` random inputs X ``(n, d)``: with new random W_q, W_k ``(d, d_k)``,
    W_v ``(d, d)`` per sample, or one set for all (``shared_weights``, one layer)."""
    def weights() -> list[Tensor]:
        return [torch.randn(d, k, generator=generator, dtype=torch.float64) for k in (d_k, d_k, d)]

    fixed = weights()
    stacked = []
    for _ in range(n_samples):
        x = torch.randn(n, d, generator=generator, dtype=torch.float64)
        stacked.append(self_attention_as_matrix(x, *(fixed if shared_weights else weights())))
    return int(torch.linalg.matrix_rank(torch.stack(stacked).flatten(1)))


def multihead_cost(batch: int, seq: int, d_model: int, n_heads: int) -> dict[str, int]:
    """One self-attention forward of :class:`MultiHeadAttention` (no bias) on the ``meta`` device
    (shapes only, nothing allocated), measured: ``matmul_flops`` counted by PyTorch's
    ``FlopCounterMode`` (:func:`helpers.kv_cache.measured_flops`), and the elements and bytes
    (float32) of the attention maps it forms, ``(B, n_heads, seq, seq)``."""
    with torch.device("meta"):
        mha = MultiHeadAttention(d_model, n_heads, bias=False)
        x = torch.empty(batch, seq, d_model)
    flops = measured_flops(mha, x, x, x)
    maps = mha.last_weights
    return {"matmul_flops": flops, "map_elements": maps.numel(),
            "map_bytes": maps.numel() * maps.element_size()}
