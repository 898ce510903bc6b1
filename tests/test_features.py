"""Speech features against plain numpy / scipy references: log-mel (scipy's STFT,
a filterbank written out here), MFCC (scipy's DCT), deltas (numpy with edge
padding), normalisation, padding invariance, SpecAugment bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.signal

from rnnlab import features as feat

SPEC = feat.FeatureSpec(sample_rate=8000, win_ms=25.0, hop_ms=10.0, n_fft=256, n_mels=40)


def _reference_filterbank(sr, n_fft, n_mels, f_min, f_max):
    """HTK triangles written as loops: filter m rises from edge m to m+1, falls to m+2."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    inv = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = [inv(mel(f_min) + i * (mel(f_max) - mel(f_min)) / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if edges[m] <= f <= edges[m + 1]:
                fb[k, m] = (f - edges[m]) / (edges[m + 1] - edges[m])
            elif edges[m + 1] < f <= edges[m + 2]:
                fb[k, m] = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
    return fb


def _reference_log_mel(wave, spec):
    win, hop = spec.win_length, spec.hop_length
    window = scipy.signal.get_window("hann", win)  # periodic
    _, _, z = scipy.signal.stft(wave, window=window, nperseg=win, noverlap=win - hop, nfft=spec.n_fft,
                                boundary=None, padded=False, detrend=False, return_onesided=True)
    power = np.abs(z * window.sum()).T ** 2  # scipy scales the spectrum by 1 / sum(window)
    fb = _reference_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.f_min, spec.sample_rate / 2)
    return np.log(power @ fb + spec.floor)


def _reference_deltas(x_TxD, width=2):
    padded = np.pad(x_TxD, ((width, width), (0, 0)), mode="edge")
    n = len(x_TxD)
    num = sum(k * (padded[width + k:width + k + n] - padded[width - k:width - k + n]) for k in range(1, width + 1))
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def test_log_mel_matches_scipy_stft_and_a_written_out_filterbank():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(4000)
    got = np.asarray(feat.log_mel(SPEC, jnp.asarray(wave)))
    want = _reference_log_mel(wave, SPEC)
    assert got.shape == want.shape == (SPEC.num_frames(4000), 40)
    np.testing.assert_allclose(got, want, atol=1e-8)  # float64 here; 1e-4 in float32 below
    got32 = np.asarray(feat.log_mel(SPEC, jnp.asarray(wave, jnp.float32)))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, atol=1e-4)
    # 440 Hz peaks in the filter whose centre is nearest to it
    centres = feat.mel_to_hz(np.linspace(feat.hz_to_mel(20.0), feat.hz_to_mel(4000.0), 42))[1:-1]
    assert abs(centres[int(np.argmax(got.mean(0)))] - 440) < 60


def test_mfcc_is_scipy_dct_of_log_mel_and_deltas_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 30, 40))
    np.testing.assert_allclose(np.asarray(feat.dct_ii(jnp.asarray(x), 13)),
                               scipy.fft.dct(x, type=2, norm="ortho", axis=-1)[..., :13], atol=1e-10)
    lengths = np.array([30, 17])
    d = np.asarray(feat.deltas(jnp.asarray(x), jnp.asarray(lengths)))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(d[b, :n], _reference_deltas(x[b, :n]), atol=1e-10)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_postprocess_normalises_each_utterance_and_ignores_padding(kind):
    spec = feat.FeatureSpec(kind=kind, deltas=True, norm="utterance")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 25, 40)) * 3 + 5
    lengths = np.array([25, 12, 7])
    out = np.asarray(feat.postprocess(spec, jnp.asarray(x), jnp.asarray(lengths)))
    assert out.shape == (3, 25, spec.dim)
    junk = x.copy()
    junk[1, 12:] = 1e6
    junk[2, 7:] = -1e6
    out_junk = np.asarray(feat.postprocess(spec, jnp.asarray(junk), jnp.asarray(lengths)))
    np.testing.assert_allclose(out_junk, out, atol=1e-10)
    for b, n in enumerate(lengths):
        base = x[b, :n] if kind == "logmel" else scipy.fft.dct(x[b, :n], norm="ortho", axis=-1)[:, :13]
        d1 = _reference_deltas(base)
        ref = np.concatenate([base, d1, _reference_deltas(d1)], axis=1)
        ref = (ref - ref.mean(0)) / np.sqrt(ref.var(0) + 1e-5)
        np.testing.assert_allclose(out[b, :n], ref, atol=1e-8)
        assert np.all(out[b, n:] == 0)


def test_features_of_a_padded_wave_are_the_same_frames_plus_more():
    rng = np.random.default_rng(3)
    wave = jnp.asarray(rng.standard_normal(3000), jnp.float32)
    short = np.asarray(feat.log_mel(SPEC, wave))
    long = np.asarray(feat.log_mel(SPEC, jnp.concatenate([wave, jnp.ones(1000, jnp.float32)])))
    np.testing.assert_array_equal(long[:len(short)], short)


def test_spec_augment_masks_within_bounds_and_is_a_function_of_the_key():
    x = jnp.ones((4, 50, 20), jnp.float32)
    lengths = jnp.asarray([50, 40, 30, 20])
    augment = jax.jit(lambda k: feat.spec_augment(k, x, lengths, freq_masks=2, freq_width=5, time_masks=2,
                                                  time_width=6))
    y, again = np.asarray(augment(jax.random.key(0))), np.asarray(augment(jax.random.key(0)))
    np.testing.assert_array_equal(y, again)
    for b in range(4):
        zero_channels = np.all(y[b] == 0, axis=0).sum()
        zero_frames = np.all(y[b] == 0, axis=1)
        assert zero_channels <= 10 and zero_frames.sum() <= 12  # 2 bands of <= 5, 2 spans of <= 6
        assert not np.any(zero_frames[int(lengths[b]):])  # spans within the utterance's length
    assert (y == 0).any()
    np.testing.assert_array_equal(feat.spec_augment(jax.random.key(1), x, lengths, freq_masks=0, time_masks=0), x)


def test_bad_specs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="n_fft"):
        feat.FeatureSpec(sample_rate=16000, win_ms=25.0, n_fft=256)
    with pytest.raises(ValueError, match="kind"):
        feat.FeatureSpec(kind="plp")
    with pytest.raises(ValueError, match="shorter than one"):
        feat.log_mel(SPEC, jnp.zeros(100))


def test_white_noise_profile_is_the_mel_spectrum_of_real_white_noise():
    wave = np.random.default_rng(0).standard_normal(8000 * 60)  # a minute of white noise
    power_M = np.exp(_reference_log_mel(wave, SPEC)).mean(axis=0)
    np.testing.assert_allclose(feat.white_noise_profile(SPEC), np.log(power_M / power_M.mean()), atol=0.03)


def test_noise_floor_is_white_noise_floor_db_below_each_utterance_and_ignores_padding():
    spec = feat.FeatureSpec(n_mels=40, floor_db=20.0)
    rng = np.random.default_rng(1)
    lengths = np.array([50, 31])
    x = (rng.normal(size=(2, 50, 40)) * 3 - 5).astype(np.float32)
    x[1, 31:] = 1e3  # junk past utterance 1's length
    got = np.asarray(feat.noise_floor(spec, jnp.asarray(x), jnp.asarray(lengths)))
    profile = feat.white_noise_profile(spec)
    assert abs(np.log(np.mean(np.exp(profile)))) < 1e-9  # the profile has mean power 1: the level is the floor's
    for b, n in enumerate(lengths):
        u = x[b, :n].astype(np.float64)
        floor_M = np.log(np.mean(np.exp(u))) - 2.0 * np.log(10.0) + profile  # 20 dB = a factor 100 in power
        np.testing.assert_allclose(got[b, :n], np.logaddexp(u, floor_M), rtol=1e-5, atol=1e-5)
    # a gain moves the floor with the speech: the output moves by exactly the gain
    np.testing.assert_allclose(np.asarray(feat.noise_floor(spec, jnp.asarray(x[:1] + 4.0), jnp.asarray(lengths[:1]))),
                               got[:1] + 4.0, rtol=1e-5, atol=1e-4)
    # quiet detail is lifted to the floor, loud frames pass unchanged
    loud = np.full((1, 10, 40), 2.0, np.float32)
    loud[0, 5:] = -30.0
    out = np.asarray(feat.noise_floor(spec, jnp.asarray(loud), jnp.asarray([10])))
    np.testing.assert_allclose(out[0, :5], 2.0, atol=0.02)
    level = np.log(np.mean(np.exp(loud[0].astype(np.float64)))) - 2.0 * np.log(10.0)
    np.testing.assert_allclose(out[0, 5:], np.broadcast_to(level + profile, (5, 40)), atol=1e-4)
    with pytest.raises(ValueError, match="floor_db"):
        feat.FeatureSpec(floor_db=-3.0)
