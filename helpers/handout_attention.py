"""The CSC413 PA3 (2022) Transformer as its handout builds it (iust-1404-hw4 P6 adapts it).

Single-head ``ScaledDotAttention`` with its own query/key/value maps and no output projection;
``CausalScaledDotAttention``, the same with every later key masked; encoder and decoder layers
made of these attentions and a one-layer ReLU map, each added back to its input (a residual
connection, no layer norm, no dropout); sinusoidal positions added to plain ``nn.Embedding``
vectors; a linear read-out to the vocabulary. PyTorch's default initialisation throughout.

:class:`HandoutTransformer` has the interface of :class:`helpers.transformer.EncoderDecoder`
(``encode``, ``decode``, ``generator``, ``forward(src, tgt, src_mask, tgt_mask)``), so
``greedy_decode``, ``seq2seq_loss`` and the Pig-Latin helpers work with either model. Masks are
boolean, True = may attend; the handout's batches need none (every word in a batch has the same
length), they matter only when words of different lengths are decoded together.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from helpers.attention import scaled_dot_product_attention
from helpers.layers import sinusoidal_positional_encoding
from helpers.transformer import Generator


class ScaledDotAttention(nn.Module):
    """The handout's attention: linear maps Q, K, V (with bias) of the queries, keys and values,
    then softmax(Q Kᵀ / √hidden) V — one head whose width is the hidden size, no output map.

    ``forward(queries (B, Lq, h), keys (B, Lk, h), values (B, Lk, h), mask)`` returns
    ``(context (B, Lq, h), weights (B, Lq, Lk))``; ``mask`` is boolean, broadcastable to
    ``(B, Lq, Lk)``. The weights of the last call are kept as ``last_weights (B, 1, Lq, Lk)``
    (the project's per-head layout, one head) for plots.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.Q = nn.Linear(hidden_size, hidden_size)
        self.K = nn.Linear(hidden_size, hidden_size)
        self.V = nn.Linear(hidden_size, hidden_size)
        self.scale = 1.0 / math.sqrt(hidden_size)
        self.last_weights: Tensor | None = None

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, k, v = self.Q(queries), self.K(keys), self.V(values)  # (B, L, h) each
        context, weights = scaled_dot_product_attention(q, k, v, mask)  # scale 1/√h
        self.last_weights = weights.detach().unsqueeze(1)  # (B, 1, Lq, Lk)
        return context, weights


class CausalScaledDotAttention(ScaledDotAttention):
    """:class:`ScaledDotAttention` in which query ``i`` never sees key ``j > i``: the scores
    above the diagonal are masked (``torch.tril``) before the softmax, whatever ``mask`` says."""

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        earlier = torch.ones(queries.shape[1], keys.shape[1], dtype=torch.bool,
                             device=queries.device).tril()  # (Lq, Lk): key j <= query i
        return super().forward(queries, keys, values, earlier if mask is None else mask & earlier)


def _relu_map(hidden_size: int) -> nn.Sequential:
    """The handout's per-position "attention MLP": one linear map of width ``hidden`` and ReLU."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU())


class HandoutEncoderLayer(nn.Module):
    """``x + attention(x, x, x)``, then ``+ ReLU(Linear(·))``: ``(B, S, h)`` -> ``(B, S, h)``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.self_attn = ScaledDotAttention(hidden_size)
        self.feed_forward = _relu_map(hidden_size)

    def forward(self, x: Tensor, src_mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(x, x, x, src_mask)[0]
        return x + self.feed_forward(x)


class HandoutDecoderLayer(nn.Module):
    """``x + self-attention(x)`` (causal unless ``causal=False``, the change of part (c)),
    ``+ attention(·, memory)`` over the encoder's states, ``+ ReLU(Linear(·))``: ``(B, T, h)``."""

    def __init__(self, hidden_size: int, causal: bool = True):
        super().__init__()
        self.self_attn = (CausalScaledDotAttention if causal else ScaledDotAttention)(hidden_size)
        self.src_attn = ScaledDotAttention(hidden_size)
        self.feed_forward = _relu_map(hidden_size)

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor | None,
                tgt_mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(x, x, x, tgt_mask)[0]
        x = x + self.src_attn(x, memory, memory, src_mask)[0]
        return x + self.feed_forward(x)


class _LayerStack(nn.Module):
    """Token embedding plus sinusoidal positions, then ``layers`` in turn (no final norm)."""

    def __init__(self, vocab_size: int, hidden_size: int, layers: list[nn.Module],
                 max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.ModuleList(layers)
        self.register_buffer("positions", sinusoidal_positional_encoding(max_len, hidden_size),
                             persistent=False)  # (max_len, h)

    def embed(self, ids: Tensor) -> Tensor:
        """``(B, L)`` ids -> ``(B, L, h)``: embedding + position (no √h scaling)."""
        return self.embedding(ids) + self.positions[: ids.shape[1]]


class HandoutTransformer(nn.Module):
    """The handout's encoder-decoder: ``layers`` encoder and decoder layers of width ``hidden``
    and a linear read-out (``generator``: log-probabilities, so that NLL = the handout's
    cross-entropy on logits). ``causal=False`` gives the decoder plain self-attention."""

    def __init__(self, vocab_size: int, hidden_size: int, layers: int, causal: bool = True,
                 max_len: int = 64):
        super().__init__()
        self.encoder = _LayerStack(
            vocab_size, hidden_size, [HandoutEncoderLayer(hidden_size) for _ in range(layers)],
            max_len)
        self.decoder = _LayerStack(
            vocab_size, hidden_size,
            [HandoutDecoderLayer(hidden_size, causal) for _ in range(layers)], max_len)
        self.generator = Generator(hidden_size, vocab_size)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """The encoder's states ``(B, S, h)`` ("annotations" in the handout)."""
        x = self.encoder.embed(src)
        for layer in self.encoder.layers:
            x = layer(x, src_mask)
        return x

    def decode(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor,
               tgt_mask: Tensor | None = None) -> Tensor:
        """The decoder's states ``(B, T, h)`` for decoder inputs ``tgt (B, T)``."""
        x = self.decoder.embed(tgt)
        for layer in self.decoder.layers:
            x = layer(x, memory, src_mask, tgt_mask)
        return x

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None,
                tgt_mask: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(src, src_mask), src_mask, tgt, tgt_mask)
