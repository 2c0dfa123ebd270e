"""Structure formats recognised from file names.

Kept apart from the parsers (and free of pymatgen and ASE) so that listing the files of a
large folder costs no heavy import in the process that only hands the paths on.
"""

from __future__ import annotations

import gzip
import os
import re

CIF_SUFFIXES = (".cif", ".mcif")  # .mcif: magnetic CIF (MAGNDATA), read as its atoms' structure
POSCAR_SUFFIXES = (".vasp", ".poscar")
POSCAR_PREFIXES = ("poscar", "contcar")
JSON_SUFFIXES = (".json",)

ASE_FORMATS = {
    "extxyz": "extended XYZ",
    "espresso-in": "Quantum ESPRESSO input",
    "espresso-out": "Quantum ESPRESSO output",
    "castep-cell": "CASTEP .cell",
    "vasp-xml": "vasprun.xml",
    "vasp-out": "OUTCAR",
}
"""Formats read through ASE (its format names), with the name a user knows them by."""

_ASE_SUFFIXES = {".extxyz": "extxyz", ".xyz": "extxyz", ".pwi": "espresso-in", ".pwo": "espresso-out",
                 ".cell": "castep-cell"}
STRUCTURE_SUFFIXES = CIF_SUFFIXES + POSCAR_SUFFIXES + JSON_SUFFIXES + tuple(_ASE_SUFFIXES)
"""Suffixes that name a structure file's format, so that a data set's id matches the file name without them."""
QE_SUFFIXES = (".in", ".out")
"""pw.x file names too common to trust alone: a folder scan looks inside them first."""
SNIFF_BYTES = 8192

_PW_OUTPUT = re.compile(r"Program PWSCF\b")
_PW_INPUT = (re.compile(r"^\s*&system\b", re.IGNORECASE | re.MULTILINE),
             re.compile(r"^\s*atomic_positions\b", re.IGNORECASE | re.MULTILINE))
_CASTEP_LATTICE = re.compile(r"^\s*%block\s+lattice_(cart|abc)\b", re.IGNORECASE | re.MULTILINE)
_VASPRUN = re.compile(r"<modeling>\s*<generator>")
_OUTCAR = re.compile(r"\s*vasp\.\d")
_XYZ_ATOM = re.compile(r"\s*[A-Za-z]{1,3}(\s+\S+){3}")


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
    return _ase_format_from_name(base)


def _ase_format_from_name(base: str) -> str | None:
    """ASE format of a lower-case base name: by suffix, ``vasprun*.xml`` or ``OUTCAR*``."""
    if base.startswith("vasprun") and base.endswith(".xml"):
        return "vasp-xml"
    if base.startswith("outcar"):
        return "vasp-out"
    return _ASE_SUFFIXES.get(os.path.splitext(base)[1])


def _is_xyz(text: str) -> bool:
    """An atom count, a comment line, then an element symbol and three coordinates."""
    lines = text.lstrip("\r\n").splitlines()[:3]
    return (len(lines) == 3 and lines[0].strip().isdigit() and int(lines[0]) > 0
            and _XYZ_ATOM.match(lines[2]) is not None)


def ase_format_from_content(text: str) -> str | None:
    """The ASE format a text is written in, from its first lines or its namelists and blocks."""
    head = text[:SNIFF_BYTES]
    first_line = head.lstrip("\r\n").split("\n", 1)[0]
    if _PW_OUTPUT.search(head):
        return "espresso-out"
    if _VASPRUN.search(head):
        return "vasp-xml"
    if _OUTCAR.match(first_line):
        return "vasp-out"
    if _is_xyz(head):
        return "extxyz"
    if all(pattern.search(text) for pattern in _PW_INPUT):
        return "espresso-in"
    if _CASTEP_LATTICE.search(text):
        return "castep-cell"
    return None


def may_be_pw_x_name(name: str) -> bool:
    """A ``.in``/``.out`` name (``.gz`` ignored): a pw.x file perhaps, to be told by :func:`is_pw_x_file`."""
    return _strip_gz(name).lower().endswith(QE_SUFFIXES)


def is_pw_x_file(path: str) -> bool:
    """Whether a file (gzipped or not) starts like a pw.x input or output."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                head = handle.read(SNIFF_BYTES)
    except (OSError, EOFError):
        return False
    return ase_format_from_content(head.decode("latin-1")) in ("espresso-in", "espresso-out")


def structure_stem(name: str) -> str:
    """A file name without ``.gz`` and its structure suffix (``mp-1.cif.gz`` -> ``mp-1``); names
    without such a suffix (``POSCAR_Si``) are returned whole."""
    base = _strip_gz(name)
    suffix = next((s for s in STRUCTURE_SUFFIXES if base.lower().endswith(s)), None)
    return base[: -len(suffix)] if suffix else os.path.basename(name)


def looks_like_structure_name(name: str) -> bool:
    """Whether a file name is one the folder scan should pick up without looking inside."""
    return format_from_name(name) is not None
