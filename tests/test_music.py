"""Piano rolls of the Bach chorales (rnnlab.data.music): the roll of a known
chorale equals what music21 reports through other paths (chordify, each part's
element at a time), a hand-built score gives the hand-written roll, the loss
equals a multi-label NLL computed by hand, batches are pure in (seed, step) with
targets the inputs shifted by one, and the split is a fixed partition by piece.
The fast tests parse at most two corpus files; the slow one reads the whole
corpus (built once into the cache, under a minute)."""

import math
import sys

import jax
import jax.numpy as jnp
import music21  # a dependency of rnnlab (pyproject.toml): missing, these tests fail rather than skip
import numpy as np
import pytest
from music21 import chord, corpus, note, stream, tie

from rnnlab.data import music


def _pitches(roll_TxD, t) -> set[int]:
    return {int(d) + music.LOWEST_MIDI for d in np.flatnonzero(roll_TxD[t])}


def _sounding(flat, t) -> set[int]:
    """MIDI numbers of the element of a flat stream sounding at t (offset <= t < end)."""
    el = flat.getElementAtOrBefore(t, classList=[note.Note, note.Rest, chord.Chord])
    if el is None or not el.offset <= t < el.offset + el.quarterLength or isinstance(el, note.Rest):
        return set()
    return {p.midi for p in el.pitches}


@pytest.fixture(scope="module")
def bwv66_6():
    return corpus.parse("bach/bwv66.6", forceSource=True)  # not music21's pickle, another process may write it


# --------------------------------------------------------------------------- the roll


def test_known_chorale_against_music21(bwv66_6):
    roll = music.piano_roll(bwv66_6)
    assert roll.shape == (36, 88) and roll.dtype == bool
    assert bwv66_6.highestTime == 36.0  # 9 bars of 4/4, a one-beat pickup and a three-beat last bar
    # pickup: measure 0 lacks three beats, and step 0 is its beat (the soprano's C#5 over A3, A3, E4)
    m0 = bwv66_6.parts[0].getElementsByClass(stream.Measure)[0]
    assert m0.number == 0 and m0.paddingLeft == 3.0
    assert _pitches(roll, 0) == {57, 64, 73} and _pitches(roll, 1) == {54, 61, 66, 69}
    chords = bwv66_6.chordify().flatten()
    parts = [p.flatten() for p in bwv66_6.parts]
    for t in range(36):
        assert _pitches(roll, t) == _sounding(chords, t), t
        assert _pitches(roll, t) == set().union(*(_sounding(p, t) for p in parts)), t


def _part(name, events):
    part = stream.Part()
    part.partName = name
    for e in events:
        part.append(e)
    return part


def _n(name, ql, tie_type=None):
    n = note.Note(name, quarterLength=ql)
    if tie_type:
        n.tie = tie.Tie(tie_type)
    return n


def _hand_score():
    soprano = _part("Soprano", [_n("C5", 0.5), _n("D5", 0.5), _n("E5", 2, "start"), _n("E5", 1, "stop"),
                                note.Rest(quarterLength=1), _n("G5", 1)])
    alto = _part("Alto", [chord.Chord(["A3", "E4"], quarterLength=3), _n("F4", 1.5), _n("G4", 1.5)])
    timpani = _part("Timpani", [_n("D2", 6)])  # an instrument: left out
    return stream.Score([soprano, alto, timpani])


def test_hand_built_score():
    # step t: what sounds at t quarter notes (C5=72 D5=74 E5=76 G5=79 A3=57 E4=64 F4=65 G4=67);
    # D5 (0.5..1) falls between steps; the tied E5 (1..4) sounds at 1, 2, 3; the rest (4..5) is off
    expected = [{72, 57, 64}, {76, 57, 64}, {76, 57, 64}, {76, 65}, {65}, {79, 67}]
    score = _hand_score()
    roll = music.piano_roll(score)
    assert [_pitches(roll, t) for t in range(len(roll))] == expected
    np.testing.assert_array_equal(music.piano_roll(score.stripTies()), roll)  # ties change nothing


def test_piano_range_ends_and_non_chorales():
    ends = stream.Score([_part("Bass", [_n("A0", 1)]), _part("Soprano", [_n("C8", 1)])])
    roll = music.piano_roll(ends)
    assert roll.shape == (1, 88) and np.flatnonzero(roll[0]).tolist() == [0, 87]  # A0 = MIDI 21, C8 = 108
    with pytest.raises(music.NotAChorale, match="MIDI 109"):
        music.piano_roll(stream.Score([_part("Soprano", [_n("C#8", 1)])]), name="x")
    with pytest.raises(music.NotAChorale, match="no vocal part"):
        music.piano_roll(stream.Score([_part("Piano", [_n("C4", 1)])]))
    opus = stream.Opus([_hand_score(), _hand_score()])
    with pytest.raises(music.NotAChorale, match="Opus of 2"):
        music.piano_roll(opus)


# --------------------------------------------------------------------------- the loss


def test_nll_equals_hand_computed():
    # two real steps and one padded step (t=1 of column 1), D = 2 pitches
    l3 = math.log(3.0)
    logits_TxBxD = np.array([[[0.0, l3], [-l3, 2.0]],
                             [[1.0, -1.0], [50.0, -50.0]]], np.float32)
    targets_TxBxD = np.array([[[1, 0], [1, 1]],
                              [[0, 1], [0, 1]]], np.float32)
    mask_TxB = np.array([[1, 1], [1, 0]], np.float32)
    # sigma(0) = 1/2, sigma(ln 3) = 3/4, sigma(-ln 3) = 1/4, sigma(1) = 1/(1 + e^-1), sigma(-1) = 1/(1 + e)
    step_00 = -(math.log(1 / 2) + math.log(1 - 3 / 4))  # y = (1, 0): ln 2 + ln 4
    step_01 = -(math.log(1 / 4) + math.log(1 / (1 + math.exp(-2))))  # y = (1, 1)
    step_10 = -(math.log(1 - 1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.e)))  # y = (0, 1): 2 ln(1 + e)
    expected = (step_00 + step_01 + step_10) / 3  # the padded step (loss 100 if it counted) does not
    assert step_10 == pytest.approx(2 * math.log(1 + math.e))
    got = music.piano_roll_nll(logits_TxBxD, targets_TxBxD, mask_TxB)
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_nll_stable_for_large_logits():
    z = 1e4
    logits_TxBxD = np.array([[[z, -z, z, -z]]], np.float32)
    mask_TxB = np.ones((1, 1), np.float32)
    right = np.array([[[1, 0, 1, 0]]], np.float32)
    wrong = 1.0 - right
    assert 0.0 <= float(music.piano_roll_nll(logits_TxBxD, right, mask_TxB)) < 1e-6
    assert float(music.piano_roll_nll(logits_TxBxD, wrong, mask_TxB)) == pytest.approx(4 * z, rel=1e-6)
    grad = jax.grad(music.piano_roll_nll)(jnp.asarray(logits_TxBxD), wrong, mask_TxB)
    np.testing.assert_allclose(grad, [[[1, -1, 1, -1]]])  # sigma(z) - y, one real step


# --------------------------------------------------------------------------- batches


def _rolls():
    rng = np.random.default_rng(0)
    return [rng.random((n, 88)) < 0.3 for n in (3, 7, 10, 12, 20)]  # frames all distinct (p ~ 1e-14)


def _check_shifted(b, rolls, max_len):
    length, batch_size = b.mask_TxB.shape
    assert b.xs_TxBxD.shape == b.targets_TxBxD.shape == (length, batch_size, 88)
    assert b.xs_TxBxD.dtype == b.targets_TxBxD.dtype == b.mask_TxB.dtype == np.float32
    sources = []
    for col in range(batch_size):
        n = int(b.mask_TxB[:, col].sum())
        assert np.all(b.mask_TxB[:n, col] == 1) and np.all(b.mask_TxB[n:, col] == 0)
        assert not b.xs_TxBxD[n:, col].any() and not b.targets_TxBxD[n:, col].any()  # padding is zero
        np.testing.assert_array_equal(b.xs_TxBxD[1:n, col], b.targets_TxBxD[:n - 1, col])
        window = np.concatenate([b.xs_TxBxD[:n, col], b.targets_TxBxD[n - 1:n, col]]).astype(bool)
        hits = [(i, s) for i, r in enumerate(rolls) for s in range(len(r) - n)
                if np.array_equal(r[s:s + n + 1], window)]
        assert len(hits) == 1
        i, _ = hits[0]
        assert n == min(len(rolls[i]) - 1, max_len or len(rolls[i]))
        sources.append(i)
    return sources


@pytest.mark.parametrize("max_len", [None, 5])
def test_batches_pure_and_shifted(max_len):
    rolls = _rolls()
    a = music.roll_batch(rolls, 3, 4, batch_size=4, max_len=max_len)
    again = music.roll_batch(rolls, 3, 4, batch_size=4, max_len=max_len)
    assert all(np.array_equal(x, y) for x, y in zip(a, again, strict=True))
    assert a.mask_TxB.shape == (max_len or 19, 4)  # whole pieces: T = longest (20 frames) less one
    for other in (music.roll_batch(rolls, 4, 4, batch_size=4, max_len=max_len),
                  music.roll_batch(rolls, 3, 5, batch_size=4, max_len=max_len)):
        assert not np.array_equal(a.xs_TxBxD, other.xs_TxBxD)
    _check_shifted(a, rolls, max_len)
    # batch_size = number of pieces: each batch is one epoch, every piece once
    epoch = music.roll_batch(rolls, 3, 2, batch_size=5, max_len=max_len)
    assert sorted(_check_shifted(epoch, rolls, max_len)) == [0, 1, 2, 3, 4]


def test_batches_read_one_stream_of_epochs():
    rolls = _rolls()
    # the stream of pieces does not depend on the batch size: 10 batches of 1 = 2 batches of 5
    ones = [music.roll_batch(rolls, 7, s, batch_size=1).xs_TxBxD[:, 0] for s in range(10)]
    fives = [music.roll_batch(rolls, 7, s, batch_size=5).xs_TxBxD for s in range(2)]
    np.testing.assert_array_equal(np.stack(ones, 1), np.concatenate(fives, 1))
    # a window starts anywhere a whole window fits: 12 frames, max_len 5 -> 6-frame windows at 0..6
    starts = set()
    for step in range(300):
        b = music.roll_batch(rolls[3:4], 0, step, batch_size=1, max_len=5)
        assert b.mask_TxB.sum() == 5
        starts.add(next(s for s in range(7) if np.array_equal(rolls[3][s:s + 5], b.xs_TxBxD[:, 0])))
    assert starts == set(range(7))


def test_roll_batch_of_a_chorale(bwv66_6):
    roll = music.piano_roll(bwv66_6)
    b = music.roll_batch([roll], 0, 0, batch_size=1)
    np.testing.assert_array_equal(b.xs_TxBxD[:, 0], roll[:-1])
    np.testing.assert_array_equal(b.targets_TxBxD[:, 0], roll[1:])
    assert b.mask_TxB.sum() == 35


def test_roll_batches_cover_the_split_in_order():
    rolls = _rolls()
    batches = music.roll_batches(rolls, batch_size=2)
    assert len(batches) == 3 and {b.mask_TxB.shape for b in batches} == {(19, 2)}
    cols = [(b, c) for b in batches for c in range(2)]
    for (b, c), r in zip(cols, rolls, strict=False):
        n = len(r) - 1
        np.testing.assert_array_equal(b.xs_TxBxD[:n, c], r[:-1])
        np.testing.assert_array_equal(b.targets_TxBxD[:n, c], r[1:])
        assert b.mask_TxB[:, c].sum() == n
    last = batches[-1]
    assert not last.mask_TxB[:, 1].any() and not last.xs_TxBxD[:, 1].any()  # a spare column: padding


# --------------------------------------------------------------------------- split, cache, errors


def test_split_partitions_the_pieces(monkeypatch):
    files = music.chorale_files()
    parts = {s: music.split_files(s) for s in music.SPLITS}
    every = [f for s in music.SPLITS for f in parts[s]]
    assert sorted(every) == sorted(files) and len(set(every)) == len(every)  # disjoint, covers all
    assert "bach/bwv66.6.mxl" in files and "bach/bwv846.mxl" not in files  # a chorale; the WTC prelude
    assert all(f.endswith((".mxl", ".xml")) for f in files)
    split_of = {f: s for s, fs in parts.items() for f in fs}
    # variants of one movement and one harmonisation under two numbers share a split
    assert split_of["bach/bwv18.5-lz.mxl"] == split_of["bach/bwv18.5-w.mxl"]
    assert split_of["bach/bwv248.23-2.mxl"] == split_of["bach/bwv248.23-s.mxl"]
    assert split_of["bach/bwv197.7-a.mxl"] == split_of["bach/bwv398.mxl"]
    pieces = {s: {music.piece_of(f) for f in fs} for s, fs in parts.items()}
    assert not (pieces["train"] & pieces["valid"] or pieces["train"] & pieces["test"] or pieces["valid"] & pieces["test"])
    n = sum(len(p) for p in pieces.values())
    assert [len(pieces[s]) for s in music.SPLITS] == [round(0.6 * n), round(0.2 * n), n - round(0.6 * n) - round(0.2 * n)]
    # fixed: the same from scratch, whatever order music21 lists its files in
    listed = corpus.getComposer("bach")
    monkeypatch.setattr(corpus, "getComposer", lambda *a, **k: list(reversed(listed)))
    music._split_of_files.cache_clear()
    try:
        assert {s: music.split_files(s) for s in music.SPLITS} == parts
    finally:
        music._split_of_files.cache_clear()


def test_bad_split_name():
    for call in (music.split_files, music.load_split, lambda s: music.split_batches(s, 8)):
        with pytest.raises(ValueError, match="'train', 'valid', 'test'.*'validation'"):
            call("validation")


def test_missing_music21_and_empty_corpus(monkeypatch):
    monkeypatch.setattr(corpus, "getComposer", lambda *a, **k: [])
    with pytest.raises(RuntimeError, match="no Bach MusicXML files.*pip install --force-reinstall music21"):
        music.chorale_files()
    monkeypatch.setitem(sys.modules, "music21", None)  # `import music21` now raises ImportError
    with pytest.raises(ImportError, match="pip install music21"):
        music.chorale_files()


def test_cache_round_trip(tmp_path, monkeypatch, capsys, bwv66_6):
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path))
    path = music.cache_path()
    assert path.parent == tmp_path and music21.__version__ in path.name and f"v{music.PIPELINE_VERSION}" in path.name
    music.build_cache(path, ["bach/bwv66.6.mxl", "bach/bwv846.mxl"])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temp file was renamed, none left over
    assert "2/2 chorales parsed" in capsys.readouterr().err
    pieces, skipped, seconds = music.read_cache(path)
    assert list(pieces) == ["bach/bwv66.6.mxl"] and seconds > 0
    np.testing.assert_array_equal(pieces["bach/bwv66.6.mxl"], music.piano_roll(bwv66_6))
    assert list(skipped) == ["bach/bwv846.mxl"] and "no vocal part" in skipped["bach/bwv846.mxl"]
    # a cache from another pipeline version is refused, not read
    stale = tmp_path / "stale.npz"
    with np.load(path) as z:
        np.savez(stale, **{**dict(z), "pipeline_version": np.array(music.PIPELINE_VERSION - 1)})
    with pytest.raises(RuntimeError, match="delete it to rebuild"):
        music.read_cache(stale)
    # this cache lacks most chorales: loading a split says so instead of returning a part of it
    with pytest.raises(RuntimeError, match="lacks .* chorale files"):
        music.load_split("train")


@pytest.mark.slow
def test_whole_corpus():
    """Builds the cache (under a minute) unless $RNNLAB_CACHE_DIR or ~/.cache/rnnlab holds it."""
    rolls = {s: music.load_split(s) for s in music.SPLITS}
    assert music.skipped_files() == {}
    assert sum(len(r) for r in rolls.values()) == len(music.chorale_files())
    lengths = [len(r) for rs in rolls.values() for r in rs]
    assert min(lengths) >= 2
    # no harmonisation in two splits: pieces of equal length in different splits agree, up to a
    # transposition, on less than 95% of their frames
    named = [(s, r) for s, rs in rolls.items() for r in rs]
    for i, (s, a) in enumerate(named):
        for s2, b in named[i + 1:]:
            if s2 != s and len(a) == len(b):
                agree = max(np.all(a == np.roll(b, k, axis=1), axis=1).mean() for k in range(-12, 13))
                assert agree < 0.95
    for split, rs in rolls.items():
        batches = music.split_batches(split, 64)
        assert sum(b.mask_TxB.sum() for b in batches) == sum(len(r) - 1 for r in rs)
    b = music.batch(0, 0, 16, max_len=32)
    assert b.xs_TxBxD.shape == (32, 16, 88) and b.mask_TxB.sum() > 0


def test_of_processes_that_find_no_cache_one_builds_and_the_others_wait_for_its_file(tmp_path):
    """build_once's file lock: four threads (each its own open file, as processes) ask for a missing
    cache at once; the build runs once, and every caller returns after the file is whole."""
    import threading
    import time

    path = tmp_path / "cache.npz"
    calls, seen = [], []

    def slow_build(p):
        calls.append(1)
        time.sleep(0.5)
        p.write_bytes(b"whole")

    def ask():
        music.build_once(path, slow_build)
        seen.append(path.read_bytes())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and seen == [b"whole"] * 4
