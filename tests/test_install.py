"""What a user gets from a built wheel, outside the checkout: every subpackage, the shipped
models and their cards, and a working ``crystalprop`` command in a fresh virtual environment.

An editable install hides packaging mistakes (the package finds ``checkpoints/`` beside it in
the checkout), so these tests build the wheel and look only at what it carries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from crystalprop.model.registry import SHIPPED

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crystalprop"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip wheel .`` builds from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    (built,) = out.glob("crystalprop-*.whl")
    return built


def test_wheel_carries_every_subpackage_and_the_shipped_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    subpackages = [p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py")]
    assert [p for p in subpackages if f"{p}/__init__.py" not in names] == []
    shipped = [n for n in SHIPPED if (ROOT / "checkpoints" / f"{n}.ckpt").is_file()]
    assert shipped, "no shipped model in checkpoints/"
    for name in shipped:
        assert f"crystalprop/checkpoints/{name}.ckpt" in names
        assert f"crystalprop/checkpoints/{name}.md" in names
    assert "crystalprop/model/kernels/fused_ops.cc" in names
    assert "crystalprop/graph/spheres.cc" in names
    assert "crystalprop/graph/atom_init.json" in names


@pytest.mark.slow
def test_fresh_environment_predicts_with_the_shipped_models(wheel, tmp_path):
    """Install the wheel (dependencies from the package index) into a new venv and run the
    README's first commands from a folder that is not the checkout."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True,
                   text=True, timeout=1500)
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = dict(cwd=work, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    models = subprocess.run([str(env_dir / "bin" / "crystalprop"), "models"], **run)
    assert models.returncode == 0, models.stderr
    for name in SHIPPED:
        assert name in models.stdout
    located = subprocess.run([str(python), "-c", "import crystalprop, sys; sys.stdout.write(crystalprop.__file__)"],
                             **run)
    assert str(env_dir) in located.stdout  # the installed copy, not the checkout
    result = subprocess.run([str(env_dir / "bin" / "crystalprop"), "predict", str(ROOT / "examples"),
                             "-o", "out.csv"], **run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 predicted, 0 failed" in result.stdout + result.stderr
    rows = (work / "out.csv").read_text().splitlines()
    assert len(rows) == 9 and all(name in rows[0] for name in SHIPPED)
