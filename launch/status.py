"""Where each trial of a sweep stands, from its workdir alone: the run's own
status.json (written by the training loop, rnnlab/train/status.py: running,
finished, stopped, failed, non-finite, diverged, with step and message), the
launcher's launch.json (pid, host, SLURM job id, return code) and, for SLURM jobs,
squeue. Logs are never read for a state.

States: pending (nothing ran yet, or queued), running, finished, failed,
non-finite (NaN/Inf stopped it), diverged (finished far above the task's
baseline), stopped (the run's deadline or a preemption ended a session; the same
command resumes it), queued (submitted to SLURM), interrupted (killed; the same
command resumes it), requeued (preempted or timed out under SLURM; it resumes by
itself), unknown (metrics but neither status.json nor result.json: a run from
before status.json).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

from launch.trials import STATUS_FILE, Trial, metric_values, pick_metric
from rnnlab.report import gather
from rnnlab.train import writers

ENDED = ("finished", "non-finite", "diverged")  # a run in one of these states is not run again


def read_status(workdir: str) -> dict:
    path = os.path.join(workdir, STATUS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def squeue_states(strict: bool = False) -> dict[str, str] | None:
    """SLURM job id ('123_4' for array tasks) -> state, for the jobs in the queue ({} without SLURM).
    When squeue itself fails (a busy controller times out), {} or, with ``strict``, None: a
    caller that waits for jobs to leave the queue must not take a failed query for an empty queue."""
    if shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None if strict else {}
    if out.returncode != 0:
        return None if strict else {}
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with open(f"/proc/{pid}/status") as f:  # a zombie is not running
        return "\nState:\tZ" not in f.read()


def trial_status(trial: Trial, queue: dict[str, str] | None = None, metric: str | None = None) -> dict:
    """state, last step, num_steps, the main metric's last and best values of one trial."""
    wd = trial.workdir
    launched = read_status(wd)
    run = gather.run_state(wd)  # status.json, or result.json / 'unknown' / 'not started'
    rows = writers.read_metrics(wd)
    state = _state(run["state"], launched, queue)
    num_steps = run["total_steps"]
    if num_steps is None and os.path.exists(os.path.join(wd, "config.json")):
        with open(os.path.join(wd, "config.json")) as f:
            num_steps = json.load(f).get("train", {}).get("num_steps")
    metric = pick_metric(rows, metric)
    values = metric_values(rows, metric)
    best = min(values, key=lambda sv: sv[1]) if values else None
    step = run["step"] if run["step"] is not None else max((r["step"] for r in rows), default=0)
    return {"name": trial.name, "state": state, "step": step,
            "num_steps": num_steps, "metric": metric, "last": values[-1][1] if values else None,
            "best": best[1] if best else None, "best_step": best[0] if best else None,
            "job_id": launched.get("job_id"), "error": run["message"] or launched.get("error")}


def _state(run_state: str, launched: dict, queue: dict[str, str] | None) -> str:
    """One state from the run's own (status.json) and the launcher's (launch.json, squeue)."""
    if run_state in ENDED:
        return run_state
    launcher = launched.get("state")
    if launcher in ("running", "requeued", "queued"):
        job = launched.get("job_id")
        if job and queue is not None and job in queue:
            return "running" if queue[job] in ("RUNNING", "COMPLETING") else "pending"
        if job and queue is not None:
            return "interrupted"  # left the queue without finishing
        if not job and launched.get("host") == socket.gethostname() and not _pid_alive(int(launched["pid"])):
            return "failed" if run_state == "failed" else "interrupted"
        return launcher
    if run_state in ("failed", "stopped"):
        return run_state
    if launcher:
        return launcher
    return {"not started": "pending"}.get(run_state, run_state)


def split_todo(trials: list[Trial]) -> list[Trial]:
    """The trials to (re)run: not finished, and not stopped by a non-finite loss or
    diverged (which would only repeat: delete its workdir, or change its config, to
    retry it). Says why it skips."""
    todo = []
    for t in trials:
        run = gather.run_state(t.workdir)["state"]
        if run == "finished":
            print(f"skip {t.name}: finished", flush=True)
        elif run in ENDED or read_status(t.workdir).get("state") == "non-finite":
            print(f"skip {t.name}: {run} earlier (delete {t.workdir} to retry)", flush=True)
        else:
            todo.append(t)
    return todo


def table(trials: list[Trial], metric: str | None = None, slurm: bool | None = None) -> list[dict]:
    """One status row per trial. squeue is asked (``slurm=None``) only when a trial holds a
    SLURM job id in its launch record: a local sweep never waits on a controller that is down."""
    if slurm is None:
        slurm = any(read_status(t.workdir).get("job_id") for t in trials)
    queue = squeue_states() if slurm else None
    return [trial_status(t, queue, metric) for t in trials]


def format_table(rows: list[dict]) -> str:
    def g(v):
        return "-" if v is None else f"{v:.5g}" if isinstance(v, float) else str(v)

    head = ["trial", "state", "step", "metric", "last", "best (step)", "job", "error"]
    body = [[r["name"], r["state"], f"{r['step']}/{g(r['num_steps'])}", g(r["metric"]), g(r["last"]),
             f"{g(r['best'])} ({g(r['best_step'])})", g(r["job_id"]), (r["error"] or "")[:80]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return "\n".join(lines + [", ".join(f"{n} {s}" for s, n in sorted(counts.items()))])
