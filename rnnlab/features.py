"""Speech features in JAX: log-mel filterbanks and MFCC with deltas, per-utterance
or global normalisation, SpecAugment masking.

    waveform_S --frames (win, hop)--> power spectrum --mel--> log-mel_TxM
    log-mel_TxM --DCT-II (ortho)--> MFCC_TxC --deltas--> [c, d, dd]_Tx3C

Conventions (the ones of librosa / Kaldi-style front ends, tested against a plain
numpy implementation): frames are NOT centred (frame t covers samples
[t * hop, t * hop + win)), so a frame depends only on its own samples and a clip
padded at the end gives the same frames plus extra ones; a periodic Hann window;
|rfft(n_fft)|^2 power; HTK mel scale (2595 log10(1 + f / 700)), triangular filters
with unit peak; natural log of (mel power + ``floor``).

Everything after the log-mel (``postprocess``) runs per batch inside the jitted
train step and respects each utterance's length: deltas clamp at the utterance's
own last frame and normalisation statistics ignore padded frames, so padding never
changes a valid frame's features.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
KINDS = ("logmel", "mfcc")
NORMS = ("utterance", "global", "none")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """How waveforms become frames. Hashable: a static argument of ``jax.jit``.

    Attributes:
      sample_rate: Hz of the waveforms it is given (resample first: rnnlab.data.audio).
      win_ms, hop_ms: analysis window and hop (25 ms / 10 ms: the usual ASR front end).
      n_fft: FFT size (>= window samples; zero-padded).
      n_mels: mel filters; f_min, f_max (Hz; f_max 0 -> Nyquist).
      kind: 'logmel' (n_mels features) or 'mfcc' (the first n_mfcc DCT-II coefficients).
      deltas: append first and second differences (x3 features).
      norm: 'utterance' (zero mean, unit variance per utterance and feature, over its
        valid frames), 'global' (fixed mean/std from the training set) or 'none'.
      floor_db: > 0: a noise floor (``noise_floor``): every utterance's log-mel is
        power-added to a constant white-noise spectrum ``floor_db`` dB below the
        utterance's own mean power, in training and at test time alike, so detail
        quieter than that (a recording's room, microphone and background) never
        reaches the model, whatever the recording's SNR; 0: off.
    """

    sample_rate: int = 8000
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 256
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 0.0
    kind: str = "logmel"
    n_mfcc: int = 13
    deltas: bool = True
    norm: str = "utterance"
    floor: float = 1e-6  # added to mel power before the log: silence gives log(1e-6), not -inf
    floor_db: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"features.kind must be one of {KINDS}, got {self.kind!r}")
        if self.norm not in NORMS:
            raise ValueError(f"features.norm must be one of {NORMS}, got {self.norm!r}")
        if self.floor_db < 0:
            raise ValueError(f"features.floor_db must be >= 0 (dB below each utterance's mean power; 0: off), "
                             f"got {self.floor_db}")
        if self.win_length > self.n_fft:
            raise ValueError(f"features.n_fft={self.n_fft} is shorter than the window ({self.win_length} "
                             f"samples at {self.sample_rate} Hz); raise n_fft or shorten win_ms")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def blocks(self) -> int:
        """Equal blocks a frame is made of: the log-mel (or MFCC), then with deltas its
        first and second differences."""
        return 3 if self.deltas else 1

    @property
    def dim(self) -> int:
        base = self.n_mels if self.kind == "logmel" else self.n_mfcc
        return base * self.blocks

    def num_frames(self, n_samples: int) -> int:
        return 0 if n_samples < self.win_length else 1 + (n_samples - self.win_length) // self.hop_length


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """Triangular filters on the HTK mel scale, (n_fft // 2 + 1) x n_mels, peak 1."""
    f_max = spec.f_max or spec.sample_rate / 2
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(spec.f_min), hz_to_mel(f_max), spec.n_mels + 2))
    bins_hz = np.arange(spec.n_fft // 2 + 1) * spec.sample_rate / spec.n_fft
    lo, mid, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    up = (bins_hz[None] - lo) / (mid - lo)
    down = (hi - bins_hz[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).T  # K x M


def hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n), librosa's default)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def power_spectrum(spec: FeatureSpec, wave_S: Array) -> Array:
    """|rfft|^2 of each frame, T x (n_fft // 2 + 1). Frames by a gather: T x win
    samples (the 60% overlap costs 2.5x the memory of the wave; fine for seconds)."""
    win, hop = spec.win_length, spec.hop_length
    n_frames = spec.num_frames(wave_S.shape[-1])
    if n_frames < 1:
        raise ValueError(f"a waveform of {wave_S.shape[-1]} samples is shorter than one "
                         f"{spec.win_ms} ms window ({win} samples)")
    idx_TxW = jnp.arange(n_frames)[:, None] * hop + jnp.arange(win)[None, :]
    frames_TxW = wave_S[..., idx_TxW] * jnp.asarray(hann(win), wave_S.dtype)
    spectrum = jnp.fft.rfft(frames_TxW, n=spec.n_fft, axis=-1)
    return jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2


def log_mel(spec: FeatureSpec, wave_S: Array) -> Array:
    """log(mel power + floor), T x n_mels (a leading batch axis is kept)."""
    fb_KxM = jnp.asarray(mel_filterbank(spec), wave_S.dtype)
    return jnp.log(power_spectrum(spec, wave_S) @ fb_KxM + spec.floor)


def white_noise_profile(spec: FeatureSpec) -> np.ndarray:
    """Mel power of white noise per channel, relative to its mean over the channels
    (log, M): E|X_k|^2 is the same at every FFT bin, so channel m collects the sum of
    its filter's weights."""
    w_M = mel_filterbank(spec).sum(axis=0)
    return np.log(w_M / w_M.mean())


def noise_floor(spec: FeatureSpec, logmel_BxTxM: Array, lengths_B: Array) -> Array:
    """logaddexp(x, floor): the floor is white noise (``white_noise_profile``) whose mean
    power over channels is ``spec.floor_db`` dB below the utterance's mean power over
    its valid frames and channels. A gain g (x + g) gives exactly the output + g."""
    mask_BxTx1 = valid_mask(lengths_B, logmel_BxTxM.shape[1])[..., None]
    n_B = jnp.maximum(jnp.asarray(lengths_B), 1).astype(logmel_BxTxM.dtype) * logmel_BxTxM.shape[2]
    power_B = jax.nn.logsumexp(jnp.where(mask_BxTx1, logmel_BxTxM, -jnp.inf), axis=(1, 2)) - jnp.log(n_B)
    level_B = power_B - spec.floor_db * np.log(10.0) / 10.0
    floor_BxM = level_B[:, None] + jnp.asarray(white_noise_profile(spec), logmel_BxTxM.dtype)
    return jnp.logaddexp(logmel_BxTxM, floor_BxM[:, None, :])


def dct_ii(x_TxM: Array, n_out: int) -> Array:
    """Orthonormal DCT-II over the last axis, first ``n_out`` coefficients
    (scipy.fft.dct(x, type=2, norm='ortho')[..., :n_out])."""
    m = x_TxM.shape[-1]
    k, n = np.arange(n_out)[:, None], np.arange(m)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * m)) * np.sqrt(2.0 / m)
    basis[0] /= np.sqrt(2.0)
    return x_TxM @ jnp.asarray(basis.T, x_TxM.dtype)


def deltas(x_BxTxD: Array, lengths_B: Array, width: int = 2) -> Array:
    """Regression deltas d_t = sum_k k (x_{t+k} - x_{t-k}) / (2 sum_k k^2), k = 1..width,
    with t +- k clamped to [0, length - 1] of each utterance (edge frames repeated,
    as Kaldi/librosa 'nearest'): frames past a length never enter."""
    t_T = jnp.arange(x_BxTxD.shape[1])
    last_Bx1 = jnp.maximum(jnp.asarray(lengths_B)[:, None] - 1, 0)
    denom = 2.0 * sum(k * k for k in range(1, width + 1))

    def at(offset):
        idx_BxT = jnp.clip(t_T[None, :] + offset, 0, last_Bx1)
        return jnp.take_along_axis(x_BxTxD, idx_BxT[..., None], axis=1)

    return sum(k * (at(k) - at(-k)) for k in range(1, width + 1)) / denom


def valid_mask(lengths_B: Array, n_frames: int) -> Array:
    return jnp.arange(n_frames)[None, :] < jnp.asarray(lengths_B)[:, None]


def postprocess(spec: FeatureSpec, logmel_BxTxM: Array, lengths_B: Array,
                mean_D: Array | None = None, std_D: Array | None = None) -> Array:
    """Log-mel -> model input B x T x spec.dim: MFCC (optional), deltas (optional),
    normalisation; padded frames come out as zeros. With ``spec.floor_db`` the noise
    floor comes first."""
    x = noise_floor(spec, logmel_BxTxM, lengths_B) if spec.floor_db else logmel_BxTxM
    x = x if spec.kind == "logmel" else dct_ii(x, spec.n_mfcc)
    if spec.deltas:
        d1 = deltas(x, lengths_B)
        x = jnp.concatenate([x, d1, deltas(d1, lengths_B)], axis=-1)
    mask_BxTx1 = valid_mask(lengths_B, x.shape[1])[..., None].astype(x.dtype)
    if spec.norm == "utterance":
        n_Bx1x1 = jnp.maximum(jnp.sum(mask_BxTx1, axis=1, keepdims=True), 1.0)
        mean = jnp.sum(x * mask_BxTx1, axis=1, keepdims=True) / n_Bx1x1
        var = jnp.sum(((x - mean) * mask_BxTx1) ** 2, axis=1, keepdims=True) / n_Bx1x1
        x = (x - mean) * jax.lax.rsqrt(var + 1e-5)
    elif spec.norm == "global":
        if mean_D is None or std_D is None:
            raise ValueError("features.norm='global' needs mean_D and std_D (the training set's statistics)")
        x = (x - mean_D) / std_D
    return x * mask_BxTx1


def spec_augment(key: Array, x_BxTxD: Array, lengths_B: Array, *, freq_masks: int = 2, freq_width: int = 8,
                 time_masks: int = 2, time_width: int = 10) -> Array:
    """SpecAugment (Park et al. 2019) without time warping: ``freq_masks`` bands of
    up to ``freq_width`` feature channels and ``time_masks`` spans of up to
    ``time_width`` frames (within each utterance's length) set to zero, i.e. to the
    mean of normalised features. Masks are drawn per utterance."""
    n_b, n_t, n_d = x_BxTxD.shape
    keep = jnp.ones((n_b, n_t, n_d), bool)
    keys = jax.random.split(key, 2 * (freq_masks + time_masks)).reshape(-1, 2)
    w_D, t_T = jnp.arange(n_d), jnp.arange(n_t)
    lengths_B = jnp.asarray(lengths_B)
    for i in range(freq_masks):
        w_B = jax.random.randint(keys[i, 0], (n_b,), 0, freq_width + 1)
        f0_B = jax.random.randint(keys[i, 1], (n_b,), 0, n_d) % jnp.maximum(n_d - w_B, 1)
        band_BxD = (w_D[None] >= f0_B[:, None]) & (w_D[None] < (f0_B + w_B)[:, None])
        keep = keep & ~band_BxD[:, None, :]
    for i in range(freq_masks, freq_masks + time_masks):
        w_B = jax.random.randint(keys[i, 0], (n_b,), 0, time_width + 1)
        t0_B = jax.random.randint(keys[i, 1], (n_b,), 0, 2**30) % jnp.maximum(lengths_B - w_B, 1)
        span_BxT = (t_T[None] >= t0_B[:, None]) & (t_T[None] < (t0_B + w_B)[:, None])
        keep = keep & ~span_BxT[:, :, None]
    return jnp.where(keep, x_BxTxD, jnp.zeros_like(x_BxTxD))


def features(spec: FeatureSpec, wave_S: Array) -> Array:
    """One waveform -> its model input T x spec.dim (with per-utterance normalisation
    when the spec asks; 'global' needs ``postprocess`` with the statistics)."""
    lm_TxM = log_mel(spec, wave_S)
    return postprocess(spec, lm_TxM[None], jnp.asarray([lm_TxM.shape[0]]))[0]
