"""The README's promises: its test command is what CI runs; its quickstart runs."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def _setup_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip()]


def test_readme_starts_with_two_setup_commands_and_ci_runs_the_second():
    first, second = _setup_commands()
    assert first.startswith("pip install -e . && python -m rnnlab.main")
    ci = open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
    test_line = second.replace("pip install -e", "pip install -q -e")
    assert any(ln.strip() == test_line for ln in ci), (second, ci)
    # CI runs the SLURM tests (they skip where no controller answers): the cluster starts first
    start = next(i for i, ln in enumerate(ci) if ln.strip().startswith("bash launch/cluster/start_local_slurm.sh"))
    assert start < next(i for i, ln in enumerate(ci) if ln.strip() == test_line), ci


def test_quickstart_runs():
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    assert namespace["ys_TxBx64"].shape == (50, 4, 64)
    assert not namespace["ys_TxBx64"][7:, 2].any()  # zeros past the length
    assert set(namespace["grads"]) == {"layer_0", "layer_1"}
