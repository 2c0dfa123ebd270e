"""The limits every reader of input files applies, defined once (and free of heavy imports).

``predict``, ``inspect``, ``evaluate`` and ``train`` read through :mod:`crystalprop.io.readers`
with these, so a file refused by one is refused by all.
"""

from __future__ import annotations

import re

MAX_FILE_BYTES = 200 * 1024 * 1024
"""Largest (decompressed) structure file read, to refuse gzip bombs and runaway files."""

MAX_DATASET_BYTES = 2 * 1024 * 1024 * 1024
"""Largest (decompressed) data-set table or JSON file read whole (a JSON of 100,000 structures
with their labels is a few hundred MB); beyond it a gzip bomb, or a file to split."""

READ_TIMEOUT_S = 60.0
"""Seconds allowed to parse one structure file."""

PIPE_WAIT_S = 2.0
"""How long a named pipe given as a structure waits for a writer before it is reported as one that nothing
writes to (a pipe in a folder would otherwise hold a scan for ever)."""

CLOSE_ATOMS_NOTES = re.compile(r"atoms \d+ and \d+ are [\d.]+ Å apart|each atom is [\d.]+ Å from its own periodic "
                               r"image|\.\.\. and \d+ more pairs of close atoms")
"""The readers' warnings of atoms closer than relaxed crystals hold them (``validate_structure``)."""


def is_close_atoms_note(note: str) -> bool:
    """Whether a structure's note is one of the readers' close-atom warnings (its σ is then not claimed)."""
    return CLOSE_ATOMS_NOTES.match(note) is not None
