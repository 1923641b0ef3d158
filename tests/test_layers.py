"""Layers of the handout: positional encoding and its shift operator T^(k), LayerNorm, masks,
embeddings, FFN."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers.layers import (
    Embeddings,
    LayerNorm,
    PositionalEncoding,
    PositionwiseFeedForward,
    SublayerConnection,
    clones,
    shift_operator,
    shift_operator_check,
    sinusoidal_frequencies,
    sinusoidal_positional_encoding,
    subsequent_mask,
)


def test_positional_encoding_matches_formula_entrywise():
    pe = sinusoidal_positional_encoding(50, 16)
    assert pe.shape == (50, 16)
    for t in (0, 1, 7, 49):
        for i in range(8):
            angle = t / 10000 ** (2 * i / 16)
            assert pe[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_shift_operator_is_the_block_rotation_that_moves_the_float64_table():
    """PE(t + k) is a fixed linear map (block rotation) of PE(t): the paper's motivation."""
    pe, d = sinusoidal_positional_encoding(40, 8, dtype=torch.float64), 8
    assert pe.dtype == torch.float64
    assert_close(pe.float(), sinusoidal_positional_encoding(40, 8))
    lam = sinusoidal_frequencies(d)
    for k in (1, 3, 17):
        rotation = torch.zeros(d, d, dtype=torch.float64)  # acts on row vectors: pe[t] @ rotation
        for i in range(d // 2):
            w = k / 10000 ** (2 * i / d)
            rotation[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor(
                [[math.cos(w), -math.sin(w)], [math.sin(w), math.cos(w)]], dtype=torch.float64)
        assert_close(shift_operator(k, lam), rotation.T)
        assert (pe[:40 - k] @ shift_operator(k, lam).T - pe[k:]).abs().max() < 1e-12
    # a wrong operator (rotation the other way) fails
    assert (pe[:-3] @ shift_operator(3, lam) - pe[3:]).abs().max() > 0.1


def test_shift_operator_check_reports_tiny_errors_and_a_failing_transpose():
    check = shift_operator_check(64, 16, [1, 7, 30])
    assert sorted(check.errors) == [1, 7, 30]
    assert check.max_error < 1e-12 and check.orthogonality_error < 1e-12
    assert check.power_error < 1e-12 and check.transposed_error > 0.1
    question = sinusoidal_frequencies(16, first=1)  # the question's f_m, m = 1 .. d/2
    assert_close(question, 1 / 10000 ** (torch.arange(1, 9, dtype=torch.float64) * 2 / 16))


def test_positional_encoding_rejects_odd_width_and_long_inputs():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positional_encoding(4, 7)
    with pytest.raises(ValueError, match="max_len"):
        PositionalEncoding(8, 0.0, max_len=4)(torch.zeros(1, 5, 8))


def test_handout_layernorm_formula_and_difference_from_torch():
    x = torch.randn(4, 6, 10)
    ln = LayerNorm(10)
    with torch.no_grad():
        ln.a_2.uniform_(), ln.b_2.normal_()
    expected = ln.a_2 * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6) + ln.b_2
    assert_close(ln(x), expected)
    ref = nn.LayerNorm(10, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(ln.a_2), ref.bias.copy_(ln.b_2)
    gap = (ln(x) - ref(x)).abs().max().item()
    assert gap > 1e-3  # unbiased σ differs by √((n-1)/n): visibly different
    # With n features the normalised parts differ exactly by the factor √((n-1)/n).
    plain, torch_plain = LayerNorm(10)(x), nn.LayerNorm(10, eps=0.0)(x)
    assert_close(plain, torch_plain * math.sqrt(9 / 10), atol=1e-5, rtol=1e-4)


def test_subsequent_mask_is_lower_triangular():
    mask = subsequent_mask(4)
    assert mask.shape == (1, 4, 4) and mask.dtype == torch.bool
    assert mask[0].tolist() == [[True, False, False, False], [True, True, False, False],
                                [True, True, True, False], [True, True, True, True]]


def test_embeddings_scale_and_feed_forward_shapes():
    emb = Embeddings(8, 11)
    ids = torch.randint(0, 11, (2, 5))
    assert_close(emb(ids), emb.lut(ids) * math.sqrt(8))
    ff = PositionwiseFeedForward(8, 32, dropout=0.0)
    x = torch.randn(2, 5, 8)
    assert ff(x).shape == (2, 5, 8)
    assert_close(ff(x), ff.w_2(torch.relu(ff.w_1(x))))


def test_sublayer_connection_is_prenorm_residual_and_clones_are_independent():
    block = SublayerConnection(6, dropout=0.0)
    x = torch.randn(2, 3, 6)
    assert_close(block(x, lambda y: 2 * y), x + 2 * block.norm(x))
    copies = clones(nn.Linear(3, 3), 2)
    with torch.no_grad():
        copies[0].weight.zero_()
    assert copies[1].weight.abs().sum() > 0
