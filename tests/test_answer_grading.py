"""helpers.answer_grading: the answer extractor and the equivalence check on tricky cases."""

import pytest

from helpers import answer_grading as A


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
    assert A.extract_answer(text) == expected


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
    assert A.answers_equivalent(a, b) and A.answers_equivalent(b, a)


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_answers(a, b):
    assert not A.answers_equivalent(a, b)


def test_no_answer_is_never_correct():
    assert not A.answers_equivalent(None, "5")


def test_at_least_thirty_tricky_cases():
    assert len(EQUIVALENT) + len(DIFFERENT) >= 30
