"""What a notebook publishes: headline metrics for the run summary, and saved figures.

``record(name, value)`` shows the value in the notebook and attaches it to the cell output
under the MIME type :data:`METRIC_MIME`; ``helpers.run`` reads those outputs back from the
executed report, so the metrics travel with the notebook itself.

``savefig(fig, name)`` writes a PNG into the report's figure folder: the folder
``helpers.run`` names in ``HELPERS_FIGURE_DIR`` during a headless run, otherwise
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

METRIC_MIME = "application/vnd.helpers.metric+json"
FIGURE_DIR_ENV = "HELPERS_FIGURE_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
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


def record(name: str, value: Any) -> None:
    """Publish one headline metric (shown in the notebook, collected into the run summary)."""
    if not _NAME.match(name):
        raise ValueError(f"metric name {name!r} must be an identifier (letters, digits, _)")
    plain = _plain(value)
    shown = f"{plain:.6g}" if isinstance(plain, float) and math.isfinite(plain) else plain
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display({METRIC_MIME: {name: plain}, "text/plain": f"{name} = {shown}"}, raw=True)
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


def figure_dir() -> Path:
    """The folder figures go to (created on demand)."""
    folder = Path(os.environ.get(FIGURE_DIR_ENV) or PROJECT_ROOT / "reports" / "lab" / "figures")
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
    heading = f"<b>{html.escape(title)}</b>" if title else ""
    display(HTML(f"<div{direction}>{heading}<ol>{items}</ol></div>"))
