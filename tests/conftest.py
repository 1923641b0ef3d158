"""Shared fixtures: deterministic seeds, and one smoke run per notebook per test session."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

from helpers.nb import run

# Like the Makefile and .ci/run: use ../shared/data when DATA_DIR is unset and it exists.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["DATA_DIR"] = str(_SHARED_DATA)
# The tests never read or fill the user's shared cache (helpers.nb.cache): one folder per run.
os.environ["HELPERS_CACHE"] = tempfile.mkdtemp(prefix="helpers-test-cache-")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``smoke_run("<assignment-id>/<name>.ipynb") -> NotebookResult``, executed once per
    session at profile smoke through the runner; topic tests assert on its metrics."""
    report_root = tmp_path_factory.mktemp("smoke-reports")
    cache: dict[str, run.NotebookResult] = {}

    def get(relative: str) -> run.NotebookResult:
        if relative not in cache:
            path = run.NOTEBOOK_DIR / relative
            assert path.exists(), f"no notebook {path}"
            result = run.run_notebook(path, "smoke", report_root=report_root)
            result.report_path = run.report_path(path, "smoke", report_root=report_root)
            cache[relative] = result
        return cache[relative]

    return get


@pytest.fixture(scope="session")
def smoke_metrics(smoke_run):
    """``smoke_metrics("<assignment-id>/<name>.ipynb") -> dict``: the smoke run must succeed;
    returns the metrics it recorded."""
    def get(relative: str) -> dict:
        result = smoke_run(relative)
        assert result.status == "ok", result.error
        return result.metrics

    return get


LLM_TEXTS = ["Tom has 3 apples and gets 4 more. The answer is 7.",
             "Each box holds 6 pens. How many pens are in 2 boxes? 12.",
             "Solve step by step.\nFirst add.\nThen subtract.\nThe answer is \\boxed{5}."] * 8


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """``(model, tokenizer)``: the smoke profile's tiny random Llama with a BPE tokenizer
    trained on a few arithmetic sentences."""
    from helpers.causal_lm import TINY_RANDOM, load_causal_lm

    model, tokenizer, _ = load_causal_lm(TINY_RANDOM, "smoke",
                                         tiny_dir=tmp_path_factory.mktemp("tiny-llm"),
                                         tiny_texts=LLM_TEXTS, tiny_vocab_size=300)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_vit():
    """A 2-layer, 2-head DINOv2 with random weights on 16-px images (float64)."""
    from helpers import vit

    return vit.tiny_dinov2(image_size=16, patch_size=8, hidden_size=16, num_layers=2,
                           num_heads=2).double()


@pytest.fixture(scope="session")
def vit_pixels():
    """``vit_pixels(n=3, size=16, seed=1)``: a seeded batch of random float64 images."""
    def make(n: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)

    return make
