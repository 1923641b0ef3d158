"""Pig-Latin helpers (iust-1404-hw4 P6): the rule, data handling, decoding, CER, the notebook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from helpers import piglatin as pl
from helpers.layers import subsequent_mask
from helpers.nb.assets import dataset_dir
from helpers.training import evaluate_loss
from helpers.transformer import (
    greedy_decode,
    make_model,
    make_seq2seq_batch,
    seq2seq_loss,
)

# ------------------------------------------------------------------------ the rule

@pytest.mark.parametrize(("word", "expected"), [
    ("team", "eamtay"), ("impress", "impressway"), ("shopping", "oppingshay"),
    ("the", "ethay"), ("conditioning", "onditioningcay"), ("yellow", "yelloway"),
    ("hysterical", "ystericalhay"), ("quick", "ickquay"), ("square", "aresquay"),
    ("xml", "xmlay"), ("bond-street", "ondbay-eetstray"), ("to-", "otay-"),
])
def test_to_pig_latin_examples(word, expected):
    assert pl.to_pig_latin(word) == expected


def test_qu_block_switch():
    assert pl.to_pig_latin("quick", qu_block=False) == "uickqay"
    assert pl.to_pig_latin("queen", qu_block=True) == "eenquay"


@pytest.mark.parametrize("name", ["small", "large"])
def test_rule_agrees_with_at_least_99_percent_of_each_file(name):
    path = dataset_dir("pig_latin", "small") / f"pig_latin_{name}.txt"
    pairs = pl.load_pairs(path)
    assert len(pairs) == {"small": 3198, "large": 22402}[name]  # the handout's counts
    disagreements = pl.rule_disagreements(pairs)
    assert len(disagreements) / len(pairs) <= 0.01, disagreements[:20]


# -------------------------------------------------------------------------- data

def test_load_pairs_applies_the_handout_filter(tmp_path: Path):
    path = tmp_path / "pairs.txt"
    path.write_text("team eamtay\nedward's edwardway'say\n37 37\n \n\n"
                    "bond-street ondbay-eetstray\n")
    assert pl.load_pairs(path) == [("team", "eamtay"), ("bond-street", "ondbay-eetstray")]


def test_split_by_word_keeps_all_translations_of_a_word_together():
    pairs = [(f"w{c}", f"{c}way") for c in "abcdefghij"] + [("quest", "estquay"),
                                                            ("quest", "uestqay")]
    pairs = [(s.replace("w", "x"), t) for s, t in pairs] + pairs[:3]  # duplicates dropped
    train, val = pl.split_by_word(pairs, 0.25, seed=1)
    assert not {s for s, _ in train} & {s for s, _ in val}
    assert len(train) + len(val) == len(set(pairs))
    quest_side = [side for side in (train, val) if any(s == "quest" for s, _ in side)]
    assert len(quest_side) == 1 and sum(s == "quest" for s, _ in quest_side[0]) == 2
    assert pl.split_by_word(pairs, 0.25, seed=1) == (train, val)


def test_encode_decode_round_trip_and_vocabulary():
    assert pl.VOCAB_SIZE == 30  # the handout's 29 tokens and padding
    word = "bond-street"
    assert pl.decode_ids(pl.encode_target(word)) == word
    assert pl.decode_ids(pl.encode_source(word) + [5, 6]) == word  # stops at EOS
    assert pl.encode_source("ab") == [3, 4, pl.EOS]


def test_bucket_batches_group_equal_lengths_without_padding():
    pairs = [("ab", "abway"), ("cd", "dcay"), ("ef", "efway"), ("abc", "abcway"),
             ("gh", "hgay")] * 3
    batches = pl.bucket_batches(pairs, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert sum(b.src.shape[0] for b in batches) == len(pairs)
    for b in batches:
        assert b.src.shape[0] <= 4 and not (b.src == pl.PAD).any()
        assert b.tgt_mask.shape[-1] == b.tgt.shape[1]
        assert torch.all(b.tgt[:, 0] == pl.SOS) and torch.all(b.tgt_y[:, -1] == pl.EOS)


def test_without_causal_mask_lets_every_position_see_the_whole_target():
    batch = make_seq2seq_batch(torch.tensor([pl.encode_source("ab")]),
                               torch.tensor([pl.encode_target("abway")]), pad=pl.PAD)
    assert not batch.tgt_mask[0, 0, 1:].any()  # causal: the first step sees itself only
    full = pl.without_causal_mask(batch)
    assert full.tgt_mask.all() and full.tgt_mask.shape == (1, 1, 6)


def test_a_non_causal_decoder_output_depends_on_later_tokens_a_causal_one_does_not():
    model = make_model(pl.VOCAB_SIZE, pl.VOCAB_SIZE, N=1, d_model=16, d_ff=32, h=2,
                       dropout=0.0).eval()
    a = make_seq2seq_batch(torch.tensor([pl.encode_source("cat")]),
                           torch.tensor([pl.encode_target("atcay")]), pad=pl.PAD)
    b = a._replace(tgt=a.tgt.clone())
    b.tgt[0, -1] = pl.CHAR_TO_ID["z"]  # change the last decoder input only
    for causal, same in ((True, True), (False, False)):
        x, y = (a, b) if causal else (pl.without_causal_mask(a), pl.without_causal_mask(b))
        out_a = model(x.src, x.tgt, x.src_mask, x.tgt_mask)[0, 0]
        out_b = model(y.src, y.tgt, y.src_mask, y.tgt_mask)[0, 0]
        assert torch.allclose(out_a, out_b, atol=1e-6) == same


# ------------------------------------------------------------------------ metrics

@pytest.mark.parametrize(("a", "b", "d"), [("", "", 0), ("abc", "", 3), ("", "ab", 2),
                                           ("kitten", "sitting", 3), ("flaw", "lawn", 2),
                                           ("ethay", "ethay", 0)])
def test_edit_distance(a, b, d):
    assert pl.edit_distance(a, b) == d == pl.edit_distance(b, a)


def test_character_error_rate_and_scores():
    assert pl.character_error_rate(["ethay", "x"], ["ethay", "isway"]) == pytest.approx(5 / 10)
    with pytest.raises(ValueError):
        pl.character_error_rate(["a"], [])
    refs = {"quest": {"estquay", "uestqay"}, "the": {"ethay"}}
    scores = pl.score_translations({"quest": "uestqay", "the": "ehtay"}, refs)
    assert scores["exact_match"] == 0.5
    assert scores["cer"] == pytest.approx(2 / 12)  # 0 of 7 + 2 of 5


# ---------------------------------------------------------------- greedy decoding

def test_greedy_decode_with_an_end_symbol_matches_the_plain_one_up_to_the_end():
    torch.manual_seed(0)
    model = make_model(pl.VOCAB_SIZE, pl.VOCAB_SIZE, N=2, d_model=16, d_ff=32, h=2).eval()
    src, src_mask = pl.pad_sources(["cat", "street", "a"])
    ref = greedy_decode(model, src, src_mask, max_len=12, start_symbol=pl.SOS)
    ys = greedy_decode(model, src, src_mask, 12, pl.SOS, end_symbol=3, pad=pl.PAD)
    assert ys.shape[0] == 3 and ys.shape[1] <= 12 and torch.all(ys[:, 0] == pl.SOS)
    for row, ref_row in zip(ys, ref, strict=True):
        ends = (ref_row == 3).nonzero()
        stop = int(ends[0]) + 1 if len(ends) else 12
        assert torch.equal(row[:stop], ref_row[:stop])
        assert torch.all(row[stop:] == pl.PAD)


def test_greedy_decode_stops_early_once_every_sequence_ended():
    model = make_model(pl.VOCAB_SIZE, pl.VOCAB_SIZE, N=1, d_model=16, d_ff=32, h=2).eval()
    with torch.no_grad():  # a generator that always prefers EOS
        model.generator.proj.weight.zero_()
        model.generator.proj.bias.zero_()
        model.generator.proj.bias[pl.EOS] = 10.0
    src, src_mask = pl.pad_sources(["cat", "dog"])
    ys = greedy_decode(model, src, src_mask, 20, pl.SOS, pl.EOS, causal=False)
    assert ys.tolist() == [[pl.SOS, pl.EOS]] * 2
    assert pl.translate(model, ["cat", "dog"]) == {"cat": "", "dog": ""}


def test_non_causal_decoding_uses_a_full_mask():
    """With causal=False the last step equals a forward pass with an all-True mask."""
    torch.manual_seed(1)
    model = make_model(pl.VOCAB_SIZE, pl.VOCAB_SIZE, N=2, d_model=16, d_ff=32, h=2).eval()
    src, src_mask = pl.pad_sources(["street"])
    ys = greedy_decode(model, src, src_mask, 6, pl.SOS, end_symbol=99, causal=False)
    prefix = ys[:, :-1]
    full = torch.ones(1, prefix.shape[1], prefix.shape[1], dtype=torch.bool)
    out = model.generator(model(src, prefix, src_mask, full)[:, -1]).argmax(-1)
    assert int(out) == int(ys[0, -1])
    causal = model.generator(model(src, prefix, src_mask, subsequent_mask(prefix.shape[1]))[:, -1])
    assert causal.shape == (1, pl.VOCAB_SIZE)


# -------------------------------------------------------------- training, end to end

TINY = [(w, pl.to_pig_latin(w)) for w in
        ("cat", "dog", "egg", "tin", "ant", "pot", "run", "owl", "sun", "ink")]


def _train_tiny(architecture="handout", epochs=12, causal=True):
    torch.manual_seed(0)
    model = pl.build_translator(architecture, 32, 1, causal)
    return pl.train_translator("tiny", model, TINY, TINY[:4], lr=3e-3, lr_decay=0.99,
                               batch_size=8, epochs=epochs, patience=3, causal=causal,
                               generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("architecture", pl.ARCHITECTURES)
def test_train_translator_learns_a_tiny_set_and_restores_the_best_weights(architecture):
    run = _train_tiny(architecture)
    losses = run.history.column("val_loss")
    assert run.best_val_loss == min(losses) < losses[0]
    assert run.epochs == len(losses) and losses[run.best_epoch - 1] == run.best_val_loss
    val = pl.bucket_batches(TINY[:4], 8)
    assert_close(evaluate_loss(run.model, val, pl.handout_loss), run.best_val_loss)
    assert_close(evaluate_loss(run.model, val, pl.translation_loss), run.char_val_loss)
    maps = pl.attention_maps(run.model, "cat", "atcay")
    assert len(maps) == 1 and maps[0].shape == (len("atcay") + 1, len("cat") + 1)
    assert_close(maps[0].sum(-1), torch.ones(6))


def test_two_runs_with_the_same_seed_give_identical_losses():
    """Same seed, same process: every step's loss and every validation loss bit for bit."""
    first, second = _train_tiny(epochs=4), _train_tiny(epochs=4)
    assert first.history.step_losses == second.history.step_losses
    assert first.history.column("val_loss") == second.history.column("val_loss")
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_decoding_order_does_not_depend_on_string_hashing():
    """Python salts str hashes per process (PYTHONHASHSEED): a set's order, and with it the
    order of equal-length words sorted by length only, changes between runs; the decoding
    order must not."""
    script = ("import json; from helpers.piglatin import decoding_order; "
              "words = [a + b + c for a in 'abcd' for b in 'efgh' for c in 'ijkl'] + ['q', 'zz']; "
              "print(json.dumps([decoding_order(words), sorted(set(words), key=len)]))")
    outputs = [json.loads(subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]).stdout)
        for hash_seed in ("1", "2")]
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][0][:2] == ["q", "zz"] and outputs[0][0][2] == "aei"
    assert outputs[0][1] != outputs[1][1]  # the length-only order does change


def test_batched_greedy_decoding_equals_one_word_at_a_time():
    """Padded sources with a mask decode as each word alone (the handout decodes one word). The
    untrained model never writes EOS: a batch decodes up to its longest word's budget, so a
    word alone gives a prefix of its batched translation."""
    torch.manual_seed(3)
    model = pl.build_translator("handout", 16, 2).eval()
    words = ["a", "street", "cat", "rhythm", "to-do", "queen"]
    batched, alone = pl.translate(model, words), pl.translate(model, words, batch_size=1)
    assert all(batched[w][: len(alone[w])] == alone[w] and alone[w] for w in words)


def test_epoch_decay_lambda_multiplies_the_rate_before_every_epoch():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, pl.epoch_decay_lambda(3, 0.5))
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == [0.5] * 3 + [0.25] * 3 + [0.125]


def test_handout_loss_weighs_batches_equally_translation_loss_weighs_characters():
    torch.manual_seed(4)
    model = pl.build_translator("handout", 16, 1).eval()
    pairs = [("a", "away"), ("strength", "engthstray"), ("stretch", "etchstray"),
             ("thought", "oughtthay")]
    batches = pl.bucket_batches(pairs, batch_size=8)
    per_batch = [seq2seq_loss(model, b, pad=pl.PAD) for b in batches]
    assert len(batches) == 3  # lengths (1, 4), (8, 10), and two words of (7, 9)
    assert_close(evaluate_loss(model, batches, pl.handout_loss),
                 sum(loss.item() for loss, _ in per_batch) / 3)
    assert_close(evaluate_loss(model, batches, pl.translation_loss),
                 sum(loss.item() * n for loss, n in per_batch) / sum(n for _, n in per_batch))


def test_build_translator_rejects_an_unknown_architecture():
    with pytest.raises(ValueError, match="architecture"):
        pl.build_translator("rnn", 16, 1)


# ------------------------------------------------------------------- the notebook

def test_pig_latin_notebook_at_smoke(smoke_run):
    result = smoke_run("iust-1404-hw4/Q6_pig_latin.ipynb")
    assert result.status == "ok", result.error
    m = result.metrics
    assert m["rule_agreement_small"] == 1.0 and m["rule_agreement_large"] >= 0.99
    for run in ("h32_small", "h64_small", "h32_large", "h64_large", "noncausal", "modern"):
        assert 0.0 < m[f"val_loss_{run}"] < 4.0, run  # below ln(30) = 3.4 plus slack
        assert 0.0 < m[f"char_val_loss_{run}"] < 4.0, run
        for key in ("exact_match", "unseen_exact_match"):
            assert 0.0 <= m[f"{key}_{run}"] <= 1.0, (key, run)
        assert m[f"cer_{run}"] >= 0.0 and m[f"unseen_cer_{run}"] >= 0.0
        assert 1 <= m[f"best_epoch_{run}"] <= m[f"epochs_{run}"] <= 3  # smoke: max_epochs 3
    # smoke trains a few steps only: the losses must at least fall from the first epoch
    assert m["h64_large_val_loss_drop"] > 0.0
    assert m["retrained_identically"] == 1.0  # the same seed gives the same losses
    # a few smoke steps are too few for the non-causal decoder's leak to show in its loss
    # (at profile small it does); test_only_the_non_causal_decoder_sees_later_inputs checks
    # the mechanism. Greedy decoding of the non-causal decoder is never better.
    assert m["exact_match_noncausal"] <= m["exact_match_h64_small"] + 1e-9
    assert 0.0 <= m["exact_match_noncausal_causal_mask"] <= 1.0
    assert m["cpu_seconds_total"] > 0
