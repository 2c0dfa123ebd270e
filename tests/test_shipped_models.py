"""Pin the shipped models' predictions so no change alters a published number unnoticed.

The structures are built here; the pinned values were produced by the shipped checkpoints
when they were committed. A deliberate retraining updates the checkpoint and these numbers
in the same commit.
"""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from crystalprop.registry import checkpoints_dir

PINNED = {
    "formation_energy": {"NaCl": -2.1372, "Si": 0.0469, "SrTiO3": -3.5729, "Cu": 0.0001},
    "band_gap": {"NaCl": 4.9515, "Si": 0.0035, "SrTiO3": 1.5147, "Cu": 0.0023},
    "bulk_modulus": {"NaCl": 25.1038, "Si": 86.1415, "SrTiO3": 153.049, "Cu": 158.1454},
    "shear_modulus": {"NaCl": 15.5059, "Si": 66.3344, "SrTiO3": 96.1602, "Cu": 52.7114},
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
