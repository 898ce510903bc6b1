"""benchmarks/layers.py runs end to end on a tiny shape and writes its JSON.
A smoke test only: no timing is asserted beyond 'positive'."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "layers.py"


@pytest.mark.slow
def test_layers_benchmark_quick(tmp_path):
    out = tmp_path / "layers.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "KERAS_BACKEND": "jax"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeats", "1", "--warmup", "1", "--gap-ms", "0",
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| shape (BxTxDxH) |" in proc.stdout  # the Markdown table
    assert "rnnlab speed ratio vs torch" in proc.stdout

    data = json.loads(out.read_text())
    rows = data["results"]
    got = {(r["cell"], r["mode"], r["impl"]) for r in rows}
    assert got == {(c, m, i) for c in ("lstm", "gru") for m in ("fwd", "fwdbwd")
                   for i in ("rnnlab", "torch", "flax", "keras")}
    for r in rows:
        assert len(r["times_ms"]) == 1
        assert r["median_ms"] > 0 and all(t > 0 for t in r["times_ms"])
        assert r["first_call_ms"] > 0
        if r["impl"] == "torch":
            assert r["compile_ms"] is None
        else:
            assert r["compile_ms"] > 0
        assert r["check"]["dx_rel_err"] <= 1e-3 and r["check"]["loss_rel_err"] <= 1e-3  # one computation
        assert r["memory_bytes"] is not None and r["memory_bytes"] >= 0
    assert {(s["cell"], s["mode"]) for s in data["summary"]} == {(c, m) for c in ("lstm", "gru") for m in ("fwd", "fwdbwd")}
    for s in data["summary"]:
        for peer in ("torch", "flax", "keras"):
            assert s[f"rnnlab_speed_ratio_vs_{peer}"] > 0


@pytest.mark.slow
def test_memory_and_compile_benchmark_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory_and_compile.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "memory_and_compile.json").read_text())
    impls = [r["impl"] for r in data["memory"]]
    assert impls == ["rnnlab remat=True", "rnnlab remat=False", "torch.nn.LSTM"]
    for r in data["memory"]:
        assert r["peak_rss_bytes"] > 0 and r["loss"] > 0
    jax_rows = data["memory"][:2]
    assert all(r["xla_planned_bytes"] > 0 for r in jax_rows)
    assert data["compile"]["best_s"] > 0
    assert "| setting |" in (tmp_path / "memory_and_compile.md").read_text()


@pytest.mark.slow
def test_generation_benchmark_quick(tmp_path):
    out = tmp_path / "gen.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--quick", "--json", str(out)],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["rnnlab_tokens_per_s"] > 0 and r["torch_tokens_per_s"] > 0
        assert len(r["times_s"]["rnnlab"]) == len(r["times_s"]["torch"]) == 1


@pytest.mark.slow
def test_accelerator_benchmark_smoke(tmp_path, capsys):
    """benchmarks/accelerator.py --smoke on this CPU: every section runs and is written, ratios are
    timings of computations checked equal (float32 layers: layers.py's agreement check)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accelerator

    assert accelerator.main(["--smoke", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "accelerator.json").read_text())
    assert rep["smoke"] and rep["device"]["platform"] == "cpu"
    kinds = {(s["dtype"], s["cell"]) for s in rep["layer_summaries"]}
    assert kinds == {("float32", "lstm"), ("float32", "gru"), ("bfloat16", "lstm")}
    assert {"torch", "flax", "rnnlab_xla"} <= set(rep["layer_peers"])
    assert all(s["rnnlab_speed_ratio_vs_torch"] > 0 for s in rep["layer_summaries"])
    assert {r["cell"] for r in rep["scans"]} == {"mingru", "lru", "rglru"} and rep["copy_gb_s"] > 0
    assert all(r["bytes_moved"] == 2 * r["T"] * r["B"] * r["H"] * 4 for r in rep["scans"])
    assert rep["lm"]["rnnlab_tokens_per_s"] > 0 and rep["lm"]["torch_tokens_per_s"] > 0
    assert "## pytorch_example LM training step" in (tmp_path / "accelerator.md").read_text()


@pytest.mark.slow
def test_card_cost_benchmark_smoke(tmp_path):
    """benchmarks/card_cost.py at the smoke budget: a row per (cell, task) at the card's own matched
    width, the ratios against the first cell, and the Markdown table of the JSON."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import card_cost

    from experiments import card

    out = str(tmp_path / "cost")
    assert card_cost.main(["--cells", "gru,mlstm:heads=4", "--budget", "smoke", "--tasks", "adding",
                           "--repeats", "1", "--out", out]) == 0
    rows = json.loads(open(out + ".json").read())["rows"]
    assert [(r["cell"], r["task"]) for r in rows] == [("gru", "adding"), ("mlstm:heads=4", "adding")]
    assert rows[1]["width"] == card.get_config("adding@smoke,cell=mlstm,cell_options=heads=4").model.d_hidden
    assert rows[0]["step_ratio_to_gru"] == 1.0 and all(r["step_seconds"] > 0 for r in rows)
    assert f"| mlstm:heads=4 | adding | {rows[1]['width']} |" in open(out + ".md").read()
