"""The fused CPU kernels against MindSpore's own ops: values and gradients, one and many threads."""

from __future__ import annotations

import numpy as np
import pytest

from crystalprop.utils import backend

backend.set_device("CPU")
ms = backend.mindspore_module()

from crystalprop.model import fused  # noqa: E402
from crystalprop.model.layers import AttentionGate, MatformerConv, RowNorm, WeightedScatterRows  # noqa: E402

pytestmark = pytest.mark.skipif(fused.library() is None, reason="no C++ compiler to build the fused kernels")

ROWS = (3, 5000)  # one thread, then rows split between threads


class _NormLoss(ms.nn.Cell):
    """sum(norm(x, bias) ⊙ w): its gradients are norm's backward pass for the upstream gradient w."""

    def __init__(self, layer: RowNorm, bias: ms.Parameter) -> None:
        super().__init__()
        self.layer = layer
        self.bias = bias

    def construct(self, x, w):
        return (self.layer(x, self.bias) * w).sum()


class _GateLoss(ms.nn.Cell):
    def __init__(self, layer: AttentionGate) -> None:
        super().__init__()
        self.layer = layer

    def construct(self, q, k, e, u_i, u_j, u_e, r_i, r_j, r_e, w):
        return (self.layer(q, k, e, u_i, u_j, u_e, r_i, r_j, r_e) * w).sum()


class _ScatterLoss(ms.nn.Cell):
    def __init__(self, layer: WeightedScatterRows) -> None:
        super().__init__()
        self.layer = layer

    def construct(self, values, weight, index, like, w):
        return (self.layer(values * values, weight, index, like) * w).sum()


class _BatchNormLoss(ms.nn.Cell):
    """sum(BN(x) ⊙ w) through a layer's training-mode BatchNorm: the fused kernel, or nn.BatchNorm1d."""

    def __init__(self, use_kernel: bool) -> None:
        super().__init__()
        self.layer = MatformerConv(24, 1)
        if not use_kernel:
            self.layer.bn_kernel = None
        self.set_train(True)

    def construct(self, x, w):
        return (self.layer._batch_norm(x) * w).sum()


class _Grad(ms.nn.Cell):
    """Value and gradients of a loss cell with respect to its inputs and parameters."""

    def __init__(self, loss: ms.nn.Cell) -> None:
        super().__init__()
        self.loss = loss
        self.params = ms.ParameterTuple(loss.trainable_params())
        self.grad = ms.ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, *inputs):
        return self.loss(*inputs), self.grad(self.loss, self.params)(*inputs)


def _randomise(layer: ms.nn.LayerNorm, rng: np.random.Generator) -> None:
    width = layer.gamma.shape[0]
    layer.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, width).astype(np.float32)))
    layer.beta.set_data(ms.Tensor(rng.uniform(-0.3, 0.3, width).astype(np.float32)))


def _run(loss: ms.nn.Cell, make_inputs) -> list[np.ndarray]:
    """Loss value, input gradients and parameter gradients for random inputs of each row count.

    ``make_inputs(rows, rng)`` gives the inputs as numpy arrays; every axis but the last is
    declared dynamic, so one graph serves all row counts, as in the model.
    """
    grad = _Grad(loss)
    rng = np.random.default_rng(1)
    example = make_inputs(ROWS[0], rng)
    grad.set_inputs(*[ms.Tensor(shape=[None] * (a.ndim - 1) + [a.shape[-1]] if a.ndim > 1 else [None],
                                dtype=ms.int32 if a.dtype == np.int32 else ms.float32) for a in example])
    results = []
    for rows in ROWS:
        value, (input_grads, param_grads) = grad(*[ms.Tensor(a) for a in make_inputs(rows, rng)])
        results += [value.asnumpy()] + [g.asnumpy() for g in (*input_grads, *param_grads)]
    return results


def _floats(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.normal(size=shape) * 3 + 1).astype(np.float32)


def _assert_same(reference: list[np.ndarray], got: list[np.ndarray]) -> None:
    assert len(reference) == len(got)
    for ref, value in zip(reference, got):
        np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_row_norm_kernel_matches_mindspore_layernorm():
    width = 48
    runs = []
    for use_kernel in (False, True):
        layer = RowNorm(width, fused=use_kernel)
        _randomise(layer, np.random.default_rng(0))
        bias = ms.Parameter(ms.Tensor(np.linspace(-1, 2, width, dtype=np.float32)), name="bias")
        runs.append(_run(_NormLoss(layer, bias), lambda rows, rng: [_floats(rng, rows, width), _floats(rng, rows, width)]))
    _assert_same(*runs)


def test_attention_gate_kernel_matches_gather_concat_layernorm_sigmoid_product():
    c, atoms, lengths = 16, 40, 7

    def inputs(rows, rng):
        parts = [_floats(rng, atoms, c), _floats(rng, atoms, c), _floats(rng, lengths, c)]  # q, k, e
        tables = [_floats(rng, atoms, 3 * c), _floats(rng, atoms, 3 * c), _floats(rng, lengths, 3 * c)]
        index = [rng.integers(0, n, rows).astype(np.int32) for n in (atoms, atoms, lengths)]
        return parts + tables + index + [_floats(rng, rows, 3 * c)]

    runs = []
    for use_kernel in (False, True):
        layer = AttentionGate(c, fused=use_kernel)
        _randomise(layer, np.random.default_rng(0))
        runs.append(_run(_GateLoss(layer), inputs))
    _assert_same(*runs)


def test_weighted_scatter_kernel_matches_index_add():
    width, targets = 40, 30

    def inputs(rows, rng):
        index = rng.integers(0, targets, rows).astype(np.int32)
        weight = rng.integers(1, 4, rows).astype(np.float32)  # edge multiplicities
        return [_floats(rng, rows, width), weight, index, _floats(rng, targets, width), _floats(rng, targets, width)]

    runs = [_run(_ScatterLoss(WeightedScatterRows(fused=use_kernel)), inputs) for use_kernel in (False, True)]
    _assert_same(*runs)


def test_batch_norm_kernel_matches_mindspore_batchnorm_and_its_moving_statistics():
    width = 24
    runs, moving = [], []
    for use_kernel in (False, True):
        loss = _BatchNormLoss(use_kernel)
        _randomise(loss.layer.bn, np.random.default_rng(0))
        runs.append(_run(loss, lambda rows, rng: [_floats(rng, rows, width), _floats(rng, rows, width)]))
        moving.append([loss.layer.bn.moving_mean.asnumpy(), loss.layer.bn.moving_variance.asnumpy()])
    assert loss.layer.bn_kernel is not None
    _assert_same(*runs)
    _assert_same(*moving)


@pytest.mark.parametrize("rows", ROWS)
def test_scatter_kernel_sums_rows_into_their_targets(rows):
    rng = np.random.default_rng(rows)
    values, index = _floats(rng, rows, 40), rng.integers(0, 30, rows).astype(np.int32)
    expected = np.zeros((30, 40), np.float32)
    np.add.at(expected, index, values)
    got = fused.scatter_rows_op()(ms.Tensor(values), ms.Tensor(index), ms.Tensor(np.zeros((30, 40), np.float32)))
    np.testing.assert_allclose(got.asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_kernels_are_used_on_cpu_unless_turned_off():
    assert RowNorm(8).kernel is not None and AttentionGate(8).kernel is not None
    assert RowNorm(8, fused=False).kernel is None and AttentionGate(8, fused=False).kernel is None
