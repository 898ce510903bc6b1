"""Time of one training step of the speech recognizer for several convolutional
front ends, or several implementations of the native recurrent layer, side by side
in one run: what a coarser frame rate into the recurrent stack buys, and what the
native layer's handling of padding and of ensemble members buys.

    python benchmarks/speech_step.py                    # fsdd_vote_gru: x4 (the recipe) against two x8 front ends
    python benchmarks/speech_step.py --front_ends '5:2:128,3:2:128;5:4:128,3:2:128' --repeats 20 --json out.json
    python benchmarks/speech_step.py --front_ends '5:2:128,3:2:128' --implementations before,padding,now
    python benchmarks/speech_step.py --variant fsdd_vote4_gru --front_ends '5:2:128,3:2:128' --member_threads 1,2
    python benchmarks/speech_step.py --quick            # the smoke config; what tests/test_speech.py runs

Implementations (``rnnlab.native`` settings, read when the step is traced; each gets
a jitted step of its own; the results are bitwise the same, tests/test_native.py):
  before   padded steps computed and dropped; the members' layers under vmap as one
           native call in a loop (rnnlab up to 2026-12-05)
  padding  padded steps left out of the GEMMs (native.options skip_padding); members as before
  now      both: padding left out, one native call per member (native.options vmap_method)

What is timed, identically for every front end: ``rnnlab.tasks.speech.train_step``
(the jitted step the trainer runs: features, front end, bidirectional stack, CTC
loss, gradients, clipped Adam update of every ensemble member, the weight EMA) on
the same training batches of ``experiments/speech_recognition.py:VARIANT``
(``--batches`` of them, drawn as the trainer draws them: ``audio.connected_batch``
at steps 0, 1, ...). Every front end starts from the same initial weights where
the shapes agree (a stride does not change a kernel's shape).

Member threads (``--member_threads 1,2``; train.member_threads of an ensemble variant): 1 is
the trainer's one program over all members; G > 1 trains the members in G groups, each
group's step on a thread of its own (``experiments/speech/recipe.py MemberThreads``), the native
loop's threads divided among them. Equal to one program to float rounding, not bitwise.

Each step is compiled for every batch shape (frames are padded to a multiple of
``data.bucket``) before anything is timed. Then ``--repeats`` rounds: in each round
every front end runs every batch once, the front ends in an order that cycles through
all permutations (round-robin: machine noise hits all alike). Reported per front end:
the median step time over the rounds' per-batch times, frames per second, and the
speed ratio ``first_time / this_time`` against the first front end (the peer, the
recipe's own by default; above 1 = faster), plus what 3000 steps would take at that
rate. Nothing here says whether a front end recognises as well: that is measured by
training (docs/speech).

The numbers only mean something on an otherwise idle machine; the script prints the
CPUs kept busy by other processes (sampled from /proc/stat for a second, before and
after; the 1-minute load average lags by minutes, e.g. after pausing a training) and warns
when that is above half a CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments import speech_recognition as sr  # noqa: E402
from experiments.speech import recipe  # noqa: E402
from rnnlab import native  # noqa: E402
from rnnlab.data import audio  # noqa: E402
from rnnlab.tasks import speech as ts  # noqa: E402
from rnnlab.train.optim import make_optimizer  # noqa: E402

RECIPE_STEPS = 3000


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="fsdd_vote_gru", help="experiments/speech_recognition.py variant")
    p.add_argument("--held_out", default="george")
    p.add_argument("--front_ends", default="",
                   help="';'-separated model.conv values; the first is the peer the ratios are against "
                        "(default: the variant's own, then 5:4:128,3:2:128 and 5:2:128,3:2:128,3:2:128)")
    p.add_argument("--batches", type=int, default=None, help="training batches timed (default 6; --quick: 2)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 5; --quick: 1)")
    p.add_argument("--root", default="", help="FSDD recordings ('' = $RNNLAB_FSDD or ../shared/data/fsdd/recordings)")
    p.add_argument("--quick", action="store_true", help="the smoke variant and its small front ends")
    p.add_argument("--implementations", default="now",
                   help="comma-separated native-layer implementations to time on every front end (before, "
                        "padding, now; the first front end's first implementation is the peer)")
    p.add_argument("--members", type=int, default=0, help="model.members (0: the variant's)")
    p.add_argument("--member_threads", default="1",
                   help="comma-separated train.member_threads values to time with every implementation (1: one "
                        "program over all members; G: the members in G groups, each on a thread of its own)")
    p.add_argument("--json", default="")
    return p.parse_args(argv)


IMPLEMENTATIONS = {  # rnnlab.native.options
    "before": {"skip_padding": False, "vmap_method": "sequential"},
    "padding": {"skip_padding": True, "vmap_method": "sequential"},
    "now": {"skip_padding": True, "vmap_method": "sequential_unrolled"},
}


def implementation(name: str):
    """rnnlab.native's options of implementation ``name`` while a step is traced."""
    return native.options(**IMPLEMENTATIONS[name])


def _with_threads(c, groups: int):
    c = c.copy_and_resolve_references()
    c.unlock()
    c.train.member_threads = groups
    return c


def config_for(variant: str, held_out: str, conv: str, root: str, members: int = 0):
    c = sr.get_config(f"{variant},held_out={held_out}")
    c.unlock()
    c.model.conv = conv
    if members:
        c.model.members = members
    c.data.root = root
    c.lock()
    return c


def busy_cpus(seconds: float = 1.0) -> float:
    """CPUs busy over the next ``seconds`` (from /proc/stat; the 1-minute load average where there is none)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        (t0, i0), _, (t1, i1) = sample(), time.sleep(seconds), sample()
    except OSError:
        return os.getloadavg()[0]
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / max(t1 - t0, 1))


def own_jit(jitted):
    """``jitted`` (a function under ``jax.jit(static_argnums=(0, 1), donate_argnums=(2,))``, the
    trainer's step) jitted again around a function object of its own: JAX caches traces by
    function, so each implementation gets its own trace, under its own settings."""
    def step(*args):
        return jitted.__wrapped__(*args)

    return jax.jit(step, static_argnums=(0, 1), donate_argnums=(2,))


def main(argv=None) -> dict:
    args = parse(argv)
    if args.quick:
        args.variant, args.held_out = "smoke", "jackson"
    args.batches = args.batches or (2 if args.quick else 6)
    args.repeats = args.repeats or (1 if args.quick else 5)
    base = sr.get_config(f"{args.variant},held_out={args.held_out}")
    front_ends = [f for f in args.front_ends.split(";") if f.strip()] if args.front_ends else []
    impls = [v.strip() for v in args.implementations.split(",") if v.strip()]
    try:
        thread_counts = [int(v) for v in args.member_threads.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--member_threads={args.member_threads!r}: expected comma-separated counts, e.g. 1,2") from None
    if not impls or any(v not in IMPLEMENTATIONS for v in impls) or len(set(impls)) != len(impls):
        raise SystemExit(f"--implementations={args.implementations!r}: choose from {', '.join(IMPLEMENTATIONS)}, "
                         "comma-separated, each once")
    if not front_ends:
        front_ends = [base.model.conv, "5:4:128,3:2:128", "5:2:128,3:2:128,3:2:128"]
        if args.quick:
            front_ends = [base.model.conv, "3:4:16", "3:2:16,3:2:16"]
    load_before = busy_cpus()
    if load_before > 0.5:
        print(f"warning: {load_before:.2f} of {os.cpu_count()} CPUs busy before the benchmark: the times measure the "
              "load as much as the step", flush=True)

    cs = [config_for(args.variant, args.held_out, conv, args.root, args.members) for conv in front_ends]
    models = [ts.build(c) for c in cs]  # a bad model.conv is refused here, before the data is read
    c0 = cs[0]
    with tempfile.TemporaryDirectory() as workdir:  # its feature cache, gone afterwards
        data = ts.load_data(c0, workdir)  # the front end does not change the data
    batches = [ts.device_batch(audio.connected_batch(data.train, data.noise_FxM, data.vocab, data.utterances,
                                                      c0.seed, s, c0.data.batch_size)) for s in range(args.batches)]
    frames = [int(b["lengths"].sum()) for b in batches]
    print(f"{args.variant}, held out {args.held_out}: {len(batches)} batches of {c0.data.batch_size}, frame counts "
          f"{sorted({b['logmel'].shape[1] for b in batches})} padded, {statistics.mean(frames):.0f} real frames "
          "per batch", flush=True)

    runs = []
    for conv, c, model in zip(front_ends, cs, models, strict=True):
        tx = make_optimizer(c.optim)
        for impl, groups in itertools.product(impls, thread_counts):
            state = ts.initial_state(model, tx, c)  # the trainer's own step-0 state
            n_params = sum(int(a.size) for a in jax.tree.leaves(state["params"]))
            name = conv + ("" if impls == ["now"] else f" {impl}") + (
                "" if thread_counts == [1] else f" member_threads={groups}")
            step = own_jit(ts.train_step)
            grouped = None
            if groups > 1:
                try:  # a bad count gets the trainer's own error
                    recipe.check_member_threads(_with_threads(c, groups))
                except ValueError as e:
                    raise SystemExit(f"--member_threads: {e}") from None
                grouped = recipe.MemberThreads(model, tx, groups, state, c.train.ema_decay, step=step)
                state = None
            runs.append({"conv": conv, "implementation": impl, "name": name, "member_threads": groups,
                         "subsampling": model.subsampling, "parameters": n_params, "model": model, "tx": tx,
                         "state": state, "grouped": grouped, "lr": jnp.float32(c.optim.lr),
                         "decay": jnp.float32(c.train.ema_decay), "key": jax.random.key(c.seed + 1),
                         "times_ms": [[] for _ in batches], "step": step})

    def one_step(r, b):
        if r["grouped"] is None:
            r["state"], m = r["step"](r["model"], r["tx"], r["state"], b, r["lr"], r["key"], r["decay"])
        else:
            r["grouped"].submit({"batch": b, "rng": r["key"]}, r["lr"])
            m = r["grouped"].collect()
        jax.block_until_ready(m)
        return float(m["loss"])

    for r in runs:  # compile every shape (and a first untimed step) before timing anything
        t = time.perf_counter()
        seen = set()
        with implementation(r["implementation"]):
            for b in batches:
                if b["logmel"].shape not in seen:
                    seen.add(b["logmel"].shape)
                    one_step(r, b)
        r["compile_and_first_s"] = time.perf_counter() - t
        print(f"  {r['name']} (x{r['subsampling']}, {r['parameters']:,} parameters): compiled "
              f"{len(seen)} shapes in {r['compile_and_first_s']:.1f} s", flush=True)

    orders = itertools.cycle(itertools.permutations(range(len(runs))))
    for rep in range(args.repeats):
        for i, b in enumerate(batches):
            for k in next(orders):
                r = runs[k]
                t = time.perf_counter()
                loss = one_step(r, b)
                r["times_ms"][i].append((time.perf_counter() - t) * 1e3)
                if not loss == loss:
                    raise FloatingPointError(f"{r['name']}: loss is NaN at repeat {rep}")
        print(f"  round {rep + 1}/{args.repeats} done", flush=True)

    load_after = busy_cpus()
    peer = runs[0]
    rows = []
    for r in runs:
        per_batch = [statistics.median(t) for t in r["times_ms"]]
        step_ms = statistics.mean(per_batch)  # the mean over the batches of each batch's median over rounds
        rows.append({"conv": r["conv"], "implementation": r["implementation"], "name": r["name"],
                     "member_threads": r["member_threads"],
                     "subsampling": r["subsampling"], "parameters": r["parameters"],
                     "step_ms": step_ms, "per_batch_median_ms": per_batch, "times_ms": r["times_ms"],
                     "frames_per_s": statistics.mean(frames) / (step_ms / 1e3),
                     "minutes_for_3000_steps": step_ms * RECIPE_STEPS / 6e4,
                     "compile_and_first_s": r["compile_and_first_s"]})
    for row in rows:
        row["speed_ratio_vs_peer"] = rows[0]["step_ms"] / row["step_ms"]

    print(f"\n| front end (model.conv){'' if impls == ['now'] else ' and implementation'} | frames into the stack "
          f"| step ms | frames/s | speed ratio vs {peer['name']} | 3000 steps (min) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | x{row['subsampling']} | {row['step_ms']:.0f} | {row['frames_per_s']:,.0f} | "
              f"{row['speed_ratio_vs_peer']:.2f} | {row['minutes_for_3000_steps']:.1f} |")
    print(f"\nCPUs busy with other work: {load_before:.2f} before, {load_after:.2f} after; {os.cpu_count()} CPUs; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    out = {"variant": args.variant, "held_out": args.held_out, "batches": len(batches), "repeats": args.repeats,
           "real_frames_per_batch": frames, "busy_cpus_before_after": [load_before, load_after], "cpus": os.cpu_count(),
           "peer": peer["conv"], "peer_implementation": peer["implementation"], "implementations": impls,
           "member_threads": thread_counts,
           "results": rows}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
