"""A sweep's report, built with the report toolkit (rnnlab.report): every trial's
metrics.jsonl and status.json gathered into one table, trials that differ only in
their seed grouped into a configuration (labelled by the keys that vary across the
sweep; the study's name when only the seed varies), with the mean, standard
deviation and a 95% Student-t interval over seeds of the main metric, the best
step, and learning curves. Written as summary.csv (per configuration), trials.csv
(per trial), report.md and curves.png.

The main metric is 'KIND/KEY' of metrics.jsonl rows: the experiment's module-level
METRIC (e.g. METRIC = "valid/nll"), else 'eval/loss' or 'valid/nll', whichever the
trials logged. Lower is better. A metric that cannot be negative (a loss, NLL, bpc,
perplexity) has its interval's lower end clipped at 0; a 2-seed interval is flagged.
"""

from __future__ import annotations

import math
import os

import numpy as np

from launch import status as status_lib
from launch.trials import Trial, pick_metric
from rnnlab.report import curves, gather, groups, stats, style, tables


def gather_sweep(trials: list[Trial], metric: str | None = None, study: str = "sweep"
                 ) -> tuple[list[dict], list[dict], str | None]:
    """(per-trial rows, per-configuration rows, the metric used)."""
    records = [gather.read_trial(t.workdir, t.name) for t in trials]
    metric = pick_metric([r for rec in records for r in rec["metrics"]], metric)
    per_trial = []
    for t, rec in zip(trials, records, strict=True):
        st = status_lib.trial_status(t, None, metric)
        per_trial.append({**st, "seed": rec["config"].get("seed"), "curve": curves.metric_curve(rec["metrics"], metric),
                          "train_curve": curves.metric_curve(rec["metrics"], "train/loss")})
    by_name = {r["name"]: r for r in per_trial}
    positive = stats.nonnegative(metric)
    per_config = []
    for label, members in groups.group(records, fallback=study).items():
        rows = [by_name[m["name"]] for m in members]
        done = [r for r in rows if r["state"] == "finished" and r["curve"]]
        final = stats.mean_ci([r["last"] for r in done], nonnegative=positive)
        best = stats.mean_ci([r["best"] for r in done], nonnegative=positive)
        curve = curves.mean_curve([r["curve"] for r in done])
        per_config.append({
            "config": label, "trials": " ".join(r["name"] for r in rows), "seeds": len(rows),
            "finished": len(done), "not_finished": len(rows) - len(done),
            **{f"final_{k}": v for k, v in final.items() if k != "n"},
            **{f"best_{k}": v for k, v in best.items() if k != "n"},
            "best_step_of_mean": min(curve, key=lambda sv: sv[1])[0] if curve else None, "mean_curve": curve,
        })
    per_config.sort(key=lambda r: (math.isnan(r["final_mean"]), r["final_mean"]))
    return per_trial, per_config, metric


def write_report(trials: list[Trial], out_dir: str, metric: str | None = None, title: str = "Sweep",
                 study: str = "sweep") -> dict:
    """report.md, summary.csv, trials.csv and curves.png in ``out_dir``; ``study`` labels the
    configuration when only the seed varies."""
    os.makedirs(out_dir, exist_ok=True)
    per_trial, per_config, metric = gather_sweep(trials, metric, study)
    tables.write_csv(os.path.join(out_dir, "trials.csv"), [{k: v for k, v in r.items() if "curve" not in k}
                                                          for r in per_trial])
    tables.write_csv(os.path.join(out_dir, "summary.csv"), [{k: v for k, v in r.items() if k != "mean_curve"}
                                                            for r in per_config])
    plot_curves(per_trial, per_config, metric, os.path.join(out_dir, "curves.png"))
    md = markdown(per_trial, per_config, metric, title)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(md)
    print(md, flush=True)
    return {"metric": metric, "trials": per_trial, "configs": per_config, "out_dir": out_dir}


def _final_stats(r: dict) -> dict:
    return {"n": r["finished"], **{k[6:]: v for k, v in r.items() if k.startswith("final_")}}


def markdown(per_trial: list[dict], per_config: list[dict], metric: str | None, title: str) -> str:
    clip = " (lower end clipped at 0: it cannot be negative)" if stats.nonnegative(metric) else ""
    lines = [f"# {title}", "", f"Main metric: `{metric}` (lower is better). Per configuration: the final value's "
             "mean ± sample std over seeds and its 95% confidence interval (Student t, n-1 degrees of freedom)"
             f"{clip}; the best value's mean; the step where the seeds' mean curve is lowest.", ""]
    lines += tables.markdown_table(
        ["configuration", "seeds finished", "final: mean ± std [95% CI]", "best mean", "best step"],
        [[r["config"], f"{r['finished']}/{r['seeds']}", tables.ci_text(_final_stats(r)), r["best_mean"],
          r["best_step_of_mean"]] for r in per_config])
    lines += tables.footnotes([_final_stats(r) for r in per_config])
    lines += ["", "## Trials", ""]
    lines += tables.markdown_table(
        ["trial", "state", "step", "final", "best (step)", "error"],
        [[r["name"], r["state"], r["step"], r["last"], f"{tables.fmt(r['best'])} ({tables.fmt(r['best_step'])})",
          (r["error"] or "")[:120]] for r in per_trial])
    lines += ["", "![learning curves](curves.png)", ""]
    return "\n".join(lines)


def plot_curves(per_trial: list[dict], per_config: list[dict], metric: str | None, path: str) -> list[str]:
    """Training loss of each trial (left) and the main metric: each trial thin, the mean over
    seeds thick (right); sparse curves (one evaluation per trial) are drawn with markers."""
    plt = style.pyplot()
    fig, (ax_train, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_name = {r["name"]: r for r in per_trial}
    for i, g in enumerate(per_config):
        color = f"C{i % 10}"
        for j, name in enumerate(g["trials"].split()):
            r = by_name[name]
            curves.plot_curve(ax_train, r["train_curve"], color=color, alpha=0.5, lw=0.8,
                              label=g["config"] if j == 0 else None)
            curves.plot_curve(ax_metric, r["curve"], color=color, alpha=0.35, lw=0.8)
        curves.plot_curve(ax_metric, g["mean_curve"], color=color, lw=2, label=g["config"])
    ax_train.set(xlabel="step", ylabel="train/loss", title="training loss (each trial)")
    ax_metric.set(xlabel="step", ylabel=metric or "-", title=f"{metric}: mean over seeds (thick), trials (thin)")
    for ax in (ax_train, ax_metric):
        ys = [np.asarray(line.get_ydata(), np.float64) for line in ax.lines if len(line.get_ydata())]
        if not ys:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes)
        elif all(np.all(y > 0) for y in ys):  # losses over orders of magnitude
            ax.set_yscale("log")
    handles, labels = ax_metric.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7)
        fig.subplots_adjust(bottom=0.12 + 0.05 * math.ceil(len(labels) / 3))
    return style.save(fig, path)
