"""MindSpore's compile cache, keyed on everything that shapes a compiled graph of this package's model."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from crystalprop.model.fused import library_digest
from crystalprop.utils.backend import cache_dir, mindspore_module


def enable_compile_cache(*key_parts: object) -> None:
    """Reuse compiled graphs across processes, keyed on everything that shapes the graph.

    MindSpore's compile cache is keyed on the Python source only: a network of another
    size loads the stale graph and silently computes the wrong thing (measured with
    MindSpore 2.10). So the cache folder is keyed here on the MindSpore version, the
    model code, whether the fused kernels are used and the content of their library, and
    ``key_parts`` (e.g. the model configuration). Call it after
    :func:`crystalprop.utils.backend.set_device` and before the first compile;
    ``CRYSTALPROP_COMPILE_CACHE=0`` turns it off.
    """
    if os.environ.get("CRYSTALPROP_COMPILE_CACHE", "1") == "0" or not _entry_script_readable():
        return
    ms = mindspore_module()
    key_parts = (*key_parts, f"fused kernels: {library_digest()}")
    digest = hashlib.sha256(ms.__version__.encode())
    model_dir = Path(__file__).resolve().parent
    for source in sorted([*model_dir.glob("*.py"), *model_dir.glob("kernels/*.cc")]):  # kernels too
        digest.update(source.read_bytes())
    digest.update(json.dumps([str(p) for p in key_parts], sort_keys=True).encode())
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    os.environ["MS_COMPILER_CACHE_PATH"] = str(cache_dir() / "ms_compile" / digest.hexdigest()[:24])


def _entry_script_readable() -> bool:
    """Whether MindSpore's compile cache can read the entry script, which it parses for the cache's
    dependencies: a real file, or none at all (an interactive session). Under ``python -c`` or a
    script on standard input ``python -``, sys.argv[0] names no file and the cache fails."""
    entry = sys.argv[0] if sys.argv else ""
    return entry == "" or os.path.isfile(entry)
