"""The shared cache: things that are slow to compute and the same on every run of a machine
(the DINOv2 rebuilt from its ONNX file, the dequantised GGUF language model, frozen image
features), computed once and read back by every notebook and profile.

Everything lives under one folder, :func:`cache_root`: ``$HELPERS_CACHE`` when set, else
``$XDG_CACHE_HOME/dl-homework`` (``~/.cache/dl-homework``). It is outside ``DATA_DIR`` (which
may be read-only) and outside the project (so no clone commits it, and every clone of the
machine shares it). Each entry's name carries :func:`cache_key` of everything that changes its
content, so a changed input makes a new entry instead of a stale read; deleting the folder
(``make clean-cache``) is always safe. Entries are written through :func:`atomic_path`, so an
interrupted or concurrent writer never leaves a half-written entry under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

ENV_VAR = "HELPERS_CACHE"
T = TypeVar("T")


def cache_root() -> Path:
    """``$HELPERS_CACHE``, else ``$XDG_CACHE_HOME/dl-homework``, else ``~/.cache/dl-homework``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dl-homework"


def cache_dir(kind: str) -> Path:
    """The folder of one kind of entry (``cache_root() / kind``), created on demand."""
    folder = cache_root() / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a source file: its name, size and the SHA-256 of its bytes (about a
    second per GB here). Not its modification time: a fresh install of the package that ships
    a model file (a new clone's venv) rewrites the file unchanged, and the entry still fits."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return {"file": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()}


def package_versions(*packages: str) -> dict[str, str | None]:
    """The installed version of each distribution (``None`` when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def content_hash(value: Any) -> str:
    """A SHA-256 of what a tensor, NumPy array or module (its ``state_dict``) holds: dtype,
    shape and bytes of every tensor; anything else by its ``str``."""
    import numpy as np
    import torch

    digest = hashlib.sha256()
    if isinstance(value, torch.nn.Module):
        for name, tensor in value.state_dict().items():
            digest.update(name.encode())
            digest.update(content_hash(tensor).encode())
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    else:
        digest.update(str(value).encode())
    return digest.hexdigest()


def cache_key(*parts: Any) -> str:
    """A 16-hex-digit hash of ``parts``: JSON values as they are, tensors, arrays and modules
    by :func:`content_hash`, anything else by its ``str``. Equal parts give the same key on every
    run and machine, any changed part another key."""
    text = json.dumps(parts, sort_keys=True, default=content_hash)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(kind: str, compute: Callable[[], T], *parts: Any) -> tuple[T, bool]:
    """``compute()`` (tensors, or lists/dicts/tuples of them), saved once under ``kind`` and
    :func:`cache_key` of ``parts``, and whether it was read from the cache. Tensors are stored
    as they are, so a read gives exactly what a computation gave."""
    import torch

    path = cache_dir(kind) / f"{cache_key(*parts)}.pt"
    if path.exists():
        return torch.load(path), True
    value = compute()
    with atomic_path(path) as tmp:
        torch.save(value, tmp)
    return value, False


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file or a folder); on success it is
    renamed to ``path``, on an exception removed. When another writer finished ``path`` first,
    its entry is kept and ours discarded (both hold the same content)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:  # a folder already written by a concurrent run
            if not path.exists():
                raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
