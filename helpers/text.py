"""Text data for language models: a byte-level BPE tokenizer, labelled comment datasets,
padding collation, and a TF-IDF sentiment classifier used as a judge of generated text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def read_labelled_csv(path: Path, text_column: str, label_column: str = "label") -> pd.DataFrame:
    """A CSV of texts and 0/1 labels, validated: one clear error for a malformed file."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist")
    frame = pd.read_csv(path)
    missing = {text_column, label_column} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; has {list(frame.columns)}")
    frame = frame.dropna(subset=[text_column, label_column])
    bad = ~frame[label_column].isin([0, 1])
    if bad.any():
        found = frame[label_column][bad].unique()[:5]
        raise ValueError(f"{path}: labels must be 0/1, found {found}")
    return frame.astype({text_column: str, label_column: int}).reset_index(drop=True)


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int,
                        special_tokens: Sequence[str] = (PAD, BOS, EOS)):
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` whose special tokens come first in
    the vocabulary (``<pad>`` = 0). Byte-level BPE never meets an unknown character, which
    matters for Persian text with mixed scripts, digits and emoji.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=special_tokens[0],
                                   bos_token=BOS if BOS in special_tokens else None,
                                   eos_token=EOS if EOS in special_tokens else None,
                                   additional_special_tokens=[t for t in special_tokens
                                                              if t not in (PAD, BOS, EOS)])


class ConditionedTextDataset(Dataset):
    """Each text becomes ``[<control token>] + tokens + [<eos>]``, cut to ``block_size``.

    ``control_tokens[label]`` is the special token that conditions generation on the label
    (e.g. ``{1: "<POS>", 0: "<NEG>"}``).
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int], tokenizer,
                 control_tokens: dict[int, str], block_size: int):
        self.items: list[Tensor] = []
        eos = tokenizer.convert_tokens_to_ids(EOS)
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        for ids, label in zip(encoded, labels, strict=True):
            control = tokenizer.convert_tokens_to_ids(control_tokens[int(label)])
            self.items.append(torch.tensor(([control] + ids)[: block_size - 1] + [eos]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tensor:
        return self.items[index]


def pad_collate(batch: Sequence[Tensor], pad_id: int = 0) -> dict[str, Tensor]:
    """Right-pad a list of ``(T_i,)`` id tensors to ``input_ids``, ``attention_mask`` and
    ``labels`` ``(B, max T_i)``; padded label positions are -100 (ignored by the loss)."""
    length = max(len(x) for x in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_sentiment_judge(texts: Sequence[str], labels: Sequence[int]):
    """TF-IDF (word 1-2-grams and character 2-5-grams) + logistic regression.

    Script-agnostic (works for Persian); used to judge whether generated text carries the
    requested sentiment. Returns a fitted scikit-learn pipeline.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True,
                        max_features=200_000),
    )
    judge = make_pipeline(features, LogisticRegression(max_iter=2000, C=4.0))
    return judge.fit(list(texts), list(labels))


def controllability(samples: dict[int, Sequence[str]], judge) -> dict[str, float]:
    """How well generated texts carry their requested label, and how varied they are.

    ``samples`` maps the requested label to its generated texts. Returns
    ``control_<label>`` (share the judge assigns to that label), ``distinct_1``,
    ``distinct_2`` (over all texts) and ``mean_words``.
    """
    import numpy as np

    from helpers.metrics import distinct_n

    report = {f"control_{label}": float(np.mean(judge.predict(list(texts)) == label))
              for label, texts in samples.items()}
    every = [t for texts in samples.values() for t in texts]
    report.update(distinct_1=distinct_n(every, 1), distinct_2=distinct_n(every, 2),
                  mean_words=float(np.mean([len(t.split()) for t in every])))
    return report


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar length, to waste little compute on padding.

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` batches, sort
    each pool by length (stably), cut it into batches, and shuffle the batch order. Every
    index is used once per epoch; the order depends on ``generator`` alone. Without a
    ``generator`` nothing is shuffled (the same batches every time, e.g. for evaluation).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int,
                 generator: torch.Generator | None, pool_batches: int = 50):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.generator = batch_size, generator
        self.pool = batch_size * pool_batches

    def _order(self, n: int) -> Tensor:
        if self.generator is None:
            return torch.arange(n)
        return torch.randperm(n, generator=self.generator)

    def __iter__(self):
        order = self._order(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[self.lengths[pool].argsort(stable=True)]
            batches += [pool[i:i + self.batch_size].tolist()
                        for i in range(0, len(pool), self.batch_size)]
        for i in self._order(len(batches)).tolist():
            yield batches[i]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.pool)
        return full * -(-self.pool // self.batch_size) + -(-rest // self.batch_size)
