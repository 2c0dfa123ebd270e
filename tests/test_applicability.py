"""Tests for crystalprop.analysis.applicability: slabs, wires and molecules are told apart from bulk crystals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Molecule, Structure
from pymatgen.core.surface import SlabGenerator

from conftest import rocksalt, rocksalt_conventional
from crystalprop.analysis.applicability import VACUUM_GAP, domain_warnings, vacuum_gaps
from crystalprop.io.readers import validate_structure
from crystals import hcp_mg, srtio3

CU_111_SPACING = 3.615 / math.sqrt(3)


def silicon() -> Structure:
    """Diamond-structure Si, two-atom primitive cell."""
    h = 5.431 / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def graphite() -> Structure:
    """AB (Bernal) graphite: layers 3.35 Å apart."""
    return Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(2.46, 6.7), ["C", "C"],
                                     [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25]])


def mos2_2h() -> Structure:
    """Bulk 2H-MoS2: S-Mo-S sandwiches with a ~3 Å van der Waals gap between them."""
    return Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.16, 12.3), ["Mo", "S"],
                                     [[1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.621]])


def cu111_slab(vacuum: float = 15.0, layers: int = 3) -> Structure:
    """An ABC-stacked Cu(111) slab of ``layers`` layers with ``vacuum`` Å between its outer layers."""
    thickness = (layers - 1) * CU_111_SPACING
    c = thickness + vacuum
    offsets = [(0, 0), (1 / 3, 2 / 3), (2 / 3, 1 / 3)]
    coords = [[*offsets[k % 3], k * CU_111_SPACING / c] for k in range(layers)]
    return Structure(Lattice.hexagonal(3.615 / math.sqrt(2), c), ["Cu"] * layers, coords)


def boxed(molecule: Molecule, size: float = 15.0) -> Structure:
    return molecule.get_boxed_structure(size, size, size)


def methane() -> Molecule:
    h = 0.629
    return Molecule(["C", "H", "H", "H", "H"], [[0, 0, 0], [h, h, h], [-h, -h, h], [-h, h, -h], [h, -h, -h]])


def water() -> Molecule:
    return Molecule(["O", "H", "H"], [[0, 0, 0], [0.757, 0.586, 0], [-0.757, 0.586, 0]])


@pytest.mark.parametrize("make", [lambda: rocksalt(5.64), rocksalt_conventional, silicon, graphite, mos2_2h,
                                  hcp_mg, srtio3, lambda: rocksalt(5.64) * (4, 4, 4)],
                         ids=["NaCl", "NaCl-conventional", "Si", "graphite", "MoS2-2H", "Mg", "SrTiO3", "NaCl-128"])
def test_bulk_crystals_are_in_domain(make):
    assert domain_warnings(make()) == []


@pytest.mark.parametrize(("make", "gap"), [(graphite, 3.35), (mos2_2h, 2.98)], ids=["graphite", "MoS2-2H"])
def test_van_der_waals_gaps_are_measured_and_far_below_the_threshold(make, gap):
    (hkl, widest), *_ = vacuum_gaps(make(), min_gap=0.0)
    assert hkl == (0, 0, 1) and widest == pytest.approx(gap, abs=0.01) and widest < VACUUM_GAP / 2


def test_cu111_slab_names_the_vacuum_direction():
    (warning,) = domain_warnings(cu111_slab(15.0))
    assert warning == "looks like a 2D slab: 15.0 Å of vacuum along c; the models were trained on bulk crystals"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # spglib, inside SlabGenerator
def test_nacl_100_slab_from_slab_generator():
    slab = SlabGenerator(rocksalt_conventional(5.64), (1, 0, 0), 3, 15, in_unit_planes=True,
                         center_slab=True).get_slab()
    (warning,) = domain_warnings(slab)
    assert warning.startswith("looks like a 2D slab:") and "along c" in warning


def test_slab_across_the_periodic_boundary_and_along_another_axis():
    slab = cu111_slab(15.0)
    wrapped = Structure(slab.lattice, slab.species, slab.frac_coords - [0, 0, 0.05])
    assert "15.0 Å of vacuum along c" in domain_warnings(wrapped)[0]
    order = [2, 0, 1]
    along_a = Structure(Lattice(slab.lattice.matrix[order]), slab.species, slab.frac_coords[:, order])
    assert "15.0 Å of vacuum along a;" in domain_warnings(along_a)[0]


def test_slab_in_a_sheared_cell_is_found_on_its_own_planes():
    slab = cu111_slab(15.0)
    slab.make_supercell([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    (warning,) = domain_warnings(slab)
    assert "2D slab" in warning and "normal to (1 0 1)" in warning


def test_slab_in_a_cell_of_long_skewed_vectors_is_found():
    """The same slab in an equivalent basis (a + 3c, b + 5c, c): its vacuum lies on planes of Miller indices
    beyond those searched in that basis, so it went unflagged while the graph, built on the reduced cell, was
    the same."""
    slab = cu111_slab(15.0)
    skewed = slab.copy()
    skewed.make_supercell([[1, 0, 3], [0, 1, 5], [0, 0, 1]])
    assert len(skewed) == len(slab)
    (warning,) = domain_warnings(skewed)
    assert "2D slab" in warning and "15.0 Å of vacuum" in warning
    assert "normal to (3 5 1)" in warning  # the planes (0 0 1) of the first basis, named in the file's own


@pytest.mark.parametrize(("vacuum", "flagged"), [(5.0, False), (VACUUM_GAP - 0.5, False), (VACUUM_GAP + 0.5, True)])
def test_threshold(vacuum, flagged):
    assert bool(domain_warnings(cu111_slab(vacuum))) is flagged


@pytest.mark.parametrize("molecule", [methane, water], ids=["CH4", "H2O"])
def test_molecule_in_a_box(molecule):
    (warning,) = domain_warnings(boxed(molecule()))
    assert warning.startswith("looks like an isolated molecule or cluster:")
    assert "Å of vacuum along a, b and c; the models were trained on bulk crystals" in warning


def test_atomic_chain_is_a_wire():
    chain = Structure(Lattice.orthorhombic(15, 15, 2.6), ["C", "C"], [[0.5, 0.5, 0], [0.5, 0.5, 0.5]])
    (warning,) = domain_warnings(chain)
    assert warning == ("looks like a 1D wire or chain: 15.0 and 15.0 Å of vacuum along a and b; "
                       "the models were trained on bulk crystals")


def test_close_atoms_still_warn_and_are_not_mistaken_for_vacuum():
    crowded = rocksalt_conventional(5.64)
    crowded.append("H", crowded[0].coords + np.array([0.3, 0, 0]), coords_are_cartesian=True)
    assert any("Å apart" in note for note in validate_structure(crowded))
    assert domain_warnings(crowded) == []


@pytest.mark.slow
def test_predict_keeps_a_value_and_explains_the_slab(tmp_path, random_ckpt):
    from crystalprop import predict

    slab_file = tmp_path / "POSCAR_slab"
    cu111_slab(15.0).to(filename=str(slab_file), fmt="poscar")
    rows = predict([str(slab_file), rocksalt(5.64), boxed(methane())], model=str(random_ckpt), workers=0)
    slab, bulk, molecule = rows
    assert "looks like a 2D slab: 15.0 Å of vacuum along c" in slab["warning"]
    assert "isolated molecule" in molecule["warning"] and bulk["warning"] == ""
    for row in rows:
        assert row["error"] == "" and math.isfinite(row["rand"])
