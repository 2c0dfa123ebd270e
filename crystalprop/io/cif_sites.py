"""Checks of a CIF block's atom sites that pymatgen's parser does not make.

pymatgen turns a type symbol it cannot parse into the element of its first two letters, or of its
first letter: the vacancy ``Va`` becomes vanadium, the ghost atom ``Bq`` boron, ``Ph`` phosphorus,
with no more than a warning. A type symbol names the site's element (``Fe``, ``Fe2+``, ``O2-``), so
one that is no element is refused here instead of being read as another. An occupancy above 1 (two rows
at one position, say) is told by the rows' labels, where pymatgen names none. Sites that do not make the
block's stated ``_chemical_formula_sum`` (a file cut at a line boundary, its last sites lost) are told too.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
from pymatgen.core import Composition, Element
from pymatgen.core.operations import SymmOp
from pymatgen.io.cif import str2float

TYPE_SYMBOL_KEY = "_atom_site_type_symbol"
ISOTOPES = ("D", "T")  # deuterium and tritium: read as hydrogen
WATER = re.compile("Hw|Ow|Wat|wat|OH|OH2|NO3")  # symbols pymatgen reads on purpose (water's O and H, ...)
_LETTERS = re.compile(r"[A-Za-z]+")


def _element_of(symbol: str) -> str | None:
    """The element a type symbol names (its leading letters, any case), None if they name none."""
    letters = _LETTERS.match(symbol)
    if letters is None:
        return None
    name = letters.group().title()
    return name if Element.is_valid_symbol(name) or name in ISOTOPES else None


def _read_as_another(symbol: str) -> str | None:
    """The element pymatgen would read a symbol that names none as (its first two or first letter)."""
    for guess in (symbol[:2].title(), symbol[:1].upper()):
        if Element.is_valid_symbol(guess):
            return guess
    return None


def check_type_symbols(data: dict) -> None:
    """Raise ValueError for a type symbol that names no element but that pymatgen would read as one.

    ``data``: one block's tags and values as ``CifParser.as_dict()`` gives them. Symbols that pymatgen
    cannot read at all (``Xx``) are left to it: they become dummy species, refused by name later.
    """
    symbols = data.get(TYPE_SYMBOL_KEY)
    if not isinstance(symbols, list):
        return
    labels = data.get("_atom_site_label")
    for k, symbol in enumerate(symbols):
        if symbol in ("?", ".") or WATER.match(symbol) or _element_of(symbol):
            continue
        guess = _read_as_another(symbol)
        if guess:
            site = f" (site {labels[k]})" if isinstance(labels, list) and k < len(labels) else ""
            raise ValueError(f"unknown element '{symbol}'{site}: a type symbol that names no element, such as a "
                             f"vacancy or a dummy atom, is not read as {guess}")


def _position_rows(data: dict) -> list[tuple[str, np.ndarray, float]]:
    """(label, fractional coordinates, occupancy) per atom row that has numbers for all three."""
    labels = data.get("_atom_site_label")
    columns = [data.get(f"_atom_site_fract_{axis}") for axis in "xyz"]
    if not isinstance(labels, list) or not all(isinstance(column, list) for column in columns):
        return []
    occupancies = data.get("_atom_site_occupancy", ["1"] * len(labels))
    rows = []
    for k, label in enumerate(labels):
        try:
            coords = np.array([str2float(column[k]) for column in columns])
            occupancy = str2float(occupancies[k]) if isinstance(occupancies, list) else 1.0
        except (ValueError, TypeError, IndexError):
            continue
        rows.append((str(label), coords, occupancy))
    return rows


def _same_position(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    difference = a - b
    return bool(np.all(np.abs(difference - np.round(difference)) < tolerance))


def occupancy_excess(data: dict, operations: list[SymmOp], tolerance: float) -> str | None:
    """Why a block has an occupancy above 1, in the file's terms: two rows at one position (a symmetry copy of
    one on the other included), or one row's occupancy above 1; None where neither is found.

    pymatgen says only "Occupancy 2.0 exceeded tolerance", which names no atom of the file. ``data`` as for
    :func:`check_type_symbols`; ``operations``: those the parser applied; ``tolerance``: its site tolerance.
    """
    rows = _position_rows(data)
    for j, (label_j, coords_j, occupancy_j) in enumerate(rows):
        copies = [op.operate(coords_j) for op in operations]
        for label_i, coords_i, occupancy_i in rows[:j]:
            if any(_same_position(copy, coords_i, tolerance) for copy in copies):
                return f"atoms {label_i} and {label_j} share a position (occupancies {occupancy_i:g} + {occupancy_j:g})"
    over = next(((label, occupancy) for label, _, occupancy in rows if occupancy > 1), None)
    return None if over is None else f"site {over[0]} has occupancy {over[1]:g}, above 1"


FORMULA_KEY = "_chemical_formula_sum"
UNITS_KEY = "_cell_formula_units_Z"


class Shortfall(NamedTuple):
    """Atoms the stated formula has and the sites read lack: ``lacking`` (element, read, stated in the cell), how
    the cell's content was stated (``arithmetic``: the formula and, where it counts, Z), and how many elements the
    formula names (``n_elements``: all of them lacking by one ratio points at Z or symmetry, not a cut)."""

    lacking: list[tuple[str, float, float]]
    arithmetic: str
    n_elements: int


def _stated_cell_content(data: dict) -> tuple[Composition, str] | None:
    """What the block says its cell holds, from its ``_chemical_formula_sum``, and how (the formula, times Z
    where Z counts); None where it states no formula of plain elements. The CIF standard (ICSD, COD) gives one
    formula unit, ``_cell_formula_units_Z`` of them in the cell; pymatgen writes the cell's content with Z its
    reduced formula units. Told apart by Z: a formula whose amounts Z (above 1) divides is the cell's content."""
    stated = data.get(FORMULA_KEY)
    if not isinstance(stated, str) or stated.strip() in ("", "?", "."):
        return None
    try:
        formula = Composition(stated)
    except Exception:  # noqa: BLE001 (pymatgen raises several kinds for text that is no formula)
        return None
    if not formula.num_atoms or not all(isinstance(e, Element) for e in formula):
        return None
    try:
        units = float(str2float(str(data.get(UNITS_KEY, "1"))))
    except (TypeError, ValueError):
        units = 1.0
    if not units > 0:
        units = 1.0
    whole = units > 1 and all(abs(n / units - round(n / units)) < 1e-6 and round(n / units) >= 1
                              for n in formula.values())
    if units == 1 or whole:
        return formula, f"'{stated}'"
    return formula * units, f"'{stated}' × Z {units:g}"


def formula_shortfall(data: dict, composition: Composition) -> Shortfall | None:
    """The atoms of the block's stated formula that the sites read (their ``composition``, occupancies
    counted) lack, or None where none do or no formula is stated.

    A file cut at a line boundary is a valid CIF of fewer sites; only the stated formula tells. An element is
    lacking where the sites hold fewer of its atoms than the cell is stated to (:func:`_stated_cell_content`,
    by more than half an atom); more atoms than stated (a solvent the formula leaves out) are not."""
    stated = _stated_cell_content(data)
    if stated is None:
        return None
    content, arithmetic = stated
    read = composition.element_composition
    lacking = [(e.symbol, read[e], n) for e, n in content.items() if read[e] < n - 0.5]
    return Shortfall(lacking, arithmetic, len(content)) if lacking else None
