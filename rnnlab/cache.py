"""Where rnnlab keeps what it computes once per machine (the compiled native layer, the parsed
chorales, the classical forecasts): ``$RNNLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnlab``,
else ``~/.cache/rnnlab``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("RNNLAB_CACHE_DIR"):
        return Path(os.environ["RNNLAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnlab"
