"""Orbax checkpoints in a run's workdir.

    workdir/checkpoints/<step>/   the latest ``keep`` saves (periodic, at evals, at the end)
    workdir/best/<step>/          the one with the best validation loss so far
    workdir/snapshots/<step>/     at chosen steps (train.checkpoint_steps), kept for good:
                                  what probes and reports read back

Each save holds ``state`` (params, optimizer state, TBPTT carries, step: arrays)
and ``meta`` (JSON: learning-rate schedule state, best validation, data
position): no pickle. Orbax writes into a temporary folder and renames it when
complete, so a kill mid-save leaves the previous checkpoints intact; a
checkpoint that is unreadable anyway (disk trouble, a hand-edited file) is
skipped on resume for the previous one, with a warning.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

# Orbax logs every save at INFO through absl; our progress lines say what matters.
logging.getLogger("absl").setLevel(logging.WARNING)


def _manager(path: str, keep: int | None, async_save: bool) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        path,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        ),
    )


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """The run's three checkpoint folders (this module is the one place that makes
    Orbax managers): ``latest`` (resume), ``best`` and ``snapshots``."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.latest = _manager(os.path.join(self.workdir, "checkpoints"), keep, async_save)
        self.best = _manager(os.path.join(self.workdir, "best"), 1, async_save)
        self._async = async_save
        self._snapshots: ocp.CheckpointManager | None = None  # made at the first snapshot

    @property
    def snapshots(self) -> ocp.CheckpointManager:
        if self._snapshots is None:  # never deleted (max_to_keep None)
            self._snapshots = _manager(os.path.join(self.workdir, "snapshots"), None, self._async)
        return self._snapshots

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False, snapshot: bool = False) -> None:
        """Save asynchronously (returns once arrays are copied off the device) into
        ``latest``, or ``best``, or ``snapshots``."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        manager = self.snapshots if snapshot else self.best if best else self.latest
        if step in manager.all_steps():
            return  # already saved at this step (e.g. an eval and a periodic save coincide)
        manager.save(step, args=args)

    def restore_latest(self, like_state: Any, *, from_best: bool = False) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest readable checkpoint, or None."""
        manager = self.best if from_best else self.latest
        steps = sorted(manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_abstract(like_state)), meta=ocp.args.JsonRestore()
                    ),
                )
                return step, restored.state, dict(restored.meta)
            except Exception as e:  # noqa: BLE001 - any failure to read means "not a good checkpoint"
                nxt = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint left"
                print(
                    f"WARNING: checkpoint at step {step} in {manager.directory} is unreadable "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {nxt}",
                    file=sys.stderr, flush=True,
                )
        return None

    def _managers(self) -> list[ocp.CheckpointManager]:
        return [m for m in (self.latest, self.best, self._snapshots) if m is not None]

    def wait(self) -> None:
        for m in self._managers():
            m.wait_until_finished()

    def close(self) -> None:
        self.wait()
        for m in self._managers():
            m.close()


def snapshot_steps(workdir: str) -> list[int]:
    """The steps of ``workdir``'s snapshots (train.checkpoint_steps), ascending."""
    d = os.path.join(workdir, "snapshots")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def load_snapshot_params(workdir: str, step: int, like_params: Any) -> Any:
    """The params of ``workdir``'s snapshot at ``step``, cast to ``like_params``' dtypes
    (a pytree of arrays or ShapeDtypeStructs of the same structure)."""
    return load_params(os.path.join(workdir, "snapshots", str(step)), like_params)


class CheckpointMismatch(ValueError):
    """A readable checkpoint that does not fit the asking config (another model, no such item)."""


def load_params(path: str, like_params: Any, *, item: str = "params", with_step: bool = False) -> Any:
    """Parameters from a workdir (its best checkpoint, else its latest) or from one
    checkpoint folder, for warm starts (``--config.init_from``) and inference.
    Shapes must match ``like_params``; the error names the first mismatch. An
    unreadable checkpoint (a torn write) falls back to the next older one.

    ``item``: which subtree of the saved state to return (``"ema"``: the running
    average of the weights a speech run keeps, shaped like the parameters).
    ``with_step``: return ``(tree, step)``, the step the checkpoint was saved at."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"init_from: {path} does not exist; pass a run's workdir or a checkpoint folder")
    candidates = []
    for sub in ("best", "checkpoints"):
        d = os.path.join(path, sub)
        if os.path.isdir(d):
            steps = sorted((int(s) for s in os.listdir(d) if s.isdigit()), reverse=True)
            candidates += [os.path.join(d, str(s)) for s in steps]
    if not candidates:
        candidates = [path]
    last_error = None
    for ckpt in candidates:
        try:
            # The handler, not a StandardCheckpointer: the latter looks for the
            # step's _CHECKPOINT_METADATA inside state/ and logs a spurious
            # "Metadata file does not exist" warning on every load.
            state_dir = epath.Path(ckpt) / "state"
            reader = ocp.StandardCheckpointHandler()
            try:
                meta = reader.metadata(state_dir)
                tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
                if item not in tree:
                    raise CheckpointMismatch(f"checkpoint {ckpt} has no {item!r} (it holds {sorted(tree)})")
                saved = _shapes(tree[item])
                wanted = _shapes(like_params)
                if saved != wanted:
                    diff = next((k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)), "?")
                    raise CheckpointMismatch(
                        f"checkpoint {ckpt} holds parameters of another model: at {diff} it has "
                        f"{saved.get(diff)}, this config needs {wanted.get(diff)}"
                    )
                full = reader.restore(state_dir)
            finally:
                reader.close()
            out = jax.tree.map(lambda like, a: jax.numpy.asarray(a, like.dtype), like_params, full[item])
            return (out, int(full["step"])) if with_step else out
        except CheckpointMismatch:
            raise
        except Exception as e:  # noqa: BLE001  (a torn file: JSONDecodeError is a ValueError too)
            last_error = e
            print(f"WARNING: cannot read {ckpt} ({type(e).__name__}); trying an older one", file=sys.stderr)
    raise FileNotFoundError(f"no readable checkpoint under {path}: {last_error}")


def _shapes(tree: Any) -> dict[str, tuple]:
    return {jax.tree_util.keystr(p): tuple(getattr(v, "shape", ())) for p, v in jax.tree_util.tree_leaves_with_path(tree)}
