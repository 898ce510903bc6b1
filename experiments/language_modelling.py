"""Language modelling: how well does a recurrent LM on characters or words do, trained
with truncated BPTT, evaluated in bits per character or perplexity, and sampled from?

Run (from the repository root; the same command on the same workdir resumes):
  python -m rnnlab.main --config=experiments/language_modelling.py[:VARIANT] --workdir=DIR
Keys after the variant or as flags: ':shakespeare_char,cell=gru', --config.optim.lr=1e-3.

Variants (results and curves: docs/lm/README.md; the run times below are the runs'
train_seconds in docs/lm/VARIANT.result.json):
  default           char-level 1x256 LSTM on the embedded corpus (Python's documentation
                    topics; no download), Adam 3e-3 cosine, 1200 steps of 32x100.
  smoke             a tiny model for seconds, for tests.
  shakespeare_char  2x256 LSTM, dropout 0.1, on ../shared/data/tinyshakespeare/input.txt
                    (90/5/5 split by characters), Adam 2e-3 cosine, 3000 steps of 32x100,
                    full-context validation (eval batch 1); about 23 min on 2 cores.
  ptb_small         Zaremba et al. 2014 "small": 2x200 LSTM, T=20, B=20, SGD lr 1.0, clip 5,
                    U(-0.1, 0.1) init, 13 epochs, lr halved each epoch after the 4th. PTB is
                    not shipped: give --config.data.source; the default source is the
                    WikiText-2 folder (train valid.txt[:3390], validate valid.txt[3390:],
                    test test.txt); about 22 min on 2 cores.
  pytorch_example   the PyTorch word_language_model defaults (emsize 200, nhid 200, 2-layer
                    LSTM, dropout 0.2, SGD lr 20, clip 0.25, bptt 35, batch 20, eval batch 10,
                    40 epochs, lr / 4 when validation does not improve) on the same WikiText-2
                    splits (vocabulary from all three, first-seen order); about 31 min on 2 cores.
"""

from __future__ import annotations

import ml_collections

from rnnlab import configs
from rnnlab.train import config as train_config

SHARED = "../shared/data"


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "rnnlab.tasks.lm:train_and_evaluate"  # the loop rnnlab.main calls: module:function(config, workdir)
    c.seed = 0  # params init, dropout masks and random window offsets derive from it
    c.init_from = ""  # warm start: a workdir or checkpoint folder to take parameters from

    c.data = d = ml_collections.ConfigDict()
    d.source = "embedded"  # 'embedded' | FILE.txt | FOLDER | 'hf:NAME[/CONFIG]' | saved HF dataset
    d.level = "char"  # 'char' | 'word'
    d.train_split = ""  # folder sources: FILE[lines] for each split, e.g. 'valid.txt[:3390]'
    d.valid_split = ""
    d.test_split = ""
    d.fractions = (0.9, 0.05, 0.05)  # single-text sources: train/valid/test share of characters
    d.vocab_order = "frequency"  # 'frequency' | 'first_seen' (PyTorch example's order)
    d.vocab_splits = ("train",)  # the splits the vocabulary is built from
    d.vocab_size = 0  # keep the N most frequent tokens (0: all)
    d.min_count = 1  # drop tokens seen fewer times (mapped to <unk>)
    d.errors = "strict"  # bytes that are not UTF-8: 'strict' (error) or 'replace' (U+FFFD)
    d.text_column = "text"  # Hugging Face datasets: the text column
    d.hf_config = ""  # Hugging Face datasets: the config name
    d.cache_dir = "~/.cache/rnnlab"  # encoded corpora as memory-mapped .npy ('' to disable)
    d.batch_size = 32  # B contiguous streams
    d.seq_len = 100  # T: truncated-BPTT window
    d.eval_batch_size = 10
    d.random_offset = False  # a random window offset per epoch
    d.doc_resets = True  # reset the carry at document starts

    c.model = m = ml_collections.ConfigDict()
    m.cell = "lstm"  # any module in rnnlab/cells
    m.cell_options = ""  # 'key=value,...' for the cell, e.g. 'forget_bias=0.0'
    m.d_embed = 64
    m.d_hidden = 256
    m.num_layers = 1
    m.tie = False  # tie the softmax to the embedding (projection added if widths differ)
    m.dropout_kind = "standard"  # of the three dropouts below: 'standard' | 'variational' (locked)
    m.input_dropout = 0.0  # on the embeddings
    m.dropout = 0.0  # between layers
    m.output_dropout = 0.0  # on the last layer's output
    m.recurrent_dropout = 0.0  # one mask per sequence on h (Gal & Ghahramani 2016)
    m.embed_dropout = 0.0  # drop whole words (AWD-LSTM)
    m.weight_drop = 0.0  # DropConnect on W_h (AWD-LSTM)
    m.init_scale = 0.0  # >0: every weight U(-s, s) (Zaremba et al. 2014)
    m.unroll = 1  # scan unroll factor
    m.compute_dtype = ""  # 'bfloat16': matmuls and gates in bfloat16 (accelerators); weights, optimizer, carries float32
    m.remat = False  # recompute activations in the backward pass (long T)

    c.optim = train_config.optim_config()
    c.train = train_config.train_config()
    c.train.num_epochs = 1
    c.generate = g = ml_collections.ConfigDict()
    g.length = 300  # tokens sampled at the end of the run (0: none)
    g.prompt = ""  # default: newline (char) or <eos> (word)
    g.temperature = 0.8
    g.top_k = 0
    return c


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, overrides = configs.parse_arg(arg)
    c = base_config()
    if variant == "default":
        c.model.update(d_embed=64, d_hidden=256, num_layers=1)
        c.data.update(batch_size=32, seq_len=100)
        c.optim.update(name="adam", lr=3e-3, clip_norm=1.0, schedule="cosine")
        c.train.update(num_steps=1200, log_every=50, eval_every=400)
    elif variant == "smoke":
        c.data.update(batch_size=4, seq_len=16, eval_batch_size=64, cache_dir="")
        c.model.update(d_embed=8, d_hidden=16)
        c.train.update(num_steps=20, log_every=5, eval_every=10, tensorboard=False)
        c.generate.length = 20
    elif variant == "shakespeare_char":
        # eval_batch_size=1: full-context validation (one stream, no cold starts mid-text)
        c.data.update(source=f"{SHARED}/tinyshakespeare/input.txt", batch_size=32, seq_len=100,
                      eval_batch_size=1)
        c.model.update(d_embed=64, d_hidden=256, num_layers=2, dropout=0.1)
        c.optim.update(name="adam", lr=2e-3, clip_norm=1.0, schedule="cosine")
        c.train.update(num_steps=3000, max_minutes=29.0, log_every=100, eval_every=500)
    elif variant in ("ptb_small", "pytorch_example"):
        c.data.update(source=f"{SHARED}/wikitext-2", level="word", train_split="valid.txt[:3390]",
                      valid_split="valid.txt[3390:]", test_split="test.txt", vocab_order="first_seen",
                      vocab_splits=("train", "valid", "test"), doc_resets=False)
        c.generate.update(length=30, temperature=1.0)
        if variant == "ptb_small":
            c.data.update(batch_size=20, seq_len=20, eval_batch_size=20)
            c.model.update(d_embed=200, d_hidden=200, num_layers=2, init_scale=0.1,
                           cell_options="forget_bias=0.0")
            c.optim.update(name="sgd", lr=1.0, clip_norm=5.0, schedule="zaremba", decay_factor=0.5,
                           decay_start_epoch=4)
            c.train.update(num_epochs=13, log_every=200)
        else:
            c.data.update(batch_size=20, seq_len=35, eval_batch_size=10)
            c.model.update(d_embed=200, d_hidden=200, num_layers=2, dropout=0.2, output_dropout=0.2,
                           input_dropout=0.2, cell_options="forget_bias=0.0,input_init='pytorch',"
                           "recurrent_init='pytorch',bias_init='pytorch'")
            c.optim.update(name="sgd", lr=20.0, clip_norm=0.25, schedule="plateau", plateau_factor=4.0)
            c.train.update(num_epochs=40, log_every=200)
    else:
        raise ValueError(
            f"unknown variant {variant!r} of language_modelling; choose default, smoke, shakespeare_char, "
            "ptb_small or pytorch_example"
        )
    for k, v in overrides.items():  # ':cell=gru' -> model.cell; dotted keys go anywhere
        key = k if "." in k else {"cell": "model.cell", "seed": "seed"}.get(k, k)
        configs.set_dotted(c, key, v)
    c.lock()
    return c


def sweep(add, cells=("lstm", "gru", "elman")):
    """Cells x seeds on the default variant; ``python -m launch run ... --cells=lstm,gru,mycell``
    compares other cells (any registered name)."""
    for cell in cells:
        for seed in (0, 1, 2):
            add(**{"model.cell": cell, "seed": seed})
