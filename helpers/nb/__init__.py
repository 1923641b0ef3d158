"""The notebook machinery, apart from the course's code in ``helpers``: run profiles and
configs (``profiles``), offline assets (``assets``), one setup call, seeding and progress
bars (``runtime``), what a notebook publishes (``report``), the headless runner (``run``)
and the HTML/PDF export (``export``).

Importing the package has no side effects.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
REPORT_DIR = PROJECT_ROOT / "reports"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden temporary file and a rename, so that no
    half-written file is ever left at ``path``."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
