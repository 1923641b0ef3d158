"""Run profiles: every size, step count and asset name a notebook uses, in one place.

A notebook's values live beside it: ``notebooks/<assignment-id>/<stem>.toml`` for
``<stem>.ipynb``, one table per profile with the same keys in each. The notebook's setup call
(``runtime.setup``) reads it through ``config(question, profile, **overrides)``, where the
question is the notebook's path under ``notebooks/`` without suffix, e.g.
``"sharif-1402-hw3/transformer_architecture"``. The three profiles run the same code; only
values differ:

- ``smoke``: tiny models and data, seconds, offline (the test suite and CI);
- ``small``: real small assets on the CPU, minutes (the default of ``make run-all``);
- ``full``: the assignment's own scale (hub models and datasets, a GPU).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helpers.nb import NOTEBOOK_DIR, PROJECT_ROOT

PROFILES: tuple[str, ...] = ("smoke", "small", "full")

CONFIG_ROOT = NOTEBOOK_DIR  # <assignment-id>/<stem>.toml beside <stem>.ipynb


def questions() -> list[str]:
    """Every question with a table, as ``"<assignment-id>/<stem>"``."""
    return sorted(str(p.relative_to(CONFIG_ROOT).with_suffix(""))
                  for p in CONFIG_ROOT.glob("*/*.toml"))


def config_path(question: str | Path) -> Path:
    """The TOML file of a question: ``"<assignment-id>/<stem>"`` names
    ``notebooks/<assignment-id>/<stem>.toml``; a notebook path (``.ipynb``, absolute or
    relative to the project) names the ``<stem>.toml`` beside it."""
    text = str(question)
    if isinstance(question, Path) or text.endswith((".ipynb", ".toml")):
        path = Path(question)
        return (path if path.is_absolute() else PROJECT_ROOT / path).with_suffix(".toml")
    return CONFIG_ROOT / f"{text}.toml"


def question_name(question: str | Path) -> str:
    """``"<assignment-id>/<stem>"`` for a notebook under ``notebooks/``, else its stem."""
    path = config_path(question).resolve()
    try:
        return str(path.relative_to(CONFIG_ROOT.resolve()).with_suffix(""))
    except ValueError:
        return path.stem


def table(question: str | Path) -> dict[str, dict[str, Any]]:
    """The ``{profile: {key: value}}`` table of ``question``, read from its TOML file."""
    path = config_path(question)
    if not path.exists():
        raise ValueError(f"unknown question {str(question)!r}: no config {path.name} "
                         f"(known: {', '.join(questions())})")
    with path.open("rb") as f:
        data = tomllib.load(f)
    missing = [p for p in PROFILES if p not in data]
    if missing:
        raise ValueError(f"{path.name} lacks the profile table(s) {missing}")
    return {p: data[p] for p in PROFILES}


class Config(dict):
    """A profile's values for one question, readable as ``cfg.key`` or ``cfg["key"]``."""

    def __init__(self, question: str, profile: str, values: Mapping[str, Any],
                 overridden: tuple[str, ...] = ()):
        super().__init__(values)
        self.question = question
        self.profile = profile
        self.overridden = overridden  # keys whose values overrides changed from the profile's

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(
                f"config of {self.question!r} has no key {key!r}; keys: {sorted(self)}"
            ) from None

    def summary(self) -> str:
        """One line: question, profile and every value."""
        items = ", ".join(f"{k}={v}" for k, v in self.items())
        return f"[{self.question} @ {self.profile}] {items}"


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is a known profile name, else raise ``ValueError``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    return profile


def config(question: str | Path, profile: str, **overrides: Any) -> Config:
    """The values of ``question`` at ``profile``, with ``overrides`` applied.

    Raises ``ValueError`` for an unknown question, profile or override key, and for an
    override whose type does not match the default's (an int is accepted for a float).
    """
    check_profile(profile)
    values = dict(table(question)[profile])
    question = question_name(question)
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(
            f"unknown override key(s) {unknown} for {question!r}; valid keys: {sorted(values)}"
        )
    defaults = dict(values)
    for key, new in overrides.items():
        old = values[key]
        ok = isinstance(new, type(old)) or (isinstance(old, float) and isinstance(new, int))
        if isinstance(old, int) and isinstance(new, bool) != isinstance(old, bool):
            ok = False
        if old is not None and not ok:
            raise ValueError(
                f"override {key}={new!r} has type {type(new).__name__}; "
                f"expected {type(old).__name__} like the default {old!r}"
            )
        values[key] = float(new) if isinstance(old, float) else new
    changed = tuple(key for key in overrides if values[key] != defaults[key])
    return Config(question, profile, values, changed)
