"""The CTC acoustic model and its training loop: padding never changes loss or
gradients, output lengths, every parameter learns, the smoke variant trains,
resumes and refuses another config from the command line, and transcribe prints
transcripts."""

import functools
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.io.wavfile as scipy_wavfile

from experiments.speech import recipe
from experiments.speech import task as speech_study
from rnnlab import features as feat
from rnnlab.layers import Stack
from rnnlab.models.speech import SpeechModel
from rnnlab.tasks import speech as speech_task
from tests.test_audio import _fake_fsdd

FEATS = feat.FeatureSpec(n_mels=12, deltas=True)


def _model(cell="lstm", features=FEATS):
    return SpeechModel(features, ((3, 2, 8), (3, 2, 8)), Stack(cell, 8, 6, num_layers=2, bidirectional=True), 11)


def _batch(rng, n_t=37):
    lengths = np.array([37, 30, 21])
    x = rng.normal(size=(3, n_t, 12)).astype(np.float32)
    for b, n in enumerate(lengths):
        x[b, n:] = 0.0
    return {"logmel": x, "lengths": lengths, "labels": np.array([[1, 2, 2], [3, 0, 0], [4, 5, 0]], np.int32),
            "label_lengths": np.array([3, 1, 2], np.int32)}


@pytest.mark.slow
@pytest.mark.parametrize("cell,floor_db", [("lstm", 0.0), ("gru", 0.0), ("lstm", 20.0)])
def test_junk_frames_past_the_lengths_change_neither_loss_nor_gradients(cell, floor_db):
    model = _model(cell, feat.FeatureSpec(n_mels=12, deltas=True, floor_db=floor_db))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    junk = dict(batch)
    x = np.concatenate([batch["logmel"], 50 * rng.normal(size=(3, 27, 12)).astype(np.float32)], axis=1)
    x[1, 30:37] = 1e3  # junk inside the array too, past utterance 1's length
    x[2, 21:37] = -1e3
    junk["logmel"] = x
    grad = jax.jit(jax.value_and_grad(lambda p, b: model.loss_and_metrics(p, b)[0]))
    l0, g0 = grad(params, batch)
    l1, g1 = grad(params, junk)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)


def test_output_lengths_follow_the_subsampling_and_one_step_changes_every_parameter():
    model = _model()
    params = model.init(jax.random.key(1))
    batch = _batch(np.random.default_rng(1))
    logits, out_len = jax.jit(model.apply)(params, jnp.asarray(batch["logmel"]), jnp.asarray(batch["lengths"]))
    assert logits.shape == (3, 10, 11) and model.subsampling == 4
    np.testing.assert_array_equal(out_len, [10, 8, 6])  # ceil(ceil(n / 2) / 2)
    grads = jax.jit(jax.grad(lambda p: model.loss_and_metrics(p, batch)[0]))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.max(jnp.abs(g))) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": cwd, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _transcribe(args, capsys):
    """experiments.speech.transcribe's command line run in this process (no interpreter and
    JAX start per call): returncode, stdout, stderr."""
    from experiments.speech import transcribe

    capsys.readouterr()
    try:
        transcribe.main(args)
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def _smoke_run(tmp_path, extra: str = ""):
    """Trains the smoke variant on fake FSDD recordings of two speakers: (repo, recordings,
    workdir, --config flag, the training process)."""
    repo = speech_task.REPO_ROOT
    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=3)
    wd = str(tmp_path / "run")
    cfg = f"--config={repo}/experiments/speech_recognition.py:smoke,data.root={root}{extra}"
    r = _run(["-m", "rnnlab.main", cfg, f"--workdir={wd}"], repo)
    assert r.returncode == 0, r.stderr[-3000:]
    return repo, root, wd, cfg, r


def test_smoke_variant_trains_on_the_loop_in_process(tmp_path, capsys):
    """The fast tier's speech run: the smoke variant on the one loop, in this process."""
    from experiments import speech_recognition as exp
    from experiments.speech import task
    from rnnlab.train import status

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=3)
    c = exp.get_config(f"smoke,data.root={root}")
    c.unlock()
    c.train.async_checkpoint = False
    result = task.train_and_evaluate(c, str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert "step 6/6" in out and "eval at step 6 (EMA weights)" in out
    assert result["finished"] and result["eval_utterances"] == 8 and 0 <= result["eval_wer"]
    assert 0 <= result["eval_raw_wer"] and result["held_out"] and not result["diverged"]
    assert status.read(str(tmp_path / "run"))["state"] == "finished"


@pytest.mark.slow
def test_smoke_variant_trains_resumes_refuses_another_config_and_transcribes(tmp_path, capsys):
    repo, root, wd, cfg, r = _smoke_run(tmp_path)
    assert "eval at step 6" in r.stdout and "step 6/6" in r.stdout
    result = json.load(open(os.path.join(wd, "result.json")))
    assert result["finished"] and 0 <= result["eval_string_accuracy"] <= 1 and result["eval_utterances"] == 8
    # the smoke variant keeps an EMA of the weights: evaluated as the result, the last weights beside it
    assert 0 <= result["eval_raw_wer"] and result["cpu_seconds"] > 0 and "eval at step 6 (EMA weights)" in r.stdout
    assert {"loss", "grad_norm", "param_norm", "update_norm", "lr"} <= set(
        json.loads(open(os.path.join(wd, "metrics.jsonl")).readline()))
    from experiments.speech import transcribe
    with pytest.raises(ValueError, match=r"subsets=1: this run is one network \(model.members=1\)"):
        transcribe.evaluate_run(wd, subsets=1)
    again = _run(["-m", "rnnlab.main", cfg, f"--workdir={wd}"], repo)  # finished: reads the result back
    assert again.returncode == 0 and "run already finished" in again.stdout
    other = _run(["-m", "rnnlab.main", cfg + ",H=32", f"--workdir={wd}"], repo)
    assert other.returncode != 0 and "model.d_hidden" in other.stderr
    bad_wd = str(tmp_path / "bad_eval")  # a bad eval.* key fails before training, not at the first evaluation
    bad = _run(["-m", "rnnlab.main", cfg + ",eval.seed=-2", f"--workdir={bad_wd}"], repo)
    assert bad.returncode != 0 and "eval.seed=-2: expected a seed >= 0" in bad.stderr and "step 1/" not in bad.stdout
    assert not os.path.exists(os.path.join(bad_wd, "config.json"))
    wavs = [os.path.join(root, "3_jackson_0.wav"), os.path.join(root, "8_jackson_1.wav")]
    t = _transcribe([f"--workdir={wd}", *wavs, "--beam=2"], capsys)
    assert t.returncode == 0, t.stderr[-3000:]
    lines = t.stdout.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == wavs
    assert all(set(ln.split("\t")[1]) <= set("0123456789 ") for ln in lines)
    # a missing or corrupt WAV is named in a one-line error, not a traceback
    (tmp_path / "bad.wav").write_bytes(b"RIFF")
    missing = _transcribe([f"--workdir={wd}", wavs[0], str(tmp_path / "nope.wav")], capsys)
    assert missing.returncode == 2 and f"no such WAV file: {tmp_path / 'nope.wav'}" in missing.stderr
    corrupt = _transcribe([f"--workdir={wd}", str(tmp_path / "bad.wav")], capsys)
    assert corrupt.returncode == 2 and "bad.wav: not a readable WAV file" in corrupt.stderr
    assert "Traceback" not in missing.stderr + corrupt.stderr
    # transcribe's weights: the debiased EMA of the newest checkpoint, read here straight from Orbax
    import orbax.checkpoint as ocp

    from experiments.speech.transcribe import load_run
    from rnnlab.train import checkpoint as ckpt_lib

    model, params, _ = load_run(wd)
    newest = max(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit())
    with ocp.StandardCheckpointer() as reader:
        full = reader.restore(os.path.join(wd, "checkpoints", str(newest), "state"))
    decay = json.load(open(os.path.join(wd, "config.json")))["train"]["ema_decay"]
    assert newest == 6 and int(full["step"]) == 6
    jax.tree.map(lambda got, e: np.testing.assert_allclose(got, np.asarray(e) / (1 - decay ** 6), rtol=1e-6),
                 params, full["ema"])
    assert not np.allclose(jax.tree.leaves(params)[0], jax.tree.leaves(full["params"])[0])
    with pytest.raises(ValueError, match="has no 'momentum'"):
        ckpt_lib.load_params(wd, jax.eval_shape(model.init, jax.random.key(0)), item="momentum")
    # which digit each held-out test take is heard as: jackson's takes 1-2 (take 0 adapts), each counted once
    from experiments import speech_recognition as exp

    conf = exp.confusions(str(tmp_path), str(tmp_path / "out"))
    assert list(conf) == ["jackson"] and conf["jackson"]["clips"] == 20
    counts = np.asarray(conf["jackson"]["counts"])
    assert counts.shape == (10, 11) and counts.sum(axis=1).tolist() == [2] * 10
    assert all(os.path.exists(tmp_path / "out" / f) for f in ("confusions.json", "confusions.md", "confusions.png"))


def test_non_finite_loss_stops_the_run_without_saving(tmp_path):
    from experiments.speech_recognition import get_config
    from rnnlab.train.loop import NonFiniteError

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=2)
    config = get_config(f"smoke,data.root={root},optim.lr=1e30,optim.clip_norm=0,optim.warmup_steps=1")
    with pytest.raises(NonFiniteError, match="non-finite training loss at step"):
        speech_study.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(os.path.join(tmp_path, "run", "checkpoints", "3"))


def test_missing_data_folder_says_how_to_point_at_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.data.root"):
        speech_task.fsdd_root(str(tmp_path / "nope"))


def test_config_variants_sweep_and_report_table(tmp_path):
    from experiments import speech_recognition as exp

    assert exp.get_config("fsdd,held_out=lucas").data.test_speakers == "lucas"
    assert exp.get_config("smoke").trainer == "experiments.speech.task:train_and_evaluate"
    vote = exp.get_config("fsdd_vote,held_out=nicolas")
    assert vote.model.members == 3 and recipe.eval_floors(vote) == (15.0, 20.0, 25.0)
    gru = exp.get_config("fsdd_vote_gru,held_out=nicolas")
    assert gru.model.cell == "gru" and vote.model.cell == "lstm"
    same = gru.to_dict()
    same["model"]["cell"] = "lstm"
    assert same == vote.to_dict()  # fsdd_vote with GRU layers, nothing else
    four = exp.get_config("fsdd_vote4_gru,held_out=nicolas").to_dict()
    assert four["model"]["members"] == 4
    assert four["eval"]["speaker_prior"] is True and gru.eval.speaker_prior is False
    four["model"]["members"], four["eval"]["speaker_prior"] = 3, False
    assert four == gru.to_dict()  # fsdd_vote_gru with a fourth member and prior matching, nothing else
    assert recipe.eval_floors(exp.get_config("fsdd")) == ()
    with pytest.raises(ValueError, match="eval.test_floors"):
        recipe.eval_floors(exp.get_config("fsdd,eval.test_floors=15;loud"))
    with pytest.raises(ValueError, match="unknown variant"):
        exp.get_config("timit")
    with pytest.raises(AttributeError):
        exp.get_config("fsdd").data.batchsize = 3  # locked
    import launch.trials

    si = exp.get_config("fsdd_si,held_out=lucas").to_dict()
    assert si["train"]["num_steps"] == 3000 and si["train"]["max_minutes"] == 0 and si["eval"]["seed"] == 1000
    base = exp.get_config("fsdd,held_out=lucas").to_dict()
    si["train"]["max_minutes"] = base["train"]["max_minutes"]
    si["eval"]["seed"] = base["eval"]["seed"]
    assert si == base  # fsdd with its steps, wall cap and evaluation seed set, nothing else
    trials = launch.trials.expand(exp.THIS_FILE, str(tmp_path / "sweep"), "sweep", "fsdd_si")
    assert [t.name for t in trials] == [f"{sp}_seed{s}" for s in (0, 1) for sp in exp.SPEAKERS]
    assert [(t.overrides["data.test_speakers"], t.overrides["seed"]) for t in trials] == [
        (sp, s) for s in (0, 1) for sp in exp.SPEAKERS]
    assert all(t.variant == "fsdd_si" and t.workdir.endswith(t.name) for t in trials)
    # the report reads the committed per-run copies (collect), never the run folders
    wers = {("george", 0): (0.04, 0.03), ("lucas", 0): (0.10, 0.06), ("jackson", 0): (0.2, 0.1),
            ("nicolas", 0): (0.05, 0.05), ("yweweler", 0): (0.01, 0.02), ("george", 1): (0.06, 0.05)}
    for (speaker, seed), (ind, ada) in wers.items():
        wd = tmp_path / "runs" / f"{speaker}_seed{seed}"
        os.makedirs(wd)
        json.dump({"seed": seed, "eval": {"seed": 1000}}, open(wd / "config.json", "w"))
        json.dump({"held_out": speaker, "step": 1500, "train_seconds": 600.0, "cpu_seconds": 900.0,
                   "eval_wer": ind, "eval_cer": ind, "eval_string_accuracy": 1 - 3 * ind, "eval_utterances": 400,
                   "eval_adapted_wer": ada, "eval_adapted_cer": ada, "eval_adapted_string_accuracy": 1 - 3 * ada},
                  open(wd / "result.json", "w"))
    os.makedirs(tmp_path / "runs" / "unfinished_seed0")  # no result.json: not copied
    out = str(tmp_path / "docs")
    assert exp.collect(str(tmp_path / "runs"), out) == sorted(f"{sp}_seed{s}" for sp, s in wers)
    shutil.rmtree(tmp_path / "runs")
    rep = exp.report(out)
    assert rep["complete_seeds"] == [0]  # seed 1 has one speaker of five: in the rows, not in the average
    assert rep["summary"]["inductive"]["n"] == 1
    assert rep["summary"]["inductive"]["mean"] == pytest.approx(np.mean([0.04, 0.10, 0.2, 0.05, 0.01]))
    assert rep["summary"]["adapted"]["mean"] == pytest.approx(np.mean([0.03, 0.06, 0.1, 0.05, 0.02]))
    assert rep["speakers"]["george"]["inductive"]["mean"] == pytest.approx(0.05)
    assert rep["speakers"]["george"]["inductive"]["std"] == pytest.approx(np.std([0.04, 0.06], ddof=1))
    assert len(rep["missing"]) == 4 and "lucas_seed1" in rep["missing"]
    table = open(os.path.join(out, "table.md")).read()
    assert "| george | 0 | 1500 | 4.00% | 88.00% | 3.00% | 91.00% | 10.0 | 15.0 |" in table, table
    assert "| george | 2 | 5.00% ± 1.41 | 4.00% ± 1.41 |" in table, table
    assert "| inductive (headline) | 1 | 8.00 (1 seed) |" in table, table


@pytest.mark.slow
def test_ema_is_the_hand_computed_weighted_average_and_the_train_step_keeps_it():
    p = [{"w": np.array([1.0, -2.0], np.float32)}, {"w": np.array([3.0, 0.5], np.float32)},
         {"w": np.array([-1.0, 4.0], np.float32)}]
    ema = {"w": np.zeros(2, np.float32)}
    for q in p:
        ema = speech_task.ema_update(ema, q, 0.5)
    # weights decay^(3 - i): 0.25, 0.5, 1 over their sum 1.75
    want = (0.25 * p[0]["w"] + 0.5 * p[1]["w"] + 1.0 * p[2]["w"]) / 1.75
    np.testing.assert_allclose(speech_task.ema_params(ema, 3, 0.5)["w"], want, rtol=1e-6)
    # inside the jitted train step: after two steps, ema = d (1 - d) p1 + (1 - d) p2
    import optax

    model = SpeechModel(FEATS, ((3, 2, 8),), Stack("gru", 8, 4, num_layers=1, bidirectional=True), 11)
    params = model.init(jax.random.key(0))
    tx = optax.adam(1.0)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.asarray(0, jnp.int32),
             "ema": jax.tree.map(jnp.zeros_like, params)}
    state = jax.tree.map(jnp.array, state)
    batch = jax.tree.map(jnp.asarray, _batch(np.random.default_rng(0)))
    seen = []
    for k in range(2):
        state, _ = speech_task.train_step(model, tx, state, batch, jnp.float32(1e-2), jax.random.key(k),
                                           jnp.float32(0.9))
        seen.append(jax.tree.map(np.asarray, state["params"]))
    want = jax.tree.map(lambda a, b: 0.9 * 0.1 * a + 0.1 * b, *seen)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state["ema"], want)
    assert not np.allclose(seen[0]["out_b_V"], seen[1]["out_b_V"])  # the weights did move


def test_transcribe_normalises_its_files_as_one_speaker_rate_and_spectrum():
    """transcribe applies the run's data.rate_norm and data.speaker_norm to the given files as
    one speaker: stretched by target / their median spoken span, then CMVN from their frames."""
    import ml_collections

    from experiments.speech.transcribe import _speaker_normalised
    from rnnlab.data import audio

    rng = np.random.default_rng(0)
    clips = []
    for n in (30, 40, 50):
        x = np.full((n + 10, 6), np.log(1e-6), np.float32)
        x[5:5 + n] = rng.normal(0.0, 0.3, (n, 6))
        clips.append(x)
    config = ml_collections.ConfigDict({"data": {"rate_norm": 20.0, "speaker_norm": "none", "trim_db": 0.0}})
    out = _speaker_normalised(config, clips)
    assert [len(o) for o in out] == [round(len(c) * 20 / 40) for c in clips]  # median span 40
    assert [audio.active_span(o) for o in out] == pytest.approx([15, 20, 25], abs=2)
    config.data.speaker_norm = "meanvar"
    normed = _speaker_normalised(config, clips)
    mean_M, std_M = audio.channel_stats(out)
    for got, stretched in zip(normed, out, strict=True):
        np.testing.assert_allclose(got, audio.speaker_transform(stretched, mean_M, std_M, "meanvar"), rtol=1e-6)


def test_confusion_counts_put_each_one_word_utterance_in_its_cell():
    refs = ["2", "2", "3", "0", "9", "1"]
    hyps = ["4", "2", "", "0 0", "9", "x"]  # a substitution, a hit, a deletion, two words, a hit, unknown
    got = recipe.confusion_counts(refs, hyps, [str(d) for d in range(10)])
    want = np.zeros((10, 11), np.int64)
    want[2, 4] = want[2, 2] = want[3, 10] = want[0, 10] = want[9, 9] = want[1, 10] = 1
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_an_ensemble_is_its_members_side_by_side():
    """model.members = 2: stacked parameters (member k from fold_in(key, k)); the loss is the
    sum of each member's own loss, so each member's gradient is its own loss's; apply
    gives every member's logits, and decoding votes on the members' transcripts."""
    import dataclasses

    one = _model()
    two = dataclasses.replace(one, members=2)
    key, rng = jax.random.key(3), jax.random.key(4)
    params = two.init(key)
    member = [jax.tree.map(lambda a, k=k: a[k], params) for k in range(2)]
    for k in range(2):
        jax.tree.map(np.testing.assert_array_equal, member[k], one.init(jax.random.fold_in(key, k)))
    batch = _batch(np.random.default_rng(2))
    # jitted (op-by-op dispatch of the scans takes ~40 s): the same functions, compiled
    two_loss = jax.jit(lambda p, r: two.loss_and_metrics(p, batch, rng=r, train=True))
    one_loss = jax.jit(lambda p, r: one.loss_and_metrics(p, batch, rng=r, train=True)[0])
    loss, metrics = two_loss(params, rng)
    own = [one_loss(member[k], jax.random.fold_in(rng, k)) for k in range(2)]
    np.testing.assert_allclose(loss, own[0] + own[1], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], (own[0] + own[1]) / 2, rtol=1e-6)
    grads = jax.jit(jax.grad(lambda p: two_loss(p, rng)[0]))(params)
    g1 = jax.jit(jax.grad(one_loss))(member[1], jax.random.fold_in(rng, 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-7), grads, g1)
    x, n = jnp.asarray(batch["logmel"]), jnp.asarray(batch["lengths"])
    logits, out_len = jax.jit(two.apply)(params, x, n)
    for k in range(2):
        want, want_len = jax.jit(one.apply)(member[k], x, n)
        np.testing.assert_allclose(logits[k], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out_len, want_len)


def test_an_ensemble_decodes_each_member_then_votes():
    """Three members whose greedy paths read '1 2 3', '1 3' (the 2 deleted) and
    '1 2 4': the vote gives '1 2 3'; averaging their posteriors would not (the
    members' spikes sit on different frames)."""
    import dataclasses

    three = dataclasses.replace(_model(), members=3)
    paths = [[1, 0, 2, 0, 3, 0], [0, 1, 0, 0, 3, 0], [1, 1, 0, 2, 0, 4]]  # frame labels, 0 = blank
    logits = np.full((3, 1, 6, 11), -5.0, np.float32)
    for k, path in enumerate(paths):
        logits[k, 0, np.arange(6), path] = 5.0
    assert three.decode_labels(logits, np.array([6])) == [(1, 2, 3)]
    assert three.decode_labels(logits, np.array([6]), beam_width=4) == [(1, 2, 3)]
    assert three.decode_labels(logits[:, :, :4], np.array([4])) == [(1, 2)]  # lengths respected
    one = dataclasses.replace(three, members=1)
    assert one.decode_labels(logits[1], np.array([6])) == [(1, 3)]


@pytest.mark.slow
def test_prior_bias_is_each_members_own_fit_over_every_floor_and_decoding_adds_it(monkeypatch):
    """prior_bias fits each member apart (so a sub-ensemble's biases are the rows of its
    members), on the member's best paths under every floor pooled: it equals
    ctc.fit_label_bias on one network's logits computed floor by floor. decode adds a
    member's row to its logits before the vote; too few labels are refused."""
    import dataclasses

    from rnnlab import ctc
    from rnnlab.data import audio

    one = _model()
    two = dataclasses.replace(one, members=2)
    params = two.init(jax.random.key(5))
    rng = np.random.default_rng(6)
    batches = []
    for _ in range(4):
        b = _batch(rng)
        batches.append(audio.Batch(b["logmel"], b["lengths"], b["labels"], b["label_lengths"], [""] * 3))
    floors = (15.0, 30.0)
    monkeypatch.setattr(recipe, "PRIOR_MIN_LABELS", 0)
    bias = recipe.prior_bias(two, [recipe.floor_logits(two, params, b, floors) for b in batches])
    assert bias.shape == (2, 11) and np.any(bias != 0)
    for k in range(2):
        member = jax.tree.map(lambda a, k=k: a[k], params)
        logits = []
        for f in floors:
            for b in batches:
                lo, n = one.with_floor(f).apply(member, jnp.asarray(b.logmel_BxTxM), jnp.asarray(b.lengths_B))
                logits += [np.asarray(lo[i, :int(n[i])]) for i in range(3)]
        np.testing.assert_allclose(bias[k], ctc.fit_label_bias(logits), atol=1e-9)
        alone = recipe.prior_bias(one, [recipe.floor_logits(one, member, b, floors) for b in batches])
        np.testing.assert_allclose(alone[0], bias[k], atol=1e-9)
    b = batches[0]
    hyps = [[], [], []]
    for f in floors:
        lo, n = two.with_floor(f).apply(params, jnp.asarray(b.logmel_BxTxM), jnp.asarray(b.lengths_B))
        for i in range(3):
            hyps[i] += [ctc.greedy_decode(np.asarray(lo[k, i]) + bias[k], int(n[i])) for k in range(2)]
    vocab = audio.DIGITS
    assert recipe.decode(two, params, b, vocab, 0, floors, bias) == [vocab.decode(ctc.rover(h)) for h in hyps]
    with pytest.raises(ValueError, match=r"bias_ExV has shape \(1, 11\); this model's logits need \(2, 11\)"):
        recipe.decode(two, params, b, vocab, 0, floors, bias[:1])
    monkeypatch.setattr(recipe, "PRIOR_MIN_LABELS", 10**4)
    with pytest.raises(ValueError, match="prior matching needs at least 20000 decoded labels to count"):
        recipe.prior_bias(two, [recipe.floor_logits(two, params, b, floors) for b in batches])


def test_speaker_prior_on_too_few_held_out_clips_is_refused_before_anything_is_written(tmp_path):
    from experiments.speech_recognition import get_config

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=3)
    wd = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"eval.speaker_prior=True counts the digits heard in the held-out "
                                         r"adaptation takes, and jackson has 10: too few .* \(at least 200\)"):
        speech_study.train_and_evaluate(get_config(f"smoke,data.root={root},eval.speaker_prior=True"), wd)
    assert not os.path.exists(os.path.join(wd, "config.json"))


@pytest.mark.slow
def test_an_ensemble_run_trains_and_transcribes(tmp_path, capsys):
    repo, root, wd, _, r = _smoke_run(tmp_path, ",members=2")
    assert ", 2 ensemble members;" in r.stdout and json.load(open(os.path.join(wd, "result.json")))["finished"]
    t = _transcribe([f"--workdir={wd}", os.path.join(root, "3_jackson_0.wav")], capsys)
    assert t.returncode == 0, t.stderr[-3000:]
    assert set(t.stdout.strip().split("\t")[1]) <= set("0123456789 ")
    e = _transcribe([f"--workdir={wd}", "--evaluate"], capsys)
    assert e.returncode == 0, e.stderr[-3000:]
    lines = [x for x in e.stdout.strip().splitlines() if x.startswith(("member", "vote"))]
    assert [x.split(":")[0] for x in lines] == ["member 0", "member 1", "vote of the members"], e.stdout
    result = json.load(open(os.path.join(wd, "result.json")))  # the run's own evaluation: the same utterances
    assert f"WER {100 * result['eval_wer']:.2f}%" in lines[-1] and f"on {result['eval_utterances']} " in lines[-1]
    # a test-time noise floor is the run's model on floor-ed log-mels
    from experiments.speech import transcribe
    from rnnlab import ctc
    from rnnlab.data import audio
    model, params, vocab = transcribe.load_run(wd)
    floored = model.with_floor(15.0)
    assert model.features.floor_db == 0 and floored.features.floor_db == 15.0
    x = np.random.default_rng(0).normal(size=(2, 40, model.features.n_mels)).astype(np.float32) - 3.0
    n = jnp.asarray([40, 23])
    want, _ = model.apply(params, feat.noise_floor(floored.features, jnp.asarray(x), n), n)
    got, _ = floored.apply(params, jnp.asarray(x), n)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # several floors: every (floor, member) transcript voted on, floors in the given order
    batch = audio.Batch(x, np.asarray(n), np.zeros((2, 1), np.int32), np.zeros(2, np.int32), ["", ""])
    hyps = [[], []]
    for f in (15.0, 30.0):
        lo, out_n = model.with_floor(f).apply(params, jnp.asarray(x), n)
        for b in range(2):
            hyps[b] += [tuple(ctc.greedy_decode(np.asarray(lo[k, b]), int(out_n[b]))) for k in range(2)]
    assert recipe.decode(model, params, batch, vocab, 0, (15.0, 30.0)) == [
        vocab.decode(ctc.rover(h)) for h in hyps]
    f = _transcribe([f"--workdir={wd}", "--evaluate", "--test_floors=15,20,25",
              "--subsets=2"], capsys)
    assert f.returncode == 0 and "vote of the members: WER" in f.stdout, f.stderr[-3000:]
    # the one 2-member sub-ensemble is the ensemble: its parameters taken member by member give the same vote
    rates = {x.split(": ")[0]: x.split(": ")[1] for x in f.stdout.splitlines() if ": WER" in x}
    assert rates["members 0,1"] == rates["vote of the members"], f.stdout
    assert rates["mean of the 2-member votes"] in rates["members 0,1"], f.stdout
    one_each = transcribe.evaluate_run(wd, subsets=1)  # 1-member votes: each member alone, then their mean
    assert [m["members"] for m in one_each["subsets"]] == [[0], [1]]
    assert [m["wer"] for m in one_each["subsets"]] == [m["wer"] for m in one_each["members"]]
    assert one_each["subsets_mean"]["wer"] == pytest.approx(np.mean([m["wer"] for m in one_each["members"]]))
    too_many = _transcribe([f"--workdir={wd}", "--evaluate", "--subsets=3"], capsys)
    assert too_many.returncode != 0 and "subsets=3: this run has 2 members; give a size from 1 to 2" in \
        too_many.stderr and "Traceback" not in too_many.stderr, too_many.stderr[-3000:]
    bad = _transcribe([f"--workdir={wd}", "--evaluate", "--test_floors=15,loud"], capsys)
    assert bad.returncode != 0 and "eval.test_floors=['15', 'loud']: expected dB values" in bad.stderr
    assert "Traceback" not in bad.stderr and "usage:" in bad.stderr, bad.stderr[-3000:]
    # the evaluation utterances are drawn with eval.seed when set, else with the run's seed: one eval seed
    # scores runs of several training seeds on the same utterances
    config = transcribe.read_config(wd)
    data = speech_task.load_data(config, wd)

    def refs(seed, eval_seed):
        c = ml_collections.ConfigDict(config.to_dict())
        c.seed, c.eval.seed = seed, eval_seed
        return [r for r, _ in recipe.evaluate(model, params, c, data, floors=())["examples"]]

    assert refs(0, 7) == refs(7, -1) == refs(3, 7) != refs(0, -1)
    config.eval.seed = -2
    with pytest.raises(ValueError, match=r"eval.seed=-2: expected a seed >= 0, or -1"):
        speech_task.eval_seed(config)
    o = _transcribe([f"--workdir={wd}", "--evaluate", "--utterances=3", "--eval_seed=7"], capsys)
    assert o.returncode == 0, o.stderr[-3000:]
    assert "scoring 3 held-out utterances of jackson drawn with seed 7;" in o.stdout, o.stdout
    assert o.stdout.count("on 3 utterances") == 3, o.stdout  # two members and the vote
    wav = os.path.join(root, "3_jackson_0.wav")
    w = _transcribe([f"--workdir={wd}", wav, "--eval_seed=7"], capsys)
    assert w.returncode != 0 and "use them with --evaluate" in w.stderr
    n = _transcribe([f"--workdir={wd}", "--evaluate", "--eval_seed=-3"], capsys)
    assert n.returncode != 0 and "eval.seed=-3: expected a seed >= 0, or -1" in n.stderr and "Traceback" not in n.stderr
    m = _transcribe([f"--workdir={os.path.join(root, 'no_such_run')}", wav], capsys)
    assert m.returncode != 0 and "no_such_run has no config.json: pass the --workdir of a speech" in m.stderr
    assert "Traceback" not in m.stderr and "usage:" in m.stderr, m.stderr[-3000:]
    # prior matching on a smoke run's 10 adaptation takes, or on one file: too few digits to count, said so
    for args in (["--evaluate", "--adapted"], [wav]):
        p = _transcribe([f"--workdir={wd}", "--speaker_prior", *args], capsys)
        assert p.returncode != 0 and "prior matching needs at least 200 decoded labels to count" in p.stderr
        assert "Traceback" not in p.stderr and "usage:" in p.stderr, p.stderr[-3000:]
    # prior matching reads the held-out speaker's audio: asked for without --adapted it is refused
    p = _transcribe([f"--workdir={wd}", "--speaker_prior", "--evaluate"], capsys)
    assert p.returncode != 0 and "that is test-time adaptation; add --adapted" in p.stderr, p.stderr[-3000:]
    # a run whose evaluations use prior matching (as fsdd_vote4_gru's) still transcribes a file or two: for
    # files it is asked for, not inherited
    with open(os.path.join(wd, "config.json")) as f:
        saved = json.load(f)
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump({**saved, "eval": {**saved["eval"], "speaker_prior": True}}, f)
    q = _transcribe([f"--workdir={wd}", wav], capsys)
    assert q.returncode == 0 and q.stdout.startswith(wav + "\t"), q.stderr[-3000:]
    # with the threshold lowered: the vote and each member decoded with the biases (a member's row each)
    import dataclasses
    from unittest import mock
    config.eval.seed, config.eval.speaker_prior = -1, True
    with mock.patch.object(recipe, "PRIOR_MIN_LABELS", 0):
        prior = transcribe.evaluate_run(wd, floors=(), config=config, subsets=1, adapted=True)
        bias = recipe.held_out_prior(model, params, config, data, ())
        alone = [recipe.evaluate(dataclasses.replace(model, members=1), jax.tree.map(lambda a, k=k: a[k], params),
                                 config, data, floors=(), adapted=True) for k in range(2)]
        inductive = transcribe.evaluate_run(wd, floors=(), config=config)  # eval.speaker_prior: adaptation only
        # the prior is fitted on the adaptation takes: its bias is the one fitted there, not on the test takes
        test_fit = recipe.prior_bias(model, [recipe.floor_logits(model, params, b, ())
                                             for b in recipe.held_out_clips(config, data)])
        adapt_fit = recipe.prior_bias(model, [recipe.floor_logits(model, params, b, ())
                                              for b in recipe.held_out_clips(config, data, bank=data.adapt)])
    assert prior["speaker_prior"] and all(m["speaker_prior"] for m in prior["members"] + prior["subsets"])
    assert [m["wer"] for m in prior["members"]] == [m["wer"] for m in alone]  # the row of each member = its own fit
    assert prior == {**recipe.evaluate(model, params, config, data, floors=(), bias_ExV=bias, adapted=True),
                     "members": prior["members"], "subsets": prior["subsets"], "subsets_mean": prior["subsets_mean"]}
    assert "speaker_prior" not in inductive and "speaker_prior" not in inductive["members"][0]
    with pytest.raises(ValueError, match="a prior bias is test-time adaptation"):
        recipe.evaluate(model, params, config, data, floors=(), bias_ExV=bias)
    np.testing.assert_array_equal(bias, adapt_fit)
    assert not np.allclose(bias, test_fit)


@pytest.mark.slow
def test_speech_step_benchmark_times_each_front_end_on_the_same_batches(tmp_path, capsys):
    """benchmarks/speech_step.py end to end on the smoke config (no timing asserted beyond 'positive')."""
    sys.path.insert(0, speech_task.REPO_ROOT)
    from benchmarks import speech_step

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=3)
    out = speech_step.main(["--quick", "--root", root, "--batches", "2", "--repeats", "2",
                            "--front_ends", "3:2:16;3:4:16;3:2:16,3:2:16", "--json", str(tmp_path / "s.json")])
    assert json.load(open(tmp_path / "s.json"))["peer"] == "3:2:16" == out["peer"]
    rows = out["results"]
    assert [(r["conv"], r["subsampling"]) for r in rows] == [("3:2:16", 2), ("3:4:16", 4), ("3:2:16,3:2:16", 4)]
    assert rows[0]["parameters"] == rows[1]["parameters"] < rows[2]["parameters"]  # a stride changes no kernel
    for r in rows:
        assert [len(t) for t in r["times_ms"]] == [2, 2] and all(x > 0 for t in r["times_ms"] for x in t)
        assert r["speed_ratio_vs_peer"] == rows[0]["step_ms"] / r["step_ms"]
    assert rows[0]["speed_ratio_vs_peer"] == 1.0
    assert "| 3:4:16 | x4 |" in capsys.readouterr().out


@pytest.mark.slow
def test_speech_step_benchmark_times_each_native_implementation_with_its_own_settings(tmp_path, capsys, monkeypatch):
    """--implementations: every front end x implementation, each traced under its own rnnlab.native
    settings (seen by the layers it traces, then restored), the first row the peer."""
    sys.path.insert(0, speech_task.REPO_ROOT)
    from benchmarks import speech_step
    from rnnlab import native

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=3)
    seen = []
    settings = native.settings
    monkeypatch.setattr(native, "settings", lambda: seen.append(settings()) or settings())
    out = speech_step.main(["--quick", "--root", root, "--batches", "1", "--repeats", "1", "--front_ends", "3:2:16",
                            "--implementations", "before,padding,now"])
    rows = out["results"]
    assert [r["implementation"] for r in rows] == ["before", "padding", "now"] == out["implementations"]
    assert [r["name"] for r in rows] == ["3:2:16 before", "3:2:16 padding", "3:2:16 now"]
    assert out["peer_implementation"] == "before" and rows[0]["speed_ratio_vs_peer"] == 1.0
    assert {s[1:] for s in seen} == {(False, "sequential"), (True, "sequential"), (True, "sequential_unrolled")}
    assert native.settings()[1:] == (True, native.VMAP_METHOD_DEFAULT)
    assert "| 3:2:16 padding | x2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="choose from before, padding, now"):
        speech_step.main(["--quick", "--root", root, "--implementations", "now,fast"])


def _train_steps(model, tx, state, batches, grouped=None, ids=None):
    """``train_step`` on each batch (lr 1e-2, the rng of step i, EMA 0.9): in one program (of the members
    ``ids`` of a sliced model), or by ``grouped``."""
    metrics = []
    for i, b in enumerate(batches):
        rng = jax.random.fold_in(jax.random.key(9), i)
        if grouped is None:
            state, m = speech_task.train_step(model, tx, state, b, jnp.float32(1e-2), rng, jnp.float32(0.9), ids)
        else:
            grouped.submit({"batch": b, "rng": rng}, jnp.float32(1e-2))
            m = grouped.collect()
        metrics.append(jax.tree.map(np.asarray, m))
    return (state if grouped is None else grouped.whole()), metrics


@pytest.mark.slow
@pytest.mark.parametrize("groups", [2, 4])
def test_member_threads_train_each_member_as_the_whole_program_does(groups, monkeypatch):
    """train.member_threads=2 (4) on four members: two groups of two (four of one), each its own
    program on its own thread. Every member draws the SpecAugment masks it draws in the whole (fold_in of its id in the
    whole) and is clipped and updated apart, so parameters, Adam moments, EMA and the logged
    metrics equal the one-program step's to float rounding; the groups' steps are traced with the
    native loop's threads shared among them, and the setting is restored between steps."""
    import dataclasses

    import optax

    from rnnlab import native

    model = dataclasses.replace(_model("gru"), members=4, spec_augment=(1, 3, 1, 4))
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
    config = ml_collections.ConfigDict({"seed": 3, "train": {"ema_decay": 0.9}})
    rng = np.random.default_rng(5)
    batches = [{k: jnp.asarray(v) for k, v in _batch(rng).items()} for _ in range(3)]
    whole, m_whole = _train_steps(model, tx, speech_task.initial_state(model, tx, config), batches)
    seen = []
    settings = native.settings
    monkeypatch.setattr(native, "settings", lambda: seen.append(native.current().thread_share) or settings())
    grouped = recipe.MemberThreads(model, tx, groups, speech_task.initial_state(model, tx, config), 0.9)
    k = 4 // groups
    assert grouped.model.sliced and grouped.model.members == k
    assert [ids.tolist() for ids in grouped.ids] == [list(range(g * k, g * k + k)) for g in range(groups)]
    split, m_split = _train_steps(model, tx, None, batches, grouped)
    grouped.close()
    assert native.current().thread_share == 1
    assert set(seen) == ({groups} if native.available() else set())  # the native layers, traced in the groups
    assert int(split["step"]) == int(whole["step"]) == 3
    close = functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-6)
    jax.tree.map(close, split, whole)
    for a, b in zip(m_split, m_whole, strict=True):
        assert set(a) == set(b)
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5), a, b)
    if groups != 2:
        return  # below: the members' own draws, whatever the grouping (checked once)
    # the members' own draws matter here: members 2 and 3 trained as if they were 0 and 1 end elsewhere

    def last_two(ids):
        part = {k: v if k == "step" else jax.tree.map(lambda a: jnp.array(a[2:]), v)
                for k, v in speech_task.initial_state(model, tx, config).items()}
        return _train_steps(model.slice_of(2), tx, part, batches, ids=jnp.asarray(ids))[0]["params"]

    def gap(p):
        return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b[2:]))))
                   for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(whole["params"]), strict=True))

    assert gap(last_two([2, 3])) < 1e-5 < 1e-4 < gap(last_two([0, 1]))
    with pytest.raises(ValueError, match=r"a slice of 5 members: this model has 4"):
        model.slice_of(5)


@pytest.mark.slow
def test_member_threads_run_resumes_exactly_and_bad_counts_are_refused(tmp_path, capsys):
    """A smoke run of four members on two threads, killed after its step-3 checkpoint (here: the step-6
    one removed) and run again, ends bitwise where the uninterrupted run ended; its checkpoints hold the
    whole ensemble, so one program resumes them too (to float rounding). A thread count that does not
    divide the members, or threads for one network, are refused before anything is written."""
    import orbax.checkpoint as ocp

    from experiments.speech_recognition import get_config

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=3)

    def final(wd):
        with ocp.StandardCheckpointer() as reader:
            return reader.restore(os.path.join(wd, "checkpoints", "6", "state"))

    def run(wd, threads):
        config = get_config(f"smoke,data.root={root},members=4,threads={threads}")  # threads: the shorthand
        return speech_study.train_and_evaluate(config, wd)

    wd = str(tmp_path / "run")
    first = run(wd, 2)
    assert ", 4 ensemble members (2 member threads);" in capsys.readouterr().out
    want = final(wd)
    assert first["finished"] and int(want["step"]) == 6 and jax.tree.leaves(want["params"])[0].shape[0] == 4
    for again in (2, 1):
        shutil.rmtree(os.path.join(wd, "checkpoints", "6"))
        os.remove(os.path.join(wd, "result.json"))
        assert run(wd, again)["finished"]
        got = final(wd)
        if again == 2:
            jax.tree.map(np.testing.assert_array_equal, got, want)
        else:
            jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5), got, want)
    for bad, message in [(",members=4,train.member_threads=3", r"train.member_threads=3 must divide model.members=4"),
                         (",train.member_threads=2", r"train.member_threads=2: this model is one network"),
                         (",members=2,train.member_threads=0", r"train.member_threads=0: expected a thread count")]:
        bad_wd = str(tmp_path / "bad")
        with pytest.raises(ValueError, match=message):
            speech_study.train_and_evaluate(get_config(f"smoke,data.root={root}{bad}"), bad_wd)
        assert not os.path.exists(os.path.join(bad_wd, "config.json"))


@pytest.mark.slow
def test_speech_step_benchmark_times_member_threads_beside_one_program(tmp_path, capsys):
    """--member_threads 1,2: the one-program step and the two-group one on the same batches, the
    first the peer; the groups' steps are traced with the native loop's threads shared, then restored.
    A count that does not divide the members gets the trainer's error."""
    sys.path.insert(0, speech_task.REPO_ROOT)
    from benchmarks import speech_step
    from rnnlab import native

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=3)
    out = speech_step.main(["--quick", "--root", root, "--batches", "1", "--repeats", "1", "--front_ends", "3:2:16",
                            "--members", "2", "--member_threads", "1,2"])
    rows = out["results"]
    assert [r["member_threads"] for r in rows] == [1, 2] and rows[0]["speed_ratio_vs_peer"] == 1.0
    assert native.current().thread_share == 1 and "| 3:2:16 member_threads=2 | x2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="train.member_threads=3 must divide model.members=2"):
        speech_step.main(["--quick", "--root", root, "--members", "2", "--member_threads", "3"])


def test_held_out_takes_split_into_disjoint_adaptation_and_test_halves_and_the_inductive_view_reads_neither(tmp_path):
    """The evaluation protocol (issue 35): a held-out speaker's takes 0..n/2-1 adapt, the rest are tested; the
    inductive test features are the recorded ones (no statistic of the held-out speaker: changing its adaptation
    audio changes nothing), the adapted ones are normalised with statistics of the adaptation takes only
    (recomputed here from numpy means over the frames, not through the code's own normalisation)."""
    from experiments.speech_recognition import get_config
    from rnnlab.data import audio

    root = _fake_fsdd(tmp_path / "rec", speakers=("george", "jackson"), takes=4)
    config = get_config(f"smoke,data.root={root},data.takes_per_digit=0,data.rate_norm=0,data.speaker_norm=meanvar")
    data = speech_task.load_data(config, str(tmp_path / "a"))
    assert sorted({c.index for c in data.adapt.clips}) == [0, 1] and sorted({c.index for c in data.test.clips}) == [2, 3]
    assert {c.speaker for c in data.adapt.clips + data.test.clips} == {"jackson"}
    assert {c.speaker for c in data.train.clips} == {"george"} and len(data.train.clips) == 40
    spec = speech_task.feature_spec(config)
    raw = audio.build_bank(data.test.clips, spec, trim_db=config.data.trim_db)
    np.testing.assert_array_equal(data.test.logmel_FxM, raw.logmel_FxM)  # inductive: as recorded
    adapt_raw = audio.build_bank(data.adapt.clips, spec, trim_db=config.data.trim_db).logmel_FxM.astype(np.float64)
    mean, std = adapt_raw.mean(axis=0), adapt_raw.std(axis=0)  # the adaptation takes' statistics, by hand
    want = (raw.logmel_FxM - mean) * (std.mean() / np.maximum(std, 1e-3)) + mean.mean()
    np.testing.assert_allclose(data.adapted_test.logmel_FxM, want, rtol=1e-5, atol=1e-5)
    # louder adaptation takes: the adapted view moves, the inductive one does not
    for c in data.adapt.clips:
        rate, w = scipy_wavfile.read(c.path)
        scipy_wavfile.write(c.path, rate, (w.astype(np.float64) * 0.25).astype(np.int16))
    other = speech_task.load_data(config, str(tmp_path / "b"))
    np.testing.assert_array_equal(other.test.logmel_FxM, data.test.logmel_FxM)
    assert not np.allclose(other.adapted_test.logmel_FxM, data.adapted_test.logmel_FxM, atol=1e-3)
    with pytest.raises(ValueError, match="held-out speaker jackson has one take per word"):
        speech_task.load_data(get_config(f"smoke,data.root={root},data.takes_per_digit=1"), str(tmp_path / "c"))
