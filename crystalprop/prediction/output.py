"""Result files written as prediction goes, so a killed run keeps what it finished.

CSV and JSON Lines are appended and flushed batch by batch. ``.json`` is a JSON array
written one row per line; a run killed mid-way leaves it without the closing bracket,
which :func:`done_rows` and ``--resume`` tolerate.

Given a provenance record (:mod:`crystalprop.io.provenance`), a JSON Lines file starts with a
line ``{"crystalprop_provenance": {...}}``, a JSON file is the object
``{"crystalprop_provenance": {...}, "results": [rows]}`` (its first line holds the record)
and a CSV gets the sidecar ``<file>.meta.json``. Resuming or merging results made by other
weights or cell handling is refused.

A run that reaches the end of its input marks its file finished (:data:`FINISHED`: a last line
of a JSON Lines file, a key after a JSON file's rows, a key of a CSV's sidecar); a run stopped
before the end leaves a whole file without the mark. With the shard each part covers in its record,
``merge`` refuses an unfinished part, a missing shard and a shard given twice; with the input a shard
splits (:func:`crystalprop.io.provenance.input_record`), a shard of other inputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO, Sequence

from crystalprop.utils.atomic import OutputExistsError, make_folder
from crystalprop.utils.file_lock import FileLock
from crystalprop.io.result_files import FINISHED, KEY
from crystalprop.io.provenance import (
    ProvenanceMismatchError,
    describe_difference,
    describe_input_change,
    model_order,
    models_reordered,
    read_sidecar,
    same_inputs,
    same_origin,
    sidecar_finished,
    sidecar_path,
    utc_now,
    write_sidecar,
)


def _format(path: Path, role: str = "output") -> str:
    """``csv``, ``jsonl`` or ``json`` by ``path``'s ending; ``role`` names the file in the refusal."""
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    raise ValueError(f"{path}: {role} must end in .csv, .json or .jsonl")


def drop_cut_tail(path: Path) -> None:
    """Truncate a CSV / JSON Lines file after its last complete line (a kill can cut a row)."""
    if not path.is_file() or _format(path) == "json":
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)


def read_rows(path: Path, *, strict: bool = False) -> list[dict]:
    """Rows of a result file; a JSON row cut by a kill is dropped (``--resume`` redoes that structure,
    after :func:`drop_cut_tail`). With ``strict`` a row cut short (a JSON line that does not parse,
    a CSV row with fewer or more cells than the header) is refused: :func:`merge_results` must
    neither take it as a result nor lose it."""
    if not path.is_file():
        return []
    kind = _format(path)
    with open(path, encoding="utf-8-sig", newline="" if kind == "csv" else None) as handle:
        if kind == "csv":
            reader = csv.DictReader(handle)
            rows = []
            for row in reader:
                if strict and (None in row.values() or None in row):  # fewer (or more) cells than the header
                    raise ValueError(_cut_message(path, reader.line_num))
                if row.get("name"):
                    rows.append(row)
            return rows
        rows = []
        for number, line in enumerate(handle, 1):
            line = line.strip().rstrip(",")
            if number == 1 and kind == "json" and line.startswith("{" + json.dumps(KEY)):
                continue  # a .json file's record, which opens its rows: no row
            if line.startswith("{"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if strict:
                        raise ValueError(_cut_message(path, number)) from None
                    continue
                if KEY not in row and FINISHED not in row:
                    rows.append(row)
        return rows


def _cut_message(path: Path, line: int) -> str:
    return (f"{path}: line {line} is a row cut short (the run writing it was stopped mid-row); "
            f"finish the file with the same `crystalprop predict ... -o {path} --resume` (and --shard), then merge")


def _header_line(path: Path) -> str | None:
    """The first line of a JSON / JSON Lines result file when it holds the provenance record."""
    if _format(path) == "csv" or not path.is_file():
        return None
    with open(path, encoding="utf-8-sig") as handle:
        first = handle.readline().strip()
    return first if first.startswith("{" + json.dumps(KEY)) else None


def read_provenance(path: str | Path) -> dict | None:
    """The provenance a result file records (inline or in its sidecar), or None."""
    path = Path(path)
    if _format(path) == "csv":
        return read_sidecar(path)
    header = _header_line(path)
    if header is None:
        return None
    text = header if _format(path) == "jsonl" else header.removesuffix("[") + "[]}"
    return json.loads(text)[KEY]


def is_finished(path: str | Path) -> bool:
    """Whether the run that wrote a result file reached the end of its input (see the module docstring)."""
    path = Path(path)
    if _format(path) == "csv":
        return sidecar_finished(path)
    last = _last_line(path)
    if _format(path) == "jsonl":
        return last.startswith("{" + json.dumps(FINISHED))
    return last.startswith("], " + json.dumps(FINISHED))


def _last_line(path: Path) -> str:
    """The last line of a text file that is not blank ("" for none)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
        lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def _json_opening(record: dict | None) -> str:
    """What a JSON result file starts with: the record and the opening of its rows, or ``[``."""
    return "[" if record is None else json.dumps({KEY: record})[:-1] + ', "results": ['


def done_rows(path: Path, *, retry_failed: bool = False) -> list[dict]:
    """The rows already in an output file (for ``--resume``), after dropping a cut last row; with
    ``retry_failed`` only those predicted without error."""
    drop_cut_tail(path)
    return [row for row in read_rows(path) if row.get("name") and not (retry_failed and row.get("error"))]


def file_columns(path: Path) -> list[str] | None:
    """Columns of an existing result file (CSV header, keys of the first JSON row); None if it has none."""
    if _format(path) == "csv":
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), None)
    rows = read_rows(path)
    return list(rows[0]) if rows else None


def _drop_failed_rows(path: Path, columns: list[str]) -> None:
    """Rewrite a result file without its failed rows (``--retry-failed`` predicts them again)."""
    kept = [row for row in read_rows(path) if not row.get("error")]
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        if _format(path) == "csv":
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        else:
            header = _header_line(path)
            if _format(path) == "json":
                prefix, sep = header or "[", ",\n"
                prefix += "\n"
            else:
                prefix, sep = (header + "\n" if header else ""), "\n"
            body = sep.join(json.dumps({k: row.get(k) for k in columns}) for row in kept)
            handle.write(prefix + body + ("\n" if body and _format(path) == "jsonl" else ""))
    os.replace(partial, path)


TEXT_COLUMNS = ("name", "source", "formula", "error", "warning")
"""Result columns that hold text; the others hold numbers (``index`` and ``n_sites`` whole ones)."""


def _typed(row: dict, path: Path) -> dict:
    """A CSV row's cells as the numbers and nulls a JSON result row holds."""
    typed = {}
    for key, value in row.items():
        if key in TEXT_COLUMNS or not isinstance(value, str):
            typed[key] = value
        elif value == "":
            typed[key] = None
        else:
            try:
                typed[key] = int(value) if key in ("index", "n_sites") else float(value)
            except ValueError:
                raise ValueError(f"{path}: column {key} holds {value!r} for {row.get('name')}, not a number") from None
    return typed


def _part_columns(path: Path, rows: list[dict]) -> list[str] | None:
    """:func:`file_columns` of a part whose ``rows`` are read already (a CSV's header, else the first row's keys)."""
    if _format(path) == "csv":
        return file_columns(path) if path.is_file() else None
    return list(rows[0]) if rows else None


def merge_results(output: str | Path, parts: Sequence[str | Path], *, overwrite: bool = False) -> int:
    """Join sharded result files (of one split of the same inputs) into one, ordered by input position.

    Refused: a structure in two parts, parts with other columns or provenance than the first's, a part
    whose last row a kill cut short, and, for parts whose records name their shard, a part whose run
    stopped before its end (``--resume`` finishes both), a missing shard, a shard given twice and
    shards whose records name other inputs.
    """
    if Path(output).is_file() and Path(output).stat().st_size > 0 and not overwrite:
        raise OutputExistsError(f"{output} exists: use --overwrite to replace it")
    for part in parts:
        _format(Path(part), "a part (a result file of predict -o)")
    records = [(Path(part), read_provenance(part)) for part in parts]
    parts = [part for part, _ in records]
    provenance = _merged_provenance(records)
    _check_shards(records)
    read = [(part, read_rows(part, strict=True)) for part in parts]
    columns = [(part, cols) for part, found in read if (cols := _part_columns(part, found)) is not None]
    for part, found in columns:
        if not {"index", "name"} <= set(found):  # e.g. evaluate's predictions.csv, whose rows have no name
            raise ValueError(f"{part}: not a result file of predict (its columns: {', '.join(found)}); merge joins "
                             "the result files of one sharded predict -o")
    for part, found in columns[1:]:
        if found != columns[0][1]:
            raise ValueError(f"{part}: its columns ({', '.join(found)}) differ from {columns[0][0]}'s "
                             f"({', '.join(columns[0][1])}); merge parts predicted with the same --model set")
    for (part, record), (_, found) in zip(records, read):
        _check_positions(part, record, found)
    rows = [_typed(row, part) if _format(part) == "csv" else row for part, found in read for row in found]
    if not rows:
        raise ValueError("no rows in the given files")
    seen: set[str] = set()
    duplicated = sorted({r["name"] for r in rows if r["name"] in seen or seen.add(r["name"])})
    if duplicated:
        where = f"more than once in {parts[0]}" if len(parts) == 1 else "in more than one file"
        raise ValueError(f"{len(duplicated)} structure(s) appear {where}, e.g. {duplicated[0]}")
    rows.sort(key=lambda r: int(r.get("index") or 0))  # stable: keeps block order within a file
    writer = ResultWriter(output, list(rows[0].keys()), overwrite=overwrite, provenance=provenance)
    writer.write(rows)
    writer.close(finished=True)
    return len(rows)


def _check_shards(records: Sequence[tuple[Path, dict | None]]) -> None:
    """Refuse an unfinished part, a missing shard and a shard given twice, judged by the parts whose
    records (part, its provenance) name their shard (files written before records did cannot be checked)."""
    sharded = [(part, tuple(record["shard"])) for part, record in records if record is not None and "shard" in record]
    _check_inputs([(part, record) for part, record in records if record is not None and "inputs" in record])
    for part, (i, n) in sharded:
        if not is_finished(part):
            raise ValueError(f"{part}: unfinished, the run writing it stopped before the end of shard {i}/{n}; "
                             f"finish it with the same `crystalprop predict ... --shard {i}/{n} -o {part} --resume`, "
                             "then merge")
    counts = sorted({n for _, (_, n) in sharded})
    if len(counts) > 1:
        raise ValueError(f"the parts come from splits into {' and '.join(map(str, counts))} shards; "
                         "merge the parts of one split")
    if not counts or counts[0] == 1 or len(sharded) < len(records):
        return
    n, seen = counts[0], {}
    for part, (i, _) in sharded:
        if i in seen:
            raise ValueError(f"{seen[i]} and {part} are both shard {i}/{n}; give each shard once")
        seen[i] = part
    missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in seen]
    if missing:
        raise ValueError(f"shard {', '.join(missing)} missing: predict it with `crystalprop predict ... --shard "
                         f"{missing[0]} -o PART`, then merge all {n} parts")


def _check_positions(part: Path, record: dict | None, rows: list[dict]) -> None:
    """Refuse a finished part without a row for every input file of its shard (a file gives one or more
    rows, a failed one too): whole rows lost after it was written, a partial copy or an edit, which
    nothing else tells. Parts whose record names no file count (older ones) are not checked."""
    if record is None or "n_files" not in record.get("inputs", {}) or not is_finished(part):
        return
    i, n = record.get("shard", [1, 1])
    expected = set(range(i - 1, record["inputs"]["n_files"], n))
    present = set()
    for row in rows:
        try:
            present.add(int(row.get("index")))
        except (TypeError, ValueError):
            raise ValueError(f"{part}: a row without a position in the input (index {row.get('index')!r}), "
                             f"{row.get('name')!r}: not a result file of predict as written") from None
    missing = sorted(expected - present)
    if missing:
        shard = f" --shard {i}/{n}" if n > 1 else ""
        raise ValueError(f"{part}: {len(missing)} of its {len(expected)} input files have no row (position "
                         f"{missing[0]} first), though its run finished: rows lost since; the same `crystalprop "
                         f"predict ...{shard} -o {part} --resume` predicts them again")


def _check_inputs(records: Sequence[tuple[Path, dict]]) -> None:
    """Refuse parts (part, its provenance naming its inputs) of other inputs than the first's: a row's
    position counts in its own input stream, so rows of two streams would interleave, and a whole result
    of other inputs is no shard of the first's."""
    for part, record in records[1:]:
        first_part, first = records[0]
        if same_inputs(first, record):
            continue
        change = describe_input_change(record, first, f"in {part}", f"in {first_part}")
        if record.get("shard", [1, 1])[1] > 1:
            raise ValueError(f"{part} is a shard of other inputs than {first_part} ({change}); merge the shards "
                             "of one split: the same paths, in the same order, each with its --shard")
        raise ValueError(f"{part} holds the predictions of other inputs than {first_part} ({change}); merge joins "
                         "the shards of one split: for one table of both, give all their inputs to one "
                         "`crystalprop predict A B ... -o OUT`")


def _no_record(path: Path) -> str:
    """Why a result file has no provenance record, in words."""
    return f"{sidecar_path(path).name} is missing" if _format(path) == "csv" else "its first line holds none"


PART_KEYS = ("crystalprop", "mindspore", "python", "device", "engine", "created")
"""What a merged record keeps of each part (under ``parts``); where the parts differ in one of these
but the time, its value in the merged record is ``mixed (see parts)``."""


def _merged_provenance(records: Sequence[tuple[Path, dict | None]]) -> dict | None:
    """One record for shards (part, its provenance) made by the same models; refuse shards made by other
    weights, or without a record beside shards with one (they cannot be checked)."""
    known = [(part, record) for part, record in records if record is not None]
    if not known:
        return None
    first_part, first = known[0]
    for part, record in records:
        if record is None:
            raise ProvenanceMismatchError(
                f"{part}: no provenance record ({_no_record(part)}), so it cannot be checked to come from the "
                f"same models and settings as {first_part}; put the record back beside it")
        if models_reordered(first, record):
            raise ProvenanceMismatchError(
                f"{part}: predicted with the same models as {first_part} but in another order "
                f"({model_order(record)} there, {model_order(first)} in {first_part}); "
                "predict all parts with the models (-m) in the same order")
        if not same_origin(first, record):
            raise ProvenanceMismatchError(
                f"{part}: made by other weights or settings than {first_part} "
                f"({describe_difference(first, record)}); predict all parts with the same models")
    merged = {**first, "merged_from": [str(part) for part, _ in records],
              "parts": [{"file": str(part), **{k: record[k] for k in PART_KEYS if k in record}} for part, record in known]}
    for key in PART_KEYS[:-1]:
        if len({json.dumps(record.get(key)) for _, record in known}) > 1:
            merged[key] = "mixed (see parts)"
    if all("shard" in record for _, record in known):
        merged["shard"] = [1, 1]  # the whole input, once _check_shards found every shard
    return merged


def _unwritable(path: Path, exc: OSError) -> ValueError:
    """The one-line refusal of an output that cannot be written (a read-only folder, a full disk)."""
    return ValueError(f"{path}: cannot write the results there ({exc.strerror or exc})")


class ResultWriter:
    """Append rows to CSV / JSON / JSON Lines, flushing after every batch.

    ``provenance``: the record to keep with the rows (see the module docstring); a resumed file
    must carry the same models' weights and cell handling.
    """

    def __init__(self, path: str | Path, columns: Sequence[str], *, resume: bool = False, overwrite: bool = False,
                 retry_failed: bool = False, provenance: dict | None = None):
        self.path = Path(path)
        self.kind = _format(self.path)
        self.columns = list(columns)
        self.provenance = provenance
        try:
            make_folder(self.path.parent)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from exc
        try:
            self._lock = FileLock(self.path, "--output")  # before the file is read: another run may be writing it
        except OSError as exc:
            raise _unwritable(self.path, exc) from exc
        try:
            self._open(resume, overwrite, retry_failed)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, resume: bool, overwrite: bool, retry_failed: bool) -> None:
        """Check an existing file and open it for appending (resume) or writing."""
        provenance = self.provenance
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise OutputExistsError(f"{self.path} exists: use --resume to continue it or --overwrite to replace it")
        appending = exists and resume
        found = read_provenance(self.path) if appending else None
        if appending and provenance is not None and found is None and not read_rows(self.path):
            appending = False  # an older version's file without rows: nothing to keep, start it with the record
        self._record = found if appending else provenance  # the record the file keeps
        if appending:
            drop_cut_tail(self.path)
            self._check_columns()
            self._check_provenance(found)
            self._unfinish()  # before any rewrite: a kill from here on leaves an unfinished file
            if retry_failed:
                _drop_failed_rows(self.path, self.columns)
        self._rows_in_file = self._reopen_json_array() > 0 if appending and self.kind == "json" else False
        try:
            self.handle: IO[str] = open(self.path, "a" if appending else "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise _unwritable(self.path, exc) from exc
        try:
            self._start(appending, provenance)
        except OSError as exc:  # a full disk already: the same one-line refusal as an unwritable place
            self.handle.close()
            raise _unwritable(self.path, exc) from exc

    def _start(self, appending: bool, provenance: dict | None) -> None:
        """A new file's header (CSV columns and sidecar, the JSON opening, the JSON Lines record), flushed."""
        if self.kind == "csv":
            self.writer = csv.DictWriter(self.handle, fieldnames=self.columns, extrasaction="ignore")
            if not appending:
                self.writer.writeheader()
                if provenance is not None:
                    write_sidecar(self.path, provenance)
        elif not appending and self.kind == "json":
            self.handle.write(_json_opening(provenance) + "\n")
        elif not appending and provenance is not None:
            self.handle.write(json.dumps({KEY: provenance}) + "\n")
        self.handle.flush()

    def _check_columns(self) -> None:
        """Refuse to append to a file whose columns differ (e.g. written with another --model set)."""
        found = file_columns(self.path)
        if found is not None and found != self.columns:
            raise ValueError(f"{self.path}: cannot resume, its columns ({', '.join(found)}) differ from this "
                             f"run's ({', '.join(self.columns)}); use the same --model set or another --output")

    def _check_provenance(self, found: dict | None) -> None:
        """Refuse to append rows made by other weights, cell handling or shard than the file's record
        ``found``, or rows whose record is missing (they cannot be checked)."""
        if self.provenance is None:
            return
        if found is None:
            if read_rows(self.path):
                raise ProvenanceMismatchError(
                    f"{self.path}: cannot resume, it has no provenance record ({_no_record(self.path)}), so its rows "
                    "cannot be checked to come from these models and settings; put the record back beside it, "
                    "or start again with --overwrite")
            return
        shards = found.get("shard"), self.provenance.get("shard")
        if not same_inputs(found, self.provenance):
            raise ProvenanceMismatchError(
                f"{self.path}: cannot resume, it holds results of other inputs "
                f"({describe_input_change(found, self.provenance, 'there', 'now')}); give the same paths in the "
                "same order, or predict the others into another --output")
        if models_reordered(found, self.provenance):
            raise ProvenanceMismatchError(
                f"{self.path}: cannot resume, it was written by the same models in another order "
                f"({model_order(found)} there, {model_order(self.provenance)} now); give the models (-m) "
                "in its order or use another --output")
        if not same_origin(found, self.provenance) or (all(shards) and shards[0] != shards[1]):
            raise ProvenanceMismatchError(
                f"{self.path}: cannot resume, it was written by other weights or settings "
                f"({describe_difference(found, self.provenance)}); use the same models or another --output")

    def _unfinish(self) -> None:
        """Drop the finished mark of a file being resumed: it is unfinished until this run ends."""
        if self.kind == "csv":
            if self._record is not None and sidecar_finished(self.path):
                write_sidecar(self.path, self._record)
        elif self.kind == "jsonl" and is_finished(self.path):
            data = self.path.read_bytes().rstrip()
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def _reopen_json_array(self) -> int:
        """Drop a closing bracket (and a cut last line) so rows can be appended; count rows."""
        lines = self.path.read_text(encoding="utf-8-sig").splitlines()
        header = _header_line(self.path)
        kept = [ln for ln in lines[1 if header else 0:] if ln.strip() not in ("]", "]}", "")]
        if kept and kept[-1].strip().startswith("{"):
            try:
                json.loads(kept[-1].strip().rstrip(","))
            except json.JSONDecodeError:
                kept.pop()
        rows = [ln.strip().rstrip(",") for ln in kept if ln.strip().startswith("{")]
        self.path.write_text((header or "[") + "\n" + ",\n".join(rows), encoding="utf-8")
        return len(rows)

    def write(self, rows: Sequence[dict]) -> None:
        """Write a batch and flush it to disk, whole or not at all: a write that fails (a full disk) is
        cut off again, so the file ends with the last whole batch, and the error is raised."""
        if self.kind == "csv":
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.columns, extrasaction="ignore")
            writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in self.columns} for row in rows)
            batch = text.getvalue()
        elif self.kind == "json":
            lines = [json.dumps({k: row.get(k) for k in self.columns}) for row in rows]
            batch = (",\n" if self._rows_in_file and lines else "") + ",\n".join(lines)
        else:
            batch = "".join(json.dumps({k: row.get(k) for k in self.columns}) + "\n" for row in rows)
        self.handle.flush()
        fd = self.handle.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            data = memoryview(batch.encode("utf-8"))
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
            raise
        self._rows_in_file = self._rows_in_file or bool(rows)

    def close(self, *, finished: bool = False) -> None:
        """Close the file whole (a JSON file's closing bracket); ``finished``: the run reached the end of its
        input, which a file with a provenance record then says (:data:`FINISHED`)."""
        try:
            self._close(finished)
        finally:
            self._lock.release()

    def _close(self, finished: bool) -> None:
        mark = utc_now() if finished and self._record is not None else None
        if self.kind == "json":  # a plain array, or the object the record opened, with the mark after the rows
            marked = f"], {json.dumps(FINISHED)}: {json.dumps(mark)}}}"
            self.handle.write("\n" + ("]" if self._record is None else "]}" if mark is None else marked) + "\n")
        elif self.kind == "jsonl" and mark is not None:
            self.handle.write(json.dumps({FINISHED: mark}) + "\n")
        self.handle.close()
        if self.kind == "csv" and mark is not None:
            write_sidecar(self.path, self._record, mark)
