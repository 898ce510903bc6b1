"""Text generation and scoring with a trained ``LM``: sampling (temperature,
top-k, nucleus), greedy decoding, fixed-length beam search, log-likelihood.

Every decoder feeds the prompt through ``model.apply`` once (the prefill), then
runs a jit-compiled token loop (``rnnlab.scan.loop``) whose step is
``model.apply`` on a one-token window: one compile per (model, shapes, static
options), no Python per token.

    ids = sample(model, params, vocab.encode('The '), length=200, temperature=0.8, top_p=0.9)
    ids, log_prob = beam_search(model, params, prompt_ids, length=20, beam_width=5)
    nll, n = score(model, params, vocab.encode(text)); ppl = perplexity(model, params, ids)

Command line (loads the best checkpoint of a run, else the latest)::

    python -m rnnlab.generate --workdir=runs/lm --prompt='The ' --length=200 \\
        --temperature=0.8 --top_p=0.9 --num_samples=3 [--beam=5] [--score_text='...']
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab.cells._common import Array, Params
from rnnlab.data.text import EOS, Vocab, tokenize
from rnnlab.models.lm import LM
from rnnlab.scan import loop

# ----------------------------------------------------------------------------------------------
# Checks shared by the decoders
# ----------------------------------------------------------------------------------------------


def _check_model(model: LM) -> None:
    if model.stack.bidirectional:
        # The backward direction reads tokens that do not exist yet.
        raise ValueError("generation needs a causal (unidirectional) model; this stack is bidirectional")


def _check_ids(ids: Any, vocab_size: int, name: str) -> np.ndarray:
    """ids as a 1-D int32 array with every id in [0, V): jnp.take would silently clamp bad ids."""
    ids_S = np.asarray(ids)
    if ids_S.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {ids_S.shape}")
    if ids_S.size and not np.issubdtype(ids_S.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids_S.dtype}")
    if ids_S.size and (ids_S.min() < 0 or ids_S.max() >= vocab_size):
        raise ValueError(
            f"{name} has ids in [{ids_S.min()}, {ids_S.max()}], outside the vocabulary [0, {vocab_size})"
        )
    return ids_S.astype(np.int32)


def _check_prompt(model: LM, prompt_ids: Any) -> np.ndarray:
    _check_model(model)
    prompt_S = _check_ids(prompt_ids, model.vocab_size, "prompt_ids")
    if prompt_S.size == 0:
        raise ValueError(
            "prompt_ids is empty: generation starts from the model's prediction after a prompt. "
            "Give at least one token, e.g. vocab.encode('\\n') for a character model "
            "(a line start) or the '<eos>' id for a word model"
        )
    return prompt_S


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def sampling_logits(
    logits_BxV: Array, temperature: Array | float, top_k: Array | int = 0, top_p: Array | float = 1.0
) -> Array:
    """Logits whose softmax is the sampling distribution: divided by ``temperature``
    (> 0), then all but the ``top_k`` largest set to -inf (0: off), then all
    outside the nucleus set to -inf: the smallest set of most probable tokens
    whose probability (under the top-k distribution) is >= ``top_p`` (1.0: off;
    the top token is always kept). The order matches Hugging Face's warpers.
    Tokens tied with the last kept one are kept too (measure zero for real logits).
    All three may be traced: changing them does not recompile.
    """
    dtype = logits_BxV.dtype
    logits_BxV = logits_BxV / jnp.asarray(temperature, dtype)
    top_k, top_p = jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, dtype)
    # The sort costs O(V log V) per row per token (most of a token's time at V = 33k):
    # taken only when a filter is on; lax.cond runs one branch, and both stay traced.
    return jax.lax.cond((top_k > 0) | (top_p < 1.0), _filtered, lambda x, k, p: x, logits_BxV, top_k, top_p)


def _filtered(logits_BxV: Array, top_k: Array, top_p: Array) -> Array:
    dtype = logits_BxV.dtype
    vocab_size = logits_BxV.shape[-1]
    neg_inf = jnp.array(-jnp.inf, dtype)
    # One sort serves both rules; top-k by its k-th largest value rather than
    # lax.top_k, whose k must be static.
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)  # descending
    k = jnp.where((top_k > 0) & (top_k < vocab_size), top_k, vocab_size)
    kth_Bx1 = jax.lax.dynamic_slice_in_dim(sorted_BxV, k - 1, 1, axis=-1)
    sorted_BxV = jnp.where(sorted_BxV < kth_Bx1, neg_inf, sorted_BxV)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Exclusive cumsum (mass strictly before each token): token i is in the nucleus
    # iff the tokens before it hold < p, which always keeps i = 0.
    before_BxV = jnp.concatenate(
        [jnp.zeros_like(probs_BxV[:, :1]), jnp.cumsum(probs_BxV, axis=-1)[:, :-1]], axis=-1
    )
    # top_p >= 1 is "off" exactly, not up to the rounding of a cumsum near 1.
    keep_BxV = (before_BxV < top_p) | (top_p >= 1.0)
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    cutoff_Bx1 = jnp.maximum(cutoff_Bx1, kth_Bx1)
    return jnp.where(logits_BxV < cutoff_Bx1, neg_inf, logits_BxV)


def _at_least_f32(logits: Array) -> Array:
    # A bfloat16 compute policy gives bfloat16 logits: too coarse for softmax
    # tails, cumsums and beam scores summed over many steps.
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _prefill(model: LM, params: Params, prompt_S: Array, batch: int) -> tuple[Array, Params]:
    """Run the prompt once (batch 1) and broadcast: every row has the same prompt."""
    logits_1xSxV, carries = model.apply(params, prompt_S[None, :], model.initial_carries(1))
    widen = lambda a: jnp.broadcast_to(a, (batch,) + a.shape[1:])
    return widen(_at_least_f32(logits_1xSxV[:, -1])), jax.tree.map(widen, carries)


@functools.partial(jax.jit, static_argnames=("model", "length", "num_samples"))
def _sample_jit(
    model: LM, params: Params, prompt_S: Array, key: Array, temperature: Array, top_k: Array, top_p: Array,
    *, length: int, num_samples: int,
) -> Array:
    logits_BxV, carries = _prefill(model, params, prompt_S, num_samples)
    greedy = temperature == 0
    # Greedy is a traced switch, not a static one: greedy and sampled decoding of
    # one shape share a compile (the unused branch costs O(V) per step, nothing
    # next to the model). A safe temperature keeps that branch free of inf/nan.
    safe_temperature = jnp.where(greedy, 1.0, temperature)

    def step(state, t):
        logits_BxV, carries = state
        # One key per step (not split along the way): step t's draw depends only on (seed, t).
        filtered_BxV = sampling_logits(logits_BxV, safe_temperature, top_k, top_p)
        drawn_B = jax.random.categorical(jax.random.fold_in(key, t), filtered_BxV, axis=-1)
        tok_B = jnp.where(greedy, jnp.argmax(logits_BxV, axis=-1), drawn_B).astype(jnp.int32)
        # The last step's apply is wasted; cheaper than a second code path for it.
        logits_Bx1xV, carries = model.apply(params, tok_B[:, None], carries)
        return (_at_least_f32(logits_Bx1xV[:, 0]), carries), tok_B

    _, toks_TxB = loop(step, (logits_BxV, carries), jnp.arange(length, dtype=jnp.int32))
    return toks_TxB.T


def sample(
    model: LM,
    params: Params,
    prompt_ids: Any,
    *,
    length: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Continue a prompt ``num_samples`` times: int32 ``[num_samples, length]``
    (the continuation only, without the prompt).

    temperature: 0 gives greedy decoding (argmax; top_k/top_p then change nothing).
    top_k: keep the k most likely tokens (0: off). top_p: nucleus sampling
    (1.0: off). See ``sampling_logits`` for the exact rule.
    seed: samples are a pure function of (model, params, prompt, options, seed);
    the draw at step t uses ``fold_in(key(seed), t)``.
    Only length and num_samples are static: other options do not recompile.
    """
    prompt_S = _check_prompt(model, prompt_ids)
    if length < 0 or num_samples < 1:
        raise ValueError(f"need length >= 0 and num_samples >= 1, got length={length}, num_samples={num_samples}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (1: off), got {top_p}")
    out = _sample_jit(
        model, params, jnp.asarray(prompt_S), jax.random.key(seed), jnp.asarray(temperature, jnp.float32),
        jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32),
        length=int(length), num_samples=int(num_samples),
    )
    return np.asarray(out, dtype=np.int32)


def greedy(model: LM, params: Params, prompt_ids: Any, length: int) -> np.ndarray:
    """The most likely token at every step: int32 ``[length]``."""
    return sample(model, params, prompt_ids, length=length, temperature=0.0)[0]


# ----------------------------------------------------------------------------------------------
# Beam search
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "length", "beam_width"))
def _beam_jit(model: LM, params: Params, prompt_S: Array, *, length: int, beam_width: int):
    logits_ZxV, carries = _prefill(model, params, prompt_S, beam_width)
    vocab_size = logits_ZxV.shape[-1]
    # Z: the beam's hypotheses, beam_width of them. All start equal; only hypothesis 0
    # is live so the first step does not pick the same token Z times.
    score_Z = jnp.where(jnp.arange(beam_width) == 0, 0.0, -jnp.inf).astype(logits_ZxV.dtype)
    toks_ZxT = jnp.zeros((beam_width, length), jnp.int32)

    def step(state, t):
        logits_ZxV, carries, score_Z, toks_ZxT = state
        cand_ZV = (score_Z[:, None] + jax.nn.log_softmax(logits_ZxV, axis=-1)).reshape(-1)
        score_Z, flat_Z = jax.lax.top_k(cand_ZV, beam_width)  # sorted, best first
        parent_Z, tok_Z = flat_Z // vocab_size, (flat_Z % vocab_size).astype(jnp.int32)
        # Carries and histories follow their parent hypothesis (carry leaves are B x H, here Z x H).
        carries = jax.tree.map(lambda c: c[parent_Z], carries)
        toks_ZxT = toks_ZxT[parent_Z].at[:, t].set(tok_Z)
        logits_Zx1xV, carries = model.apply(params, tok_Z[:, None], carries)
        return (_at_least_f32(logits_Zx1xV[:, 0]), carries, score_Z, toks_ZxT), None

    (_, _, score_Z, toks_ZxT), _ = loop(
        step, (logits_ZxV, carries, score_Z, toks_ZxT), jnp.arange(length, dtype=jnp.int32)
    )
    return toks_ZxT[0], score_Z[0]


def beam_search(
    model: LM, params: Params, prompt_ids: Any, *, length: int, beam_width: int
) -> tuple[np.ndarray, float]:
    """Fixed-length beam search: the best continuation found, int32 ``[length]``,
    and its log-probability (nats) given the prompt.

    Width 1 is greedy decoding; width >= V**(length-1) is exact search. Between
    the two a wider beam usually, but not provably, finds a likelier sequence.
    """
    prompt_S = _check_prompt(model, prompt_ids)
    if length < 0 or beam_width < 1:
        raise ValueError(f"need length >= 0 and beam_width >= 1, got length={length}, beam_width={beam_width}")
    if length == 0:  # the loop body would still be traced, and index an empty history
        return np.zeros(0, np.int32), 0.0
    toks_T, log_prob = _beam_jit(model, params, jnp.asarray(prompt_S), length=int(length), beam_width=int(beam_width))
    return np.asarray(toks_T, dtype=np.int32), float(log_prob)


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model",))
def _window_nll(model: LM, params: Params, carries: Params, x_1xT: Array, y_1xT: Array) -> tuple[Array, Params]:
    logits_1xTxV, carries = model.apply(params, x_1xT, carries)
    logp_1xTxV = jax.nn.log_softmax(_at_least_f32(logits_1xTxV), axis=-1)
    return -jnp.take_along_axis(logp_1xTxV, y_1xT[..., None], axis=-1)[0, :, 0], carries


def score(model: LM, params: Params, ids: Any, *, start: int = 1, window: int = 1024) -> tuple[float, int]:
    """Negative log-likelihood of a text: ``(total_nll_nats, n_tokens)``.

    Token i is scored given tokens [0, i), from the initial carries; tokens before
    ``start`` (default 1: the first token has no prediction) only condition. E.g.
    ``start=len(prompt)`` on ``prompt + continuation`` scores the continuation.
    The text runs in windows of ``window`` tokens (carries passed on, the last
    window padded) so memory is O(window * V), not O(len * V). A text shorter
    than a window runs as one window padded to a power of two: texts of any
    length share log2(window) compiles, at most twice the work.
    """
    _check_model(model)
    ids_S = _check_ids(ids, model.vocab_size, "ids")
    if not 1 <= start <= max(ids_S.size, 1):
        raise ValueError(f"start must lie in [1, len(ids)={ids_S.size}], got {start}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n_pred = ids_S.size - 1  # predictions: inputs ids[:-1], targets ids[1:]
    if n_pred <= 0:
        return 0.0, 0
    t = min(window, 1 << (n_pred - 1).bit_length())
    n_windows = -(-n_pred // t)
    pad = n_windows * t - n_pred
    # Inputs and targets padded to whole windows, cut into windows of t steps below.
    x_S, y_S = np.pad(ids_S[:-1], (0, pad)), np.pad(ids_S[1:], (0, pad))
    carries = model.initial_carries(1)
    nll_parts = []
    for i in range(0, n_windows * t, t):
        x_T, y_T = x_S[i : i + t], y_S[i : i + t]
        nll_T, carries = _window_nll(model, params, carries, jnp.asarray(x_T[None]), jnp.asarray(y_T[None]))
        nll_parts.append(np.asarray(nll_T))
    # Per-token values in the model dtype, summed on the host in float64: a long
    # text's float32 sum would lose digits.
    nll_S = np.concatenate(nll_parts)[:n_pred].astype(np.float64)
    scored_S = nll_S[start - 1 :]
    return float(scored_S.sum()), int(scored_S.size)


def perplexity(model: LM, params: Params, ids: Any, *, start: int = 1, window: int = 1024) -> float:
    """exp(mean NLL per scored token); see ``score``."""
    nll, n = score(model, params, ids, start=start, window=window)
    if n == 0:
        raise ValueError("perplexity needs at least one scored token (ids longer than start)")
    return math.exp(nll / n)


# ----------------------------------------------------------------------------------------------
# Text <-> ids with clear errors
# ----------------------------------------------------------------------------------------------


def encode_text(vocab: Vocab, text: str) -> np.ndarray:
    """``vocab.encode`` with an error naming every out-of-vocabulary character
    (char level: always, since '<unk>' fed to a char model is rarely meant) or
    word (word level: only when the vocabulary has no '<unk>' to map it to)."""
    if vocab.level == "char":
        unknown = sorted(set(text) - vocab.stoi.keys())
        if unknown:
            raise ValueError(
                f"characters not in the vocabulary ({len(vocab)} tokens): {', '.join(map(repr, unknown))}"
            )
    elif vocab.unk_id is None:
        unknown = sorted(set(tokenize(text, "word")) - vocab.stoi.keys())
        if unknown:
            shown = ", ".join(map(repr, unknown[:20])) + (" ..." if len(unknown) > 20 else "")
            raise ValueError(f"{len(unknown)} words not in the vocabulary, which has no '<unk>': {shown}")
    return vocab.encode(text)


def encode_prompt(vocab: Vocab, text: str) -> np.ndarray:
    """Like ``encode_text``, but a word-level prompt that does not end in a newline
    ends mid-line: the '<eos>' that the tokenizer appends to the last line is
    dropped, so generation continues the line instead of starting a new one."""
    ids_S = encode_text(vocab, text)
    if vocab.level == "word" and not text.endswith("\n") and ids_S.size and vocab.stoi.get(EOS) == ids_S[-1]:
        ids_S = ids_S[:-1]
    return ids_S


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def load_for_inference(workdir: str) -> tuple[Any, LM, Params, Vocab]:
    """(config, model, params, vocab) of a trained language-model run: its
    ``config.json`` and ``vocab.json``, and the params of its best checkpoint
    (else its latest), e.g. ``_, model, params, vocab = load_for_inference('runs/lm')``."""
    import ml_collections

    from rnnlab.models import lm
    from rnnlab.train.checkpoint import load_params  # lazy: only the CLI needs checkpoints

    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"workdir: {cfg_path} not found; is {workdir} a training run's workdir?")
    with open(cfg_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    vocab = Vocab.load(os.path.join(workdir, "vocab.json"))
    model = lm.build(config.model, len(vocab.itos))
    like = jax.eval_shape(model.init, jax.random.key(0))
    return config, model, load_params(workdir, like), vocab


def load_and_generate(
    workdir: str,
    *,
    prompt: str = "\n",
    length: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    beam: int = 0,
    score_text: str | None = None,
    print_fn: Callable[[str], Any] = print,
) -> list[str]:
    """Load a run's best checkpoint (else its latest), print and return the
    generated texts (prompt included); with ``beam`` > 0 one beam-search text.
    ``score_text``: also print its NLL and perplexity (bits per character for char models).
    The default prompt '\\n' is a line start at both levels (words: '<eos>')."""
    _, model, params, vocab = load_for_inference(workdir)
    prompt_S = encode_prompt(vocab, prompt)
    if prompt_S.size == 0:
        raise ValueError("--prompt is empty; give at least one token, e.g. --prompt='\\n' (a line start)")
    texts = []
    if beam > 0:
        ids_T, log_prob = beam_search(model, params, prompt_S, length=length, beam_width=beam)
        texts.append(vocab.decode(np.concatenate([prompt_S, ids_T])))
        print_fn(f"--- beam search (width {beam}), log-prob {log_prob:.4f} nats ---\n{texts[-1]}")
    else:
        ids_BxT = sample(
            model, params, prompt_S, length=length, num_samples=num_samples,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        )
        for i, ids_T in enumerate(ids_BxT):
            texts.append(vocab.decode(np.concatenate([prompt_S, ids_T])))
            print_fn(f"--- sample {i} ---\n{texts[-1]}")
    if score_text is not None:
        nll, n = score(model, params, encode_text(vocab, score_text))
        if n == 0:
            print_fn("score_text: fewer than 2 tokens, nothing to score")
        else:
            line = f"score_text: {n} tokens, NLL {nll / n:.4f} nats/token, perplexity {math.exp(nll / n):.3f}"
            if vocab.level == "char":
                line += f", {nll / n / math.log(2):.4f} bits/char"
            print_fn(line)
    return texts


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    load_and_generate(
        f.workdir, prompt=f.prompt, length=f.length, temperature=f.temperature, top_k=f.top_k,
        top_p=f.top_p, num_samples=f.num_samples, seed=f.seed, beam=f.beam, score_text=f.score_text,
    )


def _define_flags() -> None:
    """Flags exist only when this module runs as a program: importing it must not
    claim flag names in the global absl registry."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory holding the checkpoints.", required=True)
    flags.DEFINE_string("prompt", "\n", "Text to continue (default: a line start).")
    flags.DEFINE_integer("length", 200, "Tokens to generate.")
    flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 = greedy.")
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0 = off).")
    flags.DEFINE_integer("num_samples", 1, "Independent samples.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("beam", 0, "Beam width; > 0 runs beam search instead of sampling.")
    flags.DEFINE_string("score_text", None, "Also report the NLL / perplexity of this text.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
