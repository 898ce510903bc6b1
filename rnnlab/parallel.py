"""Data-parallel training: a ``jax.sharding`` mesh with one axis, 'data', over
every device; batches (and TBPTT carries, which have a batch axis) are split
along it, parameters and optimizer state are replicated. The jitted train
steps stay as they are: XLA's sharding propagation turns the batch mean into
per-device partial sums and one all-reduce of the gradients (what DDP does).

``train.data_parallel`` switches it:
  'off'        one device, exactly the single-device code path
  'auto'       every local device when there are several, else 'off'
  'multihost'  first ``jax.distributed.initialize()`` (with no arguments it reads
               the cluster from the environment: SLURM's SLURM_JOB_ID,
               SLURM_NODELIST, SLURM_PROCID ..., one process per node or per
               task), then every device of every process

Every process computes the whole global batch (batches are pure in (seed,
step), so they agree) and keeps the rows of its own devices
(``jax.make_array_from_callback``). Results equal the single-device run up to
float rounding (the order of the batch sum changes).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODES = ("off", "auto", "multihost")
AXIS = "data"

_initialized = False


def initialize_distributed() -> None:
    """``jax.distributed.initialize()`` once per process; under SLURM it reads the
    coordinator, process count and id from the environment (srun sets them)."""
    global _initialized
    if not _initialized:
        jax.distributed.initialize()
        _initialized = True


def make_mesh(mode: str, batch_size: int) -> Mesh | None:
    """The 'data' mesh for ``mode`` (see the module docstring), or None for one
    device. Checks that ``batch_size`` splits evenly over the devices."""
    if mode not in MODES:
        raise ValueError(f"train.data_parallel must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return None
    if mode == "multihost":
        initialize_distributed()
    devices = jax.devices()  # every process's devices (only the local ones without distributed init)
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {len(devices)} devices of the data-parallel mesh; "
            f"use a batch size that is a multiple of {len(devices)} (e.g. {len(devices) * max(1, round(batch_size / len(devices)))}), "
            "or set --config.train.data_parallel=off to train on one device"
        )
    return Mesh(np.array(devices), (AXIS,))


def _put(mesh: Mesh, x: Any, spec: PartitionSpec) -> jax.Array:
    x = np.asarray(x)
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicate(mesh: Mesh | None, tree: Any) -> Any:
    """Every leaf copied to every device of the mesh (identity without one)."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda x: _put(mesh, x, PartitionSpec()), tree)


def shard_batch(mesh: Mesh | None, tree: Any, batch_axis: int) -> Any:
    """Split each leaf along ``batch_axis`` over the 'data' axis; leaves with
    fewer dimensions (scalars such as a new-epoch flag) are replicated."""
    if mesh is None:
        return tree

    def put(x):
        ndim = np.ndim(x)
        if ndim <= batch_axis:
            return _put(mesh, x, PartitionSpec())
        return _put(mesh, x, PartitionSpec(*([None] * batch_axis), AXIS))

    return jax.tree.map(put, tree)


def to_host(x: Any) -> np.ndarray:
    """A numpy copy of a (possibly sharded) array: gathered across processes when
    this process does not hold all of it (multi-host carries)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.array(x)


def describe(mesh: Mesh | None) -> str:
    if mesh is None:
        return "1 device"
    return (f"data parallel over {mesh.devices.size} {mesh.devices.flat[0].platform} devices"
            f"{f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''}")
