"""Adapter.ipynb at smoke: runs, proves the adapted model equals the base model (the notebook
asserts it), trains every method, and records metrics in range with the intended parameter
budgets."""

def test_adapter_notebook_at_smoke(smoke_run):
    r = smoke_run("sharif-1402-hw3/Adapter.ipynb")
    assert r.status == "ok", r.error
    m = r.metrics
    for key in ("adapter_test_accuracy", "adapter_test_precision", "adapter_test_recall",
                "adapter_test_f1", "linear_probe_test_accuracy", "full_finetune_test_accuracy",
                "houlsby_m4_test_accuracy", "pfeiffer_m16_test_accuracy",
                "bf16_float32_agreement"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert 0 < m["adapter_first_train_loss"] < 5 and 0 < m["adapter_last_train_loss"] < 5
    # parameter budgets: head < small adapter < large adapter, Pfeiffer < Houlsby, full = 100 %
    assert 0 < m["head_trainable_percent"] < m["houlsby_m4_trainable_percent"]
    assert m["houlsby_m4_trainable_percent"] < m["houlsby_m16_trainable_percent"] < 5
    assert m["pfeiffer_m16_trainable_percent"] < m["houlsby_m16_trainable_percent"]
    assert m["full_trainable_percent"] == 100
    assert m["bf16_float32_agreement"] >= 0.9  # mixed precision keeps the verdicts
    assert abs(m["adapter_minus_probe_accuracy"]) <= 1 and m["adapter_minus_probe_se"] >= 0
    assert m["notebook_seconds"] < 60
