"""Numerical checks for the theory questions: Monte Carlo of dot products, softmax
saturation, the single- vs multi-head constructions, the sinusoidal shift operator,
self-attention as one input-dependent matrix, and multi-head attention ≡ convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------- T2: 1/√d_k


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


# ----------------------------------------------------------------------------- T3: heads


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


# ----------------------------------------------------------------------------- T5: T^(k)


def frequencies(d_model: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """λ_m = 10000^(−2m/d_model) for m = 0 … d_model/2 − 1."""
    return torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=dtype) / d_model)


def shift_operator(k: int, lam: Tensor) -> Tensor:
    """T^(k) ``(d, d)``: block-diagonal with one 2×2 rotation [[cos kλ, sin kλ], [−sin kλ,
    cos kλ]] per frequency λ in ``lam (d/2,)``, so that T^(k) e(t) = e(t + k)."""
    c, s = torch.cos(k * lam), torch.sin(k * lam)
    blocks = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # (d/2, 2, 2)
    return torch.block_diag(*blocks)


# ----------------------------------------------------------------------------- attention as FC


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


# ----------------------------------------------------------------------------- T6: conv


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


def attention_as_convolution(image: Tensor, conv: torch.nn.Conv2d, alpha: float) -> Tensor:
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


# ----------------------------------------------------------------------------- T4: resolution


def interpolate_position_embeddings(pos: Tensor, new_grid: tuple[int, int],
                                    n_prefix: int = 1, mode: str = "bicubic") -> Tensor:
    """2-D interpolation of ViT position embeddings (ViT paper §3.2): ``pos (1, P + g·g, D)``
    with ``n_prefix`` P leading tokens ([CLS]) kept as they are -> ``(1, P + h'·w', D)``."""
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise ValueError(f"{grid.shape[1]} patch positions do not form a square grid")
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], 1)


def replicate_token_mixing(linear: torch.nn.Linear, copies: int) -> torch.nn.Linear:
    """A token-mixing layer for ``copies`` times as many tokens: block-diagonal copies of
    ``linear``'s weight (S_in → S_out becomes copies·S_in → copies·S_out), i.e. the original
    layer applied to each group of S_in consecutive tokens."""
    out = torch.nn.Linear(copies * linear.in_features, copies * linear.out_features,
                          bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(torch.block_diag(*[linear.weight] * copies))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.repeat(copies))
    return out
