"""Generation speed: rnnlab.generate.sample against a token-by-token PyTorch loop.

    python benchmarks/generation.py                       # batch 1 and 64, 200 tokens, 5 rounds
    python benchmarks/generation.py --batches 1 --length 500 --vocab 10000
    python benchmarks/generation.py --quick               # tiny: what the smoke test runs

The model is the language_modelling.py ``pytorch_example`` architecture
(embedding 200, 2-layer LSTM of 200 units, untied decoder, vocabulary 33,278 as
WikiText-2) in both libraries, randomly initialised (speed does not depend on
the weights). Each call generates ``--length`` tokens for a batch, from a
one-token prompt, sampling at temperature 1 from the full softmax:

  * rnnlab: ``rnnlab.generate.sample`` (prefill, then ONE jit-compiled token loop;
    compile time reported apart, then the compiled program is timed);
  * torch:  the loop of PyTorch's word_language_model ``generate.py``: per token,
    ``model(input, hidden)``, ``softmax``, ``torch.multinomial``, under
    ``torch.no_grad()`` (benchmarks/pytorch_word_lm.py's ``RNNModel``).

Rounds alternate the two (round-robin); reported: median tokens/s (batch x length
/ seconds) and rnnlab's speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg: str) -> None:
    print(msg, flush=True)


def build_rnnlab(vocab: int, emb: int, hidden: int, layers: int):
    import jax

    sys.path.insert(0, ROOT)
    from experiments import language_modelling
    from rnnlab.models import lm as lm_lib

    config = language_modelling.get_config("pytorch_example")
    config.unlock()
    config.model.update(d_embed=emb, d_hidden=hidden, num_layers=layers)
    model = lm_lib.build(config.model, vocab)
    return model, model.init(jax.random.key(0))


def build_torch(vocab: int, emb: int, hidden: int, layers: int):
    import torch

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from pytorch_word_lm import RNNModel

    torch.manual_seed(0)
    model = RNNModel(vocab, emb, hidden, layers, dropout=0.2)
    model.eval()
    return model


def torch_generate(model, batch: int, length: int):
    import torch

    hidden = model.init_hidden(batch)
    inp = torch.zeros((1, batch), dtype=torch.long)
    out = torch.empty((length, batch), dtype=torch.long)
    with torch.no_grad():
        for t in range(length):
            log_probs, hidden = model(inp, hidden)  # (1 * batch, V) log-softmax scores
            inp = torch.multinomial(log_probs.exp(), 1).T  # (1, batch)
            out[t] = inp[0]
    return out


def main(argv=None) -> int:
    sys.path.insert(0, ROOT)
    from rnnlab import allocator

    allocator.configure()  # as rnnlab.main does; one process, so for both peers
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,64")
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--vocab", type=int, default=33278)
    p.add_argument("--emb", type=int, default=200)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=os.cpu_count())
    p.add_argument("--json", help="write every number here")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.length, args.vocab, args.emb, args.hidden, args.repeats = "1,4", 8, 50, 8, 8, 1
    import jax
    import torch

    from rnnlab import generate

    torch.set_num_threads(args.torch_threads)
    model, params = build_rnnlab(args.vocab, args.emb, args.hidden, args.layers)
    tmodel = build_torch(args.vocab, args.emb, args.hidden, args.layers)
    prompt = np.zeros((1,), np.int32)
    rows = []
    log(f"generation: V={args.vocab} emb={args.emb} {args.layers}x{args.hidden} LSTM, {args.length} tokens, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for batch in (int(b) for b in args.batches.split(",")):
        t0 = time.perf_counter()
        generate.sample(model, params, prompt, length=args.length, num_samples=batch)
        first = time.perf_counter() - t0  # compile + one run
        times = {"rnnlab": [], "torch": []}
        torch_generate(tmodel, batch, args.length)  # warm-up
        for i in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(generate.sample(model, params, prompt, length=args.length, num_samples=batch,
                                                  seed=i))
            times["rnnlab"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch_generate(tmodel, batch, args.length)
            times["torch"].append(time.perf_counter() - t0)
        tok = batch * args.length
        row = {"batch": batch, "length": args.length, "rnnlab_first_call_s": first, "times_s": times,
               "rnnlab_tokens_per_s": tok / statistics.median(times["rnnlab"]),
               "torch_tokens_per_s": tok / statistics.median(times["torch"])}
        row["rnnlab_speed_ratio_vs_torch"] = row["rnnlab_tokens_per_s"] / row["torch_tokens_per_s"]
        log(f"batch {batch}: rnnlab {row['rnnlab_tokens_per_s']:.0f} tokens/s (first call incl. compile {first:.1f} s), "
            f"torch {row['torch_tokens_per_s']:.0f} tokens/s: speed ratio {row['rnnlab_speed_ratio_vs_torch']:.2f}")
        rows.append(row)
    lines = ["| batch | tokens | rnnlab tokens/s | torch tokens/s | rnnlab speed ratio |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['length']} | {r['rnnlab_tokens_per_s']:.0f} | {r['torch_tokens_per_s']:.0f} | "
              f"{r['rnnlab_speed_ratio_vs_torch']:.2f} |" for r in rows]
    log("\n" + "\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "loadavg": os.getloadavg(), "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
