"""Looking inside Vision Transformers: attention maps, attention rollout, head masking.

- :func:`attention_maps` collects every layer's attention probabilities ``(L, B, H, T, T)`` from a
  transformers ViT/DINOv2 (eager attention); :func:`cls_maps` keeps the [CLS] row as patch grids.
- :func:`rollout` is Attention Rollout (Abnar & Zuidema 2020): fuse heads (mean/max/min),
  optionally discard the weakest weights, add the identity for the residual, renormalise the rows
  and multiply through the layers.
- :class:`HeadMaskedModel` scales each head's output by a mask ``(L, H)`` just before the output
  projection ``o_proj`` (a forward pre-hook), so ``mask = 0`` removes the head's contribution and a
  grad-requiring mask gives Michel et al.'s (2019) importance ``|dL/d xi_h|``. It has
  ``set_head_mask``, so the ablation tools of :mod:`helpers.attention_variants`
  (``head_importance``, ``single_head_ablation``, ``pruning_curve``) work on it unchanged.
- :class:`CachedMaskEvaluator` evaluates a masked classifier from cached per-layer token states,
  recomputing only from the first layer that has a masked head.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HEAD_FUSIONS = ("mean", "max", "min")


# ------------------------------------------------------------------------------ attention

@torch.no_grad()
def attention_maps(model: nn.Module, pixels: Tensor) -> Tensor:
    """Every layer's attention probabilities for ``pixels (B, 3, H, W)``: ``(L, B, heads, T, T)``
    (T = 1 + patches; rows attend over columns). The model needs eager attention."""
    out = model(pixel_values=pixels, output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError("the model returned no attentions: load it with "
                         "attn_implementation='eager'")
    return torch.stack(list(out.attentions))


def cls_maps(attn: Tensor, grid: tuple[int, int]) -> Tensor:
    """[CLS] row of ``attn (..., T, T)`` over the patches, as ``(..., gh, gw)``."""
    return attn[..., 0, 1:].reshape(*attn.shape[:-2], *grid)


def fuse_heads(attn: Tensor, head_fusion: str = "mean") -> Tensor:
    """``(..., heads, T, T)`` -> ``(..., T, T)`` by the mean, max or min over heads."""
    if head_fusion == "mean":
        return attn.mean(dim=-3)
    if head_fusion == "max":
        return attn.amax(dim=-3)
    if head_fusion == "min":
        return attn.amin(dim=-3)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def discard_lowest(weights: Tensor, ratio: float) -> Tensor:
    """Zero the ``ratio`` fraction of smallest entries of each ``(T, T)`` matrix in ``weights
    (B, T, T)``, never the [CLS]->[CLS] entry (as in the common rollout implementation)."""
    if ratio <= 0:
        return weights
    flat = weights.flatten(1).clone()  # (B, T*T)
    k = int(flat.shape[1] * ratio)
    if k == 0:
        return weights
    candidates = flat.clone()
    candidates[:, 0] = float("inf")  # keep CLS -> CLS
    _, index = candidates.topk(k, dim=1, largest=False)
    flat.scatter_(1, index, 0.0)
    return flat.view_as(weights)


def rollout(attn: Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
            residual_weight: float = 0.5) -> Tensor:
    """Attention Rollout of ``attn (L, B, heads, T, T)``: ``(B, T, T)``, row i = how much each
    input token flows into token i at the last layer.

    Per layer: ``W = fuse_heads(A)``; discard the weakest ``discard_ratio`` of W;
    ``A~ = (1 - a) W + a I`` with ``a = residual_weight`` (0.5 in the paper); rows renormalised to
    sum to 1; then ``R = A~_L ... A~_2 A~_1``.
    """
    _, batch, _, tokens, _ = attn.shape
    eye = torch.eye(tokens, dtype=attn.dtype, device=attn.device).expand(batch, tokens, tokens)
    result = eye.clone()
    for layer_attn in attn:
        weights = discard_lowest(fuse_heads(layer_attn, head_fusion), discard_ratio)
        a = (1 - residual_weight) * weights + residual_weight * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result  # (B, T, T)
    return result


def upsample_map(grid_map: Tensor, size: tuple[int, int]) -> np.ndarray:
    """A patch map ``(gh, gw)`` -> ``(H, W)`` (bilinear), scaled to [0, 1] for overlays."""
    m = nn.functional.interpolate(grid_map[None, None].float(), size=size, mode="bilinear",
                                  align_corners=False)[0, 0]
    m = m - m.min()
    return (m / m.max().clamp_min(1e-12)).numpy()


# --------------------------------------------------------------------------- head masking

def _attention_modules(backbone: nn.Module) -> list[nn.Module]:
    return [layer.attention for layer in backbone.encoder.layer]


class HeadMaskedModel(nn.Module):
    """``model`` (any module built on ``backbone``) with a head mask ``(L, H)``: head h of layer l
    is multiplied by ``mask[l, h]`` before that layer's ``o_proj``. Call :meth:`remove` (or use
    ``with``) to take the hooks off the backbone again."""

    def __init__(self, model: nn.Module, backbone: nn.Module):
        super().__init__()
        self.model = model
        modules = _attention_modules(backbone)
        self.n_layers = len(modules)
        self.n_heads = backbone.config.num_attention_heads
        self.head_mask: Tensor = torch.ones(self.n_layers, self.n_heads)
        self._handles = [m.o_proj.register_forward_pre_hook(partial(self._hook, i))
                         for i, m in enumerate(modules)]

    def _hook(self, layer: int, module: nn.Module, args: tuple[Tensor, ...]) -> Any:
        row = self.head_mask[layer]
        if not row.requires_grad and bool((row == 1).all()):
            return None
        x = args[0]  # (B, T, H * dh)
        heads = x.view(*x.shape[:-1], self.n_heads, -1)  # (B, T, H, dh)
        scaled = heads * row.to(x.device, x.dtype).view(self.n_heads, 1)
        return (scaled.reshape(x.shape), *args[1:])

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_layers, self.n_heads

    def set_head_mask(self, mask: Tensor) -> None:
        """Install ``mask (L, H)`` (kept by reference, so a grad-requiring mask gets gradients)."""
        if tuple(mask.shape) != self.shape:
            raise ValueError(f"mask must be {self.shape}, got {tuple(mask.shape)}")
        self.head_mask = mask

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def remove(self) -> None:
        """Take the hooks off (the wrapped model behaves as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> HeadMaskedModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class CachedMaskEvaluator:
    """Accuracy of a :class:`HeadMaskedModel` over a fixed set, from cached token states.

    ``states[l]`` are the tokens entering layer ``l`` ``(N, T, D)`` for l = 0..L-1, computed
    without masks; ``tail(hidden, start)`` maps the tokens entering layer ``start`` to logits.
    A call recomputes from the first layer with a masked head only. Each call's accuracy and
    mean cross-entropy are appended to ``history``.
    """

    def __init__(self, states: Sequence[Tensor], labels: Tensor, tail: Any,
                 batch_size: int = 256):
        self.states, self.labels, self.tail = list(states), labels, tail
        self.batch_size = batch_size
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def __call__(self, model: HeadMaskedModel) -> float:
        masked = (model.head_mask.detach() != 1).any(dim=1).nonzero()
        start = int(masked[0]) if len(masked) else len(self.states) - 1
        hidden = self.states[start]
        logits = torch.cat([self.tail(hidden[i:i + self.batch_size], start)
                            for i in range(0, len(hidden), self.batch_size)])
        accuracy = (logits.argmax(-1) == self.labels).float().mean().item()
        loss = nn.functional.cross_entropy(logits, self.labels).item()
        self.history.append({"accuracy": accuracy, "loss": loss})
        return accuracy


def rank_heads(scores: Tensor, descending: bool = True) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs of ``scores (L, H)`` sorted by score (most important first)."""
    order = scores.flatten().argsort(descending=descending, stable=True).tolist()
    heads = scores.shape[1]
    return [(i // heads, i % heads) for i in order]


# ------------------------------------------------------------------------------- plotting

def plot_map_grid(image: np.ndarray, maps: Tensor, row_labels: Sequence[str],
                  col_labels: Sequence[str], title: str = "", alpha: float = 0.6) -> Any:
    """A grid of heat maps ``maps (rows, cols, gh, gw)`` over ``image (H, W, 3)`` in [0, 1]."""
    import matplotlib.pyplot as plt

    rows, cols = maps.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.6, 1.3 * rows + 0.5),
                             squeeze=False)
    size = image.shape[:2]
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(image)
            ax.imshow(upsample_map(maps[r, c], size), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def masks_after(order: Sequence[tuple[int, int]], counts: Sequence[int],
                shape: tuple[int, int]) -> list[Tensor]:
    """Head masks ``(L, H)`` with the first ``count`` heads of ``order`` removed, per count."""
    masks = []
    for count in counts:
        mask = torch.ones(shape)
        for layer, head in order[:count]:
            mask[layer, head] = 0
        masks.append(mask)
    return masks


def head_labels(heads: Sequence[tuple[int, int]]) -> str:
    """``[(11, 2), (0, 5)]`` -> ``"L11H2,L0H5"`` (0-based layer and head)."""
    return ",".join(f"L{layer}H{head}" for layer, head in heads)
