"""Seeding, device choice, progress bars and a one-line environment summary."""

from __future__ import annotations

import os
import platform
import random
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

HEADLESS_ENV = "HELPERS_HEADLESS"  # set by helpers.run while papermill executes a notebook
DEVICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, NumPy and PyTorch; return a CPU ``torch.Generator`` seeded alike.

    Pass the returned generator to samplers and DataLoaders so that data order depends on
    ``seed`` alone.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - libraries still draw from it
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; ``"cuda"`` without a GPU fails."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is visible; use 'cpu'")
    return torch.device(device)


def is_headless() -> bool:
    """True while a notebook runs under ``helpers.run`` (papermill), not in JupyterLab."""
    return os.environ.get(HEADLESS_ENV) == "1"


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None,
             **kwargs: Any) -> Iterator[T]:
    """A tqdm progress bar: a widget in JupyterLab, a few plain lines in headless runs.

    Headless, the bar writes to stderr at most about ten times, so that an executed report
    stores a handful of lines rather than every update.
    """
    if is_headless():
        from tqdm.std import tqdm

        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        miniters = max(1, (total or 10) // 10)
        kwargs = dict(file=sys.stderr, mininterval=5.0, miniters=miniters, ascii=True,
                      dynamic_ncols=False, ncols=90) | kwargs
        return iter(tqdm(iterable, desc=desc, total=total, **kwargs))
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, **kwargs))


def environment_summary(device: torch.device | str, seed: int) -> str:
    """One line naming Python, torch, threads, device and seed."""
    return (f"python {platform.python_version()} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()} | device {device} | seed {seed}")
