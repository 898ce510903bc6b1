"""Speaker-independent connected-digit recognition on the Free Spoken Digit
Dataset: log-mel features -> conv subsampling -> bidirectional LSTM/GRU -> CTC.

The question: trained on 4 FSDD speakers, how well does a small recurrent CTC model
recognise connected digits (1-7 digits joined with random silences, gains and
background noise) of the 5th, unseen speaker, for each speaker held out in turn?
Each trained model is scored twice on the same test utterances (built from the
held-out speaker's takes 25-49): inductive (the headline: nothing computed from the
held-out speaker's audio before an utterance is decoded), and with test-time
adaptation (speaker and rate statistics and, in recipes with eval.speaker_prior,
prior matching, all from the speaker's takes 0-24). Results, with the per-run files
they come from: docs/speech/README.md.

The study (10 trials: 5 held-out speakers x seeds 0, 1; finished trials are reused, interrupted ones
resume; each finished trial's result/config/metrics/log copied to docs/speech/runs/<trial>/, then the tables):
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
  python experiments/speech_recognition.py --run --root=runs/speech_si --out=docs/speech --parallel=2
One trial (from the repository root; the same command resumes it):
  python -m rnnlab.main --config=experiments/speech_recognition.py:fsdd_si,held_out=jackson,seed=0 \
      --workdir=runs/speech_si/jackson_seed0
Tables only, from docs/speech/runs (after copying any finished trial of --root there); --confusions adds
which digit each held-out test take is heard as:
  python experiments/speech_recognition.py --root=runs/speech_si --out=docs/speech [--confusions]
Transcribe WAV files with a trained run, or re-score it (inductive; --adapted: with test-time adaptation):
  python -m experiments.speech.transcribe --workdir=runs/speech_si/jackson_seed0 a.wav b.wav
  python -m experiments.speech.transcribe --workdir=runs/speech_si/jackson_seed0 --evaluate [--adapted]

Variants:
  fsdd (= default)  40 log-mel + deltas (120), 25 ms / 10 ms at 8 kHz; speaking-rate and per-speaker
                    mean/variance normalisation of each training speaker from its own clips (of the held-out
                    speaker: in the adapted column only, from its adaptation takes), then per-utterance;
                    conv 5:2:128, 3:2:128 (x4 subsampling); 2x160 BiLSTM (dropout 0.2); Adam 2e-3, warmup
                    200, cosine; EMA of the weights (0.998) evaluated; batch 24; SpecAugment, per-digit
                    tempo +-30 % and mel warp +-10 %; 3000 steps, capped at 25 wall-minutes.
  fsdd_si           the study's recipe: fsdd without its wall-time cap (all 3000 steps: a result depends
                    on the steps, not on the machine's load), eval.seed=1000 (both seeds of a speaker
                    scored on the same test utterances).
  fsdd_vote         fsdd with model.members=3 (three networks trained side by side) and
                    eval.test_floors=(15, 20, 25) (each utterance decoded under white-noise floors 15, 20 and
                    25 dB below its own mean power; the 3 x 3 transcripts voted, ROVER); capped at 30 minutes.
  fsdd_vote_gru     fsdd_vote with bidirectional GRU layers (model.cell=gru).
  fsdd_vote4_gru    fsdd_vote_gru with model.members=4 and eval.speaker_prior=True (prior matching: per
                    network, output biases under which the held-out speaker's adaptation takes decode to
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
    elif variant == "fsdd_si":  # the speaker-independent study (docs/speech): fsdd with no wall-time cap
        c.train.max_minutes = 0.0  # (a run's result depends on its steps only, not on the machine's load)
        c.eval.seed = EVAL_SEED
    elif variant == "smoke":
        c.data.update(speakers="george,jackson", test_speakers="jackson", takes_per_digit=3, batch_size=4,
                      max_words=3)
        c.model.update(conv="3:2:16", d_hidden=16, num_layers=1)
        c.optim.update(warmup_steps=2)
        c.eval.update(utterances=8, batch_size=8, beam_width=2)
        c.train.update(num_steps=6, checkpoint_every=3, eval_every=3, log_every=2, max_minutes=0.0)
    else:
        raise ValueError(f"unknown variant {variant!r} of speech_recognition; choose fsdd (= default), "
                         "fsdd_si, fsdd_vote, fsdd_vote_gru, fsdd_vote4_gru or smoke")
    for k, v in overrides.items():
        configs.set_dotted(c, SHORTHAND.get(k, k), v)
    c.lock()
    return c


SEEDS = (0, 1)
EVAL_SEED = 1000  # every trial of a speaker is scored on the same test utterances, whatever its training seed


def sweep(add):
    """The study: each FSDD speaker held out in turn, two training seeds each."""
    for seed in SEEDS:
        for speaker in SPEAKERS:
            add(seed=seed, **{"data.test_speakers": speaker})


def name(overrides: dict) -> str:
    """A trial's workdir name under the sweep's root: the held-out speaker and the seed."""
    return f"{overrides['data.test_speakers']}_seed{overrides.get('seed', 0)}"


def run_study(root: str, variant: str = "fsdd_si", parallel: int = 1, out_dir: str | None = None) -> list[dict]:
    """Every trial of ``sweep`` (each held-out speaker, each seed) under root/<name> with
    ``launch.run_sweep``: configs checked first, finished trials reused, interrupted
    ones resumed, ``parallel`` at a time; with ``out_dir``, each finished trial's files
    are copied there (``collect``) as soon as the sweep ends."""
    import launch

    results = launch.run_sweep(THIS_FILE, root, grid="sweep", variant=variant, parallel=parallel)
    if out_dir:
        collect(root, out_dir)
    return results


RUN_FILES = ("result.json", "config.json", "metrics.jsonl", "train.log")


def collect(root: str, out_dir: str) -> list[str]:
    """Copy each finished trial's result.json, config.json, metrics.jsonl and train.log from
    root/<trial>/ to out_dir/runs/<trial>/ (the committed artifacts ``report`` reads).
    Returns the trials copied."""
    import shutil

    done = []
    for trial in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        src = os.path.join(root, trial)
        if not os.path.exists(os.path.join(src, "result.json")):
            continue
        dst = os.path.join(out_dir, "runs", trial)
        os.makedirs(dst, exist_ok=True)
        for f in RUN_FILES:
            if os.path.exists(os.path.join(src, f)):
                shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
        done.append(trial)
    return done


COLUMNS = (("inductive", "eval_"), ("adapted", "eval_adapted_"))  # headline; test-time adaptation


def report(out_dir: str) -> dict:
    """The study's tables from the committed per-run files out_dir/runs/<trial>/result.json:
    per trial, both columns (inductive: nothing from the held-out speaker's audio;
    adapted: speaker and rate statistics and, where the recipe has it, prior matching
    from the speaker's adaptation takes), per speaker the mean over seeds, and the
    5-speaker average WER per seed with its mean, spread and 95% interval over seeds.
    Writes report.json and table.md in out_dir; returns the report."""
    from rnnlab.report import stats

    rows = []
    runs = os.path.join(out_dir, "runs")
    for trial in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        path = os.path.join(runs, trial, "result.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            r = json.load(f)
        with open(os.path.join(runs, trial, "config.json")) as f:
            c = json.load(f)
        row = {"trial": trial, "held_out": r["held_out"], "seed": c["seed"], "steps": r["step"],
               "train_minutes": r["train_seconds"] / 60, "cpu_minutes": r["cpu_seconds"] / 60,
               "utterances": r["eval_utterances"], "eval_seed": c["eval"]["seed"],
               "load_average": r.get("load_average_1min_mean"),
               "speaker_prior": bool(r.get("eval_adapted_speaker_prior"))}
        for col, prefix in COLUMNS:
            for k in ("wer", "cer", "string_accuracy"):
                row[f"{col}_{k}"] = r.get(prefix + k)
        rows.append(row)
    seeds = sorted({r["seed"] for r in rows})
    per_seed = {}  # seed -> column -> the average WER over the held-out speakers of that seed's trials
    for seed in seeds:
        mine = [r for r in rows if r["seed"] == seed]
        per_seed[seed] = {"speakers": sorted(r["held_out"] for r in mine), **{
            col: sum(r[f"{col}_wer"] for r in mine) / len(mine) for col, _ in COLUMNS}}
    complete = [s for s in seeds if per_seed[s]["speakers"] == sorted(SPEAKERS)]
    summary = {col: stats.mean_ci([per_seed[s][col] for s in complete], nonnegative=True) for col, _ in COLUMNS}
    speakers = {sp: {col: stats.mean_ci([r[f"{col}_wer"] for r in rows if r["held_out"] == sp], nonnegative=True)
                     for col, _ in COLUMNS} for sp in SPEAKERS}
    rep = {"rows": rows, "per_seed": {str(k): v for k, v in per_seed.items()}, "complete_seeds": complete,
           "summary": summary, "speakers": speakers,
           "missing": [f"{sp}_seed{s}" for s in SEEDS for sp in SPEAKERS
                       if not any(r["held_out"] == sp and r["seed"] == s for r in rows)]}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    table = render_table(rep)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table, flush=True)
    return rep


def render_table(rep: dict) -> str:
    """The study's markdown tables from ``report``'s dict (report.json)."""
    from rnnlab.report import tables

    pct = (lambda v: "-" if v is None else f"{100 * v:.2f}%")
    lines = tables.markdown_table(
        ["held-out speaker", "seed", "steps", "inductive WER", "inductive digit-string acc", "adapted WER",
         "adapted digit-string acc", "train min", "CPU min"],
        [[r["held_out"], r["seed"], r["steps"], pct(r["inductive_wer"]), pct(r["inductive_string_accuracy"]),
          pct(r["adapted_wer"]), pct(r["adapted_string_accuracy"]), f"{r['train_minutes']:.1f}",
          f"{r['cpu_minutes']:.1f}"] for r in sorted(rep["rows"], key=lambda r: (SPEAKERS.index(r["held_out"]),
                                                                               r["seed"]))])
    lines += [""] + tables.markdown_table(
        ["held-out speaker", "seeds", "inductive WER (mean ± std)", "adapted WER (mean ± std)"],
        [[sp, s["inductive"]["n"], _pm(s["inductive"]), _pm(s["adapted"])] for sp, s in rep["speakers"].items()
         if s["inductive"]["n"]])
    pcts = {col: {k: (100 * v if isinstance(v, float) else v) for k, v in s.items()}
            for col, s in rep["summary"].items()}
    lines += [""] + tables.markdown_table(
        ["average over the 5 held-out speakers", "seeds", "WER: mean ± std over seeds [95% interval], %"],
        [["inductive (headline)", pcts["inductive"]["n"], tables.ci_text(pcts["inductive"], ".2f")],
         ["test-time adaptation", pcts["adapted"]["n"], tables.ci_text(pcts["adapted"], ".2f")]])
    lines += tables.footnotes(list(rep["summary"].values()))
    if rep["missing"]:
        lines += ["", f"not yet run: {', '.join(rep['missing'])}"]
    return "\n".join(lines)


def _pm(s: dict) -> str:
    if not s["n"]:
        return "-"
    return f"{100 * s['mean']:.2f}%" + (f" ± {100 * s['std']:.2f}" if s["n"] > 1 else "")


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
    p.add_argument("--variant", default="fsdd_si")
    p.add_argument("--parallel", type=int, default=1, help="trials at a time")
    p.add_argument("--confusions", action="store_true",
                   help="also: which digit each held-out clip is heard as, per trial (confusions.{json,md,png})")
    a = p.parse_args(argv)
    if a.run:
        run_study(a.root, a.variant, a.parallel)
    elif not os.path.isdir(a.root):
        p.error(f"--root={a.root} does not exist: pass the folder of a study's trials, or add --run to train them")
    copied = collect(a.root, a.out)
    print(f"{len(copied)} finished trials copied to {os.path.join(a.out, 'runs')}", flush=True)
    report(a.out)
    if a.confusions:
        confusions(a.root, a.out)


if __name__ == "__main__":
    main()
