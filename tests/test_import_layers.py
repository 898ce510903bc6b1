"""The layers of rnnlab, read from the imports (AST): cells at the bottom, then
scan/layers, models and data, the loop (rnnlab.train), decoding and probes, and
studies (experiments/, launch/) above the library. Each rule below is data: the
files it covers (globs under the repository root), the modules they must not
import (a module and everything under it), and why. Imports inside functions
count too (``ast.walk``): a lazy import is still a dependency.

A failure names the file, the line, the import and the rule. To add a rule,
add a row to RULES.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The training loops (the one loop and the forks it replaces): decoding needs none of them.
LOOPS = ("rnnlab.train.loop", "rnnlab.train_lm_old", "rnnlab.train_tasks", "rnnlab.train_speech", "rnnlab.tasks")


class Rule(NamedTuple):
    files: tuple[str, ...]  # globs relative to the repository root
    forbidden: tuple[str, ...]  # modules (and their submodules) the files must not import
    reason: str


RULES = (
    Rule(("rnnlab/*.py", "rnnlab/**/*.py"), ("experiments", "launch"),
         "the library is below the studies and the launcher: a study imports rnnlab, never the reverse"),
    Rule(("rnnlab/train/checkpoint.py",), ("rnnlab.models", "rnnlab.data"),
         "checkpointing saves and restores pytrees; it knows no model and no data "
         "(loading a run for inference lives next to its user, e.g. rnnlab.generate.load_for_inference)"),
    Rule(("rnnlab/models/*.py",), ("rnnlab.probes", "rnnlab.train", *LOOPS[1:]),
         "models are below the measurements (probes) and the training loop that use them"),
    Rule(("rnnlab/ctc.py", "rnnlab/generate.py", "rnnlab/transcribe.py"), LOOPS,
         "decoding and transcription run a trained model; they may read checkpoints "
         "(rnnlab.train.checkpoint) but import no training loop"),
    Rule(("rnnlab/cells/*.py",), ("rnnlab.models", "rnnlab.train", "rnnlab.data", "rnnlab.layers", "rnnlab.probes",
                                  *LOOPS[1:]),
         "cells are the bottom layer: a cell file knows only cells/_common.py (and fused/native kernels)"),
)


# Known violations being removed by work in progress: path -> what removes it. The main test
# skips them; test_pending_violations_are_still_pending fails once one is gone, so the entry goes too.
PENDING: dict[str, str] = {}  # e.g. {"rnnlab/transcribe.py": "moves to experiments/speech/ (issue 34)"}


class Violation(NamedTuple):
    path: str
    line: int
    module: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.module}, but {self.reason}"


def imported_modules(source: str, module_name: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source``, functions included. ``from
    a import b`` yields both 'a' and 'a.b' (b may be a module); relative imports
    are resolved against ``module_name`` (the dotted name of the file)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module_name.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names if alias.name != "*"]
    return out


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def check(path: str, source: str, rules=RULES) -> list[Violation]:
    """The violations of ``rules`` by the file at ``path`` (relative, '/'-separated)."""
    module_name = path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    imports = imported_modules(source, module_name, is_package=path.endswith("__init__.py"))
    found = []
    for rule in rules:
        if not any(fnmatch.fnmatch(path, g) for g in rule.files):
            continue
        for line, mod in imports:
            bad = next((f for f in rule.forbidden if _under(mod, f)), None)
            # 'from rnnlab import train' yields 'rnnlab' and 'rnnlab.train': report each line once per rule
            if bad and not any(v.line == line and v.reason == rule.reason for v in found):
                found.append(Violation(path, line, mod, rule.reason))
    return found


def _library_files() -> list[Path]:
    return sorted(p for p in (ROOT / "rnnlab").rglob("*.py") if "__pycache__" not in p.parts)


def _library_violations() -> list[Violation]:
    violations = []
    for p in _library_files():
        violations += check(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8"))
    return violations


def test_imports_respect_the_layers():
    violations = [v for v in _library_violations() if v.path not in PENDING]
    assert not violations, "imports across the layers:\n" + "\n".join(map(str, violations))


def test_pending_violations_are_still_pending():
    still = {v.path for v in _library_violations()}
    done = sorted(set(PENDING) - still)
    assert not done, f"{done} no longer break the layer rules (or are gone): delete their PENDING entries"


def test_one_vocab_class():
    """One vocabulary for language models and CTC (rnnlab.data.text.Vocab); a second
    class of the same name drifts apart from it (the two had different id layouts)."""
    where = [f"{p.relative_to(ROOT).as_posix()}:{n.lineno}" for p in _library_files()
             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
             if isinstance(n, ast.ClassDef) and n.name == "Vocab"]
    assert len(where) == 1 and where[0].startswith("rnnlab/data/text.py:"), (
        f"one class named Vocab expected, in rnnlab/data/text.py; found: {where}")


@pytest.mark.parametrize("path, source, line, module", [
    ("rnnlab/models/seq.py", "import jax\nfrom rnnlab import configs, probes\n", 2, "rnnlab.probes"),
    ("rnnlab/models/lm.py", "def f():\n    from rnnlab.train import loop\n", 2, "rnnlab.train"),
    ("rnnlab/train/checkpoint.py", "def load():\n    from ..data.text import Vocab\n", 2, "rnnlab.data.text"),
    ("rnnlab/generate.py", "import rnnlab.train_tasks as t\n", 1, "rnnlab.train_tasks"),
    ("rnnlab/cells/gru.py", "from rnnlab.layers import Stack\n", 1, "rnnlab.layers"),
    ("rnnlab/plots.py", "from experiments import lstm_vs_gru\n", 1, "experiments"),
])
def test_the_checker_finds_a_violation_and_names_file_line_and_rule(path, source, line, module):
    (v,) = check(path, source)
    assert (v.path, v.line) == (path, line) and v.module.startswith(module)
    assert str(v).startswith(f"{path}:{line}: imports {module}") and "but " in str(v)


def test_the_checker_allows_what_the_rules_allow():
    allowed = {
        "rnnlab/generate.py": "def f():\n    from rnnlab.train.checkpoint import load_params\n",
        "rnnlab/models/speech.py": "from rnnlab import ctc\nfrom rnnlab.layers import Stack\n",
        "rnnlab/cells/lstm.py": "from rnnlab.cells._common import Array\nfrom rnnlab.fused import weight_grad\n",
        "rnnlab/train/loop.py": "from rnnlab.models import lm\n",  # the loop may know models
        "rnnlab/train/checkpointing.py": "from rnnlab.data import text\n",  # not the file the rule covers
    }
    for path, source in allowed.items():
        assert check(path, source) == [], path
