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
    s, y, o = fc.SPECS[name], fc.series(name), fc.origins(name, "test")
    assert w.xs_TxBxD.shape == (s["window"], len(o), 1)
    np.testing.assert_allclose(w.level_B, y[o - 1])  # the last value before each origin
    np.testing.assert_allclose(fc.unscale(name, w.targets_BxH, w.level_B), fc.truth(name, "test"), rtol=1e-5)
    np.testing.assert_allclose(fc.unscale(name, w.xs_TxBxD[:, :, 0].T, w.level_B),
                               np.stack([y[i - s["window"]:i] for i in o]), rtol=1e-5)
    np.testing.assert_allclose(w.xs_TxBxD[-1], 0.0, atol=1e-6)  # relative to the last value
    b, again = fc.batch(name, 0, 4, batch_size=8), fc.batch(name, 0, 4, batch_size=8)
    np.testing.assert_array_equal(b.xs_TxBxD, again.xs_TxBxD)
    lo, hi = fc.bounds(name)["train"]
    train = y[lo:hi]
    for t, level in zip(fc.unscale(name, b.targets_BxH, b.level_B), b.level_B, strict=True):
        # each target window is a stretch of the train part, right after its level
        starts = [i for i in range(1, len(train) - len(t) + 1) if np.allclose(t, train[i:i + len(t)], rtol=1e-6)]
        assert any(train[i - 1] == level for i in starts)


def test_a_network_forecast_is_scored_in_the_series_units():
    """The MSE a network trains on is in units of the MASE scale: a forecast z off by e
    everywhere has MASE exactly |e|; the cached baselines equal a fresh computation."""
    name = "sunspots"
    w = fc.windows(name, "valid")
    got = fc.score(name, "valid", fc.unscale(name, w.targets_BxH + 0.5, w.level_B))
    assert got["mase"] == pytest.approx(0.5, rel=1e-5)
    naive = fc.baselines(name, "valid")["seasonal_naive"]
    assert naive == pytest.approx(fc.score(name, "valid", fc.seasonal_naive(name, "valid")))


def test_classical_model_forecasts_co2_better_than_seasonal_naive_on_its_first_origins():
    """Holt-Winters follows co2's trend; the seasonal-naive forecast lags it by a year."""
    f = fc.classical("co2", "test", first=3)
    y = fc.truth("co2", "test")[:3]
    naive = fc.seasonal_naive("co2", "test")[:3]
    assert f.shape == (3, 12) and np.abs(f - y).mean() < np.abs(naive - y).mean()


def test_the_sequence_task_trains_on_vector_targets_and_scores_forecasts_in_series_units():
    """The forecast task's batch holds the H targets at the last step only; the model's MSE on
    a vector target is the mean over H (numpy); a model that outputs the targets scores MASE 0,
    one that outputs 0 (no change from the last value) scores the hand-made no-change forecast."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from rnnlab.tasks import sequence

    task = ml_collections.ConfigDict(dict(name="co2", length=36))
    spec = sequence.task_spec(task)
    assert sequence.model_io(task) == (1, 12, "mse", "last") and (spec.d_in, spec.d_out) == (1, 12)
    b = spec.batch(0, 3, 5)
    assert b.targets_TxBxD.shape == (36, 5, 12) and b.mask_TxB.sum() == 5 and b.mask_TxB[-1].all()
    np.testing.assert_array_equal(b.targets_TxBxD[-1], fc.batch("co2", 0, 3, batch_size=5).targets_BxH)

    model = sequence.build_model(ml_collections.ConfigDict(dict(task=task, model=dict(
        cell="gru", cell_options="", d_hidden=8, num_layers=1, unroll=1, recurrent_radius=0.0))))
    params = model.init(jax.random.key(0))
    ys = np.asarray(model.apply(params, jnp.asarray(b.xs_TxBxD)))[-1]
    loss, m = model.loss_and_metrics(params, jnp.asarray(b.xs_TxBxD), jnp.asarray(b.targets_TxBxD),
                                     jnp.asarray(b.mask_TxB))
    assert float(loss) == pytest.approx(np.mean((ys - b.targets_TxBxD[-1]) ** 2), rel=1e-5) and m["count"] == 5

    class Fixed:  # a model whose last-step output is given
        def __init__(self, out):
            self.out = out

        def apply(self, params, xs):
            return self.out[None]

    w = fc.windows("co2", "test")
    assert sequence.forecast_scores(Fixed(w.targets_BxH), None, "co2", "test")["mase"] == pytest.approx(0, abs=1e-5)
    y, o = fc.series("co2"), fc.origins("co2", "test")
    no_change = np.repeat(y[o - 1][:, None], 12, axis=1)
    assert sequence.forecast_scores(Fixed(0 * w.targets_BxH), None, "co2", "test") == pytest.approx(
        fc.score("co2", "test", no_change))
