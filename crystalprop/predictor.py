"""Predict properties for files, folders, globs or pymatgen structures: ``crystalprop.predict``.

Files are read and turned into graphs in worker processes while the main process runs
the models, so the model never waits for the disk; results stream out in input order.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from crystalprop.graph.cells import cell_for_graph, check_cell_choice
from crystalprop.graph.elements import SYMBOLS, ElementError
from crystalprop.graph.neighbors import CrystalGraph, GraphSettings, build_graph
from crystalprop.io.applicability import domain_warnings
from crystalprop.io.discovery import iter_structure_paths

if TYPE_CHECKING:
    from pymatgen.core import Structure

READ_TIMEOUT_S = 60.0
MAX_PENDING = 2048  # inputs read ahead of the models (a few MB of graphs)


@dataclass
class Prepared:
    """A structure ready for the models, or the reason it is not."""

    name: str
    source: str
    index: int = 0
    formula: str = ""
    n_sites: int = 0
    cell_sites: int = 0  # sites of the cell the graph was built on
    graph: CrystalGraph | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def _prepare_structure(name: str, source: str, structure: Structure, settings: GraphSettings,
                       notes: list[str] | None = None) -> Prepared:
    item = Prepared(name, source, formula=structure.composition.reduced_formula, n_sites=len(structure),
                    warnings=list(notes or []) + domain_warnings(structure))
    try:
        cell, note = cell_for_graph(structure, settings.cell)
        item.warnings += [note] if note else []
        item.cell_sites = len(cell)
        item.graph = build_graph(cell, settings)
    except ElementError as exc:
        item.error = str(exc)
    except Exception as exc:  # a failed graph must not stop a batch of thousands
        item.error = f"graph construction failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return item


def prepare_input(job: tuple[int, Any, GraphSettings, float]) -> list[Prepared]:
    """Worker: one input (a file path, or a named pymatgen Structure) -> prepared structures."""
    from crystalprop.io.readers import iter_file_records  # noqa: PLC0415  (pymatgen, in the readers only)

    index, item, settings, timeout = job
    if isinstance(item, tuple):
        out = list(_prepare_objects([item], settings))
    else:
        out = []
        for record in iter_file_records(item, timeout):
            if record.structure is None:
                out.append(Prepared(record.name, record.source, error=record.error))
            else:
                out.append(_prepare_structure(record.name, record.source, record.structure, settings, record.warnings))
    for prepared in out:
        prepared.index = index
    return out


def _prepare_objects(structures: Iterable[tuple[str, Structure]], settings: GraphSettings) -> Iterator[Prepared]:
    from crystalprop.io.readers import validate_structure  # noqa: PLC0415

    for name, structure in structures:
        try:
            notes = validate_structure(structure)
        except ValueError as exc:
            yield Prepared(name, name, formula=structure.composition.reduced_formula, n_sites=len(structure),
                           error=str(exc))
            continue
        yield _prepare_structure(name, name, structure, settings, notes)


def _is_structure(item: Any) -> bool:
    """Whether ``item`` is a pymatgen Structure, without importing pymatgen (0.5 s) here.

    A caller holding a Structure has imported pymatgen already; the prediction process
    itself only hands paths to the readers.
    """
    module = sys.modules.get("pymatgen.core.structure")
    return module is not None and isinstance(item, module.Structure)


def _iter_inputs(inputs: Sequence[Any], recursive: bool) -> Iterator[Any]:
    """Files (expanded from folders and globs) and named Structures, in the order given."""
    for k, item in enumerate(inputs):
        if _is_structure(item):
            yield (getattr(item, "name", None) or f"structure{k}", item)
        else:
            yield from iter_structure_paths([os.fspath(item)], recursive)


def _import_readers() -> None:
    """Worker start-up: import the parsers (pymatgen, 0.5-1 s) and spglib (canonical cells, 0.15 s) at
    once, not at the first file, so that the import overlaps the parent's MindSpore import and model loading."""
    importlib.import_module("crystalprop.io.readers")
    importlib.import_module("spglib")


class ReadAhead:
    """Inputs read and turned into graphs by worker processes that start at construction.

    Creating one before importing MindSpore and loading the models lets the two overlap;
    iterating gives the prepared structures in input order. At most MAX_PENDING inputs are read
    ahead of the consumer, so memory stays flat however long the input list. ``workers`` 0 reads
    in this process, lazily. ``skip``: names already done (``--resume``). ``shard`` (i, n): only
    inputs whose position k in the input stream has k % n == i - 1, so n jobs split a list
    without overlap.
    """

    def __init__(self, inputs: Sequence[Any], settings: GraphSettings, *, recursive: bool = False,
                 workers: int | None = None, timeout: float = READ_TIMEOUT_S, skip: set[str] | None = None,
                 shard: tuple[int, int] = (1, 1)) -> None:
        part, parts = shard
        self.settings = settings
        self._skip = skip or set()
        jobs = ((k, item, settings, timeout) for k, item in enumerate(_iter_inputs(inputs, recursive))
                if k % parts == part - 1 and (isinstance(item, tuple) or item not in self._skip))
        workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
        self._slots = threading.Semaphore(MAX_PENDING)
        self._stopping = threading.Event()
        self._pool = mp.get_context("spawn").Pool(workers, _import_readers) if workers > 0 else None
        if self._pool is None:
            self._results: Iterator[list[Prepared]] = (prepare_input(job) for job in jobs)
        else:
            self._results = self._pool.imap(prepare_input, self._throttled(jobs), chunksize=8)

    def _throttled(self, jobs: Iterator[tuple]) -> Iterator[tuple]:
        """The jobs, each once a read-ahead slot is free (runs in the pool's feeder thread)."""
        for job in jobs:
            self._slots.acquire()
            if self._stopping.is_set():
                return
            yield job

    def __iter__(self) -> Iterator[Prepared]:
        try:
            for items in self._results:
                if self._pool is not None:
                    self._slots.release()
                yield from (item for item in items if item.name not in self._skip)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers; safe to call more than once."""
        if self._pool is not None:
            self._stopping.set()
            self._slots.release(MAX_PENDING)  # wakes the pool's feeder thread if it waits for a slot
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def iter_prepared(
    inputs: Sequence[Any], settings: GraphSettings, *, recursive: bool = False, workers: int | None = None,
    timeout: float = READ_TIMEOUT_S, skip: set[str] | None = None, shard: tuple[int, int] = (1, 1),
) -> Iterator[Prepared]:
    """Prepared structures in input order (see :class:`ReadAhead`)."""
    yield from ReadAhead(inputs, settings, recursive=recursive, workers=workers, timeout=timeout, skip=skip,
                         shard=shard)


def _batched(items: Iterator[Prepared], size: int) -> Iterator[list[Prepared]]:
    batch: list[Prepared] = []
    for item in items:
        batch.append(item)
        if sum(1 for b in batch if b.graph is not None) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Predictor:
    """One or more loaded models that predict together from shared graphs.

    Models of the same configuration share one network, compiled once, and take turns with
    their weights (swapping 125 weight tensors costs about 1 ms; each further compiled graph
    cost about 0.25 s to load from the compile cache).
    ``cell``: ``canonical`` or ``as-given`` for every model; None: each model's own setting.
    """

    def __init__(self, models: Sequence[str] | str | None = None, device: str = "CPU", cell: str | None = None) -> None:
        from crystalprop.backend import enable_compile_cache, set_device  # noqa: PLC0415  (lazy: MindSpore)
        from crystalprop.model.checkpoint import build_model, read_checkpoint, weight_set  # noqa: PLC0415
        from crystalprop.registry import available_models, resolve_model  # noqa: PLC0415

        if cell is not None:
            check_cell_choice(cell)
        set_device(device)
        names = [models] if isinstance(models, str) else list(models or available_models())
        if not names:
            raise ValueError("no model given and no shipped model found in checkpoints/")
        loaded = [(label, path, *read_checkpoint(path)) for label, path in map(resolve_model, names)]
        configs = [json.dumps(card.model.as_dict()) for _, _, card, _ in loaded]
        enable_compile_cache("predict", device, *sorted(set(configs)))
        nets: dict[str, Any] = {}  # configuration -> its network
        self._holding: dict[int, str] = {}  # network -> the model whose weights it holds now
        self.models: list[tuple[str, Any, Any, list]] = []  # (label, network, card, weights)
        for (label, path, card, params), config in zip(loaded, configs):
            if config not in nets:
                nets[config] = build_model(card, params, path)
                nets[config].declare_dynamic_inputs()
                self._holding[id(nets[config])] = label
            self.models.append((label, nets[config], card, weight_set(nets[config], params, path)))
        settings = {card.graph if cell is None else replace(card.graph, cell=cell)
                    for _, _, card, _ in self.models}
        if len(settings) != 1:
            raise ValueError("these models use different graph settings; predict with them separately")
        self.settings: GraphSettings = settings.pop()
        self.known_elements = {label: set(card.elements) for label, _, card, _ in self.models}
        self._compiled = False

    def compile(self) -> None:
        """Compile (or load from MindSpore's compile cache) every model's graph, once.

        Called while the reader processes start, so that the two overlap; any later batch
        reuses the graph, whatever its shape.
        """
        if self._compiled:
            return
        # any graph will do: the compiled graph takes every shape; one Fe atom, two edges
        probe = CrystalGraph(np.array([26], np.int16), np.zeros(2, np.int32), np.zeros(2, np.int32),
                             np.array([2.5, 2.9], np.float32))
        self.predict_prepared([Prepared("probe", "probe", graph=probe)])
        self._compiled = True

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(model label, unit) per output column."""
        return [(label, card.unit) for label, _, card, _ in self.models]

    def predict_prepared(self, batch: list[Prepared]) -> list[dict]:
        """Rows for a batch of prepared structures."""
        from crystalprop.graph.batch import collate  # noqa: PLC0415
        from crystalprop.model.checkpoint import assign_weights  # noqa: PLC0415
        from crystalprop.model.inference import batch_tensors  # noqa: PLC0415

        good = [p for p in batch if p.graph is not None]
        values: dict[str, np.ndarray] = {}
        if good:
            tensors = batch_tensors(collate([p.graph for p in good]))
            for label, net, card, weights in self.models:
                if self._holding[id(net)] != label:
                    assign_weights(net, weights)
                    self._holding[id(net)] = label
                values[label] = card.transform.physical(net(*tensors).asnumpy().reshape(-1))
        rows, k = [], 0
        for item in batch:
            row = {"index": item.index, "name": item.name, "source": item.source, "formula": item.formula,
                   "n_sites": item.n_sites}
            notes = list(item.warnings)
            for label, *_ in self.models:
                row[label] = float(values[label][k]) if item.graph is not None else None
                unseen = self._unseen_elements(label, item)
                if unseen:
                    notes.append(f"{label}: element(s) {', '.join(unseen)} absent from its training data")
            if item.graph is not None:
                k += 1
            row["error"] = item.error or ""
            row["warning"] = "; ".join(notes)
            rows.append(row)
        return rows

    def _unseen_elements(self, label: str, item: Prepared) -> list[str]:
        known = self.known_elements[label]
        if item.graph is None or not known:
            return []
        return sorted({SYMBOLS[z] for z in np.unique(item.graph.atomic_numbers)} - known)

    def iter_rows(self, inputs: Sequence[Any] | ReadAhead, *, batch_size: int = 64, recursive: bool = False,
                  workers: int | None = None, timeout: float = READ_TIMEOUT_S,
                  skip: set[str] | None = None, shard: tuple[int, int] = (1, 1)) -> Iterator[list[dict]]:
        """Rows batch by batch, in input order.

        ``inputs`` may be a :class:`ReadAhead` already started with these models' graph
        settings (the other reading arguments are then its own).
        """
        if isinstance(inputs, ReadAhead):
            if inputs.settings != self.settings:
                inputs.close()
                raise ValueError(f"inputs were read with {inputs.settings}, the models need {self.settings}")
            prepared = inputs
        else:
            prepared = ReadAhead(inputs, self.settings, recursive=recursive, workers=workers, timeout=timeout,
                                 skip=skip, shard=shard)
        self.compile()  # while the readers start
        for batch in _batched(iter(prepared), batch_size):
            yield self.predict_prepared(batch)


def predict(
    inputs: Any,
    model: Sequence[str] | str | None = None,
    *,
    batch_size: int = 64,
    device: str = "CPU",
    recursive: bool = False,
    workers: int | None = 0,
    cell: str | None = None,
) -> list[dict]:
    """Predict every property of every structure in ``inputs``.

    ``inputs``: a path, folder, glob, pymatgen Structure, or a list of them. ``model``: a
    shipped model name, a ``.ckpt`` path, a list of them, or None for all shipped models.
    ``cell``: ``canonical`` (reduce each structure to its Niggli-reduced primitive cell) or
    ``as-given``; None uses the models' own setting (``canonical`` for the shipped ones).
    Returns one dict per structure: index (position of its file in the input stream),
    name, source, formula, n_sites, one value per model
    (physical units), error and warning.
    """
    if isinstance(inputs, (str, os.PathLike)) or _is_structure(inputs):
        inputs = [inputs]
    predictor = Predictor(model, device, cell)
    return [row for rows in predictor.iter_rows(list(inputs), batch_size=batch_size, recursive=recursive,
                                                workers=workers) for row in rows]
