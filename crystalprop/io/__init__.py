"""Structure input: format detection, parsing, validation and file discovery."""

from __future__ import annotations

from crystalprop.io.discovery import iter_records, iter_structure_paths
from crystalprop.io.readers import (
    StructureReadError,
    StructureRecord,
    detect_format,
    format_from_name,
    iter_file_records,
    looks_like_structure_name,
    read_file,
    read_file_with_timeout,
    structure_from_dict,
    structure_from_text,
    validate_structure,
)

__all__ = [
    "StructureReadError",
    "StructureRecord",
    "detect_format",
    "format_from_name",
    "iter_file_records",
    "iter_records",
    "iter_structure_paths",
    "looks_like_structure_name",
    "read_file",
    "read_file_with_timeout",
    "structure_from_dict",
    "structure_from_text",
    "validate_structure",
]
