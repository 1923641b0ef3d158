"""Attention beyond scaled dot-product: additive (Bahdanau) attention, hard (argmax) attention,
and head masking with gradient-based head importance (Michel et al., 2019).

Masks follow ``helpers.attention``: boolean, ``True`` = may attend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from helpers.attention import MultiHeadAttention, scaled_dot_product_attention
from helpers.layers import Embeddings, PositionalEncoding, PositionwiseFeedForward
from helpers.transformer import EncoderLayer


def _masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1)


class AdditiveAttention(nn.Module):
    """Additive attention: ``score(q, k) = w^T tanh(W_q q + W_k k)``, softmax over the keys.

    ``forward(q (B, Lq, d_query), k (B, Lk, d_key), v (B, Lk, d_value), mask)`` returns
    ``(output (B, Lq, d_value), weights (B, Lq, Lk))``. One bias (in ``W_q``) is enough: a bias in
    both maps only adds up, and a bias on the score cancels in the softmax.
    """

    def __init__(self, d_query: int, d_key: int, d_hidden: int, bias: bool = False):
        super().__init__()
        self.w_q = nn.Linear(d_query, d_hidden, bias=bias)
        self.w_k = nn.Linear(d_key, d_hidden, bias=False)
        self.w = nn.Linear(d_hidden, 1, bias=False)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """``(B, Lq, Lk)``; builds the ``(B, Lq, Lk, d_hidden)`` tanh features."""
        features = torch.tanh(self.w_q(q).unsqueeze(-2) + self.w_k(k).unsqueeze(-3))
        return self.w(features).squeeze(-1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights = _masked_softmax(self.scores(q, k), mask)
        return weights @ v, weights


class MultiHeadAdditiveAttention(nn.Module):
    """Multi-head additive attention: head i projects the query, key and value to ``d_head``
    (``W_q^i, W_k^i, W_v^i``), scores with its own ``w^i in R^d_head``, and the concatenated heads
    go through ``W_o (d_out, n_heads * d_head)``.

    ``forward(q (B, Lq, d_query), k (B, Lk, d_key), v (B, Lk, d_value), mask)`` returns
    ``(output (B, Lq, d_out), weights (B, n_heads, Lq, Lk))``. With ``bias=True`` the q/k/v and
    output projections have biases (the scoring vectors never do).
    """

    def __init__(self, d_query: int, d_key: int, d_value: int, n_heads: int, d_head: int,
                 d_out: int, bias: bool = True):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.q_proj = nn.Linear(d_query, n_heads * d_head, bias=bias)  # all heads' W_q^i stacked
        self.k_proj = nn.Linear(d_key, n_heads * d_head, bias=bias)
        self.v_proj = nn.Linear(d_value, n_heads * d_head, bias=bias)
        self.score = nn.Parameter(torch.randn(n_heads, d_head) / d_head ** 0.5)  # w^i per head
        self.out_proj = nn.Linear(n_heads * d_head, d_out, bias=bias)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)  # (B, nh, L, dh)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        qh, kh, vh = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(
            self.v_proj(v))
        features = torch.tanh(qh.unsqueeze(-2) + kh.unsqueeze(-3))  # (B, nh, Lq, Lk, dh)
        scores = torch.einsum("bhqkd,hd->bhqk", features, self.score)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, Lq|1, Lk) -> (B, 1, Lq|1, Lk)
        weights = _masked_softmax(scores, mask)
        out = weights @ vh  # (B, nh, Lq, dh)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1)), weights


def hard_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """"Argmax" attention: each query returns the value of its highest dot-product key.

    ``q (..., Lq, d)``, ``k (..., Lk, d)``, ``v (..., Lk, dv)`` -> ``(output (..., Lq, dv),
    index (..., Lq))``. The index is piecewise constant in q and k, so gradients reach only v.
    """
    scores = q @ k.transpose(-2, -1)  # (..., Lq, Lk)
    index = scores.argmax(dim=-1)
    one_hot = nn.functional.one_hot(index, scores.shape[-1]).to(v.dtype)  # no grad path to q, k
    return one_hot @ v, index


class MaskableMultiHeadAttention(MultiHeadAttention):
    """:class:`helpers.attention.MultiHeadAttention` whose heads are scaled by ``head_mask
    (n_heads,)`` before the output projection (1 = keep, 0 = pruned). ``head_mask`` may require
    grad: ``dL/d head_mask[h]`` is Michel et al.'s importance signal of head h."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__(d_model, n_heads, dropout, bias)
        self.head_mask: Tensor = torch.ones(n_heads)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
                need_weights: bool = True) -> tuple[Tensor, Tensor]:
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        out, weights = scaled_dot_product_attention(
            q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)
        self.last_weights = weights.detach()
        out = out * self.head_mask.to(out.device).view(1, -1, 1, 1)  # (B, nh, Lq, dk)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.d_model)), weights


class HeadMaskedEncoderClassifier(nn.Module):
    """A small Transformer encoder classifier with maskable heads: token ids ``(B, L)`` ->
    logits ``(B, n_classes)``, read from the mean over positions (``pool="mean"``) or from
    position 0 (``pool="first"``, a [CLS] token: then only attention brings the others in)."""

    def __init__(self, vocab: int, n_classes: int, d_model: int = 32, n_heads: int = 4,
                 n_layers: int = 2, d_ff: int = 64, max_len: int = 64, dropout: float = 0.0,
                 pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "first"):
            raise ValueError(f"pool must be 'mean' or 'first', got {pool!r}")
        self.pool = pool
        self.embed = nn.Sequential(Embeddings(d_model, vocab),
                                   PositionalEncoding(d_model, dropout, max_len))
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, MaskableMultiHeadAttention(d_model, n_heads, dropout),
                         PositionwiseFeedForward(d_model, d_ff, dropout), dropout,
                         norm=nn.LayerNorm)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)
        self.n_layers, self.n_heads = n_layers, n_heads

    def set_head_mask(self, mask: Tensor) -> None:
        """Install ``mask (n_layers, n_heads)`` (views of it, so a grad-requiring mask works)."""
        if mask.shape != (self.n_layers, self.n_heads):
            raise ValueError(f"mask must be ({self.n_layers}, {self.n_heads}), "
                             f"got {tuple(mask.shape)}")
        for layer, row in zip(self.layers, mask, strict=True):
            layer.self_attn.head_mask = row

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, None)
        x = self.norm(x)  # (B, L, d_model)
        return self.head(x.mean(dim=1) if self.pool == "mean" else x[:, 0])


def head_importance(model: nn.Module, batches: Iterable[Any],
                    loss_fn: Callable[[nn.Module, Any], Tensor], shape: tuple[int, int],
                    normalize: bool = True, base_mask: Tensor | None = None) -> Tensor:
    """Michel et al. (2019): ``I_h = sum over batches |dL/d xi_h|`` at ``xi = base_mask`` (all ones
    by default), for a model with ``set_head_mask(mask (n_layers, n_heads))``. With ``normalize``
    each layer's scores are divided by their L2 norm (the paper's layer-wise normalisation).
    Returns ``(n_layers, n_heads)``."""
    dtype = next(model.parameters()).dtype
    start = torch.ones(shape) if base_mask is None else base_mask.detach()
    mask = start.to(dtype).clone().requires_grad_(True)
    model.set_head_mask(mask)
    was_training = model.training
    model.eval()
    total = torch.zeros(shape, dtype=dtype)
    for batch in batches:
        (grad,) = torch.autograd.grad(loss_fn(model, batch), mask)
        total += grad.abs()
    model.set_head_mask(torch.ones(shape, dtype=dtype))
    model.train(was_training)
    if normalize:
        total = total / total.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return total


def iterative_pruning_order(model: nn.Module, batches: Sequence[Any],
                            loss_fn: Callable[[nn.Module, Any], Tensor],
                            shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Michel et al.'s iterative pruning: mask the least important remaining head, recompute the
    importance of the rest with that mask installed, repeat. Returns every head in pruning order."""
    mask, order = torch.ones(shape), []
    for _ in range(shape[0] * shape[1]):
        scores = head_importance(model, batches, loss_fn, shape, normalize=False, base_mask=mask)
        scores[mask == 0] = float("inf")  # already pruned
        layer, head = divmod(int(scores.argmin()), shape[1])
        mask[layer, head] = 0
        order.append((layer, head))
    return order


@torch.no_grad()
def evaluate_with_mask(model: nn.Module, mask: Tensor, evaluate: Callable[[nn.Module], float],
                       ) -> float:
    """``evaluate(model)`` with ``mask (n_layers, n_heads)`` installed, then all heads restored."""
    model.set_head_mask(mask.detach().clone())
    try:
        return evaluate(model)
    finally:
        model.set_head_mask(torch.ones_like(mask))


def single_head_ablation(model: nn.Module, evaluate: Callable[[nn.Module], float],
                         shape: tuple[int, int]) -> Tensor:
    """The metric with each head masked alone: ``(n_layers, n_heads)``."""
    table = torch.zeros(shape)
    for layer in range(shape[0]):
        for head in range(shape[1]):
            mask = torch.ones(shape)
            mask[layer, head] = 0
            table[layer, head] = evaluate_with_mask(model, mask, evaluate)
    return table


def pruning_curve(model: nn.Module, evaluate: Callable[[nn.Module], float],
                  order: Sequence[tuple[int, int]], shape: tuple[int, int]) -> list[float]:
    """The metric after masking 0, 1, ..., len(order) heads cumulatively in ``order``."""
    mask = torch.ones(shape)
    values = [evaluate_with_mask(model, mask, evaluate)]
    for layer, head in order:
        mask[layer, head] = 0
        values.append(evaluate_with_mask(model, mask, evaluate))
    return values


def reinforce_head_selection(reward: Callable[[Tensor], float], shape: tuple[int, int],
                             episodes: int, lr: float = 0.1, samples: int = 8,
                             generator: torch.Generator | None = None,
                             ) -> tuple[Tensor, list[float]]:
    """Learn independent Bernoulli keep-probabilities ``sigmoid(theta) (n_layers, n_heads)`` by
    REINFORCE: each episode samples ``samples`` masks, scores each with ``reward(mask)`` and
    ascends ``(R - mean R) * d log p(mask) / d theta`` (the batch mean is the baseline).

    Returns the final keep-probabilities and the mean reward of each episode.
    """
    theta = torch.zeros(shape, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    history = []
    for _ in range(episodes):
        probs = torch.sigmoid(theta)
        masks = torch.bernoulli(probs.detach().expand(samples, *shape), generator=generator)
        rewards = torch.tensor([reward(m) for m in masks])
        log_p = (masks * torch.log(probs) + (1 - masks) * torch.log1p(-probs)).sum((1, 2))
        loss = -((rewards - rewards.mean()) * log_p).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(rewards.mean().item())
    return torch.sigmoid(theta).detach(), history
