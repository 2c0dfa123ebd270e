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
import re
from importlib import metadata
from pathlib import Path
from typing import Sequence

from crystalprop import __version__
from crystalprop.utils.atomic import atomic_write_text

KEY = "crystalprop_provenance"
"""The key that marks the provenance record in JSON / JSON Lines output."""
FINISHED = "crystalprop_finished"
"""The key under which a result file says when the run writing it reached the end of its input: the
last line of a JSON Lines file, a key after the rows of a JSON file, a key of a CSV's sidecar. A run
stopped before the end leaves a whole file without it, which ``merge`` refuses."""


class ProvenanceMismatchError(ValueError):
    """Results would be joined with results made by other weights or settings."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (a shipped checkpoint hashes in about 5 ms)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_file_sha256(path: str | Path) -> str:
    """:func:`file_sha256`, remembered in the cache folder per file and its stat record.

    The record (size, modification and change times in ns, inode, device) changes with any
    write or replacement of the file, which is then hashed again; so is a file whose entry is
    missing or unreadable. Saves hashing the checkpoints (40 ms for the shipped ones) on every run.
    """
    from crystalprop.utils.backend import cache_dir  # noqa: PLC0415

    path = Path(path).resolve()
    info = path.stat()
    stamp = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]
    try:
        store = cache_dir() / "sha256.json"
    except OSError:  # no writable cache folder
        return file_sha256(path)
    known = _read_json(store)
    entry = known.get(str(path))
    if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    known = {name: value for name, value in known.items() if os.path.exists(name)}  # forget deleted files
    known[str(path)] = {"stat": stamp, "sha256": digest}
    try:
        atomic_write_text(store, json.dumps(known, indent=1))
    except OSError:  # a read-only cache folder: hash again next time
        pass
    return digest


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; empty where the file is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(models: Sequence[tuple[str, str | Path]], *, cell: str = "as-given", device: str = "CPU",
               engine: str = "mindspore", shard: tuple[int, int] | None = None) -> dict:
    """The record for results of ``models`` ((label, checkpoint path) pairs) computed by ``engine``
    (``mindspore``, or ``numpy``: :mod:`crystalprop.model.numpy_stacked`). ``shard`` (I, N): the part of
    the input these results cover (``predict --shard I/N``), so that ``merge`` can tell a missing part."""
    record = {
        "crystalprop": __version__,
        "mindspore": _version("mindspore"),
        "python": platform.python_version(),
        "device": device,
        "engine": engine,
        "cell": cell,
        "models": [{"name": label, "file": Path(path).name, "sha256": cached_file_sha256(path)}
                   for label, path in models],
        "created": utc_now(),
    }
    if shard is not None:
        record["shard"] = list(shard)
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
    def key(record: dict) -> tuple:
        return record.get("cell"), [(m.get("name"), m.get("sha256")) for m in record.get("models", [])]

    return key(old) == key(new)


def describe_difference(old: dict, new: dict) -> str:
    """One line saying how two records differ, for an error message."""
    def models(record: dict) -> str:
        return ", ".join(f"{m.get('name')} ({str(m.get('sha256'))[:12]})" for m in record.get("models", []))

    if old.get("cell") != new.get("cell"):
        return f"cell handling {old.get('cell')!r} there, {new.get('cell')!r} now"
    if not same_origin(old, new):
        return f"models {models(old) or 'none'} there, {models(new) or 'none'} now"
    return f"shard {'/'.join(map(str, old.get('shard', '?')))} there, {'/'.join(map(str, new.get('shard', '?')))} now"


BOM = rb"(?:\xef\xbb\xbf)?"
"""A UTF-8 byte order mark, which an editor or spreadsheet may put before a file it saves again."""


def is_results_file(path: str | Path) -> bool:
    """Whether a JSON file is one of crystalprop's own outputs (a JSON table of results or a CSV's
    sidecar): both open with the provenance record, so 256 bytes tell, without parsing the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return re.match(BOM + rb'\s*\{\s*"' + KEY.encode() + rb'"', head) is not None


EVALUATION_LEAD_KEYS = ("model", "checkpoint")
"""The keys that the metrics.json of ``crystalprop evaluate`` opens with, in this order."""
_EVALUATION_HEAD = re.compile(BOM + rb'\s*\{\s*"model"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*"checkpoint"\s*:')


def opens_as_evaluation_metrics(record: dict) -> bool:
    """Whether a parsed JSON object opens as evaluate's metrics.json does (:data:`EVALUATION_LEAD_KEYS`)."""
    return tuple(record)[:len(EVALUATION_LEAD_KEYS)] == EVALUATION_LEAD_KEYS


def is_evaluation_metrics(path: str | Path) -> bool:
    """Whether a JSON file is the metrics.json that ``crystalprop evaluate`` wrote, under any name: told by
    its content, an object opening with the model's name and its checkpoint (a structure never does)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return _EVALUATION_HEAD.match(head) is not None


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
