"""Say why a valid structure lies outside the bulk-crystal domain of the shipped models.

The models were trained on bulk Materials Project crystals: periodic in three directions,
with atoms in contact across every lattice plane. A slab, wire or molecule built for a
periodic code instead sits in a box with empty space around it. That empty space is
found directly: for each low-index family of lattice planes (hkl), the atoms are
projected onto the plane normal (with periodic wrap-around) and the widest empty
interval between consecutive projections is the thickness of a vacuum layer that
runs through the whole crystal.

A layer wider than :data:`VACUUM_GAP` counts as vacuum. Bulk crystals stay far below it,
layered van der Waals ones included: the gap between atom centres of adjacent layers is
3.35 Å in graphite, about 3.0 Å in 2H-MoS2 and 3.3 Å in h-BN, and atoms across a 7 Å
layer would be further apart than any van der Waals contact; slab and molecule cells
are conventionally built with 10-20 Å of vacuum. Measured on 6,000 random crystals of the
mp2018 training set, the widest gap is 5.1 Å, apart from 4 single sheets stored as bulk
(8.8-15.7 Å, rightly flagged); 600 metal-organic frameworks stay under 3.4 Å.

The number of independent plane normals with vacuum gives the dimensionality: one is a
2D slab, two a 1D wire, three an isolated molecule or cluster. Low density alone is not
flagged: zeolites, frameworks and molecular crystals are genuine bulk crystals.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystalprop.graph.neighbors import CrystalGraph

VACUUM_GAP = 7.0
"""Thinnest empty layer (Å, between atom centres, normal to the planes) counted as vacuum."""

MAX_MILLER_INDEX = 2
"""Plane families searched: Miller indices up to this size, enough for any sensible cell of a slab or box."""

TRAINED_ON = "the models were trained on bulk crystals"
SHAPES = {1: "a 2D slab", 2: "a 1D wire or chain", 3: "an isolated molecule or cluster"}
AXIS_NAMES = {(1, 0, 0): "a", (0, 1, 0): "b", (0, 0, 1): "c"}


def _primitive(hkl: np.ndarray) -> tuple[int, int, int]:
    """Miller indices without a common factor, the first nonzero one positive."""
    h = [int(v) for v in hkl]
    divisor = math.gcd(*h) or 1
    sign = -1 if next(v for v in h if v) < 0 else 1
    return tuple(sign * v // divisor for v in h)


def _family_key(hkl: tuple[int, int, int]) -> tuple:
    """The order of plane families: lowest indices first, the cell axes a, b, c before the others."""
    return sum(map(abs, hkl)), [-h for h in hkl]


def _plane_families(max_index: int) -> np.ndarray:
    """Primitive Miller indices (hkl) up to ``max_index``, one sign of each, cell axes first."""
    families = []
    for hkl in itertools.product(range(-max_index, max_index + 1), repeat=3):
        first = next((h for h in hkl if h), 0)
        if first > 0 and math.gcd(*hkl) == 1:
            families.append(hkl)
    families.sort(key=_family_key)
    return np.array(families, dtype=float)


PLANE_FAMILIES = _plane_families(MAX_MILLER_INDEX)


def vacuum_gaps(structure: Structure, min_gap: float = VACUUM_GAP) -> list[tuple[tuple[int, int, int], float]]:
    """((hkl), gap in Å) for every plane family with an empty layer wider than ``min_gap``.

    The planes are searched in the LLL-reduced basis of the lattice, so a cell given in a basis of long,
    skewed vectors is searched on the same planes as its reduced cell; each family is named by its Miller
    indices in the basis as given. Widest first; equal gaps keep the order of :func:`_family_key`.
    """
    lattice = structure.lattice
    to_given = np.rint(np.linalg.inv(lattice.lll_mapping)).T  # Miller indices: reduced basis -> basis as given
    # the spacing of each family of planes; only families spaced wider than min_gap can hold such a gap
    reciprocal = np.linalg.inv(lattice.lll_matrix).T
    spacing = 1.0 / np.linalg.norm(PLANE_FAMILIES @ reciprocal, axis=1)
    wide = spacing > min_gap
    families, spacing = PLANE_FAMILIES[wide], spacing[wide]
    if not len(families):
        return []
    # each atom's position along each plane normal, as a fraction of the plane spacing
    positions = np.sort(np.mod(lattice.get_lll_frac_coords(structure.frac_coords) @ families.T, 1.0), axis=0)
    # widest empty interval between neighbours, including the one across the periodic boundary
    wrap = positions[0] + 1.0 - positions[-1]
    widest = np.maximum(np.diff(positions, axis=0).max(axis=0, initial=0.0), wrap) * spacing
    found = [(_primitive(hkl @ to_given), float(gap)) for hkl, gap in zip(families, widest) if gap > min_gap]
    return sorted(found, key=lambda item: (-round(item[1], 2), _family_key(item[0])))


def _independent(gaps: list[tuple[tuple[int, int, int], float]]) -> list[tuple[tuple[int, int, int], float]]:
    """The widest gaps whose plane normals are linearly independent (at most three)."""
    chosen: list[tuple[tuple[int, int, int], float]] = []
    for hkl, gap in gaps:
        if len(chosen) == 3:
            break
        if np.linalg.matrix_rank(np.array([h for h, _ in chosen] + [hkl])) > len(chosen):
            chosen.append((hkl, gap))
    return chosen


def _direction(hkl: tuple[int, int, int]) -> str:
    return AXIS_NAMES.get(hkl) or "normal to ({} {} {})".format(*hkl)


def _enumerate(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def domain_warnings(structure: Structure, min_gap: float = VACUUM_GAP) -> list[str]:
    """Reasons why predictions for ``structure`` are not to be trusted; empty for a bulk crystal.

    ``structure`` must already be valid (see ``validate_structure``).
    """
    # vacuum layers in independent directions: one means a slab, two a wire, three a molecule
    chosen = _independent(vacuum_gaps(structure, min_gap))
    if not chosen:
        return []
    # report them in cell order (a, b, c, then other planes)
    chosen.sort(key=lambda item: _family_key(item[0]))
    amounts = _enumerate([f"{gap:.1f}" for _, gap in chosen])
    directions = _enumerate([_direction(hkl) for hkl, _ in chosen])
    return [f"looks like {SHAPES[len(chosen)]}: {amounts} Å of vacuum along {directions}; {TRAINED_ON}"]


STRETCH = 1.3
"""Where every atom's nearest neighbour lies beyond this multiple of the sum of their van der Waals radii, the cell is
stretched beyond any bulk crystal (a mistyped scale factor, a unit mistake): van der Waals crystals (solid argon) sit
at 1.0, solid helium near 25 bar at 1.27 (its zero-point motion spreads it), bonded ones below 0.87 (3,300 mp2018 and
QMOF crystals); a cell stretched threefold comes to about 1.4."""


@lru_cache(maxsize=1)
def _van_der_waals_radii() -> np.ndarray:
    """Van der Waals radius in Å by atomic number (pymatgen's table; 2 Å where it has none, past Z = 100)."""
    import warnings  # noqa: PLC0415

    from pymatgen.core import Element  # noqa: PLC0415  (the reading process has imported it)

    with warnings.catch_warnings():  # pymatgen warns for each element without the datum
        warnings.simplefilter("ignore")
        return np.array([2.0] + [float(Element.from_Z(z).van_der_waals_radius or 2.0) for z in range(1, 119)])


def stretched_warning(graph: CrystalGraph) -> str | None:
    """Why a crystal lies outside the models' domain where every atom's nearest neighbour (among its graph's edges)
    lies beyond :data:`STRETCH` times the sum of their van der Waals radii; None otherwise."""
    radii = _van_der_waals_radii()[graph.atomic_numbers.astype(np.int64)]
    ratio = graph.distances / np.maximum(radii[graph.src] + radii[graph.dst], 1e-9)
    nearest = np.full(graph.num_nodes, np.inf)
    np.minimum.at(nearest, graph.dst, ratio)
    if graph.num_edges == 0 or not (nearest.min() > STRETCH):
        return None
    return (f"atoms farther apart than in any bulk crystal: each atom's nearest neighbour lies beyond "
            f"{nearest.min():.2g} times the sum of their van der Waals radii (a scale factor or unit mistake?); "
            f"{TRAINED_ON}")
