"""The language-model task on the loop: runs end to end, falls back past a corrupt
checkpoint (SIGTERM/SIGKILL and resume: tests/test_loop_tasks.py), stops on NaN without saving, refuses a config
or vocabulary that does not match its workdir."""

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rnnlab import configs
from rnnlab.tasks import lm
from rnnlab.train import checkpoint
from rnnlab.train.loop import NonFiniteError
from rnnlab.train.writers import read_metrics

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from experiments import language_modelling as lm_exp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(400))


def _config(tmp_path, **over):
    path = tmp_path / "corpus.txt"
    if not path.exists():
        path.write_text(CORPUS)
    c = lm_exp.get_config("smoke")
    c.unlock()
    c.data.source = str(path)
    c.train.update(num_steps=24, eval_every=8, log_every=4, async_checkpoint=True, tensorboard=True)
    c.generate.length = 0
    for k, v in over.items():
        configs.set_dotted(c, k, str(v))
    c.lock()
    return c


def _final_params(workdir):
    ck = checkpoint.Checkpointer(workdir)
    step = ck.latest.latest_step()
    from orbax.checkpoint import args as oargs

    restored = ck.latest.restore(step, args=oargs.Composite(state=oargs.StandardRestore()))
    ck.close()
    return step, restored.state["params"]


def test_run_trains_evaluates_checkpoints_and_logs(tmp_path, capsys):
    wd = str(tmp_path / "run")
    summary = lm.train_and_evaluate(_config(tmp_path), wd)
    out = capsys.readouterr().out
    assert "step 4/24" in out and "tok/s" in out and "ETA" in out and "validation at step 8" in out
    assert summary["finished"] and summary["valid_bpc"] > 0 and "test_bpc" in summary
    rows = read_metrics(wd, "train")
    assert rows and {"loss", "grad_norm", "param_norm", "update_norm", "lr"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert os.path.exists(os.path.join(wd, "config.json")) and os.path.exists(os.path.join(wd, "vocab.json"))
    assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints"))) == [8, 16, 24]
    assert os.listdir(os.path.join(wd, "tb")), "TensorBoard event file written"
    from rnnlab.report import curves

    for path in curves.learning_curves([wd], str(tmp_path / "fig" / "curve")):
        assert os.path.getsize(path) > 1000
    # a finished run is not redone or overwritten
    mtime = os.path.getmtime(os.path.join(wd, "result.json"))
    again = lm.train_and_evaluate(_config(tmp_path), wd)
    assert again == json.load(open(os.path.join(wd, "result.json")))
    assert os.path.getmtime(os.path.join(wd, "result.json")) == mtime


def _garble(state_dir):
    """Overwrite every file of a saved checkpoint's state with junk (a torn or hand-edited save)."""
    for root, _, files in os.walk(state_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    wd = str(tmp_path / "run")
    lm.train_and_evaluate(_config(tmp_path, **{"train.num_steps": 16}), wd)
    state_dir = os.path.join(wd, "checkpoints", "16", "state")
    _garble(state_dir)
    capsys.readouterr()
    summary = lm.train_and_evaluate(_config(tmp_path, **{"train.num_steps": 24}), wd)
    err = capsys.readouterr()
    assert "checkpoint at step 16" in err.err and "falling back to step 8" in err.err
    assert "resumed from step 8" in err.out
    assert summary["step"] == 24


def test_load_params_reads_quietly_and_skips_an_unreadable_checkpoint(tmp_path, capsys, caplog):
    wd = str(tmp_path / "run")
    lm.train_and_evaluate(_config(tmp_path, **{"train.num_steps": 16}), wd)
    like = _final_params(wd)[1]
    shutil.rmtree(os.path.join(wd, "best"), ignore_errors=True)
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        params, step = checkpoint.load_params(wd, like, with_step=True)
    # orbax's "Metadata file does not exist" (a StandardCheckpointer pointed at state/) must not show
    assert step == 16 and not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(like), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _garble(os.path.join(wd, "checkpoints", "16", "state"))
    _, step = checkpoint.load_params(wd, like, with_step=True)
    assert step == 8 and "cannot read" in capsys.readouterr().err


def test_nan_stops_the_run_without_saving(tmp_path):
    wd = str(tmp_path / "run")
    cfg = _config(tmp_path, **{"optim.name": "sgd", "optim.lr": "inf", "optim.clip_norm": 0.0,
                               "train.checkpoint_every": 1, "train.num_steps": 50})
    with pytest.raises(NonFiniteError, match=r"non-finite training loss at step \d+"):
        lm.train_and_evaluate(cfg, wd)
    ck = checkpoint.Checkpointer(wd)
    from orbax.checkpoint import args as oargs

    for step in ck.latest.all_steps():
        state = ck.latest.restore(step, args=oargs.Composite(state=oargs.StandardRestore())).state
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(state["params"]))
    ck.close()


def test_resume_refuses_another_config_and_another_vocabulary(tmp_path):
    wd = str(tmp_path / "run")
    lm.train_and_evaluate(_config(tmp_path, **{"train.num_steps": 8}), wd)
    with pytest.raises(ValueError, match=r"config differs from the run .*model\.d_hidden: 16 -> 32"):
        lm.train_and_evaluate(_config(tmp_path, **{"model.d_hidden": 32}), wd)
    vocab_path = os.path.join(wd, "vocab.json")
    v = json.load(open(vocab_path))
    json.dump({**v, "itos": v["itos"][::-1]}, open(vocab_path, "w"))
    with pytest.raises(ValueError, match="vocabulary"):
        lm.train_and_evaluate(_config(tmp_path, **{"train.num_steps": 16}), wd)


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        lm.train_and_evaluate(_config(tmp_path, **{"data.source": str(tmp_path / "nope.txt")}), str(tmp_path / "a"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        lm.train_and_evaluate(_config(tmp_path, **{"data.source": str(tmp_path / "empty.txt")}), str(tmp_path / "b"))
    (tmp_path / "bad.txt").write_bytes(b"hello \xff\xfe world\n" * 50)
    with pytest.raises(ValueError, match="UTF-8"):
        lm.train_and_evaluate(_config(tmp_path, **{"data.source": str(tmp_path / "bad.txt")}), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="unknown cell 'lstn'"):
        lm.train_and_evaluate(_config(tmp_path, **{"model.cell": "lstn"}), str(tmp_path / "d"))


def test_mistyped_config_key_fails_on_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rnnlab.main", "--config=experiments/language_modelling.py:smoke",
         f"--workdir={tmp_path}", "--config.optim.lrr=0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0 and "lrr" in proc.stderr


@pytest.mark.slow
def test_warm_start_from_another_run(tmp_path, capsys):
    a = str(tmp_path / "a")
    lm.train_and_evaluate(_config(tmp_path, **{"train.num_steps": 8}), a)
    _, params_a = _final_params(a)
    b = str(tmp_path / "b")
    lm.train_and_evaluate(_config(tmp_path, **{"train.num_steps": 1, "init_from": a, "optim.lr": 0.0}), b)
    assert "warm start" in capsys.readouterr().out
    _, params_b = _final_params(b)
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="another model"):
        lm.train_and_evaluate(_config(tmp_path, **{"init_from": a, "model.d_hidden": 32}), str(tmp_path / "c"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["smoke"])
def test_experiment_smoke_variant_runs_from_the_command_line(tmp_path, variant):
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rnnlab.main", f"--config=experiments/language_modelling.py:{variant}",
         f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "summary:" in proc.stdout and "sample" in proc.stdout, proc.stdout
    assert time.time() - t0 < 120
