"""Looking inside Vision Transformers: attention maps, attention rollout, map plots.

- :func:`attention_maps` collects every layer's attention probabilities ``(L, B, H, T, T)`` from a
  transformers ViT/DINOv2 (eager attention); :func:`cls_maps` keeps the [CLS] row as patch grids.
- :func:`rollout` is Attention Rollout (Abnar & Zuidema 2020): fuse heads (mean/max/min),
  optionally discard the weakest weights, add the identity for the residual, renormalise the rows
  and multiply through the layers; :func:`rollout_per_layer` keeps the product after each layer.
- :func:`top_share` and :func:`entropy_bits` measure how concentrated a map is.
- :func:`plot_map_grid` overlays patch maps on the image; :func:`plot_map_grids` splits a
  tall grid into several figures; :func:`plot_map_strip` lays a sequence of maps out in rows.

Masking heads (and head importance) is :mod:`helpers.head_masking`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
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


def rollout_per_layer(attn: Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                      residual_weight: float = 0.5) -> Tensor:
    """Attention Rollout (Abnar & Zuidema 2020) after every layer of ``attn (L, B, heads, T, T)``:
    ``(L, B, T, T)``, entry ``l`` = ``A~_l ... A~_1`` (how much each input token has flowed into
    token i after layer l; the last entry is :func:`rollout`).

    Per layer: ``W = fuse_heads(A)``; discard the weakest ``discard_ratio`` of W;
    ``A~ = (1 - a) W + a I`` with ``a = residual_weight`` (0.5 in the paper); rows renormalised to
    sum to 1; then the running product ``R_l = A~_l R_{l-1}``, ``R_0 = I``.
    """
    _, batch, _, tokens, _ = attn.shape
    eye = torch.eye(tokens, dtype=attn.dtype, device=attn.device).expand(batch, tokens, tokens)
    result, steps = eye.clone(), []
    for layer_attn in attn:
        weights = discard_lowest(fuse_heads(layer_attn, head_fusion), discard_ratio)
        a = (1 - residual_weight) * weights + residual_weight * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result  # (B, T, T)
        steps.append(result)
    return torch.stack(steps)


def rollout(attn: Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
            residual_weight: float = 0.5) -> Tensor:
    """Attention Rollout through all layers of ``attn (L, B, heads, T, T)``: ``(B, T, T)``, row i =
    how much each input token flows into token i at the last layer (the last entry of
    :func:`rollout_per_layer`)."""
    return rollout_per_layer(attn, head_fusion, discard_ratio, residual_weight)[-1]


def top_share(weights: Tensor, fraction: float = 0.1) -> Tensor:
    """Share of each distribution's mass on its ``fraction`` largest entries: non-negative
    ``weights (..., P)`` -> ``(...)``; ``fraction`` for a uniform row, 1 for a point."""
    k = max(1, int(weights.shape[-1] * fraction))
    return weights.sort(dim=-1, descending=True).values[..., :k].sum(-1) / weights.sum(-1)


def entropy_bits(weights: Tensor) -> Tensor:
    """Entropy in bits of distributions over the last dimension ``(..., P)`` (rows renormalised
    first): log2(P) for a uniform row, 0 for a point."""
    p = weights / weights.sum(-1, keepdim=True)
    return -(p * p.clamp_min(1e-12).log2()).sum(-1)


def upsample_map(grid_map: Tensor, size: tuple[int, int]) -> np.ndarray:
    """A patch map ``(gh, gw)`` -> ``(H, W)`` (bilinear), scaled to [0, 1] for overlays."""
    m = nn.functional.interpolate(grid_map[None, None].float(), size=size, mode="bilinear",
                                  align_corners=False)[0, 0]
    m = m - m.min()
    return (m / m.max().clamp_min(1e-12)).numpy()


# ------------------------------------------------------------------------------- plotting

def plot_map_grid(image: np.ndarray, maps: Tensor, row_labels: Sequence[str],
                  col_labels: Sequence[str], title: str = "", alpha: float = 0.6) -> Any:
    """A grid of heat maps ``maps (rows, cols, gh, gw)`` over ``image (H, W, 3)`` in [0, 1]."""
    import matplotlib.pyplot as plt

    from helpers.plotting import PAGE_WIDTH_INCHES

    rows, cols = maps.shape[:2]
    panel = min(1.3, (PAGE_WIDTH_INCHES - 0.6) / cols)  # no wider than the page: prints 1:1
    # constrained layout keeps the title clear of the column labels
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 0.6, panel * rows + 0.5),
                             squeeze=False, layout="constrained")
    size = image.shape[:2]
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(image)
            ax.imshow(upsample_map(maps[r, c], size), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(textwrap.fill(col_labels[c], int(13 * panel)), fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_map_grids(image: np.ndarray, maps: Tensor, row_labels: Sequence[str],
                   col_labels: Sequence[str], title: str = "", rows_per_figure: int = 4,
                   alpha: float = 0.6) -> list[Any]:
    """:func:`plot_map_grid` of ``maps (rows, cols, gh, gw)`` split into figures of at most
    ``rows_per_figure`` rows (as even as possible), so a tall grid prints as several figures of
    readable size; each title names its first and last row."""
    n_figures = -(-maps.shape[0] // rows_per_figure)
    figures = []
    for chunk in np.array_split(np.arange(maps.shape[0]), n_figures):
        first, last = int(chunk[0]), int(chunk[-1])
        part = f"{title}, {row_labels[first]} to {row_labels[last]}" if n_figures > 1 else title
        figures.append(plot_map_grid(image, maps[first:last + 1], row_labels[first:last + 1],
                                     col_labels, part, alpha))
    return figures


def plot_map_strip(image: np.ndarray, maps: Tensor, labels: Sequence[str], title: str = "",
                   per_row: int = 6, alpha: float = 0.6) -> Any:
    """Maps ``maps (n, gh, gw)`` over ``image (H, W, 3)`` in [0, 1], ``per_row`` to a row, each
    panel titled by its label (a sequence such as rollout after layer 1, 2, ...)."""
    import matplotlib.pyplot as plt

    from helpers.plotting import PAGE_WIDTH_INCHES

    n = maps.shape[0]
    rows = -(-n // per_row)
    panel = min(1.15, (PAGE_WIDTH_INCHES - 0.3) / per_row)  # no wider than the page
    fig, axes = plt.subplots(rows, per_row, figsize=(panel * per_row + 0.3, panel * rows + 0.5),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(image)
            ax.imshow(upsample_map(maps[i], image.shape[:2]), cmap="jet", alpha=alpha,
                      vmin=0, vmax=1)
            ax.set_title(labels[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
