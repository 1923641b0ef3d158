"""Parameter-efficient fine-tuning written by hand.

``LoRALinear(base, r, alpha)`` wraps a frozen ``nn.Linear``: y = base(x) + (α/r) · x Aᵀ Bᵀ
with ``A (r, in)`` initialised like ``peft`` (Kaiming-uniform, a = √5) and ``B (out, r)``
zero, so the wrapped layer starts equal to the base layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update scaled by ``alpha / r``.

    ``forward(x (..., in))`` -> ``(..., out)``. ``merge()`` folds (α/r)·B A into the base
    weight (no extra cost at inference), ``unmerge()`` takes it out again.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float = 1.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"rank r must be >= 1, got {r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype,
                                               device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype,
                                               device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft's LoRA layer
        self.merged = False

    def delta_weight(self) -> Tensor:
        """(α/r) · B A, shaped like the base weight ``(out, in)``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to the base weight; forward then skips the low-rank path."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (inverse of :meth:`merge`)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(module: nn.Module, r: int, alpha: float = 1.0,
               names: tuple[str, ...] | None = None) -> nn.Module:
    """Freeze ``module`` and replace each ``nn.Linear`` child (those whose attribute name is in
    ``names``, or all) by a :class:`LoRALinear`, recursively; returns ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and (names is None or name in names):
            setattr(module, name, LoRALinear(child, r, alpha))
        else:
            apply_lora(child, r, alpha, names)
    return module


def count_trainable(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def lora_parameters(d_in: int, d_out: int, r: int) -> int:
    """Trainable numbers LoRA adds to one ``d_in → d_out`` matrix: r·(d_in + d_out)."""
    return r * (d_in + d_out)


def encoder_block_lora_parameters(d: int, r: int, ffn_mult: int = 4) -> int:
    """LoRA on W_q, W_k, W_v, W_o (d×d) and the FFN's d×4d and 4d×d, no biases:
    4·2dr + 2·(1+4)dr = 18·d·r for ``ffn_mult`` 4."""
    return 4 * lora_parameters(d, d, r) + 2 * lora_parameters(d, ffn_mult * d, r)
