"""The compiled neighbour search: the numpy search's pairs, distances and graphs to the last bit."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import perovskite, rocksalt, triclinic
from crystalprop.graph import sphere_kernel, spheres
from crystalprop.graph.neighbors import _k_nearest, build_graph
from crystalprop.io.adapters import crystal_from_structure
from crystals import hcp_mg, srtio3

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sphere_kernel.library() is None, reason="no C++ compiler to build the compiled search")

STRUCTURES = {"rocksalt": lambda: rocksalt(5.64), "perovskite": lambda: perovskite(3.905), "hcp": hcp_mg,
              "srtio3 3x1x2": lambda: srtio3() * (3, 1, 2), "triclinic": lambda: triclinic(6, seed=11),
              "flat triclinic": lambda: triclinic(5, seed=2) * (1, 1, 4)}


@contextmanager
def numpy_search() -> Iterator[None]:
    """The numpy search (and numpy's k-th distance) inside the block."""
    saved = dict(sphere_kernel._state)
    sphere_kernel._state["library"] = None
    try:
        yield
    finally:
        sphere_kernel._state.clear()
        sphere_kernel._state.update(saved)


def _sorted(found: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.column_stack([found[0], found[1], found[2]])
    order = np.lexsort(rows.T[::-1])
    return rows[order], found[3][order]


@pytest.mark.parametrize("name", list(STRUCTURES))
@pytest.mark.parametrize("radius", [0.7, 4.0, 8.0, 19.3])
def test_same_pairs_and_distances_as_numpy(name, radius):
    structure = STRUCTURES[name]()
    structure.translate_sites([0], [3.2, -5.7, 9.1], to_unit_cell=False)  # an atom far outside the cell
    lattice, cart = structure.lattice.matrix, structure.cart_coords
    centres = cart[::2]
    ours = spheres.points_in_spheres(lattice, cart, centres, radius, 1e-8)
    with numpy_search():
        theirs = spheres.points_in_spheres(lattice, cart, centres, radius, 1e-8)
    assert [a.dtype for a in ours] == [a.dtype for a in theirs]
    (rows, distances), (their_rows, their_distances) = _sorted(ours), _sorted(theirs)
    assert np.array_equal(rows, their_rows)
    assert distances.tobytes() == their_distances.tobytes()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_same_graph_as_numpy(name):
    crystal = crystal_from_structure(STRUCTURES[name]())
    ours = build_graph(crystal)
    with numpy_search():
        theirs = build_graph(crystal)
    for field in ("atomic_numbers", "src", "dst", "distances"):
        a, b = getattr(ours, field), getattr(theirs, field)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_more_pairs_than_room_for_them():
    structure = rocksalt(5.64)
    lattice, cart = structure.lattice.matrix, structure.cart_coords
    inv = spheres._inverse(lattice)
    ranges = spheres._image_ranges(lattice, spheres._product(cart, inv), 6.0)
    low, high = (cart.min(axis=0) - 6.0) - 1e-8, (cart.max(axis=0) + 6.0) + 1e-8
    args = (sphere_kernel.library(), lattice, inv, cart, cart, ranges, low, high, 36.0 + 1e-8)
    roomy, cramped = sphere_kernel.search(*args, 100_000), sphere_kernel.search(*args, 3)
    assert len(roomy[0]) > 3
    for a, b in zip(roomy, cramped):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("k", [1, 3, 12, 40])
def test_kth_nearest_matches_numpy(k):
    rng = np.random.default_rng(k)
    centres = rng.integers(0, 9, 300)
    distances = np.round(rng.uniform(0.5, 8.0, 300), 2)  # ties included
    ours = _k_nearest(centres, distances, 11, k)  # atoms 9 and 10 have no pairs
    with numpy_search():
        theirs = _k_nearest(centres, distances, 11, k)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_no_writable_cache_means_the_numpy_search(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("CRYSTALPROP_KERNELS", str(blocker / "kernels"))
    monkeypatch.setattr(sphere_kernel, "_state", {})
    assert sphere_kernel.library() is None


def test_switched_off_by_the_environment():
    script = "from crystalprop.graph import sphere_kernel; print(sphere_kernel.library())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"CRYSTALPROP_NATIVE_SEARCH": "0", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
