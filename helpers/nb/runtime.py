"""The one setup call of every notebook, and what it is made of: seeding, device choice,
CPU threads, progress bars and a one-line environment summary; and :class:`measure_cost`,
the wall time, CPU time and peak memory of a block.

A notebook's setup cell is ``cfg, generator, dev = runtime.setup(profile, seed, device,
overrides)``: it finds the notebook's ``<stem>.toml`` from the notebook's own path, applies
the profile and overrides, seeds, picks the device, sets ``torch_threads`` when the config
has that key, and prints the environment and the config in two lines.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")
_DEFAULT_FORMATWARNING = warnings.formatwarning

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


PROGRESS_ENV = "HELPERS_PROGRESS_TO"  # where headless bars draw live: the runner's stderr


def draw_progress_here() -> None:
    """Let headless notebooks started from this process draw their bars live on its stderr
    (``$HELPERS_PROGRESS_TO`` := ``/proc/<pid>/fd/2``), unless a caller already chose where."""
    terminal = Path(f"/proc/{os.getpid()}/fd/2")
    if terminal.exists() and PROGRESS_ENV not in os.environ:
        os.environ[PROGRESS_ENV] = str(terminal)


def _live_stream() -> Any:
    """The runner's terminal (``$HELPERS_PROGRESS_TO``) opened for appending, or None."""
    target = os.environ.get(PROGRESS_ENV)
    if not target:
        return None
    try:
        return open(target, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        return None


def _headless_progress(iterable: Iterable[T], desc: str, total: int | None,
                       kwargs: dict[str, Any]) -> Iterator[T]:
    from tqdm.std import tqdm

    stream = _live_stream()
    notebook = Path(os.environ.get(NOTEBOOK_ENV, "")).stem
    bar = tqdm(iterable, desc=f"{notebook}: {desc}" if notebook else desc, total=total,
               **(dict(file=stream, disable=stream is None, mininterval=10.0, ascii=True,
                       dynamic_ncols=False, ncols=100) | kwargs))
    start, count = time.perf_counter(), 0
    try:
        for item in bar:
            count += 1
            yield item
    finally:
        bar.close()
        if stream is not None:
            stream.close()
        of = f"/{total}" if total is not None else ""
        print(f"{desc or 'progress'}: {count}{of} in {time.perf_counter() - start:.1f} s")


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None,
             **kwargs: Any) -> Iterator[T]:
    """A tqdm progress bar: a widget in JupyterLab; in headless runs a live bar on the
    runner's terminal (``$HELPERS_PROGRESS_TO``) and one final line in the report."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if is_headless():
        return _headless_progress(iterable, desc, total, kwargs)
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


def short_path(filename: str) -> str:
    """A file name without the machine's folders: ``site-packages/...`` for installed
    packages, relative to the project or the environment otherwise."""
    from helpers.nb import PROJECT_ROOT

    path = Path(filename)
    if "site-packages" in path.parts:
        return str(Path(*path.parts[path.parts.index("site-packages"):]))
    for root in (PROJECT_ROOT, Path(sys.prefix)):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return filename


def _warning_without_machine_paths(message, category, filename, lineno, line=None) -> str:
    """``warnings``' default format, with :func:`short_path` file names."""
    return _DEFAULT_FORMATWARNING(message, category, short_path(filename), lineno, line)


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


_OVERRIDDEN: dict[Path, tuple[str, ...]] = {}  # notebook -> keys its last setup overrode


def overridden_keys(notebook: str | Path | None = None) -> tuple[str, ...]:
    """The config keys whose values this process's last ``setup`` of ``notebook`` (default:
    the running one) changed through ``overrides``; ``()`` when none did or before ``setup``.
    A number measured with the profile's own values (a seed spread) does not describe them."""
    path = Path(notebook) if notebook is not None else current_notebook()
    return _OVERRIDDEN.get(path.resolve().with_suffix(".ipynb"), ())


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
    _OVERRIDDEN[path.resolve().with_suffix(".ipynb")] = cfg.overridden
    generator = seed_everything(seed)
    dev = resolve_device(device)
    _apply_threads(cfg.get("torch_threads"))
    warnings.formatwarning = _warning_without_machine_paths
    print(environment_summary(dev, seed))
    print(cfg.summary())
    return Session(cfg, generator, dev)


# ------------------------------------------------------------------------------ cost

def _rss_bytes(field_name: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) via ``/proc/self/clear_refs``."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_memory() -> None:
    """Collect garbage and give freed heap back to the OS (glibc), so RSS reflects live data."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class measure_cost:  # noqa: N801 - used as a context manager, reads like a function
    """``with measure_cost(device) as cost: ...`` then ``cost.seconds``, ``cost.cpu_seconds``,
    ``cost.peak_mb`` and ``cost.memory_kind``.

    Peak memory is, on CUDA, the peak of ``torch.cuda.max_memory_allocated`` minus the
    allocation before the block; on the CPU (Linux), the peak resident-set size of the process
    during the block (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the RSS before
    it — every byte the block added, allocator and Python included. Elsewhere it is NaN.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds = self.cpu_seconds = self.peak_mb = float("nan")
        self.memory_kind = "unavailable"

    def __enter__(self) -> measure_cost:
        _release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.memory_kind = "CUDA peak allocated - before"
        else:
            self._base = _rss_bytes("VmRSS")
            if self._base is not None and _reset_peak_rss():
                self.memory_kind = "peak RSS - RSS before"
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_bytes("VmHWM") if self.memory_kind != "unavailable" else None
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
        if peak is not None and self._base is not None:
            self.peak_mb = max(0, peak - self._base) / 2**20
