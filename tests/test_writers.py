"""writers.write_json_atomic under concurrent writers: the ranks of a multi-host run
write the same config.json into one shared workdir at the same time."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = """
import sys
from rnnlab.train import writers
for i in range(400):
    writers.write_json_atomic(sys.argv[1], {"writer": int(sys.argv[2]), "i": i})
"""


def test_concurrent_atomic_json_writers_neither_fail_nor_tear(tmp_path):
    path = str(tmp_path / "config.json")
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(k)], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for k in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)
    with open(path) as f:
        last = json.load(f)  # a whole document, never half of one
    assert last["i"] == 399
    assert os.listdir(tmp_path) == ["config.json"], "temporary files were left behind"
