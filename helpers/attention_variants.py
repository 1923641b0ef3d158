"""Attention beyond scaled dot-product: additive (Bahdanau) attention, hard (argmax) attention and
its zero-temperature softmax form, two heads with a key of isotropic noise (sharif-1402-hw3 T3),
and multi-head self-attention with Gaussian relative-position scores, which reproduces a
convolution (Cordonnier et al. 2020; sharif-1404-hw3 T6).

Masks follow ``helpers.attention``: boolean, ``True`` = may attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import attention
from helpers.attention import masked_softmax


class AdditiveAttention(nn.Module):
    """Additive attention: ``score(q, k) = w^T tanh(W_q q + W_k k)``, softmax over the keys.

    ``forward(q (B, Lq, d_query), k (B, Lk, d_key), v (B, Lk, d_value), mask)`` returns
    ``(output (B, Lq, d_value), weights (B, Lq, Lk))``. One bias (in ``W_q``) is enough: a bias in
    both maps only adds up, and a bias on the score cancels in the softmax.
    """

    def __init__(self, d_query: int, d_key: int, d_hidden: int, bias: bool = False):
        super().__init__()
        self.w_q = nn.Linear(d_query, d_hidden, bias=bias)
        self.w_k = nn.Linear(d_key, d_hidden, bias=False)
        self.w = nn.Linear(d_hidden, 1, bias=False)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """``(B, Lq, Lk)``; builds the ``(B, Lq, Lk, d_hidden)`` tanh features."""
        features = torch.tanh(self.w_q(q).unsqueeze(-2) + self.w_k(k).unsqueeze(-3))
        return self.w(features).squeeze(-1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights = masked_softmax(self.scores(q, k), mask)
        return weights @ v, weights


class MultiHeadAdditiveAttention(nn.Module):
    """Multi-head additive attention: head i projects the query, key and value to ``d_head``
    (``W_q^i, W_k^i, W_v^i``), scores with its own ``w^i in R^d_head``, and the concatenated heads
    go through ``W_o (d_out, n_heads * d_head)``.

    ``forward(q (B, Lq, d_query), k (B, Lk, d_key), v (B, Lk, d_value), mask)`` returns
    ``(output (B, Lq, d_out), weights (B, n_heads, Lq, Lk))``. With ``bias=True`` the q/k/v and
    output projections have biases (the scoring vectors never do).
    """

    def __init__(self, d_query: int, d_key: int, d_value: int, n_heads: int, d_head: int,
                 d_out: int, bias: bool = True):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.q_proj = nn.Linear(d_query, n_heads * d_head, bias=bias)  # all heads' W_q^i stacked
        self.k_proj = nn.Linear(d_key, n_heads * d_head, bias=bias)
        self.v_proj = nn.Linear(d_value, n_heads * d_head, bias=bias)
        self.score = nn.Parameter(torch.randn(n_heads, d_head) / d_head ** 0.5)  # w^i per head
        self.out_proj = nn.Linear(n_heads * d_head, d_out, bias=bias)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)  # (B, nh, L, dh)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        qh, kh, vh = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(
            self.v_proj(v))
        features = torch.tanh(qh.unsqueeze(-2) + kh.unsqueeze(-3))  # (B, nh, Lq, Lk, dh)
        scores = torch.einsum("bhqkd,hd->bhqk", features, self.score)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, Lq|1, Lk) -> (B, 1, Lq|1, Lk)
        weights = masked_softmax(scores, mask)
        out = weights @ vh  # (B, nh, Lq, dh)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1)), weights


def hard_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """"Argmax" attention: each query returns the value of its highest dot-product key.

    ``q (..., Lq, d)``, ``k (..., Lk, d)``, ``v (..., Lk, dv)`` -> ``(output (..., Lq, dv),
    index (..., Lq))``. The index is piecewise constant in q and k, so gradients reach only v.
    """
    scores = q @ k.transpose(-2, -1)  # (..., Lq, Lk)
    index = scores.argmax(dim=-1)
    one_hot = nn.functional.one_hot(index, scores.shape[-1]).to(v.dtype)  # no grad path to q, k
    return one_hot @ v, index


ZERO_TEMPERATURE_MARGIN = 1000.0
"""exp(-1000) underflows to 0 in float32 and float64 alike."""


def zero_temperature_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Argmax attention as the τ → 0 limit of softmax attention, with the graph to q and k kept:
    ``softmax(q kᵀ / τ) v`` at τ = (smallest gap between a query's two best scores) / 1000, where
    every weight but the winner's underflows to exactly 0 and the winner's is exactly 1.

    Same shapes and output as :func:`hard_attention`; returns ``(output (..., Lq, dv),
    weights (..., Lq, Lk))``. τ is a constant (computed without gradient); raises on a tie,
    where argmax jumps.
    """
    scores = q @ k.transpose(-2, -1)  # (..., Lq, Lk)
    best_two = scores.detach().topk(2, dim=-1).values
    gap = (best_two[..., 0] - best_two[..., 1]).min()
    if gap <= 0:
        raise ValueError("two keys tie for the highest score: argmax is not differentiable there")
    weights = (scores / (gap / ZERO_TEMPERATURE_MARGIN)).softmax(-1)
    return weights @ v, weights


def two_heads_with_wide_key(d: int, n_keys: int, beta: float, alpha: float, stretch: float,
                            key_variance: float, n_samples: int,
                            generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """sharif-1402-hw3 T3 (d)(ii) as printed: key a drawn with
    Σ_a = key_variance·I + stretch·μ_aμ_aᵀ (the Persian text has key_variance = 1), the others
    with Σ_i = αI; orthonormal means and values ``(n_keys, d)``, a = 0, b = 1; heads q₁ = βμ_a,
    q₂ = βμ_b and c = ½(c₁ + c₂), and for comparison the single head q = β(μ_a + μ_b) of (c).

    Returns, per sample ``(S,)``: ``two_heads`` and ``one_head``, the weight of v_a in c
    (½ = the average, 1 = v_a, 0 = v_b); ``head2_on_a``, head 2's attention weight on k_a; and
    the scores ``head1_key_score`` = k_a·q₁, ``head2_key_score`` = k_a·q₂ and
    ``head2_target_score`` = k_b·q₂.
    """
    if key_variance < alpha:
        raise ValueError("key_variance must be at least alpha")
    a, b = 0, 1
    mu = attention.orthonormal_columns(d, n_keys, generator).T  # (n, d) orthonormal means
    values = attention.orthonormal_columns(d, n_keys, generator).T  # orthonormal values
    keys = attention.sample_keys(mu, alpha, n_samples, stretched=a, stretch=stretch,
                                 generator=generator)  # (S, n, d); Σ_a = αI + stretch μ_aμ_aᵀ
    keys[:, a] += torch.randn(n_samples, d, generator=generator,
                              dtype=mu.dtype) * math.sqrt(key_variance - alpha)
    q1, q2 = beta * mu[a], beta * mu[b]
    c1, _ = attention.attend(q1, keys, values)
    c2, head2 = attention.attend(q2, keys, values)
    c_single, _ = attention.attend(q1 + q2, keys, values)

    def weight(c: Tensor) -> Tensor:
        return attention.weight_on(c, values[a], values[b])

    return {"two_heads": weight(0.5 * (c1 + c2)), "one_head": weight(c_single),
            "head2_on_a": head2[:, a], "head1_key_score": keys[:, a] @ q1,
            "head2_key_score": keys[:, a] @ q2, "head2_target_score": keys[:, b] @ q2}


# ------------------------------------------------ attention ≡ convolution (sharif-1404-hw3 T6)


def kernel_shifts(kernel_size: int) -> list[tuple[int, int]]:
    """Δ_K of the question, in head order: (δ1, δ2) for δ ∈ [⌊−K/2⌋ … ⌊(K−1)/2⌋]² (row-major)."""
    r = range(-(kernel_size // 2), (kernel_size - 1) // 2 + 1)
    return [(a, b) for a in r for b in r]


def gaussian_relative_scores(height: int, width: int, shift: tuple[int, int], alpha: float,
                             dtype: torch.dtype = torch.float64) -> Tensor:
    """A^(h)_{q,k} = vᵀ r_δ with v = −α(1, −2Δ1, −2Δ2), r_δ = (‖δ‖², δ1, δ2), δ = k − q
    (eq. 7 with W_q = W_k = 0): ``(HW, HW)``. Equals −α‖δ − Δ‖² + α‖Δ‖²."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], -1).to(dtype)  # (HW, 2)
    delta = pos.unsqueeze(0) - pos.unsqueeze(1)  # (q, k, 2): k − q
    r = torch.cat([(delta ** 2).sum(-1, keepdim=True), delta], -1)  # (q, k, 3)
    v = -alpha * torch.tensor([1.0, -2.0 * shift[0], -2.0 * shift[1]], dtype=dtype)
    return r @ v


def attention_as_convolution(image: Tensor, conv: nn.Conv2d, alpha: float) -> Tensor:
    """Theorem 1 + 2 run in code: a K²-head self-attention over the zero-padded pixels of
    ``image (C_in, H, W)`` with Gaussian relative scores (one head per shift Δ, W^(h) =
    W_v^(h) W_out^(h) = the conv kernel at Δ, b_out = the conv bias) -> ``(C_out, H, W)``.
    Equals ``conv(image)`` ('same' padding, dilation r: the head's shift is r·Δ) as α → ∞;
    a stride s is the stride-1 output subsampled, ``[:, ::s, ::s]``."""
    k, dil = conv.kernel_size[0], conv.dilation[0]
    if conv.padding[0] != dil * (k // 2):
        raise ValueError("the construction covers 'same' padding = dilation·(K//2)")
    pad = dil * (k // 2)
    c_in, h, w = image.shape
    z = F.pad(image, (pad, pad, pad, pad))  # padded pixels are tokens with zero features
    hp, wp = h + 2 * pad, w + 2 * pad
    tokens = z.flatten(1).T.to(torch.float64)  # (N, C_in)
    weight = conv.weight.detach().to(torch.float64)  # (C_out, C_in, K, K)
    out = torch.zeros(hp * wp, weight.shape[0], dtype=torch.float64)
    for d1, d2 in kernel_shifts(k):
        probs = gaussian_relative_scores(hp, wp, (dil * d1, dil * d2), alpha).softmax(-1)
        w_h = weight[:, :, d1 + k // 2, d2 + k // 2].T  # (C_in, C_out): W^(h)
        out += probs @ tokens @ w_h
    if conv.bias is not None:
        out += conv.bias.detach().to(torch.float64)
    out = out.T.reshape(-1, hp, wp)[:, pad:pad + h, pad:pad + w]
    return out[:, ::conv.stride[0], ::conv.stride[1]]


def mhsa_parameter_count(d_in: int, d_hid: int, d_o: int, d_out: int, n_heads: int) -> int:
    """Trainable parameters of eq. (3): per head W_q, W_k (D_in × D_hid), W_v (D_in × D_o);
    W_out (N_h D_o × D_out) and b_out (D_out)."""
    return n_heads * (2 * d_in * d_hid + d_in * d_o) + n_heads * d_o * d_out + d_out
