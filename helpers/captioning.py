"""Image captioning with a ViT encoder and a GPT-2 decoder inside a transformers
``VisionEncoderDecoderModel``: caption files (Flickr8k / COCO in one layout), encoder features
pooled to a few tokens, a compact vocabulary over the GPT-2 tokenizer, training batches that
draw one of an image's captions at random per epoch, held-out batches of every caption, the loss
for :func:`helpers.training.fit` and :func:`helpers.training.evaluate_loss`, decoding (greedy /
beam, n-gram blocking and repetition penalty through HF ``generate`` with ``encoder_outputs``,
the setting chosen on held-out images) and a subject-word check (BLEU and the other caption
metrics are in :mod:`helpers.metrics`).

The encoder's frozen part runs once per image: the tokens entering its first trainable layer
come from the shared ViT token cache (:func:`helpers.vit.cached_layer_inputs`, also used by
iust-1404-hw4 Q5), and only the trainable layers run in each training step
(:func:`encoder_features`; pixels when every layer trains). The pooled result is passed to the
model as ``encoder_outputs``; ``VisionEncoderDecoderModel`` then skips its encoder and applies
its own ``enc_to_dec_proj`` (encoder width -> decoder width) before the decoder's
cross-attention, exactly as it does after running the encoder on ``pixel_values``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from helpers import vit
from helpers.vit import load_image

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


class ImageFiles:
    """Pixels of image files, loaded and preprocessed when indexed (the encoder's input when all
    of it trains): ``files[rows]`` (a list or tensor of row numbers) -> ``(len(rows), 3, size,
    size)``; ``files[a:b]`` -> the :class:`ImageFiles` of those files (like a tensor's rows)."""

    def __init__(self, paths: Sequence[str], size: int, mean: Sequence[float],
                 std: Sequence[float]):
        self.paths, self.size, self.mean, self.std = list(paths), size, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> Tensor | ImageFiles:
        if isinstance(index, slice):
            return ImageFiles(self.paths[index], self.size, self.mean, self.std)
        rows = torch.arange(len(self.paths))[index].reshape(-1).tolist()
        return vit.preprocess([load_image(self.paths[i]) for i in rows], self.size, self.mean,
                              self.std)


def encoder_inputs(encoder: nn.Module, images: Sequence[str], start_layer: int, size: int,
                   mean: Sequence[float], std: Sequence[float], batch_size: int = 32,
                   cache: bool = False, progress: Callable | None = None,
                   device: torch.device | str = "cpu", bf16: bool = False,
                   ) -> tuple[Tensor | ImageFiles, bool]:
    """What the trainable part of the encoder reads, and whether it came from the cache: the
    token states entering layer ``start_layer`` ``(N, T, D)`` (float32; with ``cache``, from the
    shared ViT token cache :func:`helpers.vit.cached_layer_inputs`), or the images themselves
    (:class:`ImageFiles`) when ``start_layer == 0``."""
    if start_layer == 0:
        return ImageFiles(images, size, mean, std), False
    if cache:
        return vit.cached_layer_inputs(encoder, images, start_layer, size, mean, std, batch_size,
                                       progress, device, bf16)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        tokens = vit.encode_images(encoder.to(device), images, start_layer, size, mean, std,
                                   batch_size, progress, device)
    return tokens.float(), False


def encoder_features(encoder: nn.Module, inputs: Tensor, start_layer: int, grid: int) -> Tensor:
    """The decoder's memory ``(B, 1 + grid², D)``: the encoder from layer ``start_layer`` on
    (:func:`helpers.vit.tokens_from`; ``inputs`` are pixels when ``start_layer == 0``), its
    patch tokens pooled by :func:`pool_tokens`. Differentiable: trains the encoder's last
    layers when their parameters require grad."""
    return pool_tokens(vit.tokens_from(encoder, inputs, start_layer), grid)


@torch.no_grad()
def encode(encoder: nn.Module, inputs: Tensor | ImageFiles, start_layer: int, grid: int,
           batch_size: int = 64, device: torch.device | str = "cpu") -> Tensor:
    """:func:`encoder_features` of every row of ``inputs``, batch by batch, in eval mode:
    ``(N, 1 + grid², D)`` float32 on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = [encoder_features(encoder, inputs[torch.arange(i, min(i + batch_size, len(inputs)))]
                            .to(device), start_layer, grid).float().cpu()
           for i in range(0, len(inputs), batch_size)]
    encoder.train(was_training)
    return torch.cat(out)


def image_features(encoder: nn.Module, images: Sequence[str], size: int, grid: int,
                   mean: Sequence[float], std: Sequence[float], batch_size: int = 32,
                   cache: bool = False, progress: Callable | None = None,
                   device: torch.device | str = "cpu") -> tuple[Tensor, bool]:
    """Frozen-encoder features of the image files ``images``: ``last_hidden_state`` pooled by
    :func:`pool_tokens`, ``(N, 1 + grid², D)`` float32 on the CPU, and whether the tokens
    entering the last layer came from the shared cache (``cache``)."""
    last = len(vit.encoder_layers(encoder)) - 1
    inputs, hit = encoder_inputs(encoder, images, last, size, mean, std, batch_size, cache,
                                 progress, device)
    return encode(encoder, inputs, last, grid, batch_size, device), hit


# ---------------------------------------------------------------------------- vocabulary

FUNCTION_WORDS = frozenset((
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "into", "onto", "by", "for",
    "from", "with", "near", "over", "under", "while", "as", "is", "are", "his", "her", "its",
    "their", "he", "she", "it", "they", "one", "another", "other", "two", "three", "four"))

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

    def content_word_starts(self, function_words: Collection[str] = FUNCTION_WORDS) -> Tensor:
        """``(len(self),)`` bool: the ids whose GPT-2 token begins a word (a leading space) of
        letters that is not in ``function_words`` - the tokens :class:`RepeatedWordBlock`
        forbids a second time."""
        gpt2_ids = self.gpt2_ids if self.compact else range(len(self.tokenizer))
        mask = torch.zeros(len(self), dtype=torch.bool)
        for i, g in enumerate(gpt2_ids):
            if g >= 0:
                token = self.tokenizer.convert_ids_to_tokens(g)
                word = token[1:]
                mask[i] = (token.startswith("\u0120") and word.isalpha()  # Ġ: a space
                           and word not in function_words)
        return mask

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
    """A pretrained GPT-2 (e.g. distilgpt2) with freshly initialised cross-attention layers
    (transformers 5 has no ``is_decoder`` flag to set: GPT-2 is a decoder)."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path, add_cross_attention=True)


def build_captioner(encoder: nn.Module, decoder: nn.Module, vocab: CaptionVocab,
                    trainable_encoder_layers: int = 0) -> nn.Module:
    """``VisionEncoderDecoderModel(encoder, decoder)`` with bos/eos/pad set for ``generate``. The
    encoder's parameters get no gradient but those of its last ``trainable_encoder_layers``
    layers and its final norm (all of it, embeddings included, when that is every layer)."""
    from transformers import VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = vocab.bos
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = vocab.bos, vocab.eos, vocab.pad
    set_trainable_encoder_layers(model, trainable_encoder_layers)
    return model


def set_trainable_encoder_layers(model: nn.Module, count: int) -> list[nn.Parameter]:
    """Let only the last ``count`` encoder layers and the final norm of ``model.encoder`` train
    (every parameter when ``count`` is the number of layers; none when 0); returns them."""
    encoder = model.encoder
    layers = vit.encoder_layers(encoder)
    trainable = [encoder] if count >= len(layers) else (
        [*layers[len(layers) - count:], encoder.layernorm] if count else [])
    for p in encoder.parameters():
        p.requires_grad_(False)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    return [p for p in encoder.parameters() if p.requires_grad]


def _encoder_outputs(features: Tensor):
    from transformers.modeling_outputs import BaseModelOutput

    return BaseModelOutput(last_hidden_state=features)


def caption_loss(model: nn.Module, batch: Batch, start_layer: int | None = None,
                 grid: int = 0, bf16: bool = False, label_smoothing: float = 0.0,
                 ) -> tuple[Tensor, int]:
    """Next-token cross-entropy of ``batch = (features, ids (B, L), mask (B, L))`` (padding
    ignored) and the number of predicted tokens, for :func:`helpers.training.fit`. ``features``
    are the decoder's memory ``(B, S, D)``, or with ``start_layer`` the encoder's inputs at that
    layer, run through :func:`encoder_features` (pooled to ``grid``; under bfloat16 autocast
    with ``bf16``) inside the step. ``label_smoothing`` ε: the target puts 1 - ε on the next
    token and ε spread over the whole vocabulary (for training; held-out losses use 0)."""
    feats, ids, mask = batch
    if start_layer is not None:
        with torch.autocast(feats.device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = encoder_features(model.encoder, feats, start_layer, grid)
        feats = feats.float()
    out = model(encoder_outputs=_encoder_outputs(feats), decoder_input_ids=ids[:, :-1],
                decoder_attention_mask=mask[:, :-1])
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)           # (B, L-1)
    loss = nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten(),
                                       ignore_index=-100, label_smoothing=label_smoothing)
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
def sequence_log_probs(model: nn.Module, features: Tensor, ids: Tensor, vocab: CaptionVocab,
                       ) -> Tensor:
    """Total log-probability of each caption ``ids (N, L)`` (bos first; scored up to and with its
    first eos, the rest ignored) given the decoder memory ``features (N, S, D)``: ``(N,)``."""
    after = ids[:, 1:]
    is_eos = (after == vocab.eos).long()
    before_end = is_eos.cumsum(1) - is_eos == 0  # up to and with the first eos
    mask = torch.cat([torch.ones_like(ids[:, :1]), before_end.long()], 1)
    logits = model(encoder_outputs=_encoder_outputs(features), decoder_input_ids=ids[:, :-1],
                   decoder_attention_mask=mask[:, :-1]).logits
    token_lp = logits.log_softmax(-1).gather(-1, after[..., None])[..., 0]  # (N, L-1)
    return (token_lp * mask[:, 1:]).sum(1)


class RepeatedWordBlock:
    """A ``generate`` logits processor against two kinds of stutter: a token in ``blocked``
    (``(V,)`` bool, e.g. :meth:`CaptionVocab.content_word_starts`) that a sequence has already
    generated gets probability 0, so no content word occurs twice in a caption ("a blue shirt and
    black shirt and white shirt" cannot happen; 3-gram blocking lets such loops through when the
    word between changes); and no token may follow itself, which also stops a stutter inside a
    word ("rac" "et" "ret" "ret" "rack": its pieces start no word, so the first rule misses it).
    Function words may repeat, but not back to back."""

    def __init__(self, blocked: Tensor):
        self.blocked = blocked

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """``input_ids (B, L)``, next-token ``scores (B, V)`` -> the scores, blocked ones -inf."""
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, input_ids, True)
        banned = (seen & self.blocked.to(scores.device)).scatter_(1, input_ids[:, -1:], True)
        return scores.masked_fill(banned, -math.inf)


@torch.no_grad()
def generate_captions(model: nn.Module, features: Tensor, vocab: CaptionVocab,
                      num_beams: int = 1, max_new_tokens: int = 20, batch_size: int = 64,
                      device: torch.device | str = "cpu", progress: Callable | None = None,
                      specificity: float = 0.0, null_features: Tensor | None = None,
                      block_repeated_words: bool = False, **generate_kwargs) -> list[str]:
    """Captions for decoder memories ``features (N, S, D)`` by HF ``generate`` (greedy when
    ``num_beams == 1``, else beam search; ``generate_kwargs`` such as ``no_repeat_ngram_size``,
    ``repetition_penalty`` or ``length_penalty`` go to it), decoded to text. The decoder gets an
    all-ones mask that ``generate`` extends step by step: a sequence's tokens after its eos are
    padding the caption never reads (the decoder is causal), and with the mask GPT-2 does not
    warn about it. With ``block_repeated_words``, no content word is generated twice and no
    token follows itself (:class:`RepeatedWordBlock`).

    With ``specificity`` λ > 0, beam search returns its ``num_beams`` finished candidates and the
    one with the highest ``log p(c | image) - λ log p(c | null image)`` is kept (Li et al. 2016's
    anti-language-model reranking: a caption that fits every image scores low);
    ``null_features (1, S, D)`` is the null image's memory (e.g. the mean training memory)."""
    model.eval()
    out: list[str] = []
    rerank = specificity > 0 and num_beams > 1
    if rerank and null_features is None:
        raise ValueError("specificity > 0 needs null_features")
    if block_repeated_words:
        from transformers import LogitsProcessorList

        generate_kwargs["logits_processor"] = LogitsProcessorList(
            [RepeatedWordBlock(vocab.content_word_starts())])
    starts = range(0, len(features), batch_size)
    for start in progress(starts, desc=f"decode beams={num_beams}") if progress else starts:
        feats = features[start:start + batch_size].to(device)
        ids = model.generate(encoder_outputs=_encoder_outputs(feats), num_beams=num_beams,
                             decoder_attention_mask=torch.ones(len(feats), 1, dtype=torch.long,
                                                               device=feats.device),
                             do_sample=False, max_new_tokens=max_new_tokens,
                             num_return_sequences=num_beams if rerank else 1,
                             decoder_start_token_id=vocab.bos, bos_token_id=vocab.bos,
                             eos_token_id=vocab.eos, pad_token_id=vocab.pad, **generate_kwargs)
        if rerank:  # (B * beams, L): score every candidate under its image and the null image
            memory = feats.repeat_interleave(num_beams, 0)
            null = null_features.to(device).repeat(len(ids), 1, 1)
            score = (sequence_log_probs(model, memory, ids, vocab)
                     - specificity * sequence_log_probs(model, null, ids, vocab))
            best = score.view(-1, num_beams).argmax(1) + torch.arange(len(feats)) * num_beams
            ids = ids[best.to(ids.device)]
        out.extend(vocab.decode(row) for row in ids.tolist())
    return out


def repeats_ngram(caption: str, n: int = 3) -> bool:
    """Whether some word ``n``-gram occurs twice in ``caption`` (a decoding loop)."""
    words = caption.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def repeats_content_word(caption: str, function_words: Collection[str] = FUNCTION_WORDS,
                         ) -> bool:
    """Whether a word not in ``function_words`` occurs twice in ``caption`` ("a blue shirt and
    black shirt"): what :class:`RepeatedWordBlock` prevents."""
    content = [w for w in caption.split() if w not in function_words]
    return len(content) != len(set(content))


def expected_distinct(captions: Sequence[str], n: int) -> float:
    """Expected share of distinct captions among ``n`` images whose captions are drawn like
    ``captions`` (one draw per image from the same distribution): exact over random subsets when
    ``n <= len(captions)``; beyond, up to twice as many, the Good-Toulmin estimate (Good &
    Toulmin 1956) ``D + f1 t - f2 t² + f3 t³ - ...``, ``t = n / len(captions) - 1``, with ``D``
    the distinct captions and ``fk`` those seen ``k`` times. The share falls as ``n`` grows:
    two images are likelier to get the same generic caption in a larger set."""
    total, counts = len(captions), Counter(captions).values()
    if n <= total:
        distinct = sum(1 - math.comb(total - k, n) / math.comb(total, n) for k in counts)
    elif n <= 2 * total:
        t = n / total - 1
        distinct = len(counts) - sum(f * (-t) ** k for k, f in Counter(counts).items())
    else:
        raise ValueError(f"cannot extrapolate {total} captions to more than {2 * total}")
    return distinct / n


def choose_decoding(model: nn.Module, features: Tensor, references: Sequence[Sequence[str]],
                    vocab: CaptionVocab, settings: Sequence[dict], max_new_tokens: int = 20,
                    device: torch.device | str = "cpu", null_features: Tensor | None = None,
                    min_distinct: float = 0.0, distinct_at: int | None = None,
                    ) -> tuple[dict, list[dict]]:
    """Decode held-out ``features`` with each of ``settings`` (keyword arguments of
    :func:`generate_captions`: ``num_beams``, ``no_repeat_ngram_size``, ``specificity``,
    ``block_repeated_words``, ...) and pick the one with the highest corpus BLEU-4 against
    ``references`` among those whose :func:`expected_distinct` share at ``distinct_at`` images
    (default: as many as held out) is at least ``min_distinct`` (when none is, the most distinct
    one, BLEU-4 breaking ties). Returns the chosen setting and one row per setting (corpus
    BLEU-4, share of distinct held-out captions, its expectation at ``distinct_at`` images,
    captions that repeat a word 3-gram, captions that repeat a content word)."""
    from helpers.metrics import corpus_bleu

    rows = []
    for setting in settings:
        preds = generate_captions(model, features, vocab, max_new_tokens=max_new_tokens,
                                  device=device, null_features=null_features, **setting)
        rows.append({**setting, "corpus_bleu4": corpus_bleu(preds, references, n=4),
                     "distinct": len(set(preds)) / len(preds),
                     "expected_distinct": expected_distinct(preds, distinct_at or len(preds)),
                     "repeat_3gram": sum(map(repeats_ngram, preds)),
                     "repeat_word": sum(map(repeats_content_word, preds))})
    allowed = [i for i, row in enumerate(rows) if row["expected_distinct"] >= min_distinct]
    if allowed:
        best = max(allowed, key=lambda i: rows[i]["corpus_bleu4"])
    else:
        best = max(range(len(rows)),
                   key=lambda i: (rows[i]["expected_distinct"], rows[i]["corpus_bleu4"]))
    return dict(settings[best]), rows


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
