"""Shared fixtures: an isolated cache, tiny synthetic crystals and data sets, random checkpoints.

The environment is set before anything imports MindSpore: the compile cache is keyed on
source code, not on model shapes, so it could hand one test a graph of another size; and
graph caches must not leak between tests.
"""

from __future__ import annotations

import os
import tempfile

os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"
_SESSION_CACHE = tempfile.mkdtemp(prefix="crystalprop-test-cache-")
os.environ["CRYSTALPROP_CACHE"] = _SESSION_CACHE
os.environ["CRYSTALPROP_KERNELS"] = os.path.join(_SESSION_CACHE, "kernels")  # built once per test session
os.environ.setdefault("GLOG_v", "3")

import csv  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from crystalprop.graph import CrystalGraph, GraphSettings, build_graph  # noqa: E402
from crystalprop.graph.cells import cell_for_graph  # noqa: E402
from crystalprop.io.adapters import crystal_from_structure  # noqa: E402

_ENTRY = Path(sys.executable).with_name("crystalprop")
CLI = [str(_ENTRY)] if _ENTRY.is_file() else [sys.executable, "-m", "crystalprop.cli.commands"]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The shared data sets (mp2018, ...) beside the repository; tests that need them skip without."""

ROCKSALT_PAIRS = (("Na", "Cl"), ("K", "Cl"), ("Li", "F"), ("Mg", "O"), ("Na", "Br"), ("Ca", "O"), ("K", "Br"),
                  ("Li", "Cl"))
PEROVSKITE_CATIONS = (("Sr", "Ti"), ("Ba", "Ti"), ("Ca", "Ti"), ("Sr", "Zr"))


def graph_of(structure: Structure, settings: GraphSettings = GraphSettings()) -> CrystalGraph:
    """The graph of a pymatgen structure on its cell as given (the pymatgen adapter, then ``build_graph``)."""
    return build_graph(crystal_from_structure(structure), settings)


def cell_graph_of(structure: Structure, settings: GraphSettings = GraphSettings()) -> CrystalGraph:
    """The graph of a pymatgen structure on the cell ``settings.cell`` chooses, as ``predict`` builds it."""
    return build_graph(cell_for_graph(crystal_from_structure(structure), settings.cell)[0], settings)


def triclinic(n_atoms: int = 4, seed: int = 7) -> Structure:
    """A low-symmetry cell with atoms at least 1.6 Å apart."""
    rng = np.random.default_rng(seed)
    lattice = Lattice.from_parameters(4.7, 5.3, 6.1, 79.0, 86.0, 104.0)
    species = ["Li", "O", "Si", "O", "Mg", "F"][:n_atoms]
    while True:
        structure = Structure(lattice, species, rng.uniform(0, 1, (n_atoms, 3)))
        if (structure.distance_matrix + np.eye(n_atoms) * 99).min() > 1.6:
            return structure


def rocksalt(a: float, cation: str = "Na", anion: str = "Cl") -> Structure:
    """Two-atom primitive rock salt with conventional lattice constant ``a``."""
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt_conventional(a: float = 5.64, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite(a: float, a_site: str = "Sr", b_site: str = "Ti") -> Structure:
    """Five-atom cubic perovskite ABO3."""
    return Structure(Lattice.cubic(a), [a_site, b_site, "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def synthetic_target(structure: Structure) -> float:
    """A smooth, positive, learnable function of the cell: volume per atom plus a small sine."""
    v = structure.volume / len(structure)
    return float(0.1 * v + 0.3 * np.sin(v / 3.0) + 1.0)


def make_structures(n: int) -> list[tuple[str, Structure]]:
    """``n`` tiny crystals (rock salts and perovskites of various sizes), deterministic."""
    out = []
    for i in range(n):
        if i % 4 == 3:
            a_site, b_site = PEROVSKITE_CATIONS[(i // 4) % len(PEROVSKITE_CATIONS)]
            s = perovskite(3.7 + 0.05 * (i % 9), a_site, b_site)
        else:
            cation, anion = ROCKSALT_PAIRS[i % len(ROCKSALT_PAIRS)]
            s = rocksalt(4.2 + 0.07 * i, cation, anion)
        out.append((f"m-{i:03d}", s))
    return out


def write_json_dataset(path: Path, n: int = 40, *, target: str = "y", extra: dict | None = None) -> Path:
    """A JSON list of {id, structure (pymatgen dict), target} records."""
    records = [{"id": name, "structure": s.as_dict(), target: synthetic_target(s), **(extra or {})}
               for name, s in make_structures(n)]
    path.write_text(json.dumps(records))
    return path


def run_cli(args: list[str], *, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run ``crystalprop ARGS`` in a subprocess; returns the CompletedProcess."""
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def read_csv(path: Path) -> list[dict]:
    """A CSV file's rows as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_history(run_dir: Path) -> list[dict]:
    """A run directory's history.csv, one dict of strings per epoch."""
    return read_csv(run_dir / "history.csv")


def train_config(**overrides):
    """A TrainConfig for the tiny network: 4 epochs of batches of 8 at lr 5e-3, seed 0, target y in eV."""
    from crystalprop.model.config import ModelConfig
    from crystalprop.training.config import TrainConfig

    base = dict(target="y", unit="eV", epochs=4, batch_size=8, lr=5e-3, seed=0, model=ModelConfig(**TINY))
    return TrainConfig(**{**base, **overrides})


def train_stopped_mid_epoch(data: Path, run_dir: Path, config, epoch: int = 2, step: int = 2, **options):
    """Train in this process and stop it, as Ctrl-C would, after step ``step`` of epoch ``epoch + 1``
    (0-based ``epoch`` as in the step events); the stopped run's result. ``options`` go to ``train_model``."""
    from crystalprop.training import run as run_module
    from crystalprop.training.run import train_model
    from crystalprop.training.trainer import Trainer

    captured = {}

    class Capturing(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured["trainer"] = self

    def stop_there(kind, info):
        if kind == "step" and info["epoch"] == epoch and info["step"] == step:
            captured["trainer"].stop_requested = True

    original = run_module.Trainer
    run_module.Trainer = Capturing
    try:
        return train_model(data, run_dir, config, workers=1, on_event=stop_there, **options)
    finally:
        run_module.Trainer = original


def train_state(path: Path) -> dict:
    """The training state stored in a run's last.ckpt."""
    from crystalprop.utils.backend import mindspore_module
    from crystalprop.training.trainer import STATE_KEY

    return json.loads(mindspore_module().load_checkpoint(str(path))[STATE_KEY])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own graph cache (subprocesses inherit it through the environment)."""
    monkeypatch.setenv("CRYSTALPROP_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MS_COMPILER_CACHE_ENABLE", "0")
    monkeypatch.delenv("MS_COMPILER_CACHE_PATH", raising=False)


TINY = dict(layers=1, features=8, heads=1, fc_features=8)
TINY_CLI = ["--layers", "1", "--features", "8", "--heads", "1", "--fc-features", "8"]
"""The same tiny network as command-line options of ``crystalprop train``."""


@pytest.fixture(scope="session")
def tiny_config():
    from crystalprop.utils.backend import set_device
    from crystalprop.model.matformer import ModelConfig

    set_device("CPU")
    return ModelConfig(**TINY)


def _random_checkpoint(path: Path, target: str, unit: str, seed: int, log10: bool = False,
                       mean: float = 1.5, std: float = 0.5, elements: list[str] | None = None,
                       site_features: bool = False, training: dict | None = None) -> Path:
    from crystalprop.utils.backend import mindspore_module, set_device

    set_device("CPU")
    from crystalprop.graph.settings import GraphSettings
    from crystalprop.model.checkpoint import ModelCard, TargetTransform, save_checkpoint
    from crystalprop.model.matformer import Matformer, ModelConfig

    mindspore_module().set_seed(seed)
    net = Matformer(ModelConfig(**TINY, site_features=site_features))
    card = ModelCard(target=target, unit=unit, model=net.config, graph=GraphSettings(site_features=site_features),
                     transform=TargetTransform(mean=mean, std=std, log10=log10),
                     metrics={"mae": 0.123}, training=training or {"epochs": 3, "data": {"n_train": 40}},
                     elements=elements or [])
    save_checkpoint(path, net, card)
    return path


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory) -> Path:
    """A random-weight tiny checkpoint (target y, unit eV)."""
    return _random_checkpoint(tmp_path_factory.mktemp("ckpt") / "rand.ckpt", "y", "eV", seed=1)


@pytest.fixture(scope="session")
def shipped_dir(tmp_path_factory) -> Path:
    """A folder laid out like checkpoints/, holding a random formation_energy.ckpt."""
    folder = tmp_path_factory.mktemp("shipped")
    _random_checkpoint(folder / "formation_energy.ckpt", "formation_energy_per_atom", "eV/atom", seed=2)
    return folder


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
