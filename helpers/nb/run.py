"""Execute notebooks headlessly with papermill and summarise the run.

``python -m helpers.nb.run [--profile small] [--only GLOB] [--set key=value ...] [NOTEBOOK ...]``

Each notebook ``notebooks/<assignment-id>/<name>.ipynb`` is executed into
``reports/<profile>/<assignment-id>/<name>.ipynb`` (written to a temporary file and renamed
on success, so no half-written report is left), its figures into ``<name>_figures/``
beside it. The run goes on past a failing notebook, then writes
``reports/<profile>/summary.md`` and ``summary.json`` (notebook, status, wall time, headline
metrics) and exits non-zero when any notebook failed.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers.nb import NOTEBOOK_DIR, PROJECT_ROOT, REPORT_DIR, atomic_write_text
from helpers.nb.profiles import check_profile
from helpers.nb.report import FIGURE_DIR_ENV, metrics_from_notebook
from helpers.nb.runtime import HEADLESS_ENV, NOTEBOOK_ENV, progress

PARAMETERS = ("profile", "seed", "device", "overrides")


@dataclass
class NotebookResult:
    """One notebook's outcome, as written to the summary."""

    notebook: str
    status: str  # "ok" | "failed"
    seconds: float
    report: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def discover(root: Path = NOTEBOOK_DIR, only: str | None = None) -> list[Path]:
    """Notebooks under ``root`` (checkpoints excluded), sorted, optionally filtered by a glob
    matched against the path relative to ``root`` or to the project."""
    found = sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if only:
        found = [p for p in found if fnmatch.fnmatch(str(p.relative_to(root)), only)
                 or fnmatch.fnmatch(_relative(p), only) or fnmatch.fnmatch(p.name, only)]
    return found


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def declared_parameters(path: Path) -> dict[str, Any]:
    """The names the notebook's ``parameters`` cell declares (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(path))


def check_parameters(path: Path, parameters: dict[str, Any]) -> None:
    """Refuse parameters the notebook does not declare (papermill only warns)."""
    declared = declared_parameters(path)
    if not declared:
        raise ValueError(f"{_relative(path)} has no cell tagged 'parameters'")
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(f"{_relative(path)} does not declare parameter(s) {unknown}; "
                         f"it declares {sorted(declared)}")


def report_path(path: Path, profile: str, root: Path = NOTEBOOK_DIR,
                report_root: Path = REPORT_DIR) -> Path:
    """``reports/<profile>/<assignment-id>/<name>.ipynb`` for a notebook under ``root``."""
    return report_root / profile / path.resolve().relative_to(root.resolve())


def _error_text(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "PapermillExecutionError":
        return f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"  # type: ignore[attr-defined]
    return "".join(traceback.format_exception_only(exc)).strip()


def run_notebook(path: Path, profile: str = "small", seed: int = 0, device: str = "auto",
                 overrides: dict[str, Any] | None = None, root: Path = NOTEBOOK_DIR,
                 report_root: Path = REPORT_DIR, timeout: int | None = None) -> NotebookResult:
    """Execute one notebook into its report; never leaves a partial report behind."""
    import nbformat
    import papermill

    check_profile(profile)
    parameters = {"profile": profile, "seed": seed, "device": device,
                  "overrides": dict(overrides or {})}
    out = report_path(path, profile, root, report_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.ipynb")
    figures, figures_partial = (out.with_name(f"{out.stem}_figures"),
                                out.with_name(f".{out.stem}_figures.partial"))
    shutil.rmtree(figures_partial, ignore_errors=True)
    start = time.perf_counter()
    saved_env = {k: os.environ.get(k)
                 for k in (HEADLESS_ENV, NOTEBOOK_ENV, FIGURE_DIR_ENV, "MPLBACKEND")}
    os.environ.update({HEADLESS_ENV: "1", NOTEBOOK_ENV: str(path.resolve()),
                       FIGURE_DIR_ENV: str(figures_partial),
                       "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    try:
        check_parameters(path, parameters)
        papermill.execute_notebook(
            _relative(path), _relative(partial), parameters=parameters, kernel_name="python3",
            progress_bar=False, cwd=str(path.parent), execution_timeout=timeout,
        )
        metrics = metrics_from_notebook(nbformat.read(partial, as_version=4))
        os.replace(partial, out)
        shutil.rmtree(figures, ignore_errors=True)
        if figures_partial.exists():
            os.replace(figures_partial, figures)
        return NotebookResult(_relative(path), "ok", time.perf_counter() - start,
                              _relative(out), metrics)
    except Exception as exc:  # noqa: BLE001 - one failing notebook must not stop the run
        for stale in (out, out.with_suffix(".html"), out.with_suffix(".pdf")):
            stale.unlink(missing_ok=True)  # an older report would contradict the summary
        shutil.rmtree(figures, ignore_errors=True)
        return NotebookResult(_relative(path), "failed", time.perf_counter() - start,
                              error=_error_text(exc))
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(figures_partial, ignore_errors=True)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_summary(results: list[NotebookResult], profile: str,
                  report_root: Path = REPORT_DIR) -> Path:
    """Merge ``results`` into ``reports/<profile>/summary.{json,md}``; return the JSON path."""
    folder = report_root / profile
    folder.mkdir(parents=True, exist_ok=True)
    summary_json = folder / "summary.json"
    previous: dict[str, dict[str, Any]] = {}
    if summary_json.exists():
        previous = {r["notebook"]: r for r in json.loads(summary_json.read_text())["notebooks"]}
    previous.update({r.notebook: asdict(r) for r in results})
    rows = [previous[k] for k in sorted(previous)]
    payload = {"profile": profile, "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
               "notebooks": rows}
    atomic_write_text(summary_json, json.dumps(payload, indent=2, ensure_ascii=False))
    lines = [f"# Run summary: profile `{profile}`", "", f"Updated {payload['updated']}.", "",
             "| notebook | status | wall time (s) | headline metrics |", "|---|---|---:|---|"]
    for r in rows:
        shown = "; ".join(f"{k} = {_fmt(v)}" for k, v in r["metrics"].items())
        if r["status"] != "ok":
            shown = f"**{r['error']}**"
        lines.append(f"| {r['notebook']} | {r['status']} | {r['seconds']:.1f} | {shown} |")
    atomic_write_text(folder / "summary.md", "\n".join(lines) + "\n")
    return summary_json


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)



def _parse_set(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            overrides[key] = raw
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.nb.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: all)")
    parser.add_argument("--profile", default="small", help="smoke | small | full")
    parser.add_argument("--only", help="glob over notebook paths, e.g. 'sharif-1402-hw3/*'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one profile value (repeatable)")
    args = parser.parse_args(argv)
    try:
        check_profile(args.profile)
    except ValueError as exc:
        parser.error(str(exc))
    os.chdir(PROJECT_ROOT)  # papermill records the (relative) paths it is given
    paths = [p.resolve() for p in args.notebooks] or discover(NOTEBOOK_DIR, args.only)
    missing = [str(p) for p in paths if not p.exists()]
    if missing or not paths:
        parser.error(f"no such notebook: {', '.join(missing)}" if missing else
                     f"no notebook matches {args.only!r}")
    overrides = _parse_set(args.overrides)
    results = []
    for path in progress(paths, desc=f"notebooks @ {args.profile}"):
        result = run_notebook(path, args.profile, args.seed, args.device, overrides,
                              root=NOTEBOOK_DIR, report_root=REPORT_DIR)
        results.append(result)
        note = f"  {result.error}" if result.error else ""
        print(f"{result.status:6} {result.seconds:7.1f}s  {result.notebook}{note}", flush=True)
    summary = write_summary(results, args.profile, REPORT_DIR)
    failed = [r for r in results if r.status != "ok"]
    print(f"{len(results) - len(failed)}/{len(results)} notebooks ok; summary: "
          f"{_relative(summary.with_suffix('.md'))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
