"""Start-up without the cyclic garbage collector's passes over objects that live as long as the process."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block; the objects it made are then frozen
    (left out of every later collection).

    Importing MindSpore and loading and compiling the models make about a million objects that
    live as long as the process; the collector's passes over them cost 0.3-0.6 s of a one-file
    prediction and free nothing. For a process of its own (the command), not a library call:
    freezing keeps a caller's objects from ever being collected.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
