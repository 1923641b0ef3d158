"""KV cache, MQA, GQA and MLA: cached decoding equals full recomputation; cache sizes and
FLOPs equal the formulas."""

import pytest
import torch
from torch.testing import assert_close

from helpers import kv_cache


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_cached_decoding_equals_recomputation(n_kv):
    layer = kv_cache.DecoderAttention(32, 4, 8, n_kv).double()
    xs = torch.randn(2, 9, 32, dtype=torch.float64)
    full, _ = layer(xs)
    assert_close(kv_cache.decode(layer, xs, use_cache=True), full)
    assert_close(kv_cache.decode(layer, xs, use_cache=False), full)
    _, cache = layer(xs, use_cache=True)
    assert cache.numel() == 2 * kv_cache.cache_elements(9, 8, n_kv)  # batch 2


def test_projection_shapes_and_invalid_grouping():
    mqa = kv_cache.DecoderAttention(16, 4, 4, 1)
    assert mqa.k_proj.weight.shape == (4, 16) and mqa.q_proj.weight.shape == (16, 16)
    with pytest.raises(ValueError):
        kv_cache.DecoderAttention(16, 4, 4, 3)


def test_latent_attention_cache_and_equivalence():
    layer = kv_cache.LatentAttention(32, 4, 8, d_latent=6).double()
    xs = torch.randn(1, 7, 32, dtype=torch.float64)
    full, _ = layer(xs)
    assert_close(kv_cache.decode(layer, xs, use_cache=True), full)
    _, cache = layer(xs, use_cache=True)
    assert cache.numel() == kv_cache.mla_cache_elements(7, 6)


@pytest.mark.parametrize("n_kv,cached", [(4, True), (4, False), (1, True), (2, False)])
def test_flop_formula_equals_flop_counter(n_kv, cached):
    n, d, d_h, n_h = 10, 24, 6, 4
    layer = kv_cache.DecoderAttention(d, n_h, d_h, n_kv)
    xs = torch.randn(1, n, d)
    if cached:
        _, cache = layer(xs[:, :-1], use_cache=True)
        flops = kv_cache.measured_flops(layer, xs[:, -1:], cache)
    else:
        flops = kv_cache.measured_flops(layer, xs)
    assert flops == kv_cache.step_flops(n, d, d_h, n_h, n_kv, cache=cached)


def test_formula_numbers_of_the_assignment():
    n, d, d_h, n_h, g = 1024, 768, 64, 12, 4
    assert kv_cache.cache_elements(n, d_h, n_h) == 1_572_864
    assert kv_cache.cache_elements(n, d_h, 1) == 131_072
    assert kv_cache.cache_elements(n, d_h, g) == 524_288
    assert kv_cache.step_flops(n, d, d_h, n_h, cache=False) > 1000 * kv_cache.step_flops(
        n, d, d_h, n_h, cache=True)


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_last_token_without_cache_equals_full_layer_and_its_formula(n_kv):
    n, d, d_h, n_h = 10, 24, 6, 4
    layer = kv_cache.DecoderAttention(d, n_h, d_h, n_kv).double()
    xs = torch.randn(1, n, d, dtype=torch.float64)
    assert_close(layer.last_token_without_cache(xs), layer(xs)[0][:, -1:])
    flops = kv_cache.measured_flops(layer.last_token_without_cache, xs)
    assert flops == kv_cache.step_flops_recompute_kv(n, d, d_h, n_h, n_kv)
    assert kv_cache.step_flops(n, d, d_h, n_h, n_kv, cache=True) < flops < kv_cache.step_flops(
        n, d, d_h, n_h, n_kv, cache=False)


@pytest.mark.parametrize("absorbed", [False, True])
def test_latent_attention_step_equals_and_costs_its_formula(absorbed):
    n, d, d_h, n_h, d_c = 9, 24, 6, 4, 5
    layer = kv_cache.LatentAttention(d, n_h, d_h, d_c).double()
    xs = torch.randn(1, n, d, dtype=torch.float64)
    _, cache = layer(xs[:, :-1], use_cache=True)
    step = layer.absorbed_step if absorbed else layer
    out, new_cache = step(xs[:, -1:], cache)
    assert_close(out, layer(xs)[0][:, -1:])
    assert new_cache.shape == (1, n, d_c)
    flops = kv_cache.measured_flops(step, xs[:, -1:], cache)
    assert flops == kv_cache.mla_step_flops(n, d, d_h, n_h, d_c, absorbed=absorbed)


def test_mla_flops_of_the_assignment_and_rope_terms():
    n, d, d_h, n_h, d_c, d_r = 1024, 768, 64, 12, 256, 32
    absorbed = kv_cache.mla_step_flops(n, d, d_h, n_h, d_c)
    assert absorbed == 16_121_856
    assert kv_cache.mla_step_flops(n, d, d_h, n_h, d_c, absorbed=False) == 811_204_608
    rope = 2 * d * n_h * d_r + 2 * d * d_r + 2 * n * n_h * d_r
    assert kv_cache.mla_step_flops(n, d, d_h, n_h, d_c, d_r) == absorbed + rope
    assert kv_cache.step_flops_recompute_kv(n, d, d_h, n_h) == 2_421_424_128
