"""rnnlab: recurrent networks as pure JAX functions, scanned, tested against
PyTorch and Flax. See README.md for the quickstart and the cell contract.

The library, below the studies in experiments/ (it never imports them):
cells/ (one file per cell) and scan.py, fused.py, native/, layers.py (the time
engine); models/, data/; train/ (the one training loop, checkpoints, writers,
status.json) and tasks/ (what each kind of study brings to it); probes.py;
generate.py and ctc.py (decoding); report/ (trials to tables and figures);
main.py (the only flags: --config and --workdir)."""

from rnnlab import cells, scan
from rnnlab.layers import RecurrentStack, Stack

__all__ = ["cells", "scan", "Stack", "RecurrentStack"]
__version__ = "0.1.0"
