"""helpers.head_masking: maskable heads (our multi-head attention and a transformers ViT through
hooks), gradient head importance against finite differences, ablation, pruning, REINFORCE."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from helpers import head_masking as hm
from helpers import vit
from helpers.attention import MultiHeadAttention, torch_multihead_like

TOL = dict(atol=1e-5, rtol=1e-5)


def test_maskable_mha_with_all_heads_equals_nn_multiheadattention_on_both_paths():
    m = hm.MaskableMultiHeadAttention(16, 4).eval()
    ref = torch_multihead_like(m).eval()
    x = torch.randn(2, 5, 16)
    want, _ = ref(x, x, x)
    assert_close(m(x, x, x)[0], want, **TOL)
    assert_close(m(x, x, x, need_weights=False)[0], want, **TOL)


def test_maskable_mha_scales_each_heads_output_before_the_projection():
    base = MultiHeadAttention(16, 4).eval()
    m = hm.MaskableMultiHeadAttention(16, 4).eval()
    m.load_state_dict(base.state_dict())
    x = torch.randn(2, 5, 16)
    m.head_mask = torch.zeros(4)
    assert_close(m(x, x, x)[0], m.out_proj.bias.expand(2, 5, 16))
    m.head_mask = torch.tensor([1.0, 0.0, 0.5, 1.0])
    reference = copy.deepcopy(base)
    with torch.no_grad():  # head h's contribution is out_proj.weight[:, h*dk:(h+1)*dk] @ z_h
        reference.out_proj.weight[:, 4:8] = 0
        reference.out_proj.weight[:, 8:12] *= 0.5
    for need_weights in (True, False):
        assert_close(m(x, x, x, need_weights=need_weights)[0], reference(x, x, x)[0], **TOL)


def test_head_importance_equals_finite_differences():
    torch.manual_seed(0)
    model = hm.HeadMaskedEncoderClassifier(vocab=7, n_classes=2, d_model=16, n_heads=2,
                                           n_layers=2, d_ff=32, max_len=8).double()
    tokens, labels = torch.randint(0, 7, (6, 8)), torch.randint(0, 2, (6,))

    def loss_fn(mdl, batch):
        return torch.nn.functional.cross_entropy(mdl(batch[0]), batch[1])

    raw = hm.head_importance(model, [(tokens, labels)], loss_fn, (2, 2), normalize=False)
    eps = 1e-6
    for layer in range(2):
        for head in range(2):
            plus = torch.ones(2, 2, dtype=torch.float64)
            minus = plus.clone()
            plus[layer, head] += eps
            minus[layer, head] -= eps
            model.set_head_mask(plus)
            lp = loss_fn(model, (tokens, labels))
            model.set_head_mask(minus)
            lm = loss_fn(model, (tokens, labels))
            assert abs(raw[layer, head] - abs((lp - lm).item() / (2 * eps))) < 1e-5
    norm = hm.head_importance(model, [(tokens, labels)], loss_fn, (2, 2))
    assert_close(norm.norm(dim=-1), torch.ones(2, dtype=norm.dtype))


def test_ablation_and_pruning_curve_restore_the_mask():
    model = hm.HeadMaskedEncoderClassifier(vocab=5, n_classes=2, d_model=8, n_heads=2,
                                           n_layers=1, d_ff=16, max_len=4).eval()
    x = torch.randint(0, 5, (3, 4))
    full = model(x)

    def evaluate(mdl):
        return (mdl(x) - full).abs().max().item()

    table = hm.single_head_ablation(model, evaluate, (1, 2))
    assert table.shape == (1, 2) and (table > 0).all()
    curve = hm.pruning_curve(model, evaluate, [(0, 1), (0, 0)], (1, 2))
    assert curve[0] == 0 and len(curve) == 3
    assert_close(model(x), full)  # every head back on
    # any metric comes back as evaluate returns it: here per-example errors (3,) per point
    per_example = hm.pruning_curve(model, lambda mdl: (mdl(x) - full).abs().amax(-1),
                                   [(0, 1), (0, 0)], (1, 2))
    assert_close(torch.stack(per_example).amax(-1), torch.tensor(curve))
    with pytest.raises(ValueError, match="mask must be"):
        model.set_head_mask(torch.ones(2, 2))


def test_reinforce_finds_the_rewarded_mask():
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def reward(mask):
        return -(mask - target).abs().sum().item()

    probs, history = hm.reinforce_head_selection(reward, (2, 3), episodes=150, lr=0.2,
                                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal((probs > 0.5).float(), target)
    assert sum(history[-10:]) / 10 > sum(history[:10]) / 10


def test_importance_at_a_base_mask_and_iterative_order():
    torch.manual_seed(1)
    model = hm.HeadMaskedEncoderClassifier(vocab=5, n_classes=2, d_model=8, n_heads=2,
                                           n_layers=2, d_ff=16, max_len=4).eval()
    batch = (torch.randint(0, 5, (8, 4)), torch.randint(0, 2, (8,)))

    def loss_fn(mdl, b):
        return torch.nn.functional.cross_entropy(mdl(b[0]), b[1])

    base = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    at_base = hm.head_importance(model, [batch], loss_fn, (2, 2), normalize=False, base_mask=base)
    mask = base.clone().requires_grad_()
    model.set_head_mask(mask)
    (grad,) = torch.autograd.grad(loss_fn(model, batch), mask)
    assert_close(at_base, grad.abs())
    order = hm.iterative_pruning_order(model, [batch], loss_fn, (2, 2))
    assert sorted(order) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    model.set_head_mask(torch.ones(2, 2))


def test_head_mask_equals_zeroing_the_heads_output_columns(tiny_vit, vit_pixels):
    x = vit_pixels()
    mask = torch.ones(2, 2, dtype=torch.float64)
    mask[0, 1] = 0
    mask[1, 0] = 0
    with hm.HeadMaskedModel(tiny_vit, tiny_vit) as wrapped:
        wrapped.set_head_mask(mask)
        with torch.no_grad():
            got = wrapped(pixel_values=x).last_hidden_state
    reference = copy.deepcopy(tiny_vit)
    with torch.no_grad():  # head h's contribution is o_proj.weight[:, h*dh:(h+1)*dh] @ z_h
        reference.encoder.layer[0].attention.o_proj.weight[:, 8:16] = 0
        reference.encoder.layer[1].attention.o_proj.weight[:, 0:8] = 0
        want = reference(pixel_values=x).last_hidden_state
        unmasked = tiny_vit(pixel_values=x).last_hidden_state  # hooks removed on exit
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, unmasked)


def test_all_ones_mask_changes_nothing(tiny_vit, vit_pixels):
    x = vit_pixels()
    with torch.no_grad():
        plain = tiny_vit(pixel_values=x).last_hidden_state
        with hm.HeadMaskedModel(tiny_vit, tiny_vit) as wrapped:
            wrapped.set_head_mask(torch.ones(2, 2, dtype=torch.float64))
            torch.testing.assert_close(wrapped(pixel_values=x).last_hidden_state, plain)
    with pytest.raises(ValueError, match="mask must be"):
        hm.HeadMaskedModel(tiny_vit, tiny_vit).set_head_mask(torch.ones(3, 2))


def _classifier(tiny_vit):
    torch.manual_seed(0)
    return vit.ViTClassifier(tiny_vit, n_classes=3).double()


def test_gradient_importance_is_the_absolute_mask_gradient_and_matches_finite_differences(
        tiny_vit, vit_pixels):
    model = _classifier(tiny_vit)
    x, y = vit_pixels(n=4), torch.tensor([0, 1, 2, 1])
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    with hm.HeadMaskedModel(model, tiny_vit) as wrapped:
        got = hm.head_importance(wrapped, batches, loss_fn, wrapped.shape, normalize=False)
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


def test_cached_evaluator_equals_a_full_masked_forward(tiny_vit, vit_pixels):
    model = _classifier(tiny_vit)
    x, y = vit_pixels(n=6), torch.tensor([0, 1, 2, 1, 0, 2])
    states = [vit.encode_images(tiny_vit, x, layer) for layer in range(2)]

    def tail(hidden, start):
        return model.head(vit.pooled(vit.run_layers(tiny_vit, hidden, start)))

    evaluator = hm.CachedMaskEvaluator(states, y, tail, batch_size=4)
    with hm.HeadMaskedModel(model, tiny_vit) as wrapped:
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
            assert torch.equal(evaluator.history[-1]["correct"], logits.argmax(-1) == y)
        table = hm.single_head_ablation(wrapped, evaluator, wrapped.shape)
        curve = hm.pruning_curve(wrapped, evaluator, [(0, 0), (1, 1)], wrapped.shape)
    assert table.shape == (2, 2) and len(curve) == 3
    assert all(0 <= v <= 1 for v in curve)


def test_rank_heads_orders_by_score():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    assert hm.rank_heads(scores) == [(0, 1), (1, 0), (1, 1), (0, 0)]
    assert hm.rank_heads(scores, descending=False)[0] == (0, 0)


def test_masks_after_removes_the_first_heads_of_the_order_and_labels_them():
    order = [(1, 0), (0, 1), (1, 1)]
    masks = hm.masks_after(order, [0, 2], (2, 2))
    assert torch.equal(masks[0], torch.ones(2, 2))
    assert torch.equal(masks[1], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert hm.head_labels(order[:2]) == "L1H0,L0H1"
