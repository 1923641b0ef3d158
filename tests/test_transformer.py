"""The handout's encoder-decoder against PyTorch's transformer layers (copied weights)."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers.attention import MultiHeadAttention
from helpers.layers import PositionwiseFeedForward, subsequent_mask
from helpers.training import fit, noam_lambda
from helpers.transformer import (
    DecoderLayer,
    EncoderLayer,
    copy_task_batches,
    exact_match_accuracy,
    greedy_decode,
    make_model,
    make_seq2seq_batch,
    seq2seq_loss,
    torch_decoder_layer_like,
    torch_encoder_layer_like,
)

TOL = dict(atol=1e-5, rtol=1e-5)
D, H, FF = 16, 4, 32


def _randomise_norms(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_()


def test_encoder_layer_matches_torch_norm_first():
    layer = EncoderLayer(D, MultiHeadAttention(D, H), PositionwiseFeedForward(D, FF, 0.0), 0.0,
                         norm=nn.LayerNorm).eval()
    _randomise_norms(layer)
    ref = torch_encoder_layer_like(layer).eval()
    x = torch.randn(3, 7, D)
    pad = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4]).bool()
    assert_close(layer(x, pad.unsqueeze(1)), ref(x, src_key_padding_mask=~pad), **TOL)


def test_decoder_layer_matches_torch_norm_first():
    layer = DecoderLayer(D, MultiHeadAttention(D, H), MultiHeadAttention(D, H),
                         PositionwiseFeedForward(D, FF, 0.0), 0.0, norm=nn.LayerNorm).eval()
    _randomise_norms(layer)
    ref = torch_decoder_layer_like(layer).eval()
    x, memory = torch.randn(2, 5, D), torch.randn(2, 6, D)
    src_pad = torch.tensor([[1] * 6, [1] * 4 + [0] * 2]).bool()
    ours = layer(x, memory, src_pad.unsqueeze(1), subsequent_mask(5))
    theirs = ref(x, memory, tgt_mask=~subsequent_mask(5)[0], memory_key_padding_mask=~src_pad)
    assert_close(ours, theirs, **TOL)


def test_reference_builders_refuse_the_handout_layernorm():
    layer = EncoderLayer(D, MultiHeadAttention(D, H), PositionwiseFeedForward(D, FF, 0.0), 0.0)
    with pytest.raises(TypeError, match="nn.LayerNorm"):
        torch_encoder_layer_like(layer)


def test_make_model_parameter_count_and_shapes():
    model = make_model(11, 13, N=2, d_model=32, d_ff=64, h=4)
    d, ff, n = 32, 64, 2
    attn = 4 * (d * d + d)
    ffn = d * ff + ff + ff * d + d
    norm = 2 * d
    expected = (n * (attn + ffn + 2 * norm) + norm            # encoder
                + n * (2 * attn + ffn + 3 * norm) + norm      # decoder
                + 11 * d + 13 * d + d * 13 + 13)              # embeddings and generator
    assert sum(p.numel() for p in model.parameters()) == expected
    batch = make_seq2seq_batch(torch.randint(1, 11, (2, 6)), torch.randint(1, 13, (2, 8)))
    out = model(batch.src, batch.tgt, batch.src_mask, batch.tgt_mask)
    assert out.shape == (2, 7, 32)
    log_probs = model.generator(out)
    assert_close(log_probs.exp().sum(-1), torch.ones(2, 7))


def test_greedy_decode_shape_and_determinism():
    model = make_model(11, 11, N=1, d_model=16, d_ff=32, h=2).eval()
    src = torch.randint(1, 11, (3, 10))
    mask = torch.ones(3, 1, 10, dtype=torch.bool)
    a = greedy_decode(model, src, mask, max_len=10, start_symbol=1)
    b = greedy_decode(model, src, mask, max_len=10, start_symbol=1)
    assert a.shape == (3, 10) and torch.equal(a, b) and torch.all(a[:, 0] == 1)


def test_copy_task_learns_to_copy():
    torch.manual_seed(0)
    model = make_model(11, 11, N=1, d_model=32, d_ff=64, h=4, dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, noam_lambda(32, 1.0, 50))
    history = fit(model, lambda e: copy_task_batches(11, 8, 64, 25, gen), seq2seq_loss, opt,
                  epochs=6, scheduler=sched)
    assert history.rows[-1]["train_loss"] < 0.5 * history.rows[0]["train_loss"]
    test = next(copy_task_batches(11, 8, 100, 1, torch.Generator().manual_seed(1)))
    assert exact_match_accuracy(model, test) > 0.5


def test_transformer_notebook_at_smoke(smoke_run):
    result = smoke_run("sharif-1402-hw3/transformer_architecture.ipynb")
    assert result.status == "ok", result.error
    m = result.metrics
    assert m["base_model_parameters"] == 44_157_451
    assert m["copy_train_loss_last_epoch"] < m["copy_train_loss_first_epoch"]
    assert 0.0 <= m["copy_exact_match_accuracy"] <= 1.0
