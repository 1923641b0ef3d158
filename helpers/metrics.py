"""Evaluation metrics shared by the notebooks (checked against scikit-learn in the tests)."""

from __future__ import annotations

import math
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


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` (an accuracy, a match rate) measured on ``n``
    independent items: sqrt(p(1 − p)/n)."""
    if n <= 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"binomial_se needs 0 <= p <= 1 and n > 0, got p={p}, n={n}")
    return float(np.sqrt(p * (1.0 - p) / n))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``a − b`` over the same items (per-item scores of two methods) and its standard
    error, the sample standard deviation over √n (0 for a single item)."""
    first, second = _as_array(a).astype(float), _as_array(b).astype(float)
    if first.shape != second.shape or first.ndim != 1 or len(first) == 0:
        raise ValueError(f"paired_difference needs two equally long, non-empty 1-D sequences, "
                         f"got shapes {first.shape} and {second.shape}")
    diff = first - second
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()), se


def ratio_mean_se(sums: Sequence[float], counts: Sequence[float]) -> tuple[float, float]:
    """A pooled mean ``Σ sums / Σ counts`` over items (e.g. nats/token: per-sequence summed
    losses over per-sequence token counts) and its standard error with the items as the
    independent units (the ratio estimator's linearised SE:
    ``sqrt(n / (n − 1) · Σ (sums_i − mean · counts_i)²) / Σ counts``; 0 for one item)."""
    s, c = _as_array(sums).astype(float), _as_array(counts).astype(float)
    if s.shape != c.shape or s.ndim != 1 or len(s) == 0 or c.sum() <= 0:
        raise ValueError(f"ratio_mean_se needs two equally long, non-empty 1-D sequences with "
                         f"a positive total count, got shapes {s.shape} and {c.shape}")
    mean = float(s.sum() / c.sum())
    if len(s) == 1:
        return mean, 0.0
    n = len(s)
    return mean, float(np.sqrt(n / (n - 1) * np.sum((s - mean * c) ** 2)) / c.sum())


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): the probability that at least one of ``k``
    samples drawn without replacement from ``n`` samples, ``correct`` of them right, is right:
    1 − C(n − correct, k) / C(n, k)."""
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= correct <= n and 1 <= k <= n, got n={n}, "
                         f"correct={correct}, k={k}")
    if n - correct < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - correct + 1, n + 1)))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over ``texts``."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# ---------------------------------------------------------------------------- captioning

def _caption_tokens(text: str) -> list[str]:
    """Lower-cased words (letters, digits, apostrophes) of a caption; punctuation dropped."""
    import re

    return re.findall(r"[a-z0-9']+", text.lower())


def _max_bleu(prediction: list[str], references: list[list[str]], n: int) -> float:
    """Sentence BLEU-n (uniform weights over 1..n-grams, nltk smoothing ``method1``: an
    epsilon of 0.1 for a zero n-gram count) against each reference alone; the maximum."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not prediction:
        return 0.0
    smooth = SmoothingFunction().method1
    weights = tuple([1.0 / n] * n)
    return max(float(sentence_bleu([ref], prediction, weights=weights,
                                   smoothing_function=smooth)) for ref in references)


def _max_bertscore(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   model: str, num_layers: int | None, batch_size: int) -> np.ndarray:
    """BERTScore F1 (no baseline rescaling) of every (prediction, reference) pair; per
    prediction the maximum over its references ``(n,)``."""
    import bert_score

    cands = [p for p, refs in zip(predictions, references, strict=True) for _ in refs]
    refs = [r for rs in references for r in rs]
    _, _, f1 = bert_score.score(cands, refs, model_type=model, num_layers=num_layers,
                                rescale_with_baseline=False, batch_size=batch_size,
                                verbose=False)
    out, pos = [], 0
    for rs in references:
        out.append(float(f1[pos:pos + len(rs)].max()))
        pos += len(rs)
    return np.asarray(out)


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                    bertscore_model: str | None = None, bertscore_layers: int | None = None,
                    batch_size: int = 64) -> dict[str, float]:
    """ROUGE-1/2 F1, BLEU-1..4 and BERTScore F1 of ``predictions`` (n,) against ``references``
    (n lists of reference captions); each prediction is scored against each of its references
    and the maximum is kept, then the mean over predictions is returned.

    BLEU: nltk sentence BLEU on lower-cased word tokens (punctuation dropped), cumulative
    uniform weights, ``SmoothingFunction().method1``. ROUGE: ``rouge-score`` F-measure, no
    stemming. BERTScore: ``bert-score`` F1 with model ``bertscore_model`` (a name or a local
    path; layer ``bertscore_layers``), no baseline rescaling; NaN when ``bertscore_model`` is None.
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every prediction needs at least one reference")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=False)
    rows = {k: [] for k in ("rouge1", "rouge2", "bleu1", "bleu2", "bleu3", "bleu4")}
    for pred, refs in zip(predictions, references, strict=True):
        for key in ("rouge1", "rouge2"):
            rows[key].append(max(scorer.score(r, pred)[key].fmeasure for r in refs))
        tokens, ref_tokens = _caption_tokens(pred), [_caption_tokens(r) for r in refs]
        for n in range(1, 5):
            rows[f"bleu{n}"].append(_max_bleu(tokens, ref_tokens, n))
    out = {k: float(np.mean(v)) for k, v in rows.items()}
    out["bertscore_f1"] = (float("nan") if bertscore_model is None else float(np.mean(
        _max_bertscore(predictions, references, bertscore_model, bertscore_layers,
                       batch_size))))
    return out


def _bleu_statistics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                     n: int) -> np.ndarray:
    """What corpus BLEU-n pools, per image: the clipped matches of 1..n-grams, their counts,
    the caption's length and its closest reference length, ``(images, 2 n + 2)``."""
    from nltk.translate.bleu_score import closest_ref_length, modified_precision

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} captions for {len(references)} reference sets")
    rows = []
    for prediction, refs in zip(predictions, references, strict=True):
        hypothesis, ref_tokens = _caption_tokens(prediction), [_caption_tokens(r) for r in refs]
        precisions = [modified_precision(ref_tokens, hypothesis, i) for i in range(1, n + 1)]
        rows.append([p.numerator for p in precisions] + [p.denominator for p in precisions]
                    + [len(hypothesis), closest_ref_length(ref_tokens, len(hypothesis))])
    return np.array(rows, dtype=float).reshape(len(rows), 2 * n + 2)


def _bleu_from_statistics(totals: np.ndarray, n: int) -> float:
    """Corpus BLEU-n from the pooled counts of :func:`_bleu_statistics`, ``(2 n + 2,)``:
    uniform weights, brevity penalty, no smoothing (0 when an n-gram order has no match)."""
    matches, counts = totals[:n], totals[n:2 * n]
    caption_length, reference_length = totals[2 * n], totals[2 * n + 1]
    if (matches == 0).any():
        return 0.0
    brevity = (1.0 if caption_length > reference_length
               else math.exp(1 - reference_length / caption_length))
    return float(brevity * math.exp(np.log(matches / counts).mean()))


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]],
                n: int = 4) -> float:
    """Corpus-level BLEU-n against all references (the COCO-caption way: clipped n-gram counts,
    each clipped by its largest count in any one reference, pooled over the corpus; closest
    reference length for the brevity penalty; uniform weights over 1..n-grams), no smoothing;
    nltk's ``corpus_bleu`` computed from per-image counts (tested against it)."""
    return _bleu_from_statistics(_bleu_statistics(predictions, references, n).sum(axis=0), n)


def corpus_bleu_se(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   n: int = 4, resamples: int = 200, seed: int = 0,
                   baseline: Sequence[str] | None = None) -> float:
    """Bootstrap standard error of :func:`corpus_bleu`: the images (a prediction with its
    references) are resampled with replacement ``resamples`` times (seeded), and the standard
    deviation of the resampled corpus BLEU-n is returned. With ``baseline`` (another model's
    captions of the same images) it is the paired SE of corpus BLEU-n(predictions) minus
    corpus BLEU-n(baseline), both scored on each resample. The per-image counts are computed
    once, so a resample costs a sum."""
    if baseline is not None and len(baseline) != len(predictions):
        raise ValueError(f"baseline has {len(baseline)} captions, predictions "
                         f"{len(predictions)}: they must caption the same images")
    statistics = [_bleu_statistics(captions, references, n)
                  for captions in (predictions, baseline) if captions is not None]
    rng = np.random.default_rng(seed)
    count = len(predictions)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, count, count)
        scores = [_bleu_from_statistics(table[rows].sum(axis=0), n) for table in statistics]
        values.append(scores[0] - sum(scores[1:]))
    return float(np.std(values, ddof=1))

