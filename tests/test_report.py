"""rnnlab.report: the interval against scipy.stats.t, its clipping at 0 and the
2-seed caveat, configuration labels from the keys that vary, a single-point curve
drawn with a marker, and trial states from status.json (never from logs)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from rnnlab.report import curves, gather, groups, stats, style, tables
from rnnlab.train import status as train_status


@pytest.mark.parametrize("n", [2, 3, 7])
def test_mean_ci_equals_scipy_t(n):
    x = np.random.default_rng(n).normal(2.0, 0.5, size=n)
    got = stats.mean_ci(list(x))
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    np.testing.assert_allclose([got["mean"], got["std"], got["ci_low"], got["ci_high"]],
                               [x.mean(), x.std(ddof=1), low, high], rtol=1e-12)
    assert got["n"] == n and not got["clipped"]
    assert (got["caveat"] is not None) == (n == 2)
    one = stats.mean_ci([1.5])
    assert one["n"] == 1 and one["mean"] == 1.5 and np.isnan(one["ci_low"]) and "1 seed" in one["caveat"]


def test_interval_of_a_nonnegative_quantity_is_clipped_at_zero_and_flagged():
    x = [0.0002, 0.0019]  # the adding task's MSE over 2 seeds: the t interval reaches far below 0
    plain = stats.mean_ci(x)
    low, high = scipy_stats.t.interval(0.95, 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert plain["ci_low"] == pytest.approx(low) and low < 0
    clipped = stats.mean_ci(x, nonnegative=True)
    assert clipped["ci_low"] == 0.0 and clipped["clipped"] and clipped["ci_high"] == pytest.approx(high)
    assert not stats.mean_ci([3.0, 3.1, 3.2], nonnegative=True)["clipped"]  # far from 0: unchanged
    text = tables.ci_text(clipped)
    assert text.endswith(tables.FEW_SEEDS_MARK + tables.CLIPPED_MARK) and "[0, " in text
    notes = "\n".join(tables.footnotes([clipped]))
    assert "2 seeds: wide interval" in notes and "clipped at 0" in notes
    assert tables.footnotes([stats.mean_ci([1.0, 2.0, 3.0])]) == []
    for name in ("valid/nll", "test_bpc", "eval_loss", "train/loss", "perplexity", "test_wer"):
        assert stats.nonnegative(name), name
    for name in ("test_accuracy", "grad_norm_ratio", None):
        assert not stats.nonnegative(name), name


def test_labels_list_only_the_keys_that_vary_besides_the_seed():
    base = {"model.cell": "lstm", "optim.lr": 0.01, "seed": 0, "task.length": 100}
    trials = [{"name": f"{cell}{lr}{s}", "config": {**base, "model.cell": cell, "optim.lr": lr, "seed": s}}
              for cell in ("lstm", "gru") for lr in (0.01, 0.003) for s in (0, 1)]
    got = groups.group(trials, fallback="study")
    assert sorted(got) == sorted(f"model.cell={c}, optim.lr={lr}" for c in ("lstm", "gru") for lr in (0.01, 0.003))
    assert all(len(v) == 2 and {t["config"]["seed"] for t in v} == {0, 1} for v in got.values())
    only_seed = [{"name": str(s), "config": {**base, "seed": s}} for s in range(3)]
    assert list(groups.group(only_seed, fallback="gradient_flow:smoke")) == ["gradient_flow:smoke"]
    with pytest.raises(ValueError, match="fallback"):
        groups.group(only_seed, fallback="")


def test_a_single_point_curve_is_drawn_with_a_marker(tmp_path):
    plt = style.pyplot()
    fig, ax = plt.subplots()
    one = curves.plot_curve(ax, [(500, 2.9)])
    many = curves.plot_curve(ax, [(s, 1.0 / (s + 1)) for s in range(100)])
    assert one.get_marker() == "o" and list(one.get_xdata()) == [500]
    assert many.get_marker() in ("None", None, "")  # dense curves stay lines
    assert curves.plot_curve(ax, []) is None
    paths = style.save(fig, str(tmp_path / "fig"))
    assert os.path.getsize(paths[0]) > 1000
    rows = [{"kind": "valid", "step": 500, "nll": 2.9}, {"kind": "train", "step": 1, "loss": float("nan")},
            {"kind": "train", "step": 2, "loss": 3.0}]
    assert curves.metric_curve(rows, "valid/nll") == [(500, 2.9)]
    assert curves.metric_curve(rows, "train/loss") == [(2, 3.0)]  # non-finite values left out
    assert curves.mean_curve([[(1, 1.0), (2, 3.0)], [(2, 5.0)]]) == [(2, 4.0)]


def test_trial_state_comes_from_status_json_with_a_fallback_for_old_workdirs(tmp_path):
    wd = str(tmp_path / "t")
    os.makedirs(wd)
    assert gather.run_state(wd)["state"] == "not started"
    open(os.path.join(wd, "metrics.jsonl"), "w").write(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n")
    assert gather.run_state(wd)["state"] == "unknown"
    # a log that says 'non-finite' is not read
    open(os.path.join(wd, "train.log"), "w").write("NonFiniteError: non-finite training loss at step 3\n")
    assert gather.run_state(wd)["state"] == "unknown"
    json.dump({"step": 20}, open(os.path.join(wd, "result.json"), "w"))
    assert gather.run_state(wd)["state"] == "finished"
    for state in train_status.STATES:
        train_status.write(wd, state, step=7, total_steps=20, message=f"why {state}", metrics={"loss": 0.5})
        st = gather.run_state(wd)
        assert (st["state"], st["step"], st["total_steps"], st["message"]) == (state, 7, 20, f"why {state}")
    json.dump({"seed": 1, "optim": {"lr": 0.1}}, open(os.path.join(wd, "config.json"), "w"))
    (t,) = gather.gather(str(tmp_path))
    assert t["name"] == "t" and t["config"] == {"seed": 1, "optim.lr": 0.1} and t["result"] == {"step": 20}
    assert t["state"] == "diverged" and t["metrics"] and t["metrics"][0]["loss"] == 1.0


def test_markdown_table_and_csv(tmp_path):
    lines = tables.markdown_table(["a", "b|c"], [[1.23456, None], ["x", float("nan")]], align=["l", "r"])
    assert lines == ["| a | b/c |", "|---|---:|", "| 1.235 | - |", "| x | - |"]
    path = str(tmp_path / "t.csv")
    tables.write_csv(path, [{"a": 1}, {"b": 2}])
    assert open(path).read().splitlines() == ["a,b", "1,", ",2"]


def test_intervals_are_separated_only_when_neither_reaches_the_other():
    from rnnlab.report import stats

    a, b = stats.mean_ci([1.0, 1.1, 0.9]), stats.mean_ci([5.0, 5.1, 4.9])
    assert stats.separated(a, b) and stats.separated(b, a)
    assert not stats.separated(a, stats.mean_ci([1.05, 1.2, 0.95]))  # overlapping
    assert not stats.separated(a, stats.mean_ci([5.0]))  # one value: no interval
    assert not stats.separated(a, None)
