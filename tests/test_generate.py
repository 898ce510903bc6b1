"""Generation: sampling matches the model's distribution, greedy/beam/score match
step-by-step references written here, seeds are reproducible."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rnnlab import generate
from rnnlab.data.text import Vocab
from rnnlab.layers import Stack
from rnnlab.models.lm import LM

V = 7
MODEL = LM(vocab_size=V, d_embed=5, stack=Stack("lstm", 5, 8))
PROMPT = np.array([1, 4, 2], np.int32)


_SHAPES = jax.eval_shape(MODEL.init, jax.random.key(0))


def _params(seed: int, scale: float = 1.0):
    """Random float32 params, N(0, scale^2): far from uniform logits, so argmaxes
    are well separated and sampling distributions are not flat. (numpy draws:
    eager JAX init would cost seconds of op compiles.)"""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), _SHAPES)


PARAMS = _params(0)
FLAT = _params(2)  # first-token distribution with max prob ~0.3: a chi-square test has power
# The references below step in Python; a compiled apply keeps them fast, not different.
APPLY = jax.jit(MODEL.apply)
T = 8  # one generation length (time steps) for most tests: each distinct length is a compile


def _first_logits(params, prompt=PROMPT) -> np.ndarray:
    logits_1xSxV, _ = APPLY(params, jnp.asarray(prompt)[None], MODEL.initial_carries(1))
    return np.asarray(logits_1xSxV[0, -1], np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max())
    return p / p.sum()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def _reference_greedy(params, prompt, length) -> list[int]:
    """One token at a time through model.apply, in Python."""
    logits, carries = APPLY(params, jnp.asarray(prompt)[None], MODEL.initial_carries(1))
    out = []
    for _ in range(length):
        tok = int(np.argmax(np.asarray(logits[0, -1])))
        out.append(tok)
        logits, carries = APPLY(params, jnp.array([[tok]], jnp.int32), carries)
    return out


def _continuation_log_prob(params, prompt, cont) -> float:
    nll, n = generate.score(MODEL, params, np.concatenate([prompt, cont]), start=len(prompt))
    assert n == len(cont)
    return -nll


# --- greedy and its equivalents -------------------------------------------------------------


def test_greedy_equals_python_reference_loop():
    for seed in range(3):
        params = _params(seed)
        assert generate.greedy(MODEL, params, PROMPT, T).tolist() == _reference_greedy(params, PROMPT, T)


def test_tiny_temperature_and_top_k_1_equal_greedy():
    # num_samples=1 as in greedy: one compile serves greedy and sampling of a shape
    g = generate.greedy(MODEL, PARAMS, PROMPT, T)
    for seed in range(3):
        cold = generate.sample(MODEL, PARAMS, PROMPT, length=T, temperature=1e-6, seed=seed)
        top1 = generate.sample(MODEL, PARAMS, PROMPT, length=T, temperature=2.0, top_k=1, seed=seed)
        np.testing.assert_array_equal(cold, g[None])
        np.testing.assert_array_equal(top1, g[None])
    assert cold.dtype == np.int32 and cold.shape == (1, T)
    hot = generate.sample(MODEL, PARAMS, PROMPT, length=T, temperature=2.0, seed=0)
    assert not np.array_equal(hot, g[None])  # the same compile really samples


def test_seeds_reproduce_and_differ():
    kw = dict(length=T, num_samples=4, temperature=1.5)
    a = generate.sample(MODEL, PARAMS, PROMPT, seed=7, **kw)
    np.testing.assert_array_equal(a, generate.sample(MODEL, PARAMS, PROMPT, seed=7, **kw))
    assert not np.array_equal(a, generate.sample(MODEL, PARAMS, PROMPT, seed=8, **kw))
    assert len({tuple(r) for r in a}) > 1  # rows of one call are independent draws


# --- sampled frequencies vs the model's distribution ----------------------------------------

N_DRAWS = 20000


def _first_token_counts(**kw) -> np.ndarray:
    ids = generate.sample(MODEL, FLAT, PROMPT, length=1, num_samples=N_DRAWS, seed=11, **kw)
    return np.bincount(ids[:, 0], minlength=V)


def _chisquare_on(counts: np.ndarray, probs: np.ndarray) -> None:
    kept = probs > 0
    assert counts[~kept].sum() == 0, f"sampled tokens outside the support: {counts}"
    expected = probs[kept] / probs[kept].sum() * counts.sum()
    p_value = stats.chisquare(counts[kept], expected).pvalue
    assert p_value > 1e-3, (counts, expected)


def test_sampling_frequencies_match_softmax_with_temperature():
    for temperature in (1.0, 0.7):
        probs = _softmax(_first_logits(FLAT) / temperature)
        assert probs.max() < 0.9  # a distribution worth testing, not a near-delta
        _chisquare_on(_first_token_counts(temperature=temperature), probs)


def test_top_k_frequencies_match_renormalised_top_k():
    logits = _first_logits(FLAT)
    probs = _softmax(logits)
    probs[np.argsort(-logits)[3:]] = 0.0
    _chisquare_on(_first_token_counts(top_k=3), probs)


def test_top_p_frequencies_match_nucleus():
    probs = _softmax(_first_logits(FLAT))
    order = np.argsort(-probs)
    cum = np.cumsum(probs[order])
    top_p = (cum[1] + cum[2]) / 2  # strictly between: the nucleus is the top 3, no rounding doubt
    nucleus = probs.copy()
    nucleus[order[3:]] = 0.0
    _chisquare_on(_first_token_counts(top_p=top_p), nucleus)
    # p below the top token's mass keeps only the top token
    assert (_first_token_counts(top_p=cum[0] / 2) == np.eye(V, dtype=int)[order[0]] * N_DRAWS).all()


def test_sampling_logits_rules():
    rule = jax.jit(generate.sampling_logits)
    logits = jnp.array([[3.0, 1.0, 2.0, 0.0]], jnp.float32)
    out = np.asarray(rule(logits, np.float32(2.0), top_k=2, top_p=np.float32(1.0)))
    np.testing.assert_allclose(out, [[1.5, -np.inf, 1.0, -np.inf]])
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(rule(logits, np.float32(1.0), top_k=0, top_p=np.float32(1.0))), logits)
    # top_p applies after top_k, to the renormalised top-k distribution
    p_top = np.float32(_softmax(np.array([3.0, 2.0]))[0])
    assert np.isfinite(np.asarray(rule(logits, np.float32(1.0), top_k=2, top_p=p_top + 1e-3))).sum() == 2
    assert np.isfinite(np.asarray(rule(logits, np.float32(1.0), top_k=2, top_p=p_top - 1e-3))).sum() == 1


# --- beam search ------------------------------------------------------------------------------


def test_beam_width_1_equals_greedy():
    for seed in range(3):
        params = _params(seed)
        ids, log_prob = generate.beam_search(MODEL, params, PROMPT, length=T, beam_width=1)
        g = generate.greedy(MODEL, params, PROMPT, T)
        np.testing.assert_array_equal(ids, g)
        np.testing.assert_allclose(log_prob, _continuation_log_prob(params, PROMPT, g), rtol=1e-5)


def test_wider_beam_at_least_greedy_and_strictly_better_somewhere():
    """Not a theorem for beam search, but it holds on these fixed seeds; and on at
    least one of them greedy is suboptimal and the beam strictly improves on it."""
    gains = []
    for seed in range(6):
        params = _params(seed)
        g = generate.greedy(MODEL, params, PROMPT, T)
        ids, log_prob = generate.beam_search(MODEL, params, PROMPT, length=T, beam_width=4)
        np.testing.assert_allclose(log_prob, _continuation_log_prob(params, PROMPT, ids), rtol=1e-5)
        gains.append(log_prob - _continuation_log_prob(params, PROMPT, g))
    assert min(gains) >= -1e-5, gains
    assert max(gains) > 1e-3, gains


def test_beam_as_wide_as_all_prefixes_is_exact_search():
    length = 3
    params = _params(3)
    ids, log_prob = generate.beam_search(MODEL, params, PROMPT, length=length, beam_width=V ** (length - 1))
    seqs_BxT = np.array(list(itertools.product(range(V), repeat=length)), np.int32)
    # B: every continuation of T tokens; full_BxT: the prompt, then the continuation
    full_BxT = np.concatenate([np.tile(PROMPT, (len(seqs_BxT), 1)), seqs_BxT], axis=1)
    logits, _ = APPLY(params, jnp.asarray(full_BxT[:, :-1]), MODEL.initial_carries(len(seqs_BxT)))
    logp = np.apply_along_axis(_log_softmax, -1, np.asarray(logits))
    tail = len(PROMPT) - 1
    lp_B = np.take_along_axis(logp[:, tail:], seqs_BxT[..., None], axis=-1)[..., 0].sum(-1)
    np.testing.assert_array_equal(ids, seqs_BxT[np.argmax(lp_B)])
    np.testing.assert_allclose(log_prob, lp_B.max(), rtol=1e-5)


# --- scoring ----------------------------------------------------------------------------------


def test_score_equals_python_reference():
    ids = np.random.default_rng(5).integers(0, V, 41).astype(np.int32)
    carries, total = MODEL.initial_carries(1), 0.0
    for prev, nxt in zip(ids[:-1], ids[1:], strict=True):
        logits, carries = APPLY(PARAMS, jnp.array([[prev]], jnp.int32), carries)
        total -= _log_softmax(np.asarray(logits[0, 0]))[nxt]
    for window in (1024, 16, 1):  # one window; padded last window; one token per window
        nll, n = generate.score(MODEL, PARAMS, ids, window=window)
        assert n == 40
        np.testing.assert_allclose(nll, total, rtol=1e-5)
    np.testing.assert_allclose(generate.perplexity(MODEL, PARAMS, ids), np.exp(total / 40), rtol=1e-5)
    assert generate.score(MODEL, PARAMS, ids[:1]) == (0.0, 0)


# --- errors and text handling ---------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="empty.*'\\\\n'"):
        generate.sample(MODEL, PARAMS, [], length=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate.greedy(MODEL, PARAMS, [1, V], 3)
    with pytest.raises(ValueError, match="top_p"):
        generate.sample(MODEL, PARAMS, PROMPT, length=3, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate.sample(MODEL, PARAMS, PROMPT, length=3, temperature=-1.0)
    bidi = LM(vocab_size=V, d_embed=5, stack=Stack("lstm", 5, 8, bidirectional=True))
    with pytest.raises(ValueError, match="bidirectional"):
        generate.beam_search(bidi, PARAMS, PROMPT, length=3, beam_width=2)  # refused before params are read


def test_encode_prompt_names_unknown_tokens():
    chars = Vocab(["a", "b", "\n", "<unk>"], level="char")
    np.testing.assert_array_equal(generate.encode_prompt(chars, "ab\n"), [0, 1, 2])
    with pytest.raises(ValueError, match="'x', 'z'"):
        generate.encode_prompt(chars, "azbx")  # char level: an error even though '<unk>' exists
    words = Vocab(["<unk>", "<eos>", "the", "cat"], level="word")
    np.testing.assert_array_equal(generate.encode_prompt(words, "the dog"), [2, 0])  # mid-line: no <eos>
    np.testing.assert_array_equal(generate.encode_prompt(words, "the cat\n"), [2, 3, 1])
    np.testing.assert_array_equal(generate.encode_text(words, "the cat"), [2, 3, 1])
    strict = Vocab(["<eos>", "the", "cat"], level="word", unk=None)
    with pytest.raises(ValueError, match="'dog'"):
        generate.encode_prompt(strict, "the dog cat")


def test_load_and_generate_with_a_stub_checkpoint(monkeypatch):
    vocab = Vocab([str(i) for i in range(V)], level="char", unk=None)
    monkeypatch.setattr(generate, "load_for_inference", lambda workdir: ({}, MODEL, PARAMS, vocab))
    lines = []
    texts = generate.load_and_generate(
        "unused", prompt="142", length=T, temperature=0.0, score_text="1423", print_fn=lines.append
    )
    g = "".join(map(str, generate.greedy(MODEL, PARAMS, PROMPT, T)))
    assert texts == ["142" + g] and "bits/char" in lines[-1]
    beam = generate.load_and_generate("unused", prompt="142", length=T, beam=1, print_fn=lines.append)
    assert beam == ["142" + g]


def test_load_for_inference_reads_a_workdir_config_vocab_and_checkpoint(tmp_path):
    """What the CLI loads: config.json, vocab.json and the params of the best/latest checkpoint."""
    import json

    from experiments import language_modelling
    from rnnlab.models import lm
    from rnnlab.train.checkpoint import Checkpointer

    config = language_modelling.get_config("smoke")
    vocab = Vocab([str(i) for i in range(V)], level="char", unk=None)
    model = lm.build(config.model, len(vocab))
    params = model.init(jax.random.key(3))
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps(config.to_dict()))
    vocab.save(wd / "vocab.json")
    ckpt = Checkpointer(str(wd), async_save=False)
    ckpt.save(5, {"params": params, "step": 5}, {"step": 5})
    ckpt.close()
    cfg, got_model, got_params, got_vocab = generate.load_for_inference(str(wd))
    assert cfg.model.cell == config.model.cell and got_model == model and got_vocab == vocab
    for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        generate.load_for_inference(str(tmp_path / "nothing"))
