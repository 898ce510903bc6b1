"""A sweep's trials: an experiment file's grid function (``sweep(add)`` or any other
function of the file taking ``add``) expanded into (name, overrides, workdir,
command), every config resolved and checked before anything runs.

Every trial's config is built (the experiment's get_config plus the grid's
overrides) before any trial starts, and refused in one line naming the trial when
a key is mistyped, a value has the wrong type, or the cell is not registered in
rnnlab.cells (or its options are not the cell's).

A trial is exactly the command a user would type:
    python -m rnnlab.main --config=EXPERIMENT[:VARIANT] --workdir=ROOT/NAME --config.k=v ...
The workdir is the trial's identity: the same command resumes it from its latest
checkpoint, and a finished trial has ``result.json`` there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import ml_collections

from rnnlab import cells, configs
from rnnlab.train.config import resume_conflicts

STATUS_FILE = "launch.json"  # written by the launcher into each workdir: state, job id, return code, error
DEFAULT_METRICS = ("eval/loss", "valid/nll")  # KIND/KEY in metrics.jsonl, first one present wins


@dataclasses.dataclass(frozen=True)
class Trial:
    name: str
    overrides: dict  # dotted config key -> value, as the grid added them
    workdir: str  # absolute
    experiment: str  # absolute path of the experiment file
    variant: str  # get_config's arg: 'smoke' or 'smoke,T=50' ('' = the file's default)

    def command(self, python: str = "") -> list[str]:
        config = self.experiment + (f":{self.variant}" if self.variant else "")
        cmd = [python or sys.executable, "-u", "-m", "rnnlab.main", f"--config={config}", f"--workdir={self.workdir}"]
        return cmd + [f"--config.{k}={v}" for k, v in self.overrides.items()]


def load_experiment(path: str) -> ModuleType:
    """The experiment file as a module (it need not be importable by name)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"experiment file {path} does not exist; pass a path like experiments/gradient_flow.py")
    spec = importlib.util.spec_from_file_location(f"_experiment_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid_function(module: ModuleType, grid: str):
    fn = getattr(module, grid, None)
    if not callable(fn):
        have = sorted(n for n in ("sweep", "full", "smoke") if callable(getattr(module, n, None)))
        raise ValueError(f"experiment {module.__file__} has no grid function {grid}(add); define "
                         f"`def {grid}(add): add(**{{'optim.lr': 1e-3}}) ...` in it or pick --grid from {have}")
    return fn


def default_variant(module: ModuleType, grid: str) -> str:
    """A file's GRIDS = {'smoke': (smoke, 'smoke'), ...} names each grid's variant; else ''."""
    entry = getattr(module, "GRIDS", {}).get(grid)
    return entry[1] if isinstance(entry, tuple) and len(entry) == 2 else ""


def resolve(module: ModuleType, variant: str, overrides: dict) -> ml_collections.ConfigDict:
    """The config rnnlab.main will build for this trial; a key the config lacks, or a
    value that does not convert to the key's type, is a one-line ValueError."""
    c = module.get_config(variant)
    c.unlock()
    for k, v in overrides.items():
        try:
            configs.set_dotted(c, k, str(v))
        except KeyError as e:
            raise ValueError(f"override {k}={v!r}: the config of {module.__file__}:{variant} has no key {k!r}; "
                             "fix the grid function (see base_config() for the keys)") from e
        except (TypeError, ValueError) as e:
            raise ValueError(f"override {k}={v!r}: not a valid value for {k} "
                             f"({' '.join(str(e).split())}); fix the grid function") from e
    c.lock()
    return c


def check_cell(config: ml_collections.ConfigDict) -> None:
    """A config with model.cell names a registered cell whose options it accepts (the
    check rnnlab.main would make seconds into each trial)."""
    model = config.get("model") if hasattr(config, "get") else None
    if model is None or "cell" not in model:
        return
    name = model.cell
    if name not in cells.available():
        raise ValueError(f"unknown cell {name!r} (model.cell); registered cells: {', '.join(cells.available())}")
    try:
        cells.get(name, **configs.parse_options(model.get("cell_options", "") or ""))
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.cell_options={model.get('cell_options')!r} for cell {name!r}: "
                         f"{' '.join(str(e).split())}") from e


def safe_name(overrides: dict) -> str:
    """'optim.lr=0.001, model.cell=gru' -> 'lr0.001_cellgru': readable and filesystem-safe."""
    parts = [f"{k.split('.')[-1]}{v}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)) or "default"


def trial_name(module: ModuleType, config: ml_collections.ConfigDict, overrides: dict) -> str:
    if callable(getattr(module, "name", None)):
        return module.name(overrides)
    if callable(getattr(module, "describe", None)):
        return module.describe(config)["name"]
    return safe_name(overrides)


def expand(experiment: str, root: str, grid: str = "sweep", variant: str | None = None,
           cells: Sequence[str] | None = None) -> list[Trial]:
    """Every trial of ``grid``, each config resolved and its workdir checked: a bad
    override, two trials sharing a workdir, or a workdir holding another config is
    refused here, before anything is run or submitted. ``cells``: the cells to compare,
    for a grid that takes them (``def sweep(add, cells=(...))``; ``launch --cells``)."""
    module = load_experiment(experiment)
    fn = grid_function(module, grid)
    variant = default_variant(module, grid) if variant is None else variant
    added: list[dict] = []
    if cells:
        if "cells" not in inspect.signature(fn).parameters:
            raise ValueError(f"grid {grid!r} of {experiment} takes no list of cells (--cells); its function is "
                             f"{grid}(add). Give it a `cells` parameter, or leave --cells out")
        fn(lambda **kw: added.append(kw), cells=tuple(cells))
    else:
        fn(lambda **kw: added.append(kw))
    if not added:
        raise ValueError(f"grid {grid}(add) of {experiment} added no trials")
    trials, seen = [], {}
    for overrides in added:  # every config built and checked before the caller runs any trial
        name = None
        try:
            config = resolve(module, variant, overrides)
            name = trial_name(module, config, overrides)
            check_cell(config)
        except (KeyError, TypeError, ValueError) as e:
            what = name or ", ".join(f"{k}={v}" for k, v in overrides.items()) or "default"
            raise ValueError(f"trial {what} of grid {grid!r}: {' '.join(str(e).split())}; nothing was started") from e
        if name in seen:
            raise ValueError(f"two trials of grid {grid!r} share the name {name!r} ({seen[name]} and {overrides}); "
                             "give the experiment a name(overrides) or describe(config) that tells them apart")
        seen[name] = overrides
        t = Trial(name, dict(overrides), os.path.abspath(os.path.join(root, name)), os.path.abspath(experiment), variant)
        check_workdir(t, config)
        trials.append(t)
    return trials


def check_workdir(trial: Trial, config: ml_collections.ConfigDict) -> None:
    """Refuse a workdir that holds another config's run: the training loop's own rule
    (``rnnlab.train.config.resume_conflicts``), said before the job runs."""
    if diff := resume_conflicts(config, trial.workdir):
        shown = ", ".join(diff[:4])
        raise ValueError(f"trial {trial.name}: {trial.workdir} holds a run of a different config ({shown}); "
                         "use another --root, or delete that workdir to start the trial afresh")


# ----------------------------------------------------------------------------- state


def metric_spec(module: ModuleType | None) -> str | None:
    """The experiment's main metric, 'KIND/KEY' of metrics.jsonl (module-level METRIC)."""
    return getattr(module, "METRIC", None) if module is not None else None


def pick_metric(rows: list[dict], spec: str | None) -> str | None:
    for s in ([spec] if spec else DEFAULT_METRICS):
        kind, key = s.split("/", 1)
        if any(r.get("kind") == kind and key in r for r in rows):
            return s
    return spec


def metric_values(rows: list[dict], spec: str | None) -> list[tuple[int, float]]:
    if not spec:
        return []
    kind, key = spec.split("/", 1)
    return [(int(r["step"]), float(r[key])) for r in rows if r.get("kind") == kind and _is_number(r.get(key))]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
