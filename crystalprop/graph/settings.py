"""How a graph is built and batched: the settings and defaults, free of numpy so the command can show them."""

from __future__ import annotations

from dataclasses import dataclass

CANONICAL = "canonical"
AS_GIVEN = "as-given"
CELL_CHOICES = (CANONICAL, AS_GIVEN)

BATCH_SIZE = 64
"""Most structures per prediction batch."""
EVAL_BATCH_SIZE = 128
"""Structures per batch when a labelled split is predicted: validating, evaluating, joining (no gradients:
larger than for training)."""
BATCH_MEMORY_BYTES = 1 << 30
"""About how much memory a prediction batch's largest tensors may take (see ``BatchLimits``)."""
BYTES_PER_EDGE_CHANNEL = 16
"""Forward-pass memory per directed edge and per (feature x head) channel: 12-15 bytes measured
(CPU, 5 layers, 64x1 and 128x4 channels, 0.1-0.4 M edges), rounded up."""
BYTES_PER_ATOM_CHANNEL = 64
"""The same per atom (node tables: queries, keys, values, update terms); edges dominate."""
STACKED_MEMORY_FACTOR = 6
"""Forward-pass memory per edge and channel of a stacked network (``model.stacked``), in units of
``BYTES_PER_EDGE_CHANNEL``. Measured with the 14 members of the four shipped models on the first
2,000 mp2018 files (343 edges per structure): with the single network's estimate the process tree
peaked at 2.97 GB (batches of 64 structures, about 1.9 GB above the 1.1 GB floor of the loaded models
and readers), about 95 bytes per edge and channel; with this factor 1.1-1.2 GB, as fast."""


def check_cell_choice(cell: str) -> str:
    """``cell`` if it is a known cell setting; ValueError naming the choices otherwise."""
    if cell not in CELL_CHOICES:
        raise ValueError(f"unknown cell setting {cell!r}: use {' or '.join(CELL_CHOICES)}")
    return cell


@dataclass(frozen=True)
class GraphSettings:
    """How the graph is built; part of the cache key and of a checkpoint's metadata.

    ``cell``: the cell the graph is built on, ``canonical`` (the Niggli-reduced primitive
    cell, see :mod:`crystalprop.graph.cells`) or ``as-given`` (the file's own cell).
    ``site_features``: each atom also carries descriptors of its first neighbour shell, bond angles
    among them (:mod:`crystalprop.graph.site_features`), which a graph of distances alone does not show.
    """

    cutoff: float = 8.0
    max_neighbors: int = 12
    use_lattice: bool = True
    cell: str = CANONICAL
    site_features: bool = False

    def __post_init__(self) -> None:
        check_cell_choice(self.cell)

    def as_dict(self) -> dict:
        """Plain dict for JSON metadata; ``site_features`` only where set, so that versions before the
        setting read every other graph's record (and cache keys stay as they were)."""
        return {"cutoff": self.cutoff, "max_neighbors": self.max_neighbors, "use_lattice": self.use_lattice,
                "cell": self.cell, **({"site_features": True} if self.site_features else {})}
