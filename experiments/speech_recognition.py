"""Speaker-independent connected-digit recognition on the Free Spoken Digit
Dataset: log-mel features -> conv subsampling -> bidirectional LSTM/GRU -> CTC.

The question: trained on 4 FSDD speakers, how well does a small recurrent CTC model
recognise connected digits (1-7 digits joined with random silences, gains and
background noise) of the 5th, unseen speaker, for each speaker held out in turn,
within about 30 minutes of 2 CPU cores per model? Results, with the artifacts they
come from: docs/speech/README.md (and docs/speech_vote4, docs/speech_vote_gru).

One trial (from the repository root; the same command resumes it):
  python -m rnnlab.main --config=experiments/speech_recognition.py:fsdd_vote4_gru,held_out=jackson \
      --workdir=runs/speech/jackson
Every held-out speaker (``sweep``, through ``launch.run_sweep``: finished trials are reused, interrupted
ones resume), then the per-speaker table:
  python experiments/speech_recognition.py --run --variant=fsdd_vote4_gru --root=runs/speech_vote4 \
      --out=docs/speech_vote4 [--parallel=2]
Report only (from the trials' result.json; --confusions adds which digit each held-out clip is heard as):
  python experiments/speech_recognition.py --root=runs/speech --out=docs/speech [--confusions]
Transcribe WAV files with a trained run, or re-score it:
  python -m experiments.speech.transcribe --workdir=runs/speech/jackson a.wav b.wav
  python -m experiments.speech.transcribe --workdir=runs/speech/jackson --evaluate

Variants:
  fsdd (= default)  40 log-mel + deltas (120), 25 ms / 10 ms at 8 kHz; speaking-rate and per-speaker
                    mean/variance normalisation from each speaker's unlabelled clips, then per-utterance;
                    conv 5:2:128, 3:2:128 (x4 subsampling); 2x160 BiLSTM (dropout 0.2); Adam 2e-3, warmup
                    200, cosine; EMA of the weights (0.998) evaluated; batch 24; SpecAugment, per-digit
                    tempo +-30 % and mel warp +-10 %; 3000 steps, capped at 25 wall-minutes.
  fsdd_vote         fsdd with model.members=3 (three networks trained side by side) and
                    eval.test_floors=(15, 20, 25) (each utterance decoded under white-noise floors 15, 20 and
                    25 dB below its own mean power; the 3 x 3 transcripts voted, ROVER); capped at 30 minutes.
  fsdd_vote_gru     fsdd_vote with bidirectional GRU layers (model.cell=gru).
  fsdd_vote4_gru    fsdd_vote_gru with model.members=4 and eval.speaker_prior=True (prior matching: per
                    network, output biases under which the held-out speaker's unlabelled clips decode to
                    every digit equally often; no transcript read, no weight changed). On a slow host add
                    threads=4 (train.member_threads: each member's step on a thread of its own; equal to
                    one program to float rounding, not bitwise).
  smoke             seconds: 2 speakers, 3 takes per digit, 1x16 BiLSTM, 6 steps (tests run it).
Shorthand keys: held_out=SPEAKER, cell=NAME (any registered cell), H=HIDDEN, L=LAYERS, members=K, steps=N, lr=LR,
seed=N, threads=G (train.member_threads); dotted keys (train.num_steps=...) go anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_collections

if __name__ == "__main__":  # run as a file: the rnnlab next to it, whatever else is installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rnnlab import configs  # noqa: E402
from rnnlab.train.config import optim_config, train_config  # noqa: E402

THIS_FILE = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(THIS_FILE))
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "yweweler")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "experiments.speech.task:train_and_evaluate"  # the task on the one loop (rnnlab.main calls it)
    c.seed = 0  # params init; training utterances pure in (seed, step), evaluation ones in (seed, 1e9 + i)

    c.data = d = ml_collections.ConfigDict()
    d.root = ""  # FSDD recordings folder; '' -> $RNNLAB_FSDD or ../shared/data/fsdd/recordings
    d.speakers = ""  # comma list to use only these speakers ('' = all in the folder)
    d.test_speakers = "jackson"  # held out: never seen in training
    d.takes_per_digit = 0  # >0: only takes 0..n-1 of each digit and speaker (0 = all 50)
    d.cache_dir = ""  # log-mel cache; '' -> workdir/feature_cache
    d.trim_db = 35.0  # trim each clip's leading/trailing frames this far below its loudest frame
    d.batch_size = 24
    d.min_words = 1  # digits per connected utterance: U{min..max}
    d.max_words = 7
    d.max_silence = 25  # frames (10 ms) of silence before/between/after digits: U{0..max}
    d.gain_db = 6.0  # per-digit gain U(-g, g) dB
    d.snr_min_db = 10.0  # white background noise at SNR U(min, max) dB
    d.snr_max_db = 40.0
    d.bucket = 64  # pad batches to a multiple of this many frames (few shapes to compile)
    d.tempo = 0.3  # per-digit time stretch U(1 -+ tempo) (speaking rate); 0: off
    d.mel_warp = 0.1  # per-digit mel-axis scaling U(1 -+ w) (vocal tract length, like VTLP); 0: off
    d.rate_norm = 32.0  # >0: stretch each speaker's clips so its median spoken span is this many frames (no
    # labels; docs/speech: jackson, the slowest speaker, gains most)
    d.speaker_norm = "meanvar"  # 'none' | 'mean' | 'meanvar': per-speaker log-mel normalisation from each
    # speaker's own clips (test speaker too: no labels)

    c.features = f = ml_collections.ConfigDict()
    f.sample_rate = 8000  # Hz; other-rate audio is resampled
    f.win_ms = 25.0
    f.hop_ms = 10.0
    f.n_fft = 256
    f.n_mels = 40
    f.kind = "logmel"  # 'logmel' | 'mfcc'
    f.n_mfcc = 13
    f.deltas = True  # append first and second differences
    f.norm = "utterance"  # per-utterance mean/variance normalisation
    f.floor_db = 0.0  # >0: white-noise floor this many dB below each utterance's mean power (train and test)

    c.model = m = ml_collections.ConfigDict()
    m.conv = "5:2:128,3:2:128"  # kernel:stride:channels per conv layer over time ('' = none)
    m.cell = "lstm"  # any module in rnnlab/cells
    m.cell_options = ""  # 'key=value,...' for the cell
    m.d_hidden = 160  # per direction
    m.num_layers = 2
    m.dropout = 0.2  # between layers (one mask per utterance)
    m.spec_augment = "2,10,2,8"  # freq_masks,freq_width,time_masks,time_width on the features ('' = off)
    m.unroll = 1
    m.members = 1  # >1: an ensemble of that many networks trained side by side, each decoded, transcripts voted (ROVER)

    c.optim = o = optim_config()
    o.update(lr=2e-3, clip_norm=5.0, schedule="cosine", warmup_steps=200, final_lr_fraction=0.05)

    c.eval = e = ml_collections.ConfigDict()
    e.utterances = 400  # connected utterances of the held-out speakers
    e.seed = -1  # the evaluation utterances' seed (-1: the run's seed); fix it to score several seeds on one test set
    e.batch_size = 100
    e.beam_width = 8  # final evaluation also with prefix beam search (0: greedy only)
    e.test_floors = ()  # test-time noise floors (dB below each utterance's power), e.g. (15.0, 20.0, 25.0): decoded
    # once per floor, transcripts voted (ROVER; experiments/speech/recipe.py); () = none
    e.speaker_prior = False  # prior matching: per member, output biases that make it emit every digit equally often
    # on the held-out speakers' unlabelled clips (experiments/speech/recipe.py prior_bias; no transcript used)

    c.train = r = train_config()
    r.update(num_steps=3000, checkpoint_every=250, keep_checkpoints=2, eval_every=500, log_every=50,
             max_minutes=25.0, tensorboard=False, data_parallel="off")
    r.ema_decay = 0.998  # speech only: >0: keep an EMA of the weights (in the checkpoint) and evaluate it, not the
    # last weights (the last weights' rates are logged beside them, raw_*)
    r.member_threads = 1  # speech only: >1 (dividing model.members): the members trained in this many groups,
    # each on a thread of its own (experiments/speech/recipe.py MemberThreads; equal to one program to float
    # rounding, not bitwise)
    return c


SHORTHAND = {"held_out": "data.test_speakers", "cell": "model.cell", "H": "model.d_hidden", "L": "model.num_layers",
             "members": "model.members", "threads": "train.member_threads",
             "steps": "train.num_steps", "lr": "optim.lr", "seed": "seed"}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, overrides = configs.parse_arg(arg)
    c = base_config()
    if variant in ("default", "fsdd"):
        pass
    elif variant in ("fsdd_vote", "fsdd_vote_gru", "fsdd_vote4_gru"):  # 3 (4) networks, each decoded under
        # three test-time noise floors, 9 (12) transcripts voting; the fourth: ~34 CPU-minutes against ~27
        c.model.members = 4 if variant == "fsdd_vote4_gru" else 3
        c.eval.test_floors = (15.0, 20.0, 25.0)
        c.train.max_minutes = 30.0  # the budget per model (~25 min alone on 2 cores)
        if variant in ("fsdd_vote_gru", "fsdd_vote4_gru"):
            c.model.cell = "gru"  # bidirectional GRU layers: 2.61 M parameters against the LSTM's 3.35 M
        if variant == "fsdd_vote4_gru":  # prior matching on the held-out speaker's clips (docs/speech, 2026-12-06)
            c.eval.speaker_prior = True
    elif variant == "smoke":
        c.data.update(speakers="george,jackson", test_speakers="jackson", takes_per_digit=3, batch_size=4,
                      max_words=3)
        c.model.update(conv="3:2:16", d_hidden=16, num_layers=1)
        c.optim.update(warmup_steps=2)
        c.eval.update(utterances=8, batch_size=8, beam_width=2)
        c.train.update(num_steps=6, checkpoint_every=3, eval_every=3, log_every=2, max_minutes=0.0)
    else:
        raise ValueError(f"unknown variant {variant!r} of speech_recognition; choose fsdd (= default), "
                         "fsdd_vote, fsdd_vote_gru, fsdd_vote4_gru or smoke")
    for k, v in overrides.items():
        configs.set_dotted(c, SHORTHAND.get(k, k), v)
    c.lock()
    return c


def sweep(add):
    """The study: each FSDD speaker held out in turn."""
    for speaker in SPEAKERS:
        add(**{"data.test_speakers": speaker})


def name(overrides: dict) -> str:
    """A trial's workdir name under the sweep's root: the held-out speaker."""
    return str(overrides["data.test_speakers"])


def run_study(root: str, variant: str = "fsdd", parallel: int = 1) -> list[dict]:
    """Every trial of ``sweep`` (each held-out speaker) under root/<speaker> with
    ``launch.run_sweep``: configs checked first, finished trials reused, interrupted
    ones resumed, ``parallel`` at a time."""
    import launch

    return launch.run_sweep(THIS_FILE, root, grid="sweep", variant=variant, parallel=parallel)


def report(root: str, out_dir: str) -> dict:
    """Per-speaker table (WER, CER, digit-string accuracy, greedy and beam, wall time)
    and the average over the held-out speakers found, from each trial's result.json."""
    rows = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                r = json.load(f)
            rows.append({"trial": name, "held_out": r["held_out"], "steps": r["step"],
                         "train_minutes": r["train_seconds"] / 60, "wer": r["eval_wer"], "cer": r["eval_cer"],
                         "string_accuracy": r["eval_string_accuracy"], "beam_wer": r.get("eval_beam_wer"),
                         "beam_string_accuracy": r.get("eval_beam_string_accuracy"),
                         "utterances": r["eval_utterances"],
                         "cpu_minutes": r["cpu_seconds"] / 60 if r.get("cpu_seconds") is not None else None,
                         "load_average": r.get("load_average_1min_mean"),
                         "raw_wer": r.get("eval_raw_wer")})
    missing = [s for s in SPEAKERS if s not in {r["held_out"] for r in rows}]
    avg = {k: sum(r[k] for r in rows) / len(rows) for k in ("wer", "cer", "string_accuracy", "train_minutes")} \
        if rows else {}
    rep = {"rows": rows, "average": avg, "missing_speakers": missing,
           "claim_wer_le_10pct": (avg["wer"] <= 0.10 and not missing) if rows else None}
    os.makedirs(out_dir, exist_ok=True)
    writers_json = os.path.join(out_dir, "report.json")
    with open(writers_json, "w") as f:
        json.dump(rep, f, indent=1)
    lines = ["| held-out speaker | steps | train min | WER | CER | digit-string acc | beam-8 WER | beam-8 acc "
             "| last-weights WER | CPU min | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    pct = (lambda v: "-" if v is None else f"{100 * v:.2f}%")
    num = (lambda v: "-" if v is None else f"{v:.1f}")
    for r in rows:
        lines.append(f"| {r['held_out']} | {r['steps']} | {r['train_minutes']:.1f} | {pct(r['wer'])} | "
                     f"{pct(r['cer'])} | {pct(r['string_accuracy'])} | {pct(r['beam_wer'])} | "
                     f"{pct(r['beam_string_accuracy'])} | {pct(r['raw_wer'])} | {num(r['cpu_minutes'])} | "
                     f"{num(r['load_average'])} |")
    if rows:
        lines.append(f"| **average ({len(rows)} of 5)** | | {avg['train_minutes']:.1f} | {pct(avg['wer'])} | "
                     f"{pct(avg['cer'])} | {pct(avg['string_accuracy'])} | | | | | |")
    table = "\n".join(lines)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n" + (f"\nmissing held-out speakers: {', '.join(missing)}\n" if missing else ""))
    print(table, flush=True)
    return rep


def confusions(root: str, out_dir: str) -> dict:
    """Which digit each held-out clip is heard as, per trial: every clip of the held-out
    speaker as a one-digit utterance (made as the evaluation utterances are), decoded
    greedily with the trial's evaluated weights (``recipe.digit_confusions``).
    Writes confusions.json (counts), confusions.md (accuracy and the most frequent
    confusions per speaker) and confusions.png/.svg (row-normalised matrices)."""
    import numpy as np

    from experiments.speech import recipe, transcribe
    from rnnlab.tasks import speech as speech_task

    out = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        wd = os.path.join(root, name)
        if not os.path.exists(os.path.join(wd, "result.json")):
            continue
        config = transcribe.read_config(wd)
        t0 = time.time()
        data = speech_task.load_data(config, wd)
        model, params, _ = transcribe.load_run(wd, config)
        counts = recipe.digit_confusions(model, params, config, data)
        speaker = config.data.test_speakers
        top = sorted(((int(counts[d, h]), str(d), str(h) if h < 10 else "other") for d in range(10) for h in range(11)
                      if h != d and counts[d, h]), reverse=True)[:6]
        out[speaker] = {"trial": name, "counts": counts.tolist(), "clips": int(counts.sum()),
                        "accuracy": float(np.trace(counts[:, :10]) / counts.sum()),
                        "top_confusions": [{"digit": d, "heard_as": h, "clips": n} for n, d, h in top]}
        print(f"{name}: {speaker} isolated-digit accuracy {out[speaker]['accuracy']:.1%} over {counts.sum()} clips; "
              f"most confused: {', '.join(f'{d}->{h} {n}' for n, d, h in top[:3])} ({time.time() - t0:.0f} s)",
              flush=True)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "confusions.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = ["| held-out speaker | isolated-digit accuracy | most frequent confusions (digit -> heard as: clips) |",
             "|---|---|---|"]
    for speaker, r in out.items():
        conf = ", ".join(f"{c['digit']} -> {c['heard_as']}: {c['clips']}" for c in r["top_confusions"])
        lines.append(f"| {speaker} | {r['accuracy']:.1%} of {r['clips']} | {conf} |")
    with open(os.path.join(out_dir, "confusions.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if out:
        _confusion_figure(out, out_dir)
    return out


def _confusion_figure(out: dict, out_dir: str) -> None:
    import numpy as np

    from rnnlab.report import style

    plt = style.pyplot()
    fig, axes = plt.subplots(1, len(out), figsize=(3.2 * len(out), 3.4), squeeze=False)
    for ax, (speaker, r) in zip(axes[0], out.items(), strict=True):
        c = np.asarray(r["counts"], np.float64)
        ax.imshow(c / np.maximum(c.sum(axis=1, keepdims=True), 1), vmin=0, vmax=1, cmap="Blues")
        for d in range(c.shape[0]):
            for h in range(c.shape[1]):
                if c[d, h]:
                    ax.text(h, d, int(c[d, h]), ha="center", va="center", fontsize=6,
                            color="white" if c[d, h] > 0.5 * c[d].sum() else "black")
        ax.set_xticks(range(11), [str(k) for k in range(10)] + ["?"], fontsize=7)
        ax.set_yticks(range(10), [str(k) for k in range(10)], fontsize=7)
        ax.set(title=f"{speaker}: {r['accuracy']:.0%}", xlabel="heard as ('?': other)", ylabel="digit")
    fig.tight_layout()
    style.save(fig, os.path.join(out_dir, "confusions"), svg=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="store_true", help="train every held-out speaker first (resumes/reuses)")
    p.add_argument("--root", default=os.path.join(REPO_ROOT, "runs", "speech"))
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "speech"))
    p.add_argument("--variant", default="fsdd")
    p.add_argument("--parallel", type=int, default=1, help="trials at a time")
    p.add_argument("--confusions", action="store_true",
                   help="also: which digit each held-out clip is heard as, per trial (confusions.{json,md,png})")
    a = p.parse_args(argv)
    if a.run:
        run_study(a.root, a.variant, a.parallel)
    elif not os.path.isdir(a.root):
        p.error(f"--root={a.root} does not exist: pass the folder of a study's trials, or add --run to train them")
    report(a.root, a.out)
    if a.confusions:
        confusions(a.root, a.out)


if __name__ == "__main__":
    main()
