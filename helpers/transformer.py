"""The encoder-decoder Transformer of the Annotated Transformer handout, and the copy task.

Shapes: ``src (B, S)`` and ``tgt (B, T)`` token ids; ``src_mask (B, 1, S)``;
``tgt_mask (B, T, T)``; hidden states ``(B, L, d_model)``. Masks are boolean, True = may attend.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers.attention import MultiHeadAttention
from helpers.layers import (
    Embeddings,
    LayerNorm,
    PositionalEncoding,
    PositionwiseFeedForward,
    SublayerConnection,
    clones,
    subsequent_mask,
)

NormFactory = Callable[[int], nn.Module]


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a pre-norm residual: ``(B, S, d)``."""

    def __init__(self, size: int, self_attn: MultiHeadAttention, feed_forward: nn.Module,
                 dropout: float, norm: NormFactory = LayerNorm):
        super().__init__()
        self.self_attn, self.feed_forward, self.size = self_attn, feed_forward, size
        self.sublayer = clones(SublayerConnection(size, dropout, norm), 2)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.sublayer[0](x, lambda y: self.self_attn(y, y, y, mask)[0])
        return self.sublayer[1](x, self.feed_forward)


class Encoder(nn.Module):
    """``n`` cloned encoder layers and a final norm: ``(B, S, d)`` -> ``(B, S, d)``."""

    def __init__(self, layer: EncoderLayer, n: int, norm: NormFactory = LayerNorm):
        super().__init__()
        self.layers = clones(layer, n)
        self.norm = norm(layer.size)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Masked self-attention, attention over the encoder memory, feed-forward: ``(B, T, d)``."""

    def __init__(self, size: int, self_attn: MultiHeadAttention, src_attn: MultiHeadAttention,
                 feed_forward: nn.Module, dropout: float, norm: NormFactory = LayerNorm):
        super().__init__()
        self.size, self.self_attn, self.src_attn, self.feed_forward = (
            size, self_attn, src_attn, feed_forward)
        self.sublayer = clones(SublayerConnection(size, dropout, norm), 3)

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor | None,
                tgt_mask: Tensor | None) -> Tensor:
        x = self.sublayer[0](x, lambda y: self.self_attn(y, y, y, tgt_mask)[0])
        x = self.sublayer[1](x, lambda y: self.src_attn(y, memory, memory, src_mask)[0])
        return self.sublayer[2](x, self.feed_forward)


class Decoder(nn.Module):
    """``n`` cloned decoder layers and a final norm."""

    def __init__(self, layer: DecoderLayer, n: int, norm: NormFactory = LayerNorm):
        super().__init__()
        self.layers = clones(layer, n)
        self.norm = norm(layer.size)

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor | None,
                tgt_mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, src_mask, tgt_mask)
        return self.norm(x)


class Generator(nn.Module):
    """Linear projection to the vocabulary, then log-softmax: ``(B, T, d)`` -> ``(B, T, V)``."""

    def __init__(self, d_model: int, vocab: int):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.proj(x), dim=-1)


class EncoderDecoder(nn.Module):
    """The standard encoder-decoder: ``forward`` returns decoder states ``(B, T, d)``;
    ``generator`` turns them into log-probabilities."""

    def __init__(self, encoder: Encoder, decoder: Decoder, src_embed: nn.Module,
                 tgt_embed: nn.Module, generator: Generator):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.src_embed, self.tgt_embed, self.generator = src_embed, tgt_embed, generator

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None,
                tgt_mask: Tensor | None) -> Tensor:
        return self.decode(self.encode(src, src_mask), src_mask, tgt, tgt_mask)

    def encode(self, src: Tensor, src_mask: Tensor | None) -> Tensor:
        return self.encoder(self.src_embed(src), src_mask)

    def decode(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor,
               tgt_mask: Tensor | None) -> Tensor:
        return self.decoder(self.tgt_embed(tgt), memory, src_mask, tgt_mask)


def make_model(src_vocab: int, tgt_vocab: int, N: int = 6, d_model: int = 512,  # noqa: N803
               d_ff: int = 2048, h: int = 8, dropout: float = 0.1,
               norm: NormFactory = LayerNorm) -> EncoderDecoder:
    """The handout's constructor; parameters with more than one axis get Xavier-uniform init."""
    c = copy.deepcopy
    attn = MultiHeadAttention(d_model, h, dropout)
    ff = PositionwiseFeedForward(d_model, d_ff, dropout)
    position = PositionalEncoding(d_model, dropout)
    model = EncoderDecoder(
        Encoder(EncoderLayer(d_model, c(attn), c(ff), dropout, norm), N, norm),
        Decoder(DecoderLayer(d_model, c(attn), c(attn), c(ff), dropout, norm), N, norm),
        nn.Sequential(Embeddings(d_model, src_vocab), c(position)),
        nn.Sequential(Embeddings(d_model, tgt_vocab), c(position)),
        Generator(d_model, tgt_vocab),
    )
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    return model


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, src: Tensor, src_mask: Tensor | None, max_len: int,
                  start_symbol: int, end_symbol: int | None = None, pad: int = 0,
                  causal: bool = True) -> Tensor:
    """Decode ``(B, S)`` sources one token at a time, always taking the most likely next
    token; returns ``(B, L)`` ids starting with ``start_symbol``.

    Without ``end_symbol`` (the handout's version) ``L = max_len``. With it, decoding stops
    once every sequence has produced ``end_symbol`` (``L <= max_len``) and ``pad`` fills each
    sequence after its end. ``causal=False`` lets every decoder position attend to the whole
    prefix decoded so far (for a decoder trained without the causal mask).
    """
    memory = model.encode(src, src_mask)
    ys = torch.full((src.shape[0], 1), start_symbol, dtype=src.dtype, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len - 1):
        length = ys.shape[1]
        tgt_mask = (subsequent_mask(length) if causal
                    else torch.ones(1, length, length, dtype=torch.bool)).to(src.device)
        out = model.decode(memory, src_mask, ys, tgt_mask)
        next_word = model.generator(out[:, -1]).argmax(dim=-1)  # (B,)
        if end_symbol is not None:
            next_word = next_word.masked_fill(done, pad)
            done |= next_word == end_symbol
        ys = torch.cat([ys, next_word.unsqueeze(1)], dim=1)
        if bool(done.all()):
            break
    return ys


# ----------------------------------------------------------------------------- copy task

class Seq2SeqBatch(NamedTuple):
    """A teacher-forced batch: decoder input ``tgt`` is the target without its last token,
    ``tgt_y`` the target without its first."""

    src: Tensor       # (B, S)
    src_mask: Tensor  # (B, 1, S)
    tgt: Tensor       # (B, T-1)
    tgt_mask: Tensor  # (B, T-1, T-1)
    tgt_y: Tensor     # (B, T-1)


def make_seq2seq_batch(src: Tensor, tgt: Tensor, pad: int = 0) -> Seq2SeqBatch:
    """Masks for padded sources and for causal, padded targets."""
    src_mask = (src != pad).unsqueeze(-2)
    tgt_in, tgt_y = tgt[:, :-1], tgt[:, 1:]
    tgt_mask = (tgt_in != pad).unsqueeze(-2) & subsequent_mask(tgt_in.shape[1]).to(tgt.device)
    return Seq2SeqBatch(src, src_mask, tgt_in, tgt_mask, tgt_y)


def copy_task_batches(vocab: int, seq_len: int, batch_size: int, n_batches: int,
                      generator: torch.Generator) -> Iterator[Seq2SeqBatch]:
    """Random sequences over tokens 1..vocab-1, first token 1 (start), target = source."""
    for _ in range(n_batches):
        data = torch.randint(1, vocab, (batch_size, seq_len), generator=generator)
        data[:, 0] = 1
        yield make_seq2seq_batch(data, data.clone(), pad=0)


def seq2seq_loss(model: EncoderDecoder, batch: Seq2SeqBatch, pad: int = 0) -> tuple[Tensor, int]:
    """Mean negative log-likelihood per non-pad target token, and that token count."""
    out = model(batch.src, batch.tgt, batch.src_mask, batch.tgt_mask)
    log_probs = model.generator(out)  # (B, T-1, V)
    loss = F.nll_loss(log_probs.flatten(0, 1), batch.tgt_y.flatten(), ignore_index=pad)
    return loss, int((batch.tgt_y != pad).sum())


def exact_match_accuracy(model: EncoderDecoder, batch: Seq2SeqBatch,
                         start_symbol: int = 1) -> float:
    """Fraction of sources whose greedy decoding equals the full target sequence."""
    model.eval()
    target = torch.cat([batch.tgt[:, :1], batch.tgt_y], dim=1)  # (B, T)
    decoded = greedy_decode(model, batch.src, batch.src_mask, target.shape[1], start_symbol)
    return (decoded == target).all(dim=1).float().mean().item()


# ------------------------------------------------------------ PyTorch reference layers

def _copy_norm(dst: nn.LayerNorm, src: nn.Module) -> None:
    if not isinstance(src, nn.LayerNorm):
        raise TypeError("PyTorch's transformer layers use nn.LayerNorm; build the layer with "
                        f"norm=nn.LayerNorm to compare, not {type(src).__name__}")
    dst.load_state_dict(src.state_dict())


def _copy_attention(dst: nn.MultiheadAttention, src: MultiHeadAttention) -> None:
    from helpers.attention import torch_multihead_like

    dst.load_state_dict(torch_multihead_like(src).state_dict())


def _copy_feed_forward(dst: nn.Module, src: PositionwiseFeedForward) -> None:
    dst.linear1.load_state_dict(src.w_1.state_dict())
    dst.linear2.load_state_dict(src.w_2.state_dict())


def torch_encoder_layer_like(layer: EncoderLayer) -> nn.TransformerEncoderLayer:
    """``nn.TransformerEncoderLayer(norm_first=True, dropout=0)`` with ``layer``'s weights."""
    attn, ff = layer.self_attn, layer.feed_forward
    ref = nn.TransformerEncoderLayer(attn.d_model, attn.n_heads, ff.w_1.out_features,
                                     dropout=0.0, batch_first=True, norm_first=True,
                                     layer_norm_eps=layer.sublayer[0].norm.eps)
    _copy_attention(ref.self_attn, attn)
    _copy_feed_forward(ref, ff)
    _copy_norm(ref.norm1, layer.sublayer[0].norm)
    _copy_norm(ref.norm2, layer.sublayer[1].norm)
    return ref


def torch_decoder_layer_like(layer: DecoderLayer) -> nn.TransformerDecoderLayer:
    """``nn.TransformerDecoderLayer(norm_first=True, dropout=0)`` with ``layer``'s weights."""
    attn, ff = layer.self_attn, layer.feed_forward
    ref = nn.TransformerDecoderLayer(attn.d_model, attn.n_heads, ff.w_1.out_features,
                                     dropout=0.0, batch_first=True, norm_first=True,
                                     layer_norm_eps=layer.sublayer[0].norm.eps)
    _copy_attention(ref.self_attn, attn)
    _copy_attention(ref.multihead_attn, layer.src_attn)
    _copy_feed_forward(ref, ff)
    for i, norm in enumerate((ref.norm1, ref.norm2, ref.norm3)):
        _copy_norm(norm, layer.sublayer[i].norm)
    return ref
