"""A damaged graph is refused with its name before the kernels see it; the edge key cannot overflow."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import graph_of, make_structures
from crystalprop.graph import batch as batch_module
from crystalprop.graph.batch import GraphError, _distinct_edges, collate
from crystalprop.graph.neighbors import CrystalGraph
from crystalprop.data import graph_cache
from crystalprop.data.datasets import Entry


@pytest.fixture(scope="module")
def graphs() -> list[CrystalGraph]:
    return [graph_of(s) for _, s in make_structures(4)]


def _damaged(graph: CrystalGraph, **arrays) -> CrystalGraph:
    fields = {"atomic_numbers": graph.atomic_numbers, "src": graph.src, "dst": graph.dst,
              "distances": graph.distances}
    return CrystalGraph(**{**fields, **arrays})


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("dst", 2, "joins atoms"),  # one past the last atom of a 2-atom cell
    ("src", -1, "joins atoms"),
    ("distances", np.nan, "non-finite"),
    ("atomic_numbers", -3, "atomic number -3"),
])
def test_collate_names_a_damaged_graph(graphs, field, value, reason):
    array = getattr(graphs[1], field).copy()
    array[len(array) // 2] = value
    bad = _damaged(graphs[1], **{field: array})
    with pytest.raises(GraphError, match=f"^b.cif: damaged graph: .*{reason}"):
        collate([graphs[0], bad, graphs[2]], ["a.cif", "b.cif", "c.cif"])
    with pytest.raises(GraphError, match="^graph 1 of the batch: damaged graph"):
        collate([graphs[0], bad, graphs[2]])


def test_collate_refuses_unequal_edge_arrays(graphs):
    bad = _damaged(graphs[0], distances=graphs[0].distances[:-1])
    with pytest.raises(GraphError, match="unequal lengths"):
        collate([bad], ["a.cif"])


def test_edge_key_falls_back_where_it_would_overflow(graphs, monkeypatch):
    keyed = collate(graphs)
    monkeypatch.setattr(batch_module, "KEY_LIMIT", 1.0)  # as if the batch were huge
    rows = collate(graphs)
    for a, b in zip(keyed.arrays(), rows.arrays()):
        np.testing.assert_array_equal(a, b)


def test_distinct_edges_of_a_huge_batch():
    """3e9 atoms and 2e6 lengths: the int64 key (n_atoms² x lengths) would wrap around and merge edges."""
    n_total, n_distances = 3_000_000_000, 2_000_000
    src = np.array([0, 0, 1, 2_999_999_999, 0], np.int64)
    dst = np.array([1, 1, 0, 5, 4_611_686], np.int64)
    index = np.array([7, 7, 7, 1_999_999, 7], np.int64)
    first, counts = _distinct_edges(src, dst, index, n_total, n_distances)
    assert sorted(zip(src[first].tolist(), dst[first].tolist(), counts.tolist())) == [
        (0, 1, 2), (0, 4_611_686, 1), (1, 0, 1), (2_999_999_999, 5, 1)]


def test_damaged_graph_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALPROP_CACHE", str(tmp_path))
    entries = [Entry(name, 1.0, s.as_dict()) for name, s in make_structures(3)]
    built, _ = graph_cache.build_graphs(entries, workers=1)
    path = next((tmp_path / "graphs").glob("*.npz"))
    arrays = dict(np.load(path))
    arrays["dst"][5] = 10**6  # a flipped bit on disk
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.warns(UserWarning, match=r"damaged graph cache.*\(entry m-000\).*joins atoms"):
        again, _ = graph_cache.build_graphs(entries, workers=1)
    for a, b in zip(built, again):
        np.testing.assert_array_equal(a.dst, b.dst)
