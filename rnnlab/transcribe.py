"""Transcribe WAV files with a trained speech run:

    python -m rnnlab.transcribe --workdir=runs/speech/fsdd_jackson a.wav b.wav [--beam=8]

prints one line per file: ``path<TAB>transcript``. Any WAV is read (stereo is
mixed down, other rates resampled to the run's rate); features, model and
vocabulary come from the run's config.json and its latest checkpoint.
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
    return model, ckpt_lib.load_params(workdir, like), audio.DIGITS


def transcribe(model, params, vocab: ctc.Vocab, paths: Sequence[str], beam_width: int = 0) -> list[str]:
    """One transcript per WAV file (decoded one at a time: no padding to share)."""
    out = []
    for p in paths:
        wave = audio.read_wav(p, model.features.sample_rate)
        lm_1xTxM = audio.clip_log_mel(model.features, wave)[None]
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
    for path, text in zip(a.wavs, transcribe(model, params, vocab, a.wavs, a.beam), strict=True):
        print(f"{path}\t{text}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
