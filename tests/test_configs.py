"""Every experiment config builds for every variant, is locked, and rejects
unknown keys and variants."""

import importlib

import pytest

LM_VARIANTS = ["default", "smoke", "shakespeare_char", "ptb_small", "pytorch_example"]


@pytest.mark.parametrize("variant", LM_VARIANTS)
def test_language_modelling_variants_build_and_are_locked(variant):
    exp = importlib.import_module("experiments.language_modelling")
    c = exp.get_config(variant)
    assert c.trainer == "rnnlab.train:train_and_evaluate"
    with pytest.raises(AttributeError):
        c.optim.lrr = 1.0  # locked: a typo cannot create a key


def test_variant_args_and_errors():
    exp = importlib.import_module("experiments.language_modelling")
    assert exp.get_config("smoke,cell=gru").model.cell == "gru"
    assert exp.get_config("smoke,optim.lr=0.5").optim.lr == 0.5
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        exp.get_config("nope")
    with pytest.raises(KeyError, match="optim.lrr"):
        exp.get_config("smoke,optim.lrr=1")


def test_pytorch_example_matches_the_example_defaults():
    c = importlib.import_module("experiments.language_modelling").get_config("pytorch_example")
    assert (c.model.d_embed, c.model.d_hidden, c.model.num_layers) == (200, 200, 2)
    assert (c.model.input_dropout, c.model.dropout, c.model.output_dropout) == (0.2, 0.2, 0.2)
    assert (c.optim.name, c.optim.lr, c.optim.clip_norm, c.optim.schedule) == ("sgd", 20.0, 0.25, "plateau")
    assert (c.data.seq_len, c.data.batch_size, c.data.eval_batch_size, c.train.num_epochs) == (35, 20, 10, 40)
    assert not c.model.tie and c.data.vocab_order == "first_seen"
