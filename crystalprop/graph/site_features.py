"""Per-atom bond-angle features of the nearest-neighbour shell, vectorised.

The Matformer graph carries bond lengths only, so an atom's embedding cannot tell, say, an octahedron
from a trigonal prism at the same distances. These 13 numbers per atom, from the vectors to its k
nearest neighbours (ties included), let it see the angles of its first shell:

- the shell's size: a smooth count, each neighbour weighted by a sigmoid of d / d_min around 1.2
  (width 0.03), divided by 12;
- the Steinhardt bond-orientational order parameters q2, q4, q6 of the weighted shell, by the Legendre
  addition theorem: q_l = sqrt(sum_jk w_j w_k P_l(cos θ_jk)) / sum_j w_j, pairs j = k included;
- a 9-bin histogram of the cosines between shell bonds (pairs j < k, weighted w_j w_k), each smeared
  by a Gaussian of σ 0.15 over bin centres -1 ... 1, normalised to sum 1 (zeros where no pair weighs).

An atom without neighbours, or with one at zero distance, gets zeros. The numbers are those of the
per-atom loop that a screen's trained weights were fitted with (``tests/test_site_features.py`` keeps
it as the oracle). Here the neighbour lists are padded to a common length and all atoms are handled at
once, over the pairs j < k only: the pairs j > k mirror them and a bond with itself has P_l(1) = 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["N_SITE", "site_features"]

N_SITE = 13
"""Features per atom: shell size, q2, q4, q6, 9 bond-angle bins."""
SHELL_RATIO = 1.2  # the first shell ends at 1.2 times an atom's nearest distance
SHELL_WIDTH = 0.03  # width of the sigmoid, in units of the nearest distance
FULL_SHELL = 12.0  # the shell size is given as a fraction of 12 neighbours
ANGLE_CENTRES = np.linspace(-1.0, 1.0, 9)
ANGLE_WIDTH = 0.15  # σ of the Gaussian smearing each cosine
LEGENDRE = np.array([[-1.0, 3.0, -5.0], [3.0, -30.0, 105.0], [0.0, 35.0, -315.0], [0.0, 0.0, 231.0]]) / [2.0, 8.0, 16.0]
"""P2, P4, P6 (columns) as polynomials in cos² (rows: the coefficients of cos^0, cos^2, cos^4, cos^6)."""
CHUNK_PAIRS = 1 << 17
"""Atom-pairs handled at once (atoms times pairs per atom), so a large cell with long tied lists stays near 15 MB."""
_PAIRS: dict[int, np.ndarray] = {}


def site_features(vectors: np.ndarray, centers: np.ndarray, n_atoms: int) -> np.ndarray:
    """(n_atoms, 13) float32: shell size, q2, q4, q6 and the 9-bin bond-angle histogram of every atom.

    The atom embedding's view of bond angles, which the distance-only graph lacks (see the module).
    vectors: (P, 3) Cartesian vectors in Å from a centre atom to each of its neighbours (periodic
    images included). centers: (P,) the centre atom of each vector, in [0, n_atoms), in any order.
    """
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    centers = np.asarray(centers).reshape(-1)
    if len(centers) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors for {len(centers)} centre indices")
    out = np.zeros((n_atoms, N_SITE), dtype=np.float32)
    if len(centers) == 0:
        return out
    if centers.min() < 0 or centers.max() >= n_atoms:
        raise ValueError(f"centre indices must lie in [0, {n_atoms}): found {centers.min()} to {centers.max()}")
    order = np.argsort(centers, kind="stable")
    owner = centers[order]
    counts = np.bincount(owner, minlength=n_atoms)
    slot = np.arange(len(order)) - (np.cumsum(counts) - counts)[owner]
    width = int(counts.max())
    padded = np.zeros((n_atoms, width, 3))
    padded[owner, slot] = vectors[order]
    present = np.zeros((n_atoms, width), dtype=bool)
    present[owner, slot] = True
    step = max(1, CHUNK_PAIRS // max(1, width * (width - 1) // 2))
    for start in range(0, n_atoms, step):
        out[start:start + step] = _shell_features(padded[start:start + step], present[start:start + step])
    return out


def _upper_pairs(width: int) -> np.ndarray:
    """Flat indices j * width + k of the pairs j < k of a (width, width) matrix, cached per width."""
    if width not in _PAIRS:
        j, k = np.triu_indices(width, 1)
        _PAIRS[width] = j * width + k
    return _PAIRS[width]


def _shell_features(vectors: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(A, 13) float64 features of A atoms from their padded neighbour vectors (A, m, 3), present (A, m)."""
    n_atoms, width = present.shape
    lengths = np.sqrt(np.einsum("amx,amx->am", vectors, vectors))
    lengths[~present] = np.inf
    nearest = lengths.min(axis=1)
    valid = (nearest > 0) & (nearest < np.inf)
    lengths[~valid] = np.inf  # an atom without neighbours, or with one at zero distance: weights 0, features 0
    with np.errstate(over="ignore"):  # far neighbours: exp overflows to inf, weight 0, as in the definition
        weights = 1.0 / (1.0 + np.exp((lengths / np.where(valid, nearest, 1.0)[:, None] - SHELL_RATIO) / SHELL_WIDTH))
    units = vectors / lengths[..., None]
    pairs = _upper_pairs(width)
    cosines = np.take(np.matmul(units, units.transpose(0, 2, 1)).reshape(n_atoms, -1), pairs, axis=1)
    np.minimum(np.maximum(cosines, -1.0, out=cosines), 1.0, out=cosines)
    pair_weights = np.take((weights[:, :, None] * weights[:, None, :]).reshape(n_atoms, -1), pairs, axis=1)
    squares = cosines * cosines
    moments = np.empty((n_atoms, len(LEGENDRE)))  # column i: the sum over pairs j < k of w_j w_k cos^(2i)
    moments[:, 0] = pair_weights.sum(axis=1)
    term = pair_weights * squares
    for power in range(1, len(LEGENDRE)):
        moments[:, power] = term.sum(axis=1)
        term *= squares
    self_pairs = (weights * weights).sum(axis=1)[:, None]  # j = k: cos 0 = 1, P_l(1) = 1
    legendre = self_pairs + 2.0 * (moments @ LEGENDRE)
    smear = cosines[:, None, :] - ANGLE_CENTRES[:, None]
    smear *= smear
    smear *= -0.5 / ANGLE_WIDTH**2
    histogram = np.matmul(np.exp(smear, out=smear), pair_weights[:, :, None])[:, :, 0]
    norm = histogram.sum(axis=1)
    total = weights.sum(axis=1)
    features = np.empty((n_atoms, N_SITE))
    features[:, 0] = total / FULL_SHELL
    features[:, 1:4] = np.sqrt(np.maximum(legendre, 0.0)) / np.where(total > 0, total, 1.0)[:, None]
    features[:, 4:] = histogram / np.where(norm > 0, norm, 1.0)[:, None]  # no pair: the histogram stays 0
    return features
