"""Transformer building blocks in the form of the Annotated Transformer handout."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

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
