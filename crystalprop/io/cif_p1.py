"""A direct path from a parsed CIF block to an ordered P1 structure.

pymatgen's ``CifParser.parse_structures`` applies symmetry operations, merges coincident sites
and builds compositions site by site: about 4 ms for a 10-atom cell, several times the cost of
everything else crystalprop does to a file. Most CIFs that screening workflows produce
(Materials Project, pymatgen, ASE) are in P1 with one fully occupied element per site, where
none of that work changes anything. For such a block this module builds the same structure
directly; any other block returns None and pymatgen parses it as before.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Element, Lattice, Structure
from pymatgen.io.cif import str2float

SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz")
CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
             "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
FRACT_KEYS = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
# tags that make pymatgen do more than place atoms (charges, implicit H, magnetic moments)
SPECIAL_TAG_PARTS = ("oxidation_number", "attached_hydrogens", "moment", "magn")
SITE_TOLERANCE = 1e-4  # pymatgen's: sites closer than this (fractional) are merged
PAIRWISE_LIMIT = 2000  # sites; beyond, the all-pairs test would take more memory than a k-d tree


def p1_structure(data: dict) -> Structure | None:
    """The structure of a P1 block of ordered, distinct, element-typed sites; None otherwise.

    ``data``: one block's tags and values as ``CifParser.as_dict()`` gives them.

    Matches pymatgen's result: coordinates wrapped into [0, 1), sites sorted by
    electronegativity then symbol (pymatgen's site order), labels kept.
    """
    if not _is_identity_only(data) or any(part in key for key in data for part in SPECIAL_TAG_PARTS):
        return None
    symbols = data.get("_atom_site_type_symbol")
    if symbols is None or any(key not in data for key in FRACT_KEYS + CELL_KEYS):
        return None
    symbols = [str(s) for s in symbols]
    if not symbols or not all(Element.is_valid_symbol(s) for s in symbols):
        return None
    try:
        occupancy = [str2float(x) for x in data.get("_atom_site_occupancy", ["1"] * len(symbols))]
        coords = np.array([[str2float(x) for x in data[key]] for key in FRACT_KEYS], dtype=float).T
        cell = [str2float(data[key]) for key in CELL_KEYS]
    except (ValueError, TypeError):
        return None
    if coords.shape != (len(symbols), 3) or len(occupancy) != len(symbols) or any(o != 1 for o in occupancy):
        return None
    coords = coords - np.floor(coords)
    if _has_coincident_sites(coords):
        return None
    labels = data.get("_atom_site_label")
    labels = [str(x) for x in labels] if labels is not None and len(labels) == len(symbols) else None
    order = sorted(range(len(symbols)), key=lambda k: (Element(symbols[k]).X, symbols[k]))
    return Structure(Lattice.from_parameters(*cell), [symbols[k] for k in order], coords[order],
                     labels=[labels[k] for k in order] if labels else None)


def _is_identity_only(data: dict) -> bool:
    """True where the block's only symmetry operation is x, y, z (under each tag that lists operations:
    the reader copies a CIF2 tag's operations under the one pymatgen reads)."""
    ops = [data[key] for key in SYMOP_KEYS if key in data]
    return bool(ops) and all(_identity_only(listed if isinstance(listed, list) else [listed]) for listed in ops)


def _identity_only(listed: list) -> bool:
    return [str(op).replace(" ", "").replace("'", "").lower() for op in listed] == ["x,y,z"]


def _has_coincident_sites(coords: np.ndarray) -> bool:
    """Any two sites within SITE_TOLERANCE of each other in every fractional coordinate (periodic),
    coords in [0, 1]: all pairs at once for small cells, a periodic k-d tree for large ones."""
    n = len(coords)
    if n > PAIRWISE_LIMIT:
        from scipy.spatial import cKDTree  # noqa: PLC0415  (imported by the readers anyway)

        wrapped = np.where(coords >= 1.0, 0.0, coords)  # the tree takes [0, 1): 1 - 1e-17 wraps to 1.0
        tree = cKDTree(wrapped, boxsize=1.0)
        return bool(tree.query_pairs(SITE_TOLERANCE, p=np.inf, output_type="ndarray").size)
    diff = coords[:, None, :] - coords[None, :, :]
    diff -= np.round(diff)
    close = np.all(np.abs(diff) < SITE_TOLERANCE, axis=-1)
    return bool(close.sum() > n)
