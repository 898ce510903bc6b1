"""Every rendered results table in the docs equals what its committed artifacts give
(``python -m rnnlab.report.docs --check``), and a number changed by hand is caught."""

import os
import shutil

import pytest

from rnnlab.report import docs

ROOT = docs.REPO_ROOT


def test_every_rendered_block_equals_its_artifacts():
    blocks = [m.group("name") for f in docs.doc_files() for m in docs.BLOCK.finditer(open(f).read())]
    # the README's results: language modelling, against PyTorch, gradient flow, speech, performance
    assert {"lm_results", "lm_vs_pytorch", "gradient_flow", "lstm_vs_gru", "speech_headline", "speech", "layers",
            "memory_and_compile", "generation"} <= set(blocks), blocks
    assert docs.run(check=True) == {}, "a rendered table differs from its artifacts: run python -m rnnlab.report.docs"


def _copy(tmp_path):
    root = tmp_path / "repo"
    for rel in ("README.md", os.path.join("experiments", "speech_recognition.py"),
                os.path.join("experiments", "lstm_vs_gru.py"), os.path.join("experiments", "card.py"), os.path.join("experiments", "gradient_gallery", "__init__.py")):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), root / rel)
    shutil.copytree(os.path.join(ROOT, "docs"), root / "docs", ignore=shutil.ignore_patterns("*.png", "*.svg"))
    shutil.copytree(os.path.join(ROOT, "benchmarks"), root / "benchmarks", ignore=shutil.ignore_patterns("*.py"))
    return root


def test_a_number_changed_by_hand_in_a_committed_table_fails_the_check(tmp_path, capsys):
    root = _copy(tmp_path)
    assert docs.main(["--check", f"--root={root}"]) == 0
    readme = (root / "README.md").read_text()
    block = readme[readme.index("<!-- rendered: lm_results -->"):readme.index("<!-- /rendered -->",
                                                                                readme.index("lm_results"))]
    assert "1.4150 nats/char" in block  # docs/lm/default.result.json's valid_nll, 1.4150261749693709
    (root / "README.md").write_text(readme.replace(block, block.replace("1.4150 nats/char", "1.4120 nats/char")))
    capsys.readouterr()
    assert docs.main(["--check", f"--root={root}"]) == 1
    assert "README.md: lm_results differ from their artifacts" in capsys.readouterr().out
    assert docs.main([f"--root={root}"]) == 0  # re-rendered from the artifact: the typed number is gone
    assert (root / "README.md").read_text() == readme


def test_a_changed_artifact_changes_its_table_and_an_unknown_renderer_is_refused(tmp_path):
    root = _copy(tmp_path)
    bench = root / "benchmarks" / "results" / "generation.json"
    bench.write_text(bench.read_text().replace('"rnnlab_tokens_per_s": 570.', '"rnnlab_tokens_per_s": 999.'))
    assert docs.run(str(root), check=True) == {str(root / "README.md"): ["generation"]}
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- rendered: no_such_table -->\n<!-- /rendered -->\n")
    with pytest.raises(KeyError, match="no_such_table --> names no renderer"):
        docs.run(str(root), check=True)


def test_the_lstm_vs_gru_page_is_its_report_json_rendered_by_the_study():
    """docs/lstm_vs_gru/README.md is written whole by the study; it must be what the study's markdown()
    makes of the committed report.json (no trial folders needed)."""
    import json

    from experiments import lstm_vs_gru as study

    rep = json.load(open(os.path.join(ROOT, "docs", "lstm_vs_gru", "report.json")))
    summary = {t: study._summary_from_json(s) for t, s in rep["summary"].items()}
    want = study.markdown([], summary, rep["figures"], rep["zoo"])
    assert open(os.path.join(ROOT, "docs", "lstm_vs_gru", "README.md")).read() == want


def test_the_generated_gradient_flow_and_zoo_pages_are_their_json_rendered():
    """docs/gradient_flow/README.md (experiments/gradient_flow.py's markdown) and docs/zoo/README.md
    (benchmarks/zoo_adding.py's readme) are written whole from report.json / adding_T100.json."""
    import json
    import sys

    from experiments import gradient_flow

    rep = json.load(open(os.path.join(ROOT, "docs", "gradient_flow", "report.json")))
    assert open(os.path.join(ROOT, "docs", "gradient_flow", "README.md")).read() == gradient_flow.markdown(rep)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import zoo_adding

    z = json.load(open(os.path.join(ROOT, "docs", "zoo", "adding_T100.json")))
    assert open(os.path.join(ROOT, "docs", "zoo", "README.md")).read() == zoo_adding.readme(z["rows"], z["meta"])
