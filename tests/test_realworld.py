"""`crystalprop predict` over structure files that other people and programs wrote.

tests/files/realworld/SOURCES.md says where each file comes from. Every file that pymatgen
reads must give rows whose formula and site count match pymatgen's reading, unless
crystalprop refuses that structure on purpose (disorder, overlapping atoms, a VASP 4 POSCAR
without element names); every other file must give one row with a one-line reason.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifParser
from pymatgen.io.vasp import Poscar

from conftest import run_cli
from crystalprop.io import format_from_name
from crystalprop.io.readers import SITE_TOLERANCE

REALWORLD = Path(__file__).parent / "files" / "realworld"
VASP4 = "vasp4"
OVERLAP_DISTANCE = 0.1

pytestmark = pytest.mark.slow


def structure_files() -> list[Path]:
    return sorted(p for p in REALWORLD.iterdir() if format_from_name(p.name))


def _json_structures(data) -> list[Structure] | None:
    """Structures in a pymatgen dict, a JARVIS atoms dict, an id/structure record or a list of them."""
    items = data if isinstance(data, list) else [data]
    out = []
    for item in items:
        if not isinstance(item, dict):
            return None
        inner = item.get("structure") or item.get("atoms") or item
        if "lattice" in inner and "sites" in inner:
            out.append(Structure.from_dict(inner))
        elif {"lattice_mat", "coords", "elements"} <= inner.keys():
            out.append(Structure(Lattice(inner["lattice_mat"]), inner["elements"], inner["coords"],
                                 coords_are_cartesian=inner["cartesian"]))
        else:
            return None
    return out


def pymatgen_reading(path: Path) -> list[Structure] | str | None:
    """What pymatgen makes of a file: its structures, VASP4 (species invented), or None."""
    fmt = format_from_name(path.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if fmt == "cif":
                # with crystalprop's tolerance for a site's symmetry copies (rounded coordinates leave them apart)
                return CifParser(path, site_tolerance=SITE_TOLERANCE).parse_structures(primitive=False) or None
            if fmt == "poscar":
                poscar = Poscar.from_file(path)
                return [poscar.structure] if poscar.true_names else VASP4
            return _json_structures(json.loads(path.read_text()))
        except Exception:  # pymatgen cannot read it; crystalprop must say why
            return None


def _overlapping(structure: Structure) -> bool:
    dist = structure.distance_matrix
    return bool(np.any(dist[np.triu_indices(len(structure), k=1)] < OVERLAP_DISTANCE))


def lacks_stated_atoms(path: Path, structure: Structure, error: str) -> bool:
    """Whether a refusal for atoms lacking from the stated formula is right: pymatgen's reading holds fewer atoms
    of some element than _chemical_formula_sum times _cell_formula_units_Z say the cell has (read from the text
    here; COD 7008984 lists C2/c's operators without the C-centring, so half of its 8 formula units)."""
    if "lack atoms of its _chemical_formula_sum" not in error:
        return False
    text = path.read_text(errors="replace")
    formula = re.search(r"^_chemical_formula_sum\s+'([^']+)'", text, re.M)
    units = re.search(r"^_cell_formula_units_Z\s+(\d+)", text, re.M)
    stated = {e: float(n or 1) for e, n in re.findall(r"([A-Z][a-z]?)([\d.]*)", formula.group(1))}
    cell = structure.composition.element_composition
    return any(cell[e] < n * int(units.group(1) if units else 1) - 0.5 for e, n in stated.items())


def refused_on_purpose(structure: Structure, error: str) -> bool:
    """Whether a refusal matches a deliberate rule for this structure."""
    if not structure.is_ordered:
        return error.startswith("disordered site(s)")
    return _overlapping(structure) and error.startswith("overlapping atoms")


@pytest.fixture(scope="module")
def predicted(random_ckpt, tmp_path_factory):
    """The CSV rows (grouped by source file) and the finished CLI process."""
    out = tmp_path_factory.mktemp("realworld") / "out.csv"
    done = run_cli(["predict", REALWORLD, "-m", random_ckpt, "-o", out, "--timeout", 30], timeout=150)
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(Path(row["source"]).name, []).append(row)
    return by_source, rows, done


def test_every_file_is_listed_in_sources():
    listed = set(re.findall(r"^\| `([^`]+)` \|", (REALWORLD / "SOURCES.md").read_text(), re.MULTILINE))
    assert listed == {p.name for p in structure_files()}


def test_cli_reports_partial_failure_without_tracebacks(predicted):
    _, rows, done = predicted
    failed = sum(1 for row in rows if row["error"])
    assert done.returncode == 1, done.stderr
    assert f"{len(rows) - failed} predicted, {failed} failed" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len({row["name"] for row in rows}) == len(rows)


def test_rows_match_pymatgen_or_give_a_reason(predicted):
    by_source, _, _ = predicted
    assert set(by_source) == {p.name for p in structure_files()}
    for path in structure_files():
        rows = by_source[path.name]
        for row in rows:
            assert "\n" not in row["error"] and not row["error"].startswith("unexpected error"), (path.name, row)
        reference = pymatgen_reading(path)
        if reference == VASP4:
            assert len(rows) == 1 and "VASP 4 POSCAR without element names" in rows[0]["error"], path.name
        elif reference:
            assert len(rows) == len(reference), path.name
            for row, structure in zip(rows, reference):
                if row["error"]:
                    assert refused_on_purpose(structure, row["error"]) or lacks_stated_atoms(path, structure, row["error"]), (
                        path.name, row["error"])
                else:
                    elements = structure.composition.elements
                    # An element alone is written as its symbol (O, not pymatgen's molecule name O2).
                    expected = elements[0].symbol if len(elements) == 1 else structure.composition.reduced_formula
                    assert row["formula"] == expected, (path.name, row["formula"])
                    assert int(row["n_sites"]) == len(structure), path.name
                    assert math.isfinite(float(row["rand"])), path.name
        else:
            assert len(rows) == 1 and rows[0]["error"].strip() and not rows[0]["rand"], (path.name, rows)


def test_structures_outside_the_bulk_domain_are_predicted_with_a_warning(predicted):
    by_source, _, _ = predicted
    for name, shape in (("Cu_slab_fin.cif", "2D slab"), ("POSCAR_CH4_in_box", "molecule")):
        (row,) = by_source[name]
        assert not row["error"] and math.isfinite(float(row["rand"])), name
        assert shape in row["warning"], (name, row["warning"])
    bulk = by_source["1000052.cif"][0]
    assert not bulk["error"] and "vacuum" not in bulk["warning"]
