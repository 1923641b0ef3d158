"""Image captioning with a frozen ViT encoder and a GPT-2 decoder inside a transformers
``VisionEncoderDecoderModel``: caption files (Flickr8k / COCO in one layout), encoder features
pooled to a few tokens and cached (``helpers.nb.cache``), a compact vocabulary over the GPT-2
tokenizer, training batches that draw one of an image's captions at random per epoch, held-out
batches of every caption, the loss for :func:`helpers.training.fit` and
:func:`helpers.training.evaluate_loss`, decoding (greedy / beam, HF ``generate`` with
``encoder_outputs``) and a subject-word check (BLEU and the other caption metrics are in
:mod:`helpers.metrics`).

The encoder is frozen, so its output is computed once per image (:func:`image_features`) and
passed to the model as ``encoder_outputs``; ``VisionEncoderDecoderModel`` then skips its encoder
and applies its own ``enc_to_dec_proj`` (encoder width -> decoder width) before the decoder's
cross-attention, exactly as it does after running the encoder on ``pixel_values``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------------- data

def clean_caption(text: str) -> str:
    """Lower-case, keep letters/digits/apostrophes, single spaces: ``"A dog runs ."`` ->
    ``"a dog runs"``."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def read_captions(folder: str | Path, split: str, limit: int | None = None) -> list[dict]:
    """Rows ``{"image": absolute path, "captions": [cleaned str, ...]}`` of ``split`` in
    ``folder/captions.jsonl`` (the flickr8k / coco_captions layout), the first ``limit``."""
    folder = Path(folder)
    rows = []
    with (folder / "captions.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == split:
                rows.append({"image": str(folder / row["image"]),
                             "captions": [clean_caption(c) for c in row["captions"]]})
    return rows[:limit]


def load_image(path: str | Path) -> np.ndarray:
    """An RGB image as ``(H, W, 3)`` uint8."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# ----------------------------------------------------------------------------- features

def pool_tokens(tokens: Tensor, grid: int) -> Tensor:
    """Encoder tokens ``(N, 1 + P, D)`` (CLS then a square patch grid) -> ``(N, 1 + grid², D)``:
    CLS followed by the patch grid average-pooled to ``grid x grid``; ``grid = 0`` keeps all."""
    if grid == 0:
        return tokens
    n, t, d = tokens.shape
    side = int(round((t - 1) ** 0.5))
    if side * side != t - 1:
        raise ValueError(f"{t - 1} patch tokens do not form a square grid")
    patches = tokens[:, 1:].transpose(1, 2).reshape(n, d, side, side)   # (N, D, s, s)
    pooled = nn.functional.adaptive_avg_pool2d(patches, grid)           # (N, D, g, g)
    return torch.cat([tokens[:, :1], pooled.flatten(2).transpose(1, 2)], dim=1)


def features_cache_path(model_name: str, images: Sequence[str], size: int, grid: int,
                        mean: Sequence[float], std: Sequence[float]) -> Path:
    """``captioning_<key>.pt`` in the shared cache (:mod:`helpers.nb.cache`), the key over the
    model name, the image list (file names), resolution, pooling grid and normalisation."""
    from helpers.nb import cache

    key = cache.cache_key(model_name, [Path(p).name for p in images], size, grid, list(mean),
                          list(std), "float32")
    return cache.cache_dir("captioning-features") / f"captioning_{key}.pt"


@torch.no_grad()
def image_features(encoder: nn.Module, images: Sequence[str], size: int, grid: int,
                   mean: Sequence[float], std: Sequence[float], batch_size: int = 32,
                   cache: Path | None = None, progress: Callable | None = None,
                   device: torch.device | str = "cpu") -> tuple[Tensor, bool]:
    """Frozen-encoder features of the image files ``images``: ``last_hidden_state`` pooled by
    :func:`pool_tokens`, ``(N, 1 + grid², D)`` float32 on the CPU, and whether they came from
    ``cache`` (a file written after a cold run, float32 like the computed features, so that a
    warm run equals a cold one)."""
    from helpers.nb.cache import atomic_path
    from helpers.vit import preprocess

    if cache is not None and cache.exists():
        return torch.load(cache).float(), True
    encoder.eval().to(device)
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, desc="image features") if progress else starts:
        pixels = preprocess([load_image(p) for p in images[start:start + batch_size]],
                            size, mean, std).to(device)                 # (B, 3, size, size)
        tokens = encoder(pixel_values=pixels).last_hidden_state        # (B, 1 + P, D)
        chunks.append(pool_tokens(tokens, grid).float().cpu())
    feats = torch.cat(chunks)
    if cache is not None:
        with atomic_path(cache) as tmp:
            torch.save(feats, tmp)
    return feats, False


# ---------------------------------------------------------------------------- vocabulary

class CaptionVocab:
    """Token ids for the decoder, from the GPT-2 BPE tokenizer.

    ``compact=True``: only the GPT-2 tokens seen ``min_count`` times in the training captions,
    renumbered after four specials (pad 0, bos 1, eos 2, unk 3), so the decoder's embedding and
    output layer stay small. ``compact=False``: GPT-2's own ids, with its ``<|endoftext|>`` as
    bos, eos and pad (for a pretrained GPT-2 decoder)."""

    PAD, BOS, EOS, UNK = 0, 1, 2, 3

    def __init__(self, tokenizer, texts: Sequence[str] = (), compact: bool = True,
                 min_count: int = 1):
        self.tokenizer, self.compact = tokenizer, compact
        if compact:
            counts = Counter(t for text in texts for t in self._bpe(text))
            self.gpt2_ids = [-1, -1, -1, -1] + sorted(i for i, c in counts.items()
                                                      if c >= min_count)
            self.index = {g: i for i, g in enumerate(self.gpt2_ids) if g >= 0}
            self.pad, self.bos, self.eos, self.unk = self.PAD, self.BOS, self.EOS, self.UNK
        else:
            end = tokenizer.eos_token_id
            self.pad = self.bos = self.eos = end
            self.unk = end

    def _bpe(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text)

    def __len__(self) -> int:
        return len(self.gpt2_ids) if self.compact else len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """``[bos] + tokens + [eos]``."""
        ids = self._bpe(text)
        if self.compact:
            ids = [self.index.get(i, self.unk) for i in ids]
        return [self.bos, *ids, self.eos]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` up to the first eos (a leading bos skipped; specials dropped)."""
        ids = list(ids)
        if ids and ids[0] == self.bos:
            ids = ids[1:]
        if self.eos in ids:
            ids = ids[:ids.index(self.eos)]
        if self.compact:
            ids = [self.gpt2_ids[i] for i in ids if i > self.UNK]
        return self.tokenizer.decode(ids).strip()

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
        """Padded ids ``(B, L)`` and mask ``(B, L)`` (1 = real token), ``L <= max_len``;
        longer captions are cut (their eos then falls off)."""
        seqs = [self.encode(t)[:max_len] for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
        return ids, mask


# --------------------------------------------------------------------------------- model

def small_decoder(vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int,
                  dropout: float = 0.1, seed: int = 0) -> nn.Module:
    """A GPT-2-architecture decoder with cross-attention, randomly initialised."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, resid_pdrop=dropout,
                        embd_pdrop=dropout, attn_pdrop=dropout, add_cross_attention=True,
                        bos_token_id=CaptionVocab.BOS, eos_token_id=CaptionVocab.EOS,
                        pad_token_id=CaptionVocab.PAD)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def pretrained_decoder(path: str) -> nn.Module:
    """A pretrained GPT-2 (e.g. distilgpt2) with freshly initialised cross-attention layers."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path, add_cross_attention=True)


def build_captioner(encoder: nn.Module, decoder: nn.Module, vocab: CaptionVocab,
                    freeze_encoder: bool = True) -> nn.Module:
    """``VisionEncoderDecoderModel(encoder, decoder)`` with bos/eos/pad set for ``generate``;
    with ``freeze_encoder`` the encoder's parameters get no gradient."""
    from transformers import VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = vocab.bos
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = vocab.bos, vocab.eos, vocab.pad
    if freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model


def _encoder_outputs(features: Tensor):
    from transformers.modeling_outputs import BaseModelOutput

    return BaseModelOutput(last_hidden_state=features)


def caption_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
    """Next-token cross-entropy of ``batch = (features (B, S, D), ids (B, L), mask (B, L))``
    (padding ignored) and the number of predicted tokens, for :func:`helpers.training.fit`."""
    feats, ids, mask = batch
    out = model(encoder_outputs=_encoder_outputs(feats), decoder_input_ids=ids[:, :-1],
                decoder_attention_mask=mask[:, :-1])
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)           # (B, L-1)
    loss = nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten(),
                                       ignore_index=-100)
    return loss, int(mask[:, 1:].sum())


def caption_batches(features: Tensor, captions: Sequence[Sequence[str]], vocab: CaptionVocab,
                    batch_size: int, max_len: int, seed: int = 0, bucket: int = 1,
                    ) -> Callable[[int], Iterator[Batch]]:
    """``epoch -> batches`` for :func:`helpers.training.fit`: each epoch every image appears once,
    in a shuffled order, with one of its captions drawn at random (seeded by ``seed`` and the
    epoch). With ``bucket > 1``, batches come from :class:`helpers.text.LengthBucketSampler`:
    each run of ``bucket * batch_size`` shuffled images is sorted by caption length before it
    is cut into batches (less padding), and the batches are shuffled."""
    from helpers.text import LengthBucketSampler

    def batches(epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        picks = torch.randint(0, 1 << 30, (len(features),), generator=gen).tolist()
        texts = [caps[pick % len(caps)] for caps, pick in zip(captions, picks, strict=True)]
        lengths = [len(t.split()) if bucket > 1 else 0 for t in texts]  # 0: plain shuffle
        for idx in LengthBucketSampler(lengths, batch_size, gen, pool_batches=max(1, bucket)):
            ids, mask = vocab.encode_batch([texts[i] for i in idx], max_len)
            yield features[idx], ids, mask

    return batches


def heldout_batches(features: Tensor, captions: Sequence[Sequence[str]], vocab: CaptionVocab,
                    max_len: int, batch_size: int = 64) -> Iterator[Batch]:
    """Batches of every caption of every image, in order (no sampling): the held-out set of
    :func:`helpers.training.evaluate_loss` with :func:`caption_loss`."""
    pairs = [(i, c) for i, caps in enumerate(captions) for c in caps]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids, mask = vocab.encode_batch([c for _, c in chunk], max_len)
        yield features[[i for i, _ in chunk]], ids, mask


@torch.no_grad()
def generate_captions(model: nn.Module, features: Tensor, vocab: CaptionVocab,
                      num_beams: int = 1, max_new_tokens: int = 20, batch_size: int = 64,
                      device: torch.device | str = "cpu", progress: Callable | None = None,
                      **generate_kwargs) -> list[str]:
    """Captions for encoder features ``(N, S, D)`` by HF ``generate`` (greedy when
    ``num_beams == 1``, else beam search), decoded to text."""
    model.eval()
    out: list[str] = []
    starts = range(0, len(features), batch_size)
    for start in progress(starts, desc=f"decode beams={num_beams}") if progress else starts:
        feats = features[start:start + batch_size].to(device)
        ids = model.generate(encoder_outputs=_encoder_outputs(feats), num_beams=num_beams,
                             do_sample=False, max_new_tokens=max_new_tokens,
                             decoder_start_token_id=vocab.bos, bos_token_id=vocab.bos,
                             eos_token_id=vocab.eos, pad_token_id=vocab.pad, **generate_kwargs)
        out.extend(vocab.decode(row) for row in ids.tolist())
    return out


# ------------------------------------------------------------------------------- metrics

SKIP_WORDS = frozenset((
    "a", "an", "the", "two", "three", "four", "five", "several", "some", "one", "many", "group",
    "of", "and", "in", "on", "with", "at", "is", "are", "black", "white", "brown", "red", "blue",
    "green", "yellow", "orange", "pink", "purple", "gray", "grey", "young", "little", "small",
    "large", "big", "old", "tan", "dark", "light", "wet", "man's"))


def subject_word(caption: str) -> str | None:
    """The caption's first word that is not an article, number, colour or size adjective (a crude
    stand-in for its main object): ``"a black dog runs"`` -> ``"dog"``."""
    return next((w for w in caption.split() if w not in SKIP_WORDS), None)


def subject_in_references(caption: str, references: Sequence[str]) -> bool:
    """Whether :func:`subject_word` of ``caption`` (or its singular, trailing ``s`` dropped)
    occurs as a word in one of ``references``."""
    word = subject_word(caption)
    if word is None:
        return False
    words = {w for r in references for w in clean_caption(r).split()}
    return word in words or word.rstrip("s") in words or word + "s" in words
