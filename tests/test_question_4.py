"""iust-1402-hw5 Question 4 at smoke: the notebook runs and its measurements hold together."""

import math


def test_question_4_notebook_at_smoke(smoke_run):
    r = smoke_run("iust-1402-hw5/Question_4.ipynb")
    assert r.status == "ok", r.error
    m = r.metrics
    assert m["bptt_max_error"] < 1e-10  # hand-written BPTT == autograd (float64)
    names = ["scratch_rnn"] + [f"{d}{c}" for c in ("rnn", "gru", "lstm") for d in ("", "bi_")]
    for name in names:
        assert 0.0 <= m[f"{name}_accuracy"] <= 1.0
    for pooling in ("last", "mean", "attention", "hard", "hard_st"):
        assert 0.0 <= m[f"pool_{pooling}_accuracy"] <= 1.0
    # argmax attention: no gradient reaches the scorer; straight-through moves it
    assert m["hard_scorer_moved"] == 0.0
    assert m["hard_st_scorer_moved"] > 0.0
    # gradients reaching the first step are smaller than at the last, for both cells
    assert 0.0 < m["rnn_trained_grad_ratio"] < 1.0
    assert 0.0 < m["lstm_trained_grad_ratio"] < 1.0
    assert math.isfinite(m["noclip_max_grad_norm"]) and m["noclip_max_grad_norm"] > 0
