"""rnnlab.data.forecast: the series read from statsmodels, the time split, the metrics
against hand computation, the seasonal-naive forecast by its definition, the windows
a network reads (their targets are the truth, unscaled), and the classical model."""

from __future__ import annotations

import numpy as np
import pytest

from rnnlab.data import forecast as fc


@pytest.mark.parametrize("name, n", [("co2", 521), ("sunspots", 309)])
def test_series_and_split_by_time(name, n):
    y = fc.series(name)
    assert len(y) == n and np.all(np.isfinite(y))
    b, k, h = fc.bounds(name), fc.SPECS[name]["n_test"], fc.SPECS[name]["horizon"]
    assert b == {"train": (0, n - 2 * k), "valid": (n - 2 * k, n - k), "test": (n - k, n)}
    o = fc.origins(name, "test")
    assert o[0] == n - k and o[-1] + h == n  # every forecast lies inside the region
    if name == "sunspots":
        assert y[0] == 5.0 and y[1] == 11.0  # 1700, 1701 (statsmodels' SUNACTIVITY)


def test_metrics_against_hand_computation():
    name = "sunspots"
    y_true = fc.truth(name, "test")
    assert fc.score(name, "test", y_true) == {"mase": 0.0, "smape": 0.0}
    lo, hi = fc.bounds(name)["train"]
    train, m = fc.series(name)[lo:hi], fc.SPECS[name]["m"]
    scale = sum(abs(train[t] - train[t - m]) for t in range(m, len(train))) / (len(train) - m)
    got = fc.score(name, "test", y_true + 3.0)
    assert got["mase"] == pytest.approx(3.0 / scale, rel=1e-12)
    want_smape = np.mean([200 * 3.0 / (abs(v) + abs(v + 3.0)) for v in y_true.ravel()])
    assert got["smape"] == pytest.approx(want_smape, rel=1e-12)
    with pytest.raises(ValueError, match="origins x horizon"):
        fc.score(name, "test", y_true[:, :3])


@pytest.mark.parametrize("name", fc.SERIES)
def test_seasonal_naive_is_the_last_value_of_the_same_season(name):
    y, m, h = fc.series(name), fc.SPECS[name]["m"], fc.SPECS[name]["horizon"]
    f = fc.seasonal_naive(name, "valid")
    for row, i in zip(f, fc.origins(name, "valid"), strict=True):
        for step in range(h):
            j = i + step
            while j >= i:  # back by whole seasons until observed
                j -= m
            assert row[step] == y[j]


@pytest.mark.parametrize("name", fc.SERIES)
def test_windows_read_only_the_past_and_their_targets_are_the_truth(name):
    w = fc.windows(name, "test")
    s = fc.SPECS[name]
    assert w.xs_TxBxD.shape == (s["window"], len(fc.origins(name, "test")), 1)
    np.testing.assert_allclose(fc.unscale(name, w.targets_BxH), fc.truth(name, "test"), rtol=1e-5)
    np.testing.assert_allclose(fc.unscale(name, w.xs_TxBxD[-1, :, 0]), fc.series(name)[fc.origins(name, "test") - 1],
                               rtol=1e-5)
    b, again = fc.batch(name, 0, 4, batch_size=8), fc.batch(name, 0, 4, batch_size=8)
    np.testing.assert_array_equal(b.xs_TxBxD, again.xs_TxBxD)
    lo, hi = fc.bounds(name)["train"]
    train_z = (fc.series(name)[lo:hi] - fc.series(name)[lo:hi].mean()) / fc.series(name)[lo:hi].std()
    for t in b.targets_BxH:  # each target window is a stretch of the train part
        assert any(np.allclose(t, train_z[i:i + len(t)], atol=1e-5) for i in range(len(train_z) - len(t) + 1))


def test_classical_model_forecasts_co2_better_than_seasonal_naive_on_its_first_origins():
    """Holt-Winters follows co2's trend; the seasonal-naive forecast lags it by a year."""
    f = fc.classical("co2", "test", first=3)
    y = fc.truth("co2", "test")[:3]
    naive = fc.seasonal_naive("co2", "test")[:3]
    assert f.shape == (3, 12) and np.abs(f - y).mean() < np.abs(naive - y).mean()
