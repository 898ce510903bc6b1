"""experiments/lstm_vs_gru_converged.py (issue 38): the paper grid's dry run (trial count,
resources, matched parameters, early stopping on every trial), the convergence rule
against hand-made curves, the music model's loss against the hand-checked piano-roll
NLL, the smoke grid through launch on the one loop, and a two-trial slice of the paper
grid through the real one-node SLURM cluster."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import lstm_vs_gru as base
from experiments import lstm_vs_gru_converged as study
from launch import __main__ as cli
from launch import trials
from tests.test_slurm import cluster  # noqa: F401  (the fixture: a controller that answers, else skip/fail)

EXPERIMENT = study.__file__


def test_the_paper_grid_dry_run_lists_its_trials_and_resources(tmp_path, capsys):
    args = ["run", EXPERIMENT, f"--root={tmp_path}", "--grid=paper", "--executor=slurm", "--cpus=2",
            "--time_min=120", "--dry_run"]
    assert cli.main(args) == 0
    *commands, summary = capsys.readouterr().out.splitlines()
    n = 3 * 2 * len(study.PAPER_LRS) * len(study.PAPER_SEEDS)
    assert len(commands) == n == 120
    assert summary == f"{n} trials of grid paper, executor slurm (cpus 2, time_min 120); nothing was started"
    assert not os.listdir(tmp_path)  # nothing ran, no chorale parsed
    ts = trials.expand(EXPERIMENT, str(tmp_path), "paper")
    seen = set()
    for t in ts:
        c = trials.resolve(study, "", t.overrides)
        task, cell = c.study.task, base.describe(c)["cell"]
        seen.add((task, cell, float(c.optim.lr), int(c.seed)))
        assert c.train.early_stop_evals > 0 and c.train.num_steps == study.PAPER_CAPS[task]
        count = base.parameter_count(c, c.model.d_hidden)
        assert abs(count - study.BUDGET) / study.BUDGET < 0.05, (t.name, count)  # matched to ~20k
    assert seen == {(t, c, lr, s) for t in ("music", "char_lm") for c in study.CELLS for lr in study.PAPER_LRS
                    for s in study.PAPER_SEEDS}
    assert len(trials.expand(EXPERIMENT, str(tmp_path), "converged_cpu")) == 3 * 2 * len(study.LRS) * len(study.SEEDS) == 54


def test_the_convergence_rule_on_hand_made_curves():
    flat_end = [(100, 2.0), (500, 1.5), (900, 1.21), (1000, 1.2)]  # best 1.21 at step 900 (= cut) -> 1.2: 0.8%
    r = study.converged(flat_end)
    assert r["converged"] and r["gain"] == pytest.approx((1.21 - 1.2) / 1.21)
    still = [(100, 2.0), (900, 1.3), (950, 1.25), (1000, 1.2)]  # 1.3 -> 1.2 over the last tenth: 7.7%
    assert not study.converged(still)["converged"]
    worse = [(100, 2.0), (500, 1.0), (1000, 1.4)]  # validation rose at the end: the best did not move
    assert study.converged(worse)["converged"] and study.converged(worse)["gain"] == 0
    assert not study.converged([])["converged"] and math.isnan(study.converged([])["gain"])
    assert not study.converged([(1000, 1.0)])["converged"]  # nothing before the last tenth


def test_the_music_models_loss_is_the_piano_roll_nll():
    """SeqModel's 'bce' loss on a padded batch equals rnnlab.data.music.piano_roll_nll (itself
    checked by hand in test_music), and the model reads 88 pitches in and out."""
    from rnnlab.data import music
    from rnnlab.tasks import sequence

    c = study.get_config("smoke_music,cell=gru")
    model = sequence.build_model(c)
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    rolls = [rng.random((n, music.N_PITCHES)) < 0.05 for n in (9, 17, 5)]
    b = music.roll_batch(rolls, 0, 0, batch_size=3)
    loss, metrics = model.loss_and_metrics(params, jnp.asarray(b.xs_TxBxD), jnp.asarray(b.targets_TxBxD),
                                           jnp.asarray(b.mask_TxB))
    logits = model.apply(params, jnp.asarray(b.xs_TxBxD))
    assert logits.shape == (16, 3, music.N_PITCHES)
    want = music.piano_roll_nll(logits, jnp.asarray(b.targets_TxBxD), jnp.asarray(b.mask_TxB))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    assert float(metrics["count"]) == 8 + 16 + 4


@pytest.mark.slow
def test_the_smoke_grid_trains_both_tasks_with_early_stopping_through_launch(tmp_path):
    """Builds the chorale cache if this machine has none (under a minute, once)."""
    root = str(tmp_path / "smoke")
    assert cli.main(["run", EXPERIMENT, f"--root={root}", "--grid=smoke", "--executor=inline"]) == 0
    for t in trials.expand(EXPERIMENT, root, "smoke"):
        result = json.load(open(os.path.join(t.workdir, "result.json")))
        assert result["finished"] and "early_stopped" in result
        key = "test_loss" if t.name.startswith("smoke_music") else "test_bpc"
        assert math.isfinite(result[key]) and result[key] > 0, (t.name, result)
    # The report: every trial's verdict, and the tables' numbers are the JSON's.
    out = str(tmp_path / "report")
    rep = study.report(root, out)
    readme = open(os.path.join(out, "README.md")).read()
    assert set(rep["trials"]) == {t.name for t in trials.expand(EXPERIMENT, root, "smoke")}
    for task, s in rep["summary"].items():
        for cell, c in s["cells"].items():
            row = next(line for line in readme.splitlines() if line.startswith(f"| {cell}") and
                       f"| {c['best']['parameters']} ({c['best']['d_hidden']})" in line)
            assert f"| {c['best']['lr']:g} |" in row and f"{c['best']['test']['mean']:.4g}" in row, (task, row)
            want = json.load(open(os.path.join(root, f"{task}_{cell}_lr0.01_seed0", "result.json")))
            assert c["best"]["test"]["mean"] == want[s["test_key"]]  # one seed: the mean is the trial's number
    for r in rep["trials"].values():
        assert r["stop"] in ("early stop", "step cap") and isinstance(r["converged"], bool)
    assert {"curves_smoke_music.png", "curves_smoke_lm.png"} <= set(os.listdir(out))


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_a_two_trial_slice_of_the_paper_grid_runs_on_the_slurm_cluster(tmp_path):
    """The paper grid's first two trials (20-step caps) as one array job on the real cluster."""
    root = str(tmp_path / "slice")
    env = {**os.environ, "PYTHONPATH": base.REPO_ROOT}
    r = subprocess.run([sys.executable, "-m", "launch", "run", EXPERIMENT, f"--root={root}", "--grid=paper_slice",
                        "--executor=slurm", "--cpus=1", "--time_min=30"], cwd=base.REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    ids = re.findall(r"submitted (\S+): job (\d+)_(\d+)", out)
    assert len(ids) == 2 and len({j for _, j, _ in ids}) == 1, out[-3000:]  # one array job, a task per trial
    ts = trials.expand(EXPERIMENT, root, "paper_slice")
    assert [t.name for t in ts] == ["music_tanh_lr0.0003_seed0", "music_tanh_lr0.0003_seed1"]
    for t in ts:
        result = json.load(open(os.path.join(t.workdir, "result.json")))
        assert result["finished"] and result["step"] <= 20 and math.isfinite(result["test_loss"])
