"""The fused CPU kernels' shared library (``kernels/fused_ops.cc``): built and loaded without MindSpore.

MindSpore runs its kernels as "aot" custom operators (:mod:`crystalprop.model.fused`); the numpy
inference engine (:mod:`crystalprop.model.numpy_stacked`) calls the same functions through ctypes,
with the argument layout MindSpore uses: arrays of data pointers, dimension counts and shapes,
inputs first and then outputs.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from crystalprop.utils.native import build

SOURCE = Path(__file__).resolve().parent / "kernels" / "fused_ops.cc"
# -ffast-math lets the row sums and exp vectorise (1.8x); -march=native uses this CPU's vector
# width (another 1.5x), so the build is keyed on the CPU's feature flags as well.
FLAGS = ["-O3", "-ffast-math", "-march=native", "-std=c++17", "-fPIC", "-pthread"]
# Linked in a second step without -ffast-math: given at link time, GCC (12 at least) adds
# crtfastmath.o, whose constructor turns on flush-to-zero and denormals-are-zero for the whole
# process when the library loads, changing numpy's and MindSpore's results everywhere else.
LINK_FLAGS = ["-shared", "-pthread"]

_loaded: dict[str, ctypes.CDLL | None] = {}


def wanted() -> bool:
    """Whether the fused kernels may be used (``CRYSTALPROP_FUSED_KERNELS=0`` turns them off)."""
    return os.environ.get("CRYSTALPROP_FUSED_KERNELS", "1") != "0"


def compiled() -> Path | None:
    """Build the kernel library (once per source, flags and machine); None where impossible."""
    return build(SOURCE, FLAGS, LINK_FLAGS)


def loaded() -> ctypes.CDLL | None:
    """The library opened for direct calls, or None where the kernels are off or cannot be built."""
    if "library" not in _loaded:
        path = compiled() if wanted() else None
        _loaded["library"] = None if path is None else ctypes.CDLL(str(path))
    return _loaded["library"]


def set_threads(library: ctypes.CDLL, threads: int) -> None:
    """Threads the library's kernels may use (a setting of the library, shared by every caller)."""
    library.CrystalpropSetThreads(max(1, int(threads)))


def call(library: ctypes.CDLL, name: str, inputs: Sequence[np.ndarray], output: np.ndarray) -> None:
    """Run kernel ``name`` on C-contiguous float32/int32 ``inputs`` into ``output``, as MindSpore calls it."""
    arrays = [*inputs, output]
    if not all(a.flags.c_contiguous for a in arrays):
        raise ValueError(f"{name}: arrays must be C-contiguous")
    count = len(arrays)
    shapes = [np.asarray(a.shape, dtype=np.int64) for a in arrays]
    params = (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays])
    ndims = (ctypes.c_int * count)(*[a.ndim for a in arrays])
    shape_ptrs = (ctypes.POINTER(ctypes.c_int64) * count)(
        *[s.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)) for s in shapes])
    status = getattr(library, name)(ctypes.c_int(count), params, ndims, shape_ptrs, None, None, None)
    if status != 0:
        raise ValueError(f"{name}: the kernel refused these shapes ({', '.join(str(a.shape) for a in arrays)})")
