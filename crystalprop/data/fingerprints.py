"""Which structures look like a model's training crystals, whatever their ids: the same reduced
formula and a volume per atom within 2 %.

The check by id (:func:`crystalprop.data.datasets.ids_in_packed`) misses a training crystal that
comes back under another name, as Materials Project structures do in Matbench (``mb-mp-e_form-*``)
or in a user's own export, and its error then counts as one on unseen data. Formula and volume per
atom do not depend on the cell a file gives, and two polymorphs rarely share both; where they do
(polytypes), a validation or test figure only counts them, and ``--split unseen`` leaves them out
with the rest (``--split all`` evaluates everything). The record is packed like the ids:
per training structure a 48-bit digest of its reduced formula and its volume per atom (float16),
sorted, base64: 11 characters each.
"""

from __future__ import annotations

import base64
import hashlib
from math import gcd
from typing import Sequence

import numpy as np

from crystalprop.graph.neighbors import CrystalGraph

VOLUME_TOLERANCE = 0.02
"""Relative difference in volume per atom within which two structures of one formula look alike."""
_RECORD = np.dtype([("formula", "S6"), ("volume", "<f2")])  # 8 bytes per structure
_LARGEST = float(np.finfo(np.float16).max)  # Å³ per atom: an atom alone in a 40 Å box; nothing like a crystal


def _formula_digest(numbers: np.ndarray) -> bytes:
    """48-bit digest of the reduced formula (element counts divided by their common divisor)."""
    elements, counts = np.unique(np.asarray(numbers, np.int64), return_counts=True)
    divisor = 0
    for c in counts.tolist():
        divisor = gcd(divisor, c)
    text = " ".join(f"{z}:{c // divisor}" for z, c in zip(elements.tolist(), counts.tolist()))
    return hashlib.blake2b(text.encode(), digest_size=6).digest()


def _records(graphs: Sequence[CrystalGraph]) -> np.ndarray:
    """Formula digest and volume per atom of each graph; a volume per atom that is unknown (0) or beyond
    float16 (a molecule in a vast box) is stored as NaN, which matches nothing."""
    records = np.zeros(len(graphs), _RECORD)
    for k, graph in enumerate(graphs):
        volume = graph.volume / max(graph.num_nodes, 1)
        records[k] = (_formula_digest(graph.atomic_numbers), volume if 0 < volume <= _LARGEST else np.nan)
    return records


def _pack(records: np.ndarray) -> str:
    return base64.b64encode(np.unique(records).tobytes()).decode("ascii")


def _unpack(packed: str) -> np.ndarray:
    try:
        raw = base64.b64decode(packed, validate=True)
    except ValueError as exc:
        raise ValueError(f"not a packed fingerprint record: {exc}") from exc
    if len(raw) % _RECORD.itemsize:
        raise ValueError(f"not a packed fingerprint record ({len(raw)} bytes, not whole "
                         f"{_RECORD.itemsize}-byte records)")
    return np.frombuffer(raw, _RECORD)


def pack_fingerprints(graphs: Sequence[CrystalGraph]) -> str:
    """The packed fingerprints (reduced formula, volume per atom) of ``graphs``' structures."""
    return _pack(_records(graphs))


def merge_fingerprints(*packed: str) -> str:
    """The union of packed fingerprint records, packed the same way (an ensemble's members' training sets)."""
    return _pack(np.concatenate([_unpack(p) for p in packed] or [np.zeros(0, _RECORD)]))


def like_packed(graphs: Sequence[CrystalGraph], packed: str) -> list[bool]:
    """For each of ``graphs``, whether a structure in the packed record has its reduced formula and a
    volume per atom within :data:`VOLUME_TOLERANCE` of its own."""
    known = _unpack(packed)
    order = np.argsort(known["formula"], kind="stable")
    formulas, volumes = known["formula"][order], known["volume"][order].astype(np.float64)
    out = []
    for record in _records(graphs):
        start, end = (np.searchsorted(formulas, record["formula"], side) for side in ("left", "right"))
        volume = float(record["volume"])
        out.append(bool(np.any(np.abs(volumes[start:end] - volume) <= VOLUME_TOLERANCE * volume)))
    return out
