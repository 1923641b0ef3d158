"""helpers.attention_variants: additive, hard (argmax) attention; attention ≡ convolution."""

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
