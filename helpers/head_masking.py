"""Head masking: scale each attention head's output by a mask ``(n_layers, n_heads)`` (1 = keep,
0 = pruned) just before the output projection, and the tools built on it (Michel et al. 2019).

- :class:`MaskableMultiHeadAttention` (a :class:`helpers.attention.MultiHeadAttention` whose
  ``merge_heads`` weighs the heads) and :class:`HeadMaskedEncoderClassifier`, a small encoder
  classifier built from it; :class:`HeadMaskedModel` puts the same mask on a transformers
  ViT/DINOv2 through forward pre-hooks on each layer's ``o_proj``. All three have
  ``set_head_mask(mask)``, which is all the tools below need.
- :func:`head_importance` (``|dL/d xi_h|`` summed over batches, at a grad-requiring mask),
  :func:`iterative_pruning_order`, :func:`single_head_ablation`, :func:`pruning_curve`,
  :func:`reinforce_head_selection`; :func:`rank_heads`, :func:`masks_after`, :func:`head_labels`.
- :class:`CachedMaskEvaluator` evaluates a masked ViT classifier from cached per-layer token
  states, recomputing only from the first layer that has a masked head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from helpers.attention import MultiHeadAttention
from helpers.layers import Embeddings, PositionalEncoding, PositionwiseFeedForward
from helpers.transformer import EncoderLayer

Metric = TypeVar("Metric")

# ----------------------------------------------------------------------- maskable models


class MaskableMultiHeadAttention(MultiHeadAttention):
    """:class:`helpers.attention.MultiHeadAttention` whose heads are scaled by ``head_mask
    (n_heads,)`` before the output projection (1 = keep, 0 = pruned). ``head_mask`` may require
    grad: ``dL/d head_mask[h]`` is Michel et al.'s importance signal of head h."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__(d_model, n_heads, dropout, bias)
        self.head_mask: Tensor = torch.ones(n_heads)

    def merge_heads(self, heads: Tensor) -> Tensor:
        """Head h of ``heads (B, n_heads, Lq, d_k)`` times ``head_mask[h]``, then concatenated."""
        return super().merge_heads(heads * self.head_mask.to(heads.device).view(1, -1, 1, 1))


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


def _attention_modules(backbone: nn.Module) -> list[nn.Module]:
    from helpers.vit import encoder_layers

    return [layer.attention for layer in encoder_layers(backbone)]


class HeadMaskedModel(nn.Module):
    """``model`` (any module built on ``backbone``) with a head mask ``(L, H)``: head h of layer l
    is multiplied by ``mask[l, h]`` before that layer's ``o_proj``. Call :meth:`remove` (or use
    ``with``) to take the hooks off the backbone again."""

    def __init__(self, model: nn.Module, backbone: nn.Module):
        super().__init__()
        self.model = model
        modules = _attention_modules(backbone)
        self.n_layers = len(modules)
        self.n_heads = backbone.config.num_attention_heads
        self.head_mask: Tensor = torch.ones(self.n_layers, self.n_heads)
        self._handles = [m.o_proj.register_forward_pre_hook(partial(self._hook, i))
                         for i, m in enumerate(modules)]

    def _hook(self, layer: int, module: nn.Module, args: tuple[Tensor, ...]) -> Any:
        row = self.head_mask[layer]
        if not row.requires_grad and bool((row == 1).all()):
            return None
        x = args[0]  # (B, T, H * dh)
        heads = x.view(*x.shape[:-1], self.n_heads, -1)  # (B, T, H, dh)
        scaled = heads * row.to(x.device, x.dtype).view(self.n_heads, 1)
        return (scaled.reshape(x.shape), *args[1:])

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_layers, self.n_heads

    def set_head_mask(self, mask: Tensor) -> None:
        """Install ``mask (L, H)`` (kept by reference, so a grad-requiring mask gets gradients)."""
        if tuple(mask.shape) != self.shape:
            raise ValueError(f"mask must be {self.shape}, got {tuple(mask.shape)}")
        self.head_mask = mask

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def remove(self) -> None:
        """Take the hooks off (the wrapped model behaves as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> HeadMaskedModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


# ------------------------------------------------------------ importance and pruning


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
def evaluate_with_mask(model: nn.Module, mask: Tensor, evaluate: Callable[[nn.Module], Metric],
                       ) -> Metric:
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


def pruning_curve(model: nn.Module, evaluate: Callable[[nn.Module], Metric],
                  order: Sequence[tuple[int, int]], shape: tuple[int, int]) -> list[Metric]:
    """The metric after masking 0, 1, ..., len(order) heads cumulatively in ``order``; any value
    ``evaluate`` returns (an accuracy, or per-example correctness ``(N,)`` for paired errors)."""
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


def masks_after(order: Sequence[tuple[int, int]], counts: Sequence[int],
                shape: tuple[int, int]) -> list[Tensor]:
    """Head masks ``(L, H)`` with the first ``count`` heads of ``order`` removed, per count."""
    masks = []
    for count in counts:
        mask = torch.ones(shape)
        for layer, head in order[:count]:
            mask[layer, head] = 0
        masks.append(mask)
    return masks


def head_labels(heads: Sequence[tuple[int, int]]) -> str:
    """``[(11, 2), (0, 5)]`` -> ``"L11H2,L0H5"`` (0-based layer and head)."""
    return ",".join(f"L{layer}H{head}" for layer, head in heads)


def rank_heads(scores: Tensor, descending: bool = True) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs of ``scores (L, H)`` sorted by score (most important first)."""
    order = scores.flatten().argsort(descending=descending, stable=True).tolist()
    heads = scores.shape[1]
    return [(i // heads, i % heads) for i in order]


# --------------------------------------------------------------- cached ViT evaluation


class CachedMaskEvaluator:
    """Accuracy of a :class:`HeadMaskedModel` over a fixed set, from cached token states.

    ``states[l]`` are the tokens entering layer ``l`` ``(N, T, D)`` for l = 0..L-1, computed
    without masks; ``tail(hidden, start)`` maps the tokens entering layer ``start`` to logits.
    A call recomputes from the first layer with a masked head only. Each call appends to
    ``history`` its accuracy, mean cross-entropy and, per example, ``correct (N,)`` (bool) and
    ``losses (N,)``, so that two masks can be compared with a paired standard error.
    """

    def __init__(self, states: Sequence[Tensor], labels: Tensor, tail: Any,
                 batch_size: int = 256):
        self.states, self.labels, self.tail = list(states), labels, tail
        self.batch_size = batch_size
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def __call__(self, model: HeadMaskedModel) -> float:
        masked = (model.head_mask.detach() != 1).any(dim=1).nonzero()
        start = int(masked[0]) if len(masked) else len(self.states) - 1
        hidden = self.states[start]
        logits = torch.cat([self.tail(hidden[i:i + self.batch_size], start)
                            for i in range(0, len(hidden), self.batch_size)])
        correct = logits.argmax(-1) == self.labels
        losses = nn.functional.cross_entropy(logits.float(), self.labels, reduction="none")
        accuracy = correct.float().mean().item()
        self.history.append({"accuracy": accuracy, "loss": losses.mean().item(),
                             "correct": correct, "losses": losses})
        return accuracy
