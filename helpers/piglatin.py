"""English -> Pig-Latin at the character level (CSC413 PA3, iust-1404-hw4 P6).

The task-specific pieces: the handout's loader filter, a vocabulary, a word-level split,
batches grouped by (source length, target length), a rule-based translator used as an
independent check, character error rate, the two models compared (the handout's Transformer,
:mod:`helpers.handout_attention`, and the helpers' pre-norm encoder-decoder) and one training
run with the handout's recipe through :func:`helpers.training.fit`.

Token ids: ``PAD = 0`` (only used when words of different lengths share a batch at
decoding time), ``SOS = 1``, ``EOS = 2``, then ``a``-``z`` and ``-``: 30 ids, i.e. the
handout's 29 tokens plus padding. A source is ``chars + EOS``; a target ``SOS + chars + EOS``.
"""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from helpers.handout_attention import HandoutTransformer
from helpers.training import EarlyStopping, History, evaluate_loss, fit, to_device
from helpers.transformer import (
    EncoderDecoder,
    Seq2SeqBatch,
    greedy_decode,
    make_model,
    make_seq2seq_batch,
    seq2seq_loss,
)

PAD, SOS, EOS = 0, 1, 2
CHARS = "abcdefghijklmnopqrstuvwxyz-"
TOKENS = ("<PAD>", "<SOS>", "<EOS>", *CHARS)
VOCAB_SIZE = len(TOKENS)  # 30 = the handout's 29 + padding
CHAR_TO_ID = {c: i for i, c in enumerate(TOKENS) if len(c) == 1}
VOWELS = frozenset("aeiou")
_WORD = re.compile(r"^[a-z-]+$")

Pair = tuple[str, str]


# ------------------------------------------------------------------------------ data

def load_pairs(path: str | Path) -> list[Pair]:
    """``(english, pig_latin)`` pairs of a ``english piglatin`` file, with the handout's
    filter: stripped, non-empty lines whose two tokens are made of ``a-z`` and ``-`` only."""
    pairs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        tokens = line.strip().split()
        if len(tokens) == 2 and all(_WORD.match(t) for t in tokens):
            pairs.append((tokens[0], tokens[1]))
    return pairs


def split_by_word(pairs: Iterable[Pair], val_fraction: float = 0.2,
                  seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """De-duplicate, then split 80/20 by *English word*: a word with two translations
    (the large file's ``qu`` words) goes wholly to one side, so no validation word is seen
    in training. Deterministic given ``seed``."""
    by_word: dict[str, set[str]] = defaultdict(set)
    for src, tgt in pairs:
        by_word[src].add(tgt)
    words = sorted(by_word)
    random.Random(seed).shuffle(words)
    n_val = round(len(words) * val_fraction)
    val_words, train_words = sorted(words[:n_val]), sorted(words[n_val:])
    return ([(w, t) for w in train_words for t in sorted(by_word[w])],
            [(w, t) for w in val_words for t in sorted(by_word[w])])


def references(pairs: Iterable[Pair]) -> dict[str, set[str]]:
    """Every accepted translation of each English word."""
    refs: dict[str, set[str]] = defaultdict(set)
    for src, tgt in pairs:
        refs[src].add(tgt)
    return dict(refs)


# ----------------------------------------------------------------------- rule-based

def _translate_part(part: str, qu_block: bool) -> str:
    if not part:
        return part  # "to-" -> "otay-": an empty hyphen part stays empty
    if part[0] in VOWELS:
        return part + "way"
    i = 0
    while i < len(part) and part[i] not in VOWELS and part[i] != "y":
        i += 1  # the consonant cluster; 'y' ends it: yellow -> yelloway, rhythm -> ythmrhay
    if qu_block and 0 < i < len(part) and part[i - 1] == "q" and part[i] == "u":
        i += 1  # "qu" moves as a block: quick -> ickquay (square -> aresquay)
    return part[i:] + part[:i] + "ay"


def to_pig_latin(word: str, qu_block: bool = True) -> str:
    """The dataset's rule: a vowel-initial part gets ``way``; otherwise its leading
    consonant cluster (up to the first vowel or ``y``; ``qu`` kept together when
    ``qu_block``) moves to the end, followed by ``ay``. Each hyphen-separated part is
    translated on its own: ``bond-street -> ondbay-eetstray``."""
    return "-".join(_translate_part(p, qu_block) for p in word.split("-"))


def rule_disagreements(pairs: Iterable[Pair], qu_block: bool = True) -> list[tuple[str, str, str]]:
    """``(english, dataset translation, rule translation)`` wherever the two differ."""
    return [(s, t, r) for s, t in pairs if (r := to_pig_latin(s, qu_block)) != t]


# --------------------------------------------------------------------------- tensors

def encode_source(word: str) -> list[int]:
    """Characters then EOS."""
    return [CHAR_TO_ID[c] for c in word] + [EOS]


def encode_target(word: str) -> list[int]:
    """SOS, characters, EOS."""
    return [SOS] + [CHAR_TO_ID[c] for c in word] + [EOS]


def decode_ids(ids: Sequence[int]) -> str:
    """Characters up to the first EOS; SOS and PAD are skipped."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i > EOS:
            out.append(TOKENS[i])
    return "".join(out)


def pad_sources(words: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Padded sources ``(B, S)`` and their mask ``(B, 1, S)`` (True = a real token)."""
    encoded = [encode_source(w) for w in words]
    src = torch.full((len(words), max(map(len, encoded))), PAD, dtype=torch.long)
    for row, ids in enumerate(encoded):
        src[row, : len(ids)] = torch.tensor(ids)
    return src, (src != PAD).unsqueeze(-2)


def bucket_batches(pairs: Sequence[Pair], batch_size: int,
                   generator: torch.Generator | None = None) -> list[Seq2SeqBatch]:
    """Teacher-forced batches of pairs with the same (source, target) length, as the
    handout groups them, so no padding is needed; at most ``batch_size`` pairs each.
    With a ``generator`` the pairs within a bucket and the batch order are shuffled."""
    buckets: dict[tuple[int, int], list[Pair]] = defaultdict(list)
    for src, tgt in pairs:
        buckets[(len(src), len(tgt))].append((src, tgt))
    batches = []
    for key in sorted(buckets):
        group = buckets[key]
        if generator is not None:
            group = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
        for start in range(0, len(group), batch_size):
            chunk = group[start: start + batch_size]
            src = torch.tensor([encode_source(s) for s, _ in chunk])  # (B, S)
            tgt = torch.tensor([encode_target(t) for _, t in chunk])  # (B, T)
            batches.append(make_seq2seq_batch(src, tgt, pad=PAD))
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def without_causal_mask(batch: Seq2SeqBatch) -> Seq2SeqBatch:
    """The same batch with a padding-only decoder mask ``(B, 1, T-1)``: every decoder
    position may attend to every target position, the later ones included."""
    return batch._replace(tgt_mask=(batch.tgt != PAD).unsqueeze(-2))


# -------------------------------------------------------------------------- metrics

def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def character_error_rate(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Total edit distance over total target length (corpus-level CER)."""
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"need as many predictions ({len(predictions)}) as targets "
                         f"({len(targets)}), and at least one")
    return sum(map(edit_distance, predictions, targets)) / sum(len(t) for t in targets)


def score_translations(predictions: dict[str, str],
                       refs: dict[str, set[str]]) -> dict[str, float]:
    """Exact-match word accuracy (a prediction is right if it equals any accepted
    translation) and CER against the closest accepted translation, over ``refs``' words."""
    words = sorted(refs)
    closest = [min(sorted(refs[w]), key=lambda t: edit_distance(predictions[w], t)) for w in words]
    hits = [predictions[w] in refs[w] for w in words]
    return {"exact_match": sum(hits) / len(words),
            "cer": character_error_rate([predictions[w] for w in words], closest)}


# ------------------------------------------------------------------------ the model

Translator = HandoutTransformer | EncoderDecoder
ARCHITECTURES = ("handout", "modern")


def build_translator(architecture: str, hidden: int, layers: int,
                     causal: bool = True) -> Translator:
    """An untrained translator over the 30 ids.

    ``"handout"``: the CSC413 handout's Transformer (:class:`HandoutTransformer`: single-head
    attention without an output map, residual sums without layer norm, a ReLU map of width
    ``hidden``); with ``causal=False`` its decoder's self-attention is the plain
    ``ScaledDotAttention``. ``"modern"``: the helpers' pre-norm encoder-decoder
    (:func:`make_model`) with one head and its output map, ``nn.LayerNorm``, a feed-forward of
    width ``hidden`` and no dropout; its decoder sees later characters only through the mask
    (:func:`without_causal_mask`)."""
    if architecture == "handout":
        return HandoutTransformer(VOCAB_SIZE, hidden, layers, causal=causal)
    if architecture == "modern":
        return make_model(VOCAB_SIZE, VOCAB_SIZE, N=layers, d_model=hidden, d_ff=hidden, h=1,
                          dropout=0.0, norm=nn.LayerNorm)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")


def max_target_length(word: str) -> int:
    """A safe decoding budget: SOS, the word, ``ay``/``way`` per hyphen part, EOS."""
    return len(word) + 3 * (word.count("-") + 1) + 2


def decoding_order(words: Iterable[str]) -> list[str]:
    """The distinct words sorted by (length, word): the order in which :func:`translate` batches
    them. Sorting by length alone would leave ties in set order, which changes with Python's
    per-process string hashing, and with it which words share a padded batch."""
    return sorted(set(words), key=lambda w: (len(w), w))


@torch.no_grad()
def translate(model: Translator, words: Sequence[str], batch_size: int = 1024,
              causal: bool = True, device: torch.device | str | None = None) -> dict[str, str]:
    """Greedy translations ``{word: pig_latin}``; words are batched in :func:`decoding_order`,
    and the decoder uses the causal mask or (``causal=False``) a full one, as it was trained."""
    model.eval()
    device = device or next(model.parameters()).device
    ordered = decoding_order(words)
    out: dict[str, str] = {}
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start: start + batch_size]
        src, src_mask = pad_sources(chunk)
        ys = greedy_decode(model, src.to(device), src_mask.to(device),
                           max(map(max_target_length, chunk)), SOS, EOS, pad=PAD, causal=causal)
        out.update(zip(chunk, (decode_ids(row[1:]) for row in ys.tolist()), strict=True))
    return out


@torch.no_grad()
def attention_maps(model: Translator, word: str, translation: str,
                   causal: bool = True) -> list[Tensor]:
    """Per decoder layer, the head-averaged attention over the source ``(T+1, S+1)``
    while reading ``SOS + translation`` (rows: decoder inputs; columns: ``word + EOS``)."""
    model.eval()
    device = next(model.parameters()).device
    batch = make_seq2seq_batch(torch.tensor([encode_source(word)]),
                               torch.tensor([encode_target(translation)]), pad=PAD)
    if not causal:
        batch = without_causal_mask(batch)
    batch = to_device(batch, device)
    model(batch.src, batch.tgt, batch.src_mask, batch.tgt_mask)
    return [layer.src_attn.last_weights[0].mean(0).cpu() for layer in model.decoder.layers]


# ------------------------------------------------------------------- the handout's recipe

def translation_loss(model: Translator, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
    """Teacher-forced NLL per target character (nats, EOS included, padding ignored) and the
    number of characters: :func:`evaluate_loss` weighs batches by it (a per-character loss)."""
    return seq2seq_loss(model, batch, pad=PAD)


def handout_loss(model: Translator, batch: Seq2SeqBatch) -> Tensor:
    """The handout's loss: the batch's mean cross-entropy per target character, returned without
    a count, so that :func:`fit` and :func:`evaluate_loss` give every batch the same weight, as
    the handout's mean over batch losses does (a bucket's last batch of 3 words counts as much
    as a full one of 512)."""
    return seq2seq_loss(model, batch, pad=PAD)[0]


def epoch_decay_lambda(steps_per_epoch: int, decay: float) -> Callable[[int], float]:
    """The handout's schedule as a per-step ``LambdaLR`` factor: the learning rate is multiplied
    by ``decay`` before every epoch, the first included, so epoch ``e = 1, 2, …`` runs at
    ``lr · decay^e`` (steps count from 0)."""
    def factor(step: int) -> float:
        return decay ** (step // steps_per_epoch + 1)

    return factor


@dataclass
class TranslatorRun:
    """One trained translator and what its training measured."""

    name: str
    model: Translator
    history: History
    seconds: float  # wall-clock
    cpu_seconds: float  # CPU time of this process (with one thread: the uncontended time)
    best_val_loss: float  # the handout's averaging: the mean over validation batches
    char_val_loss: float  # the same weights, loss per validation character
    best_epoch: int
    causal: bool

    @property
    def epochs(self) -> int:
        """Epochs trained (the best one plus ``patience`` when it stopped early)."""
        return len(self.history.rows)


def train_translator(name: str, model: Translator, train_pairs: Sequence[Pair],
                     val_pairs: Sequence[Pair], *, lr: float, lr_decay: float, batch_size: int,
                     epochs: int, patience: int, generator: torch.Generator,
                     device: torch.device | str = "cpu", causal: bool = True) -> TranslatorRun:
    """Train ``model`` with the handout's recipe through :func:`fit` and keep its best weights.

    Adam at ``lr``, multiplied by ``lr_decay`` before every epoch; cross-entropy averaged per
    batch (:func:`handout_loss`); batches of at most ``batch_size`` words of equal lengths, for
    validation too. Differences from the handout: the training batches are shuffled with
    ``generator`` (the handout keeps the order of a Python set, which changes from process to
    process), and training stops once the validation loss has not improved for ``patience``
    epochs (the handout waits ``patience + 1``) or after ``epochs``. ``causal=False`` trains the
    decoder with a padding-only self-attention mask."""
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(bucket_batches(train_pairs, batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, epoch_decay_lambda(steps_per_epoch, lr_decay))
    val_batches = bucket_batches(val_pairs, batch_size)
    if not causal:
        val_batches = [without_causal_mask(b) for b in val_batches]

    def batches(epoch: int) -> list[Seq2SeqBatch]:
        train = bucket_batches(train_pairs, batch_size, generator)
        return train if causal else [without_causal_mask(b) for b in train]

    stopper = EarlyStopping("val_loss", "min", patience=patience, restore_best=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(model, batches, handout_loss, optimizer, epochs, scheduler=scheduler,
                  device=device, callbacks=[stopper], desc=name,
                  evaluate=lambda m: {"val_loss": evaluate_loss(m, val_batches, handout_loss,
                                                                device)})
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    char_val_loss = evaluate_loss(model, val_batches, translation_loss, device)
    return TranslatorRun(name, model.eval(), history, seconds, cpu_seconds, float(stopper.best),
                         char_val_loss, int(stopper.best_epoch), causal)
