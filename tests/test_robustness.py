"""A screening run survives any input: time limits, dying readers, bounded batches (issue 17)."""

from __future__ import annotations

import csv
import errno
import functools
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

from conftest import CLI, graph_of, make_structures, perovskite, rocksalt, rocksalt_conventional
from crystalprop.prediction import predictor as predictor_module
from crystalprop.graph import GraphSettings, batch, neighbors
from crystalprop.prediction.predictor import Prepared, ReadAhead, iter_prepared

HAS_PROC = Path("/proc/self/fd").is_dir() and hasattr(os, "mkfifo")


def collect(reader: ReadAhead, seconds: float) -> list[Prepared]:
    """Everything ``reader`` yields, or a test failure if it does not finish within ``seconds``."""
    items: list[Prepared] = []
    thread = threading.Thread(target=lambda: items.extend(reader), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"reading hung: {len(items)} items after {seconds} s")
    return items


# --- one time limit for a structure's whole preparation ----------------------------------------


def test_time_limit_covers_the_neighbour_search(monkeypatch):
    """The in-process path runs the readers' own code: a graph that takes too long becomes a row."""
    original = neighbors._neighbor_search

    def slow_for_big_cells(structure, *args):
        if len(structure) > 2:
            time.sleep(20)
        return original(structure, *args)

    monkeypatch.setattr(neighbors, "_neighbor_search", slow_for_big_cells)
    started = time.monotonic()
    items = list(iter_prepared([perovskite(3.905), rocksalt(4.21, "Mg", "O")], GraphSettings(), workers=0,
                               timeout=0.5))
    assert time.monotonic() - started < 10
    assert [item.name for item in items] == ["structure0", "structure1"]
    assert items[0].graph is None
    assert items[0].error == ("preparing this input (reading, checks, neighbour search) took longer than 0.5 s; "
                              "skipped")
    assert items[1].error is None and items[1].graph is not None  # the run goes on


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PROC, reason="needs named pipes")
def test_time_limit_is_enforced_in_the_reader_process(tmp_path):
    """A named pipe nobody writes to blocks its reader: the limit ends that input, the others are read."""
    stuck = tmp_path / "stuck.cif"
    os.mkfifo(stuck)
    good = tmp_path / "good.cif"
    CifWriter(rocksalt_conventional()).write_file(good)
    items = collect(ReadAhead([str(stuck), str(good)], GraphSettings(), workers=1, timeout=1.0), 120)
    assert [item.name for item in items] == [str(stuck), str(good)]
    assert "took longer than 1 s" in items[0].error and "reading" in items[0].error
    assert items[1].graph is not None


def test_neighbour_search_refusal_is_a_row(monkeypatch):
    monkeypatch.setattr(neighbors, "MAX_SEARCH_PAIRS", 5_000)
    big = rocksalt_conventional() * (3, 3, 3)  # kept as given: the canonical cell would be 2 atoms
    items = list(iter_prepared([big, rocksalt(4.21, "Mg", "O")], GraphSettings(cell="as-given"), workers=0))
    assert items[0].graph is None and items[0].error.startswith("neighbour search refused: ")
    assert items[1].graph is not None


# --- a reader process that dies costs only the input it held ----------------------------------


class KillsItsReader(Structure):
    """A Structure that SIGKILLs the process unpickling it: a reader dying on one input."""

    def __reduce__(self):
        return signal.raise_signal, (signal.SIGKILL,)


@pytest.mark.slow
def test_reader_killed_loses_only_its_input():
    structures = [s for _, s in make_structures(12)]
    poison = KillsItsReader.from_sites(rocksalt(4.2))
    inputs = structures[:5] + [poison] + structures[5:]
    items = collect(ReadAhead(inputs, GraphSettings(), workers=2), 180)
    assert [item.name for item in items] == [f"structure{k}" for k in range(13)]
    assert [item.name for item in items if item.error] == ["structure5"]
    assert items[5].error == "reader process died (signal 9) while preparing this input"
    assert all(item.graph is not None for item in items if not item.error)


def _open_writer(fifo: Path, seconds: float) -> int:
    """The write end of ``fifo``, opened once some process has opened it for reading."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _reader_of(fifo: Path, seconds: float = 60) -> int:
    """Pid of the other process that has ``fifo`` open, waiting for one (a process that only
    glances at the file may open and close it before the reader opens it for good)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            if int(fd_dir.parent.name) == os.getpid():
                continue
            try:
                if any(os.readlink(link) == str(fifo) for link in fd_dir.iterdir()):
                    return int(fd_dir.parent.name)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no process has {fifo} open")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PROC, reason="needs /proc and named pipes")
def test_cli_reader_killed_mid_run_writes_every_row_and_exits_1(tmp_path, random_ckpt):
    """SIGKILL the reader while it reads a file: that file gets a reason row, the others their values."""
    names = []
    for k, (name, structure) in enumerate(make_structures(6)):
        if k == 2:
            os.mkfifo(tmp_path / "stuck.cif")
            names.append("stuck.cif")
        CifWriter(structure).write_file(tmp_path / f"{name}.cif")
        names.append(f"{name}.cif")
    args = ["predict", *names, "-m", str(random_ckpt), "-o", "out.csv", "--workers", "1", "--timeout", "600"]
    process = subprocess.Popen(CLI + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "GLOG_v": "3"})
    try:
        writer = _open_writer(tmp_path / "stuck.cif", 120)
        os.kill(_reader_of(tmp_path / "stuck.cif"), signal.SIGKILL)
        os.close(writer)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == names
    assert rows[2]["error"] == "reader process died (signal 9) while preparing this input" and not rows[2]["rand"]
    assert not any(row["error"] for k, row in enumerate(rows) if k != 2)
    assert process.returncode == 1, stderr


def _pool_results(func, jobs, **kwargs) -> list:
    from crystalprop.prediction.workers import ResilientPool

    pool = ResilientPool(func, iter(jobs), 1, on_lost=lambda job, reason: reason, **kwargs)
    try:
        return list(pool)
    finally:
        pool.close()


@pytest.mark.slow
def test_pool_stops_a_worker_stuck_past_the_hard_limit():
    started = time.monotonic()
    assert _pool_results(time.sleep, [0, 600, 0], hard_limit=2) == [
        None, "no answer within 2 s; reader process stopped", None]
    assert time.monotonic() - started < 120


def _steps_with_heartbeats(n: int) -> int:
    """A job of ``n`` one-second steps that reports progress after each (a file of many structures)."""
    from crystalprop.prediction.workers import heartbeat

    for _ in range(n):
        time.sleep(1)
        heartbeat()
    return n


@pytest.mark.slow
def test_pool_lets_a_long_job_that_reports_progress_run_past_the_hard_limit():
    """The hard limit is per step: a file of many structures, each quick, is not stopped for its total time."""
    assert _pool_results(_steps_with_heartbeats, [1, 5, 1], hard_limit=2.5) == [1, 5, 1]


def test_reading_a_file_of_many_structures_reports_progress_after_each(tmp_path, monkeypatch):
    """Each structure of a multi-structure file sends a heartbeat, so the reader's hard limit
    (twice the time limit plus a grace) applies per structure, not to the whole file."""
    path = tmp_path / "three.cif"
    path.write_text("".join(str(CifWriter(s)) for s in (rocksalt(5.6), perovskite(3.9), rocksalt(4.2, "Mg", "O"))))
    beats = []
    monkeypatch.setattr(predictor_module, "heartbeat", lambda: beats.append(1))
    prepared = predictor_module.prepare_input((0, str(path), GraphSettings(), 60.0))
    assert len(prepared) == 3 and not any(p.error for p in prepared)
    assert len(beats) == 3


@pytest.mark.slow
def test_pool_reports_an_exception_in_the_worker_as_that_job_s_result():
    import math

    assert _pool_results(math.sqrt, [4.0, -1.0, 9.0]) == [2.0, "reader error: ValueError: math domain error", 3.0]


def test_reader_processes_follow_the_cpus_this_process_may_use(monkeypatch):
    """Was: min(os.cpu_count(), 4), so a 1-CPU cluster allocation on a 64-core node started 4 readers."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert predictor_module._reader_processes() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert predictor_module._reader_processes() == predictor_module.MAX_READERS
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # as on macOS
    assert predictor_module._reader_processes() == predictor_module.MAX_READERS


@pytest.mark.slow
def test_pool_workers_start_with_the_given_environment(monkeypatch):
    """How the readers get single-threaded BLAS: set in the workers only, the parent's environment unchanged."""
    monkeypatch.setenv("CRYSTALPROP_POOL_PROBE", "parent")
    assert _pool_results(os.getenv, ["CRYSTALPROP_POOL_PROBE"], env={"CRYSTALPROP_POOL_PROBE": "worker"}) == ["worker"]
    assert os.environ["CRYSTALPROP_POOL_PROBE"] == "parent"


@pytest.mark.slow
def test_pool_workers_get_their_environment_without_writing_the_parent_s(monkeypatch):
    """The dispatcher thread starts replacement readers while the main thread runs: writing
    ``os.environ`` there, even briefly, would race with the main thread's own reads and writes."""
    import collections

    class Watched(collections.UserDict):
        def __setitem__(self, key, value):
            if key == "CRYSTALPROP_POOL_PROBE":
                raise AssertionError("the parent's environment was written")
            super().__setitem__(key, value)

    monkeypatch.setattr(os, "environ", Watched(os.environ))
    assert _pool_results(os.getenv, ["CRYSTALPROP_POOL_PROBE"], env={"CRYSTALPROP_POOL_PROBE": "worker"}) == ["worker"]


@pytest.mark.slow
def test_pool_gives_up_when_workers_die_while_starting():
    suicide = functools.partial(signal.raise_signal, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"3 reader processes in a row died while starting \(last: signal 9\)"):
        _pool_results(time.sleep, [0, 0], initializer=suicide)


# --- batches bounded by atoms and edges --------------------------------------------------------


def _prepared(n_atoms: int, n_edges: int) -> Prepared:
    graph = neighbors.CrystalGraph(np.ones(n_atoms, np.int16), np.zeros(n_edges, np.int32),
                                   np.zeros(n_edges, np.int32), np.ones(n_edges, np.float32))
    return Prepared(f"{n_atoms}-{n_edges}", "", graph=graph)


def test_batches_close_before_the_atom_or_edge_limit():
    items = [_prepared(10, 100), _prepared(10, 100), Prepared("failed", "", error="x"), _prepared(50, 100),
             _prepared(5, 900), _prepared(1, 5000), _prepared(1, 1), _prepared(1, 1)]
    limits = batch.BatchLimits(structures=3, atoms=60, edges=1000)
    batches = list(batch.batches_within(items, limits, lambda item: item.graph))
    assert [[item.name for item in part] for part in batches] == [
        ["10-100", "10-100", "failed"],  # 50 more atoms would make 70
        ["50-100", "5-900"],  # 1000 edges: at the limit
        ["1-5000"],  # over the limit alone: a batch of its own
        ["1-1", "1-1"],
    ]


def test_batch_limits_follow_the_model_size():
    small = batch.BatchLimits.for_model(64, features=64, heads=1)
    paper = batch.BatchLimits.for_model(64, features=128, heads=4)
    assert small.edges == 8 * paper.edges and small.atoms == 8 * paper.atoms
    assert paper.edges * 128 * 4 * 16 <= 1 << 30  # 16 bytes per edge and channel within 1 GiB
    assert batch.BatchLimits.for_model(64, 64, 1, memory=2 << 30).edges == 2 * small.edges


@pytest.mark.slow
def test_predictions_do_not_depend_on_the_batch_bound(random_ckpt):
    from crystalprop.prediction.predictor import Predictor

    structures = [s for _, s in make_structures(8)] + [rocksalt_conventional() * (2, 2, 2)]
    predictor = Predictor(str(random_ckpt), cell="as-given")  # the supercell stays large
    graphs = [graph_of(s) for s in structures]
    from crystalprop.graph.settings import STACKED_MEMORY_FACTOR as MEMORY_FACTOR

    memory = 16 * MEMORY_FACTOR * 8 * 600  # 600 edges for the tiny model's 8 channels, as a stacked network
    limits = predictor.batch_limits(64, memory)
    assert limits.edges == 600
    bounded = list(predictor.iter_rows(structures, workers=0, batch_memory=memory))
    edges = {f"structure{k}": g.num_edges for k, g in enumerate(graphs)}
    assert len(bounded) > 2
    for rows in bounded:
        assert len(rows) == 1 or sum(edges[row["name"]] for row in rows) <= limits.edges
    whole = [row for rows in predictor.iter_rows(structures, workers=0) for row in rows]
    assert [row["name"] for rows in bounded for row in rows] == [row["name"] for row in whole]
    np.testing.assert_allclose([row["rand"] for rows in bounded for row in rows], [row["rand"] for row in whole],
                               rtol=1e-6)


def test_predict_help_says_how_batches_are_bounded():
    from crystalprop.cli.commands import main

    text = " ".join(CliRunner().invoke(main, ["predict", "--help"]).output.split())
    assert "--batch-memory" in text and "atoms and edges" in text and "features x heads" in text


# --- nested time limits -----------------------------------------------------------------------


class _Outer(Exception):
    pass


class _Inner(Exception):
    pass


def test_an_inner_time_limit_does_not_outlast_the_enclosing_one():
    """The canonical-cell search's own limit (10 s) runs inside the structure's limit: when the
    structure's limit ends first, it fires on time and with its own error."""
    from crystalprop.io.readers import run_with_time_limit

    def inner():
        return run_with_time_limit(lambda: time.sleep(3), 10.0, _Inner)

    started = time.monotonic()
    with pytest.raises(_Outer):
        run_with_time_limit(inner, 0.5, _Outer)
    assert time.monotonic() - started < 1.5
    time.sleep(0.2)  # and no second alarm is left armed (with the default handler back, it would kill us)
    with pytest.raises(_Inner):  # the inner limit still fires first when it is the shorter one
        run_with_time_limit(lambda: run_with_time_limit(lambda: time.sleep(3), 0.3, _Inner), 10.0, _Outer)


@pytest.mark.parametrize("variable", ["CRYSTALPROP_CACHE", "CRYSTALPROP_KERNELS"])
def test_a_cache_folder_that_cannot_be_made_costs_the_cache_not_the_run(tmp_path, random_ckpt, variable):
    """A read-only HOME (or CRYSTALPROP_CACHE, XDG_CACHE_HOME, CRYSTALPROP_KERNELS) on a compute node ended every
    predict in an OSError traceback and status 1 (hunt7 finding 4). The run goes on, with a note naming the
    folder. (A path below a file stands for a read-only file system: root may write anywhere else.)"""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    structure = tmp_path / "NaCl.cif"
    CifWriter(rocksalt(5.64)).write_file(structure)
    env = {**os.environ, variable: str(blocker / "cache")}
    result = subprocess.run([*CLI, "predict", str(structure), "-m", str(random_ckpt), "-o", str(tmp_path / "out.csv")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if variable == "CRYSTALPROP_CACHE":
        assert f"{blocker / 'cache'}" in result.stderr


def test_a_full_disk_stops_predict_with_a_clear_error_and_whole_rows(tmp_path, random_ckpt):
    """A full disk ended predict in an OSError traceback with status 1, the status of "some structures
    failed", so a pipeline took the cut file as done (hunt7 finding 5). Now status 2 and one line that says
    the rows so far are saved and --resume continues. (A file size limit stands for the full disk.)"""
    import resource

    names = []
    for name, structure in make_structures(150):
        CifWriter(structure).write_file(tmp_path / f"{name}.cif")
        names.append(f"{name}.cif")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    args = ["predict", *names, "-m", str(random_ckpt), "-o", "out.csv", "--workers", "0", "--batch-size", "4"]
    result = subprocess.run(CLI + args, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            preexec_fn=limit_file_size, env={**os.environ, "GLOG_v": "3"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "--resume" in result.stderr and "out.csv" in result.stderr
    assert (tmp_path / "out.csv.meta.json").stat().st_size < 6000  # the limit let the run start
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert 0 < len(rows) < 150 and all(row["rand"] for row in rows)


def test_a_disk_full_before_the_first_row_is_one_line_too(tmp_path, random_ckpt):
    """The CSV's provenance sidecar, written as the run starts, ended in a traceback and status 1 (review)."""
    import resource

    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    result = subprocess.run(CLI + ["predict", "a.cif", "-m", str(random_ckpt), "-o", "out.csv", "--workers", "0"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size,
                            env={**os.environ, "GLOG_v": "3"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "out.csv: cannot write the results there" in result.stderr
