"""The fused message pass of K stacked members against the separate kernels it replaces (gate,
message product, RowNorm, weighted scatter), with one thread and several."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from crystalprop.utils import backend

backend.set_device("CPU")
ms = backend.mindspore_module()

from crystalprop.model import fused  # noqa: E402

pytestmark = pytest.mark.skipif(fused.library() is None, reason="no C++ compiler to build the fused kernels")

# (members, heads, features): 4 vectors of columns, 1 vector and leftover columns, more members than threads
SHAPES = [(1, 1, 64), (3, 2, 24), (14, 1, 64), (2, 1, 5)]


def _threads(count: int) -> None:
    ctypes.CDLL(str(fused.library())).CrystalpropSetThreads(count)


def _inputs(members: int, heads: int, c: int, seed: int) -> dict[str, np.ndarray]:
    """Random tables and parameters of ``members`` members over atoms, bond lengths and edges."""
    rng = np.random.default_rng(seed)
    atoms, lengths, edges = 23, 9, 150
    f = lambda *shape: rng.normal(0.0, 1.0, shape).astype(np.float32)  # noqa: E731
    dst, src = rng.integers(0, atoms, edges), rng.integers(0, atoms, edges)
    length = rng.integers(0, lengths, edges)
    head = np.arange(heads)
    rows = lambda index: (index[:, None] * heads + head).reshape(-1).astype(np.int32)  # noqa: E731
    return {"q": f(members * atoms * heads, c), "k": f(members * atoms * heads, c),
            "e": f(members * lengths * heads, c), "gamma": f(members * 3 * c), "beta": f(members * 3 * c),
            "ui": f(members * atoms * heads, 3 * c), "uj": f(members * atoms * heads, 3 * c),
            "ue": f(members * lengths * heads, 3 * c), "w": f(members * 3 * c, c) / np.sqrt(3 * c),
            "bias": f(members * c), "norm_gamma": f(members * c), "norm_beta": f(members * c),
            "weight": rng.integers(1, 4, edges).astype(np.float32),
            "ri": rows(dst), "rj": rows(src), "re": rows(length)}


def _separate_kernels(a: dict[str, np.ndarray], members: int) -> np.ndarray:
    """The unfused path of the stacked layer: gate, product, RowNorm and scatter, rows tiled per member."""
    t = ms.Tensor
    c = a["q"].shape[1]
    atom_rows, length_rows = a["q"].shape[0] // members, a["e"].shape[0] // members
    tiled = lambda index, count: np.concatenate([index + k * count for k in range(members)]).astype(np.int32)  # noqa: E731
    gated = fused.attention_gate_op()(t(a["q"]), t(a["k"]), t(a["e"]), t(a["gamma"]), t(a["beta"]), t(a["ui"]),
                                      t(a["uj"]), t(a["ue"]), t(tiled(a["ri"], atom_rows)),
                                      t(tiled(a["rj"], atom_rows)), t(tiled(a["re"], length_rows)))
    product = ms.ops.BatchMatMul()(gated.reshape(members, -1, 3 * c), t(a["w"].reshape(members, 3 * c, c)))
    message = fused.row_norm_op()(product.reshape(-1, c), t(a["bias"]), t(a["norm_gamma"]), t(a["norm_beta"]))
    heads = a["ri"].shape[0] // a["weight"].shape[0]
    weight = np.tile(np.repeat(a["weight"], heads), members)
    return fused.weighted_scatter_rows_op()(message, t(weight), t(tiled(a["ri"], atom_rows)), t(a["q"])).asnumpy()


def _fused(a: dict[str, np.ndarray]) -> np.ndarray:
    return fused.message_pass_op()(*(ms.Tensor(v) for v in a.values())).asnumpy()


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize(("members", "heads", "c"), SHAPES)
def test_message_pass_matches_the_separate_kernels(members, heads, c, threads):
    a = _inputs(members, heads, c, seed=members * 10 + c)
    reference = _separate_kernels(a, members)
    _threads(threads)
    try:
        got = _fused(a)
    finally:
        _threads(backend.cpu_threads())
    assert got.shape == reference.shape and np.abs(reference).max() > 1.0
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_message_pass_members_use_their_own_weights():
    """Swapping two members' parameters swaps their blocks of output rows, and nothing else."""
    a = _inputs(2, 1, 16, seed=1)
    b = dict(a)
    for name in ("q", "k", "e", "ui", "uj", "ue", "gamma", "beta", "w", "bias", "norm_gamma", "norm_beta"):
        b[name] = np.concatenate(np.split(a[name], 2)[::-1])
    got, swapped = _fused(a), _fused(b)
    half = got.shape[0] // 2
    np.testing.assert_array_equal(swapped[:half], got[half:])
    np.testing.assert_array_equal(swapped[half:], got[:half])


def test_message_pass_refuses_inconsistent_members():
    a = _inputs(2, 1, 16, seed=2)
    a["norm_gamma"] = a["norm_gamma"][:16]  # one member's, for two
    with pytest.raises(RuntimeError):
        _fused(a)
