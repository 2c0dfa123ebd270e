"""Read a MindSpore ``.ckpt`` file's values as numpy arrays, without a MindSpore Parameter per value.

``mindspore.load_checkpoint`` wraps each of the ~2,000 values of the four shipped ensembles in a
Parameter (0.25-0.3 s of CPU in all); the predictor only needs their numbers. This parses the
same protobuf message (MindSpore's own ``Checkpoint`` class) and views each tensor's bytes as an
array. A file with anything it does not read the same way as MindSpore's loader (sliced or map
tensors, other element types, encryption, damage) gives None: the caller then uses that loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CRC_MARK = b"crc_num"  # MindSpore's checkpoint writer may end the file with b"crc_num" and 10 bytes of CRC
DTYPES = {"Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
          "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "Float16": np.float16,
          "Float32": np.float32, "Float64": np.float64, "Bool": np.bool_}


def read_arrays(path: str | Path) -> dict[str, Any] | None:
    """Every value of the checkpoint at ``path`` by name: a numpy array (read-only), or a str for a
    string entry (as ``load_checkpoint`` gives them); None where this reader would differ from it."""
    try:
        from mindspore.train.checkpoint_pb2 import Checkpoint  # noqa: PLC0415  (imported with MindSpore)
    except ImportError:
        return None
    if not str(path).endswith("ckpt"):  # refused by MindSpore's loader, whose message the caller then gives
        return None
    content = Path(path).read_bytes()
    if content[-17:-10] == CRC_MARK:
        content = content[:-17]
    message = Checkpoint()
    try:
        message.ParseFromString(content)
    except Exception:  # protobuf's DecodeError, or a file that is not a checkpoint at all
        return None
    values: dict[str, Any] = {}
    tags = [element.tag for element in message.value]
    for k, element in enumerate(message.value):
        if not element.HasField("tensor") or (k + 1 < len(tags) and tags[k + 1] == element.tag):
            return None  # a map parameter, or a tensor stored in slices
        value = _value(element.tensor)
        if value is None:
            return None
        values[element.tag] = value
    return values or None  # MindSpore's loader refuses a file without values


def _value(tensor: Any) -> Any:
    """One TensorProto as MindSpore's loader reads it: a str, or an array of its dims; None if unknown."""
    data = tensor.tensor_content
    if tensor.tensor_type == "str":
        return str(np.frombuffer(data, f"U{len(data) // 4}")[0]) if data and len(data) % 4 == 0 else None
    dtype = DTYPES.get(tensor.tensor_type)
    dims = [] if list(tensor.dims) == [0] else list(tensor.dims)
    if dtype is None or len(data) != np.dtype(dtype).itemsize * int(np.prod(dims, dtype=np.int64)):
        return None
    return np.frombuffer(data, dtype).reshape(dims)
