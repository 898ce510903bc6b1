"""The gradient-flow study: its smoke variant runs end to end through
rnnlab.main and the report regenerates from the Orbax snapshots; a resumed run
continues bitwise; the init option gives the requested spectral radius; NaN
stops without saving."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnlab import cells, configs, probes
from rnnlab.layers import Stack
from rnnlab.models import seq
from rnnlab.tasks import sequence
from rnnlab.train import checkpoint
from rnnlab.train.loop import NonFiniteError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from experiments import gradient_flow as gf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke(**over):
    c = gf.get_config("smoke")
    c.unlock()
    c.train.async_checkpoint = False
    for k, v in over.items():
        configs.set_dotted(c, k, str(v))
    c.lock()
    return c


@pytest.mark.slow
def test_smoke_runs_through_main_and_the_report_regenerates_from_its_checkpoints(tmp_path):
    wd = tmp_path / "runs" / "smoke_lstm"
    cmd = [sys.executable, "-m", "rnnlab.main", "--config=experiments/gradient_flow.py:smoke", f"--workdir={wd}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "step 5/20" in out.stdout and "tok/s" in out.stdout and "ETA" in out.stdout
    result = json.load(open(wd / "result.json"))
    assert result["finished"] and result["step"] == 20 and result["eval_baseline"] == pytest.approx(1 / 6)
    assert checkpoint.snapshot_steps(str(wd)) == [0, 10, 20]
    rows = [json.loads(ln) for ln in open(wd / "metrics.jsonl")]
    assert {"loss", "grad_norm", "param_norm", "update_norm", "clipped"} <= set(rows[0])
    assert any(r["kind"] == "eval" for r in rows)

    out_dir = tmp_path / "report"
    rep = gf.report(str(tmp_path / "runs"), str(out_dir), batch_size=8, jacobian_batch=2)
    for name in ("README.md", "report.json", "summary.csv", "curves.csv", "eval.csv",
                 "grad_norms_T20.png", "grad_norms_T20.svg", "eval_loss_T20.png"):
        assert (out_dir / name).stat().st_size > 0, name
    t = json.load(open(out_dir / "report.json"))["trials"]["lstm_fb1_T20_clip"]
    assert t == json.loads(json.dumps(rep["trials"]["lstm_fb1_T20_clip"]))
    assert sorted(t["snapshots"], key=int) == ["0", "10", "20"]
    s0 = t["snapshots"]["0"]
    assert len(s0["norms_T"]) == 20 and all(v > 0 for v in s0["norms_T"])
    assert 0 < s0["fit_all"]["rate"] < 2 and "rms" in s0["jacobian"] and "jacobian" not in t["snapshots"]["10"]
    assert t["result"]["eval_loss"] == result["eval_loss"]
    assert t["eval"][-1] == {"step": 20, "loss": result["eval_loss"]}
    # the signed rate beside the range, and the state's size (tanh-bounded LSTM output: |h| < 1)
    assert s0["log_rate_window"] == pytest.approx(math.log(s0["fit_window"]["rate"]), rel=1e-5)
    assert 0 < s0["h_abs_mean"] <= s0["h_abs_max"] < 1


def test_the_signed_rate_tells_growth_from_decay_where_the_range_cannot():
    lags = np.arange(50)
    decaying, growing = 0.9 ** lags[::-1], 1.1 ** lags[::-1]  # indexed by t; lag = T-1-t
    assert gf._range(decaying) == pytest.approx(gf._range(1 / decaying))  # the same span either way
    assert gf._fit(decaying, 1, None)["log_rate"] == pytest.approx(math.log(0.9), rel=1e-4)
    assert gf._fit(growing, 1, None)["log_rate"] == pytest.approx(math.log(1.1), rel=1e-4)


def _final_params(wd, step):
    model, _ = sequence.build(_smoke())
    like = jax.eval_shape(model.init, jax.random.key(0))
    return checkpoint.load_snapshot_params(str(wd), step, like)


def test_resume_continues_bitwise(tmp_path):
    a, b = tmp_path / "interrupted", tmp_path / "straight"
    first = sequence.train_and_evaluate(_smoke(**{"train.num_steps": 10}), str(a))
    assert first["step"] == 10
    resumed = sequence.train_and_evaluate(_smoke(), str(a))
    straight = sequence.train_and_evaluate(_smoke(), str(b))
    assert resumed["step"] == straight["step"] == 20
    pa, pb = _final_params(a, 20), _final_params(b, 20)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), pa, pb)
    assert resumed["eval_loss"] == straight["eval_loss"]
    # a finished run is reported, not redone
    assert sequence.train_and_evaluate(_smoke(), str(b)) == json.load(open(b / "result.json"))


def test_non_finite_loss_stops_without_saving(tmp_path):
    with pytest.raises(NonFiniteError, match="non-finite"):
        sequence.train_and_evaluate(_smoke(**{"optim.lr": 1e30, "optim.clip_norm": 0.0}), str(tmp_path))
    assert not os.listdir(tmp_path / "checkpoints")  # no periodic save
    assert checkpoint.snapshot_steps(str(tmp_path)) == [0]  # the initialisation, saved before step 1


@pytest.mark.parametrize("cell, init, radius", [("elman", "orthogonal", 0.9), ("elman", "identity", 0.5),
                                                ("lstm", "orthogonal", 1.1), ("gru", "pytorch", 0.7)])
def test_recurrent_rescaling_gives_the_requested_spectral_radius(cell, init, radius):
    stack = Stack(cells.get(cell, recurrent_init=init), 2, 16)
    model = seq.SeqModel(stack, 1, readout="last", recurrent_radius=radius)
    params = model.init(jax.random.key(0))
    w = np.asarray(params["stack"]["layer_0"]["forward"]["w_h_HxG"], np.float64)
    for block in np.split(w, stack.cell.n_gates, axis=1):
        assert np.max(np.abs(np.linalg.eigvals(block))) == pytest.approx(radius, rel=1e-5)
    plain = seq.SeqModel(stack, 1, readout="last").init(jax.random.key(0))
    w_plain = np.asarray(plain["stack"]["layer_0"]["forward"]["w_h_HxG"], np.float64)
    for block, block_plain in zip(np.split(w, stack.cell.n_gates, axis=1), np.split(w_plain, stack.cell.n_gates, axis=1),
                                  strict=True):  # a rescaling: each gate block is a multiple of the plain one
        scale = np.sum(block * block_plain) / np.sum(block_plain**2)
        np.testing.assert_allclose(block, scale * block_plain, rtol=1e-5, atol=1e-7)


def test_config_shorthands_and_trial_names():
    c = gf.get_config("default,cell=elman,init=identity,rho=0.9,clip=0,T=400")
    d = gf.describe(c)
    assert d["name"] == "elman_identity_rho0.9_T400_noclip" and d["radius"] == 0.9 and d["clip"] == 0.0
    assert gf.describe(gf.get_config("default,init=irnn"))["family"] == "IRNN"
    assert gf.describe(gf.get_config("default,fb=0"))["name"] == "lstm_fb0_T200_clip"
    names = [gf.describe(gf.resolve(v, o))["name"] for v, o in gf.trials("full")]
    assert len(names) == len(set(names)) and "lstm_fb1_T200_clip" in names and "elman_T200_clip" in names
    with pytest.raises(KeyError):
        gf.get_config("default,train.nmu_steps=3")


def _span_at_init(cell: str, cell_options: str) -> float:
    """max / min of ||dL/dcarry_t|| over the last 101 steps of the study's adding T=200
    probe batch (16 examples), at initialisation."""
    c = gf.get_config(f"default,cell={cell}")
    c.unlock()
    c.model.cell_options = cell_options
    c.lock()
    model, _ = sequence.build(c)
    params = model.init(jax.random.key(0))
    xs, targets, mask = (jnp.asarray(a) for a in sequence.probe_batch(c, 16))
    norms = np.asarray(probes.task_grad_norms(model, params, xs, targets, mask).norms_T, np.float64)[-101:]
    return norms.max() / norms.min()


def test_chrono_initialisation_biases_and_the_gradient_it_keeps_at_initialisation():
    """Tallec & Ollivier 2018, eq. 13: b_f = log U(1, T_max - 1), b_i = -b_f, the
    weights untouched; at initialisation it keeps ||dL/d(c,h)_t|| within one order of
    magnitude over the last 100 of 200 steps, where forget bias 1 spans several."""
    cell = cells.get("lstm", chrono=200)
    p = cell.init(jax.random.key(3), 5, 64)
    plain = cells.get("lstm").init(jax.random.key(3), 5, 64)
    b = np.asarray(p["b_G"], np.float64)
    b_i, b_f, b_g, b_o = np.split(b, 4)
    np.testing.assert_array_equal(b_i, -b_f)
    assert np.all(b_g == 0) and np.all(b_o == 0) and np.all(b_f >= 0) and np.all(b_f <= np.log(199) + 1e-6)
    assert np.exp(b_f).min() < 10 and np.exp(b_f).max() > 150  # forgetting times spread over 2 .. 200
    for k in ("w_x_DxG", "w_h_HxG"):
        np.testing.assert_array_equal(p[k], plain[k])
    with pytest.raises(ValueError, match="T_MAX > 2"):
        cells.get("lstm", chrono=1).init(jax.random.key(0), 5, 8)
    ranges = {opts: _span_at_init("lstm", opts) for opts in ("chrono=200", "forget_bias=1.0")}
    assert ranges["chrono=200"] < 10 < 1000 < ranges["forget_bias=1.0"], ranges
    assert gf.describe(gf.get_config("default,model.cell_options=chrono=200"))["name"] == "lstm_chrono200_T200_clip"


def test_gru_chrono_initialisation_sets_the_keep_gate_bias_and_keeps_the_gradient():
    """GRU form of chrono: b_z = log U(1, T_max - 1) (z keeps h_(t-1)), all else as without it;
    at T=200 ||dL/dh_t|| spans < 10 over the last 100 steps at init, > 1e6 with zero biases."""
    p = cells.get("gru", chrono=200).init(jax.random.key(3), 5, 64)
    plain = cells.get("gru").init(jax.random.key(3), 5, 64)
    b_r, b_z, b_n = np.split(np.asarray(p["b_G"], np.float64), 3)
    assert np.all(b_r == 0) and np.all(b_n == 0) and np.all(b_z >= 0) and np.all(b_z <= np.log(199) + 1e-6)
    for k in ("w_x_DxG", "w_h_HxG", "b_hn_H"):
        np.testing.assert_array_equal(p[k], plain[k])
    ranges = {opts: _span_at_init("gru", opts) for opts in ("chrono=200", "")}
    assert ranges["chrono=200"] < 10 and ranges[""] > 1e6, ranges


@pytest.mark.slow
def test_model_losses_and_probe_loss_agree():
    """task_grad_norms' loss is the training loss: MSE at the last step, CE over a mask."""
    for task, kw in (("adding", {}), ("copy", {"task.length": 5}), ("temporal_order", {"task.length": 12})):
        c = _smoke(**{"task.name": task, **kw})
        model, spec = sequence.build(c)
        params = model.init(jax.random.key(1))
        b = sequence.probe_batch(c, 4)
        loss, _ = jax.jit(model.loss_and_metrics)(params, *(jnp.asarray(a) for a in b))
        gn = probes.task_grad_norms(model, params, *(jnp.asarray(a) for a in b))
        np.testing.assert_allclose(float(gn.loss), float(loss), rtol=1e-5)
        assert gn.norms_T.shape == (spec.length,)


def test_run_status_reads_status_json_not_the_log(tmp_path):
    from rnnlab.train import status as train_status

    wd = str(tmp_path)
    with open(os.path.join(wd, "train.log"), "w") as f:  # a log that says non-finite is not read
        f.write("NonFiniteError: non-finite training loss at step 3\n")
    assert gf.run_status(wd) == {"status": "not started", "non_finite": False, "non_finite_step": None}
    train_status.write(wd, "non-finite", step=31, message="non-finite training loss at step 31")
    assert gf.run_status(wd) == {"status": "non-finite loss at step 31", "non_finite": True, "non_finite_step": 31}
    train_status.write(wd, "finished", step=40)
    assert gf.run_status(wd)["status"] == "finished"
