"""helpers.training: the shared loop, early stopping and schedules."""

import math

import pytest
import torch
from torch import nn

from helpers import training
from helpers.nb.runtime import seed_everything
from helpers.training import EarlyStopping, fit, noam_lambda, to_device, warmup_cosine_lambda


def _regression(seed=0, epochs=20, **kwargs):
    gen = seed_everything(seed)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32,
                                         shuffle=True, generator=gen)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(m, batch):
        xb, yb = batch
        return nn.functional.mse_loss(m(xb).squeeze(-1), yb), len(yb)

    def evaluate(m):
        return {"val_loss": nn.functional.mse_loss(m(x).squeeze(-1), y).item()}

    return model, fit(model, loader, loss_fn, opt, epochs, evaluate=evaluate, **kwargs)


def test_fit_learns_a_linear_map_and_records_history():
    model, history = _regression()
    assert history.rows[-1]["val_loss"] < 1e-3 < history.rows[0]["train_loss"]
    assert len(history.rows) == 20 and len(history.step_losses) == 20 * 8
    assert list(history.to_frame().columns) == ["train_loss", "lr", "val_loss", "seconds"]
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[1.0, -2.0, 0.5]]),
                               atol=1e-2, rtol=0)


def test_fit_is_reproducible_with_the_same_seed():
    _, a = _regression(seed=3, epochs=3)
    _, b = _regression(seed=3, epochs=3)
    assert a.step_losses == b.step_losses


def test_early_stopping_stops_and_restores_the_best_weights():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping("val_loss", patience=2)
    values = iter([3.0, 1.0, 2.0, 2.5, 0.1])
    snapshots = []

    def evaluate(m):
        with torch.no_grad():
            m.weight.add_(1.0)
        snapshots.append(m.weight.item())
        return {"val_loss": next(values)}

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    history = fit(model, [(torch.zeros(1, 1),)], lambda m, b: m(b[0]).sum() * 0, opt, 10,
                  evaluate=evaluate, callbacks=[stopper])
    assert len(history.rows) == 4 and stopper.best_epoch == 2
    assert model.weight.item() == pytest.approx(snapshots[1])
    with pytest.raises(KeyError, match="monitors"):
        EarlyStopping("accuracy").on_epoch_end(1, {"val_loss": 1.0}, model)


def test_fit_refuses_non_finite_losses_and_empty_epochs():
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        fit(model, [None], lambda m, b: torch.tensor(float("nan"), requires_grad=True), opt, 1)
    with pytest.raises(ValueError, match="no training batches"):
        fit(model, [], lambda m, b: m.weight.sum(), opt, 1)


def test_schedules():
    rate = noam_lambda(512, factor=1.0, warmup=400)
    peak = 512 ** -0.5 * 400 ** -0.5
    assert rate(400) == pytest.approx(peak) and rate(0) == rate(1)
    assert rate(200) < peak and rate(800) < peak
    cosine = warmup_cosine_lambda(10, 110, final_ratio=0.1)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert cosine(110) == pytest.approx(0.1) and cosine(500) == pytest.approx(0.1)


def test_to_device_walks_nested_batches():
    batch = {"a": torch.zeros(1), "b": [torch.ones(1), 3], "c": (torch.zeros(2),)}
    moved = to_device(batch, "cpu")
    assert moved["b"][1] == 3 and isinstance(moved["c"], tuple)
    assert to_device(batch, None) is batch


def test_evaluate_loss_weights_by_count_and_restores_the_mode():
    from helpers.training import evaluate_loss

    model = nn.Linear(2, 1)
    model.train()
    seen_modes = []

    def loss_fn(m, batch):
        seen_modes.append(m.training)
        value, n = batch
        return torch.tensor(value), n

    # (1.0 * 1 + 4.0 * 3) / 4 = 3.25, not the unweighted mean 2.5
    assert evaluate_loss(model, [(1.0, 1), (4.0, 3)], loss_fn) == pytest.approx(3.25)
    assert seen_modes == [False, False] and model.training
    assert evaluate_loss(model, [torch.tensor(2.0)], lambda m, b: b) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="nothing to score"):
        evaluate_loss(model, [], loss_fn)


def test_count_parameters_counts_tied_weights_once_and_trainable_only():
    from helpers.training import count_parameters

    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as in GPT-2
    model = nn.ModuleDict({"emb": emb, "head": head, "norm": nn.LayerNorm(4)})
    assert count_parameters(model) == 10 * 4 + 2 * 4
    model["norm"].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 40


def test_autocast_runs_matrix_products_in_the_given_dtype_or_not_at_all():
    from helpers.training import autocast

    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with autocast("cpu", torch.bfloat16):
        low = layer(x)
    with autocast("cpu", None):
        full = layer(x)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # the weights stay in float32
    torch.testing.assert_close(low.float(), full, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_switch_falls_back_to_float32_only_where_bfloat16_is_slow(fast, monkeypatch, capsys):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: fast)
    assert training.bf16_is_fast("cpu") is fast
    assert training.autocast_dtype(False, "cpu") is None
    assert capsys.readouterr().out == ""
    assert training.autocast_dtype(True, "cpu") == (torch.bfloat16 if fast else None)
    assert training.usable_dtype(torch.bfloat16, "cpu") == (torch.bfloat16 if fast
                                                             else torch.float32)
    assert ("float32 is used instead" in capsys.readouterr().out) is not fast
    assert training.usable_dtype(torch.float16, "cpu") == torch.float16  # only bfloat16 changes


def test_bf16_is_fast_follows_this_cpu_s_onednn_kernels():
    assert training.bf16_is_fast("cpu") == torch.ops.mkldnn._is_mkldnn_bf16_supported()
