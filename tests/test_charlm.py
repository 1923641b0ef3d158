"""Tests of helpers.charlm: encoding, paragraphs, shift_left, the hand-written GRU, the loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from helpers import charlm


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids oversubscribing the shared CPU cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_encode_decode_roundtrip_and_index_convention():
    ids = charlm.encode("Ab é")
    assert ids[:2].tolist() == [ord("A") + 1, ord("b") + 1]
    assert ids.min() >= 1 and ids.max() <= 255
    assert charlm.decode(ids) == "Ab é"
    assert charlm.decode(torch.cat([ids, torch.zeros(3, dtype=torch.long)])) == "Ab é"


def test_paragraph_filter_is_strict():
    long_ = ("a b c d e " * 4).strip()
    text = f"short one\n\n{long_}\n \n{'x' * 40}\n\none two three four five six seven"
    kept = charlm.paragraphs(text)
    assert kept == [long_, "one two three four five six seven"]


def test_split_is_seeded_and_disjoint():
    items = list(range(50))
    a = charlm.split_train_val(items, 0.2, torch.Generator().manual_seed(1))
    b = charlm.split_train_val(items, 0.2, torch.Generator().manual_seed(1))
    assert a == b and len(a[1]) == 10 and sorted(a[0] + a[1]) == items


def test_shift_left_and_pad():
    out = charlm.shift_left([torch.tensor([5, 6, 7]), torch.tensor([9])], pad_value=0)
    assert [t.tolist() for t in out] == [[6, 7, 0], [0]]
    assert charlm.pad(out).tolist() == [[6, 7, 0], [0, 0, 0]]


def test_chunk_caps_length_and_keeps_everything():
    ids = torch.arange(10)
    pieces = charlm.chunk(ids, 4)
    assert [len(p) for p in pieces] == [4, 4, 2] and torch.equal(torch.cat(pieces), ids)


def test_batches_cover_every_sequence_once_and_repeat_for_a_seed():
    seqs = [torch.arange(n % 7 + 1) for n in range(23)]

    def positions(groups):
        index = {id(s): i for i, s in enumerate(seqs)}
        return [[index[id(s)] for s in g] for g in groups]

    groups = positions(charlm.batches(seqs, 5, torch.Generator().manual_seed(0)))
    assert sorted(i for g in groups for i in g) == list(range(23))
    assert max(len(g) for g in groups) == 5
    assert groups == positions(charlm.batches(seqs, 5, torch.Generator().manual_seed(0)))
    assert groups != positions(charlm.batches(seqs, 5, torch.Generator().manual_seed(1)))
    fixed = positions(charlm.batches(seqs, 5))  # no generator: sorted by length, in order
    assert [i for g in fixed for i in g] == sorted(range(23), key=lambda i: len(seqs[i]))


@pytest.mark.parametrize("layers", [1, 2])
def test_scratch_gru_equals_nn_gru(layers):
    torch.manual_seed(0)
    ref = nn.GRU(5, 7, layers, batch_first=True).double()
    ours = charlm.ScratchGRU.from_torch(ref)
    x, h0 = torch.randn(3, 6, 5, dtype=torch.double), torch.randn(layers, 3, 7, dtype=torch.double)
    out_ref, h_ref = ref(x, h0)
    out, h = ours(x, h0)
    assert_close(out, out_ref, atol=1e-10, rtol=1e-10)
    assert_close(h, h_ref, atol=1e-10, rtol=1e-10)
    out.sum().backward()
    out_ref.sum().backward()
    assert_close(ours.cells[0].weight_hh.grad, ref.weight_hh_l0.grad, atol=1e-10, rtol=1e-10)


def test_gru_cell_gradcheck():
    cell = charlm.GRUCell(3, 4).double()
    x = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(cell, (x, h))


def test_model_shapes_padding_invariance_and_packed_hidden():
    torch.manual_seed(0)
    model = charlm.CharGRU(8, 16, 2, dropout=0.0).eval()
    seqs = [charlm.encode("hello world"), charlm.encode("hi")]
    logits, hidden = model(seqs)
    assert logits.shape == (2, 11, 256) and hidden.shape == (2, 2, 16)
    alone, _ = model([seqs[1]])
    assert_close(logits[1, :2], alone[0])  # right padding does not leak into real positions
    model.pack = True
    packed_logits, packed_hidden = model(seqs)
    assert_close(packed_logits[1, :2], alone[0])
    _, h_alone = model(seqs[1].unsqueeze(0))
    assert_close(packed_hidden[:, 1], h_alone[:, 0])


def test_loss_ignores_padding():
    logits = torch.randn(2, 3, 256)
    targets = torch.tensor([[4, 5, 0], [7, 0, 0]])
    expected = F.cross_entropy(torch.stack([logits[0, 0], logits[0, 1], logits[1, 0]]),
                               torch.tensor([4, 5, 7]))
    assert_close(charlm.loss_fn(logits, targets), expected)
    assert_close(charlm.loss_fn(logits, [targets[0], targets[1, :1]]), expected)


def test_untrained_loss_near_uniform_and_training_reduces_it():
    torch.manual_seed(0)
    model = charlm.CharGRU(16, 32, 1, dropout=0.0)
    batch = [charlm.encode("to be or not to be, that is")] * 2
    loss, n = charlm.lm_loss(model, batch)
    assert n == 2 * (len(batch[0]) - 1)
    assert abs(loss.item() - math.log(256)) < 0.5
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        loss, _ = charlm.lm_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.5


def test_evaluate_weights_by_characters_and_converts_to_bits():
    torch.manual_seed(0)
    model = charlm.CharGRU(8, 16, 1, dropout=0.0)
    groups = [[charlm.encode("abcdefgh")], [charlm.encode("ab"), charlm.encode("xyz")]]
    scored = [charlm.lm_loss(model, g) for g in groups]
    expected = sum(loss.item() * n for loss, n in scored) / sum(n for _, n in scored)
    metrics = charlm.evaluate(model, groups)
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["val_bpc"] == pytest.approx(expected / math.log(2), rel=1e-6)


def test_joined_keeps_every_paragraph_and_shuffles_with_a_generator():
    texts = ["first one", "second", "third"]
    assert charlm.decode(charlm.joined(texts)) == "first one\n\nsecond\n\nthird"
    shuffled = charlm.decode(charlm.joined(texts, torch.Generator().manual_seed(3)))
    assert sorted(shuffled.split("\n\n")) == sorted(texts)


def test_stream_batches_continue_each_row_and_shift_targets():
    ids = torch.arange(1, 24)  # 23 characters -> 3 streams of 7 (one left over)
    chunks = charlm.stream_batches(ids, batch_size=3, seq_len=3)
    assert [tuple(x.shape) for x, _ in chunks] == [(3, 3), (3, 3), (3, 1)]
    rows = torch.cat([x for x, _ in chunks], dim=1)
    assert rows.tolist() == [list(range(1, 8)), list(range(8, 15)), list(range(15, 22))]
    targets = torch.cat([y for _, y in chunks], dim=1)
    assert torch.equal(targets, rows + 1)
    with pytest.raises(ValueError, match="cannot fill"):
        charlm.stream_batches(ids[:3], batch_size=4, seq_len=2)


def test_carried_state_equals_one_long_pass_and_stops_gradients_at_the_boundary():
    torch.manual_seed(0)
    model = charlm.CharGRU(8, 16, 2, dropout=0.0).double()
    ids = charlm.encode("to be or not to be, that is the question")
    chunks = charlm.stream_batches(ids, batch_size=2, seq_len=5)
    state = charlm.CarriedState()
    losses = [state(model, chunk) for chunk in chunks]
    mean = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    inputs = torch.cat([x for x, _ in chunks], dim=1)
    targets = torch.cat([y for _, y in chunks], dim=1)
    whole = charlm.loss_fn(model(inputs)[0], targets)
    assert_close(mean, whole)
    assert state.hidden is not None and not state.hidden.requires_grad
    assert charlm.stream_loss(model, ids, 2, 5) == pytest.approx(whole.item())
    state.reset()
    assert state.hidden is None


def test_carried_state_under_bfloat16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    model = charlm.CharGRU(8, 32, 2, dropout=0.0)
    ids = charlm.encode("what light through yonder window breaks? " * 3)
    exact = charlm.stream_loss(model, ids, 2, 16)
    low = charlm.stream_loss(model, ids, 2, 16, autocast_dtype=torch.bfloat16)
    assert low == pytest.approx(exact, abs=0.02)
    groups = [[charlm.encode("abc de"), charlm.encode("fgh")]]
    assert charlm.evaluate(model, groups, autocast_dtype=torch.bfloat16)["val_loss"] == \
        pytest.approx(charlm.evaluate(model, groups)["val_loss"], abs=0.02)


def test_words_and_real_word_share():
    assert charlm.words("O Romeo, Romeo! wherefore art thou's 3 x") == [
        "o", "romeo", "romeo", "wherefore", "art", "thou's", "x"]
    vocabulary = {"romeo", "art", "o"}
    assert charlm.real_word_share("O Romeo, wherefore art", vocabulary) == pytest.approx(3 / 4)
    assert charlm.real_word_share("!!! ,,", vocabulary) == 0.0


def test_char_rnn_notebook_at_smoke(smoke_run):
    r = smoke_run("sharif-1402-hw3/char_rnn_language_model.ipynb")
    assert r.status == "ok", r.error
    m = r.metrics
    assert m["gru_max_abs_error"] < 1e-5
    assert m["val_loss_nats_per_char"] < m["initial_val_loss"]
    assert 0 < m["val_loss_per_paragraph"] < m["initial_val_loss"]
    assert abs(m["val_loss_bf16"] - m["val_loss_nats_per_char"]) < 0.05  # bf16 ~ float32
    assert 0 < m["val_bits_per_char"] < 8
    for key in ("real_word_share_sample_t08", "real_word_share_beam_tuned",
                "real_word_share_reference", "distinct2_beam", "distinct2_beam_tuned"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["real_word_share_reference"] > 0.5  # real text is made of training words
    assert m["beam_length_penalty"] >= 0 and m["beam_no_repeat_ngram"] >= 0
    assert m["train_chars_per_second"] > 0
