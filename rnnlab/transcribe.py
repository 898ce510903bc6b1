"""Transcribe WAV files with a trained speech run:

    python -m rnnlab.transcribe --workdir=runs/speech/fsdd_jackson a.wav b.wav [--beam=8]

prints one line per file: ``path<TAB>transcript``. Any WAV is read (stereo is
mixed down, other rates resampled to the run's rate); features, model and
vocabulary come from the run's config.json and its latest checkpoint (its EMA
weights when the run kept them, train.ema_decay > 0). A run trained with
speaker normalisation (data.speaker_norm) normalises the given files as ONE
speaker, with statistics of their own (trimmed) frames: pass several files of
the same speaker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rnnlab import checkpoint as ckpt_lib
from rnnlab import ctc, train_speech
from rnnlab.data import audio


def load_run(workdir: str):
    """(model, params, vocab) of a speech run's latest checkpoint."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json: pass the --workdir of a speech training run")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model = train_speech.build(config)
    like = jax.eval_shape(model.init, jax.random.key(0))
    decay = config.train.get("ema_decay", 0.0)  # runs from before the EMA have no such key
    if not decay:
        return model, ckpt_lib.load_params(workdir, like), audio.DIGITS
    ema, step = ckpt_lib.load_params(workdir, like, item="ema", with_step=True)
    return model, train_speech.ema_params(ema, step, decay), audio.DIGITS


def _speaker_normalised(config, logmels: list[np.ndarray]) -> list[np.ndarray]:
    """data.rate_norm and data.speaker_norm of the run, with the given clips as one speaker's."""
    target = config.data.get("rate_norm", 0.0)
    if target > 0:
        median = float(np.median([audio.active_span(x) for x in logmels]))
        logmels = [audio.rate_transform(x, median, target) for x in logmels]
    mode, trim_db = config.data.get("speaker_norm", "none"), config.data.trim_db
    if mode == "none":
        return logmels
    mean_M, std_M = audio.channel_stats([audio.trim_silence(x, trim_db) if trim_db > 0 else x for x in logmels])
    return [audio.speaker_transform(x, mean_M, std_M, mode) for x in logmels]


def transcribe(model, params, vocab: ctc.Vocab, paths: Sequence[str], beam_width: int = 0,
               config: ml_collections.ConfigDict | None = None) -> list[str]:
    """One transcript per WAV file (decoded one at a time: no padding to share)."""
    out = []
    logmels = [audio.clip_log_mel(model.features, audio.read_wav(p, model.features.sample_rate)) for p in paths]
    if config is not None:
        logmels = _speaker_normalised(config, logmels)
    for lm_TxM in logmels:
        lm_1xTxM = lm_TxM[None]
        logits, n = train_speech.logits_step(model, params, jnp.asarray(lm_1xTxM),
                                             jnp.asarray([lm_1xTxM.shape[1]]))
        logits, n = np.asarray(logits[0], np.float32), int(n[0])
        labels = ctc.prefix_beam_search(logits, beam_width, length=n) if beam_width else ctc.greedy_decode(logits, n)
        out.append(vocab.decode(labels))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a speech training run (config.json + checkpoints)")
    p.add_argument("--beam", type=int, default=0, help="prefix beam search width (0: greedy)")
    p.add_argument("wavs", nargs="+")
    a = p.parse_args(argv)
    model, params, vocab = load_run(a.workdir)
    with open(os.path.join(a.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    for path, text in zip(a.wavs, transcribe(model, params, vocab, a.wavs, a.beam, config), strict=True):
        print(f"{path}\t{text}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
