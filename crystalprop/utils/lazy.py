"""Package attributes loaded on first use (PEP 562), so importing a package stays light."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_attributes(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``package.<homes[name]>`` when ``name`` is
    first used; a home ``module:attribute`` gives that module's attribute under another name."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = homes[name].partition(":")
        return getattr(importlib.import_module(f"{package}.{module}"), attribute or name)

    return __getattr__
