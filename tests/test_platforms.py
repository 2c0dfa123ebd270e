"""Portable limits: timeouts hold in any thread and without SIGALRM; cores counted without sched_getaffinity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pymatgen.io.cif import CifWriter

from conftest import rocksalt
from crystalprop.utils import backend
from crystalprop.utils import timelimit
from crystalprop.io import readers
from crystalprop.io.readers import StructureReadError, read_file_with_timeout

ROOT = Path(__file__).resolve().parents[1]


def _busy_parser(text: str, name: str):
    """A parser stuck in Python for 20 s (a signal or a thread exception can stop it)."""
    end = time.monotonic() + 20
    while time.monotonic() < end:
        pass
    return []


@pytest.fixture()
def slow_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setitem(readers._PARSERS, "cif", _busy_parser)
    path = tmp_path / "slow.cif"
    CifWriter(rocksalt(5.64)).write_file(path)
    return path


def test_timeout_holds_outside_the_main_thread(slow_file):
    outcome: list = []

    def read() -> None:
        started = time.monotonic()
        try:
            read_file_with_timeout(slow_file, 0.5)
            outcome.append("no limit")
        except StructureReadError as exc:
            outcome.append((exc.reason, time.monotonic() - started))

    worker = threading.Thread(target=read)
    worker.start()
    worker.join(30)
    reason, elapsed = outcome[0]
    assert reason == "took longer than 0.5 s to parse; skipped" and elapsed < 3


def test_timeout_holds_without_sigalrm(slow_file, monkeypatch):
    monkeypatch.delattr(signal, "SIGALRM")  # as on Windows
    started = time.monotonic()
    with pytest.raises(StructureReadError, match="took longer than 0.5 s"):
        read_file_with_timeout(slow_file, 0.5)
    assert time.monotonic() - started < 3


def test_watched_thread_passes_results_and_errors_through(tmp_path):
    path = tmp_path / "ok.cif"
    CifWriter(rocksalt(5.64)).write_file(path)
    results: list = []
    worker = threading.Thread(target=lambda: results.append(read_file_with_timeout(path, 30)))
    worker.start()
    worker.join(60)
    assert len(results[0]) == 1 and results[0][0][0] == str(path)
    with pytest.raises(StructureReadError, match="no such file"):
        timelimit.call_in_watched_thread(lambda: readers.read_file(str(tmp_path / "missing.cif")), 30,
                                         lambda: AssertionError("timed out"))


def test_cores_without_sched_getaffinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # as on macOS
    monkeypatch.setitem(backend._state, "threads", None)
    assert backend.cpu_threads() == os.cpu_count()


def test_other_platforms_are_refused_at_import():
    done = subprocess.run([sys.executable, "-c", "import os; os.name = 'nt'; import crystalprop"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert "crystalprop runs on Linux and macOS (POSIX systems) only; on Windows, use WSL" in done.stderr
