"""launch/: trials from an experiment's grid, the local executor end to end (a 4-trial
sweep, a trial killed mid-run that resumes to the uninterrupted result, a diverging
trial reported while the others finish), status, and the report's statistics."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
from fixtures import launch_checks as checks
from scipy import stats

from launch import __main__ as cli
from launch import report, status, trials

GRADIENT_FLOW = os.path.join(checks.REPO, "experiments", "gradient_flow.py")


def test_local_sweep_interrupt_resume_failure_and_report(tmp_path):
    root = str(tmp_path / "sweep")
    first = checks.popen(checks.launch_cmd("run", checks.EXPERIMENT, f"--root={root}", "--parallel=4"),
                         str(tmp_path / "first.log"))
    wd = os.path.join(root, "lstm_seed0")
    stopped_at = checks.wait_mid_run(wd)
    os.kill(status.read_status(wd)["pid"], signal.SIGKILL)  # no chance to save anything more
    assert first.wait(timeout=300) == 1, open(tmp_path / "first.log").read()
    rows = {r["name"]: r for r in status.table(trials.expand(checks.EXPERIMENT, root), slurm=False)}
    assert rows["lstm_seed0"]["state"] == "interrupted"
    assert rows["lstm_seed1"]["state"] == rows["lstm_seed2"]["state"] == "finished"

    reference, ref_wd = checks.start_reference(tmp_path)
    second = checks.popen(checks.launch_cmd("run", checks.EXPERIMENT, f"--root={root}"), str(tmp_path / "second.log"))
    second.wait(timeout=300), reference.wait(timeout=300)
    log = open(tmp_path / "second.log").read()
    assert "skip lstm_seed1: finished" in log and "skip diverge_seed0: non-finite" in log, log
    checks.check_outcome(root, ref_wd, stopped_at)

    out = str(tmp_path / "report")
    assert cli.main(["report", checks.EXPERIMENT, f"--root={root}", f"--out={out}"]) == 0
    checks.check_report(root, out)


def test_dry_run_prints_the_exact_commands(tmp_path, capsys):
    assert cli.main(["run", GRADIENT_FLOW, f"--root={tmp_path}", "--grid=smoke", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    base = f"{sys.executable} -u -m rnnlab.main --config={GRADIENT_FLOW}:smoke --workdir={tmp_path}"
    assert lines == [  # names from gradient_flow.describe; overrides from its smoke(add)
        f"{base}/lstm_fb1_T20_clip --config.model.cell=lstm --config.model.cell_options=forget_bias=1.0",
        f"{base}/elman_T20_clip --config.model.cell=elman --config.model.cell_options=",
    ]
    assert not os.listdir(tmp_path)  # nothing ran


def test_bad_inputs_are_refused_before_anything_runs(tmp_path):
    no_sweep = tmp_path / "no_sweep.py"
    no_sweep.write_text(open(checks.EXPERIMENT).read().replace("def sweep(add)", "def other(add)"))
    with pytest.raises(ValueError, match="no grid function sweep"):
        trials.expand(str(no_sweep), str(tmp_path))
    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text(open(checks.EXPERIMENT).read().replace("add(seed=seed)", "add(**{'optim.lrr': 0.1})"))
    with pytest.raises(ValueError, match="has no key 'optim.lrr'"):
        trials.expand(str(bad_key), str(tmp_path))
    dup = tmp_path / "dup.py"
    dup.write_text(open(checks.EXPERIMENT).read().replace("for seed in (0, 1, 2)", "for seed in (0, 0)"))
    with pytest.raises(ValueError, match="share the name 'lstm_seed0'"):
        trials.expand(str(dup), str(tmp_path))
    # a workdir holding another config (here: another cell) is refused
    os.makedirs(tmp_path / "lstm_seed1")
    cfg = json.loads(trials.resolve(trials.load_experiment(checks.EXPERIMENT), "", {"seed": 1}).to_json())
    cfg["model"]["cell"] = "gru"
    json.dump(cfg, open(tmp_path / "lstm_seed1" / "config.json", "w"))
    with pytest.raises(ValueError, match=r"lstm_seed1 holds a run of a different config \(model.cell: 'gru' -> 'lstm'"):
        trials.expand(checks.EXPERIMENT, str(tmp_path))


def test_names_without_a_name_function_are_readable_and_safe(tmp_path):
    exp = tmp_path / "anon.py"
    exp.write_text(open(checks.EXPERIMENT).read().replace("def name(", "def _name(").replace(
        "add(seed=0, **DIVERGE)", "add(**{'model.cell_options': 'forget_bias=0.5,recurrent_init=identity'})"))
    names = [t.name for t in trials.expand(str(exp), str(tmp_path))]
    assert names == ["seed0", "seed1", "seed2", "cell_optionsforget_bias=0.5-recurrent_init=identity"]
    assert trials.safe_name({"model.cell": "gru", "optim.lr": 0.001, "data.source": "a/b c"}) == \
        "cellgru_lr0.001_sourcea-b-c"


def test_status_of_trials_that_never_ran(tmp_path):
    rows = status.table(trials.expand(checks.EXPERIMENT, str(tmp_path)), slurm=False)
    assert [(r["state"], r["step"], r["last"]) for r in rows] == [("pending", 0, None)] * 4
    assert "4 pending" in status.format_table(rows)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_mean_ci_equals_scipy(n):
    x = np.random.default_rng(n).normal(2.0, 0.5, size=n)
    got = report.mean_ci(list(x))
    low, high = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    np.testing.assert_allclose([got["mean"], got["std"], got["ci_low"], got["ci_high"]],
                               [x.mean(), x.std(ddof=1), low, high], rtol=1e-12)
    assert report.mean_ci([1.5])["n"] == 1 and np.isnan(report.mean_ci([1.5])["ci_low"])


def test_trials_differing_only_in_seed_share_a_group(tmp_path):
    module = trials.load_experiment(checks.EXPERIMENT)
    ts = trials.expand(checks.EXPERIMENT, str(tmp_path))
    for t in ts:  # config.json is what groups read, as a run writes it
        os.makedirs(t.workdir)
        json.dump(json.loads(trials.resolve(module, "", t.overrides).to_json()), open(f"{t.workdir}/config.json", "w"))
    groups = report.group_by_config(ts)
    assert sorted(sorted(t.name for t in g) for g in groups.values()) == [
        ["diverge_seed0"], ["lstm_seed0", "lstm_seed1", "lstm_seed2"]]
    assert "optim.lr=1000000000000.0" in [k for k, g in groups.items() if len(g) == 1][0]
