"""Metrics out: JSONL (the source of truth), TensorBoard event files (tensorboardX,
no TensorFlow), and console progress lines with throughput and ETA."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any


def jsonable(v: Any) -> Any:
    """``v`` as JSON can hold it: numbers as floats (NaN/Inf as strings), dicts and lists inside."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, Mapping):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    return f if math.isfinite(f) else str(f)  # JSON has no NaN/Inf


class MetricWriter:
    """Appends one JSON object per call to ``metrics.jsonl``; mirrors scalars to
    TensorBoard. On resume, lines past the restored step are dropped so the file
    stays a clean history of the run that continues. In a multi-host run only
    process 0 writes (every process computes the same replicated metrics)."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        import jax

        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self.enabled = jax.process_index() == 0
        if tensorboard and self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=30)

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, "time": time.time()}
        row.update({k: float(v) if isinstance(v, bool) else jsonable(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k in metrics:
                if isinstance(row[k], float):
                    self._tb.add_scalar(f"{kind}/{k}", row[k], step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temporary file and rename it over ``path``: a crash or kill
    leaves either the old file or the new one, never half of one.

    The temporary file's name is unique (``tempfile.mkstemp``): processes of one
    multi-host run write the same config.json into one shared workdir at the same
    time, and with a shared ``.tmp`` name one rank's rename took the other's file
    away (FileNotFoundError in the other rank)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_finished_result(result_path: str) -> dict | None:
    """The summary of a finished run (its result.json), announced on the console; None
    when the run has not finished."""
    if not os.path.exists(result_path):
        return None
    with open(result_path) as f:
        summary = json.load(f)
    print(f"run already finished: {json.dumps(summary)}", flush=True)
    return summary


def read_metrics(workdir: str, kind: str | None = None) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Console lines: step/total, metrics, tokens per second, ETA. Throughput is
    measured between calls, so compilation time is excluded after the first."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=None):
        self.total, self.stream = total_steps, stream or sys.stdout
        self._t0, self._step0 = time.time(), start_step
        self._last_t, self._last_step = self._t0, start_step

    def line(self, step: int, metrics: Mapping[str, Any], tokens_per_step: int) -> str:
        now = time.time()
        dt, ds = now - self._last_t, step - self._last_step
        rate = ds / dt if dt > 0 and ds > 0 else 0.0
        self._last_t, self._last_step = now, step
        eta = (self.total - step) / rate if rate else float("nan")
        parts = [f"step {step}/{self.total}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        parts.append(f"{rate * tokens_per_step:,.0f} tok/s")
        parts.append(f"ETA {_duration(eta) if rate else '?'}")
        text = " | ".join(parts)
        print(text, file=self.stream, flush=True)
        return text

    def elapsed(self) -> float:
        return time.time() - self._t0
