"""Every experiment config builds for every variant, is locked, and rejects
unknown keys and variants."""

import importlib

import pytest

LM_VARIANTS = ["default", "smoke", "shakespeare_char", "ptb_small", "pytorch_example"]


@pytest.mark.parametrize("variant", LM_VARIANTS)
def test_language_modelling_variants_build_and_are_locked(variant):
    exp = importlib.import_module("experiments.language_modelling")
    c = exp.get_config(variant)
    assert c.trainer == "rnnlab.tasks.lm:train_and_evaluate"
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


# --------------------------------------------------------------------------- typed, one-line overrides


def _lm(arg: str = "smoke"):
    return importlib.import_module("experiments.language_modelling").get_config(arg)


@pytest.mark.parametrize("word, want", [("true", True), ("TRUE", True), ("1", True), ("Yes", True),
                                        ("false", False), ("False", False), ("0", False), ("no", False)])
def test_booleans_in_the_variant_argument_parse_strictly(word, want):
    assert _lm(f"smoke,train.tensorboard={word}").train.tensorboard is want


@pytest.mark.parametrize("word", ["ture", "flase", "2", "", "on"])
def test_a_boolean_typo_is_refused_not_read_as_false(word):
    with pytest.raises(ValueError, match=rf"train.tensorboard='{word}' is not a boolean; use one of true/false"):
        _lm(f"smoke,train.tensorboard={word}")


def test_a_mistyped_key_is_one_line_with_the_closest_key():
    from rnnlab import configs

    with pytest.raises(configs.ConfigKeyError) as e:
        _lm("smoke,train.tensorbord=1")
    assert str(e.value) == "config has no key 'train.tensorbord'; did you mean 'train.tensorboard'?"
    assert isinstance(e.value, KeyError)  # callers catching KeyError still do
    with pytest.raises(KeyError, match=r"'trian.log_every'; did you mean 'train.log_every'\?"):
        configs.set_dotted(_lm(), "trian.log_every", "3")
    with pytest.raises(KeyError, match=r"no key 'train.qqqqqq'; the keys under 'train' are: .*log_every"):
        configs.set_dotted(_lm(), "train.qqqqqq", "3")
    with pytest.raises(KeyError, match=r"no key 'optim.lr.x'"):  # a leaf is not a section
        configs.set_dotted(_lm(), "optim.lr.x", "3")


def test_a_value_of_the_wrong_type_is_one_line():
    with pytest.raises(ValueError, match=r"^config optim.lr='abc' is not a float \(the default is "):
        _lm("smoke,optim.lr=abc")
    with pytest.raises(ValueError, match=r"train.num_steps='1.5' is not a int"):
        _lm("smoke,train.num_steps=1.5")
    c = _lm("smoke,optim.lr=3e-4,train.num_steps=7,model.cell=gru")
    assert (c.optim.lr, c.train.num_steps, c.model.cell) == (3e-4, 7, "gru")


def test_tuple_fields_take_semicolon_separated_items_of_the_defaults_type():
    from rnnlab import configs

    c = _lm("smoke,data.fractions=0.8;0.1;0.1")  # ',' would end the override in the variant argument
    assert c.data.fractions == (0.8, 0.1, 0.1)
    configs.set_dotted(c, "data.fractions", "0.7, 0.2, 0.1")  # ',' where no variant string splits it
    assert c.data.fractions == (0.7, 0.2, 0.1)
    assert configs.parse_tuple("", (1,)) == () and configs.parse_tuple("a;b", ()) == ("a", "b")
    # str() of a tuple (a sweep's override passed on as text) reads back as the tuple
    assert configs.parse_tuple(str((0, 100, 1500)), (1,)) == (0, 100, 1500)
    assert configs.parse_tuple(str(("a", "b")), ("x",)) == ("a", "b") and configs.parse_tuple("(0,)", (1,)) == (0,)
    assert configs.parse_tuple("0;500", ()) == (0, 500)  # an empty default: literals, else strings
    assert configs.parse_tuple("0;500;2000", (0,)) == (0, 500, 2000)
    assert configs.parse_tuple("yes;0", (False,)) == (True, False)
    with pytest.raises(ValueError, match=r"data.fractions\[1\]='x' is not a float"):
        configs.set_dotted(c, "data.fractions", "0.5;x")


def _main(tmp_path, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "rnnlab.main", *args, f"--workdir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SMOKE = "--config=experiments/language_modelling.py:smoke"


@pytest.mark.parametrize("args", [(SMOKE, "--config.train.tensorbord=1"), (SMOKE + ",train.tensorbord=1",)],
                         ids=["flag", "variant"])
def test_main_reports_a_mistyped_key_in_one_line_without_a_traceback(tmp_path, args):
    r = _main(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: config has no key 'train.tensorbord'; did you mean 'train.tensorboard'?"
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("args, message", [
    ((SMOKE + ",train.tensorboard=ture",), "error: config train.tensorboard='ture' is not a boolean"),
    ((SMOKE + ",optim.lr=abc",), "error: config optim.lr='abc' is not a float"),
    ((SMOKE, "--config.optim.lr=abc"), "flag --config.optim.lr=abc: could not convert string to float"),
    ((SMOKE, "--config.train.tensorboard=ture"), "Non-boolean argument to boolean flag"),
])
def test_main_reports_a_bad_value_in_one_line(tmp_path, args, message):
    r = _main(tmp_path, *args)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr  # absl adds 'Pass --helpshort ...'


def test_compute_dtype_switch_reaches_the_lm_and_the_sequence_models():
    """model.compute_dtype in the LM and synthetic-task configs: the stack computes in bfloat16, the
    readout comes back float32 (the loss's dtype); '' keeps float32 throughout."""
    import importlib

    import jax
    import jax.numpy as jnp

    from rnnlab.models import lm as lm_model
    from rnnlab.models import seq as seq_model

    lm_exp = importlib.import_module("experiments.language_modelling")
    gf_exp = importlib.import_module("experiments.gradient_flow")
    cfg = lm_exp.get_config("smoke,model.compute_dtype=bfloat16")
    model = lm_model.build(cfg.model, 11)
    params = model.init(jax.random.key(0))
    logits, _ = model.apply(params, jnp.zeros((2, 5), jnp.int32), model.initial_carries(2))
    assert model.stack.compute_dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert lm_model.build(lm_exp.get_config("smoke").model, 11).stack.compute_dtype is None
    gcfg = gf_exp.get_config("smoke,model.compute_dtype=bfloat16")
    seq = seq_model.build(gcfg.model, 2, 1, loss="mse", readout="all")
    ys = seq.apply(seq.init(jax.random.key(0)), jnp.zeros((5, 3, 2), jnp.float32))
    assert seq.stack.compute_dtype == jnp.bfloat16 and ys.dtype == jnp.float32
