"""The one training loop (rnnlab.train.loop) through its tasks: divergence said in
the console, status.json and result.json (LM and a synthetic task); status.json
for a run that finished, stopped at a deadline, or went non-finite; the config
guard; train_seconds over sessions; the last step logged; the schedules against
their closed forms."""

import json
import math
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

from rnnlab import configs
from rnnlab.tasks import lm, sequence
from rnnlab.train import status
from rnnlab.train.loop import NonFiniteError
from rnnlab.train.optim import Schedule
from rnnlab.train.writers import read_metrics

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from experiments import gradient_flow as gf  # noqa: E402
from experiments import language_modelling as lm_exp  # noqa: E402

CORPUS = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300))


def _lm(tmp_path, **over):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    c = lm_exp.get_config("smoke")
    c.unlock()
    c.data.source = str(path)
    c.train.update(num_steps=30, eval_every=10, log_every=7, async_checkpoint=False)
    c.generate.length = 0
    for k, v in over.items():
        configs.set_dotted(c, k, str(v))
    c.lock()
    return c


def _seq(**over):
    c = gf.get_config("smoke")
    c.unlock()
    c.train.async_checkpoint = False
    for k, v in over.items():
        configs.set_dotted(c, k, str(v))
    c.lock()
    return c


def test_lm_diverging_run_is_warned_and_recorded(tmp_path, capsys):
    wd = str(tmp_path / "run")
    summary = lm.train_and_evaluate(_lm(tmp_path, **{"optim.lr": 30.0, "optim.clip_norm": 0.0,
                                                 "train.num_steps": 40}), wd)
    out = capsys.readouterr().out
    assert "WARNING: diverging at step" in out and "memoryless baseline" in out
    st, result = status.read(wd), json.load(open(os.path.join(wd, "result.json")))
    assert st["state"] == "diverged" and "Lower optim.lr" in st["message"]
    assert result["diverged"] is True and summary["diverged"] is True and "diverging" in result["divergence"]
    assert result["valid_nll"] > 1.5 * math.log(40)  # really far above ln V


def test_synthetic_diverging_run_is_warned_and_recorded(tmp_path, capsys):
    wd = str(tmp_path / "run")
    sequence.train_and_evaluate(_seq(**{"optim.lr": 50.0, "optim.clip_norm": 0.0, "train.num_steps": 60}), wd)
    assert "WARNING: diverging" in capsys.readouterr().out
    st, result = status.read(wd), json.load(open(os.path.join(wd, "result.json")))
    assert st["state"] == "diverged" and result["diverged"] is True
    assert result["eval_loss"] > 2 * result["eval_baseline"]


def test_healthy_run_finishes_with_status_and_logs_its_last_step(tmp_path):
    wd = str(tmp_path / "run")
    result = lm.train_and_evaluate(_lm(tmp_path), wd)
    st = status.read(wd)
    assert st["state"] == "finished" and st["step"] == 30 and st["total_steps"] == 30 and st["message"] is None
    assert result["diverged"] is False and "divergence" not in result
    train_steps = [r["step"] for r in read_metrics(wd, "train")]
    assert train_steps == [1, 7, 14, 21, 28, 30]  # the first, every log_every, and the last
    assert st["metrics"]["loss"] == read_metrics(wd, "train")[-1]["loss"]


def test_non_finite_run_says_so_in_status(tmp_path):
    wd = str(tmp_path / "run")
    with pytest.raises(NonFiniteError):
        sequence.train_and_evaluate(_seq(**{"optim.lr": 1e30, "optim.clip_norm": 0.0}), wd)
    st = status.read(wd)
    assert st["state"] == "non-finite" and "non-finite training loss at step" in st["message"]


def test_deadline_stops_with_status_stopped_and_resume_adds_the_seconds(tmp_path):
    wd = str(tmp_path / "run")
    first = lm.train_and_evaluate(_lm(tmp_path, **{"train.max_minutes": 1e-9}), wd)  # stops after one step
    st = status.read(wd)
    assert first["finished"] is False and first["step"] == 1
    assert st["state"] == "stopped" and "train.max_minutes" in st["message"]
    assert not os.path.exists(os.path.join(wd, "result.json"))
    second = lm.train_and_evaluate(_lm(tmp_path), wd)  # max_minutes may change on resume
    assert second["finished"] is True and status.read(wd)["state"] == "finished"
    assert second["train_seconds"] > first["train_seconds"]  # every session counted, not the last only


def test_workdir_without_checkpoint_takes_a_corrected_config(tmp_path):
    wd = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        lm.train_and_evaluate(_lm(tmp_path, **{"data.source": str(tmp_path / "typo.txt")}), wd)
    assert status.read(wd)["state"] == "failed" and "typo.txt" in status.read(wd)["message"]
    lm.train_and_evaluate(_lm(tmp_path, **{"train.num_steps": 10}), wd)  # the corrected command runs
    with pytest.raises(ValueError, match="the config differs"):  # now a checkpoint exists: guarded
        lm.train_and_evaluate(_lm(tmp_path, **{"model.d_hidden": 32}), wd)


def _optim(**kw) -> ml_collections.ConfigDict:
    from rnnlab.train.config import optim_config

    o = optim_config()
    o.update(**kw)
    return o


def test_schedules_equal_their_closed_forms():
    total, lr = 50, 3e-3
    cos = Schedule(_optim(schedule="cosine", lr=lr), total)
    want = [lr * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))) for s in range(total + 1)]
    assert [np.float32(cos.lr(s)) for s in range(total + 1)] == [np.float32(w) for w in want]

    warm, lo = 10, 0.05  # linear warmup lr*(s+1)/W, then cosine to lo*lr
    wc = Schedule(_optim(schedule="cosine", lr=lr, warmup_steps=warm, final_lr_fraction=lo), total)
    for s in range(total + 1):
        w = min(1.0, (s + 1) / warm)
        frac = min(max(s - warm, 0) / (total - warm), 1.0)
        assert wc.lr(s) == pytest.approx(lr * w * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))), rel=1e-12)

    spe = 7  # Zaremba et al. 2014: lr * decay^max(0, epoch + 1 - start)
    z = Schedule(_optim(schedule="zaremba", lr=1.0, decay_factor=0.5, decay_start_epoch=4), 100, spe)
    assert [z.lr(s) for s in range(100)] == [0.5 ** max(0, s // spe + 1 - 4) for s in range(100)]
    with pytest.raises(ValueError, match="no epochs"):
        Schedule(_optim(schedule="zaremba"), 100, 0)

    p = Schedule(_optim(schedule="plateau", lr=20.0, plateau_factor=4.0), 100)
    seen = [p.observe(v) for v in (5.0, 4.0, 4.5, 3.0, 3.0)]
    assert seen == [True, True, False, True, False] and p.lr(99) == 20.0 / 4 / 4
    # with patience 2 the rate is halved after every second evaluation in a row without a new best
    q = Schedule(_optim(schedule="plateau", lr=8.0, plateau_factor=2.0, plateau_patience=2), 100)
    rates = []
    for v in (5.0, 6.0, 6.0, 6.0, 6.0, 4.0, 6.0):
        q.observe(v)
        rates.append(q.lr(0))
    assert rates == [8.0, 8.0, 4.0, 4.0, 2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="plateau_patience=0"):
        Schedule(_optim(schedule="plateau", plateau_patience=0), 10)
    with pytest.raises(ValueError, match="optim.schedule must be one of"):
        Schedule(_optim(schedule="linear"), 10)


def test_a_workdir_from_before_an_added_key_resumes_at_the_keys_old_value(tmp_path):
    """config.ADDED_KEYS: a run's config.json written before model.compute_dtype existed is the same
    computation as '' (float32), so it resumes; another value is a conflict, named."""
    import json
    import os

    from experiments import language_modelling
    from rnnlab.train import config as config_lib

    wd = tmp_path / "old"
    os.makedirs(wd / "checkpoints" / "10")
    old = json.loads(language_modelling.get_config("smoke").to_json())
    del old["model"]["compute_dtype"]
    json.dump(old, open(wd / "config.json", "w"))
    assert config_lib.resume_conflicts(language_modelling.get_config("smoke"), str(wd)) == []
    assert config_lib.resume_conflicts(language_modelling.get_config("smoke,model.compute_dtype=bfloat16"),
                                       str(wd)) == ["model.compute_dtype: '' -> 'bfloat16'"]
    assert config_lib.resume_conflicts(language_modelling.get_config("smoke,model.d_hidden=7"), str(wd))


def test_a_fresh_and_a_resumed_runs_train_step_are_one_program(tmp_path):
    """The step-0 state is committed to the device as restored checkpoints are, so a resumed run's
    train step lowers to the program a fresh run compiled (one compile, one persistent-cache entry;
    before, Orbax's committed arrays added sharding annotations and a second compile)."""
    import jax

    from rnnlab.train import checkpoint as ckpt_lib
    from rnnlab.train import loop

    config = _seq()
    task = sequence.make_task(config, str(tmp_path))
    fresh = loop._place(None, task)
    assert all(a.committed for a in jax.tree.leaves(fresh))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), async_save=False)
    ck.save(3, fresh, {"schedule": {}})
    ck.wait()
    _, restored, _ = ck.restore_latest(fresh)
    ck.close()
    step = jax.jit(task.train_step)
    batch = task.batch(0)
    assert step.lower(restored, batch, 0.01).as_text() == step.lower(fresh, batch, 0.01).as_text()


def test_early_stopping_ends_at_the_first_evaluations_without_a_new_best_and_tests_the_best_checkpoint(tmp_path,
                                                                                                       capsys):
    """train.early_stop_evals=N: the run ends at the N-th evaluation in a row that is not a new best
    (the rule applied by hand to metrics.jsonl), finished and early_stopped; its test numbers are the
    best checkpoint's (evaluated here from workdir/best); resumed without its result, it trains no more."""
    from rnnlab.train import checkpoint

    wd, n = str(tmp_path / "run"), 2
    c = _seq(**{"optim.lr": 0.05, "train.num_steps": 300, "train.eval_every": 2, "train.early_stop_evals": n})
    result = sequence.train_and_evaluate(c, wd)
    evals = read_metrics(wd, "eval")
    best, since, stop = math.inf, 0, None
    for r in evals:  # the rule, by hand
        since = 0 if r["loss"] < best else since + 1
        best = min(best, r["loss"])
        if since >= n:
            stop = r["step"]
            break
    assert stop is not None and stop < 300, "the run improved at every evaluation: no early stop to test"
    assert result["early_stopped"] is True and result["finished"] is True and result["step"] == stop
    assert evals[-1]["step"] == stop and status.read(wd)["state"] == "finished"
    assert f"early stop at step {stop}" in capsys.readouterr().out
    best_step = min(evals, key=lambda r: r["loss"])["step"]
    assert sorted(int(s) for s in os.listdir(os.path.join(wd, "best")))[-1] == best_step
    model, spec = sequence.build(c)
    params = checkpoint.load_params(wd, model.init(jax.random.key(0)))  # the best checkpoint first
    want = sequence.evaluate(model, params, c, spec, "test")["loss"]
    assert result["test_loss"] == pytest.approx(want, rel=1e-6)
    assert result["best_eval_loss"] == pytest.approx(best)
    os.remove(os.path.join(wd, "result.json"))  # as if killed after the last checkpoint, before the result
    again = sequence.train_and_evaluate(c, wd)
    assert again["step"] == stop and again["early_stopped"] is True and again["test_loss"] == result["test_loss"]
