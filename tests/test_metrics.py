"""helpers.metrics against scikit-learn on random data."""

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from helpers.metrics import classification_metrics, regression_metrics


@pytest.mark.parametrize("average", ["binary", "macro"])
def test_classification_metrics_match_sklearn(average):
    rng = np.random.default_rng(0)
    n_classes = 2 if average == "binary" else 4
    t, p = rng.integers(0, n_classes, 200), rng.integers(0, n_classes, 200)
    ours = classification_metrics(t, torch.tensor(p), average=average)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(t, p))
    assert ours["precision"] == pytest.approx(sk.precision_score(t, p, average=average))
    assert ours["recall"] == pytest.approx(sk.recall_score(t, p, average=average))
    assert ours["f1"] == pytest.approx(sk.f1_score(t, p, average=average))


def test_classification_metrics_edge_cases():
    assert classification_metrics([0, 0], [0, 0])["f1"] == 0.0  # no positives at all
    with pytest.raises(ValueError, match="must be equal"):
        classification_metrics([0, 1], [1])
    with pytest.raises(ValueError, match="average"):
        classification_metrics([0], [0], average="micro")


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    t = rng.normal(50, 10, 300)
    p = t + rng.normal(0, 2, 300)
    ours = regression_metrics(t, p)
    assert ours["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(t, p)))
    assert ours["mae"] == pytest.approx(sk.mean_absolute_error(t, p))
    assert ours["mape"] == pytest.approx(100 * sk.mean_absolute_percentage_error(t, p))
    assert ours["r2"] == pytest.approx(sk.r2_score(t, p))
    with pytest.raises(ValueError):
        regression_metrics([], [])


def test_binomial_se_and_paired_difference():
    import math

    import numpy as np
    import pytest

    from helpers.metrics import binomial_se, paired_difference

    assert binomial_se(0.8, 400) == pytest.approx(0.02)
    assert binomial_se(0.0, 10) == 0.0
    with pytest.raises(ValueError, match="n > 0"):
        binomial_se(0.5, 0)
    a, b = np.array([1, 1, 0, 1, 0, 1]), np.array([0, 1, 0, 0, 0, 1])
    mean, se = paired_difference(a, b)
    d = a - b
    assert mean == pytest.approx(d.mean())
    assert se == pytest.approx(d.std(ddof=1) / math.sqrt(6))
    assert paired_difference([1.0], [0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1, 2], [1, 2, 3])


def test_pass_at_k_is_the_chance_that_a_random_k_subset_holds_a_right_sample():
    from itertools import combinations

    from helpers.metrics import pass_at_k

    for n, correct in [(8, 0), (8, 1), (8, 3), (5, 5), (6, 2)]:
        right = [True] * correct + [False] * (n - correct)
        for k in range(1, n + 1):
            subsets = list(combinations(right, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, correct, k) == pytest.approx(expected)
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="correct <= n"):
        pass_at_k(4, 5, 1)


def test_ratio_mean_se_is_the_pooled_mean_and_matches_the_resampling_spread():
    from helpers.metrics import ratio_mean_se

    rng = np.random.default_rng(0)
    counts = rng.integers(5, 60, size=400).astype(float)
    sums = counts * rng.normal(3.0, 0.5, size=400) + rng.normal(0, 4.0, size=400)
    mean, se = ratio_mean_se(sums, counts)
    assert mean == pytest.approx(sums.sum() / counts.sum())
    boot = []  # bootstrap over items: its spread estimates the same standard error
    for _ in range(2000):
        i = rng.integers(0, 400, size=400)
        boot.append(sums[i].sum() / counts[i].sum())
    assert se == pytest.approx(np.std(boot), rel=0.1)
    assert ratio_mean_se([6.0, 9.0], [2.0, 3.0]) == (3.0, 0.0)  # every item at the mean
    assert ratio_mean_se([5.0], [2.0]) == (2.5, 0.0)
    with pytest.raises(ValueError, match="equally long"):
        ratio_mean_se([1.0, 2.0], [1.0])
