"""The loop's guarantees held by each task, through the command line: stopped by
SIGTERM (status 'stopped') and killed by SIGKILL at random steps, the run resumes
to parameters bitwise equal to an uninterrupted run; a corrupt latest checkpoint
is skipped for the previous one. One case per task: the language model, a
synthetic sequence task, speech."""

import json
import os
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from rnnlab.train import checkpoint, status
from rnnlab.train.writers import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300))
STEPS = {"lm": 30, "sequence": 30, "speech": 14}  # speech: each step ~0.3 s and a slow start


def _args(task: str, tmp_path) -> list[str]:
    if task == "lm":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(CORPUS)
        return ["--config=experiments/language_modelling.py:smoke", f"--config.data.source={corpus}",
                "--config.generate.length=0", "--config.model.dropout=0.1", "--config.data.random_offset=true",
                "--config.train.eval_every=10"]
    if task == "sequence":
        return ["--config=experiments/gradient_flow.py:smoke", "--config.train.eval_every=10"]
    return ["--config=experiments/speech_recognition.py:smoke", "--config.train.eval_every=1000"]


def _launch(args, wd, steps):
    cmd = [sys.executable, "-u", "-m", "rnnlab.main", f"--workdir={wd}", *args, f"--config.train.num_steps={steps}",
           "--config.train.checkpoint_every=3", "--config.train.log_every=1"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop_at(proc, target: int, sig) -> bool:
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= target:
            proc.send_signal(sig)
            proc.stdout.read()
            return True
    return False


def _final_params(wd):
    from orbax.checkpoint import args as oargs

    ck = checkpoint.Checkpointer(wd)
    step = ck.latest.latest_step()
    restored = ck.latest.restore(step, args=oargs.Composite(state=oargs.StandardRestore()))
    ck.close()
    return step, restored.state["params"]


TASKS = ["lm", "sequence", "speech"]  # subprocesses: slow tier (the fast tier has in-process checks)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_sigterm_and_sigkill_then_resume_is_bitwise_equal(task, tmp_path):
    args = _args(task, tmp_path)
    ref, steps = str(tmp_path / "ref"), STEPS[task]
    assert _launch(args, ref, steps).wait(timeout=600) == 0
    wd = str(tmp_path / "stopped")
    proc = _launch(args, wd, steps)
    assert _stop_at(proc, 4, signal.SIGTERM)
    assert proc.wait(timeout=300) == 0  # a clean stop: checkpoint saved, status says so
    st = status.read(wd)
    assert st["state"] == "stopped" and "SIGTERM" in st["message"], st
    rng = random.Random(0)
    for _ in range(1 if task == "speech" else 2):  # speech: each start reads and featurises the clips
        proc = _launch(args, wd, steps)
        _stop_at(proc, rng.randint(st["step"] + 2, steps - 3), signal.SIGKILL)
        proc.wait(timeout=300)
    proc = _launch(args, wd, steps)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "resumed from step" in out, out[-3000:]
    assert status.read(wd)["state"] == "finished"
    (s_ref, p_ref), (s_wd, p_wd) = _final_params(ref), _final_params(wd)
    assert s_ref == s_wd == steps
    for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_wd), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "the resumed run must be bitwise equal"
    steps = [r["step"] for r in read_metrics(wd, "train")]
    assert steps == sorted(set(steps))  # a clean history: every logged step once
    got, want = (json.load(open(os.path.join(d, "result.json"))) for d in (wd, ref))
    from rnnlab.train.loop import TIMING_KEYS

    assert {k: v for k, v in got.items() if k not in TIMING_KEYS} == {
        k: v for k, v in want.items() if k not in TIMING_KEYS}


def _garble(state_dir):
    for root, _, files in os.walk(state_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sequence", "speech"])  # the LM's: tests/test_train.py, in-process
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(task, tmp_path):
    args, wd = _args(task, tmp_path), str(tmp_path / "run")
    assert _launch(args, wd, steps=6).wait(timeout=600) == 0
    _garble(os.path.join(wd, "checkpoints", "6", "state"))
    proc = _launch(args, wd, steps=9)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "checkpoint at step 6" in out and "falling back to step 3" in out and "resumed from step 3" in out
    assert status.read(wd)["state"] == "finished" and status.read(wd)["step"] == 9
