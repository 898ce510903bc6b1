"""The renderers of the docs' results tables (``python -m rnnlab.report.docs``): each
reads committed artifacts and returns markdown; a block

    <!-- rendered: NAME -->
    ...
    <!-- /rendered -->

in README.md, docs/**/*.md or benchmarks/README.md holds exactly RENDERERS[NAME]'s
output. Every table ends with a line naming the files it was rendered from and,
where the artifact records them, the machine (cores, load) and the date.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time


def _json(root: str, rel: str) -> dict:
    with open(os.path.join(root, rel)) as f:
        return json.load(f)


def _date(root: str, metrics_rel: str) -> str:
    """When a run finished: the UTC date of the last row of its metrics.jsonl."""
    last = None
    with open(os.path.join(root, metrics_rel)) as f:
        for line in f:
            if line.strip():
                last = json.loads(line)
    return time.strftime("%Y-%m-%d", time.gmtime(last["time"])) if last and "time" in last else "undated"


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s} s"


# ----------------------------------------------------------------------------- language modelling

LM_ROWS = (  # variant, data, model (words; the numbers come from the artifacts)
    ("default", "embedded corpus (char)", "1x256 LSTM"),
    ("shakespeare_char", "tiny Shakespeare (char)", "2x256 LSTM"),
    ("ptb_small", "WikiText-2 (word), no dropout", "2x200 LSTM"),
    ("pytorch_example", "WikiText-2 (word)", "2x200 LSTM"),
)


def _lm_result(r: dict, which: str) -> str:
    if f"{which}_bpc" in r:
        return f"{r[which + '_nll']:.4f} nats/char ({r[which + '_bpc']:.3f} bpc)"
    return f"ppl {r[which + '_ppl']:.2f}"


def lm_results(root: str) -> str:
    """The language-modelling variants from docs/lm/VARIANT.result.json."""
    lines = ["| variant | data | model | parameters | steps | training time | valid | test |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for variant, data, model in LM_ROWS:
        r = _json(root, f"docs/lm/{variant}.result.json")
        lines.append(f"| `{variant}` | {data} | {model} | {r['parameters']:,} | {r['step']} | "
                     f"{_minutes(r['train_seconds'])} | {_lm_result(r, 'valid')} | {_lm_result(r, 'test')} |")
    lines += ["", "Rendered from `docs/lm/{" + ",".join(v for v, _, _ in LM_ROWS) + "}.result.json`; training "
              "time is the run's `train_seconds` on a 2-core machine (`default` re-measured "
              f"{_date(root, 'docs/lm/default.metrics.jsonl')} with mean 1-minute load "
              f"{_json(root, 'docs/lm/default.result.json').get('load_average_1min_mean', float('nan')):.2f}; the "
              "others older, often on a shared machine: compare them roughly)."]
    return "\n".join(lines)


def lm_vs_pytorch(root: str) -> str:
    """One epoch of the pytorch_example settings in rnnlab and in PyTorch's example, one
    after the other (benchmarks/results/lm_vs_pytorch_1epoch.json)."""
    rel = "benchmarks/results/lm_vs_pytorch_1epoch.json"
    b = _json(root, rel)
    t, r, s = b["torch"], b["rnnlab"], b["summary"]
    lines = ["| one epoch | test ppl | epoch s | process s (launch to exit) | load avg start -> end |",
             "|---|---:|---:|---:|---|"]
    for name, x in (("PyTorch `word_language_model`", t), ("rnnlab", r)):
        lines.append(f"| {name} | {x['test_ppl']:.2f} | {x['epoch_seconds'][0]:.1f} | {x['process_seconds']:.1f} | "
                     f"{x['loadavg_start'][0]:.2f} -> {x['loadavg_end'][0]:.2f} |")
    env = b["environment"]
    lines += ["", f"ppl rnnlab / PyTorch {s['ppl_ratio_rnnlab_over_torch']:.3f}; process time PyTorch / rnnlab "
              f"{s['time_ratio_torch_over_rnnlab']:.2f} (< 1: rnnlab slower). Rendered from `{rel}` "
              f"({env['cpu_count']} cores, torch {env['torch']}, jax {env['jax']}; the file records no date)."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- LSTM vs GRU


def _module(root: str, rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lstm_vs_gru(root: str) -> str:
    """The README's summary of the LSTM-vs-GRU study: its size and the study's own
    comparison paragraph, from docs/lstm_vs_gru/report.json."""
    rel = "docs/lstm_vs_gru/report.json"
    r = _json(root, rel)
    study = _module(root, "experiments/lstm_vs_gru.py", "_lstm_vs_gru")
    summary = {t: study._summary_from_json(s) for t, s in r["summary"].items()}
    trials = sum(x["seeds"] for s in summary.values() for c in s["cells"].values() for x in c["by_lr"].values())
    zoo = r.get("zoo_table", [])
    below = [z["cell"] for z in zoo if z.get("adding", {}).get("below_baseline")]
    at = [z["cell"] for z in zoo if z.get("adding") and not z["adding"].get("below_baseline")]
    return "\n".join([
        f"{trials} trials over {len(summary)} tasks ({', '.join(summary)}). "
        + study.comparison_paragraph(summary),
        "",
        f"The `zoo` grid ({len(zoo)} cells on the adding task at T = 100 and the char-LM smoke): {len(below)} end "
        f"below the adding baseline, {len(at)} at or above it ({', '.join(at) or 'none'}).",
        "",
        f"Rendered from `{rel}`.",
    ])


def lstm_vs_gru_converged(root: str) -> str:
    """The README's table of the converged study (Chung et al. 2014's protocol), from
    docs/lstm_vs_gru/converged/report.json: per task and cell the rate chosen on validation,
    the test metric with its 95% interval, and how many trials converged by the rule."""
    rel = "docs/lstm_vs_gru/converged/report.json"
    r = _json(root, rel)
    lines = ["| task | cell | params | lr (chosen on valid) | test: mean [95% CI] | trials converged |",
             "|---|---|---:|---:|---|---:|"]
    for task, s in r["summary"].items():
        for cell, c in s["cells"].items():
            b = c["best"]
            mine = [v for k, v in r["trials"].items() if k.startswith(f"{task}_{cell}_")]
            conv = f"{sum(v['converged'] for v in mine)}/{len(mine)}"
            if b is None:
                lines.append(f"| {task} | {cell} | - | - | no finished trial | {conv} |")
                continue
            t = b["test"]
            lines.append(f"| {task} ({s['metric']}) | {cell} | {b['parameters']} | {b['lr']:g} | "
                         f"{t['mean']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}] | {conv} |")
    wall = r.get("extra", {}).get("wall_seconds")
    lines += ["", (f"{len(r['trials'])} trials, {_minutes(wall)} of wall time on this machine's 2 cores (each task's "
                   "trials from their first logged step to their last, summed over the tasks). " if wall else "") + f"Rendered from `{rel}`."]
    return "\n".join(lines)


def cards_leaderboard(root: str) -> str:
    """docs/cards/README.md: every stored card at the 'small' budget side by side, a row per task
    (test mean [95% CI] over seeds; the best mean in bold only where its interval separates from
    every other), from docs/cards/CELL/small/card.json."""
    base = os.path.join(root, "docs", "cards")
    cards = {}
    for cell in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, cell, "small", "card.json")
        if os.path.exists(path):
            cards[cell] = _json(root, os.path.relpath(path, root))
    if not cards:
        return "No card is stored yet."
    cells = list(cards)
    tasks = list(next(iter(cards.values()))["table"])
    lines = ["| task | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for task in tasks:
        meta = next(iter(cards.values()))["table"][task]
        tests = {c: cards[c]["table"].get(task, {}).get("cell", {}).get("test") for c in cells}
        have = {c: t for c, t in tests.items() if t}
        pick = (min if meta["better"] == "min" else max)(have, key=lambda c: have[c]["mean"]) if have else None
        clear = pick is not None and all(
            (have[pick]["ci_high"] < t["ci_low"] if meta["better"] == "min" else have[pick]["ci_low"] > t["ci_high"])
            for c, t in have.items() if c != pick)
        row = []
        for c in cells:
            t = tests[c]
            text = "-" if not t else f"{t['mean']:.4g} [{t['ci_low']:.4g}, {t['ci_high']:.4g}]"
            row.append(f"**{text}**" if c == pick and clear and len(have) > 1 else text)
        lines.append(f"| {task} ({meta['metric']}, {'lower' if meta['better'] == 'min' else 'higher'} is better) | "
                     + " | ".join(row) + " |")
    times = ", ".join(f"{c} {_minutes(r['wall_seconds'])}" for c, r in cards.items() if r.get("wall_seconds"))
    lines += ["", "Wall time of each card on this machine's 2 cores: " + (times or "not recorded") + ".",
              "Rendered from " + ", ".join(f"`docs/cards/{c}/small/card.json`" for c in cells) + "."]
    return "\n".join(lines)


def card_cost(root: str) -> str:
    """docs/cards/README.md: what the card costs per cell (benchmarks/results/card_cost.json)."""
    rel = "benchmarks/results/card_cost.json"
    r = _json(root, rel)
    first = r["rows"][0]["cell"]
    lines = [f"| cell | task | width | ms per step | x {first} | minutes for the task's trials (2 at a time) |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {x['cell']} | {x['task']} | {x['width']} | {x['step_seconds'] * 1e3:.1f} | "
              f"{x['step_ratio_to_' + first]:.1f} | {x['task_minutes_2_at_a_time']:.0f} |" for x in r["rows"]]
    m = r["meta"]
    lines += ["", f"`{m['command']}`, {m['date']}, {m['cpus']} cores, load {m['load_1min']:.1f}. "
              f"Rendered from `{rel}`."]
    return "\n".join(lines)


IFRNN_CARD = "docs/adding_a_cell/ifrnn_card"


def ifrnn_card(root: str) -> str:
    """docs/adding_a_cell.md: where the worked example's cell stands, the verdict of its card
    (docs/adding_a_cell/ifrnn_card/card.json, written by the command the doc shows)."""
    rel = f"{IFRNN_CARD}/card.json"
    r = _json(root, rel)
    card = _module(root, "experiments/card.py", "_card_for_docs")  # the card's own Markdown for its verdict
    lines = card.verdict_markdown(r["verdict"])
    lines += ["", f"{r['trials_count']} trials, {_minutes(r['wall_seconds'])} of wall time on this machine's 2 cores. "
              f"Rendered from `{rel}`; the whole card: [{IFRNN_CARD}/README.md](adding_a_cell/ifrnn_card/README.md)."]
    return "\n".join(lines)


LVG_CELLS = ("tanh", "lstm", "lstm_fb0", "gru")
LVG_ZOO_CELLS = ("peephole", "lstmp", "minlstm", "mingru", "lru", "indrnn", "tanh")


def lstm_vs_gru_widths(root: str) -> str:
    """docs/lstm_vs_gru/notes.md: the width matched_width gave each cell, per task
    (docs/lstm_vs_gru/report.json summary)."""
    rel = "docs/lstm_vs_gru/report.json"
    summary = _json(root, rel)["summary"]
    lines = ["| task | " + " | ".join(LVG_CELLS) + " |", "|---|" + "---:|" * len(LVG_CELLS)]
    for task, s in summary.items():
        cols = []
        for cell in LVG_CELLS:
            b = (s["cells"].get(cell) or {}).get("best")
            cols.append(f"{b['d_hidden']} ({b['parameters']:,})" if b else "-")
        lines.append(f"| {task} | " + " | ".join(cols) + " |")
    lines += ["", f"Width (parameters) per cell. Rendered from `{rel}` (`summary.TASK.cells.CELL.best`; the file records no "
              "date)."]
    return "\n".join(lines)


def lstm_vs_gru_runs(root: str) -> str:
    """docs/lstm_vs_gru/notes.md: the study's and the zoo's trials and training time
    (docs/lstm_vs_gru/trials.csv)."""
    import csv

    rel = "docs/lstm_vs_gru/trials.csv"
    with open(os.path.join(root, rel), newline="") as f:
        rows = list(csv.DictReader(f))
    lines = ["| grid | trials | finished | training minutes (sum of `train_seconds`) |", "|---|---:|---:|---:|"]
    for grid, keep in (("study", lambda r: not r["task"].startswith(("zoo_", "smoke_"))),
                       ("zoo", lambda r: r["task"].startswith(("zoo_", "smoke_")))):
        rs = [r for r in rows if keep(r)]
        secs = sum(float(r["train_seconds"]) for r in rs if r["train_seconds"])
        lines.append(f"| {grid} | {len(rs)} | {sum(r['finished'] == 'True' for r in rs)} | {secs / 60:.1f} |")
    lines += ["", f"Rendered from `{rel}` (2-core machine shared with other jobs; the file records neither the load "
              "nor a date)."]
    return "\n".join(lines)


def lstm_vs_gru_zoo_trials(root: str) -> str:
    """docs/lstm_vs_gru/notes.md: the zoo's adding T=100 trials of the cells the notes discuss,
    at every lr (docs/lstm_vs_gru/report.json zoo)."""
    rel = "docs/lstm_vs_gru/report.json"
    zoo = [z for z in _json(root, rel)["zoo"] if z["task"] == "zoo_adding100" and z["cell"] in LVG_ZOO_CELLS]
    zoo.sort(key=lambda z: (LVG_ZOO_CELLS.index(z["cell"]), z["lr"]))

    def f(v):
        return "-" if v is None else f"{v:.4g}"

    lines = ["| cell | layers x width | lr | eval MSE, last | eval MSE, best | test MSE | first solved step |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for z in zoo:
        r = z["result"] or {}
        lines.append(f"| {z['cell']} | {z['layers']}x{z['d_hidden']} | {z['lr']:g} | {f(r.get('eval_loss'))} | "
                     f"{f(r.get('best_eval_loss'))} | {f(r.get('test_loss'))} | "
                     f"{r.get('first_solved_step') or '-'} |")
    steps = sorted({(z["result"] or {}).get("step") for z in zoo} - {None})
    lines += ["", f"One seed, {' / '.join(map(str, steps))} steps. Rendered from `{rel}` (`zoo[].result`; the file "
              "records no date)."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- gradient flow


def gradient_flow(root: str) -> str:
    """The README's summary of the gradient-flow study, from docs/gradient_flow/report.json
    (written with the study's own README by ``experiments/gradient_flow.py``)."""
    rel = "docs/gradient_flow/report.json"
    r = _json(root, rel)
    c, runs = r["claims"], r["study"]["runs"]
    dec, flat, chrono, add = c["a_tanh_decay"], c["a_lstm_flat"], c["a_lstm_chrono"], c["b_adding_T200"]
    gru = r["trials"]["gru_T200_clip"]["result"]
    gru_mse = gru.get("eval_loss", gru.get("test_loss"))
    return "\n".join([
        f"{len(runs)} trials (grid `{r['study']['grid']}`: tanh RNN at several spectral radii, IRNN, LSTM with "
        f"forget bias 0 and 1 and chrono initialisation, GRU; adding task at T = 100, 200, 400; with and without "
        f"clipping), {sum(x['seconds'] for x in runs) / 60:.1f} minutes of trial processes one after the other on 2 cores, "
        f"then {r['report_seconds'] / 60:.1f} minutes of report, regenerated from the trials' Orbax snapshots.",
        "",
        f"- At initialisation the tanh RNN's gradient decays exponentially at {dec['fitted_rate']:.3f} per step, "
        f"{100 * abs(dec['rel_error_rms']):.0f}% from the {dec['predicted_rate_rms']:.3f} its step Jacobians predict "
        f"(RMS over directions; their spectral norm, {dec['predicted_rate_spectral']:.2f}, is only an upper bound).",
        f"- On the adding task at T = 200 the LSTM reaches MSE {add['lstm_mse']:.2g} (the bar is "
        f"{add['target']:.3g}, a tenth of the baseline) and the GRU {gru_mse:.2g}, while the tanh RNN stays at "
        f"{add['tanh_mse_over_baseline']:.2f}x the baseline.",
        f"- Not reproduced: an LSTM with forget-gate bias 1 does *not* keep ||dL/dh_t|| within one order of "
        f"magnitude over 100 steps at initialisation (a span of {flat['init_range']:.2g}); it does after training "
        f"({flat['trained_range']:.2f}). Chrono initialisation (Tallec & Ollivier 2018; "
        f"`--config.model.cell_options=chrono=200`: forget-gate biases log U(1, T-1)) does at initialisation: a "
        f"span of {chrono['init_range']:.2f}, and it first solves the task at step {chrono['first_solved_step']} "
        f"against {add['lstm_first_solved_step']} for forget bias 1.",
        "",
        f"Rendered from `{rel}`; every number per trial is in "
        "[docs/gradient_flow/README.md](docs/gradient_flow/README.md).",
    ])


GF_RADII = ("elman_rho0.5_T200_clip", "elman_rho0.9_T200_clip", "elman_T200_clip", "elman_rho1.1_T200_clip")
GF_RATES = ("elman_T200_clip", "lstm_fb0_T200_clip", "lstm_fb1_T200_clip", "lstm_chrono200_T200_clip", "gru_T200_clip",
            "elman_T400_clip", "lstm_fb1_T400_clip")


def gradient_flow_radii(root: str) -> str:
    """docs/gradient_flow/notes.md: the tanh RNN's decay at initialisation against its step
    Jacobians, per spectral radius (docs/gradient_flow/report.json)."""
    rel = "docs/gradient_flow/report.json"
    t = _json(root, rel)["trials"]
    lines = ["| trial | fitted rate, lags 1-100, the Jacobians' examples | rms prediction | fit vs prediction | "
             "mean spectral norm | fitted rate, whole probe batch, lags 1 to T-1 |", "|---|---:|---:|---:|---:|---:|"]
    for name in GF_RADII:
        s = t[name]["snapshots"]["0"]
        j = s["jacobian"]
        fit = j["fit_same_examples"]["rate"]
        lines.append(f"| `{name}` | {fit:.4f} | {j['rms']:.4f} | {100 * (fit / j['rms'] - 1):+.1f}% | "
                     f"{j['spectral']:.4f} | {s['fit_all']['rate']:.4f} |")
    lines += ["", f"Step 0 of each trial; rms prediction exp(mean_t log(||J_t||_F / sqrt(H))), mean spectral norm "
              f"exp(mean_t log ||J_t||_2). Rendered from `{rel}` (`trials.NAME.snapshots.0`: `jacobian.fit_same_"
              "examples.rate`, `jacobian.rms`, `jacobian.spectral`, `fit_all.rate`; the file records no date)."]
    return "\n".join(lines)


def gradient_flow_init_rates(root: str) -> str:
    """docs/gradient_flow/notes.md: per-step decay of ||dL/dh_t|| at initialisation and the
    memory gate, per cell (docs/gradient_flow/report.json)."""
    rel = "docs/gradient_flow/report.json"
    t = _json(root, rel)["trials"]
    lines = ["| trial | cell | T | rate, lags 1-100 | rate, lags 1 to T-1 | mean memory gate | memory time (steps) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in GF_RATES:
        x = t[name]
        s = x["snapshots"]["0"]
        gates = s.get("gates") or {}
        gate, mem = gates.get("layer_0/memory_gate_mean"), gates.get("layer_0/memory_time")
        lines.append(f"| `{name}` | {x['label']} | {x['T']} | {s['fit_window']['rate']:.4f} | "
                     f"{s['fit_all']['rate']:.4f} | {'-' if gate is None else f'{gate:.3f}'} | "
                     f"{'-' if mem is None else f'{mem:.2f}'} |")
    lines += ["", f"Step 0 of each trial (the T = 400 trials are probed at initialisation only). Rendered from `{rel}` "
              "(`trials.NAME.snapshots.0`: `fit_window.rate`, `fit_all.rate`, `gates[\"layer_0/memory_gate_mean\"]`, "
              "`gates[\"layer_0/memory_time\"]` = -1/log(gate); the file records no date)."]
    return "\n".join(lines)


def gradient_flow_run_time(root: str) -> str:
    """docs/gradient_flow/notes.md: how long the study's trials and report took
    (docs/gradient_flow/report.json)."""
    rel = "docs/gradient_flow/report.json"
    r = _json(root, rel)
    runs = {x["name"]: x for x in r["study"]["runs"]}
    one = r["trials"]["lstm_fb1_T200_clip"]
    return "\n".join([
        "| what | seconds |", "|---|---:|",
        f"| one trial of the default variant (`lstm_fb1_T200_clip`, {one['num_steps']} steps): training "
        f"(`result.train_seconds`) | {one['result']['train_seconds']:.1f} |",
        f"| the same trial's whole process (`study.runs`) | {runs['lstm_fb1_T200_clip']['seconds']:.1f} |",
        f"| grid `{r['study']['grid']}`: {len(runs)} trials one after the other (sum of `study.runs`) | "
        f"{sum(x['seconds'] for x in runs.values()):.1f} |",
        f"| its report, regenerated from the trials' snapshots (`report_seconds`) | {r['report_seconds']:.1f} |",
        "", f"Rendered from `{rel}` (2-core machine; the file records neither the load nor a date)."])


# ----------------------------------------------------------------------------- benchmarks


def layers(root: str) -> str:
    """One layer forward + backward and forward only, float32, rnnlab against torch and
    Flax (benchmarks/results/layers.json: each implementation interleaved in one process)."""
    rel = "benchmarks/results/layers.json"
    b = _json(root, rel)
    peak = b["environment"]["peak"]["gflops"]
    summ = {(x["shape"], x["cell"], x["mode"]): x for x in b["summary"]}
    gflops = {(x["shape"], x["cell"], x["mode"]): x["gflops"] for x in b["results"] if x["impl"] == "rnnlab"}
    shapes = b["config"]["shape_list"] if "shape_list" in b["config"] else b["config"]["shapes"].split(",")
    lines = []
    for mode, title in (("fwdbwd", "forward + backward"), ("fwd", "forward only")):
        lines += [f"| {title}: B x T x D x H | LSTM vs torch | LSTM vs Flax | GRU vs torch | GRU vs Flax | "
                  "rnnlab LSTM GFLOP/s (% of peak) | most any LSTM / GRU could beat Flax by |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for shape in shapes:
            shape = shape if isinstance(shape, str) else "x".join(map(str, shape))
            lstm, gru = summ[(shape, "lstm", mode)], summ[(shape, "gru", mode)]
            g = gflops[(shape, "lstm", mode)]
            lines.append(f"| {shape} | {lstm['rnnlab_speed_ratio_vs_torch']:.2f} | "
                         f"{lstm['rnnlab_speed_ratio_vs_flax']:.2f} | {gru['rnnlab_speed_ratio_vs_torch']:.2f} | "
                         f"{gru['rnnlab_speed_ratio_vs_flax']:.2f} | {g:.0f} ({100 * g / peak:.0f}%) | "
                         f"{lstm['max_possible_speed_ratio_vs_flax']:.2f} / {gru['max_possible_speed_ratio_vs_flax']:.2f} |")
        lines.append("")
    env = b["environment"]
    lines.append(f"Speed ratio = the other's median time / rnnlab's (above 1: rnnlab faster), "
                 f"{b['config']['repeats']} rounds. The last column is the peer's time over the time the layer's "
                 f"FLOPs take at the machine's GEMM peak, {peak:.0f} GFLOP/s (jax.dot, 2048^3, "
                 f"{env['cpu_count']} cores; load {env['loadavg_at_start'][0]:.2f} at the start): no implementation "
                 f"can beat the peer by more. Rendered from `{rel}` (the file records no date).")
    return "\n".join(lines)


def memory_and_compile(root: str) -> str:
    """Training memory at T = 10,000 and the LM step's compile time
    (benchmarks/results/memory_and_compile.json)."""
    rel = "benchmarks/results/memory_and_compile.json"
    b = _json(root, rel)
    m = b["memory"][0]
    lines = [f"| 1x{m['H']} LSTM, T = {m['T']:,}, batch {m['B']}, D {m['D']} | peak RSS | seconds per step |",
             "|---|---:|---:|"]
    for x in b["memory"]:
        lines.append(f"| {x['impl']} | {x['peak_rss_bytes'] / 2**20:,.0f} MiB | {x['step_s']:.1f} |")
    c = b["compile"]
    lines += ["", f"{c['what']}: {c['best_s']:.2f} s (best of {len(c['seconds'])}). Rendered from `{rel}` "
              f"({b['environment']['cpu_count']} cores, load {b['environment']['loadavg'][0]:.2f}; the file records "
              "no date)."]
    return "\n".join(lines)


def generation(root: str) -> str:
    """Token-by-token generation, rnnlab's jit-compiled loop against PyTorch's token loop
    on the pytorch_example model (benchmarks/results/generation.json)."""
    rel = "benchmarks/results/generation.json"
    b = _json(root, rel)
    lines = ["| batch | rnnlab tokens/s | PyTorch tokens/s | speed ratio |", "|---:|---:|---:|---:|"]
    for x in b["results"]:
        lines.append(f"| {x['batch']} | {x['rnnlab_tokens_per_s']:,.0f} | {x['torch_tokens_per_s']:,.0f} | "
                     f"{x['rnnlab_speed_ratio_vs_torch']:.2f} |")
    c = b["config"]
    lines += ["", f"{c['length']} tokens, {c['layers']}x{c['hidden']} LSTM, vocabulary {c['vocab']:,}, torch threads "
              f"{c['torch_threads']}, load {b['loadavg'][0]:.2f}. Rendered from `{rel}` (the file records no date)."]
    return "\n".join(lines)


def layers_detail(root: str) -> str:
    """benchmarks/README.md's layer table: rnnlab's speed ratio against every implementation
    timed (both cells, both modes), GFLOP/s and the ceilings (benchmarks/results/layers.json)."""
    rel = "benchmarks/results/layers.json"
    b = _json(root, rel)
    env, cfg = b["environment"], b["config"]
    peak = env["peak"]
    peers = [i for i in cfg["impl_list"] if i != "rnnlab"]
    summ = {(x["shape"], x["cell"], x["mode"]): x for x in b["summary"]}
    res = {(x["shape"], x["cell"], x["mode"], x["impl"]): x for x in b["results"]}

    def ratio(s, key):
        return f"{s[key]:.2f}" if key in s else "-"

    lines = ["| B x T x D x H | mode | cell | " + " | ".join(f"vs {p}" for p in peers)
             + " | GFLOP/s rnnlab / torch (rnnlab % of peak) | most anything could beat torch / Flax by |",
             "|---|---|---|" + "---:|" * (len(peers) + 2)]
    for mode in [m for m in ("fwdbwd", "fwd") if m in cfg["mode_list"]]:
        for shape in cfg["shape_list"]:
            for cell in cfg["cell_list"]:
                s = summ[(shape, cell, mode)]
                g, t = res[(shape, cell, mode, "rnnlab")]["gflops"], res.get((shape, cell, mode, "torch"), {})
                lines.append(f"| {shape} | {'fwd+bwd' if mode == 'fwdbwd' else mode} | {cell.upper()} | "
                             + " | ".join(ratio(s, f"rnnlab_speed_ratio_vs_{p}") for p in peers)
                             + f" | {g:.0f} / {t['gflops']:.0f} ({100 * g / peak['gflops']:.0f}%) | "
                             f"{ratio(s, 'max_possible_speed_ratio_vs_torch')} / "
                             f"{ratio(s, 'max_possible_speed_ratio_vs_flax')} |")
    lines += ["", f"rnnlab's speed ratio = the peer's median time / rnnlab's over {cfg['repeats']} rounds (above 1: "
              "rnnlab faster); `rnnlab_xla` is the same layer with the native code off (the XLA fused layer). The "
              "last column is the peer's time over the time the layer's FLOPs take at the machine's GEMM peak, "
              f"{peak['gflops']:.0f} GFLOP/s (2048^3: torch.mm {peak['torch.mm_gflops']:.0f}, jax.dot "
              f"{peak['jax.dot_gflops']:.0f}): no implementation can beat that peer by more. Rendered from `{rel}` "
              f"({env['cpu_count']} cores, torch {env['torch']} on {env['torch_threads']} threads, jax {env['jax']}, "
              f"flax {env['flax']}, keras {env.get('keras', 'absent')}; 1-minute load {env['loadavg_at_start'][0]:.2f} "
              "at the start; the file records no date)."]
    return "\n".join(lines)


def _speech_step(root: str, rel: str, what: str, label) -> str:
    """One benchmarks/speech_step.py JSON as a table: a row per front end / implementation /
    member_threads setting, ``label(row)`` naming it; the first row is the peer."""
    b = _json(root, rel)
    rows = b["results"]
    lines = [f"| {what} | frames into the stack | parameters | step ms | speed ratio vs {label(rows[0])} | "
             "3000 steps (min) |", "|---|---|---:|---:|---:|---:|"]
    for x in rows:
        lines.append(f"| {label(x)} | x{x['subsampling']} | {x['parameters']:,} | {x['step_ms']:.0f} | "
                     f"{x['speed_ratio_vs_peer']:.2f} | {x['minutes_for_3000_steps']:.1f} |")
    frames, busy = b["real_frames_per_batch"], b["busy_cpus_before_after"]
    lines += ["", f"`{b['variant']}`, held-out speaker {b['held_out']}: {b['batches']} training batches "
              f"({sum(frames) / len(frames):,.0f} real frames per batch on average), {b['repeats']} rounds, median "
              f"per batch. CPUs kept busy by other processes: {busy[0]:.2f} before, {busy[1]:.2f} after "
              f"({b['cpus']} cores). Rendered from `{rel}` (the file records neither the machine's GEMM peak nor a "
              "date)."]
    return "\n".join(lines)


def speech_step(root: str) -> str:
    """Front ends of the speech step (benchmarks/results/speech_step.json)."""
    return _speech_step(root, "benchmarks/results/speech_step.json", "front end (`model.conv`)",
                        lambda x: f"`{x['conv']}`")


def speech_step_native(root: str) -> str:
    """The native layer's implementations in the speech step (benchmarks/results/speech_step_native.json)."""
    return _speech_step(root, "benchmarks/results/speech_step_native.json", "implementation",
                        lambda x: f"`{x['implementation']}`")


def speech_member_threads(root: str) -> str:
    """The ensemble's members on threads of their own (benchmarks/results/speech_member_threads.json)."""
    return _speech_step(root, "benchmarks/results/speech_member_threads.json", "`train.member_threads`",
                        lambda x: str(x["member_threads"]))


def parallel_scan(root: str) -> str:
    """Parallel against sequential scan of the linear-recurrence cells
    (benchmarks/results/parallel_scan.json)."""
    rel = "benchmarks/results/parallel_scan.json"
    b = _json(root, rel)
    m = b["meta"]
    lines = ["| cell | T | mode | sequential ms | parallel ms | speed-up (sequential / parallel) |",
             "|---|---:|---|---:|---:|---:|"]
    for x in b["rows"]:
        lines.append(f"| {x['cell']} | {x['T']:,} | {'fwd+bwd' if x['mode'] == 'fwdbwd' else x['mode']} | "
                     f"{x['median_ms']['sequential']:.1f} | {x['median_ms']['parallel']:.1f} | "
                     f"{x['seq_over_par']:.2f} |")
    lines += ["", f"B = {m['batch']}, D = H = {m['hidden']}, float32, median of {m['repeats']} interleaved repeats "
              f"(above 1: parallel faster). Rendered from `{rel}` ({m['cpu_count']} cores, jax {m['jax']}; 1-minute "
              f"load {m['load_avg'][0]:.1f} at the start and {m['load_avg_end'][0]:.1f} at the end, a shared machine; "
              "the file records no date)."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- speech


def speech(root: str) -> str:
    """The speaker-independent speech study from docs/speech/report.json (written by
    ``experiments/speech_recognition.py`` from docs/speech/runs/*/result.json)."""
    rel = "docs/speech/report.json"
    rep = _json(root, rel)
    rows = rep["rows"]
    cpu = sum(r["cpu_minutes"] for r in rows)
    dates = sorted(_date(root, f"docs/speech/runs/{r['trial']}/metrics.jsonl") for r in rows)
    when = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "no runs yet"
    loads = [r["load_average"] for r in rows if r.get("load_average") is not None]
    load = f", mean 1-minute load {sum(loads) / len(loads):.1f} (two runs side by side)" if loads else ""
    return (_module(root, "experiments/speech_recognition.py", "_speech_recognition").render_table(rep) + f"\n\nRendered from `{rel}` (the per-run files under "
            f"`docs/speech/runs/`; {len(rows)} runs, {cpu:.0f} CPU-minutes of training in all, 2-core machine"
            f"{load}, {when}).")


def speech_headline(root: str) -> str:
    """The README's two speech numbers (inductive and adapted average WER over seeds)."""
    rel = "docs/speech/report.json"
    s = _json(root, rel)["summary"]

    def one(x):
        if not x["n"]:
            return "not yet run"
        return f"{100 * x['mean']:.2f}%" + (f" (± {100 * x['std']:.2f} over {x['n']} seeds)" if x["n"] > 1 else
                                            " (1 seed)")
    return (f"| average WER over the 5 held-out speakers | |\n|---|---|\n| inductive (headline) | {one(s['inductive'])} |"
            f"\n| with test-time adaptation | {one(s['adapted'])} |\n\nRendered from `{rel}`.")


# ----------------------------------------------------------------------------- gradient-flow gallery

GALLERY = "docs/gradient_flow/gallery"


def _cell(text: str) -> str:
    """Text for a markdown table cell: its pipes (||grad L||) escaped."""
    return text.replace("|", "\\|")


def _g(v) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def gallery_figure(name: str):
    """One figure's block of docs/gradient_flow/gallery/README.md: the picture, its command and
    time, and each check (the claim as a number) from NAME/NAME.json."""

    def render(root: str) -> str:
        rel = f"{GALLERY}/{name}/{name}.json"
        r = _json(root, rel)
        trials = r["numbers"].get("trial_process_seconds")
        took = (f" this time; its trials' processes ran {_minutes(trials)} in all, two at a time (their result.json)"
                if trials else "")
        lines = [f"![{name}]({name}/{name}.png)", "",
                 f"`{r['command']}`: {_minutes(r['wall_seconds'])} wall, {_minutes(r['cpu_seconds'])} CPU{took} "
                 f"({r['machine']}).", "", "| check | measured | claim | holds |", "|---|---|---|---|"]
        for c in r["checks"]:
            lines.append(f"| {_cell(c['quantity'])} | {_g(c['value'])} | {c['op']} {_g(c['threshold'])} | "
                         f"{'yes' if c['holds'] else '**no**'} |")
        rates = r["numbers"].get("success_rate")  # success rate per model and length, where the figure has one
        if rates:
            lengths = list(next(iter(rates.values())))
            lines += ["", "| success rate | " + " | ".join(f"T = {t}" for t in lengths) + " |",
                      "|---|" + "---|" * len(lengths)]
            lines += [f"| {label} | " + " | ".join(f"{v[t]:.2f}" for t in lengths) + " |" for label, v in rates.items()]
        pilot = r["numbers"].get("pilot_final_loss_over_baseline")
        if pilot:
            lines += ["", "Pilot (a longer budget, other seeds), final loss / baseline: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in pilot.items()) + "."]
        accuracy = r["numbers"].get("test_accuracy")  # per model: mean and 95% interval over seeds
        if accuracy:
            lines += ["", "| model | test accuracy, mean | 95% interval | seeds | learning rate |", "|---|---|---|---|---|"]
            lines += [f"| {r['settings']['variants'].get(k, k)} | {v['mean']:.3f} | [{v['ci_low']:.3f}, "
                      f"{v['ci_high']:.3f}] | {v['n']} | {r['numbers']['chosen_lr'][k]:g} |" for k, v in accuracy.items()]
        if "chosen_lr" in r["numbers"]:
            chosen = ", ".join(f"{k}: {v:g}" for k, v in r["numbers"]["chosen_lr"].items())
            by = r["numbers"].get("chosen_by", "by the pilot (its runs are in the JSON)")
            lines += ["", f"Learning rates chosen {by}: {chosen}."]
        settings = "; ".join(f"{k}: {v}" for k, v in r["settings"].items())
        lines += ["", f"Settings: {settings}.", "", f"Rendered from `{rel}` (numbers behind the plot: "
                  f"`{name}/{name}.csv`)."]
        return "\n".join(lines)

    return render


def _gallery_figures(root: str) -> tuple[str, ...]:
    """experiments/gradient_gallery's FIGURES (its __init__ alone: no JAX import)."""
    spec = importlib.util.spec_from_file_location("_gallery", os.path.join(root, "experiments", "gradient_gallery",
                                                                           "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FIGURES


def gallery_summary(link_prefix: str):
    """The gallery's table of figures (claim reproduced or not, time) from every NAME.json;
    each figure links to ``link_prefix#NAME``."""

    def render(root: str) -> str:
        rows, total = ["| figure | claim reproduced | wall time |", "|---|---|---|"], 0.0
        for name in _gallery_figures(root):
            path = os.path.join(root, GALLERY, name, f"{name}.json")
            if not os.path.exists(path):
                rows.append(f"| {name} | not run yet | - |")
                continue
            r = _json(root, f"{GALLERY}/{name}/{name}.json")
            trials = r["numbers"].get("trial_process_seconds")  # trials reused from an earlier run: their own time
            total += max(r["wall_seconds"], trials / 2) if trials else r["wall_seconds"]
            rows.append(f"| [{_cell(r['title'])}]({link_prefix}#{name}) | {'yes' if r['all_hold'] else '**no**'} | "
                        f"{_minutes(max(r['wall_seconds'], trials / 2) if trials else r['wall_seconds'])} |")
        return "\n".join(rows + ["", f"All figures: {_minutes(total)} on the machine each JSON names (a figure "
                                  "whose trials ran earlier counts their processes' time, two at a time). "
                                  f"Rendered from `{GALLERY}/*/*.json`."])

    return render


RENDERERS = {
    "lm_results": lm_results,
    "lm_vs_pytorch": lm_vs_pytorch,
    "speech": speech,
    "speech_headline": speech_headline,
    "gradient_flow": gradient_flow,
    "lstm_vs_gru": lstm_vs_gru,
    "lstm_vs_gru_converged": lstm_vs_gru_converged,
    "cards_leaderboard": cards_leaderboard,
    "ifrnn_card": ifrnn_card,
    "card_cost": card_cost,
    "layers": layers,
    "memory_and_compile": memory_and_compile,
    "generation": generation,
    "layers_detail": layers_detail,
    "parallel_scan": parallel_scan,
    "speech_step": speech_step,
    "speech_step_native": speech_step_native,
    "speech_member_threads": speech_member_threads,
    "gradient_flow_radii": gradient_flow_radii,
    "gradient_flow_init_rates": gradient_flow_init_rates,
    "gradient_flow_run_time": gradient_flow_run_time,
    "lstm_vs_gru_widths": lstm_vs_gru_widths,
    "lstm_vs_gru_runs": lstm_vs_gru_runs,
    "lstm_vs_gru_zoo_trials": lstm_vs_gru_zoo_trials,
    "gallery_summary": gallery_summary(""),
    "gallery_headline": gallery_summary(f"{GALLERY}/README.md"),
    **{f"gallery_{name}": gallery_figure(name) for name in _gallery_figures(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))},
}
