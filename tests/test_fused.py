"""The fused CPU LayerNorm(+sigmoid) kernel against MindSpore's own ops: values and gradients."""

from __future__ import annotations

import numpy as np
import pytest

from crystalprop import backend

backend.set_device("CPU")
ms = backend.mindspore_module()

from crystalprop.model import fused  # noqa: E402
from crystalprop.model.layers import RowNorm  # noqa: E402

pytestmark = pytest.mark.skipif(fused.library() is None, reason="no C++ compiler to build the fused kernel")


class _Loss(ms.nn.Cell):
    """sum(norm(x) * weights): its gradient is the backward pass of norm for upstream `weights`."""

    def __init__(self, norm: RowNorm) -> None:
        super().__init__()
        self.norm = norm

    def construct(self, x, weights):
        return (self.norm(x) * weights).sum()


class _Grad(ms.nn.Cell):
    def __init__(self, net: ms.nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ms.ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x, weights):
        return self.grad(self.net, self.params)(x, weights)


def _norm(width: int, sigmoid: bool, use_kernel: bool, rng: np.random.Generator) -> RowNorm:
    norm = RowNorm(width, sigmoid=sigmoid, fused=use_kernel)
    norm.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, width).astype(np.float32)))
    norm.beta.set_data(ms.Tensor(rng.uniform(-0.3, 0.3, width).astype(np.float32)))
    return norm


@pytest.mark.parametrize("sigmoid", [False, True])
def test_fused_row_norm_matches_mindspore_in_value_and_gradient(sigmoid):
    width = 48
    results = {}
    for use_kernel in (False, True):
        rng = np.random.default_rng(0)
        grad = _Grad(_Loss(_norm(width, sigmoid, use_kernel, rng)))
        dynamic = ms.Tensor(shape=[None, width], dtype=ms.float32)
        grad.set_inputs(dynamic, dynamic)  # one graph for any number of rows, as in the model
        for rows in (3, 5000):  # one thread, then rows split between threads
            x = (rng.normal(size=(rows, width)) * 3 + 1).astype(np.float32)
            weights = rng.normal(size=(rows, width)).astype(np.float32)
            value = grad.net.norm(ms.Tensor(x)).asnumpy()
            (dx, _), (dgamma, dbeta) = grad(ms.Tensor(x), ms.Tensor(weights))
            results[use_kernel, rows] = [value, dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()]
    for rows in (3, 5000):
        for ref, got in zip(results[False, rows], results[True, rows]):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_fused_kernel_is_used_on_cpu_and_can_be_turned_off():
    assert RowNorm(8).kernel is not None
    assert RowNorm(8, fused=False).kernel is None
