"""The speech study as a task on the one training loop (``rnnlab.train.loop``):
CTC on connected-digit utterances of FSDD, evaluated on the held-out speakers with
the study's decoding (``recipe.evaluate``: test-time floors, prior matching).

Config: ``experiments/speech_recognition.py`` (its trainer is this module's
``train_and_evaluate``, run from the repository root).

    state      params, opt_state, step; ema (train.ema_decay > 0)
    batch(i)   connected utterances of the training speakers and the step's
               SpecAugment/dropout key, pure in (seed, i)
    evaluate   the held-out rates of the evaluated weights (the EMA when kept),
               inductive (``recipe.evaluate``); 'loss' is the WER (lower is
               better); with an EMA the last weights' rates beside them, prefixed raw_
    finish     held_out, eval_* (the last evaluation: inductive, the headline),
               eval_raw_*, eval_beam_* (eval.beam_width > 0), eval_adapted_* (the
               same weights with test-time adaptation from the held-out speaker's
               adaptation takes: speaker and rate statistics, eval.speaker_prior),
               examples
    runner     train.member_threads > 1: ``recipe.MemberThreads``

Evaluations are logged and never pick a checkpoint: the result is the model at the
last step. The divergence check has no loss baseline here (the CTC loss of a
memoryless predictor has no simple closed form): ``baseline=0``, so only its
gradient-norm half applies.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.speech import recipe
from rnnlab.data import audio
from rnnlab.tasks import speech as speech_task
from rnnlab.train import loop
from rnnlab.train.optim import make_optimizer


def check(config: ml_collections.ConfigDict) -> int:
    """The recipe's settings, checked before anything is written: eval.test_floors,
    eval.seed, eval.speaker_prior (enough held-out clips to fit), train.member_threads.
    Returns the member thread count."""
    recipe.eval_floors(config), speech_task.eval_seed(config), recipe.speaker_prior(config)
    groups = recipe.check_member_threads(config)
    adapt = audio.split_adaptation(speech_task.split_clips(config)[1])[0] if recipe.speaker_prior(config) else None
    if adapt is not None and len(adapt) < recipe.PRIOR_MIN_LABELS:
        raise ValueError(f"eval.speaker_prior=True counts the digits heard in the held-out adaptation takes, and "
                         f"{config.data.test_speakers} has {len(adapt)}: too few for counts that mean "
                         f"something (at least {recipe.PRIOR_MIN_LABELS}); hold out a speaker with more clips, or "
                         "set eval.speaker_prior=False")
    return groups


def _rates(ev: dict) -> str:
    return (f"WER {ev['wer']:.2%} CER {ev['cer']:.2%} digit-string accuracy {ev['string_accuracy']:.2%} on "
            f"{ev['utterances']} held-out utterances")


def make_task(config: ml_collections.ConfigDict, workdir: str) -> loop.Task:
    """The speech task of ``config`` (see the module docstring)."""
    groups = check(config)
    data = speech_task.load_data(config, workdir)
    model = speech_task.build(config)
    tx = make_optimizer(config.optim)
    tr = config.train
    ema = jnp.float32(tr.ema_decay)

    def batch(i: int) -> dict:
        return {"batch": speech_task.device_batch(speech_task.train_batch(config, data, i)),
                "rng": speech_task.step_key(config, i)}

    def train_step(state: dict, b: dict, lr) -> tuple[dict, dict]:
        return speech_task.train_step(model, tx, state, b["batch"], lr, b["rng"], ema)

    def evaluate(state: dict, step: int, beam_width: int = 0) -> dict:
        ev = recipe.evaluate(model, speech_task.evaluated_params(state, step, config), config, data, beam_width)
        ev["loss"] = ev["wer"]
        if tr.ema_decay and not beam_width:  # the last weights beside the average (not the result)
            raw = recipe.evaluate(model, state["params"], config, data)
            ev.update({f"raw_{k}": v for k, v in raw.items()})
        return ev

    def describe(ev: dict) -> str:
        return (f"{' (EMA weights)' if tr.ema_decay else ''}: {_rates(ev)}; e.g. {ev['examples'][:2]}"
                + (f"; last weights: WER {ev['raw_wer']:.2%}" if "raw_wer" in ev else ""))

    def finish(state: dict, step: int, ev: dict, best: dict | None) -> dict:
        out = {"held_out": config.data.test_speakers,
               **{f"eval_{k}": v for k, v in ev.items() if k != "loss" and not k.endswith("examples")},
               "examples": ev["examples"]}
        if config.eval.beam_width:
            evb = evaluate(state, step, config.eval.beam_width)
            print(f"eval at step {step} (beam {config.eval.beam_width}): {_rates(evb)}", flush=True)
            out.update({f"eval_beam_{k}": v for k, v in evb.items() if k not in ("loss", "examples")})
        eva = recipe.evaluate(model, speech_task.evaluated_params(state, step, config), config, data, adapted=True)
        print(f"eval at step {step} (test-time adaptation from {len(data.adapt.clips)} held-out adaptation takes"
              f"{', prior matching' if eva.get('speaker_prior') else ''}): {_rates(eva)}", flush=True)
        out.update({f"eval_adapted_{k}": v for k, v in eva.items() if k != "examples"})
        return out

    def make_runner(state: dict) -> recipe.MemberThreads:
        return recipe.MemberThreads(model, tx, groups, state, tr.ema_decay)

    n_train, n_test, n_adapt = len(data.train.clips), len(data.test.clips), len(data.adapt.clips)
    banner = (f"train speakers {sorted({c.speaker for c in data.train.clips})} ({n_train} clips), held out "
              f"{sorted({c.speaker for c in data.test.clips})} ({n_test} test + {n_adapt} adaptation clips); model: conv "
              f"{config.model.conv or 'none'} (x{model.subsampling}) -> {model.stack.num_layers}x{model.stack.d_h} "
              f"bi-{model.stack.cell.name}, {model.features.dim} {model.features.kind} features"
              f"{f', {model.members} ensemble members' if model.members > 1 else ''}"
              f"{f' ({groups} member threads)' if groups > 1 else ''}")
    return loop.Task(
        name="speech", state=speech_task.initial_state(model, tx, config), train_step=train_step, batch=batch,
        evaluate=evaluate, finish=finish, total_steps=tr.num_steps,
        baseline=0.0,  # no memoryless CTC baseline: only the gradient-norm half of the divergence check
        banner=banner, batch_size=config.data.batch_size,
        units=lambda b: int(np.sum(b["batch"]["lengths"])),  # frames ('tok/s' = frames/s)
        batch_axis=None,  # one device: the member threads are this task's parallelism
        describe_eval=describe, make_runner=make_runner if groups > 1 else None)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or resume) the speech model of ``config`` in ``workdir`` on ``loop.run``;
    returns the summary (also workdir/result.json once finished). A bad recipe
    setting is refused before anything is written."""
    check(config)
    return loop.run(config, workdir, make_task)
