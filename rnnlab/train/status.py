"""``workdir/status.json``: what a run is doing, machine-readable, for ``launch``
and for people (``cat runs/x/status.json``). The training loop writes it; nobody
greps logs.

    {"state": "running" | "finished" | "stopped" | "failed" | "non-finite" | "diverged",
     "step": 1200, "total_steps": 1200, "updated": <unix time>,
     "metrics": {"loss": 1.27, "grad_norm": 0.4, ...},   # the last logged training step
     "message": "..." | null,                            # why it failed / stopped / diverged
     "diverged": false, "warnings": ["..."]}           # e.g. a divergence warning the run recovered from

``stopped``: the wall-clock deadline (train.max_minutes) or a preemption ended the
session before the last step; the same command resumes it. ``diverged``: the run
ended with its loss far above the task's memoryless baseline (see
``loop.Divergence``); its checkpoints and result are kept, and result.json says so
(``"diverged": true`` and ``"divergence"``, the message).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from rnnlab.train import writers

STATES = ("running", "finished", "stopped", "failed", "non-finite", "diverged")
FILE = "status.json"


def write(workdir: str, state: str, **fields: Any) -> dict:
    """Replace ``workdir/status.json`` atomically with ``state`` and ``fields``
    (fields not given keep their previous values: the last metrics survive a failure)."""
    if state not in STATES:
        raise ValueError(f"status state must be one of {STATES}, got {state!r}")
    old = read(workdir) or {}
    new = {**old, **fields, "state": state, "updated": time.time()}
    writers.write_json_atomic(os.path.join(workdir, FILE), {k: writers.jsonable(v) for k, v in new.items()})
    return new


def read(workdir: str) -> dict | None:
    """The run's status, or None when it has none (never started, or from before status.json)."""
    path = os.path.join(workdir, FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
