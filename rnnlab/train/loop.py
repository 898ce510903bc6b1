"""THE training loop. A study brings a ``Task``; the loop owns the rest: the
config guard, the data-parallel mesh, Orbax restore and auto-resume, the
finished-run shortcut, the learning-rate schedule, the pending-metric pipeline,
the non-finite stop, divergence warnings, cadence (log / eval / checkpoint /
snapshot), early stopping (``train.early_stop_evals``), the wall-clock deadline, preemption (SIGTERM), the summary,
``result.json`` and ``status.json``.

    workdir/config.json, command.txt   written at start (refused on resume if changed)
    workdir/checkpoints/<step>/        periodic, for resume (the latest train.keep_checkpoints)
    workdir/best/<step>/               the best evaluation so far (tasks with keep_best)
    workdir/snapshots/<step>/          at train.checkpoint_steps, kept for good
    workdir/metrics.jsonl, tb/         train / eval / summary rows (rnnlab.train.writers)
    workdir/status.json                state, step, last metrics (rnnlab.train.status)
    workdir/result.json                the summary, once the run has finished

Use: a study's ``make_task(config, workdir) -> Task`` and
``run(config, workdir, make_task)``; ``rnnlab.main`` calls the config's
``trainer`` ('module:make_task'). Reproducibility: batches and random keys are
pure functions of (seed, step), everything else is in the checkpoint, so the
same command on the same workdir continues bitwise on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

from rnnlab import parallel
from rnnlab.train import checkpoint as ckpt_lib
from rnnlab.train import config as config_lib
from rnnlab.train import status, writers
from rnnlab.train.optim import Schedule

FAR_ABOVE_BASELINE = 1.5  # a loss this many times the memoryless baseline (chance) is "far above" it
FAR_ABOVE_CLIP = 100.0  # a gradient norm this many times optim.clip_norm is 'far above' it
DIVERGED_AFTER = 3  # ... for this many checked steps or evaluations in a row, once the run had GRACE_STEPS
GRACE_STEPS = 20  # ... or 10% of its steps if more, to learn (a copy task starts 10x above its baseline)


TIMING_KEYS = ("train_seconds", "cpu_seconds", "total_seconds", "load_average_1min_mean")  # of result.json:
# the fields a resumed or repeated run may change (the machine's time), every other field is bitwise


class NonFiniteError(FloatingPointError):
    """The loss or a norm became NaN/Inf; the run stopped without saving."""


class Runner(Protocol):
    """How the training state advances (the default holds one state and calls
    ``Task.train_step``; an ensemble can bring its own, e.g. member threads)."""

    def submit(self, batch: Any, lr: jax.Array) -> None: ...  # start one step (may return at once)
    def collect(self) -> dict: ...  # that step's metrics (device arrays are fine)
    def whole(self) -> dict: ...  # the whole training state (what checkpoints hold)
    def close(self) -> None: ...  # called once the loop is done with it (e.g. to end its threads)


class _OneState:
    def __init__(self, step_fn, state):
        self.step_fn, self.state, self._metrics = step_fn, state, None

    def submit(self, batch, lr):
        self.state, self._metrics = self.step_fn(self.state, batch, lr)

    def collect(self):
        return self._metrics

    def whole(self):
        return self.state

    def close(self):
        pass


@dataclasses.dataclass(frozen=True)
class Task:
    """What a study brings to the loop.

    state: the step-0 training state, a dict of arrays with 'params' and 'step'
        (plus 'opt_state' and extras: TBPTT carries, an EMA); the loop restores it.
    train_step: (state, batch, lr) -> (state, metrics), jitted with the state
        donated; metrics hold 'loss', 'grad_norm', 'param_norm' (checked finite).
    batch: step -> the batch of that step, a pure function of (seed, step).
    evaluate: (state, step) -> metrics with 'loss' (lower is better: the best
        checkpoint and the plateau rule use it).
    finish: (state, step, last_eval, best_state) -> the result's fields (test
        numbers ...); best_state is the best checkpoint's state (keep_best) or None.
    baseline: the loss of the best memoryless predictor (ln V for an LM): the
        divergence check compares with it.
    """

    name: str
    state: dict
    train_step: Callable[[dict, Any, jax.Array], tuple[dict, dict]]
    batch: Callable[[int], Any]
    evaluate: Callable[[dict, int], dict]
    finish: Callable[[dict, int, dict, dict | None], dict]
    total_steps: int
    baseline: float
    banner: str  # one line: the model and the data
    batch_size: int  # split over the data-parallel mesh
    units: Callable[[Any], int]  # throughput numerator of a batch (tokens, frames)
    batch_axis: int = 0  # the batch axis of the batch's arrays (None: no data parallelism)
    sharded_state: tuple[str, ...] = ()  # state entries split on their axis 0 (TBPTT carries)
    steps_per_epoch: int = 0  # >0: epochs are logged and the zaremba schedule can be used
    eval_every: int = 0  # default when train.eval_every is 0 (0: at the end only)
    eval_kind: str = "eval"  # the metrics.jsonl kind of evaluation rows
    eval_label: str = "eval"  # the console's word for an evaluation ('validation')
    keep_best: bool = False  # keep the best evaluation's checkpoint; finish receives it
    shown: Callable[[dict], dict] = lambda m: {}  # extra console fields of a training step
    describe_eval: Callable[[dict], str] | None = None  # the console line after 'eval at step N' (': ...')
    make_runner: Callable[[dict], Runner] | None = None  # default: one state, train_step
    on_end: Callable[[dict, dict], None] | None = None  # (best or last state, summary): e.g. print a sample


class Divergence:
    """Says when a run stays far above its baseline: the training loss or an
    evaluation above FAR_ABOVE_BASELINE x the memoryless loss (a baseline of 0: no
    such check), or the gradient norm above FAR_ABOVE_CLIP x the clip,
    DIVERGED_AFTER times in a row once GRACE_STEPS or 10% of the steps are done. Warns once on the
    console (``message``); the run counts as diverged when it is still far above at
    the end (``diverged``), else the warning is kept as a warning."""

    def __init__(self, baseline: float, clip: float, total: int):
        self.baseline, self.clip, self.after = baseline, clip, max(GRACE_STEPS, total // 10)
        self.streak, self.message = 0, None

    @property
    def diverged(self) -> bool:
        return self.message is not None and self.streak > 0

    def state(self) -> dict:
        return {"message": self.message, "streak": self.streak}

    def observe(self, step: int, loss: float, grad_norm: float | None = None, what: str = "training loss") -> None:
        if step < self.after:
            return
        far = []
        if self.baseline > 0 and loss > FAR_ABOVE_BASELINE * self.baseline:
            far.append(f"{what} {loss:.4g} is {loss / self.baseline:.3g}x the memoryless baseline "
                       f"{self.baseline:.4g}")
        if grad_norm is not None and self.clip > 0 and grad_norm > FAR_ABOVE_CLIP * self.clip:
            far.append(f"gradient norm {grad_norm:.4g} is {grad_norm / self.clip:.3g}x the clip {self.clip:g}")
        self.streak = self.streak + 1 if far else 0
        if self.streak >= DIVERGED_AFTER and self.message is None:
            self.message = (f"diverging at step {step}: {'; '.join(far)} ({DIVERGED_AFTER} times in a row). "
                            "Lower optim.lr, set optim.clip_norm, or check the cell's options.")
            print(f"WARNING: {self.message}", flush=True)


class _Preemption:
    """SIGTERM (SLURM preemption, launch stopping a trial) ends the session at the
    next step with a checkpoint; status 'stopped'. Main thread only."""

    def __init__(self):
        self.requested, self._old = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        print("SIGTERM: saving a checkpoint and stopping", flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def run(config: ml_collections.ConfigDict, workdir: str, make_task: Callable[..., Task]) -> dict:
    """Train (or resume) ``make_task(config, workdir)`` in ``workdir``; returns the
    summary (also result.json once finished). status.json says how it ended."""
    closing: list[Callable[[], None]] = []  # the runner's close, however the run ends
    try:
        return _run(config, workdir, make_task, closing)
    except NonFiniteError as e:
        status.write(workdir, "non-finite", message=str(e))
        raise
    except BaseException as e:
        if os.path.isdir(workdir):
            kind = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
            status.write(workdir, kind, message=f"{type(e).__name__}: {str(e)[:2000]}")
        raise
    finally:
        for close in closing:
            close()


def _run(config: ml_collections.ConfigDict, workdir: str, make_task: Callable[..., Task],
         closing: list[Callable[[], None]]) -> dict:
    t_start, cpu_start = time.time(), time.process_time()  # process_time: CPU seconds of all our threads
    tr = config.train
    config_lib.check_and_write(config, workdir)
    if tr.data_parallel == "multihost":  # before any computation
        parallel.initialize_distributed()
    task = make_task(config, workdir)
    mesh = None if task.batch_axis is None else parallel.make_mesh(tr.data_parallel, task.batch_size)
    if mesh is not None and task.make_runner is not None:
        raise ValueError(f"{task.name}: its step runner trains on one device; set train.data_parallel=off")
    total = task.total_steps
    schedule = Schedule(config.optim, total, task.steps_per_epoch)
    state = _place(mesh, task)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state["params"]))

    ckpt = ckpt_lib.Checkpointer(workdir, keep=tr.keep_checkpoints, async_save=tr.async_checkpoint)
    restored = ckpt.restore_latest(state)
    start, before = 0, {"train_seconds": 0.0, "cpu_seconds": 0.0, "divergence": {}}
    if restored is not None:
        start, state, meta_in = restored
        schedule.state = meta_in.get("schedule", schedule.state)
        before.update({k: meta_in[k] for k in before if k in meta_in})
        print(f"resumed from step {start} in {workdir}", flush=True)
    writer = writers.MetricWriter(workdir, tensorboard=tr.tensorboard)
    writer.truncate_after(start)
    result_path = os.path.join(workdir, "result.json")
    if start >= total and (summary := writers.read_finished_result(result_path)) is not None:
        ckpt.close()
        writer.close()
        return summary

    print(f"{task.name}: {task.banner}; {n_params:,} parameters; {config.optim.name} lr {config.optim.lr:g} "
          f"{config.optim.schedule}, clip {config.optim.clip_norm or 'off'}; {total} steps; "
          f"{parallel.describe(mesh)}", flush=True)
    status.write(workdir, "running", step=start, total_steps=total, message=None)
    runner = (task.make_runner or (lambda s: _OneState(task.train_step, s)))(state)
    closing.append(runner.close)
    state = None  # the runner holds it from here on
    progress = writers.Progress(total, start)
    eval_every = tr.eval_every or task.eval_every or total
    ckpt_every = tr.checkpoint_every or eval_every
    snap_at = {int(s) for s in tr.checkpoint_steps if 0 <= int(s) <= total}
    snap_at |= {total} if snap_at else set()  # with snapshots, the trained model is one
    clip = config.optim.clip_norm
    divergence = Divergence(task.baseline, clip, total)
    divergence.message = before["divergence"].get("message")
    divergence.streak = before["divergence"].get("streak", 0)
    loads: list[float] = []  # 1-minute load average at each logged step: how busy the machine was
    last_logged: dict = {}

    def seconds() -> dict:  # wall and CPU seconds over every session of this run
        return {"train_seconds": before["train_seconds"] + time.time() - t_start,
                "cpu_seconds": before["cpu_seconds"] + time.process_time() - cpu_start}

    def meta(step: int) -> dict:
        return {"step": step, "schedule": schedule.state, "divergence": divergence.state(), **seconds()}

    def save(step: int, **kind) -> None:
        ckpt.save(step, jax.tree.map(parallel.to_host, runner.whole()), meta(step), **kind)

    def check(step: int, m: dict) -> dict:
        m = {k: float(v) for k, v in m.items()}
        # the loss is of the params before the update; param_norm is of the state we would save
        if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
            ckpt.wait()
            raise NonFiniteError(
                f"non-finite training loss at step {step} (loss={m['loss']}, grad_norm={m['grad_norm']}, "
                f"param_norm={m['param_norm']}); stopped without saving: the checkpoints in {workdir} are from "
                "before it. Lower optim.lr or set optim.clip_norm.")
        divergence.observe(step, m["loss"], m["grad_norm"])
        return m

    def log(step: int, m: dict, units: int, force: bool = False) -> None:
        if not (force or step % tr.log_every == 0 or step == start + 1 or step == total):
            return
        m.update(lr=schedule.lr(step - 1), **({"clipped": float(m["grad_norm"] > clip)} if clip > 0 else {}),
                 **({"epoch": step / task.steps_per_epoch} if task.steps_per_epoch else {}))
        loads.append(os.getloadavg()[0])
        writer.write(step, m)
        last_logged.clear()
        last_logged.update(m)
        progress.line(step, {"loss": m["loss"], **task.shown(m), "grad_norm": m["grad_norm"], "lr": m["lr"]}, units)
        status.write(workdir, "running", step=step, metrics=m, warnings=[divergence.message] if divergence.message
                     else [])

    def evaluate(step: int) -> dict:
        ev = task.evaluate(runner.whole(), step)
        improved = schedule.observe(ev["loss"])
        divergence.observe(step, ev["loss"], what="evaluation loss")
        writer.write(step, {k: v for k, v in ev.items() if isinstance(v, (int, float))}, kind=task.eval_kind)
        text = task.describe_eval(ev) if task.describe_eval else ": " + ", ".join(
            f"{k} {v:.4g}" for k, v in ev.items() if isinstance(v, float))
        lr_note = f"; lr -> {schedule.lr(step):.4g}" if schedule.plateau and not improved else ""
        print(f"{task.eval_label} at step {step}{text}" + (
            " (best)" if improved else f" (best {schedule.state['best']:.4g}{lr_note})"), flush=True)
        if improved and task.keep_best:
            save(step, best=True)
        return ev

    if start == 0 and 0 in snap_at:
        save(0, snapshot=True)
    pending = None  # (step, device metrics, units): fetched after the next step is dispatched
    deadline = t_start + 60 * tr.max_minutes if tr.max_minutes else None
    step, ev, stopped_by = start, None, None
    # resumed after an early stop that did not get to write its result: no more training
    early_stopped = bool(tr.early_stop_evals) and schedule.state.get("since_best", 0) >= tr.early_stop_evals
    with _Preemption() as preemption:
        batch = task.batch(step) if step < total else None
        while step < total and not early_stopped:
            units = task.units(batch)
            runner.submit(parallel.shard_batch(mesh, batch, task.batch_axis), np.float32(schedule.lr(step)))
            batch = task.batch(step + 1) if step + 1 < total else None  # built while the step runs
            dev_metrics = runner.collect()
            if pending is not None:  # host sync on the previous step only: keeps the device busy
                log(pending[0], check(pending[0], pending[1]), pending[2])
            step += 1
            pending = (step, dev_metrics, units)
            if deadline is not None and time.time() > deadline:
                stopped_by = f"the {tr.max_minutes:g}-minute limit (train.max_minutes)"
            if preemption.requested:
                stopped_by = "SIGTERM"
            last = step == total or stopped_by is not None
            evaluating, snapping = step % eval_every == 0 or last, step in snap_at
            saving = step % ckpt_every == 0 or last
            if evaluating or snapping or saving:  # host sync now: nothing is saved before its check
                log(step, check(step, pending[1]), units, force=last)
                pending = None
            if evaluating and not preemption.requested:
                ev = evaluate(step)
                if tr.early_stop_evals and schedule.state.get("since_best", 0) >= tr.early_stop_evals and not last:
                    early_stopped = True
                    print(f"early stop at step {step}: {tr.early_stop_evals} evaluations without a new best "
                          f"(best {schedule.state['best']:.4g}; train.early_stop_evals)", flush=True)
            if snapping:
                save(step, snapshot=True)
            if saving or early_stopped:
                save(step)
            if last or early_stopped:
                break
    ckpt.wait()
    stop_message = f"stopped by {stopped_by} at step {step}; the same command resumes it"
    if stopped_by == "SIGTERM":
        writer.close()
        ckpt.close()
        status.write(workdir, "stopped", step=step, message=stop_message)
        return {"step": step, "finished": False}

    if ev is None:  # resumed at the end without a result: evaluate what is there
        ev = evaluate(step)
    finished = step >= total or early_stopped  # an early stop is a finished run
    best = None
    if task.keep_best:
        got = ckpt.restore_latest(runner.whole(), from_best=True)
        best = got[1] if got is not None else None
    summary = {"step": step, "finished": finished, "parameters": n_params, **seconds(),
               "load_average_1min_mean": float(np.mean(loads)) if loads else None,
               **task.finish(runner.whole(), step, ev, best),
               "diverged": divergence.diverged, **({"early_stopped": early_stopped} if tr.early_stop_evals else {})}
    if divergence.message:  # diverged, or warned and recovered
        summary["divergence"] = divergence.message
    summary["total_seconds"] = seconds()["train_seconds"]  # training, then the final evaluations
    writer.write(step, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, kind="summary")
    writer.close()
    ckpt.close()
    print("summary: " + json.dumps(writers.jsonable(summary)), flush=True)
    state_name = ("diverged" if divergence.diverged else "finished") if finished else "stopped"
    message = (divergence.message if divergence.diverged else None) or (stop_message if not finished else None)
    if finished:
        writers.write_json_atomic(result_path, writers.jsonable(summary))
    status.write(workdir, state_name, step=step, message=message, diverged=divergence.diverged,
                 **({"metrics": last_logged} if last_logged else {}))
    if task.on_end is not None:
        task.on_end(best if best is not None else runner.whole(), summary)
    return summary


def _place(mesh, task: Task) -> dict:
    """The task's step-0 state on the mesh: entries of ``sharded_state`` split on
    axis 0, the rest replicated; every buffer owned (train steps donate them)."""
    state = jax.tree.map(lambda a: jax.numpy.array(a), task.state)
    if mesh is None:  # committed to the device, as restored checkpoints are: a fresh run's step and a resumed
        return jax.device_put(state, jax.devices()[0])  # run's lower to one program (one compile, one cache entry)
    sharded = {k: parallel.shard_batch(mesh, state.pop(k), 0) for k in task.sharded_state}
    return {**parallel.replicate(mesh, state), **sharded}
