"""Gradient flow through time: how do vanishing gradients in a tanh RNN, the LSTM's
forget gate, initialisation (orthogonal, identity/IRNN, orthogonal rescaled to a
spectral radius rho, chrono) and gradient clipping decide what is learnt on the
adding problem?

Classic results it checks (Pascanu et al. 2013; Arjovsky et al. 2016, fig. of
||dL/dh_t|| against t at initialisation and after training):
  (a) at initialisation the tanh RNN's ||dL/dh_t|| decays exponentially with
      the lag, at the per-step rate its step Jacobians predict; an LSTM with
      forget-gate bias 1 keeps it within one order of magnitude over 100 steps;
  (a') so does an LSTM with chrono initialisation (Tallec & Ollivier 2018);
  (b) adding problem, T = 200: the LSTM reaches MSE < 0.0167 (a tenth of the
      1/6 baseline) while the tanh RNN stays near the baseline.
Results, with every number beside its artifact: docs/gradient_flow/ (README.md is
the generated report, notes.md what the report does not say).

Run the whole study and write the report (through launch: each trial a process of
rnnlab.main, --parallel at once; the same command resumes or reuses finished trials):
  nice -n 10 python experiments/gradient_flow.py --run --root=runs/gradient_flow --out=docs/gradient_flow
or, the same trials: python -m launch run experiments/gradient_flow.py --root=runs/gradient_flow --grid=full
Regenerate the report from the trials' Orbax checkpoints only:
  python experiments/gradient_flow.py --root=runs/gradient_flow --out=docs/gradient_flow
One trial (variants below; keys as in language_modelling: ':default,cell=gru,T=400'):
  python -m rnnlab.main --config=experiments/gradient_flow.py[:VARIANT] --workdir=DIR

Variants:
  default (= full)  one trial of the study: 1x64 LSTM (forget bias 1), adding T=200,
                    batch 50, Adam lr 1e-2, global-norm clipping 1.0, 1500 steps,
                    snapshots at steps 0,100,500,1000,1500; about 2 min on 2 cores
                    (lstm_fb1_T200_clip in docs/gradient_flow/report.json).
  smoke             seconds: 1x8 LSTM, T=20, 20 steps (tests run it).
Shorthand keys: cell=NAME (any registered cell), fb=FORGET_BIAS, init=orthogonal|identity|irnn,
rho=SPECTRAL_RADIUS, clip=NORM (0: off), T=LENGTH, H=HIDDEN, steps=N, lr=LR, seed=N;
dotted keys (train.num_steps=...) go anywhere.

Grids (``--grid``): 'full' (the study in docs/gradient_flow; see ``full``), 'smoke',
'sweep' (``sweep``: every registered cell x T in {100, 200, 400} x clipping, and the
tanh RNN's initialisations, 54 trials).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

if __name__ == "__main__":  # run as a file: the rnnlab next to it, whatever else is installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rnnlab import cells, configs, probes  # noqa: E402
from rnnlab.models import seq as seq_lib  # noqa: E402
from rnnlab.tasks import sequence  # noqa: E402
from rnnlab.train import (
    checkpoint,  # noqa: E402
    writers,  # noqa: E402
)
from rnnlab.train import config as train_config  # noqa: E402

THIS_FILE = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(THIS_FILE))
IRNN = "recurrent_init=identity,nonlinearity=relu"  # Le et al. 2015


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "rnnlab.tasks.sequence:train_and_evaluate"  # the loop rnnlab.main calls: module:function(config, workdir)
    c.seed = 0  # params init; training batches are pure in (seed, step), eval batches in (seed, 1e9 + i)

    c.task = t = ml_collections.ConfigDict()
    t.name = "adding"  # 'adding' | 'copy' | 'temporal_order' (rnnlab.data.synthetic)
    t.length = 200  # T (for 'copy': the delay; T = delay + 2 * n_copy)
    t.batch_size = 50
    t.n_copy = 10  # copy: symbols to remember
    t.n_symbols = 8  # copy: alphabet size
    t.eval_batches = 2  # fresh batches per evaluation
    t.eval_batch_size = 250

    c.model = m = ml_collections.ConfigDict()
    m.cell = "lstm"  # any module in rnnlab/cells
    m.cell_options = "forget_bias=1.0"  # 'key=value,...' for the cell, e.g. IRNN: 'recurrent_init=identity,nonlinearity=relu'
    m.d_hidden = 64
    m.num_layers = 1
    m.recurrent_radius = 0.0  # >0: rescale each recurrent gate block to this spectral radius after init
    m.unroll = 1  # scan unroll factor
    m.compute_dtype = ""  # 'bfloat16': matmuls and gates in bfloat16 (accelerators); weights, optimizer, carries float32

    c.optim = train_config.optim_config()
    c.optim.lr = 1e-2
    c.train = train_config.train_config()
    c.train.update(num_steps=1500, checkpoint_steps=(0, 100, 500, 1000, 1500), checkpoint_every=250, keep_checkpoints=2,
                   eval_every=250, log_every=100, tensorboard=False)
    return c


SHORTHAND = {"T": "task.length", "H": "model.d_hidden", "rho": "model.recurrent_radius", "clip": "optim.clip_norm",
             "steps": "train.num_steps", "lr": "optim.lr", "seed": "seed", "cell": "model.cell"}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, overrides = configs.parse_arg(arg)
    c = base_config()
    if variant in ("default", "full"):
        pass
    elif variant == "smoke":
        c.task.update(length=20, batch_size=8, eval_batches=1, eval_batch_size=32)
        c.model.update(d_hidden=8)
        c.train.update(num_steps=20, checkpoint_steps=(0, 10), checkpoint_every=10, eval_every=10, log_every=5)
    else:
        raise ValueError(f"unknown variant {variant!r} of gradient_flow; choose default (= full) or smoke")
    for k, v in overrides.items():
        if k == "cell":  # another cell: its own default options
            c.model.update(cell=v, cell_options="")
        elif k == "fb":
            c.model.cell_options = configs.with_option(c.model.cell_options, "forget_bias", str(float(v)))
        elif k == "init":
            if v == "irnn":
                c.model.update(cell="elman", cell_options=IRNN)
            elif v in ("orthogonal", "identity"):
                c.model.cell_options = configs.with_option(c.model.cell_options, "recurrent_init", v)
            else:
                raise ValueError(f"init must be orthogonal, identity or irnn, got {v!r}")
        else:
            configs.set_dotted(c, SHORTHAND.get(k, k), v)
    c.lock()
    return c


# ----------------------------------------------------------------------------- grids

LSTM_FB1 = {"model.cell": "lstm", "model.cell_options": "forget_bias=1.0"}
LSTM_FB0 = {"model.cell": "lstm", "model.cell_options": "forget_bias=0.0"}
LSTM_CHRONO = {"model.cell": "lstm", "model.cell_options": "chrono=200"}  # Tallec & Ollivier 2018, T_max = T
GRU = {"model.cell": "gru", "model.cell_options": ""}
TANH = {"model.cell": "elman", "model.cell_options": ""}  # tanh, orthogonal W_h (spectral radius 1)
IRNN_CELL = {"model.cell": "elman", "model.cell_options": IRNN}


def full(add):
    """The study behind docs/gradient_flow, sized to run (with its report) well
    within 30 minutes on 2 CPU cores. Adding problem, 1x64 cells, batch 50, Adam 1e-2."""
    for cell in (LSTM_FB1, LSTM_FB0, LSTM_CHRONO, GRU, TANH, IRNN_CELL):  # T = 200, clipping 1.0, 1500 steps
        add(**cell)
    for rho in (0.5, 0.9, 1.1):  # rho = 1.0 is TANH: orthogonal has spectral radius 1
        add(**TANH, **{"model.recurrent_radius": rho, "train.num_steps": 1000})
    for cell in ({**TANH, "model.recurrent_radius": 1.1}, IRNN_CELL):  # without clipping
        add(**cell, **{"optim.clip_norm": 0.0, "train.num_steps": 1000})
    # Adam's first update moves every weight by about lr whatever the gradient's
    # scale, so lr 1e-2 makes an identity W_h explode at once: the IRNN also at 1e-4.
    add(**IRNN_CELL, **{"optim.lr": 1e-4, "train.num_steps": 1000})
    for clip in (1.0, 0.0):  # plain SGD, whose step clipping bounds (Adam's is bounded by lr anyway)
        add(**TANH, **{"model.recurrent_radius": 1.1, "optim.name": "sgd", "optim.lr": 0.1, "optim.clip_norm": clip,
                       "train.num_steps": 1000})
    for cell in (LSTM_FB1, TANH):
        add(**cell, **{"task.length": 100, "train.num_steps": 1000})
        add(**cell, **{"task.length": 400, "train.num_steps": 0})  # probes at initialisation only


def sweep(add):
    """Every registered cell (LSTM with forget bias 0 and 1, the tanh RNN, IRNN)
    x T in {100, 200, 400} x clipping on/off, and the tanh RNN at spectral radius
    0.5 .. 1.1; 1500 steps each."""

    others = [{"model.cell": n, "model.cell_options": ""} for n in cells.available() if n not in ("lstm", "elman")]
    for cell in (LSTM_FB1, LSTM_FB0, TANH, IRNN_CELL, *others):
        for length in (100, 200, 400):
            for clip in (1.0, 0.0):
                add(**cell, **{"task.length": length, "optim.clip_norm": clip})
    for rho in (0.5, 0.9, 1.0, 1.1):
        for length in (100, 200, 400):
            for clip in (1.0, 0.0):
                add(**TANH, **{"model.recurrent_radius": rho, "task.length": length, "optim.clip_norm": clip})


def smoke(add):
    add(**LSTM_FB1)
    add(**TANH)


GRIDS = {"full": (full, "default"), "sweep": (sweep, "default"), "smoke": (smoke, "smoke")}


def trials(grid: str = "full") -> list[tuple[str, dict]]:
    """(variant, dotted overrides) of every trial of a grid."""
    fn, variant = GRIDS[grid]
    out: list[tuple[str, dict]] = []
    fn(lambda **kw: out.append((variant, kw)))
    return out


def resolve(variant: str, overrides: dict) -> ml_collections.ConfigDict:
    c = get_config(variant)
    c.unlock()
    for k, v in overrides.items():
        configs.set_dotted(c, k, str(v))
    c.lock()
    return c


# ----------------------------------------------------------------------------- trial names


def describe(config: Any) -> dict:
    """What a trial is, from its config (a ConfigDict or config.json's dict)."""

    get = (lambda path: _get(config, path))
    opts = configs.parse_options(get("model.cell_options"))
    cell, rho, clip = get("model.cell"), float(get("model.recurrent_radius")), float(get("optim.clip_norm"))
    init = opts.get("recurrent_init", "orthogonal")
    nonlinearity = opts.get("nonlinearity", "tanh")
    tag = ""
    if cell == "elman":
        family = "IRNN" if (init, nonlinearity) == ("identity", "relu") else f"{nonlinearity} RNN"
        tag = "_irnn" if family == "IRNN" else ("" if nonlinearity == "tanh" else f"_{nonlinearity}")
    elif cell == "lstm" and opts.get("chrono"):
        family, tag = f"LSTM chrono {int(opts['chrono'])}", f"_chrono{int(opts['chrono'])}"
    elif cell == "lstm":
        fb = float(opts.get("forget_bias", 1.0))
        family, tag = f"LSTM fb={fb:g}", f"_fb{fb:g}"
    else:
        family = cell.upper() if len(cell) <= 4 else cell
    if init != "orthogonal" and family != "IRNN":
        family, tag = f"{family} ({init})", f"{tag}_{init}"
    optim, lr, default = get("optim.name"), float(get("optim.lr")), base_config().optim
    opt_tag = ("" if optim == default.name else f"_{optim}") + ("" if lr == default.lr else f"_lr{lr:g}")
    label = family + (f" rho={rho:g}" if rho else "") + opt_tag.replace("_lr", " lr=").replace("_", " ")
    label += "" if clip else " no clip"
    name = f"{cell}{tag}{f'_rho{rho:g}' if rho else ''}{opt_tag}_T{get('task.length')}_{'clip' if clip else 'noclip'}"
    if get("task.name") != "adding":
        name = f"{get('task.name')}_{name}"
    if int(get("seed")):
        name += f"_seed{get('seed')}"
    return {"name": name, "label": label, "family": family, "cell": cell, "init": init,
            "nonlinearity": nonlinearity if cell == "elman" else None,
            "forget_bias": float(opts.get("forget_bias", 1.0)) if cell == "lstm" and not opts.get("chrono") else None,
            "chrono": int(opts.get("chrono", 0)) if cell == "lstm" else None,
            "radius": rho, "clip": clip, "optimizer": optim, "lr": lr, "T": int(get("task.length")),
            "task": get("task.name"),
            "num_steps": int(get("train.num_steps")), "d_hidden": int(get("model.d_hidden"))}


def _get(config: Any, dotted: str) -> Any:
    node = config
    for p in dotted.split("."):
        node = node[p]
    return node


# ----------------------------------------------------------------------------- running the study


def run_study(root: str, grid: str = "full", parallel: int = 1) -> list[dict]:
    """Every trial of ``grid`` in root/<trial name>, through launch's one runner (each
    trial a process of rnnlab.main, ``parallel`` at once; a rerun resumes unfinished
    trials and skips finished or non-finite ones). Returns launch's outcome per trial."""
    import launch

    return launch.run_sweep(THIS_FILE, root, grid=grid, parallel=parallel)


# ----------------------------------------------------------------------------- probes


def run_status(workdir: str) -> dict:
    """'finished', 'non-finite loss at step N', or the run's state ('failed', 'running',
    'unknown', ...), read from status.json (result.json for runs from before it)."""
    from rnnlab.report import gather

    run = gather.run_state(workdir)
    non_finite = run["state"] == "non-finite"
    text = f"non-finite loss at step {run['step']}" if non_finite else run["state"]
    return {"status": text, "non_finite": non_finite, "non_finite_step": run["step"] if non_finite else None}


def _trial_dirs(workdirs_or_root: str | list[str]) -> list[str]:
    if isinstance(workdirs_or_root, str):
        root = workdirs_or_root
        if os.path.exists(os.path.join(root, "config.json")):
            return [root]
        return sorted(os.path.join(root, d) for d in os.listdir(root)
                      if os.path.exists(os.path.join(root, d, "config.json")))
    return list(workdirs_or_root)


def _floats(a) -> list:
    return [float(f"{x:.6g}") if np.isfinite(x) else None for x in np.asarray(a, np.float64).ravel()]  # 6 digits


def _range(norms) -> float | None:
    """max / min over the positive values (None if none): orders of magnitude spanned."""

    pos = norms[norms > 0]
    return float(pos.max() / pos.min()) if pos.size else None


def _h_magnitude(model, params, xs) -> dict:
    """Mean and max |h_t| of the top layer's output along the probe batch's trajectory: an
    exploding state shows here even when the gradient's range looks tame."""
    _, hs = probes.carry_trajectory(model.stack, params["stack"], xs)
    a = np.abs(np.asarray(hs, np.float64))
    return {"h_abs_mean": float(a.mean()), "h_abs_max": float(a.max())}


def _fit(norms, min_lag: int, max_lag: int | None) -> dict:


    f = probes.fit_decay_rate(jnp.asarray(norms, jnp.float32), min_lag=min_lag, max_lag=max_lag)
    return {"rate": float(f.rate), "log_rate": float(f.log_rate), "r2": float(f.r2), "n_points": int(f.n_points),
            "min_lag": min_lag, "max_lag": max_lag}


def _jacobian_predictions(model, params, xs_TxBxD, window: int) -> dict:
    """Per-step rates the step Jacobians J_t = d carry_t / d carry_{t-1} predict for
    lags 1..window (J_t for t in [T-window, T-1]), geometric means over t and
    examples: 'spectral' exp(mean log ||J_t||_2), an upper bound on the per-step
    factor; 'rms' exp(mean log ||J_t||_F / sqrt(C)), the factor for a gradient
    spread evenly over the C carry directions; 'lyapunov' the fitted per-step rate
    of ||J_{T-1} ... J_{T-k}||_2 over k (the gradient's rate when it aligns with the
    top singular direction)."""



    n_steps = xs_TxBxD.shape[0]
    window = min(window, n_steps - 1)
    # Only the last `window` steps, started from the carry the full forward pass
    # reaches there: the same Jacobians, at a fraction of the cost (T x B x C^2 numbers).
    carries, _ = probes.carry_trajectory(model.stack, params["stack"], xs_TxBxD)
    carry0 = jax.tree.map(lambda c: c[n_steps - window - 1], carries)
    jp = probes.jacobian_products(model.stack, params["stack"], xs_TxBxD[n_steps - window:], carry0=carry0,
                                  max_lag=window)
    j_TxBxCxC = np.asarray(jp.step_jacobians_TxBxCxC, np.float64)
    n_carry = j_TxBxCxC.shape[-1]
    rms_TxB = np.linalg.norm(j_TxBxCxC, axis=(-2, -1)) / math.sqrt(n_carry)
    spec_TxB = np.asarray(jp.step_norms_TxB, np.float64)
    prod_R = np.exp(np.mean(np.log(np.asarray(jp.spectral_norms_RxB, np.float64)), axis=1))
    lyap = probes.fit_decay_rate(jnp.asarray(prod_R), jnp.asarray(jp.lags_R))
    out = {"window": window, "n_examples": int(xs_TxBxD.shape[1]), "carry_size": n_carry,
           "spectral": float(np.exp(np.mean(np.log(spec_TxB)))), "rms": float(np.exp(np.mean(np.log(rms_TxB)))),
           "lyapunov": float(lyap.rate), "lyapunov_r2": float(lyap.r2), "product_norms_R": _floats(prod_R)}
    if model.stack.cell.name == "elman":
        out["pascanu_bound"] = float(probes.pascanu_bound(params["stack"]["layer_0"]["forward"], model.stack.cell).per_step)
    return out


def probe_trial(workdir: str, *, batch_size: int = 32, jacobian_batch: int = 8, window: int = 100) -> dict:
    """Probes at every snapshot of a trial, read back from its Orbax checkpoints:
    ||dL/dcarry_t|| for the task loss at every t (and per carry component), decay
    fits, gate statistics, recurrent spectral radii; the step-Jacobian predictions
    at the first and last snapshot."""


    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    desc = describe(config)
    model, spec = sequence.build(config)
    like = jax.eval_shape(model.init, jax.random.key(0))
    b = sequence.probe_batch(config, batch_size)
    xs, targets, mask = (jnp.asarray(a) for a in b)
    n_steps = spec.length
    window = min(window, n_steps - 1)
    steps = checkpoint.snapshot_steps(workdir)
    snaps = {}
    for step in steps:
        params = checkpoint.load_snapshot_params(workdir, step, like)
        gn = probes.task_grad_norms(model, params, xs, targets, mask)
        norms_T = np.asarray(gn.norms_T, np.float64)
        lag_T = n_steps - 1 - np.arange(n_steps)
        in_window = lag_T <= window
        s = {"step": step, "loss": float(gn.loss), "norms_T": _floats(norms_T),
             "component_norms_T": {k: _floats(v) for k, v in gn.component_norms.items()},
             "fit_all": _fit(norms_T, 1, None), "fit_window": _fit(norms_T, 1, window),
             "range_window": _range(norms_T[in_window]),
             # signed: the fitted log-rate per step (< 0 decays, > 0 grows), which the range cannot tell
             "log_rate_window": _fit(norms_T, 1, window)["log_rate"],
             **_h_magnitude(model, params, xs),
             "range_window_from_lag1": _range(norms_T[in_window & (lag_T >= 1)]),
             "zeros_in_window": int(np.sum(norms_T[in_window] == 0)),  # underflowed below float32's range
             "component_range_window": {k: _range(np.asarray(v, np.float64)[in_window])
                                        for k, v in gn.component_norms.items()},
             "gates": {k: float(v) for k, v in probes.gate_statistics(model.stack, params["stack"], xs).items()
                       if np.ndim(v) == 0},
             "recurrent_radius": [float(seq_lib.spectral_radius(w)) for w in jnp.split(
                 params["stack"]["layer_0"]["forward"]["w_h_HxG"], model.stack.cell.n_gates, axis=1)]}
        if step in (steps[0], steps[-1]):
            xj = xs[:, :jacobian_batch]
            s["jacobian"] = _jacobian_predictions(model, params, xj, window)
            sub_T = np.sqrt(np.sum(np.asarray(gn.norms_TxB, np.float64)[:, :jacobian_batch] ** 2, axis=1))
            s["jacobian"]["fit_same_examples"] = _fit(sub_T, 1, window)
        snaps[str(step)] = s
    evals = [{"step": r["step"], "loss": r["loss"]} for r in writers.read_metrics(workdir, "eval")]
    train_rows = writers.read_metrics(workdir, "train")
    result_path = os.path.join(workdir, "result.json")
    result = json.load(open(result_path)) if os.path.exists(result_path) else None
    return {**desc, **run_status(workdir), "workdir": os.path.abspath(workdir), "baseline": spec.baseline,
            "window": window,
            "probe_batch": batch_size, "snapshots": snaps, "eval": evals, "result": result,
            "train": [{k: r.get(k) for k in ("step", "loss", "grad_norm", "param_norm", "update_norm")}
                      for r in train_rows],
            "max_grad_norm": max((r["grad_norm"] for r in train_rows if isinstance(r.get("grad_norm"), float)),
                                 default=None)}


# ----------------------------------------------------------------------------- report


def report(workdirs_or_root: str | list[str], out_dir: str, **probe_kw) -> dict:
    """Regenerate the report from the trials' checkpoints: report.json (every
    number behind every figure), summary.csv, curves.csv, eval.csv, figures
    (PNG + SVG) and README.md in ``out_dir``. Returns report.json's content."""
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    dirs = _trial_dirs(workdirs_or_root)
    if not dirs:
        raise FileNotFoundError(f"no trial (a folder with config.json) in {workdirs_or_root}")
    trials_ = {}
    for wd in dirs:
        print(f"probing {wd}", flush=True)
        t = probe_trial(wd, **probe_kw)
        trials_[t["name"]] = t
    study = {"trials": len(trials_), "train_seconds": sum((t["result"] or {}).get("train_seconds") or 0
                                                          for t in trials_.values()),
             "not_finished": {t["name"]: t["status"] for t in trials_.values() if t["status"] != "finished"}}
    rep = {"trials": trials_, "claims": claims(trials_), "study": study}
    rep["figures"] = figures(trials_, rep["claims"], out_dir)
    rep["report_seconds"] = time.time() - t0
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    _write_csvs(trials_, out_dir)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(markdown(rep))
    print(f"report written to {out_dir} in {rep['report_seconds']:.0f} s", flush=True)
    return rep


def _find(trials_: dict, **want) -> dict | None:
    for t in trials_.values():
        if all(t.get(k) == v for k, v in want.items()):
            return t
    return None


def _first(t: dict) -> dict:
    return t["snapshots"][min(t["snapshots"], key=int)]


def _last(t: dict) -> dict:
    return t["snapshots"][max(t["snapshots"], key=int)]


def claims(trials_: dict) -> dict:
    """The classic results, each with its numbers and a verdict (None: the trial
    it needs is not in this report)."""
    out: dict[str, Any] = {}
    study = {"T": 200, "task": "adding", "clip": 1.0, "optimizer": "adam", "lr": base_config().optim.lr, "radius": 0.0,
             "init": "orthogonal"}
    tanh = _find(trials_, cell="elman", nonlinearity="tanh", **study)
    lstm = _find(trials_, cell="lstm", forget_bias=1.0, **study)
    if tanh is not None:
        s0 = _first(tanh)
        jac = s0.get("jacobian", {})
        fit = jac.get("fit_same_examples", {})
        rate = fit.get("rate")
        out["a_tanh_decay"] = {
            "trial": tanh["name"], "step": s0["step"], "lags": [1, tanh["window"]],
            "fitted_rate": rate, "fit_r2": fit.get("r2"), "fitted_rate_probe_batch": s0["fit_window"]["rate"],
            "predicted_rate_rms": jac.get("rms"), "predicted_rate_spectral": jac.get("spectral"),
            "lyapunov_rate": jac.get("lyapunov"), "pascanu_bound": jac.get("pascanu_bound"),
            "rel_error_rms": rate / jac["rms"] - 1 if jac else None,
            "rel_error_spectral": rate / jac["spectral"] - 1 if jac else None,
            "exponential": fit.get("r2", 0) > 0.95,
            "holds_rms": abs(rate / jac["rms"] - 1) < 0.1 if jac else None,
            "holds_spectral": abs(rate / jac["spectral"] - 1) < 0.1 if jac else None,
        }
    if lstm is not None:
        w = lstm["window"]
        s0, s1 = _first(lstm), _last(lstm)
        out["a_lstm_flat"] = {
            "trial": lstm["name"], "window_lags": [0, w],
            "init_range": s0["range_window"], "init_range_from_lag1": s0["range_window_from_lag1"],
            "init_fitted_rate": s0["fit_window"]["rate"],
            "trained_step": s1["step"], "trained_range": s1["range_window"],
            "trained_range_from_lag1": s1["range_window_from_lag1"], "trained_fitted_rate": s1["fit_window"]["rate"],
            "init_range_h": s0["component_range_window"].get("layer_0/h"),
            "trained_range_h": s1["component_range_window"].get("layer_0/h"),
            "holds_at_init": s0["range_window"] < 10, "holds_after_training": s1["range_window"] < 10,
        }
    chrono = _find(trials_, cell="lstm", chrono=200, **study)
    if chrono is not None:
        s0, s1 = _first(chrono), _last(chrono)
        out["a_lstm_chrono"] = {
            "trial": chrono["name"], "window_lags": [0, chrono["window"]], "init_range": s0["range_window"],
            "init_range_from_lag1": s0["range_window_from_lag1"], "init_fitted_rate": s0["fit_window"]["rate"],
            "trained_step": s1["step"], "trained_range": s1["range_window"],
            "mse": (chrono["result"] or {}).get("eval_loss"),
            "first_solved_step": (chrono["result"] or {}).get("first_solved_step"),
            "holds_at_init": s0["range_window"] < 10, "holds_after_training": s1["range_window"] < 10,
        }
    if lstm is not None and tanh is not None and lstm["result"] and tanh["result"]:
        base = lstm["baseline"]
        lm, tm = lstm["result"]["eval_loss"], tanh["result"]["eval_loss"]
        out["b_adding_T200"] = {
            "lstm_trial": lstm["name"], "tanh_trial": tanh["name"], "baseline": base, "target": base / 10,
            "lstm_mse": lm, "lstm_first_solved_step": lstm["result"]["first_solved_step"],
            "lstm_steps": lstm["result"]["step"], "tanh_mse": tm, "tanh_mse_over_baseline": tm / base,
            "tanh_steps": tanh["result"]["step"], "lstm_holds": lm < base / 10,
            "tanh_near_baseline": tm / base > 0.8,  # near: within 20% of the baseline
        }
    return out


# ----------------------------------------------------------------------------- figures


def _plt():
    from rnnlab.report import style

    return style.pyplot()


def _save(fig, out_dir: str, stem: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"{stem}.{ext}")
        fig.savefig(path, dpi=120 if ext == "png" else None, bbox_inches="tight")
        paths.append(os.path.basename(path))
    _plt().close(fig)
    return paths


def _colors(names) -> dict[str, Any]:
    """A distinct colour per trial of one figure: tab10, then darker extras."""
    palette = [_plt().get_cmap("tab10")(i) for i in range(10)]
    palette += ["black", "saddlebrown", "darkolivegreen", "navy", "darkmagenta", "teal", "goldenrod"]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _curve(ax, norms_T, **kw):

    y = np.array([np.nan if v is None or v <= 0 else v for v in norms_T])
    ax.semilogy(np.arange(len(y)), y, **kw)


def figures(trials_: dict, claims_: dict, out_dir: str) -> dict:
    """Every figure; returns {figure stem: {files, trials}} (numbers in report.json)."""
    plt = _plt()
    figs = {}
    by_t: dict[int, list[dict]] = {}
    for t in trials_.values():
        by_t.setdefault(t["T"], []).append(t)
    for length, group in sorted(by_t.items()):
        main = [t for t in group if not t["radius"] and t["clip"]] or group
        trained = [t for t in main if len(t["snapshots"]) > 1]
        color = _colors([t["name"] for t in group])
        fig, axes = plt.subplots(1, 2 if trained else 1, figsize=(11 if trained else 5.5, 4), sharey=True, squeeze=False)
        axes = axes[0]
        for t in main:
            _curve(axes[0], _first(t)["norms_T"], label=t["label"], color=color[t["name"]])
        for t in trained:
            _curve(axes[1], _last(t)["norms_T"], label=f"{t['label']} (step {_last(t)['step']})", color=color[t["name"]])
        for ax, title in zip(axes, ("at initialisation", "after training"), strict=False):
            ax.set(title=f"{title}, adding T={length}", xlabel="t (time step of h_t)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("||dL/d state_t||  (LSTM: (c, h))")
        figs[f"grad_norms_T{length}"] = {"files": _save(fig, out_dir, f"grad_norms_T{length}"),
                                         "trials": [t["name"] for t in main]}
        if trained:
            fig, axes = plt.subplots(1, len(trained), figsize=(3.6 * len(trained), 3.4), sharey=True, squeeze=False)
            for ax, t in zip(axes[0], trained, strict=True):
                for k in sorted(t["snapshots"], key=int):
                    _curve(ax, t["snapshots"][k]["norms_T"], label=f"step {k}")
                ax.set(title=t["label"], xlabel="t")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
            axes[0][0].set_ylabel(f"||dL/d state_t||, T={length}")
            figs[f"grad_norms_over_training_T{length}"] = {
                "files": _save(fig, out_dir, f"grad_norms_over_training_T{length}"), "trials": [t["name"] for t in trained]}
        fig, ax = plt.subplots(figsize=(6, 4))
        for t in group:
            if t["eval"]:
                ax.semilogy([r["step"] for r in t["eval"]], [r["loss"] for r in t["eval"]], "o-" if t["clip"] else "x--",
                            ms=3, label=t["label"], color=color[t["name"]])
        base = group[0]["baseline"]
        ax.axhline(base, color="k", ls=":", label="baseline (predict 1)")
        ax.axhline(base / 10, color="grey", ls="--", label="baseline / 10")
        ax.set(title=f"adding T={length}: evaluation MSE", xlabel="training step", ylabel="MSE")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figs[f"eval_loss_T{length}"] = {"files": _save(fig, out_dir, f"eval_loss_T{length}"),
                                        "trials": [t["name"] for t in group]}
    variants = [t for t in trials_.values() if t["cell"] == "elman" and t["T"] == 200 and t["clip"]]
    if len(variants) > 1:
        figs["tanh_rnn_initialisation_T200"] = _variants_figure(variants, out_dir, _colors([t["name"] for t in variants]))
    if "a_tanh_decay" in claims_:
        figs["claim_a_T200"] = _claim_a_figure(trials_, claims_, out_dir)
    return figs


def _variants_figure(variants: list[dict], out_dir: str, color: dict) -> dict:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for t in sorted(variants, key=lambda t: (t["family"], t["radius"])):
        _curve(axes[0], _first(t)["norms_T"], label=t["label"], color=color[t["name"]])
        _curve(axes[1], _last(t)["norms_T"], label=f"{t['label']} (step {_last(t)['step']})", color=color[t["name"]])
    tanh = {}  # one trial per initial radius (trials that differ only in training share their init)
    for t in variants:
        if t["family"] == "tanh RNN" and "jacobian" in _first(t):
            tanh.setdefault(round(_first(t)["recurrent_radius"][0], 6), t)
    tanh = list(tanh.values())
    radius = [_first(t)["recurrent_radius"][0] for t in tanh]
    order = sorted(range(len(tanh)), key=lambda i: radius[i])
    r = [radius[i] for i in order]
    s0 = [_first(tanh[i]) for i in order]
    axes[2].plot(r, [s["jacobian"]["fit_same_examples"]["rate"] for s in s0], "ko-", label="fitted rate of ||dL/dh_t||")
    axes[2].plot(r, [s["jacobian"]["rms"] for s in s0], "s--", label="rms step-Jacobian prediction")
    axes[2].plot(r, [s["jacobian"]["spectral"] for s in s0], "^--", label="mean ||J_t||_2 (upper bound)")
    axes[2].plot(r, r, ":", color="grey", label="Pascanu bound: sigma_max(W_h)")
    axes[0].set(title="tanh RNN / IRNN at initialisation, T=200", xlabel="t", ylabel="||dL/dh_t||")
    axes[1].set(title="after training", xlabel="t")
    axes[2].set(title="per-step decay rate at initialisation (lags 1-100)", xlabel="spectral radius of W_h",
                ylabel="rate per step")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return {"files": _save(fig, out_dir, "tanh_rnn_initialisation_T200"), "trials": [t["name"] for t in variants]}


def _claim_a_figure(trials_: dict, claims_: dict, out_dir: str) -> dict:

    plt = _plt()
    c = claims_["a_tanh_decay"]
    tanh = trials_[c["trial"]]
    s0 = _first(tanh)
    n = len(s0["norms_T"])
    lag = np.arange(n)[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _curve(axes[0], s0["norms_T"], color="k", label="measured (probe batch)")
    anchor = s0["norms_T"][n - 2]  # lag 1
    for key, style, text in (("fitted_rate_probe_batch", "-", "fit"), ("predicted_rate_rms", "--", "rms prediction"),
                             ("predicted_rate_spectral", ":", "spectral (bound)")):
        axes[0].semilogy(np.arange(n), anchor * c[key] ** (lag - 1.0), style, label=f"{text}: {c[key]:.3f}/step")
    axes[0].set(title=f"claim (a): {tanh['label']} at init, T={n}", xlabel="t", ylabel="||dL/dh_t||")
    axes[0].set_ylim(min(v for v in s0["norms_T"] if v) / 10, max(s0["norms_T"]) * 10)
    if "a_lstm_flat" in claims_:
        lstm = trials_[claims_["a_lstm_flat"]["trial"]]
        for s, style in ((_first(lstm), "-"), (_last(lstm), "--")):
            y = np.array(s["norms_T"], dtype=float)
            _curve(axes[1], y / y[-1], ls=style, label=f"{lstm['label']} step {s['step']}")
        if "a_lstm_chrono" in claims_:
            chrono = trials_[claims_["a_lstm_chrono"]["trial"]]
            y = np.array(_first(chrono)["norms_T"], dtype=float)
            _curve(axes[1], y / y[-1], ls="-.", label=f"{chrono['label']} step {_first(chrono)['step']}")
        axes[1].axvspan(n - 1 - lstm["window"], n - 1, color="grey", alpha=0.1, label="last 100 steps")
        axes[1].axhline(0.1, color="grey", ls=":", label="1/10 of lag 0")
        axes[1].set(title="LSTM: norm relative to lag 0", xlabel="t")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return {"files": _save(fig, out_dir, "claim_a_T200"), "trials": [c["trial"]]}


# ----------------------------------------------------------------------------- tables


def _summary_rows(trials_: dict) -> list[dict]:
    rows = []
    for t in trials_.values():
        res = t["result"] or {}
        for _, s in s_items(t):
            jac = s.get("jacobian", {})
            rows.append({
                "trial": t["name"], "label": t["label"], "T": t["T"], "snapshot_step": s["step"],
                "probe_loss": s["loss"], "fit_rate_1_all": s["fit_all"]["rate"], "fit_r2_1_all": s["fit_all"]["r2"],
                "window": t["window"], "fit_rate_window": s["fit_window"]["rate"], "range_window": s["range_window"],
                "log_rate_window": s.get("log_rate_window"), "h_abs_mean": s.get("h_abs_mean"),
                "h_abs_max": s.get("h_abs_max"),
                "recurrent_radius": s["recurrent_radius"][0], "memory_time": s["gates"].get("layer_0/memory_time"),
                "jac_rms_rate": jac.get("rms"), "jac_spectral_rate": jac.get("spectral"),
                "jac_lyapunov_rate": jac.get("lyapunov"), "jac_fit_rate_same_examples": jac.get("fit_same_examples", {}).get("rate"),
                "final_eval_mse": res.get("eval_loss"), "baseline": t["baseline"], "train_steps": res.get("step"),
                "first_solved_step": res.get("first_solved_step"), "max_grad_norm": t["max_grad_norm"],
            })
    return rows


def _write_csvs(trials_: dict, out_dir: str) -> None:
    rows = _summary_rows(trials_)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, "curves.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "snapshot_step", "t", "lag", "norm", "component", "component_norm"])
        for t in trials_.values():
            for k, s in s_items(t):
                n = len(s["norms_T"])
                for comp, vals in s["component_norms_T"].items():
                    for i, v in enumerate(vals):
                        w.writerow([t["name"], k, i, n - 1 - i, s["norms_T"][i], comp, v])
    with open(os.path.join(out_dir, "eval.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "step", "eval_mse", "baseline"])
        for t in trials_.values():
            for r in t["eval"]:
                w.writerow([t["name"], r["step"], r["loss"], t["baseline"]])


def s_items(t: dict):
    return sorted(((int(k), s) for k, s in t["snapshots"].items()), key=lambda kv: kv[0])


def _g(x, fmt=".3g") -> str:
    return "-" if x is None else (format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x))


def _range_text(s: dict) -> str:
    return _g(s["range_window"]) + (f" ({s['zeros_in_window']} lags underflow to 0)" if s["zeros_in_window"] else "")


def markdown(rep: dict) -> str:
    trials_, c = rep["trials"], rep["claims"]
    lines = ["# Gradient flow through time: tanh RNN, LSTM, GRU, IRNN on the adding problem", "",
             "Generated by `python experiments/gradient_flow.py --root=ROOT --out=DIR` from the trials' Orbax "
             "snapshots (probes recomputed here); every number below and behind every figure is in "
             "`report.json` (curves also in `curves.csv`, `eval.csv`, `summary.csv`).", ""]
    study = rep.get("study")
    if study and "runs" in study:  # a report of the older form: each run's process seconds, no train_seconds
        study = {"trials": len(study["runs"]), "wall_seconds": sum(r["seconds"] for r in study["runs"]),
                 "not_finished": {n: t["status"] for n, t in trials_.items() if t["status"] != "finished"}}
    if study:
        bad = study["not_finished"]
        took = (f"{study['train_seconds'] / 60:.1f} min of training (result.json's train_seconds)"
                if "train_seconds" in study else f"{study['wall_seconds'] / 60:.1f} min of trial processes, "
                "one after the other")
        lines += [f"{study['trials']} trials, {took}, report {rep.get('report_seconds', 0) / 60:.1f} min."
                  + (" Not finished (status.json): " + ", ".join(f"{n} ({st})" for n, st in bad.items()) + "."
                     if bad else ""), ""]
    lines += ["## Claims", ""]
    if "a_tanh_decay" in c:
        a = c["a_tanh_decay"]
        lines += [
            f"**(a) tanh RNN at initialisation** (`{a['trial']}`, lags {a['lags'][0]}-{a['lags'][1]}): "
            f"||dL/dh_t|| decays exponentially (log-linear fit R^2 = {_g(a['fit_r2'], '.4f')}) at "
            f"**{_g(a['fitted_rate'], '.4f')} per step** (on the {rep['trials'][a['trial']]['snapshots'][str(a['step'])]['jacobian']['n_examples']} "
            f"examples whose Jacobians were taken; {_g(a['fitted_rate_probe_batch'], '.4f')} on the whole probe batch).",
            f"- rms prediction exp(mean_t log(||J_t||_F / sqrt(H))): {_g(a['predicted_rate_rms'], '.4f')} "
            f"(fit is {100 * a['rel_error_rms']:+.1f}%): **{'holds' if a['holds_rms'] else 'does not hold'}** within 10%.",
            f"- spectral exp(mean_t log ||J_t||_2): {_g(a['predicted_rate_spectral'], '.4f')} "
            f"(fit is {100 * a['rel_error_spectral']:+.1f}%): {'within' if a['holds_spectral'] else 'not within'} 10%; "
            "it is an upper bound on the per-step factor, attained only by a gradient aligned with the top "
            "singular vector of every J_t.",
            f"- top Lyapunov rate of the products J_(T-1)...J_(T-k): {_g(a['lyapunov_rate'], '.4f')}; "
            f"Pascanu bound gamma*sigma_max(W_h) = {_g(a['pascanu_bound'], '.4f')}.", ""]
    if "a_lstm_flat" in c:
        a = c["a_lstm_flat"]
        w = a["window_lags"][1]
        lines += [
            f"**(a) LSTM, forget-gate bias 1** (`{a['trial']}`): max/min of ||dL/d(c,h)_t|| over lags 0-{w}: "
            f"**{_g(a['init_range'])} at initialisation** (lags 1-{w}: {_g(a['init_range_from_lag1'])}; fitted "
            f"{_g(a['init_fitted_rate'], '.4f')}/step) -> within one order of magnitude: "
            f"**{'yes' if a['holds_at_init'] else 'no'}**; after training (step {a['trained_step']}): "
            f"**{_g(a['trained_range'])}** (lags 1-{w}: {_g(a['trained_range_from_lag1'])}; "
            f"{_g(a['trained_fitted_rate'], '.4f')}/step) -> **{'yes' if a['holds_after_training'] else 'no'}**. "
            f"The h part alone, ||dL/dh_t||: {_g(a['init_range_h'])} at initialisation, {_g(a['trained_range_h'])} "
            "after training.", ""]
    if "a_lstm_chrono" in c:
        a = c["a_lstm_chrono"]
        lines += [
            f"**(a') LSTM, chrono initialisation** (Tallec & Ollivier 2018: b_f = log U(1, 199), b_i = -b_f; "
            f"`{a['trial']}`): max/min over lags {a['window_lags'][0]}-{a['window_lags'][1]}: "
            f"**{_g(a['init_range'])} at initialisation** ({_g(a['init_fitted_rate'], '.4f')}/step) -> within one "
            f"order of magnitude: **{'yes' if a['holds_at_init'] else 'no'}**; after training (step "
            f"{a['trained_step']}): {_g(a['trained_range'])}; adding MSE {_g(a['mse'], '.4g')} (first below the "
            f"target at step {_g(a['first_solved_step'])}). The forget-gate bias that keeps the gradient at "
            "initialisation is a spread of forgetting times up to T, not 1.", ""]
    if "b_adding_T200" in c:
        b = c["b_adding_T200"]
        lines += [
            f"**(b) adding, T = 200** (baseline {b['baseline']:.4f}, target < {b['target']:.4f}): "
            f"LSTM fb=1 **MSE {b['lstm_mse']:.4g}** after {b['lstm_steps']} steps (first below target at step "
            f"{_g(b['lstm_first_solved_step'])}) -> **{'holds' if b['lstm_holds'] else 'does not hold'}**; tanh RNN "
            f"**MSE {b['tanh_mse']:.4g}** = {b['tanh_mse_over_baseline']:.2f} x baseline after {b['tanh_steps']} steps "
            f"-> near the baseline (> 0.8 x): **{'yes' if b['tanh_near_baseline'] else 'no'}**.", ""]
    if not c:
        lines += ["(The trials here do not include the T=200 adding trials the claims need.)", ""]
    lines += ["## Trials", "",
              "Rates are per step, fitted to log ||dL/d state_t|| against the lag (lags 1 to T-1 unless noted); "
              "range = max/min over lags 0-100; memory time = -1/log(mean forget/update gate).", "",
              "| trial | T | status | steps | final eval MSE | / baseline | first < base/10 | rate at init "
              "| rate trained | range init | range trained | max grad norm | radius init |", "|" + "---|" * 13]
    for t in sorted(trials_.values(), key=lambda t: (t["T"], t["name"])):
        s0, s1, res = _first(t), _last(t), t["result"] or {}
        mse = res.get("eval_loss")
        lines.append(
            f"| {t['label']} (`{t['name']}`) | {t['T']} | {t['status']} | {res.get('step', _last(t)['step'])} | "
            f"{_g(mse, '.4g')} | "
            f"{_g(None if mse is None else mse / t['baseline'], '.3f')} | {_g(res.get('first_solved_step'))} | "
            f"{s0['fit_all']['rate']:.4f} | {s1['fit_all']['rate']:.4f} | {_range_text(s0)} | {_range_text(s1)} | {_g(t['max_grad_norm'])} | {s0['recurrent_radius'][0]:.3f} |")
    pairs = [(t, trials_[t["name"][: -len("_clip")] + "_noclip"]) for t in trials_.values()
             if t["name"].endswith("_clip") and t["name"][: -len("_clip")] + "_noclip" in trials_]
    if pairs:
        lines += ["", "## Clipping (global norm 1.0, Pascanu et al. 2013) on and off", "",
                  "| trial | optimizer | with clipping | without |", "|---|---|---|---|"]
        for on, off in pairs:
            cell = [f"{x['status']}, MSE {_g((x['result'] or {}).get('eval_loss'), '.4g')}" for x in (on, off)]
            lines.append(f"| {on['label']} | {on['optimizer']} lr {on['lr']:g} | {cell[0]} | {cell[1]} |")
    lines += ["", "## Figures", ""]
    for stem, fig in rep["figures"].items():
        lines += [f"### {stem}", "", f"![{stem}]({fig['files'][0]})", ""]
    lines += ["## Notes", "",
              "- Probes: a fixed batch per trial (`rnnlab.tasks.sequence.probe_batch`, never trained on); L is the task loss "
              "(squared error at the last step, through the trained readout); the gradient is w.r.t. the carry after "
              "each step (probes.grad_norms_through_time): h for the tanh RNN/GRU/IRNN, (c, h) for the LSTM, whose "
              "c-part at lag 0 is 0 (h_(T-1) is computed from c_(T-1) inside the last step).",
              "- Jacobian predictions use the step Jacobians J_t = d carry_t / d carry_(t-1) of the first "
              "examples of the probe batch along their own trajectories, J_t for the steps of the fitted lags.",
              "- A trial stopped by a non-finite loss has no result; its last snapshot is from before it.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder of trial workdirs (one per trial)")
    p.add_argument("--out", default="", help="report folder (default: ROOT/report)")
    p.add_argument("--run", action="store_true", help="run (or resume) the grid's trials first (through launch)")
    p.add_argument("--grid", default="full", choices=sorted(GRIDS))
    p.add_argument("--parallel", type=int, default=1, help="with --run: trials at once")
    p.add_argument("--probe_batch", type=int, default=32)
    p.add_argument("--jacobian_batch", type=int, default=8)
    args = p.parse_args(argv)
    if args.run:
        run_study(args.root, args.grid, args.parallel)
    report(args.root, args.out or os.path.join(args.root, "report"), batch_size=args.probe_batch,
           jacobian_batch=args.jacobian_batch)


if __name__ == "__main__":
    main()
