"""Text corpora for language modelling: sources, tokenizers, a cached encoded
corpus, and truncated-BPTT batching that is a pure function of (seed, step).

Pipeline::

    docs = load_documents(source)                # {'train'|'valid'|'test': [document, ...]}
    vocab = Vocab.from_texts(docs['train'], level='word')
    split = encode_documents(docs['train'], vocab)   # tokens_S int32 + doc_start_S bool
    # or, all of it cached on disk and memory-mapped:
    corpus = load_corpus(source, level='word', cache_dir='~/.cache/rnnlab')
    batcher = TBPTTBatcher(corpus['train'].tokens_S, corpus['train'].doc_start_S,
                           batch_size=20, seq_len=35)
    batch = batcher.batch_at(step)               # x_BxT, y_BxT, reset_BxT, ...

Sources (``source`` strings):
  * ``'embedded'``: Python's own documentation topics (rnnlab/data/embedded.py);
    needs nothing on disk; split by ``fractions`` of characters.
  * a ``.txt`` file (any text file): split by ``fractions`` of characters, cut
    at line boundaries; the whole file is one document.
  * a folder holding ``train.txt`` / ``valid.txt`` / ``test.txt``; ``splits``
    maps a split to a file with an optional line slice, e.g. WikiText-2 without
    its train split: ``splits={'train': 'valid.txt[:3390]', 'valid':
    'valid.txt[3390:]', 'test': 'test.txt'}``. Each split file is one document.
  * Hugging Face: ``'hf:NAME'``, ``'hf:NAME/CONFIG'``, ``'hf:ORG/NAME/CONFIG'``
    (or pass ``hf_config``) through ``datasets.load_dataset`` (offline from its
    cache); ``'hf:text'`` / ``'hf:json'`` ... with ``data_files``; ``'hf:PATH'``
    or a plain ``PATH`` of a dataset saved with ``save_to_disk``.

Documents: a document is a string; ``doc_start_S`` marks its first token so a
model can reset its carry there. Text files are read as UTF-8 with newlines
normalised to ``'\\n'`` (as Python's text mode does).

Tokenizers: ``level='char'`` (one token per character) or ``level='word'``
(whitespace split, ``'<eos>'`` appended to every line, as PyTorch's
word_language_model example ``data.py``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rnnlab.data.embedded import embedded_corpus, embedded_fingerprint

SPLITS = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
EOS = "<eos>"
UNK = "<unk>"
BLANK = "<blank>"  # the CTC blank token of Vocab.for_ctc (id 0)
CACHE_FORMAT = "rnnlab.corpus/1"  # bump when the encoding or cache layout changes: old entries are ignored
VOCAB_FORMAT = "rnnlab.vocab/1"

# Hugging Face split names -> ours.
_HF_SPLIT_NAMES = {"train": "train", "validation": "valid", "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}
_SLICE_RE = re.compile(r"^(?P<name>.*?)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def load_documents(
    source: str,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    splits: Mapping[str, str] | None = None,
    errors: str = "strict",
    text_column: str = "text",
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    hf_config: str | None = None,
    hf_rows: str = "lines",
) -> dict[str, list[str]]:
    """Read a corpus into ``{'train': docs, 'valid': docs, 'test': docs}``.

    Args:
      source: ``'embedded'``, a text file, a folder of split files, ``'hf:...'``
        or a saved Hugging Face dataset folder (see the module docstring).
      fractions: (train, valid, test) fractions of characters, used when the
        source has a single text (embedded, one file, a dataset with only a
        train split). Cuts fall on line boundaries; a document that straddles a
        cut becomes two documents.
      splits: folder or Hugging Face sources: split -> ``'FILE[start:stop]'``
        (a file in the folder or an absolute path; the optional slice is a
        Python slice of lines) or, for Hugging Face, ``'SPLIT[start:stop]'``
        (a slice of rows). Missing keys default to ``train.txt`` ... (folders)
        or the dataset's own splits (Hugging Face).
      errors: how to treat bytes that are not UTF-8: ``'strict'`` raises a
        ValueError naming the file and the byte offset; ``'replace'`` puts
        U+FFFD in their place (any ``bytes.decode`` error handler works).
      text_column: Hugging Face: the column holding the text.
      data_files: Hugging Face: passed to ``load_dataset`` (e.g. with ``'hf:text'``).
      hf_config: Hugging Face: the config name; when given, everything after
        ``hf:`` is the dataset name (use it for ``ORG/NAME`` without a config: ``''``).
      hf_rows: Hugging Face: ``'lines'`` (rows are lines, as ``load_dataset('text')``
        and wikitext give: a split is one document) or ``'documents'`` (each
        row is a document, e.g. stories or articles).

    Raises:
      FileNotFoundError: the path does not exist (the message lists what does).
      ValueError: empty corpus or split, bad UTF-8, bad fractions or split specs.
    """
    _check_fractions(fractions)
    if source == "embedded":
        docs = _split_by_fractions(embedded_corpus(), fractions)
        where = "the embedded corpus"
    elif source.startswith("hf:"):
        docs = _load_hf(source[3:], splits, fractions, text_column, data_files, hf_config, hf_rows)
        where = source
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(_missing_path_message(path))
        if path.is_dir() and _is_saved_hf_dataset(path):
            docs = _load_hf(str(path), splits, fractions, text_column, data_files, hf_config, hf_rows)
        elif path.is_dir():
            docs = _load_folder(path, splits, errors)
        else:
            if splits:
                raise ValueError(
                    f"splits={dict(splits)} only applies to a folder source, but {path} is a file; "
                    "pass the folder that holds the files, or drop splits to cut the file by fractions"
                )
            docs = _split_by_fractions([read_text(path, errors=errors)], fractions)
        where = str(path)
    _check_nonempty(docs, fractions, where)
    return docs


def read_text(path: str | os.PathLike, *, errors: str = "strict") -> str:
    """Read a UTF-8 text file, newlines normalised to ``'\\n'``.

    Raises FileNotFoundError (listing the folder's contents) and, with
    ``errors='strict'``, ValueError naming the byte offset of invalid UTF-8."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder, expected a text file; pass the folder itself as the source")
    if not path.is_file():
        raise FileNotFoundError(_missing_path_message(path))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not valid UTF-8: byte offset {e.start} (0x{data[e.start]:02x}): {e.reason}; "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass errors='replace' "
            "to replace bad bytes with U+FFFD"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is not text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_slice_spec(spec: str) -> tuple[str, slice]:
    """``'valid.txt[:3390]'`` -> ``('valid.txt', slice(None, 3390))``; no brackets -> the whole file."""
    match = _SLICE_RE.match(spec.strip())
    name = match.group("name") if match else ""
    if not name or "[" in name or "]" in name:
        raise ValueError(
            f"bad split spec {spec!r}: expected 'FILE' or 'FILE[start:stop]' with integer line "
            "numbers, e.g. 'valid.txt[:3390]' or 'valid.txt[3390:]'"
        )
    to_int = lambda s: int(s) if s not in (None, "") else None
    return name, slice(to_int(match.group("start")), to_int(match.group("stop")))


def _slice_lines(text: str, line_slice: slice) -> str:
    if line_slice == slice(None, None):
        return text
    return "".join(text.splitlines(keepends=True)[line_slice])


def _load_folder(folder: Path, splits: Mapping[str, str] | None, errors: str) -> dict[str, list[str]]:
    specs = dict(splits or {})
    _check_split_names(specs)
    for split in SPLITS:
        if split not in specs and (folder / f"{split}.txt").is_file():
            specs[split] = f"{split}.txt"
    present = sorted(p.name for p in folder.iterdir())
    if "train" not in specs:
        raise ValueError(
            f"{folder} has no train.txt and splits= names no train file (the folder holds {present}); "
            "map the splits to files with line slices, e.g. splits={'train': 'valid.txt[:3390]', "
            "'valid': 'valid.txt[3390:]', 'test': 'test.txt'}"
        )
    if len(specs) == 1:
        raise ValueError(
            f"{folder} gives only a train split; add valid.txt/test.txt, map them with splits=, "
            "or pass the train file itself to cut it by fractions"
        )
    _check_all_splits(specs, f"{folder} (holds {present})", "'valid.txt[:N]'")
    files: dict[str, str] = {}  # read each file once even when several splits slice it
    docs: dict[str, list[str]] = {}
    for split, spec in specs.items():
        name, line_slice = parse_slice_spec(spec)
        if name not in files:
            files[name] = read_text(folder / name, errors=errors)
        docs[split] = [_slice_lines(files[name], line_slice)]
    return {split: docs[split] for split in SPLITS}


def _is_saved_hf_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_hf(
    name: str,
    splits: Mapping[str, str] | None,
    fractions: Sequence[float],
    text_column: str,
    data_files,
    hf_config: str | None,
    hf_rows: str,
) -> dict[str, list[str]]:
    import datasets  # lazy: importing datasets costs ~2 s

    if hf_rows not in ("lines", "documents"):
        raise ValueError(f"hf_rows must be 'lines' or 'documents', got {hf_rows!r}")
    local = Path(name).expanduser()
    if local.is_dir() and _is_saved_hf_dataset(local):
        loaded = datasets.load_from_disk(str(local))
    else:
        loaded = _hf_load_dataset(*_parse_hf_name(name, hf_config), data_files)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    rows_by_split: dict[str, list[str]] = {}
    specs = dict(splits or {})
    _check_split_names(specs)
    for hf_split in loaded:
        ours = _HF_SPLIT_NAMES.get(hf_split)
        if ours is not None and ours not in specs:
            specs[ours] = hf_split
    for split, spec in specs.items():
        hf_split, row_slice = parse_slice_spec(spec)
        if hf_split not in loaded:
            raise ValueError(f"split spec {spec!r}: the dataset has no split {hf_split!r}; it has {list(loaded)}")
        table = loaded[hf_split]
        if text_column not in table.column_names:
            raise ValueError(
                f"the dataset has no column {text_column!r} (columns: {table.column_names}); "
                "pass text_column= naming the text column"
            )
        rows_by_split[split] = [str(r) for r in list(table[text_column])[row_slice]]
    if "train" not in rows_by_split:
        raise ValueError(
            f"the dataset has no train split (it has {list(loaded)}); map one with "
            "splits={'train': 'NAME[:N]', 'valid': 'NAME[N:]', ...}"
        )

    def as_documents(rows: list[str]) -> list[str]:
        if hf_rows == "documents":
            return rows
        return ["".join(r if r.endswith("\n") else r + "\n" for r in rows)]  # one document of lines

    if set(rows_by_split) == {"train"}:
        return _split_by_fractions(as_documents(rows_by_split["train"]), fractions)
    _check_all_splits(rows_by_split, f"the dataset (splits {list(loaded)})", "'validation[:N]'")
    return {split: as_documents(rows_by_split[split]) for split in SPLITS}


def _hf_load_dataset(ds_name: str, config: str | None, data_files):
    import datasets

    try:
        return datasets.load_dataset(ds_name, config, data_files=data_files)
    except OSError as e:  # FileNotFoundError, ConnectionError (no hub), ...
        raise FileNotFoundError(
            f"Hugging Face dataset {ds_name!r} (config {config!r}) could not be loaded: {e}. Without hub "
            "access it must already be in the local datasets cache (HF_DATASETS_CACHE; set HF_HUB_OFFLINE=1 "
            "to skip the network retries); or save it once with ds.save_to_disk(PATH) and pass 'hf:PATH'"
        ) from e


def _parse_hf_name(name: str, hf_config: str | None) -> tuple[str, str | None]:
    if hf_config is not None:
        return name, hf_config or None
    parts = name.split("/")
    if len(parts) == 1:
        return name, None
    if len(parts) == 2:
        return parts[0], parts[1]  # NAME/CONFIG
    if len(parts) == 3:
        return f"{parts[0]}/{parts[1]}", parts[2]  # ORG/NAME/CONFIG
    raise ValueError(f"cannot parse hf:{name}; use hf:NAME[/CONFIG] or hf:ORG/NAME/CONFIG, or pass hf_config=")


def _split_by_fractions(documents: Sequence[str], fractions: Sequence[float]) -> dict[str, list[str]]:
    """Cut a list of documents into train/valid/test by fractions of characters.

    Each cut moves forward to the next line boundary (just after a ``'\\n'``), so
    no line is split; a document straddling a cut becomes two documents."""
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return {split: [] for split in SPLITS}
    cuts = [0]
    for frac in np.cumsum(fractions)[:-1]:
        cuts.append(max(cuts[-1], _next_line_boundary(documents, ends, int(round(frac * total)))))
    cuts.append(total)
    out: dict[str, list[str]] = {}
    for split, lo, hi in zip(SPLITS, cuts[:-1], cuts[1:], strict=True):
        out[split] = _char_range(documents, ends, lo, hi)
    return out


def _next_line_boundary(documents: Sequence[str], ends: np.ndarray, pos: int) -> int:
    """The smallest global character offset >= pos that starts a line (or a document)."""
    d = int(np.searchsorted(ends, pos, side="right"))  # document holding character pos
    if d >= len(documents):
        return int(ends[-1])
    start = int(ends[d]) - len(documents[d])
    local = pos - start
    if local == 0 or documents[d][local - 1] == "\n":
        return pos
    newline = documents[d].find("\n", local)
    return int(ends[d]) if newline < 0 else start + newline + 1


def _char_range(documents: Sequence[str], ends: np.ndarray, lo: int, hi: int) -> list[str]:
    out = []
    for doc, end in zip(documents, ends, strict=True):
        start = int(end) - len(doc)
        a, b = max(lo, start), min(hi, int(end))
        if a < b:
            out.append(doc[a - start : b - start])
    return out


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"fractions must be 3 non-negative numbers (train, valid, test) summing to 1, got {tuple(fractions)}"
        )


def _check_split_names(specs: Mapping[str, str]) -> None:
    unknown = set(specs) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits has unknown keys {sorted(unknown)}; use {list(SPLITS)}")


def _check_all_splits(specs: Mapping[str, str], where: str, example: str) -> None:
    missing = [split for split in SPLITS if split not in specs]
    if missing:
        raise ValueError(
            f"{where} gives no {' and no '.join(missing)} split; map each to a file or split with an "
            f"optional line/row slice, e.g. splits={{'{missing[0]}': {example}, ...}}"
        )


def _check_nonempty(docs: Mapping[str, list[str]], fractions: Sequence[float], where: str) -> None:
    sizes = {split: sum(len(d) for d in docs[split]) for split in SPLITS}
    if sum(sizes.values()) == 0:
        raise ValueError(f"{where} is empty (0 characters); point the source at a file with text in it")
    for split, frac in zip(SPLITS, fractions, strict=True):
        if sizes[split] == 0 and (split == "train" or frac > 0):
            raise ValueError(
                f"split {split!r} of {where} is empty (split sizes in characters: {sizes}); the corpus has "
                "too few lines for these fractions: use a larger corpus, change fractions=, or map splits="
            )


def _missing_path_message(path: Path) -> str:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        nearby = sorted(p.name + ("/" if p.is_dir() else "") for p in parent.iterdir())
    except OSError:
        nearby = []
    shown = ", ".join(nearby[:30]) + (f", ... ({len(nearby)} entries)" if len(nearby) > 30 else "")
    return (
        f"corpus path {str(path)!r} does not exist (resolved: {path.resolve()}); {parent} holds: "
        f"[{shown}]. Fix the path, or use source='embedded' (built in, no download), 'hf:NAME' for a "
        "cached Hugging Face dataset; ../shared/data exists only on development machines"
    )


# ----------------------------------------------------------------------------------------------
# Tokenizers and the vocabulary
# ----------------------------------------------------------------------------------------------


def tokenize(text: str, level: str) -> list[str]:
    """``'char'``: ``list(text)``. ``'word'``: whitespace split with ``'<eos>'``
    after every line, the last line included even without a final newline,
    exactly like PyTorch's word_language_model ``Corpus.tokenize``."""
    if level == "char":
        return list(text)
    if level == "word":
        if text and not text.endswith("\n"):
            text += "\n"
        # '\n' is whitespace, so this equals [w for line in lines for w in line.split() + ['<eos>']]
        # at C speed (a literal '<eos>' word in the text maps to the same id either way).
        return text.replace("\n", f" {EOS} ").split()
    raise ValueError(f"level must be 'char' or 'word', got {level!r}")


def _line_chunks(text: str, chunk_chars: int = 1 << 24) -> Iterator[str]:
    """Pieces of ``text`` of about chunk_chars characters cut just after a newline,
    so word tokenization can run piecewise (bounded memory: a 100 MB text never
    becomes one list of millions of word strings) with the same result."""
    start = 0
    while start < len(text):
        newline = text.find("\n", start + chunk_chars)
        end = len(text) if newline < 0 else newline + 1
        yield text[start:end]
        start = end


class Vocab:
    """Token strings <-> int ids: THE vocabulary of rnnlab, for language models
    (``Vocab.from_texts``, saved as ``vocab.json``) and CTC outputs (``Vocab.for_ctc``).

    ``itos[i]`` is the string of id i. Unknown tokens encode to ``unk`` when
    ``unk`` is in the vocabulary, otherwise encoding them raises ValueError.
    Two vocabs are equal when level, itos, unk, blank and spaced are equal;
    ``check_same`` raises a clear error otherwise (use it on resume).

    CTC: ``blank`` names a token at id 0 that stands for no symbol (the CTC
    blank label, ``rnnlab.ctc.BLANK``); ``decode`` drops it, so the ids are the
    model's label ids and ``num_labels == len(vocab)``. ``spaced`` (character
    level only): each character is a word of its own, e.g. connected digits:
    ``encode('3 1 4')`` reads the characters of '314', ``decode`` gives '3 1 4' back.

    Example::

        lm_vocab = Vocab.from_texts(docs['train'], level='word'); lm_vocab.save(workdir + '/vocab.json')
        digits = Vocab.for_ctc('0123456789', spaced=True)   # ids: 0 blank, 1 '0', ..., 10 '9'
    """

    def __init__(self, itos: Sequence[str], *, level: str, unk: str | None = UNK, blank: str | None = None,
                 spaced: bool = False):
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        if spaced and level != "char":
            raise ValueError(f"spaced=True needs level='char' (one character per word), got level={level!r}")
        if blank is not None and (not itos or itos[0] != blank):
            raise ValueError(f"the blank {blank!r} must be token 0 (CTC's blank label), got itos[:1]={list(itos[:1])}")
        self.itos: tuple[str, ...] = tuple(itos)
        self.level = level
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            dupes = [s for s, n in collections.Counter(self.itos).items() if n > 1]
            raise ValueError(f"vocabulary has duplicate tokens {dupes[:10]}; tokens must be unique")
        if not self.itos:
            raise ValueError("vocabulary is empty; build it from a non-empty text")
        self.unk = unk
        self.unk_id: int | None = self.stoi.get(unk) if unk is not None else None
        self.blank = blank
        self.spaced = bool(spaced)
        self._table: np.ndarray | None = None  # char lookup table, built on first encode

    @classmethod
    def for_ctc(cls, symbols: str, *, spaced: bool = False, blank: str = BLANK) -> Vocab:
        """A CTC output vocabulary: ``blank`` at id 0, then one id per character of
        ``symbols`` (distinct), no unknown token (a transcript outside it is an error).
        Without ``spaced``, ' ' must be one of the symbols to separate words."""
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError(f"vocabulary symbols must be distinct characters, got {symbols!r}")
        return cls((blank, *symbols), level="char", unk=None, blank=blank, spaced=spaced)

    @property
    def num_labels(self) -> int:
        """How many ids a model outputs: ``len(self)`` (a CTC vocabulary's blank included)."""
        return len(self.itos)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        *,
        level: str = "char",
        order: str = "frequency",
        max_size: int | None = None,
        min_count: int = 1,
        specials: Sequence[str] | None = None,
    ) -> Vocab:
        """Build a vocabulary from texts (documents).

        order='frequency': specials first, then tokens by count (descending),
          ties broken lexicographically. Default specials: ('<unk>', '<eos>')
          for words, ('<unk>',) for characters.
        order='first_seen': tokens in order of first appearance, no specials
          by default: PyTorch word_language_model parity when ``texts`` are
          train, valid and test in that order (its ``Dictionary``).
        max_size: at most this many tokens, specials included; min_count: drop
          tokens seen fewer times. Cut tokens encode to '<unk>', which must
          then be in the vocabulary.
        Cost: one pass of C-speed counting (~3 s per 100 MB of characters, ~5 s of words).
        """
        if order not in ("frequency", "first_seen"):
            raise ValueError(f"order must be 'frequency' or 'first_seen', got {order!r}")
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        if specials is None:
            specials = () if order == "first_seen" else ((UNK, EOS) if level == "word" else (UNK,))
        counts: collections.Counter[str] = collections.Counter()
        first_seen: dict[str, None] = {}  # dicts keep insertion order: the first-appearance order
        for text in texts:
            if level == "char":
                # Characters: a bincount over code points (~2x faster than Counter on a str, and
                # no list of 100M one-char strings); dict.fromkeys(str) keeps first appearances.
                codes_S = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
                hist = np.bincount(codes_S) if codes_S.size else np.zeros(0, np.int64)
                counts.update({chr(c): int(hist[c]) for c in np.flatnonzero(hist)})
                if order == "first_seen":
                    first_seen.update(dict.fromkeys(text))
                continue
            for chunk in _line_chunks(text):
                tokens = tokenize(chunk, "word")
                counts.update(tokens)
                if order == "first_seen":
                    first_seen.update(dict.fromkeys(tokens))
        kept = [t for t in (first_seen if order == "first_seen" else counts) if counts[t] >= min_count]
        if order == "frequency":
            kept.sort(key=lambda t: (-counts[t], t))
        special_set = set(specials)
        itos = list(specials) + [t for t in kept if t not in special_set]
        cut = len(itos) < len(specials) + len(set(counts) - special_set)
        if max_size is not None:
            if max_size < len(specials) + 1:
                raise ValueError(f"max_size={max_size} leaves no room beside the specials {list(specials)}")
            cut = cut or len(itos) > max_size
            itos = itos[:max_size]
        if cut and UNK not in itos:
            raise ValueError(
                "max_size/min_count drop tokens but the vocabulary has no '<unk>' to map them to; "
                "add it with specials=('<unk>', ...), or drop the cut"
            )
        return cls(itos, level=level)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (self.level, self.itos, self.unk_id, self.blank, self.spaced)

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.itos[:8])
        ctc = f", blank={self.blank!r}, spaced={self.spaced}" if self.blank is not None or self.spaced else ""
        return f"Vocab(level={self.level!r}, size={len(self)}{ctc}, itos=[{head}{', ...' if len(self) > 8 else ''}])"

    def encode(self, text: str) -> np.ndarray:
        """Tokenize and map to ids: ``ids_S`` int32 (spaced: the spaces are dropped first)."""
        if self.level == "char":
            return self._encode_chars(text.replace(" ", "") if self.spaced else text)
        pieces = [self.encode_tokens(tokenize(chunk, "word")) for chunk in _line_chunks(text)]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)

    def encode_tokens(self, tokens: Sequence[str]) -> np.ndarray:
        """Map token strings to ``ids_S`` int32 (unknowns -> unk, or ValueError without unk)."""
        stoi, unk = self.stoi, self.unk_id
        if unk is None:
            missing = next((t for t in tokens if t not in stoi), None)
            if missing is not None:
                raise self._unknown_error(missing)
            return np.fromiter(map(stoi.__getitem__, tokens), dtype=np.int32, count=len(tokens))
        return np.fromiter((stoi.get(t, unk) for t in tokens), dtype=np.int32, count=len(tokens))

    def _encode_chars(self, text: str) -> np.ndarray:
        # Code points via UTF-32 (C speed), then a lookup table code point -> id: O(S) numpy.
        codes_S = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        if codes_S.size == 0:
            return np.zeros(0, dtype=np.int32)
        table = self._char_table()
        ids_S = table[np.minimum(codes_S, table.size - 1)]  # code points past the table: the last (unknown) slot
        if ids_S.min() < 0:
            if self.blank is not None:
                raise self._transcript_error(text, {chr(int(c)) for c in codes_S[ids_S < 0]})
            raise self._unknown_error(chr(int(codes_S[np.argmax(ids_S < 0)])))
        return ids_S

    def _transcript_error(self, text: str, unknown: set[str]) -> ValueError:
        symbols = "".join(t for t in self.itos if t != self.blank)
        return ValueError(f"transcript {text!r} has characters outside the vocabulary {symbols!r}: "
                          f"{', '.join(map(repr, sorted(unknown)))}; normalise the transcript (e.g. lower-case "
                          "it, spell out digits) or widen the vocabulary")

    def _char_table(self) -> np.ndarray:
        """Lookup table code point -> id (-1 or unk for unknowns), built once; its
        last slot stands for every code point past the largest in the vocabulary."""
        if self._table is None:
            singles = {ord(t): i for t, i in self.stoi.items() if len(t) == 1}
            table = np.full(max(singles, default=0) + 2, -1 if self.unk_id is None else self.unk_id, np.int32)
            for code, i in singles.items():
                table[code] = i
            self._table = table
        return self._table

    def _unknown_error(self, token: str) -> ValueError:
        return ValueError(
            f"token {token!r} is not in the vocabulary and it has no {self.unk!r} token; build the vocab "
            "from all splits (order='first_seen' does that for PyTorch parity) or add '<unk>' to specials"
        )

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text. Characters are concatenated (spaced: joined by spaces); words
        are joined by spaces with ``'<eos>'`` turned back into a newline (so
        ``encode(decode(ids)) == ids`` when ids end with '<eos>'; whitespace is
        normalised to single spaces). The blank (CTC) is dropped."""
        tokens = [self.itos[int(i)] for i in np.asarray(ids).reshape(-1)]
        if self.blank is not None:
            tokens = [t for t in tokens if t != self.blank]
        if self.level == "char":
            return (" " if self.spaced else "").join(tokens)
        lines, line = [], []
        for token in tokens:
            if token == EOS:
                lines.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(token)
        return "".join(lines) + " ".join(line)

    # --- persistence (JSON, never pickle) ----------------------------------------------------

    def to_json(self) -> dict:
        """The saved form. 'blank' and 'spaced' appear only when set, so a language
        model's vocab.json (and its fingerprint) is what it was before CTC shared the class."""
        obj = {"format": VOCAB_FORMAT, "level": self.level, "unk": self.unk, "itos": list(self.itos)}
        if self.blank is not None:
            obj["blank"] = self.blank
        if self.spaced:
            obj["spaced"] = True
        return obj

    @classmethod
    def from_json(cls, obj: Mapping) -> Vocab:
        if obj.get("format") != VOCAB_FORMAT:
            raise ValueError(f"not a {VOCAB_FORMAT} vocabulary (format={obj.get('format')!r})")
        return cls(obj["itos"], level=obj["level"], unk=obj["unk"], blank=obj.get("blank"),
                   spaced=obj.get("spaced", False))

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (a crash never leaves half a file)."""
        _atomic_write_bytes(Path(path), json.dumps(self.to_json(), ensure_ascii=False).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(_missing_path_message(path))
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: equal vocabs have equal fingerprints."""
        return hashlib.sha256(json.dumps(self.to_json(), ensure_ascii=True).encode()).hexdigest()

    def check_same(self, other: Vocab, *, context: str = "the saved vocabulary") -> None:
        """Raise ValueError describing the first difference when ``other != self``."""
        if self == other:
            return
        if self.level != other.level:
            diff = f"level {other.level!r} vs {self.level!r}"
        elif len(self) != len(other):
            diff = f"size {len(other)} vs {len(self)}"
        elif self.itos != other.itos:
            i = next(i for i, (a, b) in enumerate(zip(self.itos, other.itos, strict=True)) if a != b)
            diff = f"id {i} is {other.itos[i]!r} vs {self.itos[i]!r}"
        elif self.unk != other.unk:
            diff = f"unk {other.unk!r} vs {self.unk!r}"
        else:
            diff = f"blank/spaced {other.blank!r}/{other.spaced} vs {self.blank!r}/{self.spaced}"
        raise ValueError(
            f"{context} differs from the vocabulary built now ({diff}): the data or tokenizer settings "
            "changed since the run started. Resume with the original data and settings, pass "
            "vocab=Vocab.load(...) to reuse the saved one, or start a fresh workdir"
        )


def sync_vocab(path: str | os.PathLike, vocab: Vocab) -> Vocab:
    """On resume, compare ``vocab`` with the one saved at ``path`` (ValueError if
    they differ); on a fresh run, save it. Returns ``vocab``."""
    path = Path(path)
    if path.exists():
        vocab.check_same(Vocab.load(path), context=f"the vocabulary saved in {path}")
    else:
        vocab.save(path)
    return vocab


# ----------------------------------------------------------------------------------------------
# Encoded corpus and its cache
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedSplit:
    """A split as ids: ``tokens_S`` int32 and ``doc_start_S`` bool (True at the
    first token of each document). Either may be a read-only np.memmap."""

    tokens_S: np.ndarray
    doc_start_S: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens_S.shape[0])


@dataclass(frozen=True)
class Corpus:
    """An encoded corpus: the vocabulary and the three splits.
    ``from_cache`` tells whether it was read from the cache without touching the text."""

    vocab: Vocab
    splits: Mapping[str, EncodedSplit]
    key: str
    from_cache: bool

    def __getitem__(self, split: str) -> EncodedSplit:
        return self.splits[split]


def encode_documents(documents: Sequence[str], vocab: Vocab) -> EncodedSplit:
    """Encode documents into one token stream with document-start flags.
    Empty documents add no tokens. Cost: ~1 s per 10M words, ~0.5 s per 100M chars."""
    pieces = [vocab.encode(d) for d in documents]
    pieces = [p for p in pieces if p.size]
    if not pieces:
        return EncodedSplit(np.zeros(0, np.int32), np.zeros(0, bool))
    tokens_S = np.concatenate(pieces).astype(np.int32, copy=False)
    doc_start_S = np.zeros(tokens_S.size, dtype=bool)
    doc_start_S[np.cumsum([0] + [p.size for p in pieces[:-1]])] = True
    return EncodedSplit(tokens_S, doc_start_S)


def load_corpus(
    source: str,
    *,
    level: str = "char",
    cache_dir: str | os.PathLike | None = None,
    vocab: Vocab | None = None,
    order: str = "frequency",
    max_size: int | None = None,
    min_count: int = 1,
    specials: Sequence[str] | None = None,
    vocab_splits: Sequence[str] = ("train",),
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    splits: Mapping[str, str] | None = None,
    errors: str = "strict",
    text_column: str = "text",
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    hf_config: str | None = None,
    hf_rows: str = "lines",
) -> Corpus:
    """Load, tokenize and encode a corpus; with ``cache_dir``, cache it on disk.

    The vocabulary is ``vocab`` when given (e.g. loaded from a run's workdir),
    else built by ``Vocab.from_texts`` over ``vocab_splits`` (in that order) with
    ``level/order/max_size/min_count/specials``. PyTorch word_language_model
    parity: ``level='word', order='first_seen', vocab_splits=('train', 'valid', 'test')``.
    Source arguments are those of ``load_documents``.

    Cache: ``cache_dir/<key>/`` holds ``vocab.json`` and per vocabulary
    ``<vocab fingerprint>/<split>.tokens.npy`` and ``.doc_start.npy``, opened with
    ``np.load(mmap_mode='r')`` (no copy into memory). The key hashes the source's
    identity (path, size, mtime of each file it reads; the content of the
    embedded corpus; the fingerprints of a Hugging Face dataset), the source
    arguments and the tokenizer settings, so a changed file or setting misses
    the cache instead of reading stale ids. A hit reads no text at all.
    """
    source_args = dict(
        fractions=tuple(fractions), splits=dict(splits) if splits else None, errors=errors,
        text_column=text_column, data_files=data_files, hf_config=hf_config, hf_rows=hf_rows,
    )
    vocab_args = dict(
        level=level, order=order, max_size=max_size, min_count=min_count,
        specials=None if specials is None else list(specials),
    )
    unknown = set(vocab_splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"vocab_splits has unknown splits {sorted(unknown)}; use names from {list(SPLITS)}")
    if vocab is not None and vocab.level != level:
        raise ValueError(f"vocab has level {vocab.level!r} but level={level!r}; pass the matching level")

    if cache_dir is None:
        docs = load_documents(source, **source_args)
        vocab = vocab or Vocab.from_texts(_concat_splits(docs, vocab_splits), **vocab_args)
        return Corpus(vocab, {s: encode_documents(docs[s], vocab) for s in SPLITS}, key="", from_cache=False)

    identity = {
        "format": CACHE_FORMAT,
        "source": source_identity(source, **source_args),
        "source_args": source_args,
        "vocab_args": vocab_args,
        "vocab_splits": list(vocab_splits),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
    entry = Path(cache_dir).expanduser() / key
    vocab_path = entry / "vocab.json"

    docs = None
    if vocab is None and vocab_path.is_file():
        vocab = Vocab.load(vocab_path)
    if vocab is None:
        docs = load_documents(source, **source_args)
        vocab = Vocab.from_texts(_concat_splits(docs, vocab_splits), **vocab_args)
        vocab.save(vocab_path)

    ids_dir = entry / vocab.fingerprint()[:16]
    paths = {s: (ids_dir / f"{s}.tokens.npy", ids_dir / f"{s}.doc_start.npy") for s in SPLITS}
    if docs is None and all(t.is_file() and d.is_file() for t, d in paths.values()):
        return Corpus(vocab, {s: EncodedSplit(_load_npy(t), _load_npy(d)) for s, (t, d) in paths.items()}, key, True)

    docs = docs if docs is not None else load_documents(source, **source_args)
    ids_dir.mkdir(parents=True, exist_ok=True)
    # For humans debugging the cache: what this entry was built from.
    _atomic_write_bytes(entry / "identity.json", json.dumps(identity, indent=1, default=str).encode())
    for split, (tok_path, doc_path) in paths.items():
        encoded = encode_documents(docs[split], vocab)
        _atomic_save_npy(tok_path, encoded.tokens_S)
        _atomic_save_npy(doc_path, encoded.doc_start_S)
    return Corpus(vocab, {s: EncodedSplit(_load_npy(t), _load_npy(d)) for s, (t, d) in paths.items()}, key, False)


def _concat_splits(docs: Mapping[str, list[str]], names: Sequence[str]) -> list[str]:
    return [d for name in names for d in docs[name]]


def source_identity(source: str, **source_args) -> dict:
    """What identifies a source's content for the cache, without reading it:
    (path, size, mtime_ns) of each file (``source_args`` as ``load_documents``;
    only ``splits``/``data_files``/``hf_config`` matter here)."""
    splits = source_args.get("splits") or {}
    if source == "embedded":
        return {"embedded": embedded_fingerprint()}
    if source.startswith("hf:"):
        return _hf_identity(source[3:], source_args.get("data_files"), source_args.get("hf_config"))
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(_missing_path_message(path))
    if path.is_dir() and _is_saved_hf_dataset(path):
        return _hf_identity(str(path), None, None)
    if path.is_dir():
        names = {parse_slice_spec(s)[0] for s in splits.values()} | {f"{s}.txt" for s in SPLITS}
        return {"folder": str(path.resolve()), "files": [_stat(path / n) for n in sorted(names)]}
    return {"file": _stat(path)}


def _stat(path: Path) -> list:
    if not path.exists():
        return [str(path), None]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _hf_identity(name: str, data_files, hf_config) -> dict:
    local = Path(name).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return {"hf_dir": str(local.resolve()), "files": [_stat(p) for p in files]}
    local_files = []
    if data_files is not None:
        flat = [data_files] if isinstance(data_files, str) else (
            [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
            if isinstance(data_files, Mapping) else list(data_files)
        )
        local_files = [_stat(Path(f)) for f in flat]
    # A hub dataset in the local cache: its arrow fingerprints identify the content (loading is a
    # memory map, cheap).
    ds_name, config = _parse_hf_name(name, hf_config)
    loaded = _hf_load_dataset(ds_name, config, data_files)
    fingerprints = {k: v._fingerprint for k, v in loaded.items()} if isinstance(loaded, Mapping) else loaded._fingerprint
    return {"hf": name, "config": config, "data_files": local_files, "fingerprints": fingerprints}


def _load_npy(path: Path) -> np.ndarray:
    # mmap: the OS pages ids in on demand, so a 100 MB split "loads" in milliseconds.
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Truncated-BPTT batching
# ----------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One window of B streams x T steps (batch-major; transpose for scan's TxB).

    x_BxT: input ids; y_BxT: target ids (the next token of each input).
    reset_BxT: True where x starts a document: reset the carry before that step.
    mask_BxT: True on real targets (all True in training; False on eval padding).
    lengths_B: real steps per stream in this window (mask is a prefix of each row).
    new_epoch: this window starts an epoch (training) or a pass (eval): reset the
      carry to its initial value before it.
    epoch, step: where the window sits (eval: epoch 0, step = window index).
    """

    x_BxT: np.ndarray
    y_BxT: np.ndarray
    reset_BxT: np.ndarray
    mask_BxT: np.ndarray
    lengths_B: np.ndarray
    new_epoch: bool
    epoch: int
    step: int


class TBPTTBatcher:
    """Training windows for truncated BPTT, a pure function of (seed, step).

    The tokens are cut into B contiguous streams like PyTorch's ``batchify``
    (the remainder S mod B is dropped; stream b = tokens[b*P:(b+1)*P], P = S//B).
    Window k of an epoch covers stream positions [o + k*T, o + (k+1)*T) as inputs
    and the same shifted by one as targets, so within an epoch the last target
    of window k is the first input of window k+1: carry the state across windows
    and reset it when ``new_epoch`` (and where ``reset_BxT``).

    Offset o is 0, or with ``random_offset=True`` drawn per epoch from
    ``default_rng((seed, epoch))`` in [0, T): epochs then see different window
    cuts. Every epoch has the same ``steps_per_epoch`` (partial windows are
    dropped so shapes stay static for jit). ``batch_at(step)`` reads no state
    but (tokens, seed, step), so a resumed run reproduces batches exactly.
    """

    def __init__(
        self,
        tokens_S: np.ndarray,
        doc_start_S: np.ndarray | None = None,
        *,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        random_offset: bool = False,
    ):
        tokens_S = np.asarray(tokens_S)  # a view on a memmap: nothing is read yet
        if tokens_S.ndim != 1:
            raise ValueError(f"tokens_S must be 1-D, got shape {tokens_S.shape}")
        if doc_start_S is not None and np.shape(doc_start_S) != tokens_S.shape:
            raise ValueError(f"doc_start_S has shape {np.shape(doc_start_S)}, expected {tokens_S.shape}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        self.batch_size, self.seq_len, self.seed, self.random_offset = batch_size, seq_len, seed, random_offset
        self.stream_len = tokens_S.shape[0] // batch_size  # P
        max_offset = seq_len - 1 if random_offset else 0
        # Inputs use positions < P-1 (the last position is only a target).
        self.steps_per_epoch = (self.stream_len - 1 - max_offset) // seq_len
        if self.steps_per_epoch < 1:
            need = batch_size * (seq_len + 1 + max_offset)
            raise ValueError(
                f"{tokens_S.shape[0]} tokens are too few for batch_size={batch_size} x seq_len={seq_len}"
                f"{' with random offsets' if random_offset else ''}: need at least {need}; "
                "reduce batch_size or seq_len, or use a larger split"
            )
        n = batch_size * self.stream_len
        # Views (no copy, also on a memmap): only the windows asked for are read.
        self.tokens_BxP = tokens_S[:n].reshape(batch_size, self.stream_len)
        self.doc_start_BxP = None if doc_start_S is None else doc_start_S[:n].reshape(batch_size, self.stream_len)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def offset_of_epoch(self, epoch: int) -> int:
        """Window offset o of an epoch (0 unless random_offset)."""
        if not self.random_offset:
            return 0
        return int(np.random.default_rng((self.seed, epoch)).integers(self.seq_len))

    def window_start(self, step: int) -> int:
        """Stream position of the window's first input."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.offset_of_epoch(epoch) + k * self.seq_len

    def batch_at(self, step: int) -> Batch:
        """The window of global step ``step`` (any step >= 0; epochs repeat)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start, t = self.window_start(step), self.seq_len
        x_BxT = np.array(self.tokens_BxP[:, start : start + t], dtype=np.int32)
        y_BxT = np.array(self.tokens_BxP[:, start + 1 : start + t + 1], dtype=np.int32)
        if self.doc_start_BxP is None:
            reset_BxT = np.zeros_like(x_BxT, dtype=bool)
        else:
            reset_BxT = np.array(self.doc_start_BxP[:, start : start + t], dtype=bool)
        return Batch(
            x_BxT, y_BxT, reset_BxT,
            mask_BxT=np.ones_like(x_BxT, dtype=bool),
            lengths_B=np.full(self.batch_size, t, dtype=np.int32),
            new_epoch=step % self.steps_per_epoch == 0,
            epoch=self.epoch_of(step),
            step=step,
        )

    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[Batch]:
        """``batch_at(start_step), batch_at(start_step + 1), ...`` (forever when num_steps is None)."""
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch_at(step)
            step += 1


def eval_streams(n_tokens: int, batch_size: int, *, drop_remainder: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stream layout for evaluation: ``(starts_B, lengths_B)`` where stream b feeds
    inputs tokens[starts[b] : starts[b] + lengths[b]] (targets shifted by one).

    drop_remainder=False: the S-1 targets are dealt into B contiguous, nearly
      equal streams, each target exactly once (exact perplexity over every token).
    drop_remainder=True: PyTorch's ``batchify`` layout (P = S//B tokens per
      stream, P-1 targets each; up to B-1 tail tokens and each stream's first
      token are never targets), for parity with its ``evaluate``.
    """
    if n_tokens < 2:
        raise ValueError(f"evaluation needs at least 2 tokens, got {n_tokens}")
    b = np.arange(batch_size, dtype=np.int64)
    if drop_remainder:
        length = n_tokens // batch_size
        if length < 2:
            raise ValueError(f"{n_tokens} tokens are too few for {batch_size} streams; lower the eval batch size")
        return b * length, np.full(batch_size, length - 1, dtype=np.int64)
    n_targets = n_tokens - 1
    cuts = (np.arange(batch_size + 1, dtype=np.int64) * n_targets) // batch_size
    return cuts[:-1], np.diff(cuts)


def eval_batches(
    tokens_S: np.ndarray,
    doc_start_S: np.ndarray | None = None,
    *,
    batch_size: int,
    seq_len: int,
    drop_remainder: bool = False,
) -> Iterator[Batch]:
    """All windows of a split, in order, for evaluation (see ``eval_streams``).

    Shapes are fixed (B, T); the last window and uneven streams are padded with
    id 0 and ``mask_BxT=False``. Sum the per-token loss times the mask and divide
    by ``mask.sum()`` over all batches for the exact mean. The first batch has
    ``new_epoch=True`` (start from the initial carry); carry the state across
    the rest. ``batch_size=1`` gives full-context perplexity; with B > 1 each
    stream starts from a fresh carry in the middle of the text.
    """
    n = int(np.shape(tokens_S)[0])
    starts_B, lengths_B = eval_streams(n, batch_size, drop_remainder=drop_remainder)
    n_windows = int(-(-lengths_B.max() // seq_len))
    t_T = np.arange(seq_len, dtype=np.int64)
    for w in range(n_windows):
        pos_BxT = w * seq_len + t_T[None, :]  # position inside each stream
        mask_BxT = pos_BxT < lengths_B[:, None]
        idx_BxT = np.where(mask_BxT, starts_B[:, None] + pos_BxT, 0)
        x_BxT = np.where(mask_BxT, np.asarray(tokens_S[idx_BxT.reshape(-1)]).reshape(idx_BxT.shape), 0)
        y_BxT = np.where(mask_BxT, np.asarray(tokens_S[(idx_BxT + 1).reshape(-1)]).reshape(idx_BxT.shape), 0)
        if doc_start_S is None:
            reset_BxT = np.zeros(mask_BxT.shape, dtype=bool)
        else:
            reset_BxT = np.asarray(doc_start_S[idx_BxT.reshape(-1)]).reshape(idx_BxT.shape) & mask_BxT
        yield Batch(
            x_BxT.astype(np.int32), y_BxT.astype(np.int32), reset_BxT, mask_BxT,
            lengths_B=np.clip(lengths_B - w * seq_len, 0, seq_len).astype(np.int32),
            new_epoch=w == 0, epoch=0, step=w,
        )
