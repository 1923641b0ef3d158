"""helpers.runtime: seeding, devices and the headless progress bar."""

import random

import numpy as np
import pytest
import torch

from helpers.runtime import (
    HEADLESS_ENV,
    environment_summary,
    progress,
    resolve_device,
    seed_everything,
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


def test_headless_progress_yields_everything_and_prints_few_lines(monkeypatch, capsys):
    monkeypatch.setenv(HEADLESS_ENV, "1")
    assert list(progress(range(1000), desc="work")) == list(range(1000))
    err = capsys.readouterr().err
    assert "work" in err and err.count("\r") + err.count("\n") <= 15


def test_environment_summary_names_device_and_seed():
    line = environment_summary("cpu", 7)
    assert "torch" in line and "device cpu" in line and "seed 7" in line
