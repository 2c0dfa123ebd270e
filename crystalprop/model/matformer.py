"""The Matformer network (Yan et al., NeurIPS 2022) for one scalar crystal property."""

from __future__ import annotations

from crystalprop.utils.backend import mindspore_module
from crystalprop.model.config import ModelConfig
from crystalprop.model.layers import HeadRows, MatformerConv, RBFExpansion

ms = mindspore_module()
nn, ops = ms.nn, ms.ops


class Matformer(nn.Cell):
    """Atom embedding -> attention layers -> mean over atoms -> Linear+SiLU -> Linear.

    Inputs are the arrays of :class:`crystalprop.graph.GraphBatch`; output (B,) in the
    model's normalised target units. ``fused``: the layers' fused CPU kernels where available
    (None), insisted on (True) or not used (False); the parameters are the same either way.
    """

    def __init__(self, config: ModelConfig = ModelConfig(), fused: bool | None = None) -> None:
        super().__init__()
        c = config.features
        self.config = config
        self.atom_embedding = nn.Dense(config.atom_inputs, c)
        self.rbf = RBFExpansion(0.0, config.rbf_max, config.rbf_bins)
        self.edge_in = nn.Dense(config.rbf_bins, c)
        self.edge_out = nn.Dense(c, c)
        self.att_layers = nn.CellList([MatformerConv(c, config.heads, fused) for _ in range(config.layers)])
        self.head_rows = HeadRows(config.heads)
        self.fc = nn.Dense(c, config.fc_features)
        self.fc_out = nn.Dense(config.fc_features, 1)

    def construct(self, node_features, src, dst, distance_index, edge_weight, distances, node_graph, inverse_counts):
        x = self.atom_embedding(node_features)  # (N, C)
        edges = self.edge_out(ops.softplus(self.edge_in(self.rbf(distances))))  # (D, C), once per distance
        head_rows = (self.head_rows(dst), self.head_rows(src), self.head_rows(distance_index))
        for layer in self.att_layers:
            x = layer(x, src, dst, distance_index, edge_weight, edges, head_rows)
        zeros = inverse_counts * ops.zeros((1, x.shape[1]), x.dtype)  # (B, C)
        pooled = ops.index_add(zeros, node_graph, x, 0) * inverse_counts  # mean over atoms
        return self.fc_out(ops.silu(self.fc(pooled))).squeeze(-1)

    def sync_batch_statistics(self) -> None:
        """Data-parallel training: BatchNorm statistics over all workers' nodes."""
        for layer in self.att_layers:
            layer.sync_batch_statistics()

    def declare_dynamic_inputs(self) -> None:
        """Compile once for any batch: every input has a dynamic leading dimension."""
        self.set_inputs(*input_signature(self.config.atom_inputs))


def input_signature(atom_inputs: int) -> list:
    """Dynamic-shape placeholders for the inputs of :meth:`Matformer.construct`, whose atoms have
    ``atom_inputs`` features each (``ModelConfig.atom_inputs``)."""
    f32, i32 = ms.float32, ms.int32
    dims_and_types = [([None, atom_inputs], f32), ([None], i32), ([None], i32), ([None], i32), ([None], f32),
                      ([None], f32), ([None], i32), ([None, 1], f32)]
    return [ms.Tensor(shape=shape, dtype=dtype) for shape, dtype in dims_and_types]
