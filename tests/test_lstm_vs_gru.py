"""experiments/lstm_vs_gru.py: widths matched to a parameter budget (against
closed-form counts and a brute-force search), the sweep covers the study and
its overrides survive the command line, the zoo takes every registered cell
(a new cell file included, with no edit) at every lr, with the study's adding
setting and a budget matched for the cell's layer count, the smoke variant
trains, the report picks learning rates on validation and gives the CIs scipy
gives (an MSE's clipped at 0), trials run through launch, and the zoo table
judges 'below baseline' and a zoo rerun renders the report again from report.json."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import lstm_vs_gru as exp
from rnnlab import cells
from rnnlab import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cell_count(cell: str, d: int, h: int) -> int:
    """Closed forms: W_x (D x G), W_h (H x G), one merged bias (G), G = gates x H;
    the GRU keeps b_hn apart (r multiplies it)."""
    gates = {"tanh": 1, "lstm": 4, "lstm_fb0": 4, "gru": 3}[cell]
    return gates * (h * (d + h) + h) + (h if cell == "gru" else 0)


@pytest.mark.parametrize("task,d_in,d_out", [("adding100", 2, 1), ("copy20", 10, 10), ("digits", 1, 10),
                                             ("smoke_lm", None, None)])
def test_widths_are_the_closest_to_the_budget(task, d_in, d_out):
    for cell in ("tanh", "lstm", "gru"):
        c = exp.get_config(f"{task},cell={cell}")
        budget = c.study.param_budget
        if d_in is None:  # LM: embedding V x E, the stack on E inputs, softmax H x V + V
            v, e = exp._vocab_size(c.data.source, c.data.level), c.model.d_embed

            def count(h, v=v, e=e, cell=cell):
                return v * e + _cell_count(cell, e, h) + h * v + v
        else:
            def count(h, cell=cell):
                return _cell_count(cell, d_in, h) + h * d_out + d_out
        best = min(range(1, 400), key=lambda h: (abs(count(h) - budget), h))  # brute force
        assert c.model.d_hidden == best, (task, cell)
        assert exp.parameter_count(c, best) == count(best)  # the model's own init agrees with the closed form
        assert abs(count(best) - budget) / budget < 0.06


def test_sweep_covers_the_study_and_overrides_resolve():
    added = []
    exp.sweep(lambda **kw: added.append(kw))
    keys = {(d["task"], d["cell"], d["lr"], d["seed"]) for d in map(lambda o: exp.describe(exp.resolve(o)), added)}
    expected = {(t, c, lr, s) for t in exp.STUDY_TASKS for c in exp.STUDY_CELLS for lr in exp.LRS for s in exp.SEEDS}
    expected |= {(t, "lstm_fb0", lr, s) for t in exp.FB0_TASKS for lr in exp.LRS for s in exp.SEEDS}
    assert keys == expected and len(added) == len(expected) == 126
    assert len(exp.SEEDS) >= 3 and len(exp.LRS) >= 2
    for o in added[::17]:  # the overrides rebuild exactly the config of the shorthand
        d = exp.describe(exp.resolve(o))
        direct = exp.get_config(f"{d['task']},cell={d['cell']},lr={d['lr']},seed={d['seed']}")
        assert exp.resolve(o).to_dict() == direct.to_dict()
    lm = [exp.resolve(o) for o in added if exp.describe(exp.resolve(o))["task"] == "char_lm"]
    assert lm and all(c.trainer == exp.LM_TRAINER for c in lm)
    shakespeare = os.path.exists(os.path.join(ROOT, exp.SHAKESPEARE))
    assert all(c.data.source == (exp.SHAKESPEARE if shakespeare else "embedded") for c in lm)


def test_zoo_takes_every_registered_cell_including_a_new_file(tmp_path, monkeypatch):
    (tmp_path / "toy_h3_cell.py").write_text("from rnnlab.cells.elman import init, initial_carry, step  # noqa: F401\n")
    monkeypatch.setattr(cells, "__path__", [*cells.__path__, str(tmp_path)])
    assert "toy_h3_cell" in cells.available()
    added = []
    exp.zoo(lambda **kw: added.append(kw))
    got = {(d["cell"], d["task"], d["lr"]) for d in (exp.describe(exp.resolve(o)) for o in added)}
    labels = {"elman": "tanh"}
    assert got == {(labels.get(n, n), t, lr) for n in cells.available() for t in exp.ZOO_TASKS for lr in exp.LRS}
    assert len(added) == len(got)
    toy = exp.resolve(next(o for o in added if o.get("model.cell") == "toy_h3_cell"))
    tanh = exp.get_config("zoo_adding100,cell=tanh")
    assert toy.model.d_hidden == tanh.model.d_hidden  # same parameters as elman: the same matched width


def test_zoo_adding_is_the_studys_adding100_with_paper_depth_at_the_budget():
    study = exp.get_config("adding100,cell=gru").to_dict()
    zoo = exp.get_config("zoo_adding100,cell=gru").to_dict()
    zoo["study"]["task"] = "adding100"
    assert zoo == study  # same steps, batch, optimizer, clipping, budget: only the name differs
    for cell, layers in exp.ZOO_LAYERS.items():
        for task in exp.ZOO_TASKS:
            c = exp.get_config(f"{task},cell={cell}")
            assert c.model.num_layers == layers
            one = exp.get_config(f"{task},cell={cell},layers=1")
            assert one.model.num_layers == 1 and one.model.d_hidden > c.model.d_hidden  # width follows the depth
            count = exp.parameter_count(c, c.model.d_hidden)
            assert abs(count - c.study.param_budget) <= abs(exp.parameter_count(c, c.model.d_hidden + 1)
                                                           - c.study.param_budget)
            assert abs(count - c.study.param_budget) / c.study.param_budget < 0.06
    assert exp.get_config("adding100,cell=lru").model.num_layers == 1  # the study itself is unchanged
    # 'below baseline' = more than 2 standard errors of a 500-sequence test MSE under 1/6
    e = np.random.default_rng(0).uniform(size=(200_000, 2)).sum(1) - 1
    se = np.std(e**2) / np.sqrt(exp.ADDING_TEST_SEQUENCES)
    assert exp.BELOW_BASELINE == pytest.approx(1 / 6 - 2 * se, rel=2e-3)


@pytest.mark.slow
def test_smoke_variant_trains_and_a_sweep_trial_runs_from_the_command_line(tmp_path):
    c = exp.get_config("smoke")
    summary = main_lib.trainer(c.trainer)(c, str(tmp_path / "smoke"))
    assert summary["finished"] and summary["parameters"] == exp.parameter_count(c, c.model.d_hidden)
    assert math.isfinite(summary["test_loss"])
    # the launcher's form: default variant + dotted overrides on the command line
    added = []
    exp.smoke(lambda **kw: added.append(kw))
    overrides = next(o for o in added if o.get("study.task") == "smoke_digits")
    wd = tmp_path / "trial"
    cmd = [sys.executable, "-m", "rnnlab.main", f"--config={exp.THIS_FILE}", f"--workdir={wd}",
           *[f"--config.{k}={v}" for k, v in overrides.items()]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.load(open(wd / "config.json"))
    assert written == json.loads(exp.resolve(overrides).to_json())
    assert "test_accuracy" in json.load(open(wd / "result.json"))


def _row(task, cell, lr, seed, valid, test):
    val_key, test_key = exp.METRICS[task][:2]
    return {"name": f"{task}_{cell}_{lr}_{seed}", "task": task, "cell": cell, "lr": lr, "seed": seed, "d_hidden": 8,
            "layers": 1,
            "finished": True, "parameters": 100, "tokens_per_s": 1.0, "curve": [], "curve_metric": "eval loss",
            "result": {val_key: valid, test_key: test}}


def test_summary_picks_lr_on_validation_and_gives_scipy_cis():
    rows = []
    rng = np.random.default_rng(0)
    # gru: lr 0.1 has the better validation, lr 0.01 the better test: validation must decide
    for s in range(3):
        rows.append(_row("digits", "gru", 0.1, s, 0.5 + 0.01 * s, 0.80 + 0.01 * s))
        rows.append(_row("digits", "gru", 0.01, s, 0.9, 0.99))
        rows.append(_row("digits", "tanh", 0.1, s, 1.5, 0.5 + 0.2 * rng.random()))
        rows.append(_row("digits", "lstm", 0.1, s, 0.6, 0.79 + 0.02 * s))
    summary = exp.summarize(rows)["digits"]
    gru = summary["cells"]["gru"]["best"]
    assert gru["lr"] == 0.1
    x = [0.80, 0.81, 0.82]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    assert gru["test"]["mean"] == pytest.approx(np.mean(x)) and gru["test"]["std"] == pytest.approx(np.std(x, ddof=1))
    assert (gru["test"]["ci_low"], gru["test"]["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # accuracy: higher is better; gru (0.81) beats lstm (0.80), their CIs overlap; tanh's are far below
    assert summary["winner"] == "gru" and summary["ranking"] == ["gru", "lstm", "tanh"]
    assert summary["overlapping"] == ["lstm"]


TINY = """from experiments.lstm_vs_gru import *  # noqa: F403 - the study, with a smaller grid
from experiments import lstm_vs_gru as _exp


def sweep(add):
    for cell in ("tanh", "gru"):
        for seed in (0, 1):
            add(**_exp.overrides("smoke", cell, 1e-2, seed))
"""


@pytest.mark.slow
def test_report_end_to_end(tmp_path):
    import launch

    tiny = tmp_path / "tiny_lstm_vs_gru.py"
    tiny.write_text(TINY)
    root, out = str(tmp_path / "runs"), str(tmp_path / "report")
    runs = launch.run_sweep(str(tiny), root, executor="inline")  # the study's runner is launch's (in this process)
    assert [r["state"] for r in runs] == ["finished"] * 4, runs
    rep = exp.report(root, out)
    for f in ("README.md", "results.csv", "trials.csv", "report.json", "curves_smoke.png"):
        assert os.path.getsize(os.path.join(out, f)) > 100, f
    tests = {}
    for name in os.listdir(root):
        if os.path.exists(os.path.join(root, name, "result.json")):
            d = exp.describe(json.load(open(os.path.join(root, name, "config.json"))))
            tests.setdefault(d["cell"], []).append(json.load(open(os.path.join(root, name, "result.json")))["test_loss"])
    for cell, values in tests.items():
        got = rep["summary"]["smoke"]["cells"][cell]["best"]["test"]
        low, high = stats.t.interval(0.95, 1, loc=np.mean(values), scale=stats.sem(values))
        assert got["mean"] == pytest.approx(np.mean(values)) and got["ci_high"] == pytest.approx(high)
        assert got["ci_low"] == pytest.approx(max(low, 0.0)) and got["clipped"] == (low < 0)  # an MSE: >= 0
    text = open(os.path.join(out, "README.md")).read()
    assert "Chung et al. (2014)" in text and "Jozefowicz et al. (2015)" in text and "winner" in text
    assert "2 seeds: wide interval" in text
    assert all(r.get("skipped") for r in launch.run_sweep(str(tiny), root))  # a rerun reuses finished trials


def _zoo_rows():
    """Two cells on both zoo tasks at both lrs; lr 0.003 has the better test MSE but
    the worse validation; 'slow' stays at the baseline; 'broken' diverges at 0.01."""
    rows = []
    for cell, (v3, t3, v1, t1) in {"fast": (0.02, 0.001, 0.01, 0.005), "slow": (0.2, 0.16, 0.17, 0.165),
                                    "broken": (0.1, 0.09, None, None)}.items():
        for lr, valid, test in ((0.003, v3, t3), (0.01, v1, t1)):
            a = _row("zoo_adding100", cell, lr, 0, valid, test)
            a["finished"] = valid is not None
            a["result"] = a["result"] if valid is not None else {}
            a["curve"] = [(300, 0.17), (600, valid)] if valid is not None else []
            rows += [a, _row("smoke_lm", cell, lr, 0, 6.0 - lr, 6.1 - 10 * lr)]
    return rows


def test_zoo_table_chooses_lr_on_validation_and_judges_the_baseline():
    table = {e["cell"]: e for e in exp.zoo_table(_zoo_rows())}
    fast, slow, broken = table["fast"]["adding"], table["slow"]["adding"], table["broken"]["adding"]
    assert fast["lr"] == 0.01 and fast["test"] == 0.005 and fast["below_baseline"]  # validation decides, not test
    assert fast["ratio"] == pytest.approx(0.005 * 6)
    assert slow["lr"] == 0.01 and not slow["below_baseline"]  # 0.165 < 1/6, but within the test estimate's noise
    assert broken["lr"] == 0.003 and broken["valid_by_lr"][0.01] is None and broken["below_baseline"]
    assert table["fast"]["lm"]["lr"] == 0.01 and table["fast"]["lm"]["test"] == pytest.approx(6.0)
    text = "\n".join(exp.zoo_markdown(list(table.values()), {}))
    assert "| slow | 1x8 | 100 | 0.01 |" in text and "**no**" in text and "failed" in text
    assert "Below the baseline on adding T=100: 2 of 3 cells; not: slow (0.990 x baseline)." in text


def test_zoo_update_renders_the_study_tables_again_from_report_json(tmp_path):
    from rnnlab.train import writers

    out = tmp_path / "report"
    out.mkdir()
    study_rows = [_row("adding100", cell, 0.01, s, 0.01 * (s + 1) * k, 0.002 * (s + 1) * k)
                  for k, cell in ((1, "gru"), (3, "lstm")) for s in range(3)]
    summary = exp.summarize(study_rows)
    writers.write_json_atomic(str(out / "report.json"), {"summary": summary, "figures": ["curves_adding100.png"],
                                                         "zoo": [{"old": 1}]})
    (out / "README.md").write_text("| old zoo line |\n")
    (out / "trials.csv").write_text("name,task,cell,finished,test_loss,finished\n"
                                    "a,adding100,gru,True,0.001,True\nz,zoo_adding100,lru,True,0.16,True\n")
    rows = _zoo_rows()
    exp.update_zoo(str(out), rows)
    text = (out / "README.md").read_text()
    want = exp.markdown([], summary, ["curves_adding100.png", "curves_zoo_adding100.png"], rows)
    assert text == want  # rendered whole, from the artifacts
    assert "old zoo line" not in text and "| fast | 1x8 |" in text and "Winner: **gru**" in text
    assert text.index("## Zoo") < text.index("## Learning curves") < text.index("curves_zoo_adding100.png")
    rep = json.load(open(out / "report.json"))
    assert rep["summary"]["adding100"]["winner"] == "gru" and len(rep["zoo"]) == len(rows)
    assert rep["figures"] == ["curves_adding100.png", "curves_zoo_adding100.png"]
    import csv

    with open(out / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    assert [t["name"] for t in trials if t["task"] == "adding100"] == ["a"] and trials[0]["test_loss"] == "0.001"
    assert len(trials) == 1 + len(rows) and "z" not in {t["name"] for t in trials}
    exp.update_zoo(str(out), rows)  # idempotent
    assert (out / "README.md").read_text() == text
