"""An advisory lock that keeps two processes from writing one output file at once.

The lock is ``flock`` on a sidecar ``<file>.lock`` that names its holder (process id and host): the
kernel releases it when the holder ends, even by SIGKILL, so a stale file never blocks a later run,
and on NFS v4 Linux maps it to a lock that other clients see. The sidecar is removed on release.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


class FileInUseError(ValueError):
    """Another process holds the lock of the file to be written."""


class FileLock:
    """The held lock of ``path`` (``<path>.lock``); :meth:`release` gives it up."""

    def __init__(self, path: Path, what: str) -> None:
        real = Path(os.path.realpath(path))  # one lock however the file is named (a symlink, a relative path)
        self.path = real.with_name(real.name + ".lock")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise FileInUseError(f"{path}: another crystalprop run is writing it ({holder}); two runs with one "
                                     f"{what} would mix their rows: give each run its own") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder released and removed it between our open and flock: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Remove the sidecar and give up the lock (once)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed or replaced since it was opened)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)
