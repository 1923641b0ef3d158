"""Plot helpers shared by the notebooks: the Persian font, labelled heat maps and captioned
image grids sized for an A4 report page."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager

from helpers.nb import PROJECT_ROOT
from helpers.nb.export import PRINTED_WIDTH_INCHES

# A figure this wide prints at full size on an A4 report page; a wider one shrinks with its
# text, and the export warns below 70 % (10 pt labels at 7 pt, a figure over 8.6 in).
PAGE_WIDTH_INCHES = PRINTED_WIDTH_INCHES

VAZIRMATN = PROJECT_ROOT / ".tools" / "node_modules" / "vazirmatn" / "fonts" / "ttf" / \
    "Vazirmatn-Regular.ttf"


def persian_font(path: Path = VAZIRMATN) -> font_manager.FontProperties:
    """Vazirmatn, for Persian labels: ``ax.set_title(text, fontproperties=persian_font())``.

    matplotlib (≥ 3.11) shapes right-to-left text itself; the bundled DejaVu Sans also has
    Arabic-script glyphs, so Persian renders either way, but Vazirmatn is the typeface made
    for it. Fails with one message if the font is not installed.
    """
    if not path.exists():
        raise FileNotFoundError(f"Persian font not found at {path}; run `make tools` "
                                "(npm install of the vazirmatn package into .tools/)")
    font_manager.fontManager.addfont(str(path))
    return font_manager.FontProperties(fname=str(path))


def heatmap(ax: plt.Axes, matrix, title: str, xlabel: str, ylabel: str,
            xticklabels: Sequence[str] | None = None, yticklabels: Sequence[str] | None = None,
            cmap: str = "viridis", colorbar_label: str | None = None, **kwargs):
    """Draw a labelled 2-D heat map of ``matrix (rows, cols)`` on ``ax``; returns the image."""
    data = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix)
    if data.ndim != 2:
        raise ValueError(f"heatmap expects a 2-D matrix, got shape {data.shape}")
    image = ax.imshow(data, cmap=cmap, aspect="auto", **kwargs)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), xticklabels, rotation=90)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), yticklabels)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if colorbar_label:
        bar.set_label(colorbar_label)
    return image


def shift_operator_figure(n_positions: int, d_model: int, k: int = 3, t0: int = 5,
                          show: int = 16) -> plt.Figure:
    """Left: the first ``show`` coordinates of T^(k); right: E_(t0+k) beside T^(k) E_t0 on the
    sinusoidal table (the paper's frequencies), which coincide."""
    import torch

    from helpers import layers

    table = layers.sinusoidal_positional_encoding(n_positions, d_model, dtype=torch.float64)
    operator = layers.shift_operator(k, layers.sinusoidal_frequencies(d_model))  # (d, d)
    show = min(d_model, show)
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH_INCHES, 3.0), layout="constrained")
    heatmap(axes[0], operator[:show, :show], f"T^({k}), first {show} of {d_model} coords",
            "input coordinate", "output coordinate", cmap="coolwarm", colorbar_label="entry",
            vmin=-1, vmax=1)
    axes[1].plot(table[t0 + k].numpy(), "o", label=f"E_(t+{k})")
    axes[1].plot((operator @ table[t0]).numpy(), "x", label=f"T^({k}) E_t")
    axes[1].set(title=f"t = {t0}: the two coincide", xlabel="coordinate of the encoding",
                ylabel="value")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.title.set_fontsize(10)
    return fig


def captioned_image_figures(images: Sequence[np.ndarray], captions: Sequence[str],
                            ncols: int = 2, rows_per_figure: int = 1, fontsize: float = 8.5,
                            width: float = PAGE_WIDTH_INCHES) -> list[plt.Figure]:
    """Images ``(H, W, 3)`` with their caption above each, ``ncols`` across and at most
    ``rows_per_figure`` rows a figure; figures ``width`` inches wide, so the captions print at
    ``fontsize`` pt on an A4 page. Caption lines (``\\n`` separates them) wrap to the panel.
    The PDF never splits a figure, so short (one-row) figures fill its pages: a three-row
    figure is most of a page and leaves the rest of the previous one blank."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    panel = width / ncols
    line_chars = int(panel * 72 / (0.6 * fontsize))  # DejaVu Sans averages ~0.6 em a letter
    per_figure = ncols * rows_per_figure
    figures = []
    for start in range(0, len(images), per_figure):
        shown = range(start, min(start + per_figure, len(images)))
        nrows = math.ceil(len(shown) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, 1.05 * panel * nrows),
                                 squeeze=False, layout="constrained")
        for ax in axes.flat:  # the last figure may have spare panels
            ax.axis("off")
        for ax, i in zip(axes.flat, shown, strict=False):
            ax.imshow(images[i])
            ax.set_anchor("NW")  # a narrow (portrait) image keeps its caption inside its panel
            ax.set_title("\n".join(textwrap.fill(line, line_chars)
                                   for line in captions[i].split("\n")),
                         fontsize=fontsize, loc="left")
        figures.append(fig)
    return figures
