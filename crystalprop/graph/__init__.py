"""Crystal graphs from plain arrays: element features, the periodic k-nearest-neighbour graph, batching.

No structure library is imported here: :mod:`crystalprop.io.adapters` turns a pymatgen Structure or an
ase.Atoms into the :class:`~crystalprop.io.crystal.Crystal` (plain arrays) these functions take. The names below load on first use
(PEP 562), so the command can read :mod:`crystalprop.graph.settings` without numpy.
"""

from __future__ import annotations

from crystalprop.utils.lazy import lazy_attributes

_HOMES = {
    "CrystalGraph": "neighbors",
    "ElementError": "elements",
    "GraphBatch": "batch",
    "GraphSettings": "settings",
    "atom_features": "elements",
    "build_graph": "neighbors",
    "check_elements": "elements",
    "collate": "batch",
}

__all__ = sorted(_HOMES)

__getattr__ = lazy_attributes("crystalprop.graph", _HOMES)
