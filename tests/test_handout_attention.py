"""The CSC413 handout's attention layers and Transformer (helpers.handout_attention)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from helpers.handout_attention import (
    CausalScaledDotAttention,
    HandoutTransformer,
    ScaledDotAttention,
)
from helpers.layers import sinusoidal_positional_encoding
from helpers.training import count_parameters

HIDDEN = 8


def _inputs(batch=3, lq=5, lk=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, HIDDEN, generator=g) for length in (lq, lk, lk))


def _by_hand(attn, queries, keys, values, allowed=None):
    """softmax(Q Kᵀ/√h) V written out, with -inf where ``allowed`` is False."""
    q, k, v = attn.Q(queries), attn.K(keys), attn.V(values)
    scores = torch.einsum("bqh,bkh->bqk", q, k) / math.sqrt(HIDDEN)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(-1)
    return torch.einsum("bqk,bkh->bqh", weights, v), weights


def test_scaled_dot_attention_matches_the_formula_and_pytorch():
    torch.manual_seed(0)
    attn = ScaledDotAttention(HIDDEN)
    queries, keys, values = _inputs(lq=4, lk=6)
    context, weights = attn(queries, keys, values)
    expected, expected_weights = _by_hand(attn, queries, keys, values)
    assert_close(context, expected, atol=1e-6, rtol=1e-5)
    assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
    reference = F.scaled_dot_product_attention(attn.Q(queries), attn.K(keys), attn.V(values))
    assert_close(context, reference, atol=1e-6, rtol=1e-5)
    assert attn.last_weights.shape == (3, 1, 4, 6)  # one head, the project's layout
    assert all(isinstance(m.bias, torch.Tensor) for m in (attn.Q, attn.K, attn.V))  # with bias
    assert not hasattr(attn, "out_proj")  # the handout has no output projection


def test_a_padding_mask_hides_keys_exactly_as_dropping_them():
    torch.manual_seed(1)
    attn = ScaledDotAttention(HIDDEN)
    queries, keys, values = _inputs(batch=1, lq=3, lk=6)
    mask = torch.tensor([[[True] * 4 + [False] * 2]])  # (1, 1, 6): the last two keys are padding
    padded, _ = attn(queries, keys, values, mask)
    alone, _ = attn(queries, keys[:, :4], values[:, :4])
    assert_close(padded, alone, atol=1e-6, rtol=1e-5)


def test_causal_attention_matches_pytorch_is_causal_and_the_formula():
    torch.manual_seed(2)
    attn = CausalScaledDotAttention(HIDDEN)
    x, _, _ = _inputs(lq=6, lk=6)
    context, weights = attn(x, x, x)
    reference = F.scaled_dot_product_attention(attn.Q(x), attn.K(x), attn.V(x), is_causal=True)
    assert_close(context, reference, atol=1e-6, rtol=1e-5)
    expected, _ = _by_hand(attn, x, x, x, torch.ones(6, 6, dtype=torch.bool).tril())
    assert_close(context, expected, atol=1e-6, rtol=1e-5)
    assert weights[:, 0, 0].eq(1).all() and weights.triu(1).eq(0).all()


def test_causal_attention_combines_its_mask_with_a_padding_mask():
    torch.manual_seed(3)
    attn = CausalScaledDotAttention(HIDDEN)
    x, _, _ = _inputs(batch=1, lq=5, lk=5)
    padding = torch.tensor([[[True, False, True, True, True]]])  # key 1 hidden from every query
    context, weights = attn(x, x, x, padding)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril() & padding
    expected, _ = _by_hand(attn, x, x, x, allowed)
    assert_close(context, expected, atol=1e-6, rtol=1e-5)
    assert weights[0, :, 1].eq(0).all()


def test_causal_attention_gradients_in_float64():
    torch.manual_seed(4)
    attn = CausalScaledDotAttention(4).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: attn(y, y, y)[0], (x,))


# --------------------------------------------------------------------------- the model

VOCAB = 12


def _model(causal=True, layers=2, seed=0):
    torch.manual_seed(seed)
    return HandoutTransformer(VOCAB, HIDDEN, layers, causal=causal).eval()


def test_encoder_and_decoder_follow_the_handout_layout():
    """Embedding + sinusoidal positions, then per layer x + attention(x), + ReLU(Linear(x)) (the
    decoder: self-attention, attention over the encoder's states, the ReLU map); no norm."""
    model = _model()
    src = torch.tensor([[3, 4, 5, 2], [6, 7, 8, 2]])
    tgt = torch.tensor([[1, 5, 3], [1, 9, 8]])
    positions = sinusoidal_positional_encoding(8, HIDDEN)
    x = model.encoder.embedding(src) + positions[:4]
    for layer in model.encoder.layers:
        x = x + _by_hand(layer.self_attn, x, x, x)[0]
        x = x + torch.relu(layer.feed_forward[0](x))
    assert_close(model.encode(src), x, atol=1e-5, rtol=1e-5)
    y = model.decoder.embedding(tgt) + positions[:3]
    earlier = torch.ones(3, 3, dtype=torch.bool).tril()
    for layer in model.decoder.layers:
        y = y + _by_hand(layer.self_attn, y, y, y, earlier)[0]
        y = y + _by_hand(layer.src_attn, y, x, x)[0]
        y = y + torch.relu(layer.feed_forward[0](y))
    assert_close(model(src, tgt), y, atol=1e-5, rtol=1e-5)
    assert_close(model.generator(y), F.log_softmax(model.generator.proj(y), -1))


@pytest.mark.parametrize(("causal", "same"), [(True, True), (False, False)])
def test_only_the_non_causal_decoder_sees_later_inputs(causal, same):
    model = _model(causal)
    assert isinstance(model.decoder.layers[0].self_attn, CausalScaledDotAttention) == causal
    src = torch.tensor([[3, 4, 5, 2]])
    tgt = torch.tensor([[1, 5, 3, 7]])
    later = tgt.clone()
    later[0, -1] = 9  # change the last decoder input only
    first = model(src, tgt)[0, :-1]
    assert torch.allclose(first, model(src, later)[0, :-1], atol=1e-6) == same


def test_padded_sources_with_a_mask_encode_as_when_alone():
    model = _model()
    long, short = torch.tensor([[3, 4, 5, 6, 2]]), torch.tensor([[7, 8, 2]])
    src = torch.cat([long, torch.cat([short, torch.zeros(1, 2, dtype=torch.long)], 1)])
    src_mask = (src != 0).unsqueeze(-2)  # (2, 1, 5)
    tgt = torch.tensor([[1, 6, 9], [1, 8, 9]])
    batched = model(src, tgt, src_mask)
    assert_close(batched[1], model(short, tgt[1:])[0], atol=1e-5, rtol=1e-5)
    assert_close(batched[0], model(long, tgt[:1])[0], atol=1e-5, rtol=1e-5)


def test_parameter_count():
    """Per encoder layer 4 linear maps (Q, K, V, the ReLU map), per decoder layer 7; two
    embeddings and the read-out."""
    layers, linear = 3, HIDDEN * HIDDEN + HIDDEN
    expected = layers * (4 + 7) * linear + 2 * VOCAB * HIDDEN + HIDDEN * VOCAB + VOCAB
    assert count_parameters(HandoutTransformer(VOCAB, HIDDEN, layers)) == expected
