"""What a notebook publishes: headline metrics for the run summary, and saved figures.

``record(name, value)`` shows the value in the notebook and attaches it to the cell output
under the MIME type :data:`METRIC_MIME`; ``helpers.nb.run`` reads those outputs back from the
executed report, so the metrics travel with the notebook itself.

``show_source(obj)`` renders the live source of a helper (function, class or method) as
highlighted code with its file and line range, for the questions that say "implement";
``discuss(text)`` renders Markdown formatted in a code cell from this run's numbers, and
``versus(diff, se)`` words a measured difference by its sign and its noise.

``savefig(fig, name)`` writes a PNG into the report's figure folder: the folder
``helpers.nb.run`` names in ``HELPERS_FIGURE_DIR`` during a headless run, otherwise
``reports/lab/figures/`` under the project root.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers.nb import PROJECT_ROOT

METRIC_MIME = "application/vnd.helpers.metric+json"
FIGURE_DIR_ENV = "HELPERS_FIGURE_DIR"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _plain(value: Any) -> float | int | str | bool:
    """A JSON-friendly scalar from a Python, NumPy or torch scalar."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()  # numpy scalars, 0-d arrays and 1-element tensors
    if isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"record() takes a number, bool or string, not {type(value).__name__}")


def record(name: str, value: Any, headline: bool = False) -> None:
    """Publish one metric (shown in the notebook, collected into the run summary); the few
    marked ``headline`` are the ones the summary and the index show first."""
    if not _NAME.match(name):
        raise ValueError(f"metric name {name!r} must be an identifier (letters, digits, _)")
    plain = _plain(value)
    shown = f"{plain:.6g}" if isinstance(plain, float) and math.isfinite(plain) else plain
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display({METRIC_MIME: {name: plain}, "text/plain": f"{name} = {shown}"}, raw=True,
                    metadata={METRIC_MIME: {"headline": True}} if headline else None)
            return
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        pass
    print(f"{name} = {shown}")


def metrics_from_notebook(nb: Any) -> dict[str, Any]:
    """Every metric ``record`` published in an executed notebook (later values win)."""
    metrics: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if METRIC_MIME in data:
                metrics.update(data[METRIC_MIME])
    return metrics


def headlines_from_notebook(nb: Any) -> list[str]:
    """Names of the metrics recorded with ``headline=True``, in order of first appearance."""
    names: list[str] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("metadata", {}).get(METRIC_MIME, {}).get("headline"):
                names += [n for n in output["data"][METRIC_MIME] if n not in names]
    return names


def figure_dir() -> Path:
    """The folder figures go to (created on demand): the report's figure folder in headless
    runs, else ``reports/lab/<assignment-id>/<stem>_figures/`` for the running notebook
    (``reports/lab/figures/`` when it cannot be told)."""
    folder = os.environ.get(FIGURE_DIR_ENV)
    if not folder:
        from helpers.nb.runtime import current_notebook

        try:
            notebook = current_notebook()
            assignment = notebook.parent.name
            folder = PROJECT_ROOT / "reports" / "lab" / assignment / f"{notebook.stem}_figures"
        except RuntimeError:
            folder = PROJECT_ROOT / "reports" / "lab" / "figures"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def savefig(fig: Any, name: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as ``<figure_dir>/<name>.png`` and return the path."""
    if not _NAME.match(name.replace("-", "_")):
        raise ValueError(f"figure name {name!r} must be letters, digits, '_' or '-'")
    path = figure_dir() / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def show_texts(texts: Sequence[str], title: str = "", rtl: bool = True) -> None:
    """Display texts as a numbered HTML list, right-to-left for Persian (plain print outside
    IPython)."""
    import html

    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:  # pragma: no cover
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(title, *[f"{i}. {t}" for i, t in enumerate(texts, 1)], sep="\n")
        return
    direction = ' dir="rtl" lang="fa"' if rtl else ""
    items = "".join(f"<li>{html.escape(t)}</li>" for t in texts)
    # the (English) title sits outside the right-to-left block, so it is not reordered
    heading = f'<div dir="ltr"><b>{html.escape(title)}</b></div>' if title else ""
    display(HTML(f"<div>{heading}<ol{direction}>{items}</ol></div>"))


def _display(bundle: dict[str, str]) -> None:
    """Display a MIME bundle in IPython, else print its plain text."""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(bundle, raw=True)
            return
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        pass
    print(bundle["text/plain"])


def source_of(obj: Any) -> tuple[str, str, int, int]:
    """``(source, file, first_line, last_line)`` of a live function, class or method; the file
    is relative to the project root when it lies inside it."""
    import inspect

    target = inspect.unwrap(obj)
    if isinstance(target, property):
        target = target.fget
    try:
        lines, first = inspect.getsourcelines(target)
        file = Path(inspect.getsourcefile(target) or "?").resolve()
    except (TypeError, OSError) as exc:
        raise TypeError(f"no source for {obj!r}: show_source takes a function, class or "
                        "method defined in a file") from exc
    shown = str(file.relative_to(PROJECT_ROOT)) if file.is_relative_to(PROJECT_ROOT) else file.name
    return "".join(lines), shown, first, first + len(lines) - 1


def show_source(*objs: Any) -> None:
    """Render the live source of each helper as highlighted code under a caption
    ``file, lines a-b`` (HTML with inline styles, so it reads the same in HTML and PDF)."""
    import html

    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    formatter = HtmlFormatter(noclasses=True, style="default", nowrap=True)
    for obj in objs:
        source, file, first, last = source_of(obj)
        caption = f"{file}, lines {first}–{last}"
        code = highlight(source, PythonLexer(), formatter)
        page = (f'<div class="helpers-source"><div style="font-size:0.85em;color:#555;'
                f'margin:0.4em 0 0.1em"><code>{html.escape(caption)}</code></div>'
                f'<pre style="font-family:\'DejaVu Sans Mono\',Menlo,Consolas,monospace;'
                f'white-space:pre-wrap;word-break:break-word;font-size:0.82em;'
                f'line-height:1.3;background:#f7f7f7;border-left:3px solid #9ab;'
                f'padding:0.5em 0.7em;margin:0">{code}</pre></div>')
        _display({"text/html": page, "text/plain": f"# {caption}\n{source}"})


def discuss(text: str) -> None:
    """Render ``text`` (Markdown, usually an f-string of this run's numbers) as the
    notebook's prose; surrounding blank lines and common indentation are removed."""
    import textwrap

    markdown = textwrap.dedent(text).strip()
    _display({"text/markdown": markdown, "text/plain": markdown})


def versus(diff: float, se: float, higher: str = "higher", lower: str = "lower",
           same: str = "indistinguishable", z: float = 2.0, fmt: str = ".3g") -> str:
    """Words for a measured difference ``diff`` with standard error ``se``: ``higher`` or
    ``lower`` (by the sign of ``diff``) when ``|diff| > z * se``, else ``same``; the numbers
    follow in brackets, e.g. ``"higher (+0.031 ± 0.012 SE)"``."""
    if not (math.isfinite(diff) and math.isfinite(se)) or se < 0:
        raise ValueError(f"versus() needs a finite difference and SE >= 0, got {diff}, {se}")
    word = same if abs(diff) <= z * se else (higher if diff > 0 else lower)
    return f"{word} ({diff:+{fmt}} ± {se:{fmt}} SE)"
