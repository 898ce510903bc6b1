"""Running trials: one trial as a child process (shared with the SLURM executor),
the local executor, N trials at once, and the inline executor, one after another in
this process (for a debugger, or many tiny trials).

Each trial's stdout and stderr go to WORKDIR/train.log (appended across resumes);
WORKDIR/launch.json says what the launcher knows: state (running, finished,
failed, non-finite, diverged, interrupted, requeued), host, pid, SLURM job id,
return code and the error; the run's own state comes from WORKDIR/status.json. On a GPU machine each trial gets its own GPU through
CUDA_VISIBLE_DEVICES; on CPU, N processes share the cores (XLA's CPU threads are
left as they are: on 2 cores a thread limit was not measured to help).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable

from launch import status as status_lib
from launch.trials import STATUS_FILE, Trial
from rnnlab.report import gather
from rnnlab.train import writers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_status(trial: Trial, **fields) -> None:
    os.makedirs(trial.workdir, exist_ok=True)
    old = status_lib.read_status(trial.workdir)
    writers.write_json_atomic(os.path.join(trial.workdir, STATUS_FILE), {**old, **fields, "time": time.time()})


def start_trial(trial: Trial, env: dict | None = None, ignore_usr2: bool = False) -> subprocess.Popen:
    """The trial's command as a child, output appended to WORKDIR/train.log.
    ignore_usr2: under SLURM the signal is for the launcher (which then stops the
    child and requeues), not a reason for the child to die on its own."""
    os.makedirs(trial.workdir, exist_ok=True)
    log = open(os.path.join(trial.workdir, "train.log"), "a")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: {' '.join(trial.command())}\n")
    log.flush()
    pre = (lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN)) if ignore_usr2 else None
    proc = subprocess.Popen(trial.command(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, preexec_fn=pre)
    log.close()  # the child holds its own descriptor
    write_status(trial, state="running", host=socket.gethostname(), pid=proc.pid, job_id=None, returncode=None, error=None,
                 started=time.time())
    return proc


def finish_trial(trial: Trial, returncode: int) -> dict:
    """Classify a child's exit from the run's status.json (its own word: finished,
    non-finite, diverged, failed), result.json and the return code; record it. The
    error is status.json's message, else the log's first exception line."""
    run = gather.run_state(trial.workdir)
    if run["state"] in status_lib.ENDED and (returncode == 0 or run["state"] != "finished"):
        state = run["state"]
    elif run["state"] == "failed":
        state = "failed"
    elif returncode < 0:
        state = "interrupted"
    elif returncode == 0:  # exited cleanly short of the end: a deadline or preemption ("stopped")
        state = run["state"] if run["state"] == "stopped" else "interrupted"
    else:
        state = "failed"
    error = None
    if state not in ("finished", "interrupted", "stopped"):
        error = run["message"] or _last_error(_log_tail(trial.workdir)) or f"exit code {returncode}"
    elif state == "interrupted" and returncode < 0:
        error = f"stopped by signal {signal.Signals(-returncode).name}"
    write_status(trial, state=state, returncode=returncode, error=error, ended=time.time())
    return {"name": trial.name, "state": state, "returncode": returncode, "error": error}


def _log_tail(workdir: str, n_bytes: int = 20000) -> str:
    """The log of the latest session (after its '===' header line)."""
    path = os.path.join(workdir, "train.log")
    if not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(os.path.getsize(path) - n_bytes, 0))
        return f.read().decode(errors="replace").rsplit("\n=== ", 1)[-1]


def _last_error(tail: str) -> str:
    """The first exception line ('pkg.SomeError: message'): a message for a run that failed
    without saying why in status.json; later ones are usually shutdown noise (Orbax's threads)."""
    errs = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$", tail, flags=re.M)
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    return (errs[:1] or lines[-1:] or [""])[0].strip()[:500]


def gpu_count() -> int:
    """GPUs on this machine (nvidia-smi -L), 0 without an NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def run_local(trials: list[Trial], parallel: int = 0, *, gpus: int | None = None, poll_s: float = 0.5,
              report_every_s: float = 15.0, on_start: Callable[[Trial, subprocess.Popen], None] | None = None) -> list[dict]:
    """Run the unfinished ``trials``, ``parallel`` at once (0: one per GPU, or 2 on
    CPU); finished ones are skipped, interrupted ones resume from their checkpoint.
    A failing trial is recorded and the others go on. Returns one outcome per trial."""
    gpus = gpu_count() if gpus is None else gpus
    parallel = parallel or gpus or 2
    if gpus and parallel > gpus:
        raise ValueError(f"--parallel={parallel} but this machine has {gpus} GPUs (one per trial); "
                         f"use --parallel={gpus} or fewer")
    queue, outcomes = _queue_and_skipped(trials)
    running: dict[str, tuple[Trial, subprocess.Popen, int | None]] = {}
    free_gpus = list(range(gpus))
    t0, last_report = time.time(), time.time()

    def stop_all(signum, frame):  # forward to the children; their checkpoints stay the last good ones
        for _, proc, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt(f"launcher stopped by signal {signum}; rerun the same command to resume")

    previous = signal.signal(signal.SIGTERM, stop_all)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                t = queue.pop(0)
                gpu = free_gpus.pop(0) if gpus else None
                env = {"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}
                proc = start_trial(t, env)
                running[t.name] = (t, proc, gpu)
                print(f"start {t.name} (pid {proc.pid}{f', GPU {gpu}' if gpu is not None else ''}): "
                      f"{' '.join(t.command())}", flush=True)
                if on_start:
                    on_start(t, proc)
            time.sleep(poll_s)
            for name, (t, proc, gpu) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if gpu is not None:
                    free_gpus.append(gpu)
                _record(outcomes, t, proc.returncode)
            if running and time.time() - last_report > report_every_s:
                last_report = time.time()
                _print_progress(trials, outcomes, running, t0)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for t, proc, _ in running.values():  # interrupted (Ctrl-C or SIGTERM): wait for the children
            proc.send_signal(signal.SIGTERM)
            outcomes[t.name] = finish_trial(t, proc.wait())
    return _summary("local", trials, outcomes, t0)


def _queue_and_skipped(trials: list[Trial]) -> tuple[list[Trial], dict]:
    """The trials still to run, and an outcome for each one skipped (it had ended)."""
    queue = status_lib.split_todo(trials)
    return queue, {t.name: {"name": t.name, "state": status_lib.trial_status(t)["state"], "skipped": True}
                   for t in trials if t not in queue}


def _record(outcomes: dict, t: Trial, returncode: int | None) -> dict:
    """A trial's outcome from its return code and status file, kept and said."""
    o = outcomes[t.name] = finish_trial(t, returncode)
    print(f"{o['state']} {t.name}" + (f": {o['error']}" if o["error"] else ""), flush=True)
    return o


def _summary(executor: str, trials: list[Trial], outcomes: dict, t0: float) -> list[dict]:
    """One outcome per trial, in order (a trial never started reads its status file), and the summary line."""
    for t in trials:
        outcomes.setdefault(t.name, {"name": t.name, "state": status_lib.trial_status(t)["state"], "returncode": None,
                                     "error": None})
    print(f"{executor} sweep: {sum(o['state'] == 'finished' for o in outcomes.values())}/{len(trials)} finished "
          f"in {time.time() - t0:.0f} s", flush=True)
    return [outcomes[t.name] for t in trials]


class _Tee:
    """Writes to the trial's log and to the console alike (the inline executor's stdout and stderr)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def run_inline(trials: list[Trial], *, echo: bool = True) -> list[dict]:
    """Run the unfinished ``trials`` one after another in this process: no child, so a
    debugger or a profiler sees the trial's own code, and no interpreter and JAX start per
    trial (the quickest way through many tiny trials on a CPU). Each trial is exactly what
    its command would run (the same config, the experiment's trainer, the same workdir, so
    it resumes and is skipped when finished); its output is appended to WORKDIR/train.log
    and, with ``echo``, shown here too. An exception is recorded as the trial's failure and
    the others go on; a trial stopped short of its end (SIGTERM, a deadline) stops the sweep,
    to be resumed by the same command. JAX's 64-bit switch is the one a fresh process has
    (``JAX_ENABLE_X64``), not this process's."""
    import contextlib
    import sys
    import traceback

    import jax

    from launch import trials as trials_lib
    from rnnlab import main as rnnlab_main

    queue, outcomes = _queue_and_skipped(trials)
    t0, modules = time.time(), {}
    for i, t in enumerate(queue):
        if t.experiment not in modules:
            modules[t.experiment] = trials_lib.load_experiment(t.experiment)
        config = trials_lib.resolve(modules[t.experiment], t.variant, t.overrides)
        os.makedirs(t.workdir, exist_ok=True)
        print(f"start {t.name} ({i + 1}/{len(queue)}, in this process): {' '.join(t.command())}", flush=True)
        write_status(t, state="running", host=socket.gethostname(), pid=os.getpid(), job_id=None, returncode=None,
                     error=None, started=time.time())
        returncode = 0
        with open(os.path.join(t.workdir, "train.log"), "a") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} (inline): "
                      f"{' '.join(t.command())}\n")
            out, err = (_Tee(log, sys.stdout), _Tee(log, sys.stderr)) if echo else (log, log)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:  # JAX's 64-bit switch as a fresh process has it, whatever this one set (tests set it)
                    with jax.enable_x64(os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true", "yes")):
                        rnnlab_main.trainer(config.trainer)(config, t.workdir)
                except KeyboardInterrupt:
                    returncode = -signal.SIGINT
                except Exception:  # the trial's failure, recorded; the sweep goes on
                    traceback.print_exc()
                    returncode = 1
        if _record(outcomes, t, returncode)["state"] in ("interrupted", "stopped"):
            print("inline sweep stopped; rerun the same command to resume", flush=True)
            break
    return _summary("inline", trials, outcomes, t0)


def _print_progress(trials, outcomes, running, t0) -> None:
    parts = []
    for t, _, _ in running.values():
        st = status_lib.trial_status(t)
        parts.append(f"{t.name} step {st['step']}" + (f"/{st['num_steps']}" if st.get("num_steps") else ""))
    print(f"[{time.time() - t0:.0f} s] {len(outcomes)}/{len(trials)} done, running: " + ", ".join(parts), flush=True)
