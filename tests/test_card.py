"""experiments/card.py: the report card of a cell, end to end at the smoke budget through
launch (every task trains, the card has every section and figure, its tables are its JSON),
with a stored reference row beside it."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from experiments import card


@pytest.mark.slow
def test_a_smoke_card_for_gru_has_every_section_and_its_tables_are_its_json(tmp_path):
    root, out = str(tmp_path / "runs"), str(tmp_path / "card")
    assert card.main(["gru", "--budget=smoke", f"--root={root}", f"--out={out}", "--executor=inline"]) == 0
    rep = json.load(open(os.path.join(out, "card.json")))
    text = open(os.path.join(out, "README.md")).read()
    for heading in ("## Tasks", "## Gradient flow at initialisation", "## Speed", "## Figures"):
        assert heading in text, heading
    assert set(rep["table"]) == set(card.tasks("smoke"))
    for task, t in rep["table"].items():
        assert f"### {task}: " in text
        row = next(line for line in text.split(f"### {task}: ")[1].splitlines() if line.startswith("| gru (this card)"))
        assert f"{t['cell']['test']['mean']:.4g}" in row and str(t["cell"]["parameters"]) in row
        for name, b in t.get("baselines", {}).items():  # forecasting: seasonal-naive and the classical model
            row = next(line for line in text.split(f"### {task}: ")[1].splitlines()
                       if line.startswith(f"| {name.replace('_', '-')}"))
            assert f"| {b['mase']:.4g} |" in row
    assert {t for t, v in rep["table"].items() if set(v.get("baselines", {})) == {"seasonal_naive", "classical"}} == {
        "forecast_co2", "forecast_sunspots"}
    for f in rep["figures"]:
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    assert {"mqar.png", "gradient_flow.png"} <= set(rep["figures"])
    assert all(g["log_rate"] < 0 for g in rep["gradient_flow"].values())  # a GRU at init: gradients decay
    assert rep["speed"]["training_sequential_tokens_per_s"] > 0
    # a stored reference row appears beside the cell, compared only where intervals separate
    refs = tmp_path / "refs" / "lstm" / "smoke"
    refs.mkdir(parents=True)
    shutil.copy(os.path.join(out, "card.json"), refs / "card.json")
    run_root = os.path.join(root, "gru", "smoke")
    rep2 = card.card(run_root, "gru", "smoke", str(tmp_path / "card2"), refs_dir=str(tmp_path / "refs"))
    ref_row = rep2["table"]["adding"]["references"][0]
    assert ref_row["cell"] == "lstm" and ref_row["vs_cell"] == "not separated"  # one seed: no interval
    assert re.search(r"\| lstm \| \d+ \| 0.01 \|", open(tmp_path / "card2" / "README.md").read())
    # --rerender: the stored card re-read with the reference cards stored now; its own numbers and
    # measurements as they were (nothing re-run), the references as a fresh card gets them
    rep3 = card.rerender(out, refs_dir=str(tmp_path / "refs"))
    assert rep3["speed"] == rep["speed"] and rep3["gradient_flow"] == rep["gradient_flow"]
    assert all(rep3["table"][t]["cell"] == rep["table"][t]["cell"] for t in rep["table"])
    assert rep3["table"]["adding"]["references"] == rep2["table"]["adding"]["references"]
    assert json.load(open(os.path.join(out, "card.json")))["table"] == rep3["table"]
    assert re.search(r"\| lstm \| \d+ \| 0.01 \|", open(os.path.join(out, "README.md")).read())


def test_unknown_budget_and_task_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        card.tasks("huge")
    with pytest.raises(ValueError, match="unknown card task 'addition'"):
        card.get_config("addition@smoke")


def test_an_unknown_cell_or_option_is_one_line_that_names_it_and_the_choices(capsys):
    for argv, said in ((["nosuchcell"], "unknown cell 'nosuchcell'; available cells: cifg"),
                       (["gru", "--options=nope=1"], "unknown option 'nope' for cell 'gru'")):
        with pytest.raises(SystemExit) as e:
            card.main(argv + ["--root=/nonexistent"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and "Traceback" not in err


def test_the_card_wall_time_is_the_union_of_its_trials_spans():
    """Trials overlap (parallel) and come in sittings (a resumed card): the time during which
    at least one ran, not first to last."""
    assert card._union_length([(0.0, 2.0), (1.0, 3.0), (10.0, 11.0)]) == 4.0
    assert card._union_length([(0.0, 5.0), (1.0, 2.0)]) == 5.0 and card._union_length([]) == 0.0


@pytest.mark.slow
def test_the_worked_example_card_comes_from_the_command_the_doc_shows(tmp_path, monkeypatch):
    """docs/adding_a_cell.md ends with the card of its cell: the cell file and the command are
    taken from the doc, the cell dropped into the package path as the doc says, and the
    command run at the smoke budget (in this process, so the cell on the patched path is seen):
    it writes a card with the verdict the doc renders."""
    import shlex
    import sys

    from rnnlab import cells

    doc = open(os.path.join(card.REPO_ROOT, "docs", "adding_a_cell.md")).read()
    code = re.search(r"Save as `rnnlab/cells/ifrnn.py`:\n\n```python\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "ifrnn.py").write_text(code)
    command = re.search(r"^python -m experiments\.card (ifrnn .*)$", doc, re.M).group(1)
    argv = [a for a in shlex.split(command) if not a.startswith(("--out=", "--budget="))]
    out = tmp_path / "card"
    argv += ["--budget=smoke", f"--out={out}", f"--root={tmp_path / 'runs'}", "--executor=inline"]
    monkeypatch.setattr(cells, "__path__", [*cells.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "rnnlab.cells.ifrnn", raising=False)
    cells.spec.cache_clear()
    try:
        assert card.main(argv) == 0
    finally:
        cells.spec.cache_clear()
        sys.modules.pop("rnnlab.cells.ifrnn", None)
    rep = json.load(open(out / "card.json"))
    assert rep["cell"] == "ifrnn" and set(rep["table"]) == set(card.tasks("smoke"))
    assert {r["task"] for r in rep["verdict"]["tasks"]} == set(card.tasks("smoke"))
    text = open(out / "README.md").read()
    assert "## Where it stands" in text and rep["verdict"]["gradient"] in text


def test_a_cell_with_heads_is_matched_at_a_width_its_heads_divide():
    """mlstm with heads=4: the width is the multiple of 4 whose parameter count is closest to the budget."""
    from experiments import lstm_vs_gru as base

    c = card.get_config("adding@small,cell=mlstm,cell_options=heads=4")
    w = c.model.d_hidden
    assert w % 4 == 0
    budget = c.study.param_budget
    near = [abs(base.parameter_count(c, k) - budget) for k in (w - 4, w, w + 4)]
    assert near[1] <= min(near[0], near[2])


def test_a_card_with_options_takes_its_own_trials_only(tmp_path):
    """The study labels a trial by its cell's name; a card with options (mlstm heads=4) takes the
    trials whose config has those options, not another mlstm's."""
    rows = []
    for name, opts in (("a", "heads=4"), ("b", ""), ("c", "heads=4,chunk_size=32")):
        wd = tmp_path / name
        wd.mkdir()
        (wd / "config.json").write_text(json.dumps({"model": {"cell": "mlstm", "cell_options": opts}}))
        rows.append({"cell": "mlstm", "workdir": str(wd)})
    picked = [os.path.basename(r["workdir"]) for r in rows
              if card._is_cell(r, "mlstm", "heads=4")]
    assert picked == ["a"]
    both = [os.path.basename(r["workdir"]) for r in rows
            if card._is_cell(r, "mlstm", "heads=4;chunk_size=32")]
    assert both == ["c"]
    assert [card._is_cell(r, "mlstm", "") for r in rows] == [False, True, False]
    assert not any(card._is_cell(r, "gru", "") for r in rows)
