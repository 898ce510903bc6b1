"""Text data: sources and splits, tokenizers and the vocabulary (with PyTorch
word_language_model parity), the encoded-corpus cache, and TBPTT batching."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rnnlab.data import text
from rnnlab.data.embedded import embedded_corpus

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WIKITEXT = SHARED / "wikitext-2"

# Tricky whitespace on purpose: tabs, runs of spaces, blank lines, a literal <unk> and <eos>.
WORD_TRAIN = "the cat sat\n\n  on the\tmat <unk>\nthe end\n"
WORD_VALID = "a cat <eos> ran\nthe dog\n"
WORD_TEST = "new words here\nthe cat"  # no final newline: the last line still gets <eos>


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _lines_file(path: Path, n_lines: int) -> Path:
    return _write(path, "".join(f"line {i} of the file with some words\n" for i in range(n_lines)))


@pytest.fixture
def word_folder(tmp_path):
    folder = tmp_path / "words"
    _write(folder / "train.txt", WORD_TRAIN)
    _write(folder / "valid.txt", WORD_VALID)
    _write(folder / "test.txt", WORD_TEST)
    return folder


# --- a re-implementation of PyTorch's examples/word_language_model/data.py -------------------


class RefDictionary:
    def __init__(self):
        self.word2idx, self.idx2word = {}, []

    def add_word(self, word):
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]


class RefCorpus:
    def __init__(self, paths):  # paths: train, valid, test, in that order
        self.dictionary = RefDictionary()
        self.splits = [self.tokenize(p) for p in paths]

    def tokenize(self, path):
        with open(path, encoding="utf8") as f:
            for line in f:
                for word in line.split() + ["<eos>"]:
                    self.dictionary.add_word(word)
        with open(path, encoding="utf8") as f:
            ids = [self.dictionary.word2idx[w] for line in f for w in line.split() + ["<eos>"]]
        return np.array(ids, dtype=np.int64)


def _ref_batchify(tokens_S, bsz):
    nbatch = len(tokens_S) // bsz
    return np.asarray(tokens_S[: nbatch * bsz]).reshape(bsz, nbatch).T  # LxB, as the example's .t()


def _ref_get_batch(source_PxB, i, bptt):
    seq_len = min(bptt, len(source_PxB) - 1 - i)
    return source_PxB[i : i + seq_len], source_PxB[i + 1 : i + 1 + seq_len]


# --- sources -------------------------------------------------------------------------------


def test_embedded_corpus_is_sorted_pydoc_topics():
    from pydoc_data.topics import topics

    docs = embedded_corpus()
    assert docs == [topics[k] for k in sorted(topics)]
    assert len(docs) > 50 and sum(map(len, docs)) > 300_000


def test_embedded_splits_cover_text_at_line_boundaries():
    docs = text.load_documents("embedded")
    original = "".join(embedded_corpus())
    joined = {s: "".join(docs[s]) for s in text.SPLITS}
    assert joined["train"] + joined["valid"] + joined["test"] == original
    for split in ("valid", "test"):
        assert docs[split][0]  # non-empty
    cut = len(joined["train"])
    assert original[cut - 1] == "\n"  # the cut falls just after a newline
    assert 0.88 < cut / len(original) < 0.92
    assert text.load_documents("embedded") == docs  # deterministic


def test_txt_file_split_by_fractions(tmp_path):
    path = _lines_file(tmp_path / "corpus.txt", 1000)
    docs = text.load_documents(str(path), fractions=(0.8, 0.1, 0.1))
    assert [len(docs[s]) for s in text.SPLITS] == [1, 1, 1]  # one file = one document per split
    assert "".join(docs["train"] + docs["valid"] + docs["test"]) == path.read_text()
    for split in text.SPLITS:
        assert docs[split][0].endswith("\n") and docs[split][0].startswith("line ")
    assert abs(len(docs["train"][0]) / path.stat().st_size - 0.8) < 0.01


def test_newlines_normalised_and_bom_dropped(tmp_path):
    path = _write(tmp_path / "crlf.txt", b"\xef\xbb\xbfa b\r\nc\rd\n")
    assert text.read_text(path) == "a b\nc\nd\n"


def test_folder_with_line_slices(tmp_path):
    folder = tmp_path / "wt"
    _lines_file(folder / "valid.txt", 40)
    _write(folder / "test.txt", "test line\n")
    splits = {"train": "valid.txt[:30]", "valid": "valid.txt[30:]", "test": "test.txt"}
    docs = text.load_documents(str(folder), splits=splits)
    lines = (folder / "valid.txt").read_text().splitlines(keepends=True)
    assert docs["train"] == ["".join(lines[:30])]
    assert docs["valid"] == ["".join(lines[30:])]
    assert docs["test"] == ["test line\n"]


def test_folder_defaults_to_split_files(word_folder):
    docs = text.load_documents(str(word_folder))
    assert docs == {"train": [WORD_TRAIN], "valid": [WORD_VALID], "test": [WORD_TEST]}


def test_parse_slice_spec():
    assert text.parse_slice_spec("valid.txt[:3390]") == ("valid.txt", slice(None, 3390))
    assert text.parse_slice_spec("valid.txt[3390:]") == ("valid.txt", slice(3390, None))
    assert text.parse_slice_spec("a.txt[-5:-1]") == ("a.txt", slice(-5, -1))
    assert text.parse_slice_spec("test.txt") == ("test.txt", slice(None, None))
    with pytest.raises(ValueError, match="FILE\\[start:stop\\]"):
        text.parse_slice_spec("valid.txt[a:b]")


@pytest.mark.skipif(not WIKITEXT.is_dir(), reason="needs ../shared/data/wikitext-2")
def test_wikitext2_train_on_valid_lines():
    splits = {"train": "valid.txt[:3390]", "valid": "valid.txt[3390:]", "test": "test.txt"}
    docs = text.load_documents(str(WIKITEXT), splits=splits)
    assert docs["train"][0].count("\n") == 3390 and docs["valid"][0].count("\n") == 370


# --- errors --------------------------------------------------------------------------------


def test_missing_path_names_it_and_lists_neighbours(tmp_path):
    _write(tmp_path / "present.txt", "x\n")
    missing = tmp_path / "absent.txt"
    with pytest.raises(FileNotFoundError) as err:
        text.load_documents(str(missing))
    message = str(err.value)
    assert "absent.txt" in message and "present.txt" in message and "embedded" in message


def test_missing_split_file_in_folder(tmp_path):
    _lines_file(tmp_path / "f" / "valid.txt", 5)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        text.load_documents(str(tmp_path / "f"), splits={"train": "nope.txt", "valid": "valid.txt", "test": "valid.txt"})


def test_folder_without_test_says_how_to_map(tmp_path):
    _lines_file(tmp_path / "f" / "train.txt", 5)
    _lines_file(tmp_path / "f" / "valid.txt", 5)
    with pytest.raises(ValueError, match="no test split.*splits="):
        text.load_documents(str(tmp_path / "f"))


def test_folder_without_train_says_how_to_map(tmp_path):
    _lines_file(tmp_path / "f" / "valid.txt", 5)
    _lines_file(tmp_path / "f" / "test.txt", 5)
    with pytest.raises(ValueError, match=r"splits=\{'train': 'valid.txt\[:3390\]'"):
        text.load_documents(str(tmp_path / "f"))


def test_empty_file_raises(tmp_path):
    path = _write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty"):
        text.load_documents(str(path))


def test_too_small_for_fractions_raises(tmp_path):
    path = _write(tmp_path / "one_line.txt", "just one line\n")
    with pytest.raises(ValueError, match="split 'valid' .* is empty"):
        text.load_documents(str(path))


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = _write(tmp_path / "latin1.txt", b"caf\xe9 au lait\n" * 100)
    with pytest.raises(ValueError) as err:
        text.load_documents(str(path))
    assert "latin1.txt" in str(err.value) and "byte offset 3" in str(err.value)
    assert "errors='replace'" in str(err.value)
    docs = text.load_documents(str(path), errors="replace")
    assert docs["train"][0].startswith("caf\ufffd au lait\n")


def test_bad_fractions_and_split_keys(tmp_path, word_folder):
    with pytest.raises(ValueError, match="fractions"):
        text.load_documents("embedded", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown keys"):
        text.load_documents(str(word_folder), splits={"training": "train.txt"})


# --- Hugging Face ----------------------------------------------------------------------------


def test_hf_saved_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"train": ["a b", "c d", "", "e"], "validation": ["f g"], "test": ["h\n"]}
    ddict = datasets.DatasetDict({k: datasets.Dataset.from_dict({"body": v}) for k, v in rows.items()})
    ddict.save_to_disk(str(tmp_path / "saved"))
    for source in (str(tmp_path / "saved"), "hf:" + str(tmp_path / "saved")):
        docs = text.load_documents(source, text_column="body")
        assert docs == {"train": ["a b\nc d\n\ne\n"], "valid": ["f g\n"], "test": ["h\n"]}
    as_docs = text.load_documents(str(tmp_path / "saved"), text_column="body", hf_rows="documents")
    assert as_docs["train"] == rows["train"]
    with pytest.raises(ValueError, match="no column 'text'.*text_column="):
        text.load_documents(str(tmp_path / "saved"))


def test_hf_single_dataset_split_by_fractions_and_cached(tmp_path):
    datasets = pytest.importorskip("datasets")
    lines = [f"row {i} words here" for i in range(200)]
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(tmp_path / "one"))
    docs = text.load_documents("hf:" + str(tmp_path / "one"))
    assert "".join(docs["train"] + docs["valid"] + docs["test"]) == "".join(f"{r}\n" for r in lines)
    corpus = text.load_corpus("hf:" + str(tmp_path / "one"), level="word", cache_dir=tmp_path / "cache")
    again = text.load_corpus("hf:" + str(tmp_path / "one"), level="word", cache_dir=tmp_path / "cache")
    assert again.from_cache and not corpus.from_cache
    np.testing.assert_array_equal(again["valid"].tokens_S, corpus["valid"].tokens_S)


def test_hf_text_builder_with_data_files(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    files = {"train": str(_write(tmp_path / "tr.txt", "one two\nthree\n")),
             "validation": str(_write(tmp_path / "va.txt", "four\nfive\n"))}
    with pytest.raises(ValueError, match="no test split.*splits=\\{'test': 'validation\\[:N\\]'"):
        text.load_documents("hf:text", data_files=files)
    docs = text.load_documents("hf:text", data_files=files, splits={"valid": "validation[:1]", "test": "validation[1:]"})
    assert docs == {"train": ["one two\nthree\n"], "valid": ["four\n"], "test": ["five\n"]}


# --- tokenizers and the vocabulary ------------------------------------------------------------


def test_word_tokenize_like_pytorch():
    assert text.tokenize("a  b\n\nc\td\n", "word") == ["a", "b", "<eos>", "<eos>", "c", "d", "<eos>"]
    assert text.tokenize("no newline", "word") == ["no", "newline", "<eos>"]
    assert text.tokenize("", "word") == []
    assert text.tokenize("ab\n", "char") == ["a", "b", "\n"]
    with pytest.raises(ValueError, match="level"):
        text.tokenize("x", "bpe")


def test_first_seen_vocab_and_ids_match_pytorch_example(word_folder, tmp_path):
    ref = RefCorpus([word_folder / f"{s}.txt" for s in text.SPLITS])
    for cache_dir in (None, tmp_path / "cache"):
        corpus = text.load_corpus(
            str(word_folder), level="word", order="first_seen", vocab_splits=text.SPLITS, cache_dir=cache_dir
        )
        assert list(corpus.vocab.itos) == ref.dictionary.idx2word
        for split, ref_ids in zip(text.SPLITS, ref.splits, strict=True):
            np.testing.assert_array_equal(corpus[split].tokens_S, ref_ids)


@pytest.mark.skipif(not WIKITEXT.is_dir(), reason="needs ../shared/data/wikitext-2")
def test_first_seen_parity_on_wikitext2(tmp_path):
    # Two real files, as the example would read them if they were its train/valid/test.
    for name in ("valid.txt", "test.txt"):
        os.symlink(WIKITEXT / name, tmp_path / name)
    os.symlink(WIKITEXT / "valid.txt", tmp_path / "train.txt")
    ref = RefCorpus([tmp_path / f"{s}.txt" for s in text.SPLITS])
    corpus = text.load_corpus(str(tmp_path), level="word", order="first_seen", vocab_splits=text.SPLITS)
    assert list(corpus.vocab.itos) == ref.dictionary.idx2word
    np.testing.assert_array_equal(corpus["test"].tokens_S, ref.splits[2])
    assert corpus.vocab.itos[0] == "<eos>" and "<unk>" in corpus.vocab.stoi  # no extra specials


def test_frequency_order_specials_first_then_count_then_lexicographic():
    vocab = text.Vocab.from_texts(["b a c a b a\nd\n"], level="word")
    assert vocab.itos == ("<unk>", "<eos>", "a", "b", "c", "d")  # a:3 b:2 then c, d tie -> lexicographic
    chars = text.Vocab.from_texts(["bba"], level="char")
    assert chars.itos == ("<unk>", "b", "a")
    assert text.Vocab.from_texts(["bab", "cb"], level="char", order="first_seen").itos == ("b", "a", "c")


def test_vocab_cuts_map_to_unk():
    texts = ["a a a a b b b c c d\n"]
    by_size = text.Vocab.from_texts(texts, level="word", max_size=4)
    assert by_size.itos == ("<unk>", "<eos>", "a", "b")
    by_count = text.Vocab.from_texts(texts, level="word", min_count=2)
    assert by_count.itos == ("<unk>", "<eos>", "a", "b", "c")
    ids = by_size.encode("a c d zebra\n")
    assert by_size.decode(ids) == "a <unk> <unk> <unk>\n"
    with pytest.raises(ValueError, match="no '<unk>'"):
        text.Vocab.from_texts(texts, level="word", order="first_seen", max_size=3)
    with pytest.raises(ValueError, match="max_size"):
        text.Vocab.from_texts(texts, level="word", max_size=2)


def test_unknown_without_unk_raises_with_fix():
    vocab = text.Vocab.from_texts(["a b\n"], level="word", order="first_seen")
    assert vocab.unk_id is None
    with pytest.raises(ValueError, match="'zebra' is not in the vocabulary.*all splits"):
        vocab.encode("a zebra\n")
    chars = text.Vocab(["a", "b"], level="char", unk=None)
    with pytest.raises(ValueError, match="'z'"):
        chars.encode("abz")


def test_char_round_trip_on_unicode_text():
    docs = embedded_corpus()
    vocab = text.Vocab.from_texts(docs, level="char")
    sample = docs[3] + "“curly” — 30° ß"  # non-ASCII characters that the pydoc topics contain
    ids = vocab.encode(sample)
    assert ids.dtype == np.int32 and ids.shape == (len(sample),)
    assert vocab.decode(ids) == sample
    assert vocab.decode(vocab.encode("a\U0001f600b")) == "a<unk>b"  # beyond every known code point


def test_word_round_trip():
    vocab = text.Vocab.from_texts([WORD_TRAIN, WORD_VALID, WORD_TEST], level="word")
    ids = vocab.encode(WORD_TRAIN)
    assert vocab.decode(ids) == "the cat sat\n\non the mat <unk>\nthe end\n"  # whitespace normalised
    np.testing.assert_array_equal(vocab.encode(vocab.decode(ids)), ids)


def test_vocab_json_round_trip_equality_and_resume_check(tmp_path):
    vocab = text.Vocab.from_texts([WORD_TRAIN], level="word")
    vocab.save(tmp_path / "vocab.json")
    raw = json.loads((tmp_path / "vocab.json").read_text())  # plain JSON, no pickle
    assert raw["itos"] == list(vocab.itos) and raw["level"] == "word"
    loaded = text.Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.fingerprint() == vocab.fingerprint()
    vocab.check_same(loaded)
    other = text.Vocab.from_texts([WORD_TRAIN + "extra\n"], level="word")
    assert other != vocab
    with pytest.raises(ValueError, match="differs .*size .*fresh workdir"):
        other.check_same(vocab)
    assert text.sync_vocab(tmp_path / "run" / "vocab.json", vocab) is vocab  # fresh run: saves
    assert text.sync_vocab(tmp_path / "run" / "vocab.json", vocab) is vocab  # resume: same, fine
    with pytest.raises(ValueError, match="vocab.json differs"):
        text.sync_vocab(tmp_path / "run" / "vocab.json", other)


# --- encoded corpus and cache ------------------------------------------------------------------


def test_encode_documents_marks_document_starts():
    vocab = text.Vocab.from_texts(["abcd"], level="char")
    split = text.encode_documents(["ab", "", "cde"], vocab)
    np.testing.assert_array_equal(split.doc_start_S, [True, False, True, False, False])
    assert vocab.decode(split.tokens_S) == "abcd<unk>"


def test_cache_hit_reads_no_text(tmp_path, monkeypatch):
    path = _lines_file(tmp_path / "c.txt", 500)
    cache = tmp_path / "cache"
    first = text.load_corpus(str(path), level="word", cache_dir=cache)
    assert not first.from_cache
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == 6
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_reading(*args, **kwargs):
        raise AssertionError("a cache hit must not read the corpus")

    monkeypatch.setattr(text, "load_documents", no_reading)
    second = text.load_corpus(str(path), level="word", cache_dir=cache)
    assert second.from_cache and second.key == first.key and second.vocab == first.vocab
    assert isinstance(second["train"].tokens_S, np.memmap)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # nothing rewritten
    for split in text.SPLITS:
        np.testing.assert_array_equal(second[split].tokens_S, first[split].tokens_S)
        np.testing.assert_array_equal(second[split].doc_start_S, first[split].doc_start_S)
    monkeypatch.undo()

    # Another tokenizer setting or changed content is another key: a miss, not stale ids.
    assert text.load_corpus(str(path), level="char", cache_dir=cache).key != first.key
    _write(path, path.read_text() + "one more line\n")
    changed = text.load_corpus(str(path), level="word", cache_dir=cache)
    assert changed.key != first.key and not changed.from_cache


def test_cache_with_given_vocab(tmp_path):
    path = _lines_file(tmp_path / "c.txt", 300)
    vocab = text.Vocab.from_texts(["line of the with some words 1 2 3\n"], level="word")
    corpus = text.load_corpus(str(path), level="word", vocab=vocab, cache_dir=tmp_path / "cache")
    again = text.load_corpus(str(path), level="word", vocab=vocab, cache_dir=tmp_path / "cache")
    assert again.from_cache and again.vocab == vocab
    np.testing.assert_array_equal(again["test"].tokens_S, corpus["test"].tokens_S)
    assert (corpus["train"].tokens_S == vocab.unk_id).any()
    with pytest.raises(ValueError, match="level"):
        text.load_corpus(str(path), level="char", vocab=vocab)


def test_embedded_corpus_loads_and_has_documents():
    corpus = text.load_corpus("embedded", level="char")
    train = corpus["train"]
    assert train.tokens_S.dtype == np.int32 and train.doc_start_S.dtype == bool
    assert train.doc_start_S[0] and train.doc_start_S.sum() > 50  # one start per pydoc topic
    assert corpus.vocab.decode(train.tokens_S[:10]) == embedded_corpus()[0][:10]


# --- TBPTT batching --------------------------------------------------------------------------


def _batcher(n=1000, b=4, t=7, docs_every=37, **kw):
    tokens_S = np.arange(n, dtype=np.int32) % 101
    doc_start_S = np.arange(n) % docs_every == 0
    return tokens_S, doc_start_S, text.TBPTTBatcher(tokens_S, doc_start_S, batch_size=b, seq_len=t, **kw)


def test_batches_equal_pytorch_batchify_get_batch():
    tokens_S, _, batcher = _batcher()
    source_PxB = _ref_batchify(tokens_S, 4)
    assert batcher.steps_per_epoch == (len(source_PxB) - 1) // 7
    for k in range(batcher.steps_per_epoch):
        x_TxB, y_TxB = _ref_get_batch(source_PxB, k * 7, 7)
        batch = batcher.batch_at(k)
        np.testing.assert_array_equal(batch.x_BxT, x_TxB.T)
        np.testing.assert_array_equal(batch.y_BxT, y_TxB.T)
        assert batch.x_BxT.dtype == np.int32 and batch.mask_BxT.all()


@pytest.mark.parametrize("random_offset", [False, True])
def test_batch_at_is_pure_in_seed_and_step(random_offset):
    tokens_S, doc_start_S, batcher = _batcher(seed=3, random_offset=random_offset)
    twin = text.TBPTTBatcher(tokens_S, doc_start_S, batch_size=4, seq_len=7, seed=3, random_offset=random_offset)
    iterated = list(batcher.iterate(0, 3 * batcher.steps_per_epoch))
    for step in (0, 5, batcher.steps_per_epoch, 2 * batcher.steps_per_epoch + 3, 17):
        a, b = batcher.batch_at(step), twin.batch_at(step)
        for field in ("x_BxT", "y_BxT", "reset_BxT", "mask_BxT"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            np.testing.assert_array_equal(getattr(a, field), getattr(iterated[step], field))
        assert (a.new_epoch, a.epoch, a.step) == (iterated[step].new_epoch, iterated[step].epoch, step)
    resumed = next(batcher.iterate(start_step=17))
    np.testing.assert_array_equal(resumed.x_BxT, iterated[17].x_BxT)


@pytest.mark.parametrize("random_offset", [False, True])
def test_streams_contiguous_across_windows_within_epoch(random_offset):
    _, _, batcher = _batcher(seed=1, random_offset=random_offset)
    for epoch in range(3):
        first = epoch * batcher.steps_per_epoch
        for step in range(first, first + batcher.steps_per_epoch - 1):
            now, nxt = batcher.batch_at(step), batcher.batch_at(step + 1)
            np.testing.assert_array_equal(now.y_BxT[:, -1], nxt.x_BxT[:, 0])
            np.testing.assert_array_equal(now.x_BxT[:, 1:], now.y_BxT[:, :-1])
            assert nxt.new_epoch is False
        assert batcher.batch_at(first).new_epoch and batcher.batch_at(first).epoch == epoch


def test_random_offsets_vary_by_epoch_and_seed():
    _, _, batcher = _batcher(seed=0, random_offset=True)
    offsets = [batcher.offset_of_epoch(e) for e in range(20)]
    assert len(set(offsets)) > 1 and all(0 <= o < 7 for o in offsets)
    _, _, other = _batcher(seed=1, random_offset=True)
    assert [other.offset_of_epoch(e) for e in range(20)] != offsets
    _, _, plain = _batcher()
    assert plain.steps_per_epoch >= batcher.steps_per_epoch  # the largest offset still fits


def test_reset_flags_at_document_starts():
    tokens_S, doc_start_S, batcher = _batcher(docs_every=37)
    stream_len = len(tokens_S) // 4
    for step in range(batcher.steps_per_epoch):
        batch = batcher.batch_at(step)
        pos_BxT = np.arange(4)[:, None] * stream_len + step * 7 + np.arange(7)[None, :]
        np.testing.assert_array_equal(batch.reset_BxT, pos_BxT % 37 == 0)
    no_docs = text.TBPTTBatcher(tokens_S, batch_size=4, seq_len=7)
    assert not no_docs.batch_at(0).reset_BxT.any()


def test_batcher_too_few_tokens_says_what_to_change():
    with pytest.raises(ValueError, match="too few .*reduce batch_size or seq_len"):
        text.TBPTTBatcher(np.arange(20), batch_size=4, seq_len=7)


@pytest.mark.parametrize("n, b, t", [(1000, 4, 7), (101, 3, 10), (5, 8, 4), (2, 1, 3)])
def test_eval_counts_every_target_once(n, b, t):
    tokens_S = np.arange(n, dtype=np.int32)
    doc_start_S = np.arange(n) % 13 == 0
    batches = list(text.eval_batches(tokens_S, doc_start_S, batch_size=b, seq_len=t))
    assert batches[0].new_epoch and not any(x.new_epoch for x in batches[1:])
    targets = np.concatenate([x.y_BxT.T[x.mask_BxT.T] for x in batches])  # time-major flatten per window
    assert sorted(targets.tolist()) == list(range(1, n))  # every target exactly once
    for x in batches:
        assert x.x_BxT.shape == (b, t)
        np.testing.assert_array_equal(x.y_BxT[x.mask_BxT], x.x_BxT[x.mask_BxT] + 1)  # next tokens
        np.testing.assert_array_equal(x.reset_BxT, (x.x_BxT % 13 == 0) & x.mask_BxT)
        np.testing.assert_array_equal(x.mask_BxT.sum(1), x.lengths_B)


def test_eval_drop_remainder_matches_pytorch_evaluate():
    tokens_S = (np.arange(1003) * 7 % 50).astype(np.int32)
    source_PxB = _ref_batchify(tokens_S, 10)
    batches = list(text.eval_batches(tokens_S, batch_size=10, seq_len=35, drop_remainder=True))
    assert len(batches) == len(range(0, len(source_PxB) - 1, 35))
    for w, batch in enumerate(batches):
        x_TxB, y_TxB = _ref_get_batch(source_PxB, w * 35, 35)
        seq_len = len(x_TxB)
        np.testing.assert_array_equal(batch.x_BxT[:, :seq_len], x_TxB.T)
        np.testing.assert_array_equal(batch.y_BxT[:, :seq_len], y_TxB.T)
        assert batch.mask_BxT[:, :seq_len].all() and not batch.mask_BxT[:, seq_len:].any()
