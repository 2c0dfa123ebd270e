"""``crystalprop.predict`` under ``python -c``, from standard input, and where the compile cache fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import rocksalt

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json
import crystalprop
rows = crystalprop.predict({structure!r}, model={model!r})
print("ROWS", json.dumps([[r["name"], r["rand"], r["error"]] for r in rows]))
"""


def _run(args: list[str], tmp_path: Path, stdin: str | None = None) -> list:
    """Run python with ``args`` in tmp_path, the compile cache allowed; the rows it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRYSTALPROP_COMPILE_CACHE": "1"}
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, input=stdin, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("ROWS "))
    return json.loads(line[5:])


@pytest.fixture()
def job(tmp_path, random_ckpt) -> str:
    path = tmp_path / "NaCl.vasp"
    rocksalt(5.64).to(filename=str(path), fmt="poscar")
    return SCRIPT.format(structure=str(path), model=str(random_ckpt))


def _check(rows: list) -> None:
    assert len(rows) == 1 and rows[0][0].endswith("NaCl.vasp") and rows[0][2] == ""
    assert isinstance(rows[0][1], float)


def test_predict_under_python_c(job, tmp_path):
    _check(_run(["-c", job], tmp_path))


def test_predict_from_standard_input(job, tmp_path):
    _check(_run(["-"], tmp_path, stdin=job))


def test_a_failing_compile_cache_costs_no_prediction(job, tmp_path):
    """An entry script MindSpore cannot parse (here binary junk) makes its cache fail: predict without it."""
    junk = tmp_path / "entry.bin"
    junk.write_bytes(b"\x00\xff not python \x00")
    _check(_run(["-c", f"import sys; sys.argv[0] = {str(junk)!r}\n" + job], tmp_path))
