"""Read crystal structures from CIF, POSCAR/CONTCAR and JSON files.

Pymatgen does the parsing (ordered P1 CIFs take the direct path of
:mod:`crystalprop.io.cif_p1`); this module detects the format from content and name,
enforces size and time limits, and turns every failure into a one-line
:class:`StructureReadError` that a user can act on.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import re
import stat
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator

import numpy as np
from pymatgen.core import DummySpecies, Element, Lattice, Structure
from pymatgen.io.cif import CifParser

from crystalprop.io.cif_p1 import p1_structure
from crystalprop.io.cif_sites import FORMULA_KEY, check_type_symbols, formula_shortfall, occupancy_excess
from crystalprop.io.cif_symmetry import (NO_SYMMETRY_NOTE, ambiguous_origin, p1_fallback, rhombohedral_axes,
                                         symmetry_supplement, unknown_operations)
from crystalprop.io.discovery import has_glob
from crystalprop.io.formats import ASE_FORMATS, ase_format_from_content, format_from_name
from crystalprop.io.limits import MAX_FILE_BYTES, PIPE_WAIT_S, READ_TIMEOUT_S
from crystalprop.io.result_files import KEY as PROVENANCE_KEY, opens_as_evaluation_metrics
from crystalprop.utils.timelimit import run_with_time_limit

GZIP_MAGIC = b"\x1f\x8b"
WRAPPER_ID_KEYS = ("id", "material_id", "jid")
WRAPPER_STRUCTURE_KEYS = ("structure", "atoms", "cif", "poscar")  # as train reads records
RECORD_LIST_KEYS = ("records", "data")
OVERLAP_DISTANCE = 0.1
MAX_ABS_COORD = 1e6
DISTANCE_MATRIX_MAX_SITES = 2000
MAX_REPORTED_CLOSE_PAIRS = 10
MAX_REASON_CHARS = 240
READ_NOTES_KEY = "crystalprop_read_notes"
"""``Structure.properties`` key of a parser's notes on what it read (e.g. a CIF without symmetry read as
P1); :func:`iter_file_records` moves them to the record's warnings."""

_CIF_BLOCK_SPLIT = re.compile(r"^\s*data_", re.MULTILINE)
_CIF_CELL_TAG = re.compile(r"_cell_length_a", re.IGNORECASE)

NameStructure = tuple[str, Structure]
# a bare symbol of a group with two origin choices is read in both; the other origin is taken where its atoms
# are this much farther apart: read in the wrong origin, a site's copies come near the right ones (diamond:
# 1.92 against 2.35 Å, spinel: 0.17-0.28 against 1.92 Å), where two right readings would not differ at all
ORIGIN_DISTANCE_RATIO = 1.1
# symmetry copies of one site closer than this in each fractional coordinate are one atom (pymatgen: 1e-4).
# A file's 3 decimals are off by up to 5e-4 each, and an operation such as (-y, x-y) adds two of them, so the
# copies of (0.333, 0.667) land up to 1.5e-3 apart (0.003 Å in wurtzite). 2e-3 is 0.02 Å in a 10 Å cell,
# far below any bond and below OVERLAP_DISTANCE: it merges only copies that would be refused as overlapping.
SITE_TOLERANCE = 2e-3


class StructureReadError(Exception):
    """A structure file could not be read; ``str(e)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


NameItem = tuple[str, Structure | StructureReadError]
"""One structure of a file, or why that one could not be read (the file's other structures are kept)."""


@dataclass
class StructureRecord:
    """One structure (or one failure) found while reading inputs.

    ``name`` is the file path, or ``path#block`` / ``path#id`` when a file
    holds several structures; ``source`` is the file path. Exactly one of
    ``structure`` and ``error`` is set. ``warnings`` carries non-fatal
    validation notes (e.g. atoms unusually close).
    """

    name: str
    source: str
    structure: Structure | None
    error: str | None
    warnings: list[str] = field(default_factory=list)


def _one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Collapse whitespace so a reason fits on one line, cutting long text."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _is_float(token: str) -> bool:
    try:
        return math.isfinite(float(token))
    except ValueError:
        return False


def _is_number_row(line: str, count: int) -> bool:
    tokens = line.split()
    return len(tokens) >= count and all(_is_float(t) for t in tokens[:count])


def _looks_like_poscar(text: str) -> bool:
    """Line 2 a number, lines 3-5 three numbers each: the fixed POSCAR header."""
    lines = text.splitlines()[:5]
    if len(lines) < 5 or len(lines[1].split()) != 1:
        return False
    return _is_float(lines[1]) and all(_is_number_row(line, 3) for line in lines[2:5])


def _format_from_content(text: str) -> str | None:
    head = text.lstrip("\ufeff \t\r\n")
    if head[:1] in ("{", "["):
        return "json"
    if _CIF_BLOCK_SPLIT.search(text) and _CIF_CELL_TAG.search(text):
        return "cif"
    if _looks_like_poscar(text):
        return "poscar"
    return ase_format_from_content(text)


def detect_format(path: str, text: str) -> str:
    """Return "cif", "poscar", "json" or one of ``ASE_FORMATS`` for a text, trusting content over name.

    Content decides when it is recognisable, so a misnamed file still reads;
    the name only breaks the tie for damaged text (e.g. a truncated POSCAR),
    so the user gets a format-specific reason instead of "unknown format".
    """
    fmt = _format_from_content(text) or format_from_name(path)
    if fmt is None:
        raise StructureReadError(path, "not a CIF, POSCAR or JSON structure")
    return fmt


_NO_STRUCTURE_PREFIX = "No structure parsed for section"
_MISSING_TAG = re.compile(r"^'(_[\w.\-]+)'$")


def _warning_summary(caught: list[warnings.WarningMessage]) -> str:
    """Short text of the pymatgen warnings that say why a CIF block gave no structure.

    pymatgen reports the cause as "No structure parsed for section N in CIF.\n<cause>",
    where a missing tag shows as a bare quoted KeyError; other warnings are noise then.
    """
    messages = [str(item.message) for item in caught]
    causes = [m.split("\n", 1)[1] for m in messages if m.startswith(_NO_STRUCTURE_PREFIX) and "\n" in m]
    if not causes:
        causes = [m for m in messages if not m.startswith("Issues encountered while parsing CIF")]
    short = []
    for cause in causes:
        match = _MISSING_TAG.match(cause.strip())
        text = f"missing {match.group(1)}" if match else _one_line(cause, 120)
        if text and text not in short:
            short.append(text)
    return "; ".join(short)


def _mask_text_field_headers(text: str) -> str:
    """Comment out ``data_`` lines inside ``;`` text fields (e.g. an embedded SHELXL FCF file).

    They are part of a text value, not block headers, but a line-based split (pymatgen's
    CifFile included) would start a new data block there and lose the rest of the real one.
    """
    lines = text.splitlines(keepends=True)
    inside = False
    for i, line in enumerate(lines):
        if line.startswith(";"):
            inside = not inside
        elif inside and line.lstrip().startswith("data_"):
            lines[i] = f"#{line}"
    return "".join(lines)


def _split_cif_blocks(text: str) -> list[str]:
    """CIF text per ``data_`` block; ``data_`` lines inside text fields start no block."""
    parts = _CIF_BLOCK_SPLIT.split(f"x\n{_mask_text_field_headers(text)}")[1:]
    return [f"data_{part}" for part in parts]


def _cif_parser(block_text: str, name: str) -> CifParser:
    try:
        parser = CifParser.from_str(block_text, site_tolerance=SITE_TOLERANCE,
                                    occupancy_tolerance=1 + OCCUPANCY_ROUNDING)
        _default_occupancies(parser)
        return parser
    except StructureReadError:
        raise
    except KeyError as exc:
        tag = str(exc.args[0]) if exc.args else ""
        if tag.startswith("_atom_site_"):
            raise StructureReadError(name, f"no {tag} column in the atom site loop: core CIF needs one") from exc
        raise StructureReadError(name, f"malformed or truncated CIF (broken tag or loop_ table; KeyError: {exc})") from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {_one_line(str(exc), 120)}"
        raise StructureReadError(name, f"malformed or truncated CIF (broken tag or loop_ table; {detail})") from exc


CELL_TAGS = tuple(f"_cell_{kind}_{axis}" for kind, axes in (("length", "abc"), ("angle", ("alpha", "beta", "gamma")))
                  for axis in axes)
"""The six cell parameters a CIF data block with atoms gives."""


def _default_occupancies(parser: CifParser) -> None:
    """Give an occupancy written ``.`` or ``?`` (CIF's inapplicable and unknown) the dictionary's default, 1: pymatgen
    dropped a ``.`` site, so that NaCl was read as Na."""
    for block in parser._cif.data.values():  # pymatgen keeps the blocks' tags there; as_dict and parsing read them
        occupancies = block.data.get("_atom_site_occupancy")
        if isinstance(occupancies, list) and any(str(v).strip() in (".", "?") for v in occupancies):
            block.data["_atom_site_occupancy"] = ["1" if str(v).strip() in (".", "?") else v for v in occupancies]


def _parse_cif_block(block_text: str, name: str) -> tuple[str, Structure] | None:
    """(block name, structure) for one data block; None for blocks without a cell.

    Symmetry that pymatgen would not read (see :mod:`crystalprop.io.cif_symmetry`) is appended to
    the block under tags it reads, and operations given as unknown are taken out; a block left
    without any symmetry is read as P1 with a note.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = _cif_parser(block_text, name)
        blocks = parser.as_dict()  # after pymatgen's clean-up of the tags and coordinates
        if not blocks:
            return None
        block_name, data = next(iter(blocks.items()))
        if "_cell_length_a" not in data:
            return None
        lacking = [tag for tag in CELL_TAGS if tag not in data]
        if lacking:  # pymatgen said "cannot reshape array of size 1 into shape (3,3)"
            raise StructureReadError(name, f"CIF data block '{block_name}' has no {', '.join(lacking)}: give all six "
                                           f"of {', '.join(CELL_TAGS)} (an angle's dictionary default of 90° is not "
                                           "assumed: a missing angle is more often lost than meant)")
        try:
            supplement = symmetry_supplement(data)
        except ValueError as exc:
            raise StructureReadError(name, f"CIF data block '{block_name}': {exc}") from exc
        axes = rhombohedral_axes(data)
        if axes:
            supplement = axes[0]  # in place of the hexagonal axes' operations of a symbol pymatgen cannot read
        try:
            check_type_symbols(data)
        except ValueError as exc:
            raise StructureReadError(name, f"CIF data block '{block_name}': {exc}") from exc
        cleaned = unknown_operations(block_text, data)
        if supplement or cleaned:
            parser = _cif_parser(f"{(cleaned or block_text).rstrip()}\n{supplement}", name)
            data = next(iter(parser.as_dict().values()))
        fast = p1_structure(data)
        if fast is not None:
            return block_name, _stated_formula_checked(fast, data, block_name, name)
        origin = ambiguous_origin(data)
        try:
            structure, note = parser.parse_structures(primitive=False)[0], axes[1] if axes else None
        except StructureReadError:
            raise
        except Exception as exc:
            detail = _occupancy_reason(data, parser, caught) or _warning_summary(caught) or _one_line(str(exc), 160)
            failure = StructureReadError(name, f"no structure in CIF data block '{block_name}': {detail}")
            if not origin:
                raise failure from exc
            structure = None
        if origin:
            structure, note = _origin_choice(f"{(cleaned or block_text).rstrip()}\n{supplement}", structure, *origin)
            if structure is None:
                raise failure
    try:
        note = p1_fallback(data, parser.warnings) or note
    except ValueError as exc:
        raise StructureReadError(name, f"CIF data block '{block_name}': {exc}") from exc
    if note:
        structure.properties[READ_NOTES_KEY] = [note]
    return block_name, _stated_formula_checked(structure, data, block_name, name)


def _stated_formula_checked(structure: Structure, data: dict, block_name: str, name: str) -> Structure:
    """``structure``, refused where its sites lack atoms of the block's stated formula (a file cut at a line
    keeps a valid CIF of fewer sites), with the likeliest cause; where only hydrogen is lacking (X-ray
    structures often leave it out) it is read, with a note."""
    shortfall = formula_shortfall(data, structure.composition)
    if shortfall is None:
        return structure
    element, found, stated = shortfall.lacking[0]
    count = f"{element}: {found:g} in the cell, {shortfall.arithmetic} states {stated:g}"
    if all(e in ("H", "D", "T") for e, _, _ in shortfall.lacking):
        structure.properties.setdefault(READ_NOTES_KEY, []).append(
            f"hydrogen missing ({count}): X-ray structures often leave it out; predicted without it")
        return structure
    notes = structure.properties.get(READ_NOTES_KEY, [])
    ratios = {round(found / stated, 2) for _, found, stated in shortfall.lacking}
    if NO_SYMMETRY_NOTE in notes:
        cause = ("the file gives no symmetry (space group or operators), so only its listed sites were read: give "
                 "its space group")
    elif len(shortfall.lacking) == shortfall.n_elements and len(ratios) == 1 and 0 < min(ratios) < 1:
        cause = (f"every element short by the same ratio ({min(ratios):g}): its Z or its symmetry operators (a "
                 "centring lost?) disagree with its formula")
    else:
        cause = "a file cut short (its last sites lost) or sites left out"
    raise StructureReadError(name, f"CIF data block '{block_name}': its {int(round(structure.composition.num_atoms))} "
                                   f"sites lack atoms of its {FORMULA_KEY} ({count}): {cause}")


def _occupancy_reason(data: dict, parser: CifParser, caught: list[warnings.WarningMessage]) -> str | None:
    """The rows behind pymatgen's "Occupancy 2.0 exceeded tolerance", by label; None for other failures."""
    if not any("exceeded tolerance" in str(item.message) for item in caught):
        return None
    return occupancy_excess(data, getattr(parser, "symmetry_operations", None) or [], SITE_TOLERANCE)


def _shortest_distance(structure: Structure) -> float | None:
    """The shortest distance between two sites (periodic images included); None for one site or a large cell."""
    if not 1 < len(structure) <= DISTANCE_MATRIX_MAX_SITES:
        return None
    distances = structure.distance_matrix
    return float(distances[~np.eye(len(structure), dtype=bool)].min())


def _origin_choice(block_text: str, first: Structure | None, group: str,
                   second_loop: str) -> tuple[Structure | None, str | None]:
    """The block read in origin choice 1 (``first``, pymatgen's reading of a bare symbol; None where that
    failed) or 2, with a note: origin choice 2 where origin choice 1 failed, where its atoms are
    ORIGIN_DISTANCE_RATIO times farther apart, or, where the shortest distances are alike (a rigid bond in
    both), where it has fewer sites (in the wrong origin, special positions become general ones).
    ``group``: how the block names its space group; ``second_loop``: the CIF lines of origin choice 2's
    operations. (None, None) where neither reading succeeds."""
    try:
        second = _cif_parser(f"{block_text}\n{second_loop}", "").parse_structures(primitive=False)[0]
    except Exception:  # noqa: BLE001  (origin choice 1 stands, with the note)
        second = None
    told = f"{group} has two origin choices and the file does not say which"
    if first is None:
        return (second, f"{told}: read in origin choice 2 (origin choice 1 puts two atoms on one position)"
                if second is not None else None)
    d1 = _shortest_distance(first)
    d2 = _shortest_distance(second) if second is not None else None
    if d1 is None or d2 is None:
        return first, f"{told}: read in origin choice 1"
    if d2 > ORIGIN_DISTANCE_RATIO * d1:
        return second, f"{told}: read in origin choice 2 (atoms {d2:.2f} Å apart; {d1:.2f} Å in origin choice 1)"
    if d1 <= ORIGIN_DISTANCE_RATIO * d2 and len(second) < len(first):
        return second, (f"{told}: read in origin choice 2 ({len(second)} sites against {len(first)} in origin choice "
                        f"1; shortest distances alike, {d2:.2f} and {d1:.2f} Å)")
    return first, f"{told}: read in origin choice 1 (atoms {d1:.2f} Å apart; {d2:.2f} Å in origin choice 2)"


def _unique_block_names(names: list[str]) -> list[str]:
    """Suffix repeated block names or record ids (``x``, ``x~2``) so each name is an id."""
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        unique.append(name if counts[name] == 1 else f"{name}~{counts[name]}")
    return unique


def _cif_block_item(block_text: str, name: str) -> tuple[str, Structure | StructureReadError] | None:
    """(block name, structure or why it could not be read) for one data block; None for a block
    without a cell, also one that cannot be parsed (a publication block, say)."""
    try:
        return _parse_cif_block(block_text, name)
    except StructureReadError as exc:
        if not _CIF_CELL_TAG.search(block_text):
            return None
        return block_text.split(None, 1)[0][len("data_"):], exc


def _read_cif(text: str, name: str) -> list[NameItem]:
    """One structure per data block that has a cell; blocks without one are skipped, and a block
    that cannot be read is an error of its own, not of the whole file.

    Blocks are parsed one at a time because pymatgen's parse_structures drops
    failing blocks silently, which would misalign names and structures, and
    its CifFile keeps only the last of several blocks with the same name.
    """
    found = [r for r in (_cif_block_item(b, name) for b in _split_cif_blocks(text)) if r is not None]
    if not found:
        raise StructureReadError(name, "CIF has no crystal structure (no data block with _cell_length_a)")
    if len(found) == 1:
        if isinstance(found[0][1], StructureReadError):
            raise found[0][1]
        return [(name, found[0][1])]
    labels = _unique_block_names([block for block, _ in found])
    return [(f"{name}#{label}", StructureReadError(f"{name}#{label}", item.reason)
             if isinstance(item, StructureReadError) else item) for label, (_, item) in zip(labels, found)]


VASP4_REASON = (
    "VASP 4 POSCAR without element names: add a line with the element symbols "
    "(e.g. 'Si O') above the atom counts line, as in VASP 5"
)


def _volume_as_scale(text: str) -> str:
    """``text`` with a negative scale factor (VASP reads it as the cell volume) replaced by the factor it
    stands for, (volume / volume of the lattice as written)^(1/3).

    pymatgen scales the lattice to that volume but multiplies Cartesian coordinates by the raw negative
    number, which scrambles the atoms; with the factor written out, both are scaled alike."""
    lines = text.split("\n")  # as pymatgen counts lines (str.splitlines also breaks at form feeds and others)
    tokens = lines[1].split() if len(lines) > 4 else []
    try:
        scale = float(tokens[0]) if tokens else 0.0
        lattice = np.array([[float(x) for x in line.split()[:3]] for line in lines[2:5]])
    except ValueError:
        return text  # malformed: pymatgen says how
    volume = abs(float(np.linalg.det(lattice))) if lattice.shape == (3, 3) else 0.0
    if scale >= 0 or not volume > 0:
        return text
    lines[1] = " ".join([repr((-scale / volume) ** (1 / 3))] + tokens[1:])
    return "\n".join(lines)


PSEUDO_HYDROGEN = re.compile(r"^H\d*\.\d+$")
"""VASP's pseudo-hydrogen POTCAR names (H.75, H1.25, ...) on a POSCAR's species line."""


def _poscar_spellings(text: str, name: str) -> str:
    """``text`` with spellings VASP reads and pymatgen refuses made plain: comments after ``!`` (past the first
    line, which is one), and element symbols in lower or upper case on the species line; two or three scale
    factors (VASP 6 takes three, per axis) are refused by name."""
    lines = text.split("\n")  # as pymatgen counts lines
    if len(lines) < 7:
        return text
    lines[1:] = [line.split("!", 1)[0].rstrip() if "!" in line else line for line in lines[1:]]
    scale = lines[1].split("#", 1)[0].split()
    if len(scale) == 3 and _numbers(" ".join(scale)) is not None:
        raise StructureReadError(name, "three scale factors on line 2 (VASP 6's per-axis scaling) are not read: "
                                       "multiply them into the lattice vectors and give one factor")
    if len(scale) == 2 and _numbers(" ".join(scale + ["0"])) is not None:
        raise StructureReadError(name, f"two numbers on the scale line ({' '.join(scale)}): VASP takes one scale "
                                       "factor (or three, per axis)")
    if scale:
        lines[1] = scale[0]
    species = lines[5].split()
    if species and all(t[:1].isalpha() for t in species):  # "li", "NA": symbols as pymatgen knows them (Li, Na)
        lines[5] = " ".join(t.capitalize() if t.isalpha() else t[:1].upper() + t[1:] for t in species)
    return "\n".join(lines)


def _numbers(line: str) -> list[float] | None:
    """The numbers a line starts with (at least three, as a coordinate line), or None."""
    try:
        values = [float(x) for x in line.split()[:3]]
    except ValueError:
        return None
    return values if len(values) == 3 else None


def _poscar_disagreement(text: str) -> str | None:
    """Why a VASP 5 POSCAR's species line, counts line and coordinate lines disagree, or None: VASP refuses such a
    file, pymatgen reads another compound from it (counts given to the first names; atoms past the counts left out)."""
    lines = text.split("\n")  # as pymatgen counts lines
    if len(lines) < 8 or not all(t.isalpha() or "_" in t or "/" in t or "." in t for t in lines[5].split()):
        return None  # VASP 4 (counts on line 6) or too short: pymatgen's own checks say what is wrong
    species, counts = lines[5].split(), lines[6].split()
    if not species or not counts or not all(c.isdigit() for c in counts):
        return None
    if len(species) != len(counts):
        return (f"its species line names {len(species)} elements ({' '.join(species)}) but its counts line gives "
                f"{len(counts)} counts ({' '.join(counts)}): VASP needs one count per species")
    first = 8 if lines[7].strip()[:1] in ("s", "S") else 7  # after 'Selective dynamics' and the coordinate line
    n = sum(int(c) for c in counts)
    after = first + 1 + n
    if after < len(lines) and lines[after].strip() and _numbers(lines[after]) is not None:
        more = next((k for k, line in enumerate(lines[after:]) if _numbers(line) is None), len(lines) - after)
        return (f"its counts line counts {n} atoms ({' '.join(counts)}), but {n + more} coordinate lines follow (VASP "
                "starts a velocity block after a blank line): counts or coordinates lost in an edit")
    return None


def _read_poscar(text: str, name: str) -> list[NameStructure]:
    """Parse a VASP 5/6 POSCAR/CONTCAR; refuse VASP 4 files whose species pymatgen would invent.

    Poscar.from_str is used (not from_file) so pymatgen never looks for a
    POTCAR next to the file; velocities are not read since only the
    structure is needed and a damaged velocity block should not fail it.
    """
    from pymatgen.io.vasp import Poscar  # noqa: PLC0415  (imported here: it costs ~0.9 s, CIF reading does not need it)

    text = _poscar_spellings(text, name)
    disagreement = _poscar_disagreement(text)
    if disagreement:
        raise StructureReadError(name, f"inconsistent POSCAR: {disagreement}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            poscar = Poscar.from_str(_volume_as_scale(text), default_names=None, read_velocities=False)
        except StructureReadError:
            raise
        except IndexError as exc:
            raise StructureReadError(
                name, "truncated or inconsistent POSCAR: fewer lines or species than the atom counts need"
            ) from exc
        except Exception as exc:
            raise StructureReadError(name, f"malformed POSCAR: {_one_line(str(exc), 160)}") from exc
    if not poscar.true_names:
        raise StructureReadError(name, VASP4_REASON)
    structure = poscar.structure
    pseudo = [t for t in text.split("\n")[5].split() if PSEUDO_HYDROGEN.match(t)] if text.count("\n") > 5 else []
    if pseudo:  # pymatgen reads "H.75" as H: say so, the compound is not the one computed
        structure.properties.setdefault(READ_NOTES_KEY, []).append(
            f"pseudo-hydrogen {', '.join(pseudo)} (a POTCAR of fractional charge, passivating a surface) read as H")
    return [(name, structure)]


def _without_properties(d: dict[str, Any]) -> dict[str, Any]:
    """Copy of a Structure dict without site/structure ``properties``.

    Pymatgen decodes those with MontyDecoder, which imports and instantiates
    whatever classes a file names; untrusted files must not reach it.
    """
    clean = {k: v for k, v in d.items() if k != "properties"}
    sites = d.get("sites")
    if isinstance(sites, list):
        clean["sites"] = [
            {k: v for k, v in s.items() if k != "properties"} if isinstance(s, dict) else s for s in sites
        ]
    return clean


def _is_pymatgen_dict(d: dict[str, Any]) -> bool:
    return d.get("@class") == "Structure" or ("lattice" in d and "sites" in d)


def _is_jarvis_dict(d: dict[str, Any]) -> bool:
    return {"lattice_mat", "coords", "elements"} <= d.keys()


def _structure_from_jarvis(d: dict[str, Any]) -> Structure:
    cartesian = d.get("cartesian")
    if not isinstance(cartesian, bool):
        raise ValueError("JARVIS atoms dict needs 'cartesian' set to true or false")
    if len(d["elements"]) != len(d["coords"]):
        raise ValueError(f"JARVIS atoms dict has {len(d['elements'])} elements but {len(d['coords'])} coords")
    return Structure(Lattice(d["lattice_mat"]), d["elements"], d["coords"], coords_are_cartesian=cartesian)


def structure_from_dict(d: dict[str, Any]) -> Structure:
    """Structure from a pymatgen ``Structure.as_dict()`` or a JARVIS atoms dict.

    Raises ValueError with a one-line reason for anything else or for a
    dict that pymatgen cannot build a structure from.
    """
    if not isinstance(d, dict):
        raise ValueError(f"expected a structure dict, got {type(d).__name__}")
    try:
        if _is_pymatgen_dict(d):
            return Structure.from_dict(_without_properties(d))
        if _is_jarvis_dict(d):
            return _structure_from_jarvis(d)
    except ValueError as exc:
        raise ValueError(_one_line(str(exc), 160)) from exc
    except Exception as exc:
        raise ValueError(f"invalid structure dict: {type(exc).__name__}: {_one_line(str(exc), 120)}") from exc
    if PROVENANCE_KEY in d:
        raise ValueError("crystalprop's own results (the output of predict), not a structure")
    if opens_as_evaluation_metrics(d):
        raise ValueError("crystalprop's own results (the metrics.json of evaluate), not a structure")
    keys = ", ".join(sorted(map(str, d))[:8])
    raise ValueError(f"not a pymatgen Structure dict or JARVIS atoms dict (keys: {keys})")


def _unwrap(item: Any) -> tuple[str | None, Any]:
    """(id, structure dict or text) for ``{"id": ..., "structure"/"atoms"/"cif"/"poscar": ...}`` records."""
    if not isinstance(item, dict):
        return None, item
    inner_key = next((k for k in WRAPPER_STRUCTURE_KEYS if isinstance(item.get(k), (dict, str))), None)
    if inner_key is None or _is_pymatgen_dict(item) or _is_jarvis_dict(item):
        return None, item
    ident = next((item[k] for k in WRAPPER_ID_KEYS if item.get(k) is not None), None)
    return (None if ident is None else str(ident)), item[inner_key]


def _json_item(item: Any, label: str, name: str) -> tuple[str | None, Structure | StructureReadError]:
    """(id, structure) of one JSON item, or (id, the error naming ``label``) where it is no structure."""
    ident, inner = _unwrap(item)
    try:
        if isinstance(inner, str):  # CIF or POSCAR text; a record holds one structure: the first
            return ident, _every_structure(_items_from_text(inner, label))[0][1]
        return ident, structure_from_dict(inner)
    except StructureReadError as exc:
        return ident, StructureReadError(name, f"{label}: {exc.reason}")
    except ValueError as exc:
        return ident, StructureReadError(name, f"{label}: {exc}")


class InvalidJsonLine(str):
    """A line of JSON Lines text that is no JSON: its text, with its line number and the decoder's message."""

    def __new__(cls, text: str, line: int, error: str) -> "InvalidJsonLine":
        value = super().__new__(cls, text)
        value.line, value.error = line, error
        return value


PairsHook = Callable[[list[tuple[str, Any]]], Any]
"""A :func:`json.loads` ``object_pairs_hook``: builds an object from its (key, value) pairs."""


def _json_lines(text: str, object_pairs_hook: PairsHook | None = None) -> list[Any] | None:
    """The values of JSON Lines text (one per non-blank line), or None where its first line is no
    JSON object; a bad later line is kept as an :class:`InvalidJsonLine`, to fail as an item of its own."""
    items: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line, object_pairs_hook=object_pairs_hook))
        except (ValueError, RecursionError) as exc:
            if not items:
                return None
            items.append(InvalidJsonLine(line, number, _one_line(str(exc), 120)))
    return items if len(items) > 1 and isinstance(items[0], dict) else None


def json_records(text: str, object_pairs_hook: PairsHook | None = None) -> Any:
    """The records of a JSON text, as both predict and train read them: a JSON document's value (a
    dict's list under "records" or "data" in its place, the first that is not empty), or JSON Lines
    as the list of their values, a bad later line kept as its text so that it fails as an item of
    its own. Raises ValueError ("invalid or truncated JSON: ...") where the text is neither.
    ``object_pairs_hook``: as :func:`json.loads`'s (to see keys an object names twice)."""
    try:
        data = json.loads(text, object_pairs_hook=object_pairs_hook)
    except (ValueError, RecursionError) as exc:
        data = _json_lines(text, object_pairs_hook)
        if data is None:
            raise ValueError(f"invalid or truncated JSON: {_one_line(str(exc), 160)}") from None
    if isinstance(data, dict):
        lists = [data[k] for k in RECORD_LIST_KEYS if isinstance(data.get(k), list)]
        data = next((items for items in lists if items), lists[0] if lists else data)  # an empty list only if all are
    return data


def _read_json(text: str, name: str) -> list[NameItem]:
    """A structure dict, a wrapped record, or a list of either (``path#i`` / ``path#id``, repeats ``~2``),
    also as JSON Lines or under "records" or "data" (:func:`json_records`); a bad item of a list is an
    error of its own, not of the whole file."""
    try:
        data = json_records(text)
    except ValueError as exc:
        raise StructureReadError(name, str(exc)) from None
    if not isinstance(data, list):
        found = _json_item(data, "JSON", name)[1]
        if isinstance(found, StructureReadError):
            raise found
        return [(name, found)]
    if not data:
        raise StructureReadError(name, "JSON holds an empty list")
    items = [_json_item(item, f"item {i}", name) for i, item in enumerate(data)]
    labels = _unique_block_names([str(i) if ident is None else ident for i, (ident, _) in enumerate(items)])
    return [(f"{name}#{label}", s) for label, (_, s) in zip(labels, items)]


_PARSERS: dict[str, Callable[[str, str], list[NameItem]]] = {
    "cif": _read_cif,
    "poscar": _read_poscar,
    "json": _read_json,
}


def _every_structure(items: list[NameItem]) -> list[NameStructure]:
    """``items`` where each was read; else the first item's error is raised."""
    pairs: list[NameStructure] = []
    for name, item in items:
        if isinstance(item, StructureReadError):
            raise item
        pairs.append((name, item))
    return pairs


def _without_read_notes(pairs: list[NameStructure]) -> list[NameStructure]:
    """``pairs`` with the reader's notes taken off each structure: they are for the record's warnings
    (:func:`iter_file_records`), not for a structure handed to the user, which would carry them on."""
    for _, structure in pairs:
        structure.properties.pop(READ_NOTES_KEY, None)
    return pairs


def structure_from_text(text: str, name: str) -> list[NameStructure]:
    """Detect the format of a structure text and parse it into (name, structure) pairs.

    CIF, POSCAR and JSON are read by pymatgen; the formats of ``ASE_FORMATS`` by ASE.
    Any structure that cannot be read raises :class:`StructureReadError`.
    """
    return _without_read_notes(_every_structure(_items_from_text(text, name)))


def _items_from_text(text: str, name: str) -> list[NameItem]:
    """As :func:`structure_from_text`, with a bad item of a JSON list as an error of its own."""
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise StructureReadError(name, "empty file")
    fmt = detect_format(name, text)
    if fmt in ASE_FORMATS:
        from crystalprop.io.ase_reader import read_ase_text  # noqa: PLC0415  (imports this module)

        return read_ase_text(text, fmt, name)
    return _PARSERS[fmt](text, name)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):g} MB"


def _directory_reason(path: str) -> str:
    if os.access(path, os.R_OK | os.X_OK):
        return "cannot read: is a directory"
    return "cannot read: is a directory that cannot be listed (permission denied)"


def _missing_reason(path: str) -> str:
    """Why a path opens to nothing: a link names the target it lost (a purged scratch file, say)."""
    if os.path.islink(path):
        return f"broken link -> {os.path.realpath(path)}"
    if has_glob(path):
        return "no file matches this pattern"  # an unmatched glob comes as itself (discovery), for this row
    return "cannot read: no such file"


def _read_pipe(fd: int, limit: int, path: str) -> bytes:
    """Up to ``limit + 1`` bytes of a named pipe opened without blocking: a writer is awaited for
    PIPE_WAIT_S (``<(zcat x.cif.gz)`` may open its end after us), then its data read to the end."""
    deadline = time.monotonic() + PIPE_WAIT_S
    while True:
        try:
            first = os.read(fd, limit + 1)
        except BlockingIOError:  # a writer is there, its data not yet
            first = b""
            break
        if first or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not first and time.monotonic() > deadline:
        raise StructureReadError(path, f"cannot read: a named pipe that gave no data within {PIPE_WAIT_S:g} s "
                                       "(nothing writes to it)")
    os.set_blocking(fd, True)
    chunks, size = [first], len(first)
    while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_raw(path: str, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of a file, with OS errors as one-line reasons. A named pipe is opened
    without blocking, so one that nothing writes to (in a folder, or given by name) fails within PIPE_WAIT_S."""
    try:
        if hasattr(os, "O_NONBLOCK") and stat.S_ISFIFO(os.stat(path).st_mode):  # a named pipe (POSIX)
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", closefd=True) as pipe:
                return _read_pipe(pipe.fileno(), limit, path)
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise StructureReadError(path, _missing_reason(path)) from exc
    except IsADirectoryError as exc:
        raise StructureReadError(path, _directory_reason(path)) from exc
    except PermissionError as exc:
        raise StructureReadError(path, "cannot read: permission denied") from exc
    except OSError as exc:
        raise StructureReadError(path, f"cannot read: {(exc.strerror or str(exc)).lower()}") from exc


def _gunzip(raw: bytes, path: str, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes; larger output is refused as a likely gzip bomb."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(limit + 1)
    except EOFError as exc:
        raise StructureReadError(path, "truncated gzip file (compressed data ends early)") from exc
    except (OSError, ValueError) as exc:
        raise StructureReadError(path, f"corrupt gzip data: {_one_line(str(exc), 120)}") from exc
    if len(data) > limit:
        raise StructureReadError(
            path, f"decompressed size exceeds the {_mb(limit)} limit; refusing to read (possible gzip bomb)"
        )
    return data


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """File content, gunzipped when it starts with the gzip magic bytes; refused with a
    :class:`StructureReadError` beyond ``limit`` bytes (default MAX_FILE_BYTES) before or
    after decompression. Every input file is read through here."""
    limit = limit or MAX_FILE_BYTES
    raw = _read_raw(path, limit)
    if len(raw) > limit:
        raise StructureReadError(path, f"file is larger than the {_mb(limit)} limit; refusing to read")
    return _gunzip(raw, path, limit) if raw[:2] == GZIP_MAGIC else raw


OTHER_COMPRESSIONS = ((b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"))
"""Magic numbers of compressions that are not read, so that such a file is named for what it is."""


def _decode(data: bytes, path: str) -> str:
    """Text of a structure file; NUL bytes mean binary junk, not a structure."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    packed = next((kind for magic, kind in OTHER_COMPRESSIONS if data.startswith(magic)
                   and (kind != "bzip2" or data[4:10] == b"1AY&SY")), None)  # bzip2's block magic: not a text "BZh"
    if packed:
        raise StructureReadError(path, f"{packed}-compressed: decompress it first (gzip-compressed files are read)")
    if b"\x00" in data[:65536]:
        raise StructureReadError(path, "binary data: not a CIF, POSCAR or JSON structure")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_file(path: str) -> list[NameStructure]:
    """Read one (optionally gzipped) structure file into (name, structure) pairs.

    Every failure raises :class:`StructureReadError` with a one-line reason.
    """
    return _without_read_notes(_every_structure(_file_items(path)))


def _file_items(path: str) -> list[NameItem]:
    """As :func:`read_file`, with a bad item of a JSON list as an error of its own."""
    path = os.fspath(path)
    data = read_bytes(path)
    if not data.strip():
        raise StructureReadError(path, "empty file")
    return _items_from_text(_decode(data, path), path)


def _within(read: Callable[[str], list[NameItem]], path: str, seconds: float) -> list[NameItem]:
    """``read(path)`` with a wall-clock limit (see :func:`run_with_time_limit`)."""
    path = os.fspath(path)
    reason = f"took longer than {seconds:g} s to parse; skipped"
    return run_with_time_limit(lambda: read(path), seconds, lambda: StructureReadError(path, reason))


def read_file_with_timeout(path: str, seconds: float) -> list[NameStructure]:
    """:func:`read_file` with a wall-clock limit (see :func:`run_with_time_limit`)."""
    return _within(read_file, path, seconds)


DISORDER_REASON = (
    "disordered site(s) (partial occupancy) at site {site}: the model needs an ordered structure; "
    "order it first, e.g. with pymatgen's OrderDisorderedStructureTransformation"
)


OCCUPANCY_ROUNDING = 1e-3
"""A one-element site whose occupancy is this close to 1 is full: refinement programs and databases write
0.99999 (and 1.00001, which pymatgen scales down to 1 itself) for an occupancy of 1."""


def _round_full_sites(structure: Structure) -> list[str]:
    """Make each one-element site of occupancy within :data:`OCCUPANCY_ROUNDING` of 1 full, in place (a structure
    the readers made, never a caller's); a note for each site of the file (its symmetry copies share it)."""
    if structure.is_ordered:
        return []
    notes = []
    for index, site in enumerate(structure):
        if len(site.species) == 1 and not site.is_ordered:
            species, amount = next(iter(site.species.items()))
            if abs(amount - 1.0) <= OCCUPANCY_ROUNDING * (1 + 1e-9):  # 0.999 is a hair further in binary
                structure.replace(index, species, coords=site.frac_coords, properties=site.properties, label=site.label)
                label = site.label if site.label not in (None, site.species_string) else str(index)
                notes.append(f"site {label}: occupancy {amount:g} read as 1")
    notes = list(dict.fromkeys(notes))
    more = len(notes) - MAX_REPORTED_CLOSE_PAIRS
    return notes[:MAX_REPORTED_CLOSE_PAIRS] + ([f"{more} more sites of occupancy near 1 read as 1"] if more > 0 else [])


def _check_ordered(structure: Structure) -> None:
    """Refuse a site of partial or mixed occupancy, named by the file's label where it has one (the index is
    pymatgen's, after it sorted the sites) and with its occupancies as given (pymatgen shows 0.9999 as 1.0)."""
    if structure.is_ordered:
        return
    index, site = next((i, site) for i, site in enumerate(structure) if not site.is_ordered)
    occupancies = ", ".join(f"{species} {amount:g}" for species, amount in site.species.items())
    label = site.label if site.label not in (None, site.species_string) else str(index)
    raise ValueError(DISORDER_REASON.format(site=f"{label} ({occupancies})"))


def _check_cell(structure: Structure) -> None:
    matrix = structure.lattice.matrix
    if not np.all(np.isfinite(matrix)):
        raise ValueError("lattice has non-finite (NaN or infinite) values")
    if np.abs(matrix).max() > MAX_ABS_COORD:
        raise ValueError(f"lattice vectors longer than {MAX_ABS_COORD:g} Å")
    lengths = np.linalg.norm(matrix, axis=1)
    if lengths.min() < OVERLAP_DISTANCE:
        axis = "abc"[int(lengths.argmin())]
        raise ValueError(f"every atom overlaps its own periodic image: lattice vector {axis} is "
                         f"{lengths.min():.3g} Å long")
    volume = abs(float(np.linalg.det(matrix)))
    scale = float(np.prod(lengths))
    if volume < 1e-3 or volume < 1e-6 * scale:
        raise ValueError(
            f"cell volume is zero or near zero ({volume:.3g} Å³): the lattice vectors are (nearly) coplanar"
        )


def _check_coords(structure: Structure) -> None:
    coords = structure.cart_coords
    if not np.all(np.isfinite(coords)):
        index = int(np.argwhere(~np.isfinite(coords))[0][0])
        raise ValueError(f"non-finite (NaN or infinite) coordinates at site {index}")
    if coords.size and np.abs(coords).max() > MAX_ABS_COORD:
        index = int(np.argwhere(np.abs(coords) > MAX_ABS_COORD)[0][0])
        raise ValueError(f"absurd coordinates at site {index} (beyond {MAX_ABS_COORD:g} Å)")


MAX_CLOSE_PAIR_POINTS = 20_000_000
"""Most atom images the close-pair search holds in its k-d tree (about 0.5 GB)."""


def _periodic_pairs_within(structure: Structure, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of the site pairs within ``radius``, periodic images included (an atom with its own image
    too), from a k-d tree of the atoms and the images of the LLL-reduced cell that can lie within ``radius``: memory
    grows with the atoms, where pymatgen's cell-list grid grew with the volume (7 GB for 3,000 atoms in a 300 Å box)."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    matrix = structure.lattice.lll_matrix  # the same lattice in its shortest basis: the fewest images to search
    cart = (np.mod(structure.cart_coords @ np.linalg.inv(matrix), 1.0)) @ matrix
    widths = abs(np.linalg.det(matrix)) / np.linalg.norm(np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]]), axis=1)
    reach = np.ceil(radius / widths).astype(int)
    if np.prod(2 * reach + 1) * len(cart) > MAX_CLOSE_PAIR_POINTS:  # a cell thinner than the radius in every basis
        raise ValueError(f"the cell is {widths.min():.3g} Å thin across: too thin to check its {len(cart)} atoms for "
                         "close pairs (a flattened lattice?)")
    shifts = np.array(np.meshgrid(*(np.arange(-n, n + 1) for n in reach), indexing="ij")).reshape(3, -1).T @ matrix
    images = (cart[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    found = cKDTree(cart).sparse_distance_matrix(cKDTree(images), radius, output_type="ndarray")
    i, image, d = found["i"], found["j"], found["v"]
    n = len(cart)
    own = (image % n == i) & (d < 1e-10)  # an atom with itself in the home cell
    return i[~own], image[~own] % n, d[~own]


def _close_pairs(structure: Structure, min_distance: float, radius_fraction: float) -> list[tuple[int, int, float]]:
    """Site pairs (i < j) closer than ``min_distance``, or than ``radius_fraction`` of the sum of their atomic
    radii where that is more (both radii known); periodic images included, closest first."""
    radii = radius_fraction * np.array([_atomic_radius(site.specie.symbol) for site in structure])
    known = radii > 0
    if len(structure) <= DISTANCE_MATRIX_MAX_SITES:
        dist = structure.distance_matrix
        both = known[:, None] & known[None, :]
        limit = np.maximum(min_distance, np.where(both, radii[:, None] + radii[None, :], 0.0))
        i_idx, j_idx = np.nonzero(np.triu(dist < limit, k=1))
        pairs = {(int(i), int(j)): float(dist[i, j]) for i, j in zip(i_idx, j_idx)}
    else:
        centers, points, dists = _periodic_pairs_within(structure, max(min_distance, 2 * float(radii.max())))
        pairs = {}
        for i, j, d in zip(centers, points, dists):
            key = (int(min(i, j)), int(max(i, j)))
            limit = max(min_distance, radii[i] + radii[j] if known[i] and known[j] else 0.0)
            if key[0] != key[1] and d < limit:
                pairs[key] = min(float(d), pairs.get(key, math.inf))
    return sorted(((i, j, d) for (i, j), d in pairs.items()), key=lambda p: p[2])


def _shortest_translation(structure: Structure, cutoff: float) -> float | None:
    """The length of the cell's shortest lattice translation, where it is below ``cutoff`` Å:
    how far every atom is from its own nearest periodic image."""
    # searched in the LLL-reduced basis of the same lattice: in a nearly flat cell given in a skewed basis,
    # the search over the basis as given ran over 10 minutes in compiled code, deaf to time limits and signals
    reduced = Lattice(structure.lattice.lll_matrix)
    _, distances, _, _ = reduced.get_points_in_sphere(np.zeros((1, 3)), np.zeros(3), cutoff, zip_results=False)
    distances = np.asarray(distances)
    nonzero = distances[distances > 1e-8]  # the origin itself is always found
    return float(nonzero.min()) if len(nonzero) else None


@lru_cache(maxsize=None)
def _atomic_radius(symbol: str) -> float:
    """Slater's empirical atomic radius in Å (pymatgen's table); 0 where it has none (no rule for that element)."""
    return float(Element(symbol).atomic_radius or 0.0)


def _radius_limit(a: str, b: str, radius_fraction: float) -> float:
    """``radius_fraction`` of the sum of the atomic radii of elements ``a`` and ``b``; 0 (no limit) where
    either has none."""
    ra, rb = _atomic_radius(a), _atomic_radius(b)
    return radius_fraction * (ra + rb) if ra > 0 and rb > 0 else 0.0


def _close_pair_warnings(structure: Structure, pairs: list[tuple[int, int, float]], min_distance: float,
                         radius_fraction: float) -> list[str]:
    """One line per pair (the first few), naming the elements and the limit where it is their radii's."""
    def line(i: int, j: int, d: float) -> str:
        a, b = structure[i].specie.symbol, structure[j].specie.symbol
        limit = _radius_limit(a, b, radius_fraction)
        if d < min_distance or not d < limit:
            return f"atoms {i} and {j} are {d:.2f} Å apart"
        return (f"atoms {i} and {j} are {d:.2f} Å apart ({a}-{b}: under {radius_fraction:g} of the sum of their "
                f"atomic radii, {limit:.2f} Å)")

    shown = [line(i, j, d) for i, j, d in pairs[:MAX_REPORTED_CLOSE_PAIRS]]
    hidden = len(pairs) - len(shown)
    return shown + ([f"... and {hidden} more pairs of close atoms"] if hidden > 0 else [])


def _check_elements(structure: Structure) -> None:
    """Refuse pymatgen's DummySpecies (a symbol that is no element, e.g. 'Xx'), naming only those."""
    unknown = sorted({sp.symbol for sp in structure.composition if isinstance(sp, DummySpecies)})
    if unknown:
        names = ", ".join(f"'{symbol}'" for symbol in unknown)
        raise ValueError(f"unknown element{'s' if len(unknown) > 1 else ''} {names}")


def validate_structure(structure: Structure, *, min_distance: float = 0.5, radius_fraction: float = 0.5,
                       max_sites: int = 5000) -> list[str]:
    """Reject structures the model cannot use; return warnings for merely odd ones.

    Raises ValueError for unknown elements, disorder, a degenerate cell, non-finite or absurd
    coordinates, too many sites or overlapping atoms (< 0.1 Å, an atom and its own periodic
    image included). Returns one warning per pair of atoms closer than ``min_distance`` or than
    ``radius_fraction`` of the sum of their atomic radii (no crystal among 3,000 of mp2018 comes below two
    thirds of it), and one where the cell's shortest translation is.
    """
    if len(structure) == 0:
        raise ValueError("structure has no atoms")
    _check_elements(structure)
    _check_ordered(structure)
    if len(structure) > max_sites:
        raise ValueError(f"{len(structure)} sites exceed the limit of {max_sites} (a supercell of a small crystal: "
                         "give its primitive cell)")
    _check_cell(structure)
    _check_coords(structure)
    largest = max((e.symbol for e in structure.composition.elements), key=_atomic_radius)  # the most squeezed
    image_limit = _radius_limit(largest, largest, radius_fraction)
    shortest = _shortest_translation(structure, max(min_distance, OVERLAP_DISTANCE, image_limit))  # first: cheap
    if shortest is not None and shortest < OVERLAP_DISTANCE:
        raise ValueError("every atom overlaps its own periodic image: the cell's shortest translation "
                         f"is {shortest:.3g} Å")
    pairs = _close_pairs(structure, max(min_distance, OVERLAP_DISTANCE), radius_fraction)
    overlapping = [p for p in pairs if p[2] < OVERLAP_DISTANCE]
    if overlapping:
        i, j, d = overlapping[0]
        more = f" (and {len(overlapping) - 1} more pairs)" if len(overlapping) > 1 else ""
        raise ValueError(f"overlapping atoms: atoms {i} and {j} are {d:.3f} Å apart{more}")
    warnings = _close_pair_warnings(structure, pairs, min_distance, radius_fraction)
    if shortest is not None and shortest < min_distance:
        warnings.append(f"each atom is {shortest:.2f} Å from its own periodic image "
                        "(the cell's shortest translation)")
    elif shortest is not None and shortest < image_limit:
        warnings.append(f"each atom is {shortest:.2f} Å from its own periodic image (the cell's shortest "
                        f"translation; {largest}: under {radius_fraction:g} of twice its atomic radius, "
                        f"{image_limit:.2f} Å)")
    return warnings


def iter_file_records(path: str, timeout: float | None = READ_TIMEOUT_S) -> Iterator[StructureRecord]:
    """Records for one file: one per valid structure, or one carrying the error (of the whole file, or
    of one item of a JSON list, named ``path#i`` or ``path#id``, whose other items are kept)."""
    try:
        pairs = _within(_file_items, path, timeout) if timeout else _file_items(path)
    except StructureReadError as exc:
        yield StructureRecord(path, path, None, exc.reason)
        return
    except Exception as exc:
        reason = f"unexpected error while reading: {type(exc).__name__}: {_one_line(str(exc))}"
        yield StructureRecord(path, path, None, reason)
        return
    for name, structure in pairs:
        if isinstance(structure, StructureReadError):
            yield StructureRecord(name, path, None, structure.reason)
        else:
            yield _validated_record(name, path, structure)


def _validated_record(name: str, source: str, structure: Structure) -> StructureRecord:
    read_notes = structure.properties.pop(READ_NOTES_KEY, []) + _round_full_sites(structure)  # a structure read here
    try:
        notes = read_notes + validate_structure(structure)
    except ValueError as exc:
        return StructureRecord(name, source, None, str(exc))
    except Exception as exc:
        reason = f"validation failed: {type(exc).__name__}: {_one_line(str(exc))}"
        return StructureRecord(name, source, None, reason)
    return StructureRecord(name, source, structure, None, notes)
