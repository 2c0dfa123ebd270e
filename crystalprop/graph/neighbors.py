"""Matformer's periodic k-nearest-neighbour graph, vectorised.

Follows ``nearest_neighbor_edges_submit`` + ``build_undirected_edgedata`` of the original
Matformer (matformer/graphs.py, YKQ98/Matformer) with its Materials Project settings
(cutoff 8 Å, 12 neighbours, ``use_canonize=True``, ``use_lattice=True``):

1. Neighbours of every atom over all periodic images within the cutoff. If any atom has
   fewer than ``k`` of them, the radius grows to the longest cell edge (or to twice the
   cutoff where that is not longer) and the search repeats.
2. Per atom, every neighbour at or within its k-th nearest distance (ties included).
3. Canonical form: a pair is stored with the lower atom index first and the image taken
   relative to it, so a bond found from both of its atoms counts once. Pairs of an atom
   with its own images are stored as found (both +n and -n), as in the original.
4. Lattice self-edges: every atom to its own images at +a, +b, +c, +(a+b), +(a+c),
   +(b+c), merged with identical neighbour images. The original drops these on the
   retry path of step 1 (its recursive call does not pass ``use_lattice``); we keep them
   always, so every graph carries its cell vectors.
5. Every kept edge is emitted in both directions.

The neighbour search is pymatgen's cell-list ``get_neighbor_list`` (C code, linear in the
number of atoms); the rest is numpy without Python loops over atoms or edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from crystalprop.graph.cells import CANONICAL, check_cell_choice
from crystalprop.graph.elements import check_elements

if TYPE_CHECKING:
    from pymatgen.core import Structure

LATTICE_IMAGES = np.array(
    [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=np.int64
)
DISTANCE_DECIMALS = 6  # distances are rounded to 1e-6 Å so equal bonds share one value
TIE_TOLERANCE = 1e-6  # Å: neighbours this close to the k-th distance count as ties
MAX_RADIUS_GROWTHS = 8


@dataclass(frozen=True)
class GraphSettings:
    """How the graph is built; part of the cache key and of a checkpoint's metadata.

    ``cell``: the cell the graph is built on, ``canonical`` (the Niggli-reduced primitive
    cell, see :mod:`crystalprop.graph.cells`) or ``as-given`` (the file's own cell).
    """

    cutoff: float = 8.0
    max_neighbors: int = 12
    use_lattice: bool = True
    cell: str = CANONICAL

    def __post_init__(self) -> None:
        check_cell_choice(self.cell)

    def as_dict(self) -> dict:
        """Plain dict for JSON metadata."""
        return {"cutoff": self.cutoff, "max_neighbors": self.max_neighbors, "use_lattice": self.use_lattice,
                "cell": self.cell}


@dataclass
class CrystalGraph:
    """One crystal's directed graph.

    atomic_numbers: (N,) int16. src, dst: (E,) int32 edge endpoints (messages flow
    src -> dst). distances: (E,) float32 bond lengths in Å, rounded to 1e-6 Å.
    """

    atomic_numbers: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    distances: np.ndarray

    @property
    def num_nodes(self) -> int:
        """Number of atoms."""
        return int(self.atomic_numbers.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of directed edges."""
        return int(self.src.shape[0])


def _neighbor_search(structure: Structure, radius: float) -> tuple[np.ndarray, ...]:
    """All (center, neighbour, image, distance) within radius, self at zero distance excluded."""
    centers, points, images, dists = structure.get_neighbor_list(radius, exclude_self=True)
    return centers.astype(np.int64), points.astype(np.int64), np.rint(images).astype(np.int64), dists


def _k_nearest(centers: np.ndarray, dists: np.ndarray, n_atoms: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask of neighbours at or within each centre's k-th distance, and per-atom counts."""
    counts = np.bincount(centers, minlength=n_atoms)
    if counts.min() < k:
        return np.zeros(0, dtype=bool), counts
    order = np.lexsort((dists, centers))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    kth = dists[order][starts + k - 1]
    return dists <= kth[centers] + TIE_TOLERANCE, counts


def _canonical_edges(
    n_atoms: int, centers: np.ndarray, points: np.ndarray, images: np.ndarray, use_lattice: bool
) -> np.ndarray:
    """Unique canonical (src, dst, image) rows, shape (M, 5), src <= dst."""
    swap = points < centers
    src = np.where(swap, points, centers)
    dst = np.where(swap, centers, points)
    img = np.where(swap[:, None], -images, images)
    rows = np.column_stack([src, dst, img])
    if use_lattice:
        atoms = np.repeat(np.arange(n_atoms), len(LATTICE_IMAGES))
        lattice_rows = np.column_stack([atoms, atoms, np.tile(LATTICE_IMAGES, (n_atoms, 1))])
        rows = np.concatenate([rows, lattice_rows])
    return _unique_rows(rows, n_atoms)


def _unique_rows(rows: np.ndarray, n_atoms: int) -> np.ndarray:
    """``np.unique(rows, axis=0)`` for (src, dst, image) rows, via one int64 key per row.

    The key is a mixed-radix number with the columns as digits (images shifted to be
    non-negative), so sorting keys sorts rows lexicographically, as ``np.unique`` does,
    at a fraction of the cost of its row-wise sort.
    """
    low = rows[:, 2:].min(initial=0)
    base = int(rows[:, 2:].max(initial=0) - low + 1)
    if float(n_atoms) ** 2 * float(base) ** 3 >= 2.0**62:
        return np.unique(rows, axis=0)
    key = rows[:, 0] * n_atoms + rows[:, 1]
    for column in (2, 3, 4):
        key = key * base + (rows[:, column] - low)
    _, first = np.unique(key, return_index=True)
    return rows[first]


def build_graph(structure: Structure, settings: GraphSettings = GraphSettings()) -> CrystalGraph:
    """Build the Matformer graph of an ordered periodic structure, on the cell as given.

    ``settings.cell`` is not applied here: callers first pass the structure through
    :func:`crystalprop.graph.cells.cell_for_graph`, which also reports a fallback.
    """
    atomic_numbers = np.array([site.specie.Z for site in structure], dtype=np.int16)
    check_elements(atomic_numbers, [site.specie.symbol for site in structure])
    n_atoms = len(structure)
    radius = settings.cutoff
    for _ in range(MAX_RADIUS_GROWTHS):
        centers, points, images, dists = _neighbor_search(structure, radius)
        keep, counts = _k_nearest(centers, dists, n_atoms, settings.max_neighbors)
        if keep.size:
            break
        longest = max(structure.lattice.abc)
        radius = longest if radius < longest else 2 * radius
    else:
        raise ValueError(f"fewer than {settings.max_neighbors} neighbours within {radius:.1f} Å")

    rows = _canonical_edges(n_atoms, centers[keep], points[keep], images[keep], settings.use_lattice)
    src, dst, img = rows[:, 0], rows[:, 1], rows[:, 2:]
    frac = structure.frac_coords
    vectors = (frac[dst] + img - frac[src]) @ structure.lattice.matrix
    lengths = np.round(np.linalg.norm(vectors, axis=1), DISTANCE_DECIMALS).astype(np.float32)
    return CrystalGraph(
        atomic_numbers=atomic_numbers,
        src=np.concatenate([src, dst]).astype(np.int32),
        dst=np.concatenate([dst, src]).astype(np.int32),
        distances=np.concatenate([lengths, lengths]),
    )
