"""Export executed reports to HTML and PDF, offline, with Persian text and maths.

``python -m helpers.nb.export html --profile small`` renders every report under
``reports/<profile>/`` to HTML beside it and writes ``reports/<profile>/index.html`` (the run
summary with links). ``python -m helpers.nb.export pdf --profile small`` prints each report to
PDF with headless Chromium (Debian's ``chromium``; ``make pdf`` installs it).

Maths is typeset by a local MathJax 3 (npm ``mathjax``) and Persian text uses the Vazirmatn
font (npm ``vazirmatn``); both are copied once into ``reports/<profile>/_static/`` so that the
folder stays self-contained.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from helpers.nb import PROJECT_ROOT, REPORT_DIR, atomic_write_text

NODE_MODULES = PROJECT_ROOT / ".tools" / "node_modules"
STATIC_FILES = {
    "tex-svg-full.js": NODE_MODULES / "mathjax" / "es5" / "tex-svg-full.js",
    "Vazirmatn-Regular.woff2": NODE_MODULES / "vazirmatn" / "fonts" / "webfonts" /
    "Vazirmatn-Regular.woff2",
}
MATHJAX_CONFIG = """<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']],
        displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'}
};
</script>
"""
EXTRA_CSS = """<style>
@font-face { font-family: "Vazirmatn";
  src: url("{static}/Vazirmatn-Regular.woff2") format("woff2"); }
[dir="rtl"], :lang(fa) { direction: rtl; text-align: right;
  font-family: "Vazirmatn", "DejaVu Sans", sans-serif; }
.jp-RenderedHTMLCommon td.text-cell { text-align: left; }
table.fit-measure { table-layout: auto !important; font-size: 9px !important; }
.fit-measure td, .fit-measure th { padding: 0.1em 0.4em !important; }
@media print {
  @page { size: A4; margin: 16mm 14mm 18mm 14mm;
          @bottom-center { content: counter(page) " / " counter(pages);
                           font: 9pt "DejaVu Sans", sans-serif; color: #555; } }
  /* FIT_SCRIPT measures each block; the width of its input or output area (100cqi) is the one
     on the printed page, so the sizes below fit the page. Code and text shrink so their longest
     line fits, to 6 pt at the least; only longer lines wrap, at spaces first. */
  .jp-OutputArea-child, .jp-InputArea { display: flex; }
  .jp-OutputArea-prompt, .jp-InputPrompt { flex: 0 0 var(--jp-cell-prompt-width); }
  .jp-OutputArea-output, .jp-InputArea-editor, .jp-MarkdownOutput { flex: 1 1 0; min-width: 0;
    container-type: inline-size; }
  pre { white-space: pre-wrap; word-break: normal !important; overflow-wrap: anywhere; }
  pre.fit-text { font-size: clamp(6pt, calc((100cqi - var(--slack)) / (var(--chars) * 0.61)),
                                  8.5pt) !important; }
  .jp-OutputArea-output, .jp-RenderedHTMLCommon { overflow: visible !important; }
  /* tables: 7 pt, smaller when their narrowest layout that breaks no word would not fit (a
     PDF zooms; a table cut at the margin loses columns); headers wrap at spaces and after "_"
     or "/", numbers never break */
  .jp-RenderedHTMLCommon table { table-layout: auto; max-width: 100%; font-size: 7pt; }
  .jp-RenderedHTMLCommon table.fit-table {
    font-size: min(7pt, calc((100cqi - var(--slack)) / var(--table-em))); }
  .jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { padding: 0.1em 0.4em;
    overflow-wrap: break-word; word-break: normal; }
  .jp-RenderedHTMLCommon tr, table.fit-keep { break-inside: avoid; page-break-inside: avoid; }
  /* figures are never split; text outputs may continue on the next page rather than leave
     this one half empty (JupyterLab keeps every output whole) */
  .jp-OutputArea-child { break-inside: auto; }
  img, svg, .jp-RenderedImage, .jp-OutputArea-child:has(img) { break-inside: avoid;
    page-break-inside: avoid; max-width: 100% !important; height: auto; }
  p, li, pre { orphans: 3; widows: 3; }
  h1, h2, h3, h4 { break-after: avoid; page-break-after: avoid; break-inside: avoid; }
}
</style>
"""
FIT_SCRIPT = """<script>
/* Measurements for the print CSS (helpers.nb.export): each code or text block gets its longest
   line (--chars), each table the width of its narrowest layout that breaks no word, in em
   (--table-em); --slack is the part of its input or output area's width the block cannot
   use. Table headers may wrap after "_" and "/"; cells that are not numbers align left. */
(function () {
  const NUMBER =
    /^[-+\\u2212]?(\\d[\\d,_]*\\.?\\d*|\\.\\d+)?(e[-+]?\\d+)?%?$|^(nan|-?inf|True|False|None)$/i;
  function slack(block) {
    const style = getComputedStyle(block);
    const inner = block.clientWidth - parseFloat(style.paddingLeft) -
      parseFloat(style.paddingRight);
    const area = block.closest(".jp-OutputArea-output, .jp-InputArea-editor, .jp-MarkdownOutput");
    if (!area) return 0;
    const outer = getComputedStyle(area);
    return Math.ceil(area.clientWidth - parseFloat(outer.paddingLeft) -
      parseFloat(outer.paddingRight) - inner);
  }
  function breakAfterSeparators(cell) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    const texts = [];
    while (walker.nextNode()) texts.push(walker.currentNode);
    for (const text of texts) {
      const parts = text.data.split(/(?<=[_\\/])/);
      if (parts.length < 2) continue;
      const pieces = document.createDocumentFragment();
      parts.forEach((part, i) => {
        if (i) pieces.append(document.createElement("wbr"));
        pieces.append(part);
      });
      text.replaceWith(pieces);
    }
  }
  function fitText(pre) {
    const longest = pre.textContent.split("\\n").reduce(
      (most, line) => Math.max(most, [...line.replace(/\\t/g, "    ")].length), 1);
    pre.classList.add("fit-text");
    pre.style.setProperty("--chars", longest);
    pre.style.setProperty("--slack", slack(pre) + "px");
  }
  function fitTable(table) {
    if (!table.classList.contains("fit-table")) {
      table.querySelectorAll("th").forEach(breakAfterSeparators);
      for (const cell of table.querySelectorAll("td")) {
        if (!NUMBER.test(cell.textContent.trim())) cell.classList.add("text-cell");
      }
      if (table.rows.length <= 16) table.classList.add("fit-keep");
    }
    table.classList.add("fit-measure");
    table.style.width = "min-content";
    const em = table.getBoundingClientRect().width / parseFloat(getComputedStyle(table).fontSize);
    table.style.width = "";
    table.classList.remove("fit-measure");
    table.classList.add("fit-table");
    table.style.setProperty("--table-em", em.toFixed(2));
    table.style.setProperty("--slack", slack(table.parentElement) + "px");
  }
  function fit() {
    document.querySelectorAll(".jp-Cell pre").forEach(fitText);
    document.querySelectorAll(".jp-RenderedHTMLCommon table").forEach(fitTable);
  }
  document.addEventListener("DOMContentLoaded", () => {
    fit();
    const typeset = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
    if (typeset) typeset.then(fit);
  });
})();
</script>
"""


class ExportError(RuntimeError):
    """A tool or file the export needs is missing."""


def reports_of(profile: str, report_root: Path = REPORT_DIR) -> list[Path]:
    """Executed report notebooks under ``reports/<profile>/`` (hidden/partial files excluded)."""
    folder = report_root / profile
    if not folder.exists():
        raise ExportError(f"no reports in {folder}; run `make run-all PROFILE={profile}` first")
    return sorted(p for p in folder.rglob("*.ipynb")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def install_static(profile_dir: Path) -> Path:
    """Copy MathJax and the Persian font into ``<profile_dir>/_static`` (once)."""
    static = profile_dir / "_static"
    static.mkdir(parents=True, exist_ok=True)
    for name, source in STATIC_FILES.items():
        if not source.exists():
            raise ExportError(f"{source} is missing; run `make tools` (npm install into .tools/)")
        if not (static / name).exists():
            shutil.copy(source, static / name)
    return static


def show_run_parameters(nb: Any) -> Any:
    """Fold papermill's injected-parameters cell into the ``parameters`` cell: the reader
    sees each parameter once, with the value this run used and its comment."""
    import ast

    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not injected or not tagged:
        return nb
    values = {}
    for statement in ast.parse(injected[0].source).body:
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            values[statement.targets[0].id] = ast.get_source_segment(injected[0].source,
                                                                     statement.value)
    lines = []
    for line in tagged[0].source.splitlines():
        match = re.match(r"^(\w+)(\s*:\s*[^=]+?)?\s*=\s*(.*?)(\s+#.*)?$", line)
        if match and match.group(1) in values:
            name, annotation, _, comment = match.groups()
            line = f"{name}{annotation or ''} = {values[name]}{comment or ''}"
        lines.append(line)
    tagged[0].source = "\n".join(lines)
    tagged[0].execution_count = injected[0].execution_count  # no gap in the In [n] numbers
    nb.cells = [c for c in nb.cells if c is not injected[0]]
    return nb


def notebook_html(path: Path, static_rel: str, template: str = "lab") -> str:
    """One notebook as HTML using the local MathJax and the Persian font."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name=template)
    exporter.mathjax_url = f"{static_rel}/tex-svg-full.js"
    nb = show_run_parameters(nbformat.read(path, as_version=4))
    body, _ = exporter.from_notebook_node(nb)
    script = f'<script src="{exporter.mathjax_url}"'
    if script not in body:
        raise ExportError(f"nbconvert's {template} template no longer loads MathJax as expected")
    body = body.replace(script, MATHJAX_CONFIG + script, 1)
    return body.replace("</head>", EXTRA_CSS.replace("{static}", static_rel) + FIT_SCRIPT
                        + "</head>", 1)



def _static_rel(path: Path, profile_dir: Path) -> str:
    return os.path.relpath(profile_dir / "_static", path.parent)


PRINTED_WIDTH_INCHES = 6.0  # an output area on the printed A4 page (measured: 6.02 in)
READABLE_SCALE = 0.7  # a figure printed smaller than this shows its 10 pt labels below 7 pt
CSS_PX_PER_INCH = 96
SMALLEST_PRINTED_PT = 6.0  # text printed smaller than this is a defect
DEJAVU_HEIGHT_EM = 1.164  # a DejaVu word's box (ascent + descent) per point of font size


def printed_scale(output: Any) -> float:
    """Printed size / drawn size of a notebook output's PNG. The page shows it one CSS pixel
    (1/96 in) a pixel, or at its ``width`` metadata, shrunk to the width of an output area; it
    was drawn at its own dots per inch (matplotlib writes them; 100 when absent)."""
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
    shown = output.get("metadata", {}).get("image/png", {}).get("width") or image.width
    printed_inches = min(float(shown) / CSS_PX_PER_INCH, PRINTED_WIDTH_INCHES)
    drawn_inches = image.width / float(image.info.get("dpi", (100, 100))[0])
    return printed_inches / drawn_inches


def small_print_figures(report: Path) -> list[str]:
    """One line for every figure of ``report`` that the PDF shrinks below ``READABLE_SCALE``:
    a figure wider than the page is scaled down with its text, so its labels become
    unreadable. Draw it at most ``helpers.plotting.PAGE_WIDTH_INCHES`` wide (its text prints
    at full size) and no wider than that / ``READABLE_SCALE``, or as several figures."""
    import nbformat

    lines = []
    for cell in nbformat.read(report, as_version=4).cells:
        for output in cell.get("outputs", []):
            if "image/png" not in output.get("data", {}):
                continue
            scale = printed_scale(output)
            if scale < READABLE_SCALE:
                lines.append(f"{report.name} cell {cell.get('id', '?')}: a figure "
                             f"{PRINTED_WIDTH_INCHES / scale:.1f} in wide prints at {scale:.0%}, "
                             f"its 10 pt text at {10 * scale:.1f} pt")
    return lines


def small_print_text(pdf: Path) -> list[str]:
    """One line for every page of ``pdf`` with text printed below ``SMALLEST_PRINTED_PT`` (a
    table too wide for the page shrinks without limit rather than lose columns at the
    margin): its size and first words. Reads the words' boxes with poppler's pdftotext."""
    lines = []
    layout = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True,
                            text=True, check=True).stdout
    word = re.compile(r'<word xMin="[\d.]+" yMin="([\d.]+)" xMax="[\d.]+" yMax="([\d.]+)">'
                      r"(.*?)</word>")
    for number, page in enumerate(layout.split("<page ")[1:], start=1):
        sized = [((float(y1) - float(y0)) / DEJAVU_HEIGHT_EM, html.unescape(text))
                 for y0, y1, text in word.findall(page)]
        small = [(size, text) for size, text in sized if size < SMALLEST_PRINTED_PT - 0.1]
        if small:
            lines.append(f"{pdf.name} page {number}: {len(small)} words print at "
                         f"{min(small)[0]:.1f} pt (below {SMALLEST_PRINTED_PT:g} pt): "
                         + " ".join(text for _, text in small[:8]) + " ...")
    return lines


def _export_each(profile: str, report_root: Path, render: Callable[[Path, str], Path],
                 only: Sequence[str] = ()) -> list[Path]:
    """Call ``render(report, static_rel)`` for every report of ``profile`` (or those whose
    stem is in ``only``), warn about figures too wide to print readably, then write the
    index."""
    profile_dir = report_root / profile
    notebooks = [p for p in reports_of(profile, report_root) if not only or p.stem in only]
    if only and len(notebooks) < len(set(only)):
        missing = set(only) - {p.stem for p in notebooks}
        raise ExportError(f"no report named {', '.join(sorted(missing))} in {profile_dir}")
    install_static(profile_dir)
    written = [render(nb_path, _static_rel(nb_path, profile_dir)) for nb_path in notebooks]
    for nb_path in notebooks:
        for line in small_print_figures(nb_path):
            print(f"warning: {line}", file=sys.stderr)
    written.append(write_index(profile, report_root))
    return written


def export_html(profile: str, report_root: Path = REPORT_DIR,
                only: Sequence[str] = ()) -> list[Path]:
    """Render every report of ``profile`` (or those named in ``only``) to HTML beside it, then
    the index page."""
    def render(nb_path: Path, static_rel: str) -> Path:
        out = nb_path.with_suffix(".html")
        atomic_write_text(out, notebook_html(nb_path, static_rel))
        return out

    return _export_each(profile, report_root, render, only)


def _title(report: Path) -> str:
    """The notebook's H1 (its first Markdown line), or its file name."""
    import nbformat

    try:
        for cell in nbformat.read(report, as_version=4).cells:
            if cell.cell_type == "markdown" and cell.source.startswith("# "):
                return cell.source.splitlines()[0][2:].strip()
    except (OSError, ValueError):
        pass
    return report.stem


def _metric(name: str, value: Any, seed_sd: dict[str, Any] | None = None) -> str:
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    if seed_sd and seed_sd.get("sd") is not None:
        shown += f" ± {seed_sd['sd']:.2g} (sd of {seed_sd['seeds']} seeds)"
    return f"<code>{html.escape(name)}</code> = {html.escape(shown)}"


HEADLINE_FALLBACK = 5  # metrics shown for a notebook that marks none as headline


def write_index(profile: str, report_root: Path = REPORT_DIR) -> Path:
    """``reports/<profile>/index.html``: one table per assignment, a row per question with its
    title, status, wall time, headline metrics, links to the HTML, PDF and executed notebook,
    and every other metric one click away."""
    profile_dir = report_root / profile
    summary_path = profile_dir / "summary.json"
    rows = json.loads(summary_path.read_text())["notebooks"] if summary_path.exists() else []
    groups: dict[str, list[str]] = {}
    for row in rows:
        rel = Path(row["notebook"]).relative_to("notebooks") if row["notebook"].startswith(
            "notebooks/") else Path(row["notebook"])
        links = [f'<a href="{html.escape(str(rel.with_suffix(ext)))}">{ext[1:]}</a>'
                 for ext in (".html", ".pdf", ".ipynb")
                 if (profile_dir / rel.with_suffix(ext)).exists()]
        metrics = row.get("metrics", {})
        names = row.get("headline") or list(metrics)[:HEADLINE_FALLBACK]
        spread = row.get("seed_sd") or {}
        shown = "<br>".join(_metric(k, metrics[k], spread.get(k)) for k in names if k in metrics)
        rest = [k for k in metrics if k not in names]
        if rest:
            shown += (f"<details><summary>all {len(metrics)} metrics</summary>"
                      + "<br>".join(_metric(k, metrics[k]) for k in metrics) + "</details>")
        if row["status"] != "ok":
            shown = f"<b>{html.escape(row.get('error') or row['status'])}</b>"
        groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", []).append(
            f"<tr><td><b>{html.escape(rel.stem)}</b><br>"
            f"{html.escape(_title(profile_dir / rel))}</td>"
            f"<td>{html.escape(row['status'])}</td><td>{row['seconds']:.0f}</td>"
            f"<td>{' '.join(links)}</td><td>{shown}</td></tr>")
    header = ("<tr><th>question</th><th>status</th><th>wall time (s)</th><th>files</th>"
              "<th>headline metrics</th></tr>")
    tables = "\n".join(f"<h2>{html.escape(group)}</h2>\n<table>{header}\n"
                       + "\n".join(lines) + "\n</table>" for group, lines in groups.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Reports: {profile}</title>
<style>body {{ font-family: "DejaVu Sans", sans-serif; margin: 2em; max-width: 1320px; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
td, th {{ border: 1px solid #bbb; padding: 4px 8px; vertical-align: top;
overflow-wrap: anywhere; text-align: left; }}
th:nth-child(1) {{ width: 34%; }} th:nth-child(2) {{ width: 7%; }}
th:nth-child(3) {{ width: 8%; }} th:nth-child(4) {{ width: 11%; }}
summary {{ cursor: pointer; color: #345; }}</style></head>
<body><h1>Executed notebooks, profile <code>{profile}</code></h1>
<p><a href="summary.json">summary.json</a> holds every recorded metric.</p>
{tables}
</body></html>
"""
    out = profile_dir / "index.html"
    atomic_write_text(out, page)
    return out


def chromium_binary() -> str:
    """The headless browser used for PDF printing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise ExportError("PDF export needs Chromium: run `make pdf` (it installs Debian's "
                      "chromium) or `apt-get install chromium`")


def print_pdf(html_path: Path, pdf_path: Path, timeout: int = 120) -> None:
    """Print one HTML file to PDF with headless Chromium (JavaScript, MathJax included)."""
    with tempfile.TemporaryDirectory() as profile:
        tmp = pdf_path.with_name(f".{pdf_path.name}.partial")
        command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--no-first-run", "--disable-quic",
                   f"--user-data-dir={profile}", "--no-pdf-header-footer",
                   "--virtual-time-budget=30000", "--run-all-compositor-stages-before-draw",
                   f"--print-to-pdf={tmp}", html_path.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"chromium failed on {html_path}: {done.stderr[-500:]}")
        os.replace(tmp, pdf_path)


def export_pdf(profile: str, report_root: Path = REPORT_DIR,
               only: Sequence[str] = ()) -> list[Path]:
    """Print every report of ``profile`` (or those named in ``only``) to PDF beside it (via the
    webpdf HTML template)."""
    measure_text = shutil.which("pdftotext") is not None
    if not measure_text:
        print("note: printed text sizes are not checked without poppler's pdftotext "
              "(apt-get install poppler-utils)", file=sys.stderr)

    def render(nb_path: Path, static_rel: str) -> Path:
        printable = nb_path.with_name(f".{nb_path.stem}.print.html")
        pdf = nb_path.with_suffix(".pdf")
        try:
            atomic_write_text(printable, notebook_html(nb_path, static_rel, template="webpdf"))
            print_pdf(printable, pdf)
        finally:
            printable.unlink(missing_ok=True)
        for line in small_print_text(pdf) if measure_text else []:
            print(f"warning: {line}", file=sys.stderr)
        return pdf

    return _export_each(profile, report_root, render, only)


def main(argv: list[str] | None = None) -> int:
    from helpers.nb.profiles import check_profile

    parser = argparse.ArgumentParser(prog="python -m helpers.nb.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=("html", "pdf"))
    parser.add_argument("--profile", default="small")
    parser.add_argument("--only", nargs="+", default=(), metavar="STEM",
                        help="export only these reports (notebook file names without .ipynb)")
    args = parser.parse_args(argv)
    try:
        check_profile(args.profile)
        export = export_html if args.format == "html" else export_pdf
        written = export(args.profile, only=args.only)
    except (ExportError, ValueError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
