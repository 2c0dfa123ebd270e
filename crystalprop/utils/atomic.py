"""Writing results safely: the folders they go into, made up front with a clear error, and atomic
file writes (to a temporary file beside the target, then renamed over it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def _umask() -> int:
    """The process's umask (read by setting it, so once, at import, before any thread writes files)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


FILE_MODE = 0o666 & ~_umask()
"""The mode a new file gets from ``open`` (0o644 under the usual umask 022)."""


class OutputExistsError(FileExistsError):
    """The output file exists and neither --resume nor --overwrite was given."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so readers never see half a file. The file
    gets the mode of any file the user writes (MindSpore makes its checkpoints owner-read-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # keep the suffix: MindSpore appends .ckpt otherwise
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace a text file."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def make_folder(folder: str | Path) -> Path:
    """Make ``folder`` and its parents (before any long work); where that cannot be done, a
    ValueError that names the file standing in the way, or the system's reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (*reversed(folder.parents), folder) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        raise ValueError(f"cannot make the folder {folder} ({reason})") from exc
    return folder
