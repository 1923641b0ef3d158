"""Parameter-efficient fine-tuning written by hand.

``LoRALinear(base, r, alpha)`` wraps a frozen ``nn.Linear``: y = base(x) + (α/r) · x Aᵀ Bᵀ
with ``A (r, in)`` initialised like ``peft`` (Kaiming-uniform, a = √5) and ``B (out, r)``
zero, so the wrapped layer starts equal to the base layer.

``BottleneckAdapter(d, m)`` is Houlsby's adapter h + W_up·act(W_down·h) with W_up = 0 at
the start; ``apply_adapters(encoder, m, "houlsby" | "pfeiffer")`` freezes a HF BERT/RoBERTa
encoder and inserts adapters after each layer's attention output and feed-forward
(Houlsby) or after the feed-forward only (Pfeiffer).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update scaled by ``alpha / r``.

    ``forward(x (..., in))`` -> ``(..., out)``. ``merge()`` folds (α/r)·B A into the base
    weight (no extra cost at inference).
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


def lora_parameters(d_in: int, d_out: int, r: int) -> int:
    """Trainable numbers LoRA adds to one ``d_in → d_out`` matrix: r·(d_in + d_out)."""
    return r * (d_in + d_out)


def encoder_block_lora_parameters(d: int, r: int, ffn_mult: int = 4) -> int:
    """LoRA on W_q, W_k, W_v, W_o (d×d) and the FFN's d×4d and 4d×d, no biases:
    4·2dr + 2·(1+4)dr = 18·d·r for ``ffn_mult`` 4."""
    return 4 * lora_parameters(d, d, r) + 2 * lora_parameters(d, ffn_mult * d, r)


# --------------------------------------------------------------------------- adapters

ADAPTER_CONFIGS: dict[str, tuple[str, ...]] = {
    # where adapters go in each layer: after the attention block's output projection
    # ("attention") and after the feed-forward block ("ffn")
    "houlsby": ("attention", "ffn"),   # Houlsby et al. 2019: two per layer
    "pfeiffer": ("ffn",),              # Pfeiffer et al. 2021: feed-forward only
}


class BottleneckAdapter(nn.Module):
    """Houlsby's bottleneck adapter: h + W_up · act(W_down · h + b_down) + b_up.

    ``forward(h (..., d))`` -> ``(..., d)``. ``down`` is ``d → m``, ``up`` is ``m → d`` and
    starts at zero (weight and bias), so a fresh adapter is the identity map.
    Trainable numbers: 2·d·m + d + m.
    """

    def __init__(self, d: int, bottleneck: int, activation: str = "relu"):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"bottleneck size must be >= 1, got {bottleneck}")
        acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(acts)}")
        self.down = nn.Linear(d, bottleneck)
        self.act = acts[activation]()
        self.up = nn.Linear(bottleneck, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.act(self.down(h)))


class AdapterAfter(nn.Module):
    """``inner`` followed by an adapter: ``forward(x) = adapter(inner(x))``.

    Wrapped around a BERT/RoBERTa sub-layer's output dropout, it puts the adapter where
    Houlsby's reference code does: projection → dropout → **adapter** → + residual → LayerNorm.
    """

    def __init__(self, inner: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.inner, self.adapter = inner, adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(self.inner(x))


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a HF BERT-family encoder (BERT, RoBERTa, MiniLM, ...):
    modules with ``attention.output`` and ``output``, each holding ``dropout`` and ``LayerNorm``."""
    def is_layer(m: nn.Module) -> bool:
        att = getattr(getattr(m, "attention", None), "output", None)
        subs = (att, getattr(m, "output", None))
        return all(s is not None and hasattr(s, "dropout") and hasattr(s, "LayerNorm")
                   for s in subs)

    layers = [m for m in model.modules() if is_layer(m)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BERT-style layers "
                         "(attention.output / output with dropout and LayerNorm)")
    return layers


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``module``; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def apply_adapters(model: nn.Module, bottleneck: int, config: str = "houlsby",
                   train_layernorm: bool = True, activation: str = "relu",
                   ) -> list[BottleneckAdapter]:
    """Freeze ``model`` (a HF BERT/RoBERTa encoder) and insert bottleneck adapters into every
    layer at the places ``ADAPTER_CONFIGS[config]`` names; returns the adapters.

    Trainable afterwards: the adapters and, with ``train_layernorm``, every ``nn.LayerNorm``
    of ``model`` (Houlsby trains the layer norms too). A classification head kept outside
    ``model`` is untouched. Before training the model computes exactly what it did before.
    """
    if config not in ADAPTER_CONFIGS:
        raise ValueError(f"unknown adapter config {config!r}; valid: {', '.join(ADAPTER_CONFIGS)}")
    layers = encoder_layers(model)
    freeze(model)
    adapters = []
    for layer in layers:
        for place in ADAPTER_CONFIGS[config]:
            sub = layer.attention.output if place == "attention" else layer.output
            if isinstance(sub.dropout, AdapterAfter):
                raise ValueError("model already holds adapters")
            d = sub.LayerNorm.normalized_shape[0]
            ref = sub.LayerNorm.weight
            adapter = BottleneckAdapter(d, bottleneck, activation).to(ref.device, ref.dtype)
            sub.dropout = AdapterAfter(sub.dropout, adapter)
            adapters.append(adapter)
    if train_layernorm:
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                for p in m.parameters():
                    p.requires_grad_(True)
    return adapters


def adapter_parameters(d: int, bottleneck: int) -> int:
    """Trainable numbers of one adapter ``d → m → d`` with biases: 2·d·m + d + m."""
    return 2 * d * bottleneck + d + bottleneck


def encoder_adapter_parameters(d: int, bottleneck: int, n_layers: int, config: str = "houlsby",
                               n_layernorms: int = 0) -> int:
    """Trainable numbers :func:`apply_adapters` leaves in an ``n_layers`` encoder of width
    ``d``: adapters per layer × (2dm + d + m) + 2d per trainable LayerNorm (a BERT encoder
    has 2·n_layers + 1 of them, the embeddings' included)."""
    return (n_layers * len(ADAPTER_CONFIGS[config]) * adapter_parameters(d, bottleneck)
            + n_layernorms * 2 * d)
