"""The SLURM executor (submitit): a sweep goes in as ONE array job, a task per trial.

Preemption and timeouts: submitit asks SLURM for SIGUSR2 ``signal_delay_s`` before
the time limit (``#SBATCH --signal=USR2@90``); a preempting or admin `scancel
--signal=USR2` does the same. The job's Python process (submitit's) catches it and
calls ``TrialJob.checkpoint``: we stop the trial's child with SIGTERM (waiting for
it; the child ignores SIGUSR2 itself, so it is never killed half-way by it), and
hand back the same trial, which submitit requeues (``scontrol requeue``). Because
a run resumes from its workdir, requeue = rerun the same command. A save in flight
when the child dies is lost, never the previous one: Orbax writes into a
temporary folder and renames it when complete. `scontrol requeue` (or a node
failure) kills the child without asking; it resumes the same way.

Every sweep submission gets its own submitit folder (ROOT/.submitit/<time>):
SLURM job ids restart at 1 when a cluster's state is wiped, and submitit would
read an older job's result files under the same id.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time

import submitit

from launch import local
from launch import status as status_lib
from launch.trials import Trial

_CHILD: dict = {}  # the running trial's Popen, outside the pickled TrialJob


class TrialFailed(RuntimeError):
    pass


class TrialJob(submitit.helpers.Checkpointable):
    """Runs one trial's command inside a SLURM job; requeues it when preempted."""

    def __init__(self, stop_timeout_s: float = 60.0):
        self.stop_timeout_s = stop_timeout_s

    def __call__(self, trial: Trial) -> dict:
        if os.path.exists(os.path.join(trial.workdir, "result.json")):
            return {"name": trial.name, "state": "finished", "returncode": 0, "error": None, "skipped": True}
        job = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job_id = f"{job[0]}_{job[1]}" if job[0] else os.environ.get("SLURM_JOB_ID")
        # one GPU per trial by SLURM's binding; XLA sees only the job's devices
        proc = local.start_trial(trial, ignore_usr2=True)
        local.write_status(trial, job_id=job_id)
        _CHILD["proc"] = proc
        print(f"trial {trial.name} (job {job_id}): log in {trial.workdir}/train.log", flush=True)
        # poll, not proc.wait(): a SIGUSR2 handler (checkpoint) must not find Popen's lock held
        while proc.poll() is None:
            time.sleep(0.5)
        returncode = proc.returncode
        _CHILD.pop("proc", None)
        outcome = local.finish_trial(trial, returncode)
        if outcome["state"] != "finished":
            raise TrialFailed(f"trial {trial.name} {outcome['state']}: {outcome['error']}")
        return outcome

    def checkpoint(self, trial: Trial) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on SIGUSR2: stop the child, requeue the same trial."""
        proc = _CHILD.pop("proc", None)
        if proc is not None:
            _stop(proc.pid, self.stop_timeout_s)
        local.write_status(trial, state="requeued", returncode=None, error=None)
        print(f"trial {trial.name}: preempted or timed out; requeued, it resumes from its checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(TrialJob(self.stop_timeout_s), trial)


def _stop(pid: int, timeout_s: float) -> None:
    """SIGTERM the child and reap it (SIGKILL after timeout_s), with os.waitpid: this runs in a
    signal handler, maybe while the interrupted code holds the Popen's own lock."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout_s
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.1)
    except ChildProcessError:  # already reaped
        pass


def check_controller(timeout_s: float = 20.0) -> None:
    """Refuse to submit when no SLURM controller answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise ValueError("SLURM's client commands (sbatch, scontrol) are not installed here; install slurm-client, "
                         "start a one-node cluster with launch/cluster/start_local_slurm.sh, or use --executor=local")
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout_s)
        text = out.stdout + out.stderr
    except subprocess.TimeoutExpired:
        text = f"no answer within {timeout_s:.0f} s"
    if "UP" not in text:
        raise ValueError(f"the SLURM controller is unreachable ({' '.join(text.split())}); start it "
                         "(launch/cluster/start_local_slurm.sh on one machine) or use --executor=local")


def make_executor(folder: str, *, partition: str = "", account: str = "", gpus: int = 0, cpus: int = 1,
                  mem_gb: float = 0, time_min: int = 60, parallelism: int = 256, job_name: str = "rnnlab",
                  signal_delay_s: int = 90) -> submitit.SlurmExecutor:
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=20)
    params = dict(job_name=job_name, time=time_min, cpus_per_task=cpus, array_parallelism=parallelism,
                  signal_delay_s=signal_delay_s, stderr_to_stdout=True)
    params.update({k: v for k, v in dict(partition=partition, account=account).items() if v})
    if gpus:
        params["gpus_per_node"] = gpus
    if mem_gb:
        params["mem"] = f"{int(mem_gb * 1024)}M"
    # the job imports launch/ and rnnlab/ from this checkout, wherever it starts
    params["setup"] = [f"export PYTHONPATH={shlex.quote(local.REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    ex.update_parameters(**params)
    return ex


def submit(trials: list[Trial], root: str, **resources) -> tuple[list, list[Trial], str]:
    """Submit the unfinished trials as one array job; returns (jobs, their trials, submitit folder)."""
    check_controller()
    todo = status_lib.split_todo(trials)
    folder = os.path.join(os.path.abspath(root), ".submitit", time.strftime("%Y%m%d-%H%M%S-") + f"{os.getpid()}")
    if not todo:
        return [], [], folder
    ex = make_executor(os.path.join(folder, "%j"), **resources)
    for t in todo:
        local.write_status(t, state="pending", job_id=None, error=None, returncode=None, submitit_folder=folder)
    jobs = ex.map_array(TrialJob(), todo)
    for t, j in zip(todo, jobs, strict=True):
        local.write_status(t, state="queued", job_id=j.job_id)  # squeue tells pending from running
        print(f"submitted {t.name}: job {j.job_id}", flush=True)
    return jobs, todo, folder


def wait(jobs: list, trials: list[Trial], poll_s: float = 2.0, report_every_s: float = 15.0) -> list[dict]:
    """Wait until the array's tasks have left the queue (a requeued task stays in it);
    one status row per trial. squeue, not sacct: a cluster without accounting has no sacct."""
    t0, last = time.time(), time.time()
    ids = {j.job_id for j in jobs}
    gone, failing_since = 0, None
    while gone < 2:  # out of the queue on two polls in a row: a requeue passes through transient states
        queue = status_lib.squeue_states(strict=True)
        if queue is None:  # squeue failed: the queue is unknown, not empty
            failing_since = failing_since or time.time()
            if time.time() - failing_since > 600:
                raise RuntimeError("squeue has failed for 10 minutes; the jobs may still be running: "
                                   "see `python -m launch status`")
            time.sleep(poll_s)
            continue
        failing_since = None
        gone = 0 if ids & set(queue) else gone + 1
        if time.time() - last > report_every_s:
            last = time.time()
            rows = status_lib.table(trials)
            print(f"[{time.time() - t0:.0f} s] " + ", ".join(f"{r['name']} {r['state']} step {r['step']}"
                                                             for r in rows), flush=True)
        time.sleep(poll_s)
    return status_lib.table(trials)
