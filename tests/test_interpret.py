"""Attention extraction, rollout, head masking and head importance (helpers.interpret)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import interpret, vit
from helpers.attention_variants import head_importance, pruning_curve, single_head_ablation


def _random_attention(layers=3, batch=2, heads=4, tokens=5, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layers, batch, heads, tokens, tokens, generator=g,
                      dtype=torch.float64).softmax(dim=-1)


def _hand_rollout(attn: np.ndarray, fusion: str, discard: float) -> np.ndarray:
    """Loops over images and layers, numpy only."""
    layers, batch, _, tokens, _ = attn.shape
    out = np.zeros((batch, tokens, tokens))
    for b in range(batch):
        r = np.eye(tokens)
        for layer in range(layers):
            w = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](attn[layer, b], axis=0)
            if discard > 0:
                flat = w.flatten()
                k = int(flat.size * discard)
                order = [i for i in np.argsort(flat, kind="stable") if i != 0][:k]
                flat[order] = 0
                w = flat.reshape(tokens, tokens)
            a = 0.5 * w + 0.5 * np.eye(tokens)
            a = a / a.sum(axis=1, keepdims=True)
            r = a @ r
        out[b] = r
    return out


@pytest.mark.parametrize("fusion", interpret.HEAD_FUSIONS)
@pytest.mark.parametrize("discard", [0.0, 0.3])
def test_rollout_matches_hand_computation(fusion, discard):
    attn = _random_attention()
    got = interpret.rollout(attn, head_fusion=fusion, discard_ratio=discard)
    want = torch.from_numpy(_hand_rollout(attn.numpy(), fusion, discard))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 5, dtype=torch.float64))


def test_rollout_of_one_layer_identity_attention_is_identity():
    attn = torch.eye(4).expand(1, 1, 2, 4, 4).clone()
    torch.testing.assert_close(interpret.rollout(attn), torch.eye(4)[None])


def test_rollout_rejects_unknown_fusion():
    with pytest.raises(ValueError, match="head_fusion"):
        interpret.rollout(_random_attention(), head_fusion="median")


def test_cls_maps_takes_the_cls_row():
    attn = _random_attention(tokens=1 + 6)
    maps = interpret.cls_maps(attn, (2, 3))
    assert maps.shape == (3, 2, 4, 2, 3)
    torch.testing.assert_close(maps[1, 0, 2].flatten(), attn[1, 0, 2, 0, 1:])


@pytest.fixture(scope="module")
def tiny():
    return vit.tiny_dinov2(image_size=16, patch_size=8, hidden_size=16, num_layers=2,
                           num_heads=2).double()


def _pixels(n=3, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def test_attention_maps_match_a_manual_softmax(tiny):
    x = _pixels()
    attn = interpret.attention_maps(tiny, x)
    assert attn.shape == (2, 3, 2, 5, 5)
    with torch.no_grad():
        h = tiny.encoder.layer[0].norm1(tiny.embeddings(x))
        a = tiny.encoder.layer[0].attention
        q = a.q_proj(h).view(3, 5, 2, 8).transpose(1, 2)
        k = a.k_proj(h).view(3, 5, 2, 8).transpose(1, 2)
        want = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)
    torch.testing.assert_close(attn[0], want)


def test_head_mask_equals_zeroing_the_heads_output_columns(tiny):
    import copy

    x = _pixels()
    mask = torch.ones(2, 2, dtype=torch.float64)
    mask[0, 1] = 0
    mask[1, 0] = 0
    with interpret.HeadMaskedModel(tiny, tiny) as wrapped:
        wrapped.set_head_mask(mask)
        with torch.no_grad():
            got = wrapped(pixel_values=x).last_hidden_state
    reference = copy.deepcopy(tiny)
    with torch.no_grad():  # head h's contribution is o_proj.weight[:, h*dh:(h+1)*dh] @ z_h
        reference.encoder.layer[0].attention.o_proj.weight[:, 8:16] = 0
        reference.encoder.layer[1].attention.o_proj.weight[:, 0:8] = 0
        want = reference(pixel_values=x).last_hidden_state
        unmasked = tiny(pixel_values=x).last_hidden_state  # hooks removed on exit
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, unmasked)


def test_all_ones_mask_changes_nothing(tiny):
    x = _pixels()
    with torch.no_grad():
        plain = tiny(pixel_values=x).last_hidden_state
        with interpret.HeadMaskedModel(tiny, tiny) as wrapped:
            wrapped.set_head_mask(torch.ones(2, 2, dtype=torch.float64))
            torch.testing.assert_close(wrapped(pixel_values=x).last_hidden_state, plain)
    with pytest.raises(ValueError, match="mask must be"):
        interpret.HeadMaskedModel(tiny, tiny).set_head_mask(torch.ones(3, 2))


def _classifier(tiny):
    torch.manual_seed(0)
    return vit.ViTClassifier(tiny, n_classes=3).double()


def test_gradient_importance_is_the_absolute_mask_gradient_and_matches_finite_differences(tiny):
    model = _classifier(tiny)
    x, y = _pixels(n=4), torch.tensor([0, 1, 2, 1])
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    with interpret.HeadMaskedModel(model, tiny) as wrapped:
        got = head_importance(wrapped, batches, loss_fn, wrapped.shape, normalize=False)
        want = torch.zeros(2, 2, dtype=torch.float64)
        for batch in batches:  # autograd by hand: backward, read mask.grad
            mask = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
            wrapped.set_head_mask(mask)
            loss_fn(wrapped, batch).backward()
            want += mask.grad.abs()
        torch.testing.assert_close(got, want)
        mask = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)  # vs central differences
        wrapped.set_head_mask(mask)
        (grad,) = torch.autograd.grad(loss_fn(wrapped, batches[0]), mask)
        eps = 1e-6
        for layer in range(2):
            for head in range(2):
                values = []
                for sign in (1, -1):
                    m = torch.ones(2, 2, dtype=torch.float64)
                    m[layer, head] += sign * eps
                    wrapped.set_head_mask(m)
                    with torch.no_grad():
                        values.append(loss_fn(wrapped, batches[0]).item())
                fd = (values[0] - values[1]) / (2 * eps)
                assert abs(fd - grad[layer, head].item()) < 1e-7
    assert got.abs().sum() > 0


def test_cached_evaluator_equals_a_full_masked_forward(tiny):
    model = _classifier(tiny)
    x, y = _pixels(n=6), torch.tensor([0, 1, 2, 1, 0, 2])
    states = [vit.hidden_at(tiny, x, layer) for layer in range(2)]

    def tail(hidden, start):
        return model.head(vit.pooled(vit.run_layers(tiny, hidden, start)))

    evaluator = interpret.CachedMaskEvaluator(states, y, tail, batch_size=4)
    with interpret.HeadMaskedModel(model, tiny) as wrapped:
        for layer, head in [(0, 0), (1, 1)]:
            mask = torch.ones(2, 2, dtype=torch.float64)
            mask[layer, head] = 0
            wrapped.set_head_mask(mask)
            with torch.no_grad():
                logits = wrapped(x)
            full = (logits.argmax(-1) == y).double().mean().item()
            assert evaluator(wrapped) == pytest.approx(full)
            loss = torch.nn.functional.cross_entropy(logits, y).item()
            assert evaluator.history[-1]["loss"] == pytest.approx(loss)
        table = single_head_ablation(wrapped, evaluator, wrapped.shape)
        curve = pruning_curve(wrapped, evaluator, [(0, 0), (1, 1)], wrapped.shape)
    assert table.shape == (2, 2) and len(curve) == 3
    assert all(0 <= v <= 1 for v in curve)


def test_rank_heads_orders_by_score():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    assert interpret.rank_heads(scores) == [(0, 1), (1, 0), (1, 1), (0, 0)]
    assert interpret.rank_heads(scores, descending=False)[0] == (0, 0)


def test_discard_keeps_cls_to_cls():
    w = torch.full((1, 3, 3), 0.5)
    w[0, 0, 0] = 0.0  # the smallest entry, but never discarded
    out = interpret.discard_lowest(w, 0.5)
    assert (out == 0).sum() == 1 + 4  # the original zero + 4 discarded
