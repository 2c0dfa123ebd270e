"""Matformer's periodic k-nearest-neighbour graph, vectorised.

Follows ``nearest_neighbor_edges_submit`` + ``build_undirected_edgedata`` of the original
Matformer (matformer/graphs.py, YKQ98/Matformer) with its Materials Project settings
(cutoff 8 Å, 12 neighbours, ``use_canonize=True``, ``use_lattice=True``):

1. Neighbours of every atom over all periodic images within the cutoff. If any atom has
   fewer than ``k`` of them, the radius grows to the longest cell edge (or to twice the
   cutoff where that is not longer) and the search repeats, doubling the radius each time.
   The original searches every atom again; here only the atoms not yet complete are (an
   atom is complete once its k-th distance, ties included, lies inside the radius), which
   gives the same edges at a fraction of the cost, and the pairs visited in all are
   bounded (``MAX_SEARCH_PAIRS``): a structure that would need more is refused.
2. Per atom, every neighbour at or within its k-th nearest distance (ties included).
3. Canonical form: a pair is stored with the lower atom index first and the image taken
   relative to it, so a bond found from both of its atoms counts once. Pairs of an atom
   with its own images are stored as found (both +n and -n), as in the original.
4. Lattice self-edges: every atom to its own images at +a, +b, +c, +(a+b), +(a+c),
   +(b+c), merged with identical neighbour images. The original drops these on the
   retry path of step 1 (its recursive call does not pass ``use_lattice``); we keep them
   always, so every graph carries its cell vectors.
5. Every kept edge is emitted in both directions.

The builder takes a :class:`~crystalprop.io.crystal.Crystal` (plain arrays; adapters in
:mod:`crystalprop.io.adapters`). The neighbour search (:mod:`crystalprop.graph.spheres`, scipy's
k-d tree over the periodic images, the pairs and distances of pymatgen's ``find_points_in_spheres``)
is called for a chunk of centre atoms at a time so that memory stays bounded; the rest is numpy
without Python loops over atoms or edges.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from crystalprop.io.crystal import Crystal
from crystalprop.graph.elements import check_elements
from crystalprop.graph.settings import GraphSettings
from crystalprop.graph.site_features import site_features
from crystalprop.graph.sphere_kernel import kth_nearest, library
from crystalprop.graph.spheres import points_in_spheres

__all__ = ["CrystalGraph", "GraphSettings", "NeighborSearchError", "build_graph"]

LATTICE_IMAGES = np.array(
    [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=np.int64
)
DISTANCE_DECIMALS = 6  # distances are rounded to 1e-6 Å so equal bonds share one value
TIE_TOLERANCE = 1e-6  # Å: neighbours this close to the k-th distance count as ties
MAX_RADIUS_GROWTHS = 8
SELF_TOLERANCE = 1e-8  # Å: a point this close to its centre is the centre itself
MAX_SEARCH_PAIRS = 20_000_000
"""Most atom pairs one structure's neighbour search may visit, over all radii (a few seconds)."""
CHUNK_PAIRS = 1_000_000
"""Atom pairs searched per call, so a worker holds about 100 MB of search results at most."""
FIRST_CHUNK_ATOMS = 256  # the first chunk is small: the pair estimate is not yet corrected for clustering


@dataclass
class CrystalGraph:
    """One crystal's directed graph.

    atomic_numbers: (N,) int16. src, dst: (E,) int32 edge endpoints (messages flow
    src -> dst). distances: (E,) float32 bond lengths in Å, rounded to 1e-6 Å. volume: the
    cell's volume in Å³ (with N the volume per atom, which :mod:`crystalprop.data.fingerprints`
    compares with the training crystals'; 0 where unknown). site: (N, 13) float32 descriptors of each
    atom's neighbour shell where the settings ask for them (:mod:`crystalprop.graph.site_features`), else None.
    """

    atomic_numbers: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    distances: np.ndarray
    volume: float = 0.0
    site: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        """Number of atoms."""
        return int(self.atomic_numbers.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of directed edges."""
        return int(self.src.shape[0])


class NeighborSearchError(ValueError):
    """The k-nearest-neighbour graph cannot be built within the search bounds; ``str(e)`` says why."""


@dataclass
class _SearchBudget:
    """Atom pairs a structure's neighbour search may still visit, and pairs seen per estimated pair."""

    left: int
    n_atoms: int
    volume: float  # of the cell, Å³
    diagonal: float  # longest diagonal of the cell, Å
    ratio: float = 1.0  # largest (pairs found / pairs estimated) seen so far: clustered atoms exceed 1

    def estimate(self, n_centres: int, radius: float) -> float:
        """Pairs expected for ``n_centres`` centres at ``radius``.

        Atoms spread evenly, corrected by ``ratio`` for clusters, but never more than every
        atom of every cell image that the sphere can reach.
        """
        sphere = 4.0 / 3.0 * np.pi * radius**3
        reach = 4.0 / 3.0 * np.pi * (radius + self.diagonal) ** 3
        return n_centres * self.n_atoms * min(self.ratio * sphere, reach) / self.volume

    def spend(self, pairs: int, estimated: float, reason: str) -> None:
        """Count visited pairs; refuse the structure once the budget is spent."""
        self.left -= pairs
        self.ratio = max(self.ratio, pairs / max(estimated, 1.0))
        if self.left < 0:
            raise NeighborSearchError(reason)


def _neighbor_search(crystal: Crystal, atoms: np.ndarray, radius: float) -> tuple[np.ndarray, ...]:
    """(centre, neighbour, image, distance) within radius of the given atoms, self at zero distance excluded."""
    cart = crystal.cart
    centres, points, images, dists = points_in_spheres(crystal.lattice, cart, cart[atoms], radius, SELF_TOLERANCE)
    centres = atoms[centres]
    other = ~((centres == points) & (dists <= SELF_TOLERANCE))
    return centres[other], points[other], images[other], dists[other]


def _k_nearest(centers: np.ndarray, dists: np.ndarray, n_atoms: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per atom: neighbour count, and k-th nearest distance (infinite where fewer than k)."""
    lib = library()
    if lib is not None and k >= 1:
        return kth_nearest(lib, centers, dists, n_atoms, k)
    counts = np.bincount(centers, minlength=n_atoms)
    kth = np.full(n_atoms, np.inf)
    full = counts >= k
    if full.any():
        order = np.lexsort((dists, centers))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        kth[full] = dists[order][starts[full] + k - 1]
    return counts, kth


def _chunks(atoms: np.ndarray, radius: float, budget: _SearchBudget) -> Iterator[np.ndarray]:
    """The atoms in consecutive chunks of about CHUNK_PAIRS expected pairs (re-estimated as pairs are seen)."""
    start = 0
    while start < len(atoms):
        per_atom = max(budget.estimate(1, radius), 1e-9)
        size = int(np.clip(CHUNK_PAIRS / per_atom, 1, FIRST_CHUNK_ATOMS if start == 0 else len(atoms)))
        yield atoms[start:start + size]
        start += size


def _search_level(crystal: Crystal, atoms: np.ndarray, radius: float, k: int,
                  budget: _SearchBudget, cutoff: float) -> tuple[np.ndarray, ...]:
    """Search ``atoms`` at ``radius``, a chunk at a time.

    Returns, per atom of the structure, the neighbour count and k-th distance (for the
    atoms searched), and the neighbours at or within each atom's k-th distance (ties
    included) as (centre, neighbour, image) rows.
    """
    n_atoms = len(crystal)
    counts, kth = np.zeros(n_atoms, dtype=np.int64), np.full(n_atoms, np.inf)
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for chunk in _chunks(atoms, radius, budget):
        estimated = budget.estimate(len(chunk), radius)
        if estimated > budget.left:
            raise NeighborSearchError(_refusal(len(atoms), radius, k, cutoff))
        centers, points, images, dists = _neighbor_search(crystal, chunk, radius)
        budget.spend(len(centers), estimated, _refusal(len(atoms), radius, k, cutoff))
        chunk_counts, chunk_kth = _k_nearest(centers, dists, n_atoms, k)
        counts[chunk], kth[chunk] = chunk_counts[chunk], chunk_kth[chunk]
        keep = dists <= kth[centers] + TIE_TOLERANCE
        kept.append((centers[keep], points[keep], images[keep]))
    return counts, kth, *(np.concatenate(parts) for parts in zip(*kept))


MAX_BASIS_SKEW = 1000.0
"""The largest ratio of a cell's edge-length product to its volume that the neighbour search takes as given: at
1,400 a 2-atom cell took 6 s, at 140,000 hours; reduced cells of real crystals lie near 1."""


def _refusal(n_searched: int, radius: float, k: int, cutoff: float) -> str:
    """Why a search is refused; at the first radius beyond the default cutoff, that cutoff is the likely cause."""
    cause = (f"a cutoff ({cutoff:g} Å) above the default {GraphSettings.cutoff:g} Å" if
             radius == cutoff and cutoff > GraphSettings.cutoff else
             "atoms far from all others in a large cell, or packed too densely")
    return (f"neighbour search refused: finding the {k} nearest neighbours of {n_searched} atom(s) within "
            f"{radius:.1f} Å would visit more than {MAX_SEARCH_PAIRS:,} atom pairs ({cause})")


def _radii(cutoff: float, longest: float) -> Iterator[float]:
    """The search radii: the cutoff, then the longest cell edge (or twice the cutoff), doubling."""
    radius = cutoff
    for _ in range(MAX_RADIUS_GROWTHS):
        yield radius
        radius = longest if radius < longest else 2 * radius


def _knn_pairs(crystal: Crystal, settings: GraphSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, neighbour, image) of every atom's k nearest neighbours, ties included.

    The same pairs as searching every atom at the first radius of ``_radii`` where all
    have k neighbours (the original's rule), but an atom whose k-th distance lies inside
    an earlier radius is not searched again: its pairs up to that distance are final.
    """
    n_atoms, k = len(crystal), settings.max_neighbors
    skew = float(np.prod(crystal.lengths)) / crystal.volume  # 1 for a rectangular cell, about 1-3 for reduced ones
    if skew > MAX_BASIS_SKEW:  # the compiled search visits images of the skewed basis, beyond time limits and signals
        raise NeighborSearchError(
            f"the cell's basis is skewed far beyond any reduced cell's (its vectors' lengths multiply to {skew:.3g} "
            "times its volume): give the cell in a reduced (e.g. Niggli) basis; --cell canonical, the default, "
            "reduces it where the canonical cell is found")
    diagonals = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]]) @ crystal.lattice
    budget = _SearchBudget(MAX_SEARCH_PAIRS, n_atoms, crystal.volume, float(np.linalg.norm(diagonals, axis=1).max()))
    pending = np.arange(n_atoms)
    found: list[tuple[np.ndarray, ...]] = []
    radius = settings.cutoff
    for radius in _radii(settings.cutoff, float(crystal.lengths.max())):
        counts, kth, centers, points, images = _search_level(crystal, pending, radius, k, budget, settings.cutoff)
        last = counts[pending].min() >= k  # the original stops here: every atom takes its pairs within radius
        done = np.zeros(n_atoms, dtype=bool)
        done[pending] = last | (kth[pending] + TIE_TOLERANCE <= radius)
        final = done[centers]
        found.append((centers[final], points[final], images[final]))
        if last:
            return tuple(np.concatenate(parts) for parts in zip(*found))
        pending = pending[~done[pending]]
    raise NeighborSearchError(f"fewer than {k} neighbours within {radius:.1f} Å")


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


def build_graph(crystal: Crystal, settings: GraphSettings = GraphSettings()) -> CrystalGraph:
    """Build the Matformer graph of an ordered periodic crystal, on the cell as given.

    ``settings.cell`` is not applied here: callers first pass the crystal through
    :func:`crystalprop.graph.cells.cell_for_graph`, which also reports a fallback.
    """
    atomic_numbers = crystal.numbers.astype(np.int16)
    check_elements(crystal.numbers, list(crystal.symbols) if crystal.symbols else None)
    # positions wrapped into the cell: the same crystal, and the search spans only the images between the
    # atoms (unwrapped ones 300 cells apart took minutes)
    crystal = replace(crystal, frac=crystal.frac - np.floor(crystal.frac))
    centers, points, images = _knn_pairs(crystal, settings)
    site = None
    if settings.site_features:  # from every k-nearest pair, before the edges are made canonical
        pair_vectors = (crystal.frac[points] + images - crystal.frac[centers]) @ crystal.lattice
        site = site_features(pair_vectors, centers, len(crystal))
    rows = _canonical_edges(len(crystal), centers, points, images, settings.use_lattice)
    src, dst, img = rows[:, 0], rows[:, 1], rows[:, 2:]
    vectors = (crystal.frac[dst] + img - crystal.frac[src]) @ crystal.lattice
    lengths = np.round(np.linalg.norm(vectors, axis=1), DISTANCE_DECIMALS).astype(np.float32)
    return CrystalGraph(
        atomic_numbers=atomic_numbers,
        src=np.concatenate([src, dst]).astype(np.int32),
        dst=np.concatenate([dst, src]).astype(np.int32),
        distances=np.concatenate([lengths, lengths]),
        volume=float(abs(np.linalg.det(crystal.lattice))),
        site=site,
    )
