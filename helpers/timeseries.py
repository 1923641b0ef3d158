"""Daily price series: loading and validation, masking and imputation, train-only scaling,
sliding windows, recurrent one-step forecasters, ARIMA walk-forward and persistence, and
the comparison of forecasts (Diebold-Mariano, residual summaries).

Everything here works on a univariate series indexed by date (a ``pandas.Series``); the
forecasters predict the value of day ``t`` from days ``t-k .. t-1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.nb.runtime import torch_threads
from helpers.training import EarlyStopping, History, fit

PRICE_COLUMNS: tuple[str, ...] = ("Date", "Open", "High", "Low", "Close", "Adj Close", "Volume")
IMPUTERS: tuple[str, ...] = ("moving_average", "ffill", "bfill")
CAUSAL_IMPUTERS: tuple[str, ...] = ("moving_average", "ffill")  # use no later observation
CELLS: dict[str, type[nn.Module]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class PriceFileError(ValueError):
    """The price file is missing or malformed (one message says what and where)."""


# ------------------------------------------------------------------------ loading

def load_prices(path: str | Path, column: str = "Adj Close", max_rows: int = 0,
                min_rows: int = 100) -> pd.Series:
    """Read one price column of a yfinance-style CSV as a float Series indexed by date.

    The file must have a ``Date`` column of ``YYYY-MM-DD`` dates, strictly ascending and
    unique, and a numeric ``column`` (empty cells are allowed: they become NaN).
    ``max_rows > 0`` keeps only the first rows. Raises :class:`PriceFileError`.
    """
    path = Path(path)
    if not path.is_file():
        raise PriceFileError(f"price file {path} does not exist; set DATA_DIR to the folder "
                             "holding oil/CL=F.csv (e.g. ../shared/data) or run `make data`")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"price file {path} is not a readable CSV: {exc}") from exc
    missing = [c for c in ("Date", column) if c not in frame.columns]
    if missing:
        raise PriceFileError(f"price file {path} lacks column(s) {missing}; "
                             f"found {list(frame.columns)}, expected {list(PRICE_COLUMNS)}")
    if max_rows > 0:
        frame = frame.iloc[:max_rows]
    dates = pd.to_datetime(frame["Date"], format="%Y-%m-%d", errors="coerce")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise PriceFileError(f"price file {path}: row {row + 2} has the date "
                             f"{frame['Date'].iloc[row]!r}, not YYYY-MM-DD")
    if not dates.is_monotonic_increasing or dates.duplicated().any():
        raise PriceFileError(f"price file {path}: dates are not strictly ascending and unique")
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise PriceFileError(f"price file {path}: row {row + 2} of {column!r} is "
                             f"{frame[column].iloc[row]!r}, not a number")
    if values.notna().sum() < min_rows:
        raise PriceFileError(f"price file {path} has {int(values.notna().sum())} prices in "
                             f"{column!r}; at least {min_rows} are needed")
    return pd.Series(values.to_numpy(np.float64), index=pd.DatetimeIndex(dates, name="Date"),
                     name=column)


def flag_nonpositive(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Set prices ``<= 0`` to NaN (to be imputed like any gap); return (series, flagged).

    A futures settlement below zero (CL=F on 2020-04-20, -37.63) is a contract-expiry
    squeeze, not a price level: it breaks MAPE (division by values near or below zero) and
    stretches a MinMax scale.
    """
    flagged = series[series <= 0]
    return series.mask(series <= 0), flagged


# ------------------------------------------------------------ masking and imputation

def mask_random(series: pd.Series, fraction: float,
                seed: int) -> tuple[pd.Series, pd.DatetimeIndex]:
    """Set ``round(fraction * n_valid)`` randomly chosen valid points to NaN.

    Returns the masked copy and the sorted dates that were masked (NaNs already present are
    never chosen). The first and last valid points are kept so that every gap has an
    observed neighbour on each side.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    valid = np.flatnonzero(series.notna().to_numpy())
    candidates = valid[1:-1]
    count = int(round(fraction * len(valid)))
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))
    masked = series.copy()
    masked.iloc[chosen] = np.nan
    return masked, series.index[chosen]


def impute(series: pd.Series, method: str, window: int = 5) -> pd.Series:
    """Fill the NaNs of ``series`` by ``method``; observed values are left unchanged.

    - ``moving_average``: the mean of the last ``window`` *observed* values before the gap
      (causal: a trailing window, NaNs skipped);
    - ``ffill``: the last observed value (causal);
    - ``bfill``: the next observed value (looks one observation into the future).

    A gap at an edge that the method cannot reach is filled from the other side.
    """
    if method not in IMPUTERS:
        raise ValueError(f"unknown imputation {method!r}; valid: {', '.join(IMPUTERS)}")
    if method == "ffill":
        filled = series.ffill()
    elif method == "bfill":
        filled = series.bfill()
    else:
        observed = series.dropna()
        trailing = observed.rolling(window, min_periods=1).mean()  # mean of obs. up to each one
        # a gap takes the trailing mean at the last observation before it
        filled = series.fillna(trailing.reindex(series.index).ffill())
    return filled.ffill().bfill()


def imputation_table(true: pd.Series, masked: pd.Series, methods: Sequence[str] = IMPUTERS,
                     window: int = 5) -> pd.DataFrame:
    """RMSE, MAE, MAPE and R² of each imputation on the masked points, against ``true``."""
    from helpers.metrics import regression_metrics

    gaps = masked.isna() & true.notna()
    rows = {m: regression_metrics(true[gaps], impute(masked, m, window)[gaps]) for m in methods}
    return pd.DataFrame(rows).T.rename_axis("method")


# ------------------------------------------------------------- split, scale, windows

def split_index(n: int, train_fraction: float) -> int:
    """The number of leading points in the training part (chronological split)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    return int(round(n * train_fraction))


@dataclass
class MinMaxScaler:
    """``(x - lo) / (hi - lo)`` with ``lo, hi`` taken from the training part only."""

    lo: float = 0.0
    hi: float = 1.0

    def fit(self, train: np.ndarray | pd.Series) -> MinMaxScaler:
        values = np.asarray(train, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError("fit the scaler on a series without NaNs (impute first)")
        self.lo, self.hi = float(values.min()), float(values.max())
        if self.hi <= self.lo:
            raise ValueError("the training part is constant; cannot scale")
        return self

    def transform(self, values):
        return (np.asarray(values, dtype=np.float64) - self.lo) / (self.hi - self.lo)

    def inverse_transform(self, values):
        return np.asarray(values, dtype=np.float64) * (self.hi - self.lo) + self.lo


def make_windows(values: np.ndarray, k: int, start: int | None = None,
                 stop: int | None = None) -> tuple[Tensor, Tensor]:
    """Windows of ``k`` past values and the next value, for targets ``start .. stop-1``.

    ``values (n,)`` -> ``x (N, k, 1)`` float32, ``y (N,)`` with ``x[i] = values[t-k:t]`` and
    ``y[i] = values[t]`` for ``t = max(start, k) .. stop-1`` (default: every possible t).
    """
    values = np.asarray(values, dtype=np.float32)
    start = k if start is None else max(start, k)
    stop = len(values) if stop is None else stop
    if stop <= start:
        raise ValueError(f"no targets between {start} and {stop} with window {k}")
    idx = np.arange(start, stop)
    x = np.stack([values[t - k:t] for t in idx])[..., None]
    return torch.from_numpy(x), torch.from_numpy(values[idx])


# ----------------------------------------------------------------------- forecasters

class RecurrentForecaster(nn.Module):
    """A stacked RNN, LSTM or GRU over ``(B, k, 1)`` windows; a linear head on the last
    hidden state gives the next value ``(B,)``.

    ``residual=True`` predicts the *change*: the output is the window's last value plus the
    head's output, so a zero head is exactly the persistence forecast.
    """

    def __init__(self, cell: str = "lstm", hidden: int = 64, layers: int = 1,
                 dropout: float = 0.0, residual: bool = False):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
        self.cell, self.residual = cell, residual
        self.rnn = CELLS[cell](input_size=1, hidden_size=hidden, num_layers=layers,
                               batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)                     # (B, k, hidden)
        step = self.head(out[:, -1]).squeeze(-1)  # (B,)
        return x[:, -1, 0] + step if self.residual else step


def mse_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
    """Mean squared error of a ``(x, y)`` batch, weighted by its size (for ``fit``)."""
    x, y = batch
    return nn.functional.mse_loss(model(x), y), len(y)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, device: torch.device | str = "cpu",
            batch_size: int = 1024, num_threads: int | None = 1) -> np.ndarray:
    """Predictions ``(N,)`` of ``model`` for windows ``x (N, k, 1)``, in eval mode."""
    model.eval()
    with torch_threads(num_threads if torch.device(device).type == "cpu" else None):
        parts = [model(x[i:i + batch_size].to(device)).cpu()
                 for i in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy().astype(np.float64)


def train_forecaster(cell: str, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], *,
                     hidden: int, layers: int, dropout: float, epochs: int, batch_size: int,
                     lr: float, patience: int, seed: int, device: torch.device | str = "cpu",
                     residual: bool = False, num_threads: int | None = 1,
                     desc: str = "train") -> tuple[RecurrentForecaster, History]:
    """Train one :class:`RecurrentForecaster` with MSE and Adam through ``training.fit``.

    ``train``/``val`` are ``(x (N, k, 1), y (N,))``; ``seed`` fixes the initial weights and
    the batch order. Early stopping on the validation MSE restores the best epoch's weights.
    Runs with ``num_threads`` CPU threads (see :func:`torch_threads`).
    """
    torch.manual_seed(seed)
    model = RecurrentForecaster(cell, hidden, layers, dropout, residual).to(device)
    loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    x_val, y_val = val[0].to(device), val[1].to(device)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_loss": nn.functional.mse_loss(m(x_val), y_val).item()}

    stopper = EarlyStopping("val_loss", patience=patience, restore_best=True)
    with torch_threads(num_threads if torch.device(device).type == "cpu" else None):
        history = fit(model, loader, mse_loss, torch.optim.Adam(model.parameters(), lr=lr),
                      epochs, evaluate=evaluate, device=device, callbacks=[stopper], desc=desc)
    return model, history


def persistence(values: np.ndarray, start: int, stop: int | None = None) -> np.ndarray:
    """The naive forecast ``y_hat[t] = values[t-1]`` for ``t = start .. stop-1``."""
    values = np.asarray(values, dtype=np.float64)
    stop = len(values) if stop is None else stop
    if start < 1:
        raise ValueError("persistence needs one past value: start >= 1")
    return values[start - 1:stop - 1].copy()


@dataclass
class WalkForward:
    """One-step-ahead ARIMA forecasts: ``mean (N,)``, ``lower``/``upper`` of the band, and
    the parameter vectors of each refit."""

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    params: list[np.ndarray]


def arima_walk_forward(values: np.ndarray, start: int, order: tuple[int, int, int],
                       with_drift: bool = False, refit_every: int = 0,
                       alpha: float = 0.05) -> WalkForward:
    """One-step-ahead forecasts of ``values[t]`` for ``t = start .. n-1`` from data ``< t``.

    Parameters are estimated on ``values[:start]`` and re-estimated on everything observed
    so far every ``refit_every`` steps (0: never). Between refits the state is updated with
    each new observation by the Kalman filter at fixed parameters (``ARIMAResults.apply``),
    so every forecast uses the newest observation. ``with_drift`` adds a constant to the
    differenced series (trend ``"t"`` for ``d = 1``, ``"c"`` for ``d = 0``).
    """
    from statsmodels.tsa.arima.model import ARIMA

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if not 0 < start < n:
        raise ValueError(f"start must be in (0, {n}), got {start}")
    trend = "n"
    if with_drift:
        trend = "c" if order[1] == 0 else "t" if order[1] == 1 else "n"
    step = refit_every if refit_every > 0 else n
    means, lowers, uppers, params = [], [], [], []
    for block in range(start, n, step):
        end = min(block + step, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter of the optimiser
            fitted = ARIMA(values[:block], order=order, trend=trend).fit()
            pred = fitted.apply(values[:end]).get_prediction(start=block, end=end - 1)
        band = np.asarray(pred.conf_int(alpha=alpha))
        means.append(np.asarray(pred.predicted_mean))
        lowers.append(band[:, 0])
        uppers.append(band[:, 1])
        params.append(np.asarray(fitted.params))
    return WalkForward(np.concatenate(means), np.concatenate(lowers), np.concatenate(uppers),
                       params)


def metrics_table(rows: dict[str, Sequence[dict[str, float]]],
                  keys: Sequence[str] = ("rmse", "mae", "mape", "r2")) -> pd.DataFrame:
    """``{model: [metrics of each seed]}`` -> a table of mean and std (std 0 for one run)."""
    out = {}
    for name, runs in rows.items():
        frame = pd.DataFrame(list(runs))[list(keys)]
        std = frame.std(ddof=1) if len(frame) > 1 else frame.iloc[0] * 0
        out[name] = {**{k: frame[k].mean() for k in keys},
                     **{f"{k}_std": std[k] for k in keys}, "runs": len(frame)}
    return pd.DataFrame(out).T


def adf_test(values: Sequence[float]) -> tuple[float, float]:
    """Augmented Dickey-Fuller statistic and p-value (H0: a unit root) of ``values (n,)``."""
    from statsmodels.tsa.stattools import adfuller

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # statsmodels 0.15 return-type notice
        result = adfuller(np.asarray(values, dtype=np.float64), autolag="AIC")
    return float(result[0]), float(result[1])


def evaluate_forecast(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """``regression_metrics`` over the points whose true value is known (NaN targets skipped)."""
    from helpers.metrics import regression_metrics

    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ")
    known = ~np.isnan(t)
    return regression_metrics(t[known], p[known])


def newey_west_se(values: Sequence[float], lags: int | None = None) -> float:
    """Standard error of the mean of ``values (n,)`` that allows for autocorrelation.

    The Newey-West long-run variance: autocovariances up to ``lags`` (default
    ``floor(4 (n/100)^(2/9))``) with Bartlett weights ``1 - j/(lags+1)``; ``lags=0`` gives the
    i.i.d. ``std/sqrt(n)`` (population std).
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise ValueError(f"newey_west_se needs at least 2 values, got {n}")
    lags = int(4 * (n / 100) ** (2 / 9)) if lags is None else lags
    e = x - x.mean()
    variance = e @ e / n
    for j in range(1, min(lags, n - 1) + 1):
        variance += 2 * (1 - j / (lags + 1)) * (e[j:] @ e[:-j]) / n
    return float(np.sqrt(max(variance, 0.0) / n))


def residual_summary(y_true: Sequence[float],
                     forecasts: dict[str, Sequence[float]]) -> pd.DataFrame:
    """The test residuals ``y_true - forecast (n,)`` of each forecast, one row per forecast.

    Columns: ``bias`` (the mean residual; > 0 means the forecast is too low on average) and
    its Newey-West standard error ``bias_se``, ``std``, ``skew``, ``excess_kurtosis`` (0 for a
    normal distribution), ``lag1_autocorr`` (0 for errors that do not persist from one day to
    the next) and ``n``. NaN targets are skipped; the shape columns are NaN for a forecast
    with constant residuals.
    """
    t = np.asarray(y_true, dtype=np.float64)
    known = ~np.isnan(t)
    rows = {}
    for name, forecast in forecasts.items():
        r = t[known] - np.asarray(forecast, dtype=np.float64)[known]
        e = r - r.mean()
        m2 = e @ e / len(e)
        shape = ({"skew": np.mean(e ** 3) / m2 ** 1.5,
                  "excess_kurtosis": np.mean(e ** 4) / m2 ** 2 - 3,
                  "lag1_autocorr": (e[1:] @ e[:-1]) / (e @ e)} if m2 > 0 else
                 dict.fromkeys(("skew", "excess_kurtosis", "lag1_autocorr"), np.nan))
        rows[name] = {"bias": r.mean(), "bias_se": newey_west_se(r), "std": r.std(ddof=1),
                      **shape, "n": len(r)}
    return pd.DataFrame(rows).T.astype({"n": int})


def diebold_mariano(y_true: Sequence[float], pred_a: Sequence[float],
                    pred_b: Sequence[float]) -> tuple[float, float]:
    """Diebold-Mariano test of equal squared error for one-step forecasts ``(n,)``.

    Returns ``(statistic, two-sided p-value)``; the statistic is negative when ``pred_a``
    has the smaller mean squared error. NaN targets are skipped; forecasts that differ only
    by rounding give ``(0, 1)``.
    """
    from math import erfc, sqrt

    t = np.asarray(y_true, dtype=np.float64)
    known = ~np.isnan(t)
    sq_a = (np.asarray(pred_a, dtype=np.float64)[known] - t[known]) ** 2
    sq_b = (np.asarray(pred_b, dtype=np.float64)[known] - t[known]) ** 2
    d = sq_a - sq_b
    spread = d.std(ddof=1) if len(d) > 1 else 0.0
    if spread <= 1e-9 * max(sq_a.mean(), sq_b.mean(), 1e-300):  # numerically the same forecast
        return 0.0, 1.0
    stat = float(d.mean() / (spread / sqrt(len(d))))
    return stat, float(erfc(abs(stat) / sqrt(2)))
