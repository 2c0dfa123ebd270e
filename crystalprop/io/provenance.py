"""Where a result came from: versions, each model's weights by sha256, cell handling, date.

Every result file records this, so a number can be traced to the exact weights that made
it (a silently changed model is a lost result). JSON and JSON Lines carry it inline; a CSV
gets a sidecar ``<file>.meta.json`` so that pandas and spreadsheets read the table as is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

from crystalprop import __version__
from crystalprop.io.discovery import iter_structure_paths
from crystalprop.io.result_files import FINISHED, KEY
from crystalprop.utils.atomic import atomic_write_text
from crystalprop.utils.hashing import cached_file_sha256


class ProvenanceMismatchError(ValueError):
    """Results would be joined with results made by other weights or settings."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


LISTED_INPUTS = 20
"""Inputs an input record lists by name at most (a shell-expanded glob can give thousands); its
sha256 covers them all."""


def input_record(paths: Sequence[str | os.PathLike], recursive: bool) -> dict:
    """What a run was given to read (``predict``'s paths, folders and globs, in order, and ``-r``), for
    the record of its results: shards cover the same input, and a resumed run continues its file, only where
    this is the same. Paths are
    resolved (absolute, symlinks followed) for the record; ``sha256`` covers their names (the last part of
    each, so that array jobs reading node-local copies at other places compare alike), their order and
    ``recursive``; ``paths`` lists the first :data:`LISTED_INPUTS`. ``files_sha256`` covers the files they
    list, in order (``n_files`` of them; each by its path within its folder, or its name): shards deal out positions in that listing, so a
    file added or removed between two shard runs would predict one structure twice and lose another."""
    resolved = [os.path.realpath(os.fspath(path)) for path in paths]
    names = [os.path.basename(path) for path in resolved]
    digest = hashlib.sha256(json.dumps([names, bool(recursive)]).encode()).hexdigest()
    files, seen = [], set()
    for k, given in enumerate(map(os.fspath, paths)):  # a folder's files by their path in it (a/POSCAR, b/POSCAR)
        for path in iter_structure_paths([given], recursive, seen):
            files.append([k, os.path.relpath(path, given) if os.path.isdir(given) else os.path.basename(path)])
    return {"paths": resolved[:LISTED_INPUTS], "n_paths": len(resolved), "recursive": bool(recursive),
            "sha256": digest, "n_files": len(files),
            "files_sha256": hashlib.sha256(json.dumps(files).encode()).hexdigest()}


def same_inputs(old: dict, new: dict) -> bool:
    """Whether two records cover the same input; True where either names none (a file written before
    records named their inputs), which cannot be checked. The files listed are
    compared where both records name them."""
    if "inputs" not in old or "inputs" not in new:
        return True
    a, b = old["inputs"], new["inputs"]
    return a.get("sha256") == b.get("sha256") and (a.get("files_sha256") is None or b.get("files_sha256") is None
                                                  or a["files_sha256"] == b["files_sha256"])


def describe_inputs(record: dict) -> str:
    """A record's inputs in words, for a message."""
    inputs = record.get("inputs") or {}
    paths = list(inputs.get("paths", []))
    more = inputs.get("n_paths", len(paths)) - len(paths)
    notes = (["with -r"] if inputs.get("recursive") else []) + ([f"{inputs['n_files']} files"] if "n_files" in inputs
                                                                   else [])
    return (", ".join(paths) + (f" and {more} more" if more > 0 else "")
            + (f" ({', '.join(notes)})" if notes else "")) or "none"


def describe_input_change(old: dict, new: dict, old_name: str, new_name: str) -> str:
    """How the inputs of two records that are not :func:`same_inputs` differ, in words."""
    said = f"{describe_inputs(old)} {old_name}, {describe_inputs(new)} {new_name}"
    if old["inputs"].get("sha256") == new["inputs"].get("sha256"):
        said += "; the same paths list other files: files were added, removed or renamed between the runs"
    return said


def provenance(models: Sequence[tuple[str, str | Path]], *, cell: str = "as-given", device: str = "CPU",
               engine: str = "mindspore", shard: tuple[int, int] | None = None,
               targets: Mapping[str, str] | None = None, units: Mapping[str, str] | None = None,
               inputs: dict | None = None) -> dict:
    """The record for results of ``models`` ((label, checkpoint path) pairs) computed by ``engine``
    (``mindspore``, or ``numpy``: :mod:`crystalprop.model.numpy_stacked`). ``shard`` (I, N): the part of
    the input these results cover (``predict --shard I/N``), so that ``merge`` can tell a missing part;
    ``inputs``: the input split into shards (:func:`input_record`), so that it can tell a shard of another.
    Each model is named by its label, its file (name and absolute path: a run's is ``best.ckpt``) and sha256.
    ``targets``: each label's trained property (recorded with its model); ``units``: each numeric
    column's unit, so that the file itself says what its numbers are."""
    record = {
        "crystalprop": __version__,
        "mindspore": _version("mindspore"),
        "python": platform.python_version(),
        "device": device,
        "engine": engine,
        "cell": cell,
        "models": [{"name": label, "file": Path(path).name, "path": str(Path(path).resolve()),
                    "sha256": cached_file_sha256(path),
                    **({"target": targets[label]} if targets and label in targets else {})}
                   for label, path in models],
        **({"units": dict(units)} if units is not None else {}),
        "created": utc_now(),
    }
    if shard is not None:
        record["shard"] = list(shard)
    if inputs is not None:
        record["inputs"] = dict(inputs)
    return record


def utc_now() -> str:
    """The time now, UTC, to the second (ISO 8601)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def sidecar_path(path: str | Path) -> Path:
    """``results.csv`` -> ``results.csv.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def same_origin(old: dict, new: dict) -> bool:
    """Whether two records describe the same models (by weights) and cell handling."""
    return old.get("cell") == new.get("cell") and _models(old) == _models(new)


def _models(record: dict) -> list[tuple]:
    return [(m.get("name"), m.get("sha256")) for m in record.get("models", [])]


def models_reordered(old: dict, new: dict) -> bool:
    """Whether two records differ only in the order of their models (``-m`` given in another order)."""
    return (old.get("cell") == new.get("cell") and _models(old) != _models(new)
            and sorted(_models(old), key=str) == sorted(_models(new), key=str))


def model_order(record: dict) -> str:
    """A record's model names in their order, for a message."""
    return ", ".join(str(name) for name, _ in _models(record)) or "none"


def describe_difference(old: dict, new: dict) -> str:
    """One line saying how two records differ, for an error message."""
    def models(record: dict) -> str:
        return ", ".join(f"{m.get('name')} ({str(m.get('sha256'))[:12]})" for m in record.get("models", []))

    if old.get("cell") != new.get("cell"):
        return f"cell handling {old.get('cell')!r} there, {new.get('cell')!r} now"
    if models_reordered(old, new):
        return f"the same models in another order: {model_order(old)} there, {model_order(new)} now"
    if not same_origin(old, new):
        return f"models {models(old) or 'none'} there, {models(new) or 'none'} now"
    return f"shard {'/'.join(map(str, old.get('shard', '?')))} there, {'/'.join(map(str, new.get('shard', '?')))} now"


def read_sidecar(path: str | Path) -> dict | None:
    """The provenance recorded beside a CSV, or None where there is none."""
    content = _sidecar(path)
    return None if content is None else content.get(KEY)


def _sidecar(path: str | Path) -> dict | None:
    """The parsed sidecar of a CSV (None where there is none); a damaged one is named in the error."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        content = json.loads(side.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{side}: damaged provenance record ({exc}); restore it, "
                         "or start again with --overwrite") from None
    return content if isinstance(content, dict) else {}


def write_sidecar(path: str | Path, record: dict, finished: str | None = None) -> Path:
    """Write ``<path>.meta.json`` holding ``record`` and, once the run that writes the CSV reached
    the end of its input, when it did (``finished``, under :data:`FINISHED`)."""
    side = sidecar_path(path)
    content = {KEY: record} if finished is None else {KEY: record, FINISHED: finished}
    atomic_write_text(side, json.dumps(content, indent=2) + "\n")  # a kill leaves the old record or the new
    return side


def sidecar_finished(path: str | Path) -> bool:
    """Whether the sidecar of a CSV says that the run writing it reached the end of its input."""
    return FINISHED in (_sidecar(path) or {})
