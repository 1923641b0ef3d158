"""Tests of helpers.generation: filter_logits, sampling, beam search and n-gram blocking."""

import itertools
import math

import torch
from torch import Tensor, nn

from helpers import generation


class Bigram(nn.Module):
    """A recurrent-interface toy LM: the next-token log-probabilities depend on the last token."""

    def __init__(self, table: Tensor):
        super().__init__()
        self.table = table  # (V, V) logits

    def forward(self, ids: Tensor, hidden=None):
        steps = hidden if hidden is not None else torch.zeros(1, ids.shape[0])
        return self.table[ids], steps + ids.shape[1]  # (B, T, V), (1, B)


def _logp(table: Tensor, seq: list[int]) -> float:
    lp = table.log_softmax(-1)
    return sum(lp[a, b].item() for a, b in itertools.pairwise(seq))


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    removed = torch.isinf(generation.filter_logits(logits, top_k=2))
    assert removed.tolist() == [[True, False, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(generation.filter_logits(probs.log(), top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]


def test_ngram_bans():
    assert generation.ngram_bans([1, 2, 3, 1, 2], 3) == {3}
    assert generation.ngram_bans([1, 2, 3, 1, 2], 2) == {3}
    assert generation.ngram_bans([300, 2, 300], 2) == {2}  # generic path (ids >= 256)
    assert generation.ngram_bans([1, 2], 3) == set()


def test_greedy_matches_argmax_chain_and_blocking_breaks_loops():
    torch.manual_seed(0)
    table = torch.randn(6, 6)
    table[:, 0] = -1e9
    out = generation.sample(Bigram(table), torch.tensor([1]), 10, greedy=True)[0].tolist()
    expected = [1]
    for _ in range(10):
        expected.append(int(table[expected[-1]].argmax()))
    assert out == expected
    blocked = generation.sample(Bigram(table), torch.tensor([1]), 10, greedy=True,
                                no_repeat_ngram=2, banned=[0])[0].tolist()
    pairs = list(itertools.pairwise(blocked))
    assert len(pairs) == len(set(pairs)) or len(set(pairs)) == 5 * 5  # no bigram twice
    assert 0 not in blocked


def test_sampling_is_seeded_and_respects_top_k():
    table = torch.randn(5, 5)
    a = generation.sample(Bigram(table), torch.tensor([2]), 20, num_samples=3, top_k=1,
                          generator=torch.Generator().manual_seed(0))
    greedy = generation.sample(Bigram(table), torch.tensor([2]), 20, greedy=True)
    assert torch.equal(a, greedy.repeat(3, 1))  # top-1 sampling is greedy
    b1 = generation.sample(Bigram(table), torch.tensor([2]), 20, num_samples=2,
                           generator=torch.Generator().manual_seed(3))
    b2 = generation.sample(Bigram(table), torch.tensor([2]), 20, num_samples=2,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(b1, b2)


def test_beam_search_finds_the_exhaustive_optimum():
    torch.manual_seed(1)
    table = torch.randn(4, 4) * 2
    best_seq, best_score = None, -math.inf
    for tail in itertools.product(range(4), repeat=4):
        seq = [0, *tail]
        if _logp(table, seq) > best_score:
            best_seq, best_score = seq, _logp(table, seq)
    results = generation.beam_search(Bigram(table), torch.tensor([0]), 4, k=4 ** 3)
    assert results[0][0].tolist() == best_seq
    assert abs(results[0][1] - best_score) < 1e-4
    scores = [s for _, s in results]
    assert scores == sorted(scores, reverse=True)


def test_beam_search_k1_is_greedy_and_length_penalty_with_eos():
    torch.manual_seed(2)
    table = torch.randn(5, 5)
    greedy = generation.sample(Bigram(table), torch.tensor([1]), 6, greedy=True)[0]
    assert torch.equal(generation.beam_search(Bigram(table), torch.tensor([1]), 6, 1)[0][0], greedy)
    table = torch.full((3, 3), -5.0)
    table[1, 2] = 0.0  # 1 -> eos(2) likely; 1 -> 1 less likely
    table[1, 1] = -0.5
    short = generation.beam_search(Bigram(table), torch.tensor([1]), 6, 2, eos_id=2)
    assert short[0][0].tolist() == [1, 2]
    normed = generation.beam_search(Bigram(table), torch.tensor([1]), 6, 2, eos_id=2,
                                    length_penalty=2.0)
    for ids, score in normed:  # GNMT: log p / ((5 + n) / 6) ** alpha, n generated tokens
        n = len(ids) - 1
        assert abs(score - _logp(table, ids.tolist()) / ((5 + n) / 6) ** 2.0) < 1e-5
    assert [len(ids) for ids, _ in normed] == [2, 3]


def test_beam_search_stops_at_a_multi_token_end_and_length_penalty_moves_the_choice():
    # 1 -> 1 likely, 1 -> 2 less likely, 2 -> 2 certain: the end is the pair (2, 2)
    table = torch.full((3, 3), -9.0)
    table[1, 1], table[1, 2], table[2, 2] = 0.0, -1.5, 0.0
    short = generation.beam_search(Bigram(table), torch.tensor([1]), 8, 3, eos_id=[2, 2])
    ids, score = short[0]
    assert ids[-2:].tolist() == [2, 2] and len(ids) == 3  # the shortest finished hypothesis
    assert abs(score - _logp(table, ids.tolist())) < 1e-4
    longer = generation.beam_search(Bigram(table), torch.tensor([1]), 8, 3, eos_id=[2, 2],
                                    length_penalty=3.0)
    assert len(longer[0][0]) > len(ids)  # normalising by length lets a longer one win
    for ids, score in longer:
        n = len(ids) - 1
        if ids[-2:].tolist() == [2, 2]:
            assert abs(score - _logp(table, ids.tolist()) / ((5 + n) / 6) ** 3.0) < 1e-4
