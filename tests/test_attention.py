"""helpers.attention against PyTorch's SDPA and nn.MultiheadAttention (atol 1e-5), and the checks
of the attention theory questions (Monte Carlo moments, the head constructions, attention as a
matrix)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from helpers import attention
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


def test_dot_product_variance_grows_like_d_k_and_scaling_fixes_it():
    g = torch.Generator().manual_seed(0)
    for d in (4, 64, 256):
        mean, var = attention.dot_product_moments(d, 20000, g)
        assert abs(var / d - 1) < 0.06 and abs(mean) < 0.1 * math.sqrt(d)
        _, var_s = attention.dot_product_moments(d, 20000, g, scaled=True)
        assert abs(var_s - 1) < 0.06


def test_softmax_saturates_without_scaling():
    g = torch.Generator().manual_seed(0)
    raw = attention.softmax_saturation(512, 16, 500, scaled=False, generator=g)
    scaled = attention.softmax_saturation(512, 16, 500, scaled=True, generator=g)
    assert raw["max_weight"] > 0.9 > scaled["max_weight"]
    assert raw["jacobian_norm"] < scaled["jacobian_norm"]


def test_projector_recovers_component():
    g = torch.Generator().manual_seed(0)
    basis = attention.orthonormal_columns(10, 6, g)
    a, b = basis[:, :3], basis[:, 3:]
    v_a, v_b = a @ torch.randn(3, dtype=torch.float64), b @ torch.randn(3, dtype=torch.float64)
    assert_close(attention.projector(a) @ (v_a + v_b), v_a)


def test_attend_is_unscaled_sdpa_for_one_query():
    q, keys, values = torch.randn(4, 6), torch.randn(4, 5, 6), torch.randn(5, 3)
    c, alpha = attention.attend(q, keys, values)
    ref = F.scaled_dot_product_attention(q[:, None], keys, values.expand(4, 5, 3), scale=1.0)
    assert_close(c, ref[:, 0], **TOL)
    assert_close(alpha.sum(-1), torch.ones(4), **TOL)


def test_sample_keys_covariance():
    g = torch.Generator().manual_seed(0)
    mu = torch.eye(3, dtype=torch.float64)
    keys = attention.sample_keys(mu, 0.01, 40000, stretched=0, stretch=0.5, generator=g)
    cov_a = torch.cov(keys[:, 0].T)
    assert_close(cov_a, 0.01 * torch.eye(3, dtype=torch.float64) + 0.5 * torch.outer(mu[0], mu[0]),
                 atol=0.02, rtol=0)
    assert_close(torch.cov(keys[:, 1].T), 0.01 * torch.eye(3, dtype=torch.float64),
                 atol=0.002, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_equals_its_matrix(causal):
    n, d, dv = 5, 4, 3
    x = torch.randn(n, d, dtype=torch.float64)
    wq, wk, wv = (torch.randn(d, k, dtype=torch.float64) for k in (6, 6, dv))
    m = attention.self_attention_as_matrix(x, wq, wk, wv, causal)
    y = attention.attention_weights(x, wq, wk, causal) @ x @ wv
    assert m.shape == (n * dv, n * d)
    assert_close(m @ x.flatten(), y.flatten())
    ref = F.scaled_dot_product_attention(
        (x @ wq)[None], (x @ wk)[None], (x @ wv)[None], is_causal=causal)[0]
    assert_close(y, ref)
    if causal:
        assert m[:dv, d:].abs().max() == 0  # blocks above the diagonal vanish


def test_one_head_average_is_fragile_and_two_heads_are_not():
    g = torch.Generator().manual_seed(0)
    w = attention.noisy_key_averaging(d=16, n_keys=6, beta=20.0, alpha=1e-6, stretch=0.5,
                                      n_samples=400, generator=g)
    assert all(v.shape == (400,) for v in w.values())
    assert (w["one_head_calm"] - 0.5).abs().max() < 0.05  # (c)(i): tiny noise, the average
    single = w["one_head_stretched"]
    assert ((single > 0.95) | (single < 0.05)).double().mean() > 0.6  # (c)(ii): v_a or v_b
    two = w["two_heads_stretched"][w["head1_key_score"] > 0]
    assert ((two - 0.5).abs() < 0.05).double().mean() > 0.85  # (d)(ii): still the average


def test_averaging_fractions_count_each_band():
    f = attention.averaging_fractions(torch.tensor([0.0, 0.02, 0.5, 0.53, 0.97, 0.7, 1.0, 0.3]))
    assert f == {"near_average": 2 / 8, "at_a": 2 / 8, "at_b": 2 / 8, "at_a_or_b": 4 / 8}


def test_matrix_of_linear_map_of_a_projection_is_block_diagonal_and_shared():
    n, d, d_out = 4, 3, 2
    proj = torch.nn.Linear(d, d_out, bias=False).double()
    with torch.no_grad():
        m = attention.matrix_of_linear_map(proj, (n, d))
    assert m.shape == (n * d_out, n * d)
    assert_close(m, torch.kron(torch.eye(n, dtype=torch.float64), proj.weight.detach()))
    blocks = attention.token_blocks(m, n)  # (n, n, d_out, d)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    assert blocks[off_diagonal].abs().max() == 0
    assert_close(blocks[0, 0], blocks[3, 3])
    x = torch.randn(n, d, dtype=torch.float64)
    with torch.no_grad():
        assert_close(m @ x.flatten(), proj(x).flatten())


def test_token_blocks_of_the_attention_matrix_are_scaled_value_maps():
    n, d = 3, 2
    x, wq, wk, wv = (torch.randn(n if i == 0 else d, d, dtype=torch.float64) for i in range(4))
    blocks = attention.token_blocks(attention.self_attention_as_matrix(x, wq, wk, wv), n)
    a = attention.attention_weights(x, wq, wk)
    assert_close(blocks, a[:, :, None, None] * wv.T)


def test_attention_matrices_span_n2_minus_n_plus_1_times_d2():
    g = torch.Generator().manual_seed(0)
    n, d = 3, 2
    # row sums of A are 1: its span is N² − N + 1 dimensional, times D² for free W_v
    assert attention.attention_matrix_span(n, d, 2, 80, shared_weights=False,
                                           generator=g) == (n * n - n + 1) * d * d
    assert attention.attention_matrix_span(n, d, 2, 40, shared_weights=True,
                                           generator=g) == n * n - n + 1


def test_multihead_cost_maps_grow_with_heads_matmuls_do_not():
    b, n, d = 2, 16, 32
    costs = {h: attention.multihead_cost(b, n, d, h) for h in (1, 2, 4, 8)}
    for h, c in costs.items():
        assert c["map_elements"] == b * h * n * n and c["map_bytes"] == 4 * b * h * n * n
        assert c["matmul_flops"] == 8 * b * n * d * d + 4 * b * n * n * d

