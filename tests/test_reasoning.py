"""helpers.reasoning: the batched generator against HF ``generate``, the answer extractor and
equivalence check on tricky cases, the problem sets, the method plumbing, and the notebook."""

import json

import pytest
import torch

from helpers import reasoning as R
from helpers.causal_lm import TINY_RANDOM, load_causal_lm

TEXTS = ["Tom has 3 apples and gets 4 more. The answer is 7.",
         "Each box holds 6 pens. How many pens are in 2 boxes? 12.",
         "Solve step by step.\nFirst add.\nThen subtract.\nThe answer is \\boxed{5}."] * 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tokenizer, _ = load_causal_lm(TINY_RANDOM, "smoke",
                                         tiny_dir=tmp_path_factory.mktemp("tiny"),
                                         tiny_texts=TEXTS, tiny_vocab_size=300)
    return model, tokenizer


PROMPTS = ["Tom has 3 apples", "Each box holds six pens and more boxes hold", "Solve"]


# ---------------------------------------------------------------------------- generation

def test_greedy_generation_equals_hf_generate_with_left_padding(tiny):
    model, tokenizer = tiny
    ours = R.generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3)
    tokenizer.padding_side = "left"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    for row, (completion,) in enumerate(ours):
        ids = new[row].tolist()
        eos = tokenizer.eos_token_id
        n = ids.index(eos) + 1 if eos in ids else len(ids)
        assert completion.n_tokens == n
        assert completion.text == tokenizer.decode(ids[:n], skip_special_tokens=True)
        torch.testing.assert_close(torch.tensor(completion.logprob),
                                   scores[row, :n].sum().float(), rtol=1e-4, atol=1e-4)


def test_greedy_generation_does_not_depend_on_batching(tiny):
    model, tokenizer = tiny
    together = R.generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3)
    alone = R.generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=1)
    assert [c[0].text for c in together] == [c[0].text for c in alone]
    for (a,), (b,) in zip(together, alone, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_sampling_is_seeded_and_returns_every_sample(tiny):
    model, tokenizer = tiny

    def run(seed):
        return R.generate(model, tokenizer, PROMPTS[:2], max_new_tokens=8, num_samples=3,
                          temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(0), run(0), run(1)
    assert [len(s) for s in first] == [3, 3]
    assert [[c.text for c in s] for s in first] == [[c.text for c in s] for s in again]
    assert [[c.text for c in s] for s in first] != [[c.text for c in s] for s in other]
    assert all(c.logprob < 0 and 1 <= c.n_tokens <= 8 for s in first for c in s)


def test_stop_at_newline_ends_after_the_first_line_break(tiny):
    model, tokenizer = tiny
    newline = R.newline_token_ids(tokenizer)
    assert len(newline) > 0 and all("\n" in tokenizer.decode([i]) for i in newline.tolist())
    outs = R.generate(model, tokenizer, PROMPTS, max_new_tokens=40, num_samples=16,
                      temperature=1.5, stop_at_newline=True, newline_ids=newline,
                      generator=torch.Generator().manual_seed(0))
    for completion in (c for s in outs for c in s):
        pieces = [tokenizer.decode([i]) for i in completion.token_ids]
        assert len(pieces) == completion.n_tokens
        assert not any("\n" in piece for piece in pieces[:-1])
        assert ("\n" in pieces[-1]) == (completion.finish == "newline")
    assert any(c.finish == "newline" for s in outs for c in s)


@pytest.mark.parametrize(("top_p", "top_k", "shortlist"), [
    (0.9, None, 64),   # nucleus inside the shortlist: the fast path
    (0.9, None, 3),    # nucleus wider than the shortlist: the full-vocabulary fallback
    (None, 5, 3),      # top-k beyond the shortlist
    (None, 4, 64),
    (0.7, 4, 64),      # top-k, then the nucleus of the renormalised top-k
    (0.8, 10, 3),      # both, wider than the shortlist
    (0.5, 10, 8),      # both; the nucleus fits in the shortlist
])
def test_sample_next_draws_from_the_filtered_distribution(top_p, top_k, shortlist):
    from helpers.generation import filter_logits

    logits = torch.linspace(0.0, 3.0, 12).repeat(4000, 1)
    drawn = R.sample_next(logits, top_p, top_k, torch.Generator().manual_seed(0), shortlist)
    expected = filter_logits(logits[:1], top_k, top_p).softmax(-1)[0]
    frequency = torch.bincount(drawn, minlength=12).double() / len(drawn)
    torch.testing.assert_close(frequency, expected.double(), atol=0.03, rtol=0)
    assert set(drawn.tolist()) == set(expected.nonzero().squeeze(-1).tolist())


def test_samples_share_their_prompt_but_not_their_draws(tiny):
    model, tokenizer = tiny
    (samples,) = R.generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, num_samples=6,
                            temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert len(samples) == 6 and len({c.text for c in samples}) > 1
    (greedy,) = R.generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, num_samples=3)
    assert len({(c.text, round(c.logprob, 4)) for c in greedy}) == 1


def test_generate_rejects_bad_sizes(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="positive"):
        R.generate(model, tokenizer, PROMPTS, max_new_tokens=0)


# ---------------------------------------------------------------------------- answers

@pytest.mark.parametrize(("text", "expected"), [
    ("so the result is \\boxed{\\frac{1}{2}} indeed", "\\frac{1}{2}"),
    ("\\boxed{a} then later \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed 5.", "5"),
    ("\\fbox{12}", "12"),
    ("The answer is: 11", "11"),
    ("Thus the final answer is $42$.", "42"),
    ("#### 60", "60"),
    ("truncated \\boxed{\\frac{1", None),
    ("no answer at all", None),
    ("\\boxed{}", None),
])
def test_extract_answer(text, expected):
    assert R.extract_answer(text) == expected


EQUIVALENT = [
    ("\\dfrac{1}{2}", "\\frac12"), ("\\tfrac{3}{4}", "\\frac{3}{4}"), ("x=5", "5"),
    ("x = 5", "5"), ("5 apples", "5"), ("18 dollars", "18"), ("\\$18", "18"),
    ("\\text{(B)}", "(B)"), ("\\text{east}", "east"), ("1,000", "1000"), ("0.5", "\\frac{1}{2}"),
    ("-\\frac{1}{3}", "-1/3"), (".5", "0.5"), ("3.0", "3"), ("10^{\\circ}", "10"),
    ("10^\\circ", "10"), ("50\\%", "50"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\pi/2", "\\frac{\\pi}{2}"), ("2x+1", "1+2x"),
    ("(1, 2)", "(1,2)"), ("(-\\infty, 3)", "(-\\infty,3)"), ("3, 1", "1,3"),
    ("\\left( 2, \\frac{1}{2} \\right)", "(2,0.5)"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\begin{pmatrix}1/2 & 3\\end{pmatrix}", "\\begin{pmatrix}\\frac{1}{2} & 3\\end{pmatrix}"),
    ("$9901$", "9901"), ("\\sqrt{51}", "\\sqrt{51}"), ("(a+5)(b+2)", "(b+2)(a+5)"),
    ("2^{3}", "8"), ("\\frac{12}{8}", "\\frac{3}{2}"),
]
DIFFERENT = [
    ("6", "7"), ("(1,2]", "[1,2]"), ("(1,2)", "(2,1)"), ("1,2", "1,2,3"), ("\\sqrt{2}", "2"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}"),
    ("x+1", "x-1"), ("\\frac{1}{0}", "1"), ("north", "east"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_answers(a, b):
    assert R.answers_equivalent(a, b) and R.answers_equivalent(b, a)


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_answers(a, b):
    assert not R.answers_equivalent(a, b)


def test_no_answer_is_never_correct():
    assert not R.answers_equivalent(None, "5")


def test_at_least_thirty_tricky_cases():
    assert len(EQUIVALENT) + len(DIFFERENT) >= 30


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


# ---------------------------------------------------------------------------- methods

PROBLEM = R.Problem("p", "2+3?", "5", "easy", "test")


def _c(text: str, logprob: float, n: int = 10, finish: str = "eos") -> R.Completion:
    return R.Completion(text, n, logprob, finish)


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


def test_methods_run_end_to_end_on_a_tiny_model(tiny):
    model, tokenizer = tiny
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
    assert m["n_problems"] == 7 and m["best_of_n"] == 3  # 5 levels x 1 + 1 GSM8K + 1 MATH
    for key in ("cot", "best_of_n", "majority", "beam", "self_refine", "refine_no_review"):
        assert 0.0 <= m[f"{key}_accuracy"] <= 1.0
        assert m[f"{key}_wall_s"] > 0
    # costs: one greedy solution <= 16 tokens; three samples cost more than one solution
    assert 1 <= m["cot_tokens"] <= 16
    assert m["best_of_n_tokens"] == m["majority_tokens"] > m["cot_tokens"] * 1.5
    assert m["self_refine_tokens"] > m["cot_tokens"] and m["refine_no_review_tokens"] > m[
        "cot_tokens"]
    assert m["beam_tokens"] > m["cot_tokens"]
