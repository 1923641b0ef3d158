"""helpers.attention against PyTorch's SDPA and nn.MultiheadAttention (atol 1e-5)."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from helpers.attention import MultiHeadAttention, scaled_dot_product_attention, torch_multihead_like
from helpers.layers import subsequent_mask

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 8), (2, 3, 7, 16), (1, 1, 4)])
def test_sdpa_matches_torch_without_mask(shape):
    q, k, v = (torch.randn(shape) for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v)
    assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL)
    assert_close(weights.sum(-1), torch.ones(shape[:-1]), **TOL)


def test_sdpa_matches_torch_with_causal_and_padding_masks():
    q, k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 5)
    mask = subsequent_mask(6) & torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]).bool()[:, None, :]
    mask[:, :, 0] = True  # keep at least one key per row so both sides stay finite
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)
    assert torch.all(weights[~mask.expand_as(weights)] == 0)


def test_sdpa_rejects_bad_shapes_and_mask_dtype():
    with pytest.raises(ValueError, match="shape mismatch"):
        scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 3, 5),
                                     torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product_attention(*(torch.randn(1, 2, 4) for _ in range(3)), torch.ones(2, 2))


def test_sdpa_gradients_match_autograd_reference_float64():
    q, k, v = (torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c)[0],
                                    (q, k, v))
    ours = torch.autograd.grad(scaled_dot_product_attention(q, k, v)[0].sum(), (q, k, v))
    ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), (q, k, v))
    for a, b in zip(ours, ref, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cross", [False, True])
def test_multihead_matches_nn_multiheadattention(bias, cross):
    mha = MultiHeadAttention(16, 4, bias=bias).eval()
    ref = torch_multihead_like(mha).eval()
    x = torch.randn(3, 5, 16)
    memory = torch.randn(3, 7, 16) if cross else x
    mask = torch.rand(3, 5, memory.shape[1]) > 0.3
    mask[..., 0] = True
    out, weights = mha(x, memory, memory, mask)
    ref_out, ref_weights = ref(x, memory, memory, attn_mask=(~mask).repeat_interleave(4, 0),
                               average_attn_weights=False)
    assert_close(out, ref_out, **TOL)
    assert weights.shape == (3, 4, 5, memory.shape[1])
    assert_close(weights, ref_weights, **TOL)


def test_multihead_fast_path_equals_weighted_path_and_gradients():
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16, requires_grad=True)
    mask = subsequent_mask(6)
    slow, weights = mha(x, x, x, mask)
    fast, none = mha(x, x, x, mask, need_weights=False)
    assert none is None and weights is not None
    assert_close(fast, slow, **TOL)
    g_slow = torch.autograd.grad(slow.square().sum(), x)[0]
    g_fast = torch.autograd.grad(fast.square().sum(), x)[0]
    assert_close(g_fast, g_slow, **TOL)


def test_multihead_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(batch, seq, 8\)"):
        mha(torch.randn(2, 3, 6), torch.randn(2, 3, 6), torch.randn(2, 3, 6))
