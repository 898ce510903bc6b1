"""experiments/copy_lengths.py, the study that is only a config, a task and a sweep:
its trial runs on the one loop with the copying task's closed-form baseline, and
its smoke grid runs and reports through launch."""

import json
import math
import os
import subprocess
import sys

import pytest

from rnnlab.tasks import sequence
from rnnlab.train import status

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from experiments import copy_lengths  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_trial_runs_on_the_loop_with_the_closed_form_baseline(tmp_path):
    c = copy_lengths.get_config("smoke,delay=7,cell=gru")
    c.unlock()
    c.train.async_checkpoint = False
    result = sequence.train_and_evaluate(c, str(tmp_path))
    # Arjovsky et al. 2016: blanks, then a uniform guess over the symbols
    assert result["eval_baseline"] == pytest.approx(10 * math.log(8) / (7 + 2 * 10), rel=1e-12)
    assert result["finished"] and status.read(str(tmp_path))["state"] == "finished"
    assert math.isfinite(result["eval_loss_over_baseline"]) and not result["diverged"]


def test_config_refuses_unknown_variant_and_key():
    with pytest.raises(ValueError, match="unknown variant 'smok'"):
        copy_lengths.get_config("smok")
    with pytest.raises(KeyError, match="task.lenght"):
        copy_lengths.get_config("smoke,task.lenght=5")


def test_sweep_lists_every_cell_delay_and_seed():
    trials = []
    copy_lengths.sweep(lambda **kw: trials.append(kw))
    assert len(trials) == len(copy_lengths.DELAYS) * len(copy_lengths.CELLS) * len(copy_lengths.SEEDS)
    assert {(t["task.length"], t["model.cell"]) for t in trials} == {
        (d, c) for d in copy_lengths.DELAYS for c in copy_lengths.CELLS}


@pytest.mark.slow
def test_smoke_grid_runs_and_reports_through_launch(tmp_path):
    root = str(tmp_path / "runs")
    run = subprocess.run([sys.executable, "-m", "launch", "run", "experiments/copy_lengths.py", f"--root={root}",
                          "--grid=smoke", "--executor=inline"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 finished" in run.stdout
    rep = subprocess.run([sys.executable, "-m", "launch", "report", "experiments/copy_lengths.py", f"--root={root}",
                          "--grid=smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    md = open(os.path.join(root, "report", "report.md")).read()
    for delay, cell in ((3, "lstm"), (5, "gru")):
        wd = os.path.join(root, f"length{delay}_cell{cell}_seed0")
        result = json.load(open(os.path.join(wd, "result.json")))
        assert result["eval_baseline"] == pytest.approx(10 * math.log(8) / (delay + 20), rel=1e-12)
        assert f"task.length={delay}, model.cell={cell}" in md
