"""Reading through ASE: ase.Atoms objects, and the files pymatgen cannot read but ASE can.

Files are written by ASE's own writers where it has one (extended XYZ, pw.x input, CASTEP
.cell); outputs ASE only reads (vasprun.xml, OUTCAR, pw.x output) are real program outputs,
trimmed, in tests/files/ase (see its README).
"""

from __future__ import annotations

import gzip
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from conftest import perovskite, rocksalt
from crystalprop.io import StructureReadError, detect_format, iter_file_records, iter_structure_paths, read_file

ase = pytest.importorskip("ase")
import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402

# ASE's CASTEP writer looks for a `castep` program and warns that there is none
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:ase.calculators.castep")

FILES = Path(__file__).parent / "files" / "ase"
BOHR = 0.52917720859  # Å, CODATA 2006, as ASE reads pw.x output

# file name -> (ASE format, keyword arguments of ase.io.write)
WRITTEN = {
    "crystal.extxyz": ("extxyz", {}),
    "crystal.xyz": ("extxyz", {}),
    "crystal.pwi": ("espresso-in", {"pseudopotentials": {"Sr": "Sr.upf", "Ti": "Ti.upf", "O": "O.upf"}}),
    "crystal.cell": ("castep-cell", {}),
}


def _atoms(structure: Structure) -> Atoms:
    return Atoms(numbers=structure.atomic_numbers, cell=structure.lattice.matrix,
                 scaled_positions=structure.frac_coords, pbc=True)


def _skewed_perovskite() -> Structure:
    """SrTiO3 strained into a triclinic cell with displaced atoms, so no coordinate is special."""
    s = perovskite(3.905)
    s = Structure(Lattice.from_parameters(3.9, 4.0, 4.1, 88, 91, 93), s.species, s.frac_coords)
    s.perturb(0.05, min_distance=0.02)
    return s


def assert_same(got: Structure, expected: Structure) -> None:
    assert [str(e) for e in got.species] == [str(e) for e in expected.species]
    np.testing.assert_allclose(got.lattice.matrix, expected.lattice.matrix, atol=1e-5)
    np.testing.assert_allclose(got.cart_coords, expected.cart_coords, atol=1e-5)


def _write_with_ase(folder: Path, name: str, structure: Structure) -> Path:
    fmt, kwargs = WRITTEN[name]
    path = folder / name
    ase.io.write(path, _atoms(structure), format=fmt, **kwargs)
    return path


# --- files written by ASE --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_files_written_by_ase_read_as_the_crystal(tmp_path, name):
    structure = _skewed_perovskite()
    path = _write_with_ase(tmp_path, name, structure)
    ((got_name, got),) = read_file(str(path))
    assert got_name == str(path)
    assert_same(got, structure)
    (record,) = iter_file_records(str(path))
    assert record.error is None and record.structure.composition.reduced_formula == "SrTiO3"


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_files_written_by_ase_read_gzipped_and_misnamed(tmp_path, name):
    """Content decides the format, as for CIF and POSCAR: a gzipped or oddly named file reads too."""
    structure = _skewed_perovskite()
    text = _write_with_ase(tmp_path, name, structure).read_bytes()
    gzipped = tmp_path / f"{name}.gz"
    gzipped.write_bytes(gzip.compress(text))
    misnamed = tmp_path / "structure.txt"
    misnamed.write_bytes(text)
    for path in (gzipped, misnamed):
        ((_, got),) = read_file(str(path))
        assert_same(got, structure)


def test_multi_frame_extxyz_gives_one_structure_per_frame(tmp_path):
    frames = [rocksalt(4.21, "Mg", "O"), perovskite(3.905), rocksalt(5.64)]
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, [_atoms(s) for s in frames], format="extxyz")
    pairs = read_file(str(path))
    assert [name for name, _ in pairs] == [f"{path}#{i}" for i in range(3)]
    for (_, got), expected in zip(pairs, frames):
        assert_same(got, expected)


def test_pw_output_gives_the_last_frame():
    """A vc-relax of Si by pw.x 7.4 (3 frames): the relaxed cell, not the starting one."""
    ((_, got),) = read_file(str(FILES / "si_vc-relax.pwo"))
    assert got.composition.reduced_formula == "Si" and len(got) == 2
    np.testing.assert_allclose(got.lattice.matrix, 2.914861274 * (1 - np.eye(3)), atol=1e-6)
    first = 7.255773 * BOHR * 0.707107 * (1 - np.eye(3))
    assert got.volume > abs(np.linalg.det(first)) * 1.2
    np.testing.assert_allclose(got.frac_coords, [[0, 0, 0], [0.25, 0.25, 0.25]], atol=1e-6)


def test_vasprun_xml_gives_the_last_frame():
    ((name, got),) = read_file(str(FILES / "vasprun.xml"))
    assert name.endswith("vasprun.xml")
    assert [str(e) for e in got.species] == ["C", "C"]
    np.testing.assert_allclose(got.lattice.matrix, 1.785 * (1 - np.eye(3)), atol=1e-8)
    np.testing.assert_allclose(got.frac_coords, [[0, 0, 0], [0.25, 0.25, 0.25]], atol=1e-8)


def test_outcar_gives_the_last_frame():
    ((_, got),) = read_file(str(FILES / "OUTCAR"))
    assert got.composition.reduced_formula == "Ni" and len(got) == 18
    np.testing.assert_allclose(got.lattice.abc, [17.93435] * 3)
    np.testing.assert_allclose(got.cart_coords[1], [16.82152, 15.71963, 17.66895], atol=1e-5)
    np.testing.assert_allclose(got.cart_coords[-1], [0.76515, 2.15916, 1.30553], atol=1e-5)


def test_formats_detected_from_content():
    assert detect_format("x", (FILES / "si_vc-relax.pwo").read_text()) == "espresso-out"
    assert detect_format("x", (FILES / "vasprun.xml").read_text()) == "vasp-xml"
    assert detect_format("x", (FILES / "OUTCAR").read_text()) == "vasp-out"
    assert detect_format("scf.in", "&CONTROL\n/\n&SYSTEM\n nat=1\n/\nATOMIC_POSITIONS crystal\nSi 0 0 0\n") == "espresso-in"
    assert detect_format("a.cell", "%block LATTICE_ABC\n3 3 3\n90 90 90\n%endblock lattice_abc\n") == "castep-cell"
    assert detect_format("x", '1\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3\nSi 0 0 0\n') == "extxyz"
    assert detect_format("x", "1\nplain xyz\nSi 0 0 0\n") == "extxyz"


def test_castep_cell_runs_no_program_and_writes_no_file(tmp_path, monkeypatch):
    """ASE's .cell reader by default runs `castep` to build a keyword file in the working folder."""
    path = _write_with_ase(tmp_path, "crystal.cell", rocksalt(4.21, "Mg", "O"))  # ASE's writer runs castep too
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "castep_was_run"
    fake = bin_dir / "castep"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ((_, got),) = read_file(str(path))
    assert got.composition.reduced_formula == "MgO"
    assert not marker.exists() and list(work.iterdir()) == []


# --- failures: one line each ------------------------------------------------------------------


def _reason(path: Path) -> str:
    (record,) = iter_file_records(str(path))
    assert record.structure is None
    assert "\n" not in record.error and len(record.error) <= 240
    return record.error


def test_xyz_without_a_lattice_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "molecule.xyz"
    ase.io.write(path, Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]), format="extxyz")
    reason = _reason(path)
    assert "not periodic in all three directions" in reason and "Lattice=" in reason


def test_an_xyz_with_a_cell_marked_not_periodic_is_told_about_its_pbc_not_its_lattice(tmp_path):
    path = tmp_path / "si_pbc_false.xyz"
    path.write_text('2\nLattice="5.43 0 0 0 5.43 0 0 0 5.43" Properties=species:S:1:pos:R:3 pbc="F F F"\n'
                    'Si 0 0 0\nSi 1.3575 1.3575 1.3575\n')
    reason = _reason(path)
    assert "pbc: F F F" in reason and 'pbc="T T T"' in reason and "give the cell" not in reason


def test_broken_files_give_one_line_reasons(tmp_path):
    pwo = (FILES / "si_vc-relax.pwo").read_text()
    truncated = tmp_path / "cut.pwo"
    truncated.write_text(pwo[: pwo.index("End of self-consistent calculation")])
    assert _reason(truncated).startswith("malformed or truncated Quantum ESPRESSO output")
    bad_xyz = tmp_path / "bad.extxyz"
    bad_xyz.write_text('3\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3\nSi 0 0 0\n')
    assert _reason(bad_xyz).startswith("malformed or truncated extended XYZ")
    no_cell = tmp_path / "no_lattice.cell"
    no_cell.write_text("%block positions_frac\nSi 0 0 0\n%endblock positions_frac\n")
    assert _reason(no_cell).startswith("malformed or truncated CASTEP .cell")
    cut_xml = tmp_path / "vasprun.xml"
    cut_xml.write_text((FILES / "vasprun.xml").read_text()[:1500])
    assert _reason(cut_xml).startswith("malformed or truncated vasprun.xml")


def test_without_ase_such_files_name_the_extra(tmp_path, monkeypatch):
    xyz = _write_with_ase(tmp_path, "crystal.extxyz", rocksalt(4.21, "Mg", "O"))
    monkeypatch.setitem(sys.modules, "ase", None)
    monkeypatch.setitem(sys.modules, "ase.io", None)
    assert _reason(xyz) == "extended XYZ file: reading it needs ASE: pip install crystalprop[ase]"
    assert _reason(FILES / "OUTCAR") == "OUTCAR file: reading it needs ASE: pip install crystalprop[ase]"
    assert "pip install crystalprop[ase]" in _reason(FILES / "vasprun.xml")


# --- folders ----------------------------------------------------------------------------------


def test_folder_scan_picks_up_ase_files_and_pw_x_files_by_content(tmp_path):
    for new, name in zip(("a.extxyz", "b.xyz", "c.pwi", "d.cell"), WRITTEN):
        _write_with_ase(tmp_path, name, perovskite(3.9)).rename(tmp_path / new)
    (tmp_path / "scf.in").write_text((tmp_path / "c.pwi").read_text())
    (tmp_path / "dos.in").write_text("&dos\n  prefix='si'\n/\n")
    (tmp_path / "relax.out").write_text((FILES / "si_vc-relax.pwo").read_text())
    (tmp_path / "job.out").write_text("some program's log\n")
    (tmp_path / "vasprun.xml").write_text((FILES / "vasprun.xml").read_text())
    (tmp_path / "other.xml").write_text("<root/>\n")
    (tmp_path / "OUTCAR").write_text((FILES / "OUTCAR").read_text())
    (tmp_path / "relax.out.gz").write_bytes(gzip.compress((FILES / "si_vc-relax.pwo").read_bytes()))
    found = [os.path.basename(p) for p in iter_structure_paths([str(tmp_path)])]
    assert found == ["OUTCAR", "a.extxyz", "b.xyz", "c.pwi", "d.cell", "relax.out", "relax.out.gz", "scf.in",
                     "vasprun.xml"]
    for path in iter_structure_paths([str(tmp_path)]):
        (record, *_) = iter_file_records(path)
        assert record.error is None, (path, record.error)


# --- ase.Atoms --------------------------------------------------------------------------------


def test_atoms_to_structure_keeps_the_crystal():
    from crystalprop.io.ase_reader import atoms_to_structure

    structure = _skewed_perovskite()
    assert_same(atoms_to_structure(_atoms(structure)), structure)
    assert StructureMatcher().fit(atoms_to_structure(bulk("NaCl", "rocksalt", a=5.64)), rocksalt(5.64))


@pytest.mark.parametrize("atoms, message", [
    (Atoms("Si2", cell=np.eye(3) * 5, positions=[[0, 0, 0], [1, 1, 1]], pbc=[True, True, False]),
     "not periodic in all three directions (pbc: T T F)"),
    (Atoms("Si2", positions=[[0, 0, 0], [1, 1, 1]], pbc=True), "no 3D cell"),
    (Atoms("SiX", cell=np.eye(3) * 5, positions=[[0, 0, 0], [1, 1, 1]], pbc=True), "atom 1 is ASE's placeholder"),
])
def test_atoms_without_a_crystal_cell_are_refused(atoms, message):
    from crystalprop.io.ase_reader import atoms_to_structure

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        atoms_to_structure(atoms)


def test_read_errors_are_structure_read_errors(tmp_path):
    bad = tmp_path / "bad.extxyz"
    bad.write_text('2\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3\nSi 0 0 0\n')
    with pytest.raises(StructureReadError, match=f"^{bad}: malformed or truncated extended XYZ"):
        read_file(str(bad))


@pytest.mark.slow
def test_predict_takes_ase_atoms_like_structures(random_ckpt):
    from crystalprop import predict

    structures = [rocksalt(4.21, "Mg", "O"), _skewed_perovskite()]
    atoms = [_atoms(s) for s in structures]
    broken = Atoms("Si2", cell=np.eye(3) * 5, positions=[[0, 0, 0], [1, 1, 1]], pbc=[True, True, False])
    expected = predict(structures, model=str(random_ckpt))
    got = predict([atoms[0], broken, atoms[1]], model=str(random_ckpt), workers=0)
    assert [r["name"] for r in got] == ["structure0", "structure1", "structure2"]
    assert [r["formula"] for r in got] == ["MgO", "Si", "SrTiO3"]
    assert "not periodic in all three directions" in got[1]["error"] and got[1]["rand"] is None
    np.testing.assert_allclose([got[0]["rand"], got[2]["rand"]], [r["rand"] for r in expected], rtol=1e-6)
    (single,) = predict(atoms[1], model=str(random_ckpt))  # one Atoms, not a list of its atoms
    assert single["n_sites"] == 5 and single["rand"] == pytest.approx(expected[1]["rand"], rel=1e-6)
    spawned = predict(atoms, model=str(random_ckpt), workers=1)
    np.testing.assert_allclose([r["rand"] for r in spawned], [r["rand"] for r in expected], rtol=1e-6)
