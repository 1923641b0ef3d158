"""helpers.attention_variants: additive, hard (argmax) attention and its zero-temperature form;
two heads with a wide key; attention ≡ convolution."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import attention_variants as av


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


def test_gaussian_scores_simplify():
    s = av.gaussian_relative_scores(4, 5, (1, -1), alpha=2.0)
    q, k = 7, 13  # pixels (1, 2) and (2, 3)
    delta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    shift = torch.tensor([1.0, -1.0], dtype=torch.float64)
    expected = -2.0 * ((delta - shift) ** 2).sum() + 2.0 * (shift ** 2).sum()
    assert_close(s[q, k], expected)


def test_attention_reproduces_convolution_as_alpha_grows():
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    image = torch.randn(3, 6, 7, dtype=torch.float64)
    ref = conv(image[None])[0].detach()
    errors = [(av.attention_as_convolution(image, conv, a) - ref).abs().max().item()
              for a in (1.0, 5.0, 30.0)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9


def test_mhsa_parameter_count_matches_modules():
    d_in, d_hid, d_o, d_out, nh = 6, 5, 4, 7, 3
    heads = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(d_in, d_hid, bias=False),
                                         "k": nn.Linear(d_in, d_hid, bias=False),
                                         "v": nn.Linear(d_in, d_o, bias=False)})
                          for _ in range(nh))
    out = nn.Linear(nh * d_o, d_out)
    built = sum(p.numel() for p in heads.parameters()) + sum(p.numel() for p in out.parameters())
    assert av.mhsa_parameter_count(d_in, d_hid, d_o, d_out, nh) == built


@pytest.mark.parametrize("dilation,stride", [(2, 1), (1, 2)])
def test_attention_convolution_with_dilation_and_stride(dilation, stride):
    conv = nn.Conv2d(2, 3, 3, padding=dilation, dilation=dilation, stride=stride).double()
    image = torch.randn(2, 7, 6, dtype=torch.float64)
    ref = conv(image[None])[0].detach()
    ours = av.attention_as_convolution(image, conv, 40.0)
    assert ours.shape == ref.shape
    assert_close(ours, ref, atol=1e-9, rtol=0)


def test_zero_temperature_attention_is_argmax_with_zero_gradient_through_the_graph():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4, generator=g, dtype=torch.float64, requires_grad=True)
               for n in (3, 5, 5))
    out, weights = av.zero_temperature_attention(q, k, v)
    hard_out, index = av.hard_attention(q, k, v)
    assert torch.equal(out, hard_out)
    assert torch.equal(weights, nn.functional.one_hot(index, 5).to(weights.dtype))
    grad_q, grad_k, grad_v = torch.autograd.grad(out.pow(2).sum(), (q, k, v))  # all connected
    assert torch.count_nonzero(grad_q) == 0 and torch.count_nonzero(grad_k) == 0
    assert_close(grad_v, weights.transpose(-2, -1) @ (2 * out))
    soft_q = torch.autograd.grad((torch.softmax(q @ k.transpose(-2, -1), -1) @ v).pow(2).sum(), q)
    assert soft_q[0].abs().max() > 1e-3  # the same check sees a gradient at temperature 1


def test_zero_temperature_attention_refuses_a_tie():
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="tie"):
        av.zero_temperature_attention(torch.tensor([[1.0, 0.0]]), k, torch.eye(3))


@pytest.mark.parametrize("key_variance", [1.0, 1e-6])
def test_two_heads_with_wide_key_scores_follow_the_covariance(key_variance):
    g = torch.Generator().manual_seed(0)
    n, beta, alpha, stretch = 4000, 20.0, 1e-6, 0.5
    r = av.two_heads_with_wide_key(16, 6, beta, alpha, stretch, key_variance, n, g)
    assert all(t.shape == (n,) for t in r.values())
    # k_a·q2 / β = μ_bᵀ(k_a) ~ N(0, key_variance); k_a·q1 / β ~ N(1, key_variance + stretch)
    assert abs((r["head2_key_score"] / beta).std() / key_variance ** 0.5 - 1) < 0.06
    head1 = r["head1_key_score"] / beta
    assert abs(head1.mean() - 1) < 0.06
    assert abs(head1.std() / (key_variance + stretch) ** 0.5 - 1) < 0.06
    flipped = r["head2_key_score"] > r["head2_target_score"]  # head 2 ranks k_a above k_b
    expected = 0.5 * math.erfc(1 / math.sqrt(2 * (key_variance + alpha)))  # 1 - Phi(1/sd)
    se = math.sqrt(max(expected * (1 - expected), 1e-9) / n)
    assert abs(flipped.double().mean().item() - expected) < 4 * se
    assert torch.all(r["head2_on_a"][flipped] > 0.5)


def test_two_heads_with_wide_key_rejects_variance_below_alpha():
    with pytest.raises(ValueError):
        av.two_heads_with_wide_key(8, 4, 20.0, 1e-3, 0.5, 1e-4, 10)
