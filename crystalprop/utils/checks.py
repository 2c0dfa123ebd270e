"""Checks of the arguments the Python API takes, so that a value that cannot work is refused before any work."""

from __future__ import annotations

import math
from numbers import Integral, Real


def check_whole_number(name: str, value: object, least: int = 1) -> None:
    """A ValueError naming ``name`` unless ``value`` is a whole number (not a bool) of ``least`` or more."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise ValueError(f"{name} {value!r}: a whole number, {least} or more")


def check_seconds(name: str, value: object) -> None:
    """A ValueError naming ``name`` unless ``value`` is a finite number of seconds (not a bool), 0 or more."""
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} {value!r}: a number of seconds, 0 or more (0: no limit)")
