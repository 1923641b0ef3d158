"""helpers.timeseries: loading/validation, masking, imputation, scaling, windows, the
recurrent forecaster, persistence, ARIMA walk-forward; and the Q1 notebook at smoke."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers import metrics, timeseries

NOTEBOOK = "sharif-1404-hw3/Q1_oil_price_forecasting.ipynb"


def _write_prices(path, n=150, start="2010-01-04", column="Adj Close"):
    dates = pd.bdate_range(start, periods=n)
    prices = 70 + np.cumsum(np.random.default_rng(0).normal(0, 1, n))
    frame = pd.DataFrame({"Date": dates.strftime("%Y-%m-%d"), "Open": prices, "High": prices + 1,
                          "Low": prices - 1, "Close": prices, column: prices, "Volume": 100})
    frame.to_csv(path, index=False)
    return frame


# ------------------------------------------------------------------------ loading

def test_load_prices_reads_a_valid_file(tmp_path):
    frame = _write_prices(tmp_path / "p.csv")
    series = timeseries.load_prices(tmp_path / "p.csv")
    assert isinstance(series.index, pd.DatetimeIndex) and len(series) == 150
    np.testing.assert_allclose(series.to_numpy(), frame["Adj Close"].to_numpy())
    assert len(timeseries.load_prices(tmp_path / "p.csv", max_rows=120)) == 120


def test_load_prices_missing_file(tmp_path):
    with pytest.raises(timeseries.PriceFileError, match="does not exist"):
        timeseries.load_prices(tmp_path / "nope.csv")


def test_load_prices_missing_column(tmp_path):
    _write_prices(tmp_path / "p.csv", column="Price")
    with pytest.raises(timeseries.PriceFileError, match="lacks column"):
        timeseries.load_prices(tmp_path / "p.csv")


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.assign(Date=f["Date"].where(f.index != 5, "05/01/2010")), "row 7 has the date"),
    (lambda f: f.iloc[::-1], "strictly ascending"),
    (lambda f: pd.concat([f, f.iloc[[-1]]]), "strictly ascending"),
    (lambda f: f.assign(**{"Adj Close": f["Adj Close"].astype(object)
                            .where(f.index != 3, "12,5x")}), "not a number"),
    (lambda f: f.iloc[:20], "at least 100"),
])
def test_load_prices_malformed(tmp_path, edit, message):
    frame = _write_prices(tmp_path / "p.csv")
    edit(frame).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(timeseries.PriceFileError, match=message):
        timeseries.load_prices(tmp_path / "bad.csv")


def test_load_prices_not_a_csv(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"")
    with pytest.raises(timeseries.PriceFileError, match="not a readable CSV"):
        timeseries.load_prices(tmp_path / "bad.csv")


def test_flag_nonpositive():
    s = pd.Series([10.0, -37.6, 0.0, 12.0])
    clean, flagged = timeseries.flag_nonpositive(s)
    assert clean.isna().tolist() == [False, True, True, False]
    assert flagged.tolist() == [-37.6, 0.0]


# ------------------------------------------------------------ masking and imputation

def test_mask_random_counts_and_reproducibility():
    s = pd.Series(np.arange(1.0, 201.0))
    s.iloc[[10, 20]] = np.nan
    masked, dates = timeseries.mask_random(s, 0.1, seed=42)
    assert len(dates) == round(0.1 * 198) and masked.isna().sum() == 2 + len(dates)
    assert s[dates].notna().all(), "only valid points are masked"
    assert masked.iloc[0] == 1.0 and masked.iloc[-1] == 200.0
    again, dates2 = timeseries.mask_random(s, 0.1, seed=42)
    assert dates.equals(dates2)
    assert not dates.equals(timeseries.mask_random(s, 0.1, seed=1)[1])


def test_impute_methods_by_hand():
    s = pd.Series([1.0, 2.0, np.nan, np.nan, 6.0, np.nan, 10.0])
    assert timeseries.impute(s, "ffill").tolist() == [1, 2, 2, 2, 6, 6, 10]
    assert timeseries.impute(s, "bfill").tolist() == [1, 2, 6, 6, 6, 10, 10]
    # trailing mean of the last 2 observed values before each gap
    assert timeseries.impute(s, "moving_average", window=2).tolist() == [1, 2, 1.5, 1.5, 6, 4, 10]
    edge = pd.Series([np.nan, 3.0, np.nan])
    assert timeseries.impute(edge, "ffill").tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="unknown imputation"):
        timeseries.impute(s, "mean")


@pytest.mark.parametrize("method", timeseries.CAUSAL_IMPUTERS)
def test_causal_imputers_ignore_the_future(method):
    rng = np.random.default_rng(0)
    s = pd.Series(rng.normal(size=60).cumsum())
    masked, _ = timeseries.mask_random(s, 0.2, seed=0)
    changed = masked.copy()
    changed.iloc[40:] = changed.iloc[40:] + 100  # alter only later observations
    a, b = timeseries.impute(masked, method), timeseries.impute(changed, method)
    np.testing.assert_allclose(a.iloc[:40], b.iloc[:40])


def test_imputation_table_scores_only_masked_points():
    s = pd.Series(np.arange(100.0) + 1)
    masked, dates = timeseries.mask_random(s, 0.1, seed=0)
    table = timeseries.imputation_table(s, masked)
    assert list(table.index) == list(timeseries.IMPUTERS)
    # on a line with slope 1, ffill misses each gap by its distance to the last observation
    gaps = masked.isna()
    expected = metrics.regression_metrics(s[gaps], masked.ffill()[gaps])
    assert table.loc["ffill", "mae"] == pytest.approx(expected["mae"])
    assert table.loc["ffill", "mae"] >= 1.0


# ------------------------------------------------------------- split, scale, windows

def test_scaler_is_fitted_on_train_only():
    values = np.array([1.0, 3.0, 2.0, 10.0])
    scaler = timeseries.MinMaxScaler().fit(values[:3])
    assert (scaler.lo, scaler.hi) == (1.0, 3.0)
    np.testing.assert_allclose(scaler.transform(values), [0, 1, 0.5, 4.5])
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(values)), values)
    with pytest.raises(ValueError):
        timeseries.MinMaxScaler().fit([1.0, np.nan])


def test_split_index():
    assert timeseries.split_index(4106, 0.7) == 2874
    with pytest.raises(ValueError):
        timeseries.split_index(10, 1.0)


def test_make_windows_content_and_shapes():
    values = np.arange(10.0)
    x, y = timeseries.make_windows(values, 3)
    assert x.shape == (7, 3, 1) and y.shape == (7,)
    assert x[0, :, 0].tolist() == [0, 1, 2] and y[0] == 3
    x, y = timeseries.make_windows(values, 3, start=7)
    assert y.tolist() == [7, 8, 9] and x[0, :, 0].tolist() == [4, 5, 6]
    x, y = timeseries.make_windows(values, 3, stop=5)
    assert y.tolist() == [3, 4]


# ----------------------------------------------------------------------- forecasters

@pytest.mark.parametrize("cell, reference", [("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_recurrent_forecaster_matches_its_torch_layer(cell, reference):
    model = timeseries.RecurrentForecaster(cell, hidden=8, layers=2)
    assert isinstance(model.rnn, reference)
    x = torch.randn(5, 7, 1)
    out, _ = model.rnn(x)
    torch.testing.assert_close(model(x), model.head(out[:, -1]).squeeze(-1))
    assert model(x).shape == (5,)
    with pytest.raises(ValueError):
        timeseries.RecurrentForecaster("transformer")


def test_train_forecaster_learns_an_ar1_series():
    rng = np.random.default_rng(0)
    values = np.zeros(600)
    for t in range(1, 600):
        values[t] = 0.9 * values[t - 1] + 0.1 * rng.normal()
    x, y = timeseries.make_windows(values, 10)
    model, history = timeseries.train_forecaster(
        "gru", (x[:450], y[:450]), (x[450:], y[450:]), hidden=8, layers=1, dropout=0.0,
        epochs=15, batch_size=32, lr=0.01, patience=20, seed=0)
    losses = history.column("val_loss")
    assert losses[-1] < losses[0]
    # the best achievable one-step MSE is the noise variance 0.01; predicting 0 gives var(y)
    mse = np.mean((timeseries.predict(model, x[450:]) - y[450:].numpy()) ** 2)
    assert mse < 0.5 * float(y[450:].var())
    assert torch.get_num_threads() >= 1  # thread count restored (no exception)


def test_persistence():
    assert timeseries.persistence(np.array([1.0, 2.0, 4.0, 8.0]), 2).tolist() == [2, 4]
    with pytest.raises(ValueError):
        timeseries.persistence(np.arange(3.0), 0)


def test_arima_010_walk_forward_equals_persistence():
    values = 50 + np.random.default_rng(1).normal(size=200).cumsum()
    wf = timeseries.arima_walk_forward(values, 150, (0, 1, 0), refit_every=20)
    np.testing.assert_allclose(wf.mean, timeseries.persistence(values, 150), atol=1e-8)
    assert len(wf.params) == math.ceil(50 / 20)
    assert np.all(wf.lower < wf.mean) and np.all(wf.mean < wf.upper)


def test_arima_walk_forward_uses_only_the_past():
    rng = np.random.default_rng(2)
    values = np.zeros(300)
    for t in range(1, 300):
        values[t] = 0.7 * values[t - 1] + rng.normal()
    wf = timeseries.arima_walk_forward(values, 200, (1, 0, 0), with_drift=True)
    changed = values.copy()
    changed[250:] += 50.0  # the forecast of day 250 must not see day 250
    wf2 = timeseries.arima_walk_forward(changed, 200, (1, 0, 0), with_drift=True)
    np.testing.assert_allclose(wf.mean[:51], wf2.mean[:51])
    assert not np.allclose(wf.mean[51:], wf2.mean[51:])
    # the fitted AR(1) forecasts beat persistence on an AR(1) series with phi = 0.7
    err = np.mean((wf.mean - values[200:]) ** 2)
    assert err < np.mean((timeseries.persistence(values, 200) - values[200:]) ** 2)
    assert 0.5 < err < 2.0  # about the noise variance 1


def test_evaluate_forecast_skips_unknown_targets():
    got = timeseries.evaluate_forecast([1.0, np.nan, 3.0], [1.5, 100.0, 2.5])
    assert got == metrics.regression_metrics([1.0, 3.0], [1.5, 2.5])


def test_diebold_mariano_sign_and_null():
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    good, bad = y + 0.1 * rng.normal(size=500), y + rng.normal(size=500)
    stat, p = timeseries.diebold_mariano(y, good, bad)
    assert stat < -5 and p < 1e-6
    assert timeseries.diebold_mariano(y, good, good) == (0.0, 1.0)


def test_metrics_table_mean_and_std():
    runs = {"a": [{"rmse": 1.0, "mae": 1.0, "mape": 1.0, "r2": 0.5},
                  {"rmse": 3.0, "mae": 1.0, "mape": 1.0, "r2": 0.5}],
            "b": [{"rmse": 2.0, "mae": 2.0, "mape": 2.0, "r2": 0.1}]}
    table = timeseries.metrics_table(runs)
    assert table.loc["a", "rmse"] == 2.0 and table.loc["a", "rmse_std"] == pytest.approx(2 ** 0.5)
    assert table.loc["b", "rmse_std"] == 0.0 and table.loc["b", "runs"] == 1


def test_adf_test_tells_a_random_walk_from_its_steps():
    steps = np.random.default_rng(0).normal(size=500)
    assert timeseries.adf_test(steps.cumsum())[1] > 0.05
    assert timeseries.adf_test(steps)[1] < 0.01


# ------------------------------------------------------------------- the notebook

def test_q1_notebook_at_smoke(smoke_run):
    r = smoke_run(NOTEBOOK)
    assert r.status == "ok", r.error
    m = r.metrics
    for model in ("persistence", "arima", "rnn", "lstm", "gru", "gru_residual"):
        assert m[f"{model}_rmse"] > 0 and m[f"{model}_mae"] > 0
        assert m[f"{model}_mae"] <= m[f"{model}_rmse"] + 1e-9  # MAE <= RMSE always
        assert 0 < m[f"{model}_mape"] < 100
        assert m[f"{model}_r2"] <= 1
    for cell in ("rnn", "lstm", "gru", "gru_residual"):
        assert m[f"{cell}_rmse_std"] >= 0
    # the residual model starts from persistence: it cannot be wildly worse than it
    assert m["gru_residual_rmse"] < 2 * m["persistence_rmse"]
    # daily WTI moves are a few USD: the naive forecast errs by O(1) USD/bbl and explains
    # most of the variance of the price level
    assert 0.3 < m["persistence_rmse"] < 10 and m["persistence_r2"] > 0.5
    # ARIMA's one-step forecast is never far from persistence on a near-random walk
    assert m["arima_rmse"] < 1.5 * m["persistence_rmse"]
    assert 0.5 < m["arima_coverage95"] <= 1
    # imputation errors on the removed 10 %: a day or so of price movement
    for method in timeseries.IMPUTERS:
        assert 0 < m[f"impute_{method}_rmse"] < 10
    assert m["n_test_days"] > 50
    # residuals (section 6.1) and the Diebold-Mariano verdicts against persistence
    for model in ("persistence", "arima", "rnn", "lstm", "gru", "gru_residual"):
        assert abs(m[f"{model}_bias"]) < m[f"{model}_rmse"]  # a mean is within the RMS
        assert -1 <= m[f"{model}_resid_lag1"] <= 1
        if model != "persistence":
            assert math.isfinite(m[f"{model}_dm"])
    assert abs(m["persistence_resid_lag1"]) < 0.5  # daily changes barely persist
    assert 0 <= m["models_beating_persistence"] <= 5
    figures = r.report_path.parent / f"{r.report_path.stem}_figures"
    assert (figures / "residual_histograms.png").is_file()


def test_diebold_mariano_of_rounding_differences_is_null():
    y = np.random.default_rng(0).normal(size=100)
    pred = y + 1.0
    assert timeseries.diebold_mariano(y, pred, pred + 1e-12) == (0.0, 1.0)


def test_residual_forecaster_with_zero_head_is_persistence():
    model = timeseries.RecurrentForecaster("gru", hidden=4, residual=True)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    x = torch.randn(6, 9, 1)
    torch.testing.assert_close(model(x), x[:, -1, 0])


# ------------------------------------------------------------------ residuals

@pytest.mark.parametrize("lags", [0, 1, 7])
def test_newey_west_se_matches_statsmodels_hac(lags):
    import statsmodels.api as sm

    x = np.random.default_rng(1).normal(size=300).cumsum() * 0.1 + np.random.default_rng(2).normal(
        size=300)
    hac = sm.OLS(x, np.ones_like(x)).fit(
        cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False})
    assert timeseries.newey_west_se(x, lags) == pytest.approx(hac.bse[0], rel=1e-10)
    if lags == 0:
        assert timeseries.newey_west_se(x, 0) == pytest.approx(x.std() / math.sqrt(len(x)))


def test_newey_west_se_grows_with_positive_autocorrelation():
    rng = np.random.default_rng(0)
    ar = np.zeros(2000)
    for t in range(1, len(ar)):
        ar[t] = 0.9 * ar[t - 1] + rng.normal()
    iid = ar.std() / math.sqrt(len(ar))
    assert timeseries.newey_west_se(ar) > 2 * iid


def test_residual_summary_against_scipy():
    from scipy import stats

    rng = np.random.default_rng(3)
    truth = 50 + rng.normal(size=400).cumsum()
    truth[[5, 77]] = np.nan
    too_low = truth - 0.5 + rng.standard_t(4, size=400)
    table = timeseries.residual_summary(truth, {"too_low": too_low, "exact": truth + 0.0})
    known = ~np.isnan(truth)
    r = (truth - too_low)[known]
    row = table.loc["too_low"]
    assert row["n"] == known.sum() == 398
    assert row["bias"] == pytest.approx(r.mean()) and row["bias"] > 0  # forecast too low
    assert row["std"] == pytest.approx(r.std(ddof=1))
    assert row["skew"] == pytest.approx(stats.skew(r))
    assert row["excess_kurtosis"] == pytest.approx(stats.kurtosis(r))  # Fisher: normal -> 0
    assert row["excess_kurtosis"] > 0.5  # t(4) tails
    assert row["lag1_autocorr"] == pytest.approx(
        np.corrcoef(r[1:], r[:-1])[0, 1], abs=0.02)
    assert row["bias_se"] == pytest.approx(timeseries.newey_west_se(r))
    assert table.loc["exact", "bias"] == 0 and table.loc["exact", "std"] == 0
    assert np.isnan(table.loc["exact", "skew"])  # constant residuals have no shape
