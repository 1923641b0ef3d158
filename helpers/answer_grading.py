"""Grading of maths answers: :func:`extract_answer` (the last ``\\boxed{...}`` with nested
braces, then an "answer is" phrase), :func:`normalize_answer` and :func:`answers_equivalent`
(string, number, tuple/interval/matrix and sympy checks).
"""

from __future__ import annotations

import re


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the balanced ``{...}`` group opening at ``text[start]`` and the index
    after it; ``None`` when the group never closes (a truncated answer)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces kept;
    ``\\boxed 5`` (no braces) gives ``5``."""
    found = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        end = match.end()
        if end < len(text) and text[end] == "{":
            group = _braced(text, end)
            if group is not None:
                found = group[0]
        else:
            token = re.match(r"[^\s$.,]+", text[end:])
            if token:
                found = token.group(0)
    return found


_ANSWER_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def find_answer(text: str) -> tuple[str | None, str]:
    """``(answer, source)``: the last ``\\boxed{}`` (source ``"boxed"``), else the last "the
    answer is ..." or ``#### ...`` line (``"phrase"``), else ``(None, "none")``."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip(), "boxed"
    for line in reversed(text.splitlines()):
        match = _ANSWER_PHRASE.search(line) or re.search(r"^\s*####\s*(.+)", line)
        if match:
            answer = match.group(1).strip().rstrip(".").strip().strip("$").strip()
            if answer:
                return answer, "phrase"
    return None, "none"


def extract_answer(text: str) -> str | None:
    """The final answer of a solution (see :func:`find_answer`), or ``None``."""
    return find_answer(text)[0]


_UNIT_WORDS = re.compile(r"^(-?[\d.,/]+)\s*(?:[a-zA-Z]+\.?\s*)+$")


def _unwrap(command: str, s: str) -> str:
    """Replace every ``\\command{x}`` by ``x`` (nested braces handled)."""
    pattern = "\\" + command
    while (i := s.find(pattern + "{")) != -1:
        group = _braced(s, i + len(pattern))
        if group is None:
            break
        s = s[:i] + group[0] + s[group[1]:]
    return s


def normalize_answer(answer: str) -> str:
    """A canonical string for an answer: no ``$``, spacing, ``\\left``/``\\right``, ``\\text``,
    degree or percent signs, units after a number, a leading ``x =``; ``\\dfrac``/``\\tfrac`` as
    ``\\frac``; ``\\frac12`` as ``\\frac{1}{2}``; thousands separators removed; ``.5`` as
    ``0.5``; a trailing period dropped."""
    s = answer.strip().strip("$").strip()
    for command in ("text", "textbf", "mathrm", "mathbf", "mbox", "textit", "boxed"):
        s = _unwrap(command, s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"(?<!\\)\\[!,;: ]", "", s)  # spacing commands; a matrix row break is kept
    for token in ("\\left", "\\right", "\\displaystyle"):
        s = s.replace(token, "")
    for token in ("^{\\circ}", "^\\circ", "°", "\\%", "%", "\\$"):
        s = s.replace(token, "")
    s = s.strip().rstrip(".").strip()
    if (m := re.fullmatch(r"[a-zA-Z]\w*\s*=\s*(.+)", s)) and "=" not in m.group(1):
        s = m.group(1).strip()
    if m := _UNIT_WORDS.match(s):
        s = m.group(1)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)
    s = s.rstrip(".")
    return s


def _as_number(s: str) -> float | None:
    """``s`` (normalised) as a number: integers, decimals, ``a/b`` and ``\\frac{a}{b}``."""
    if re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", s):
        return float(s)
    if m := re.fullmatch(r"([-+]?)(?:\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}"
                         r"|(-?\d+(?:\.\d+)?)/(-?\d+(?:\.\d+)?))", s):
        num, den = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
        if float(den) == 0:
            return None
        return (-1 if m.group(1) == "-" else 1) * float(num) / float(den)
    return None


def _split_top_level(s: str, sep: str = ",") -> list[str]:
    """``s`` split at the separators that are not inside brackets or braces."""
    parts, depth, current = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _wrapped(s: str) -> bool:
    """Whether the bracket opening ``s`` closes at its last character: ``(1,2]`` yes,
    ``(a+5)(b+2)`` no."""
    if len(s) < 2 or s[0] not in "([{" or s[-1] not in ")]}":
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0:
            return i == len(s) - 1
    return False


def _matrix_entries(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s)
    if not m:
        return None
    return [row.split("&") for row in m.group(1).split("\\\\") if row]


def _latex_to_sympy(s: str):
    """A sympy expression for simple LaTeX (fractions, roots, powers, pi), or ``None``."""
    if len(s) > 200:
        return None
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    text = s
    for _ in range(10):  # innermost first, so nested fractions and roots unwind
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", text)
        new = re.sub(r"\\sqrt\[([^{}\[\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", new)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        new = re.sub(r"\^\{([^{}]*)\}", r"**(\1)", new)
        if new == text:
            break
        text = new
    text = (text.replace("^", "**").replace("\\pi", "pi").replace("\\cdot", "*")
            .replace("\\times", "*").replace("\\infty", "oo").replace("{", "(").replace("}", ")"))
    if "\\" in text or "=" in text:
        return None
    try:
        return parse_expr(text, transformations=(*standard_transformations,
                                                 implicit_multiplication_application),
                          local_dict={"e": sympy.E, "pi": sympy.pi})
    except Exception:  # noqa: BLE001 - anything sympy cannot parse is "not equivalent"
        return None


def _sympy_equal(a: str, b: str) -> bool:
    import sympy

    ea, eb = _latex_to_sympy(a), _latex_to_sympy(b)
    if ea is None or eb is None:
        return False
    try:
        return bool(sympy.simplify(ea - eb) == 0)
    except Exception:  # noqa: BLE001
        return False


def _equal_normalized(a: str, b: str) -> bool:
    if a == b:
        return True
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return abs(na - nb) <= 1e-6 * max(1.0, abs(nb))
    ma, mb = _matrix_entries(a), _matrix_entries(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and len(ma) == len(mb)
                and all(len(ra) == len(rb) and all(map(_equal_normalized, ra, rb))
                        for ra, rb in zip(ma, mb, strict=True)))
    if _wrapped(a) and _wrapped(b):
        if (a[0], a[-1]) != (b[0], b[-1]):  # (1,2] is not [1,2]
            return False
        pa, pb = _split_top_level(a[1:-1]), _split_top_level(b[1:-1])
        return len(pa) == len(pb) and all(map(_equal_normalized, pa, pb))
    pa, pb = _split_top_level(a), _split_top_level(b)
    if len(pa) > 1 or len(pb) > 1:  # unbracketed lists: a set of solutions, order-free
        return len(pa) == len(pb) and all(
            any(_equal_normalized(x, y) for y in pb) for x in pa) and all(
            any(_equal_normalized(y, x) for x in pa) for y in pb)
    return _sympy_equal(a, b)


def answers_equivalent(predicted: str | None, gold: str) -> bool:
    """Whether ``predicted`` and ``gold`` are the same answer: equal after
    :func:`normalize_answer`, equal as numbers, element-wise equal tuples, intervals (bracket
    types must match) and matrices, order-free equal unbracketed lists, or expressions whose
    difference sympy simplifies to 0."""
    if predicted is None:
        return False
    return _equal_normalized(normalize_answer(predicted), normalize_answer(gold))
