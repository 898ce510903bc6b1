"""tanh RNN vs GRU vs LSTM at the protocol of Chung, Gulcehre, Cho & Bengio 2014
("Empirical Evaluation of Gated Recurrent Neural Networks on Sequence Modeling"):
polyphonic music (the Bach chorales as piano rolls, ``rnnlab.data.music``) and
character-level language modelling (tiny Shakespeare), about 20,000 parameters per
model, a learning-rate search per cell chosen on validation only, early stopping on
validation, several seeds at the chosen rate: converged models, not the first
minutes of training (``experiments/lstm_vs_gru.py`` is that study at a fixed, short
budget).

Every trial is a run of the one loop (music: ``rnnlab.tasks.sequence``, next-frame
NLL per step of independent Bernoulli outputs over 88 pitches; text:
``rnnlab.tasks.lm``), its width matched to the budget by
``lstm_vs_gru.matched_width`` (from the model's own init), ending when
``train.early_stop_evals`` evaluations in a row bring no new best validation loss
(or at ``train.num_steps``, a cap); its test numbers are the best validation
checkpoint's.

Grids (``GRIDS``):
  converged_cpu  3 cells x 2 tasks x LRS x SEEDS (54 trials), sized for 2 CPU cores
                 (python -m launch run experiments/lstm_vs_gru_converged.py --grid=converged_cpu
                  --root=runs/lstm_vs_gru_converged --parallel=2; the same command resumes)
  paper          the wider search of PAPER_LRS x PAPER_SEEDS with longer caps, for a cluster:
                  python -m launch run experiments/lstm_vs_gru_converged.py --grid=paper
                  --root=runs/lstm_vs_gru_paper --executor=slurm --cpus=2 --time_min=120   (--dry_run lists it)
  paper_slice    the paper grid's first two trials with a 20-step cap: the cluster path in CI
  smoke          seconds: both tasks, tiny models (the tests)
Report (tables with 95% intervals, every trial's convergence verdict, curves, the comparison
with Chung et al. 2014 and Jozefowicz et al. 2015; --run runs or resumes the grid first):
  python -m experiments.lstm_vs_gru_converged --root=runs/lstm_vs_gru_converged --out=docs/lstm_vs_gru/converged
One trial:
  python -m rnnlab.main --config=experiments/lstm_vs_gru_converged.py:music,cell=gru,lr=0.003,seed=0 --workdir=DIR

Convergence is checked, not hoped for: ``converged(curve)`` flags a trial whose best
validation loss still fell by more than 1% over its last 10% of steps.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections
import numpy as np

from experiments import lstm_vs_gru as base
from rnnlab import configs
from rnnlab.report import stats, tables

CELLS = ("tanh", "gru", "lstm")  # lstm: forget-gate bias 1 (base.CELLS)
BUDGET = 20_000  # parameters per model, readout and embedding included (Chung et al.: about 20k)
SEEDS = (0, 1, 2)
LRS = (1e-3, 3e-3, 1e-2)  # Adam
PAPER_SEEDS = (0, 1, 2, 3, 4)
PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
CONVERGED_FRACTION, CONVERGED_GAIN = 0.1, 0.01  # the last 10% of steps may improve the best by at most 1%

# Per task: the loop it runs and its budget. steps: the cap; eval_every: steps between validations;
# patience: evaluations without a new best before the run stops (train.early_stop_evals).
TASKS: dict[str, dict[str, Any]] = {
    "music": dict(trainer=base.TASK_TRAINER, window=64, batch=16, steps=20000, eval_every=100, patience=10),
    "char_lm": dict(trainer=base.LM_TRAINER, batch=16, seq_len=64, steps=60000, eval_every=500, patience=6),
    "smoke_music": dict(trainer=base.TASK_TRAINER, window=16, batch=4, steps=20, eval_every=5, patience=2, budget=3000),
    "smoke_lm": dict(trainer=base.LM_TRAINER, batch=4, seq_len=16, steps=20, eval_every=5, patience=2, budget=3000),
}
PAPER_CAPS = {"music": 40000, "char_lm": 120000}  # the paper grid's step caps (early stopping ends most before)
# result.json keys: validation (the best evaluation: the checkpoint the test numbers come from), test.
METRICS = {"music": ("best_eval_loss", "test_loss", "min", "test NLL per step (nats)"),
           "char_lm": ("valid_bpc", "test_bpc", "min", "test bits per character")}
METRICS.update(smoke_music=METRICS["music"], smoke_lm=METRICS["char_lm"])
METRIC = None  # launch: each trial's own validation loss ('eval/loss' or 'valid/nll')
SHORTHAND = {"lr": "optim.lr", "seed": "seed", "steps": "train.num_steps", "patience": "train.early_stop_evals"}


def _set_task(c: ml_collections.ConfigDict, task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown variant {task!r} of lstm_vs_gru_converged; choose one of {sorted(TASKS)}")
    spec = TASKS[task]
    small = task.startswith("smoke")
    c.trainer = spec["trainer"]
    c.study.update(task=task, param_budget=spec.get("budget", BUDGET))
    c.optim.update(name="adam", lr=3e-3, clip_norm=1.0, schedule="constant")
    c.train.update(num_steps=spec["steps"], eval_every=spec["eval_every"], log_every=spec["eval_every"],
                   checkpoint_every=spec["eval_every"], early_stop_evals=spec["patience"], keep_checkpoints=1,
                   tensorboard=False)
    if spec["trainer"] == base.TASK_TRAINER:
        c.task.update(name="music", length=spec["window"], batch_size=spec["batch"], eval_batch_size=64)
        return
    source = "embedded" if small else base.SHAKESPEARE
    c.data.update(source=source, batch_size=spec["batch"], seq_len=spec["seq_len"], eval_batch_size=64 if small else 100,
                  cache_dir="" if small else "~/.cache/rnnlab", random_offset=True)
    # The text is read in order, an epoch every ~1000 steps: at a constant rate the small models follow the
    # part of the text they last saw, and validation swung with the epoch's phase (docs/lstm_vs_gru/converged,
    # "tried"). Halving the rate after every second evaluation in a row without a new best lets them settle.
    c.optim.update(schedule="plateau", plateau_factor=2.0, plateau_patience=2)
    c.model.update(d_embed=8 if small else 16, num_layers=1)
    c.generate.length = 0


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, overrides = configs.parse_arg(arg)
    c = base.base_config()
    _set_task(c, "music" if variant == "default" else variant)
    c.model.update(cell="lstm", cell_options="forget_bias=1.0")
    for k, v in overrides.items():
        if k == "cell":
            c.model.update(**dict(zip(("cell", "cell_options"), base.CELLS.get(v, (v, "")), strict=True)))
        else:
            configs.set_dotted(c, SHORTHAND.get(k, k), v)
    c.model.d_hidden = base.matched_width(c)
    c.lock()
    return c


# ----------------------------------------------------------------------------- grids


def _add(add, task: str, cell: str, lr: float, seed: int, steps: int | None = None) -> None:
    trial = {"study.task": task, "cell": cell, "optim.lr": lr, "seed": seed}
    if steps is not None:
        trial["train.num_steps"] = steps
    add(**_overrides(trial))


def _overrides(trial: dict) -> dict:
    """The trial as dotted overrides of the default variant: exactly what differs."""
    from rnnlab.train.config import flat

    default = flat(get_config("default").to_dict())
    arg = f"{trial['study.task']},cell={trial['cell']},lr={trial['optim.lr']},seed={trial['seed']}"
    if "train.num_steps" in trial:
        arg += f",steps={trial['train.num_steps']}"
    got = flat(get_config(arg).to_dict())
    return {k: v for k, v in got.items() if v != default[k]}


def converged_cpu(add, cells=CELLS):
    """CELLS x (music, char_lm) x LRS x SEEDS = 54 trials, early stopping, for 2 CPU cores
    (``cells``: launch --cells=tanh,gru,lstm,mycell)."""
    for task in ("music", "char_lm"):
        for cell in cells:
            for lr in LRS:
                for seed in SEEDS:
                    _add(add, task, cell, lr, seed)


def _paper_trials(cells=CELLS):
    for task in ("music", "char_lm"):
        for cell in cells:
            for lr in PAPER_LRS:
                for seed in PAPER_SEEDS:
                    yield task, cell, lr, seed


def paper(add, cells=CELLS):
    """CELLS x (music, char_lm) x PAPER_LRS x PAPER_SEEDS = 120 trials, caps PAPER_CAPS: for a cluster."""
    for task, cell, lr, seed in _paper_trials(cells):
        _add(add, task, cell, lr, seed, PAPER_CAPS[task])


def paper_slice(add):
    """The paper grid's first two trials, capped at 20 steps: its cluster path, in CI."""
    for task, cell, lr, seed in list(_paper_trials())[:2]:
        _add(add, task, cell, lr, seed, 20)


def smoke(add):
    for task in ("smoke_music", "smoke_lm"):
        for cell in ("tanh", "gru"):
            _add(add, task, cell, 1e-2, 0)


GRIDS = {"converged_cpu": (converged_cpu, ""), "paper": (paper, ""), "paper_slice": (paper_slice, ""),
         "smoke": (smoke, "")}


describe = base.describe  # a trial's name and facts from its config (launch names the workdirs with it)


# ----------------------------------------------------------------------------- convergence


def converged(curve: list[tuple[int, float]]) -> dict:
    """``curve``: (step, validation loss) in step order. The best loss at the last step and at
    the step 10% of the run earlier; converged when the gain over that last tenth is at most 1%."""
    if not curve:
        return {"converged": False, "gain": math.nan, "why": "no evaluation"}
    last_step = curve[-1][0]
    cut = last_step * (1 - CONVERGED_FRACTION)
    before = [v for s, v in curve if s <= cut]
    if not before:
        return {"converged": False, "gain": math.nan, "why": "no evaluation before the last tenth of the run"}
    best_before, best_end = min(before), min(v for _, v in curve)
    gain = (best_before - best_end) / abs(best_before)
    return {"converged": gain <= CONVERGED_GAIN, "gain": gain, "best_before": best_before, "best_end": best_end,
            "cut_step": cut, "last_step": last_step}


# ----------------------------------------------------------------------------- report

REPORT_TASKS = ("music", "char_lm")


def gather(root: str) -> list[dict]:
    """The study's trials under ``root`` (lstm_vs_gru's gather), each with its convergence
    verdict (``converged``), how it ended (``stop``: early stopping, the step cap, or
    unfinished) and the step of its best validation."""
    rows = []
    for r in base.gather(root):
        conv = converged(r["curve"])
        res = r["result"]
        stop = ("unfinished" if not r["finished"] else "early stop" if res.get("early_stopped")
                else "step cap")
        best_step = min(r["curve"], key=lambda sv: sv[1])[0] if r["curve"] else None
        with open(os.path.join(r["workdir"], "config.json")) as f:
            optim = json.load(f)["optim"]
        schedule = "constant" if optim["schedule"] == "constant" else (
            f"{optim['schedule']} (÷{optim['plateau_factor']:g} after every {optim.get('plateau_patience', 1)} "
            "evaluations in a row without a new best)"
            if optim["schedule"] == "plateau" else optim["schedule"])
        rows.append({**r, "convergence": conv, "stop": stop, "best_step": best_step, "schedule": schedule,
                     "steps": res.get("step"), "seconds": res.get("total_seconds") or res.get("train_seconds")})
    return rows


def _wall_spans(rows: list[dict]) -> dict[str, float]:
    """Per task: seconds from the first logged row of its trials to the last, the wall time
    its trials took when they ran in one go (two trials at a time)."""
    from rnnlab.train import writers

    out = {}
    for task in sorted({r["task"] for r in rows}):
        times = [m["time"] for r in rows if r["task"] == task for m in writers.read_metrics(r["workdir"]) if "time" in m]
        if times:
            out[task] = max(times) - min(times)
    return out


def ngram_check(path: str, orders=(1, 2, 3), alpha: float = 0.1) -> dict:
    """Bits per character of add-``alpha`` smoothed n-gram models fitted on the train split of
    the character LM's corpus (rnnlab.data.text's default fractions), on valid and test: how
    much harder the test slice is than the validation slice for a model with no recurrence."""
    from collections import Counter

    from rnnlab.data import text

    docs = text._split_by_fractions([text.read_text(path)], text.DEFAULT_FRACTIONS)
    splits = {k: "".join(v) for k, v in docs.items()}
    vocab = sorted(set("".join(splits.values())))
    out = {}
    for n in orders:
        counts, ctx = Counter(), Counter()
        tr = splits["train"]
        for i in range(n - 1, len(tr)):
            counts[tr[i - n + 1:i + 1]] += 1
            ctx[tr[i - n + 1:i]] += 1
        for split in ("valid", "test"):
            a = splits[split]
            nll = -sum(math.log((counts[a[i - n + 1:i + 1]] + alpha) / (ctx[a[i - n + 1:i]] + alpha * len(vocab)))
                       for i in range(n - 1, len(a)))
            out[f"{n}gram_{split}_bpc"] = nll / (len(a) - n + 1) / math.log(2)
    return out


# Published numbers (test NLL per time step, nats, JSB Chorales), for the comparison; not ours.
# Read from a transcription of the paper's Tables 1-2 (the PDF itself is not reachable from here); one
# reproduction's README gives 9.19 for tanh, the transcription 9.10; GRU 8.54 is also on Papers with Code.
CHUNG_2014 = {"source": "Chung, Gulcehre, Cho & Bengio 2014, arXiv:1412.3555, Table 2 (JSB Chorales, test)",
              "tanh": 9.10, "gru": 8.54, "lstm": 8.67, "units": {"tanh": 100, "gru": 46, "lstm": 36},
              "training": "RMSProp, weight noise (std 0.075), gradient norm clipped at 1, the best of 10 learning "
                          "rates (log-uniform exponent) on validation, early stopping on validation"}


def _trial_rows(rows: list[dict]) -> list[list]:
    return [[r["name"], str(r["parameters"]), r["stop"], str(r["steps"]), str(r["best_step"]),
             f"{100 * r['convergence']['gain']:.2f}%" if math.isfinite(r["convergence"]["gain"]) else "-",
             "yes" if r["convergence"]["converged"] else "**no**",
             tables.fmt(r["result"].get(METRICS[r["task"]][0])), tables.fmt(r["result"].get(METRICS[r["task"]][1])),
             tables.fmt(r["seconds"], ".0f")] for r in rows]


def markdown(rows: list[dict], summary: dict, figures: list[str], extra: dict) -> str:
    from rnnlab.data import music

    lines = ["# tanh RNN vs GRU vs LSTM, trained to convergence (Chung et al. 2014's protocol)", "",
             f"Generated by `python -m experiments.lstm_vs_gru_converged --root={extra['root']} "
             f"--out={extra['out']}` from the trials of the `converged_cpu` grid "
             f"(`python -m launch run experiments/lstm_vs_gru_converged.py --grid=converged_cpu "
             f"--root={extra['root']} --parallel=2`).", "",
             "Protocol: each cell's width is matched to about 20,000 parameters (readout and embedding included); "
             "Adam with clipping at 1, the rate schedule per task: "
             + "; ".join(f"{t} {sch}" for t, sch in sorted({(r['task'], r['schedule']) for r in rows}))
             + ". Every trial stops when its validation loss has not reached a "
             "new best for `train.early_stop_evals` evaluations, and its test numbers are those of its best "
             "validation checkpoint. The rate is chosen per cell on the mean validation loss over seeds "
             "(never on test); the table gives the test metric at that rate, mean ± std [95% Student-t interval] "
             "over seeds.", ""]
    counts = extra.get("music_split")
    if counts:
        lines += ["Music: Bach chorales of music21's corpus as 88-pitch piano rolls, quarter-note steps "
                  "(`rnnlab.data.music`), split by piece: train/valid/test = "
                  + "/".join(str(counts["pieces"][k]) for k in music.SPLITS) + " pieces ("
                  + "/".join(str(counts["files"][k]) for k in music.SPLITS) + " files). Not the JSB split of "
                  "Boulanger-Lewandowski et al. 2012 (229/76/77 pieces): published numbers compare in kind, "
                  "not to the digit. Character LM: tiny Shakespeare, cut 90/5/5 by characters.", ""]
    span, by_task = extra.get("wall_seconds"), extra.get("wall_seconds_by_task", {})
    n_conv = sum(r["convergence"]["converged"] for r in rows)
    n_fin = sum(r["finished"] for r in rows)
    n_cap = sum(r["stop"] == "step cap" for r in rows)
    lines += [f"Trials: {len(rows)}, finished {n_fin}, converged by the rule {n_conv} "
              f"(validation best improved by at most {CONVERGED_GAIN:.0%} over the last "
              f"{CONVERGED_FRACTION:.0%} of the trial's steps); {n_cap} reached the step cap, the rest ended by "
              "early stopping. A trial that early stopping ended had no new best over its last patience window, "
              "so it passes the rule whenever that window is at least a tenth of its steps; the rule has teeth "
              "for a trial that stops at the cap."
              + (f" Wall time on this machine's 2 cores, 2 trials at a time, first logged step to last of each "
                 f"task's trials: {span / 60:.1f} min ("
                 + ", ".join(f"{t} {v / 60:.1f} min" for t, v in by_task.items()) + ")." if span else ""), ""]
    for task in [t for t in REPORT_TASKS if t in summary] + sorted(t for t in summary if t not in REPORT_TASKS):
        s = summary[task]
        header = ["cell", "params (width)", "lr (chosen)", "seeds", f"validation ({s['valid_key']})",
                  "test: mean ± std [95% CI]", "per lr: validation mean (finished/seeds)"]
        body = []
        for cell, c in s["cells"].items():
            b = c["best"]
            per_lr = ", ".join(f"{lr:g}: {tables.fmt(x['valid']['mean'])} ({x['finished']}/{x['seeds']})"
                               for lr, x in c["by_lr"].items())
            if b is None:
                body.append([cell, "-", "-", 0, "-", "no finished trial", per_lr])
                continue
            mark = " **best**" if cell == s["winner"] and not s["overlapping"] else ""
            rates = sorted(c["by_lr"])
            edge = " (grid edge)" if len(rates) > 1 and b["lr"] in (rates[0], rates[-1]) else ""
            body.append([cell + mark, f"{b['parameters']} ({b['d_hidden']})", f"{b['lr']:g}{edge}", b["finished"],
                         tables.fmt(b["valid"]["mean"]), tables.ci_text(b["test"]), per_lr])
        lines += [f"## {task}: {s['metric']} (lower is better)", ""] + tables.markdown_table(header, body)
        lines += tables.footnotes([c["best"]["test"] for c in s["cells"].values() if c["best"]])
        edges = [cell for cell, c in s["cells"].items() if c["best"] and len(c["by_lr"]) > 1
                 and c["best"]["lr"] in (min(c["by_lr"]), max(c["by_lr"]))]
        if edges:
            lines += ["", f"(grid edge): the rate chosen for {', '.join(edges)} is the smallest or largest of the grid, so "
                          "a rate beyond it might do better; the `paper` grid searches wider."]
        ov = s["overlapping"]
        lines += ["", f"Lowest mean: **{s['winner']}**; " + (
            f"its interval overlaps {', '.join(ov)}'s, so the data do not separate them." if ov
            else "its interval overlaps no other cell's."), ""]
    lines += ["## Comparison with the papers", ""] + comparison(summary, extra) + [""]
    tried = extra.get("tried")
    if tried:
        lines += ["## Tried", "", tried["why"], ""]
        lines += tables.markdown_table(["task", "cell", "lr (chosen)", "test: mean ± std [95% CI]", "report"],
                                       tried["rows"])
        lines += [""]
    if figures:
        lines += ["## Learning curves", "",
                  "Validation curves at each cell's chosen rate, mean over seeds (band: min..max):", ""]
        lines += [f"![{f}]({f})" for f in figures] + [""]
    lines += ["## Every trial", "",
              "stop: how the trial ended; gain: how much the best validation loss fell over the last 10% of "
              "the trial's steps (converged when at most 1%); validation: the best validation value; "
              "seconds: the trial's wall time.", ""]
    lines += tables.markdown_table(["trial", "params", "stop", "steps", "best at", "gain", "converged",
                                    "validation", "test", "seconds"], _trial_rows(rows))
    lines += ["", "Files: `results.csv` (per task and cell), `trials.csv` (per trial), `convergence.csv`, "
              "`report.json`.", ""]
    return "\n".join(lines)


def _best(summary: dict, task: str, cell: str) -> dict | None:
    c = summary.get(task, {}).get("cells", {}).get(cell)
    return c["best"]["test"] if c and c["best"] else None


def comparison(summary: dict, extra: dict) -> list[str]:
    """Sentences set beside Chung et al. 2014 and Jozefowicz et al. 2015, from the numbers."""
    out = []
    music_ = {c: _best(summary, "music", c) for c in CELLS}
    if all(music_.values()):
        ours = " < ".join(sorted(CELLS, key=lambda c: music_[c]["mean"]))
        theirs = " < ".join(sorted(CELLS, key=lambda c: CHUNG_2014[c]))
        pairs = []
        for a, b in (("gru", "lstm"), ("gru", "tanh"), ("lstm", "tanh")):
            lo, hi = sorted((a, b), key=lambda c: music_[c]["mean"])
            pairs.append(f"{lo} below {hi} by {music_[hi]['mean'] - music_[lo]['mean']:.3f} nats"
                         + (" (intervals separate)" if stats.separated(music_[a], music_[b]) else " (intervals overlap)"))
        out += [f"- **Music.** {CHUNG_2014['source']}: tanh {CHUNG_2014['tanh']:.2f}, GRU {CHUNG_2014['gru']:.2f}, "
                f"LSTM {CHUNG_2014['lstm']:.2f} nats per step (ordering {theirs}). Ours: "
                + ", ".join(f"{c} {music_[c]['mean']:.3f}" for c in CELLS) + f" (ordering {ours}); "
                + "; ".join(pairs) + ". Our absolute losses are not theirs to the digit: another split of "
                "other files of the chorales (voices only), widths matched with the readout counted ("
                + ", ".join(f"{c} {summary['music']['cells'][c]['best']['d_hidden']}" for c in CELLS)
                + " units; theirs " + ", ".join(f"{c} {CHUNG_2014['units'][c]}" for c in CELLS)
                + f"), and Adam where they used {CHUNG_2014['training']}."]
    text_ = {c: _best(summary, "char_lm", c) for c in CELLS}
    if all(text_.values()):
        ours = " < ".join(sorted(CELLS, key=lambda c: text_[c]["mean"]))
        sep = [f"{a} vs {b}: " + ("separate" if stats.separated(text_[a], text_[b]) else "overlap")
               for a, b in (("gru", "lstm"), ("gru", "tanh"), ("lstm", "tanh"))]
        out += ["- **Character LM** (not in Chung et al. 2014). Ours, test bpc: "
                + ", ".join(f"{c} {text_[c]['mean']:.3f}" for c in CELLS) + f" (ordering {ours}; intervals: "
                + ", ".join(sep) + ")."]
    if all(music_.values()) or all(text_.values()):
        out += ["- **Jozefowicz, Zaremba & Sutskever 2015** (ICML) found the GRU better than the LSTM on every "
                "task but language modelling, and the LSTM nearly matching the GRU once its forget-gate bias is 1 "
                "(our LSTM has that bias); their per-dataset music numbers are not quoted here because no source "
                "of them was reachable from this machine. "
                + _jozefowicz_sentence(music_, text_)]
    ng = extra.get("ngram")
    if ng:
        out += [f"- The test slice of tiny Shakespeare is harder than the validation slice for any model: a "
                f"trigram fitted on train gives {ng['3gram_valid_bpc']:.3f} bpc on valid and "
                f"{ng['3gram_test_bpc']:.3f} on test (bigram {ng['2gram_valid_bpc']:.3f} / "
                f"{ng['2gram_test_bpc']:.3f}), so a gap between the validation and test columns is the data's."]
    return out


def _jozefowicz_sentence(music_: dict, text_: dict) -> str:
    said = []
    for task, d in (("music", music_), ("the character LM", text_)):
        if not (d.get("gru") and d.get("lstm")):
            continue
        g, ls_ = d["gru"], d["lstm"]
        if stats.separated(g, ls_):
            said.append(f"on {task} the {'GRU' if g['mean'] < ls_['mean'] else 'LSTM'} is better, intervals apart")
        else:
            said.append(f"on {task} GRU and LSTM are not separated (intervals overlap)")
    return ("Here: " + "; ".join(said) + ".") if said else ""


TRIED = {  # folder under the report's: why the option lost (its own report, by the same command, is there)
    "tried_constant_lr": "The character LM at a constant rate (Adam, no decay; `data.random_offset` off): the text is "
                         "read in order, an epoch every ~1000 steps, and the validation loss of every cell and seed "
                         "swung with the epoch's phase (lower at every other evaluation, 500 steps apart), so early "
                         "stopping ended the seeds of a rate at the same steps and at a best set by the phase. The "
                         "study now halves the rate after every second evaluation in a row without a new best "
                         "(`optim.schedule='plateau'`, `plateau_patience=2`) and draws a random offset per epoch. "
                         "(Halving at every evaluation without a new best, patience 1, was tried first: on that "
                         "swing it halved the rate at every other evaluation, and its first trial stalled well above "
                         "the constant rate's validation loss; it was stopped and not kept.) "
                         "Its results at a constant rate:",
}


def _tried(out_dir: str) -> dict | None:
    rows, why = [], []
    for folder, text in TRIED.items():
        path = os.path.join(out_dir, folder, "report.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            rep = json.load(f)
        why.append(text)
        for task, s in rep["summary"].items():
            for cell, c in s["cells"].items():
                if c["best"]:
                    rows.append([task, cell, f"{c['best']['lr']:g}", tables.ci_text(c["best"]["test"]),
                                 f"[{folder}]({folder}/README.md)"])
    return {"why": " ".join(why), "rows": rows} if rows else None


def plot_all_trials(rows: list[dict], out_dir: str) -> list[str]:
    """Per task: every trial's validation curve, one panel per cell, coloured by rate."""
    from rnnlab.report import style

    plt = style.pyplot()
    files = []
    for task in [t for t in REPORT_TASKS if any(r["task"] == t for r in rows)]:
        fig, axes = plt.subplots(1, len(CELLS), figsize=(12, 3.6), sharey=True)
        lrs = sorted({r["lr"] for r in rows if r["task"] == task})
        colours = dict(zip(lrs, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(lrs))), strict=True))
        for ax, cell in zip(axes, CELLS, strict=True):
            for r in rows:
                if r["task"] == task and r["cell"] == cell and r["curve"]:
                    st, v = zip(*r["curve"], strict=True)
                    ax.plot(st, v, color=colours[r["lr"]], lw=1, label=f"lr {r['lr']:g}" if r["seed"] == 0 else None)
                    if not r["convergence"]["converged"]:
                        ax.plot(st[-1], v[-1], "rx", ms=8)
            ax.set_title(cell)
            ax.set_xlabel("step")
        axes[0].set_ylabel(rows[0]["curve_metric"] if task == rows[0]["task"] else
                           next(r["curve_metric"] for r in rows if r["task"] == task))
        axes[-1].legend(fontsize=8)
        fig.suptitle(f"{task}: validation of every trial (red x: not converged by the rule)", y=1.03)
        name = f"all_trials_{task}.png"
        style.save(fig, os.path.join(out_dir, name))
        files.append(name)
    return files


def report(root: str, out_dir: str) -> dict:
    """Gather the trials under ``root``; write README.md, results.csv, trials.csv,
    convergence.csv, the figures and report.json into ``out_dir``."""
    from rnnlab.data import music
    from rnnlab.train import writers

    rows = gather(root) if os.path.isdir(root) else []
    if not rows:
        raise ValueError(f"no trials of lstm_vs_gru_converged under {root}; run the grid first (--run)")
    os.makedirs(out_dir, exist_ok=True)
    summary = base.summarize(rows, METRICS)
    figures = base.plot_curves(rows, summary, out_dir) + plot_all_trials(rows, out_dir)
    base.write_csv(rows, summary, out_dir)
    tables.write_csv(os.path.join(out_dir, "convergence.csv"),
                     [{"name": r["name"], "task": r["task"], "cell": r["cell"], "lr": r["lr"], "seed": r["seed"],
                       "stop": r["stop"], "steps": r["steps"], "best_step": r["best_step"],
                       "converged": r["convergence"]["converged"], "gain": r["convergence"]["gain"]} for r in rows])
    spans = _wall_spans(rows)
    extra: dict[str, Any] = {"wall_seconds_by_task": spans, "wall_seconds": sum(spans.values()) or None,
                             "root": os.path.relpath(root), "out": os.path.relpath(out_dir)}
    if any(r["task"] == "music" for r in rows):
        extra["music_split"] = music.split_counts()
    if any(r["task"] == "char_lm" for r in rows) and os.path.exists(base.SHAKESPEARE):
        extra["ngram"] = ngram_check(base.SHAKESPEARE)
    extra["tried"] = _tried(out_dir)
    text = markdown(rows, summary, figures, extra)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
    rep = {"summary": summary, "figures": figures, "extra": extra, "chung_2014": CHUNG_2014,
           "trials": {r["name"]: {"stop": r["stop"], "steps": r["steps"], "best_step": r["best_step"],
                                  "seconds": r["seconds"], **r["convergence"]} for r in rows}}
    writers.write_json_atomic(os.path.join(out_dir, "report.json"), rep)
    print(text, flush=True)
    return rep


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder of trial workdirs (one per trial)")
    p.add_argument("--out", default="", help="report folder (default: ROOT/report)")
    p.add_argument("--run", action="store_true", help="run (or resume) the grid's trials first, through launch")
    p.add_argument("--parallel", type=int, default=2, help="with --run: trials at once")
    p.add_argument("--grid", default="converged_cpu", choices=sorted(GRIDS))
    args = p.parse_args(argv)
    if args.run:
        import launch

        launch.run_sweep(os.path.abspath(__file__), args.root, grid=args.grid, parallel=args.parallel)
    report(args.root, args.out or os.path.join(args.root, "report"))


if __name__ == "__main__":
    main()
