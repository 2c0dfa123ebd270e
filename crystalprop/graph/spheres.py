"""Periodic fixed-radius neighbour search: every atom image within a radius of given centres.

The same pairs and the same floating-point distances as pymatgen's cell-list
``find_points_in_spheres`` (which the graph builder used before it took plain arrays), so
that ties and the k-th distance decide exactly as before: positions are wrapped into the cell
through the cofactor inverse of the lattice, images are generated over the same index ranges
and kept inside the centres' bounding box grown by the radius, and a pair is kept when its
squared distance, summed over x, y, z in that order, is below ``radius² + tol``. The pairs
themselves are found with scipy's k-d tree over those images (the cost grows linearly with
the atoms), then filtered with that exact rule.
"""

from __future__ import annotations

import numpy as np

MIN_RADIUS = 1.0  # Å: a smaller radius is searched at this one, then filtered (as pymatgen does)
SLACK = 1e-6  # Å added to the k-d tree's radius: its own rounding must not drop a pair the exact test keeps


def _product(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix`` summed term by term in index order, so that every bit is reproducible."""
    return (rows[:, 0:1] * matrix[0] + rows[:, 1:2] * matrix[1]) + rows[:, 2:3] * matrix[2]


def _inverse(lattice: np.ndarray) -> np.ndarray:
    """The inverse of a 3x3 matrix: its cofactors times the reciprocal of the determinant."""
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = lattice
    inv_det = 1.0 / (m00 * (m11 * m22 - m12 * m21) + m01 * (m12 * m20 - m10 * m22) + m02 * (m10 * m21 - m11 * m20))
    return np.array([[m11 * m22 - m12 * m21, m02 * m21 - m01 * m22, m01 * m12 - m02 * m11],
                     [m12 * m20 - m10 * m22, m00 * m22 - m02 * m20, m02 * m10 - m00 * m12],
                     [m10 * m21 - m11 * m20, m01 * m20 - m00 * m21, m00 * m11 - m01 * m10]]) * inv_det


def _image_ranges(lattice: np.ndarray, centre_frac: np.ndarray, radius: float) -> list[range]:
    """Per cell vector, the image indices that can hold a point within ``radius`` of a centre."""
    ranges = []
    for i in range(3):
        a1, a2, a3 = lattice[i], lattice[(i + 1) % 3], lattice[(i + 2) % 3]
        cross = np.array([a2[1] * a3[2] - a2[2] * a3[1], a2[2] * a3[0] - a2[0] * a3[2], a2[0] * a3[1] - a2[1] * a3[0]])
        reciprocal = 2 * np.pi * cross / ((a1[0] * cross[0] + a1[1] * cross[1]) + a1[2] * cross[2])
        length = np.sqrt((reciprocal[0] ** 2 + reciprocal[1] ** 2) + reciprocal[2] ** 2)
        reach = np.ceil((radius + 0.15) * length / (2 * np.pi))
        low, high = centre_frac[:, i].min(), centre_frac[:, i].max()
        ranges.append(range(int(np.floor(low - reach - 1e-8)), int(np.ceil(high + reach + 1e-8))))
    return ranges


def _images(lattice: np.ndarray, cart: np.ndarray, centres: np.ndarray, radius: float,
            tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atom, image offset relative to the atom's given position, Cartesian position) of every
    atom image inside the centres' bounding box grown by ``radius + tol``."""
    inv = _inverse(lattice)
    frac = _product(cart, inv)
    wrapped = frac - np.floor(frac)
    correction = frac - wrapped
    in_cell = _product(wrapped, lattice)
    shifts = np.array(np.meshgrid(*_image_ranges(lattice, _product(centres, inv), radius), indexing="ij"),
                      dtype=np.float64).reshape(3, -1).T
    low = (centres.min(axis=0) - radius) - tol
    high = (centres.max(axis=0) + radius) + tol
    origins = _product(shifts, lattice)
    # a cell image whose atoms all lie outside the box is skipped (rounding is monotonic: exact)
    meets = np.all((origins + in_cell.max(axis=0) > low) & (origins + in_cell.min(axis=0) < high), axis=1)
    shifts, origins = shifts[meets], origins[meets]
    positions = origins[:, None, :] + in_cell[None, :, :]
    inside = np.all((positions > low) & (positions < high), axis=2)
    shift_index, atoms = np.nonzero(inside)
    return atoms, shifts[shift_index] - correction[atoms], positions[shift_index, atoms]


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
        return tuple(part[keep] for part in found)  # type: ignore[return-value]
    atoms, offsets, positions = _images(lattice, cart, centres, radius, tol)
    if not len(atoms):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros(0)
    from scipy.spatial import cKDTree  # noqa: PLC0415  (0.3 s to import: in the graph workers only)

    tree = cKDTree(positions, balanced_tree=False, compact_nodes=False)
    pairs = cKDTree(centres, balanced_tree=False, compact_nodes=False).sparse_distance_matrix(
        tree, np.sqrt(radius * radius + tol) + SLACK, output_type="ndarray")
    centre_index, image_index = pairs["i"], pairs["j"]
    x, y, z = (positions[:, axis][image_index] - centres[:, axis][centre_index] for axis in range(3))
    squared = x * x
    squared += y * y
    squared += z * z
    keep = squared < radius * radius + tol
    image_index = image_index[keep]
    return (centre_index[keep], atoms[image_index], np.rint(offsets).astype(np.int64)[image_index],
            np.sqrt(squared[keep]))
