"""Run profiles: every size, step count and asset name a notebook uses, in one place.

A notebook calls ``config(question, profile, **overrides)`` once and reads everything from
the returned :class:`Config`. The three profiles run the same code; only values differ:

- ``smoke``: tiny models and data, seconds, offline (the test suite and CI);
- ``small``: real small assets on the CPU, minutes (the default of ``make run-all``);
- ``full``: the assignment's own scale (hub models and datasets, a GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROFILES: tuple[str, ...] = ("smoke", "small", "full")

# question -> profile -> values. Each question lists the same keys in every profile.
QUESTIONS: dict[str, dict[str, dict[str, Any]]] = {
    # sharif-1402-hw3 P6: the Annotated Transformer step by step, plus the copy task.
    "transformer_architecture": {
        "smoke": dict(
            copy_vocab=11, copy_seq_len=10, copy_layers=1, copy_d_model=32, copy_d_ff=64,
            copy_heads=2, copy_batch_size=32, copy_batches_per_epoch=10, copy_epochs=3,
            copy_warmup=20, copy_lr_factor=0.5, copy_eval_sequences=64,
        ),
        "small": dict(
            copy_vocab=11, copy_seq_len=10, copy_layers=2, copy_d_model=64, copy_d_ff=128,
            copy_heads=4, copy_batch_size=80, copy_batches_per_epoch=20, copy_epochs=20,
            copy_warmup=100, copy_lr_factor=0.5, copy_eval_sequences=500,
        ),
        # The Annotated Transformer's own copy-task run: 2 layers of the base model.
        "full": dict(
            copy_vocab=11, copy_seq_len=10, copy_layers=2, copy_d_model=512, copy_d_ff=2048,
            copy_heads=8, copy_batch_size=80, copy_batches_per_epoch=20, copy_epochs=20,
            copy_warmup=400, copy_lr_factor=0.5, copy_eval_sequences=1000,
        ),
    },
}


class Config(dict):
    """A profile's values for one question, readable as ``cfg.key`` or ``cfg["key"]``."""

    def __init__(self, question: str, profile: str, values: Mapping[str, Any]):
        super().__init__(values)
        self.question = question
        self.profile = profile

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


def config(question: str, profile: str, **overrides: Any) -> Config:
    """The values of ``question`` at ``profile``, with ``overrides`` applied.

    Raises ``ValueError`` for an unknown question, profile or override key, and for an
    override whose type does not match the default's (an int is accepted for a float).
    """
    check_profile(profile)
    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}; known: {', '.join(sorted(QUESTIONS))}")
    values = dict(QUESTIONS[question][profile])
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(
            f"unknown override key(s) {unknown} for {question!r}; valid keys: {sorted(values)}"
        )
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
    return Config(question, profile, values)
