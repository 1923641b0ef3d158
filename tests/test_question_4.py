"""iust-1402-hw5 Question 4 at smoke: the notebook runs and its measurements hold together."""

import math


def test_question_4_notebook_at_smoke(smoke_run):
    r = smoke_run("iust-1402-hw5/Question_4.ipynb")
    assert r.status == "ok", r.error
    m = r.metrics
    assert m["bptt_max_error"] < 1e-10  # hand-written BPTT == autograd (float64)
    names = ["scratch_rnn"] + [f"{d}{c}" for c in ("rnn", "gru", "lstm") for d in ("", "bi_")]
    for name in names + ["headline", "headline_random_embeddings", "noclip", "clip"]:
        assert 0.0 <= m[f"{name}_accuracy"] <= 1.0
    # binomial SE of the headline accuracy on the smoke test reviews
    assert 0.0 <= m["headline_accuracy_se"] <= 0.5 / math.sqrt(64) + 1e-12
    assert 1 <= m["headline_epochs"] <= 2  # early stopping within head_max_epochs
    # pretrained vs random embeddings: a paired difference on the same test reviews
    gain = m["headline_accuracy"] - m["headline_random_embeddings_accuracy"]
    assert math.isclose(m["pretrained_embeddings_gain"], gain, abs_tol=1e-9)
    assert m["pretrained_embeddings_gain_se"] >= 0.0
    for cell in ("rnn", "gru", "lstm"):  # paired bi - uni differences and their SEs
        assert -1.0 <= m[f"bi_minus_uni_{cell}"] <= 1.0
        assert m[f"bi_minus_uni_{cell}_se"] >= 0.0
    for pooling in ("last", "mean", "attention", "hard", "hard_st"):
        assert 0.0 <= m[f"pool_{pooling}_accuracy"] <= 1.0
    # argmax attention: no gradient reaches the scorer; straight-through moves it
    assert m["hard_scorer_moved"] == 0.0
    assert m["hard_st_scorer_moved"] > 0.0
    # gradients reaching the first step are smaller than at the last, for both cells
    assert 0.0 < m["rnn_trained_grad_ratio"] < 1.0
    assert 0.0 < m["lstm_trained_grad_ratio"] < 1.0
    # clipping experiment: the threshold is a percentile of the unclipped norms
    assert 0.0 < m["clip_threshold"] <= m["noclip_max_grad_norm"]
    assert math.isfinite(m["noclip_norm_orders"]) and m["noclip_norm_orders"] >= 0.0
    for run in ("noclip", "clip"):
        assert math.isfinite(m[f"{run}_last_epoch_loss"]) and m[f"{run}_last_epoch_loss"] > 0
