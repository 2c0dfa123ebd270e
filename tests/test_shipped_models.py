"""Pin the shipped models' predictions so no change alters a published number unnoticed.

The structures are built here; the pinned values were produced by the shipped checkpoints
when they were committed. A deliberate retraining updates the checkpoint and these numbers
in the same commit.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalprop.model.registry import checkpoints_dir

LIMIT_MB = 80
"""The most the shipped checkpoints may weigh together (the accuracy issue's budget)."""

PINNED = {
    "formation_energy": {"NaCl": -2.1216, "Si": 0.0055, "SrTiO3": -3.5927, "Cu": 0.0161},  # session 45's pair
    "band_gap": {"NaCl": 5.2433, "Si": 1.1571, "SrTiO3": 1.712, "Cu": 0.0},
    "bulk_modulus": {"NaCl": 24.2707, "Si": 84.9359, "SrTiO3": 162.0363, "Cu": 146.9275},
    "shear_modulus": {"NaCl": 14.488, "Si": 64.1681, "SrTiO3": 101.4398, "Cu": 50.88},
}
PINNED_STD = {  # the ensembles' calibrated σ, in the unit of the prediction
    "formation_energy": {"NaCl": 0.04899, "Si": 0.08885, "SrTiO3": 0.03288, "Cu": 0.08304},
    "band_gap": {"NaCl": 0.22183, "Si": 0.61975, "SrTiO3": 0.3735, "Cu": 0.0},
    "bulk_modulus": {"NaCl": 2.4531, "Si": 4.1365, "SrTiO3": 19.769, "Cu": 8.5675},
    "shear_modulus": {"NaCl": 0.9782, "Si": 7.6871, "SrTiO3": 24.6414, "Cu": 24.7123},
}

PINNED_INTERVAL95 = {  # the multiple of σ that holds 95 % of the validation errors (card: interval95)
    "formation_energy": 2.492, "band_gap": 3.255, "bulk_modulus": 2.877, "shear_modulus": 2.501,
}


def pinned_structures() -> dict[str, Structure]:
    """Four textbook crystals (experimental lattice constants), primitive cells."""
    return {
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Si": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]]),
        "SrTiO3": Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
        "Cu": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]),
    }


@pytest.mark.parametrize("model", sorted(PINNED))
def test_shipped_model_predictions_are_pinned(model, monkeypatch):
    monkeypatch.delenv("CRYSTALPROP_CHECKPOINTS", raising=False)
    if not (checkpoints_dir() / f"{model}.ckpt").is_file():
        pytest.fail(f"shipped model {model} is missing from {checkpoints_dir()}")
    import crystalprop

    structures = {name: s.get_primitive_structure() for name, s in pinned_structures().items()}
    for name, s in structures.items():
        s.name = name  # crystalprop.predict names rows by this attribute
    rows = crystalprop.predict(list(structures.values()), model=model, workers=0)
    got = {row["name"]: row[model] for row in rows}
    for name, value in PINNED[model].items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-4), f"{model} on {name}"
    std = {row["name"]: row.get(f"{model}_std") for row in rows}
    for name, value in PINNED_STD.get(model, {}).items():
        assert std[name] == pytest.approx(value, rel=1e-4, abs=1e-4), f"σ of {model} on {name}"
    if model not in PINNED_STD:
        assert all(v is None for v in std.values())
    else:  # σ covers too few errors at 2σ (heavy tails): each model states the interval that holds 95 %
        multiple = {name: row[f"{model}_err95"] / row[f"{model}_std"] for row in rows if row[f"{model}_std"]}
        assert multiple and all(m == pytest.approx(PINNED_INTERVAL95[model], rel=1e-3) for m in multiple.values())


def test_shipped_models_predicted_together_keep_their_pins(monkeypatch):
    """The default run (every shipped model, one shared network, weights swapped per batch)."""
    monkeypatch.delenv("CRYSTALPROP_CHECKPOINTS", raising=False)
    import crystalprop

    structures = {name: s.get_primitive_structure() for name, s in pinned_structures().items()}
    for name, s in structures.items():
        s.name = name
    rows = crystalprop.predict(list(structures.values()), workers=0, batch_size=1)
    for row in rows:
        for model, values in PINNED.items():
            assert row[model] == pytest.approx(values[row["name"]], rel=1e-4, abs=1e-4), f"{model} on {row['name']}"


def _cells_of_one_crystal(structure: Structure, seed: int) -> dict[str, Structure]:
    """The structure, its conventional standard cell, a 2x2x2 supercell, and a rotated, translated copy."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    moved = Structure(Lattice(structure.lattice.matrix @ rotation.T), structure.species,
                      structure.cart_coords @ rotation.T + rng.uniform(-3, 3, 3), coords_are_cartesian=True)
    return {"given": structure, "conventional": SpacegroupAnalyzer(structure).get_conventional_standard_structure(),
            "2x2x2": structure * (2, 2, 2), "rotated+translated": moved}


def test_shipped_models_give_one_answer_per_crystal(monkeypatch):
    """Every shipped model, on the canonical cell (the default): the same number, whatever the cell."""
    monkeypatch.delenv("CRYSTALPROP_CHECKPOINTS", raising=False)
    import crystalprop

    crystals = {**pinned_structures(), "Mg": Structure.from_spacegroup(
        "P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]]), "ZnO": Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.382]])}
    structures = []
    for k, (name, crystal) in enumerate(crystals.items()):
        for variant, s in _cells_of_one_crystal(crystal.get_primitive_structure(), k).items():
            s.name = f"{name}/{variant}"
            structures.append(s)
    rows = crystalprop.predict(structures, workers=0)
    assert not any(row["error"] or row["warning"] for row in rows), rows
    for model in PINNED:
        for name in crystals:
            values = {row["name"]: row[model] for row in rows if row["name"].startswith(f"{name}/")}
            reference = values[f"{name}/given"]
            for label, value in values.items():
                assert value == pytest.approx(reference, rel=1e-4, abs=1e-6), f"{model} on {label}: {values}"


def test_models_table_gives_whole_epochs_as_integers():
    """`crystalprop models` showed 218.0 epochs."""
    from crystalprop.model.registry import MODEL_COLUMNS, describe_models

    epochs = [row[MODEL_COLUMNS.index("epochs")] for row in describe_models()]
    assert epochs and all(e.isdigit() for e in epochs), epochs


def test_shipped_weights_stay_within_the_size_budget(monkeypatch):
    """The accuracy issue's budget: every shipped model's files together under 80 MB (wheels carry them)."""
    monkeypatch.delenv("CRYSTALPROP_CHECKPOINTS", raising=False)
    folder = checkpoints_dir()
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total < LIMIT_MB * 2**20, f"checkpoints/ holds {total / 2**20:.1f} MB, over {LIMIT_MB} MB"


@pytest.mark.parametrize("model", sorted(PINNED))
def test_shipped_models_record_their_training_crystals_by_id_and_fingerprint(model, monkeypatch):
    """So that evaluate refuses them by id and reports them under other ids (crystalprop/data/fingerprints.py)."""
    import base64

    from crystalprop.graph.neighbors import build_graph
    from crystalprop.io.adapters import crystal_from_structure
    from crystalprop.data.fingerprints import like_packed
    from crystalprop.model.checkpoint import read_checkpoint

    monkeypatch.delenv("CRYSTALPROP_CHECKPOINTS", raising=False)
    record = read_checkpoint(checkpoints_dir() / f"{model}.ckpt")[0].training["data"]["split_record"]
    n_ids = len(base64.b64decode(record["trained_ids"])) // 6
    n_prints = len(base64.b64decode(record["trained_structures"])) // 8
    assert n_ids >= 2553 and 0.9 * n_ids <= n_prints <= n_ids  # one each, less the few crystals listed twice
    graphs = [build_graph(crystal_from_structure(s)) for s in pinned_structures().values()]
    assert like_packed(graphs, record["trained_structures"]) != [True] * 4  # not a record that matches anything


@pytest.mark.parametrize("model", sorted(PINNED))
def test_shipped_models_are_written_in_the_oldest_format_that_reads_them_right(model, monkeypatch):
    """σ from latent + spread needs format 4: an older crystalprop must refuse it, not drop the spread."""
    import json

    ms = pytest.importorskip("mindspore")
    from crystalprop.model.checkpoint import METADATA_KEY, read_checkpoint

    monkeypatch.delenv("CRYSTALPROP_CHECKPOINTS", raising=False)
    path = checkpoints_dir() / f"{model}.ckpt"
    written = json.loads(ms.load_checkpoint(str(path))[METADATA_KEY])["format"]
    assert written == json.loads(read_checkpoint(path)[0].to_json())["format"]


@pytest.mark.parametrize("model", sorted(PINNED))
def test_shipped_models_start_a_run_without_site_descriptors(model, monkeypatch):
    """The README's fine-tune (`train --init-from formation_energy`) and the elastic cards' recipes start plain
    runs from the shipped models: their first network must read no site descriptors, or give them zero weights
    (a formation-energy pair with the bond-angle network first refused them; review 41b)."""
    from crystalprop.model.checkpoint import check_site_start

    monkeypatch.delenv("CRYSTALPROP_CHECKPOINTS", raising=False)
    check_site_start(checkpoints_dir() / f"{model}.ckpt", site_features=False)
