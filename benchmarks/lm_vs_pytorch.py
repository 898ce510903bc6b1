"""rnnlab vs PyTorch's word_language_model example, side by side, on WikiText-2
(train valid.txt[:3390], validate valid.txt[3390:], test test.txt; the example's
defaults: 2x200 LSTM, dropout 0.2, SGD lr 20, clip 0.25, bptt 35, batch 20, lr / 4
on a validation plateau).

    python benchmarks/lm_vs_pytorch.py                    # 40 epochs each (no stored run of it)
    python benchmarks/lm_vs_pytorch.py --epochs 1         # a quick look
    python benchmarks/lm_vs_pytorch.py --skip_torch       # reuse the torch run in --workdir

Runs, one after the other on this machine, each as its own process started from
the repository root:

  torch:  python benchmarks/pytorch_word_lm.py --epochs E --threads N --json WORKDIR/torch_Eep.json
  rnnlab: python -m rnnlab.main --config=experiments/language_modelling.py:pytorch_example
              --workdir=WORKDIR/rnnlab_Eep --config.generate.length=0 [--config.train.num_epochs=E]

(``generate.length=0``: the torch port samples nothing either.) The rnnlab workdir
is deleted first, so the run starts fresh instead of resuming. ``--skip_torch`` /
``--skip_rnnlab`` reuse what a previous run left in ``--workdir``.

Reported per implementation: test perplexity of the best-validation model, the
process wall time (launch to exit: imports, data, JIT compilation, training,
validation, test: the same definition for both, the headline number) and the
time the program measures itself (torch: script start to after the test
evaluation; rnnlab: result.json's train_seconds, which stops before its final
valid/test evaluation), per-epoch validation perplexity and seconds, and the load
average around each run (other processes on the machine slow both). Ratios:
rnnlab ppl / torch ppl (< 1: rnnlab better) and torch time / rnnlab time (> 1:
rnnlab faster). Written to benchmarks/results/lm_vs_pytorch.json and .md.

The two evaluate slightly different token sets: the torch example's batchify
drops the last (N mod 10) tokens of valid/test; rnnlab scores every one of the
N - 1 targets. Seeds differ by nature (torch.manual_seed(1111) vs rnnlab seed 0),
so the perplexities agree only up to run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_SCRIPT = ROOT / "benchmarks" / "pytorch_word_lm.py"
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = "experiments/language_modelling.py:pytorch_example"
DEFAULT_EPOCHS = 40  # the variant's train.num_epochs and the example's --epochs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs for both (default: %(default)s)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lm_vs_pytorch"),
                   help="where both runs write (torch JSON, rnnlab workdir, logs); default: %(default)s")
    p.add_argument("--results_dir", default=str(RESULTS), help="where lm_vs_pytorch.json/.md go (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads for the torch run")
    p.add_argument("--skip_torch", action="store_true", help="reuse the torch run already in --workdir")
    p.add_argument("--skip_rnnlab", action="store_true", help="reuse the rnnlab run already in --workdir")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- running


def run_logged(name: str, cmd: list[str], log_path: Path, sidecar: Path) -> dict:
    """Run ``cmd`` from the repo root, echoing its output prefixed with ``[name]`` and
    saving it to ``log_path``; time it from launch to exit and record that in ``sidecar``."""
    log(f"[{name}] $ {' '.join(cmd)}")
    load_start = os.getloadavg()
    t0 = time.time()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            print(f"[{name}] {line}", end="", flush=True)
        rc = proc.wait()
    seconds = time.time() - t0
    info = {"command": cmd, "cwd": str(ROOT), "start_time": t0, "process_seconds": seconds, "returncode": rc,
            "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()), "log": str(log_path)}
    sidecar.write_text(json.dumps(info, indent=1))
    if rc != 0:
        raise SystemExit(f"[{name}] exited with status {rc} after {seconds:.0f} s; its output is in {log_path}")
    log(f"[{name}] finished in {seconds:.1f} s ({seconds / 60:.2f} min)")
    return info


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SystemExit(f"{what}: {path} does not exist; run without --skip_* first (same --workdir and --epochs)")
    return json.loads(path.read_text())


def torch_run(args, workdir: Path) -> dict:
    out = workdir / f"torch_{args.epochs}ep.json"
    sidecar = workdir / f"torch_{args.epochs}ep.run.json"
    if not args.skip_torch:
        cmd = [sys.executable, str(TORCH_SCRIPT.relative_to(ROOT)), "--epochs", str(args.epochs),
               "--threads", str(args.threads), "--json", str(out)]
        run_logged("torch", cmd, workdir / f"torch_{args.epochs}ep.log", sidecar)
    data = _read_json(out, "--skip_torch")
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if data.get("smoke"):
        raise SystemExit(f"{out} is a smoke run (--max_batches/--max_eval_batches); rerun without --skip_torch")
    return {
        "implementation": "torch", "epochs": data["num_epochs"], "test_ppl": data["test_ppl"],
        "test_loss": data["test_loss"], "best_val_ppl": data["best_val_ppl"], "val_ppl": data["val_ppl"],
        "epoch_seconds": data["epoch_seconds"],
        "process_seconds": info.get("process_seconds", data["wall_seconds"]),
        "internal_seconds": data["wall_seconds"],
        "loadavg_start": info.get("loadavg_start", data["loadavg_start"]),
        "loadavg_end": info.get("loadavg_end", data["loadavg_end"]),
        "command": info.get("command"), "threads": data["threads"], "vocab_size": data["vocab_size"],
        "parameters": data["parameters"], "raw": str(out),
    }


def rnnlab_run(args, workdir: Path) -> dict:
    run_dir = workdir / f"rnnlab_{args.epochs}ep"
    sidecar = workdir / f"rnnlab_{args.epochs}ep.run.json"
    if not args.skip_rnnlab:
        if run_dir.exists():
            if not (run_dir / "config.json").is_file():
                raise SystemExit(f"{run_dir} exists but is no rnnlab workdir; remove it or pick another --workdir")
            shutil.rmtree(run_dir)  # a fresh run: the same workdir would resume (or report 'already finished')
        cmd = [sys.executable, "-m", "rnnlab.main", f"--config={CONFIG}", f"--workdir={run_dir}",
               "--config.generate.length=0"]
        if args.epochs != DEFAULT_EPOCHS:
            cmd.append(f"--config.train.num_epochs={args.epochs}")
        run_logged("rnnlab", cmd, workdir / f"rnnlab_{args.epochs}ep.log", sidecar)
    result = _read_json(run_dir / "result.json", "--skip_rnnlab")
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    valid_rows = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
        valid_rows = [r for r in rows if r.get("kind") == "valid"]
    times = [r["time"] for r in valid_rows]
    starts = ([info["start_time"]] if "start_time" in info else [float("nan")]) + times[:-1]
    config = json.loads((run_dir / "config.json").read_text())
    epochs = config["train"]["num_epochs"]
    if len(valid_rows) != epochs:
        log(f"WARNING: {metrics} has {len(valid_rows)} validations for {epochs} epochs (a resumed run?)")
    return {
        "implementation": "rnnlab", "epochs": epochs, "test_ppl": result["test_ppl"],
        "test_loss": result["test_nll"], "best_val_ppl": result["valid_ppl"],
        "val_ppl": [r["ppl"] for r in valid_rows],
        # first epoch: from process launch (imports, data, compilation included)
        "epoch_seconds": [t - s for t, s in zip(times, starts, strict=True)],
        "process_seconds": info.get("process_seconds", result["train_seconds"]),
        "internal_seconds": result["train_seconds"],
        "loadavg_start": info.get("loadavg_start"), "loadavg_end": info.get("loadavg_end"),
        "command": info.get("command"), "parameters": result.get("parameters"), "raw": str(run_dir),
    }


# ----------------------------------------------------------------------------- report


def summarize(torch_res: dict, rnnlab_res: dict) -> dict:
    return {
        "ppl_ratio_rnnlab_over_torch": rnnlab_res["test_ppl"] / torch_res["test_ppl"],
        "time_ratio_torch_over_rnnlab": torch_res["process_seconds"] / rnnlab_res["process_seconds"],
        "internal_time_ratio_torch_over_rnnlab": torch_res["internal_seconds"] / rnnlab_res["internal_seconds"],
    }


def _load(v) -> str:
    return "—" if not v else f"{v[0]:.2f}"


def _num(v, spec: str) -> str:
    return "—" if v is None or v != v else format(v, spec)


def markdown(torch_res: dict, rnnlab_res: dict, summary: dict, env: dict) -> str:
    lines = [
        "## rnnlab vs PyTorch word_language_model: WikiText-2 (train valid.txt[:3390], "
        "valid valid.txt[3390:], test test.txt)",
        "",
        "| implementation | epochs | test ppl | wall min | ppl / torch ppl | torch time / time | best valid ppl "
        "| internal min | load avg (1 min) start → end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in (torch_res, rnnlab_res):
        ppl_ratio = r["test_ppl"] / torch_res["test_ppl"]
        time_ratio = torch_res["process_seconds"] / r["process_seconds"]
        lines.append(
            f"| {r['implementation']} | {r['epochs']} | {r['test_ppl']:.2f} | {r['process_seconds'] / 60:.2f} | "
            f"{ppl_ratio:.3f} | {time_ratio:.2f} | {_num(r.get('best_val_ppl'), '.2f')} | "
            f"{r['internal_seconds'] / 60:.2f} | {_load(r.get('loadavg_start'))} → {_load(r.get('loadavg_end'))} |"
        )
    lines += [
        "",
        f"- test ppl ratio rnnlab / torch = {summary['ppl_ratio_rnnlab_over_torch']:.3f} (< 1: rnnlab better)",
        f"- time ratio torch / rnnlab = {summary['time_ratio_torch_over_rnnlab']:.2f} on process wall time "
        f"({summary['internal_time_ratio_torch_over_rnnlab']:.2f} on the times each program measures itself; "
        "> 1: rnnlab faster)",
        "- wall min: process launch to exit (imports, data, JIT compilation, training, validation, test). "
        "internal min: torch script start to after its test evaluation; rnnlab result.json train_seconds "
        "(stops before its final valid/test evaluation).",
        "- torch's batchify drops the last N mod 10 valid/test tokens; rnnlab scores all N - 1 targets. "
        "Seeds differ (torch 1111, rnnlab 0).",
        f"- machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs; torch threads "
        f"{torch_res.get('threads', '?')}; runs one after the other. A load average above the CPU count "
        "means other processes shared the machine and slowed the timings.",
    ]
    n = max(len(torch_res.get("val_ppl", [])), len(rnnlab_res.get("val_ppl", [])))
    if n:
        lines += ["", "| epoch | torch valid ppl | rnnlab valid ppl | torch s | rnnlab s |", "|---:|---:|---:|---:|---:|"]
        get = lambda r, k, i: r.get(k, [])[i] if i < len(r.get(k, [])) else None
        for i in range(n):
            lines.append(
                f"| {i + 1} | {_num(get(torch_res, 'val_ppl', i), '.2f')} | {_num(get(rnnlab_res, 'val_ppl', i), '.2f')} | "
                f"{_num(get(torch_res, 'epoch_seconds', i), '.1f')} | {_num(get(rnnlab_res, 'epoch_seconds', i), '.1f')} |"
            )
        lines.append("")
        lines.append("(epoch s: torch, training + validation as the example prints it; rnnlab, between "
                     "validations, the first from process launch so it includes imports and JIT compilation.)")
    return "\n".join(lines)


def environment() -> dict:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": version("torch"), "jax": version("jax"), "jaxlib": version("jaxlib"),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS")}


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment()
    load = os.getloadavg()
    log(f"environment: {json.dumps(env)}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 0.5 * (os.cpu_count() or 1):
        log(f"WARNING: 1-minute load average {load[0]:.2f} on {os.cpu_count()} CPUs: other processes are "
            "running and will slow both runs (unevenly, if the load changes between them)")
    torch_res = torch_run(args, workdir)
    rnnlab_res = rnnlab_run(args, workdir)
    summary = summarize(torch_res, rnnlab_res)
    md = markdown(torch_res, rnnlab_res, summary, env)
    log("")
    log(md)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    payload = {"config": {k: v for k, v in vars(args).items()}, "environment": env,
               "torch": torch_res, "rnnlab": rnnlab_res, "summary": summary}
    (results / "lm_vs_pytorch.json").write_text(json.dumps(payload, indent=1))
    (results / "lm_vs_pytorch.md").write_text(md + "\n")
    log(f"wrote {results / 'lm_vs_pytorch.json'} and {results / 'lm_vs_pytorch.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
