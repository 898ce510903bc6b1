"""Speaker-independent connected-digit recognition on the Free Spoken Digit
Dataset: log-mel features -> conv subsampling -> bidirectional LSTM -> CTC.

Train on 4 FSDD speakers, test on connected-digit utterances (1-7 digits joined
with random silences, gains and background noise) of the 5th, for each speaker.

One trial:
  nice -n 5 python -m rnnlab.main --config=experiments/speech_recognition.py:fsdd,held_out=jackson \
      --workdir=runs/speech/fsdd_jackson
All five held-out speakers with the recipe (--variant=fsdd_vote4_gru: 6.26 % with seed 5 and 6.29 % with seed 6
on one common set of 2000 utterances per speaker; 23-24 min per speaker alone on 2 cores of a 257-GFLOP/s host):
  python experiments/speech_recognition.py --run --variant=fsdd_vote4_gru --root=runs/speech_vote4 \
      --out=docs/speech_vote4
All five held-out speakers (each a subprocess; the same command resumes or reuses finished
trials), then the report (per-speaker table + average); on a shared machine run two or three at a
time with XLA on one thread each (each model: ~12 CPU-minutes for 3000 steps):
  nice -n 10 python experiments/speech_recognition.py --run --root=runs/speech --out=docs/speech \
      --jobs=2 --single_thread --extra=train.max_minutes=0
Report only (from the trials' result.json files; --confusions adds which digit each held-out clip is
heard as, per trial, from its checkpoint):
  python experiments/speech_recognition.py --root=runs/speech --out=docs/speech [--confusions]
Transcribe WAV files with a trained run:
  python -m rnnlab.transcribe --workdir=runs/speech/fsdd_jackson a.wav b.wav

Variants:
  fsdd (= default)  40 log-mel + deltas (120), 25 ms / 10 ms at 8 kHz; speaking-rate normalisation (each
                    speaker's clips stretched so that its median spoken span is 32 frames) and per-speaker
                    mean/variance normalisation, both from each speaker's unlabelled clips, then per-utterance;
                    conv 5:2:128, 3:2:128 (x4 subsampling, 40 ms per step); 2x160 BiLSTM (dropout 0.2); Adam
                    2e-3, warmup 200, cosine; EMA of the weights (0.998) evaluated; batch 24; SpecAugment,
                    per-digit tempo +-30 % and mel warp +-10 %; 3000 steps (~12 CPU-minutes single-threaded),
                    capped at 25 wall-minutes (train.max_minutes; 0 = no cap).
  fsdd_vote         fsdd with model.members=3 (three networks trained side by side) and eval.test_floors=15,20,25
                    (each utterance decoded under white-noise floors 15, 20 and 25 dB below its own mean power;
                    the 3 x 3 transcripts voted, ROVER); capped at 30 wall-minutes (~25 min alone on 2 cores).
  fsdd_vote_gru     fsdd_vote with bidirectional GRU layers (model.cell=gru; 2.61 M parameters against 3.35 M);
                    ~27 min alone on 2 cores of a 206-GFLOP/s host (45 min on one 1.56x slower) before the
                    native layer left padded steps out (2026-12-06, 1.38x): 14.5 min on a 257-GFLOP/s host.
  fsdd_vote4_gru    fsdd_vote_gru with model.members=4 (twelve transcripts voting): 0.17 points under its own
                    3-member subsets on a seed no choice looked at (seed 5, five speakers), 0.22 on seed 4 (five
                    speakers, the seed the idea came from); 33-38 CPU-minutes, 23-24 min alone on 2 cores of
                    this host, capped at 30. On a slower host add train.member_threads=4 (each member's step
                    a program on a thread of its own: the step 1.30x faster on 2 cores, equal to the one program
                    to float rounding, not bitwise; off by default so that the recorded seeds repeat bitwise).
                    And eval.speaker_prior=True (prior matching): per network, output biases under which the
                    held-out speaker's unlabelled clips decode to every digit equally often (no transcript read,
                    no weight changed), 10.12 / 10.15 % -> 6.26 / 6.29 % on seeds 5 / 6.
  smoke             seconds: 2 speakers, 3 takes per digit, 1x16 BiLSTM, 6 steps (tests run it).
Shorthand keys: held_out=SPEAKER, cell=NAME (any registered cell), H=HIDDEN, L=LAYERS, members=K, steps=N, lr=LR,
seed=N, threads=G (train.member_threads); dotted keys (train.num_steps=...) go anywhere.

RESULTS (docs/speech/README.md; greedy WER of the EMA weights, one run each). fsdd_vote on 2000 held-out
utterances drawn with eval.seed=1000 for both training seeds (transcribe --evaluate --utterances=2000
--eval_seed=1000): seed 0 george 14.32 %, jackson 9.38 %, lucas 6.47 %, nicolas 13.57 %, yweweler 8.31 %,
average 10.41 %; seed 1 14.80 / 9.59 / 7.26 / 12.26 / 8.09 %, average 10.40 %: the issue's <= 10 % is not met.
fsdd_vote_gru on the same utterances: seed 0 14.43 / 8.14 / 6.71 / 14.19 / 7.21 %, average 10.14 %; seed 1
13.59 / 6.26 / 6.61 / 11.88 / 8.73 %, average 9.41 % (the seed the cell was chosen on); seed 2 14.73 / 8.59 /
6.58 / 12.76 / 7.98 %, average 10.13 %; seed 3 13.41 / 8.91 / 7.12 / 12.67 / 8.32 %, average 10.09 %; seed 4
13.28 / 7.64 / 6.16 / 13.31 / 8.43 %, average 9.76 %; five-seed mean 9.91 %, the four unchosen seeds 10.03 %.
fsdd_vote4_gru with prior matching (eval.speaker_prior, registered before scoring; transcribe --speaker_prior):
seed 5 8.26 / 3.64 / 4.85 / 11.12 / 3.41 %, average 6.26 %; seed 6 8.34 / 3.79 / 4.95 / 10.55 / 3.81 %, average
6.29 %: the issue's <= 10 % holds (6.27 % over the two fresh seeds). Without prior matching:
fsdd_vote4_gru (four members) on the same utterances, seed 5 (fresh): 15.16 / 7.76 / 7.25 / 12.42 / 8.02 %,
average 10.12 %, against 10.30 % for the mean of its 3-member votes (transcribe --evaluate --subsets=3); seed 6
(fresh) 14.26 / 8.58 / 7.16 / 12.37 / 8.40 %, average 10.15 % (3-member votes 10.44 %): the fresh seeds average
10.14 %, over the issue's 10 %; seed 4
(the seed the idea came from) 12.51 / 8.45 / 6.30 / 12.74 / 8.64 %, average 9.73 % (its 3-member votes 9.95 %).
On the 400 utterances each run draws with its own seed: fsdd_vote (members=3, test-time floors 15/20/25 dB,
nine transcripts voted; ~47 CPU-minutes, ~25 min alone on 2 cores): george 13.79 %, jackson 8.24 %, lucas 6.77 %, nicolas 12.84 %, yweweler 7.66 %;
average 9.86 % (floors chosen by leave-one-speaker-out on these runs; the same ensembles without floors:
11.29 %); seed 1: 14.74 / 9.52 / 8.30 / 14.61 / 7.66 %, average 10.97 % (no floors: 11.54 %), so the
issue's <= 10 % is not met across seeds. fsdd (one network, 11.7-13.3 CPU-minutes): george 19.1 %, jackson
11.3 %, lucas 8.8 %, nicolas 13.5 %, yweweler 9.5 %; average 12.4 % (seed 1: 11.6 %). Speaking-rate normalisation took jackson, the slowest
speaker, from 22.6 % (3000 steps, tempo +-50 %, no rate normalisation) to 11.3 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import ml_collections

if __name__ == "__main__":  # run as a file: the rnnlab next to it, whatever else is installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rnnlab import configs  # noqa: E402

THIS_FILE = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(THIS_FILE))
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "yweweler")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "rnnlab.train_speech:train_and_evaluate"  # the loop rnnlab.main calls
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
    d.rate_norm = 32.0  # >0: stretch each speaker's clips so its median spoken span is this many frames (no labels;
    # FSDD medians 26-41 frames: jackson, the slowest, 22.6 -> ~10 % WER; see docs/speech)
    d.tilt_db = 0.0  # per-digit spectral tilt U(-t, t) dB across the mel axis, before the noise (band SNRs); 0: off
    d.speed_perturb = ""  # e.g. '0.9,1.1': each training clip also resampled at these speeds (tempo, pitch and
    # formants; Kaldi's speed perturbation), every factor a pseudo-speaker ('george@0.9') with its own rate and
    # speaker normalisation; '' = off (on FSDD george seed 4 it cost 4.5 points, 17.74 against 13.28 %: docs/speech)
    d.speaker_norm = "meanvar"  # 'none' | 'mean' | 'meanvar': per-speaker log-mel normalisation from each
    # speaker's own clips (test speaker too: no labels); jackson 24.7 -> 21.7 %, five-speaker average 15.0 either way

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
    m.conv2d = ""  # kernel:stride:channels per 2-D conv layer over (time, mel), before model.conv ('' = none)
    m.conv = "5:2:128,3:2:128"  # kernel:stride:channels per conv layer ('' = none)
    m.cell = "lstm"  # any module in rnnlab/cells
    m.cell_options = ""  # 'key=value,...' for the cell
    m.d_hidden = 160  # per direction
    m.num_layers = 2
    m.dropout = 0.2  # between layers (one mask per utterance)
    m.spec_augment = "2,10,2,8"  # freq_masks,freq_width,time_masks,time_width on the features ('' = off)
    m.spec_augment_tied = False  # True: a frequency band masks the same mel channels in the delta blocks too
    m.unroll = 1
    m.members = 1  # >1: an ensemble of that many networks trained side by side, each decoded, transcripts voted (ROVER)

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adam"
    o.lr = 2e-3
    o.momentum = 0.0
    o.weight_decay = 0.0
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.clip_norm = 5.0  # global gradient-norm clipping (0: off)
    o.schedule = "cosine"  # 'constant' | 'cosine'
    o.warmup_steps = 200
    o.final_lr_fraction = 0.05  # cosine ends at this fraction of lr

    c.eval = e = ml_collections.ConfigDict()
    e.utterances = 400  # connected utterances of the held-out speakers
    e.seed = -1  # the evaluation utterances' seed (-1: the run's seed); fix it to score several seeds on one test set
    e.batch_size = 100
    e.beam_width = 8  # final evaluation also with prefix beam search (0: greedy only)
    e.test_floors = ""  # test-time noise floors (dB, comma list): decoded once per floor, transcripts voted ('' = off)
    e.speaker_prior = False  # prior matching: per member, output biases that make it emit every digit equally often
    # on the held-out speakers' unlabelled clips (rnnlab.train_speech.prior_bias; no transcript used)

    c.train = r = ml_collections.ConfigDict()
    r.num_steps = 3000
    r.checkpoint_every = 250
    r.keep_checkpoints = 2
    r.eval_every = 500
    r.log_every = 50
    r.ema_decay = 0.998  # >0: keep an EMA of the weights (in the checkpoint) and evaluate it, not the last weights
    r.max_minutes = 25.0  # >0: stop (with checkpoint and evaluation) after this wall time
    r.fit_to_budget = False  # with max_minutes: at the end of warmup, time the steps and an evaluation and shorten
    # num_steps so that the cosine schedule ends within max_minutes (on a slow host: fewer steps, annealed; on FSDD
    # george no better than the plain cap, 14.85 against 14.43 % at 1765 steps: docs/speech)
    r.member_threads = 1  # >1 (dividing model.members): the members trained in this many groups, each on a thread
    # of its own (2 cores: fsdd_vote4_gru's step 1.21x faster with 2, 1.30x with 4; equal to one program to float rounding, not bitwise;
    # rnnlab.train_speech.MemberThreads)
    r.async_checkpoint = True
    r.tensorboard = False
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
        c.eval.test_floors = "15,20,25"
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


def trials(variant: str = "fsdd") -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    sweep(lambda **kw: out.append((variant, kw)))
    return out


# ----------------------------------------------------------------------------- study and report


SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def run_study(root: str, variant: str = "fsdd", extra: str = "", jobs: int = 1, single_thread: bool = False) -> None:
    """Each trial of ``sweep`` in root/<variant>_<speaker> as a subprocess of rnnlab.main,
    ``jobs`` at a time (a rerun resumes unfinished trials and reuses finished ones).
    ``single_thread``: XLA on one thread per trial. On a shared, oversubscribed
    machine (load 5-10 on 2 cores) a multi-threaded XLA CPU process spends its time
    waiting on its own thread pool: measured 1-3k frames/s against 10-25k single-threaded."""
    os.makedirs(root, exist_ok=True)
    env = {**os.environ, "XLA_FLAGS": SINGLE_THREAD_XLA} if single_thread else None
    running: list[tuple[str, float, subprocess.Popen]] = []

    def wait_until_fewer_than(n: int) -> None:
        while len(running) >= n:
            for item in list(running):
                if item[2].poll() is not None:
                    running.remove(item)
                    print(f"{item[0]}: exit {item[2].returncode} after {time.time() - item[1]:.0f} s", flush=True)
            if len(running) >= n:
                time.sleep(2)

    for v, overrides in trials(variant):
        speaker = overrides["data.test_speakers"]
        wd = os.path.join(root, f"{v}_{speaker}")
        if os.path.exists(os.path.join(wd, "result.json")):
            print(f"{wd}: finished, reused", flush=True)
            continue
        arg = ",".join([v, f"held_out={speaker}"] + ([extra] if extra else []))
        cmd = [sys.executable, "-u", "-m", "rnnlab.main", f"--config={THIS_FILE}:{arg}", f"--workdir={wd}"]
        print(" ".join(cmd), flush=True)
        os.makedirs(wd, exist_ok=True)
        log = open(os.path.join(wd, "train.log"), "a")  # noqa: SIM115 - closed with the process
        running.append((wd, time.time(), subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                                          stderr=subprocess.STDOUT)))
        wait_until_fewer_than(max(jobs, 1))
    wait_until_fewer_than(1)


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
    greedily with the trial's evaluated weights (``train_speech.digit_confusions``).
    Writes confusions.json (counts), confusions.md (accuracy and the most frequent
    confusions per speaker) and confusions.png/.svg (row-normalised matrices)."""
    import numpy as np

    from rnnlab import train_speech, transcribe

    out = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        wd = os.path.join(root, name)
        if not os.path.exists(os.path.join(wd, "result.json")):
            continue
        config = transcribe.read_config(wd)
        t0 = time.time()
        data = train_speech.load_data(config, wd)
        model, params, _ = transcribe.load_run(wd, config)
        counts = train_speech.digit_confusions(model, params, config, data)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out_dir, f"confusions.{ext}"), dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="store_true", help="train every held-out speaker first (resumes/reuses)")
    p.add_argument("--root", default=os.path.join(REPO_ROOT, "runs", "speech"))
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "speech"))
    p.add_argument("--variant", default="fsdd")
    p.add_argument("--extra", default="", help="more 'key=value' overrides for every trial")
    p.add_argument("--jobs", type=int, default=1, help="trials at a time (each on one XLA thread if --single_thread)")
    p.add_argument("--single_thread", action="store_true", help="XLA on one thread per trial (shared machines)")
    p.add_argument("--confusions", action="store_true",
                   help="also: which digit each held-out clip is heard as, per trial (confusions.{json,md,png})")
    a = p.parse_args(argv)
    if a.run:
        run_study(a.root, a.variant, a.extra, a.jobs, a.single_thread)
    elif not os.path.isdir(a.root):
        p.error(f"--root={a.root} does not exist: pass the folder of a study's trials, or add --run to train them")
    report(a.root, a.out)
    if a.confusions:
        confusions(a.root, a.out)


if __name__ == "__main__":
    main()
