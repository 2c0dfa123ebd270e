"""The fused kernel library: verified before use, part of the compile cache key, harmless to the process."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crystalprop.utils import backend

backend.set_device("CPU")

from crystalprop.model import compile_cache, fused, kernel_library  # noqa: E402

pytestmark = pytest.mark.skipif(fused.library() is None, reason="no C++ compiler to build the fused kernels")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_damaged_library_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALPROP_KERNELS", str(tmp_path))
    built = kernel_library.compiled()
    good = built.read_bytes()
    assert good[:4] == b"\x7fELF" and _sha256(built)[:16] in built.name
    built.write_bytes(good[: len(good) // 2])  # e.g. a disk filled up while another process copied it
    again = kernel_library.compiled()
    assert again.read_bytes()[:4] == b"\x7fELF" and len(again.read_bytes()) == len(good)
    assert _sha256(again)[:16] in again.name


def _cache_path(monkeypatch, library: Path | None) -> str:
    monkeypatch.setattr(fused, "_state", {"library": library})
    monkeypatch.setattr(fused, "library", lambda: library)
    compile_cache.enable_compile_cache("predict", "CPU", "{}")
    return os.environ["MS_COMPILER_CACHE_PATH"]


def test_compile_cache_is_keyed_on_the_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALPROP_COMPILE_CACHE", "1")
    monkeypatch.delenv("MS_COMPILER_CACHE_PATH", raising=False)
    monkeypatch.delenv("MS_COMPILER_CACHE_ENABLE", raising=False)
    library = fused.library()
    other = tmp_path / library.name  # same name, other content: a rebuild with another compiler
    other.write_bytes(library.read_bytes() + b"\0")
    with_kernels = _cache_path(monkeypatch, library)
    assert _cache_path(monkeypatch, library) == with_kernels
    assert _cache_path(monkeypatch, None) != with_kernels  # CRYSTALPROP_FUSED_KERNELS=0, or no compiler
    assert _cache_path(monkeypatch, other) not in (with_kernels, _cache_path(monkeypatch, None))


DENORMAL_CHECK = """
import numpy as np
from crystalprop.utils import backend
backend.set_device("CPU")
ms = backend.mindspore_module()
from crystalprop.model import fused
assert fused.library() is not None
values, index = np.ones((4, 16), np.float32), np.array([0, 1, 1, 2], np.int32)
fused.scatter_rows_op()(ms.Tensor(values), ms.Tensor(index), ms.Tensor(np.zeros((3, 16), np.float32))).asnumpy()
print(repr(float(np.float32(1e-38) * np.float32(1e-2))))
"""


def test_loading_the_kernels_keeps_denormals():
    """The library must not switch the process to flush-to-zero (crtfastmath.o did)."""
    done = subprocess.run([sys.executable, "-c", DENORMAL_CHECK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) == pytest.approx(1e-40, rel=1e-2, abs=0)  # 0.0 under flush-to-zero


def _gradients_with_threads(threads: int) -> list:
    """The parameter gradients of both LayerNorm kernels (dbias, dgamma, dbeta) and all of the gate's
    table gradients on 10,000 rows (5 blocks), on ``threads`` (one thread streams the rows through a
    buffer, more compute them all first)."""
    import ctypes

    import numpy as np

    ms = backend.mindspore_module()
    path = fused.library()
    norm_grad = fused._custom(path, "RowNormGrad", ["x", "bias", "gamma", "beta", "out", "dout"],
                              ["dx", "dbias", "dgamma", "dbeta"])
    gate_inputs = ["q", "k", "e", "gamma", "beta", "ui", "uj", "ue", "ri", "rj", "re", "out", "dout"]
    gate_grad = fused._custom(path, "AttentionGateGrad", gate_inputs,
                              ["dq", "dki", "dkj", "de", "dgamma", "dbeta", "dui", "duj", "due"],
                              int_inputs=("ri", "rj", "re"))
    rng = np.random.default_rng(3)
    rows, c = 10_000, 8

    def floats(*shape):
        return ms.Tensor(rng.normal(size=shape).astype(np.float32))

    def indices(top):
        return ms.Tensor(rng.integers(0, top, rows).astype(np.int32))

    norm_args = [floats(rows, 3 * c), floats(3 * c), floats(3 * c), floats(3 * c), floats(rows, 3 * c),
                 floats(rows, 3 * c)]
    gate_args = [floats(50, c), floats(50, c), floats(20, c), floats(3 * c), floats(3 * c), floats(50, 3 * c),
                 floats(50, 3 * c), floats(20, 3 * c), indices(50), indices(50), indices(20), floats(rows, 3 * c),
                 floats(rows, 3 * c)]
    ctypes.CDLL(str(path)).CrystalpropSetThreads(threads)
    try:
        norm = norm_grad(*norm_args)
        gate = gate_grad(*gate_args)
    finally:
        ctypes.CDLL(str(path)).CrystalpropSetThreads(backend.cpu_threads())
    return [t.asnumpy() for t in (*norm[1:], *gate)]


def test_kernel_gradients_do_not_depend_on_the_thread_count():
    one, three = _gradients_with_threads(1), _gradients_with_threads(3)
    for a, b in zip(one, three):
        assert a.tobytes() == b.tobytes()
