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


def test_a_comma_inside_a_value_is_named_with_the_flag_to_use():
    """'model.spec_augment=2,10,2,8' in the config string splits into overrides; the
    stray '10' must not be reported as an unknown variant."""
    exp = importlib.import_module("experiments.speech_recognition")
    with pytest.raises(ValueError, match=r"'10' follows model.spec_augment='2'.*--config.model.spec_augment="):
        exp.get_config("fsdd,model.spec_augment=2,10,2,8")
    with pytest.raises(ValueError, match="two variants"):
        exp.get_config("fsdd,smoke")
    assert exp.get_config("smoke").data.test_speakers == "jackson"


def test_pytorch_example_matches_the_example_defaults():
    c = importlib.import_module("experiments.language_modelling").get_config("pytorch_example")
    assert (c.model.d_embed, c.model.d_hidden, c.model.num_layers) == (200, 200, 2)
    assert (c.model.input_dropout, c.model.dropout, c.model.output_dropout) == (0.2, 0.2, 0.2)
    assert (c.optim.name, c.optim.lr, c.optim.clip_norm, c.optim.schedule) == ("sgd", 20.0, 0.25, "plateau")
    assert (c.data.seq_len, c.data.batch_size, c.data.eval_batch_size, c.train.num_epochs) == (35, 20, 10, 40)
    assert not c.model.tie and c.data.vocab_order == "first_seen"
