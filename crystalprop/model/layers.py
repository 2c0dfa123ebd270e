"""Matformer's building blocks in MindSpore: radial basis, the normalisations with their fused
CPU kernels, and the attention layer.

Notation: N atoms, E directed edges (messages flow from ``src`` = j to ``dst`` = i), D
distinct bond lengths in the batch, H heads, C features per head.
"""

from __future__ import annotations

import math

import numpy as np

from crystalprop.utils.backend import mindspore_module
from crystalprop.model.config import BATCH_NORM_EPS, LAYER_NORM_EPS, radial_basis
from crystalprop.model.fused import (
    attention_gate_op,
    batch_norm_op,
    row_norm_op,
    scale_rows,
    weighted_scatter_rows_op,
)

ms = mindspore_module()
nn, ops = ms.nn, ms.ops


class RBFExpansion(nn.Cell):
    """Gaussian radial basis: exp(-γ (d - μ_k)²), μ_k evenly spaced in [vmin, vmax], γ = 1/Δμ.

    d: (D,) -> (D, bins). γ is the inverse spacing (not its square), as in the original.
    """

    def __init__(self, vmin: float = 0.0, vmax: float = 8.0, bins: int = 128) -> None:
        super().__init__()
        centers, self.gamma = radial_basis(vmax, bins, vmin)
        self.centers = ms.Tensor(centers)

    def construct(self, distances):
        diff = distances.expand_dims(-1) - self.centers  # (D, bins)
        return ops.exp(-self.gamma * diff * diff)


def kernel_or_none(factory, fused: bool | None):
    """The fused CPU operator from ``factory`` unless ``fused`` is False; fused=True insists on it."""
    kernel = None if fused is False else factory()
    if fused and kernel is None:
        raise RuntimeError("the fused CPU kernels are not available here (no C++ compiler, or not on CPU)")
    return kernel


class RowNorm(nn.LayerNorm):
    """LayerNorm over the last axis of (M, F) rows plus a bias: x: (M, F), bias: (F,) -> LN(x + bias).

    Same parameters as ``nn.LayerNorm`` (checkpoints are interchangeable); the bias is that of
    the linear map before it, which MindSpore's CPU kernels would add in a pass of its own. On
    CPU it runs the fused kernel of :mod:`crystalprop.model.fused` where that could be built,
    else MindSpore's LayerNorm, whose CPU backward pass costs about six times its forward pass.
    """

    def __init__(self, width: int, fused: bool | None = None) -> None:
        super().__init__((width,), epsilon=LAYER_NORM_EPS)
        self.kernel = kernel_or_none(row_norm_op, fused)

    def construct(self, x, bias):
        if self.kernel is not None:
            return self.kernel(x, bias, self.gamma, self.beta)
        return self.layer_norm(x + bias, self.gamma, self.beta)[0]


class AttentionGate(nn.LayerNorm):
    """Matformer's gated update u ⊙ σ(LN_3C(q_i⊙k_i ‖ q_i⊙k_j ‖ q_i⊙e_r)), with LN's parameters
    as ``nn.LayerNorm``.

    q, k: (·, C) per (atom, head); e: (·, C) per (bond length, head); u_i, u_j, u_e: (·, 3C)
    update tables; r_i, r_j, r_e: (M,) row indices into them (atom i, atom j, bond length of
    each edge-head row) -> (M, 3C), u = u_i[r_i] + u_j[r_j] + u_e[r_e]. The fused CPU kernel
    builds the logits and u row by row and never stores them; elsewhere MindSpore's ops do the
    same maths.
    """

    def __init__(self, channels: int, fused: bool | None = None) -> None:
        super().__init__((3 * channels,), epsilon=LAYER_NORM_EPS)
        self.kernel = kernel_or_none(attention_gate_op, fused)

    def construct(self, q, k, e, u_i, u_j, u_e, r_i, r_j, r_e):
        if self.kernel is not None:
            return self.kernel(q, k, e, self.gamma, self.beta, u_i, u_j, u_e, r_i, r_j, r_e)
        q_i = ops.gather(q, r_i, 0)  # (M, C)
        logits = ops.concat((q_i * ops.gather(k, r_i, 0), q_i * ops.gather(k, r_j, 0),
                             q_i * ops.gather(e, r_e, 0)), axis=-1)  # (M, 3C)
        u = ops.addn((ops.gather(u_i, r_i, 0), ops.gather(u_j, r_j, 0), ops.gather(u_e, r_e, 0)))  # (M, 3C)
        return u * ops.sigmoid(self.layer_norm(logits, self.gamma, self.beta)[0])


class WeightedScatterRows(nn.Cell):
    """Weighted row scatter-add: values (M, W), weight (M,), index (M,), like (T, W) -> (T, W)
    zeros plus each weight[m] * values[m] added to row index[m]; weight carries no gradient.
    The fused CPU kernel where available (the scaled rows are never stored), else IndexAdd.
    """

    def __init__(self, fused: bool | None = None) -> None:
        super().__init__()
        self.kernel = kernel_or_none(weighted_scatter_rows_op, fused)

    def construct(self, values, weight, index, like):
        weight = ops.stop_gradient(weight)
        if self.kernel is not None:
            return self.kernel(values, weight, index, like)
        return ops.index_add(ops.zeros_like(like), index, scale_rows(values, weight), 0)


class HeadRows(nn.Cell):
    """(E,) item indices -> (E*H,) indices of the (item, head) rows: row e*H + h is item*H + h.

    Computed once per forward pass and shared by all layers (MindSpore's CPU integer kernels
    take milliseconds even for these small arrays).
    """

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.offsets = ms.Tensor(np.arange(heads, dtype=np.int32)).expand_dims(0)  # (1, H)

    def construct(self, index):
        if self.heads == 1:
            return index
        return (index.expand_dims(-1) * self.heads + self.offsets).reshape(-1)


class MatformerConv(nn.Cell):
    """One Matformer attention layer, computed with less work but the same mathematics.

    The paper's message on edge j -> i, per head h:
        α = (q_i ‖ q_i ‖ q_i) ⊙ (k_i ‖ k_j ‖ e_ij) / √(3C)
        m = LN_C(W_msg · ((W_upd (v_i ‖ v_j ‖ e_ij) + b) ⊙ σ(LN_3C(α))) + b_msg)
        x_i' = SiLU(BN(W_cat (‖_h Σ_j m))) + W_skip x_i
    with e_ij = W_edge · edge_embedding(|r_ij|). Because W_upd (v_i ‖ v_j ‖ e) =
    W_a v_i + W_b v_j + W_c e, the node terms are computed once per atom and gathered, and
    the edge terms once per distinct distance; only W_msg runs once per edge and head.
    """

    def __init__(self, channels: int, heads: int, fused: bool | None = None) -> None:
        super().__init__()
        c, h = channels, heads
        self.channels, self.heads = c, h
        self.lin_query = nn.Dense(c, h * c)
        self.lin_key = nn.Dense(c, h * c)
        self.lin_value = nn.Dense(c, h * c)
        self.lin_edge = nn.Dense(c, h * c, has_bias=False)
        self.lin_msg_update = nn.Dense(3 * c, 3 * c)
        self.msg_layer = nn.Dense(3 * c, c)
        self.msg_norm = RowNorm(c, fused)
        self.layer_norm = AttentionGate(c, fused)  # named for its LayerNorm parameters
        self.lin_concate = nn.Dense(h * c, c)
        self.bn = nn.BatchNorm1d(c, momentum=0.9, eps=BATCH_NORM_EPS)
        self.all_reduce = None  # set by sync_batch_statistics() for data-parallel training
        self.bn_kernel = kernel_or_none(batch_norm_op, fused)
        self.lin_skip = nn.Dense(c, c)
        self.scale = 1.0 / math.sqrt(3 * c)
        self.matmul_t = ops.MatMul(transpose_b=True)
        self.scatter = WeightedScatterRows(fused)

    def _per_head(self, x):
        """(M, H*K) -> (M*H, K): one row per (item, head), so per-head maps are 2-D matmuls."""
        return x.reshape(-1, x.shape[1] // self.heads)

    def _joined(self, x):
        """(M*H, K) -> (M, H*K)."""
        return x.reshape(-1, self.heads * x.shape[1])

    def construct(self, x, src, dst, distance_index, edge_weight, edge_embedding, head_rows):
        """x: (N, C); src, dst, distance_index, edge_weight: (E,); edge_embedding: (D, C);
        head_rows: :class:`HeadRows` of (dst, src, distance_index) -> (N, C)."""
        c = self.channels
        q = self.lin_query(x) * self.scale  # (N, H*C), the 1/√(3C) applied per atom, not per edge
        k = self.lin_key(x)
        v = self.lin_value(x)
        e = self.lin_edge(edge_embedding)  # (D, H*C), once per distinct distance

        # W_upd (v_i ‖ v_j ‖ e_ij) + b as three maps: per atom, per atom, per distinct distance,
        # one row per (item, head); each edge-head row of the update sums one row of each
        w = self.lin_msg_update.weight  # (3C, 3C)
        upd_i = ops.bias_add(self.matmul_t(self._per_head(v), w[:, :c]), self.lin_msg_update.bias)  # (N*H, 3C)
        upd_j = self.matmul_t(self._per_head(v), w[:, c : 2 * c])  # (N*H, 3C)
        upd_e = self.matmul_t(self._per_head(e), w[:, 2 * c :])  # (D*H, 3C)
        rows_i, rows_j, rows_e = head_rows  # the table row of each edge-head row

        # gated update σ(LN_3C(α)) ⊙ update, (E*H, 3C), with the attention logits
        # α = (q_i⊙k_i ‖ q_i⊙k_j ‖ q_i⊙e_ij) formed row by row from the per-head tables;
        # then the one per-edge matrix product, and LN over C
        gated = self.layer_norm(self._per_head(q), self._per_head(k), self._per_head(e),
                                upd_i, upd_j, upd_e, rows_i, rows_j, rows_e)
        message = self.msg_norm(self.matmul_t(gated, self.msg_layer.weight), self.msg_layer.bias)  # (E*H, C)

        # sum over incoming edges, each counted with its multiplicity; concatenate heads,
        # project, normalise, skip connection
        aggregated = self.scatter(self._joined(message), edge_weight, dst, q)  # (N, H*C)
        return ops.silu(self._batch_norm(self.lin_concate(aggregated))) + self.lin_skip(x)

    def sync_batch_statistics(self) -> None:
        """Take BatchNorm statistics over the nodes of all data-parallel workers (needs a cluster)."""
        self.all_reduce = ops.AllReduce()

    def _batch_norm(self, x):
        """``self.bn``, in training the same maths by the fused kernel or, in data-parallel training,
        over every worker's nodes.

        x: (N, C) -> (N, C). Both keep the moving statistics as ``nn.BatchNorm1d`` does, so a worker's
        batch of 32 trains exactly like one process with the whole 64.
        """
        if not self.training or (self.all_reduce is None and self.bn_kernel is None):
            return self.bn(x)
        bn = self.bn
        count = ops.ones_like(x[:, :1]).sum(0)  # (1,)
        if self.all_reduce is None:
            normalised, mean, var = self.bn_kernel(x, bn.gamma, bn.beta)
            self._update_moving_statistics(mean, var, count)
            return normalised
        # global node count and mean, then the biased variance about that mean (two passes)
        count = self.all_reduce(count)
        mean = self.all_reduce(x.sum(0)) / count  # (C,)
        centred = x - mean
        var = self.all_reduce((centred * centred).sum(0)) / count
        self._update_moving_statistics(mean, var, count)
        return centred / ops.sqrt(var + bn.eps) * bn.gamma + bn.beta

    def _update_moving_statistics(self, mean, var, count) -> None:
        """Moving mean and unbiased variance from a batch's mean and biased variance over ``count``
        nodes (bn.momentum is the weight of the new batch)."""
        bn = self.bn
        new = bn.momentum
        ops.assign(bn.moving_mean, (1 - new) * bn.moving_mean + new * ops.stop_gradient(mean))
        unbiased = ops.stop_gradient(var * count / ops.maximum(count - 1, 1.0))
        ops.assign(bn.moving_variance, (1 - new) * bn.moving_variance + new * unbiased)
