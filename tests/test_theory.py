"""Theory checks: Monte Carlo moments, softmax saturation, the head constructions, T^(k),
attention as a matrix, attention ≡ convolution."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import layers, theory


def test_dot_product_variance_grows_like_d_k_and_scaling_fixes_it():
    g = torch.Generator().manual_seed(0)
    for d in (4, 64, 256):
        mean, var = theory.dot_product_moments(d, 20000, g)
        assert abs(var / d - 1) < 0.06 and abs(mean) < 0.1 * math.sqrt(d)
        _, var_s = theory.dot_product_moments(d, 20000, g, scaled=True)
        assert abs(var_s - 1) < 0.06


def test_softmax_saturates_without_scaling():
    g = torch.Generator().manual_seed(0)
    raw = theory.softmax_saturation(512, 16, 500, scaled=False, generator=g)
    scaled = theory.softmax_saturation(512, 16, 500, scaled=True, generator=g)
    assert raw["max_weight"] > 0.9 > scaled["max_weight"]
    assert raw["jacobian_norm"] < scaled["jacobian_norm"]


def test_projector_recovers_component():
    g = torch.Generator().manual_seed(0)
    basis = theory.orthonormal_columns(10, 6, g)
    a, b = basis[:, :3], basis[:, 3:]
    v_a, v_b = a @ torch.randn(3, dtype=torch.float64), b @ torch.randn(3, dtype=torch.float64)
    assert_close(theory.projector(a) @ (v_a + v_b), v_a)


def test_sample_keys_covariance():
    g = torch.Generator().manual_seed(0)
    mu = torch.eye(3, dtype=torch.float64)
    keys = theory.sample_keys(mu, 0.01, 40000, stretched=0, stretch=0.5, generator=g)
    cov_a = torch.cov(keys[:, 0].T)
    assert_close(cov_a, 0.01 * torch.eye(3, dtype=torch.float64) + 0.5 * torch.outer(mu[0], mu[0]),
                 atol=0.02, rtol=0)
    assert_close(torch.cov(keys[:, 1].T), 0.01 * torch.eye(3, dtype=torch.float64),
                 atol=0.002, rtol=0)


def test_shift_operator_moves_the_float64_table():
    pe = layers.sinusoidal_positional_encoding(40, 16, dtype=torch.float64)
    assert pe.dtype == torch.float64
    assert_close(pe.float(), layers.sinusoidal_positional_encoding(40, 16))
    lam = theory.frequencies(16)
    for k in (1, 5, 17):
        t_k = theory.shift_operator(k, lam)
        assert (pe[: 40 - k] @ t_k.T - pe[k:]).abs().max() < 1e-12
    # a wrong operator (rotation the other way) fails
    assert (pe[:-3] @ theory.shift_operator(3, lam) - pe[3:]).abs().max() > 0.1


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_equals_its_matrix(causal):
    n, d, dv = 5, 4, 3
    x = torch.randn(n, d, dtype=torch.float64)
    wq, wk, wv = (torch.randn(d, k, dtype=torch.float64) for k in (6, 6, dv))
    m = theory.self_attention_as_matrix(x, wq, wk, wv, causal)
    y = theory.attention_weights(x, wq, wk, causal) @ x @ wv
    assert m.shape == (n * dv, n * d)
    assert_close(m @ x.flatten(), y.flatten())
    ref = nn.functional.scaled_dot_product_attention(
        (x @ wq)[None], (x @ wk)[None], (x @ wv)[None], is_causal=causal)[0]
    assert_close(y, ref)
    if causal:
        assert m[:dv, d:].abs().max() == 0  # blocks above the diagonal vanish


def test_gaussian_scores_simplify():
    s = theory.gaussian_relative_scores(4, 5, (1, -1), alpha=2.0)
    q, k = 7, 13  # pixels (1, 2) and (2, 3)
    delta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    shift = torch.tensor([1.0, -1.0], dtype=torch.float64)
    expected = -2.0 * ((delta - shift) ** 2).sum() + 2.0 * (shift ** 2).sum()
    assert_close(s[q, k], expected)


def test_attention_reproduces_convolution_as_alpha_grows():
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    image = torch.randn(3, 6, 7, dtype=torch.float64)
    ref = conv(image[None])[0].detach()
    errors = [(theory.attention_as_convolution(image, conv, a) - ref).abs().max().item()
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
    assert theory.mhsa_parameter_count(d_in, d_hid, d_o, d_out, nh) == built


@pytest.mark.parametrize("dilation,stride", [(2, 1), (1, 2)])
def test_attention_convolution_with_dilation_and_stride(dilation, stride):
    conv = nn.Conv2d(2, 3, 3, padding=dilation, dilation=dilation, stride=stride).double()
    image = torch.randn(2, 7, 6, dtype=torch.float64)
    ref = conv(image[None])[0].detach()
    ours = theory.attention_as_convolution(image, conv, 40.0)
    assert ours.shape == ref.shape
    assert_close(ours, ref, atol=1e-9, rtol=0)


def test_position_embedding_interpolation_is_identity_at_same_size_and_matches_hf():
    pos = torch.randn(1, 1 + 16, 8)
    assert_close(theory.interpolate_position_embeddings(pos, (4, 4)), pos)
    assert theory.interpolate_position_embeddings(pos, (6, 6)).shape == (1, 37, 8)
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=8,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16)
    emb = transformers.models.vit.modeling_vit.ViTEmbeddings(config)
    ref = emb.interpolate_position_embeddings if hasattr(emb, "interpolate_position_embeddings") \
        else emb.interpolate_pos_encoding
    ours = theory.interpolate_position_embeddings(emb.position_embeddings.detach(), (6, 6))
    assert_close(ours, ref(torch.zeros(1, 37, 8), 24, 24).detach())


def test_replicated_token_mixing_acts_per_group():
    lin = nn.Linear(4, 6)
    big = theory.replicate_token_mixing(lin, 3)
    x = torch.randn(2, 12)
    expected = torch.cat([lin(x[:, 4 * i:4 * i + 4]) for i in range(3)], -1)
    assert_close(big(x), expected)
