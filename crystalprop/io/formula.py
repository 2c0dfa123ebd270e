"""The formula a result row shows for a structure."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymatgen.core import Composition


def crystal_formula(composition: Composition) -> str:
    """Reduced formula as pymatgen writes it (``SrTiO3``), but an element alone is its symbol: pymatgen
    names elemental H, N, O, F, Cl, Br and I as their molecules (``H2``), which reads wrong beside a
    crystal's site count. '' for an empty composition."""
    if not composition:
        return ""
    elements = composition.elements
    return elements[0].symbol if len(elements) == 1 else composition.reduced_formula
