"""Build the graphs of a data set once, in parallel, and keep them on disk.

The cache key covers every entry's id and the hash of its source's content (a file's bytes,
or inline structure text), the graph settings (the cell setting among them) and the source of the
code that reads structures and builds graphs, so a changed file, setting or reader rebuilds,
a copied or re-extracted data set (new modification times, same bytes) does not, and a
second run on the same data starts training at once. Graphs made under a time limit (a read
that ran out of time, a canonical-cell search that fell back to the cell as given) are used but
not cached: on a less loaded machine the next run may do better.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from crystalprop.utils.atomic import atomic_write
from crystalprop.utils.backend import cache_dir
from crystalprop.data.datasets import Entry
from crystalprop.graph.batch import GraphError, check_graphs
from crystalprop.graph.cells import cell_for_graph
from crystalprop.graph.neighbors import CrystalGraph, GraphSettings, build_graph
from crystalprop.io.adapters import crystal_from_structure
from crystalprop.io.limits import READ_TIMEOUT_S
from crystalprop.io.readers import read_file_with_timeout, structure_from_dict, structure_from_text, validate_structure
from crystalprop.utils.hashing import file_sha256
from crystalprop.utils.spawn import main_script_hidden

GRAPH_FORMAT = 3  # bump when the graph builder's output changes


def entry_structure(source: Any, name: str):
    """The structure behind an entry's source: a file path, a dict, or structure text.

    A label belongs to one structure: a source that holds several (a multi-block CIF, a multi-frame
    extended XYZ, a JSON list) is refused with a ValueError naming it and the count, rather than one
    of them taken for the label. Outputs (OUTCAR, vasprun.xml, pw.x) give their last frame only."""
    if isinstance(source, dict):
        return structure_from_dict(source)
    if isinstance(source, str) and "\n" not in source and os.path.exists(source):
        return _the_one(read_file_with_timeout(source, READ_TIMEOUT_S), source)
    return _the_one(structure_from_text(str(source), name), f"the structure text of record {name}")


def _the_one(pairs: list[tuple[str, Any]], where: str):
    """The structure of ``pairs`` (name, structure), read from ``where``, when it is the only one."""
    if len(pairs) == 1:
        return pairs[0][1]
    shown = ", ".join("#" + label.rsplit("#", 1)[-1] for label, _ in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
    raise ValueError(f"{where} holds {len(pairs)} structures ({shown}), and a label belongs to one structure; "
                     "give the one it was computed for in a file of its own (of a relaxation, its last frame)")


TIMED_OUT = "took longer than"
"""How a reader's error begins when its time limit ran out (:func:`crystalprop.io.readers.read_file_with_timeout`)."""


def _build_one(job: tuple[str, Any, GraphSettings]) -> tuple[CrystalGraph | None, str, bool]:
    """Worker: structure -> graph, or the reason it failed; and whether a time limit shaped the outcome
    (then it is not cached)."""
    name, source, settings = job
    try:
        structure = entry_structure(source, name)
        validate_structure(structure)
        cell, fell_back = cell_for_graph(crystal_from_structure(structure), settings.cell)  # to the given cell
        return build_graph(cell, settings), "", fell_back is not None and TIMED_OUT in fell_back
    except Exception as exc:  # one bad record must not stop a 30,000-record build
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0][:300] or type(exc).__name__
        return None, reason, reason.startswith(TIMED_OUT)


def _builder_files() -> list[Path]:
    """The source files whose code decides the graphs: the readers, the graph builder, this module."""
    package = Path(__file__).resolve().parents[1]
    found = [p for folder in ("io", "graph") for p in (package / folder).iterdir()
             if p.suffix in (".py", ".cc", ".json")]
    return sorted(found + [Path(__file__).resolve()])


@lru_cache(maxsize=1)
def builder_fingerprint() -> str:
    """sha256 over :func:`_builder_files`: cached graphs are rebuilt after any change to that code."""
    digest = hashlib.sha256()
    for path in _builder_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _source_fingerprint(source: Any) -> str:
    if isinstance(source, str) and "\n" not in source and os.path.exists(source):
        return file_sha256(source)
    text = json.dumps(source, sort_keys=True) if isinstance(source, dict) else str(source)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(entries: Sequence[Entry], settings: GraphSettings) -> str:
    """Content key of a data set's graphs."""
    digest = hashlib.sha256(json.dumps([GRAPH_FORMAT, builder_fingerprint(), settings.as_dict()]).encode())
    for entry in entries:
        digest.update(f"{entry.id}\0{_source_fingerprint(entry.source)}\n".encode())
    return digest.hexdigest()[:32]


def _save(path: Path, ids: list[str], graphs: list[CrystalGraph | None], errors: list[str]) -> None:
    good = [g for g in graphs if g is not None]
    arrays = {
        "ids": np.array(ids),
        "errors": np.array(errors),
        "ok": np.array([g is not None for g in graphs]),
        "n_nodes": np.array([g.num_nodes for g in good], dtype=np.int64),
        "n_edges": np.array([g.num_edges for g in good], dtype=np.int64),
        "atomic_numbers": np.concatenate([g.atomic_numbers for g in good]) if good else np.zeros(0, np.int16),
        "src": np.concatenate([g.src for g in good]) if good else np.zeros(0, np.int32),
        "dst": np.concatenate([g.dst for g in good]) if good else np.zeros(0, np.int32),
        "distances": np.concatenate([g.distances for g in good]) if good else np.zeros(0, np.float32),
        "volumes": np.array([g.volume for g in good], dtype=np.float64),
    }
    if good and good[0].site is not None:  # the settings give every graph its site descriptors or none
        arrays["site"] = np.concatenate([g.site for g in good])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would add ".npz" to a bare name
            np.savez(handle, **arrays)

    atomic_write(path, write)


def _load(path: Path) -> tuple[list[CrystalGraph | None], list[str]]:
    with np.load(path) as archive:
        data = {name: archive[name] for name in archive.files}
    node_ends = np.cumsum(data["n_nodes"])
    edge_ends = np.cumsum(data["n_edges"])
    pieces = {k: np.split(data[k], ends[:-1]) for k, ends in (
        ("atomic_numbers", node_ends), ("src", edge_ends), ("dst", edge_ends), ("distances", edge_ends),
        ("site", node_ends)) if k in data}
    good = iter(range(len(node_ends)))
    graphs: list[CrystalGraph | None] = []
    for ok in data["ok"]:
        if ok:
            i = next(good)
            graphs.append(CrystalGraph(*(pieces[k][i] for k in ("atomic_numbers", "src", "dst", "distances")),
                                       volume=float(data["volumes"][i]),
                                       site=pieces["site"][i] if "site" in pieces else None))
        else:
            graphs.append(None)
    return graphs, [str(e) for e in data["errors"]]


def _load_checked(path: Path, ids: list[str], site: bool) -> tuple[list[CrystalGraph | None], list[str]] | None:
    """Cached graphs whose ids and indices check out, with site descriptors where ``site`` asks for them,
    or None (with a warning) to rebuild them: a damaged entry must never reach the kernels, which do not
    bounds-check."""
    try:
        graphs, errors = _load(path)
        if len(graphs) != len(ids):
            raise GraphError(f"{len(graphs)} graphs for {len(ids)} entries")
        if any((g.site is not None) != site for g in graphs if g is not None):
            raise GraphError("site descriptors missing" if site else "site descriptors not asked for")
        good = [(g, i) for g, i in zip(graphs, ids) if g is not None]
        check_graphs([g for g, _ in good], [f"{path} (entry {i})" for _, i in good])
    except Exception as exc:  # whatever the damage (bad zip, missing array, bad index), rebuild
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        warnings.warn(f"{path}: damaged graph cache, rebuilding it ({reason})", stacklevel=3)
        return None
    return graphs, errors


def build_graphs(
    entries: Sequence[Entry],
    settings: GraphSettings = GraphSettings(),
    *,
    workers: int | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[CrystalGraph | None], list[str]]:
    """Graphs aligned with ``entries`` (None where it failed) and the failure reasons."""
    path = cache_dir() / "graphs" / f"{cache_key(entries, settings)}.npz"
    if use_cache and path.is_file():
        loaded = _load_checked(path, [e.id for e in entries], settings.site_features)
        if loaded is not None:
            if progress:
                progress(len(entries))
            return loaded
    jobs = [(e.id, e.source, settings) for e in entries]
    workers = workers or os.cpu_count() or 1
    results: list[tuple[CrystalGraph | None, str, bool]] = []
    if workers > 1 and len(jobs) > 64:
        with main_script_hidden():  # a user's script is not run again in the pool's processes
            pool = mp.get_context("spawn").Pool(workers)
        with pool:
            for result in pool.imap(_build_one, jobs, chunksize=32):
                results.append(result)
                if progress:
                    progress(1)
    else:
        for job in jobs:
            results.append(_build_one(job))
            if progress:
                progress(1)
    graphs = [g for g, _, _ in results]
    errors = [e for _, e, _ in results]
    if use_cache and not any(limited for _, _, limited in results):
        _save(path, [e.id for e in entries], graphs, errors)
    return graphs, errors
