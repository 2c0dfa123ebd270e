"""What the model will see of each structure: sites, the cell used, graph edges, neighbour distances."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crystalprop.graph.settings import GraphSettings
from crystalprop.io.discovery import no_structures_found, printable
from crystalprop.prediction.predictor import iter_prepared

GRAPH_KEYS = ("n_edges", "edges_per_atom", "nearest_neighbor_A", "mean_neighbor_A")
"""The keys of a record that describe its graph, null in the record of a structure that failed."""


def inspect_structures(paths: Sequence[str], settings: GraphSettings, *, recursive: bool = False) -> list[dict]:
    """One record per structure: name, formula, sites in the file and in the cell used, edges per atom,
    nearest and mean neighbour distance (Å), and the error or warnings of reading it. A ValueError
    where ``paths`` name no structure file (an empty folder, say), as for prediction."""
    nothing_to_read = no_structures_found(paths, recursive)
    if nothing_to_read:
        raise ValueError(nothing_to_read)
    records = []
    for item in iter_prepared(list(paths), settings, recursive=recursive, workers=0):
        # what a failure left unknown is null, not "" or 0 sites (every structure has a formula and sites)
        record = {"name": printable(item.name), "formula": item.formula or None, "n_sites": item.n_sites or None,
                  "cell": settings.cell, "cell_sites": item.cell_sites or None, "error": item.error or "",
                  "warnings": item.warnings}
        records.append(record | _graph_figures(item.graph, item.cell_sites))
    return records


def _graph_figures(graph, cell_sites: int) -> dict:
    """Edges, edges per atom, nearest and mean neighbour distance (Å) of a graph; None each where there
    is none (a structure that failed), so that every record has the same keys."""
    if graph is None:
        return dict.fromkeys(GRAPH_KEYS)
    d = graph.distances
    return {"n_edges": graph.num_edges, "edges_per_atom": round(graph.num_edges / cell_sites, 2),
            "nearest_neighbor_A": round(float(d.min()), 4), "mean_neighbor_A": round(float(np.mean(d)), 4)}


def _text(value) -> str:
    return "" if value is None else str(value)


def inspection_rows(records: list[dict]) -> list[list[str]]:
    """The records as text cells under :func:`inspection_columns` (sites: in the file -> in the cell)."""
    return [[r["name"], r["formula"] or "",
             f"{r['n_sites']} -> {r['cell_sites']}" if r["cell_sites"] else str(r["n_sites"] or ""),
             *(_text(r.get(key)) for key in GRAPH_KEYS), r["error"] or "; ".join(r["warnings"])] for r in records]


def inspection_columns(cell: str) -> list[str]:
    """Headers of :func:`inspection_rows` for graphs built on ``cell`` cells."""
    return ["structure", "formula", f"sites (file -> {cell} cell)", "edges", "edges/atom", "nearest Å", "mean Å",
            "note"]
