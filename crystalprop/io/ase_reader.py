"""Structures through ASE: ``ase.Atoms`` objects, and the files only ASE reads.

ASE is optional (``pip install crystalprop[ase]``) and imported only when such a file turns
up; without it those files get a one-line reason naming the extra. Every failure is a
one-line :class:`StructureReadError`, as for the formats pymatgen reads.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from crystalprop.io.adapters import MIN_CELL_VOLUME, check_periodic_atoms
from crystalprop.io.formats import ASE_FORMATS
from crystalprop.io.formula import crystal_formula
from crystalprop.io.readers import StructureReadError, _one_line

if TYPE_CHECKING:
    from ase import Atoms

INSTALL_HINT = "pip install crystalprop[ase]"

# frames read per format: every frame of an extended XYZ (data sets); the last of an output
_INDEX: dict[str, int | slice] = {"extxyz": slice(None)}
# CASTEP: tolerate any keyword, so ASE does not run a `castep` program to list the valid ones
_READ_OPTIONS: dict[str, dict[str, Any]] = {"castep-cell": {"calculator_args": {"keyword_tolerance": 3}}}


def atoms_to_structure(atoms: Atoms) -> Structure:
    """The pymatgen Structure of an ``ase.Atoms`` that is periodic in 3D with a 3D cell.

    Raises ValueError with a one-line reason otherwise (a molecule, a slab periodic in two
    directions only, or ASE's placeholder atom 'X').
    """
    check_periodic_atoms(atoms)
    return Structure(Lattice(np.asarray(atoms.cell.array, dtype=float)), atoms.numbers.tolist(), atoms.positions,
                     coords_are_cartesian=True)


def reduced_formula(atoms: Atoms) -> str:
    """Reduced formula of an ``ase.Atoms`` as :func:`crystalprop.io.formula.crystal_formula` writes it; '' when empty."""
    counts = Counter(atoms.get_chemical_symbols())
    counts.pop("X", None)
    return crystal_formula(Composition(counts))


def _import_ase_io(fmt: str, name: str) -> ModuleType:
    try:
        import ase.io  # noqa: PLC0415  (optional, and 1-2 s to import)
    except ImportError as exc:
        raise StructureReadError(name, f"{ASE_FORMATS[fmt]} file: reading it needs ASE: {INSTALL_HINT}") from exc
    return ase.io


class _Text(io.StringIO):
    """File text with a ``name`` in no folder: ASE's OUTCAR reader looks for a POSCAR beside
    ``name`` (for constraints, which the model does not use), and must find none."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = os.path.join(os.devnull, os.path.basename(name))


def _read_frames(text: str, fmt: str, name: str) -> list[Atoms]:
    ase_io = _import_ase_io(fmt, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frames = ase_io.read(_Text(text, name), format=fmt, index=_INDEX.get(fmt, -1),
                                 **_READ_OPTIONS.get(fmt, {}))
        except Exception as exc:  # each ASE reader fails in its own way on broken input
            detail = f": {_one_line(str(exc), 160)}" if str(exc).strip() else ""
            raise StructureReadError(
                name, f"malformed or truncated {ASE_FORMATS[fmt]} ({type(exc).__name__}{detail})") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise StructureReadError(name, f"{ASE_FORMATS[fmt]} holds no structure")
    return frames


def _extxyz_hint(atoms: Atoms) -> str:
    """How to fix an extended XYZ frame that is not a crystal: the comment line's ``pbc`` where it gives
    a cell but marks it not periodic, else the ``Lattice`` it lacks."""
    if not all(atoms.pbc) and abs(np.linalg.det(np.asarray(atoms.cell.array, dtype=float))) >= MIN_CELL_VOLUME:
        return ' (for a crystal, mark the cell periodic on the comment line: pbc="T T T")'
    return ' (give the cell on the comment line: Lattice="ax ay az bx by bz cx cy cz")'


def _structure(atoms: Atoms, fmt: str, name: str, label: str) -> Structure:
    try:
        return atoms_to_structure(atoms)
    except ValueError as exc:
        hint = _extxyz_hint(atoms) if fmt == "extxyz" else ""
        raise StructureReadError(name, f"{label}{exc}{hint}") from exc
    except Exception as exc:
        raise StructureReadError(name, f"{label}cannot build a structure: {type(exc).__name__}: "
                                       f"{_one_line(str(exc), 120)}") from exc


def read_ase_text(text: str, fmt: str, name: str) -> list[tuple[str, Structure]]:
    """(name, structure) pairs from the text of a file in one of :data:`ASE_FORMATS`.

    Outputs give their last frame; an extended XYZ gives every frame (``path#i`` when more than one).
    """
    frames = _read_frames(text, fmt, name)
    if len(frames) == 1:
        return [(name, _structure(frames[0], fmt, name, ""))]
    return [(f"{name}#{i}", _structure(atoms, fmt, name, f"frame {i}: ")) for i, atoms in enumerate(frames)]


def labelled_frames(text: str, name: str) -> list[tuple[dict[str, Any], str]]:
    """The frames of an extended XYZ text as (fields, frame text): a frame's fields are its scalar ``info``
    entries and its calculator's scalar results (ASE files ``energy=`` and the like there), the labels of a
    data set; its text, one frame of extended XYZ, is its structure, read as ``predict`` reads such a file.
    Raises :class:`StructureReadError` where ASE is missing or the text is no extended XYZ."""
    ase_io = _import_ase_io("extxyz", name)
    records = []
    for atoms in _read_frames(text, "extxyz", name):
        results = atoms.calc.results if atoms.calc is not None else {}
        fields = {key: value.item() if isinstance(value, np.generic) else value
                  for key, value in {**results, **atoms.info}.items()
                  if isinstance(value, (str, int, float, np.integer, np.floating)) and not isinstance(value, bool)}
        frame = io.StringIO()
        plain = atoms.copy()  # the structure alone: its labels stay in the fields
        plain.info, plain.calc = {}, None
        ase_io.write(frame, plain, format="extxyz")
        records.append((fields, frame.getvalue()))
    return records
