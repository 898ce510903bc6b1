"""Data-parallel training (rnnlab.parallel): on 4 forced CPU devices, 20 steps
of the synthetic-task loop and of the LM loop (TBPTT carries split on the
batch) give the parameters of the single-device code path (train.data_parallel
='off') to 1e-5, with the batch and carries really split over the devices and
parameters replicated. The device count must be set before jax is imported,
so the runs happen in a subprocess."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r'''
    import json, sys
    import jax, numpy as np
    from rnnlab import configs
    from rnnlab.tasks import lm, sequence
    from experiments import gradient_flow as gf, language_modelling as lm_exp

    assert len(jax.devices()) == 4, jax.devices()
    tmp = sys.argv[1]
    out = {}

    def shard_shapes(x):  # the shapes of the pieces each device holds (a host array: one piece)
        return [list(s.data.shape) for s in x.addressable_shards] if isinstance(x, jax.Array) else [list(x.shape)]

    def spy(module, batch_key, carry):
        """Wrap module.train_step: record the shardings it is called with and the params it returns."""
        original = module.train_step
        seen = {"batch": [], "carry": [], "params_replicated": [], "carry_out": []}

        def wrapped(*args):
            batch, state = args[3], args[2]
            x = batch[batch_key]
            seen["batch"].append(shard_shapes(x))
            if carry:
                leaf = jax.tree.leaves(state["carries"])[0]
                seen["carry"].append(shard_shapes(leaf))
            new_state, metrics = original(*args)
            seen["params_replicated"].append(all(p.sharding.is_fully_replicated for p in jax.tree.leaves(new_state["params"])))
            if carry:
                leaf = jax.tree.leaves(new_state["carries"])[0]
                seen["carry_out"].append(shard_shapes(leaf))
            seen["params"] = [np.asarray(p, np.float64).ravel().tolist() for p in jax.tree.leaves(new_state["params"])]
            return new_state, metrics

        module.train_step = wrapped
        return seen, original

    def run(module, make_config, name, mode, batch_key, carry):
        seen, original = spy(module, batch_key, carry)
        c = make_config()
        c.unlock()
        c.train.data_parallel = mode
        c.lock()
        try:
            module.train_and_evaluate(c, f"{tmp}/{name}_{mode}")
        finally:
            module.train_step = original
        return seen

    def tasks_config():
        c = gf.get_config("smoke")  # 1x8 LSTM, adding T=20, batch 8, 20 steps, Adam 1e-2
        c.unlock(); c.train.update(async_checkpoint=False, eval_every=20, checkpoint_every=20); c.lock()
        return c

    corpus = f"{tmp}/corpus.txt"
    with open(corpus, "w") as f:
        f.write("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300)))

    def lm_config():
        c = lm_exp.get_config("smoke")  # 1x16 LSTM, T=16, 20 steps
        c.unlock()
        c.data.update(source=corpus, batch_size=8)
        c.train.eval_every = 20
        c.optim.lr = 1e-2
        c.generate.length = 0
        c.train.async_checkpoint = False
        c.lock()
        return c

    for name, module, make, key, carry in (("tasks", sequence, tasks_config, "xs", False),
                                          ("lm", lm, lm_config, "x", True)):
        out[name] = {mode: run(module, make, name, mode, key, carry) for mode in ("off", "auto")}

    c = tasks_config(); c.unlock(); c.task.batch_size = 6; c.lock()
    try:
        sequence.train_and_evaluate(c, f"{tmp}/bad")
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT " + json.dumps(out))
''')


def _run_on_4_devices(tmp_path) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"  # keeps conftest's level
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_four_devices_equal_one_device_and_really_split(tmp_path):
    out = _run_on_4_devices(tmp_path)
    for name in ("tasks", "lm"):
        off, auto = out[name]["off"], out[name]["auto"]
        assert len(off["batch"]) == len(auto["batch"]) == 20
        # one device: the whole batch on one device; four: a quarter each (batch 8 -> 2 rows)
        if name == "tasks":  # time-major xs_TxBxD
            assert off["batch"][0] == [[20, 8, 2]] and auto["batch"][0] == [[20, 2, 2]] * 4
        else:  # x_BxT, and the TBPTT carries (B x H leaves) in and out of every step
            assert off["batch"][0] == [[8, 16]] and auto["batch"][0] == [[2, 16]] * 4
            assert off["carry"][0] == [[8, 16]]
            assert all(c == [[2, 16]] * 4 for c in auto["carry"] + auto["carry_out"])
        assert all(auto["params_replicated"])
        # the same parameters after 20 Adam steps, to 1e-5
        for a, b in zip(off["params"], auto["params"], strict=True):
            diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
            assert diff < 1e-5, (name, diff)
        # and training moved them (the comparison is not of two initialisations)
        assert any(max(abs(x) for x in p) > 0 for p in off["params"])
    assert "batch size 6" in out["error"] and "4 devices" in out["error"] and "data_parallel=off" in out["error"]


MULTIHOST_SCRIPT = textwrap.dedent(r'''
    import json, sys
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from rnnlab.tasks import lm, sequence
    from experiments import gradient_flow as gf, language_modelling as lm_exp

    mode, tmp = sys.argv[1], sys.argv[2]
    corpus = f"{tmp}/corpus.txt"
    out = {}
    for name, module, make in (("tasks", sequence, gf.get_config), ("lm", lm, lm_exp.get_config)):
        c = make("smoke")
        c.unlock()
        c.train.update(async_checkpoint=False, eval_every=20, checkpoint_every=20, data_parallel=mode)
        if name == "lm":
            c.data.update(source=corpus, batch_size=8)
            c.generate.length = 0
        c.lock()
        original, last = module.train_step, {}

        def wrapped(*args, original=original, last=last):
            new_state, metrics = original(*args)
            last["params"] = new_state["params"]
            return new_state, metrics

        module.train_step = wrapped
        module.train_and_evaluate(c, f"{tmp}/{name}_{mode}")  # one workdir shared by the processes
        module.train_step = original
        out[name] = [np.asarray(p, np.float64).ravel().tolist() for p in jax.tree.leaves(last["params"])]
    out["devices"], out["processes"] = len(jax.devices()), jax.process_count()
    print("RESULT " + json.dumps(out))
''')


SLURM_PORT_BASE = 65535 - 2**12 + 1  # jax's SlurmCluster: coordinator port = SLURM_JOB_ID % 4096 + this


def _free_coordinator_port() -> int:
    """A port in jax's SLURM range that no one listens on now. Not a port derived from
    the pid: the coordinator (gRPC) binds with SO_REUSEPORT, so a second run on a port
    in use (another test session on this machine, a rank left over) does not fail to
    bind; the two coordinators share the port and a rank may join the other run."""
    rng = np.random.default_rng()
    for _ in range(200):
        port = SLURM_PORT_BASE + int(rng.integers(2**12))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no SO_REUSEPORT: a listener refuses us
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {SLURM_PORT_BASE}..65535 for the jax coordinator")


def _wait_for_ranks(procs, tmp_path, timeout_s: float) -> None:
    """Wait for both ranks; the first one to fail stops the other at once. A rank that
    raises runs jax's shutdown barrier at exit, where it waits up to 300 s for a peer
    that is itself blocked in a collective on the dead rank: without this the test
    hangs and then reports a barrier timeout instead of the error."""
    deadline = time.time() + timeout_s
    while any(p.poll() is None for p in procs):
        failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed or time.time() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            why = f"rank {failed[0]} failed" if failed else f"the ranks did not finish within {timeout_s:.0f} s"
            logs = "\n=====\n".join(f"rank {r}:\n" + (tmp_path / f"rank{r}.log").read_text()[-3000:] for r in (0, 1))
            raise AssertionError(f"{why}; their logs (the first error is the cause):\n{logs}")
        time.sleep(0.5)


@pytest.mark.slow
def test_multihost_through_slurm_environment_equals_one_device(tmp_path):
    """Two processes of two CPU devices each find each other from SLURM's variables
    (as srun sets them) through jax.distributed.initialize(), train on the 4-device
    mesh with one shared workdir, and end with the single-device parameters."""
    (tmp_path / "corpus.txt").write_text(
        "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300)))
    job_id = str(_free_coordinator_port() - SLURM_PORT_BASE + 2**12)  # jax derives the coordinator port from it
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR"))}
    base.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    procs, logs = [], []
    for rank in (0, 1):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
        env = {**base, "XLA_FLAGS": flags, "SLURM_JOB_ID": job_id,
               "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank),
               "SLURM_LOCALID": str(rank)}
        logs.append(log := open(tmp_path / f"rank{rank}.log", "w"))  # a file, not a pipe: a full pipe stalls a rank
        procs.append(subprocess.Popen([sys.executable, "-c", MULTIHOST_SCRIPT, "multihost", str(tmp_path)], cwd=ROOT,
                                      env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    try:
        single = subprocess.run([sys.executable, "-c", MULTIHOST_SCRIPT, "off", str(tmp_path)], cwd=ROOT, env=base,
                                capture_output=True, text=True, timeout=600)
        _wait_for_ranks(procs, tmp_path, timeout_s=600)
    finally:
        for p, log in zip(procs, logs, strict=True):
            if p.poll() is None:  # never leave a rank behind (it holds the port and a CPU)
                p.kill()
                p.wait()
            log.close()
    outs = [(tmp_path / f"rank{rank}.log").read_text() for rank in (0, 1)]
    results = []
    for text, rc in [(o, p.returncode) for o, p in zip(outs, procs, strict=True)] + [(single.stdout + single.stderr,
                                                                                    single.returncode)]:
        assert rc == 0, "\n=====\n".join(o[-2500:] for o in [*outs, single.stdout + single.stderr])
        results.append(json.loads(next(s for s in text.splitlines() if s.startswith("RESULT "))[len("RESULT "):]))
    assert [(r["devices"], r["processes"]) for r in results] == [(4, 2), (4, 2), (1, 1)]
    for name in ("tasks", "lm"):
        for r in results[:2]:
            for a, b in zip(r[name], results[2][name], strict=True):
                assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, name
    assert os.path.exists(tmp_path / "lm_multihost" / "result.json")
