"""Evaluation metrics shared by the notebooks (checked against scikit-learn in the tests)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_array(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           average: str = "binary") -> dict[str, float]:
    """Accuracy, precision, recall and F1 of label predictions ``(n,)``.

    ``average="binary"`` scores the positive class 1; ``"macro"`` averages over classes.
    Undefined ratios (no predicted or no true positives) count as 0.
    """
    t, p = _as_array(y_true).ravel(), _as_array(y_pred).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} must be equal, non-empty")
    if average not in ("binary", "macro"):
        raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")
    classes = [1] if average == "binary" else np.union1d(t, p).tolist()
    precision, recall, f1 = [], [], []
    for c in classes:
        tp = np.sum((p == c) & (t == c))
        pr = tp / max(np.sum(p == c), 1)
        rc = tp / max(np.sum(t == c), 1)
        precision.append(pr)
        recall.append(rc)
        f1.append(0.0 if pr + rc == 0 else 2 * pr * rc / (pr + rc))
    return {"accuracy": float(np.mean(t == p)), "precision": float(np.mean(precision)),
            "recall": float(np.mean(recall)), "f1": float(np.mean(f1))}


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """RMSE, MAE, MAPE (in %, over non-zero targets) and R² of ``(n,)`` predictions."""
    t = _as_array(y_true).astype(np.float64).ravel()
    p = _as_array(y_pred).astype(np.float64).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} must be equal, non-empty")
    err = p - t
    nonzero = t != 0
    total = np.sum((t - t.mean()) ** 2)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "mape": float(100 * np.mean(np.abs(err[nonzero] / t[nonzero]))) if nonzero.any()
            else float("nan"),
            "r2": float(1 - np.sum(err ** 2) / total) if total > 0 else float("nan")}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over ``texts``."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
