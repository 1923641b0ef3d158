"""The shared cache (helpers.nb.cache): where it lives, keys that change with every part, and
atomic writes that never leave a partial entry."""

from __future__ import annotations

import os

import pytest

from helpers.nb import PROJECT_ROOT, cache


def test_root_is_the_environment_variable_else_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    folder = cache.cache_dir("kind")
    assert folder == tmp_path / "mine" / "kind" and folder.is_dir()
    monkeypatch.delenv("HELPERS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "dl-homework"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = cache.cache_root()
    assert root == tmp_path / "home" / ".cache" / "dl-homework"
    assert not root.is_relative_to(PROJECT_ROOT)


def test_key_is_stable_and_changes_with_every_part(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"weights")
    parts = [cache.file_fingerprint(source), "float32", {"transformers": "5.0"}, [168, 6]]
    key = cache.cache_key(*parts)
    assert key == cache.cache_key(*parts) and len(key) == 16
    assert key == "".join(key.split()) and all(c in "0123456789abcdef" for c in key)
    changed = [
        [parts[0], "bfloat16", *parts[2:]],
        [*parts[:2], {"transformers": "5.1"}, parts[3]],
        [*parts[:3], [224, 6]],
        parts[:3],
    ]
    keys = {cache.cache_key(*p) for p in changed}
    assert len(keys) == len(changed) and key not in keys
    source.write_bytes(b"other weights")  # size changes
    assert cache.cache_key(cache.file_fingerprint(source), *parts[1:]) != key
    stat = source.stat()
    fingerprint = cache.file_fingerprint(source)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # reinstalled: touched
    assert cache.file_fingerprint(source) == fingerprint
    source.write_bytes(b"other weightz")  # same size, other bytes
    assert cache.file_fingerprint(source) != fingerprint


def test_package_versions_name_missing_packages():
    versions = cache.package_versions("torch", "no-such-package-here")
    assert versions["torch"] and versions["no-such-package-here"] is None


def test_atomic_path_writes_a_file_and_a_folder_or_nothing(tmp_path):
    target = tmp_path / "entry.pt"
    with cache.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name != target.name
        tmp.write_text("done")
    assert target.read_text() == "done"
    folder = tmp_path / "model"
    with cache.atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert (folder / "config.json").read_text() == "{}"
    with pytest.raises(KeyboardInterrupt), cache.atomic_path(tmp_path / "broken") as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.pt", "model"]


def test_atomic_path_keeps_an_entry_a_concurrent_writer_finished_first(tmp_path):
    folder = tmp_path / "model"
    with cache.atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("ours")
        folder.mkdir()  # the other run renamed its copy first
        (folder / "weights").write_text("theirs")
    assert (folder / "weights").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_key_hashes_tensors_arrays_and_modules_by_content():
    import numpy as np
    import torch

    layer = torch.nn.Linear(3, 2)
    images = np.zeros((2, 4, 4, 3), np.uint8)
    key = cache.cache_key(layer, images, torch.ones(3))
    assert key == cache.cache_key(layer, images.copy(), torch.ones(3))
    with torch.no_grad():
        layer.bias[0] += 1
    changed = cache.cache_key(layer, images, torch.ones(3))
    images[0, 0, 0, 0] = 1
    assert len({key, changed, cache.cache_key(layer, images, torch.ones(3)),
                cache.cache_key(layer, images, torch.ones(3, dtype=torch.float64)),
                cache.cache_key(layer, images, torch.ones(1, 3))}) == 5


def test_cached_computes_once_and_reads_back_exactly(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("HELPERS_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"train": torch.randn(4, 3), "layers": [torch.randn(2, 5, dtype=torch.float64)]}

    cold, hit = cache.cached("states", compute, "model", 7)
    assert not hit and len(calls) == 1
    warm, hit = cache.cached("states", compute, "model", 7)
    assert hit and len(calls) == 1
    assert torch.equal(warm["train"], cold["train"])
    assert warm["layers"][0].dtype == torch.float64
    assert torch.equal(warm["layers"][0], cold["layers"][0])
    _, hit = cache.cached("states", compute, "model", 8)
    assert not hit and len(calls) == 2
    assert len(list((tmp_path / "states").iterdir())) == 2
