"""Pretrained text encoders for sequence classification: loading through ``helpers.nb.assets``,
IMDB subsets tokenised into tensors, a pooled classification head, training through
``helpers.training.fit`` and evaluation with ``helpers.metrics``.

The same code path serves every profile: ``small`` loads the packaged all-MiniLM-L6-v2,
``full`` a hub model such as ``FacebookAI/roberta-base``, and ``smoke`` a tiny randomly
initialised encoder of the same family, saved with ``save_pretrained`` into a temporary
folder and loaded back from there like the others.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from helpers.metrics import classification_metrics
from helpers.nb import assets
from helpers.text import read_labelled_csv
from helpers.training import History, autocast, fit, to_device, warmup_cosine_lambda

TINY_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class LoadedEncoder:
    """An encoder (``AutoModel``), its tokenizer, and the folder both were loaded from."""

    model: nn.Module
    tokenizer: Any
    path: str
    source: str  # "package" | "data_dir" | "hub" | "tiny-random"


def _check_name(name: str) -> None:
    if name not in assets.MODELS and "/" not in name:
        raise ValueError(f"unknown model name {name!r}: use one of {sorted(assets.MODELS)} "
                         "or a hub id of the form 'org/name' (e.g. 'FacebookAI/roberta-base')")


def load_encoder(name: str, profile: str, tiny: Mapping[str, int] | None = None,
                 **from_pretrained: Any) -> LoadedEncoder:
    """Load encoder ``name`` and its tokenizer through :func:`helpers.nb.assets.model_path`.

    With ``tiny`` (values for :data:`TINY_KEYS`), build instead a randomly initialised encoder
    of ``name``'s architecture at those sizes, keep ``name``'s tokenizer, save both with
    ``save_pretrained`` into a temporary folder and load them back from it.
    An unknown name raises ``ValueError``; a model missing offline raises ``AssetError``.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _check_name(name)
    resolved = assets.model_path(name, profile)
    path, source = resolved.path, resolved.source
    if tiny is not None:
        unknown = set(tiny) - set(TINY_KEYS)
        if unknown:
            raise ValueError(f"unknown tiny-encoder size(s) {sorted(unknown)}; valid: {TINY_KEYS}")
        config = AutoConfig.from_pretrained(path)
        for key, value in tiny.items():
            setattr(config, key, int(value))
        folder = tempfile.mkdtemp(prefix="tiny-encoder-")
        AutoModel.from_config(config).save_pretrained(folder)
        AutoTokenizer.from_pretrained(path).save_pretrained(folder)
        path, source = folder, "tiny-random"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, **from_pretrained)
    return LoadedEncoder(model, tokenizer, path, source)


# --------------------------------------------------------------------------- data

def _balanced_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if n > len(frame):
        raise ValueError(f"asked for {n} reviews, only {len(frame)} available")
    per_class = [n // 2, n - n // 2]
    parts = [frame[frame.label == c].sample(k, random_state=seed) for c, k in enumerate(per_class)]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def load_imdb(profile: str, n_train: int, n_val: int, n_test: int,
              seed: int = 0) -> dict[str, pd.DataFrame]:
    """Balanced, seeded IMDB subsets ``{"train", "val", "test"}`` (columns ``text, label``).

    ``train`` and ``val`` are disjoint draws from ``imdb/train.csv``; ``test`` from
    ``imdb/test.csv``. A malformed CSV (missing columns, labels other than 0/1) raises
    ``ValueError``.
    """
    folder = assets.dataset_dir("imdb", profile)
    train = read_labelled_csv(folder / "train.csv", "text")
    test = read_labelled_csv(folder / "test.csv", "text")
    both = _balanced_sample(train, n_train + n_val, seed)
    val_idx = np.concatenate([np.flatnonzero(both.label == c)[:k]
                              for c, k in enumerate([n_val // 2, n_val - n_val // 2])])
    val = both.iloc[np.sort(val_idx)].reset_index(drop=True)
    rest = both.drop(index=val_idx).reset_index(drop=True)
    return {"train": rest, "val": val, "test": _balanced_sample(test, n_test, seed)}


def head_tail(ids: list[int], budget: int, head: int) -> list[int]:
    """Keep the first ``head`` and the last ``budget - head`` tokens of a longer sequence."""
    return ids if len(ids) <= budget else ids[:head] + ids[len(ids) - (budget - head):]


class EncodedTexts(Dataset):
    """Texts tokenised once: ``input_ids``, ``attention_mask`` ``(N, max_length)`` and
    ``labels (N,)``; items are dicts of one row each.

    ``truncation="head"`` keeps the start of a long text; ``"head_tail"`` keeps its first
    quarter and last three quarters of the token budget (Sun et al. 2019 found head + tail
    best on IMDB: reviews often state the verdict at the end).
    """

    def __init__(self, tokenizer: Any, texts: list[str], labels: list[int], max_length: int,
                 truncation: str = "head"):
        if truncation == "head":
            enc = tokenizer(list(texts), truncation=True, max_length=max_length,
                            padding="max_length", return_tensors="pt")
        elif truncation == "head_tail":
            # one special token at each end, as BERT's [CLS] … [SEP] and RoBERTa's <s> … </s>
            budget = max_length - 2
            ids = tokenizer(list(texts), verbose=False)["input_ids"]
            ids = [x[:1] + head_tail(x[1:-1], budget, budget // 4) + x[-1:] for x in ids]
            enc = tokenizer.pad({"input_ids": ids}, padding="max_length", max_length=max_length,
                                return_tensors="pt")
        else:
            raise ValueError(f"unknown truncation {truncation!r}; valid: head, head_tail")
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
                "labels": self.labels[i]}

    def lengths(self) -> Tensor:
        """Tokens per text after truncation ``(N,)``."""
        return self.attention_mask.sum(1)


def trim_collate(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack rows and cut the padding columns no text of the batch uses."""
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    width = int(batch["attention_mask"].sum(1).max())
    batch["input_ids"] = batch["input_ids"][:, :width]
    batch["attention_mask"] = batch["attention_mask"][:, :width]
    return batch


def loader(data: Dataset, batch_size: int, shuffle: bool = False,
           generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader with :func:`trim_collate` (seeded by ``generator`` when shuffled)."""
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=trim_collate)


# --------------------------------------------------------------------------- model

def pool(hidden: Tensor, attention_mask: Tensor, pooling: str = "mean") -> Tensor:
    """``hidden (B, T, d)``, ``attention_mask (B, T)`` -> ``(B, d)``: the mean over real tokens
    (``"mean"``) or the first token (``"cls"``)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}; valid: mean, cls")
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class EncoderClassifier(nn.Module):
    """Encoder -> pooled vector -> dropout -> linear head.

    ``forward(input_ids (B, T), attention_mask (B, T))`` -> logits ``(B, n_classes)``.
    """

    def __init__(self, encoder: nn.Module, n_classes: int = 2, pooling: str = "mean",
                 dropout: float = 0.1, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.autocast_dtype = autocast_dtype  # e.g. bfloat16: the encoder in mixed precision
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled encoder output ``(B, d)``, float32 (the encoder runs under ``autocast_dtype``
        autocast when one is set)."""
        with autocast(input_ids.device.type, self.autocast_dtype):
            hidden = self.encoder(input_ids=input_ids,
                                  attention_mask=attention_mask).last_hidden_state
        return pool(hidden.float(), attention_mask, self.pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask)))


def classification_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, int]:
    """Mean cross-entropy of a batch and its size (the ``loss_fn`` of :func:`fit`)."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"]), len(batch["labels"])


@torch.no_grad()
def predict(model: nn.Module, batches, device: torch.device | str | None = None,
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, predicted labels and mean cross-entropy over ``batches`` (eval mode)."""
    was_training = model.training
    model.eval()
    labels, preds, loss, n = [], [], 0.0, 0
    for batch in batches:
        batch = to_device(batch, device)
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
        n += len(batch["labels"])
        labels.append(batch["labels"].cpu())
        preds.append(logits.argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(labels).numpy(), torch.cat(preds).numpy(), loss / max(n, 1)


def evaluate(model: nn.Module, batches, device: torch.device | str | None = None,
             prefix: str = "val_") -> dict[str, float]:
    """``{prefix}loss`` and ``{prefix}accuracy/precision/recall/f1`` over ``batches``."""
    y, p, loss = predict(model, batches, device)
    metrics = classification_metrics(y, p)
    return {f"{prefix}loss": loss} | {f"{prefix}{k}": v for k, v in metrics.items()}


@torch.no_grad()
def pooled_features(model: EncoderClassifier, batches, device: torch.device | str | None = None,
                    ) -> tuple[Tensor, Tensor]:
    """Pooled encoder features ``(N, d)`` and labels ``(N,)`` (for a linear probe)."""
    model.eval()
    feats, labels = [], []
    for batch in batches:
        batch = to_device(batch, device)
        feats.append(model.features(batch["input_ids"], batch["attention_mask"]).cpu())
        labels.append(batch["labels"].cpu())
    return torch.cat(feats), torch.cat(labels)


METHODS = ("head", "full", "houlsby", "pfeiffer")


def prepare(model: EncoderClassifier, method: str, bottleneck: int = 0,
            train_layernorm: bool = True, activation: str = "relu") -> EncoderClassifier:
    """A deep copy of ``model`` set up for ``method``: ``"head"`` (frozen encoder, linear
    probe), ``"full"`` (everything trains), ``"houlsby"``/``"pfeiffer"`` (frozen encoder with
    hand-written bottleneck adapters of size ``bottleneck``; the head always trains)."""
    from helpers import peft

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    model = copy.deepcopy(model)
    if method in ("houlsby", "pfeiffer"):
        peft.apply_adapters(model.encoder, bottleneck, method, train_layernorm, activation)
    else:
        for p in model.encoder.parameters():
            p.requires_grad_(method == "full")
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


# --------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    """History of :func:`fit` (one row per evaluation), the optimiser steps done before each
    evaluation, and the time spent in optimisation alone (evaluation excluded)."""

    history: History
    eval_steps: list[int]
    train_seconds: float
    eval_seconds: float

    @property
    def steps(self) -> int:
        return len(self.history.step_losses)

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / max(self.steps, 1)


def train_classifier(model: nn.Module, train_batches: DataLoader, val_batches, epochs: int,
                     lr: float, weight_decay: float = 0.01, warmup_ratio: float = 0.1,
                     evals_per_epoch: int = 1, device: torch.device | str | None = None,
                     desc: str = "train", clip_grad_norm: float | None = 1.0) -> TrainResult:
    """AdamW on the trainable parameters, linear warm-up then cosine decay, through
    :func:`helpers.training.fit`; validation metrics (``val_*``) ``evals_per_epoch`` times per
    epoch (each of ``fit``'s "epochs" is then a slice of a pass over ``train_batches``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    per_epoch = len(train_batches)
    chunks = max(1, min(evals_per_epoch, per_epoch))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine_lambda(max(1, int(warmup_ratio * total)), total))
    state: dict[str, Any] = {"epoch": None, "eval_seconds": 0.0, "steps": 0}
    eval_steps: list[int] = []

    def chunk(k: int) -> list:  # k = 1 .. epochs * chunks
        epoch, part = divmod(k - 1, chunks)
        if state["epoch"] != epoch:
            state["epoch"], state["batches"] = epoch, list(train_batches)
        part_batches = state["batches"][part * per_epoch // chunks:
                                         (part + 1) * per_epoch // chunks]
        state["steps"] += len(part_batches)
        return part_batches

    def timed_eval(m: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        out = evaluate(m, val_batches, device)
        state["eval_seconds"] += time.perf_counter() - start
        eval_steps.append(state["steps"])
        return out

    history = fit(model, chunk, classification_loss, optimizer, epochs * chunks,
                  scheduler=scheduler, evaluate=timed_eval, clip_grad_norm=clip_grad_norm,
                  device=device, desc=desc)
    seconds = sum(history.column("seconds"))
    return TrainResult(history, eval_steps, seconds - state["eval_seconds"], state["eval_seconds"])


def autograd_memory(model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, int]:
    """Bytes one training step holds, counted exactly on any device: ``weights`` (all
    parameters), ``grads`` and ``adam`` (2 moments) of the trainable ones, and ``activations``
    autograd saves for the backward pass of ``classification_loss`` on ``batch``
    (distinct storages, counted by a saved-tensors hook)."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = classification_loss(model, batch)
    del loss
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activations = sum(n for ptr, n in storages.items() if ptr not in param_ptrs)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"weights": weights, "grads": trainable, "adam": 2 * trainable,
            "activations": activations}


def train_probe(head: nn.Linear, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                epochs: int, lr: float, batch_size: int = 64, weight_decay: float = 0.01,
                generator: torch.Generator | None = None) -> History:
    """Train a linear ``head`` on cached features ``(X (N, d), y (N,))`` with AdamW through
    :func:`fit`; ``val_loss``/``val_accuracy``/... after every epoch."""
    batches = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                         generator=generator)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        return F.cross_entropy(m(batch[0]), batch[1]), len(batch[1])

    def evaluate_val(m: nn.Module) -> dict[str, float]:
        logits = m(val[0])
        metrics = classification_metrics(val[1], logits.argmax(-1))
        return {"val_loss": F.cross_entropy(logits, val[1]).item()} | {
            f"val_{k}": v for k, v in metrics.items()}

    return fit(head, batches, loss_fn, optimizer, epochs, evaluate=evaluate_val, desc="probe")
