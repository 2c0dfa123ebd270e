"""Data-parallel training with msrun: 2 CPU worker processes against one process, on real runs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI, TINY_CLI, read_history, run_cli, write_json_dataset

# 32 training structures in batches of 6: the last batch of each epoch (2) is split unevenly
COMMON = ["--target", "y", "--epochs", "3", "--batch-size", "6", "--lr", "5e-3", "--graph-workers", "1",
          "--threads", "1", *TINY_CLI]


def assert_same_curve(a: list[dict], b: list[dict]) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_mae", "val_rmse"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-4), (ra["epoch"], key)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_json_dataset(tmp_path_factory.mktemp("dp") / "data.json", 36)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    result = run_cli(["train", data, "-o", run_dir, *COMMON])
    assert result.returncode == 0, result.stderr
    return run_dir


def test_two_workers_follow_the_single_process_curve(data, single, tmp_path):
    run_dir = tmp_path / "two"
    result = run_cli(["train", data, "-o", run_dir, *COMMON, "--workers", "2"])
    assert result.returncode == 0, result.stderr
    assert_same_curve(read_history(single), read_history(run_dir))
    # rank 0 alone wrote the run files; rank 0's progress reached the terminal
    assert len(read_history(run_dir)) == 3
    assert {"worker_0.log", "worker_1.log", "scheduler.log"} <= {p.name for p in (run_dir / "logs").iterdir()}
    assert "epoch 3:" in result.stderr
    # the distributed model predicts like the single-process one
    out = {}
    for name, rd in (("one", single), ("two", run_dir)):
        csv_path = tmp_path / f"{name}.csv"
        pred = run_cli(["predict", data, "-m", rd / "best.ckpt", "-o", csv_path, "--workers", "0"])
        assert pred.returncode == 0, pred.stderr
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        value = next(k for k in rows[0] if k not in ("index", "name", "source", "formula", "n_sites", "error",
                                                     "warning"))
        out[name] = np.array([float(r[value]) for r in rows])
    np.testing.assert_allclose(out["two"], out["one"], rtol=1e-4, atol=1e-5)


def test_distributed_time_budget_then_resume(data, single, tmp_path):
    run_dir = tmp_path / "budget"
    first = run_cli(["train", data, "-o", run_dir, *COMMON, "--workers", "2", "--max-time", "0"])
    assert first.returncode == 0, first.stderr
    assert "time budget reached" in first.stderr
    second = run_cli(["train", data, "-o", run_dir, *COMMON, "--workers", "2", "--resume"])
    assert second.returncode == 0, second.stderr
    assert_same_curve(read_history(single), read_history(run_dir))


def _rank_processes(rank: int, cache: str) -> list[int]:
    """PIDs of this test's msrun worker ``rank`` (found by their environment)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("RANK_ID") == str(rank) and env.get("MS_ROLE") == "MS_WORKER" and \
                env.get("CRYSTALPROP_CACHE") == cache:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers through /proc")
def test_a_dead_worker_ends_the_run_and_keeps_the_checkpoint(data, tmp_path):
    run_dir = tmp_path / "killed"
    args = ["train", data, "-o", run_dir, *COMMON, "--workers", "2"]
    args[args.index("--epochs") + 1] = "500"
    proc = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run_dir / "history.csv").is_file() and len(read_history(run_dir)) >= 2):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no epochs logged"
            time.sleep(0.5)
        victims = _rank_processes(1, os.environ["CRYSTALPROP_CACHE"])
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "distributed training failed" in stderr and "logs" in stderr
    # rank 0, left waiting for its dead peer, gives up by itself
    deadline = time.monotonic() + 120
    while _rank_processes(0, os.environ["CRYSTALPROP_CACHE"]):
        assert time.monotonic() < deadline, "rank 0 outlived its peer"
        time.sleep(1)
    # the checkpoints rank 0 wrote are intact, and the run resumes in one process
    args[args.index("--workers") + 1] = "1"
    resumed = run_cli([*args, "--resume", "--max-time", "0"])
    assert resumed.returncode == 0, resumed.stderr
    assert "time budget reached" in resumed.stderr
