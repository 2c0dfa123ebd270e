"""Checks of the arguments the Python API takes, so that a value that cannot work is refused before any work."""

from __future__ import annotations

from numbers import Integral


def check_whole_number(name: str, value: object, least: int = 1) -> None:
    """A ValueError naming ``name`` unless ``value`` is a whole number (not a bool) of ``least`` or more."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise ValueError(f"{name} {value!r}: a whole number, {least} or more")
