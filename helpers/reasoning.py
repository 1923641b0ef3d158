"""Reasoning problems and inference-time scaling methods, model-agnostic.

- problems: :func:`arithmetic_problems` (seeded word problems with exact answers at graded
  difficulties) and loaders for GSM8K and MATH-500 lines;
- methods: chain of thought, best-of-N, majority vote, step-wise beam search and
  self-refinement, each returning one :class:`Attempt` per problem with its token cost and
  its answer graded by :mod:`helpers.answer_grading`. Every method generates through a
  :class:`Solver`, which calls :func:`helpers.llm_generation.generate`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from helpers.answer_grading import answers_equivalent, extract_answer, find_answer, last_boxed
from helpers.llm_generation import (
    Completion,
    DecodeState,
    chat_prompt,
    continue_generation,
    generate,
    newline_token_ids,
)

# ---------------------------------------------------------------------------- problems

@dataclass(frozen=True)
class Problem:
    """A question with its exact answer; ``level`` names its difficulty group."""

    id: str
    question: str
    answer: str
    level: str
    source: str


_NAMES = ("Tom", "Sara", "Ali", "Maryam", "Ben", "Lily", "Omid", "Nina", "Reza", "Emma")
_THINGS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "coins", "cards")
_BOXES = (("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"))

#: the generated difficulty levels, easiest first
ARITHMETIC_LEVELS = ("add/subtract 1-digit", "add/subtract 2- and 1-digit",
                     "add/subtract 2-digit", "multiply 1-digit", "2 steps")


def _arithmetic_problem(level: str, rng) -> tuple[str, int]:
    name, thing, (box, boxes) = rng.choice(_NAMES), rng.choice(_THINGS), rng.choice(_BOXES)
    add = rng.random() < 0.5
    if level in ARITHMETIC_LEVELS[:3]:
        digits = {0: ((2, 9), (2, 9)), 1: ((11, 99), (2, 9)), 2: ((11, 99), (11, 99))}
        (a_low, a_high), (b_low, b_high) = digits[ARITHMETIC_LEVELS.index(level)]
        a, b = rng.randint(a_low, a_high), rng.randint(b_low, b_high)
        if add:
            return f"{name} has {a} {thing} and gets {b} more. How many {thing} does " \
                   f"{name} have now?", a + b
        a, b = max(a, b), min(a, b) - (a == b)  # a positive difference, digits kept
        return f"{name} has {a} {thing} and gives away {b}. How many {thing} does " \
               f"{name} have left?", a - b
    if level == ARITHMETIC_LEVELS[3]:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"Each {box} holds {a} {thing}. How many {thing} are in {b} {boxes}?", a * b
    if level == ARITHMETIC_LEVELS[4]:
        a, b, c = rng.randint(10, 30), rng.randint(2, 9), rng.randint(2, 9)
        if add:
            return f"{name} has {a} {thing}, gets {b} more and then gives away {c}. How many " \
                   f"{thing} does {name} have now?", a + b - c
        return f"{name} buys {b} {boxes} with {c} {thing} in each {box} and already had {a} " \
               f"{thing}. How many {thing} does {name} have now?", a + b * c
    raise ValueError(f"unknown level {level!r}; known: {', '.join(ARITHMETIC_LEVELS)}")


def arithmetic_problems(per_level: int, seed: int,
                        levels: Sequence[str] = ARITHMETIC_LEVELS) -> list[Problem]:
    """``per_level`` seeded word problems of every level of :data:`ARITHMETIC_LEVELS`, each
    with its exact integer answer; the same seed gives the same problems."""
    import random

    rng = random.Random(seed)
    problems = []
    for level in levels:
        for i in range(per_level):
            question, answer = _arithmetic_problem(level, rng)
            problems.append(Problem(f"arith-{ARITHMETIC_LEVELS.index(level)}-{i}", question,
                                    str(answer), level, "generated"))
    return problems


def _jsonl(path) -> list[dict]:
    import json
    from pathlib import Path

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not a JSON line: {error}") from None
    return rows


def load_gsm8k(path, n: int | None = None) -> list[Problem]:
    """The first ``n`` problems (all when ``None``) of a GSM8K ``.jsonl`` file (answer after
    ``####``), with ids ``gsm8k-<file stem>-<line index>``."""
    from pathlib import Path

    problems = []
    for i, row in enumerate(_jsonl(path)[:n]):
        if "####" not in row.get("answer", ""):
            raise ValueError(f"{path}: row {i} has no '#### answer'")
        answer = row["answer"].split("####")[-1].strip().replace(",", "")
        problems.append(Problem(f"gsm8k-{Path(path).stem}-{i}", row["question"], answer,
                                "GSM8K", "gsm8k"))
    return problems


def load_math500(path, n: int | None = None, max_level: int = 5,
                 min_level: int = 1) -> list[Problem]:
    """The first ``n`` (all when ``None``) MATH-500 problems of difficulty level in
    ``[min_level, max_level]`` (file order); ``level`` names the problem's own level."""
    rows = [r for r in _jsonl(path) if min_level <= int(r["level"]) <= max_level][:n]
    return [Problem(f"math500-{r['unique_id']}", r["problem"], r["answer"],
                    f"MATH level {r['level']}", "math500") for r in rows]


def seeded_sample(problems: Sequence[Problem], n: int, seed: int,
                  exclude: Sequence[Problem] = ()) -> list[Problem]:
    """``n`` problems drawn without replacement by a generator seeded with ``seed`` (in file
    order), none of whose ids is in ``exclude``: a fixed subset chosen without looking at any
    answer."""
    import random

    banned = {p.id for p in exclude}
    pool = [p for p in problems if p.id not in banned]
    if n > len(pool):
        raise ValueError(f"asked for {n} problems, only {len(pool)} are available")
    chosen = set(random.Random(seed).sample(range(len(pool)), n))
    return [p for i, p in enumerate(pool) if i in chosen]


# ---------------------------------------------------------------------------- methods

@dataclass
class Solver:
    """A model with its prompt and decoding settings; every method generates through it.

    ``system`` and ``examples`` (worked question/answer turns) form the chain-of-thought
    prompt; sampled calls use ``temperature`` and ``top_p``; every completion is capped at
    ``max_new_tokens``; with ``stop_at_answer`` a completion ends at its closed ``\\boxed{}``.
    """

    model: nn.Module
    tokenizer: object
    system: str
    examples: Sequence[tuple[str, str]] = ()
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float | None = 0.95
    batch_size: int = 16
    generator: torch.Generator | None = None
    stop_at_answer: bool = True

    def prompt(self, question: str, prefix: str = "") -> str:
        return chat_prompt(self.tokenizer, question, self.system, self.examples, prefix)

    def complete(self, prompts: Sequence[str], *, sample: bool = False, num_samples: int = 1,
                 max_new_tokens: int | None = None, **kwargs) -> list[list[Completion]]:
        """Completions of formatted prompts (:func:`helpers.llm_generation.generate`), greedy
        unless ``sample``; ``[prompt][sample]``."""
        return generate(self.model, self.tokenizer, prompts,
                        **self._decoding(sample, num_samples, max_new_tokens, kwargs))

    def resume(self, states: Sequence[DecodeState], *, sample: bool = False,
               num_samples: int = 1, max_new_tokens: int | None = None,
               **kwargs) -> list[list[Completion]]:
        """Continuations of kept completions
        (:func:`helpers.llm_generation.continue_generation`); ``[state][sample]``."""
        return continue_generation(self.model, self.tokenizer, states,
                                   **self._decoding(sample, num_samples, max_new_tokens, kwargs))

    def _decoding(self, sample: bool, num_samples: int, max_new_tokens: int | None,
                  extra: dict) -> dict:
        return {"max_new_tokens": max_new_tokens or self.max_new_tokens,
                "num_samples": num_samples,
                "temperature": self.temperature if sample else 0.0, "top_p": self.top_p,
                "batch_size": self.batch_size, "generator": self.generator,
                "stop_at_answer": self.stop_at_answer, **extra}


@dataclass
class Attempt:
    """A method's final solution of one problem and what it cost: ``n_tokens`` generated
    tokens over all ``n_calls`` completions made for this problem."""

    problem: Problem
    method: str
    text: str
    finish: str
    n_tokens: int
    n_calls: int
    answer: str | None = field(init=False, default=None)
    answer_source: str = field(init=False, default="none")
    correct: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.answer, self.answer_source = find_answer(self.text)
        self.correct = answers_equivalent(self.answer, self.problem.answer)

    @property
    def outcome(self) -> str:
        """``correct``, ``truncated`` (no answer, hit the token cap), ``no answer`` or ``wrong``."""
        if self.correct:
            return "correct"
        if self.answer is None:
            return "truncated" if self.finish == "length" else "no answer"
        return "wrong"


def chain_of_thought(solver: Solver, problems: Sequence[Problem]) -> list[Attempt]:
    """One greedy step-by-step solution per problem."""
    outs = solver.complete([solver.prompt(p.question) for p in problems], desc="chain of thought")
    return [Attempt(p, "chain of thought", c.text, c.finish, c.n_tokens, 1)
            for p, (c,) in zip(problems, outs, strict=True)]


def sample_solutions(solver: Solver, problems: Sequence[Problem],
                     n: int) -> list[list[Completion]]:
    """``n`` sampled solutions per problem (``[problem][sample]``), shared by best-of-N and
    majority vote so that both are scored on the same samples."""
    return solver.complete([solver.prompt(p.question) for p in problems], sample=True,
                           num_samples=n, desc=f"{n} samples per problem")


def best_of_n(problems: Sequence[Problem], samples: Sequence[Sequence[Completion]],
              n: int) -> list[Attempt]:
    """Of the first ``n`` samples of every problem, the one with the highest mean token
    log-probability; the cost is all ``n`` samples."""
    attempts = []
    for problem, pool in zip(problems, samples, strict=True):
        pool = pool[:n]
        best = max(pool, key=lambda c: c.mean_logprob)
        attempts.append(Attempt(problem, f"best-of-{n}", best.text, best.finish,
                                sum(c.n_tokens for c in pool), len(pool)))
    return attempts


def majority_vote(problems: Sequence[Problem], samples: Sequence[Sequence[Completion]],
                  n: int) -> list[Attempt]:
    """Self-consistency: of the first ``n`` samples, answers are grouped by
    :func:`answers_equivalent` and a sample of the largest group is returned (ties: the
    group with the higher summed mean log-probability); samples without an answer abstain."""
    attempts = []
    for problem, pool in zip(problems, samples, strict=True):
        pool = list(pool[:n])
        groups: list[list[Completion]] = []
        for completion in pool:
            answer = extract_answer(completion.text)
            if answer is None:
                continue
            for group in groups:
                if answers_equivalent(answer, extract_answer(group[0].text)):
                    group.append(completion)
                    break
            else:
                groups.append([completion])
        if groups:
            winner = max(groups, key=lambda g: (len(g), sum(c.mean_logprob for c in g)))
            chosen = max(winner, key=lambda c: c.mean_logprob)
        else:
            chosen = max(pool, key=lambda c: c.mean_logprob)
        attempts.append(Attempt(problem, f"majority-of-{n}", chosen.text, chosen.finish,
                                sum(c.n_tokens for c in pool), len(pool)))
    return attempts


@dataclass
class _Beam:
    token_ids: tuple[int, ...]
    logprob: float
    done: bool
    finish: str = "length"
    state: DecodeState | None = None  # to continue an unfinished beam


def stepwise_beam_search(solver: Solver, problems: Sequence[Problem], beam_width: int = 3,
                         top_k: int = 2, max_steps: int = 5,
                         step_tokens: int = 64) -> list[Attempt]:
    """Step-level beam search: a step is one line (at most ``step_tokens`` tokens).

    The first step samples ``beam_width * top_k`` lines, later steps ``top_k`` continuations
    of every unfinished beam; finished beams (an end of text or a ``\\boxed{}``) stay in the
    pool, and the ``beam_width`` candidates of highest cumulative log-probability survive.
    After ``max_steps`` the best beam is returned; if it is unfinished it is completed
    greedily (up to ``max_new_tokens``) so that every problem gets an answer attempt. Beams
    keep their key/value caches (:func:`helpers.llm_generation.continue_generation`): a step
    reads only its own new tokens, never the prompt or the beam's earlier lines again.
    """
    newline_ids = newline_token_ids(solver.tokenizer)
    step_options = {"sample": True, "max_new_tokens": step_tokens, "stop_at_newline": True,
                    "newline_ids": newline_ids, "keep_states": True}
    beams = [[_Beam((), 0.0, False)] for _ in problems]
    tokens, calls = [0] * len(problems), [0] * len(problems)
    for step in range(max_steps):
        jobs = [(i, beam) for i, pool in enumerate(beams) for beam in pool if not beam.done]
        if not jobs:
            break
        desc = f"beam step {step + 1}"
        if step == 0:
            outs = solver.complete([solver.prompt(problems[i].question) for i, _ in jobs],
                                   num_samples=beam_width * top_k, desc=desc, **step_options)
        else:
            outs = solver.resume([beam.state for _, beam in jobs], num_samples=top_k,
                                 desc=desc, **step_options)
        pools = [[beam for beam in pool if beam.done] for pool in beams]
        for (i, beam), completions in zip(jobs, outs, strict=True):
            for c in completions:
                tokens[i] += c.n_tokens
                calls[i] += 1
                done = c.finish in ("eos", "answer") or last_boxed(c.text) is not None
                pools[i].append(_Beam(beam.token_ids + c.token_ids, beam.logprob + c.logprob,
                                      done, c.finish, None if done else c.state))
        beams = [sorted(pool, key=lambda b: -b.logprob)[:beam_width] for pool in pools]
    best = [pool[0] for pool in beams]
    unfinished = [i for i, beam in enumerate(best) if not beam.done]
    if unfinished:
        outs = solver.resume([best[i].state for i in unfinished],
                             desc="finish unfinished beams")
        for i, (c,) in zip(unfinished, outs, strict=True):
            best[i] = _Beam(best[i].token_ids + c.token_ids, best[i].logprob + c.logprob, True,
                            c.finish)
            tokens[i] += c.n_tokens
            calls[i] += 1
    return [Attempt(p, "beam search", solver.tokenizer.decode(b.token_ids,
                                                              skip_special_tokens=True),
                    b.finish, tokens[i], calls[i])
            for i, (p, b) in enumerate(zip(problems, best, strict=True))]


REVIEW_PROMPT = ("Check this solution of a math problem.\n\nProblem: {question}\n\n"
                 "Solution: {solution}\n\nIf any step or the final answer is wrong, reply "
                 "NEEDS_REFINE: yes. If everything is correct, reply NEEDS_REFINE: no.")
REFINE_PROMPT = ("{question}\n\nA previous attempt, which may contain a mistake:\n{solution}\n\n"
                 "Solve the problem again step by step, correcting any mistake, and give the "
                 "final answer as \\boxed{{answer}}.")


def review_verdict(reply: str) -> str:
    """``yes``/``no`` from a reviewer's reply (``unclear`` when neither word appears first)."""
    match = re.search(r"\b(yes|no)\b", reply.lower())
    return match.group(1) if match else "unclear"


def self_refine(solver: Solver, problems: Sequence[Problem], initial: Sequence[Attempt],
                rounds: int = 2, review_prompt: str = REVIEW_PROMPT,
                refine_prompt: str = REFINE_PROMPT, review_tokens: int = 4,
                always_refine: bool = False) -> tuple[list[Attempt], list[list[str]]]:
    """Self-refinement from the ``initial`` solutions (their cost is included): each round the
    model reviews every open solution (an answer continuing ``NEEDS_REFINE:``, greedy,
    ``review_tokens`` tokens); a ``yes`` gets a greedy rewrite, anything else closes the
    problem. ``always_refine`` skips the review and rewrites every solution every round (to
    see what the rewrite alone does). Returns the attempts and every problem's verdicts."""
    texts = [a.text for a in initial]
    finishes = [a.finish for a in initial]
    tokens = [a.n_tokens for a in initial]
    calls = [a.n_calls for a in initial]
    verdicts: list[list[str]] = [[] for _ in problems]
    open_ = list(range(len(problems)))
    for _ in range(rounds):
        if not open_:
            break
        if always_refine:
            refine = open_
        else:
            refine = _review(solver, problems, texts, open_, review_prompt, review_tokens,
                             tokens, calls, verdicts)
        outs = solver.complete([solver.prompt(refine_prompt.format(
            question=problems[i].question, solution=texts[i])) for i in refine],
            desc="rewrite") if refine else []
        for i, (c,) in zip(refine, outs, strict=True):
            texts[i], finishes[i] = c.text, c.finish
            tokens[i] += c.n_tokens
            calls[i] += 1
        open_ = refine
    name = "refine without review" if always_refine else "self-refine"
    attempts = [Attempt(p, name, texts[i], finishes[i], tokens[i], calls[i])
                for i, p in enumerate(problems)]
    return attempts, verdicts


def _review(solver: Solver, problems: Sequence[Problem], texts: list[str], open_: list[int],
            review_prompt: str, review_tokens: int, tokens: list[int], calls: list[int],
            verdicts: list[list[str]]) -> list[int]:
    """Ask for a verdict on every open solution (costs added in place); those judged ``yes``."""
    reviews = solver.complete([chat_prompt(solver.tokenizer, review_prompt.format(
        question=problems[i].question, solution=texts[i]), assistant_prefix="NEEDS_REFINE:")
        for i in open_], max_new_tokens=review_tokens, desc="review")
    flagged = []
    for i, (c,) in zip(open_, reviews, strict=True):
        tokens[i] += c.n_tokens
        calls[i] += 1
        verdicts[i].append(review_verdict(c.text))
        if verdicts[i][-1] == "yes":
            flagged.append(i)
    return flagged


def attempts_frame(attempts: Sequence[Attempt]):
    """One row per attempt: method, problem id, level, source, gold and predicted answers,
    whether correct, outcome, answer source, generated tokens and calls (a
    ``pandas.DataFrame``)."""
    import pandas as pd

    return pd.DataFrame([{
        "method": a.method, "problem": a.problem.id, "level": a.problem.level,
        "source": a.problem.source,
        "gold": a.problem.answer, "predicted": a.answer, "correct": a.correct,
        "outcome": a.outcome, "answer_source": a.answer_source, "tokens": a.n_tokens,
        "calls": a.n_calls} for a in attempts])
