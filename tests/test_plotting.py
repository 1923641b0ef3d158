"""helpers.plotting: the Persian font and labelled heat maps."""

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402

from helpers.plotting import heatmap, persian_font  # noqa: E402


def test_persian_font_covers_persian_letters_and_renders_without_warnings():
    font = persian_font()
    assert font.get_name() == "Vazirmatn"
    glyphs = FT2Font(font.get_file())
    assert all(glyphs.get_char_index(ord(ch)) for ch in "پچژگکیآأؤۀ۰۱۲۳۴۵۶۷۸۹")
    fig, ax = plt.subplots()
    ax.set_title("دقت مدل (accuracy)", fontproperties=font)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        fig.canvas.draw()
    plt.close(fig)


def test_missing_font_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make tools"):
        persian_font(tmp_path / "nope.ttf")


def test_heatmap_labels_and_shape_check():
    fig, ax = plt.subplots()
    heatmap(ax, torch.eye(3), "identity", "key", "query", xticklabels=["a", "b", "c"],
            colorbar_label="weight")
    assert ax.get_title() == "identity" and ax.get_xlabel() == "key"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2-D"):
        heatmap(ax, torch.zeros(2, 2, 2), "t", "x", "y")
    plt.close(fig)


def test_captioned_image_figures_split_the_images_and_wrap_captions_to_the_panel():
    from helpers.plotting import captioned_image_figures

    images = [torch.rand(12, 16, 3).numpy() for _ in range(8)]
    captions = [f"[{i}] greedy: " + "a dog runs through the tall grass " * 3 + "\nref: a dog"
                for i in range(8)]
    figures = captioned_image_figures(images, captions, ncols=2, rows_per_figure=3,
                                      fontsize=8.5, width=6.0)
    assert [sum(ax.has_data() for ax in f.axes) for f in figures] == [6, 2]
    assert all(f.get_size_inches()[0] == 6.0 for f in figures)
    title = figures[1].axes[1]._left_title
    assert title.get_text().startswith("[7] greedy:") and title.get_fontsize() == 8.5
    assert max(map(len, title.get_text().split("\n"))) <= 42  # 3-inch panel at 8.5 pt
    plt.close("all")
    with pytest.raises(ValueError, match="captions"):
        captioned_image_figures(images, captions[:3])


def test_shift_operator_figure_prints_at_full_size():
    from helpers.plotting import PAGE_WIDTH_INCHES, shift_operator_figure

    fig = shift_operator_figure(n_positions=32, d_model=16)
    assert fig.get_size_inches()[0] <= PAGE_WIDTH_INCHES
    assert len(fig.axes) == 3 and fig.axes[1].get_legend() is not None  # two panels + colorbar
    plt.close(fig)
