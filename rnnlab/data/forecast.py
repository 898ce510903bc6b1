"""Time-series forecasting on real series that ship inside ``statsmodels`` (no
download), scored as the forecasting literature does, against the seasonal-naive
forecast and a classical model on the same split.

    'co2'       Mauna Loa CO2 (ppm), weekly 1958-2001 (``statsmodels.datasets.co2``),
                averaged to months (the 59 missing weeks dropped before averaging):
                521 months, season m = 12, horizon H = 12, input window L = 36.
    'sunspots'  yearly sunspot numbers 1700-2008 (``statsmodels.datasets.sunspots``):
                309 years, cycle m = 11 (the solar cycle, as the seasonal-naive lag),
                horizon H = 11, window L = 33.

Split by time, never shuffled: the last ``n_test`` points are the test region, the
``n_test`` before them validation, the rest train. Forecasts are made from every
origin of a region (rolling origin, one step apart), each from the history up to
the origin only, H steps ahead, and compared with the truth inside the region:

    MASE  = mean |y - y^| / mean_t |y_t - y_{t-m}| over the train part (Hyndman &
            Koehler 2006; < 1: better than the in-sample seasonal-naive forecast)
    sMAPE = mean 200 |y - y^| / (|y| + |y^|)  (percent, as in the M4 competition)

Baselines: ``seasonal_naive`` (y^_{t+h} = y_{t+h-m*ceil(h/m)}) and ``classical``:
Holt-Winters exponential smoothing with additive trend and season (co2), an
autoregression AR(9) fitted by statsmodels' ARIMA (sunspots), refitted at every
origin on the history up to it.

For a network: ``batch(name, seed, step, batch_size)`` gives random windows of the
train part (``Windows``: inputs ``xs_TxBxD`` with T = L, D = 1, the next H values
``targets_BxH``, and ``level_B``, the last observed value). Each window is read
relative to its own last value and in units of the MASE scale (the train part's
mean |y_t - y_{t-m}|): z = (y - level) / scale, so a trending series (co2) gives
the network the same kind of numbers in the test years as in training.
``windows(name, region)`` gives the rolling-origin inputs of a region,
``unscale(name, z, level_B)`` the way back to the series' units, and
``score(name, region, forecasts_OxH)`` the two metrics of any forecast;
``baselines(name, region)`` the scores of seasonal-naive and the classical model
(the classical refits take seconds: kept in a JSON file under the cache directory,
``$RNNLAB_CACHE_DIR`` or ``~/.cache/rnnlab``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

SERIES = ("co2", "sunspots")
REGIONS = ("valid", "test")
SPECS = {"co2": dict(m=12, horizon=12, window=36, n_test=48),
         "sunspots": dict(m=11, horizon=11, window=33, n_test=44)}
_TASK_IDS = {"co2": 11, "sunspots": 12}


class Windows(NamedTuple):
    xs_TxBxD: np.ndarray  # inputs (y - level) / scale, T = window, D = 1
    targets_BxH: np.ndarray  # the next H values, (y - level) / scale
    level_B: np.ndarray  # the last observed value of each window (raw units)


def _check(name: str) -> None:
    if name not in SERIES:
        raise ValueError(f"unknown series {name!r}; choose one of {', '.join(SERIES)}")


@functools.cache
def series(name: str) -> np.ndarray:
    """The raw series (float64, oldest first)."""
    _check(name)
    try:
        import statsmodels.api as sm
    except ImportError as e:
        raise ImportError("forecasting reads its series from statsmodels.datasets: pip install statsmodels "
                          "(or pip install -e '.[card]')") from e
    if name == "co2":
        weekly = sm.datasets.co2.load_pandas().data["co2"].dropna()
        return weekly.resample("MS").mean().dropna().to_numpy(np.float64)
    return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)


def bounds(name: str) -> dict[str, tuple[int, int]]:
    """[start, stop) of train, valid and test."""
    n, k = len(series(name)), SPECS[name]["n_test"]
    return {"train": (0, n - 2 * k), "valid": (n - 2 * k, n - k), "test": (n - k, n)}


def mase_scale(name: str) -> float:
    """The MASE denominator: mean |y_t - y_{t-m}| over the train part."""
    m = SPECS[name]["m"]
    lo, hi = bounds(name)["train"]
    train = series(name)[lo:hi]
    return float(np.mean(np.abs(train[m:] - train[:-m])))


def origins(name: str, region: str) -> np.ndarray:
    """Forecast origins of a region: index i means the history is y[:i] and the forecast
    covers y[i:i+H], every point of which lies inside the region."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    lo, hi = bounds(name)[region]
    return np.arange(lo, hi - SPECS[name]["horizon"] + 1)


def truth(name: str, region: str) -> np.ndarray:
    """The values each origin's forecast is scored against: O x H."""
    y, h = series(name), SPECS[name]["horizon"]
    return np.stack([y[i:i + h] for i in origins(name, region)])


def score(name: str, region: str, forecasts_OxH: np.ndarray) -> dict[str, float]:
    """MASE and sMAPE of forecasts (raw units) from every origin of ``region``."""
    y_true = truth(name, region)
    f = np.asarray(forecasts_OxH, np.float64)
    if f.shape != y_true.shape:
        raise ValueError(f"forecasts of {name}/{region} must be {y_true.shape} (origins x horizon), got {f.shape}")
    scale = mase_scale(name)
    err = np.abs(y_true - f)
    denom = np.abs(y_true) + np.abs(f)
    smape = np.where(denom > 0, 200.0 * err / np.where(denom > 0, denom, 1.0), 0.0)
    return {"mase": float(err.mean() / scale), "smape": float(smape.mean())}


def seasonal_naive(name: str, region: str) -> np.ndarray:
    """y^_{i+h} = y_{i+h-m*ceil((h+1)/m)} for h = 0..H-1: the last observed value of the same season."""
    y, s = series(name), SPECS[name]
    m, h = s["m"], np.arange(s["horizon"])
    lag = m * np.ceil((h + 1) / m).astype(int)
    return np.stack([y[i + h - lag] for i in origins(name, region)])


def classical(name: str, region: str, first: int | None = None) -> np.ndarray:
    """Holt-Winters (co2) or AR(9) (sunspots) refitted at every origin on y[:origin] (``first``:
    only the first so many origins; about a second per refit)."""
    import warnings

    from statsmodels.tsa.arima.model import ARIMA
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y, s = series(name), SPECS[name]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of refits on short histories
        for i in origins(name, region)[:first]:
            if name == "co2":
                fit = ExponentialSmoothing(y[:i], trend="add", seasonal="add", seasonal_periods=s["m"]).fit()
            else:
                fit = ARIMA(y[:i], order=(9, 0, 0)).fit()
            out.append(np.asarray(fit.forecast(s["horizon"]), np.float64))
    return np.stack(out)


def _window_at(name: str, i: int) -> tuple[np.ndarray, np.ndarray, float]:
    y, s = series(name), SPECS[name]
    level, scale = y[i - 1], mase_scale(name)
    return (y[i - s["window"]:i] - level) / scale, (y[i:i + s["horizon"]] - level) / scale, level


def _stack(items) -> Windows:
    xs, ts, levels = zip(*items, strict=True)
    return Windows(np.stack(xs, 1)[:, :, None].astype(np.float32), np.stack(ts).astype(np.float32),
                   np.asarray(levels, np.float64))


def batch(name: str, seed: int, step: int, *, batch_size: int) -> Windows:
    """Random training windows (input L, next H), both inside the train part: a pure
    function of (seed, step)."""
    _check(name)
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    s = SPECS[name]
    lo, hi = bounds(name)["train"]
    rng = np.random.default_rng(np.random.SeedSequence([_TASK_IDS[name], int(seed), int(step)]))
    idx = rng.integers(lo + s["window"], hi - s["horizon"] + 1, batch_size)
    return _stack(_window_at(name, int(i)) for i in idx)


def windows(name: str, region: str) -> Windows:
    """The rolling-origin inputs of a region (and their targets), one per origin."""
    return _stack(_window_at(name, int(i)) for i in origins(name, region))


def unscale(name: str, z: np.ndarray, level_B: np.ndarray) -> np.ndarray:
    """Forecasts z (B x H, or B) relative to each window's level back to the series' units."""
    z = np.asarray(z, np.float64)
    level = np.asarray(level_B, np.float64).reshape((-1,) + (1,) * (z.ndim - 1))
    return z * mase_scale(name) + level


def _cache_file() -> str:
    import statsmodels

    from rnnlab.cache import cache_dir

    return str(cache_dir() / f"forecast_baselines-statsmodels_{statsmodels.__version__}-v1.json")


def baselines(name: str, region: str) -> dict[str, dict[str, float]]:
    """{'seasonal_naive': {mase, smape}, 'classical': {mase, smape, 'model'}} on ``region``;
    the classical refits are computed once and kept in the cache file."""
    import json
    import os

    _check(name)
    path, key = _cache_file(), f"{name}/{region}"
    cached = {}
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
    if key not in cached:
        cached[key] = {"seasonal_naive": score(name, region, seasonal_naive(name, region)),
                       "classical": {**score(name, region, classical(name, region)),
                                     "model": CLASSICAL_MODELS[name]}}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cached, f, indent=1)
        os.replace(tmp, path)  # atomic: parallel trials may write it at once
    return cached[key]


CLASSICAL_MODELS = {"co2": "Holt-Winters (additive trend and season)", "sunspots": "AR(9)"}


__all__ = ["CLASSICAL_MODELS", "REGIONS", "SERIES", "SPECS", "Windows", "baselines", "batch", "bounds", "classical",
           "mase_scale", "origins", "score",
           "seasonal_naive", "series", "truth", "unscale", "windows"]
