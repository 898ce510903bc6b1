"""The SLURM executor against a REAL one-node cluster on 127.0.0.1 (slurm-wlm + munge,
started by ``bash launch/cluster/start_local_slurm.sh`` as root, which installs them
with apt if missing; ``.ci/run`` starts it before the suite). A 4-trial sweep goes in
as one array job; one task is preempted mid-run (SIGUSR2, as SLURM sends before a time
limit) and requeues itself, resuming to the uninterrupted result; a diverging trial is
reported while the others finish.

The tests never start or install anything: without a controller that answers they
skip, saying how to start one; with RNNLAB_REQUIRE_CLUSTER=1 (set by ``.ci/run``)
they fail instead, so CI cannot pass with them skipped."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from fixtures import launch_checks as checks

from launch import __main__ as cli
from launch import slurm, status, trials

START = "bash launch/cluster/start_local_slurm.sh"
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def cluster():
    """A SLURM controller that answers (``scontrol ping``), or a skip that says how to start one."""
    try:
        slurm.check_controller(timeout_s=10)
    except ValueError as e:
        why = (f"no SLURM controller answers here ({e}). Start a one-node cluster on 127.0.0.1 with "
               f"`{START}` (as root; it installs slurm-wlm and munge with apt if missing), then rerun; "
               "stop it with `bash launch/cluster/stop_local_slurm.sh`")
        if os.environ.get("RNNLAB_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"RNNLAB_REQUIRE_CLUSTER=1 (CI): {why}")
        pytest.skip(why)


@pytest.mark.slow  # a 4-trial sweep with a requeue: about a minute
def test_slurm_array_sweep_requeue_failure_and_report(cluster, tmp_path):
    root = str(tmp_path / "sweep")
    run = checks.popen(checks.launch_cmd("run", checks.EXPERIMENT, f"--root={root}", "--executor=slurm",
                                         "--time_min=60", "--cpus=1"), str(tmp_path / "launch.log"))
    wd = os.path.join(root, "lstm_seed0")
    stopped_at = checks.wait_mid_run(wd)
    job = status.read_status(wd)["job_id"]
    child = checks.freeze(wd)  # held mid-run until the launcher's SIGTERM is pending on it
    # what SLURM sends before a time limit or on preemption: the job checkpoints and requeues itself
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    checks.thaw_when_pending(child)
    deadline = time.time() + 120
    while status.read_status(wd).get("state") != "requeued":  # written by TrialJob.checkpoint
        assert time.time() < deadline, f"{job} did not checkpoint and requeue: {status.read_status(wd)}"
        time.sleep(0.2)
    # slurmctld holds a requeued job for 2 minutes (Reason=BeginTime); an admin may start it now
    requeued_at = time.time()
    while status.squeue_states().get(job) != "PENDING":
        assert time.time() < deadline, f"{job} was not requeued: {status.squeue_states()}"
        time.sleep(0.2)
    # slurmd refuses a job credential issued in the same second as the requeue revoked the old
    # one ("Killing non-startable batch job: Job credential revoked"; seconds resolution), which
    # is why slurmctld holds requeued jobs: start it no earlier than two seconds after
    time.sleep(max(0.0, requeued_at + 2.0 - time.time()))
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    reference, ref_wd = checks.start_reference(tmp_path)
    rc = run.wait(timeout=400)
    reference.wait(timeout=300)
    log = open(tmp_path / "launch.log").read()
    assert rc == 1, log  # the diverging trial
    ids = re.findall(r"submitted (\w+): job (\d+)_(\d+)", log)
    assert len(ids) == 4 and len({j for _, j, _ in ids}) == 1, log  # one array job, a task per trial
    job_log = open(os.path.join(wd, "train.log")).read()
    assert job_log.count("\n=== ") == 1  # ran twice: before and after the requeue
    checks.check_outcome(root, ref_wd, stopped_at)
    out = str(tmp_path / "report")
    assert cli.main(["report", checks.EXPERIMENT, f"--root={root}", f"--out={out}"]) == 0
    checks.check_report(root, out)
    rows = {r["name"]: r for r in status.table(trials.expand(checks.EXPERIMENT, root))}
    assert rows["lstm_seed0"]["job_id"] == job


def test_unreachable_controller_is_refused_before_submitting(cluster, tmp_path, monkeypatch):
    conf = open("/etc/slurm/slurm.conf").read()
    conf = re.sub(r"(?m)^SlurmctldHost=.*$", "SlurmctldHost=nowhere(127.0.0.1)\nSlurmctldPort=9", conf)
    (tmp_path / "slurm.conf").write_text(conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))  # a controller that does not answer
    ts = trials.expand(checks.EXPERIMENT, str(tmp_path / "sweep"))
    with pytest.raises(ValueError, match="SLURM controller is unreachable"):
        slurm.submit(ts, str(tmp_path / "sweep"))
    assert not os.path.exists(tmp_path / "sweep")  # nothing submitted, nothing written
