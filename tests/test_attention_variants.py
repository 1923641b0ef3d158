"""helpers.attention_variants: additive, hard (argmax) attention; head masking and importance."""

import pytest
import torch
from torch.testing import assert_close

from helpers import attention_variants as av
from helpers.attention import MultiHeadAttention


def test_additive_attention_matches_explicit_loop():
    att = av.AdditiveAttention(5, 3, 7, bias=True).double()
    q, k, v = (torch.randn(2, n, d, dtype=torch.float64) for n, d in ((4, 5), (6, 3), (6, 2)))
    out, w = att(q, k, v)
    ref = torch.empty(2, 4, 6, dtype=torch.float64)
    for b in range(2):
        for i in range(4):
            for j in range(6):
                hidden = torch.tanh(att.w_q(q[b, i]) + att.w_k(k[b, j]))
                ref[b, i, j] = att.w(hidden)[0]
    assert_close(w, ref.softmax(-1))
    assert_close(out, ref.softmax(-1) @ v)


def test_multihead_additive_matches_per_head_loop_and_masks():
    m = av.MultiHeadAdditiveAttention(20, 10, 30, n_heads=3, d_head=8, d_out=5).double()
    q = torch.randn(2, 4, 20, dtype=torch.float64)
    k = torch.randn(2, 6, 10, dtype=torch.float64)
    v = torch.randn(2, 6, 30, dtype=torch.float64)
    mask = torch.ones(2, 1, 6, dtype=torch.bool)
    mask[1, :, 4:] = False
    out, w = m(q, k, v, mask)
    heads = []
    for h in range(3):
        rows = slice(8 * h, 8 * (h + 1))
        qh = q @ m.q_proj.weight[rows].T + m.q_proj.bias[rows]
        kh = k @ m.k_proj.weight[rows].T + m.k_proj.bias[rows]
        vh = v @ m.v_proj.weight[rows].T + m.v_proj.bias[rows]
        s = torch.tanh(qh[:, :, None] + kh[:, None]) @ m.score[h]
        s = s.masked_fill(~mask, float("-inf")).softmax(-1)
        assert_close(w[:, h], s)
        heads.append(s @ vh)
    assert_close(out, m.out_proj(torch.cat(heads, -1)))
    assert torch.all(w[1, :, :, 4:] == 0)


@pytest.mark.parametrize("bias", [True, False])
def test_multihead_additive_parameter_count(bias):
    m = av.MultiHeadAdditiveAttention(20, 10, 30, n_heads=3, d_head=100, d_out=50, bias=bias)
    per_head = 100 * (20 + 10 + 30) + 100 + (3 * 100 if bias else 0)
    expected = 3 * per_head + 300 * 50 + (50 if bias else 0)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_hard_attention_picks_argmax_and_passes_no_gradient_to_q_k():
    q = torch.randn(2, 3, 4, requires_grad=True)
    k = torch.randn(2, 5, 4, requires_grad=True)
    v = torch.randn(2, 5, 6, requires_grad=True)
    out, index = av.hard_attention(q, k, v)
    assert_close(out, torch.stack([v[b, index[b]] for b in range(2)]))
    out.sum().backward()
    assert q.grad is None and k.grad is None
    counts = torch.stack([torch.bincount(index[b], minlength=5) for b in range(2)])
    assert_close(v.grad, counts[..., None].float().expand_as(v))


def test_maskable_mha_equals_base_with_ones_and_zeroes_heads():
    base = MultiHeadAttention(16, 4).eval()
    m = av.MaskableMultiHeadAttention(16, 4).eval()
    m.load_state_dict(base.state_dict())
    x = torch.randn(2, 5, 16)
    assert_close(m(x, x, x)[0], base(x, x, x)[0])
    m.head_mask = torch.zeros(4)
    assert_close(m(x, x, x)[0], m.out_proj.bias.expand(2, 5, 16))


def test_head_importance_equals_finite_differences():
    torch.manual_seed(0)
    model = av.HeadMaskedEncoderClassifier(vocab=7, n_classes=2, d_model=16, n_heads=2,
                                           n_layers=2, d_ff=32, max_len=8).double()
    tokens, labels = torch.randint(0, 7, (6, 8)), torch.randint(0, 2, (6,))

    def loss_fn(mdl, batch):
        return torch.nn.functional.cross_entropy(mdl(batch[0]), batch[1])

    raw = av.head_importance(model, [(tokens, labels)], loss_fn, (2, 2), normalize=False)
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
    norm = av.head_importance(model, [(tokens, labels)], loss_fn, (2, 2))
    assert_close(norm.norm(dim=-1), torch.ones(2, dtype=norm.dtype))


def test_ablation_and_pruning_curve_restore_the_mask():
    model = av.HeadMaskedEncoderClassifier(vocab=5, n_classes=2, d_model=8, n_heads=2,
                                           n_layers=1, d_ff=16, max_len=4).eval()
    x = torch.randint(0, 5, (3, 4))
    full = model(x)

    def evaluate(mdl):
        return (mdl(x) - full).abs().max().item()

    table = av.single_head_ablation(model, evaluate, (1, 2))
    assert table.shape == (1, 2) and (table > 0).all()
    curve = av.pruning_curve(model, evaluate, [(0, 1), (0, 0)], (1, 2))
    assert curve[0] == 0 and len(curve) == 3
    assert_close(model(x), full)  # every head back on
    with pytest.raises(ValueError, match="mask must be"):
        model.set_head_mask(torch.ones(2, 2))


def test_reinforce_finds_the_rewarded_mask():
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def reward(mask):
        return -(mask - target).abs().sum().item()

    probs, history = av.reinforce_head_selection(reward, (2, 3), episodes=150, lr=0.2,
                                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal((probs > 0.5).float(), target)
    assert sum(history[-10:]) / 10 > sum(history[:10]) / 10


def test_importance_at_a_base_mask_and_iterative_order():
    torch.manual_seed(1)
    model = av.HeadMaskedEncoderClassifier(vocab=5, n_classes=2, d_model=8, n_heads=2,
                                           n_layers=2, d_ff=16, max_len=4).eval()
    batch = (torch.randint(0, 5, (8, 4)), torch.randint(0, 2, (8,)))

    def loss_fn(mdl, b):
        return torch.nn.functional.cross_entropy(mdl(b[0]), b[1])

    base = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    at_base = av.head_importance(model, [batch], loss_fn, (2, 2), normalize=False, base_mask=base)
    mask = base.clone().requires_grad_()
    model.set_head_mask(mask)
    (grad,) = torch.autograd.grad(loss_fn(model, batch), mask)
    assert_close(at_base, grad.abs())
    order = av.iterative_pruning_order(model, [batch], loss_fn, (2, 2))
    assert sorted(order) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    model.set_head_mask(torch.ones(2, 2))
