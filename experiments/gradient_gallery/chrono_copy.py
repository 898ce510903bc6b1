"""Tallec & Ollivier 2018, "Can recurrent neural networks warp time?": chrono
initialisation. On the copying task at a long lag, an LSTM whose forget-gate biases
are log U(1, T_max - 1) (chrono, T_max the lag's order) learns where the standard
initialisation (forget-gate bias 1) sits at the memoryless baseline far longer.

This file is also the figure's experiment for ``launch``: its trials are runs of the
copying task (``experiments/copy_lengths.py``'s config, ``rnnlab.tasks.sequence``)
through ``rnnlab.main``, one per (initialisation, seed), so they checkpoint, resume
and go to SLURM like any study's:
  python -m launch run experiments/gradient_gallery/chrono_copy.py --root=runs/gradient_gallery/chrono_copy --grid=figure
The figure command runs (or resumes) them and draws the curves from their metrics."""

from __future__ import annotations

import json
import os

from experiments import copy_lengths
from experiments.gradient_gallery.common import Check, Result

NAME = "chrono_copy"
TITLE = "Tallec & Ollivier 2018: chrono initialisation on the copying task"
CLAIM = ("On the copying task at a long lag, chrono initialisation of the LSTM's forget gate learns where the "
         "standard initialisation stays near the memoryless baseline.")

METRIC = "eval/loss_over_baseline"  # 1: the memoryless strategy; 0.1: solved
SEEDS = (0, 1, 2)
FULL = {"delay": 200, "steps": 2000, "H": 64, "schedule": "cosine", "lr": 3e-3}  # T = delay + 20
SMOKE = {"delay": 10, "steps": 60, "H": 8, "schedule": "cosine", "lr": 3e-3}
PILOT = {"delay": 200, "steps": 8000, "H": 64, "schedule": "constant", "lr": 1e-3}  # tried on PILOT_SEEDS
PILOT_SEEDS = (100, 101)
INITS = {"forget bias 1": "forget_bias=1.0", "chrono": "chrono={T}"}


def get_config(arg: str = ""):
    return copy_lengths.get_config(arg)


def _add_trials(add, size: dict, seeds=SEEDS) -> None:
    for options in INITS.values():
        for seed in seeds:
            add(**{"task.length": size["delay"], "model.cell": "lstm", "seed": seed,
                   "model.cell_options": options.format(T=size["delay"] + 20),
                   "model.d_hidden": size["H"], "train.num_steps": size["steps"],
                   "train.eval_every": max(size["steps"] // 20, 1), "train.log_every": max(size["steps"] // 20, 1),
                   "optim.schedule": size["schedule"], "optim.lr": size["lr"]})


def figure(add):
    """The figure's trials: both initialisations x SEEDS at the FULL size."""
    _add_trials(add, FULL)


def smoke(add):
    """The same at the SMOKE size (seconds a trial)."""
    _add_trials(add, SMOKE)


def name(overrides: dict) -> str:
    init = "chrono" if overrides["model.cell_options"].startswith("chrono") else "fb1"
    return f"{init}_seed{overrides['seed']}"


def pilot(add):
    """A longer budget at a constant rate, on seeds the figure does not use."""
    _add_trials(add, PILOT, PILOT_SEEDS)


GRIDS = {"figure": (figure, "default"), "smoke": (smoke, "default"), "pilot": (pilot, "default")}


def run(smoke: bool, work: str = os.path.join("runs", "gradient_gallery")) -> Result:
    from launch import sweep, trials
    from rnnlab.report import curves, stats
    from rnnlab.train import writers

    def run_grid(grid: str):
        root = os.path.join(work, f"{NAME}_{grid}")
        ts = trials.expand(os.path.abspath(__file__), root, grid)
        # 'diverged': ended far above the baseline (a smoke run's few steps); its curve is still data
        # tiny smoke trials run one after another in this process (no start-up per trial)
        outcomes = sweep.run_trials(ts, root, executor="inline" if smoke else "local", parallel=2)
        bad = [o for o in outcomes if o["state"] not in ("finished", "diverged")]
        if bad:
            raise RuntimeError(f"{NAME}: trials did not finish: {bad} (rerun the command: finished trials are kept)")
        return root, ts

    def trial_seconds(ts) -> float:  # the trials' own time (result.json), also when this command reused them
        total = 0.0
        for t in ts:
            with open(os.path.join(t.workdir, "result.json")) as f:
                total += json.load(f)["total_seconds"]
        return total

    root, ts = run_grid("smoke" if smoke else "figure")
    pilot_final, seconds = {}, trial_seconds(ts)
    if not smoke:  # the longer budget tried on other seeds, recorded with the figure
        pilot_ts = run_grid("pilot")[1]
        seconds += trial_seconds(pilot_ts)
        for t in pilot_ts:
            pilot_final[t.name] = curves.metric_curve(writers.read_metrics(t.workdir), METRIC)[-1][1]
    by_init = {label: [] for label in INITS}
    rows = []
    for t in ts:
        label = "chrono" if t.name.startswith("chrono") else "forget bias 1"
        points = curves.metric_curve(writers.read_metrics(t.workdir), METRIC)
        by_init[label].append(points)
        rows += [{"init": label, "trial": t.name, "step": s, "loss_over_baseline": v} for s, v in points]
    final = {label: stats.mean_ci([c[-1][1] for c in cs]) for label, cs in by_init.items()}
    size = SMOKE if smoke else FULL
    checks = [Check("chrono's 95% interval of the final loss / baseline lies below forget bias 1's "
                    "(upper end of chrono's - lower end of fb1's)",
                    final["chrono"]["ci_high"] - final["forget bias 1"]["ci_low"], "<", 0.0)]
    numbers = {"final_loss_over_baseline": final, "root": root, "pilot_final_loss_over_baseline": pilot_final,
               "trial_process_seconds": seconds}
    return Result(settings={"task": f"copying memory, delay {size['delay']} (T = {size['delay'] + 20}), 10 symbols "
                                    "of 8", "model": f"1 x {size['H']} LSTM",
                            "inits": {k: v.format(T=size["delay"] + 20) for k, v in INITS.items()}, "seeds": list(SEEDS),
                            "optimizer": f"Adam 3e-3, cosine, clip 1.0, batch 32, {size['steps']} steps",
                            "trials": f"through launch, root {root}",
                            "pilot": f"{PILOT['steps']} steps at a constant Adam rate {PILOT['lr']:g}, seeds "
                                     f"{list(PILOT_SEEDS)}, both initialisations (final values in the record)"},
                  checks=checks, numbers=numbers, rows=rows, figure=_figure(by_init, size))


def _figure(by_init, size):
    from rnnlab.report import curves, style

    plt = style.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (label, cs), col in zip(by_init.items(), ("C3", "C0"), strict=True):
        for c in cs:
            curves.plot_curve(ax, c, color=col, alpha=0.3, lw=0.8, marker=None)
        curves.plot_curve(ax, curves.mean_curve(cs), color=col, lw=2, label=f"{label} (mean of {len(cs)} seeds)")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="memoryless baseline")
    ax.axhline(0.1, color="k", lw=0.8, ls=":", label="solved (a tenth)")
    ax.set_yscale("log")
    ax.set_xlabel("step"), ax.set_ylabel("eval loss / memoryless baseline")
    ax.set_title(f"copying task, delay {size['delay']}: LSTM initialisations")
    ax.legend()
    return fig
