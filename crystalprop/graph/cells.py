"""The cell a graph is built on: the canonical primitive cell, or the cell as given.

Matformer's graph depends on the cell that describes a crystal: its lattice self-edges carry
the cell vectors, and an atom's own periodic images send two messages where the same
neighbour in a supercell sends one. So that one crystal gets one answer, whatever cell its
file uses (primitive, conventional, supercell, any basis of the lattice), the structure is
first reduced to a canonical cell (a :class:`~crystalprop.io.crystal.Crystal` in, one out):

1. the primitive cell, found by spglib with a symmetry tolerance (``SYMPREC`` Å), without
   idealising: positions and lattice keep the file's geometry (translationally equivalent
   atoms are averaged), only the cell changes;
2. its Niggli-reduced basis (spglib), unique for a lattice, so the self-edges' lengths
   |a|, |b|, |c|, |a+b|, |a+c|, |b+c| no longer depend on the basis the file chose.

A search that fails or runs longer than its time limit falls back to the cell as given and
says so in a note (the warning column of ``predict``).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from crystalprop.io.crystal import Crystal
from crystalprop.graph.settings import AS_GIVEN, CANONICAL, check_cell_choice
from crystalprop.utils.timelimit import call_with_alarm

SYMPREC = 0.01  # Å: spglib's default tolerance, and Materials Project's for symmetry
CELL_TIMEOUT_S = 10.0  # per structure; typical cells take milliseconds
PRECHECK_FACTOR = 2.0  # the pre-check's tolerance, in units of SYMPREC: looser than spglib's, never tighter
MAX_PAIRWISE_SHIFTS = 64  # more candidate shifts than this: k-d trees, not all pairs of atoms
SCREEN_ATOMS = 8  # atoms of each element that every one of many candidate shifts is tried on first
NIGGLI_EPS = 1e-5  # spglib's default tolerance for equal lengths and right angles


class CellTimeout(Exception):
    """The canonical-cell search ran past its time limit."""


def may_have_pure_translation(crystal: Crystal, tolerance: float) -> bool:
    """Whether some lattice translation shorter than a cell vector might map ``crystal`` onto itself.

    A cheap, conservative pre-check that spares spglib's symmetry search (tens of ms for a
    cubic cell, half a minute for a 4,096-atom supercell with thermal noise) for cells that
    cannot be supercells: every pure translation splits each element's atoms into orbits of one
    size, so a cell whose element counts have no common divisor is primitive; otherwise each
    candidate shift (from one atom of the rarest element to another) must carry every atom onto
    an atom of its element, tested with a tolerance looser than spglib's. False means spglib
    would find no translation either; True means spglib must decide.
    """
    numbers = crystal.numbers
    counts = np.bincount(numbers)
    elements = np.flatnonzero(counts)
    counts = counts[elements]
    if np.gcd.reduce(counts) == 1:
        return False
    frac = crystal.frac
    groups = [frac[numbers == z] for z in elements]
    rarest = groups[int(np.argmin(counts))]
    shifts = rarest[1:] - rarest[0]
    if len(shifts) > MAX_PAIRWISE_SHIFTS:
        return _some_shift_carries_all(groups, shifts, crystal.lattice, tolerance)
    for shift in shifts:
        if all(_maps_onto_itself(group, shift, crystal.lattice, tolerance) for group in groups):
            return True
    return False


def _maps_onto_itself(frac: np.ndarray, shift: np.ndarray, matrix: np.ndarray, tolerance: float) -> bool:
    """Whether every atom of one element, moved by ``shift``, lands within ``tolerance`` Å of one of them."""
    delta = frac[:, None, :] + shift - frac[None, :, :]
    delta -= np.rint(delta)  # the nearest image, exact for offsets far below half a layer spacing
    distances = np.linalg.norm(delta @ matrix, axis=-1)
    return bool((distances.min(axis=1) <= tolerance).all())


def _some_shift_carries_all(groups: list[np.ndarray], shifts: np.ndarray, lattice: np.ndarray,
                            tolerance: float) -> bool:
    """:func:`_maps_onto_itself` for many shifts at once, with one periodic k-d tree per element.

    Each fractional axis is scaled by the spacing of the lattice planes along it: a Cartesian
    offset of at most ``tolerance`` moves each scaled coordinate by at most ``tolerance``, so the
    trees' max-norm ball of that radius holds every match the all-pairs test would accept. A few
    atoms of each element rule most shifts out at once; the rest are tried on every atom.
    """
    from scipy.spatial import cKDTree  # noqa: PLC0415  (imported by the graph workers anyway)

    spacing = 1.0 / np.linalg.norm(np.linalg.inv(lattice), axis=0)
    trees = [cKDTree(_scaled(group, spacing), boxsize=spacing) for group in groups]
    bound = tolerance * (1 + 1e-9)

    def carried(positions: np.ndarray, tree, shifts: np.ndarray) -> np.ndarray:
        """(shifts,) whether each shift carries every one of ``positions`` onto an atom of ``tree``."""
        moved = _scaled(positions[:, None, :] + shifts[None, :, :], spacing)  # (atoms, shifts, 3)
        distance, _ = tree.query(moved.reshape(-1, 3), p=np.inf, distance_upper_bound=bound)
        return np.isfinite(distance.reshape(moved.shape[:2])).all(axis=0)

    for group, tree in zip(groups, trees):
        shifts = shifts[carried(group[:SCREEN_ATOMS], tree, shifts)]
    return any(all(carried(group, tree, shift[None])[0] for group, tree in zip(groups, trees)) for shift in shifts)


def _scaled(frac: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Fractional positions (..., 3) wrapped into the k-d trees' periodic box [0, spacing)."""
    scaled = (frac - np.floor(frac)) * spacing
    return np.where(scaled >= spacing, 0.0, scaled)


def primitive_cell(crystal: Crystal, symprec: float = SYMPREC) -> Crystal:
    """The primitive cell of ``crystal`` (spglib, not idealised); ``crystal`` itself if it is primitive."""
    if not may_have_pure_translation(crystal, PRECHECK_FACTOR * symprec):
        return crystal
    import spglib  # noqa: PLC0415  (in the workers only)

    with warnings.catch_warnings():  # spglib 2.x deprecates its None-on-failure, which works across versions
        warnings.simplefilter("ignore", DeprecationWarning)
        found = spglib.standardize_cell((crystal.lattice, crystal.frac, crystal.numbers), to_primitive=True,
                                        no_idealize=True, symprec=symprec)
    if found is None:
        raise ValueError("spglib found no symmetry (tolerance too tight or cell degenerate)")
    lattice, frac, numbers = found
    if len(numbers) == len(crystal):
        return crystal
    names = None if crystal.symbols is None else dict(zip(crystal.numbers.tolist(), crystal.symbols))
    return Crystal(numbers, lattice, frac, None if names is None else tuple(names[z] for z in numbers.tolist()))


def niggli_cell(crystal: Crystal) -> Crystal:
    """``crystal`` in its Niggli-reduced basis (spglib's reduction; atoms wrapped into the new cell)."""
    import spglib  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reduced = spglib.niggli_reduce(crystal.lattice, eps=NIGGLI_EPS)
        if reduced is None:  # a basis too skewed for spglib (a vector of 1000 times the others): LLL-reduce it first
            from pymatgen.core import Lattice  # noqa: PLC0415  (the readers have imported it)

            reduced = spglib.niggli_reduce(Lattice(crystal.lattice).lll_matrix, eps=NIGGLI_EPS)
    if reduced is None:
        raise ValueError("Niggli reduction failed")
    old = crystal.lattice
    if np.abs(reduced - old).max() <= 1e-12:
        return crystal
    to_new = np.rint(old @ _inverse(reduced))  # integer: both bases span one lattice
    return Crystal(crystal.numbers, reduced, (crystal.frac @ to_new) % 1.0, crystal.symbols)


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 3x3 matrix by cross products: LAPACK's costs 50 times more on a 2-core machine
    where OpenBLAS starts threads for it."""
    adjugate = np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]])  # rows b x c, c x a, a x b
    return adjugate.T / np.dot(matrix[0], adjugate[0])


def canonical_cell(crystal: Crystal, symprec: float = SYMPREC) -> Crystal:
    """The Niggli-reduced primitive cell of ``crystal`` (raises if either step fails)."""
    return niggli_cell(primitive_cell(crystal, symprec))


def cell_for_graph(crystal: Crystal, cell: str = CANONICAL,
                   timeout: float = CELL_TIMEOUT_S) -> tuple[Crystal, str | None]:
    """The crystal in the cell the graph is built on, and a note if it fell back to the given cell.

    ``cell``: ``canonical`` (reduce) or ``as-given`` (unchanged). The time limit uses SIGALRM,
    so it applies in a process's main thread only; it interrupts Python code (the Niggli
    reduction) at once and spglib's C search when that returns.
    """
    if check_cell_choice(cell) == AS_GIVEN:
        return crystal, None
    try:
        if timeout and timeout > 0 and threading.current_thread() is threading.main_thread():
            return call_with_alarm(lambda: canonical_cell(crystal), timeout, CellTimeout), None
        return canonical_cell(crystal), None
    except CellTimeout:
        return crystal, f"canonical cell search took longer than {timeout:g} s; used the cell as given"
    except Exception as exc:  # any failure of the search must leave the structure usable
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return crystal, f"canonical cell search failed ({reason}); used the cell as given"
