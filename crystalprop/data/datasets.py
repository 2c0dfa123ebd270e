"""Read labelled data sets in the layouts people already have.

Supported:
* JSON / JSON Lines (optionally gzip): records with ``id``, ``structure`` (pymatgen dict,
  JARVIS atoms dict, or CIF/POSCAR text) and numeric properties.
* A folder with structure files and a table: CGCNN's ``id_prop.csv`` (no header: id,
  value) or a CSV with a header row (``properties.csv`` or any single ``*.csv``).
* A CSV file whose structure text is in a column (``structure_column``).
* An extended XYZ (optionally gzip) whose frames carry their labels (ASE's ``info`` and calculator results).

Splits come from ``split.json`` beside the data, a ``split`` column, or random fractions.
Bad records are skipped with a one-line reason each, never fatal.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import random
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystalprop.data import TEST_FRACTION, VAL_FRACTION, check_fold
from crystalprop.data.fingerprints import merge_fingerprints
from crystalprop.io.formats import STRUCTURE_SUFFIXES, format_from_name, looks_like_structure_name, structure_stem
from crystalprop.io.result_files import is_own_output

SPLITS = ("train", "val", "test")
SPLIT_SPELLINGS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                   "dev": "val", "test": "test", "testing": "test"}
"""The names a split column or split.json may give a split (any letter case), and the split each means."""


def split_name(value: Any) -> str | None:
    """The split a split column's cell or split.json's key names (:data:`SPLIT_SPELLINGS`), or None."""
    return SPLIT_SPELLINGS.get(str(value).strip().lower()) if value is not None else None


class DatasetError(ValueError):
    """The data set as a whole cannot be used (no records, duplicated ids, unknown layout)."""


@dataclass
class Entry:
    """One labelled crystal: the structure is a file path, a dict, or structure text."""

    id: str
    target: float
    source: Any
    split: str | None = None


@dataclass
class Dataset:
    """Entries plus the records that were skipped and why."""

    entries: list[Entry]
    target: str
    origin: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_source: str = ""
    split_column: list[tuple[str, Any]] | None = None
    """(id, cell) of each entry whose split column names no split; None where the records have no split column."""
    positional_ids: int = 0
    """Entries without an id of their own, named ``row<N>`` after their position in the data."""
    notes: list[str] = field(default_factory=list)
    """What a user should know about how the data was read (split.json ids that match no record)."""
    skipped_splits: dict[str, str | None] | None = None
    """The split split.json or the split column names for each skipped record (None where the column names
    none); None where the split is random."""
    unnamed_labels: str = ""
    """The table whose label column has no name (a header-less ``id_prop.csv``), so that the labels were given
    the name asked for (``target``) unseen; "" where the data names them."""

    def split(self, name: str) -> list[Entry]:
        """Entries of one split."""
        return [e for e in self.entries if e.split == name]


def _numeric(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN / inf values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_text(path: Path) -> str:
    """Plain or gzip text, through the readers' size limits (as for structure files, with the
    data-set limit); a BOM is dropped."""
    from crystalprop.io.limits import MAX_DATASET_BYTES  # noqa: PLC0415
    from crystalprop.io.readers import StructureReadError, read_bytes  # noqa: PLC0415  (pymatgen)

    try:
        data = read_bytes(str(path), MAX_DATASET_BYTES)
    except StructureReadError as exc:
        raise DatasetError(str(exc)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


REPEAT_ADVICE = "(only one would be read): rename or drop one"
"""How a refusal of a name given twice (a table's column, a JSON object's key) ends."""


class _RepeatedKeys:
    """A JSON ``object_pairs_hook`` that builds each object as a dict (as JSON does, keeping the last value
    of a repeated key) and keeps, by ``id``, those that name a key twice, with that key."""

    def __init__(self) -> None:
        self.found: dict[int, tuple[dict, str]] = {}  # the dict is kept so that its id stays its own

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict:
        built = dict(pairs)
        if len(built) < len(pairs):
            key = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
            self.found[id(built)] = (built, key)
        return built


def _repeated_key_within(value: Any, found: dict[int, tuple[dict, str]]) -> str | None:
    """The key that ``value`` (a JSON value) or an object within it names twice (``found`` by
    :class:`_RepeatedKeys`), or None."""
    if isinstance(value, dict):
        if id(value) in found:
            return found[id(value)][1]
        inner = list(value.values())
    else:
        inner = value if isinstance(value, list) else []
    return next((k for k in (_repeated_key_within(v, found) for v in inner) if k is not None), None)


def _refuse_repeated_keys(path: Path, records: list[dict], found: dict[int, tuple[dict, str]]) -> None:
    """Refuse JSON data with an object that names a key twice, naming the record that holds it: JSON keeps
    the last value without a word, which may be another quantity than the one meant."""
    if not found:
        return
    for number, record in enumerate(records, start=1):
        if id(record) in found:
            raise DatasetError(f"{path}: record {number} names the key {found[id(record)][1]!r} twice {REPEAT_ADVICE}")
        key = _repeated_key_within(record, found)
        if key is not None:
            raise DatasetError(f"{path}: record {number} holds an object naming the key {key!r} twice {REPEAT_ADVICE}")
    key = next(iter(found.values()))[1]  # outside the records: the object around them
    raise DatasetError(f"{path}: an object names the key {key!r} twice {REPEAT_ADVICE}")


def _json_records(path: Path) -> list[dict]:
    """Records from a JSON list, a dict of lists, one record, or JSON Lines
    (:func:`crystalprop.io.readers.json_records`, as predict reads them); each must be an object, and
    no object may name a key twice."""
    from crystalprop.io.readers import InvalidJsonLine, json_records  # noqa: PLC0415  (pymatgen)

    repeated = _RepeatedKeys()
    try:
        data = json_records(_read_text(path), repeated)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    records = data if isinstance(data, list) else [data]
    for number, record in enumerate(records, start=1):
        if isinstance(record, InvalidJsonLine):
            raise DatasetError(f"{path}: line {record.line} is not valid JSON ({record.error})")
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: record {number} is not a JSON object ({str(record)[:60]!r})")
    _refuse_repeated_keys(path, records, repeated.found)
    return records


def _choose_target(records: list[dict], target: str | None, exclude: set[str], origin: str,
                   kind: str = "field") -> str:
    """The requested target, which some record must have, or the only numeric field of the records.
    ``kind``: what the records' keys are called in messages (a table's are columns)."""
    if target:
        if not any(target in r for r in records):
            names = ", ".join(dict.fromkeys(k for r in records[:100] for k in r))
            where = "" if kind == "column" else " in any record"
            raise DatasetError(f"{origin}: no {kind} {target!r}{where} ({kind}s: {names or 'none'})")
        return target
    # numeric in any record, not only the first: a blank first cell must not hide a column
    numeric = list(dict.fromkeys(k for r in records[:1000] for k, v in r.items()
                                 if k not in exclude and _numeric(v) is not None))
    if len(numeric) != 1:
        raise DatasetError(f"{origin}: choose the target with --target (numeric fields: {', '.join(numeric) or 'none'})")
    return numeric[0]


def _split_key(rows: list[dict]) -> str | None:
    """The records' split column (``split`` in any letter case), or None."""
    return next((k for row in rows[:1000] for k in row if str(k).strip().lower() == "split"), None)


def _dataset_from_rows(rows: list[dict], target: str, id_key: str, source_of, table: str, origin: str) -> Dataset:
    """The data set (``origin``) of table rows (read from ``table``, named in errors): bad rows skipped with
    reasons, duplicated ids refused; a row without an id is named after its position (``row<N>``), and
    entries whose split column names no split are kept aside for :func:`assign_splits` to refuse."""
    entries, skipped, seen, duplicates = [], [], set(), set()
    split_key = _split_key(rows)
    unnamed: list[tuple[str, Any]] = []
    row_splits: dict[str, str | None] = {}
    positional = 0
    for number, row in enumerate(rows, start=1):
        value = row.get(id_key)
        rid = "" if value is None else str(value).strip()
        if not rid:
            rid, positional = f"row{number}", positional + 1
        if rid in seen:
            duplicates.add(rid)
            continue
        seen.add(rid)
        split = row_splits[rid] = split_name(row.get(split_key)) if split_key else None
        if target not in row:
            skipped.append((rid, f"no field {target!r}"))
            continue
        value = _numeric(row[target])
        if value is None:
            skipped.append((rid, f"target {target!r} is missing, non-numeric or not finite ({row[target]!r})"))
            continue
        try:
            source = source_of(rid, row)
        except LookupError as exc:
            skipped.append((rid, str(exc)))
            continue
        if split_key and split is None:
            unnamed.append((rid, row.get(split_key)))
        entries.append(Entry(rid, value, source, split))
    if duplicates:
        listed = ", ".join(sorted(duplicates)[:10])
        raise DatasetError(f"{table}: duplicated id(s): {listed}" + (" ..." if len(duplicates) > 10 else ""))
    return Dataset(entries, target, origin, skipped, split_column=unnamed if split_key else None,
                   positional_ids=positional,
                   skipped_splits={rid: row_splits[rid] for rid, _ in skipped} if split_key else None)


def _beside(value: Any, base: Path) -> Any:
    """A structure given as a relative file path, found beside the data file (``base``, its folder), as
    an absolute path: the data set reads the same from any working directory. Other values unchanged."""
    if isinstance(value, str) and "\n" not in value and not os.path.isabs(value) and os.path.isfile(base / value):
        return os.path.abspath(base / value)  # os.path.isfile: False, not OSError, for structure text of 1 line
    return value


LAYOUTS = ("training and evaluation read a folder of structure files with a label table (id_prop.csv or "
           "properties.csv), a JSON or JSON Lines list of records, a CSV with structure text, or an extended XYZ "
           "whose frames carry their labels")
"""The data layouts, for messages about a path that is none of them."""
ID_NAMES = ("id", "material_id", "jid")
"""The fields a JSON record's id is taken from, the first its first record has (unless --id-column names one)."""
TABLE_ID_NAMES = (*ID_NAMES, "mpid")
"""The columns a table with structure text takes its ids from, the first it has (unless --id-column names one)."""


def _read_json_dataset(path: Path, target: str | None, id_column: str | None = None) -> Dataset:
    records = _json_records(path)
    if not records:
        raise DatasetError(f"{path}: no records")
    if id_column is not None and not any(id_column in r for r in records):
        raise DatasetError(f"{path}: no field {id_column!r} for the ids in any record "
                           f"(fields: {', '.join(dict.fromkeys(k for r in records[:100] for k in r))})")
    id_key = id_column or next((k for k in ID_NAMES if k in records[0]), "id")
    structure_key = next((k for k in ("structure", "atoms", "cif", "poscar") if k in records[0]), None)
    if structure_key is None:
        raise DatasetError(f"{path}: records need a 'structure' (or 'atoms') field")
    target = _choose_target(records, target, {id_key, structure_key}, str(path))

    def source_of(rid: str, row: dict) -> Any:
        if not row.get(structure_key):
            raise LookupError("no structure")
        return _beside(row[structure_key], path.parent)

    return _dataset_from_rows(records, target, id_key, source_of, str(path), str(path))


def _read_frames_dataset(path: Path, target: str | None, id_column: str | None) -> Dataset:
    """An extended XYZ file whose frames carry their labels (:func:`crystalprop.io.ase_reader.labelled_frames`);
    a frame's id is its field ``--id-column`` names, else the first of :data:`ID_NAMES` it has, else
    ``NAME#i``, as ``predict`` names the frames."""
    from crystalprop.io.ase_reader import labelled_frames  # noqa: PLC0415  (ASE: optional)
    from crystalprop.io.readers import StructureReadError  # noqa: PLC0415

    try:
        frames = labelled_frames(_read_text(path), str(path))
    except StructureReadError as exc:
        raise DatasetError(str(exc)) from None
    id_key = id_column or next((k for k in ID_NAMES if any(k in fields for fields, _ in frames)), "id")
    names = [path.name] if len(frames) == 1 else [f"{path.name}#{i}" for i in range(len(frames))]  # as predict's
    records = [{id_key: name, **fields, "structure": text} for name, (fields, text) in zip(names, frames)]
    if id_column is not None and not any(id_column in fields for fields, _ in frames):
        raise DatasetError(f"{path}: no field {id_column!r} for the ids in any frame (fields: "
                           f"{', '.join(dict.fromkeys(k for fields, _ in frames[:100] for k in fields))})")
    target = _choose_target(records, target, {id_key, "structure"}, str(path))
    return _dataset_from_rows(records, target, id_key, lambda rid, row: row["structure"], str(path), str(path))


MISSING_WORDS = {"nan", "na", "n/a", "none", "null", "inf", "infinity", "missing"}
"""Cells that spell a missing or non-finite value, not a column name."""


def _is_column_name(cell: str) -> bool:
    """Whether a cell of a table's first row reads as a column name (a header), not as a value, even a
    missing one (blank, ``?``, ``nan``), which a header-less ``id_prop.csv`` may start with."""
    text = cell.strip()
    return bool(text) and (text[0].isalpha() or text[0] == "_") and text.lower() not in MISSING_WORDS


def _refuse_repeated_columns(header: list[str], path: Path) -> None:
    """Refuse a header that names a column twice: a row would keep the last of the two without a word (a
    band gap read as a formation energy). Blank names (a spreadsheet's trailing commas) may repeat."""
    repeated = next((name for name, n in Counter(header).items() if n > 1 and name), None)
    if repeated is not None:
        raise DatasetError(f"{path}: the header names the column {repeated!r} twice {REPEAT_ADVICE}")


def _refuse_other_separators(rows: list[list[str]], path: Path) -> None:
    """Refuse a table whose first cell holds semicolons or tabs: a spreadsheet's export in a locale with decimal
    commas, or a TSV, which read with commas gives its whole header as one id (and splits at decimal commas)."""
    found = next((name for mark, name in ((";", "semicolons"), ("\t", "tabs")) if mark in rows[0][0]), None)
    if found:
        raise DatasetError(f"{path}: its lines are separated by {found}, not commas: save the table as CSV "
                           "with commas between the columns and decimal points in the numbers")


def _read_table(path: Path, target: str | None = None) -> tuple[list[dict], bool]:
    """CSV rows as dicts; a header-less 2-column CGCNN ``id_prop.csv`` gets keys id, target. A first row
    naming the ``target`` is a header even where its names are numbers (temperatures, pressures)."""
    rows = list(csv.reader(io.StringIO(_read_text(path), newline="")))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise DatasetError(f"{path}: empty table")
    _refuse_other_separators(rows, path)
    cells = rows[0][1:]  # a header: no number after the id, and some name (blank cells and odd names allowed)
    has_header = ((not any(_numeric(c) is not None for c in cells) and any(_is_column_name(c) for c in cells))
                  or (bool(target) and target in (c.strip() for c in cells)))
    if has_header:
        header = [h.strip() for h in rows[0]]
        _refuse_repeated_columns(header, path)
        return [dict(zip(header, r)) for r in rows[1:]], True
    width = max(k + 1 for r in rows for k, cell in enumerate(r) if cell.strip())  # trailing blank cells: none
    if width > 2:
        raise DatasetError(f"{path}: {width} columns and a first row that reads as values, not names: if it is "
                           "the header, choose the label column by its name with --target (first row: "
                           f"{', '.join(c.strip() for c in rows[0])}); else add a header (e.g. id,band_gap,...)")
    return [{"id": r[0], "target": r[1] if len(r) > 1 else ""} for r in rows], False


def _check_id_column(rows: list[dict], id_column: str | None, table: Path) -> None:
    """Refuse an ``--id-column`` the table's header does not name (every record would lack an id)."""
    if id_column is not None and rows and id_column not in rows[0]:
        raise DatasetError(f"{table}: no column {id_column!r} for the ids (columns: {', '.join(rows[0])})")


def _structure_index(folder: Path) -> dict[str, list[Path]]:
    """Map structure-file stems (id) and names to the paths that have them, in the folder and its
    ``structures/`` and ``cifs/``: an id with two files is ambiguous, and skipped naming both."""
    index: dict[str, list[Path]] = {}
    for directory in (folder, folder / "structures", folder / "cifs"):
        if not directory.is_dir():
            continue
        for item in sorted(directory.iterdir()):
            name = item.name
            if not item.is_file() or not looks_like_structure_name(name) or is_own_output(item):
                continue
            index.setdefault(structure_stem(name), []).append(item)
            if name != structure_stem(name):
                index.setdefault(name, []).append(item)
    return index


def _row_id(row: dict, id_key: str) -> str:
    """A folder table row's id as the structure index is searched by: its text, stripped ('' for none)."""
    return str(row.get(id_key) or "").strip()


def _no_file_reason(rid: str, folder: Path) -> str:
    """Why a folder table's id ``rid`` has no structure: where its file was looked for, by which names."""
    return (f"no structure file named {rid} or {rid}{'/'.join(STRUCTURE_SUFFIXES)} in {folder}, "
            f"{folder}/structures/ or {folder}/cifs/")


def _id_column_hint(rows: list[dict], id_key: str, index: dict[str, list[Path]]) -> str:
    """An ``--id-column`` to try: the first other column whose cells name structure files, else the first
    named like an id (:data:`TABLE_ID_NAMES`); empty where there is none."""
    others = [k for k in rows[0] if k != id_key]
    naming = [k for k in others if any(str(row.get(k) or "").strip() in index for row in rows)]
    id_like = [k for k in others if k.strip().lower() in TABLE_ID_NAMES]
    chosen = next(iter(naming or id_like), None)
    return "" if chosen is None else f"; try --id-column {shlex.quote(chosen)}"


def _refuse_ids_naming_no_file(rows: list[dict], id_key: str, id_column: str | None, has_header: bool,
                               index: dict[str, list[Path]], folder: Path, table: Path) -> None:
    """Refuse a folder table none of whose ids names a structure file, saying which column the ids were read
    from (a table's first column, unless ``--id-column`` names one) and suggesting another: a table led by a
    pandas index or a formula column would otherwise fail with "no structure file named 0"."""
    ids = [_row_id(row, id_key) for row in rows]
    if not rows or any(rid in index for rid in ids):
        return
    where = (f"the column {id_key!r} (--id-column)" if id_column is not None
             else f"its first column, {id_key!r}" if has_header else "its first column")
    example = ids[0] or "row1"
    raise DatasetError(f"{table}: no row's id names a structure file (the ids are read from {where}; e.g. "
                       f"{example}: {_no_file_reason(example, folder)})"
                       + (_id_column_hint(rows, id_key, index) if has_header else ""))


def _refuse_ids_sharing_a_file(rows: list[dict], id_key: str, index: dict[str, list[Path]], folder: Path,
                               table: Path) -> None:
    """Refuse rows whose different ids name one structure file (``mp-1`` and ``mp-1.cif``), as duplicated ids
    are: one crystal with two labels, which a split may put in training and validation alike."""
    ids_of: dict[Path, list[str]] = {}
    for row in rows:
        rid = _row_id(row, id_key)
        paths = index.get(rid, [])
        if len(paths) == 1 and rid not in ids_of.setdefault(paths[0], []):
            ids_of[paths[0]].append(rid)
    shared = [(path, ids) for path, ids in ids_of.items() if len(ids) > 1]
    if shared:
        listed = ", ".join(f"{', '.join(ids[:-1])} and {ids[-1]} ({path.relative_to(folder)})"
                           for path, ids in shared[:5])
        raise DatasetError(f"{table}: {len(shared)} structure file(s) named by more than one id: {listed}"
                           + (", ..." if len(shared) > 5 else "") + "; keep one row for each")


LAYOUT_FILES = ("split.json", "atom_init.json")
"""JSON files of a data folder's layout (its split, CGCNN's element features), not structures."""


def _read_folder_dataset(folder: Path, target: str | None, id_column: str | None) -> Dataset:
    tables = [folder / n for n in ("id_prop.csv", "properties.csv") if (folder / n).is_file()]
    if len(tables) == 2:
        raise DatasetError(f"{folder}: two label tables, id_prop.csv and properties.csv: keep one in the folder")
    tables = tables or sorted(folder.glob("*.csv"))
    if len(tables) != 1:
        raise DatasetError(f"{folder}: expected id_prop.csv, properties.csv or a single .csv table")
    table = tables[0]
    rows, has_header = _read_table(table, target)
    if id_column is not None and not has_header:
        raise DatasetError(f"{table}: no header row, so no column is named {id_column!r}: its first column holds "
                           "the ids (leave out --id-column)")
    _check_id_column(rows, id_column, table)
    id_key = id_column or ("id" if not has_header else next(iter(rows[0])))
    if has_header:
        target = _choose_target(rows, target, {id_key, "split"}, str(table), "column")
    else:
        target = target or "target"
        rows = [{"id": r["id"], target: r["target"]} for r in rows]
    index = _structure_index(folder)
    _refuse_ids_naming_no_file(rows, id_key, id_column, has_header, index, folder, table)

    def source_of(rid: str, row: dict) -> str:
        paths = index.get(rid)
        if not paths:
            raise LookupError(_no_file_reason(rid, folder))
        if len(paths) > 1:
            raise LookupError(f"{len(paths)} structure files for this id: "
                              f"{', '.join(str(p.relative_to(folder)) for p in paths)}; keep one")
        return str(paths[0])

    dataset = _dataset_from_rows(rows, target, id_key, source_of, str(table), str(folder))
    dataset.unnamed_labels = "" if has_header else str(table)
    _refuse_ids_sharing_a_file(rows, id_key, index, folder, table)
    named = {str(p) for paths in (index.get(_row_id(row, id_key)) for row in rows) if paths for p in paths}
    unnamed = sorted({p for paths in index.values() for p in paths
                      if str(p) not in named and p.name not in LAYOUT_FILES})
    if unnamed:
        shown = ", ".join(str(p.relative_to(folder)) for p in unnamed[:3]) + (", ..." if len(unnamed) > 3 else "")
        dataset.notes.append(f"{folder}: {len(unnamed)} structure files named by no row of {table.name}, left out "
                             f"(e.g. {shown})")
    return dataset


def _read_csv_dataset(path: Path, target: str | None, id_column: str | None, structure_column: str) -> Dataset:
    rows, _ = _read_table(path, target)
    if structure_column not in rows[0]:
        raise DatasetError(f"{path}: no column {structure_column!r} (columns: {', '.join(rows[0])}): "
                           "--structure-column names the one that holds the structures")
    _check_id_column(rows, id_column, path)
    id_key = id_column or next((k for k in TABLE_ID_NAMES if k in rows[0]), "id")
    target = _choose_target(rows, target, {id_key, structure_column, "split"}, str(path), "column")

    def source_of(rid: str, row: dict) -> str:
        if not row[structure_column].strip():
            raise LookupError("empty structure column")
        return _beside(row[structure_column], path.parent)

    dataset = _dataset_from_rows(rows, target, id_key, source_of, str(path), str(path))
    if id_key not in rows[0]:  # named by their rows: say so, since train, evaluate and joining must agree on ids
        dataset.notes.append(f"{path}: no id column ({', '.join(TABLE_ID_NAMES)}), so the structures are named by "
                             "their row (row1, row2, ...); --id-column NAME takes a column's names (give it to "
                             "train, evaluate and ensemble alike)")
    return dataset


def read_split_file(path: Path) -> dict[str, str]:
    """split.json as id -> split: the keys of its id lists must name splits (:data:`SPLIT_SPELLINGS`; keys
    of other values, such as a seed, are notes), ids are stripped as the data's are, and an id listed in
    two splits is refused."""
    try:
        lists = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(lists, dict):
        lists = {key: ids for key, ids in lists.items() if isinstance(ids, list)}  # other values: notes, e.g. a seed
    if not isinstance(lists, dict) or not lists:
        raise DatasetError(f"{path}: expected an object of id lists, e.g. {{\"train\": [...], \"val\": [...]}}")
    unknown = [key for key in lists if split_name(key) is None]
    if unknown:
        raise DatasetError(f"{path}: {', '.join(map(repr, unknown))} names no split; use train, val and test")
    lookup: dict[str, str] = {}
    twice: dict[str, str] = {}
    for key, ids in lists.items():
        name = split_name(key)
        for rid in (str(i).strip() for i in ids):
            if lookup.setdefault(rid, name) != name:
                twice.setdefault(rid, f"{rid} ({lookup[rid]} and {name})")
    if twice:
        shown = ", ".join(list(twice.values())[:5])
        more = ", ..." if len(twice) > 5 else ""
        raise DatasetError(f"{path}: {len(twice)} id(s) listed in two splits: {shown}{more}")
    return lookup


def listed_split(lookup: dict[str, str], rid: str) -> str:
    """The split a split.json read as ``lookup`` puts record ``rid`` in: an id it does not list trains."""
    return lookup.get(rid, "train")


def assign_splits(dataset: Dataset, val_fraction: float, test_fraction: float, seed: int) -> None:
    """Use split.json beside the data, else a split column (which must name a split for every
    record), else seeded random fractions."""
    origin = Path(dataset.origin)
    split_file = (origin if origin.is_dir() else origin.parent) / "split.json"
    if split_file.is_file():
        lookup = read_split_file(split_file)
        if dataset.split_column is not None:
            _check_split_agreement(dataset, lookup, split_file)
        for entry in dataset.entries:
            entry.split = listed_split(lookup, entry.id)
        dataset.skipped_splits = {rid: listed_split(lookup, rid) for rid, _ in dataset.skipped}
        dataset.split_source = str(split_file)
        dataset.notes += _unmatched_split_ids(dataset, lookup, split_file)
        return
    if dataset.split_column:
        shown = ", ".join(f"{rid} ({'blank' if not str(cell or '').strip() else repr(cell)})"
                          for rid, cell in dataset.split_column[:5])
        raise DatasetError(f"{dataset.origin}: the split column names no split for {len(dataset.split_column)} "
                           f"record(s): {shown}{', ...' if len(dataset.split_column) > 5 else ''}; give each "
                           "train, val or test, or drop the column for a random split")
    if dataset.split_column is not None and dataset.entries:
        dataset.split_source = "split column"
        return
    order = list(range(len(dataset.entries)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * len(order)))
    n_test = int(round(test_fraction * len(order)))
    for rank, i in enumerate(order):
        dataset.entries[i].split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    dataset.split_source = f"random (val {val_fraction}, test {test_fraction}, seed {seed})"


def _check_split_agreement(dataset: Dataset, lookup: dict[str, str], split_file: Path) -> None:
    """Refuse a split column and a split.json beside the data that put a record in different splits:
    either may be the one meant, and the other would silently train on structures meant for testing."""
    differ = [(e.id, e.split, listed_split(lookup, e.id)) for e in dataset.entries
              if e.split is not None and e.split != listed_split(lookup, e.id)]
    if differ:
        shown = ", ".join(f"{rid} ({column} in the column, {file} in split.json)" for rid, column, file in differ[:5])
        raise DatasetError(f"{dataset.origin}: its split column and {split_file} disagree on {len(differ)} "
                           f"record(s): {shown}{', ...' if len(differ) > 5 else ''}; keep one of the two")


def _unmatched_split_ids(dataset: Dataset, lookup: dict[str, str], split_file: Path) -> list[str]:
    """A note per split whose split.json ids match no record of the data (skipped ones count as matched):
    a misspelt id leaves its structure in the training split."""
    known = {e.id for e in dataset.entries} | {rid for rid, _ in dataset.skipped}
    missing: dict[str, list[str]] = {}
    for rid, split in lookup.items():
        if rid not in known:
            missing.setdefault(split, []).append(rid)
    by_case = {rid.casefold(): rid for rid in known}
    return [f"{split_file}: {len(ids)} {split} id(s) match no record of the data (e.g. {', '.join(ids[:3])})"
            + _case_hint(ids, by_case) for split, ids in missing.items()]


def _case_hint(ids: list[str], by_case: dict[str, str]) -> str:
    """Where unmatched split ids differ from the data's only in letter case, say so (ids are matched exactly)."""
    near = [(rid, by_case[rid.casefold()]) for rid in ids if rid.casefold() in by_case]
    if not near:
        return ""
    return (f"; {len(near)} of them differ from a record's id only in letter case (e.g. {near[0][0]} and "
            f"{near[0][1]}): ids are matched exactly, so those structures stay in the training split")


FOLD_SEED = 0
"""Seed of the shuffle that deals structures into cross-validation folds (fixed: folds depend on the ids only)."""


def assign_fold(dataset: Dataset, fold: tuple[int, int]) -> None:
    """Cross-validation: fold I of K of the structures outside the test split becomes the
    validation split, the other K - 1 folds the training split; the test split is left alone.

    The structures are sorted by id and shuffled with a fixed seed, so every run, seed and
    ensemble member on the same data sees the same folds, whatever the order of the records, as
    long as the test split is fixed (split.json, a split column, or no test split): a random test
    split depends on the seed, and so would the structures dealt into folds.
    """
    check_fold(fold)
    i, k = fold
    pool = sorted((e for e in dataset.entries if e.split != "test"), key=lambda e: e.id)
    random.Random(FOLD_SEED).shuffle(pool)
    if i > len(pool):
        raise DatasetError(f"fold {i}/{k}: {len(pool)} structures to deal into {k} folds leave no structures in fold "
                           f"{i}: choose at most {len(pool)} folds")
    for rank, entry in enumerate(pool):
        entry.split = "val" if rank % k == i - 1 else "train"
    dataset.split_source += f"; cross-validation fold {i}/{k} of its train and val structures"


ID_HASH_BYTES = 6  # 48-bit id digests: a false match among 10^5 x 10^5 ids has odds of 1 in 28,000


def ids_sha256(ids: list[str]) -> str:
    """Digest of a set of ids (sorted, newline-joined), to recognise a split later."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _id_hash(rid: str) -> bytes:
    return hashlib.blake2b(rid.encode(), digest_size=ID_HASH_BYTES).digest()


def pack_ids(ids: list[str]) -> str:
    """A compact text form of a set of ids (sorted 48-bit digests, base64): 8 characters per id."""
    return base64.b64encode(b"".join(sorted({_id_hash(i) for i in ids}))).decode("ascii")


def _unpack(packed: str) -> set[bytes]:
    raw = base64.b64decode(packed)
    return {raw[k : k + ID_HASH_BYTES] for k in range(0, len(raw), ID_HASH_BYTES)}


def ids_in_packed(ids: list[str], packed: str) -> list[str]:
    """Those of ``ids`` that belong to the set packed by :func:`pack_ids`."""
    members = _unpack(packed)
    return [i for i in ids if _id_hash(i) in members]


def packed_size(packed: str) -> int:
    """How many ids a set packed by :func:`pack_ids` holds."""
    return len(_unpack(packed))


def packed_differing(first: str, second: str) -> int:
    """How many ids belong to only one of two sets packed by :func:`pack_ids` (gone or new)."""
    return len(_unpack(first) ^ _unpack(second))


def merge_packed(*packed: str) -> str:
    """The union of id sets packed by :func:`pack_ids`, packed the same way."""
    return base64.b64encode(b"".join(sorted(set().union(*map(_unpack, packed))))).decode("ascii")


def split_record(dataset: Dataset, val_fraction: float, test_fraction: float, seed: int,
                 trained_ids: list[str], fold: tuple[int, int] | None = None) -> dict[str, Any]:
    """What a checkpoint keeps of its split: the settings that rebuild it, a digest of each
    split's ids, and the ids trained on (packed), so evaluation can refuse trained structures."""
    record: dict[str, Any] = {"source": dataset.split_source, "seed": seed, "val_fraction": val_fraction,
                              "test_fraction": test_fraction}
    if fold is not None:
        record["fold"] = list(fold)
    for name in SPLITS:
        record[f"{name}_ids_sha256"] = ids_sha256([e.id for e in dataset.split(name)])
    record["trained_ids"] = pack_ids(trained_ids)
    return record


def merge_trained(record: dict[str, Any], others: list[dict[str, Any]]) -> None:
    """Add to the split record ``record`` what the ``others`` trained on (a warm start's, an ensemble's
    other members'): the ids of every one that records them, the fingerprints only where ``record`` and
    every other have them (a training set partly unknown gets no partial record)."""
    record["trained_ids"] = merge_packed(record["trained_ids"],
                                         *(o["trained_ids"] for o in others if o.get("trained_ids")))
    prints = [o.get("trained_structures") for o in others]
    if record.get("trained_structures") and all(prints):
        record["trained_structures"] = merge_fingerprints(record["trained_structures"], *prints)
    else:
        record.pop("trained_structures", None)


def is_random_split(split_source: str) -> bool:
    """Whether a split description is a seeded random one (not split.json or a split column)."""
    return split_source.startswith("random")


def load_dataset(
    path: str | Path,
    target: str | None = None,
    *,
    id_column: str | None = None,
    structure_column: str | None = None,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    fold: tuple[int, int] | None = None,
) -> Dataset:
    """Read any supported layout and assign splits; ``fold`` (I, K) makes cross-validation fold I
    of K the validation split (see :func:`assign_fold`)."""
    path = Path(path)
    if path.is_dir():
        dataset = _read_folder_dataset(path, target, id_column)
    elif not path.is_file():
        raise DatasetError(f"{path}: no such file or folder")
    elif structure_column or path.name.lower().endswith((".csv", ".csv.gz")):
        dataset = _read_csv_dataset(path, target, id_column, structure_column or "structure")
    elif format_from_name(str(path)) == "extxyz":
        dataset = _read_frames_dataset(path, target, id_column)
    elif format_from_name(str(path)) not in (None, "json"):
        raise DatasetError(f"{path}: a structure file, not a data set: {LAYOUTS} (README, 'Training data layouts')")
    else:
        dataset = _read_json_dataset(path, target, id_column)
    if not dataset.entries:
        reasons = "; ".join(f"{rid}: {reason}" for rid, reason in dataset.skipped[:3])
        raise DatasetError(f"{path}: no usable records ({len(dataset.skipped)} skipped"
                           + (f", e.g. {reasons}" if reasons else "") + ")")
    assign_splits(dataset, val_fraction, test_fraction, seed)
    if fold is not None:
        assign_fold(dataset, fold)
    return dataset
