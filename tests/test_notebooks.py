"""Every notebook: the static contract, then an execution at profile smoke via the runner
(the ``smoke_run`` fixture of conftest.py, shared with the topic tests)."""

import ast
import math
import os
import re
import sys

import nbformat
import pytest

from helpers.nb import profiles, run

NOTEBOOKS = run.discover()
IDS = [str(p.relative_to(run.NOTEBOOK_DIR)) for p in NOTEBOOKS]
SETUP = ("from helpers.nb import runtime\n\n"
         "cfg, generator, dev = runtime.setup(profile, seed, device, overrides)")
EXPECTED_PARAMETERS = {"profile": "small", "seed": 0, "device": "auto", "overrides": {}}
FORBIDDEN = {
    "pip install in a notebook": re.compile(r"^\s*[!%]\s*pip\b", re.M),
    "%cd": re.compile(r"^\s*%cd\b", re.M),
    "sys.path hack": re.compile(r"sys\.path\.(append|insert)"),
    "absolute path": re.compile(r"['\"](/content|/work|/home|/root|/tmp|[A-Za-z]:\\\\)"),
}

MACHINE_PATHS = sorted({str(run.PROJECT_ROOT), sys.prefix, os.path.expanduser("~") + "/"})


def _output_text(output) -> str:
    """The text a reader sees in one output (streams, plain text, HTML, Markdown, errors)."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    data = output.get("data", {})
    return "\n".join(str(data.get(k, "")) for k in ("text/plain", "text/html", "text/markdown"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


def test_every_config_belongs_to_a_notebook():
    stray = [q for q in profiles.questions()
             if not (run.NOTEBOOK_DIR / f"{q}.ipynb").exists()]
    assert not stray, f"configs without a notebook: {stray}"


def _parameters(cell) -> dict:
    values = {}
    for statement in ast.parse(cell.source).body:
        assert isinstance(statement, ast.AnnAssign), "parameters cell: annotated assignments only"
        values[statement.target.id] = ast.literal_eval(statement.value)  # literals only
    return values


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_contract(path):
    nb = nbformat.read(path, as_version=4)
    assert path.parent.parent == run.NOTEBOOK_DIR, "notebooks/<assignment-id>/<name>.ipynb"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "H1 first"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert _parameters(nb.cells[tagged[0]]) == EXPECTED_PARAMETERS
    setup = nb.cells[tagged[0] + 1]
    assert setup.cell_type == "code" and setup.source == SETUP, "the one setup call"
    config = path.with_suffix(".toml")
    assert config.exists(), f"no config {config.name} beside the notebook"
    example = re.search(r"overrides: dict = \{\}  # .*e\.g\. (\{.*\})$",
                        nb.cells[tagged[0]].source, re.M)
    assert example, "the overrides comment gives an example: e.g. {\"key\": value}"
    keys = set(profiles.table(path)["small"])
    assert set(ast.literal_eval(example.group(1))) <= keys, f"example keys not in {config.name}"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "committed outputs"
            for what, pattern in FORBIDDEN.items():
                assert not pattern.search(cell.source), f"{what} in: {cell.source[:80]}"
    assert "report.record(" in nb.cells[-1].source, "last cell records headline metrics"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_at_smoke(path, smoke_run):
    """Generic checks; each topic's own test file asserts on its notebook's metrics."""
    result = smoke_run(str(path.relative_to(run.NOTEBOOK_DIR)))
    assert result.status == "ok", result.error
    assert result.seconds < 60, f"smoke run took {result.seconds:.0f} s"
    executed = nbformat.read(result.report_path, as_version=4)
    counts = [c.execution_count for c in executed.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), "executed in order"
    assert result.metrics, "the notebook records headline metrics"
    for cell in executed.cells:
        for output in cell.get("outputs", []):
            text = _output_text(output)
            assert "\r" not in text, f"progress updates in the report: {text[:120]!r}"
            for path in MACHINE_PATHS:
                assert path not in text, f"absolute path {path} in the report: {text[:200]!r}"
    numbers = [v for v in result.metrics.values() if isinstance(v, int | float)]
    assert all(math.isfinite(v) for v in numbers), result.metrics


def test_exported_html_has_no_progress_updates_or_machine_paths(smoke_run):
    """The HTML a TA reads, from a report whose notebook draws progress bars and warns."""
    from helpers.nb import export

    result = smoke_run("sharif-1404-hw3/Q4_llm_reasoning.ipynb")
    assert result.status == "ok", result.error
    page = export.notebook_html(result.report_path, "_static")
    assert "\r" not in page
    for path in MACHINE_PATHS:
        assert path not in page, f"absolute path {path} in the exported HTML"
