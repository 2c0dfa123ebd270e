"""Structure input: format detection, parsing, validation and file discovery.

The names below are loaded on first use (PEP 562), so importing one light submodule
(``crystalprop.io.formats``, ``crystalprop.io.discovery``) does not import pymatgen.
"""

from __future__ import annotations

from crystalprop.utils.lazy import lazy_attributes

_HOMES = {
    "Crystal": "crystal",
    "iter_records": "discovery",
    "iter_structure_paths": "discovery",
    "format_from_name": "formats",
    "looks_like_structure_name": "formats",
    "StructureReadError": "readers",
    "StructureRecord": "readers",
    "detect_format": "readers",
    "iter_file_records": "readers",
    "read_file": "readers",
    "read_file_with_timeout": "readers",
    "structure_from_dict": "readers",
    "structure_from_text": "readers",
    "validate_structure": "readers",
}

__all__ = sorted(_HOMES)

__getattr__ = lazy_attributes("crystalprop.io", _HOMES)
