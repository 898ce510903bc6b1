"""The embedded default corpus: English text that ships with Python itself.

Source: ``pydoc_data.topics.topics`` from the standard library, the text that
``help('assert')``, ``help('if')`` ... print. It is a dict of 79 documentation
topics (about 465,000 characters, ~100 distinct characters, a handful of them
non-ASCII such as curly quotes); its licence is the Python Software Foundation
licence of the interpreter. Every CPython install has it, so the default run
needs no download, no network and no ``../shared`` folder.

Determinism: the topics are sorted by key, so the corpus is the same on every
machine running the same Python version (the text itself changes a little
between Python releases; the corpus cache keys on the content, not the version).
"""

from __future__ import annotations

import hashlib


def embedded_corpus() -> list[str]:
    """Return the embedded corpus as documents: one string per pydoc topic,
    ordered by topic key. Each document ends with a newline. Cost: ~1 ms."""
    from pydoc_data.topics import topics  # stdlib; imported lazily (~0.5 MB of strings)

    return [topics[key] for key in sorted(topics)]


def embedded_fingerprint() -> str:
    """sha256 of the embedded corpus text: its identity for cache keys (the
    text differs between Python versions). Cost: ~2 ms."""
    digest = hashlib.sha256()
    for document in embedded_corpus():
        digest.update(document.encode("utf-8"))
        digest.update(b"\x00")  # document separator, so boundaries are part of the identity
    return digest.hexdigest()
