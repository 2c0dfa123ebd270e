"""sha256 of files: a checkpoint's weights, a compiled kernel's source, a data file behind a graph cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from crystalprop.utils.atomic import atomic_write_text


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
