"""Entry point: the ONLY absl flags are --config (an ml_collections config file,
with an optional ':arg') and --workdir. Fields are overridden with dotted
flags, e.g. --config.optim.lr=3e-4; a mistyped key is an error (lock_config).

  python -m rnnlab.main --config=experiments/language_modelling.py:smoke --workdir=/tmp/run
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json. "
                               "The same workdir resumes the run.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is noise to users
    trainer(_CONFIG.value.trainer)(_CONFIG.value, _WORKDIR.value)


def trainer(spec: str):
    """'package.module:function' -> the function; every experiment config names its loop."""
    import importlib

    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config.trainer={spec!r} is not an importable 'module:function' ({e})") from e


if __name__ == "__main__":
    from rnnlab import allocator

    allocator.configure()  # before JAX starts its threads: freed memory reused, not page-faulted anew
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
