"""Periodic fixed-radius neighbour search: every atom image within a radius of given centres.

The same pairs and the same floating-point distances as pymatgen's cell-list
``find_points_in_spheres`` (which the graph builder used before it took plain arrays), so
that ties and the k-th distance decide exactly as before: positions are wrapped into the cell
through the cofactor inverse of the lattice, images are generated over the same index ranges
and kept inside the centres' bounding box grown by the radius, and a pair is kept when its
squared distance, summed over x, y, z in that order, is below ``radius² + tol``. Candidate
pairs come from all (centre, image) combinations where they are few, from scipy's k-d tree
over the images (cost linear in the atoms) otherwise; both are then held to that exact rule.
Where the compiled search of :mod:`crystalprop.graph.sphere_kernel` is available it runs instead:
the same arithmetic, the same pairs and distances, in another order.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

from crystalprop.graph.sphere_kernel import library, search

MIN_RADIUS = 1.0  # Å: a smaller radius is searched at this one, then filtered (as pymatgen does)
SLACK = 1e-6  # Å added to the k-d tree's radius: its own rounding must not drop a pair the exact test keeps
DENSE_PAIRS = 40_000  # up to this many (centre, image) combinations, all are tested: faster than a tree


def _product(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix`` with each entry summed term by term in index order, so that every bit is
    reproducible (a BLAS product may add in another order)."""
    return (rows[:, :, None] * matrix).sum(axis=1)


def _inverse(lattice: np.ndarray) -> np.ndarray:
    """The inverse of a 3x3 matrix: its cofactors times the reciprocal of the determinant."""
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = lattice.tolist()
    inv_det = 1.0 / (m00 * (m11 * m22 - m12 * m21) + m01 * (m12 * m20 - m10 * m22) + m02 * (m10 * m21 - m11 * m20))
    return np.array([[m11 * m22 - m12 * m21, m02 * m21 - m01 * m22, m01 * m12 - m02 * m11],
                     [m12 * m20 - m10 * m22, m00 * m22 - m02 * m20, m02 * m10 - m00 * m12],
                     [m10 * m21 - m11 * m20, m01 * m20 - m00 * m21, m00 * m11 - m01 * m10]]) * inv_det


def _image_ranges(lattice: np.ndarray, centre_frac: np.ndarray, radius: float) -> list[slice]:
    """Per cell vector, the image indices that can hold a point within ``radius`` of a centre."""
    rows = lattice.tolist()
    low, high = centre_frac.min(axis=0).tolist(), centre_frac.max(axis=0).tolist()
    ranges = []
    for i in range(3):
        a1, a2, a3 = rows[i], rows[(i + 1) % 3], rows[(i + 2) % 3]
        cross = (a2[1] * a3[2] - a2[2] * a3[1], a2[2] * a3[0] - a2[0] * a3[2], a2[0] * a3[1] - a2[1] * a3[0])
        volume = (a1[0] * cross[0] + a1[1] * cross[1]) + a1[2] * cross[2]
        reciprocal = [2 * math.pi * x / volume for x in cross]
        length = math.sqrt((reciprocal[0] * reciprocal[0] + reciprocal[1] * reciprocal[1])
                           + reciprocal[2] * reciprocal[2])
        reach = math.ceil((radius + 0.15) * length / (2 * math.pi))
        ranges.append(slice(math.floor(low[i] - reach - 1e-8), math.ceil(high[i] + reach + 1e-8)))
    return ranges


def _images(lattice: np.ndarray, cart: np.ndarray, centres: np.ndarray, radius: float,
            tol: float) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(atom, integer image offset relative to the atom's given position, [x, y, z] positions) of
    every atom image inside the centres' bounding box grown by ``radius + tol``."""
    inv = _inverse(lattice)
    frac = _product(cart, inv)
    wrapped = frac - np.floor(frac)
    in_cell = _product(wrapped, lattice)
    shifts = np.mgrid[_image_ranges(lattice, _product(centres, inv), radius)].reshape(3, -1).T.astype(np.float64)
    origins = _product(shifts, lattice)
    low = (centres.min(axis=0) - radius) - tol
    high = (centres.max(axis=0) + radius) + tol
    # cell images with no atom in the box are dropped first (exact: rounding is monotonic), so that
    # memory follows the box's contents, not the whole range of images
    meets = np.all((origins + in_cell.max(axis=0) > low) & (origins + in_cell.min(axis=0) < high), axis=1)
    shifts, origins = shifts[meets], origins[meets]
    axes = [np.add.outer(origins[:, axis], in_cell[:, axis]) for axis in range(3)]  # (shift, atom) per axis
    inside = (axes[0] > low[0]) & (axes[0] < high[0])
    for axis in (1, 2):
        inside &= (axes[axis] > low[axis]) & (axes[axis] < high[axis])
    shift_index, atoms = np.nonzero(inside)
    offsets = np.rint(shifts[shift_index] - (frac - wrapped)[atoms]).astype(np.int64)
    return atoms, offsets, [axis[shift_index, atoms] for axis in axes]


def _squared(points: list[np.ndarray], centres: np.ndarray, outer: bool) -> np.ndarray:
    """Squared distances from centres to points, summed x, y, z in that order: (points, centres)
    for every combination (``outer``), else of aligned pairs."""
    squared = None
    for axis, coordinate in enumerate(points):
        delta = np.subtract.outer(coordinate, centres[:, axis]) if outer else coordinate - centres[:, axis]
        squared = delta * delta if squared is None else squared + delta * delta
    return squared


def _close_pairs(points: list[np.ndarray], centres: np.ndarray, radius: float,
                 tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, point, squared distance) of every pair with squared distance below ``radius² + tol``."""
    limit = radius * radius + tol
    if len(centres) * len(points[0]) <= DENSE_PAIRS:
        squared = _squared(points, centres, outer=True)
        point_index, centre_index = np.nonzero(squared < limit)
        return centre_index, point_index, squared[point_index, centre_index]
    from scipy.spatial import cKDTree  # noqa: PLC0415  (0.3 s to import: in the graph workers only)

    pairs = cKDTree(centres, balanced_tree=False, compact_nodes=False).sparse_distance_matrix(
        cKDTree(np.column_stack(points), balanced_tree=False, compact_nodes=False), math.sqrt(limit) + SLACK,
        output_type="ndarray")
    centre_index, point_index = pairs["i"], pairs["j"]
    squared = _squared([coordinate[point_index] for coordinate in points], centres[centre_index], outer=False)
    keep = squared < limit
    return centre_index[keep], point_index[keep], squared[keep]


def points_in_spheres(lattice: np.ndarray, cart: np.ndarray, centres: np.ndarray, radius: float,
                      tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every atom image within ``radius`` Å of each centre, the centre's own position included.

    ``cart``: (N, 3) atom positions; ``centres``: (M, 3) Cartesian points. Returns (centre
    index (M), atom index (N), integer image offset (n, 3) relative to the atom's given
    position, distance), int64, int64, int64, float64.
    """
    if radius < MIN_RADIUS:
        found = points_in_spheres(lattice, cart, centres, MIN_RADIUS + tol, tol)
        keep = found[3] <= radius
        return found[0][keep], found[1][keep], found[2][keep], found[3][keep]
    lib = library()
    if lib is not None:
        return _compiled_search(lib, lattice, cart, centres, radius, tol)
    atoms, offsets, points = _images(lattice, cart, centres, radius, tol)
    centre_index, point_index, squared = _close_pairs(points, centres, radius, tol)
    return centre_index, atoms[point_index], offsets[point_index], np.sqrt(squared)


def _compiled_search(lib: ctypes.CDLL, lattice: np.ndarray, cart: np.ndarray, centres: np.ndarray, radius: float,
                     tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`points_in_spheres` by the compiled search, given the bounds the numpy path computes."""
    inv = _inverse(lattice)
    ranges = _image_ranges(lattice, _product(centres, inv), radius)
    low = (centres.min(axis=0) - radius) - tol
    high = (centres.max(axis=0) + radius) + tol
    (a, b, c) = lattice.tolist()
    volume = abs(a[0] * (b[1] * c[2] - b[2] * c[1]) + a[1] * (b[2] * c[0] - b[0] * c[2])
                 + a[2] * (b[0] * c[1] - b[1] * c[0]))
    expected = len(centres) * len(cart) * 4.2 * (radius + 1.0) ** 3 / max(volume, 1e-6)
    capacity = int(min(expected, 4_000_000)) + 256
    centre_index, atoms, offsets, squared = search(lib, lattice, inv, cart, centres, ranges, low, high,
                                                   radius * radius + tol, capacity)
    return centre_index, atoms, offsets, np.sqrt(squared)
