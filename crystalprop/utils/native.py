"""C++ libraries built once per machine with the system compiler, into crystalprop's cache folder.

Used by the fused model kernels and the graph builder's neighbour search. Light to import (no
MindSpore, no numpy): the reader processes load their library through it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from crystalprop.utils.atomic import atomic_write_text
from crystalprop.utils.backend import cache_dir
from crystalprop.utils.hashing import file_sha256


def _cpu_features() -> str:
    """The machine type and, where Linux reports them, the CPU's feature flags."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + " " + flags.strip()


def _built(folder: Path, stem: str, key: str) -> Path | None:
    """The library built for ``key`` if its record names a file whose content still matches."""
    try:
        content = (folder / f"{stem}_{key}.sha256").read_text().strip()
        target = folder / f"{stem}_{key}_{content[:16]}.so"
        return target if len(content) == 64 and file_sha256(target) == content else None
    except OSError:
        return None


def build(source: Path, flags: Sequence[str], link_flags: Sequence[str]) -> Path | None:
    """The shared library of ``source``, compiled once per source, flags and machine; None where impossible.

    The library is named by the hash of its inputs (source, flags, compiler, CPU features) and
    of its own content, and ``<stem>_<key>.sha256`` records that content hash: a file damaged or
    replaced on disk no longer matches and is rebuilt, never loaded. The folder is the cache's
    ``kernels`` (``CRYSTALPROP_KERNELS`` names another); several processes may build at once.
    """
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return None
    stem = source.stem
    inputs = " ".join([*flags, "|", *link_flags, compiler, _cpu_features()])
    key = hashlib.sha256(source.read_bytes() + inputs.encode()).hexdigest()[:16]
    folder = Path(os.environ.get("CRYSTALPROP_KERNELS") or cache_dir() / "kernels")
    found = _built(folder, stem, key)
    if found is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=folder)
    except OSError:  # an unwritable kernels folder: run without the kernels
        return None
    os.close(handle)
    obj = Path(partial).with_suffix(".o")
    try:
        for command in ([compiler, *flags, "-c", "-o", str(obj), str(source)],
                        [compiler, *link_flags, "-o", partial, str(obj)]):
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        content = file_sha256(Path(partial))
        target = folder / f"{stem}_{key}_{content[:16]}.so"
        os.replace(partial, target)
        atomic_write_text(folder / f"{stem}_{key}.sha256", content + "\n")
    except (OSError, subprocess.SubprocessError):
        Path(partial).unlink(missing_ok=True)
        return None
    finally:
        obj.unlink(missing_ok=True)
    return target
