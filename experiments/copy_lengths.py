"""Copying memory at several delays: at which delay does each cell stop
remembering?

The copying-memory task (Arjovsky et al. 2016): ten symbols, a delay of blanks,
a delimiter, then the ten symbols to reproduce. The memoryless strategy (blanks,
then a uniform guess) scores ``n_copy * ln(n_symbols) / (delay + 2 * n_copy)`` nats a
step; a run is ``solved`` when its loss is under a tenth of that. The study trains
each cell at each delay over a few seeds and reports, per (cell, delay), the
final loss over the baseline with a 95% interval.

Run (from the repository root):
  python -m launch run experiments/copy_lengths.py --root=runs/copy_lengths --parallel=2
  python -m launch report experiments/copy_lengths.py --root=runs/copy_lengths
One trial alone:
  python -m rnnlab.main --config=experiments/copy_lengths.py:delay=50,cell=gru --workdir=runs/copy_gru_50

Variants (``get_config``'s argument; keys combine: ':smoke,cell=gru'):
  default  delays 10, 25, 50, 100; LSTM, GRU, tanh RNN; 32 units; 1000 Adam steps
  smoke    seconds: delay 5, 8 units, 20 steps (the tests run it)
Shorthands: cell, delay, seed, steps, H (model.d_hidden), lr.
Results: docs/copy_lengths/.

This file is the whole study: a config, the task it names (rnnlab.tasks.sequence)
and its sweep; the loop, checkpoints, resume and reports come from rnnlab.
"""

from __future__ import annotations

import ml_collections

from rnnlab import configs
from rnnlab.train import config as train_config

DELAYS = (10, 25, 50, 100)
CELLS = ("lstm", "gru", "elman")
SEEDS = (0, 1, 2)
METRIC = "eval/loss_over_baseline"  # what `launch report` tabulates: 1 = memoryless, 0.1 = solved
SHORTHAND = {"cell": "model.cell", "delay": "task.length", "seed": "seed", "steps": "train.num_steps",
             "H": "model.d_hidden", "lr": "optim.lr"}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, overrides = configs.parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.trainer = "rnnlab.tasks.sequence:train_and_evaluate"  # the task; rnnlab.main runs it on the one loop
    c.seed = 0  # params init; batches are pure in (seed, step)

    c.task = t = ml_collections.ConfigDict()
    t.name = "copy"
    t.length = 50  # the delay (T = delay + 2 * n_copy)
    t.n_copy = 10  # symbols to remember
    t.n_symbols = 8  # alphabet size
    t.batch_size = 32
    t.eval_batches = 2  # fresh batches per evaluation
    t.eval_batch_size = 256

    c.model = m = ml_collections.ConfigDict()
    m.cell = "lstm"  # any module in rnnlab/cells
    m.cell_options = ""  # 'key=value,...' for the cell
    m.d_hidden = 32
    m.num_layers = 1
    m.recurrent_radius = 0.0  # >0: rescale the recurrent blocks to this spectral radius after init
    m.unroll = 1
    m.compute_dtype = ""  # 'bfloat16': matmuls and gates in bfloat16 (accelerators); weights, optimizer, carries float32

    c.optim = train_config.optim_config()
    c.optim.update(name="adam", lr=3e-3, clip_norm=1.0, schedule="cosine")
    c.train = train_config.train_config()
    c.train.update(num_steps=1000, log_every=100, eval_every=250, keep_checkpoints=1, tensorboard=False)

    if variant == "smoke":
        c.task.update(length=5, batch_size=8, eval_batches=1, eval_batch_size=32)
        c.model.d_hidden = 8
        c.train.update(num_steps=20, log_every=5, eval_every=10)
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of copy_lengths; choose default or smoke")
    for k, v in overrides.items():
        configs.set_dotted(c, SHORTHAND.get(k, k), v)
    c.lock()
    return c


def sweep(add):
    """Every cell at every delay, three seeds."""
    for delay in DELAYS:
        for cell in CELLS:
            for seed in SEEDS:
                add(**{"task.length": delay, "model.cell": cell, "seed": seed})


def smoke(add):
    """Two delays and two cells, one trial each, one seed: what the tests run."""
    for delay, cell in ((3, "lstm"), (5, "gru")):
        add(**{"task.length": delay, "model.cell": cell, "seed": 0})


GRIDS = {"sweep": (sweep, "default"), "smoke": (smoke, "smoke")}
