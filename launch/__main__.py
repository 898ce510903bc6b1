"""python -m launch {run,status,report} EXPERIMENT --root=ROOT [--grid=sweep] [--variant=V]

  run     expand the grid into trials and run the unfinished ones: locally (--parallel N at once,
          one GPU each on a GPU machine), one after another in this process (--executor=inline:
          for a debugger, or many tiny trials) or on SLURM as one array job (--executor=slurm, with
          --partition --account --gpus --cpus --mem_gb --time_min); --dry_run prints the commands.
          Finished trials are skipped, interrupted ones resume; a failing trial does not stop the others.
  status  each trial's state (pending/running/finished/failed/non-finite/diverged/stopped/interrupted/
          requeued; from each run's status.json), last step and main metric.
  report  ROOT's trials in one table (mean ± std and 95% CI over seeds per configuration, best
          step; 2-seed intervals flagged, a loss's interval clipped at 0), learning curves; CSV,
          Markdown and PNG in --out (default ROOT/report).
A config the grid cannot build (a mistyped key, a wrong type, an unknown cell) is refused in
one line naming the trial, before any trial starts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from launch import report, sweep
from launch import status as status_lib
from launch import trials as trials_lib


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "status", "report"):
        s = sub.add_parser(name)
        s.add_argument("experiment", help="experiment file, e.g. experiments/gradient_flow.py")
        s.add_argument("--root", required=True, help="folder of the trials' workdirs (ROOT/NAME)")
        s.add_argument("--grid", default="sweep", help="the file's function of `add` that lists the trials")
        s.add_argument("--variant", default=None, help="get_config's arg, e.g. 'smoke' (default: the grid's own, "
                       "from the file's GRIDS, else the default variant)")
        s.add_argument("--cells", default="", help="comma-separated cells to compare, for a grid that takes "
                       "them (e.g. --cells=lstm,gru,mycell); the same list for run, status and report")
        s.add_argument("--metric", default=None, help="main metric KIND/KEY of metrics.jsonl (default: the "
                       "file's METRIC, else eval/loss or valid/nll)")
    run = sub.choices["run"]
    run.add_argument("--dry_run", action="store_true", help="print each trial's command and exit")
    run.add_argument("--executor", choices=("local", "inline", "slurm"), default="local")
    run.add_argument("--parallel", type=int, default=0, help="local: trials at once (0: one per GPU, 2 on CPU); "
                     "slurm: array tasks at once (0: all)")
    run.add_argument("--partition", default="")
    run.add_argument("--account", default="")
    run.add_argument("--gpus", type=int, default=0, help="slurm: GPUs per trial")
    run.add_argument("--cpus", type=int, default=1, help="slurm: CPUs per trial")
    run.add_argument("--mem_gb", type=float, default=0, help="slurm: memory per trial (0: the partition's default)")
    run.add_argument("--time_min", type=int, default=60, help="slurm: time limit per job; a trial that needs more "
                     "is requeued at the limit and resumes")
    run.add_argument("--no_wait", action="store_true", help="slurm: submit and return; see `status` later")
    sub.choices["report"].add_argument("--out", default="", help="report folder (default ROOT/report)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:  # every trial's config is built and checked here, before anything runs
        module = trials_lib.load_experiment(args.experiment)
        cells = [c for c in args.cells.split(",") if c] or None
        trials = trials_lib.expand(args.experiment, args.root, args.grid, args.variant, cells)
    except ValueError as e:
        print(f"launch {args.command}: {e}", file=sys.stderr, flush=True)
        return 2
    metric = args.metric or trials_lib.metric_spec(module)
    if args.command == "status":
        print(status_lib.format_table(status_lib.table(trials, metric)))
        return 0
    if args.command == "report":
        name = os.path.splitext(os.path.basename(args.experiment))[0]
        report.write_report(trials, args.out or f"{args.root}/report", metric,
                            title=f"{args.experiment} grid {args.grid}", study=name)
        return 0
    resources = dict(partition=args.partition, account=args.account, gpus=args.gpus, cpus=args.cpus,
                     mem_gb=args.mem_gb, time_min=args.time_min) if args.executor == "slurm" else {}
    if args.dry_run:
        for t in trials:
            print(shlex.join(t.command()))
        each = ", ".join(f"{k} {v}" for k, v in resources.items() if v) or f"--parallel {args.parallel or 'auto'}"
        print(f"{len(trials)} trials of grid {args.grid}, executor {args.executor} ({each}); nothing was started")
        return 0
    outcomes = sweep.run_trials(trials, args.root, executor=args.executor, parallel=args.parallel,
                                wait=not args.no_wait, **resources)
    if args.executor == "slurm" and args.no_wait:
        return 0
    print(status_lib.format_table(status_lib.table(trials, metric)))
    return 0 if all(o["state"] == "finished" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
