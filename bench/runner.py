"""The runner's concurrency: the same notebooks run one at a time (``--jobs 1``) and
concurrently (``--jobs auto``, every core), same run, same machine.

Six one-thread theory notebooks at ``small`` (each sets ``torch_threads = 1``), executed by
``python -m helpers.nb.run`` into temporary report folders. Prints each run's wall time, the
sum of the notebooks' own times, the speed-up (sequential wall / concurrent wall; above 1:
faster) and whether every recorded metric except measured timings (names with ``time``) is
identical in the two runs, which is what the runner promises (each notebook keeps its own
thread count). Run it on a quiet machine: other
jobs take the cores the concurrent run counts on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers.nb import NOTEBOOK_DIR, PROJECT_ROOT

NOTEBOOKS = ["iust-1404-hw4/T1_paged_attention.ipynb", "iust-1404-hw4/T3_additive_attention.ipynb",
             "sharif-1402-hw3/T3_multihead_attention.ipynb",
             "sharif-1402-hw3/T4_vit_resolution.ipynb",
             "sharif-1404-hw3/T2_self_attention_as_fc.ipynb",
             "iust-1402-hw5/T3_argmax_attention.ipynb"]


def run(jobs: str, report_root: Path) -> tuple[float, dict]:
    """Wall seconds of one ``helpers.nb.run`` over :data:`NOTEBOOKS`, and its summary."""
    paths = [str(NOTEBOOK_DIR / name) for name in NOTEBOOKS]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "helpers.nb.run", "--profile", "small", "--jobs", jobs,
                    "--report-root", str(report_root), *paths], check=True, cwd=PROJECT_ROOT,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, json.loads((report_root / "small" / "summary.json").read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sequential_wall, sequential = run("1", Path(tmp) / "sequential")
        concurrent_wall, concurrent = run("auto", Path(tmp) / "concurrent")
    metrics = [{(row["notebook"], key): value for row in summary["notebooks"]
                for key, value in row["metrics"].items() if "time" not in key}
               for summary in (sequential, concurrent)]
    print(f"{len(NOTEBOOKS)} notebooks at small, {os.cpu_count()} cores")
    for name, wall, summary in (("--jobs 1", sequential_wall, sequential),
                                ("--jobs auto", concurrent_wall, concurrent)):
        print(f"{name:12s} wall {wall:6.1f} s   notebook times add up to "
              f"{summary['last_run']['notebook_seconds']:6.1f} s")
    print(f"speed-up (sequential / concurrent wall): {sequential_wall / concurrent_wall:.2f}x")
    print(f"{len(metrics[0])} recorded metrics (timings left out) identical in both runs: "
          f"{metrics[0] == metrics[1]}")


if __name__ == "__main__":
    main()
