"""Results tables in the docs, rendered from committed artifacts, never typed.

A block in README.md, docs/**/*.md or benchmarks/README.md

    <!-- rendered: NAME -->
    | ... |
    <!-- /rendered -->

holds exactly what renderer NAME returns; the renderers (``RENDERERS`` in the
repository's ``docs/tables.py``) read result.json / report.json / benchmark JSON
files committed beside the docs, so a table can change only by changing its data.

    python -m rnnlab.report.docs            # re-render every block in place
    python -m rnnlab.report.docs --check    # exit 1 naming each block that differs from its artifacts

``tests/test_docs_tables.py`` runs the check in CI.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import sys
from collections.abc import Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = re.compile(r"(<!-- rendered: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /rendered -->)", re.S)


def doc_files(root: str = REPO_ROOT) -> list[str]:
    """The markdown files that may hold rendered blocks."""
    files = [os.path.join(root, "README.md"), os.path.join(root, "benchmarks", "README.md"),
             *sorted(glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True))]
    return [f for f in files if os.path.exists(f)]


def renderers(root: str = REPO_ROOT) -> dict[str, Callable[[str], str]]:
    """``RENDERERS`` of root/docs/tables.py: name -> (repository root -> markdown)."""
    path = os.path.join(root, "docs", "tables.py")
    spec = importlib.util.spec_from_file_location("_rnnlab_doc_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RENDERERS


def render_text(text: str, table: dict[str, Callable[[str], str]], root: str, where: str = "") -> tuple[str, list]:
    """``text`` with every rendered block re-rendered; and the names of the blocks
    whose committed body differed. An unknown renderer name is an error."""
    changed = []

    def one(m: re.Match) -> str:
        name = m.group("name")
        if name not in table:
            raise KeyError(f"{where}: <!-- rendered: {name} --> names no renderer; known: {sorted(table)} "
                           "(docs/tables.py RENDERERS)")
        body = table[name](root).rstrip("\n") + "\n"
        if body != m.group("body"):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(one, text), changed


def run(root: str = REPO_ROOT, check: bool = False, files: list[str] | None = None) -> dict[str, list[str]]:
    """Re-render (or with ``check`` only compare) the blocks of ``files`` (default
    ``doc_files``). Returns {file: [names of blocks that differed]} for files with any."""
    table = renderers(root)
    out = {}
    for path in files or doc_files(root):
        with open(path) as f:
            text = f.read()
        new, changed = render_text(text, table, root, os.path.relpath(path, root))
        if changed:
            out[path] = changed
            if not check:
                with open(path, "w") as f:
                    f.write(new)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if a block differs")
    p.add_argument("--root", default=REPO_ROOT)
    a = p.parse_args(argv)
    diff = run(a.root, a.check)
    for path, names in diff.items():
        print(f"{os.path.relpath(path, a.root)}: {', '.join(names)} "
              f"{'differ from their artifacts' if a.check else 're-rendered'}", flush=True)
    if a.check and diff:
        print("run `python -m rnnlab.report.docs` to re-render them from the artifacts (never edit them by hand)",
              file=sys.stderr)
        return 1
    print(f"{sum(map(len, diff.values()))} blocks {'differ' if a.check else 're-rendered'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
