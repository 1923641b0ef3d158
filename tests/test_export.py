"""helpers.nb.export: offline HTML (MathJax, Persian) and, where Chromium exists, PDF."""

import json
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers.nb import export

PERSIAN = "متن سؤال به فارسی"


@pytest.fixture
def reports(tmp_path):
    nb = new_notebook()
    nb.cells = [new_markdown_cell(f'# Title\n\n$x^2$\n\n<div dir="rtl" lang="fa">{PERSIAN}</div>'),
                new_code_cell("print(1)", outputs=[new_output("stream", text="1\n")])]
    folder = tmp_path / "small" / "hw-a"
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "demo.ipynb")
    summary = {"profile": "small", "notebooks": [{
        "notebook": "notebooks/hw-a/demo.ipynb", "status": "ok", "seconds": 1.5,
        "report": "reports/small/hw-a/demo.ipynb", "metrics": {"acc": 0.9}, "error": None}]}
    (tmp_path / "small" / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_html_export_is_self_contained_and_keeps_persian(reports):
    written = export.export_html("small", reports)
    page = (reports / "small" / "hw-a" / "demo.html").read_text(encoding="utf-8")
    assert PERSIAN in page and 'dir="rtl"' in page
    assert '<script src="../_static/tex-svg-full.js"' in page and "cdnjs" not in page.split(
        "tex-svg-full.js")[0][-2000:]
    assert "Vazirmatn" in page
    assert (reports / "small" / "_static" / "tex-svg-full.js").exists()
    index = (reports / "small" / "index.html").read_text()
    assert 'href="hw-a/demo.html"' in index and "<code>acc</code> = 0.9" in index
    assert "<h2>hw-a</h2>" in index and "<b>demo</b><br>Title" in index
    assert reports / "small" / "index.html" in written


def test_missing_reports_give_one_clear_error(tmp_path):
    with pytest.raises(export.ExportError, match="make run-all PROFILE=full"):
        export.export_html("full", tmp_path)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is installed by make pdf")
def test_pdf_export(reports):
    export.export_pdf("small", reports)
    pdf = reports / "small" / "hw-a" / "demo.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    assert not list((reports / "small").rglob(".*print.html"))


def test_index_shows_headline_metrics_and_folds_the_rest(reports):
    summary_path = reports / "small" / "summary.json"
    summary = json.loads(summary_path.read_text())
    row = summary["notebooks"][0]
    row["metrics"] = {f"m{i}": float(i) for i in range(12)}
    row["headline"] = ["m7", "m2"]
    summary_path.write_text(json.dumps(summary))
    index = export.write_index("small", reports).read_text()
    shown, folded = index.split("<details>")
    assert "<code>m7</code> = 7" in shown and "<code>m2</code> = 2" in shown
    assert "<code>m5</code>" not in shown and "<code>m5</code> = 5" in folded
    assert "all 12 metrics" in folded


def test_parameters_cell_shows_the_values_the_run_used():
    nb = new_notebook()
    params = new_code_cell('profile: str = "small"  # smoke | small | full\nseed: int = 0\n'
                           'overrides: dict = {}  # e.g. {"epochs": 2}')
    params.metadata["tags"] = ["parameters"]
    injected = new_code_cell(
        '# Parameters\nprofile = "smoke"\nseed = 3\noverrides = {"epochs": 1}\n')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells = [new_markdown_cell("# T"), params, injected, new_code_cell("x = 1")]
    shown = export.show_run_parameters(nb)
    assert len(shown.cells) == 3 and shown.cells[2].source == "x = 1"
    assert shown.cells[1].source.splitlines() == [
        'profile: str = "smoke"  # smoke | small | full', "seed: int = 3",
        'overrides: dict = {"epochs": 1}  # e.g. {"epochs": 2}']
