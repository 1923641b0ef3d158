"""Transformer building blocks in the form of the Annotated Transformer handout, and the sinusoidal
shift operator T^(k) beside the positional encoding (sharif-1402-hw3 T5, sharif-1404-hw3 T2(d))."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """``n`` independent deep copies of ``module``."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class LayerNorm(nn.Module):
    """The handout's layer norm: γ·(x − μ)/(σ + ε) + β over the last axis.

    σ is the *unbiased* standard deviation and ε is added outside the root; PyTorch's
    ``nn.LayerNorm`` uses the biased variance inside the root, √(var + ε).
    """

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # unbiased (divides by n - 1)
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


class SublayerConnection(nn.Module):
    """Pre-norm residual: x + dropout(sublayer(norm(x))), shape-preserving ``(B, L, d)``."""

    def __init__(self, size: int, dropout: float, norm: Callable[[int], nn.Module] = LayerNorm):
        super().__init__()
        self.norm = norm(size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        return x + self.dropout(sublayer(self.norm(x)))


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = W₂ dropout(ReLU(W₁x + b₁)) + b₂, applied at every position: ``(B, L, d)``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.w_1(x).relu()))


class Embeddings(nn.Module):
    """Token embedding scaled by √d_model: ``(B, L)`` ids -> ``(B, L, d_model)``."""

    def __init__(self, d_model: int, vocab: int):
        super().__init__()
        self.lut = nn.Embedding(vocab, d_model)
        self.d_model = d_model

    def forward(self, x: Tensor) -> Tensor:
        return self.lut(x) * math.sqrt(self.d_model)


def sinusoidal_positional_encoding(n_positions: int, d_model: int, *,
                                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The paper's table ``(n_positions, d_model)``: column 2i = sin(t/10000^(2i/d)), 2i+1 = cos.

    Computed in float64 and returned in ``dtype`` (float64 for exact checks)."""
    if d_model % 2:
        raise ValueError(f"d_model must be even for interleaved sin/cos, got {d_model}")
    position = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (n, 1)
    div_term = torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position / div_term)
    pe[:, 1::2] = torch.cos(position / div_term)
    return pe.to(dtype)


def sinusoidal_frequencies(d_model: int, first: int = 0,
                           dtype: torch.dtype = torch.float64) -> Tensor:
    """λ_m = 10000^(−2m/d_model) for m = first … first + d_model/2 − 1 ``(d_model/2,)``: the
    table's m = 0 … (``first=0``) or the sharif-1402-hw3 T5 question's m = 1 … (``first=1``)."""
    return torch.pow(10000.0, -torch.arange(2 * first, 2 * first + d_model, 2, dtype=dtype)
                     / d_model)


def shift_operator(k: int, lam: Tensor) -> Tensor:
    """T^(k) ``(d, d)``: block-diagonal with one 2×2 rotation [[cos kλ, sin kλ], [−sin kλ,
    cos kλ]] per frequency λ in ``lam (d/2,)``, so that T^(k) e(t) = e(t + k)."""
    c, s = torch.cos(k * lam), torch.sin(k * lam)
    blocks = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # (d/2, 2, 2)
    return torch.block_diag(*blocks)


@dataclass(frozen=True)
class ShiftCheck:
    """What :func:`shift_operator_check` measured (max absolute errors, float64)."""

    errors: dict[int, tuple[float, float]]  # k -> (paper's frequencies, question's)
    orthogonality_error: float  # max |T^(k)ᵀ T^(k) − I| at the largest k
    power_error: float  # max |(T^(1))^k − T^(k)| at the largest k
    transposed_error: float  # the wrong operator T^(1)ᵀ: max |T^(1)ᵀ e(t) − e(t+1)|
    n_positions: int = 0

    def lines(self) -> str:
        """The measurements as printable lines, one per shift, then the operator's checks."""
        rows = [f"k={k:5d}: max_t |T^(k) E_t - E_(t+k)| = {paper:.2e} (paper's frequencies), "
                f"{question:.2e} (question's), over {self.n_positions - k} positions"
                for k, (paper, question) in self.errors.items()]
        rows += [f"T^(k) orthogonal: max |T^T T - I| = {self.orthogonality_error:.1e}; "
                 f"T^(k) = (T^(1))^k: max diff {self.power_error:.1e} (k = {max(self.errors)})",
                 f"the transposed operator fails, as it should: error "
                 f"{self.transposed_error:.2f}"]
        return "\n".join(rows)

    @property
    def max_error(self) -> float:
        """The largest shift error over every k and both frequency sets."""
        return max(max(pair) for pair in self.errors.values())


def shift_operator_check(n_positions: int, d_model: int, shifts: Sequence[int]) -> ShiftCheck:
    """T^(k) e(t) = e(t + k) checked for every valid t ∈ {1..n−k} and k in ``shifts``, in float64,
    on the table of :func:`sinusoidal_positional_encoding` (the paper's frequencies, m = 0 …) and
    on the question's encoding (f_m = 10000^(2m/d), m = 1 …, positions t = 1 … n); plus
    orthogonality of T^(k), T^(k) = (T^(1))^k, and that the transposed rotation fails."""
    table = sinusoidal_positional_encoding(n_positions, d_model, dtype=torch.float64)  # (n, d)
    lam = sinusoidal_frequencies(d_model)
    lam_question = sinusoidal_frequencies(d_model, first=1)
    t = torch.arange(1, n_positions + 1, dtype=torch.float64).unsqueeze(1)
    question = torch.stack([torch.sin(t * lam_question), torch.cos(t * lam_question)],
                           -1).flatten(1)  # (n, d), interleaved sin/cos

    def error(e: Tensor, k: int, frequencies: Tensor) -> float:
        return (e[:n_positions - k] @ shift_operator(k, frequencies).T - e[k:]).abs().max().item()

    errors = {k: (error(table, k, lam), error(question, k, lam_question)) for k in shifts}
    k = max(shifts)
    t_1, t_k = shift_operator(1, lam), shift_operator(k, lam)
    eye = torch.eye(d_model, dtype=torch.float64)
    return ShiftCheck(
        errors=errors,
        orthogonality_error=(t_k.T @ t_k - eye).abs().max().item(),
        power_error=(torch.linalg.matrix_power(t_1, k) - t_k).abs().max().item(),
        transposed_error=(table[:-1] @ t_1 - table[1:]).abs().max().item(),
        n_positions=n_positions)


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal table to ``(B, L, d_model)`` embeddings, then dropout."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model).unsqueeze(0))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_len {self.pe.shape[1]}")
        return self.dropout(x + self.pe[:, : x.shape[1]])


def subsequent_mask(size: int) -> Tensor:
    """Causal mask ``(1, size, size)``: True where position i may attend to j (j ≤ i)."""
    return torch.tril(torch.ones(1, size, size, dtype=torch.bool))
