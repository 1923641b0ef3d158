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
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

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
@media print { pre { white-space: pre-wrap; overflow-wrap: anywhere; } }
</style>
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


def notebook_html(path: Path, static_rel: str, template: str = "lab") -> str:
    """One notebook as HTML using the local MathJax and the Persian font."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name=template)
    exporter.mathjax_url = f"{static_rel}/tex-svg-full.js"
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    script = f'<script src="{exporter.mathjax_url}"'
    if script not in body:
        raise ExportError(f"nbconvert's {template} template no longer loads MathJax as expected")
    body = body.replace(script, MATHJAX_CONFIG + script, 1)
    return body.replace("</head>", EXTRA_CSS.replace("{static}", static_rel) + "</head>", 1)



def _static_rel(path: Path, profile_dir: Path) -> str:
    return os.path.relpath(profile_dir / "_static", path.parent)


def _export_each(profile: str, report_root: Path,
                 render: Callable[[Path, str], Path]) -> list[Path]:
    """Call ``render(report, static_rel)`` for every report of ``profile``, then the index."""
    profile_dir = report_root / profile
    notebooks = reports_of(profile, report_root)
    install_static(profile_dir)
    written = [render(nb_path, _static_rel(nb_path, profile_dir)) for nb_path in notebooks]
    written.append(write_index(profile, report_root))
    return written


def export_html(profile: str, report_root: Path = REPORT_DIR) -> list[Path]:
    """Render every report of ``profile`` to HTML beside it, then the index page."""
    def render(nb_path: Path, static_rel: str) -> Path:
        out = nb_path.with_suffix(".html")
        atomic_write_text(out, notebook_html(nb_path, static_rel))
        return out

    return _export_each(profile, report_root, render)


def write_index(profile: str, report_root: Path = REPORT_DIR) -> Path:
    """``reports/<profile>/index.html``: the summary table linking every report."""
    profile_dir = report_root / profile
    summary_path = profile_dir / "summary.json"
    rows = json.loads(summary_path.read_text())["notebooks"] if summary_path.exists() else []
    lines = []
    for row in rows:
        rel = Path(row["notebook"]).relative_to("notebooks") if row["notebook"].startswith(
            "notebooks/") else Path(row["notebook"])
        links = [f'<a href="{html.escape(str(rel.with_suffix(ext)))}">{ext[1:]}</a>'
                 for ext in (".html", ".pdf") if (profile_dir / rel.with_suffix(ext)).exists()]
        metrics = "<br>".join(f"{html.escape(k)} = {v:.4g}" if isinstance(v, float) else
                              f"{html.escape(k)} = {html.escape(str(v))}"
                              for k, v in row["metrics"].items())
        lines.append(f"<tr><td>{html.escape(str(rel))}</td><td>{row['status']}</td>"
                     f"<td>{row['seconds']:.1f}</td><td>{' '.join(links)}</td>"
                     f"<td>{metrics or html.escape(row.get('error') or '')}</td></tr>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Reports: {profile}</title>
<style>body {{ font-family: "DejaVu Sans", sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #bbb; padding: 4px 8px;
vertical-align: top; }}</style></head>
<body><h1>Executed notebooks, profile <code>{profile}</code></h1>
<table><tr><th>notebook</th><th>status</th><th>wall time (s)</th><th>files</th>
<th>headline metrics</th></tr>
{chr(10).join(lines)}
</table></body></html>
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


def export_pdf(profile: str, report_root: Path = REPORT_DIR) -> list[Path]:
    """Print every report of ``profile`` to PDF beside it (via the webpdf HTML template)."""
    def render(nb_path: Path, static_rel: str) -> Path:
        printable = nb_path.with_name(f".{nb_path.stem}.print.html")
        try:
            atomic_write_text(printable, notebook_html(nb_path, static_rel, template="webpdf"))
            print_pdf(printable, nb_path.with_suffix(".pdf"))
        finally:
            printable.unlink(missing_ok=True)
        return nb_path.with_suffix(".pdf")

    return _export_each(profile, report_root, render)


def main(argv: list[str] | None = None) -> int:
    from helpers.nb.profiles import check_profile

    parser = argparse.ArgumentParser(prog="python -m helpers.nb.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=("html", "pdf"))
    parser.add_argument("--profile", default="small")
    args = parser.parse_args(argv)
    try:
        check_profile(args.profile)
        written = (export_html if args.format == "html" else export_pdf)(args.profile)
    except (ExportError, ValueError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
