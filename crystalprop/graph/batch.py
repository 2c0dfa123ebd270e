"""Join several crystal graphs into one disjoint graph, the model's input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from crystalprop.graph.elements import atom_features
from crystalprop.graph.neighbors import CrystalGraph

BATCH_MEMORY_BYTES = 1 << 30
"""Default memory for one batch's activations in a forward pass (predict)."""
BYTES_PER_EDGE_CHANNEL = 16
"""Forward-pass memory per directed edge and per (feature x head) channel: 12-15 bytes measured
(CPU, 5 layers, 64x1 and 128x4 channels, 0.1-0.4 M edges), rounded up."""
BYTES_PER_ATOM_CHANNEL = 64
"""The same per atom (node tables: queries, keys, values, update terms); edges dominate."""


@dataclass(frozen=True)
class BatchLimits:
    """Most structures, atoms and directed edges one batch may hold (a larger single structure
    still forms a batch of its own)."""

    structures: int
    atoms: int
    edges: int

    @classmethod
    def for_model(cls, structures: int, features: int, heads: int, memory: int = BATCH_MEMORY_BYTES) -> BatchLimits:
        """Limits within which a forward pass of a model with ``features`` x ``heads`` channels
        needs about ``memory`` bytes."""
        channels = max(1, features * heads)
        return cls(structures, max(1, memory // (BYTES_PER_ATOM_CHANNEL * channels)),
                   max(1, memory // (BYTES_PER_EDGE_CHANNEL * channels)))

    def fits(self, structures: int, atoms: int, edges: int) -> bool:
        """Whether a batch of this size is within every limit."""
        return structures <= self.structures and atoms <= self.atoms and edges <= self.edges


@dataclass
class GraphBatch:
    """A batch of B crystals with N atoms and E directed edges in all.

    node_features: (N, 92) float32. src, dst: (E,) int32 global atom indices.
    distance_index: (E,) int32 into ``distances``, the (D,) float32 distinct bond lengths
    of the batch, so that everything depending only on the distance is computed D times.
    edge_weight: (E,) float32, how many of the graphs' directed edges this edge stands for:
    edges with the same source, target and length carry the same message, so each is
    computed once and counted with its multiplicity (about half of Matformer's edges are
    such repeats: both signs of an atom's own images, equidistant images of a neighbour).
    node_graph: (N,) int32 crystal of each atom. inverse_counts: (B, 1) float32, 1 / atoms.
    """

    node_features: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    distance_index: np.ndarray
    edge_weight: np.ndarray
    distances: np.ndarray
    node_graph: np.ndarray
    inverse_counts: np.ndarray

    @property
    def num_graphs(self) -> int:
        """Number of crystals B."""
        return int(self.inverse_counts.shape[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The model inputs in the order of ``Matformer.construct``."""
        return (
            self.node_features,
            self.src,
            self.dst,
            self.distance_index,
            self.edge_weight,
            self.distances,
            self.node_graph,
            self.inverse_counts,
        )


def collate(graphs: Sequence[CrystalGraph]) -> GraphBatch:
    """Concatenate graphs, offsetting atom indices; find the batch's distinct distances."""
    n_nodes = np.array([g.num_nodes for g in graphs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_nodes)[:-1]])
    n_edges = np.array([g.num_edges for g in graphs], dtype=np.int64)
    edge_offsets = np.repeat(offsets, n_edges)
    src = np.concatenate([g.src for g in graphs]).astype(np.int64) + edge_offsets
    dst = np.concatenate([g.dst for g in graphs]).astype(np.int64) + edge_offsets
    distances, distance_index = np.unique(np.concatenate([g.distances for g in graphs]), return_inverse=True)
    distance_index = distance_index.ravel()
    n_total = int(n_nodes.sum())
    key = (src * n_total + dst) * len(distances) + distance_index
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    return GraphBatch(
        node_features=atom_features(np.concatenate([g.atomic_numbers for g in graphs])),
        src=src[first].astype(np.int32),
        dst=dst[first].astype(np.int32),
        distance_index=distance_index[first].astype(np.int32),
        edge_weight=counts.astype(np.float32),
        distances=distances.astype(np.float32),
        node_graph=np.repeat(np.arange(len(graphs), dtype=np.int32), n_nodes),
        inverse_counts=(1.0 / n_nodes.astype(np.float32))[:, None],
    )
