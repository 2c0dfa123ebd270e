"""The stacked Matformer's forward pass in numpy: inference without importing MindSpore.

Importing MindSpore takes 1.3-2 s of the 2-2.5 s that ``crystalprop predict one.cif`` takes, so a
prediction of a few structures spends most of its time before the network runs. This engine
evaluates the same folded weights (:mod:`crystalprop.model.folded`) as the MindSpore stacked
network, in float32, and gives the same outputs to float32 rounding: numpy's matrix products
for the per-atom maps, and for each layer's per-edge work the same fused message-pass kernel
(called through ctypes, :mod:`crystalprop.model.kernel_library`), or where that cannot be built,
numpy's gathers, which hold the (K, E*H, 3C) gate tensors in full.

Notation as in :mod:`crystalprop.model.layers`: N atoms, E edges, D distinct bond lengths,
B crystals, H heads, C features per head, K members; F readout features.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from crystalprop.graph.batch import BatchLimits
from crystalprop.graph.settings import STACKED_MEMORY_FACTOR
from crystalprop.model.config import LAYER_NORM_EPS, ModelConfig
from crystalprop.model import kernel_library
from crystalprop.model.folded import FoldedLayer, FoldedMatformer, Map


def _f32(layer: Map) -> Map:
    """A stacked map in float32."""
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in layer)  # type: ignore[return-value]


def _affine(x: np.ndarray, layer: Map) -> np.ndarray:
    """x (K, M, in) -> (K, M, out), each member with its own map."""
    w, b = layer
    return np.matmul(x, w) + b


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis of x (K, M, F), member k with gamma, beta (K, 1, F)."""
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(variance + LAYER_NORM_EPS) * gamma + beta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warning for large |x|


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.float32(0.0), x)


def _head_rows(index: np.ndarray, heads: int) -> np.ndarray:
    """(E,) item indices -> (E*H,) indices of the (item, head) rows, as :class:`~crystalprop.model.layers.HeadRows`."""
    if heads == 1:
        return index
    return (index[:, None] * heads + np.arange(heads)).reshape(-1)


class _Layer:
    """One folded attention layer in float32 (see :class:`crystalprop.model.folded.FoldedLayer`);
    ``kernels``: the fused kernel library, or None for numpy's own operations."""

    def __init__(self, folded: FoldedLayer, config: ModelConfig, kernels) -> None:
        self.kernels = kernels
        self.channels, self.heads = config.features, config.heads
        self.query, self.key = _f32(folded.query), _f32(folded.key)
        self.upd_i, self.upd_j, self.edge = _f32(folded.upd_i), _f32(folded.upd_j), _f32(folded.edge)
        self.upd_e, self.msg = (np.ascontiguousarray(a, dtype=np.float32) for a in (folded.upd_e, folded.msg))
        self.msg_bias, self.msg_gamma, self.msg_beta, self.gate_gamma, self.gate_beta = (
            np.ascontiguousarray(a[:, None, :], dtype=np.float32)
            for a in (folded.msg_bias, folded.msg_gamma, folded.msg_beta, folded.gate_gamma, folded.gate_beta))
        self.concate, self.skip = _f32(folded.concate), _f32(folded.skip)
        # the kernel's stacked parameters: gamma, beta (K*3C,), w (K*3C, C), bias, norm gamma, norm beta (K*C,)
        self.kernel_params = (self.gate_gamma.reshape(-1), self.gate_beta.reshape(-1),
                              self.msg.reshape(-1, self.channels), self.msg_bias.reshape(-1),
                              self.msg_gamma.reshape(-1), self.msg_beta.reshape(-1))

    def __call__(self, x: np.ndarray, hidden: np.ndarray, edge_weight: np.ndarray, dst: np.ndarray,
                 rows: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """x (K, N, C), hidden (K, D, C) bond-length features, edge_weight, dst (E,), rows: the
        (E*H,) table rows of (dst, src, distance) -> (K, N, C)."""
        c, k, n = self.channels, x.shape[0], x.shape[1]
        q = _affine(x, self.query).reshape(k, -1, c)  # (K, N*H, C)
        key = _affine(x, self.key).reshape(k, -1, c)
        e = _affine(hidden, self.edge).reshape(k, -1, c)  # (K, D*H, C)
        upd_i = _affine(x, self.upd_i).reshape(k, -1, 3 * c)  # (K, N*H, 3C)
        upd_j = _affine(x, self.upd_j).reshape(k, -1, 3 * c)
        upd_e = np.matmul(e, self.upd_e)  # (K, D*H, 3C)
        if self.kernels is not None and len(edge_weight):
            aggregated = self._fused_messages(q, key, e, upd_i, upd_j, upd_e, edge_weight, rows, n)
        else:
            aggregated = self._messages(q, key, e, upd_i, upd_j, upd_e, edge_weight, dst, rows, n)
        concated = _affine(aggregated, self.concate)  # (K, N, C), with BatchNorm
        return _silu(concated) + _affine(x, self.skip)

    def _fused_messages(self, q, key, e, upd_i, upd_j, upd_e, edge_weight, rows, n) -> np.ndarray:
        """The messages summed per atom (K, N, H*C) by the fused kernel (as the MindSpore network's)."""
        k, c = q.shape[0], self.channels
        gamma, beta, w, bias, norm_gamma, norm_beta = self.kernel_params
        inputs = [a.reshape(-1, a.shape[-1]) for a in (q, key, e)]
        inputs += [gamma, beta] + [a.reshape(-1, 3 * c) for a in (upd_i, upd_j, upd_e)]
        inputs += [w, bias, norm_gamma, norm_beta, edge_weight, *rows]
        out = np.empty_like(inputs[0])  # (K*N*H, C)
        kernel_library.call(self.kernels, "MessagePass", inputs, out)
        return out.reshape(k, n, self.heads * c)

    def _messages(self, q, key, e, upd_i, upd_j, upd_e, edge_weight, dst, rows, n) -> np.ndarray:
        """The messages summed per atom (K, N, H*C) with numpy's operations."""
        c, k = self.channels, q.shape[0]
        rows_i, rows_j, rows_e = rows
        # the attention logits α = (q_i⊙k_i ‖ q_i⊙k_j ‖ q_i⊙e_ij), (K, E*H, 3C), gate the update
        q_i = q[:, rows_i]
        logits = np.concatenate((q_i * key[:, rows_i], q_i * key[:, rows_j], q_i * e[:, rows_e]), axis=-1)
        update = upd_i[:, rows_i] + upd_j[:, rows_j] + upd_e[:, rows_e]  # (K, E*H, 3C)
        gated = update * _sigmoid(_layer_norm(logits, self.gate_gamma, self.gate_beta))
        message = _layer_norm(np.matmul(gated, self.msg) + self.msg_bias, self.msg_gamma, self.msg_beta)
        # each edge's messages (all heads, all members) summed into its atom i, with its multiplicity
        width = self.heads * c
        weighted = message.reshape(k, -1, width).transpose(1, 0, 2) * edge_weight[:, None, None]  # (E, K, H*C)
        aggregated = np.zeros((n, k, width), np.float32)
        np.add.at(aggregated, dst, weighted)
        return aggregated.transpose(1, 0, 2)


class NumpyStackedMatformer:
    """K Matformer members of one configuration, as :class:`crystalprop.model.stacked.StackedMatformer`
    but in numpy: called with a graph batch's arrays (:meth:`crystalprop.graph.GraphBatch.arrays`),
    it returns the (K, B) normalised outputs and, with ``readout``, the (K, B, F) readout features."""

    def __init__(self, config: ModelConfig, members: Sequence[Mapping[str, np.ndarray]], readout: bool = False,
                 fused: bool | None = None, threads: int = 1) -> None:
        """``fused``: the fused message-pass kernel where it can be built (None), insisted on (True)
        or not used (False); ``threads``: for that kernel."""
        kernels = None if fused is False else kernel_library.loaded()
        if fused and kernels is None:
            raise RuntimeError("the fused CPU kernels are not available here (no C++ compiler, or turned off)")
        if kernels is not None:
            kernel_library.set_threads(kernels, threads)
        folded = FoldedMatformer.fold(config, members)
        self.config, self.members, self.readout = config, folded.members, readout
        self.atom = tuple(a.astype(np.float32) for a in folded.atom)
        self.edge_in = tuple(a.astype(np.float32) for a in folded.edge_in)
        self.layers = [_Layer(layer, config, kernels) for layer in folded.layers]
        self.fc, self.fc_out = _f32(folded.fc), _f32(folded.fc_out)
        self.centers, gamma = config.radial_basis()
        self.gamma = np.float32(gamma)

    def batch_limits(self, batch_size: int, batch_memory: int) -> BatchLimits:
        """As :meth:`crystalprop.model.stacked.StackedMatformer.batch_limits`."""
        channels = self.config.features * self.members * STACKED_MEMORY_FACTOR
        return BatchLimits.for_model(batch_size, channels, self.config.heads, batch_memory)

    def _member_major(self, x: np.ndarray) -> np.ndarray:
        """(M, K*C) with member-major columns -> (K, M, C)."""
        return x.reshape(x.shape[0], self.members, -1).transpose(1, 0, 2)

    def __call__(self, node_features, src, dst, distance_index, edge_weight, distances, node_graph,
                 inverse_counts) -> tuple[np.ndarray, np.ndarray | None]:
        k, heads = self.members, self.config.heads
        x = self._member_major(node_features @ self.atom[0] + self.atom[1])  # (K, N, C)
        diff = distances[:, None] - self.centers  # radial basis, (D, bins)
        basis = np.exp(-self.gamma * diff * diff)
        hidden = self._member_major(_softplus(basis @ self.edge_in[0] + self.edge_in[1]))  # (K, D, C)
        rows = tuple(np.ascontiguousarray(_head_rows(index, heads), dtype=np.int32) for index in (dst, src, distance_index))
        weight = edge_weight.astype(np.float32)
        for layer in self.layers:
            x = layer(x, hidden, weight, dst, rows)
        pooled = np.zeros((len(inverse_counts), k, x.shape[2]), np.float32)
        np.add.at(pooled, node_graph, x.transpose(1, 0, 2))
        pooled = pooled.transpose(1, 0, 2) * inverse_counts  # (K, B, C), the mean over atoms
        features = _silu(_affine(pooled, self.fc))  # (K, B, F)
        out = _affine(features, self.fc_out)[:, :, 0]  # (K, B)
        return out, (features if self.readout else None)
