"""Tests for crystalprop.io: format detection, readers, validation, discovery."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar
from pymatgen.symmetry.groups import SpaceGroup

from conftest import SHARED_DATA
from crystalprop.io import (
    StructureReadError,
    StructureRecord,
    detect_format,
    iter_file_records,
    iter_records,
    iter_structure_paths,
    read_file,
    read_file_with_timeout,
    structure_from_dict,
    structure_from_text,
    validate_structure,
)
from crystalprop.io import discovery, readers



@pytest.fixture(scope="module")
def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def quartz_like() -> Structure:
    return Structure(
        Lattice.hexagonal(4.91, 5.40),
        ["Si", "Si", "Si", "O", "O", "O", "O", "O", "O"],
        [
            [0.47, 0.0, 0.0], [0.0, 0.47, 2 / 3], [0.53, 0.53, 1 / 3],
            [0.41, 0.27, 0.12], [0.73, 0.14, 0.45], [0.86, 0.59, 0.79],
            [0.27, 0.41, 0.88], [0.14, 0.73, 0.55], [0.59, 0.86, 0.21],
        ],
    )


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def reason_of(path: str) -> str:
    with pytest.raises(StructureReadError) as info:
        read_file(path)
    assert info.value.path == path
    assert str(info.value) == f"{path}: {info.value.reason}"
    assert "\n" not in str(info.value)
    return info.value.reason


def strip_symbols(vasp4_text: str, n_sites: int) -> str:
    """Drop the element symbols pymatgen appends to VASP 4 coordinate lines."""
    lines = vasp4_text.splitlines()
    assert lines[5].split() == ["4", "4"] and lines[6].lower().startswith("d")
    for i in range(7, 7 + n_sites):
        lines[i] = " ".join(lines[i].split()[:3])
    return "\n".join(lines) + "\n"


# --- CIF -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cif_symmetrized_expands_to_conventional_cell(tmp_path, nacl):
    path = write(tmp_path / "nacl.cif", str(CifWriter(nacl, symprec=0.1)))
    assert "_symmetry_equiv_pos_as_xyz" in Path(path).read_text()
    [(name, s)] = read_file(path)
    assert name == path
    assert len(s) == 8
    assert s.composition.reduced_formula == "NaCl"


def test_cif_p1(tmp_path, quartz_like):
    path = write(tmp_path / "sio2.cif", str(CifWriter(quartz_like)))
    [(_, s)] = read_file(path)
    assert len(s) == 9
    assert s.composition.reduced_formula == "SiO2"


def test_cif_several_blocks_named_by_block(tmp_path, nacl, quartz_like):
    first = str(CifWriter(nacl)).replace("data_NaCl", "data_first")
    second = str(CifWriter(quartz_like)).replace("data_SiO2", "data_second")
    path = write(tmp_path / "two.cif", first + "\n" + second)
    result = read_file(path)
    assert [name for name, _ in result] == [f"{path}#first", f"{path}#second"]
    assert [len(s) for _, s in result] == [8, 9]


def test_a_cif_block_that_cannot_be_read_fails_alone(tmp_path, nacl):
    """A broken second block (a cell and nothing else) failed the whole file, the good block with it."""
    good = str(CifWriter(nacl)).replace("data_NaCl", "data_good")
    path = write(tmp_path / "two.cif", good + "\ndata_broken\n_cell_length_a 5\n")
    records = list(iter_file_records(path, None))
    assert [r.name for r in records] == [f"{path}#good", f"{path}#broken"]
    assert records[0].error is None and len(records[0].structure) == 8
    assert records[1].structure is None and "data block 'broken'" in records[1].error
    alone = write(tmp_path / "one.cif", "data_broken\n_cell_length_a 5\n")
    assert "data block 'broken'" in reason_of(alone)


def test_cif_block_without_cell_is_skipped(tmp_path, nacl):
    text = "data_global\n_journal_name_full 'Some Journal'\n\n" + str(CifWriter(nacl))
    path = write(tmp_path / "pub.cif", text)
    [(name, s)] = read_file(path)
    assert name == path and len(s) == 8


def test_cif_duplicate_block_names_kept_apart(tmp_path, nacl):
    text = str(CifWriter(nacl))
    path = write(tmp_path / "dup.cif", text + text)
    assert [n for n, _ in read_file(path)] == [f"{path}#NaCl", f"{path}#NaCl~2"]


def test_cif_data_line_inside_text_field_is_not_a_block(tmp_path, nacl):
    """SHELXL CIFs embed the FCF file, with its own data_ line and cell, in a text field."""
    fcf = (
        "_iucr_refine_fcf_details\n;\ndata_nacl_fcf\n_shelx_refln_list_code 4\n"
        "_cell_length_a 5.64\n_cell_length_b 5.64\n_cell_length_c 5.64\n"
        "loop_\n _refln_index_h\n _refln_index_k\n _refln_index_l\n _refln_F_squared_calc\n"
        "   1   1   1   12.3\n;\n"
    )
    path = write(tmp_path / "shelx.cif", str(CifWriter(nacl)) + fcf)
    [(name, s)] = read_file(path)
    assert name == path and len(s) == 8


def test_cif_uncertainties_and_extra_columns(tmp_path):
    text = """data_CsCl
_cell_length_a 4.123(4)
_cell_length_b 4.123(4)
_cell_length_c 4.123(4)
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
_atom_site_charge
_atom_site_spin_density
Cs1 Cs 0.0000(2) 0.0 0.0 1.0 0.91 0.001
Cl1 Cl 0.5 0.5000(3) 0.5 1.0 -0.91 0.0
"""
    [(_, s)] = read_file(write(tmp_path / "cscl.cif", text))
    assert s.lattice.a == pytest.approx(4.123)
    assert sorted(str(e) for e in s.composition.elements) == ["Cl", "Cs"]


def test_cif_truncated(tmp_path, nacl):
    text = str(CifWriter(nacl))
    assert "truncated" in reason_of(write(tmp_path / "cut.cif", text[: len(text) - 40]))


@pytest.mark.parametrize("symbol", ["Va", "Vac", "Bq", "Ph", "Cx", "Sx"])
def test_a_cif_type_symbol_that_is_no_element_is_refused(tmp_path, symbol):
    """pymatgen reads the vacancy 'Va' as vanadium, the ghost atom 'Bq' as boron, 'Ph' as phosphorus:
    such a site was predicted as that element with no warning (hunt8 finding 1)."""
    reason = reason_of(write(tmp_path / "x.cif", cubic_cif(3.0, [(symbol, 0.0), ("O", 0.5)], P1_LINE)))
    assert f"unknown element '{symbol}' (site {symbol}1)" in reason


@pytest.mark.parametrize("symbol, element", [("Fe2+", "Fe"), ("O2-", "O"), ("FE", "Fe"), ("ca", "Ca"), ("D", "H"),
                                             ("Ow", "O"), ("Wat", "O")])  # water's, read on purpose by pymatgen
def test_cif_type_symbols_with_charges_or_other_case_are_elements(tmp_path, symbol, element):
    (_, structure), = read_file(write(tmp_path / "x.cif", cubic_cif(3.0, [(symbol, 0.0), ("Cl", 0.5)], P1_LINE)))
    assert sorted(el.symbol for el in structure.composition.element_composition) == sorted([element, "Cl"])


def test_cif_without_atoms_names_missing_tag(tmp_path, nacl):
    text = str(CifWriter(nacl))
    reason = reason_of(write(tmp_path / "noatoms.cif", text[: text.index("loop_")]))
    assert "no structure" in reason and "_atom_site" in reason


def cubic_cif(a: float, sites: list[tuple[str, float]], symmetry: str = "") -> str:
    """CIF text of a cubic cell with sites (symbol, x = y = z) and the given symmetry lines."""
    cell = "".join(f"_cell_length_{axis} {a}\n" for axis in "abc")
    cell += "".join(f"_cell_angle_{angle} 90\n" for angle in ("alpha", "beta", "gamma"))
    atoms = "".join(f"{symbol}{i} {symbol} {x} {x} {x}\n" for i, (symbol, x) in enumerate(sites, 1))
    return (f"data_test\n{cell}{symmetry}\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
            f"_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n{atoms}")


NACL_SITES = [("Na", 0.0), ("Cl", 0.5)]
P1_LINE = "_symmetry_space_group_name_H-M 'P 1'\n"
FM3M_OPS = "loop_\n_space_group_symop.operation_xyz\n" + "".join(
    f"'{op.as_xyz_str()}'\n" for op in SpaceGroup("Fm-3m").symmetry_ops)


@pytest.mark.parametrize("symmetry", [
    "_space_group_name_Hall '-F 4 2 3'",
    "_symmetry_space_group_name_Hall '-F 4 2 3'",
    "_space_group.name_Hall '-F  4 2 3'",
    "_space_group.name_H-M_alt 'F m -3 m'",
    "_SYMMETRY_SPACE_GROUP_NAME_H-M 'F m -3 m'",
    "_space_group.IT_number 225",
    FM3M_OPS,
    "_symmetry_equiv_pos_as_xyz ?\n_symmetry_space_group_name_H-M 'F m -3 m'",
    "_space_group_symop_operation_xyz .\n_space_group_IT_number 225",
])
def test_cif_symmetry_under_any_tag_expands(tmp_path, symmetry):
    """A Hall symbol, and dotted (CIF2/mmCIF) or upper-case symmetry tags, were read as a 2-atom P1 cell
    (CsCl-like) without a word: pymatgen reads none of them. Operations given as unknown ('?') beside
    a symbol failed with 'Occupancy 2.0 exceeded tolerance' (pymatgen took '?' for a one-line P1 list)."""
    (record,) = iter_file_records(write(tmp_path / "nacl.cif", cubic_cif(5.69, NACL_SITES, symmetry)))
    assert record.error is None and record.warnings == []
    assert len(record.structure) == 8 and record.structure.composition.reduced_formula == "NaCl"
    assert record.structure.lattice.a == pytest.approx(5.69)


def test_cif_unknown_operations_are_dropped_with_any_line_ending_and_loops_kept(tmp_path):
    unknown = "_symmetry_equiv_pos_as_xyz ?\n_symmetry_space_group_name_H-M 'F m -3 m'"
    text = cubic_cif(5.69, NACL_SITES, unknown).replace("\n", "\r\n")
    (record,) = iter_file_records(write(tmp_path / "crlf.cif", text))
    assert record.error is None and len(record.structure) == 8
    listed = "loop_\n_symmetry_equiv_pos_as_xyz \n" + "".join(
        f"'{op.as_xyz_str()}'\n" for op in SpaceGroup("Fm-3m").symmetry_ops)  # a tag line with a trailing blank
    (record,) = iter_file_records(write(tmp_path / "loop.cif", cubic_cif(5.69, NACL_SITES, listed)))
    assert record.error is None and len(record.structure) == 8


def test_cif_hall_symbol_fixes_the_setting():
    """Diamond in origin choice 2 of Fd-3m (Si at 1/8, 1/8, 1/8): IT number 227 alone means origin choice 1
    in pymatgen, where that is a 16-fold site; the Hall symbol says which one the file uses."""
    symmetry = "_space_group_IT_number 227\n_space_group_name_Hall '-F 4vw 2vw 3'"
    [(_, s)] = structure_from_text(cubic_cif(5.43, [("Si", 0.125)], symmetry), "si.cif")
    assert len(s) == 8
    assert min(s.distance_matrix[0][1:]) == pytest.approx(5.43 * 3**0.5 / 4)


def hexagonal_cif(a: float, c: float, sites: list[tuple[str, float, float, float]], symmetry: str) -> str:
    """CIF text of a hexagonal cell with sites (symbol, x, y, z) and the given symmetry lines."""
    cell = f"_cell_length_a {a}\n_cell_length_b {a}\n_cell_length_c {c}\n"
    cell += "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 120\n"
    atoms = "".join(f"{symbol}{i} {symbol} {x} {y} {z}\n" for i, (symbol, x, y, z) in enumerate(sites, 1))
    return (f"data_test\n{cell}{symmetry}\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
            f"_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n{atoms}")


BI2SE3_SITES = [("Bi", 0, 0, 0.39734), ("Se", 0, 0, 0), ("Se", 0, 0, 0.217853)]


@pytest.mark.parametrize(("symbol", "x"), [
    ("'F d -3 m :2'", 0.125), ("'Fd-3m:2'", 0.125), ("'F d -3 m Z'", 0.125), ("'FD-3MZ'", 0.125),
    ("'F d -3 m :1'", 0.0), ("'F d -3 m S'", 0.0), ("'Fd-3mS'", 0.0), ("'F 41/d -3 2/m :2'", 0.125),
])
@pytest.mark.parametrize("tag", ["_symmetry_space_group_name_H-M", "_space_group_name_H-M_alt"])
def test_cif_setting_symbols_give_the_origin(tmp_path, tag, symbol, x):
    """ITA's ':1'/':2' and ICSD's 'S'/'Z' (origin choice 1/2) after an H-M symbol were refused as
    'not a space group that pymatgen or spglib can expand' (hunt8 finding 6)."""
    (record,) = iter_file_records(write(tmp_path / "si.cif", cubic_cif(5.43, [("Si", x)], f"{tag} {symbol}")))
    assert record.error is None and record.warnings == []
    assert len(record.structure) == 8
    assert min(record.structure.distance_matrix[0][1:]) == pytest.approx(5.43 * 3**0.5 / 4)


@pytest.mark.parametrize("symbol", ["'R -3 m :H'", "'R-3m:H'", "'R -3 m H'", "'R -3 2/m'", "'R -3 m'"])
def test_cif_rhombohedral_symbols_in_hexagonal_axes_expand(tmp_path, symbol):
    """'R -3 m :H', 'R -3 m H' and the full symbol 'R -3 2/m' were refused (hunt8 finding 6)."""
    text = hexagonal_cif(4.19, 30.41, BI2SE3_SITES, f"_symmetry_space_group_name_H-M {symbol}")
    (record,) = iter_file_records(write(tmp_path / "bi2se3.cif", text))
    assert record.error is None and record.warnings == []
    assert record.structure.composition.reduced_formula == "Bi2Se3" and len(record.structure) == 15


def bi2se3_rhombohedral_cif(symmetry: str) -> str:
    """CIF text of Bi2Se3's primitive cell in rhombohedral axes (a = b = c, α = β = γ, from the hexagonal
    a = 4.19 Å, c = 30.41 Å): Bi at (z, z, z) for the hexagonal (0, 0, z), one Se at the origin."""
    length = (4.19**2 / 3 + 30.41**2 / 9) ** 0.5
    angle = 2 * math.degrees(math.asin(4.19 / (2 * length)))
    cell = "".join(f"_cell_length_{axis} {length:.5f}\n" for axis in "abc")
    cell += "".join(f"_cell_angle_{name} {angle:.4f}\n" for name in ("alpha", "beta", "gamma"))
    return (f"data_test\n{cell}{symmetry}\nloop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
            "_atom_site_fract_y\n_atom_site_fract_z\nBi1 Bi 0.39734 0.39734 0.39734\nSe1 Se 0 0 0\n")


def test_cif_rhombohedral_axes_symbol_expands(tmp_path):
    """'R -3 m :R' names rhombohedral axes: Bi at (x, x, x) and Se at the origin of Bi2Se3's primitive cell."""
    text = bi2se3_rhombohedral_cif("_symmetry_space_group_name_H-M 'R -3 m :R'")
    (record,) = iter_file_records(write(tmp_path / "bi.cif", text))
    assert record.error is None and record.warnings == []
    assert record.structure.composition.reduced_formula == "Bi2Se" and len(record.structure) == 3


@pytest.mark.parametrize("symmetry", ["_symmetry_space_group_name_H-M 'R -3 m'", "_space_group_IT_number 166",
                                      "_space_group_IT_number 166(0)", "_symmetry_Int_Tables_number 166.0",
                                      "_space_group_name_H-M_alt 'R -3 2/m'", "_symmetry_space_group_name_H-M 'R-3m'"])
def test_cif_bare_rhombohedral_symbol_on_a_rhombohedral_cell_takes_rhombohedral_axes(tmp_path, symmetry):
    """A bare 'R -3 m' (or 166) on a cell with a = b = c and α = β = γ was expanded with the hexagonal axes'
    operations, as pymatgen does: Bi2Se3's 3-atom primitive cell became 36 atoms 0.3 Å apart, predicted with
    only a warning about close atoms. The cell's metric says which axes the file uses."""
    (record,) = iter_file_records(write(tmp_path / "bi.cif", bi2se3_rhombohedral_cif(symmetry)))
    assert record.error is None and len(record.structure) == 3
    assert record.structure.composition.reduced_formula == "Bi2Se"
    (note,) = record.warnings
    assert "rhombohedral axes" in note and "a = b = c" in note


@pytest.mark.parametrize(("symmetry", "x", "origin", "other"), [
    ("_symmetry_space_group_name_H-M 'F d -3 m'", 0.125, 2, 1),
    ("_symmetry_space_group_name_H-M 'F d -3 m'", 0.0, 1, 2),
    ("_space_group_IT_number 227", 0.125, 2, 1),
])
def test_cif_bare_symbol_of_two_origins_takes_the_one_that_keeps_atoms_apart(tmp_path, symmetry, x, origin, other):
    """Diamond in origin choice 2 under the bare symbol 'F d -3 m' was read in origin choice 1 without a word:
    16 Si, 1.92 Å apart (hunt8 finding 5). Both readings are made; the one with atoms farther apart is kept."""
    (record,) = iter_file_records(write(tmp_path / "si.cif", cubic_cif(5.43, [("Si", x)], symmetry)))
    assert record.error is None and len(record.structure) == 8
    assert min(record.structure.distance_matrix[0][1:]) == pytest.approx(5.43 * 3**0.5 / 4)
    (note,) = record.warnings
    assert "two origin choices" in note and f"read in origin choice {origin}" in note
    assert f"1.92 Å in origin choice {other}" in note and "2.35 Å" in note


def test_cif_symmetry_copies_of_a_rounded_site_are_one_atom(tmp_path):
    """Wurtzite with 1/3 written as 0.333: the 3-fold axis maps (0.333, 0.667) to (0.333, 0.666), 0.003 Å away,
    and the file was refused as 'overlapping atoms' (hunt8 finding 4)."""
    symmetry = "_symmetry_space_group_name_H-M 'P 63 m c'"
    exact = [("Zn", 1 / 3, 2 / 3, 0.0), ("O", 1 / 3, 2 / 3, 0.3821)]
    rounded = [(symbol, round(x, 3), round(y, 3), z) for symbol, x, y, z in exact]
    (record,) = iter_file_records(write(tmp_path / "zno.cif", hexagonal_cif(3.288, 5.3067, rounded, symmetry)))
    assert record.error is None and record.warnings == []
    [(_, reference)] = read_file(write(tmp_path / "exact.cif", hexagonal_cif(3.288, 5.3067, exact, symmetry)))
    assert len(record.structure) == len(reference) == 4
    assert record.structure.composition == reference.composition
    assert np.abs(record.structure.distance_matrix - reference.distance_matrix).max() < 0.01


def test_cif_distinct_sites_at_one_position_are_still_refused(tmp_path):
    """Merging the symmetry copies of one site must not merge two rows of the file."""
    sites = [("Zn", 0.333, 0.667, 0.0), ("Zn", 0.3335, 0.667, 0.0)]
    text = hexagonal_cif(3.288, 5.3067, sites, "_symmetry_space_group_name_H-M 'P 63 m c'")
    (record,) = iter_file_records(write(tmp_path / "two.cif", text))
    assert record.structure is None and record.error


def _with_occupancies(text: str, occupancies: list[str]) -> str:
    """``cubic_cif`` text with an _atom_site_occupancy column holding ``occupancies``, row by row."""
    head, rows = text.split("_atom_site_fract_z\n")
    lines = [f"{row} {occupancy}" for row, occupancy in zip(rows.splitlines(), occupancies)]
    return head + "_atom_site_fract_z\n_atom_site_occupancy\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(("symmetry", "sites", "occupancies", "said"), [
    (P1_LINE, [("Mg", 0.0), ("O", 0.5), ("Mg", 0.0)], ["1", "1", "1"],
     "atoms Mg1 and Mg3 share a position (occupancies 1 + 1)"),
    ("_symmetry_space_group_name_H-M 'F m -3 m'", [("Na", 0.0), ("Cl", 0.5), ("Na", 0.5)], ["1", "1", "1"],
     "atoms Cl2 and Na3 share a position (occupancies 1 + 1)"),
    (P1_LINE, [("Mg", 0.0), ("O", 0.5)], ["1.01", "1"], "site Mg1 has occupancy 1.01, above 1"),  # 1.0001: 1
])
def test_cif_occupancy_above_one_is_told_by_label(tmp_path, symmetry, sites, occupancies, said):
    """Two atoms at one position were refused with pymatgen's 'Occupancy 2.0 exceeded tolerance', which names
    no atom and no occupancy of the file (hunt8 finding 8)."""
    text = _with_occupancies(cubic_cif(4.2, sites, symmetry), occupancies)
    reason = reason_of(write(tmp_path / "two.cif", text))
    assert said in reason and "exceeded tolerance" not in reason


def test_a_disordered_site_is_named_by_its_label_and_occupancy(tmp_path):
    """A 0.9999 occupancy was reported at 'site 0', pymatgen's index after it re-sorts the sites, which shows
    it as 'Mg:1.0' (hunt8 finding 8)."""
    text = _with_occupancies(cubic_cif(4.2, [("O", 0.5), ("Mg", 0.0)], P1_LINE), ["1", "0.99"])
    (record,) = iter_file_records(write(tmp_path / "occ.cif", text))
    assert "partial occupancy) at site Mg2 (Mg 0.99)" in record.error  # 0.9999 is read as 1 (hunt15 8)


def test_a_cif_without_atom_site_labels_says_so(tmp_path):
    """A CIF without _atom_site_label was called 'malformed or truncated' (hunt8 finding 8)."""
    text = cubic_cif(5.69, NACL_SITES, P1_LINE).replace("_atom_site_label\n", "")
    text = text.replace("Na1 Na", "Na").replace("Cl2 Cl", "Cl")
    reason = reason_of(write(tmp_path / "nolabel.cif", text))
    assert "no _atom_site_label column" in reason and "malformed" not in reason


def test_too_many_sites_hint_at_the_primitive_cell(nacl):
    with pytest.raises(ValueError, match=r"exceed the limit of 4 \(a supercell of a small crystal: give its "
                                         r"primitive cell\)"):
        validate_structure(nacl, max_sites=4)


@pytest.mark.parametrize("symmetry", ["", "_symmetry_space_group_name_H-M ?", "_space_group_name_Hall '.'",
                                      "_symmetry_equiv_pos_as_xyz ?"])
def test_cif_without_symmetry_is_p1_with_a_warning(tmp_path, symmetry):
    """pymatgen warns 'Defaulting to P1' and a one-Cu file became simple-cubic Cu without a word."""
    (record,) = iter_file_records(write(tmp_path / "cu.cif", cubic_cif(3.615, [("Cu", 0.0)], symmetry)))
    assert record.error is None and len(record.structure) == 1
    assert record.warnings == ["no symmetry operations or space group in the file: read as P1"]


def test_read_notes_stay_out_of_returned_structures(tmp_path):
    """The P1 note rode in ``Structure.properties`` out of read_file and structure_from_text, so a structure
    saved with as_dict() and read again carried a stale 'read as P1' warning."""
    text = cubic_cif(3.615, [("Cu", 0.0)])
    path = write(tmp_path / "cu.cif", text)
    for _, s in read_file(path) + read_file_with_timeout(path, 30) + structure_from_text(text, "cu.cif"):
        assert readers.READ_NOTES_KEY not in s.properties
    saved = write(tmp_path / "cu.json", json.dumps(read_file(path)[0][1].as_dict()))
    (record,) = iter_file_records(saved)
    assert record.error is None and record.warnings == []
    (record,) = iter_file_records(write(tmp_path / "wrapped.json", json.dumps([{"id": "cu", "cif": text}])))
    assert record.warnings == ["no symmetry operations or space group in the file: read as P1"]


@pytest.mark.slow
def test_predict_warns_of_a_cif_read_as_p1(tmp_path, random_ckpt):
    from crystalprop.prediction.predictor import predict  # noqa: PLC0415  (loads the model backend)

    path = write(tmp_path / "cu.cif", cubic_cif(3.615, [("Cu", 0.0)]))
    (row,) = predict(path, str(random_ckpt), workers=0)
    assert row["error"] in (None, "") and "read as P1" in row["warning"]


@pytest.mark.parametrize("symmetry", ["_symmetry_equiv_pos_as_xyz 'x, y, z'", "_symmetry_space_group_name_H-M 'P 1'",
                                      "_space_group_name_Hall 'P 1'"])
def test_cif_stated_p1_gives_no_warning(tmp_path, symmetry):
    (record,) = iter_file_records(write(tmp_path / "cu.cif", cubic_cif(3.615, [("Cu", 0.0)], symmetry)))
    assert record.error is None and len(record.structure) == 1 and record.warnings == []


@pytest.mark.parametrize(("symmetry", "named"), [
    ("_space_group_name_Hall '-F 4 2 3 (x+1/4,y,z)'", "_space_group_name_Hall '-F 4 2 3 (x+1/4,y,z)'"),
    ("_space_group_name_Hall '-F 4 2 3 (x+1/4,y,z)'\n_space_group_name_H-M_alt 'F m -3 m'",
     "_space_group_name_Hall '-F 4 2 3 (x+1/4,y,z)'"),
    ("_space_group_name_Hall '-F 4 2 3 (x+1/4,y,z)'\n_space_group_IT_number 225",
     "_space_group_name_Hall '-F 4 2 3 (x+1/4,y,z)'"),
    ("_symmetry_space_group_name_H-M 'F m 3 q'", "_symmetry_space_group_name_H-M 'F m 3 q'"),
    ("loop_\n_symmetry_equiv_pos_as_xyz\n'x, y, z'\n'-x, -y, z+0.5.5'",
     "_symmetry_equiv_pos_as_xyz has an operation that cannot be read: '-x, -y, z+0.5.5'"),
])
def test_cif_unreadable_space_group_is_refused(tmp_path, symmetry, named):
    """A Hall symbol beside an H-M symbol or IT number was dropped for them, and its origin shift lost."""
    reason = reason_of(write(tmp_path / "nacl.cif", cubic_cif(5.69, NACL_SITES, symmetry)))
    assert reason.startswith("CIF data block 'test': cannot apply the symmetry") and named in reason


def test_a_nearly_flat_cell_is_refused_at_once():
    """A one-atom cell of 0.0032 Å³ (a 4 x 4 Å base, c almost in its plane) passed the volume check, then hung
    in pymatgen's compiled lattice-point search, deaf to --timeout and SIGTERM, until killed."""
    code = ("import time; from pymatgen.core import Lattice, Structure; from crystalprop.io.readers import "
            "validate_structure\n"
            "s = Structure(Lattice([[4, 0, 0], [0, 4, 0], [4, 4, 2e-4]]), ['Si'], [[0, 0, 0]])\n"
            "start = time.monotonic()\n"
            "try:\n    validate_structure(s)\nexcept ValueError as exc:\n    print('refused:', exc)\n"
            "print(f'{time.monotonic() - start:.2f} s')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "refused: every atom overlaps its own periodic image" in done.stdout
    assert float(done.stdout.split()[-2]) < 5.0


def test_atoms_closer_than_their_radii_allow_are_told():
    """Two Si atoms 1.0 Å apart (the Si-Si bond is 2.35 Å) were predicted without a note: the warning took
    0.5 Å for every pair of elements."""
    squeezed = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [1.0, 0, 0]], coords_are_cartesian=True)
    (warning,) = validate_structure(squeezed)
    assert "atoms 0 and 1 are 1.00 Å apart" in warning and "Si" in warning
    assert validate_structure(Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])) == []
    water_like = Structure(Lattice.cubic(6.0), ["O", "H"], [[0, 0, 0], [0.96, 0, 0]], coords_are_cartesian=True)
    assert validate_structure(water_like) == []  # an O-H bond is short, and right
    (image,) = validate_structure(Structure(Lattice.tetragonal(5.43, 1.0), ["Si"], [[0, 0, 0]]))
    assert image.startswith("each atom is 1.00 Å from its own periodic image") and "Si" in image


# --- POSCAR ----------------------------------------------------------------


def test_poscar_selective_dynamics_and_velocities(tmp_path, nacl):
    poscar = Poscar(nacl, selective_dynamics=[[True, False, True]] * 8, velocities=[[0.01, 0.0, -0.01]] * 8)
    poscar.write_file(tmp_path / "POSCAR")
    [(name, s)] = read_file(str(tmp_path / "POSCAR"))
    assert name == str(tmp_path / "POSCAR")
    assert s.composition.reduced_formula == "NaCl" and len(s) == 8


def test_contcar_with_predictor_block(tmp_path, quartz_like):
    text = Poscar(quartz_like).get_str()
    n = len(quartz_like)
    predictor = "\n".join(["1", "0.5", "0 0 0 0"] + ["0.0 0.0 0.0"] * (3 * n))
    velocities = "\n".join(["0.1 0.1 0.1"] * n)
    path = write(tmp_path / "CONTCAR", f"{text}\n{velocities}\n\n{predictor}\n")
    [(_, s)] = read_file(path)
    assert len(s) == n


def test_poscar_cartesian(tmp_path, quartz_like):
    path = write(tmp_path / "cart.vasp", Poscar(quartz_like).get_str(direct=False))
    [(_, s)] = read_file(path)
    assert np.allclose(s.cart_coords, quartz_like.cart_coords, atol=1e-6)


def test_poscar_negative_scale_is_volume(tmp_path, nacl):
    lines = Poscar(nacl).get_str().splitlines()
    lines[1] = "-179.406144"
    lines[2:5] = ["1 0 0", "0 1 0", "0 0 1"]
    [(_, s)] = read_file(write(tmp_path / "neg.poscar", "\n".join(lines)))
    assert s.volume == pytest.approx(179.406144)
    assert s.lattice.a == pytest.approx(5.64)


@pytest.mark.parametrize("selective", [False, True])
def test_poscar_negative_scale_with_cartesian_coordinates(tmp_path, nacl, selective):
    """A negative scale (the volume) with Cartesian coordinates: pymatgen scaled the lattice to the volume but
    multiplied the coordinates by the raw negative number, scrambling the atoms (MgO predicted at -0.49 instead
    of -3.06 eV/atom, no note). VASP scales both by (volume / cell volume)^(1/3)."""
    flags = [[True, True, False]] * len(nacl) if selective else None
    lines = Poscar(nacl, selective_dynamics=flags).get_str(direct=False).splitlines()
    scale = 2.0  # the file's lattice and coordinates are half size; the volume restores them
    lines[1] = f"-{nacl.volume:.9f}"
    lines[2:5] = [" ".join(f"{x / scale:.12f}" for x in row) for row in nacl.lattice.matrix]
    first = 9 if selective else 8
    for k, site in enumerate(nacl):
        lines[first + k] = " ".join(f"{x / scale:.12f}" for x in site.coords) + (" T T F" if selective else "")
    lines[0] = "NaCl\x0cpage"  # a form feed in the comment: a line break to str.splitlines, not to pymatgen
    [(_, s)] = read_file(write(tmp_path / "neg_cart.vasp", "\n".join(lines)))
    assert s.volume == pytest.approx(nacl.volume)
    assert np.allclose(s.cart_coords, nacl.cart_coords, atol=1e-6)


def test_vasp4_poscar_without_species_is_refused(tmp_path, nacl):
    text = strip_symbols(Poscar(nacl).get_str(vasp4_compatible=True), len(nacl))
    (tmp_path / "POTCAR").write_text("PAW_PBE Na_pv 05Jan2001\n")
    reason = reason_of(write(tmp_path / "POSCAR", text))
    assert "VASP 4" in reason and "element names" in reason


def test_vasp4_poscar_with_symbols_after_coordinates_reads(tmp_path, nacl):
    [(_, s)] = read_file(write(tmp_path / "POSCAR", Poscar(nacl).get_str(vasp4_compatible=True)))
    assert s.composition.reduced_formula == "NaCl"


def test_poscar_truncated(tmp_path, nacl):
    lines = Poscar(nacl).get_str().splitlines()
    assert "truncated" in reason_of(write(tmp_path / "POSCAR", "\n".join(lines[:10])))



@pytest.mark.parametrize("edit, said", [
    (lambda lines: lines.__setitem__(5, "Na K Cl"), "names 3 elements (Na K Cl) but its counts line gives 2"),
    (lambda lines: lines.__setitem__(6, "4 3"), "counts 7 atoms (4 3), but 8 coordinate lines follow"),
])
def test_a_poscar_whose_species_counts_and_coordinates_disagree_is_refused(tmp_path, nacl, edit, said):
    """Was (hunt18 4): one species name too many read LiFePO4 as LiMnFeP4 (O's atoms as P), and counts short of the
    coordinate lines dropped the last atoms, each predicted with an ordinary σ and no word."""
    lines = Poscar(nacl).get_str().splitlines()
    assert lines[5].split() == ["Na", "Cl"] and lines[6].split() == ["4", "4"]
    edit(lines)
    assert said in reason_of(write(tmp_path / "POSCAR", "\n".join(lines) + "\n"))
    velocities = Poscar(nacl).get_str() + "\n" + "\n".join(["0.1 0.1 0.1"] * 8) + "\n"  # after a blank line: read
    [(_, s)] = read_file(write(tmp_path / "CONTCAR", velocities))
    assert len(s) == 8


# --- JSON ------------------------------------------------------------------


def test_json_pymatgen_dict(tmp_path, quartz_like):
    path = write(tmp_path / "s.json", json.dumps(quartz_like.as_dict()))
    [(name, s)] = read_file(path)
    assert name == path and s == quartz_like


def test_json_site_properties_are_not_decoded(tmp_path, nacl):
    d = nacl.as_dict()
    d["sites"][0]["properties"] = {"evil": {"@module": "no_such_module_xyz", "@class": "Boom"}}
    [(_, s)] = read_file(write(tmp_path / "s.json", json.dumps(d)))
    assert "evil" not in s.site_properties


def test_json_jarvis_dict_direct_and_cartesian(tmp_path, quartz_like):
    def jarvis(cartesian: bool) -> dict:
        coords = quartz_like.cart_coords if cartesian else quartz_like.frac_coords
        return {
            "lattice_mat": quartz_like.lattice.matrix.tolist(),
            "coords": coords.tolist(),
            "elements": [site.specie.symbol for site in quartz_like],
            "abc": list(quartz_like.lattice.abc),
            "cartesian": cartesian,
            "props": [""] * len(quartz_like),
        }

    for cartesian in (False, True):
        [(_, s)] = read_file(write(tmp_path / f"j{cartesian}.json", json.dumps(jarvis(cartesian))))
        assert np.allclose(s.frac_coords, quartz_like.frac_coords, atol=1e-8)
    bad = jarvis(False)
    del bad["cartesian"]
    assert "cartesian" in reason_of(write(tmp_path / "bad.json", json.dumps(bad)))


def test_json_lists_named_by_index_or_id(tmp_path, nacl, quartz_like):
    plain = write(tmp_path / "plain.json", json.dumps([nacl.as_dict(), quartz_like.as_dict()]))
    assert [n for n, _ in read_file(plain)] == [f"{plain}#0", f"{plain}#1"]
    records = [{"id": "mp-22862", "structure": nacl.as_dict()}, {"id": 7, "atoms": quartz_like.as_dict()}]
    wrapped = write(tmp_path / "wrapped.json", json.dumps(records))
    result = read_file(wrapped)
    assert [n for n, _ in result] == [f"{wrapped}#mp-22862", f"{wrapped}#7"]
    assert [len(s) for _, s in result] == [8, 9]


def test_json_repeated_ids_get_unique_names(tmp_path, nacl, quartz_like):
    """JARVIS force-field sets hold several frames per jid; each row still needs its own name."""
    records = [{"jid": "15607", "atoms": s.as_dict()} for s in (nacl, quartz_like, nacl)]
    path = write(tmp_path / "frames.json", json.dumps(records))
    assert [n for n, _ in read_file(path)] == [f"{path}#15607", f"{path}#15607~2", f"{path}#15607~3"]


def test_json_bad_cases(tmp_path, nacl):
    text = json.dumps(nacl.as_dict())
    assert "JSON" in reason_of(write(tmp_path / "cut.json", text[: len(text) // 2]))
    assert "not a pymatgen Structure dict" in reason_of(write(tmp_path / "other.json", '{"a": 1}'))
    assert "empty list" in reason_of(write(tmp_path / "empty.json", "[]"))
    assert "item 1" in reason_of(write(tmp_path / "mixed.json", json.dumps([nacl.as_dict(), {"a": 1}])))


def test_json_list_fails_only_its_bad_items(tmp_path, nacl, quartz_like):
    """As a CIF's bad block, a bad item of a JSON list is a failed record of its own, named by its
    index (or id); the good items are read. read_file, which has no place for a failure, still raises."""
    path = write(tmp_path / "list.json", json.dumps([nacl.as_dict(), {"foo": 1}, quartz_like.as_dict(),
                                                     {"id": "x-9", "structure": {"bar": 2}}]))
    records = list(iter_file_records(path, None))
    assert [r.name for r in records] == [f"{path}#0", f"{path}#1", f"{path}#2", f"{path}#x-9"]
    assert [r.source for r in records] == [path] * 4
    assert [len(r.structure) if r.structure else None for r in records] == [8, None, 9, None]
    assert records[1].error.startswith("item 1: not a pymatgen Structure dict") and "foo" in records[1].error
    assert records[3].error.startswith("item 3: not a pymatgen Structure dict") and "bar" in records[3].error
    assert records[0].error is None and records[2].error is None
    assert reason_of(path).startswith("item 1: not a pymatgen Structure dict")
    assert [r.error for r in iter_file_records(path, 5)] == [r.error for r in records]


def test_json_reads_the_training_data_formats(tmp_path, nacl, quartz_like):
    """What train and evaluate read, predict reads: records with the structure as a dict or as
    CIF/POSCAR text (under structure, atoms, cif or poscar), in a list, JSON Lines or under "records"."""
    records = [{"id": "mp-1", "structure": str(CifWriter(nacl)), "y": 1.0},
               {"id": "mp-2", "poscar": Poscar(quartz_like).get_str(), "y": 2.0},
               {"material_id": "mp-3", "cif": str(CifWriter(quartz_like)), "y": 3.0},
               {"id": "mp-4", "structure": nacl.as_dict(), "y": 4.0}]
    sizes = [8, 9, 9, 8]
    listed = write(tmp_path / "data.json", json.dumps(records))
    lines = write(tmp_path / "data.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    wrapped = write(tmp_path / "wrapped.json", json.dumps({"records": records}))
    for path in (listed, lines, wrapped):
        found = list(iter_file_records(path, None))
        assert [r.name for r in found] == [f"{path}#mp-{i}" for i in range(1, 5)], path
        assert [len(r.structure) for r in found] == sizes
    bad = write(tmp_path / "bad.jsonl", json.dumps(records[0]) + "\n" + json.dumps({"id": "x", "structure": "junk"}))
    found = list(iter_file_records(bad, None))
    assert found[0].error is None and found[1].name == f"{bad}#x" and found[1].error.startswith("item 1: ")


def test_structure_from_dict_public(nacl):
    assert structure_from_dict(nacl.as_dict()) == nacl
    with pytest.raises(ValueError):
        structure_from_dict({"lattice": {"matrix": "nonsense"}, "sites": [{}]})


def test_structure_from_text_detects_format(nacl):
    [(name, s)] = structure_from_text(str(CifWriter(nacl)), "row 3")
    assert name == "row 3" and len(s) == 8
    assert len(structure_from_text(Poscar(nacl).get_str(), "x")[0][1]) == 8


# --- detection, damaged input, limits -------------------------------------


def test_detect_format_content_beats_name(nacl):
    poscar = Poscar(nacl).get_str()
    assert detect_format("structure.cif", poscar) == "poscar"
    assert detect_format("notes.txt", str(CifWriter(nacl))) == "cif"
    assert detect_format("whatever", ' [{"lattice": 1}]') == "json"
    assert detect_format("POSCAR_relaxed.gz", "damaged") == "poscar"
    assert detect_format("x.CIF.gz", "damaged") == "cif"
    with pytest.raises(StructureReadError, match="not a CIF, POSCAR or JSON"):
        detect_format("notes.txt", "hello world")


def test_bom_and_crlf(tmp_path, nacl):
    cif = str(CifWriter(nacl)).replace("\n", "\r\n")
    (tmp_path / "win.cif").write_bytes(cif.encode("utf-8-sig"))
    assert len(read_file(str(tmp_path / "win.cif"))[0][1]) == 8
    (tmp_path / "POSCAR").write_bytes(Poscar(nacl).get_str().replace("\n", "\r\n").encode("utf-8-sig"))
    assert len(read_file(str(tmp_path / "POSCAR"))[0][1]) == 8


def test_misnamed_file_reads_by_content(tmp_path, nacl):
    [(_, s)] = read_file(write(tmp_path / "data.txt", Poscar(nacl).get_str()))
    assert len(s) == 8


def test_gzip_by_name_and_by_magic(tmp_path, nacl):
    with gzip.open(tmp_path / "nacl.cif.gz", "wt") as handle:
        handle.write(str(CifWriter(nacl)))
    assert len(read_file(str(tmp_path / "nacl.cif.gz"))[0][1]) == 8
    (tmp_path / "POSCAR").write_bytes(gzip.compress(Poscar(nacl).get_str().encode()))
    assert len(read_file(str(tmp_path / "POSCAR"))[0][1]) == 8


def test_gzip_bomb_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_FILE_BYTES", 10_000)
    (tmp_path / "bomb.cif.gz").write_bytes(gzip.compress(b" " * 50_000))
    reason = reason_of(str(tmp_path / "bomb.cif.gz"))
    assert "exceeds" in reason and "limit" in reason
    (tmp_path / "big.cif").write_bytes(b" " * 20_000)
    assert "larger than" in reason_of(str(tmp_path / "big.cif"))


def test_truncated_gzip(tmp_path, nacl):
    data = gzip.compress(str(CifWriter(nacl)).encode())
    (tmp_path / "cut.cif.gz").write_bytes(data[: len(data) // 2])
    assert "truncated gzip" in reason_of(str(tmp_path / "cut.cif.gz"))


def test_empty_binary_unknown(tmp_path):
    assert reason_of(write(tmp_path / "empty.cif", "")) == "empty file"
    assert reason_of(write(tmp_path / "blank.vasp", "  \n\n")) == "empty file"
    (tmp_path / "junk.cif").write_bytes(bytes(range(256)) * 8)
    assert "not a CIF, POSCAR or JSON" in reason_of(str(tmp_path / "junk.cif"))
    assert reason_of(write(tmp_path / "notes.txt", "just some notes\n")) == "not a CIF, POSCAR or JSON structure"


def test_unreadable_paths(tmp_path, monkeypatch, nacl):
    assert reason_of(str(tmp_path / "missing.cif")) == "cannot read: no such file"
    assert "is a directory" in reason_of(str(tmp_path))
    path = write(tmp_path / "locked.cif", str(CifWriter(nacl)))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(readers, "open", denied, raising=False)
    assert reason_of(path) == "cannot read: permission denied"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_permission(tmp_path, nacl):
    path = write(tmp_path / "locked.cif", str(CifWriter(nacl)))
    os.chmod(path, 0)
    try:
        assert reason_of(path) == "cannot read: permission denied"
    finally:
        os.chmod(path, 0o644)


def test_timeout_restores_handler(tmp_path, monkeypatch, nacl):
    def slow(text: str, name: str):
        time.sleep(5)
        return []

    monkeypatch.setitem(readers._PARSERS, "cif", slow)
    path = write(tmp_path / "slow.cif", str(CifWriter(nacl)))
    before = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(StructureReadError, match=r"took longer than 0.5 s to parse; skipped"):
        read_file_with_timeout(path, 0.5)
    assert time.monotonic() - started < 3
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_timeout_outside_main_thread_reads(tmp_path, nacl):
    path = write(tmp_path / "ok.cif", str(CifWriter(nacl)))
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(read_file_with_timeout(path, 0.5)))
    worker.start()
    worker.join()
    assert len(result) == 1


# --- validation ------------------------------------------------------------


def test_validate_ok_returns_no_warnings(nacl):
    assert validate_structure(nacl) == []


def test_validate_disordered(tmp_path, nacl):
    disordered = nacl.copy()
    disordered.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    [(_, s)] = read_file(write(tmp_path / "dis.cif", str(CifWriter(disordered))))
    with pytest.raises(ValueError, match="ordered structure"):
        validate_structure(s)


def test_validate_overlap_and_close_atoms():
    overlap = Structure(Lattice.cubic(10), ["Si", "Si"], [[0.001, 0, 0], [0.999, 0, 0]])
    with pytest.raises(ValueError, match="overlapping atoms: atoms 0 and 1"):
        validate_structure(overlap)
    close = Structure(Lattice.cubic(10), ["Si", "Si", "O"], [[0, 0, 0], [0.03, 0, 0], [0.5, 0.5, 0.5]])
    assert validate_structure(close) == ["atoms 0 and 1 are 0.30 Å apart"]
    assert validate_structure(close, min_distance=0.2, radius_fraction=0) == []


def test_validate_atoms_close_to_their_own_periodic_image():
    """An atom's own images were never checked: Cu in a 0.3 Å cell was predicted without a word,
    and a 0.05 Å cubic cell was refused as 'coplanar'."""
    thin = Structure(Lattice.orthorhombic(0.3, 5, 5), ["Cu"], [[0, 0, 0]])
    assert validate_structure(thin) == [
        "each atom is 0.30 Å from its own periodic image (the cell's shortest translation)"]
    assert validate_structure(thin, min_distance=0.2, radius_fraction=0) == []
    skewed = Structure(Lattice([[5, 0, 0], [5.3, 4, 0], [0, 0, 5]]), ["Cu"], [[0, 0, 0]])  # b - a is 4.01 Å
    assert validate_structure(skewed) == []
    short = Structure(Lattice([[5, 0, 0], [5.3, 0.02, 0], [0, 0, 5]]), ["Cu"], [[0, 0, 0]])  # b - a is 0.30 Å
    assert validate_structure(short)[0].startswith("each atom is 0.30 Å from its own periodic image")
    with pytest.raises(ValueError, match="overlaps its own periodic image: lattice vector a is 0.05 Å long"):
        validate_structure(Structure(Lattice.cubic(0.05), ["Cu"], [[0, 0, 0]]))


@pytest.mark.parametrize("symmetry", ["_space_group_name_H-M_alt 'F m -3 m'", "_symmetry_equiv_pos_as_xyz 'x, y, z'"])
def test_unknown_element_is_refused_by_name(tmp_path, symmetry):
    """'Xx' became pymatgen's DummySpecies, reported as "Z = [4596438891025889392] in ['Na', 'Xx']" (a new
    number every run) after a 'canonical cell search failed' warning."""
    text = cubic_cif(5.69, [("Na", 0.0), ("Xx", 0.5)], symmetry)
    (record,) = iter_file_records(write(tmp_path / "naxx.cif", text))
    assert record.structure is None and record.error == "unknown element 'Xx'"


def test_unknown_elements_are_named_once_each():
    coords = [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
    structure = Structure(Lattice.cubic(6), ["Qq", "Na", "Xx", "Qq"], coords)
    with pytest.raises(ValueError, match=r"^unknown elements 'Qq', 'Xx'$"):
        validate_structure(structure)


def test_validate_large_structures_use_neighbour_search(monkeypatch):
    close = Structure(Lattice.cubic(10), ["Si", "Si", "O"], [[0, 0, 0], [0.97, 0, 0], [0.5, 0.5, 0.5]])
    expected = validate_structure(close)
    monkeypatch.setattr(readers, "DISTANCE_MATRIX_MAX_SITES", 1)
    assert validate_structure(close) == expected == ["atoms 0 and 1 are 0.30 Å apart"]
    big = Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]]) * (13, 13, 13)
    big.append("Po", [0.001, 0, 0])
    monkeypatch.setattr(readers, "DISTANCE_MATRIX_MAX_SITES", 2000)
    with pytest.raises(ValueError, match="overlapping"):
        validate_structure(big, max_sites=5000)


def test_validate_cell_coords_and_size(nacl):
    flat = Structure(Lattice([[1, 0, 0], [0, 1, 0], [1, 1, 0]]), ["Si"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="volume"):
        validate_structure(flat)
    nan = Structure(Lattice.cubic(4), ["Si", "Si"], [[0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(ValueError, match="non-finite"):
        validate_structure(nan)
    far = Structure(Lattice.cubic(4), ["Si", "Si"], [[0, 0, 0], [1e7, 0, 0]])
    with pytest.raises(ValueError, match="absurd"):
        validate_structure(far)
    with pytest.raises(ValueError, match="exceed the limit of 4"):
        validate_structure(nacl, max_sites=4)


# --- discovery -------------------------------------------------------------


@pytest.fixture()
def tree(tmp_path, nacl) -> Path:
    cif = str(CifWriter(nacl))
    poscar = Poscar(nacl).get_str()
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    write(tmp_path / "a.cif", cif)
    write(tmp_path / "POSCAR", poscar)
    write(tmp_path / "notes.txt", "not a structure")
    write(tmp_path / ".hidden.cif", cif)
    write(tmp_path / "sub" / "b.vasp", poscar)
    (tmp_path / "sub" / "c.json.gz").write_bytes(gzip.compress(json.dumps(nacl.as_dict()).encode()))
    write(tmp_path / "sub" / "deeper" / "CONTCAR_1", poscar)
    write(tmp_path / "sub" / "deeper" / "bad.cif", "")
    return tmp_path


def rel(paths, root: Path) -> list[str]:
    return [os.path.relpath(p, root) for p in paths]


def test_discovery_one_level_and_recursive(tree):
    assert rel(iter_structure_paths([str(tree)]), tree) == ["POSCAR", "a.cif"]
    assert rel(iter_structure_paths([str(tree)], recursive=True), tree) == [
        "POSCAR", "a.cif", "sub/b.vasp", "sub/c.json.gz", "sub/deeper/CONTCAR_1", "sub/deeper/bad.cif",
    ]


def test_discovery_files_globs_and_missing(tree):
    args = [str(tree / "notes.txt"), str(tree / "**" / "*.cif"), str(tree / "nothing*.cif"), str(tree / "gone.cif")]
    assert rel(iter_structure_paths(args), tree) == [
        "notes.txt", "a.cif", "sub/deeper/bad.cif", "nothing*.cif", "gone.cif",
    ]


def test_discovery_glob_matching_folders_yields_each_file_once(tree):
    """Files a pattern matches are taken as given; folders it matches are scanned."""
    paths = list(iter_structure_paths([str(tree / "**")]))
    assert len(paths) == len(set(paths))
    assert rel(paths, tree) == [
        "POSCAR", "a.cif", "notes.txt", "sub/b.vasp", "sub/c.json.gz", "sub/deeper/CONTCAR_1", "sub/deeper/bad.cif",
    ]


def test_discovery_skips_crystalprop_results_in_folders(tmp_path, nacl):
    """Results written into the scanned folder (a JSON table, a CSV's provenance sidecar) are not
    inputs of the next run; named on their own they are read, and refused by name."""
    write(tmp_path / "a.json", json.dumps(nacl.as_dict()))
    write(tmp_path / "results.json", '{"crystalprop_provenance": {"models": []}, "results": [\n]}\n')
    write(tmp_path / "results.csv.meta.json", json.dumps({"crystalprop_provenance": {}}, indent=2))
    assert rel(iter_structure_paths([str(tmp_path)]), tmp_path) == ["a.json"]
    named = str(tmp_path / "results.json")
    assert list(iter_structure_paths([named])) == [named]
    assert "crystalprop's own results" in reason_of(named)


def test_discovery_skips_gzipped_crystalprop_results(tmp_path, nacl):
    """Was: a result table or metrics.json gzipped in the data folder (res.json.gz) was read as a structure
    and counted as failed, where the plain one is skipped; a corrupt gzip is still read, and reported."""
    write(tmp_path / "a.json", json.dumps(nacl.as_dict()))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(nacl.as_dict()).encode()))
    (tmp_path / "res.json.gz").write_bytes(gzip.compress(b'{"crystalprop_provenance": {"models": []}, "results": []}'))
    metrics = {"model": "y", "checkpoint": "/runs/y/best.ckpt", "n": 6}
    (tmp_path / "metrics.json.gz").write_bytes(gzip.compress(json.dumps(metrics).encode()))
    (tmp_path / "cut.json.gz").write_bytes(gzip.compress(json.dumps(nacl.as_dict()).encode())[:20])
    assert rel(iter_structure_paths([str(tmp_path)]), tmp_path) == ["a.json", "b.json.gz", "cut.json.gz"]


def test_discovery_skips_results_saved_again_with_a_byte_order_mark(tmp_path, nacl):
    """Was: a result table, sidecar or metrics.json re-saved by an editor as "UTF-8 with BOM" was taken
    for a structure file of the folder (and failed as one), though its record still read."""
    bom = "\ufeff"
    write(tmp_path / "a.json", json.dumps(nacl.as_dict()))
    write(tmp_path / "results.json", bom + '{"crystalprop_provenance": {"models": []}, "results": [\n]}\n')
    write(tmp_path / "results.csv.meta.json", bom + json.dumps({"crystalprop_provenance": {}}, indent=2))
    write(tmp_path / "metrics.json", bom + json.dumps({"model": "y", "checkpoint": "/runs/y/best.ckpt", "n": 6}))
    assert rel(iter_structure_paths([str(tmp_path)]), tmp_path) == ["a.json"]


def test_discovery_skips_the_metrics_evaluate_wrote(tmp_path, nacl):
    """evaluate's metrics.json (told by its content: it opens with the model and its checkpoint) is no input
    of predict -r, under any name; a user's structure called metrics.json is, even beside predict's
    predictions.csv.meta.json (a sidecar beside it was taken for evaluate's, and the structure skipped)."""
    metrics = {"model": "y", "checkpoint": "/runs/y/best.ckpt", "data": "d.json", "target": "y", "n": 6,
               "provenance": {"models": []}}
    (tmp_path / "eval").mkdir()
    write(tmp_path / "eval" / "metrics.json", json.dumps(metrics, indent=2))
    write(tmp_path / "eval" / "predictions.csv.meta.json", json.dumps({"crystalprop_provenance": {}}, indent=2))
    (tmp_path / "bare").mkdir()
    write(tmp_path / "bare" / "metrics.json", json.dumps(metrics))
    write(tmp_path / "bare" / "kept_metrics.json", json.dumps(metrics))
    (tmp_path / "predicted").mkdir()
    write(tmp_path / "predicted" / "metrics.json", json.dumps(nacl.as_dict()))
    write(tmp_path / "predicted" / "predictions.csv.meta.json", json.dumps({"crystalprop_provenance": {}}))
    (tmp_path / "mine").mkdir()
    write(tmp_path / "mine" / "metrics.json", json.dumps(nacl.as_dict()))
    assert rel(iter_structure_paths([str(tmp_path)], recursive=True), tmp_path) == [
        "mine/metrics.json", "predicted/metrics.json"]
    for name in ("eval/metrics.json", "bare/kept_metrics.json"):
        assert "the metrics.json of evaluate" in reason_of(str(tmp_path / name))


def test_discovery_streams(tree, monkeypatch):
    calls: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):
        calls.append(path)
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", counting_scandir)
    paths = iter_structure_paths([str(tree)], recursive=True)
    first = next(paths)
    assert first.endswith("POSCAR") and len(calls) == 1
    list(paths)
    assert len(calls) == 3


def test_discovery_reports_broken_links_in_folders(tmp_path, nacl):
    """Was: a link into a purged scratch folder was left out of a folder scan, with no row and no message
    (``is_file`` is False for a link to nothing); it fails, naming the target it lost."""
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    scratch.mkdir()
    data.mkdir()
    write(scratch / "a.cif", str(CifWriter(nacl)))
    (data / "a.cif").symlink_to(scratch / "a.cif")
    (data / "b.cif").symlink_to(scratch / "b.cif")
    errors = {os.path.basename(r.name): r.error for r in iter_records([str(data)])}
    assert errors == {"a.cif": None, "b.cif": f"broken link -> {os.path.realpath(scratch / 'b.cif')}"}
    assert reason_of(str(data / "b.cif")) == f"broken link -> {os.path.realpath(scratch / 'b.cif')}"


def test_discovery_a_link_removed_after_listing_is_no_such_file(tmp_path, nacl):
    """Was: a symlinked file removed between the listing of its folder and its turn dropped out silently,
    where a regular file gets a "no such file" row."""
    write(tmp_path / "a.cif", str(CifWriter(nacl)))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "b.cif").symlink_to(write(tmp_path / "elsewhere" / "b.cif", str(CifWriter(nacl))))
    records = iter_records([str(tmp_path)])
    assert next(records).error is None
    os.unlink(tmp_path / "b.cif")
    assert [(os.path.basename(r.name), r.error) for r in records] == [("b.cif", "cannot read: no such file")]


def test_discovery_follows_symlinked_folders_once(tmp_path, nacl, monkeypatch):
    """Was: -r never entered a symlinked sub-folder ("to avoid cycles"), silently, so `data/sub -> /scratch/..`
    lost its structures. Linked folders are followed now, each folder once by its device and inode: links
    back up end, and a second name of a folder read already is not listed again."""
    cif = str(CifWriter(nacl))
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "real").mkdir(parents=True)
    outside.mkdir()
    write(data / "top.cif", cif)
    write(data / "real" / "r.cif", cif)
    write(outside / "o.cif", cif)
    (data / "linked").symlink_to(outside)
    (data / "twin").symlink_to(data / "real")
    (data / "real" / "again").symlink_to(data / "real")
    (outside / "up").symlink_to(data)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):
        listed.append(os.path.realpath(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", counting_scandir)
    assert rel(iter_structure_paths([str(data)], recursive=True), data) == ["top.cif", "linked/o.cif", "real/r.cif"]
    assert listed == [os.path.realpath(p) for p in (data, outside, data / "real")]
    assert rel(iter_structure_paths([str(data)]), data) == ["top.cif"]


def test_no_structures_found_names_links_it_does_not_follow(tmp_path, nacl):
    """Was: a folder holding only a symlinked sub-folder (or a link to nothing) was called "empty"."""
    only_link, loop, purged = tmp_path / "onlylink", tmp_path / "loop", tmp_path / "purged"
    for folder in (only_link, loop, purged, tmp_path / "data"):
        folder.mkdir()
    write(tmp_path / "data" / "a.cif", str(CifWriter(nacl)))
    (only_link / "data").symlink_to(tmp_path / "data")
    (loop / "self").symlink_to(loop)
    (purged / "sub").symlink_to(tmp_path / "gone")
    assert discovery.no_structures_found([str(only_link)]) == (
        f"no structure files found in {only_link} (1 sub-folder: use -r to read it)")
    assert discovery.no_structures_found([str(only_link)], recursive=True) is None
    assert discovery.no_structures_found([str(loop)], recursive=True) == (
        f"no structure files found in {loop} (1 sub-folder not followed, a folder read already, e.g. {loop / 'self'})")
    gone = os.path.realpath(tmp_path / "gone")
    assert discovery.no_structures_found([str(purged)], recursive=True) == (
        f"no structure files found in {purged} (1 broken link, e.g. {purged / 'sub'} -> {gone})")


def test_iter_records(tree, nacl):
    records = list(iter_records([str(tree), str(tree / "missing.cif")], recursive=True))
    assert all(isinstance(r, StructureRecord) for r in records)
    by_name = {rel([r.name], tree)[0]: r for r in records}
    assert set(by_name) == {
        "POSCAR", "a.cif", "sub/b.vasp", "sub/c.json.gz", "sub/deeper/CONTCAR_1", "sub/deeper/bad.cif", "missing.cif",
    }
    good = [r for r in records if r.error is None]
    assert len(good) == 5 and all(len(r.structure) == 8 and r.source == r.name for r in good)
    assert by_name["sub/deeper/bad.cif"].error == "empty file"
    assert by_name["sub/deeper/bad.cif"].structure is None
    assert by_name["missing.cif"].error == "cannot read: no such file"


def test_iter_records_validation_errors_and_blocks(tmp_path, nacl):
    disordered = nacl.copy()
    disordered.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    first = str(CifWriter(nacl)).replace("data_NaCl", "data_one")
    second = str(CifWriter(disordered)).replace("data_", "data_two_", 1)
    path = write(tmp_path / "two.cif", first + second)
    records = list(iter_records([path], timeout=None))
    assert [r.name for r in records] == [f"{path}#one", f"{path}#two_{disordered.composition.reduced_formula}"]
    assert records[0].error is None and records[0].source == path
    assert "ordered" in records[1].error and records[1].source == path


# --- shared real data ------------------------------------------------------


def shared_files(subdir: str, count: int) -> list[Path]:
    folder = SHARED_DATA / subdir / "structures"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".cif"):
                files.append(Path(entry.path))
            if len(files) == count:
                break
    return sorted(files)


@pytest.mark.shared
def test_mp2018_cifs_match_pymatgen():
    for path in shared_files("mp2018", 50):
        [(name, s)] = read_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = Structure.from_file(path)
        assert name == str(path)
        assert len(s) == len(reference) and s.composition == reference.composition
        validate_structure(s)


@pytest.mark.shared
def test_qmof_cifs_with_extra_columns():
    for path in shared_files("qmof_subset", 5):
        [(_, s)] = read_file(str(path))
        assert len(s) > 0 and "H" in {e.symbol for e in s.composition.elements}
        validate_structure(s)


def test_discovery_keeps_every_name_that_links_to_one_file(tmp_path, nacl):
    """Candidates picked from a database as links: two names linking to one file gave one row, the second name
    vanishing without a word (hunt13 2). One file reached twice under one name (its folder and itself, a folder
    through a link) still comes once."""
    db = tmp_path / "db"
    db.mkdir()
    write(db / "mp-1.cif", str(CifWriter(nacl)))
    cands = tmp_path / "cands"
    cands.mkdir()
    for name in ("cand_1.cif", "cand_3.cif"):
        (cands / name).symlink_to(db / "mp-1.cif")
    assert rel(iter_structure_paths([str(cands)]), cands) == ["cand_1.cif", "cand_3.cif"]
    assert len(list(iter_structure_paths([str(cands / "cand_1.cif"), str(cands / "cand_3.cif")]))) == 2
    assert len(list(iter_structure_paths([str(cands), str(cands / "cand_1.cif")]))) == 2
    (tmp_path / "alias").symlink_to(db)
    assert len(list(iter_structure_paths([str(db / "mp-1.cif"), str(tmp_path / "alias" / "mp-1.cif")]))) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_in_a_folder_gets_its_row_and_none_hangs(tmp_path, nacl):
    """Was (hunt13 5): a named pipe (or a link to a device) named like a structure vanished from a folder's
    results silently, and one given by name waited for a writer for ever. Each now gets a row saying what
    it is, at once; a pipe that something writes to (``<(zcat x.cif.gz)``) is read as before."""
    import threading  # noqa: PLC0415

    write(tmp_path / "a.cif", str(CifWriter(nacl)))
    os.mkfifo(tmp_path / "p.cif")
    (tmp_path / "z.cif").symlink_to("/dev/null")
    result: dict[str, object] = {}
    reader = threading.Thread(target=lambda: result.update(
        folder={os.path.basename(r.name): r.error for r in iter_records([str(tmp_path)], timeout=None)},
        given=[r.error for r in iter_records([str(tmp_path / "p.cif")], timeout=None)]), daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # let the thread finish, then fail
        with open(tmp_path / "p.cif", "w"):
            pass
        pytest.fail("reading a named pipe that nothing writes to hung")
    nothing = "cannot read: a named pipe that gave no data within 2 s (nothing writes to it)"
    assert result["folder"] == {"a.cif": None, "p.cif": nothing, "z.cif": "empty file"}
    assert result["given"] == [nothing]
    text = str(CifWriter(nacl))

    def feed() -> None:
        with open(tmp_path / "p.cif", "w") as pipe:
            pipe.write(text)

    threading.Timer(0.5, feed).start()  # the writer opens after the reader: what a shell's <(...) may do
    records = list(iter_records([str(tmp_path / "p.cif")], timeout=None))
    assert [r.error for r in records] == [None] and len(records[0].structure) == len(nacl)


def test_a_cif_cut_at_a_line_is_refused_by_its_stated_formula(tmp_path):
    """Was (hunt15 1): LiFePO4 (28 sites) with its last lines lost was read as 'Li2Fe2P2O3', 18 sites, and
    predicted with an ordinary σ: a cut at a line boundary leaves a valid CIF of fewer sites. pymatgen's CIFs
    (and most others) state _chemical_formula_sum; sites that do not make it are refused, naming both."""
    lines = CifWriter(Structure.from_spacegroup("Pnma", Lattice.orthorhombic(10.3, 6.0, 4.7), ["Li", "Fe", "P", "O", "O", "O"],
                                                [[0, 0, 0], [0.28, 0.25, 0.97], [0.09, 0.25, 0.42], [0.10, 0.25, 0.74],
                                                 [0.46, 0.25, 0.21], [0.17, 0.05, 0.28]])).__str__().splitlines()
    whole = write(tmp_path / "whole.cif", "\n".join(lines) + "\n")
    cut = write(tmp_path / "cut.cif", "\n".join(lines[:-10]) + "\n")
    assert "_chemical_formula_sum   'Li4 Fe4 P4 O16'" in lines
    assert [r.error for r in iter_records([whole])] == [None]
    errors = [r.error for r in iter_records([cut])]
    assert len(errors) == 1 and errors[0] is not None, errors
    assert "_chemical_formula_sum" in errors[0] and "Li4 Fe4 P4 O16" in errors[0] and "18 sites" in errors[0], errors[0]
    assert "O: 6 in the cell, 'Li4 Fe4 P4 O16' states 16" in errors[0] and "cut short" in errors[0], errors[0]
    same = write(tmp_path / "units.cif", "\n".join(lines).replace("'Li4 Fe4 P4 O16'", "'Fe Li O4 P'") + "\n")
    assert [r.error for r in iter_records([same])] == [None]  # one formula unit, as ICSD and COD state it
    unit_cut = write(tmp_path / "unit_cut.cif", "\n".join(lines[:-10]).replace("'Li4 Fe4 P4 O16'", "'Fe Li O4 P'"))
    assert "O: 6 in the cell, 'Fe Li O4 P' × Z 4 states 16" in [r.error for r in iter_records([unit_cut])][0]
    occupied = write(tmp_path / "occ_cut.cif", "\n".join(lines[:-10]).replace("  1\n", "  0.99999\n") + "\n")
    assert "cut short" in [r.error for r in iter_records([occupied])][0]  # read as full sites, still lacking
    odd = write(tmp_path / "odd.cif", "\n".join(lines).replace("'Li4 Fe4 P4 O16'", "'?'") + "\n")
    assert [r.error for r in iter_records([odd])] == [None]  # nothing stated: nothing to compare


def test_a_glob_that_matches_nothing_says_so(tmp_path):
    """Was (hunt15 10): 'nomatch/*.cif: cannot read: no such file', as if a file of that name were missing."""
    records = list(iter_records([str(tmp_path / "nomatch" / "*.cif")]))
    assert [r.error for r in records] == ["no file matches this pattern"]




@pytest.mark.parametrize("occupancy, read", [("0.99999", True), ("1.00001", True), ("0.999", True),
                                             ("0.99", False), ("1.01", False)])
def test_an_occupancy_off_one_by_rounding_is_read_as_one(tmp_path, occupancy, read):
    """Was (hunt15 8): a full site written 0.99999 (as refinement programs and databases round it) was refused as
    disordered, and 1.00001 as 'above 1'. Within 0.001 of 1 a one-element site is full, with a note."""
    text = _with_occupancies(cubic_cif(5.69, [("Na", 0.0), ("Cl", 0.5)], "_symmetry_space_group_name_H-M 'F m -3 m'"),
                             [occupancy, "1"])
    path = write(tmp_path / "occ.cif", text)
    [record] = list(iter_records([path]))
    if read:
        assert record.error is None and len(record.structure) == 8 and record.structure.is_ordered, record.error
        if occupancy != "1.00001":  # pymatgen scales that one down itself
            assert any("occupancy" in note and occupancy in note for note in record.warnings), record.warnings
    else:
        assert record.error is not None and ("disordered" in record.error or "above 1" in record.error), record.error


def test_a_cif_lacking_atoms_of_its_formula_is_told_the_likely_cause(tmp_path):
    """Review of hunt15 1: every shortfall was called 'a file cut short'. Hydrogen that an X-ray structure leaves
    out is read, with a note; a file without symmetry (its asymmetric unit only) says so; every element short by
    one ratio points at Z or lost centring operators."""
    head = ("data_x\n_cell_length_a 3.15\n_cell_length_b 3.15\n_cell_length_c 4.77\n_cell_angle_alpha 90\n"
            "_cell_angle_beta 90\n_cell_angle_gamma 120\n")
    sites = ("loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
             "_atom_site_fract_z\nMg1 Mg 0 0 0\nO1 O 0.3333 0.6667 0.22\nO2 O 0.6667 0.3333 0.78\n")
    brucite = write(tmp_path / "brucite.cif", head + "_symmetry_space_group_name_H-M 'P 1'\n"
                    "_chemical_formula_sum 'H2 Mg1 O2'\n_cell_formula_units_Z 1\n" + sites)
    [record] = list(iter_records([brucite]))
    assert record.error is None and any("hydrogen missing" in w for w in record.warnings), record.warnings
    nosym = write(tmp_path / "nosym.cif", head + "_chemical_formula_sum 'Mg O2'\n_cell_formula_units_Z 2\n" + sites)
    assert "gives no symmetry" in reason_of(nosym)
    half = write(tmp_path / "half.cif", head + "_symmetry_space_group_name_H-M 'P 1'\n"
                 "_chemical_formula_sum 'Mg O2'\n_cell_formula_units_Z 2\n" + sites)
    assert "same ratio (0.5)" in reason_of(half)


def test_an_output_in_a_linked_sub_folder_of_a_recursive_scan_is_an_input(tmp_path):
    """Was (session 43's note): with -r the scan follows a linked sub-folder, but the check that the output is
    not one of the inputs walked up from the output's real folder only, so `predict top -r -o elsewhere/b.cif`
    with top/link -> elsewhere emptied b.cif before reading it."""
    from crystalprop.io.discovery import output_among_inputs  # noqa: PLC0415

    (tmp_path / "top").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "top" / "link")
    (tmp_path / "elsewhere" / "b.cif").write_text("data_b\n")
    output = str(tmp_path / "elsewhere" / "b.cif")
    assert output_among_inputs(output, [str(tmp_path / "top")], recursive=True) == str(tmp_path / "top")
    assert output_among_inputs(output, [str(tmp_path / "top")], recursive=False) is None
    os.symlink(output, tmp_path / "top" / "b_link.cif")  # a linked file the scan reads (review 44)
    assert output_among_inputs(output, [str(tmp_path / "top")], recursive=False) == str(tmp_path / "top")


@pytest.mark.parametrize("marks", [(".", "1"), ("1", "."), (".", "."), ("?", ".")])
def test_an_occupancy_given_as_inapplicable_is_the_default_full_site(tmp_path, marks):
    """Was (hunt18 3): an occupancy written '.' (CIF's 'inapplicable': the dictionary's default, 1) dropped its site:
    NaCl was predicted as metallic Na with an ordinary σ; '.' on both sites was refused with spglib's error text."""
    text = _with_occupancies(cubic_cif(5.64, [("Na", 0.0), ("Cl", 0.5)], "_symmetry_space_group_name_H-M 'F m -3 m'"),
                             list(marks))
    [record] = list(iter_records([write(tmp_path / "occ.cif", text)]))
    assert record.error is None, record.error
    assert record.structure.composition.reduced_formula == "NaCl" and len(record.structure) == 8


def test_close_pairs_of_a_large_sparse_cell_are_found_without_a_grid_the_size_of_its_volume(monkeypatch):
    """Was (hunt18 2): 3,000 atoms in a 300 Å box took 7.2 GB in pymatgen's cell-list search (a grid that grows
    with the volume, before the pair guard); a 1,000 Å box asked for 8 GB and failed with a raw MemoryError. The
    close-pair check now searches a k-d tree of the atoms and their neighbouring images: the same pairs."""
    from crystalprop.io import readers  # noqa: PLC0415

    rng = np.random.default_rng(3)
    frac = rng.random((2100, 3))
    frac[:5] = frac[5:10] + [0.0004, 0.0, 0.0]  # five pairs 0.12 Å apart
    frac[10] = [0.9999, 0.5, 0.5]
    frac[11] = [0.0001, 0.5, 0.5]  # a pair across the cell's face: 0.06 Å through the periodic boundary
    gas = Structure(Lattice.from_parameters(300, 310, 290, 80, 95, 100), ["Ar"] * len(frac), frac)
    monkeypatch.setattr(Structure, "get_neighbor_list", lambda *a, **k: (_ for _ in ()).throw(AssertionError("grid")))
    found = readers._close_pairs(gas, 0.5, 0.5)
    monkeypatch.setattr(readers, "DISTANCE_MATRIX_MAX_SITES", 10_000)
    expected = readers._close_pairs(gas, 0.5, 0.5)  # the distance matrix, periodic images included
    assert len(expected) == 6 and sorted((i, j) for i, j, _ in found) == sorted((i, j) for i, j, _ in expected)
    np.testing.assert_allclose([d for *_, d in sorted(found)], [d for *_, d in sorted(expected)], atol=1e-9)


def test_real_world_poscar_spellings_are_read_or_refused_by_name(tmp_path, nacl):
    """Was (hunt18 7): a scale line with a trailing '! comment' (VASP ignores it) and lower-case symbols were refused
    with parser text; VASP 6's three scale factors with 'could not convert string to float'."""
    lines = Poscar(nacl).get_str().splitlines()
    commented = [lines[0], lines[1] + "   ! scale", lines[2] + " ! a", *lines[3:5], lines[5].lower(), *lines[6:]]
    [(_, s)] = read_file(write(tmp_path / "POSCAR", "\n".join(commented) + "\n"))
    assert s.composition.reduced_formula == "NaCl" and s.lattice.a == pytest.approx(nacl.lattice.a)
    shouted = [*lines[:5], lines[5].upper(), *lines[6:]]  # NA CL (review 45)
    [(_, loud)] = read_file(write(tmp_path / "upper.vasp", "\n".join(shouted) + "\n"))
    assert loud.composition.reduced_formula == "NaCl"
    three = [lines[0], "1.0 1.0 2.0", *lines[2:]]
    assert "three scale factors" in reason_of(write(tmp_path / "three.vasp", "\n".join(three) + "\n"))
    two = [lines[0], "1.0 2.0", *lines[2:]]  # was read as 1.0 without a word (review 45)
    assert "two numbers on the scale line" in reason_of(write(tmp_path / "two.vasp", "\n".join(two) + "\n"))


def test_magnetic_cifs_are_scanned_and_other_compressions_named(tmp_path, nacl):
    """Was (hunt18 8): a folder scan left MAGNDATA's .mcif files out without a word (named, they are read), and an
    xz-compressed CONTCAR was refused as 'binary data' with no word of xz (gzip is read)."""
    import lzma  # noqa: PLC0415

    from crystalprop.io.discovery import iter_structure_paths  # noqa: PLC0415

    CifWriter(nacl).write_file(tmp_path / "a.mcif")
    CifWriter(nacl).write_file(tmp_path / "b.cif")
    assert sorted(os.path.basename(p) for p in iter_structure_paths([str(tmp_path)])) == ["a.mcif", "b.cif"]
    (tmp_path / "CONTCAR.xz").write_bytes(lzma.compress(Poscar(nacl).get_str().encode()))
    assert "xz-compressed" in reason_of(str(tmp_path / "CONTCAR.xz"))


def test_a_cif_lacking_a_cell_parameter_names_it(tmp_path):
    """Was (hunt18 9): a CIF without _cell_angle_gamma said 'cannot reshape array of size 1 into shape (3,3)'."""
    text = cubic_cif(5.64, [("Na", 0.0), ("Cl", 0.5)], "_symmetry_space_group_name_H-M 'F m -3 m'")
    lines = [line for line in text.splitlines() if not line.startswith("_cell_angle_gamma")]
    assert len(lines) < len(text.splitlines())
    assert "_cell_angle_gamma" in reason_of(write(tmp_path / "no_gamma.cif", "\n".join(lines) + "\n"))


def test_a_pseudo_hydrogen_potcar_name_is_read_as_hydrogen_with_a_note(tmp_path, nacl):
    """Was (hunt18 7, review 45 4): 'H.75' (a pseudo-hydrogen of fractional charge, passivating a slab) was read as H
    without a word: another compound than the one computed."""
    lines = Poscar(nacl).get_str().splitlines()
    lines[5] = "Na H.75"
    [record] = list(iter_records([write(tmp_path / "POSCAR", "\n".join(lines) + "\n")]))
    assert record.structure.composition.reduced_formula == "NaH"
    assert any("pseudo-hydrogen H.75" in note for note in record.warnings), record.warnings
