"""rnnlab: recurrent networks as pure JAX functions, scanned, tested against
PyTorch and Flax. See README.md for the quickstart and the cell contract."""

from rnnlab import cells, scan
from rnnlab.layers import RecurrentStack, Stack

__all__ = ["cells", "scan", "Stack", "RecurrentStack"]
__version__ = "0.1.0"
