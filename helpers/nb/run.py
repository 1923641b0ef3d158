"""Execute notebooks headlessly with papermill and summarise the run.

``python -m helpers.nb.run [--profile small] [--jobs auto] [--only GLOB] [--set key=value ...]
[NOTEBOOK ...]``

Each notebook ``notebooks/<assignment-id>/<name>.ipynb`` is executed into
``reports/<profile>/<assignment-id>/<name>.ipynb`` (written to a temporary file and renamed
on success, so no half-written report is left), its figures into ``<name>_figures/``
beside it. The run goes on past a failing notebook, then writes
``reports/<profile>/summary.md`` and ``summary.json`` (notebook, status, wall time, headline
metrics, and the run's wall time beside the sum of the notebooks' times) and exits non-zero
when any notebook failed.

Notebooks run concurrently, each in its own worker process, as many at a time as the CPU
budget (``--jobs``, default: every core) allows given each notebook's ``torch_threads`` (a
notebook without that key takes the whole budget), longest first by the last run's times;
when the next one needs more threads than are free, a later one that fits starts instead, so a
one-thread notebook never leaves a core idle while others wait.
Each notebook sets its own thread count, so its results equal a sequential run's.
``--jobs 1`` runs them one after another. Ctrl-C stops the run: the running notebooks'
kernels are shut down, no partial file is left, the summary marks them ``interrupted`` and
keeps every other notebook's row. The summary is rewritten as each notebook finishes, so a
runner killed outright (``kill -9``, a closed session) still leaves every finished row.

Each report carries the key of what produced it (:func:`run_key`: the notebook, its TOML, every
``helpers`` source, ``DATA_DIR``, the machine, the seed, device and overrides) in its metadata.
``--resume`` keeps every report whose key still matches and runs only the others, so a long run
that was stopped goes on where it stopped; a kept report's numbers are the ones a rerun would
give (the run is seeded and deterministic), and its summary row says when it was made.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers.nb import NOTEBOOK_DIR, PROJECT_ROOT, REPORT_DIR, atomic_write_text
from helpers.nb.profiles import check_profile
from helpers.nb.report import FIGURE_DIR_ENV, headlines_from_notebook, metrics_from_notebook
from helpers.nb.runtime import HEADLESS_ENV, NOTEBOOK_ENV, draw_progress_here, progress

PARAMETERS = ("profile", "seed", "device", "overrides")
RUN_METADATA = "helpers_run"  # report metadata: key of what produced it, its time and date


@dataclass
class NotebookResult:
    """One notebook's outcome, as written to the summary."""

    notebook: str
    status: str  # "ok" | "failed" | "interrupted"
    seconds: float
    report: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    headline: list[str] = field(default_factory=list)  # metrics marked headline
    threads: int = 0  # CPU threads it was given (0: not recorded)
    overrides: dict[str, Any] = field(default_factory=dict)  # config values the run changed
    kept: str | None = None  # --resume: when the kept report was made (None: run now)


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


def _partials(out: Path) -> tuple[Path, Path]:
    """The partial report and figure folder a run of report ``out`` writes before it renames
    them into place."""
    return (out.with_name(f".{out.stem}.partial.ipynb"),
            out.with_name(f".{out.stem}_figures.partial"))


def discard_unfinished(path: Path, profile: str, root: Path = NOTEBOOK_DIR,
                       report_root: Path = REPORT_DIR, *, report: bool = False) -> None:
    """Remove what an unfinished run of ``path`` left: its partial report and figure folder,
    and with ``report`` also the older report, its HTML/PDF and figures (they would contradict
    a summary row that says the notebook failed)."""
    out = report_path(path, profile, root, report_root)
    partial, figures_partial = _partials(out)
    partial.unlink(missing_ok=True)
    shutil.rmtree(figures_partial, ignore_errors=True)
    if report:
        for stale in (out, out.with_suffix(".html"), out.with_suffix(".pdf")):
            stale.unlink(missing_ok=True)
        shutil.rmtree(out.with_name(f"{out.stem}_figures"), ignore_errors=True)


def _error_text(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "PapermillExecutionError":
        return f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"  # type: ignore[attr-defined]
    return "".join(traceback.format_exception_only(exc)).strip()


@functools.cache
def machine() -> dict[str, Any]:
    """What makes one seed's numbers differ between machines: the CPU model, whether its
    bfloat16 is fast (the ``bf16`` switches fall back to float32 where it is not), the GPU,
    PyTorch's version."""
    import platform

    import torch

    from helpers.training import bf16_is_fast

    cpuinfo = Path("/proc/cpuinfo")
    models = ([line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
               if line.startswith("model name")] if cpuinfo.exists() else [])
    return {"cpu": models[0] if models else platform.processor(),
            "cpu_bf16_fast": bf16_is_fast(torch.device("cpu")),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__}


def run_key(notebook: Path, profile: str, seed: int, *extra: Any) -> str:
    """A key of everything a run's numbers depend on: the notebook's bytes, its TOML's values
    (not its ``[seed_spread]`` table), every ``helpers`` source file, ``DATA_DIR``, the machine
    (:func:`machine`), the profile and seed, and ``extra``. Equal keys give equal numbers."""
    import tomllib

    from helpers.nb.cache import cache_key, file_fingerprint
    from helpers.nb.profiles import config_path
    from helpers.nb.seeds import SECTION

    path = config_path(notebook)
    config = tomllib.loads(path.read_text()) if path.exists() else {}
    config.pop(SECTION, None)  # its values, not its comments or the spread table
    sources = [file_fingerprint(f) | {"file": str(f.relative_to(PROJECT_ROOT))}
               for f in sorted((PROJECT_ROOT / "helpers").rglob("*.py"))]
    name = f"{notebook.parent.name}-{notebook.stem}"
    return cache_key(name, profile, seed, file_fingerprint(notebook)["sha256"], config, sources,
                     os.environ.get("DATA_DIR"), machine(), *extra)


def report_key(path: Path, profile: str, seed: int, device: str,
               overrides: dict[str, Any]) -> str:
    """:func:`run_key` of one report: with the device, the overrides and the notebook's
    ``[seed_spread]`` table, which its discussion quotes."""
    from helpers.nb.seeds import read_spread

    spread = read_spread(path)
    return run_key(path, profile, seed, device, dict(overrides),
                   asdict(spread) if spread is not None else None)


def kept_result(path: Path, profile: str = "small", seed: int = 0, device: str = "auto",
                overrides: dict[str, Any] | None = None, root: Path = NOTEBOOK_DIR,
                report_root: Path = REPORT_DIR) -> NotebookResult | None:
    """The result of ``path``'s existing report when it was made with the key this run would
    have (:func:`report_key`), read back from the report; ``None`` when there is no such
    report (none, another key, or an unreadable file)."""
    import nbformat

    out = report_path(path, profile, root, report_root)
    overrides = dict(overrides or {})
    try:
        executed = nbformat.read(out, as_version=4)
        made = executed.metadata[RUN_METADATA]
        key, seconds, finished = made["key"], float(made["seconds"]), str(made["finished"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if key != report_key(path, profile, seed, device, overrides):
        return None
    return NotebookResult(_relative(path), "ok", seconds, _relative(out),
                          metrics_from_notebook(executed),
                          headline=headlines_from_notebook(executed), overrides=overrides,
                          kept=finished)


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
    partial, figures_partial = _partials(out)
    figures = out.with_name(f"{out.stem}_figures")
    discard_unfinished(path, profile, root, report_root)
    start = time.perf_counter()
    saved_env = {k: os.environ.get(k)
                 for k in (HEADLESS_ENV, NOTEBOOK_ENV, FIGURE_DIR_ENV, "MPLBACKEND")}
    os.environ.update({HEADLESS_ENV: "1", NOTEBOOK_ENV: str(path.resolve()),
                       FIGURE_DIR_ENV: str(figures_partial),
                       "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    try:
        check_parameters(path, parameters)
        key = report_key(path, profile, seed, device, parameters["overrides"])
        papermill.execute_notebook(
            _relative(path), _relative(partial), parameters=parameters, kernel_name="python3",
            progress_bar=False, cwd=str(path.parent), execution_timeout=timeout,
        )
        executed = nbformat.read(partial, as_version=4)
        metrics, headline = metrics_from_notebook(executed), headlines_from_notebook(executed)
        seconds = time.perf_counter() - start
        executed.metadata[RUN_METADATA] = {"key": key, "seconds": round(seconds, 1),
                                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        nbformat.write(executed, partial)
        os.replace(partial, out)
        shutil.rmtree(figures, ignore_errors=True)
        if figures_partial.exists():
            os.replace(figures_partial, figures)
        return NotebookResult(_relative(path), "ok", seconds, _relative(out), metrics,
                              headline=headline,
                              overrides=parameters["overrides"])
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the run goes on
        discard_unfinished(path, profile, root, report_root, report=True)
        if isinstance(exc, KeyboardInterrupt):
            return NotebookResult(_relative(path), "interrupted", time.perf_counter() - start,
                                  error="interrupted", overrides=parameters["overrides"])
        return NotebookResult(_relative(path), "failed", time.perf_counter() - start,
                              error=_error_text(exc), overrides=parameters["overrides"])
    finally:
        discard_unfinished(path, profile, root, report_root)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_summary(results: list[NotebookResult], profile: str,
                  report_root: Path = REPORT_DIR, run_info: dict[str, Any] | None = None) -> Path:
    """Merge ``results`` into ``reports/<profile>/summary.{json,md}``; return the JSON path.
    ``run_info`` (wall time, sum of notebook times, CPU budget) describes this run."""
    folder = report_root / profile
    folder.mkdir(parents=True, exist_ok=True)
    summary_json = folder / "summary.json"
    previous: dict[str, dict[str, Any]] = {}
    if summary_json.exists():
        previous = {r["notebook"]: r for r in json.loads(summary_json.read_text())["notebooks"]}
    previous.update({r.notebook: asdict(r) for r in results})
    rows = [previous[k] for k in sorted(previous)]
    for r in rows:
        # a spread measured with the profile's values says nothing of overridden ones
        r["seed_sd"] = ({} if _changes_config(r["notebook"], profile, r.get("overrides"))
                        else seed_sd_of(r["notebook"], profile))
    payload = {"profile": profile, "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
               "last_run": run_info or {}, "notebooks": rows}
    atomic_write_text(summary_json, json.dumps(payload, indent=2, ensure_ascii=False))
    info = payload["last_run"]
    bound = (f"; with their thread counts no schedule on {info['jobs']} thread(s) could take "
             f"under {info['bound_seconds']:.0f} s" if "bound_seconds" in info else "")
    kept = (f"; {info['kept']} report(s) of earlier runs with the same key kept (`--resume`)"
            if info.get("kept") else "")
    if info.get("in_progress"):
        run_line = (f" A run in progress (or stopped without finishing) has done "
                    f"{info['notebooks']} of {info['planned']} notebook(s) after "
                    f"{info['wall_seconds']:.0f} s wall{kept}.")
    elif info and not info["notebooks"] and info.get("kept"):
        run_line = (f" Last run (`--resume`): the {info['kept']} report(s) made earlier with the "
                    "same key were kept; nothing ran.")
    elif info:
        run_line = (f" Last run: {info['notebooks']} notebook(s) in {info['wall_seconds']:.0f} s"
                    f" wall (notebook times add up to {info['notebook_seconds']:.0f} s{bound}; "
                    f"CPU budget {info['jobs']} thread(s){kept}).")
    else:
        run_line = ""
    lines = [f"# Run summary: profile `{profile}`", "",
             f"Updated {payload['updated']}.{run_line}", "",
             "± : seed-to-seed standard deviation of the headline metric (measured by "
             "`python -m helpers.nb.seeds`, the seeds and date in the notebook's .toml).", "",
             "| notebook | status | wall time (s) | headline metrics |", "|---|---|---:|---|"]
    for r in rows:
        names = r.get("headline") or list(r["metrics"])
        shown = "; ".join(f"{k} = {_fmt(r['metrics'][k])}{_fmt_sd(r['seed_sd'], k)}"
                          for k in names)
        if r.get("overrides"):
            shown += f" (overrides: {_fmt_overrides(r['overrides'])})"
        if r["status"] != "ok":
            shown = f"**{r['error']}**"
        status = f"{r['status']}, kept from {r['kept']}" if r.get("kept") else r["status"]
        lines.append(f"| {r['notebook']} | {status} | {r['seconds']:.1f} | {shown} |")
    atomic_write_text(folder / "summary.md", "\n".join(lines) + "\n")
    return summary_json


def seed_sd_of(notebook: str, profile: str) -> dict[str, dict[str, Any]]:
    """``{metric: {"sd", "seeds", "measured"}}`` from the notebook's ``[seed_spread]`` table
    when it was measured at ``profile``, else ``{}``."""
    from helpers.nb.seeds import read_spread

    spread = read_spread(PROJECT_ROOT / notebook)
    if spread is None or spread.profile != profile:
        return {}
    return {name: {"sd": spread.sd(name), "seeds": len(spread.seeds),
                   "measured": spread.measured} for name in spread.values}


def _changes_config(notebook: str, profile: str, overrides: dict[str, Any] | None) -> bool:
    """Whether ``overrides`` change any of ``notebook``'s values at ``profile``, as
    ``runtime.setup`` judges it (``Config.overridden``); an override it refuses counts."""
    from helpers.nb import profiles

    if not overrides:
        return False
    try:
        return bool(profiles.config(PROJECT_ROOT / notebook, profile, **overrides).overridden)
    except ValueError:
        return True


def _fmt_overrides(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))


def _fmt_sd(seed_sd: dict[str, dict[str, Any]], name: str) -> str:
    entry = seed_sd.get(name)
    return f" ± {entry['sd']:.2g} ({entry['seeds']} seeds)" if entry else ""


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


def thread_demand(path: Path, profile: str, budget: int) -> int:
    """CPU threads the notebook asks for at ``profile``: its config's ``torch_threads``, or the
    whole ``budget`` when it has none (PyTorch's default uses every core)."""
    from helpers.nb import profiles

    try:
        threads = profiles.table(path)[profile].get("torch_threads") or budget
    except ValueError:  # no config: the notebook's own setup reports that
        threads = budget
    return max(1, min(int(threads), budget))


def previous_seconds(profile: str, report_root: Path = REPORT_DIR) -> dict[str, float]:
    """Each notebook's wall time in the last summary of ``profile`` (empty when none)."""
    summary = report_root / profile / "summary.json"
    if not summary.exists():
        return {}
    try:
        rows = json.loads(summary.read_text())["notebooks"]
    except (ValueError, KeyError):
        return {}
    return {r["notebook"]: float(r["seconds"]) for r in rows if r.get("status") == "ok"}


def schedule_order(paths: list[Path], seconds: dict[str, float]) -> list[Path]:
    """Longest first by the last run's times; notebooks never timed go first (they may be
    long), ties by name."""
    return sorted(paths, key=lambda p: (-seconds.get(_relative(p), float("inf")), _relative(p)))


def pick_next(demands: list[int], free: int, idle: bool) -> int | None:
    """Index of the notebook to start among the pending ones' thread ``demands`` (in schedule
    order): the first that fits the ``free`` threads, or the first when nothing runs
    (``idle``); ``None`` when none fits."""
    if idle and demands:
        return 0
    return next((i for i, demand in enumerate(demands) if demand <= free), None)


def _kill_tree(pid: int) -> None:
    """Kill a process and every descendant (kernels run in sessions of their own)."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = parent.children(recursive=True) + [parent]
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(family, timeout=10)


@dataclass
class _Worker:
    path: Path
    threads: int
    process: subprocess.Popen
    result_file: Path
    log_file: Path
    started: float = field(default_factory=time.perf_counter)


def _start_worker(path: Path, args: argparse.Namespace, threads: int, tmp: Path,
                  root: Path, report_root: Path) -> _Worker:
    stem = _relative(path).replace("/", "__")
    result_file, log_file = tmp / f"{stem}.json", tmp / f"{stem}.log"
    command = [sys.executable, "-m", "helpers.nb.run", "--worker", str(result_file),
               "--profile", args.profile, "--seed", str(args.seed), "--device", args.device,
               "--notebook-root", str(root), "--report-root", str(report_root),
               *(f"--set={item}" for item in args.overrides), str(path)]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return _Worker(path, threads, process, result_file, log_file)


def _collect(worker: _Worker, profile: str, root: Path, report_root: Path) -> NotebookResult:
    """The worker's result; when it died without one (killed, out of memory), a ``failed``
    result, and what its run left half-written is removed with the older report."""
    if worker.result_file.exists():
        result = NotebookResult(**json.loads(worker.result_file.read_text()))
    else:
        discard_unfinished(worker.path, profile, root, report_root, report=True)
        code = worker.process.returncode
        if code is not None and code < 0:
            error = f"worker killed by signal {-code} ({signal.Signals(-code).name})"
        else:
            tail = worker.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            error = f"worker exited with {code}: " + " | ".join(tail)
        result = NotebookResult(_relative(worker.path), "failed",
                                time.perf_counter() - worker.started, error=error)
    result.threads = worker.threads
    return result


def wall_bound(results: list[NotebookResult], budget: int) -> float:
    """Seconds under which no schedule of ``results``' notebooks could have finished on
    ``budget`` threads, each keeping its thread count and its wall time: the larger of their
    thread-seconds over the budget and the longest notebook. The gap to the run's wall time
    is what the schedule (and kernel start-up) cost; the bound itself only falls with cheaper
    notebooks or fewer threads per notebook."""
    thread_seconds = sum(r.seconds * (r.threads or budget) for r in results)
    return max([thread_seconds / budget, *(r.seconds for r in results)], default=0.0)


def _interrupt(workers: list[_Worker], profile: str, root: Path, report_root: Path,
               grace: float = 30.0) -> list[NotebookResult]:
    """Stop running workers (SIGTERM, then kill), remove their partial files, and return an
    ``interrupted`` result for each."""
    for w in workers:
        with contextlib.suppress(ProcessLookupError):
            w.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    results = []
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        _kill_tree(w.process.pid)
        discard_unfinished(w.path, profile, root, report_root)
        result = _collect(w, profile, root, report_root)
        if result.status != "ok":
            result = NotebookResult(_relative(w.path), "interrupted", result.seconds,
                                    error="interrupted")
        results.append(result)
    return results


def run_many(paths: list[Path], args: argparse.Namespace, budget: int, root: Path,
             report_root: Path,
             on_result: Callable[[list[NotebookResult]], None] | None = None,
             ) -> tuple[list[NotebookResult], bool]:
    """Run notebooks in worker processes within a CPU ``budget``; return the results and
    whether the run was interrupted (Ctrl-C / SIGTERM). ``on_result`` is called with the
    results so far each time a notebook finishes."""
    seconds = previous_seconds(args.profile, report_root)
    pending = [(p, thread_demand(p, args.profile, budget))
               for p in schedule_order(paths, seconds)]
    running: list[_Worker] = []
    results: list[NotebookResult] = []
    draw_progress_here()
    bar = progress(range(len(paths)), desc=f"notebooks @ {args.profile}", total=len(paths))
    with tempfile.TemporaryDirectory(prefix="helpers-run-") as tmp:
        try:
            while pending or running:
                free = budget - sum(w.threads for w in running)
                while (i := pick_next([t for _, t in pending], free, not running)) is not None:
                    path, threads = pending.pop(i)
                    running.append(_start_worker(path, args, threads, Path(tmp), root,
                                                 report_root))
                    free -= threads
                time.sleep(0.2)
                for w in [w for w in running if w.process.poll() is not None]:
                    running.remove(w)
                    result = _collect(w, args.profile, root, report_root)
                    results.append(result)
                    next(bar, None)
                    note = f"  {result.error}" if result.error else ""
                    print(f"{result.status:6} {result.seconds:7.1f}s  {result.notebook}{note}",
                          flush=True)
                    if on_result is not None:
                        on_result(results)
        except KeyboardInterrupt:
            stopped = _interrupt(running, args.profile, root, report_root)
            for result in stopped:
                print(f"{result.status} {result.notebook}", flush=True)
            return results + stopped, True
    return results, False


def _worker_main(args: argparse.Namespace) -> int:
    """One notebook in this process; SIGTERM interrupts it cleanly (kernel shut down, no
    partial file); the result goes to ``args.worker`` as JSON."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    root, report_root = Path(args.notebook_root), Path(args.report_root)
    try:
        result = run_notebook(args.notebooks[0].resolve(), args.profile, args.seed,
                              args.device, _parse_set(args.overrides), root=root,
                              report_root=report_root)
    except KeyboardInterrupt:
        result = NotebookResult(_relative(args.notebooks[0]), "interrupted", 0.0,
                                error="interrupted")
    atomic_write_text(Path(args.worker), json.dumps(asdict(result)))
    import psutil

    for child in psutil.Process().children(recursive=True):  # a kernel left by an interrupt
        _kill_tree(child.pid)
    return 0


def _jobs(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"--jobs takes 'auto' or a positive integer, not {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.nb.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: all)")
    parser.add_argument("--profile", default="small", help="smoke | small | full")
    parser.add_argument("--only", help="glob over notebook paths, e.g. 'sharif-1402-hw3/*'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--jobs", type=_jobs, default="auto",
                        help="CPU threads the concurrent notebooks may use together "
                             "(default auto: every core; 1: one notebook at a time)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one profile value (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="keep every report made with the same key (notebook, config, "
                             "helpers sources, DATA_DIR, machine, seed, device, overrides) "
                             "and run only the others")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # result file of one worker
    parser.add_argument("--notebook-root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report-root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        check_profile(args.profile)
    except ValueError as exc:
        parser.error(str(exc))
    root = Path(args.notebook_root or NOTEBOOK_DIR)
    report_root = Path(args.report_root or REPORT_DIR)
    os.chdir(PROJECT_ROOT)  # papermill records the (relative) paths it is given
    if args.worker:
        return _worker_main(args)
    paths = [p.resolve() for p in args.notebooks] or discover(root, args.only)
    missing = [str(p) for p in paths if not p.exists()]
    if missing or not paths:
        parser.error(f"no such notebook: {', '.join(missing)}" if missing else
                     f"no notebook matches {args.only!r}")
    outside = [str(p) for p in paths if not p.is_relative_to(root.resolve())]
    if outside:
        parser.error(f"not under {_relative(root)}/ (reports mirror its folders): "
                     + ", ".join(outside))
    overrides = _parse_set(args.overrides)  # refuse a malformed --set before anything runs
    for path in paths:  # what a runner killed outright (kill -9) left half-written
        discard_unfinished(path, args.profile, root, report_root)
    kept = [result for p in paths if args.resume and (result := kept_result(
        p, args.profile, args.seed, args.device, overrides, root, report_root)) is not None]
    to_run = [p for p in paths if _relative(p) not in {r.notebook for r in kept}]
    if args.resume:
        print(f"--resume: {len(kept)} of {len(paths)} report(s) made earlier with the same key "
              f"kept, {len(to_run)} to run", flush=True)
    start = time.perf_counter()

    def run_info(results: list[NotebookResult], **state: bool) -> dict[str, Any]:
        return {"notebooks": len(results), "planned": len(to_run), "kept": len(kept),
                "wall_seconds": round(time.perf_counter() - start, 1),
                "notebook_seconds": round(sum(r.seconds for r in results), 1),
                "bound_seconds": round(wall_bound(results, args.jobs), 1),
                "jobs": args.jobs, **state}

    def progress_summary(results: list[NotebookResult]) -> None:
        write_summary(kept + results, args.profile, report_root,
                      run_info(results, in_progress=True))

    results, interrupted = (run_many(to_run, args, args.jobs, root, report_root,
                                     on_result=progress_summary) if to_run else ([], False))
    info = run_info(results, interrupted=interrupted)
    summary = write_summary(kept + results, args.profile, report_root, info)
    failed = [r for r in results if r.status != "ok"]
    if not to_run:
        print(f"nothing to run; summary: {_relative(summary.with_suffix('.md'))}")
        return 0
    print(f"{len(results) - len(failed)}/{len(results)} notebooks ok in "
          f"{info['wall_seconds']:.0f} s wall (notebook times add up to "
          f"{info['notebook_seconds']:.0f} s; no schedule could take under "
          f"{info['bound_seconds']:.0f} s)"
          + (f", {len(kept)} kept from earlier runs" if kept else "")
          + f"; summary: {_relative(summary.with_suffix('.md'))}")
    if interrupted:
        print("interrupted: the running notebooks were stopped; other rows kept")
        return 130
    return 1 if failed else 0


def _stop_on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `kill` (SIGTERM) stops a run as Ctrl-C does


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_term)
    sys.exit(main())
