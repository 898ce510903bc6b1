"""A sweep's trials read from their workdirs: config.json (flattened to dotted keys),
result.json (present once a run finished), metrics.jsonl and status.json.

    trials = gather("runs/lstm_vs_gru")          # or a list of workdirs
    t = trials[0]
    t["name"], t["config"]["optim.lr"], t["result"], t["state"], t["metrics"]

The run's state comes from ``status.json`` (written by the training loop; see
rnnlab/train/status.py). A workdir without one (a run from before status.json, or
one that never started) is 'finished' when result.json exists, 'unknown' when it
logged metrics, else 'not started'. Logs are never read.
"""

from __future__ import annotations

import json
import os

from rnnlab.train import status as status_lib
from rnnlab.train import writers


def flat(d: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_state(workdir: str) -> dict:
    """{state, step, total_steps, message, last_metrics} of a run: status.json's, or the
    fallback above ('finished' / 'unknown' / 'not started') when it has none."""
    st = status_lib.read(workdir)
    if st is not None:
        return {"state": st.get("state"), "step": st.get("step"), "total_steps": st.get("total_steps"),
                "message": st.get("message"), "last_metrics": st.get("metrics") or {}}
    result = _json(os.path.join(workdir, "result.json"))
    if result is not None:
        state = "finished"
    elif os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        state = "unknown"
    else:
        state = "not started"
    return {"state": state, "step": (result or {}).get("step"), "total_steps": None, "message": None, "last_metrics": {}}


def read_trial(workdir: str, name: str | None = None) -> dict:
    """One trial: name, workdir, config (flat), result (or None), metrics rows and its state."""
    config = _json(os.path.join(workdir, "config.json")) or {}
    has_metrics = os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    return {"name": name or os.path.basename(os.path.normpath(workdir)), "workdir": os.path.abspath(workdir),
            "config": flat(config), "result": _json(os.path.join(workdir, "result.json")),
            "metrics": writers.read_metrics(workdir) if has_metrics else [], **run_state(workdir)}


def workdirs(root: str) -> list[str]:
    """The trial workdirs under ``root`` (folders holding config.json), sorted; ``root``
    itself when it is one."""
    if os.path.exists(os.path.join(root, "config.json")):
        return [root]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} does not exist; pass the sweep's root (the folder of its workdirs)")
    return sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "config.json")))


def gather(root_or_workdirs: str | list[str]) -> list[dict]:
    """Every trial under a sweep root (or of the given workdirs), read by ``read_trial``."""
    dirs = workdirs(root_or_workdirs) if isinstance(root_or_workdirs, str) else list(root_or_workdirs)
    return [read_trial(wd) for wd in dirs]
