"""A self-contained port of PyTorch's word_language_model example (pytorch/examples,
``word_language_model/{data,model,main}.py``), LSTM only, on the WikiText-2 layout
this project has (valid.txt and test.txt, no train.txt):

  train: the first ``--lines_train`` (3390) lines of valid.txt
  valid: the remaining lines of valid.txt (370)
  test:  test.txt

The vocabulary is built exactly as the example's ``data.py``: every line is
``line.split() + ['<eos>']``, words are added in first-seen order over train, then
valid, then test. Everything else is the example's defaults: emsize 200, nhid 200,
2-layer nn.LSTM, dropout 0.2, SGD lr 20 applied by hand after clip_grad_norm_(0.25),
bptt 35, batch 20, eval batch 10, lr / 4 when the validation loss does not improve,
the best model (by validation loss) is evaluated on test at the end. Differences
from the example: the best model is kept in memory (a state_dict copy) instead of
``torch.save`` to model.pt; no CUDA/MPS/Transformer/GRU/tied options; the data
slicing above; ``--max_batches``/``--max_eval_batches`` for smoke tests; a JSON
summary.

    python benchmarks/pytorch_word_lm.py                      # 40 epochs, as the example
    python benchmarks/pytorch_word_lm.py --epochs 1 --json /tmp/torch_lm.json
    python benchmarks/pytorch_word_lm.py --epochs 1 --max_batches 3 --max_eval_batches 3   # smoke

It is the PyTorch side of benchmarks/lm_vs_pytorch.py, which runs rnnlab's
``experiments/language_modelling.py:pytorch_example`` next to it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wikitext-2"  # ../shared/data/wikitext-2 from the repo root
EVAL_BATCH_SIZE = 10  # the example's eval_batch_size (a constant there too)


# ----------------------------------------------------------------------------- data.py


class Dictionary:
    def __init__(self):
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a text file as the example iterates them (``for line in f`` in text mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass --data_dir (a folder with valid.txt and test.txt)")
    with open(path, encoding="utf8") as f:
        return list(f)


class Corpus:
    """The example's Corpus with its train/valid/test files replaced by line slices:
    train = valid.txt[:lines_train], valid = valid.txt[lines_train:], test = test.txt."""

    def __init__(self, path: str | os.PathLike, lines_train: int = 3390):
        self.dictionary = Dictionary()
        valid_lines = read_lines(Path(path) / "valid.txt")
        if not 0 < lines_train < len(valid_lines):
            raise ValueError(f"--lines_train {lines_train} must be in (0, {len(valid_lines)}): valid.txt has "
                             f"{len(valid_lines)} lines and both train and valid need some")
        self.train = self.tokenize(valid_lines[:lines_train])
        self.valid = self.tokenize(valid_lines[lines_train:])
        self.test = self.tokenize(read_lines(Path(path) / "test.txt"))

    def tokenize(self, lines: list[str]) -> torch.Tensor:
        """Tokenizes lines of text (the example's ``tokenize``, given lines instead of a path)."""
        # Add words to the dictionary
        for line in lines:
            words = line.split() + ["<eos>"]
            for word in words:
                self.dictionary.add_word(word)

        # Tokenize file content
        idss = []
        for line in lines:
            words = line.split() + ["<eos>"]
            ids = []
            for word in words:
                ids.append(self.dictionary.word2idx[word])
            idss.append(torch.tensor(ids).type(torch.int64))
        return torch.cat(idss)


# ----------------------------------------------------------------------------- model.py


class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder (LSTM only)."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float = 0.5):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.init_weights()
        self.rnn_type = "LSTM"
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self) -> None:
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid))


# ----------------------------------------------------------------------------- main.py


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    # Work out how cleanly we can divide the dataset into bsz parts.
    nbatch = data.size(0) // bsz
    # Trim off any extra elements that wouldn't cleanly fit (remainders).
    data = data.narrow(0, 0, nbatch * bsz)
    # Evenly divide the data across the bsz batches.
    return data.view(bsz, -1).t().contiguous()


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def get_batch(source: torch.Tensor, i: int, bptt: int):
    seq_len = min(bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].view(-1)
    return data, target


def evaluate(model: RNNModel, data_source: torch.Tensor, bptt: int, max_batches: int = 0) -> float:
    """Mean NLL per target, as the example: sum of len(data) * batch mean, over len(data_source) - 1.
    ``max_batches`` > 0 (smoke tests only) stops early and divides by the rows actually seen."""
    # Turn on evaluation mode which disables dropout.
    model.eval()
    criterion = nn.NLLLoss()
    total_loss = 0.0
    rows = 0
    hidden = model.init_hidden(EVAL_BATCH_SIZE)
    with torch.no_grad():
        for batch, i in enumerate(range(0, data_source.size(0) - 1, bptt)):
            if max_batches and batch >= max_batches:
                return total_loss / rows
            data, targets = get_batch(data_source, i, bptt)
            output, hidden = model(data, hidden)
            hidden = repackage_hidden(hidden)
            total_loss += len(data) * criterion(output, targets).item()
            rows += len(data)
    return total_loss / (len(data_source) - 1)


def train(model: RNNModel, train_data: torch.Tensor, epoch: int, lr: float, args) -> int:
    """One epoch of the example's ``train()``; returns the number of batches run."""
    # Turn on training mode which enables dropout.
    model.train()
    criterion = nn.NLLLoss()
    total_loss = 0.0
    start_time = time.time()
    hidden = model.init_hidden(args.batch_size)
    n = 0
    for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
        if args.max_batches and batch >= args.max_batches:
            break
        data, targets = get_batch(train_data, i, args.bptt)
        # Starting each batch, we detach the hidden state from how it was previously produced.
        # If we didn't, the model would try backpropagating all the way to start of the dataset.
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()

        # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)

        total_loss += loss.item()
        n = batch + 1

        if batch % args.log_interval == 0 and batch > 0:
            cur_loss = total_loss / args.log_interval
            elapsed = time.time() - start_time
            print(f"| epoch {epoch:3d} | {batch:5d}/{len(train_data) // args.bptt:5d} batches | lr {lr:02.2f} | "
                  f"ms/batch {elapsed * 1000 / args.log_interval:5.2f} | "
                  f"loss {cur_loss:5.2f} | ppl {math.exp(cur_loss):8.2f}", flush=True)
            total_loss = 0
            start_time = time.time()
    return n


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data_dir", default=str(DEFAULT_DATA),
                   help="folder with valid.txt and test.txt (default: ../shared/data/wikitext-2 from the repo root)")
    p.add_argument("--lines_train", type=int, default=3390, help="train on valid.txt[:N], validate on valid.txt[N:]")
    p.add_argument("--emsize", type=int, default=200, help="size of word embeddings")
    p.add_argument("--nhid", type=int, default=200, help="number of hidden units per layer")
    p.add_argument("--nlayers", type=int, default=2, help="number of layers")
    p.add_argument("--lr", type=float, default=20, help="initial learning rate")
    p.add_argument("--clip", type=float, default=0.25, help="gradient clipping")
    p.add_argument("--epochs", type=int, default=40, help="upper epoch limit")
    p.add_argument("--batch_size", type=int, default=20, metavar="N", help="batch size")
    p.add_argument("--bptt", type=int, default=35, help="sequence length")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout applied to layers (0 = no dropout)")
    p.add_argument("--seed", type=int, default=1111, help="random seed")
    p.add_argument("--log-interval", "--log_interval", dest="log_interval", type=int, default=200, metavar="N",
                   help="report interval")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all CPUs)")
    p.add_argument("--json", metavar="OUT", help="write the summary (test ppl, wall time, per-epoch numbers) here")
    p.add_argument("--max_batches", type=int, default=0,
                   help="smoke tests: stop each training epoch after N batches (0: all)")
    p.add_argument("--max_eval_batches", type=int, default=0,
                   help="smoke tests: stop each evaluation after N batches (0: all; ppl then covers only those)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.max_batches < 0 or args.max_eval_batches < 0:
        p.error("--epochs and --threads must be >= 1, --max_batches/--max_eval_batches >= 0")
    return args


def main(argv=None) -> int:
    t_start = time.time()
    args = parse_args(argv)
    # the C allocator policy rnnlab.main applies, so that both sides of lm_vs_pytorch run under it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rnnlab import allocator

    allocator.configure()
    torch.set_num_threads(args.threads)
    # Set the random seed manually for reproducibility.
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)

    ###############################################################################
    # Load data
    ###############################################################################
    corpus = Corpus(args.data_dir, args.lines_train)
    train_data = batchify(corpus.train, args.batch_size)
    val_data = batchify(corpus.valid, EVAL_BATCH_SIZE)
    test_data = batchify(corpus.test, EVAL_BATCH_SIZE)
    ntokens = len(corpus.dictionary)
    print(f"vocab {ntokens}; tokens train {len(corpus.train):,}, valid {len(corpus.valid):,}, "
          f"test {len(corpus.test):,}; {len(range(0, train_data.size(0) - 1, args.bptt))} batches/epoch "
          f"({time.time() - t_start:.1f} s to here)", flush=True)

    ###############################################################################
    # Build the model
    ###############################################################################
    model = RNNModel(ntokens, args.emsize, args.nhid, args.nlayers, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())

    # Loop over epochs.
    lr = args.lr
    best_val_loss = None
    best_state = None
    epochs = []
    for epoch in range(1, args.epochs + 1):
        epoch_start_time = time.time()
        lr_used = lr
        n_batches = train(model, train_data, epoch, lr, args)
        train_seconds = time.time() - epoch_start_time
        val_loss = evaluate(model, val_data, args.bptt, args.max_eval_batches)
        seconds = time.time() - epoch_start_time
        print("-" * 89)
        print(f"| end of epoch {epoch:3d} | time: {seconds:5.2f}s | valid loss {val_loss:5.2f} | "
              f"valid ppl {_exp(val_loss):8.2f}")
        print("-" * 89, flush=True)
        # Save the model if the validation loss is the best we've seen so far.
        if not best_val_loss or val_loss < best_val_loss:
            best_state = copy.deepcopy(model.state_dict())
            best_val_loss = val_loss
        else:
            # Anneal the learning rate if no improvement has been seen in the validation dataset.
            lr /= 4.0
        epochs.append({"epoch": epoch, "lr": lr_used, "batches": n_batches, "train_seconds": train_seconds,
                       "seconds": seconds, "val_loss": val_loss, "val_ppl": _exp(val_loss)})

    # Load the best saved model.
    model.load_state_dict(best_state)

    # Run on test data.
    test_loss = evaluate(model, test_data, args.bptt, args.max_eval_batches)
    wall = time.time() - t_start
    print("=" * 89)
    print(f"| End of training | test loss {test_loss:5.2f} | test ppl {_exp(test_loss):8.2f}")
    print("=" * 89)
    print(f"total wall time {wall:.1f} s ({wall / 60:.2f} min) for {args.epochs} epochs", flush=True)

    if args.json:
        summary = {
            "implementation": "torch", "script": "benchmarks/pytorch_word_lm.py",
            "args": vars(args), "argv": sys.argv[1:] if argv is None else list(argv),
            "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "vocab_size": ntokens, "parameters": n_params,
            "tokens": {"train": len(corpus.train), "valid": len(corpus.valid), "test": len(corpus.test)},
            "num_epochs": args.epochs, "epochs": epochs,
            "val_ppl": [e["val_ppl"] for e in epochs], "epoch_seconds": [e["seconds"] for e in epochs],
            "best_val_loss": best_val_loss, "best_val_ppl": _exp(best_val_loss),
            "test_loss": test_loss, "test_ppl": _exp(test_loss), "wall_seconds": wall,
            "smoke": bool(args.max_batches or args.max_eval_batches),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
