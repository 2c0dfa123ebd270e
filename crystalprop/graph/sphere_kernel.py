"""The compiled neighbour search (``spheres.cc``): loader and call.

The numpy search of :mod:`crystalprop.graph.spheres` spends most of its time in the overhead of
numpy calls on arrays of a few dozen atoms (0.3 ms a search). ``spheres.cc`` does the same
arithmetic in one pass; it is built once per machine with the system C++ compiler (see
:mod:`crystalprop.utils.native`) and loaded with ctypes, so the reader processes need no MindSpore.
It also picks each atom's k-th nearest distance. Without a compiler, or with
``CRYSTALPROP_NATIVE_SEARCH=0``, :func:`library` is None and numpy does both instead, with the
same pairs and distances to the last bit.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from crystalprop.utils.native import build

SOURCE = Path(__file__).resolve().parent / "spheres.cc"
# no -ffast-math and no contraction into fused multiply-adds: every rounding must be numpy's
FLAGS = ["-O2", "-std=c++17", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]
LINK_FLAGS = ["-shared"]

_state: dict[str, object] = {}


def library() -> ctypes.CDLL | None:
    """The compiled search library, built on first use; None where it cannot be used."""
    if "library" not in _state:
        _state["library"] = _load() if os.environ.get("CRYSTALPROP_NATIVE_SEARCH", "1") != "0" else None
    return _state["library"]  # type: ignore[return-value]


def _load() -> ctypes.CDLL | None:
    """The library with its functions' signatures set; None without a compiler or a writable cache."""
    try:
        path = build(SOURCE, FLAGS, LINK_FLAGS)
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
        spheres, kth = lib.CrystalpropSpheres, lib.CrystalpropKthNearest
    except (OSError, AttributeError):
        return None
    pointer, count = ctypes.c_void_p, ctypes.c_int64
    spheres.restype = count
    spheres.argtypes = [pointer, pointer, pointer, count, pointer, count, pointer, pointer, pointer, ctypes.c_double,
                        count, pointer, pointer, pointer, pointer]
    kth.restype = None
    kth.argtypes = [pointer, pointer, count, count, count, pointer, pointer]
    return lib


def search(lib: ctypes.CDLL, lattice: np.ndarray, inv: np.ndarray, cart: np.ndarray,
           centres: np.ndarray, ranges: list[slice], low: np.ndarray, high: np.ndarray, limit: float,
           capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centre, atom, image offset, squared distance) of every image with squared distance below ``limit``.

    ``capacity``: the pairs expected; the call is repeated with room for all if there are more.
    """
    floats = [np.ascontiguousarray(a, dtype=np.float64) for a in (lattice, inv, cart, centres, low, high)]
    bounds = np.array([[r.start, r.stop] for r in ranges], dtype=np.int64)
    lattice, inv, cart, centres, low, high = (a.ctypes.data for a in floats)
    n_atoms, n_centres = len(floats[2]), len(floats[3])
    while True:
        indices, offsets, squared = np.empty((2, capacity), np.int64), np.empty((capacity, 3), np.int64), \
            np.empty(capacity, np.float64)
        found = lib.CrystalpropSpheres(lattice, inv, cart, n_atoms, centres, n_centres, bounds.ctypes.data, low, high,
                                       limit, capacity, indices[0].ctypes.data, indices[1].ctypes.data,
                                       offsets.ctypes.data, squared.ctypes.data)
        if found <= capacity:
            return indices[0, :found], indices[1, :found], offsets[:found], squared[:found]
        capacity = int(found)


def kth_nearest(lib: ctypes.CDLL, centres: np.ndarray, distances: np.ndarray, n_atoms: int,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per atom: the pairs with it as centre, and the k-th smallest of their distances (inf where fewer)."""
    centres = np.ascontiguousarray(centres, dtype=np.int64)
    distances = np.ascontiguousarray(distances, dtype=np.float64)
    counts, kth = np.empty(n_atoms, np.int64), np.empty(n_atoms, np.float64)
    lib.CrystalpropKthNearest(centres.ctypes.data, distances.ctypes.data, len(centres), n_atoms, k,
                              counts.ctypes.data, kth.ctypes.data)
    return counts, kth
