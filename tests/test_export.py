"""helpers.nb.export: offline HTML (MathJax, Persian) and, where Chromium exists, PDF."""

import html
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
    row["seed_sd"] = {"m7": {"sd": 0.0123, "seeds": 3, "measured": "2026-12-01"}}
    summary_path.write_text(json.dumps(summary))
    index = export.write_index("small", reports).read_text()
    shown, folded = index.split("<details>")
    assert "<code>m7</code> = 7 ± 0.012 (sd of 3 seeds)" in shown
    assert shown.endswith("<code>m2</code> = 2")
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
    params.execution_count, injected.execution_count = 1, 2
    shown = export.show_run_parameters(nb)
    assert len(shown.cells) == 3 and shown.cells[2].source == "x = 1"
    assert shown.cells[1].execution_count == 2  # the next cell is In [3]: no gap
    assert shown.cells[1].source.splitlines() == [
        'profile: str = "smoke"  # smoke | small | full', "seed: int = 3",
        'overrides: dict = {"epochs": 1}  # e.g. {"epochs": 2}']


def _figure_output(width_inches: float, dpi: int = 100):
    """A display_data output holding a matplotlib PNG ``width_inches`` wide at ``dpi``."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width_inches, 2), dpi=dpi)
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return new_output("display_data", data={
        "image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"})


def test_figures_too_wide_to_print_readably_are_named(tmp_path):
    """The printed scale is the page width over the drawn width in inches: a 12-in figure
    prints at half size, a 6-in one at full size even when drawn at 200 dpi (1200 px)."""
    nb = new_notebook()
    nb.cells = [new_code_cell("fig", outputs=[_figure_output(6.0)]),
                new_code_cell("sharp", outputs=[_figure_output(6.0, dpi=200)]),
                new_code_cell("wide", outputs=[_figure_output(12.0)])]
    nb.cells[2].id = "wide-one"
    nbformat.write(nb, tmp_path / "figs.ipynb")
    [line] = export.small_print_figures(tmp_path / "figs.ipynb")
    assert "cell wide-one" in line and "12.0 in wide" in line and "50%" in line
    assert export.printed_scale(nb.cells[1].outputs[0]) == pytest.approx(1.0, rel=1e-3)


def test_only_exports_the_named_reports(reports):
    written = export.export_html("small", reports, only=["demo"])
    assert reports / "small" / "hw-a" / "demo.html" in written
    with pytest.raises(export.ExportError, match="no report named nope"):
        export.export_html("small", reports, only=["nope"])


WIDE_HEADERS = ["train_cpu_seconds", "best_val_loss", "exact_match", "rouge1", "bertscore_f1",
                "corpus_bleu4", "distinct_captions", "mean_words", "train_loss_first_epoch",
                "val_loss_last_epoch", "parameters", "head_importance_rank"]
LONG_WORD = "x" * 110  # one word: it prints on one line only if its block shrinks to fit


def _pdf_words(pdf) -> tuple[float, list[tuple[float, float, str]]]:
    """Page width and (xMin, xMax, text) of every word of a PDF, via poppler's pdftotext."""
    import re
    import subprocess

    layout = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True,
                            text=True, check=True).stdout
    width = float(re.search(r'<page width="([\d.]+)"', layout).group(1))
    words = [(float(x0), float(x1), html.unescape(text))
             for x0, x1, text in re.findall(
                 r'<word xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)" yMax="[\d.]+">(.*?)</word>',
                 layout)]
    return width, words


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("pdftotext") is None,
                    reason="chromium (make pdf) and poppler's pdftotext read the printed page")
def test_printed_tables_and_code_fit_the_page_without_breaking_words(reports):
    """A table wider than the page at 7 pt shrinks or wraps only between words and after "_";
    a 110-character line prints whole; nothing crosses the right margin."""
    import pandas as pd

    table = pd.DataFrame([[123456.789012 + i * j for j in range(len(WIDE_HEADERS))]
                          for i in range(4)], columns=WIDE_HEADERS)
    folder = reports / "small" / "hw-a"
    nb = nbformat.read(folder / "demo.ipynb", as_version=4)
    code_line = f'x = "{LONG_WORD[:94]}"'  # 100 columns, the project's longest code line
    nb.cells += [new_code_cell(f"{code_line}\nprint(x + 'x' * 16)",
                               outputs=[new_output("stream", text=f"{LONG_WORD}\n")]),
                 new_code_cell("table", outputs=[new_output(
                     "execute_result", execution_count=3,
                     data={"text/html": table.to_html(), "text/plain": "table"})])]
    nbformat.write(nb, folder / "demo.ipynb")
    export.export_pdf("small", reports, only=["demo"])

    page_width, words = _pdf_words(folder / "demo.pdf")
    right_margin = page_width - 14 / 25.4 * 72  # @page margin: 14 mm
    assert max(x1 for _, x1, _ in words) <= right_margin + 1
    texts = [text for _, _, text in words]
    assert LONG_WORD in texts and f'"{LONG_WORD[:94]}"' in texts
    # a header may wrap after "_" only: each printed word is a run of its "_"-ended pieces
    pieces = set()
    for header in WIDE_HEADERS:
        parts = header.replace("_", "_\n").split()
        pieces |= {"".join(parts[i:j]) for i in range(len(parts))
                   for j in range(i + 1, len(parts) + 1)}
    out = texts.index("Out[")  # the table's words follow the output prompt
    header_words = {t for t in texts[out + 2:] if any(c.isalpha() for c in t)}
    assert header_words and header_words <= pieces, header_words - pieces


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is installed by make pdf")
def test_index_fits_a_1400_px_window(reports):
    """Long titles and metric values wrap inside the index; nothing scrolls sideways."""
    import re
    import subprocess

    summary_path = reports / "small" / "summary.json"
    summary = json.loads(summary_path.read_text())
    row = summary["notebooks"][0]
    row["metrics"] = {"ranked_heads": ",".join(f"L{i % 12}H{i % 6}" for i in range(72)),
                      **{f"a_rather_long_metric_name_{i}": 0.123456789 for i in range(12)}}
    summary_path.write_text(json.dumps(summary))
    index = export.write_index("small", reports)
    probe = index.with_name(".probe.html")
    probe.write_text(index.read_text().replace("</body>", (
        "<script>document.querySelectorAll('details').forEach(d => d.open = true);"
        "document.body.dataset.scroll = document.documentElement.scrollWidth;</script></body>")))
    dom = subprocess.run([export.chromium_binary(), "--headless", "--no-sandbox",
                          "--disable-gpu", "--window-size=1400,900", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=60).stdout
    assert int(re.search(r'data-scroll="(\d+)"', dom).group(1)) <= 1400


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("pdfimages") is None,
                    reason="chromium (make pdf) prints, poppler's pdfimages measures")
def test_printed_page_width_and_tiny_tables_are_reported(reports, capsys):
    """A figure wider than the page prints ``PRINTED_WIDTH_INCHES`` wide (the width that
    ``helpers.plotting.PAGE_WIDTH_INCHES`` draws at full size); a table far too wide for the
    page shrinks below 6 pt and the export names its page."""
    import re
    import subprocess

    import pandas as pd

    folder = reports / "small" / "hw-a"
    nb = nbformat.read(folder / "demo.ipynb", as_version=4)
    wide = pd.DataFrame([[0.123456] * 40], columns=[f"column_{i}" for i in range(40)])
    nb.cells += [new_code_cell("fig", outputs=[_figure_output(12.0)]),
                 new_code_cell("wide", outputs=[new_output(
                     "execute_result", execution_count=3,
                     data={"text/html": wide.to_html(), "text/plain": "wide"})])]
    nbformat.write(nb, folder / "demo.ipynb")
    export.export_pdf("small", reports, only=["demo"])

    listing = subprocess.run(["pdfimages", "-list", str(folder / "demo.pdf")],
                             capture_output=True, text=True, check=True).stdout
    [row] = [line.split() for line in listing.splitlines()[2:] if line.split()[2] == "image"]
    width_px, x_ppi = int(row[3]), int(row[12])
    assert width_px / x_ppi == pytest.approx(export.PRINTED_WIDTH_INCHES, abs=0.1)
    warnings = capsys.readouterr().err
    assert re.search(r"demo\.pdf page \d+: \d+ words print at [\d.]+ pt.*column_", warnings)
    assert "demo.ipynb cell" in warnings  # the figure, at half size
