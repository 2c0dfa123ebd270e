"""Crystal graphs: element features, the periodic k-nearest-neighbour graph, batching."""

from crystalprop.graph.batch import GraphBatch, collate
from crystalprop.graph.elements import ElementError, atom_features, check_elements
from crystalprop.graph.neighbors import CrystalGraph, GraphSettings, build_graph

__all__ = [
    "CrystalGraph",
    "ElementError",
    "GraphBatch",
    "GraphSettings",
    "atom_features",
    "build_graph",
    "check_elements",
    "collate",
]
