"""The 92-dimensional CGCNN element embedding that Matformer uses as node input.

Source: ``atom_init.json`` published with CGCNN (Xie & Grossman, Phys. Rev. Lett. 120,
145301 (2018), github.com/txie-001/cgcnn, MIT licence), as redistributed in jarvis-tools
(``jarvis/core/atom_init.json``), which Matformer loads through
``get_node_attributes(element, "cgcnn")``. Elements 1 (H) to 100 (Fm).

Each row concatenates one-hot bins (0-based column ranges):

==========  =====================================  ===========
columns     property                               bins
==========  =====================================  ===========
0-18        group (0 for lanthanides/actinides)    19
19-25       period 1-7                             7
26-35       Pauling electronegativity              10
36-45       covalent radius                        10
46-57       valence electrons                      12
58-67       first ionisation energy (log)          10
68-77       electron affinity                      10
78-81       block s, p, d, f                       4
82-91       atomic volume (log)                    10
==========  =====================================  ===========

Noble gases and a few heavy elements lack some properties, so their rows have fewer ones.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

N_FEATURES = 92
MAX_Z = 100
GROUP_COLUMNS = slice(0, 19)
PERIOD_COLUMNS = slice(19, 26)
BLOCK_COLUMNS = slice(78, 82)
SYMBOLS = ("",) + tuple(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As
    Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu
    Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np
    Pu Am Cm Bk Cf Es Fm""".split()
)
"""Element symbol by atomic number, 1 to MAX_Z (kept here so naming needs no pymatgen)."""


class ElementError(ValueError):
    """A structure holds an element that the embedding table does not cover."""


@lru_cache(maxsize=1)
def feature_table() -> np.ndarray:
    """Return the table as float32 of shape (MAX_Z + 1, 92); row 0 is unused (zeros)."""
    raw = json.loads(resources.files("crystalprop.graph").joinpath("atom_init.json").read_text())
    table = np.zeros((MAX_Z + 1, N_FEATURES), dtype=np.float32)
    for z, row in raw.items():
        table[int(z)] = row
    return table


def check_elements(atomic_numbers: np.ndarray, symbols: list[str] | None = None) -> None:
    """Raise ElementError naming every element outside Z = 1..100 (e.g. dummy species)."""
    bad = sorted({int(z) for z in np.asarray(atomic_numbers).ravel() if not 1 <= int(z) <= MAX_Z})
    if bad:
        names = sorted(set(symbols)) if symbols else [str(z) for z in bad]
        raise ElementError(
            f"element(s) outside the model's table (H to Fm, Z = 1-{MAX_Z}): Z = {bad}"
            + (f" in {names}" if symbols else "")
        )


def absent_elements(atomic_numbers: np.ndarray, known: set[str]) -> list[str]:
    """The symbols among ``atomic_numbers`` that are not in ``known`` (a model's training elements),
    sorted; none where ``known`` is empty (a model that does not list them)."""
    if not known:
        return []
    return sorted({SYMBOLS[z] for z in np.unique(atomic_numbers)} - known)


def atom_features(atomic_numbers: np.ndarray) -> np.ndarray:
    """Look up the (N, 92) float32 feature rows for atomic numbers (N,)."""
    z = np.asarray(atomic_numbers, dtype=np.int64)
    check_elements(z)
    return feature_table()[z]
