"""Read a MindSpore ``.ckpt`` file's values as numpy arrays, without MindSpore.

``mindspore.load_checkpoint`` needs MindSpore imported (1.3-2 s) and wraps each of the ~2,000
values of the shipped models in a Parameter (0.25-0.3 s); the predictor only needs their
numbers. This reads the same protobuf message (MindSpore's ``checkpoint.proto``: Checkpoint
{repeated Value value = 1}; Value {tag = 1; oneof {TensorProto tensor = 2; MapTensorProto
maptensor = 3}}; TensorProto {repeated int64 dims = 1; tensor_type = 2; bytes tensor_content = 3})
straight from its wire format and views each tensor's bytes as an array. A file with anything
it does not read the same way as MindSpore's loader (sliced or map tensors, other element types,
encryption, damage) gives None: the caller then uses that loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CRC_MARK = b"crc_num"  # MindSpore's checkpoint writer may end the file with b"crc_num" and 10 bytes of CRC
DTYPES = {"Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
          "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "Float16": np.float16,
          "Float32": np.float32, "Float64": np.float64, "Bool": np.bool_}


class _Unreadable(Exception):
    """The bytes are not a checkpoint message this reader understands."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    """The base-128 integer at ``at`` and the offset after it."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Unreadable
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: memoryview) -> list[tuple[int, int | memoryview]]:
    """A message's (field number, value) pairs in order: ints for varints, views for bytes fields."""
    fields, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, at = _varint(data, at)
        elif kind == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise _Unreadable
            value, at = data[at : at + size], at + size
        else:  # no fixed-width or group fields in checkpoint.proto
            raise _Unreadable
        fields.append((number, value))
    return fields


def read_arrays(path: str | Path) -> dict[str, Any] | None:
    """Every value of the checkpoint at ``path`` by name: a numpy array (read-only), or a str for a
    string entry (as ``load_checkpoint`` gives them); None where this reader would differ from it."""
    if not str(path).endswith("ckpt"):  # refused by MindSpore's loader, whose message the caller then gives
        return None
    content = Path(path).read_bytes()
    if content[-17:-10] == CRC_MARK:
        content = content[:-17]
    try:
        values = _values(memoryview(content))
    except (_Unreadable, UnicodeDecodeError):
        return None
    return values or None  # MindSpore's loader refuses a file without values


def _values(content: memoryview) -> dict[str, Any] | None:
    """The checkpoint message's tensors by tag; None for a map or sliced tensor or an unknown type."""
    values: dict[str, Any] = {}
    tags: list[str] = []
    entries = []
    for number, entry in _fields(content):
        if number != 1 or isinstance(entry, int):
            raise _Unreadable
        tag, tensor = None, None
        for field, value in _fields(entry):
            if field == 1 and not isinstance(value, int):
                tag = bytes(value).decode()
            elif field == 2 and not isinstance(value, int):
                tensor = value
            else:  # a map tensor, or something else
                return None
        if tag is None or tensor is None:
            return None
        tags.append(tag)
        entries.append((tag, tensor))
    if len(set(tags)) != len(tags):
        return None  # a tensor stored in slices, consecutive entries of one tag
    for tag, tensor in entries:
        value = _value(tensor)
        if value is None:
            return None
        values[tag] = value
    return values


def _value(tensor: memoryview) -> Any:
    """One TensorProto as MindSpore's loader reads it: a str, or an array of its dims; None if unknown."""
    dims: list[int] = []
    tensor_type, data = None, None
    for field, value in _fields(tensor):
        if field == 1 and isinstance(value, int):
            dims.append(value)
        elif field == 1:  # packed dims
            packed, at = value, 0
            while at < len(packed):
                dim, at = _varint(packed, at)
                dims.append(dim)
        elif field == 2 and not isinstance(value, int):
            tensor_type = bytes(value).decode()
        elif field == 3 and not isinstance(value, int):
            data = bytes(value)
        else:
            return None
    if tensor_type is None or data is None:
        return None
    if tensor_type == "str":
        return str(np.frombuffer(data, f"U{len(data) // 4}")[0]) if data and len(data) % 4 == 0 else None
    dtype = DTYPES.get(tensor_type)
    dims = [] if dims == [0] else dims
    if dtype is None or len(data) != np.dtype(dtype).itemsize * int(np.prod(dims, dtype=np.int64)):
        return None
    return np.frombuffer(data, dtype).reshape(dims)
