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
    letters = vocab.Vocabulary(list("abcdefgh"))
    both, _ = vocab.encode_texts([list("abcdefgh"), list("abc")], letters, max_len=4,
                                 keep="head_tail")
    assert both.tolist() == [[2, 7, 8, 9], [2, 3, 4, 0]]  # first quarter + last three quarters
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


class _PieceTokenizer:
    """A stand-in for an HF tokenizer: each character of a word is one subword id."""

    unk_token_id = 0

    def __call__(self, words, add_special_tokens=True):
        assert not add_special_tokens
        return {"input_ids": [[ord(c) - ord("a") + 1 for c in w] for w in words]}


def test_subword_embeddings_average_pieces_then_pca():
    from sklearn.decomposition import PCA

    words = ["ab", "ba", "abc", "cab", "d", "dd", "bad", "cc", "a", "bb"]
    voc = vocab.Vocabulary(words)
    table = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    out = vocab.subword_embeddings(voc, _PieceTokenizer(), table, dim=3)
    assert out.shape == (len(voc), 3)
    torch.testing.assert_close(out[:2], torch.zeros(2, 3))  # <pad>, <unk>
    # the same words by hand: mean of the pieces' rows, then scikit-learn's PCA
    means = torch.stack([table[[ord(c) - 96 for c in w]].mean(0) for w in words])
    reference = torch.as_tensor(PCA(3).fit_transform(means.double().numpy()), dtype=torch.float32)
    reference = reference / reference.std()
    signs = torch.sign((out[2:] * reference).sum(0))  # principal axes are defined up to sign
    torch.testing.assert_close(out[2:] * signs, reference, atol=1e-5, rtol=1e-4)
    # "ab" and "ba" have the same pieces, so the same vector
    torch.testing.assert_close(out[voc.stoi["ab"]], out[voc.stoi["ba"]])
    with pytest.raises(ValueError, match="dim must be"):
        vocab.subword_embeddings(voc, _PieceTokenizer(), table, dim=7)
