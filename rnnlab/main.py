"""Entry point: the ONLY absl flags are --config (an ml_collections config file,
with an optional ':arg') and --workdir. Fields are overridden with dotted
flags, e.g. --config.optim.lr=3e-4; a mistyped key is a one-line error with the
closest key as a suggestion (exit status 2), in the flag form and in the ':k=v'
form of the config argument alike.

  python -m rnnlab.main --config=experiments/language_modelling.py:smoke --workdir=/tmp/run
"""

from __future__ import annotations

import re
import sys

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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for ``app.run(main, flags_parser=parse_flags)``, with config
    errors as one line on stderr and exit status 2, e.g.
    ``error: config has no key 'train.tensorbord'; did you mean 'train.tensorboard'?``.
    ml_collections raises AttributeError/KeyError for a mistyped key (absl does not
    catch them: a 55-line traceback) and wraps an error of ``get_config`` (a bad
    variant or ':k=v' value) in a traceback; both become their one-line message.
    Other flag errors are absl's own 'FATAL Flags parsing error' (exit status 1)."""
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError) as e:
        _fail(_key_error_message(argv, e))
    except flags.Error as e:
        message = str(e)
        if "Error whilst parsing config file" in message:  # ml_collections' wrapper of get_config's error
            *_, last = re.finditer(r"^\s*[\w.]*(?:Error|Exception): ", message, re.M)
            _fail(" ".join(message[last.end():].split()))
        print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.",
              file=sys.stderr)
        sys.exit(1)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _key_error_message(argv: list[str], error: Exception) -> str:
    from ml_collections.config_flags import config_flags as cf

    from rnnlab import configs

    if isinstance(error, configs.ConfigKeyError):  # from the ':k=v' form (configs.set_dotted)
        return str(error)
    # --config.KEY=...: the config is not stored yet when its overrides fail; load it again
    config_arg = next((a.partition("=")[2] if "=" in a else argv[i + 1] for i, a in enumerate(argv[:-1])
                       if a.startswith("--config=") or a == "--config"), None)
    config = cf.ConfigFileFlagParser("config").parse(config_arg) if config_arg else None
    for arg in argv[1:]:
        key = arg.removeprefix("--config.").partition("=")[0]
        if arg.startswith("--config.") and config is not None and not configs.has_key(config, key):
            return configs.unknown_key_message(config, key)
    return f"{type(error).__name__}: {error}".replace("\n", " ")


if __name__ == "__main__":
    from rnnlab import allocator

    allocator.configure()  # before JAX starts its threads: freed memory reused, not page-faulted anew
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
