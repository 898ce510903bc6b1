"""Connectionist temporal classification (Graves et al. 2006): the loss with
padding masks, greedy (best-path) decoding, CTC prefix beam search with an
optional character language model, and error rates.

Label ids: 0 is the blank. The vocabulary is ``rnnlab.data.text.Vocab.for_ctc``
(the blank at id 0, so its ids are these labels: ``vocab.encode`` / ``vocab.decode``).

Decoding runs on the host in numpy (beam search is a loop over frames with
dictionaries of prefixes: it is sequential and branchy, not what XLA is for).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

BLANK = 0
Array = jax.Array
# An LM for beam search: prefix (labels, without blank) -> log P(next label | prefix)
# as an array over the label ids (entry 0, the blank, is ignored).
LMFn = Callable[[tuple[int, ...]], np.ndarray]


# ----------------------------------------------------------------------------- loss


def ctc_loss(logits_BxTxV: Array, lengths_B: Array, labels_BxU: Array, label_lengths_B: Array) -> Array:
    """-log P(labels | frames) per sequence, B. Frames at t >= lengths_B[b] and labels
    at u >= label_lengths_B[b] are padding: they change neither loss nor gradients.
    The softmax is taken in float32 at least (bf16 logits would lose the alphas)."""
    logits = logits_BxTxV.astype(jnp.promote_types(logits_BxTxV.dtype, jnp.float32))
    t_pad_BxT = (jnp.arange(logits.shape[1])[None] >= jnp.asarray(lengths_B)[:, None]).astype(logits.dtype)
    u_pad_BxU = (jnp.arange(labels_BxU.shape[1])[None] >= jnp.asarray(label_lengths_B)[:, None]).astype(logits.dtype)
    # Replace padded frames' logits by a constant so junk there (even NaN/Inf) cannot reach the gradients.
    logits = jnp.where(t_pad_BxT[..., None] > 0, 0.0, logits)
    return optax.ctc_loss(logits, t_pad_BxT, labels_BxU, u_pad_BxU, blank_id=BLANK)


# ----------------------------------------------------------------------------- decoding


def collapse(path: Sequence[int]) -> tuple[int, ...]:
    """The CTC map B: merge repeats, then drop blanks (a blank separates true repeats)."""
    out, prev = [], None
    for k in path:
        k = int(k)
        if k != prev and k != BLANK:
            out.append(k)
        prev = k
    return tuple(out)


def greedy_decode(logits_TxV: np.ndarray, length: int | None = None) -> tuple[int, ...]:
    """Best path: argmax per frame over the first ``length`` frames, collapsed."""
    logits_TxV = np.asarray(logits_TxV)
    n = logits_TxV.shape[0] if length is None else int(length)
    return collapse(np.argmax(logits_TxV[:n], axis=-1))


def best_path_counts(logits: Sequence[np.ndarray], bias_V: np.ndarray | None = None) -> np.ndarray:
    """How often best-path decoding (``greedy_decode`` of each T x V array, plus
    ``bias_V``) emits each label; entry 0 (the blank) is 0."""
    x = np.concatenate([np.asarray(lo, np.float32) for lo in logits])
    starts = np.zeros(len(x), bool)
    starts[np.cumsum([0] + [len(lo) for lo in logits[:-1]])] = len(x) > 0
    a = np.argmax(x if bias_V is None else x + np.asarray(bias_V, np.float32), axis=-1)
    emitted = (a != BLANK) & (starts | (a != np.roll(a, 1)))  # collapse's rule, each utterance apart
    out = np.bincount(a[emitted], minlength=x.shape[-1]).astype(np.float64)
    out[BLANK] = 0.0
    return out


def fit_label_bias(logits: Sequence[np.ndarray], prior: np.ndarray | None = None, *, iters: int = 30,
                   step: float = 0.5, min_labels: int = 0) -> np.ndarray:
    """Output biases (V,) that make best-path decoding of the unlabelled ``logits``
    (T x V arrays) emit each non-blank label in proportion to ``prior`` (default:
    all equally often): prior matching, an unsupervised adaptation of a model's label
    priors to a new domain (cf. Saerens et al. 2002, Neural Computation 14:21) for
    when the labels' frequencies there are known, e.g. one speaker's digits.

    Each iteration decodes with the current biases, counts the labels (``best_path_counts``)
    and moves each label's bias by ``step * log(wanted / counted)`` (add-one smoothed);
    the non-blank biases are kept at mean 0 and the blank's at 0, so the balance
    between labels and blank, i.e. insertions against deletions, stays the model's.
    Deterministic. ``min_labels``: refuse (ValueError) when the undisturbed decoding
    emits fewer labels, since counts that small are noise, not the speaker's bias."""
    v = np.asarray(logits[0]).shape[-1] if len(logits) else 0
    if v < 2:
        raise ValueError("fit_label_bias needs at least one T x V array of logits with a blank and a label")
    want = np.full(v - 1, 1.0 / (v - 1)) if prior is None else np.asarray(prior, np.float64)
    if want.shape != (v - 1,) or np.any(want < 0) or not want.sum() > 0:
        raise ValueError(f"prior: expected {v - 1} non-negative weights (one per non-blank label), got {want}")
    want = want / want.sum()
    bias = np.zeros(v)
    for it in range(iters):
        counts = best_path_counts(logits, bias)[1:]
        if it == 0 and counts.sum() < min_labels:
            raise ValueError(f"prior matching needs at least {min_labels} decoded labels to count, got "
                             f"{int(counts.sum())}: give more of the speaker's unlabelled speech (several hundred "
                             "clips), or decode without it")
        bias[1:] += step * np.log((want * counts.sum() + 1.0) / (counts + 1.0))
        bias[1:] -= bias[1:].mean()
    return bias


def log_softmax(logits_TxV: np.ndarray) -> np.ndarray:
    x = np.asarray(logits_TxV, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def prefix_beam_search(logits_TxV: np.ndarray, beam_width: int = 8, *, length: int | None = None,
                       lm: LMFn | None = None, lm_weight: float = 0.0, insertion_bonus: float = 0.0,
                       prune: float = -12.0) -> tuple[int, ...]:
    """CTC prefix beam search (Hannun et al. 2014, arXiv:1408.2873): keeps the
    ``beam_width`` most probable label prefixes, each with the probability of all
    alignments ending in blank (p_b) and in its last label (p_nb), so alignments of
    one labelling are summed instead of competing (unlike best path).

    With ``lm``, extending a prefix by label c adds lm_weight * log P_lm(c | prefix)
    + insertion_bonus (shallow fusion). Labels with a frame log-probability below
    ``prune`` are skipped (they cannot change the top beams by much). Cost:
    O(T * beam_width * V) dictionary updates in Python."""
    lp_TxV = log_softmax(logits_TxV)
    n = lp_TxV.shape[0] if length is None else int(length)
    neg = -np.inf
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, neg)}  # prefix -> (log p_b, log p_nb)
    lm_cache: dict[tuple[int, ...], np.ndarray] = {}

    def lm_term(prefix, c):
        if lm is None or not lm_weight:
            return insertion_bonus
        if prefix not in lm_cache:
            lm_cache[prefix] = np.asarray(lm(prefix), np.float64)
        return lm_weight * lm_cache[prefix][c] + insertion_bonus

    for t in range(n):
        lp_V = lp_TxV[t]
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix, blank_ended, value):
            entry = nxt.setdefault(prefix, [neg, neg])
            entry[0 if blank_ended else 1] = np.logaddexp(entry[0 if blank_ended else 1], value)

        labels = [c for c in range(1, lp_V.shape[0]) if lp_V[c] > prune]
        for prefix, (p_b, p_nb) in beams.items():
            total = np.logaddexp(p_b, p_nb)
            add(prefix, True, total + lp_V[BLANK])
            for c in labels:
                new = prefix + (c,)
                if prefix and c == prefix[-1]:
                    add(prefix, False, p_nb + lp_V[c])  # repeat without a blank between: merged
                    add(new, False, p_b + lp_V[c] + lm_term(prefix, c))  # a true repeat needs the blank
                else:
                    add(new, False, total + lp_V[c] + lm_term(prefix, c))
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_width]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    return max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0]


def lm_from_rnn(model, params, *, bos: int, label_to_lm: Sequence[int]) -> LMFn:
    """Adapter for a character ``rnnlab.models.lm.LM`` (the language-modelling study):
    log P(next label | prefix), re-running the LM over ``bos`` + the prefix (short
    transcripts; cache is by prefix in the beam search). ``label_to_lm[c]`` is the LM
    token id of CTC label c (index 0, the blank, unused)."""
    to_lm = np.asarray(label_to_lm)

    @jax.jit  # one compile per prefix length
    def next_log_probs(tokens_1xT):
        logits, _ = model.apply(params, tokens_1xT, model.initial_carries(1))
        return jax.nn.log_softmax(logits[0, -1].astype(jnp.float32))

    def fn(prefix: tuple[int, ...]) -> np.ndarray:
        out = np.asarray(next_log_probs(jnp.asarray([[bos, *to_lm[list(prefix)]]], jnp.int32)))[to_lm]
        out[BLANK] = 0.0
        return out

    return fn


# ----------------------------------------------------------------------------- system combination


def _align(a: Sequence, b: Sequence) -> list[tuple[int | None, int | None]]:
    """A minimum-edit alignment of a and b as (index in a or None, index in b or None)
    pairs in order; ties prefer a match/substitution, then a deletion from a."""
    n, m = len(a), len(b)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j - 1] + (a[i - 1] != b[j - 1]), cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    pairs, i, j = [], n, m
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (a[i - 1] != b[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]


def rover(hyps: Sequence[Sequence[int]], weights: Sequence[float] | None = None) -> tuple[int, ...]:
    """Combine several systems' label sequences by voting (ROVER, Fiscus 1997): each
    hypothesis is aligned (minimum edits) to the word network built from those before
    it; every slot of the network collects one vote per system, a label or 'nothing';
    the output keeps, per slot, the label with the largest total weight when it beats
    'nothing'. Ties go to the earlier system (list the most trusted first).

    Averaging CTC frame posteriors instead fails: independently trained models emit
    their label spikes at different frames, the average is blank everywhere the
    spikes do not overlap, and whole words are deleted."""
    if not hyps:
        return ()
    weights = [1.0] * len(hyps) if weights is None else list(weights)
    slots: list[dict] = [{h: weights[0]} for h in hyps[0]]  # label (None: nothing) -> votes
    for k in range(1, len(hyps)):
        best = [max(s, key=lambda lab, s=s: (s[lab], lab is not None)) for s in slots]
        new: list[dict] = []
        for i, j in _align(best, hyps[k]):
            if i is None:  # a label no earlier system has here: a new slot they all vote 'nothing' for
                new.append({None: sum(weights[:k]), hyps[k][j]: weights[k]})
            else:
                s = dict(slots[i])
                lab = None if j is None else hyps[k][j]
                s[lab] = s.get(lab, 0.0) + weights[k]
                new.append(s)
        slots = new
    out = []
    for s in slots:
        order = sorted(s.items(), key=lambda kv: -kv[1])  # stable: the first system's label wins ties
        if order[0][0] is not None:
            out.append(order[0][0])
    return tuple(out)


# ----------------------------------------------------------------------------- error rates


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions each cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus-level CER (characters, spaces excluded), WER (whitespace-separated
    words) and string accuracy (exact match of the word sequence): total edits
    over total reference length, as in sclite."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    char_e = char_n = word_e = word_n = exact = 0
    for r, h in zip(refs, hyps, strict=True):
        rc, hc = r.replace(" ", ""), h.replace(" ", "")
        rw, hw = r.split(), h.split()
        char_e, char_n = char_e + edit_distance(rc, hc), char_n + len(rc)
        word_e, word_n = word_e + edit_distance(rw, hw), word_n + len(rw)
        exact += rw == hw
    return {"cer": char_e / max(char_n, 1), "wer": word_e / max(word_n, 1),
            "string_accuracy": exact / max(len(refs), 1), "utterances": len(refs)}
