"""A known answer: on a Markov-chain corpus the best possible cross-entropy is the
chain's entropy rate, in closed form. The trained LM must land within 2% of it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rnnlab import Stack
from rnnlab.data import markov, text
from rnnlab.models.lm import LM
from rnnlab.tasks import lm
from rnnlab.train.optim import make_optimizer


@pytest.mark.slow
def test_trained_lm_reaches_the_entropy_rate_of_a_markov_chain():
    chain = markov.random_chain(8, alpha=0.5, order=2, seed=0)  # needs 2 tokens of memory
    rate = markov.entropy_rate(chain)
    train_S = markov.sample(chain, 150_000, seed=1)
    test_S = markov.sample(chain, 20_000, seed=2)
    model = LM(8, 16, Stack("lstm", 16, 64))
    tx = make_optimizer(ml_collections.ConfigDict(
        dict(name="adam", clip_norm=1.0, momentum=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8)))
    batcher = text.TBPTTBatcher(train_S, batch_size=32, seq_len=50, seed=0)
    params = model.init(jax.random.key(0))
    state = jax.tree.map(jnp.array, {"params": params, "opt_state": tx.init(params),
                                     "carries": model.initial_carries(32), "step": jnp.asarray(0, jnp.int32)})
    for step in range(600):
        lr = 1e-2 if step < 400 else 2e-3
        state, _ = lm.train_step(model, tx, state, lm.device_batch(batcher.batch_at(step)),
                                    jnp.float32(lr), 0)
    nll = lm.evaluate(model, state["params"], text.EncodedSplit(test_S, np.zeros(test_S.shape, bool)), 10, 100)
    untrained = lm.evaluate(model, params, text.EncodedSplit(test_S, np.zeros(test_S.shape, bool)), 10, 100)
    assert untrained > 1.3 * rate  # the task is not trivially solved at init
    assert abs(nll - rate) / rate < 0.02, (nll, rate)
    # and it cannot beat the true conditionals by more than sampling noise
    assert nll > markov.cross_entropy(chain, test_S) - 0.01
