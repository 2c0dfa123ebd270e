"""Crystal graphs from plain arrays: element features, the periodic k-nearest-neighbour graph, batching.

No structure library is imported here: :mod:`crystalprop.io.adapters` turns a pymatgen Structure or an
ase.Atoms into the :class:`Crystal` these functions take.
"""

from crystalprop.graph.batch import GraphBatch, collate
from crystalprop.graph.crystal import Crystal
from crystalprop.graph.elements import ElementError, atom_features, check_elements
from crystalprop.graph.neighbors import CrystalGraph, GraphSettings, build_graph

__all__ = [
    "Crystal",
    "CrystalGraph",
    "ElementError",
    "GraphBatch",
    "GraphSettings",
    "atom_features",
    "build_graph",
    "check_elements",
    "collate",
]
