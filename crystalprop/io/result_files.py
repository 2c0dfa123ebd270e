"""crystalprop's own result files, told apart from structure files by their first bytes.

A folder given to ``predict`` or ``train`` may hold earlier results beside the structures: a JSON
table or a CSV's sidecar opens with the provenance record (:data:`KEY`), evaluate's metrics.json with
the model's name and checkpoint. The readers skip or refuse these by name instead of reading them as
structures; :mod:`crystalprop.io.provenance` writes the records.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

KEY = "crystalprop_provenance"
"""The key that marks the provenance record in JSON / JSON Lines output."""
FINISHED = "crystalprop_finished"
"""The key under which a result file says when the run writing it reached the end of its input: the
last line of a JSON Lines file, a key after the rows of a JSON file, a key of a CSV's sidecar. A run
stopped before the end leaves a whole file without it, which ``merge`` refuses."""


BOM = rb"(?:\xef\xbb\xbf)?"
"""A UTF-8 byte order mark, which an editor or spreadsheet may put before a file it saves again."""


GZIP_MAGIC = b"\x1f\x8b"


def _head(path: str | Path, n_bytes: int) -> bytes:
    """The first bytes of a file, of its content where it is gzipped (a result compressed to be kept);
    empty where it cannot be read or its gzip is corrupt."""
    try:
        with open(path, "rb") as f:
            head = f.read(n_bytes)
            if not head.startswith(GZIP_MAGIC):
                return head
            f.seek(0)
            with gzip.GzipFile(fileobj=f) as stream:
                return stream.read(n_bytes)
    except (OSError, EOFError, zlib.error):
        return b""


def is_results_file(path: str | Path) -> bool:
    """Whether a JSON file (gzipped or not) is one of crystalprop's own outputs (a JSON table of results or
    a CSV's sidecar): both open with the provenance record, so 256 bytes tell, without parsing the file."""
    head = _head(path, 256)
    return re.match(BOM + rb'\s*\{\s*"' + KEY.encode() + rb'"', head) is not None


EVALUATION_LEAD_KEYS = ("model", "checkpoint")
"""The keys that the metrics.json of ``crystalprop evaluate`` opens with, in this order."""
_EVALUATION_HEAD = re.compile(BOM + rb'\s*\{\s*"model"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*"checkpoint"\s*:')


def is_own_output(path: str | Path) -> bool:
    """Whether a ``.json`` or ``.json.gz`` file is one of crystalprop's outputs (a JSON table, a CSV's sidecar,
    evaluate's metrics.json), not a structure, told by its first bytes."""
    return (str(path).lower().endswith((".json", ".json.gz"))
            and (is_results_file(path) or is_evaluation_metrics(path)))


def opens_as_evaluation_metrics(record: dict) -> bool:
    """Whether a parsed JSON object opens as evaluate's metrics.json does (:data:`EVALUATION_LEAD_KEYS`)."""
    return tuple(record)[:len(EVALUATION_LEAD_KEYS)] == EVALUATION_LEAD_KEYS


def is_evaluation_metrics(path: str | Path) -> bool:
    """Whether a JSON file is the metrics.json that ``crystalprop evaluate`` wrote, under any name: told by
    its content, an object opening with the model's name and its checkpoint (a structure never does);
    gzipped too."""
    return _EVALUATION_HEAD.match(_head(path, 4096)) is not None
