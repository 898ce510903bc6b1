"""benchmarks/pytorch_word_lm.py (the PyTorch word_language_model port that
benchmarks/lm_vs_pytorch.py compares rnnlab with) runs end to end on the real
WikiText-2 files, and its data are exactly rnnlab's for the same spec: same
vocabulary (size and first-seen order) and the same token streams.
A smoke test: 3 training batches, 3 evaluation batches; nothing about quality is asserted."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pytorch_word_lm.py"
COMPARE = ROOT / "benchmarks" / "lm_vs_pytorch.py"
DATA = ROOT / ".." / "shared" / "data" / "wikitext-2"
SPLITS = {"train": "valid.txt[:3390]", "valid": "valid.txt[3390:]", "test": "test.txt"}

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent (WikiText-2 valid/test)")


def _load(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@needs_data
def test_torch_port_runs_and_writes_json(tmp_path):
    out = tmp_path / "torch_lm.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "1", "--max_batches", "3", "--max_eval_batches", "3",
         "--threads", "1", "--data_dir", str(DATA), "--json", str(out)],
        cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| end of epoch   1 |" in proc.stdout and "| End of training |" in proc.stdout
    data = json.loads(out.read_text())
    assert math.isfinite(data["test_ppl"]) and data["test_ppl"] > 1
    assert math.isfinite(data["test_loss"]) and data["wall_seconds"] > 0
    assert data["num_epochs"] == 1 and len(data["epochs"]) == 1 and data["epochs"][0]["batches"] == 3
    assert len(data["val_ppl"]) == 1 and math.isfinite(data["val_ppl"][0])
    assert data["epoch_seconds"][0] > 0 and data["smoke"] is True
    assert min(data["tokens"].values()) > 0 and data["vocab_size"] > 0


@needs_data
def test_torch_port_data_equal_rnnlab():
    from rnnlab.data import text

    port = _load(SCRIPT, "pytorch_word_lm")
    corpus = port.Corpus(DATA, 3390)
    ours = text.load_corpus(str(DATA), level="word", order="first_seen", vocab_splits=("train", "valid", "test"),
                            splits=SPLITS)
    assert len(corpus.dictionary) == len(ours.vocab)
    assert corpus.dictionary.idx2word == list(ours.vocab.itos)  # same ids, not just the same size
    itos = ours.vocab.itos
    for split in ("train", "valid", "test"):
        theirs = [corpus.dictionary.idx2word[i] for i in getattr(corpus, split).tolist()]
        mine = [itos[i] for i in np.asarray(ours[split].tokens_S).tolist()]
        assert theirs == mine, split


def test_compare_table_and_ratios():
    """lm_vs_pytorch's summary arithmetic and Markdown, on made-up runs (no training)."""
    cmp = _load(COMPARE, "lm_vs_pytorch")
    torch_run = {"implementation": "torch", "epochs": 2, "test_ppl": 200.0, "best_val_ppl": 210.0,
                 "process_seconds": 600.0, "internal_seconds": 590.0, "loadavg_start": [1.0, 1.0, 1.0],
                 "loadavg_end": [1.0, 1.0, 1.0]}
    rnnlab_run = {**torch_run, "implementation": "rnnlab", "test_ppl": 220.0, "process_seconds": 300.0,
                  "internal_seconds": 280.0}
    summary = cmp.summarize(torch_run, rnnlab_run)
    assert summary["ppl_ratio_rnnlab_over_torch"] == pytest.approx(1.1)
    assert summary["time_ratio_torch_over_rnnlab"] == pytest.approx(2.0)
    md = cmp.markdown(torch_run, rnnlab_run, summary, {"cpu_count": 2})
    assert "| implementation | epochs | test ppl |" in md
    assert "| rnnlab | 2 | 220.00 |" in md and "| torch | 2 | 200.00 |" in md
    assert "1.100" in md and "2.00" in md
