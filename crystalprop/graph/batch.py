"""Join several crystal graphs into one disjoint graph, the model's input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from crystalprop.graph.elements import MAX_Z, atom_features
from crystalprop.graph.site_features import N_SITE
from crystalprop.graph.neighbors import CrystalGraph
from crystalprop.graph.settings import BATCH_MEMORY_BYTES, BYTES_PER_ATOM_CHANNEL, BYTES_PER_EDGE_CHANNEL

INT32_LIMIT = 2**31  # the kernels index atoms and bond lengths with int32
KEY_LIMIT = 2.0**62  # the int64 edge key of collate must stay below this (as in neighbors.py)


class GraphError(ValueError):
    """A graph whose arrays disagree, e.g. a damaged cache entry: its edges would index atoms
    it does not have, a read or write outside the kernels' buffers."""


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


Item = TypeVar("Item")


def batches_within(items: Iterable[Item], limits: BatchLimits,
                   graph_of: Callable[[Item], CrystalGraph | None] = lambda item: item) -> Iterator[list[Item]]:
    """Consecutive batches of ``items`` within ``limits`` (structures, atoms, edges of their graphs,
    ``graph_of(item)``); a larger single graph forms a batch of its own, items without one ride along."""
    batch: list[Item] = []
    structures = atoms = edges = 0
    for item in items:
        graph = graph_of(item)
        if graph is not None:
            if structures and not limits.fits(structures + 1, atoms + graph.num_nodes, edges + graph.num_edges):
                yield batch
                batch, structures, atoms, edges = [], 0, 0, 0
            structures, atoms, edges = structures + 1, atoms + graph.num_nodes, edges + graph.num_edges
        batch.append(item)
        if structures >= limits.structures:
            yield batch
            batch, structures, atoms, edges = [], 0, 0, 0
    if batch:
        yield batch


@dataclass
class GraphBatch:
    """A batch of B crystals with N atoms and E directed edges in all.

    node_features: (N, 92) float32, the elements' features, or (N, 92 + 13) with each atom's site
    descriptors after them (``CrystalGraph.site``). src, dst: (E,) int32 global atom indices.
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


def _label(names: Sequence[str] | None, k: int) -> str:
    return names[k] if names is not None else f"graph {k} of the batch"


def _check_shapes(graphs: Sequence[CrystalGraph], names: Sequence[str] | None) -> None:
    """One-dimensional arrays of matching lengths, integer indices, at least one atom."""
    for k, g in enumerate(graphs):
        arrays = (g.atomic_numbers, g.src, g.dst, g.distances)
        if any(np.ndim(a) != 1 for a in arrays) or not len(g.src) == len(g.dst) == len(g.distances):
            raise GraphError(f"{_label(names, k)}: damaged graph: edge arrays of unequal lengths or not 1-D")
        if g.num_nodes == 0 or any(not np.issubdtype(a.dtype, np.integer) for a in arrays[:3]):
            raise GraphError(f"{_label(names, k)}: damaged graph: no atoms, or indices that are not integers")
        if g.site is not None and (np.shape(g.site) != (g.num_nodes, N_SITE) or not np.isfinite(g.site).all()):
            raise GraphError(f"{_label(names, k)}: damaged graph: site descriptors of shape {np.shape(g.site)} "
                             f"for {g.num_nodes} atoms, or not finite")
    if len({g.site is None for g in graphs}) > 1:
        raise GraphError("graphs with and without site descriptors in one batch: build them with the same settings")


@dataclass
class _Joined:
    """The graphs' arrays end to end, indices still local to each graph."""

    n_nodes: np.ndarray
    n_edges: np.ndarray
    atomic_numbers: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    distances: np.ndarray
    site: np.ndarray | None


def _join(graphs: Sequence[CrystalGraph]) -> _Joined:
    return _Joined(np.array([g.num_nodes for g in graphs], dtype=np.int64),
                   np.array([g.num_edges for g in graphs], dtype=np.int64),
                   np.concatenate([g.atomic_numbers for g in graphs]),
                   np.concatenate([g.src for g in graphs]).astype(np.int64),
                   np.concatenate([g.dst for g in graphs]).astype(np.int64),
                   np.concatenate([g.distances for g in graphs]),
                   None if graphs[0].site is None else np.concatenate([g.site for g in graphs]).astype(np.float32))


def _check_joined(joined: _Joined, names: Sequence[str] | None) -> None:
    """Edges within their own graph's atoms, finite lengths, elements in the feature table."""
    n_nodes, n_edges = joined.n_nodes, joined.n_edges
    limit = np.repeat(n_nodes, n_edges).view(np.uint64)
    src, dst = joined.src, joined.dst
    # as unsigned, a negative index is huge: one comparison tests both ends
    bad_edges = (src.view(np.uint64) >= limit) | (dst.view(np.uint64) >= limit) | ~np.isfinite(joined.distances)
    if bad_edges.any():
        edge = int(np.argmax(bad_edges))
        k = int(np.searchsorted(np.cumsum(n_edges), edge, side="right"))
        raise GraphError(f"{_label(names, k)}: damaged graph: edge {edge - int(n_edges[:k].sum())} joins atoms "
                         f"{src[edge]} and {dst[edge]} of {n_nodes[k]} (or has a non-finite length)")
    z = joined.atomic_numbers
    bad_atoms = (z < 1) | (z > MAX_Z)
    if bad_atoms.any():
        atom = int(np.argmax(bad_atoms))
        k = int(np.searchsorted(np.cumsum(n_nodes), atom, side="right"))
        raise GraphError(f"{_label(names, k)}: damaged graph: atomic number {z[atom]} outside 1-{MAX_Z}")


def check_graphs(graphs: Sequence[CrystalGraph], names: Sequence[str] | None = None) -> _Joined | None:
    """Refuse a graph whose edges name atoms it does not have, whose elements are outside the
    feature table, or whose bond lengths are not finite: vectorised over the whole batch, so
    that the kernels never index outside their buffers. ``names`` label the graphs in the error.
    Returns the joined arrays (None for no graphs)."""
    if not graphs:
        return None
    _check_shapes(graphs, names)
    joined = _join(graphs)
    _check_joined(joined, names)
    return joined


def _distinct_edges(src: np.ndarray, dst: np.ndarray, distance_index: np.ndarray, n_total: int,
                    n_distances: int) -> tuple[np.ndarray, np.ndarray]:
    """First position and count of each distinct (src, dst, length) edge, in lexicographic order.

    One int64 key per edge where it cannot overflow; row-wise ``np.unique`` (same order) beyond.
    """
    if float(n_total) ** 2 * float(max(n_distances, 1)) < KEY_LIMIT:
        key = (src * n_total + dst) * n_distances + distance_index
        _, first, counts = np.unique(key, return_index=True, return_counts=True)
    else:
        _, first, counts = np.unique(np.column_stack([src, dst, distance_index]), axis=0, return_index=True,
                                     return_counts=True)
    return first, counts


def collate(graphs: Sequence[CrystalGraph], names: Sequence[str] | None = None) -> GraphBatch:
    """Concatenate graphs, offsetting atom indices; find the batch's distinct distances.

    Every graph is checked first (:func:`check_graphs`); ``names`` label them in its errors.
    """
    joined = check_graphs(graphs, names)
    if joined is None:
        raise GraphError("no graphs to batch")
    n_nodes, n_edges = joined.n_nodes, joined.n_edges
    offsets = np.concatenate([[0], np.cumsum(n_nodes)[:-1]])
    edge_offsets = np.repeat(offsets, n_edges)
    src = joined.src + edge_offsets
    dst = joined.dst + edge_offsets
    distances, distance_index = np.unique(joined.distances, return_inverse=True)
    distance_index = distance_index.ravel()
    n_total = int(n_nodes.sum())
    if max(n_total, len(src)) >= INT32_LIMIT:
        raise GraphError(f"batch of {n_total} atoms and {len(src)} edges exceeds the kernels' int32 indices")
    first, counts = _distinct_edges(src, dst, distance_index, n_total, len(distances))
    node_features = atom_features(joined.atomic_numbers)
    if joined.site is not None:
        node_features = np.concatenate([node_features, joined.site], axis=1)
    return GraphBatch(
        node_features=node_features,
        src=src[first].astype(np.int32),
        dst=dst[first].astype(np.int32),
        distance_index=distance_index[first].astype(np.int32),
        edge_weight=counts.astype(np.float32),
        distances=distances.astype(np.float32),
        node_graph=np.repeat(np.arange(len(graphs), dtype=np.int32), n_nodes),
        inverse_counts=(1.0 / n_nodes.astype(np.float32))[:, None],
    )
