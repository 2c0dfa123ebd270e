"""Tests for crystalprop.training.launch and .progress: the supervision of `crystalprop train`.

The log relay, the orphan watch and the live display on their own (quick), then the whole
command stopped by Ctrl-C, SIGTERM and a SIGKILL of its training process (slow).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from conftest import CLI, TINY, TINY_CLI, read_history, train_state, write_json_dataset
from conftest import train_config as config
from crystalprop.training import launch, progress
from crystalprop.training.jobs import TrainingFailed

N_DATA = 40


class _Finished:
    """A stand-in for a Popen that has already ended with ``returncode``."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode


@pytest.fixture()
def stderr_console(monkeypatch) -> io.StringIO:
    """The command's stderr console (as launch and progress see it), writing to a buffer, no terminal."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False, color_system=None)
    monkeypatch.setattr(launch, "console", console)
    monkeypatch.setattr(progress, "console", console)
    return buffer


def test_follow_log_relays_whole_lines_but_mindspore_s_own(stderr_console, tmp_path):
    log = tmp_path / "worker_0.log"
    log.write_text("[WARNING] ME(1): MindSpore's own\nepoch 1: train loss 0.5\n\nepoch 2: [not markup]\npartial")
    assert launch.follow_log(log, _Finished(3), poll_s=0.01) == 3
    assert stderr_console.getvalue().splitlines() == ["epoch 1: train loss 0.5", "epoch 2: [not markup]"]


def test_follow_log_waits_for_a_log_that_never_came(stderr_console, tmp_path):
    assert launch.follow_log(tmp_path / "absent.log", _Finished(0), poll_s=0.01) == 0
    assert stderr_console.getvalue() == ""


CHILD = """
import os, signal, sys, time
from crystalprop.training.launch import stop_when_orphaned
marker, mode = sys.argv[1], sys.argv[2]
if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: (open(marker, "w").write("stopped"), os._exit(0)))
stop_when_orphaned(os.getppid(), grace_s=0.5, poll_s=0.02)
print("ready", flush=True)
time.sleep(60)
"""
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
"""  # and ends, leaving its child orphaned


@pytest.mark.parametrize("mode", ["stop", "ignore"])
def test_an_orphaned_training_stops_or_leaves_after_the_grace_time(tmp_path, mode):
    marker = tmp_path / "stopped.txt"
    done = subprocess.run([sys.executable, "-c", PARENT, CHILD, str(marker), mode], capture_output=True, text=True,
                          timeout=60)
    pid = int(done.stdout)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the orphan kept running"
    assert marker.is_file() == (mode == "stop")  # SIGTERM first; the grace time ends one that ignores it


def test_the_display_prints_data_and_epoch_lines(stderr_console):
    with progress.TrainDisplay() as display:
        display.event("graphs", {"total": 3})
        display.event("graph_progress", {"advance": 3})
        display.event("data", {"target": "band_gap", "n_train": 36, "n_val": 4, "n_skipped": 1, "split": "random"})
        display.event("start", {"steps_per_epoch": 2, "epochs": 3, "epoch": 0, "n_train": 36, "n_val": 4})
        for step in (1, 2):
            display.event("step", {"epoch": 0, "step": step, "loss": 0.5, "lr": 1e-3, "structures": 18})
        display.event("epoch", {"epoch": 1, "train_loss": 0.5, "val_mae": 0.25, "val_log10_mae": float("nan"),
                                "structures_per_s": 90.0, "best": True})
        display.event("stopping", {})
    lines = stderr_console.getvalue().splitlines()
    assert "data: target band_gap; 36 train, 4 val, 1 skipped (split: random)" in lines  # the target: chosen or given
    assert any(line.startswith("epoch 1/3 step 2/2 loss 0.5000 lr 1.00e-03") for line in lines)  # no terminal
    assert "epoch 1: train loss 0.5000, val MAE 0.25, 90 structures/s  best" in lines
    assert "stopping after this step (Ctrl-C again to force)" in lines


def test_ensemble_messages_name_each_member(stderr_console):
    with progress.EnsembleMessages() as messages:
        messages.event("member", {"member": 2, "members": 3, "seed": 8, "run_dir": "out/member1"})
    assert stderr_console.getvalue().splitlines() == ["member 2 of 3 (seed 8) in out/member1"]


def test_the_training_process_s_last_message_survives_its_exit(stderr_console):
    """A child that fails at once and exits right after sending its error must not lose it (its
    queue once dropped unsent messages at exit: 'ended without a result (killed?)' every time)."""
    for _ in range(3):
        assert launch.run_training_child({"device": "CPU"}) == ("error", "'threads'")  # a job without threads


@pytest.mark.slow
def test_an_error_in_the_training_process_comes_back_as_one_line(stderr_console, tmp_path):
    from crystalprop.training.jobs import train

    with pytest.raises(TrainingFailed, match="no-such-file.json") as caught:
        train(tmp_path / "no-such-file.json", tmp_path / "run", epochs=1, isolate=True, **TINY)
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)


# --- the command, stopped from outside ------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_json_dataset(tmp_path_factory.mktemp("data") / "data.json", N_DATA)


def _wait_for_epochs(proc, run_dir: Path, epochs: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(read_history(run_dir)) >= epochs:
                return
        except (FileNotFoundError, csv.Error):
            pass
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before {epochs} epochs were logged")
        time.sleep(0.02)
    pytest.fail(f"no {epochs} epochs within {timeout} s")


def _trainer_pid(run_dir: Path) -> int:
    """The process that trains (holds the run directory's lock): the CLI's child since 5ada685."""
    return int((run_dir / ".lock").read_text().strip())


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped, Z: a zombie)."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0]


def _alive(pid: int) -> bool:
    try:
        return _state(pid) != "Z"
    except FileNotFoundError:
        return False


def _kill_if_ours(pid: int | None, run_dir: Path) -> None:
    """Clean-up: SIGKILL a training process this test started (identified by its lock file)."""
    if pid and _alive(pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return
        if b"python" in cmdline:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_cli_resume_after_sigkill_matches_uninterrupted_run(data, tmp_path):
    from crystalprop.training.run import train_model

    run_dir = tmp_path / "killed"
    epochs = 20
    args = ["train", data, "--target", "y", "-o", run_dir, "--epochs", str(epochs), "--batch-size", "8",
            "--lr", "5e-3", "--graph-workers", "1", *TINY_CLI]
    trainer = None
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_for_epochs(proc, run_dir, 3)
            trainer = _trainer_pid(run_dir)
            os.kill(trainer, signal.SIGKILL)  # the training process dies hard (OOM killer, power cut, ...)
            proc.wait(timeout=180)
        finally:
            _kill_if_ours(trainer, run_dir)
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode != 0 and "Traceback" not in stderr
    killed_at = train_state(run_dir / "last.ckpt")["state"]["epoch"]
    assert 2 <= killed_at < epochs, "training finished before it could be killed"
    assert _trainer_pid(run_dir) == trainer  # the lock is left behind by the kill
    events = []
    resumed = train_model(data, run_dir, config(epochs=epochs, unit=""), workers=1, resume=True,
                          on_event=lambda kind, info: events.append((kind, info)))
    assert resumed.stopped_because == "finished"
    assert next(info for kind, info in events if kind == "resume")["epoch"] == killed_at
    assert not (run_dir / ".lock").exists()  # the stale lock was taken over and released
    history = read_history(run_dir)
    assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))
    reference = train_model(data, tmp_path / "reference", config(epochs=epochs, unit=""), workers=1)
    np.testing.assert_allclose([float(r["val_mae"]) for r in history], [r["val_mae"] for r in reference.history],
                               rtol=1e-4)


@contextmanager
def _cli_training_past_two_epochs(data, tmp_path, name: str):
    """Start a long `crystalprop train`, wait for 2 epochs; yield (command, trainer pid, run dir, stderr file).

    On the way out, whatever this test started is killed.
    """
    run_dir = tmp_path / name
    args = ["train", data, "--target", "y", "-o", run_dir, "--epochs", "500", "--batch-size", "4", "--graph-workers", "1",
            *TINY_CLI]
    trainer = None
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_for_epochs(proc, run_dir, 2)
            trainer = _trainer_pid(run_dir)
            yield proc, trainer, run_dir, stderr_path
        finally:
            _kill_if_ours(trainer, run_dir)
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_cli_ctrl_c_stops_cleanly(data, tmp_path):
    with _cli_training_past_two_epochs(data, tmp_path, "interrupted") as (proc, trainer, run_dir, stderr_path):
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    stderr = stderr_path.read_text()
    # 128 + SIGINT, as predict: a script's `train ... && evaluate ...` must not go on (it exited 0)
    assert proc.returncode == 130, f"rc {proc.returncode}: {stderr[-500:]}"
    assert "interrupted" in stderr
    state = train_state(run_dir / "last.ckpt")["state"]
    assert 2 <= state["epoch"] < 500 and not (run_dir / ".lock").exists()
    assert not _alive(trainer)


@pytest.mark.slow
def test_a_second_ctrl_c_ends_a_training_stuck_in_its_step(data, tmp_path):
    """Ctrl-C offers 'again to force': a training whose step never returns (here: stopped by SIGSTOP, as a
    hung graph would be) ignored the first, and the second Ctrl-C did nothing (session 42). It ends it now."""
    with _cli_training_past_two_epochs(data, tmp_path, "stuck") as (proc, trainer, run_dir, stderr_path):
        os.kill(trainer, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        time.sleep(2)
        assert proc.poll() is None, "a stuck training cannot stop cleanly: the command waits for it"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while _alive(trainer) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(trainer), "the forced training process outlived the command"
    stderr = stderr_path.read_text()
    assert proc.returncode == 130, f"rc {proc.returncode}: {stderr[-500:]}"
    assert "forced" in stderr and "Traceback" not in stderr, stderr[-800:]


@pytest.mark.slow
def test_cli_sigterm_stops_the_training(data, tmp_path):
    with _cli_training_past_two_epochs(data, tmp_path, "terminated") as (proc, trainer, run_dir, _):
        proc.send_signal(signal.SIGTERM)  # e.g. `timeout`, a batch scheduler, `kill PID`
        proc.wait(timeout=180)
        assert proc.returncode == 128 + signal.SIGTERM
        deadline = time.monotonic() + 5  # a clean stop takes one step
        while _alive(trainer) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(trainer), "the training process outlived the command"
        assert not (run_dir / ".lock").exists()
        assert train_state(run_dir / "last.ckpt")["state"]["epoch"] < 500


def _wait_for_state(pid: int, stopped: bool, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (_state(pid) == "T") == stopped:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_cli_ctrl_z_suspends_the_training_and_fg_resumes_it(data, tmp_path):
    """The training runs in a process of its own session, which the terminal's Ctrl-Z (SIGTSTP to
    the command) never reached: the command stopped, its training went on using the cores."""
    with _cli_training_past_two_epochs(data, tmp_path, "suspended") as (proc, trainer, run_dir, _):
        proc.send_signal(signal.SIGTSTP)
        assert _wait_for_state(proc.pid, stopped=True), "the command did not stop"
        assert _wait_for_state(trainer, stopped=True), "the training went on while the command was stopped"
        epochs = len(read_history(run_dir))
        time.sleep(1.5)
        assert len(read_history(run_dir)) == epochs
        proc.send_signal(signal.SIGCONT)  # the shell's fg / bg
        assert _wait_for_state(trainer, stopped=False), "the training stayed stopped after SIGCONT"
        assert _wait_for_state(proc.pid, stopped=False)
        _wait_for_epochs(proc, run_dir, epochs + 2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM


def test_the_stop_handler_only_flags_the_stop():
    """The handler reported "stopping" on the training process's event queue: a signal landing while the loop
    itself was putting an event there waited for ever on the queue's lock (hunt14 1). The loop says it now."""
    import signal as signals

    from crystalprop.training.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.stop_requested, trainer.stop_signal = False, None

    def blocked(kind, info):
        raise AssertionError(f"the handler reported {kind!r}")

    trainer.on_event = blocked
    trainer._request_stop(signals.SIGTERM, None)
    trainer._request_stop(signals.SIGINT, None)
    assert trainer.stop_requested and trainer.stop_signal == signals.SIGTERM


def test_a_training_process_stopped_while_it_starts_is_a_stop_not_an_error(stderr_console):
    """SIGTERM while an ensemble member's process started ended it before its handlers were set: "error: ...
    (killed?)" and exit 2, where a cluster's requeue looks for 143 (hunt14 6). Its message said "stopping after
    this step and saving" where no step had begun and nothing would be saved (session 43's note)."""
    import signal as signals
    import threading

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signals.SIGTERM))  # the child is still importing
    before = signals.signal(signals.SIGTERM, lambda *_: None)  # a timer early for the relay must not end pytest
    timer.start()
    try:
        assert launch.run_training_child({"device": "CPU", "threads": 1}) == ("stopped", signals.SIGTERM)
        said = stderr_console.getvalue()
        assert "stopping before training began" in said and "saving" not in said, said
    finally:
        timer.cancel()
        signals.signal(signals.SIGTERM, before)


def test_a_stopped_training_with_nothing_saved_does_not_offer_resume(tmp_path):
    """A stop while the run still built its graphs said "--resume continues from it" over an empty run folder,
    where --resume then found nothing to resume (review 42)."""
    from crystalprop.training.jobs import TrainingStopped

    assert "--resume continues" in str(TrainingStopped(15, True))
    assert "--resume continues" not in str(TrainingStopped(15, False)) and "without --resume" in str(TrainingStopped(15, False))


def test_the_report_says_when_no_epoch_beat_the_start(stderr_console, tmp_path):
    """A fine-tune that only made its start worse ended with 'best validation MAE 0.048 at epoch 1', read as an
    improvement on the start's 0.029 (hunt14 2)."""
    result = {"stopped_because": "finished", "best_val_mae": 0.048, "best_epoch": 1, "start_score": 0.0286}
    assert progress.report_training(result, str(tmp_path)) == 0
    said = stderr_console.getvalue()
    assert "no epoch beat the weights it started from (0.0286" in said and "--lr" in said
    better = {**result, "best_val_mae": 0.025}
    progress.report_training(better, str(tmp_path))
    assert stderr_console.getvalue().count("no epoch beat") == 1
    cut = {**result, "stopped_because": "interrupted"}  # its later epochs may yet beat it: nothing to say now
    progress.report_training(cut, str(tmp_path))
    assert stderr_console.getvalue().count("no epoch beat") == 1
    members = {"stopped_because": "finished", "members": [result, better],
               "ensemble": {"mae": 0.03, "member_maes": [0.048, 0.025], "sigma_spearman": 0.5}}
    progress.report_training(members, str(tmp_path))
    assert stderr_console.getvalue().count("no epoch beat") == 2 and "member 1" in stderr_console.getvalue()


def test_a_hang_up_ignored_under_nohup_stays_ignored(monkeypatch):
    """The relay took SIGHUP over even where nohup had it ignored: closing the terminal stopped the run (exit 129;
    review 42b). A signal this process ignores is left so."""
    import signal as signals

    seen = {}

    class Child:
        pid = None

        def start(self):
            pass

        def is_alive(self):  # asked while the relay's handlers are in place
            seen["hup"] = signals.getsignal(signals.SIGHUP)
            return False

        def join(self):
            pass

    class Context:
        def Queue(self):
            import queue

            return queue.Queue()

        def Process(self, target, args):
            return Child()

        def Value(self, typecode, value, lock=True):
            import multiprocessing  # noqa: PLC0415

            return multiprocessing.Value(typecode, value, lock=lock)

    monkeypatch.setattr("multiprocessing.get_context", lambda kind: Context())
    monkeypatch.setattr(launch, "relay_job_control", lambda pid: {})
    before = signals.signal(signals.SIGHUP, signals.SIG_IGN)
    try:
        assert launch.run_training_child({}) == ("error", launch.NO_RESULT)
        assert seen["hup"] is signals.SIG_IGN
    finally:
        signals.signal(signals.SIGHUP, before)


def test_the_report_says_a_standing_join_was_kept(stderr_console, tmp_path):
    """A resumed finished ensemble keeps the join of its members as they are (hunt17 5): the report says so and how to
    join them anew, rather than 'ensemble of 2' as if it had just joined them."""
    member = {"stopped_because": "finished", "best_val_mae": 0.03, "best_epoch": 1}
    kept = {"stopped_because": "finished", "members": [member, member],
            "ensemble": {"mae": 0.03, "member_maes": [0.031, 0.032], "sigma_spearman": 0.5, "kept": True,
                         "sigma_from": "latent", "n": 319}}
    assert progress.report_training(kept, str(tmp_path)) == 0
    said = stderr_console.getvalue()
    assert "already joins these 2 members as they are (σ latent): kept" in said and "--resume --sigma" in said
    assert "validation MAE 0.03 on 319 validation structures" in said  # not those of a --limit run (hunt17 9)
    joined = {**kept, "ensemble": {**kept["ensemble"], "kept": False, "notes": ["σ is calibrated on 12 structures"]}}
    progress.report_training(joined, str(tmp_path))
    assert "σ is calibrated on 12 structures" in stderr_console.getvalue()  # the join's notes, as ensemble prints them


def test_the_no_gain_note_compares_with_the_model_a_fine_tune_started_from(stderr_console, tmp_path):
    """A fine-tune from an ensemble that beat its first network but not the ensemble said nothing (hunt17 6)."""
    result = {"stopped_because": "finished", "best_val_mae": 0.04, "best_epoch": 1, "start_score": 0.05,
              "start_model_score": 0.03}
    progress.report_training(result, str(tmp_path))
    said = stderr_console.getvalue()
    assert "no epoch beat the model it started from (0.03" in said
    progress.report_training({**result, "best_val_mae": 0.02}, str(tmp_path))
    assert stderr_console.getvalue().count("no epoch beat") == 1
