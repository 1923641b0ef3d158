"""helpers.nb.report: recording metrics and saving figures."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.nb.report import FIGURE_DIR_ENV, METRIC_MIME, metrics_from_notebook, record, savefig  # noqa: E402


def test_record_outside_ipython_prints(capsys):
    record("accuracy", np.float32(0.5))
    record("steps", torch.tensor(3))
    assert capsys.readouterr().out.splitlines() == ["accuracy = 0.5", "steps = 3"]


def test_record_rejects_bad_names_and_values():
    with pytest.raises(ValueError, match="identifier"):
        record("test accuracy", 1.0)
    with pytest.raises(TypeError, match="number"):
        record("values", [1, 2])


def test_metrics_are_read_back_from_outputs_later_values_win():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data={METRIC_MIME: {"a": 1.0}}),
                    nbformat.v4.new_output("stream", text="noise"),
                    nbformat.v4.new_output("display_data", data={METRIC_MIME: {"a": 2.0, "b": 3}})]
    nb.cells.append(cell)
    assert metrics_from_notebook(nb) == {"a": 2.0, "b": 3}


def test_savefig_writes_into_the_report_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(FIGURE_DIR_ENV, str(tmp_path / "figs"))
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    path = savefig(fig, "line-plot")
    plt.close(fig)
    assert path == tmp_path / "figs" / "line-plot.png" and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="figure name"):
        savefig(fig, "../escape")


def test_show_source_renders_the_live_object_with_its_file_and_lines(capsys):
    from helpers.attention import scaled_dot_product_attention
    from helpers.nb.report import show_source, source_of

    source, file, first, last = source_of(scaled_dot_product_attention)
    assert file == "helpers/attention.py" and source.startswith("def scaled_dot_product_attention")
    lines = (Path(__file__).parents[1] / file).read_text().splitlines()
    assert "\n".join(lines[first - 1:last]) == source.rstrip("\n")
    show_source(scaled_dot_product_attention)
    out = capsys.readouterr().out
    assert out.startswith(f"# helpers/attention.py, lines {first}\u2013{last}")
    with pytest.raises(TypeError, match="no source"):
        source_of(len)


def test_show_source_html_is_highlighted(monkeypatch):
    from helpers.nb import report
    from helpers.training import fit

    shown = []
    monkeypatch.setattr(report, "_display", shown.append)
    report.show_source(fit)
    html = shown[0]["text/html"]
    assert "helpers/training.py, lines" in html and "<span style=" in html and "def" in html


def test_discuss_dedents_markdown(capsys):
    from helpers.nb.report import discuss

    discuss("""
        The loss fell to **0.25**.
          - indented item
    """)
    assert capsys.readouterr().out == "The loss fell to **0.25**.\n  - indented item\n"


def test_versus_words_follow_the_sign_and_the_noise():
    from helpers.nb.report import versus

    assert versus(0.05, 0.01).startswith("higher (+0.05")
    assert versus(-0.05, 0.01, "better", "worse").startswith("worse (-0.05")
    assert versus(0.015, 0.01).startswith("indistinguishable")
    with pytest.raises(ValueError, match="finite"):
        versus(float("nan"), 0.1)


def test_headline_metrics_are_marked_in_the_output_metadata():
    from helpers.nb.report import headlines_from_notebook

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    for name, headline in (("a", False), ("b", True), ("c", True)):
        out = nbformat.v4.new_output("display_data", data={METRIC_MIME: {name: 1}})
        if headline:
            out.metadata = {METRIC_MIME: {"headline": True}}
        cell.outputs.append(out)
    nb.cells = [cell]
    assert headlines_from_notebook(nb) == ["b", "c"]
    assert metrics_from_notebook(nb) == {"a": 1, "b": 1, "c": 1}
