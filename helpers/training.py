"""The one training loop every notebook uses, with callbacks and learning-rate schedules."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from helpers.nb.runtime import progress

Batch = Any
LossFn = Callable[[nn.Module, Batch], "Tensor | tuple[Tensor, int]"]


@dataclass
class History:
    """Per-epoch rows (``epoch``, ``train_loss``, evaluation metrics, ``lr``, ``seconds``) and
    every step's training loss."""

    rows: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        """One metric over epochs."""
        return [row[name] for row in self.rows if name in row]

    def to_frame(self):
        """The epoch rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("epoch")


class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally restore
    the best weights at the end."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 3,
                 restore_best: bool = True):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.patience, self.restore_best = patience, restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self._bad_epochs = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, row: Mapping[str, float], model: nn.Module) -> bool:
        if self.monitor not in row:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, not among {sorted(row)}")
        value = row[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self._bad_epochs = value, epoch, 0
            if self.restore_best:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self._bad_epochs += 1
        return self._bad_epochs >= self.patience

    def on_train_end(self, model: nn.Module) -> None:
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)


def to_device(batch: Batch, device: torch.device | str | None) -> Batch:
    """Move every tensor in a (nested) tuple/list/dict batch to ``device``."""
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def fit(
    model: nn.Module,
    train_batches: Iterable[Batch] | Callable[[int], Iterable[Batch]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    clip_grad_norm: float | None = None,
    device: torch.device | str | None = None,
    callbacks: Sequence[Any] = (),
    desc: str = "train",
) -> History:
    """Train ``model`` for ``epochs`` and return its :class:`History`.

    ``train_batches`` is re-iterable (a DataLoader) or a function ``epoch -> batches``
    (generated data). ``loss_fn(model, batch)`` returns the mean loss of the batch, or
    ``(mean loss, number of items)`` to weight the epoch average. ``scheduler`` steps after
    every optimiser step. ``evaluate(model)`` runs after each epoch in eval mode, under
    ``torch.no_grad``, and its metrics join the epoch's row. A callback's
    ``on_epoch_end(epoch, row, model)`` returning True stops training; its
    ``on_train_end(model)``, if any, runs at the end.
    """
    history = History()
    bar = progress(range(1, epochs + 1), desc=desc)
    for epoch in bar:
        model.train()
        start = time.perf_counter()
        total, count = 0.0, 0
        batches = train_batches(epoch) if callable(train_batches) else train_batches
        for batch in batches:
            out = loss_fn(model, to_device(batch, device))
            loss, n = out if isinstance(out, tuple) else (out, 1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            history.step_losses.append(loss.item())
            total += loss.item() * n
            count += n
        if count == 0:
            raise ValueError(f"epoch {epoch} had no training batches")
        row: dict[str, float] = {"epoch": epoch, "train_loss": total / count,
                                 "lr": optimizer.param_groups[0]["lr"]}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                row.update(evaluate(model))
        row["seconds"] = time.perf_counter() - start
        history.rows.append(row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("epoch", "lr")})
        stop = [bool(cb.on_epoch_end(epoch, row, model)) for cb in callbacks
                if hasattr(cb, "on_epoch_end")]
        if any(stop):
            break
    for cb in callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(model)
    return history


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn,
                  device: torch.device | str | None = None) -> float:
    """Held-out loss: the mean of ``loss_fn`` over ``batches`` weighted by the count each
    call returns (tokens, characters; 1 when it returns a bare loss), in eval mode (the
    model's mode is restored). Raises ``ValueError`` when there is nothing to score."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            out = loss_fn(model, to_device(batch, device))
            loss, n = out if isinstance(out, tuple) else (out, 1)
            total, count = total + loss.item() * n, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_loss got nothing to score (no batches or no tokens)")
    return total / count


def autocast(device_type: str, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast(device_type, dtype)`` (mixed precision: matrix products in ``dtype``,
    e.g. bfloat16 on a CPU with fast bfloat16 kernels, weights and optimiser kept in float32),
    or a no-op when ``dtype`` is None."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether ``device`` has fast bfloat16 matrix kernels: a CUDA GPU that supports bfloat16,
    or a CPU for which oneDNN has them (AVX-512 or AMX). On an AVX2-only CPU bfloat16 falls
    back to reference kernels, many times slower than float32 (``bench/precision.py``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def usable_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """``dtype``, except bfloat16 on a device without fast bfloat16 kernels: float32 there,
    with a printed line saying so (the numbers then differ a little from a bfloat16 run)."""
    if dtype != torch.bfloat16 or bf16_is_fast(device):
        return dtype
    print(f"bfloat16 was asked for, but this {torch.device(device).type} has no fast bfloat16 "
          "kernels (bench/precision.py): float32 is used instead")
    return torch.float32


def autocast_dtype(bf16: bool, device: torch.device | str) -> torch.dtype | None:
    """The ``dtype`` for :func:`autocast` that a config's ``bf16`` switch asks for: bfloat16
    where ``device`` computes it fast (:func:`usable_dtype`), else None (plain float32)."""
    if not bf16:
        return None
    return torch.bfloat16 if usable_dtype(torch.bfloat16, device) == torch.bfloat16 else None


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (a weight tied in two places counts once); only
    those with ``requires_grad`` when ``trainable_only``."""
    unique = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad or not trainable_only)


def noam_lambda(d_model: int, factor: float = 1.0, warmup: int = 4000) -> Callable[[int], float]:
    """The paper's schedule as a ``LambdaLR`` factor: f·d^(-1/2)·min(s^(-1/2), s·w^(-3/2)).

    Steps count from 1 (``LambdaLR`` passes 0 first, which is treated as step 1).
    """
    def rate(step: int) -> float:
        step = max(step, 1)
        return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)

    return rate


def warmup_cosine_lambda(warmup: int, total: int,
                         final_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps then cosine decay to ``final_ratio`` at ``total``."""
    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress_))

    return rate
