"""Checks of a CIF block's atom sites that pymatgen's parser does not make.

pymatgen turns a type symbol it cannot parse into the element of its first two letters, or of its
first letter: the vacancy ``Va`` becomes vanadium, the ghost atom ``Bq`` boron, ``Ph`` phosphorus,
with no more than a warning. A type symbol names the site's element (``Fe``, ``Fe2+``, ``O2-``), so
one that is no element is refused here instead of being read as another.
"""

from __future__ import annotations

import re

from pymatgen.core import Element

TYPE_SYMBOL_KEY = "_atom_site_type_symbol"
ISOTOPES = ("D", "T")  # deuterium and tritium: read as hydrogen
_LETTERS = re.compile(r"[A-Za-z]+")


def _element_of(symbol: str) -> str | None:
    """The element a type symbol names (its leading letters, any case), None if they name none."""
    letters = _LETTERS.match(symbol)
    if letters is None:
        return None
    name = letters.group().title()
    return name if Element.is_valid_symbol(name) or name in ISOTOPES else None


def _read_as_another(symbol: str) -> str | None:
    """The element pymatgen would read a symbol that names none as (its first two or first letter)."""
    for guess in (symbol[:2].title(), symbol[:1].upper()):
        if Element.is_valid_symbol(guess):
            return guess
    return None


def check_type_symbols(data: dict) -> None:
    """Raise ValueError for a type symbol that names no element but that pymatgen would read as one.

    ``data``: one block's tags and values as ``CifParser.as_dict()`` gives them. Symbols that pymatgen
    cannot read at all (``Xx``) are left to it: they become dummy species, refused by name later.
    """
    symbols = data.get(TYPE_SYMBOL_KEY)
    if not isinstance(symbols, list):
        return
    labels = data.get("_atom_site_label")
    for k, symbol in enumerate(symbols):
        if symbol in ("?", ".") or _element_of(symbol):
            continue
        guess = _read_as_another(symbol)
        if guess:
            site = f" (site {labels[k]})" if isinstance(labels, list) and k < len(labels) else ""
            raise ValueError(f"unknown element '{symbol}'{site}: a type symbol that names no element, such as a "
                             f"vacancy or a dummy atom, is not read as {guess}")
