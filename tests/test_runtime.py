"""helpers.nb.runtime: seeding, devices, the headless progress bar, setup and measure_cost."""

import os
import random

import numpy as np
import pytest
import torch

from helpers.nb import runtime
from helpers.nb.runtime import (
    HEADLESS_ENV,
    NOTEBOOK_ENV,
    environment_summary,
    progress,
    resolve_device,
    seed_everything,
    setup,
    torch_threads,
)


def _draw(generator):
    return (random.random(), np.random.rand(), torch.rand(1).item(),  # noqa: NPY002
            torch.randint(0, 1000, (1,), generator=generator).item())


def test_seed_everything_makes_every_source_repeat():
    first = _draw(seed_everything(123))
    second = _draw(seed_everything(123))
    other = _draw(seed_everything(124))
    assert first == second and first != other


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_headless_progress_draws_live_elsewhere_and_leaves_one_line(monkeypatch, capsys,
                                                                     tmp_path):
    live = tmp_path / "terminal"
    monkeypatch.setenv(HEADLESS_ENV, "1")
    monkeypatch.setenv(runtime.PROGRESS_ENV, str(live))
    monkeypatch.setenv(NOTEBOOK_ENV, "/x/Q9.ipynb")
    assert list(progress(range(1000), desc="work")) == list(range(1000))
    out, err = capsys.readouterr()
    assert err == "" and "\r" not in out
    assert out.count("\n") == 1 and out.startswith("work: 1000/1000 in ")
    assert "Q9: work" in live.read_text() and "1000/1000" in live.read_text()
    monkeypatch.delenv(runtime.PROGRESS_ENV)  # no terminal: the bar draws nothing
    assert list(progress(iter(range(3)), desc="quiet")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("quiet: 3 in ")


def test_draw_progress_here_points_bars_at_this_process_unless_already_set(monkeypatch):
    monkeypatch.delenv(runtime.PROGRESS_ENV, raising=False)
    runtime.draw_progress_here()
    assert os.environ[runtime.PROGRESS_ENV] == f"/proc/{os.getpid()}/fd/2"
    monkeypatch.setenv(runtime.PROGRESS_ENV, "/elsewhere")
    runtime.draw_progress_here()
    assert os.environ[runtime.PROGRESS_ENV] == "/elsewhere"


def test_environment_summary_names_device_and_seed():
    line = environment_summary("cpu", 7)
    assert "torch" in line and "device cpu" in line and "seed 7" in line


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _notebook_with_config(folder, body):
    notebook = folder / "question.ipynb"
    notebook.write_text("{}")
    (folder / "question.toml").write_text("\n".join(f"[{p}]\n{body}" for p in
                                                    ("smoke", "small", "full")))
    return notebook


def test_setup_reads_the_toml_beside_the_notebook_seeds_and_sets_threads(tmp_path, capsys,
                                                                         monkeypatch):
    notebook = _notebook_with_config(tmp_path, "torch_threads = 1\nsteps = 3")
    before = torch.get_num_threads()
    monkeypatch.setenv(NOTEBOOK_ENV, str(notebook))
    cfg, generator, dev = setup("small", 11, "cpu", {"steps": 5})
    try:
        assert cfg.steps == 5 and cfg.question == "question" and dev == torch.device("cpu")
        assert torch.get_num_threads() == 1
        assert generator.initial_seed() == 11
        printed = capsys.readouterr().out.splitlines()
        assert "seed 11" in printed[0] and "steps=5" in printed[1]
        # a second setup starts from the process default again, so nothing leaks
        (tmp_path / "question.toml").write_text("[smoke]\nk = 1\n[small]\nk = 1\n[full]\nk = 1")
        setup("small", 0, "cpu", notebook=notebook)
        assert torch.get_num_threads() == runtime._THREADS_AT_START
    finally:
        runtime._restore_threads()
    assert torch.get_num_threads() == before


def test_setup_refuses_unknown_overrides_and_profiles(tmp_path):
    notebook = _notebook_with_config(tmp_path, "steps = 3")
    with pytest.raises(ValueError, match="unknown override"):
        setup("small", 0, "cpu", {"step": 1}, notebook=notebook)
    with pytest.raises(ValueError, match="unknown profile"):
        setup("medium", 0, "cpu", notebook=notebook)


def test_setup_without_a_known_notebook_says_what_to_pass(monkeypatch):
    monkeypatch.delenv(NOTEBOOK_ENV, raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    with pytest.raises(RuntimeError, match="pass notebook="):
        setup("small", 0, "cpu")


def test_measure_cost_sees_an_allocation():
    with runtime.measure_cost("cpu") as cost:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del block
    assert cost.seconds >= 0 and cost.cpu_seconds >= 0
    if cost.memory_kind != "unavailable":
        assert 60 <= cost.peak_mb < 1000


def test_short_path_hides_the_machine_folders():
    import sys
    from pathlib import Path

    from helpers.nb import PROJECT_ROOT
    from helpers.nb.runtime import short_path

    assert short_path(str(PROJECT_ROOT / "helpers" / "nb" / "report.py")) == "helpers/nb/report.py"
    site = Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "torch" / "nn" / "x.py"
    assert short_path(str(site)) == "site-packages/torch/nn/x.py"
    assert short_path("/elsewhere/y.py") == "/elsewhere/y.py"
