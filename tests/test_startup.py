"""Start-up and exit of a short `crystalprop predict`: quick exit, paused collector, cached hashes, protobuf parser."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pymatgen.io.cif import CifWriter

from conftest import rocksalt
from crystalprop.utils import hashing as hashing_module
from crystalprop.utils import quick_exit
from crystalprop.utils.gc_pause import collection_paused
from crystalprop.io.provenance import read_sidecar
from crystalprop.utils.hashing import cached_file_sha256, file_sha256
from crystalprop.utils.quick_exit import request, run

ROOT = Path(__file__).resolve().parents[1]


def _python(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_quick_exit_keeps_what_a_normal_exit_does(tmp_path):
    """Other threads finish, atexit handlers run, buffered output is flushed, the exit status is kept."""
    script = tmp_path / "quick.py"
    script.write_text(
        "import atexit, sys, threading, time\n"
        "from crystalprop.utils.quick_exit import request, run\n"
        "def command():\n"
        "    request()\n"
        "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        f"    atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'w').write('ran'))\n"
        "    sys.stdout.write('buffered, no newline')\n"
        "    sys.exit(3)\n"
        "run(command)\n"
    )
    done = _python([str(script)], tmp_path)
    assert done.returncode == 3, done.stderr
    assert "thread done" in done.stdout and "buffered, no newline" in done.stdout
    assert (tmp_path / "atexit").read_text() == "ran"


def test_without_a_request_a_command_exits_as_usual():
    with pytest.raises(SystemExit) as stopped:
        run(lambda: sys.exit(4))
    assert stopped.value.code == 4
    assert run(lambda: None) is None


def test_cli_predict_ends_quickly_with_its_output_complete(tmp_path, random_ckpt):
    """`python -m crystalprop predict` (quick exit) writes every row, the provenance sidecar and the summary."""
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    out = tmp_path / "out.csv"
    done = _python(["-m", "crystalprop", "predict", "a.cif", "missing.cif", "-m", str(random_ckpt), "-o", str(out)],
                   tmp_path)
    assert done.returncode == 1, done.stderr  # the missing file fails its row
    assert "1 predicted, 1 failed" in done.stderr
    assert out.read_text().count("\n") == 3
    assert read_sidecar(out)["models"][0]["sha256"] == file_sha256(random_ckpt)


def test_collection_paused_freezes_what_start_up_made():
    frozen = gc.get_freeze_count()
    try:
        with collection_paused():
            assert not gc.isenabled()
            kept = [[] for _ in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()


def test_cached_hash_follows_the_file(tmp_path, monkeypatch):
    """A cached sha256 is reused while the file is unchanged, and redone when it is rewritten or replaced,
    even with the same size and modification time."""
    hashed = []
    monkeypatch.setattr(hashing_module, "file_sha256", lambda path: hashed.append(path) or file_sha256(path))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights one")
    assert cached_file_sha256(ckpt) == file_sha256(ckpt)
    assert cached_file_sha256(ckpt) == file_sha256(ckpt) and len(hashed) == 1

    before = ckpt.stat()
    ckpt.write_bytes(b"weights two")  # same size
    os.utime(ckpt, ns=(before.st_atime_ns, before.st_mtime_ns))  # same modification time
    assert cached_file_sha256(ckpt) == file_sha256(ckpt) and len(hashed) == 2

    other = tmp_path / "other.ckpt"
    other.write_bytes(b"weights six")
    os.replace(other, ckpt)
    assert cached_file_sha256(ckpt) == file_sha256(ckpt) and len(hashed) == 3


def test_cached_hash_survives_a_damaged_store(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    store = Path(os.environ["CRYSTALPROP_CACHE"]) / "sha256.json"
    store.write_text("{not json")
    assert cached_file_sha256(ckpt) == file_sha256(ckpt)
    assert str(ckpt.resolve()) in json.loads(store.read_text())


def test_prediction_reads_checkpoints_with_the_compiled_protobuf_parser(tmp_path, random_ckpt):
    """Predicting picks protobuf's upb parser before MindSpore's import would pick the pure-Python one;
    an implementation the user chose is kept."""
    pytest.importorskip("google._upb._message")
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    script = tmp_path / "which.py"  # a file: MindSpore's compile cache reads the main script
    script.write_text(
        "import crystalprop\n"
        "from google.protobuf.internal import api_implementation\n"
        f"rows = crystalprop.predict({str(tmp_path / 'a.cif')!r}, model={str(random_ckpt)!r})\n"
        "assert not rows[0]['error'], rows\n"
        "print(api_implementation.Type())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "upb"
    chosen = _python([str(script)], tmp_path, env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert chosen.stdout.split()[-1] == "python"


def test_no_quick_exit_under_a_profiler(monkeypatch):
    """A profiler (``python -m cProfile``) writes its results at the normal exit, so that exit is kept."""
    monkeypatch.setattr(quick_exit, "_state", {"requested": False})  # the request ends with this test
    monkeypatch.setattr(sys, "getprofile", lambda: object())
    with pytest.raises(SystemExit) as stopped:
        run(lambda: (request(), sys.exit(5)))
    assert stopped.value.code == 5


def test_a_request_left_by_an_earlier_in_process_command_does_not_end_a_later_run():
    code = ("from crystalprop.utils import quick_exit\n"
            "quick_exit.request()\n"  # as an in-process predict (main([...])) leaves it
            "quick_exit.run(lambda: None)\n"
            "print('still here')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "still here" in result.stdout, result.stderr


def test_a_closed_standard_output_does_not_turn_a_finished_command_into_a_failure():
    """With stdout closed (``>&-``: daemon wrappers) Python's ``sys.stdout`` is None, and the quick exit's
    flush raised AttributeError: a finished ``predict -o`` ended in a traceback and status 1 (hunt7 finding 7)."""
    code = ("from crystalprop.utils import quick_exit\n"
            "quick_exit.run(lambda: quick_exit.request())\n")
    result = subprocess.run(["bash", "-c", f'"{sys.executable}" -c "$0" >&-', code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == ""
