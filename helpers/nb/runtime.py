"""The one setup call of every notebook, and what it is made of: seeding, device choice,
CPU threads, progress bars and a one-line environment summary.

A notebook's setup cell is ``cfg, generator, dev = runtime.setup(profile, seed, device,
overrides)``: it finds the notebook's ``<stem>.toml`` from the notebook's own path, applies
the profile and overrides, seeds, picks the device, sets ``torch_threads`` when the config
has that key, and prints the environment and the config in two lines.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

HEADLESS_ENV = "HELPERS_HEADLESS"  # set by helpers.nb.run while papermill executes a notebook
NOTEBOOK_ENV = "HELPERS_NOTEBOOK"  # the notebook's path, set by helpers.nb.run
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
    """True while a notebook runs under ``helpers.nb.run`` (papermill), not in JupyterLab."""
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


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``None``: leave as is), then restore.

    Small recurrent models are many tiny sequential kernels: on a shared 2-core machine one
    thread ran them about ten times faster than two in our measurement.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_THREADS_AT_START: int | None = None  # the process's thread count before any setup changed it


def _restore_threads() -> None:
    if _THREADS_AT_START is not None:
        torch.set_num_threads(_THREADS_AT_START)


def _apply_threads(n: int | None) -> None:
    """Set ``n`` threads (0/None: the process default), remembering the default once; the
    default is restored when the kernel exits and before any later ``setup``."""
    global _THREADS_AT_START
    if _THREADS_AT_START is None:
        _THREADS_AT_START = torch.get_num_threads()
        atexit.register(_restore_threads)
    torch.set_num_threads(n or _THREADS_AT_START)


def current_notebook() -> Path:
    """The running notebook's path: set by ``helpers.nb.run`` in headless runs, by Jupyter
    (``JPY_SESSION_NAME`` / ``__session__``) in JupyterLab."""
    candidates = [os.environ.get(NOTEBOOK_ENV), os.environ.get("JPY_SESSION_NAME")]
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            candidates.append(shell.user_ns.get("__session__"))
    for candidate in candidates:
        if candidate and str(candidate).endswith(".ipynb"):
            return Path(candidate).resolve()
    raise RuntimeError("cannot tell which notebook is running (no HELPERS_NOTEBOOK, "
                       "JPY_SESSION_NAME or __session__); pass "
                       "notebook='notebooks/<assignment-id>/<name>.ipynb' to runtime.setup")


@dataclass
class Session:
    """What ``setup`` returns; unpacks as ``cfg, generator, device``."""

    cfg: Any  # helpers.nb.profiles.Config
    generator: torch.Generator
    device: torch.device
    started: float = field(default_factory=time.perf_counter)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.cfg, self.generator, self.device))

    def elapsed(self) -> float:
        """Seconds since ``setup``."""
        return time.perf_counter() - self.started


def setup(profile: str, seed: int, device: str = "auto", overrides: dict | None = None,
          notebook: str | Path | None = None) -> Session:
    """The setup of a notebook: its config at ``profile`` (from ``<stem>.toml`` beside it,
    with ``overrides``), the seeded generator, the device, and ``torch_threads`` applied.

    Prints the environment line and the config line. Raises ``ValueError`` for an unknown
    profile, override key or device.
    """
    from helpers.nb import profiles

    path = Path(notebook) if notebook is not None else current_notebook()
    cfg = profiles.config(path.with_suffix(".ipynb"), profile, **dict(overrides or {}))
    generator = seed_everything(seed)
    dev = resolve_device(device)
    _apply_threads(cfg.get("torch_threads"))
    print(environment_summary(dev, seed))
    print(cfg.summary())
    return Session(cfg, generator, dev)
