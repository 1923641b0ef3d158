"""helpers.report: recording metrics and saving figures."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.report import FIGURE_DIR_ENV, METRIC_MIME, metrics_from_notebook, record, savefig  # noqa: E402


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
