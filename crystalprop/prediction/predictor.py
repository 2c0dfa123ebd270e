"""Predict properties for files, folders, globs or pymatgen structures: ``crystalprop.predict``.

Files are read and turned into graphs in worker processes while the main process runs
the models, so the model never waits for the disk; results stream out in input order.
Every input gets its rows whatever happens while preparing it: a time limit covers each
structure's whole preparation, and a reader process that dies costs only the input it held.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from crystalprop.analysis.applicability import domain_warnings, stretched_warning
from crystalprop.graph.batch import BatchLimits, batches_within
from crystalprop.graph.cells import cell_for_graph
from crystalprop.graph.elements import ElementError, absent_elements
from crystalprop.graph.neighbors import CrystalGraph, NeighborSearchError, build_graph
from crystalprop.graph.settings import BATCH_MEMORY_BYTES, BATCH_SIZE, CANONICAL, GraphSettings, check_cell_choice
from crystalprop.graph.site_features import N_SITE
from crystalprop.io.adapters import crystal_from_structure
from crystalprop.io.discovery import iter_structure_paths, no_structures_found, printable
from crystalprop.io.formula import crystal_formula
from crystalprop.io.limits import READ_TIMEOUT_S, is_close_atoms_note
from crystalprop.model import ENGINES
from crystalprop.utils.checks import check_seconds, check_whole_number
from crystalprop.utils.timelimit import run_with_time_limit
from crystalprop.prediction.workers import ResilientPool, heartbeat

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystalprop.model.checkpoint import ModelCard

MAX_PENDING = 2048  # inputs read ahead of the models (a few MB of graphs)
MAX_READERS = 4  # reader processes at most, by default
HARD_LIMIT_GRACE_S = 30.0  # a reader stuck past twice the time limit plus this is stopped from outside
READER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Single-threaded BLAS in the readers: there is one reader per core already, and the 3x3 inverses of
pymatgen's checks woke a second BLAS thread every file (half a reader's time on a busy machine)."""


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
    out_of_domain: bool = False  # a slab, wire or molecule (analysis.applicability): σ was never calibrated there
    close_atoms: bool = False  # atoms closer than relaxed crystals hold them (validate_structure's warnings): nor there


def _prepare_structure(name: str, source: str, structure: Structure, settings: GraphSettings,
                       notes: list[str] | None = None) -> Prepared:
    domain = domain_warnings(structure)
    item = Prepared(name, source, formula=crystal_formula(structure.composition), n_sites=len(structure),
                    warnings=list(notes or []) + domain, out_of_domain=bool(domain),
                    close_atoms=any(is_close_atoms_note(note) for note in notes or []))
    try:
        cell, note = cell_for_graph(crystal_from_structure(structure), settings.cell)
        item.warnings += [note] if note else []
        item.cell_sites = len(cell)
        item.graph = build_graph(cell, settings)
        stretched = stretched_warning(item.graph)
        if stretched:  # a scale or unit mistake: σ was calibrated on crystals at their bond lengths
            item.warnings.append(stretched)
            item.out_of_domain = True
    except (ElementError, NeighborSearchError) as exc:
        item.error = str(exc)
    except Exception as exc:  # a failed graph must not stop a batch of thousands
        item.error = f"graph construction failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return item


class PreparationTimeout(BaseException):
    """Raised by the timer inside a structure's preparation.

    A BaseException, so that no ``except Exception`` on the way (parsers, checks, graph
    building) takes it for an ordinary failure and carries on.
    """


def prepare_input(job: tuple[int, Any, GraphSettings, float]) -> list[Prepared]:
    """Worker: one input (a file path, or a named pymatgen Structure) -> prepared structures.

    Each structure's whole preparation (for the first one of a file, reading the file too;
    then the checks and the graph) gets ``timeout`` seconds; a structure over it becomes a
    failed row and ends the input.
    """
    index, item, settings, timeout = job
    if isinstance(item, tuple):
        name, steps = item[0], _prepare_objects([item], settings)
    else:
        name, steps = item, _prepare_file(item, settings)
    out = _within_time_limit(steps, timeout, name)
    for prepared in out:
        prepared.index = index
    return out


def _prepare_file(path: str, settings: GraphSettings) -> Iterator[Prepared]:
    from crystalprop.io.readers import iter_file_records  # noqa: PLC0415  (pymatgen, in the readers only)

    for record in iter_file_records(path, None):  # the caller's time limit covers the reading
        if record.structure is None:
            yield Prepared(record.name, record.source, error=record.error)
        else:
            yield _prepare_structure(record.name, record.source, record.structure, settings, record.warnings)


def _within_time_limit(steps: Iterator[Prepared], timeout: float, name: str) -> list[Prepared]:
    """Every item of ``steps``, each computed within ``timeout`` seconds (0: no limit).

    The limit is a SIGALRM timer in the main thread of a process (the reader processes), a
    watched helper thread elsewhere (see :func:`crystalprop.utils.timelimit.run_with_time_limit`).
    """

    out: list[Prepared] = []
    while True:
        try:
            item = run_with_time_limit(lambda: next(steps, None), timeout, PreparationTimeout)
        except PreparationTimeout:
            which = f"structure {len(out) + 1} of this input" if out else "this input"
            out.append(Prepared(name, name, error=f"preparing {which} (reading, checks, neighbour search) "
                                                  f"took longer than {timeout:g} s; skipped"))
            return out
        if item is None:
            return out
        out.append(item)
        heartbeat()  # the reader's hard limit covers one structure, not a whole file of them


def _prepare_objects(structures: Iterable[tuple[str, Any]], settings: GraphSettings) -> Iterator[Prepared]:
    """Prepared structures for named pymatgen Structures or ase.Atoms."""
    from crystalprop.io.readers import validate_structure  # noqa: PLC0415

    for name, structure in structures:
        if _is_atoms(structure):
            from crystalprop.io.ase_reader import atoms_to_structure, reduced_formula  # noqa: PLC0415

            try:
                structure = atoms_to_structure(structure)
            except ValueError as exc:
                yield Prepared(name, name, formula=reduced_formula(structure), n_sites=len(structure), error=str(exc))
                continue
        try:
            notes = validate_structure(structure)
        except ValueError as exc:
            yield Prepared(name, name, formula=crystal_formula(structure.composition), n_sites=len(structure),
                           error=str(exc))
            continue
        yield _prepare_structure(name, name, structure, settings, notes)


def _is_atoms(item: Any) -> bool:
    """Whether ``item`` is an ase.Atoms, without importing ASE (1-2 s) here."""
    module = sys.modules.get("ase.atoms")
    return module is not None and isinstance(item, module.Atoms)


def _is_structure(item: Any) -> bool:
    """Whether ``item`` is a pymatgen Structure or an ase.Atoms, without importing pymatgen (0.5 s) here.

    A caller holding a Structure has imported pymatgen already; the prediction process
    itself only hands paths to the readers.
    """
    module = sys.modules.get("pymatgen.core.structure")
    return (module is not None and isinstance(item, module.IStructure)) or _is_atoms(item)  # Structure too


ID_KEYS = ("name", "material_id", "id")
"""Where an in-memory structure carries its name: keys of a pymatgen Structure's ``properties`` or an ase.Atoms'
``info`` (as Materials Project and ASE databases fill them), after a ``name`` attribute."""


def _item_name(item: Any, k: int) -> str:
    """A Structure's or Atoms' row name: its ``name`` attribute, else the first id it carries (:data:`ID_KEYS`),
    else ``structure<k>`` (its place among the inputs)."""
    if getattr(item, "name", None):
        return str(item.name)
    carried = getattr(item, "properties", None) or getattr(item, "info", None) or {}
    for key in ID_KEYS:
        value = carried.get(key) if isinstance(carried, dict) else None
        if isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return f"structure{k}"


def _iter_inputs(inputs: Sequence[Any], recursive: bool) -> Iterator[Any]:
    """Files (expanded from folders and globs) and named Structures or Atoms, in the order given;
    a file given twice (by name and in its folder, say) once, where it first comes: one row per file."""
    seen: set[str] = set()  # the files read so far, across the inputs (iter_structure_paths)
    for k, item in enumerate(inputs):
        if _is_structure(item):
            yield (_item_name(item, k), item)
        else:
            yield from iter_structure_paths([os.fspath(item)], recursive, seen)


def resumed_names(done: Sequence[dict], inputs: Sequence[Any], recursive: bool) -> set[str]:
    """The names of the ``done`` rows of a resumed output as this run names them, to skip: each as written, and
    where the file at its position (``index``) is now given under another path (another working directory, a
    node-local copy elsewhere: inputs of the same names, as ``--resume`` checks) with the same file name, under
    that path too (the row's ``source`` replaced by it), so that no structure is predicted and written twice."""
    names = {row["name"] for row in done}
    files = list(_iter_inputs(inputs, recursive))  # by position, as ``index`` counts them
    for row in done:
        index, name, source = row.get("index"), row["name"], row.get("source") or ""
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if not (isinstance(index, int) and 0 <= index < len(files) and isinstance(files[index], str) and source
                and name.startswith(source)):
            continue
        now = printable(files[index])
        if now != source and os.path.basename(now) == os.path.basename(source):
            names.add(now + name[len(source):])
    return names


def _import_readers() -> None:
    """Worker start-up: import the parsers (pymatgen, 0.5-1 s), spglib (canonical cells, 0.15 s) and scipy's
    k-d tree (neighbour search, 0.3 s), and load the compiled neighbour search (built on a machine's first
    run, 1-2 s), at once, not at the first file, so that this overlaps the parent's MindSpore import and
    model loading."""
    importlib.import_module("crystalprop.io.readers")
    importlib.import_module("spglib")
    importlib.import_module("scipy.spatial")
    importlib.import_module("crystalprop.graph.sphere_kernel").library()


class ReadAhead:
    """Inputs read and turned into graphs by worker processes that start at construction.

    Creating one before importing MindSpore and loading the models lets the two overlap;
    iterating gives the prepared structures in input order. At most MAX_PENDING inputs are read
    ahead of the consumer, so memory stays flat however long the input list. A reader process
    that dies (or overruns twice ``timeout`` and is stopped) costs only the input it was on,
    which gets a failed row; a new process takes over. ``workers`` 0 reads in this process,
    lazily. ``skip``: names already done (``--resume``). ``shard`` (i, n): only inputs whose
    position k in the input stream has k % n == i - 1, so n jobs split a list without overlap.
    """

    def __init__(self, inputs: Sequence[Any], settings: GraphSettings, *, recursive: bool = False,
                 workers: int | None = None, timeout: float = READ_TIMEOUT_S, skip: set[str] | None = None,
                 shard: tuple[int, int] = (1, 1)) -> None:
        part, parts = shard
        self.settings = settings
        self._skip = skip or set()
        jobs = ((k, item, settings, timeout) for k, item in enumerate(_iter_inputs(inputs, recursive))
                if k % parts == part - 1 and (not isinstance(item, str) or printable(item) not in self._skip))
        workers = workers if workers is not None else _reader_processes()
        self._pool: ResilientPool | None = None
        if workers > 0:
            hard_limit = 2 * timeout + HARD_LIMIT_GRACE_S if timeout > 0 else None
            self._pool = ResilientPool(prepare_input, jobs, workers, on_lost=_lost_input, initializer=_import_readers,
                                       max_pending=MAX_PENDING, hard_limit=hard_limit, env=READER_ENV)
            self._results: Iterator[list[Prepared]] = iter(self._pool)
        else:
            self._results = _prepare_in_process(jobs)

    def __iter__(self) -> Iterator[Prepared]:
        try:
            for items in self._results:
                yield from (item for item in items if printable(item.name) not in self._skip)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers; safe to call more than once."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _prepare_in_process(jobs: Iterator[tuple[int, Any, GraphSettings, float]]) -> Iterator[list[Prepared]]:
    """``prepare_input`` of each job in this process, the readers' start-up done first: a machine's
    first run builds the compiled search, which must not count against the first input's time limit."""
    _import_readers()
    for job in jobs:
        yield prepare_input(job)


def _reader_processes() -> int:
    """The default number of reader processes: one per core this process may run on (its CPU affinity,
    so a 1-CPU cluster allocation on a big node starts one), up to MAX_READERS."""
    from crystalprop.utils.backend import usable_cores  # noqa: PLC0415  (lazy, as the module's other uses)

    return min(usable_cores(), MAX_READERS)


def _lost_input(job: tuple[int, Any, GraphSettings, float], reason: str) -> list[Prepared]:
    """The failed row of an input whose reader process died on it (or failed unexpectedly)."""
    index, item, _, _ = job
    name = item[0] if isinstance(item, tuple) else item
    return [Prepared(name, name, index=index, error=reason)]


def iter_prepared(
    inputs: Sequence[Any], settings: GraphSettings, *, recursive: bool = False, workers: int | None = None,
    timeout: float = READ_TIMEOUT_S, skip: set[str] | None = None, shard: tuple[int, int] = (1, 1),
) -> Iterator[Prepared]:
    """Prepared structures in input order (see :class:`ReadAhead`)."""
    yield from ReadAhead(inputs, settings, recursive=recursive, workers=workers, timeout=timeout, skip=skip,
                         shard=shard)


def choose_engine(device: str, engine: str | None = None) -> str:
    """The inference engine for ``device``: ``numpy`` (:mod:`crystalprop.model.numpy_stacked`, no
    MindSpore import, 1.3-2 s less start-up) on CPU where the fused kernels can be built, else
    ``mindspore``; ``engine`` other than auto insists on one (numpy only on CPU)."""
    from crystalprop.model import kernel_library  # noqa: PLC0415

    engine = (engine or "auto").lower()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    on_cpu = device.upper() == "CPU"
    if engine == "numpy" and not on_cpu:
        raise ValueError(f"the numpy engine runs on the CPU only, not on {device}")
    if engine == "auto":
        return "numpy" if on_cpu and kernel_library.loaded() is not None else "mindspore"
    return engine


LEADING_COLUMNS = ("index", "name", "source", "formula", "n_sites")
TRAILING_COLUMNS = ("error", "warning")
"""The result columns every row has, before and after the models' own (:func:`_value_columns`)."""


def _value_columns(label: str, card: ModelCard) -> list[str]:
    """One model's result columns, all in its unit: the value, σ for an ensemble, the 95 % half-width
    where the card stores ``interval95``."""
    return ([label] + ([f"{label}_std"] if card.ensemble else [])
            + ([f"{label}_err95"] if (card.ensemble or {}).get("interval95") else []))


def _how_to_rename(label: str, path: Path) -> str:
    """Advice for giving a model another label: its label is its file's name, or its run folder's."""
    if Path(path).stem != label:  # a run directory: the label is the folder's name
        return f"rename the folder {Path(path).parent} (or copy its best.ckpt to a file of another name)"
    return "rename the file (or copy it to one of another name)"


def _label_origin(label: str, path: Path) -> str:
    """Where a model's label comes from, in words."""
    return "file name" if Path(path).stem == label else "run folder's name"


def check_column_clashes(models: Sequence[tuple[str, Path, Any]]) -> None:
    """Refuse models (label, checkpoint path, card) whose result columns would clash with a fixed column
    (index, name, formula, error, ...) or with another model's: a row is a dict by column, so the second
    would overwrite the first (a formula replaced by a number, a prediction lost in the warning column)."""
    owners: dict[str, tuple[str, Path] | None] = {column: None for column in LEADING_COLUMNS + TRAILING_COLUMNS}
    for label, path, card in models:
        for column in _value_columns(label, card):
            if column not in owners:
                owners[column] = (label, path)
                continue
            owner = owners[column]
            what = "the model's name" if column == label else f"its column {column!r}"
            if owner is None:
                raise ValueError(f"{path}: {what} ({label!r}, from its {_label_origin(label, path)}) would be the "
                                 f"result column {column!r}, a fixed column of every result; "
                                 f"{_how_to_rename(label, path)} so that its name differs")
            raise ValueError(f"{path}: {what} ({label!r}) would be the result column {column!r}, which the model "
                             f"{owner[0]!r} ({owner[1]}) writes too; {_how_to_rename(label, path)} so that the "
                             "columns differ")


def _drop_sigma(row: dict, label: str) -> None:
    """Leave model ``label``'s σ and 95 % interval empty in ``row`` (where it has them): no error bar."""
    for column in (f"{label}_std", f"{label}_err95"):
        if column in row:
            row[column] = None


class Predictor:
    """One or more loaded models that predict together from shared graphs.

    Every member of every model of the same configuration is evaluated by one stacked network
    (:mod:`crystalprop.model.stacked` in MindSpore, or :mod:`crystalprop.model.numpy_stacked`),
    built once: one forward pass per batch gives all their outputs, which are then split per model.
    ``cell``: ``canonical`` or ``as-given`` for every model; None: each model's own setting.
    ``engine``: see :func:`choose_engine`.
    """

    def __init__(self, models: Sequence[str] | str | None = None, device: str = "CPU", cell: str | None = None,
                 engine: str | None = None) -> None:
        from crystalprop.model.checkpoint import on_one_graph, read_checkpoint  # noqa: PLC0415
        from crystalprop.model.ensemble import member_params  # noqa: PLC0415
        from crystalprop.model.latent_sigma import stored_reference  # noqa: PLC0415
        from crystalprop.model.registry import available_models, checkpoints_dir, model_names, resolve_model  # noqa: PLC0415

        if cell is not None:
            check_cell_choice(cell)
        self.engine = choose_engine(device, engine)
        if self.engine == "mindspore":
            from crystalprop.utils.backend import prefer_compiled_protobuf, set_device  # noqa: PLC0415  (lazy: MindSpore)

            prefer_compiled_protobuf()  # before the model code imports MindSpore
            set_device(device)
        names = available_models() if models is None else model_names(models)
        if models is None and not names:
            raise ValueError(f"no model given and no shipped model found in {checkpoints_dir()}")
        if not names:
            raise ValueError(f"an empty model name ({models!r}); give None for every shipped model")
        resolved = [resolve_model(name) for name in names]
        labels = [label for label, _ in resolved]
        files = [Path(path).resolve() for _, path in resolved]
        repeated = next((path for k, path in enumerate(files) if path in files[:k]), None)
        if repeated is not None:
            raise ValueError(f"the model {repeated} is given twice: give each model once")
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            paths = ", ".join(str(path) for label, path in resolved if label == twice[0])
            raise ValueError(f"two models would both be called {twice[0]!r} ({paths}): their columns would "
                             "collide; give their run folders (-m runs/a -m runs/b) or copy or rename one so that the "
                             "names differ")
        loaded = [(label, path, *read_checkpoint(path, arrays=True)) for label, path in resolved]
        check_column_clashes([(label, path, card) for label, path, card, _ in loaded])
        models = on_one_graph([(card, params) for *_, card, params in loaded])
        loaded = [(label, path, *model) for (label, path, *_), model in zip(loaded, models, strict=True)]
        self.device = device
        self.sources: list[tuple[str, Path]] = [(label, path) for label, path, *_ in loaded]
        configs = [json.dumps(card.model.as_dict()) for _, _, card, _ in loaded]
        members = [member_params(card, params) for _, _, card, params in loaded]
        self.references = {label: stored_reference(card, params, path) for label, path, card, params in loaded}
        groups = {config: [i for i, c in enumerate(configs) if c == config] for config in configs}
        readout = {config: any(self.references[loaded[i][0]] is not None for i in group)
                   for config, group in groups.items()}
        from crystalprop.model.folded import stack_members  # noqa: PLC0415

        # per configuration: its distinct networks (one stacked network runs them) and each model's rows
        stacks = {config: stack_members(loaded[group[0]][2].model, [(members[i], loaded[i][1]) for i in group])
                  for config, group in groups.items()}
        if self.engine == "mindspore":
            from crystalprop.model.compile_cache import enable_compile_cache  # noqa: PLC0415

            # a stacked graph holds its member count and outputs: a cached graph of others must never load
            enable_compile_cache("predict", device, *sorted(
                f"{config} stacked members: {len(stacks[config][0])}, readout: {readout[config]}" for config in groups))
        placed: dict[int, tuple[Any, list[int]]] = {}  # model -> (its stacked network, its rows of the (K, B) output)
        for config, group in groups.items():
            arrays, rows = stacks[config]
            net = self._stacked(loaded[group[0]][2].model, arrays, readout[config])
            placed.update({i: (net, model_rows) for i, model_rows in zip(group, rows)})
        self.models: list[tuple[str, Any, Any, list[int]]] = [  # (label, network, card, rows)
            (label, placed[i][0], card, placed[i][1]) for i, (label, _, card, _) in enumerate(loaded)]
        settings = {card.graph if cell is None else replace(card.graph, cell=cell)
                    for _, _, card, _ in self.models}
        if len(settings) != 1:
            if len({replace(s, cell=CANONICAL) for s in settings}) == 1:
                raise ValueError("these models were trained on different cells (canonical and as-given): give "
                                 "--cell canonical or --cell as-given to predict with them together")
            described = "; ".join(f"{label}: {card.graph.as_dict()}" for label, _, card, _ in self.models)
            raise ValueError(f"these models use different graph settings ({described}); predict with them "
                             "separately")
        self.settings: GraphSettings = settings.pop()
        self.known_elements = {label: set(card.elements) for label, _, card, _ in self.models}
        self._compiled = False

    def _stacked(self, config, arrays: list[dict[str, np.ndarray]], readout: bool):
        """The stacked network of the members ``arrays`` (of one configuration, checked:
        :func:`crystalprop.model.folded.stack_members`) in this predictor's engine."""
        if self.engine == "numpy":
            from crystalprop.utils.backend import cpu_threads  # noqa: PLC0415
            from crystalprop.model.numpy_stacked import NumpyStackedMatformer  # noqa: PLC0415

            return NumpyStackedMatformer(config, arrays, readout=readout, threads=cpu_threads())
        from crystalprop.model.stacked import stacked_network  # noqa: PLC0415

        return stacked_network(config, arrays, readout=readout)

    def compile(self) -> None:
        """Compile (or load from MindSpore's compile cache) every model's graph, once; nothing to do
        for the numpy engine.

        Called while the reader processes start, so that the two overlap; any later batch
        reuses the graph, whatever its shape.
        """
        if self._compiled or self.engine == "numpy":
            return
        from crystalprop.utils.backend import first_compile  # noqa: PLC0415

        # any graph will do: the compiled graph takes every shape; one Fe atom, two edges
        probe = CrystalGraph(np.array([26], np.int16), np.zeros(2, np.int32), np.zeros(2, np.int32),
                             np.array([2.5, 2.9], np.float32),
                             site=np.zeros((1, N_SITE), np.float32) if self.settings.site_features else None)
        first_compile(lambda: self.predict_prepared([Prepared("probe", "probe", graph=probe)]))
        self._compiled = True

    def provenance(self, shard: tuple[int, int] = (1, 1), inputs: dict | None = None) -> dict:
        """Where this predictor's results come from: versions, each model's weights (sha256), cells, engine,
        the ``shard`` of the input they cover and that input (``inputs``:
        :func:`crystalprop.io.provenance.input_record`)."""
        from crystalprop.io.provenance import provenance  # noqa: PLC0415

        return provenance(self.sources, cell=self.settings.cell, device=self.device, engine=self.engine, shard=shard,
                          inputs=inputs,
                          targets={label: card.target for label, _, card, _ in self.models},
                          units={column: card.unit for label, _, card, _ in self.models
                                 for column in _value_columns(label, card)})

    @property
    def value_columns(self) -> list[str]:
        """Result columns: each model's label, followed by ``<label>_std`` for an ensemble and
        ``<label>_err95`` (the half-width of its 95 % interval) where its card stores ``interval95``."""
        return [column for label, _, card, _ in self.models for column in _value_columns(label, card)]

    @property
    def result_columns(self) -> list[str]:
        """Every column of a result row, in order: :data:`LEADING_COLUMNS`, the value columns,
        :data:`TRAILING_COLUMNS`."""
        return [*LEADING_COLUMNS, *self.value_columns, *TRAILING_COLUMNS]

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(model label, unit) per output column."""
        return [(label, card.unit) for label, _, card, _ in self.models]

    def predict_prepared(self, batch: list[Prepared]) -> list[dict]:
        """Rows for a batch of prepared structures."""
        from crystalprop.graph.batch import collate  # noqa: PLC0415
        from crystalprop.model.ensemble import ensemble_output, one_element  # noqa: PLC0415
        from crystalprop.model.inference import batch_tensors, forward_members  # noqa: PLC0415

        good = [p for p in batch if p.graph is not None]
        values: dict[str, np.ndarray] = {}
        far: dict[str, np.ndarray] = {}  # model -> structures beyond its latent σ's range
        if good:
            graphs = collate([p.graph for p in good])
            inputs = graphs.arrays() if self.engine == "numpy" else batch_tensors(graphs)
            elemental = one_element([p.graph for p in good])
            # network -> its (K, B) output and (K, B, F) readout features (or None), one forward pass each
            outputs: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
            for label, net, card, rows in self.models:
                if id(net) not in outputs:
                    outputs[id(net)] = net(*inputs) if self.engine == "numpy" else forward_members(net, inputs)
                out, features = outputs[id(net)]
                reference = self.references[label]
                combined = ensemble_output(card, out[rows], features[rows[0]] if reference else None, reference,
                                           elemental)
                values[label] = combined.value
                if combined.std is not None:
                    values[f"{label}_std"] = combined.std
                    if card.ensemble.get("interval95"):
                        values[f"{label}_err95"] = combined.std * card.ensemble["interval95"]
                if combined.far is not None:
                    far[label] = combined.far
        rows, k = [], 0
        for item in batch:
            row = {column: getattr(item, column) for column in LEADING_COLUMNS}
            notes = list(item.warnings)
            for label in self.value_columns:
                row[label] = float(values[label][k]) if item.graph is not None else None
            unseen_by: dict[tuple[str, ...], list[str]] = {}  # the models that lack the same elements, together
            for label, _, card, _ in self.models:
                unseen = self._unseen_elements(label, item)
                if unseen:
                    unseen_by.setdefault(tuple(unseen), []).append(label)
                    _drop_sigma(row, label)  # σ was calibrated on known elements only
            why = ("σ was calibrated on bulk crystals" if item.out_of_domain
                   else "σ was calibrated on relaxed crystals, whose atoms are not so close" if item.close_atoms else None)
            if why:
                bare = [label for label, *_ in self.models if row.get(f"{label}_std") is not None]
                for label in bare:
                    _drop_sigma(row, label)
                if bare:
                    notes.append(f"{', '.join(bare)}: no error bar ({why})")
            beyond = [label for label in far
                      if item.graph is not None and far[label][k] and row.get(f"{label}_std") is not None]
            for label in beyond:  # σ is not known there (crystalprop.model.latent_sigma)
                _drop_sigma(row, label)
            if beyond:
                its = "its" if len(beyond) == 1 else "their"
                notes.append(f"{', '.join(beyond)}: unlike the crystals {its} σ was calibrated on (farther from {its} "
                             "training crystals than any of them); no error bar")
            for unseen, labels in unseen_by.items():
                with_sigma = [label for label in labels if f"{label}_std" in row]  # single models have none anyway
                notes.append(f"{', '.join(labels)}: element(s) {', '.join(unseen)} absent from "
                             f"{'its' if len(labels) == 1 else 'their'} training data"
                             + ("" if not with_sigma else "; no error bar" if len(with_sigma) == len(labels)
                                else f"; no error bar for {', '.join(with_sigma)}"))
            if item.graph is not None:
                k += 1
            row["error"] = item.error or ""
            row["warning"] = "; ".join(notes)
            for column in ("name", "source", "error", "warning"):  # a file name's bytes that are not UTF-8, escaped
                if isinstance(row[column], str):
                    row[column] = printable(row[column])
            rows.append(row)
        return rows

    def _unseen_elements(self, label: str, item: Prepared) -> list[str]:
        return [] if item.graph is None else absent_elements(item.graph.atomic_numbers, self.known_elements[label])

    def batch_limits(self, batch_size: int = BATCH_SIZE, batch_memory: int = BATCH_MEMORY_BYTES) -> BatchLimits:
        """At most ``batch_size`` structures, and as many atoms and edges as the largest of these
        stacked networks can take in a forward pass within about ``batch_memory`` bytes (each of
        its members as much as one model)."""
        limits = [net.batch_limits(batch_size, batch_memory) for _, net, _, _ in self.models]
        return min(limits, key=lambda limit: limit.edges)

    def iter_rows(self, inputs: Sequence[Any] | ReadAhead, *, batch_size: int = BATCH_SIZE, recursive: bool = False,
                  workers: int | None = None, timeout: float = READ_TIMEOUT_S,
                  skip: set[str] | None = None, shard: tuple[int, int] = (1, 1),
                  batch_memory: int = BATCH_MEMORY_BYTES) -> Iterator[list[dict]]:
        """Rows batch by batch, in input order; batches are bounded by :meth:`batch_limits`.

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
        for batch in batches_within(prepared, self.batch_limits(batch_size, batch_memory), lambda item: item.graph):
            yield self.predict_prepared(batch)


FEW_FILES = 4  # this many files or in-memory structures are read in the calling process


def auto_workers(inputs: Sequence[Any]) -> int:
    """Reader processes for ``inputs``: none for a few files or structures (starting processes
    costs more than it saves), else one per core up to 4."""
    few = len(inputs) <= FEW_FILES and all(_is_structure(item) or os.path.isfile(item) for item in inputs)
    return 0 if few else _reader_processes()


_LOADED: dict[tuple, Predictor] = {}  # the models of the last predict() call, while their files are unchanged


def _loaded_key(model: Sequence[str] | str | None, device: str, cell: str | None, engine: str | None) -> tuple:
    """What identifies loaded models: each file's path, size, modification and change times and inode (a copy
    that keeps the old modification time, as ``cp -p`` or ``rsync -a`` make, changes the others), the device,
    the cells, the engine."""
    from crystalprop.model.registry import available_models, model_names, resolve_model  # noqa: PLC0415

    names = available_models() if model is None else model_names(model)
    files = []
    for name in names:
        label, path = resolve_model(name)
        stat = path.stat()
        files.append((label, str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
    return tuple(files), device.upper(), cell, engine


def open_prediction(inputs: Sequence[Any], model: Sequence[str] | str | None = None, device: str = "CPU",
                    cell: str | None = None, *, engine: str | None = None, reuse: bool = False,
                    **reading: Any) -> tuple[Predictor, ReadAhead]:
    """Loaded models and their inputs being read, the reading started first so that the two overlap.

    The readers start with the shipped models' graph settings before the models load (and
    MindSpore is imported, 1-2 s, for that engine); models built with other settings have the
    inputs read again. ``reading``: the arguments of :class:`ReadAhead` (``workers`` None:
    :func:`auto_workers`). ``reuse``: take the models of the previous call with the same files,
    device, cells and engine, if any.
    """
    reading["workers"] = auto_workers(inputs) if reading.get("workers") is None else reading["workers"]
    key = _loaded_key(model, device, cell, engine) if reuse and _LOADED else None
    predictor = _LOADED.get(key)
    reader = ReadAhead(inputs, predictor.settings if predictor else GraphSettings(cell=cell or GraphSettings.cell),
                       **reading)
    try:
        if predictor is None:
            key = key or (_loaded_key(model, device, cell, engine) if reuse else None)
            predictor = Predictor(model, device, cell, engine)
            if reuse:
                _LOADED.clear()
                _LOADED[key] = predictor
    except BaseException:
        reader.close()
        raise
    if predictor.settings != reader.settings:  # a user model built with other settings: read again
        reader.close()
        reader = ReadAhead(inputs, predictor.settings, **reading)
    return predictor, reader


def predict(
    inputs: Any,
    model: Sequence[str] | str | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    device: str = "CPU",
    recursive: bool = False,
    workers: int | None = None,
    batch_memory: int = BATCH_MEMORY_BYTES,
    cell: str | None = None,
    engine: str | None = None,
    timeout: float = READ_TIMEOUT_S,
) -> list[dict]:
    """Predict every property of every structure in ``inputs``.

    ``inputs``: a path, folder, glob, pymatgen Structure, ase.Atoms, or a list of them. ``model``: a
    shipped model name, a ``.ckpt`` path, several of them in a list or separated by commas, or None for
    all shipped models.
    A batch holds at most ``batch_size`` structures and as many atoms and edges as the
    models take within about ``batch_memory`` bytes (see :meth:`Predictor.batch_limits`).
    ``workers``: reader processes that read files and build graphs while the models run
    (None: none for up to 4 files or structures, else one per core up to 4; 0: read here).
    ``cell``: ``canonical`` (reduce each structure to its Niggli-reduced primitive cell) or
    ``as-given``; None uses the models' own setting (``canonical`` for the shipped ones).
    ``engine``: ``auto`` (None), ``numpy`` or ``mindspore`` (:func:`choose_engine`).
    ``timeout``: seconds to prepare one structure (read, check, find its neighbours; 0: no limit), as
    ``--timeout``: a structure over it gets a row with an error.
    The models stay loaded for the next call with the same models (until a file changes).
    Returns one dict per structure: index (position of its file in the input stream),
    name, source, formula, n_sites, one value per model (physical units, with
    ``<name>_std`` for an ensemble), error and warning.
    """
    for name, value, least in (("batch_size", batch_size, 1), ("batch_memory", batch_memory, 1),
                               ("workers", 0 if workers is None else workers, 0)):
        check_whole_number(name, value, least)
    check_seconds("timeout", timeout)
    if isinstance(inputs, (str, os.PathLike)) or _is_structure(inputs):
        inputs = [inputs]
    if inputs is None or isinstance(inputs, (bytes, dict)):
        raise TypeError(f"inputs: a {type(inputs).__name__} is not a path, folder, glob, pymatgen Structure or "
                        "ase.Atoms, nor a list of them")
    inputs = list(inputs)
    for k, item in enumerate(inputs):
        if not (isinstance(item, (str, os.PathLike)) or _is_structure(item)):
            kind = type(item).__name__
            what = ("a Molecule: crystalprop predicts periodic crystals" if kind in ("Molecule", "IMolecule")
                    else f"a {kind}, not a path, folder, glob, pymatgen Structure or ase.Atoms")
            raise TypeError(f"input {k}: {what}")
    if inputs and all(isinstance(x, (str, os.PathLike)) for x in inputs):
        nothing_to_read = no_structures_found([str(x) for x in inputs], recursive)
        if nothing_to_read:
            raise ValueError(nothing_to_read)
    predictor, reader = open_prediction(inputs, model, device, cell, engine=engine, reuse=True,
                                        recursive=recursive, workers=workers, timeout=timeout)
    return [row for rows in predictor.iter_rows(reader, batch_size=batch_size, batch_memory=batch_memory)
            for row in rows]
