"""Several Matformer members of one architecture evaluated as one network (inference only).

An ensemble's members, and the members of every model of the same configuration, differ only
in their weights. Stacked, every operation runs once for all K members: parameters gain a
leading member axis, activations are member-major (K, N, C) and become (K*N, C) rows for the
fused kernels, whose stacked affine parameters give each block of rows its own member's values.
The per-edge work is that of K separate passes; what goes is the per-member overhead of the
many small per-atom operations, and some of those operations: biases ride in the matrix
products (a column of ones), and the weights are folded as :mod:`crystalprop.model.folded`
describes. For the shipped models (10 members) this is 1.8-1.9 times the
throughput of one pass per member (``benchmarks/stacked_members.py``). Where the fused kernels
are built, each layer's per-edge work (gate, message product, LayerNorm, scatter) is one kernel,
:func:`crystalprop.model.fused.message_pass_op`, whose gated rows and messages never leave a
small tile of rows (``benchmarks/stacked_profile.py`` times both paths). Outputs equal those of
:class:`crystalprop.model.matformer.Matformer` per member to float32 rounding.

Notation as in :mod:`crystalprop.model.layers`: N atoms, E edges, D distinct bond lengths,
B crystals, H heads, C features per head, K members.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from crystalprop.utils.backend import mindspore_module
from crystalprop.graph.batch import BatchLimits
from crystalprop.graph.settings import STACKED_MEMORY_FACTOR
from crystalprop.model.config import LAYER_NORM_EPS, ModelConfig
from crystalprop.model.folded import FoldedLayer, FoldedMatformer, Map, stack_members
from crystalprop.model.fused import attention_gate_op, message_pass_op, row_norm_op
from crystalprop.model.layers import HeadRows, RBFExpansion, WeightedScatterRows, kernel_or_none
from crystalprop.model.matformer import input_signature

ms = mindspore_module()
nn, ops = ms.nn, ms.ops


def _param(value: np.ndarray, name: str):
    """A fixed (untrainable) float32 parameter."""
    return ms.Parameter(ms.Tensor(np.ascontiguousarray(value, dtype=np.float32)), name=name, requires_grad=False)


class _Affine(nn.Cell):
    """x (K, M, in + 1), whose last column is ones -> x @ [w; b] (K, M, out), member k with its
    own w (K, in, out) and b (K, 1, out). The bias rides in the product: MindSpore's CPU Add
    broadcasting (K, 1, out) over (K, M, out) took a third of the stacked network's time."""

    def __init__(self, layer: Map, name: str) -> None:
        super().__init__()
        w, b = layer
        self.weight = _param(np.concatenate([w, b], axis=1), f"{name}.weight")
        self.bmm = ops.BatchMatMul()

    def construct(self, x):
        return self.bmm(x, self.weight)


class _Linear(nn.Cell):
    """x (K, M, in) -> x @ w (K, M, out), each member with its own w (K, in, out); no bias."""

    def __init__(self, w: np.ndarray, name: str) -> None:
        super().__init__()
        self.weight = _param(w, f"{name}.weight")
        self.bmm = ops.BatchMatMul()

    def construct(self, x):
        return self.bmm(x, self.weight)


def _with_ones(x, ones):
    """(K, M, F) -> (K, M, F + 1) with ``ones`` (K, M, 1) as the last column, for :class:`_Affine`."""
    return ops.concat((x, ones), axis=-1)


class _StackedLayerNorm(nn.Cell):
    """LayerNorm parameters gamma/beta (K, F) of K members, kept as (K*F,), their fused kernel from
    ``factory``, and the MindSpore-ops fallback :meth:`normalise`."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray, name: str, factory, fused: bool | None) -> None:
        super().__init__()
        self.members, width = gamma.shape
        self.gamma = _param(gamma.reshape(-1), f"{name}.gamma")
        self.beta = _param(beta.reshape(-1), f"{name}.beta")
        self.kernel = kernel_or_none(factory, fused)
        self.layer_norm = ops.LayerNorm(-1, -1, epsilon=LAYER_NORM_EPS)
        self.ones, self.zeros = ms.Tensor(np.ones(width, np.float32)), ms.Tensor(np.zeros(width, np.float32))

    def _per_member(self, vector):
        """(K*F,) -> (K, 1, F), to broadcast over a member's rows."""
        return vector.reshape(self.members, 1, -1)

    def normalise(self, z):
        """z (K, M, F) -> (K*M, F): LayerNorm without affine, then each member's gamma and beta."""
        n = self.layer_norm(z, self.ones, self.zeros)[0]
        return (n * self._per_member(self.gamma) + self._per_member(self.beta)).reshape(-1, z.shape[2])


class StackedRowNorm(_StackedLayerNorm):
    """RowNorm of K members: x (K*M, F) member-major rows, bias/gamma/beta (K*F,) -> (K*M, F),
    LN(x + bias) with member k's parameters on rows k*M .. (k+1)*M - 1."""

    def __init__(self, bias: np.ndarray, gamma: np.ndarray, beta: np.ndarray, fused: bool | None = None) -> None:
        super().__init__(gamma, beta, "msg_norm", row_norm_op, fused)
        self.bias = _param(bias.reshape(-1), "msg_norm.bias")

    def construct(self, x):
        if self.kernel is not None:
            return self.kernel(x, self.bias, self.gamma, self.beta)
        return self.normalise(x.reshape(self.members, -1, x.shape[1]) + self._per_member(self.bias))


class StackedGate(_StackedLayerNorm):
    """:class:`crystalprop.model.layers.AttentionGate` of K members: tables and row indices as
    there, with the rows (K*M,) member-major and gamma/beta (K*3C,) -> (K*M, 3C)."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray, fused: bool | None = None) -> None:
        super().__init__(gamma, beta, "layer_norm", attention_gate_op, fused)

    def construct(self, q, k, e, u_i, u_j, u_e, r_i, r_j, r_e):
        if self.kernel is not None:
            return self.kernel(q, k, e, self.gamma, self.beta, u_i, u_j, u_e, r_i, r_j, r_e)
        q_i = ops.gather(q, r_i, 0)  # (K*M, C)
        logits = ops.concat((q_i * ops.gather(k, r_i, 0), q_i * ops.gather(k, r_j, 0),
                             q_i * ops.gather(e, r_e, 0)), axis=-1)  # (K*M, 3C)
        u = ops.addn((ops.gather(u_i, r_i, 0), ops.gather(u_j, r_j, 0), ops.gather(u_e, r_e, 0)))
        return u * ops.sigmoid(self.normalise(logits.reshape(self.members, -1, logits.shape[1])))


class StackedConv(nn.Cell):
    """One :class:`crystalprop.model.layers.MatformerConv` layer of K members.

    x: (K, N, C + 1) and edges: (K, D, C + 1), the bond-length features before the edge
    embedding's last map (edge_out), each with a last column of ones; edge_weight, dst: (K*E,)
    tiled and offset per member; head_rows: the (K*E*H,) table rows of (dst, src, distance);
    ones: (K, N, 1) -> (K, N, C). The value map is folded into the update's per-atom terms (both
    linear), and edge_out into this layer's edge map.
    """

    def __init__(self, folded: FoldedLayer, config: ModelConfig, fused: bool | None = None) -> None:
        super().__init__()
        self.channels, self.heads, self.members = config.features, config.heads, folded.msg.shape[0]
        self.lin_query = _Affine(folded.query, "lin_query")
        self.lin_key = _Affine(folded.key, "lin_key")
        self.upd_i = _Affine(folded.upd_i, "upd_i")  # (K, N, H*3C)
        self.upd_j = _Affine(folded.upd_j, "upd_j")
        self.upd_e = _Linear(folded.upd_e, "upd_e")
        self.lin_edge = _Affine(folded.edge, "lin_edge")  # edge_out, then lin_edge
        self.msg_layer = _Linear(folded.msg, "msg_layer")
        self.msg_norm = StackedRowNorm(folded.msg_bias, folded.msg_gamma, folded.msg_beta, fused)
        self.gate = StackedGate(folded.gate_gamma, folded.gate_beta, fused)
        self.lin_concate = _Affine(folded.concate, "lin_concate")  # with inference BatchNorm
        self.lin_skip = _Affine(folded.skip, "lin_skip")
        self.scatter = WeightedScatterRows(fused)
        self.message = kernel_or_none(message_pass_op, fused)

    def message_pass(self, q, key, e, upd_i, upd_j, upd_e, edge_weight, head_rows):
        """The fused message pass (:func:`crystalprop.model.fused.message_pass_op`): q, key (K, N, H*C),
        e (K, D*H, C), the update tables (K*N*H or K*D*H, 3C), edge_weight (E,) and head_rows of
        one member (E*H,) -> the messages summed per atom (K*N, H*C)."""
        c = self.channels
        rows_i, rows_j, rows_e = head_rows
        summed = self.message(q.reshape(-1, c), key.reshape(-1, c), e.reshape(-1, c), self.gate.gamma,
                              self.gate.beta, upd_i, upd_j, upd_e, self.msg_layer.weight.reshape(-1, c),
                              self.msg_norm.bias, self.msg_norm.gamma, self.msg_norm.beta, edge_weight,
                              rows_i, rows_j, rows_e)  # (K*N*H, C)
        return summed.reshape(-1, self.heads * c)

    def construct(self, x, edges, edge_weight, dst, head_rows, ones):
        c, k = self.channels, self.members
        q = self.lin_query(x)  # (K, N, H*C)
        key = self.lin_key(x)
        upd_i = self.upd_i(x).reshape(-1, 3 * c)  # (K*N*H, 3C)
        upd_j = self.upd_j(x).reshape(-1, 3 * c)
        e = self.lin_edge(edges).reshape(k, -1, c)  # (K, D*H, C)
        upd_e = self.upd_e(e).reshape(-1, 3 * c)  # (K*D*H, 3C)
        width = self.heads * c
        if self.message is not None:
            aggregated = self.message_pass(q, key, e, upd_i, upd_j, upd_e, edge_weight, head_rows)
        else:
            rows_i, rows_j, rows_e = head_rows
            gated = self.gate(q.reshape(-1, c), key.reshape(-1, c), e.reshape(-1, c), upd_i, upd_j, upd_e,
                              rows_i, rows_j, rows_e)  # (K*E*H, 3C)
            message = self.msg_norm(self.msg_layer(gated.reshape(k, -1, 3 * c)).reshape(-1, c))  # (K*E*H, C)
            aggregated = self.scatter(message.reshape(-1, width), edge_weight, dst, q.reshape(-1, width))
        concated = self.lin_concate(_with_ones(aggregated.reshape(k, -1, width), ones))  # (K, N, C)
        return ops.silu(concated) + self.lin_skip(x)


class StackedMatformer(nn.Cell):
    """K Matformer members of one configuration in one forward pass.

    ``members``: each member's parameters by Matformer's parameter names (the dicts of
    :func:`crystalprop.model.ensemble.member_params`, checked with :func:`crystalprop.model.folded.member_arrays`).
    Inputs are those of :meth:`Matformer.construct` (one graph batch shared by all members);
    output (K, B), member k's normalised predictions in row k. With ``readout``, the output is
    that and (K, B, F), each member's readout features silu(fc(pooled)) (F = fc_features), for
    :mod:`crystalprop.model.latent_sigma`.
    """

    def batch_limits(self, batch_size: int, batch_memory: int) -> BatchLimits:
        """Batches whose forward pass takes about ``batch_memory`` bytes: each member holds its own
        activations, and the stacked pass holds more of them per channel (``STACKED_MEMORY_FACTOR``)."""
        channels = self.config.features * self.members * STACKED_MEMORY_FACTOR
        return BatchLimits.for_model(batch_size, channels, self.config.heads, batch_memory)

    def __init__(self, config: ModelConfig, members: Sequence[Mapping[str, np.ndarray]], fused: bool | None = None,
                 readout: bool = False) -> None:
        super().__init__()
        folded = FoldedMatformer.fold(config, members)
        c, k = config.features, folded.members
        self.config, self.members, self.channels, self.readout = config, k, c, readout
        self.atom_weight, self.atom_bias = _param(folded.atom[0], "atom_weight"), _param(folded.atom[1], "atom_bias")
        self.rbf = RBFExpansion(0.0, config.rbf_max, config.rbf_bins)
        edge_w, edge_b = folded.edge_in
        self.edge_in_weight, self.edge_in_bias = _param(edge_w, "edge_in_weight"), _param(edge_b, "edge_in_bias")
        self.att_layers = nn.CellList([StackedConv(layer, config, fused) for layer in folded.layers])
        self.head_rows = HeadRows(config.heads)
        self.fused_message = all(layer.message is not None for layer in self.att_layers)
        self.fc, self.fc_out = _Affine(folded.fc, "fc"), _Affine(folded.fc_out, "fc_out")
        self.member_index = ms.Tensor(np.arange(k, dtype=np.int32).reshape(k, 1))  # (K, 1)
        self.matmul = ops.MatMul()

    def _member_major(self, x):
        """(M, K*C) with member-major columns -> (K, M, C)."""
        return x.reshape(-1, self.members, self.channels).transpose(1, 0, 2)

    def _offset(self, index, count):
        """(L,) indices into a table of ``count`` rows -> (K*L,) into K stacked tables."""
        offsets = self.member_index * ops.cast(ops.dyn_shape(count)[0], ms.int32)  # (K, 1)
        return (index.expand_dims(0) + offsets).reshape(-1)

    def construct(self, node_features, src, dst, distance_index, edge_weight, distances, node_graph, inverse_counts):
        k, c = self.members, self.channels
        x = self._member_major(ops.bias_add(self.matmul(node_features, self.atom_weight), self.atom_bias))  # (K, N, C)
        hidden = ops.softplus(ops.bias_add(self.matmul(self.rbf(distances), self.edge_in_weight), self.edge_in_bias))
        hidden = self._member_major(hidden)  # (K, D, C), before edge_out (folded into each layer)
        edges = _with_ones(hidden, ops.ones_like(hidden[:, :, :1]))
        if self.fused_message:  # one member's rows, (E*H,): the kernel offsets them per member
            dst_k, weight = dst, edge_weight
            head_rows = (self.head_rows(dst), self.head_rows(src), self.head_rows(distance_index))
        else:
            dst_k = self._offset(dst, node_graph)  # (K*E,)
            head_rows = (self.head_rows(dst_k), self.head_rows(self._offset(src, node_graph)),
                         self.head_rows(self._offset(distance_index, distances)))
            weight = ops.tile(edge_weight, (k,))  # (K*E,)
        ones = ops.ones_like(x[:, :, :1])  # (K, N, 1)
        for layer in self.att_layers:
            x = layer(_with_ones(x, ones), edges, weight, dst_k, head_rows, ones)
        counts = ops.tile(inverse_counts, (k, 1))  # (K*B, 1)
        zeros = counts * ops.zeros((1, c), x.dtype)
        pooled = ops.index_add(zeros, self._offset(node_graph, inverse_counts), x.reshape(-1, c), 0) * counts
        pooled = pooled.reshape(k, -1, c)  # (K, B, C)
        ones_b = ops.ones_like(pooled[:, :, :1])
        features = ops.silu(self.fc(_with_ones(pooled, ones_b)))  # (K, B, F)
        out = self.fc_out(_with_ones(features, ones_b)).squeeze(-1)  # (K, B)
        if self.readout:
            return out, features
        return out

    def declare_dynamic_inputs(self) -> None:
        """Compile once for any batch, as :meth:`Matformer.declare_dynamic_inputs`."""
        self.set_inputs(*input_signature(self.config.atom_inputs))


def stack_checkpoints(config: ModelConfig, checkpoints: Sequence[tuple[Sequence[Mapping[str, Any]], Any]],
                      fused: bool | None = None, readout: bool = False) -> tuple[StackedMatformer, list[list[int]]]:
    """One stacked network (inference mode, dynamic inputs) over every distinct member of ``checkpoints``,
    (members' parameter dicts, path) pairs of configuration ``config``, and the rows of its (K, B) output
    that belong to each checkpoint's members (:func:`crystalprop.model.folded.stack_members`);
    ``readout``: also output the readout features."""
    arrays, rows = stack_members(config, checkpoints)
    return stacked_network(config, arrays, fused, readout), rows


def stacked_network(config: ModelConfig, arrays: Sequence[Mapping[str, np.ndarray]], fused: bool | None = None,
                    readout: bool = False) -> StackedMatformer:
    """The stacked network of checked members ``arrays`` in inference mode, compiled once for any batch."""
    net = StackedMatformer(config, arrays, fused, readout)
    net.declare_dynamic_inputs()
    net.set_train(False)
    return net
