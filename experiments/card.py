"""The cell report card: how a cell compares, at matched parameters, on memory, recall,
classification and language, with its gradient flow at initialisation and its speed.

    python -m experiments.card CELL [--options 'k=v,...'] [--budget smoke|small|full] [--seeds N]
        [--root runs/cards] [--out docs/cards/CELL/BUDGET] [--parallel 2] [--executor local|inline|slurm ...]

Each task is a grid of trials (launch: they resume, run in parallel, go to SLURM with
``--executor=slurm``), the width of every model matched to the task's parameter budget
(``lstm_vs_gru.matched_width``), the rate chosen per task on validation among the budget's
rates, ``--seeds`` seeds at each. Then the card, in ``--out``: ``README.md`` (a table per
task: the cell against the reference rows stored under ``docs/cards/REF/BUDGET/card.json``,
mean ± std [95% interval] over seeds, the better one marked only where the intervals
separate), the figures (validation curves per task, MQAR accuracy against the number of
pairs, ||dL/dh_t|| against the lag at initialisation) and ``card.json`` behind them.

Tasks (``TASKS``; batches a pure function of (seed, step), chance levels known):
  adding            Arjovsky et al. 2016's adding problem (test MSE; chance 1/6)
  copy              copying memory (test cross-entropy per step; memoryless baseline known)
  selective_copy    Gu & Dao 2023 (accuracy at the markers; chance 1/n_symbols)
  mqar_pP           Arora et al. 2023's multi-query associative recall with P pairs (accuracy; chance 1/n)
  digits            scikit-learn's 8x8 digits pixel by pixel, T = 64 (test accuracy; chance 0.1)
  permuted_digits   the same in one fixed permutation of the pixels (as permuted MNIST), T = 64
  mnist1d           MNIST-1D, T = 40 (test accuracy; chance 0.1)
  japanese_vowels   9 speakers from 12 cepstra per frame, 7..29 frames (test accuracy; chance 1/9)
  forecast_S        S = co2 (monthly, H = 12) or sunspots (yearly, H = 11): rolling-origin test MASE, with
                    sMAPE, beside the seasonal-naive forecast and a classical model (Holt-Winters, AR(9))
                    refitted at every origin (``rnnlab.data.forecast``)
  char_lm           tiny Shakespeare (embedded corpus at smoke), test bits per character
and, measured in this process: gradient flow at initialisation (``rnnlab.probes``: the span
max/min of ||dL/dh_t|| over the lags, the fitted signed decay rate, mean and max |h|) at two
lengths, and speed (training and inference tokens/s, the sequential path and, where the cell
has one, the parallel path).

Budgets: ``smoke`` (seconds: the pipeline, tests), ``small`` (one cell in about 20 minutes on
2 CPU cores), ``full`` (longer training and more rates: for an accelerator or a sweep).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import lstm_vs_gru as base  # noqa: E402
from rnnlab import cells as cells_lib  # noqa: E402
from rnnlab import configs, probes, scan  # noqa: E402
from rnnlab.data import forecast, synthetic  # noqa: E402
from rnnlab.report import stats, tables  # noqa: E402

THIS_FILE = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(THIS_FILE))
BUDGETS = ("smoke", "small", "full")
FIRST_REFERENCES = ("lstm", "gru", "elman")  # listed first; then every other card stored under docs/cards/

# Per budget and task: the task section (sequence tasks) or the LM's, steps, batch, parameter budget.
_N_SYMBOLS = {"smoke": 4, "small": 8, "full": 16}
_MQAR_PAIRS = {"smoke": (2, 4), "small": (2, 4, 8), "full": (4, 8, 16, 32)}
_STEPS = {"smoke": 20, "small": 1500, "full": 10000}
_LRS = {"smoke": (1e-2,), "small": (3e-3, 1e-2), "full": (1e-3, 3e-3, 1e-2)}
_PARAMS = {"smoke": 1_500, "small": 6_000, "full": 20_000}
_LM_PARAMS = {"smoke": 3_000, "small": 20_000, "full": 100_000}


def tasks(budget: str) -> dict[str, dict[str, Any]]:
    """The card's tasks at ``budget``: name -> spec (task section or 'lm', metric, chance)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {BUDGETS}")
    small = budget == "smoke"
    n = _N_SYMBOLS[budget]
    t: dict[str, dict[str, Any]] = {
        "adding": dict(task=dict(name="adding", length=20 if small else 100), metric="test_loss", better="min",
                       chance=synthetic.adding_baseline()),
        "copy": dict(task=dict(name="copy", length=5 if small else 50, n_copy=5, n_symbols=8), metric="test_loss",
                     better="min", chance=synthetic.copy_memory_baseline(5 if small else 50, 5, 8)),
        "selective_copy": dict(task=dict(name="selective_copy", length=12 if small else 64, n_copy=4 if small else 8,
                                         n_symbols=n), metric="test_accuracy", better="max", chance=1 / n),
        **{f"mqar_p{p}": dict(task=dict(name="mqar", length=p, n_symbols=max(2 * p, 8)), metric="test_accuracy",
                              better="max", chance=1 / max(2 * p, 8)) for p in _MQAR_PAIRS[budget]},
        "digits": dict(task=dict(name="digits", length=8 if small else 64), metric="test_accuracy", better="max",
                       chance=0.1),
        "permuted_digits": dict(task=dict(name="permuted_digits", length=64), metric="test_accuracy", better="max",
                                chance=0.1),
        "mnist1d": dict(task=dict(name="mnist1d", length=40), metric="test_accuracy", better="max", chance=0.1),
        "japanese_vowels": dict(task=dict(name="japanese_vowels", length=29), metric="test_accuracy", better="max",
                                chance=1 / 9),
        **{f"forecast_{name}": dict(task=dict(name=name, length=forecast.SPECS[name]["window"]), metric="test_mase",
                                    better="min", chance=None, forecast=name) for name in forecast.SERIES},
        "char_lm": dict(task="lm", metric="test_bpc", better="min", chance=None),
    }
    return t


# ----------------------------------------------------------------------------- configs and grids


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """``TASK@BUDGET,cell=NAME,cell_options='k=v;...',seed=S,lr=LR``: one trial of the card."""
    variant, overrides = configs.parse_arg(arg)
    task, _, budget = ("adding@smoke" if variant == "default" else variant).partition("@")
    budget = budget or "smoke"
    spec = tasks(budget).get(task)
    if spec is None:
        raise ValueError(f"unknown card task {task!r}; choose one of {sorted(tasks(budget))}")
    c = base.base_config()
    base._set_task(c, "smoke_lm" if (spec["task"] == "lm" and budget == "smoke") else
                   "char_lm" if spec["task"] == "lm" else "smoke")
    c.study.update(task=task, param_budget=(_LM_PARAMS if spec["task"] == "lm" else _PARAMS)[budget])
    steps = _STEPS[budget]
    c.train.update(num_steps=steps, log_every=max(steps // 5, 1), eval_every=max(steps // 5, 1))
    if spec["task"] != "lm":
        c.task.update(**spec["task"], batch_size=8 if budget == "smoke" else 32, eval_batches=2,
                      eval_batch_size=64 if budget == "smoke" else 250)
        c.train.update(checkpoint_every=max(steps // 2, 1))
    if "forecast" in spec:  # a few hundred training windows: the test forecast is the best validation checkpoint's
        c.train.update(eval_every=max(steps // 15, 1), early_stop_evals=5)
    c.model.update(cell="gru", cell_options="")
    for k, v in overrides.items():
        if k == "cell":
            c.model.cell = v
        elif k == "cell_options":
            c.model.cell_options = str(v).replace(";", ",")
        else:
            configs.set_dotted(c, base.SHORTHAND.get(k, k), v)
    c.model.d_hidden = base.matched_width(c)
    c.lock()
    return c


def _cell_and_options(token: str) -> tuple[str, str]:
    """'mlstm:heads=2;chunk_size=32' -> ('mlstm', 'heads=2;chunk_size=32') (launch --cells entries)."""
    name, _, options = token.partition(":")
    return name, options


def _grid(budget: str, seeds: int):
    """The card's trials at ``budget``: every task x rate x seed for each cell of ``cells``
    (launch --cells=NAME or NAME:k=v;k=v), as overrides of the grid's variant."""
    def grid(add, cells=("gru",)):
        from rnnlab.train.config import flat

        default = flat(get_config("default").to_dict())  # the variant every grid's trials start from
        for token in cells:
            cell, options = _cell_and_options(token)
            for task in tasks(budget):
                for lr in _LRS[budget]:
                    for seed in range(seeds):
                        arg = f"{task}@{budget},cell={cell},lr={lr},seed={seed}"
                        arg += f",cell_options={options}" if options else ""
                        got = flat(get_config(arg).to_dict())
                        add(**{k: v for k, v in got.items() if v != default[k]})
    grid.__name__ = f"{budget}_s{seeds}"
    return grid


def __getattr__(name: str):
    """Grids by name for launch: BUDGET (its default seeds) or BUDGET_sN (N seeds)."""
    budget, _, seeds = name.partition("_s")
    if budget in BUDGETS and (not seeds or seeds.isdigit()):
        return _grid(budget, int(seeds) if seeds else SEEDS_DEFAULT[budget])
    raise AttributeError(name)


def describe(config: Any) -> dict:
    """A trial's name and facts (launch names the workdirs with it)."""
    get = lambda k: base._get(config, k)  # noqa: E731
    cell, options, task = get("model.cell"), get("model.cell_options"), get("study.task")
    label = cell + (f"[{options}]" if options else "")
    lr, seed = float(get("optim.lr")), int(get("seed"))
    return {"name": f"{task}_{label}_lr{lr:g}_seed{seed}".replace(",", ";").replace("=", "-"), "task": task,
            "cell": label, "lr": lr, "seed": seed, "d_hidden": int(get("model.d_hidden")),
            "layers": int(get("model.num_layers")), "budget": int(get("study.param_budget")),
            "num_steps": int(get("train.num_steps"))}


METRIC = None
SEEDS_DEFAULT = {"smoke": 1, "small": 3, "full": 3}


# ----------------------------------------------------------------------------- measured here


def gradient_flow(cell: str, options: str, budget: str, d_hidden: int = 32) -> dict:
    """At initialisation: ||dL/dh_t|| of a loss at the last step, on random inputs, at two lengths;
    the span (max/min over the lags), the signed decay rate fitted over the lags, mean and max |h|."""
    c = cells_lib.get(cell, **configs.parse_options(options))
    out = {}
    for n_steps in ((20, 100) if budget == "smoke" else (100, 1000)):
        params = c.init(jax.random.key(0), 8, d_hidden)
        xs = jax.random.normal(jax.random.key(1), (n_steps, 16, 8))
        gn = probes.grad_norms_through_time(c, params, xs, d_h=d_hidden)
        norms = np.asarray(gn.norms_T, np.float64)
        pos = norms[norms > 0]
        fit = probes.fit_decay_rate(jnp.asarray(norms), min_lag=1)
        _, hs = probes.carry_trajectory(c, params, xs, d_h=d_hidden)
        h = np.abs(np.asarray(hs, np.float64))
        out[str(n_steps)] = {"span": float(pos.max() / pos.min()) if pos.size else None,
                             "log_rate": float(fit.log_rate), "h_abs_mean": float(h.mean()),
                             "h_abs_max": float(h.max()), "norms_T": [float(v) for v in norms]}
    return out


def speed(cell: str, options: str, budget: str, d_hidden: int = 64) -> dict:
    """Tokens per second of one layer on this machine (B = 16, D = H): a training step
    (forward and backward of scan.run) and inference (forward), each path the cell has;
    the median of 5 timed calls after a compiling one."""
    c = cells_lib.get(cell, **configs.parse_options(options))
    n_steps, batch = (32, 16) if budget == "smoke" else (256, 16)
    params = c.init(jax.random.key(0), d_hidden, d_hidden)
    xs = jax.random.normal(jax.random.key(1), (n_steps, batch, d_hidden))
    carry0 = c.initial_carry(batch, d_hidden)
    out = {}
    for path in ("sequential", "parallel") if c.has_parallel else ("sequential",):
        fwd = jax.jit(lambda p, x, path=path: scan.run(c, p, carry0, x, path=path)[1])
        train = jax.jit(jax.grad(lambda p, x, path=path: jnp.sum(scan.run(c, p, carry0, x, path=path)[1] ** 2)))
        for kind, fn in (("inference", fwd), ("training", train)):
            jax.block_until_ready(fn(params, xs))
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, xs))
                times.append(time.perf_counter() - t0)
            out[f"{kind}_{path}_tokens_per_s"] = n_steps * batch / float(np.median(times))
    return out


# ----------------------------------------------------------------------------- the card


def _summarize(rows: list[dict], budget: str) -> dict:
    metrics = {t: ("eval_loss" if t != "char_lm" else "valid_bpc", s["metric"], s["better"], s["metric"])
               for t, s in tasks(budget).items()}
    return base.summarize(rows, metrics)


def _references(budget: str, skip: str, refs_dir: str) -> dict[str, dict]:
    out = {}
    stored = sorted(os.listdir(refs_dir)) if os.path.isdir(refs_dir) else []
    for ref in [*FIRST_REFERENCES, *(c for c in stored if c not in FIRST_REFERENCES)]:
        path = os.path.join(refs_dir, ref, budget, "card.json")
        if ref != skip and os.path.exists(path):
            with open(path) as f:
                out[ref] = json.load(f)
    return out


def _reference_rows(refs: dict[str, dict], task: str, mine: dict, better: str) -> list[dict]:
    """Each stored card's row for ``task``, marked better or worse than ``mine`` only where the
    95% intervals separate."""
    others = [_row(ref, r["table"].get(task, {}).get("cell")) for ref, r in refs.items()]
    for o in others:
        o["vs_cell"] = ("-" if not (o["test"] and mine["test"]) else
                        "better" if stats.separated(o["test"], mine["test"]) and (
                            (o["test"]["mean"] < mine["test"]["mean"]) == (better == "min")) else
                        "worse" if stats.separated(o["test"], mine["test"]) else "not separated")
    return others


def rerender(out_dir: str, refs_dir: str = "") -> dict:
    """Re-write a stored card (``out_dir``/card.json and README.md) with the reference rows of
    the cards stored now, its own numbers, figures and measurements as they are: no trial and no
    measurement is re-run. For a card made before other cells' cards were stored."""
    with open(os.path.join(out_dir, "card.json")) as f:
        rep = json.load(f)
    refs = _references(rep["budget"], rep["cell"], refs_dir or os.path.join(REPO_ROOT, "docs", "cards"))
    for task, t in rep["table"].items():
        t["references"] = _reference_rows(refs, task, t["cell"], t["better"])
    rep["verdict"] = verdict(rep)
    from rnnlab.train import writers

    writers.write_json_atomic(os.path.join(out_dir, "card.json"), rep)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(markdown(rep))
    return rep


def _row(cell: str, best: dict | None) -> dict:
    if not best:
        return {"cell": cell, "lr": None, "parameters": None, "d_hidden": None, "test": None}
    return {"cell": cell, "lr": best["lr"], "parameters": best["parameters"], "d_hidden": best["d_hidden"],
            "test": best["test"], **({"test_smape": best["test_smape"]} if "test_smape" in best else {})}


def _vs_fixed(value: float, test: dict | None) -> str:
    """A deterministic answer (seasonal-naive, the classical model) against the cell's seeds: better
    or worse where it lies outside the cell's 95% interval (lower is better), the mean with one seed."""
    if not test:
        return "-"
    lo, hi = (test["ci_low"], test["ci_high"]) if test.get("n", 0) >= 2 else (test["mean"], test["mean"])
    return "better" if value < lo else "worse" if value > hi else "not separated"


def card(root: str, cell_token: str, budget: str, out_dir: str, refs_dir: str = "") -> dict:
    """The card of the trials under ``root`` for ``cell_token``: card.json, README.md, figures;
    the reference rows are every card stored as ``refs_dir`` (default docs/cards)/REF/BUDGET/card.json."""
    from rnnlab.report import style

    cell, options = _cell_and_options(cell_token)
    label = cell + (f"[{options.replace(';', ',')}]" if options else "")
    # the card's own trials, picked by the cell and options in their config (the study's gather labels them
    # its own way, elman as 'tanh'), relabelled with the card's label
    rows = [{**r, "cell": label} for r in base.gather(root) if _is_cell(r, cell, options) and r["task"] in tasks(budget)]
    if not rows:
        raise ValueError(f"no trials of {label} at budget {budget} under {root}; run them first")
    summary = _summarize(rows, budget)
    os.makedirs(out_dir, exist_ok=True)
    refs = _references(budget, label, refs_dir or os.path.join(REPO_ROOT, "docs", "cards"))
    table = {}
    for task, spec in tasks(budget).items():
        mine = _row(label, summary.get(task, {}).get("cells", {}).get(label, {}).get("best"))
        mine_rows = [r for r in rows if r["task"] == task]
        table[task] = {"metric": spec["metric"], "better": spec["better"], "chance": spec["chance"], "cell": mine,
                       "references": _reference_rows(refs, task, mine, spec["better"]), "trials": len(mine_rows),
                       "diverged": sum(bool(r["result"].get("diverged")) for r in mine_rows)}
        if "forecast" in spec:  # the classical answers on the same test origins, and the cell's sMAPE
            table[task]["baselines"] = forecast.baselines(spec["forecast"], "test")
            smape = [r["result"]["test_smape"] for r in rows if r["task"] == task and r["lr"] == mine["lr"]]
            mine["test_smape"] = float(np.mean(smape)) if smape else None
    from launch import status as status_lib
    from rnnlab.train import writers

    spans = []  # each trial's process, start to end (launch.json; else its logged steps); the card's wall
    for r in rows:  # time is their union's length
        st = status_lib.read_status(r["workdir"])
        times = [m["time"] for m in writers.read_metrics(r["workdir"]) if "time" in m]
        if st.get("started") and st.get("ended"):
            spans.append((st["started"], st["ended"]))
        elif times:
            spans.append((min(times), max(times)))
    rep = {"cell": label, "budget": budget, "table": table, "trials_count": len(rows),
           "wall_seconds": _union_length(spans) if spans else None,
           "gradient_flow": gradient_flow(cell, options.replace(";", ","), budget),
           "speed": speed(cell, options.replace(";", ","), budget),
           "trials": {r["name"]: {"task": r["task"], "lr": r["lr"], "seed": r["seed"],
                                  "result": {k: v for k, v in r["result"].items() if isinstance(v, (int, float))}}
                      for r in rows}}
    plt = style.pyplot()
    figures = base.plot_curves(rows, summary, out_dir)
    mqar = sorted((int(t[len("mqar_p"):]), v) for t, v in table.items() if t.startswith("mqar_p"))
    if mqar:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([p for p, _ in mqar], [v["cell"]["test"]["mean"] if v["cell"]["test"] else np.nan for _, v in mqar],
                "o-", label=label)
        ax.plot([p for p, _ in mqar], [v["chance"] for _, v in mqar], "k--", lw=1, label="chance")
        ax.set(xlabel="key-value pairs", ylabel="test accuracy", title=f"MQAR at matched parameters ({budget})")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
        style.save(fig, os.path.join(out_dir, "mqar.png"))
        figures.append("mqar.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n, g in rep["gradient_flow"].items():
        norms = np.asarray(g["norms_T"])
        ax.semilogy(np.arange(len(norms))[::-1], np.where(norms > 0, norms, np.nan), label=f"T = {n}")
    ax.set(xlabel="lag (steps before the loss)", ylabel="||dL/dh_t||", title=f"{label} at initialisation")
    ax.legend(fontsize=8)
    style.save(fig, os.path.join(out_dir, "gradient_flow.png"))
    figures.append("gradient_flow.png")
    rep["figures"] = figures
    rep["verdict"] = verdict(rep)
    writers.write_json_atomic(os.path.join(out_dir, "card.json"), rep)
    text = markdown(rep)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    return rep


def _is_cell(row: dict, cell: str, options: str) -> bool:
    """Whether a gathered trial is the card's cell with the card's options, no more and no fewer
    (the study labels a trial by its cell's name: the options are read from its config.json)."""
    with open(os.path.join(row["workdir"], "config.json")) as f:
        model = json.load(f)["model"]
    mine = {k: str(v) for k, v in configs.parse_options(options.replace(";", ",")).items()}
    theirs = {k: str(v) for k, v in configs.parse_options(model.get("cell_options", "")).items()}
    return model["cell"] == cell and theirs == mine


def _union_length(spans: list[tuple[float, float]]) -> float:
    """The length of the union of intervals (trials run in parallel and in sittings: the
    time during which at least one ran)."""
    total, end = 0.0, -np.inf
    for lo, hi in sorted(spans):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def _interval(t: dict) -> tuple[float, float]:
    return (t["ci_low"], t["ci_high"]) if t.get("n", 0) >= 2 else (t["mean"], t["mean"])


def verdict(rep: dict) -> dict:
    """Where the cell stands, in words, from the card's numbers: per task, at chance (its 95%
    interval reaches chance), else against the best reference row (ahead, level, behind: the
    intervals separate or not) and the share of that row's gain over chance it reaches;
    forecasting against the classical model; the gradient's per-step factor at initialisation
    and the size of the state over the longest probe."""
    rows = []
    for task, t in rep["table"].items():
        mine = t["cell"]["test"]
        if not mine:
            continue
        sign = 1.0 if t["better"] == "max" else -1.0
        refs = [r for r in t["references"] if r["test"]]
        best = max(refs, key=lambda r: sign * r["test"]["mean"]) if refs else None
        lo, hi = _interval(mine)
        row = {"task": task, "mean": mine["mean"], "chance": t["chance"], "best_reference": best and best["cell"],
               "best_reference_mean": best and best["test"]["mean"], "share_of_best_gain": None}
        if t["chance"] is not None and (hi >= t["chance"] if sign < 0 else lo <= t["chance"]):
            row["verdict"] = "at chance"
        elif best is None:
            row["verdict"] = "no reference"
        else:
            ahead = sign * (mine["mean"] - best["test"]["mean"]) > 0
            row["verdict"] = (("ahead of " if ahead else "behind ") if stats.separated(mine, best["test"])
                              else "level with ") + best["cell"]
        if t["chance"] is not None and best is not None and sign * (best["test"]["mean"] - t["chance"]) > 0:
            row["share_of_best_gain"] = (mine["mean"] - t["chance"]) / (best["test"]["mean"] - t["chance"])
        if "classical" in t.get("baselines", {}):
            vs = _vs_fixed(t["baselines"]["classical"]["mase"], mine)
            row["verdict"] += {"better": "; behind the classical model", "worse": "; ahead of the classical model",
                               "not separated": "; level with the classical model"}.get(vs, "")
        if t.get("diverged"):
            row["verdict"] += f"; {t['diverged']} of {t['trials']} trials diverged"
        rows.append(row)
    rates = {n: float(np.exp(g["log_rate"])) for n, g in sorted(rep["gradient_flow"].items(), key=lambda kv: int(kv[0]))}
    longest = max(rates, key=int)
    g, factor = rep["gradient_flow"][longest], rates[longest]
    grad = ("at initialisation, ||dL/dh_t|| " + ", ".join(f"x{f:.3f} per step of lag over T = {n}"
                                                          for n, f in rates.items())
            + (f": exploding gradients (x{factor ** 100:.3g} over 100 steps)" if factor > 1 else
               f": vanishing gradients (1/e after about {-1 / g['log_rate']:.0f} steps)" if factor < 1 else ""))
    state = (f"max |h| {g['h_abs_max']:.3g}, mean |h| {g['h_abs_mean']:.3g} over {longest} steps: the state is not "
             "kept within [-1, 1]" if g["h_abs_max"] > 1.0 + 1e-6 else
             f"|h| stays within [-1, 1] over {longest} steps (max {g['h_abs_max']:.3g})")
    return {"tasks": rows, "gradient": grad, "state": state}


def verdict_markdown(v: dict) -> list[str]:
    """The verdict (``verdict``) as Markdown lines: the per-task table, then gradient and state."""
    lines = ["Per task: at chance when the cell's 95% interval reaches chance; else ahead of, level with or behind "
             "the best reference row (the intervals separate or not), and the share of that row's gain over "
             "chance the cell reaches.", ""]
    lines += tables.markdown_table(
        ["task", "this cell", "chance", "best reference", "share of its gain", "verdict"],
        [[r["task"], tables.fmt(r["mean"]), tables.fmt(r["chance"]),
          "-" if r["best_reference"] is None else f"{r['best_reference']} {tables.fmt(r['best_reference_mean'])}",
          "-" if r["share_of_best_gain"] is None else f"{100 * r['share_of_best_gain']:.0f}%", r["verdict"]]
         for r in v["tasks"]])
    return lines + ["", f"- Gradient: {v['gradient']}.", f"- State: {v['state']}."]


def _fmt_test(t: dict | None) -> str:
    return "-" if not t else tables.ci_text(t)


def markdown(rep: dict) -> str:
    cell, budget = rep["cell"], rep["budget"]
    lines = [f"# Report card: {cell} ({budget})", "",
             f"Generated by `python -m experiments.card {cell.split('[')[0]} --budget={budget}`. Every task at matched "
             "parameters, the rate chosen on validation, mean ± std [95% interval] over seeds; a reference row is "
             "called better or worse only where the intervals separate."
             + (f" {rep['trials_count']} trials, {rep['wall_seconds'] / 60:.1f} min of wall time on this machine "
                "(the time during which at least one trial's process ran)." if rep.get("wall_seconds") else ""), ""]
    lines += ["## Where it stands", ""] + verdict_markdown(rep["verdict"]) + ["", "## Tasks", ""]
    for task, t in rep["table"].items():
        chance = "" if t["chance"] is None else f"; chance {t['chance']:.4g}"
        lines += [f"### {task}: {t['metric']} ({'lower' if t['better'] == 'min' else 'higher'} is better{chance})", ""]
        body = [[cell + " (this card)", str(t["cell"]["parameters"]), tables.fmt(t["cell"]["lr"]),
                 _fmt_test(t["cell"]["test"]), ""]]
        body += [[r["cell"], str(r["parameters"]), tables.fmt(r["lr"]), _fmt_test(r["test"]), r["vs_cell"]]
                 for r in t["references"]]
        for name, b in t.get("baselines", {}).items():
            label = f"{name.replace('_', '-')}" + (f": {b['model']}" if "model" in b else "")
            body.append([label, "-", "-", f"{b['mase']:.4g}", _vs_fixed(b["mase"], t["cell"]["test"])])
        lines += tables.markdown_table(["cell", "params", "lr", "test", "vs this cell"], body) + [""]
        if t.get("diverged"):
            lines += [f"{t['diverged']} of this cell's {t['trials']} trials were flagged diverged by the loop (the "
                      "loss far above the task's baseline with the gradient far above the clip); they ran to the end "
                      "and count as they ended.", ""]
        if "baselines" in t:
            smapes = [f"{cell} {tables.fmt(t['cell'].get('test_smape'))}"] + [
                f"{r['cell']} {tables.fmt(r.get('test_smape'))}" for r in t["references"]] + [
                f"{k.replace('_', '-')} {v['smape']:.4g}" for k, v in t["baselines"].items()]
            lines += ["sMAPE (%, mean over seeds): " + ", ".join(smapes) + ". Seasonal-naive and the classical "
                      "model are deterministic, one number each: better or worse where it lies outside the cell's "
                      "95% interval.", ""]
    lines += ["## Gradient flow at initialisation", "",
              "Random inputs, a loss at the last step, H = 32: the span max/min of ||dL/dh_t|| over the lags, the "
              "fitted per-step log-rate (< 0: vanishing, > 0: exploding), and the hidden state's size.", ""]
    lines += tables.markdown_table(["T", "span", "log-rate per step", "mean |h|", "max |h|"],
                                   [[n, tables.fmt(g["span"]), f"{g['log_rate']:+.4f}", tables.fmt(g["h_abs_mean"]),
                                     tables.fmt(g["h_abs_max"])] for n, g in rep["gradient_flow"].items()])
    lines += ["", "## Speed", "", "One layer, B = 16, H = D = 64, tokens per second on this machine (median of 5):", ""]
    lines += tables.markdown_table(["measure", "tokens/s"], [[k.replace("_tokens_per_s", ""), f"{v:,.0f}"]
                                                              for k, v in rep["speed"].items()])
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in rep["figures"]] + [
        "", "Files: `card.json` (everything above, and every trial's result).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    import launch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cell", help="a registered cell, e.g. gru or mlstm")
    p.add_argument("--options", default="", help="the cell's options, 'k=v,k=v'")
    p.add_argument("--budget", default="small", choices=BUDGETS)
    p.add_argument("--seeds", type=int, default=0, help="seeds per task and rate (default: the budget's)")
    p.add_argument("--root", default="runs/cards", help="trial workdirs go to ROOT/CELL/BUDGET")
    p.add_argument("--out", default="", help="the card's folder (default: docs/cards/CELL/BUDGET)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--executor", default="local", choices=("local", "inline", "slurm"),
                   help="local: --parallel child processes; inline: one after another in this process; slurm")
    p.add_argument("--refresh", action="store_true", help="run the trials again (a fresh ROOT/CELL/BUDGET)")
    p.add_argument("--rerender", action="store_true",
                   help="only re-write the stored card at --out with the reference cards stored now (no runs)")
    a = p.parse_args(argv)
    try:  # an unknown cell or option: one line that names it and the choices, not a traceback
        cells_lib.get(a.cell, **configs.parse_options(a.options))
    except (KeyError, TypeError, ValueError) as e:
        p.error(str(e.args[0]) if e.args else str(e))
    token = a.cell + (":" + a.options.replace(",", ";") if a.options else "")
    label = a.cell + (f"[{a.options}]" if a.options else "")
    root = os.path.join(a.root, label.replace("=", "-").replace(",", ";"), a.budget)
    if a.refresh and os.path.isdir(root):
        import shutil

        shutil.rmtree(root)
    out = a.out or os.path.join(REPO_ROOT, "docs", "cards", label, a.budget)
    if a.rerender:
        if not os.path.exists(os.path.join(out, "card.json")):
            p.error(f"--rerender: no card at {out}/card.json; run the card first (without --rerender)")
        rerender(out)
        print(f"card: {out}/README.md re-written with the reference cards stored now", flush=True)
        return 0
    grid = f"{a.budget}_s{a.seeds}" if a.seeds else a.budget
    outcomes = launch.run_sweep(THIS_FILE, root, grid=grid, executor=a.executor, parallel=a.parallel, cells=[token])
    failed = [o for o in outcomes if o["state"] not in ("finished", "diverged")]  # diverged: ended, a result
    if failed:
        print(f"card: {len(failed)} trials did not finish ({', '.join(o['name'] for o in failed[:5])}); "
              "rerun the same command to resume them", file=sys.stderr)
        return 1
    card(root, token, a.budget, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
