"""A sweep's report: every trial's metrics.jsonl gathered into one table, trials that
differ only in their seed grouped into a configuration, with the mean, standard
deviation and a 95% Student-t confidence interval over seeds of the main metric,
the best step, and learning curves. Written as summary.csv (per configuration),
trials.csv (per trial), report.md and curves.png.

The main metric is 'KIND/KEY' of metrics.jsonl rows: the experiment's module-level
METRIC (e.g. METRIC = "valid/nll"), else 'eval/loss' or 'valid/nll', whichever the
trials logged. Lower is better.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
from scipy import stats

from launch import status as status_lib
from launch.trials import Trial, metric_values, pick_metric
from rnnlab.train import writers

SEED_KEYS = ("seed",)  # config keys (last dotted part) that only pick a seed


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _config(trial: Trial) -> dict:
    path = os.path.join(trial.workdir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return _flat(json.load(f))


def mean_ci(values: list[float], level: float = 0.95) -> dict:
    """mean, sample std (ddof 1) and the Student-t interval mean -+ t_(n-1) * std / sqrt(n)."""
    x = np.asarray(values, np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def group_by_config(trials: list[Trial]) -> dict[str, list[Trial]]:
    """Configuration label -> its trials; the label names what differs between configurations."""
    flats = {t.name: _config(t) for t in trials}
    keys = sorted({k for f in flats.values() for k in f})
    varying = [k for k in keys if k.split(".")[-1] not in SEED_KEYS
               and len({json.dumps(f.get(k)) for f in flats.values()}) > 1]
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        f = flats[t.name]
        label = ", ".join(f"{k}={f.get(k)}" for k in varying) or "all"
        groups.setdefault(label, []).append(t)
    return groups


def gather(trials: list[Trial], metric: str | None = None) -> tuple[list[dict], list[dict], str | None]:
    """(per-trial rows, per-configuration rows, the metric used)."""
    rows_by_trial = {t.name: writers.read_metrics(t.workdir) for t in trials}
    metric = pick_metric([r for rows in rows_by_trial.values() for r in rows], metric)
    per_trial = []
    for t in trials:
        st = status_lib.trial_status(t, None, metric)
        values = metric_values(rows_by_trial[t.name], metric)
        per_trial.append({**st, "seed": _config(t).get("seed"), "curve": values,
                          "train_curve": metric_values(rows_by_trial[t.name], "train/loss")})
    by_name = {r["name"]: r for r in per_trial}
    per_config = []
    for label, members in group_by_config(trials).items():
        done = [by_name[t.name] for t in members if by_name[t.name]["state"] == "finished" and by_name[t.name]["curve"]]
        final = mean_ci([r["last"] for r in done])
        best = mean_ci([r["best"] for r in done])
        curve = _mean_curve([r["curve"] for r in done])
        best_step = min(curve, key=lambda sv: sv[1])[0] if curve else None
        per_config.append({
            "config": label, "trials": " ".join(t.name for t in members), "seeds": len(members),
            "finished": len(done), "not_finished": len(members) - len(done),
            **{f"final_{k}": v for k, v in final.items() if k != "n"},
            **{f"best_{k}": v for k, v in best.items() if k != "n"},
            "best_step_of_mean": best_step, "mean_curve": curve,
        })
    per_config.sort(key=lambda r: (math.isnan(r["final_mean"]), r["final_mean"]))
    return per_trial, per_config, metric


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The seeds' mean at the steps every seed logged."""
    if not curves:
        return []
    steps = set.intersection(*({s for s, _ in c} for c in curves))
    by_step = [dict(c) for c in curves]
    return [(s, float(np.mean([c[s] for c in by_step]))) for s in sorted(steps)]


def write_report(trials: list[Trial], out_dir: str, metric: str | None = None, title: str = "Sweep") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    per_trial, per_config, metric = gather(trials, metric)
    _write_csv(os.path.join(out_dir, "trials.csv"), [{k: v for k, v in r.items() if "curve" not in k} for r in per_trial])
    _write_csv(os.path.join(out_dir, "summary.csv"), [{k: v for k, v in r.items() if k != "mean_curve"}
                                                       for r in per_config])
    png = os.path.join(out_dir, "curves.png")
    plot_curves(per_trial, per_config, metric, png)
    md = markdown(per_trial, per_config, metric, title)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(md)
    print(md, flush=True)
    return {"metric": metric, "trials": per_trial, "configs": per_config, "out_dir": out_dir}


def _write_csv(path: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def _g(v, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt) if isinstance(v, float) else str(v)


def markdown(per_trial: list[dict], per_config: list[dict], metric: str | None, title: str) -> str:
    lines = [f"# {title}", "", f"Main metric: `{metric}` (lower is better). Per configuration: the final value's "
             "mean ± sample std over seeds and its 95% confidence interval (Student t, n-1 degrees of freedom); "
             "the best value's mean; the step where the seeds' mean curve is lowest.", "",
             "| configuration | seeds finished | final mean ± std | 95% CI | best mean | best step |",
             "|---|---|---|---|---|---|"]
    for r in per_config:
        lines.append(f"| {r['config']} | {r['finished']}/{r['seeds']} | {_g(r['final_mean'])} ± {_g(r['final_std'])} "
                     f"| [{_g(r['final_ci_low'])}, {_g(r['final_ci_high'])}] | {_g(r['best_mean'])} "
                     f"| {_g(r['best_step_of_mean'])} |")
    lines += ["", "## Trials", "", "| trial | state | step | final | best (step) | error |", "|---|---|---|---|---|---|"]
    for r in per_trial:
        lines.append(f"| {r['name']} | {r['state']} | {r['step']} | {_g(r['last'])} | {_g(r['best'])} "
                     f"({_g(r['best_step'])}) | {(r['error'] or '').replace('|', '/')[:120]} |")
    lines += ["", "![learning curves](curves.png)", ""]
    return "\n".join(lines)


def plot_curves(per_trial: list[dict], per_config: list[dict], metric: str | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_name = {r["name"]: r for r in per_trial}
    for i, g in enumerate(per_config):
        color = f"C{i % 10}"
        for j, name in enumerate(g["trials"].split()):
            r = by_name[name]
            label = g["config"] if j == 0 else None
            if r["train_curve"]:
                ax_train.plot(*zip(*r["train_curve"], strict=True), color=color, alpha=0.5, lw=0.8, label=label)
            if r["curve"]:
                ax_metric.plot(*zip(*r["curve"], strict=True), color=color, alpha=0.35, lw=0.8)
        if g["mean_curve"]:
            ax_metric.plot(*zip(*g["mean_curve"], strict=True), color=color, lw=2, label=g["config"])
    ax_train.set(xlabel="step", ylabel="train/loss", title="training loss (each trial)")
    ax_metric.set(xlabel="step", ylabel=metric or "-", title=f"{metric}: mean over seeds (thick), trials (thin)")
    for ax in (ax_train, ax_metric):
        ys = [np.asarray(line.get_ydata(), np.float64) for line in ax.lines if len(line.get_ydata())]
        if ys and all(np.all(y > 0) for y in ys):  # losses over orders of magnitude
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = ax_metric.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7)
        fig.subplots_adjust(bottom=0.12 + 0.05 * math.ceil(len(labels) / 3))
    fig.savefig(path, dpi=110)
    plt.close(fig)
