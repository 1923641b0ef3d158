"""helpers.vocab: tokenisation, training-only vocabulary, encoding and padded batches."""

import pytest
import torch

from helpers import vocab


def test_tokenize_drops_html_and_punctuation():
    assert vocab.tokenize("Great<br />film, I DON'T regret it!") == [
        "great", "film", "i", "don't", "regret", "it", "!"]


def test_vocabulary_ranks_by_count_and_caps_size():
    texts = [["b", "a", "a"], ["c", "a", "b"]]
    v = vocab.Vocabulary.build(texts, max_size=4)
    assert v.itos == ["<pad>", "<unk>", "a", "b"]
    assert v.encode(["a", "c", "zzz"]) == [2, 1, 1]
    assert v.decode([3, 2]) == ["b", "a"]
    assert len(vocab.Vocabulary.build(texts, max_size=10, min_freq=2)) == 4  # c dropped


def test_encode_texts_truncates_and_pads():
    v = vocab.Vocabulary(["a", "b", "c"])
    ids, lengths = vocab.encode_texts([["a", "b", "c"], ["c"], []], v, max_len=2)
    assert ids.tolist() == [[3, 4], [4, 0], [1, 0]]
    assert lengths.tolist() == [2, 1, 1]
    head, _ = vocab.encode_texts([["a", "b", "c"]], v, max_len=2, keep="head")
    assert head.tolist() == [[2, 3]]
    with pytest.raises(ValueError):
        vocab.encode_texts([["a"]], v, 2, keep="middle")


def test_batches_cover_everything_and_trim_padding():
    n = 23
    lengths = torch.randint(1, 9, (n,))
    ids = torch.zeros(n, 8, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :length] = i + 2
    labels = torch.arange(n)
    for shuffle in (True, False):
        seen = []
        for b_ids, b_len, b_lab in vocab.batches(ids, lengths, labels, 5,
                                                 torch.Generator().manual_seed(0), shuffle):
            assert b_ids.shape[1] == int(b_len.max())
            assert (b_ids[:, 0] == b_lab + 2).all()
            assert ((b_ids > 0).sum(1) == b_len).all()
            seen += b_lab.tolist()
        assert sorted(seen) == list(range(n))
    in_order = [b[2].tolist() for b in vocab.batches(ids, lengths, labels, 5, shuffle=False)]
    assert in_order[0] == [0, 1, 2, 3, 4]


def test_encoded_reviews_encode_and_batch():
    v = vocab.Vocabulary(["a", "b", "c"])
    data = vocab.EncodedReviews.encode([["a", "b", "c"], ["c"], ["b", "a"]], [1, 0, 1], v, 2)
    assert len(data) == 3
    assert data.ids.tolist() == [[3, 4], [4, 0], [3, 2]]
    assert data.lengths.tolist() == [2, 1, 2]
    assert data.labels.dtype == torch.long
    (ids, lengths, labels), = list(data.batches(3, shuffle=False))
    assert ids.tolist() == data.ids.tolist() and labels.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="labels"):
        vocab.EncodedReviews.encode([["a"]], [0, 1], v, 2)
