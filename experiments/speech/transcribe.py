"""Transcribe WAV files with a trained speech run (from the repository root):

    python -m experiments.speech.transcribe --workdir=runs/speech/jackson a.wav b.wav [--beam=8]

prints one line per file: ``path<TAB>transcript``. Any WAV is read (stereo is
mixed down, other rates resampled to the run's rate); features, model and
vocabulary come from the run's config.json and its latest checkpoint (its EMA
weights when the run kept them, train.ema_decay > 0). A run trained with
speaker normalisation (data.speaker_norm) normalises the given files as ONE
speaker, with statistics of their own (trimmed) frames: pass several files of
the same speaker.

    python -m experiments.speech.transcribe --workdir=DIR --evaluate [--beam=8] [--utterances=2000 --eval_seed=1000]

re-scores the run on its own held-out evaluation utterances (those its training
reported on: built from the held-out speaker's test takes) with today's decoding and
prints WER / CER / digit-string accuracy, inductive (no statistic of the held-out
speaker; ``--adapted``: with test-time adaptation from its adaptation takes, as the
run's eval_adapted_* columns);
for an ensemble (model.members > 1) each member's too, then their vote.
``--subsets=K`` adds the vote of every K-member sub-ensemble and their mean: what
the ensemble's size buys, paired (the same networks, the same utterances).
``--utterances`` / ``--eval_seed`` (eval.utterances / eval.seed) score it on more or
other utterances of the held-out speakers: one eval seed for runs of several
training seeds scores them all on the same test set.
Test-time noise floors (``--test_floors=15,20,25``, or the run's eval.test_floors):
a white-noise floor F dB below each utterance's mean power is added before the
model (features.floor_db), once per F, and the transcripts of every floor (and
member) are voted on with ROVER; one value gives that floor alone.
Prior matching: per member, output biases under which it hears every digit equally
often in the speaker's unlabelled speech, added before decoding. ``--evaluate
--adapted``: the run's eval.speaker_prior (``--[no-]speaker_prior`` to choose), fitted
on the held-out speakers' adaptation takes. Files: only with ``--speaker_prior``, fitted on the given files as one
speaker's speech (several hundred digits at least), since a few files cannot be fitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from experiments.speech import recipe
from rnnlab.data import audio
from rnnlab.tasks import speech as speech_task
from rnnlab.train import checkpoint as ckpt_lib


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """A speech run's config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json: pass the --workdir of a speech training run")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, config: ml_collections.ConfigDict | None = None):
    """(model, params, vocab) of a speech run's latest checkpoint. ``config``: the run's
    config.json as ``read_config`` gives it (None: read it)."""
    config = read_config(workdir) if config is None else config
    model = speech_task.build(config)
    like = jax.eval_shape(model.init, jax.random.key(0))
    decay = config.train.ema_decay
    if not decay:
        return model, ckpt_lib.load_params(workdir, like), audio.DIGITS
    ema, step = ckpt_lib.load_params(workdir, like, item="ema", with_step=True)
    return model, speech_task.ema_params(ema, step, decay), audio.DIGITS


def _speaker_normalised(config, logmels: list[np.ndarray]) -> list[np.ndarray]:
    """data.rate_norm and data.speaker_norm of the run, with the given clips as one speaker's."""
    target = config.data.rate_norm
    if target > 0:
        median = float(np.median([audio.active_span(x) for x in logmels]))
        logmels = [audio.rate_transform(x, median, target) for x in logmels]
    mode, trim_db = config.data.speaker_norm, config.data.trim_db
    if mode == "none":
        return logmels
    mean_M, std_M = audio.channel_stats([audio.trim_silence(x, trim_db) if trim_db > 0 else x for x in logmels])
    return [audio.speaker_transform(x, mean_M, std_M, mode) for x in logmels]


def transcribe(model, params, vocab: audio.Vocab, paths: Sequence[str], beam_width: int = 0,
               config: ml_collections.ConfigDict | None = None, floors: tuple[float, ...] = (),
               prior: bool = False) -> list[str]:
    """One transcript per WAV file (decoded one at a time: no padding to share), as
    ``recipe.decode`` with ``floors``. ``prior``: prior matching
    (``recipe.prior_bias``) with the files as one speaker's speech, in which every
    digit is about equally frequent (needs several hundred digits)."""
    logmels = [audio.clip_log_mel(model.features, audio.read_wav(p, model.features.sample_rate)) for p in paths]
    if config is not None:
        logmels = _speaker_normalised(config, logmels)
    batches = [audio.Batch(lm_TxM[None], np.asarray([len(lm_TxM)], np.int32), np.zeros((1, 1), np.int32),
                           np.zeros((1,), np.int32), [""]) for lm_TxM in logmels]
    outputs = [recipe.floor_logits(model, params, one, floors) for one in batches]  # once: fit and decode
    bias = recipe.prior_bias(model, outputs) if prior else None
    return [t for out in outputs for t in recipe.vote(model, out, vocab, beam_width, bias)]


def _check_subsets(subsets: int, members: int) -> None:
    if subsets and members < 2:
        raise ValueError(f"subsets={subsets}: this run is one network (model.members=1); sub-ensembles need an "
                         "ensemble run (model.members > 1)")
    if subsets and not 1 <= subsets <= members:
        raise ValueError(f"subsets={subsets}: this run has {members} members; give a size from 1 to {members}")


def evaluate_run(workdir: str, beam_width: int = 0, floors: tuple[float, ...] | None = None,
                 config: ml_collections.ConfigDict | None = None, subsets: int = 0, adapted: bool = False) -> dict:
    """The run's held-out error rates with its evaluated weights (as ``--evaluate``
    prints them); an ensemble adds ``members``: each member's alone. ``floors``: the
    test-time noise floors voted over (None: the run's eval.test_floors). ``config``:
    the run's config.json as read by ``read_config``, eval.* changed at will
    (utterances, seed); None: read it. ``subsets=K`` (1 <= K <= members) adds
    ``subsets``: the vote of every K-member sub-ensemble (``members``: which), and
    ``subsets_mean``: their mean rates, the paired answer to "what does the ensemble's
    size buy" on the same networks and utterances. ``adapted``: with test-time
    adaptation (``recipe.evaluate``'s), else inductive."""
    config = read_config(workdir) if config is None else config
    model, params, _ = load_run(workdir, config)
    _check_subsets(subsets, model.members)
    data = speech_task.load_data(config, workdir)
    floors = recipe.eval_floors(config) if floors is None else floors
    bias = (recipe.held_out_prior(model, params, config, data, floors)
            if adapted and recipe.speaker_prior(config) else None)  # per member: a sub-ensemble takes its rows
    out = recipe.evaluate(model, params, config, data, beam_width, floors, bias, adapted)

    scored: dict[tuple[int, ...], dict] = {}  # each sub-ensemble scored once (subsets=1: the members again)

    def sub_ensemble(members: tuple[int, ...]) -> dict:  # one member: its parameters without the members axis
        if members not in scored:
            take = members[0] if len(members) == 1 else np.asarray(members)
            scored[members] = recipe.evaluate(dataclasses.replace(model, members=len(members)),
                                                    jax.tree.map(lambda a: a[take], params), config, data,
                                                    beam_width, floors,
                                                    None if bias is None else bias[np.asarray(members)], adapted)
        return scored[members]

    if model.members > 1:
        out["members"] = [sub_ensemble((k,)) for k in range(model.members)]
    if subsets:
        out["subsets"] = [{"members": list(c), **sub_ensemble(c)}
                          for c in itertools.combinations(range(model.members), subsets)]
        out["subsets_mean"] = {k: float(np.mean([r[k] for r in out["subsets"]]))
                               for k in ("wer", "cer", "string_accuracy")}
    return out


def _rates(r: dict) -> str:
    return (f"WER {100 * r['wer']:.2f}% CER {100 * r['cer']:.2f}% digit-string accuracy "
            f"{100 * r['string_accuracy']:.2f}% on {r['utterances']} utterances")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a speech training run (config.json + checkpoints)")
    p.add_argument("--beam", type=int, default=0, help="prefix beam search width (0: greedy)")
    p.add_argument("--test_floors", default=None,
                   help="test-time noise floors, dB below each utterance's mean power, comma-separated: the "
                        "model runs once per floor (features.floor_db) and the transcripts of every floor and "
                        "member are voted on (ROVER); one value: that floor alone; default: the run's "
                        "eval.test_floors ('' = none)")
    p.add_argument("--evaluate", action="store_true",
                   help="score the run on its held-out evaluation utterances instead of transcribing files")
    p.add_argument("--utterances", type=int, default=None,
                   help="with --evaluate: this many held-out utterances (default: the run's eval.utterances)")
    p.add_argument("--eval_seed", type=int, default=None,
                   help="with --evaluate: draw the held-out utterances with this seed (default: the run's "
                        "eval.seed, i.e. its own seed): the same value scores runs of several seeds on one test set")
    p.add_argument("--subsets", type=int, default=0,
                   help="with --evaluate on an ensemble: also score the vote of every sub-ensemble of this many "
                        "members, then their mean (what the ensemble's size buys, on the same networks)")
    p.add_argument("--speaker_prior", action=argparse.BooleanOptionalAction, default=None,
                   help="prior matching: per member, output biases under which it hears every digit equally often "
                        "in the speaker's unlabelled speech; with --evaluate --adapted fitted on the held-out adaptation takes (default: "
                        "the run's eval.speaker_prior), with files on the given files as one speaker (several "
                        "hundred digits at least; default: off)")
    p.add_argument("--adapted", action="store_true",
                   help="with --evaluate: test-time adaptation from the held-out speaker's adaptation takes (speaker "
                        "and rate statistics, prior matching with eval.speaker_prior) instead of the inductive score")
    p.add_argument("wavs", nargs="*")
    a = p.parse_args(argv)
    if not a.evaluate and (a.utterances is not None or a.eval_seed is not None):
        p.error("--utterances and --eval_seed choose evaluation utterances: use them with --evaluate")
    if a.adapted and not a.evaluate:
        p.error("--adapted scores the run with test-time adaptation: use it with --evaluate")
    if a.evaluate and a.speaker_prior and not a.adapted:
        p.error("--speaker_prior with --evaluate fits biases on the held-out speaker's audio: that is test-time "
                "adaptation; add --adapted (the inductive score uses none)")
    if a.subsets and not a.evaluate:
        p.error("--subsets scores sub-ensembles: use it with --evaluate")
    if a.utterances is not None and a.utterances < 1:
        p.error(f"--utterances={a.utterances}: give at least 1")
    try:
        config = read_config(a.workdir)
    except FileNotFoundError as e:
        p.error(str(e))
    floors_arg = None if a.test_floors is None else [v.strip() for v in a.test_floors.split(",") if v.strip()]
    for key, value in (("test_floors", floors_arg), ("utterances", a.utterances), ("seed", a.eval_seed),
                       ("speaker_prior", a.speaker_prior)):
        if value is not None:
            config.eval[key] = value
    try:  # each names the key and its form
        floors = recipe.eval_floors(config)
        seed = speech_task.eval_seed(config) if a.evaluate else None
        _check_subsets(a.subsets, config.model.members)
    except ValueError as e:
        p.error(str(e))
    if a.evaluate:
        print(f"scoring {config.eval.utterances} held-out utterances of {config.data.test_speakers} drawn with seed "
              f"{seed}{' (the run seed)' if seed == config.seed else ''}; test-time floors: "
              f"{', '.join(f'{f:g}' for f in floors) or 'none'}"
              + ("; test-time adaptation from the held-out adaptation takes"
                 + ("; prior matching" if recipe.speaker_prior(config) else "") if a.adapted else "; inductive"),
              flush=True)
        try:  # --speaker_prior on too few held-out clips: prior_bias's error says so
            r = evaluate_run(a.workdir, a.beam, floors, config, a.subsets, a.adapted)
        except ValueError as e:
            p.error(str(e))
        for k, m in enumerate(r.get("members", [])):
            print(f"member {k}: {_rates(m)}", flush=True)
        for m in r.get("subsets", []):
            print(f"members {','.join(map(str, m['members']))}: {_rates(m)}", flush=True)
        if "subsets_mean" in r:
            m = r["subsets_mean"]
            print(f"mean of the {a.subsets}-member votes: WER {100 * m['wer']:.2f}% CER {100 * m['cer']:.2f}% "
                  f"digit-string accuracy {100 * m['string_accuracy']:.2f}%", flush=True)
        print(f"{'vote of the members' if 'members' in r else 'model'}: {_rates(r)}", flush=True)
        return
    if not a.wavs:
        p.error("give WAV files to transcribe, or --evaluate")
    missing = [w for w in a.wavs if not os.path.isfile(w)]
    if missing:  # all of them named, before the model is loaded
        p.error(f"no such WAV file: {', '.join(missing)}")
    model, params, vocab = load_run(a.workdir, config)
    try:  # an empty, corrupt or non-WAV file: read_wav's error names it
        texts = transcribe(model, params, vocab, a.wavs, a.beam, config, floors, bool(a.speaker_prior))
    except ValueError as e:
        p.error(str(e))
    for path, text in zip(a.wavs, texts, strict=True):
        print(f"{path}\t{text}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
