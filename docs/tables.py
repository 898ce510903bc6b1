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
        f"clipping), {sum(x['seconds'] for x in runs) / 60:.1f} minutes of training one after the other on 2 cores, "
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


# ----------------------------------------------------------------------------- speech


def _speech_module(root: str):
    spec = importlib.util.spec_from_file_location("_speech_recognition",
                                                  os.path.join(root, "experiments", "speech_recognition.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def speech(root: str) -> str:
    """The speaker-independent speech study from docs/speech/report.json (written by
    ``experiments/speech_recognition.py`` from docs/speech/runs/*/result.json)."""
    rel = "docs/speech/report.json"
    rep = _json(root, rel)
    rows = rep["rows"]
    cpu = sum(r["cpu_minutes"] for r in rows)
    dates = sorted(_date(root, f"docs/speech/runs/{r['trial']}/metrics.jsonl") for r in rows)
    when = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "no runs yet"
    return (_speech_module(root).render_table(rep) + f"\n\nRendered from `{rel}` (the per-run files under "
            f"`docs/speech/runs/`; {len(rows)} runs, {cpu:.0f} CPU-minutes of training in all, 2-core machine, "
            f"{when}).")


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


RENDERERS = {
    "lm_results": lm_results,
    "lm_vs_pytorch": lm_vs_pytorch,
    "speech": speech,
    "speech_headline": speech_headline,
    "gradient_flow": gradient_flow,
    "layers": layers,
    "memory_and_compile": memory_and_compile,
    "generation": generation,
}
