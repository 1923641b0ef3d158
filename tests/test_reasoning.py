"""helpers.reasoning: the problem sets, the method plumbing on a tiny model, and the notebook."""

import json

import pytest
import torch

from helpers import reasoning as R
from helpers.llm_generation import Completion

# ---------------------------------------------------------------------------- problems

def test_arithmetic_problems_are_seeded_and_their_answers_are_right():
    import re

    problems = R.arithmetic_problems(20, seed=3)
    assert problems == R.arithmetic_problems(20, seed=3)
    assert problems != R.arithmetic_problems(20, seed=4)
    assert [p.level for p in problems[::20]] == list(R.ARITHMETIC_LEVELS)
    for p in problems:
        a, b, *rest = map(int, re.findall(r"\d+", p.question))
        level = R.ARITHMETIC_LEVELS.index(p.level)
        if level < 3:
            expected = a + b if "more" in p.question else a - b
            assert (a > 9, b > 9) == [(False, False), (True, False), (True, True)][level]
        elif level == 3:
            expected = a * b
        else:
            expected = a + b - rest[0] if "gives away" in p.question else rest[0] + a * b
        assert int(p.answer) == expected >= 0, p.question
    with pytest.raises(ValueError, match="unknown level"):
        R.arithmetic_problems(1, 0, levels=["3 steps"])


def test_dataset_loaders(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "q?", "answer": "2+2=4\n#### 1,204"}) + "\n")
    (problem,) = R.load_gsm8k(gsm, 5)
    assert problem.answer == "1204" and problem.source == "gsm8k"
    gsm.write_text(json.dumps({"question": "q?", "answer": "4"}) + "\n")
    with pytest.raises(ValueError, match="####"):
        R.load_gsm8k(gsm, 5)
    gsm.write_text("{not json\n")
    with pytest.raises(ValueError, match="not a JSON line"):
        R.load_gsm8k(gsm, 5)
    math = tmp_path / "math.jsonl"
    rows = [{"problem": f"p{i}", "answer": str(i), "level": i % 5 + 1, "unique_id": f"u{i}"}
            for i in range(10)]
    math.write_text("\n".join(json.dumps(r) for r in rows))
    easy = R.load_math500(math, 3, max_level=1)
    assert [p.answer for p in easy] == ["0", "5"] and easy[0].level == "MATH level 1"
    middle = R.load_math500(math, max_level=3, min_level=2)
    assert [p.answer for p in middle] == ["1", "2", "6", "7"]


def test_seeded_sample_is_fixed_by_the_seed_keeps_file_order_and_excludes():
    pool = R.arithmetic_problems(10, seed=0)  # 50 problems
    first = R.seeded_sample(pool, 8, seed=1)
    assert first == R.seeded_sample(pool, 8, seed=1) != R.seeded_sample(pool, 8, seed=2)
    assert len({p.id for p in first}) == 8
    assert [pool.index(p) for p in first] == sorted(pool.index(p) for p in first)
    rest = R.seeded_sample(pool, 42, seed=1, exclude=first)
    assert not {p.id for p in rest} & {p.id for p in first}
    with pytest.raises(ValueError, match="only 42"):
        R.seeded_sample(pool, 43, seed=1, exclude=first)


# ---------------------------------------------------------------------------- methods

PROBLEM = R.Problem("p", "2+3?", "5", "easy", "test")


def _c(text: str, logprob: float, n: int = 10, finish: str = "eos") -> Completion:
    return Completion(text, n, logprob, finish)


def test_best_of_n_picks_the_highest_mean_logprob_and_pays_for_all():
    # mean log-probabilities -0.5, -1.0, -0.2; by the summed log-probability 5 would beat 4
    pool = [_c("\\boxed{4}", -5.0, 10), _c("\\boxed{5}", -3.0, 3), _c("\\boxed{6}", -1.0, 5)]
    (two,) = R.best_of_n([PROBLEM], [pool], 2)
    assert two.answer == "4" and two.n_tokens == 13 and two.n_calls == 2 and not two.correct
    (three,) = R.best_of_n([PROBLEM], [pool], 3)
    assert three.answer == "6" and three.n_tokens == 18


def test_majority_vote_groups_equivalent_answers_and_ignores_missing_ones():
    pool = [_c("\\boxed{4}", -0.1), _c("\\boxed{5}", -9.0), _c("so \\boxed{\\frac{10}{2}}", -9.0),
            _c("no answer", -0.01), _c("\\boxed{4}", -9.5)]
    (vote,) = R.majority_vote([PROBLEM], [pool[:3]], 3)
    assert vote.correct and vote.n_calls == 3
    (tie,) = R.majority_vote([PROBLEM], [pool], 5)  # 4 (2 votes) vs 5 (2 votes): higher logprob
    assert tie.answer == "4"
    (none,) = R.majority_vote([PROBLEM], [[_c("x", -1.0), _c("y", -0.5)]], 2)
    assert none.answer is None and none.outcome == "no answer"


def test_attempt_outcomes():
    def outcome(text, finish):
        return R.Attempt(PROBLEM, "m", text, finish, 1, 1).outcome

    assert outcome("\\boxed{5}", "eos") == "correct"
    assert outcome("\\boxed{7}", "eos") == "wrong"
    assert outcome("so far 2 + 3 = ", "length") == "truncated"
    assert outcome("I do not know", "eos") == "no answer"


def test_review_verdict():
    assert R.review_verdict(" yes, step 2 is wrong") == "yes"
    assert R.review_verdict(" No.") == "no"
    assert R.review_verdict(" maybe") == "unclear"


def test_methods_run_end_to_end_on_a_tiny_model(tiny_llm):
    model, tokenizer = tiny_llm
    problems = R.arithmetic_problems(1, 0)[:2]
    solver = R.Solver(model, tokenizer, "Solve.", [("1+1?", "\\boxed{2}")], max_new_tokens=12,
                      generator=torch.Generator().manual_seed(0))
    cot = R.chain_of_thought(solver, problems)
    assert [a.n_calls for a in cot] == [1, 1] and all(1 <= a.n_tokens <= 12 for a in cot)
    beam = R.stepwise_beam_search(solver, problems, beam_width=2, top_k=2, max_steps=2,
                                  step_tokens=4)
    for attempt in beam:  # 4 lines, then <= 2 x 2, then at most one greedy completion
        assert 4 <= attempt.n_calls <= 4 + 4 + 1 and attempt.n_tokens <= 4 * 4 + 4 * 4 + 12
    refined, verdicts = R.self_refine(solver, problems, cot, rounds=2, review_tokens=2)
    for attempt, verdict, first in zip(refined, verdicts, cot, strict=True):
        assert 1 <= len(verdict) <= 2 and set(verdict) <= {"yes", "no", "unclear"}
        assert attempt.n_calls == 1 + len(verdict) + verdict.count("yes")
        assert attempt.n_tokens > first.n_tokens
    frame = R.attempts_frame(cot + beam + refined)
    assert len(frame) == 6 and set(frame.outcome) <= {"correct", "wrong", "truncated",
                                                      "no answer"}


# ---------------------------------------------------------------------------- notebook

def test_q4_notebook_at_smoke(smoke_metrics):
    m = smoke_metrics("sharif-1404-hw3/Q4_llm_reasoning.ipynb")
    assert m["n_problems"] == 4 and m["pool_n"] == 3  # 2 GSM8K + 2 MATH, a pool of 3 samples
    for key in ("cot", "best_of_n", "majority", "beam", "self_refine", "refine_no_review"):
        assert 0.0 <= m[f"{key}_accuracy"] <= 1.0
        assert m[f"{key}_wall_s"] > 0
    # the pass@N bound is at least every selector's accuracy on the same pool
    assert max(m["best_of_n_accuracy"], m["majority_accuracy"]) <= m["pass_at_n"] <= 1.0
    assert 0 <= m["methods_beating_cot"] <= 5
    assert 0 <= m["reviewer_precision"] <= 1 and 0 <= m["reviewer_recall"] <= 1
    assert m["tokens_per_s_batch_1"] > 0 and m["tokens_per_s_largest_batch"] > 0
    assert 0 <= m["model_0_cot_accuracy"] <= 1 and 0 <= m["model_1_cot_accuracy"] <= 1
    # costs: one greedy solution <= 16 tokens; three samples cost more than one solution
    assert 1 <= m["cot_tokens"] <= 16
    assert m["best_of_n_tokens"] == m["majority_tokens"] > m["cot_tokens"] * 1.5
    assert m["self_refine_tokens"] > m["cot_tokens"] and m["refine_no_review_tokens"] > m[
        "cot_tokens"]
    assert m["beam_tokens"] > m["cot_tokens"]
