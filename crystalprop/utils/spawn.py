"""Starting 'spawn' processes (reader workers, the training process) from a user's script safely."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import sys
import threading
import types
from contextlib import contextmanager
from typing import Iterator

_MAIN_LOCK = threading.Lock()


@contextmanager
def main_script_hidden() -> Iterator[None]:
    """Start 'spawn' processes in this block without running the caller's main script in them.

    'spawn' runs the parent's ``__main__`` file again in every child, so that functions defined
    there can be unpickled. Our workers need only crystalprop's own functions, and a user's
    script without an ``if __name__ == "__main__":`` guard would otherwise start its whole work
    over in each child (and fail there). The children see an empty ``__main__`` instead. A start method
    the caller has not chosen yet stays unchosen (CPython fixes it as a 'spawn' child starts), so that a
    script may still call ``multiprocessing.set_start_method`` after crystalprop's work.
    """
    with _MAIN_LOCK:
        main = sys.modules["__main__"]
        chosen = multiprocessing.get_start_method(allow_none=True)
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main
            default = getattr(multiprocessing.context, "_default_context", None)  # CPython's, private
            if chosen is None and hasattr(default, "_actual_context"):  # a 'spawn' start fixed it: leave it open
                default._actual_context = None
