"""Word-level text pipeline for recurrent classifiers: tokenisation, a vocabulary built from the
training texts only, fixed-length encoding, and padded, length-bucketed batches.

Batches are batch-first: ``ids (B, L)`` right-padded with ``pad_id = 0``, ``lengths (B,)``,
``labels (B,)``; ``L`` is the longest review of the batch, so little compute goes to padding.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from helpers.text import LengthBucketSampler

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def tokenize(text: str) -> list[str]:
    """Lower-cased words (with an apostrophe suffix: ``don't``), digits, ``!`` and ``?``;
    HTML line breaks and other punctuation are dropped."""
    return _TOKEN.findall(_HTML_BREAK.sub(" ", text).lower())


class Vocabulary:
    """Token <-> id; ``<pad>`` = 0, ``<unk>`` = 1, then tokens by decreasing training count
    (ties alphabetical), at most ``max_size`` ids in all, each seen at least ``min_freq`` times."""

    def __init__(self, tokens: Sequence[str]):
        self.itos: list[str] = [PAD, UNK, *tokens]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("duplicate tokens in the vocabulary")

    pad_id, unk_id = 0, 1

    @classmethod
    def build(cls, tokenized: Sequence[Sequence[str]], max_size: int,
              min_freq: int = 1) -> Vocabulary:
        """From the tokenised TRAINING texts only (never the test set)."""
        if max_size < 3:
            raise ValueError(f"max_size must leave room for one token, got {max_size}")
        counts = Counter(t for tokens in tokenized for t in tokens)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq),
                        key=lambda t: (-counts[t], t))
        return cls(ranked[:max_size - 2])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids, ``<unk>`` for tokens outside the vocabulary."""
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.itos[i] for i in ids]


def subword_embeddings(vocab: Vocabulary, tokenizer: Any, table: Tensor, dim: int) -> Tensor:
    """Initial word embeddings ``(len(vocab), dim)`` from a pretrained subword embedding table
    ``(n_subwords, D)`` (a transformer's input embeddings) and its ``tokenizer`` (HF: called on a
    list of words without special tokens): each word's subword vectors averaged, centred,
    projected on their ``dim`` leading principal components and scaled to unit standard
    deviation, the scale of ``nn.Embedding``'s own initialisation. ``<pad>`` and ``<unk>`` get
    zeros (the mean word)."""
    if not 0 < dim <= table.shape[1]:
        raise ValueError(f"dim must be in 1..{table.shape[1]} (the table's width), got {dim}")
    words = vocab.itos[2:]
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"]
    means = torch.stack([table[ids or [tokenizer.unk_token_id]].float().mean(0) for ids in pieces])
    centred = means - means.mean(0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)  # rows: principal axes
    projected = centred @ components[:dim].T
    out = torch.zeros(len(vocab), dim)
    out[2:] = projected / projected.std()
    return out


def encode_texts(tokenized: Sequence[Sequence[str]], vocab: Vocabulary, max_len: int,
                 keep: str = "tail") -> tuple[Tensor, Tensor]:
    """``ids (N, max_len)`` right-padded with 0 and ``lengths (N,)`` (at least 1: an empty text
    becomes one ``<unk>``). Longer texts keep their last (``keep="tail"``) or first
    (``"head"``) ``max_len`` tokens, or (``"head_tail"``) their first ``max_len // 4`` and last
    ``max_len - max_len // 4`` tokens (opening and conclusion, as Sun et al. 2019 cut reviews)."""
    if keep not in ("head", "tail", "head_tail"):
        raise ValueError(f"keep must be 'head', 'tail' or 'head_tail', got {keep!r}")
    ids = torch.zeros(len(tokenized), max_len, dtype=torch.long)
    lengths = torch.ones(len(tokenized), dtype=torch.long)
    for row, tokens in enumerate(tokenized):
        enc = vocab.encode(tokens) or [vocab.unk_id]
        if len(enc) > max_len:
            head = {"head": max_len, "tail": 0, "head_tail": max_len // 4}[keep]
            enc = enc[:head] + enc[len(enc) - (max_len - head):]
        ids[row, :len(enc)] = torch.tensor(enc)
        lengths[row] = len(enc)
    return ids, lengths


def batches(ids: Tensor, lengths: Tensor, labels: Tensor, batch_size: int,
            generator: torch.Generator | None = None, shuffle: bool = True,
            ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(ids (B, L), lengths (B,), labels (B,))`` with ``L = max(lengths)`` of the batch.

    ``shuffle=True``: length-bucketed random batches (:class:`helpers.text.LengthBucketSampler`,
    order from ``generator``); ``False``: in order (evaluation)."""
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a generator")
        index_batches: Iterator[list[int]] = iter(LengthBucketSampler(lengths.tolist(), batch_size,
                                                                      generator))
    else:
        index_batches = (list(range(i, min(i + batch_size, len(ids))))
                         for i in range(0, len(ids), batch_size))
    for index in index_batches:
        index_t = torch.as_tensor(index)
        width = int(lengths[index_t].max())
        yield ids[index_t, :width], lengths[index_t], labels[index_t]


@dataclass
class EncodedReviews:
    """Encoded labelled texts: ``ids (N, max_len)`` right-padded with 0, ``lengths (N,)``,
    ``labels (N,)``."""

    ids: Tensor
    lengths: Tensor
    labels: Tensor

    @classmethod
    def encode(cls, tokenized: Sequence[Sequence[str]], labels: Sequence[int], vocab: Vocabulary,
               max_len: int, keep: str = "tail") -> EncodedReviews:
        """:func:`encode_texts` of ``tokenized`` with their ``labels``."""
        if len(tokenized) != len(labels):
            raise ValueError(f"{len(tokenized)} texts for {len(labels)} labels")
        ids, lengths = encode_texts(tokenized, vocab, max_len, keep)
        return cls(ids, lengths, torch.as_tensor(labels, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                shuffle: bool = True) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """:func:`batches` of these texts."""
        return batches(self.ids, self.lengths, self.labels, batch_size, generator, shuffle)
