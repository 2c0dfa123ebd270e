"""One small function per structure source, each giving the graph builder's plain-array
:class:`~crystalprop.io.crystal.Crystal`. None imports its library: they read the objects'
attributes, so this module stays light wherever it is imported."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crystalprop.io.crystal import Crystal

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

MIN_CELL_VOLUME = 1e-6  # Å³: below it a cell is missing, zero or flat


def _flag(value: object) -> str:
    return "T" if value else "F"


def crystal_from_structure(structure: Structure) -> Crystal:
    """The arrays of an ordered pymatgen ``Structure`` (a disordered site raises AttributeError)."""
    species = [site.specie for site in structure]
    return Crystal(np.array([s.Z for s in species], dtype=np.int64), structure.lattice.matrix,
                   structure.frac_coords, tuple(s.symbol for s in species))


def check_periodic_atoms(atoms: Atoms) -> None:
    """ValueError with a one-line reason unless ``atoms`` is periodic in 3D with a 3D cell and
    real elements (not a molecule, a slab, or ASE's placeholder atom 'X')."""
    if not all(atoms.pbc):
        raise ValueError(f"not periodic in all three directions (pbc: {' '.join(map(_flag, atoms.pbc))}); "
                         "the model needs a crystal")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)) or abs(np.linalg.det(cell)) < MIN_CELL_VOLUME:
        raise ValueError("no 3D cell: the lattice vectors are missing, zero or coplanar")
    placeholders = np.flatnonzero(atoms.numbers < 1)
    if placeholders.size:
        raise ValueError(f"atom {placeholders[0]} is ASE's placeholder 'X', not an element")


def crystal_from_atoms(atoms: Atoms) -> Crystal:
    """The arrays of an ``ase.Atoms`` (checked by :func:`check_periodic_atoms`), positions unwrapped."""
    check_periodic_atoms(atoms)
    return Crystal(np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.cell.array, dtype=float),
                   atoms.get_scaled_positions(wrap=False), tuple(atoms.get_chemical_symbols()))
