"""Structure formats recognised from file names.

Kept apart from the parsers (and free of pymatgen) so that listing the files of a large
folder costs no heavy import in the process that only hands the paths on.
"""

from __future__ import annotations

import os

CIF_SUFFIXES = (".cif",)
POSCAR_SUFFIXES = (".vasp", ".poscar")
POSCAR_PREFIXES = ("poscar", "contcar")
JSON_SUFFIXES = (".json",)
STRUCTURE_SUFFIXES = CIF_SUFFIXES + POSCAR_SUFFIXES + JSON_SUFFIXES


def _strip_gz(name: str) -> str:
    """Base name without a trailing ``.gz`` (any case)."""
    base = os.path.basename(name)
    return base[:-3] if base.lower().endswith(".gz") else base


def format_from_name(path: str) -> str | None:
    """Structure format implied by a file name (``.gz`` ignored), or None."""
    base = _strip_gz(path).lower()
    if base.endswith(CIF_SUFFIXES):
        return "cif"
    if base.endswith(JSON_SUFFIXES):
        return "json"
    if base.endswith(POSCAR_SUFFIXES) or base.startswith(POSCAR_PREFIXES):
        return "poscar"
    return None


def structure_stem(name: str) -> str:
    """A file name without ``.gz`` and its structure suffix (``mp-1.cif.gz`` -> ``mp-1``); names
    without such a suffix (``POSCAR_Si``) are returned whole."""
    base = _strip_gz(name)
    suffix = next((s for s in STRUCTURE_SUFFIXES if base.lower().endswith(s)), None)
    return base[: -len(suffix)] if suffix else os.path.basename(name)


def looks_like_structure_name(name: str) -> bool:
    """Whether a file name is one the folder scan should pick up."""
    return format_from_name(name) is not None
