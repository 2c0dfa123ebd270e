"""The direct P1 CIF path gives pymatgen's structure, and leaves every other CIF to pymatgen."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifParser, CifWriter

from crystalprop.io.cif_p1 import p1_structure
from crystalprop.io.readers import StructureReadError, structure_from_text
from crystals import hcp_mg, nacl_conventional, srtio3


def _block(text: str) -> dict:
    return next(iter(CifParser.from_str(text).as_dict().values()))


def _p1_cif(structure: Structure) -> str:
    return str(CifWriter(structure))


def _assert_same_structure(got: Structure, expected: Structure) -> None:
    assert got.lattice == expected.lattice
    assert [site.species_string for site in got] == [site.species_string for site in expected]
    np.testing.assert_allclose(got.frac_coords, expected.frac_coords, atol=1e-12)


@pytest.mark.parametrize("make", [srtio3, nacl_conventional, hcp_mg])
def test_p1_block_gives_pymatgens_structure(make):
    structure = make()
    structure.translate_sites([0], [1.25, -0.5, 0.0])  # coordinates outside [0, 1) get wrapped
    text = _p1_cif(structure)
    fast = p1_structure(_block(text))
    assert fast is not None
    _assert_same_structure(fast, CifParser.from_str(text).parse_structures(primitive=False)[0])
    _assert_same_structure(structure_from_text(text, "x.cif")[0][1], fast)


def test_symmetrised_cif_is_left_to_pymatgen():
    text = str(CifWriter(nacl_conventional(), symprec=0.01))  # Fm-3m with its 192 operations
    assert p1_structure(_block(text)) is None
    assert len(structure_from_text(text, "nacl.cif")[0][1]) == 8


def test_partial_occupancy_is_left_to_pymatgen():
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    assert p1_structure(_block(_p1_cif(disordered))) is None


def test_coincident_sites_are_left_to_pymatgen():
    text = _p1_cif(srtio3()).replace("  O  O3  1  0.50000000  0.00000000  0.50000000  1",
                                     "  O  O3  1  0.50000000  0.50000000  0.00004000  1")
    assert "0.00004000" in text  # O3 now sits on O2 (0.5, 0.5, 0) within pymatgen's tolerance
    assert p1_structure(_block(text)) is None
    with pytest.raises(StructureReadError, match="atoms O2 and O3 share a position"):  # pymatgen merges them
        structure_from_text(text, "x.cif")


def test_charged_species_are_left_to_pymatgen():
    structure = srtio3()
    structure.add_oxidation_state_by_element({"Sr": 2, "Ti": 4, "O": -2})
    assert p1_structure(_block(_p1_cif(structure))) is None


def _large_cell(repeat: int) -> Structure:
    """A perturbed (2 repeat)^3 supercell of conventional NaCl: 8 repeat^3 sites, no two coincident."""
    structure = nacl_conventional()
    structure.make_supercell([repeat] * 3)
    noise = np.random.default_rng(0).normal(0, 0.002, (len(structure), 3))
    return Structure(structure.lattice, structure.species, structure.frac_coords + noise)


def test_large_p1_cell_takes_the_direct_path(monkeypatch):
    """Past 2,000 sites too (a 2,744-site cell): pymatgen's parse compares every site with every
    other in Python (about 15 s for 4,096 sites) and is not called."""
    text = _p1_cif(_large_cell(7))
    expected = CifParser.from_str(text).parse_structures(primitive=False)[0]
    fast = p1_structure(_block(text))
    assert fast is not None and len(fast) == 2744
    _assert_same_structure(fast, expected)

    def refuse(*args, **kwargs):
        raise AssertionError("pymatgen's parse was used")

    monkeypatch.setattr(CifParser, "parse_structures", refuse)
    _assert_same_structure(structure_from_text(text, "x.cif")[0][1], expected)


def test_coincident_sites_in_a_large_cell_are_left_to_pymatgen():
    structure = _large_cell(7)
    text = _p1_cif(structure)
    site = structure[100].frac_coords % 1.0
    moved = structure[2000].frac_coords % 1.0
    line = next(line for line in text.splitlines() if f"{moved[0]:.8f}  {moved[1]:.8f}  {moved[2]:.8f}" in line)
    close = site + [0.0, 0.0, 0.00004]
    text = text.replace(line, line.replace(f"{moved[0]:.8f}  {moved[1]:.8f}  {moved[2]:.8f}",
                                           f"{close[0]:.8f}  {close[1]:.8f}  {close[2]:.8f}"))
    assert p1_structure(_block(text)) is None


def test_dotted_p1_tag_takes_the_direct_path(monkeypatch):
    """A CIF2 ``_space_group_symop.operation_xyz`` P1 block, whose operation the reader also copies under
    the tag pymatgen reads, is still P1 to the direct path."""
    text = _p1_cif(srtio3()).replace("_symmetry_equiv_pos_as_xyz", "_space_group_symop.operation_xyz")
    expected = CifParser.from_str(text.replace("symop.", "symop_")).parse_structures(primitive=False)[0]

    def refuse(*args, **kwargs):
        raise AssertionError("pymatgen's parse was used")

    monkeypatch.setattr(CifParser, "parse_structures", refuse)
    _assert_same_structure(structure_from_text(text, "x.cif")[0][1], expected)
