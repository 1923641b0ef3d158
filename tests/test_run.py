"""helpers.nb.run: papermill execution, atomic reports, summaries, parameter checks."""

import contextlib
import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers.nb import run

PARAMS = 'profile: str = "small"\nseed: int = 0\ndevice: str = "auto"\noverrides: dict = {}'


def _notebook(path, body, params=PARAMS):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [new_markdown_cell("# Test")]
    if params is not None:
        nb.cells.append(new_code_cell(params, metadata={"tags": ["parameters"]}))
    nb.cells.append(new_code_cell(body))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def tree(tmp_path):
    root, reports = tmp_path / "notebooks", tmp_path / "reports"
    good = _notebook(root / "hw-a" / "good.ipynb", (
        "import matplotlib.pyplot as plt\nfrom helpers.nb import report\n"
        "fig, ax = plt.subplots(); ax.plot([0, 1])\nreport.savefig(fig, 'line')\n"
        "report.record('answer', 42)\nreport.record('seed_seen', seed)\n"
        "report.record('profile_seen', profile)"))
    bad = _notebook(root / "hw-b" / "bad.ipynb", "raise RuntimeError('boom in cell')")
    return root, reports, good, bad


def test_successful_notebook_writes_report_figures_and_metrics(tree):
    root, reports, good, _ = tree
    result = run.run_notebook(good, "smoke", seed=5, root=root, report_root=reports)
    assert result.status == "ok", result.error
    out = reports / "smoke" / "hw-a" / "good.ipynb"
    assert result.metrics == {"answer": 42, "seed_seen": 5, "profile_seen": "smoke"}
    assert (reports / "smoke" / "hw-a" / "good_figures" / "line.png").exists()
    executed = nbformat.read(out, as_version=4)
    counts = [c.execution_count for c in executed.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    assert not [p for p in reports.rglob("*") if ".partial" in p.name]


def test_failing_notebook_leaves_nothing_half_written(tree):
    root, reports, _, bad = tree
    stale = reports / "smoke" / "hw-b" / "bad.ipynb"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # a report from an earlier, successful run
    result = run.run_notebook(bad, "smoke", root=root, report_root=reports)
    assert result.status == "failed" and "RuntimeError: boom in cell" in result.error
    folder = reports / "smoke" / "hw-b"
    assert not folder.exists() or not list(folder.iterdir())


def test_unknown_parameters_and_missing_parameters_cell_are_refused(tree, tmp_path):
    root, reports, good, _ = tree
    with pytest.raises(ValueError, match=r"does not declare parameter\(s\) \['epochs'\]"):
        run.check_parameters(good, {"profile": "smoke", "epochs": 3})
    bare = _notebook(root / "hw-c" / "bare.ipynb", "x = 1", params=None)
    result = run.run_notebook(bare, "smoke", root=root, report_root=reports)
    assert result.status == "failed" and "no cell tagged 'parameters'" in result.error


def test_unknown_profile_is_refused_before_running(tree):
    root, reports, good, _ = tree
    with pytest.raises(ValueError, match="unknown profile"):
        run.run_notebook(good, "medium", root=root, report_root=reports)


def test_main_keeps_going_writes_summary_and_fails(tree, monkeypatch, capsys):
    root, reports, _, _ = tree
    monkeypatch.setattr(run, "NOTEBOOK_DIR", root)
    monkeypatch.setattr(run, "REPORT_DIR", reports)
    assert run.main(["--profile", "smoke"]) == 1
    summary = json.loads((reports / "smoke" / "summary.json").read_text())
    status = {r["notebook"].split("/")[-1]: r["status"] for r in summary["notebooks"]}
    assert status == {"good.ipynb": "ok", "bad.ipynb": "failed"}
    table = (reports / "smoke" / "summary.md").read_text()
    assert "answer = 42" in table and "boom in cell" in table
    assert run.main(["--profile", "smoke", "--only", "hw-a/*"]) == 0
    merged = json.loads((reports / "smoke" / "summary.json").read_text())
    assert len(merged["notebooks"]) == 2  # --only updates its rows, keeps the others
    assert "1/1 notebooks ok" in capsys.readouterr().out


def test_main_rejects_bad_arguments(tree, monkeypatch):
    root, reports, _, _ = tree
    monkeypatch.setattr(run, "NOTEBOOK_DIR", root)
    with pytest.raises(SystemExit):
        run.main(["--profile", "tiny"])
    with pytest.raises(SystemExit):
        run.main(["--only", "nothing-matches-*"])
    with pytest.raises(SystemExit):
        run.main(["--set", "novalue"])
    elsewhere = _notebook(root.parent / "elsewhere" / "x.ipynb", "x = 1")
    with pytest.raises(SystemExit):
        run.main(["--profile", "smoke", str(elsewhere)])


def test_schedule_is_longest_first_and_respects_thread_demand(tmp_path):
    a, b, c = (tmp_path / "hw" / f"{n}.ipynb" for n in "abc")
    seconds = {run._relative(a): 5.0, run._relative(b): 50.0}
    assert run.schedule_order([a, b, c], seconds) == [c, b, a]  # never timed goes first
    (tmp_path / "hw").mkdir()
    a.with_suffix(".toml").write_text(
        "[smoke]\ntorch_threads = 1\n[small]\ntorch_threads = 4\n[full]\ntorch_threads = 0\n")
    assert run.thread_demand(a, "smoke", budget=2) == 1
    assert run.thread_demand(a, "small", budget=2) == 2  # never more than the budget
    assert run.thread_demand(a, "full", budget=2) == 2  # 0: PyTorch's default, every core
    assert run.thread_demand(b, "smoke", budget=3) == 3  # no config: the whole budget


BARRIER = """import pathlib, time
from helpers.nb import report
here = pathlib.Path(r'{folder}')
(here / '{me}.started').touch()
deadline = time.time() + 120
while not (here / '{other}.started').exists():
    assert time.time() < deadline, 'the other notebook never ran beside this one'
    time.sleep(0.1)
report.record('waited_for', '{other}')"""


def test_main_runs_notebooks_concurrently_within_the_budget(tmp_path, monkeypatch):
    root, reports, flags = tmp_path / "notebooks", tmp_path / "reports", tmp_path / "flags"
    flags.mkdir()
    for me, other in (("left", "right"), ("right", "left")):
        nb = _notebook(root / "hw" / f"{me}.ipynb",
                       BARRIER.format(folder=flags, me=me, other=other))
        nb.with_suffix(".toml").write_text(
            "\n".join(f"[{p}]\ntorch_threads = 1" for p in ("smoke", "small", "full")))
    monkeypatch.setattr(run, "NOTEBOOK_DIR", root)
    monkeypatch.setattr(run, "REPORT_DIR", reports)
    # each waits for the other to start: only a concurrent run can finish
    assert run.main(["--profile", "smoke", "--jobs", "2"]) == 0
    summary = json.loads((reports / "smoke" / "summary.json").read_text())
    assert [r["metrics"] for r in summary["notebooks"]] == [{"waited_for": "right"},
                                                             {"waited_for": "left"}]
    last = summary["last_run"]
    assert last["jobs"] == 2 and last["notebooks"] == 2
    assert last["wall_seconds"] > 0 and last["notebook_seconds"] > 0
    assert [r["threads"] for r in summary["notebooks"]] == [1, 1]
    # two one-thread notebooks side by side: the bound is the longer one, under the wall time
    assert last["bound_seconds"] == round(max(r["seconds"] for r in summary["notebooks"]), 1)
    assert last["bound_seconds"] <= last["wall_seconds"]
    text = (reports / "smoke" / "summary.md").read_text()
    assert "notebook times add up to" in text and "could take under" in text


def test_wall_bound_is_thread_seconds_over_the_budget_or_the_longest_notebook():
    def result(seconds, threads):
        return run.NotebookResult("x.ipynb", "ok", seconds, threads=threads)

    # two-thread notebooks cannot overlap on 2 threads: their times add up
    assert run.wall_bound([result(100, 2), result(50, 2)], 2) == 150
    # one-thread notebooks pair up: half their sum, unless one is longer than that
    assert run.wall_bound([result(100, 1), result(60, 1), result(40, 1)], 2) == 100
    assert run.wall_bound([result(300, 1), result(60, 1)], 2) == 300
    assert run.wall_bound([result(100, 1), result(100, 2)], 2) == 150
    assert run.wall_bound([result(100, 0)], 4) == 100  # not recorded: every thread
    assert run.wall_bound([], 2) == 0.0


def test_pick_next_backfills_a_free_core():
    assert run.pick_next([2, 1, 1], free=1, idle=False) == 1  # the 2-thread one waits
    assert run.pick_next([2, 2], free=1, idle=False) is None
    assert run.pick_next([2, 1], free=0, idle=True) == 0  # nothing runs: the next in order
    assert run.pick_next([], free=2, idle=True) is None


def test_a_later_one_thread_notebook_fills_the_core_a_wide_one_cannot(tmp_path, monkeypatch):
    # name order (no earlier summary): a_left (1 thread), b_wide (every thread), c_right (1
    # thread); a_left waits for c_right, so the run finishes only if c_right starts before b_wide
    root, reports, flags = tmp_path / "notebooks", tmp_path / "reports", tmp_path / "flags"
    flags.mkdir()
    for me, other in (("a_left", "c_right"), ("c_right", "a_left")):
        nb = _notebook(root / "hw" / f"{me}.ipynb",
                       BARRIER.format(folder=flags, me=me, other=other))
        nb.with_suffix(".toml").write_text(
            "\n".join(f"[{p}]\ntorch_threads = 1" for p in ("smoke", "small", "full")))
    _notebook(root / "hw" / "b_wide.ipynb", "x = 1")
    monkeypatch.setattr(run, "NOTEBOOK_DIR", root)
    monkeypatch.setattr(run, "REPORT_DIR", reports)
    assert run.main(["--profile", "smoke", "--jobs", "2"]) == 0
    summary = json.loads((reports / "smoke" / "summary.json").read_text())
    assert [r["status"] for r in summary["notebooks"]] == ["ok", "ok", "ok"]


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])  # Ctrl-C, and `kill` (background runs)
def test_ctrl_c_stops_cleanly_and_keeps_the_other_rows(tmp_path, stop):
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    import psutil

    root, reports = tmp_path / "notebooks", tmp_path / "reports"
    _notebook(root / "hw" / "quick.ipynb", "from helpers.nb import report\nreport.record('x', 1)")
    _notebook(root / "hw" / "slow.ipynb", "import time\ntime.sleep(600)")
    # as from a terminal: a shell's background job (`make test &`) passes SIGINT on ignored,
    # and Python then never turns Ctrl-C into KeyboardInterrupt
    runner = subprocess.Popen(
        [sys.executable, "-m", "helpers.nb.run", "--profile", "smoke", "--jobs", "2",
         "--notebook-root", str(root), "--report-root", str(reports)],
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    partial = reports / "smoke" / "hw" / ".slow.partial.ipynb"

    def kernel_running(family):
        with contextlib.suppress(psutil.Error):
            return any("ipykernel" in " ".join(p.cmdline()) for p in family)
        return False

    family: list = []
    while not ((reports / "smoke" / "hw" / "quick.ipynb").exists() and partial.exists()
               and kernel_running(family)):
        assert runner.poll() is None and time.time() < deadline, runner.stdout.read()
        time.sleep(0.5)  # the slow notebook's kernel starts after its partial file
        family = psutil.Process(runner.pid).children(recursive=True)
    time.sleep(1.0)  # let the kernel start executing the cell
    runner.send_signal(getattr(signal, stop))
    assert runner.wait(timeout=120) == 130, runner.stdout.read()
    assert not [p for p in reports.rglob("*") if ".partial" in p.name]
    assert not (reports / "smoke" / "hw" / "slow.ipynb").exists()
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    summary = json.loads((reports / "smoke" / "summary.json").read_text())
    status = {r["notebook"].split("/")[-1]: r["status"] for r in summary["notebooks"]}
    assert status == {"quick.ipynb": "ok", "slow.ipynb": "interrupted"}
    assert summary["last_run"]["interrupted"] is True


COUNTED = """from helpers.nb import report
with open(r'{runs}', 'a') as f:
    f.write('x')
report.record('value', {value}, headline=True)"""


def test_resume_keeps_reports_of_the_same_key_and_reruns_the_others(tmp_path, monkeypatch,
                                                                     capsys):
    root, reports = tmp_path / "notebooks", tmp_path / "reports"
    runs = {name: tmp_path / f"{name}.runs" for name in ("same", "edited")}

    def executions():
        return {name: len(f.read_text()) if f.exists() else 0 for name, f in runs.items()}

    for name in runs:
        nb = _notebook(root / "hw" / f"{name}.ipynb", COUNTED.format(runs=runs[name], value=1))
        nb.with_suffix(".toml").write_text(  # one thread each: the two run side by side
            "\n".join(f"[{p}]\ntorch_threads = 1" for p in ("smoke", "small", "full")))
    monkeypatch.setattr(run, "NOTEBOOK_DIR", root)
    monkeypatch.setattr(run, "REPORT_DIR", reports)
    assert run.main(["--profile", "smoke"]) == 0
    first = json.loads((reports / "smoke" / "summary.json").read_text())
    assert executions() == {"same": 1, "edited": 1}

    # nothing changed: both reports are kept, with their rows, and nothing runs
    assert run.main(["--profile", "smoke", "--resume"]) == 0
    assert executions() == {"same": 1, "edited": 1}
    kept = json.loads((reports / "smoke" / "summary.json").read_text())
    assert [r["kept"] is not None for r in kept["notebooks"]] == [True, True]
    assert ([(r["metrics"], r["seconds"]) for r in kept["notebooks"]]
            == [(r["metrics"], round(r["seconds"], 1)) for r in first["notebooks"]])
    assert kept["last_run"]["kept"] == 2 and kept["last_run"]["notebooks"] == 0
    assert "2 of 2 report(s) made earlier with the same key kept" in capsys.readouterr().out
    text = (reports / "smoke" / "summary.md").read_text()
    assert "kept from" in text and "the 2 report(s) made earlier" in text and "nothing ran" in text

    # an edited notebook, another seed and a malformed report each run again
    _notebook(root / "hw" / "edited.ipynb", COUNTED.format(runs=runs["edited"], value=2))
    assert run.main(["--profile", "smoke", "--resume"]) == 0
    assert executions() == {"same": 1, "edited": 2}
    rows = json.loads((reports / "smoke" / "summary.json").read_text())["notebooks"]
    assert [(r["metrics"]["value"], r["kept"] is None) for r in rows] == [(2, True), (1, False)]
    assert run.main(["--profile", "smoke", "--seed", "1", "--resume"]) == 0
    assert executions() == {"same": 2, "edited": 3}
    (reports / "smoke" / "hw" / "same.ipynb").write_text("{not json")
    assert run.main(["--profile", "smoke", "--seed", "1", "--resume"]) == 0
    assert executions() == {"same": 3, "edited": 3}
    # without --resume everything runs
    assert run.main(["--profile", "smoke", "--seed", "1"]) == 0
    assert executions() == {"same": 4, "edited": 4}


def test_a_killed_runner_leaves_its_finished_rows_and_resume_goes_on(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    root, reports = tmp_path / "notebooks", tmp_path / "reports"
    runs = tmp_path / "quick.runs"
    _notebook(root / "hw" / "quick.ipynb", COUNTED.format(runs=runs, value=7))
    _notebook(root / "hw" / "slow.ipynb", "import time\ntime.sleep(600)")
    command = [sys.executable, "-m", "helpers.nb.run", "--profile", "smoke", "--jobs", "2",
               "--notebook-root", str(root), "--report-root", str(reports)]
    runner = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    summary, deadline = reports / "smoke" / "summary.json", time.time() + 180
    partial = reports / "smoke" / "hw" / ".slow.partial.ipynb"
    while not (summary.exists() and partial.exists()):  # the quick one finished, slow started
        assert runner.poll() is None and time.time() < deadline, runner.stdout.read()
        time.sleep(0.5)
    family = psutil.Process(runner.pid).children(recursive=True) + [psutil.Process(runner.pid)]
    os.killpg(runner.pid, signal.SIGKILL)  # no handler runs: as when a session is closed
    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    runner.wait(timeout=30)
    rows = json.loads(summary.read_text())
    assert rows["last_run"]["in_progress"] is True
    assert [(r["notebook"].split("/")[-1], r["status"], r["metrics"]) for r in rows["notebooks"]
            ] == [("quick.ipynb", "ok", {"value": 7})]
    assert "stopped without finishing" in (reports / "smoke" / "summary.md").read_text()

    _notebook(root / "hw" / "slow.ipynb", "from helpers.nb import report\nreport.record('y', 3)")
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 2 report(s) made earlier with the same key kept, 1 to run" in done.stdout
    assert runs.read_text() == "x"  # the quick notebook did not run again
    rows = json.loads(summary.read_text())
    assert [(r["status"], r["kept"] is not None) for r in rows["notebooks"]] == [
        ("ok", True), ("ok", False)]
    assert "in_progress" not in rows["last_run"] and rows["last_run"]["kept"] == 1
    assert not [p for p in reports.rglob("*") if ".partial" in p.name]


def test_a_worker_killed_outright_fails_its_notebook_and_leaves_nothing_half_written(
        tmp_path, monkeypatch):
    root, reports = tmp_path / "notebooks", tmp_path / "reports"
    # the kernel kills its worker (as the kernel's OOM killer would) after papermill wrote the
    # partial report, then exits
    _notebook(root / "hw" / "doomed.ipynb", "import os, signal, time\ntime.sleep(2)\n"
              "os.kill(os.getppid(), signal.SIGKILL)\nos._exit(0)")
    stale = reports / "smoke" / "hw" / "doomed.ipynb"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # a report from an earlier, successful run
    (reports / "smoke" / "hw" / "doomed_figures").mkdir()
    monkeypatch.setattr(run, "NOTEBOOK_DIR", root)
    monkeypatch.setattr(run, "REPORT_DIR", reports)
    assert run.main(["--profile", "smoke"]) == 1
    row = json.loads((reports / "smoke" / "summary.json").read_text())["notebooks"][0]
    assert row["status"] == "failed" and row["error"] == "worker killed by signal 9 (SIGKILL)"
    assert row["seconds"] > 2
    assert sorted(p.name for p in (reports / "smoke").rglob("*")) == ["hw", "summary.json",
                                                                      "summary.md"]
