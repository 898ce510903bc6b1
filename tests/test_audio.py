"""Audio data: WAV reading (stereo, other rates, bad files), FSDD naming,
speaker-independent splits, Hugging Face datasets from local files, the feature
cache, and connected-digit utterances (pure in (seed, step), exact gains)."""

import os

import numpy as np
import pytest
import scipy.io.wavfile

from rnnlab import features as feat
from rnnlab.data import audio
from rnnlab.tasks.speech import REPO_ROOT

SPEC = feat.FeatureSpec(n_mels=20, deltas=False)


def _tone(freq, n, rate, amp=0.5):
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)


def _write(path, rate, data):
    scipy.io.wavfile.write(path, rate, data)
    return str(path)


def _fake_fsdd(folder, speakers=("anna", "bob"), takes=2, rate=8000):
    """FSDD-named WAVs: digit d is a tone at 300 + 150 d Hz, speakers differ in level."""
    os.makedirs(folder, exist_ok=True)
    for s_i, speaker in enumerate(speakers):
        for d in range(10):
            for k in range(takes):
                n = 2400 + 400 * k
                wave = np.zeros(n + 1600)
                wave[800:800 + n] = _tone(300 + 150 * d, n, rate, 0.3 + 0.2 * s_i)
                _write(os.path.join(folder, f"{d}_{speaker}_{k}.wav"), rate, (wave * 32767).astype(np.int16))
    return str(folder)


def test_stereo_and_other_rates_are_mixed_down_and_resampled(tmp_path):
    n16 = 16000
    left, right = _tone(440, n16, 16000, 0.8), np.zeros(n16)
    stereo = (np.stack([left, right], axis=1) * 32767).astype(np.int16)
    wave = audio.read_wav(_write(tmp_path / "s.wav", 16000, stereo), 8000)
    want = _tone(440, 8000, 8000, 0.4)  # the mean of the channels, at 8 kHz: a closed form
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    np.testing.assert_allclose(wave[200:-200], want[200:-200], atol=2e-3)  # edges: the FIR filter's warm-up
    f32 = audio.read_wav(_write(tmp_path / "f.wav", 8000, want.astype(np.float32)), 8000)
    np.testing.assert_array_equal(f32, want.astype(np.float32))
    u8 = audio.read_wav(_write(tmp_path / "u.wav", 8000, np.array([0, 128, 255], np.uint8)), 8000)
    np.testing.assert_allclose(u8, [-1.0, 0.0, 127 / 128])


def test_empty_and_corrupt_wavs_are_named_in_the_error(tmp_path):
    empty = _write(tmp_path / "empty.wav", 8000, np.zeros(0, np.int16))
    with pytest.raises(ValueError, match="empty.wav.*no samples"):
        audio.read_wav(empty, 8000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 3)
    with pytest.raises(ValueError, match="corrupt.wav.*not a readable WAV"):
        audio.read_wav(str(corrupt), 8000)
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    with pytest.raises(ValueError, match="zero.wav"):
        audio.read_wav(str(zero), 8000)


def test_fsdd_naming_and_speaker_independent_split(tmp_path):
    root = _fake_fsdd(tmp_path / "rec", speakers=("anna", "bob", "carl"), takes=1)
    (tmp_path / "rec" / "notes.wav").write_bytes(b"")  # not FSDD-named: ignored
    clips = audio.wav_folder(root)
    assert len(clips) == 30 and {c.text for c in clips} == {str(d) for d in range(10)}
    c = next(c for c in clips if c.path.endswith("7_bob_0.wav"))
    assert (c.speaker, c.text, c.index) == ("bob", "7", 0)
    train, test = audio.split_by_speaker(clips, ["bob"])
    assert {c.speaker for c in test} == {"bob"} and {c.speaker for c in train} == {"anna", "carl"}
    with pytest.raises(ValueError, match="'zoe'.*speakers"):
        audio.split_by_speaker(clips, ["zoe"])
    with pytest.raises(FileNotFoundError):
        audio.wav_folder(str(tmp_path / "nowhere"))


def test_hugging_face_datasets_from_local_files_and_in_memory_arrays(tmp_path):
    import datasets

    root = _fake_fsdd(tmp_path / "rec", speakers=("anna",), takes=1)
    clips = audio.wav_folder(root)[:3]
    csv = tmp_path / "meta.csv"
    csv.write_text("file,transcript,who\n" + "".join(f"{c.path},{c.text},{c.speaker}\n" for c in clips))
    got, waves = audio.hf_audio("csv", data_files=str(csv), audio_column="file", text_column="transcript",
                                speaker_column="who", target_rate=8000)
    assert [(g.text, g.speaker) for g in got] == [(c.text, c.speaker) for c in clips]
    np.testing.assert_array_equal(waves[1], audio.read_wav(clips[1].path, 8000))
    rows = {"audio": [{"array": _tone(440, 16000, 16000), "sampling_rate": 16000, "path": None}],
            "text": ["yes"]}
    _, waves = audio.hf_audio(datasets.Dataset.from_dict(rows), target_rate=8000)
    np.testing.assert_allclose(waves[0][200:-200], _tone(440, 8000, 8000)[200:-200], atol=2e-3)
    with pytest.raises(ValueError, match="no column.*sentence"):
        audio.hf_audio(datasets.Dataset.from_dict(rows), text_column="sentence")


def test_feature_cache_is_read_back_not_recomputed(tmp_path, monkeypatch):
    clips = audio.wav_folder(_fake_fsdd(tmp_path / "rec", speakers=("anna",), takes=1))
    bank = audio.cached_bank(clips, SPEC, str(tmp_path / "cache"))
    monkeypatch.setattr(audio, "build_bank", lambda *a, **k: pytest.fail("cache miss"))
    again = audio.cached_bank(clips, SPEC, str(tmp_path / "cache"))
    np.testing.assert_array_equal(again.logmel_FxM, bank.logmel_FxM)
    np.testing.assert_array_equal(again.offsets, bank.offsets)
    # silence trimming keeps the tone (0.3-0.6 s) and a margin, drops most of the 0.1 s pads
    lengths = np.diff(bank.offsets)
    n_tone = [SPEC.num_frames(2400)] * len(clips)
    assert np.all(lengths >= np.array(n_tone)) and np.all(lengths <= np.array(n_tone) + 10)


def test_gain_is_exact_in_the_log_mel_domain():
    wave = _tone(700, 4000, 8000) + 0.01 * np.random.default_rng(0).standard_normal(4000)
    a = audio.clip_log_mel(SPEC, wave.astype(np.float32))
    b = audio.clip_log_mel(SPEC, (2.0 * wave).astype(np.float32))
    np.testing.assert_allclose(b, a + np.log(4.0), atol=1e-3)  # up to the 1e-6 floor


def test_connected_batches_are_pure_in_seed_and_step_and_join_the_right_clips(tmp_path):
    clips = audio.wav_folder(_fake_fsdd(tmp_path / "rec", speakers=("anna",), takes=2))
    bank = audio.build_bank(clips, SPEC)
    noise = audio.noise_template(SPEC, n_frames=500)
    spec = audio.ConnectedSpec(max_words=4, bucket=32)
    b1 = audio.connected_batch(bank, noise, audio.DIGITS, spec, 0, 7, 6)
    b2 = audio.connected_batch(bank, noise, audio.DIGITS, spec, 0, 7, 6)
    b3 = audio.connected_batch(bank, noise, audio.DIGITS, spec, 0, 8, 6)
    np.testing.assert_array_equal(b1.logmel_BxTxM, b2.logmel_BxTxM)
    assert b1.texts == b2.texts and not np.array_equal(b1.logmel_BxTxM[0], b3.logmel_BxTxM[0])
    assert b1.logmel_BxTxM.shape[1] % 32 == 0 and b1.labels_BxU.shape[1] == 4
    for b in range(6):
        words = b1.texts[b].split()
        assert 1 <= len(words) <= 4
        np.testing.assert_array_equal(b1.labels_BxU[b, :b1.label_lengths_B[b]], [int(w) + 1 for w in words])
        assert np.all(b1.logmel_BxTxM[b, b1.lengths_B[b]:] == 0)
    # no noise (SNR 300 dB), no gain, no silence: the utterance is the clips' frames end to end
    quiet = audio.ConnectedSpec(max_silence=0, gain_db=0.0, snr_db=(300.0, 300.0))
    utt, ids = audio.connected_utterance(bank, noise, np.random.default_rng(0), quiet, clip_ids=[3, 0, 5])
    np.testing.assert_allclose(utt, np.concatenate([bank.frames(i) for i in (3, 0, 5)]), atol=1e-5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        audio.DIGITS.encode("7 eight")


def test_the_real_fsdd_folder_has_five_speakers_of_500_clips():
    root = os.path.join(REPO_ROOT, "..", "shared", "data", "fsdd", "recordings")
    if not os.path.isdir(root):
        pytest.skip(f"FSDD not at {root} (the data test only; everything else runs on generated WAVs)")
    clips = audio.wav_folder(root)
    counts = {s: sum(c.speaker == s for c in clips) for s in {c.speaker for c in clips}}
    assert counts == {s: 500 for s in ("george", "jackson", "lucas", "nicolas", "yweweler")}
    assert audio.read_wav(clips[0].path, 8000).dtype == np.float32


def test_tempo_and_mel_warps_interpolate_linearly():
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    np.testing.assert_array_equal(audio.warp_clip(x, 1.0, 1.0), x)
    slow = audio.warp_clip(x, 1.5, 1.0)  # 30 frames over the same span: frame j reads 19 j / 29
    pos = np.arange(30) * 19 / 29
    want = np.stack([np.interp(pos, np.arange(20), x[:, m]) for m in range(8)], axis=1)
    np.testing.assert_allclose(slow, want, atol=1e-5)
    low = audio.warp_clip(x, 1.0, 0.5)  # channel m reads channel m / 2
    want = np.stack([np.interp(np.arange(8) * 0.5, np.arange(8), row) for row in x])
    np.testing.assert_allclose(low, want, atol=1e-6)


def _word_bank(spans_by_speaker: dict[str, list[int]], m: int = 6) -> audio.FeatureBank:
    """Clips of a loud 'word' of the given number of frames between 5 quiet frames (60 dB down) each side."""
    rng = np.random.default_rng(0)
    parts, clips = [], []
    for speaker, spans in spans_by_speaker.items():
        for k, n in enumerate(spans):
            x = np.full((n + 10, m), np.log(1e-6), np.float32)
            x[5:5 + n] = rng.normal(0.0, 0.3, (n, m))
            parts.append(x)
            clips.append(audio.Clip(f"{speaker}_{k}.wav", speaker, str(k % 10), k))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    level = np.asarray([np.log(np.mean(np.exp(p.astype(np.float64)))) for p in parts], np.float32)
    return audio.FeatureBank(np.concatenate(parts), offsets, level, clips)


def test_rate_normalisation_stretches_each_speaker_to_the_target_span_without_transcripts():
    bank = _word_bank({"slow": [40, 44, 48, 60], "fast": [20, 22, 24, 30]})
    assert [audio.active_span(bank.frames(i)) for i in range(8)] == [40, 44, 48, 60, 20, 22, 24, 30]
    assert audio.speaker_rates(bank) == {"fast": 23.0, "slow": 46.0}
    out = audio.normalise_rate(bank, 30.0)
    spans = [audio.active_span(out.frames(i)) for i in range(8)]
    # each clip scaled by 30 / its speaker's median: slow by 30/46, fast by 30/23 (linear interpolation,
    # so the span is the scaled one within a frame or two)
    for i, (want_span, speaker) in enumerate(zip([40, 44, 48, 60, 20, 22, 24, 30], ["slow"] * 4 + ["fast"] * 4, strict=True)):
        scale = 30.0 / {"slow": 46.0, "fast": 23.0}[speaker]
        assert abs(spans[i] - want_span * scale) <= 2, (i, spans[i], want_span * scale)
        assert len(out.frames(i)) == round(len(bank.frames(i)) * scale)
    # the texts play no part: shuffled transcripts give the same frames
    shuffled = bank._replace(clips=[c._replace(text=str((int(c.text) + 3) % 10)) for c in bank.clips])
    np.testing.assert_array_equal(audio.normalise_rate(shuffled, 30.0).logmel_FxM, out.logmel_FxM)
    assert audio.normalise_rate(bank, 0.0) is bank


def test_speaker_normalisation_equals_numpy_and_uses_no_transcripts(tmp_path):
    clips = audio.wav_folder(_fake_fsdd(tmp_path / "rec", speakers=("anna", "bob"), takes=2))
    bank = audio.build_bank(clips, SPEC)
    for mode in ("mean", "meanvar"):
        out = audio.normalise_speakers(bank, mode)
        for speaker in ("anna", "bob"):
            ids = [i for i, c in enumerate(clips) if c.speaker == speaker]
            x = np.concatenate([bank.frames(i) for i in ids]).astype(np.float64)
            mu, sd = x.mean(axis=0), x.std(axis=0)
            scale = sd.mean() / sd if mode == "meanvar" else 1.0
            for i in ids:
                want = (bank.frames(i) - mu) * scale + mu.mean()
                np.testing.assert_allclose(out.frames(i), want, rtol=1e-5, atol=1e-4)
                assert out.level[i] == pytest.approx(np.log(np.mean(np.exp(want))), abs=1e-4)
            y = np.concatenate([out.frames(i) for i in ids]).astype(np.float64)
            np.testing.assert_allclose(y.mean(axis=0), mu.mean(), atol=1e-4)  # flat average spectrum
            if mode == "meanvar":
                np.testing.assert_allclose(y.std(axis=0), sd.mean(), rtol=1e-4)
        # transcripts and take numbers shuffled: the same output (only speaker names are used)
        rng = np.random.default_rng(0)
        relabelled = bank._replace(clips=[c._replace(text=str(rng.integers(10)), index=int(rng.integers(99)))
                                          for c in bank.clips])
        np.testing.assert_array_equal(audio.normalise_speakers(relabelled, mode).logmel_FxM, out.logmel_FxM)
        # a speaker's frames depend on that speaker's clips only
        anna = [i for i, c in enumerate(clips) if c.speaker == "anna"]
        alone = audio.normalise_speakers(bank.subset(anna), mode)
        np.testing.assert_array_equal(alone.logmel_FxM, out.subset(anna).logmel_FxM)
    assert audio.normalise_speakers(bank, "none") is bank
    with pytest.raises(ValueError, match="speaker_norm"):
        audio.normalise_speakers(bank, "per-label")


def _peak_hz(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), 16 * len(wave)))
    return np.argmax(spectrum) * rate / (16 * len(wave))

