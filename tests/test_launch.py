"""launch/: trials from an experiment's grid, the local executor end to end (a 4-trial
sweep, a trial killed mid-run that resumes to the uninterrupted result, a diverging
trial reported while the others finish), status from each run's status.json, bad
configs refused before anything starts, and the report's grouping."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from fixtures import launch_checks as checks

from launch import __main__ as cli
from launch import report, status, trials

GRADIENT_FLOW = os.path.join(checks.REPO, "experiments", "gradient_flow.py")


@pytest.mark.slow
def test_local_sweep_interrupt_resume_failure_and_report(tmp_path):
    root = str(tmp_path / "sweep")
    first = checks.popen(checks.launch_cmd("run", checks.EXPERIMENT, f"--root={root}", "--parallel=4"),
                         str(tmp_path / "first.log"))
    wd = os.path.join(root, "lstm_seed0")
    stopped_at = checks.wait_mid_run(wd)
    os.kill(status.read_status(wd)["pid"], signal.SIGKILL)  # no chance to save anything more
    assert first.wait(timeout=300) == 1, open(tmp_path / "first.log").read()
    rows = {r["name"]: r for r in status.table(trials.expand(checks.EXPERIMENT, root))}
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
    *lines, summary = capsys.readouterr().out.splitlines()
    assert summary == "2 trials of grid smoke, executor local (--parallel auto); nothing was started"
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
    # a workdir holding another config's run (here: another cell; a checkpoint) is refused
    os.makedirs(tmp_path / "lstm_seed1" / "checkpoints" / "5")
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


def test_trials_differing_only_in_seed_share_a_group(tmp_path):
    module = trials.load_experiment(checks.EXPERIMENT)
    ts = trials.expand(checks.EXPERIMENT, str(tmp_path))
    for t in ts:  # config.json is what groups read, as a run writes it
        os.makedirs(t.workdir)
        json.dump(json.loads(trials.resolve(module, "", t.overrides).to_json()), open(f"{t.workdir}/config.json", "w"))
    _, per_config, _ = report.gather_sweep(ts, study="tiny_sweep")
    by_label = {r["config"]: sorted(r["trials"].split()) for r in per_config}
    assert sorted(by_label.values()) == [["diverge_seed0"], ["lstm_seed0", "lstm_seed1", "lstm_seed2"]]
    (single,) = [k for k, g in by_label.items() if len(g) == 1]
    assert "optim.lr=1000000000000.0" in single and "seed" not in single
    # only the seed varies: the configuration is named after the study, never "all"
    _, (only,), _ = report.gather_sweep(ts[:3], study="tiny_sweep")
    assert only["config"] == "tiny_sweep" and only["seeds"] == 3


def _variant(tmp_path, name, old, new):
    path = tmp_path / name
    text = open(checks.EXPERIMENT).read()
    assert old in text
    path.write_text(text.replace(old, new))
    return str(path)


def test_an_unknown_cell_or_a_wrong_type_is_refused_before_any_trial_starts(tmp_path, capsys):
    root = tmp_path / "root"
    bad_cell = _variant(tmp_path, "bad_cell.py", "    add(seed=0, **DIVERGE)",
                        "    add(seed=0, **DIVERGE)\n    add(seed=5, **{'model.cell': 'grux'})")
    assert cli.main(["run", bad_cell, f"--root={root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trial lstm_seed5" in err and "unknown cell 'grux'" in err, err
    assert "gru" in err and "nothing was started" in err
    assert not root.exists()  # the three good trials before it did not start either
    bad_type = _variant(tmp_path, "bad_type.py", "add(seed=seed)", "add(**{'seed': seed, 'train.num_steps': 'many'})")
    with pytest.raises(ValueError, match=r"trial .*train.num_steps=many.*not a valid value for train.num_steps"):
        trials.expand(bad_type, str(root))
    bad_option = _variant(tmp_path, "bad_option.py", "add(seed=seed)",
                          "add(**{'seed': seed, 'model.cell_options': 'forget_biass=1.0'})")
    with pytest.raises(ValueError, match=r"trial lstm_seed0 .*forget_biass"):
        trials.expand(bad_option, str(root))
    assert not root.exists()


def test_status_reads_each_runs_status_json(tmp_path):
    from rnnlab.train import status as train_status

    ts = trials.expand(checks.EXPERIMENT, str(tmp_path))
    written = {"lstm_seed0": "running", "lstm_seed1": "non-finite", "lstm_seed2": "diverged",
               "diverge_seed0": "failed"}
    for t in ts:
        os.makedirs(t.workdir)
        train_status.write(t.workdir, written[t.name], step=17, total_steps=400, message=f"{written[t.name]} here")
        with open(os.path.join(t.workdir, "train.log"), "w") as f:  # logs say otherwise: never read
            f.write("NonFiniteError: non-finite training loss at step 3\n")
    rows = {r["name"]: r for r in status.table(ts, slurm=False)}
    assert {n: r["state"] for n, r in rows.items()} == written
    assert all(r["step"] == 17 and r["num_steps"] == 400 for r in rows.values())
    assert rows["lstm_seed1"]["error"] == "non-finite here"
    assert status.split_todo(ts) == [t for t in ts if t.name in ("lstm_seed0", "diverge_seed0")]
    # a workdir from before status.json: result.json means finished, metrics alone 'unknown'
    for t in ts[:2]:
        os.remove(os.path.join(t.workdir, "status.json"))
    json.dump({"step": 400}, open(os.path.join(ts[0].workdir, "result.json"), "w"))
    open(os.path.join(ts[1].workdir, "metrics.jsonl"), "w").write('{"kind": "train", "step": 3, "loss": 1.0}\n')
    rows = {r["name"]: r for r in status.table(ts, slurm=False)}
    assert rows["lstm_seed0"]["state"] == "finished" and rows["lstm_seed1"]["state"] == "unknown"


def test_status_asks_squeue_only_when_a_trial_was_submitted_to_slurm(tmp_path, monkeypatch):
    """A local sweep's table never calls squeue (a down controller made `launch run` hang 30 s);
    a trial with a SLURM job id does, and the queue decides its state."""
    calls = tmp_path / "squeue_calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "squeue"
    fake.write_text(f"#!/bin/sh\necho called >> {calls}\necho '77 RUNNING'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ts = trials.expand(checks.EXPERIMENT, str(tmp_path / "root"))
    assert [r["state"] for r in status.table(ts)] == ["pending"] * 4 and not calls.exists()
    os.makedirs(ts[0].workdir)
    json.dump({"state": "queued", "job_id": "77"}, open(os.path.join(ts[0].workdir, trials.STATUS_FILE), "w"))
    assert status.table(ts)[0]["state"] == "running" and calls.read_text() == "called\n"


def test_cells_option_sets_the_cells_a_grid_compares(tmp_path, capsys):
    """--cells: the LM and LSTM-vs-GRU sweeps compare any registered cells, with no study file
    edited; a grid that takes no cell list, and an unknown cell, are refused before anything runs."""
    lm = os.path.join(checks.REPO, "experiments", "language_modelling.py")
    vs = os.path.join(checks.REPO, "experiments", "lstm_vs_gru.py")
    assert cli.main(["run", lm, f"--root={tmp_path}", "--cells=gru,mlstm", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.count("--config.model.cell=mlstm") == 3 and out.count("--config.model.cell=gru") == 3
    assert "6 trials of grid sweep" in out and "model.cell=lstm " not in out
    ts = trials.expand(vs, str(tmp_path), "sweep", cells=["gru", "mlstm"])
    assert {t.name.split("_lr")[0].rsplit("_", 1)[1] for t in ts} == {"gru", "mlstm"}  # no lstm, so no lstm_fb0
    assert len(ts) == 6 * 2 * 2 * 3
    assert cli.main(["run", vs, f"--root={tmp_path}", "--grid=smoke", "--cells=gru", "--dry_run"]) == 2
    assert "takes no list of cells (--cells)" in capsys.readouterr().err
    assert cli.main(["status", lm, f"--root={tmp_path}", "--cells=gru,nocell"]) == 2
    assert "unknown cell 'nocell'" in capsys.readouterr().err


@pytest.mark.slow
def test_inline_executor_runs_the_trials_in_this_process_as_their_commands_would(tmp_path, capsys):
    """--executor=inline: each trial is what its command runs (lstm_seed0 equals a child
    process's run of the same command bitwise), a diverging trial and one that raises are
    recorded while the others go on, and a rerun skips what ended."""
    exp = tmp_path / "tiny_inline.py"
    exp.write_text(open(checks.EXPERIMENT).read().replace(
        "    add(seed=0, **DIVERGE)", "    add(seed=0, **DIVERGE)\n    add(seed=5, **{'task.name': 'nonesuch'})"))
    root = str(tmp_path / "sweep")
    reference, ref_wd = checks.start_reference(tmp_path)
    assert cli.main(["run", str(exp), f"--root={root}", "--executor=inline"]) == 1  # not all finished
    reference.wait(timeout=300)
    out = capsys.readouterr().out
    assert "in this process" in out and "step 400/400" in out  # the trial's progress on the console, too
    rows = {r["name"]: r for r in status.table(trials.expand(str(exp), root))}
    assert [rows[n]["state"] for n in checks.SEEDS] == ["finished"] * 3, rows
    assert rows["diverge_seed0"]["state"] == "non-finite"
    assert rows["lstm_seed5"]["state"] == "failed" and "nonesuch" in rows["lstm_seed5"]["error"], rows["lstm_seed5"]
    assert "step 400/400" in open(os.path.join(root, "lstm_seed1", "train.log")).read()
    got = json.load(open(os.path.join(root, "lstm_seed0", "result.json")))
    want = json.load(open(os.path.join(ref_wd, "result.json")))
    for k in checks.TIMING_KEYS:
        got.pop(k), want.pop(k)
    assert got == want
    assert cli.main(["run", str(exp), f"--root={root}", "--executor=inline"]) == 1
    assert "skip lstm_seed1: finished" in capsys.readouterr().out
