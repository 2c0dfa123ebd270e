"""The symmetry of a CIF block, whichever tag spelling or symbol gives it.

pymatgen's ``CifParser`` reads symmetry operations and space-group symbols under a fixed list of
tag spellings, and reads a Hall symbol only where it happens to spell a Hermann-Mauguin one. The
dotted CIF2/mmCIF tags (``_space_group_symop.operation_xyz``, ``_space_group.IT_number``), other
letter cases and most Hall symbols it does not read, and it falls back to P1 with only a Python
warning: a NaCl cell given as ``-F 4 2 3`` became a two-atom CsCl-like crystal. CIF tags are
case-insensitive and ``.``, ``_`` spell the same DDL1/DDL2 names, so this module finds the
symmetry under any spelling, expands Hall symbols and H-M symbols with a setting (``F d -3 m :2``,
``R -3 m H``, ICSD's ``F d -3 m Z``) with spglib's table of the 530 settings, reads a bare symbol of an R
lattice in rhombohedral axes where the cell has them (:func:`rhombohedral_axes`), and
gives the lines to append so that pymatgen applies it. :func:`p1_fallback` says what to do
where pymatgen still falls back to P1.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pymatgen.core.operations import SymmOp
from pymatgen.io.cif import str2float

SYMOP_TAG = "_space_group_symop_operation_xyz"
HM_TAG = "_symmetry_space_group_name_H-M"
IT_TAG = "_symmetry_Int_Tables_number"
# tag kind -> the normalised spellings (see _normalised), the first kind found wins
KINDS = {
    "operations": ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz"),
    "Hall": ("_space_group_name_hall", "_symmetry_space_group_name_hall"),
    "H-M": ("_symmetry_space_group_name_h_m", "_space_group_name_h_m_alt"),
    "IT number": ("_space_group_it_number", "_symmetry_int_tables_number"),
}
# the exact spellings pymatgen's get_symops reads, by kind (it also tries the Hall tags as H-M)
PYMATGEN_TAGS = {
    "operations": {"_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz"},
    "H-M": {"_symmetry_space_group_name_H-M", "_symmetry_space_group_name_H_M", "_space_group_name_H-M_alt",
            "_symmetry_space_group_name_h-m"},
    "IT number": {"_space_group_IT_number", "_symmetry_Int_Tables_number"},
}
UNKNOWN_VALUES = {"", "?", "."}  # CIF's unknown and inapplicable
PYMATGEN_P1_WARNING = "Defaulting to P1"
NO_SYMMETRY_NOTE = "no symmetry operations or space group in the file: read as P1"


def _normalised(tag: str) -> str:
    return tag.lower().replace(".", "_").replace("-", "_").rstrip("_")


def _given(value: object) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(str(v).strip() not in UNKNOWN_VALUES for v in values)


def symmetry_tags(data: dict) -> dict[str, list[tuple[str, object]]]:
    """The block's symmetry tags with a known value, as (tag, value) by kind (see ``KINDS``)."""
    kind_of = {spelling: kind for kind, spellings in KINDS.items() for spelling in spellings}
    found: dict[str, list[tuple[str, object]]] = {}
    for tag, value in data.items():
        kind = kind_of.get(_normalised(tag))
        if kind and _given(value):
            found.setdefault(kind, []).append((tag, value))
    return found


def _hall_key(symbol: str) -> str:
    return " ".join(symbol.split()).lower()


@lru_cache(maxsize=1)
def _hall_numbers() -> dict[str, int]:
    import spglib  # noqa: PLC0415  (only for the rare block that gives a Hall symbol alone)

    return {_hall_key(spglib.get_spacegroup_type(n).hall_symbol): n for n in range(1, 531)}


def hall_operations(symbol: str) -> list[str] | None:
    """The symmetry operations (``x, y+1/2, -z``) of a Hall symbol in spglib's table; None for others."""
    number = _hall_numbers().get(_hall_key(symbol))
    return None if number is None else _database_operations(number)


def _database_operations(number: int) -> list[str]:
    """The operations (``x, y+1/2, -z``) of setting ``number`` (1-530) of spglib's table."""
    import spglib  # noqa: PLC0415

    ops = spglib.get_symmetry_from_database(number)
    return [SymmOp.from_rotation_and_translation(r, t).as_xyz_str()
            for r, t in zip(ops["rotations"], ops["translations"])]


# a setting after an H-M symbol: ITA's ':1', ':2', ':H', ':R', also after a blank ('R -3 m H'), or ICSD's
# 'S'/'Z' (origin choice 1/2); a letter may follow the symbol directly ('Fd-3mZ'): no H-M symbol ends in one
_SETTING = re.compile(r"(?P<symbol>.+?)\s*(?::\s*(?P<given>[12hr])|\s(?P<spaced>[12hrsz])|(?P<attached>[hrsz]))")
_ICSD_ORIGINS = {"s": "1", "z": "2"}


def _hm_key(symbol: str) -> str:
    """An H-M symbol as compared: without blanks and subscript marks, in lower case ('P 4_2/n' -> 'p42/n')."""
    return re.sub(r"[\s_]", "", symbol).lower()


def _setting_of(choice: str) -> str:
    """The origin choice ('1', '2') or axes ('h', 'r') a choice of spglib's table names; '' for none."""
    if choice in ("H", "R"):
        return choice.lower()
    return choice[0] if choice[:1] in ("1", "2") else ""


@lru_cache(maxsize=1)
def _hm_settings() -> dict[tuple[str, str | None], int]:
    """spglib's Hall number per (H-M symbol, setting), short, full and setting-specific symbols alike;
    setting None is the table's first setting of the symbol (origin choice 1, hexagonal axes)."""
    import spglib  # noqa: PLC0415  (only for the rare block whose symbol pymatgen cannot read)

    table: dict[tuple[str, str | None], int] = {}
    for number in range(1, 531):
        kind = spglib.get_spacegroup_type(number)
        names = {kind.international_short, kind.international_full, *kind.international.split("=")}
        for name in names:
            table.setdefault((_hm_key(name), _setting_of(kind.choice)), number)
            table.setdefault((_hm_key(name), None), number)
    return table


@lru_cache(maxsize=1)
def _pymatgen_symbols() -> frozenset[str]:
    """The H-M symbols pymatgen's get_symops reads (its table and COD's), compared as by :func:`_hm_key`."""
    from pathlib import Path  # noqa: PLC0415

    from monty.serialization import loadfn  # noqa: PLC0415
    from pymatgen.symmetry import groups  # noqa: PLC0415

    cod = loadfn(Path(groups.__file__).parent / "symm_ops.json")
    names = list(groups.SYMM_DATA["space_group_encoding"]) + [entry["hermann_mauguin"] for entry in cod]
    return frozenset(_hm_key(name) for name in names)


def _hm_hall_number(symbol: str) -> int | None:
    """The Hall number of an H-M symbol that states its setting ('F d -3 m :2', 'R -3 m H', 'F d -3 m Z'),
    or of one pymatgen cannot read ('R -3 2/m': the table's first setting); None otherwise."""
    text = symbol.strip().lower()
    match = _SETTING.fullmatch(text)
    if match:
        given = match.group("given") or match.group("spaced") or match.group("attached")
        number = _hm_settings().get((_hm_key(match.group("symbol")), _ICSD_ORIGINS.get(given, given)))
        if number is not None:
            return number
    if _hm_key(text) in _pymatgen_symbols():
        return None
    return _hm_settings().get((_hm_key(text), None))


def hm_operations(symbol: str) -> list[str] | None:
    """The symmetry operations of an H-M symbol that states its setting or that pymatgen cannot read,
    from spglib's table; None for others (pymatgen reads those itself)."""
    number = _hm_hall_number(symbol)
    return None if number is None else _database_operations(number)


@lru_cache(maxsize=None)
def _settings_of(choice: str) -> dict[int, int]:
    """Space-group number -> Hall number of its setting ``choice`` in spglib's table: '2' origin choice 2 (in
    its standard axes), 'R' rhombohedral axes."""
    import spglib  # noqa: PLC0415

    kinds = (spglib.get_spacegroup_type(number) for number in range(1, 531))
    return {kind.number: kind.hall_number for kind in kinds if kind.choice == choice}


RHOMBOHEDRAL_GROUPS = frozenset({146, 148, 155, 160, 161, 166, 167})
"""The space groups of an R lattice: each has hexagonal and rhombohedral axes."""
AXES_LENGTH_TOLERANCE = 1e-3  # relative: a = b = c
AXES_ANGLE_TOLERANCE = 0.05  # degrees: α = β = γ


def _stated_setting(symbol: str) -> bool:
    """Whether an H-M symbol states a setting of spglib's table ('R -3 m :H', 'R -3 m R')."""
    match = _SETTING.fullmatch(symbol.strip().lower())
    if not match:
        return False
    given = match.group("given") or match.group("spaced") or match.group("attached")
    return (_hm_key(match.group("symbol")), _ICSD_ORIGINS.get(given, given)) in _hm_settings()


def _bare_group_number(data: dict) -> tuple[str, int, str | None] | None:
    """(how the block names its space group, the group's number, the H-M symbol or None for an IT number)
    where its symmetry is only an H-M symbol that states no setting, or an IT number; None otherwise.
    ``data`` as for :func:`symmetry_supplement`."""
    tags = symmetry_tags(data)
    if "operations" in tags or "Hall" in tags:
        return None
    kind = "H-M" if "H-M" in tags else "IT number"
    found = tags.get(kind, [])
    if not found or not isinstance(found[0][1], str):
        return None
    tag, value = found[0]
    if kind == "IT number":
        number = _whole_number(value)
        return None if number is None else (f"{tag} {_quoted(value)}", number, None)
    number = _hm_settings().get((_hm_key(value), None))
    if number is None or _stated_setting(value):
        return None
    import spglib  # noqa: PLC0415

    return f"{tag} {_quoted(value)}", spglib.get_spacegroup_type(number).number, value


def ambiguous_origin(data: dict) -> tuple[str, str] | None:
    """(how the block names its space group, the CIF loop of its origin choice 2's operations) where the
    block's symmetry is only a bare H-M symbol or IT number of a group with two origin choices, which
    pymatgen reads in origin choice 1; None otherwise. ``data`` as for :func:`symmetry_supplement`,
    after its lines were appended (a symbol that states its setting has become an operations loop)."""
    named = _bare_group_number(data)
    if named is None:
        return None
    group, number, symbol = named
    if symbol is not None and (_hm_key(symbol), "2") not in _hm_settings():
        return None  # a symbol of one origin only, or of another axes setting ('P m n n')
    hall = _settings_of("2").get(number)
    return None if hall is None else (group, _operations_loop(_database_operations(hall)))


def _whole_number(value: str) -> int | None:
    """An IT number as pymatgen reads it ('166', '166(0)', '166.0'); None for anything else."""
    try:
        number = str2float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if float(number).is_integer() else None


def _cell(data: dict) -> tuple[list[float], list[float]] | None:
    """The block's cell lengths and angles; None where one cannot be read."""
    try:
        lengths = [str2float(data[f"_cell_length_{axis}"]) for axis in "abc"]
        angles = [str2float(data[f"_cell_angle_{name}"]) for name in ("alpha", "beta", "gamma")]
    except (KeyError, TypeError, ValueError):
        return None
    return lengths, angles


def rhombohedral_axes(data: dict) -> tuple[str, str] | None:
    """(the CIF loop of the rhombohedral axes' operations, a note) where the block names a group of an R
    lattice by a bare symbol or number and its cell has rhombohedral axes (a = b = c, α = β = γ), which
    pymatgen would expand with the hexagonal axes' operations (Bi2Se3's 3-atom cell became 36 atoms 0.3 Å
    apart); None otherwise. ``data`` as for :func:`symmetry_supplement`."""
    named = _bare_group_number(data)
    cell = _cell(data)
    if named is None or named[1] not in RHOMBOHEDRAL_GROUPS or cell is None:
        return None
    (a, b, c), (alpha, beta, gamma) = cell
    if max(abs(b - a), abs(c - a)) > AXES_LENGTH_TOLERANCE * a or \
            max(abs(beta - alpha), abs(gamma - alpha)) > AXES_ANGLE_TOLERANCE:
        return None
    return (_operations_loop(_database_operations(_settings_of("R")[named[1]])),
            f"{named[0]} does not say which axes: read in rhombohedral axes (the cell has a = b = c, "
            f"α = β = γ = {alpha:.2f}°)")


def _quoted(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def _operations_loop(ops: list[str]) -> str:
    return f"loop_\n{SYMOP_TAG}\n" + "".join(f"{_quoted(op)}\n" for op in ops)


def symmetry_supplement(data: dict) -> str:
    """CIF lines to append to a block so that pymatgen applies its symmetry; '' where it already does.

    ``data``: one block's tags and values as ``CifParser.as_dict()`` gives them. Listed operations
    come first (copied under a tag pymatgen reads), then a Hall symbol of spglib's table (it names
    the setting, which a Hermann-Mauguin symbol or IT number may leave open), then an H-M symbol that
    states its setting ('F d -3 m :2') or that pymatgen cannot read, expanded from spglib's table, then
    a symbol or number under a tag pymatgen reads, else copied under one. Raises ValueError, with the tag, for a
    Hall symbol outside spglib's table: a symbol or number beside it may name another setting.
    """
    tags = symmetry_tags(data)
    if "operations" in tags:
        if any(tag in PYMATGEN_TAGS["operations"] for tag, _ in tags["operations"]):
            return ""
        value = tags["operations"][0][1]
        return _operations_loop([str(op) for op in (value if isinstance(value, list) else [value])])
    for _, symbol in tags.get("Hall", []):
        ops = hall_operations(str(symbol)) if isinstance(symbol, str) else None
        if ops:
            return _operations_loop(ops)
    if "Hall" in tags:
        raise ValueError(_refusal(data))
    for _, symbol in tags.get("H-M", []):
        ops = hm_operations(symbol) if isinstance(symbol, str) else None
        if ops:
            return _operations_loop(ops)
    lines = []
    for kind, canonical in (("H-M", HM_TAG), ("IT number", IT_TAG)):
        found = tags.get(kind, [])
        if found and not any(tag in PYMATGEN_TAGS[kind] for tag, _ in found) and isinstance(found[0][1], str):
            lines.append(f"{canonical} {_quoted(found[0][1])}\n")
    return "".join(lines)


def unknown_operations(block_text: str, data: dict) -> str | None:
    """The block without its operations given as unknown (``_symmetry_equiv_pos_as_xyz ?``), which
    pymatgen takes for a one-line P1 list (and then fails with 'Occupancy 2.0 exceeded tolerance'
    beside a space-group symbol); None where the block has no such line. ``data`` as for
    :func:`symmetry_supplement`."""
    tags = [tag for tag, value in data.items() if tag in PYMATGEN_TAGS["operations"] and not _given(value)]
    text = block_text
    for tag in tags:
        text = re.sub(rf"(?im)^[ \t]*{re.escape(tag)}[ \t]+(?:[?.]|'[?.]?'|\"[?.]?\")[ \t]*\r?$", "", text)
    return text if text != block_text else None


def _description(data: dict) -> str:
    """What symmetry the block gives, for a refusal: the tag, and the symbol or a bad operation."""
    tags = symmetry_tags(data)
    kind = next(k for k in KINDS if k in tags)
    tag, value = tags[kind][0]
    if kind != "operations":
        return f"{tag} {_quoted(str(value))} is not a space group that pymatgen or spglib can expand"
    ops = value if isinstance(value, list) else [value]
    bad = next((str(op) for op in ops if not _parses(str(op))), None)
    return f"{tag} has an operation that cannot be read" + (f": {_quoted(bad)}" if bad else "")


def _refusal(data: dict) -> str:
    return f"cannot apply the symmetry: {_description(data)}; list its operations in a {SYMOP_TAG} loop"


def _parses(op: str) -> bool:
    try:
        SymmOp.from_xyz_str(op)
    except ValueError:
        return False
    return True


def p1_fallback(data: dict, pymatgen_warnings: list[str]) -> str | None:
    """None where pymatgen applied a symmetry; else the note for a block that gives none (P1 is right,
    but a user with an incomplete file must be told). Raises ValueError, with the tag, for a block whose
    symmetry pymatgen dropped."""
    if not any(PYMATGEN_P1_WARNING in message for message in pymatgen_warnings):
        return None
    if not symmetry_tags(data):
        return NO_SYMMETRY_NOTE
    raise ValueError(_refusal(data))
