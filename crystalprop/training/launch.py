"""Process supervision for ``crystalprop train``: the child that trains, the msrun workers, signals.

MindSpore ends the process on SIGINT while a graph runs, so the command trains in a child
process of its own session and turns the terminal's Ctrl-C (and SIGTERM, SIGHUP) into a
SIGTERM for the child, which the trainer takes as a clean stop; Ctrl-Z and the shell's fg/bg
stop and continue both. A child whose parent dies stops the same way rather than train
unattended. Nothing heavy is imported here.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from crystalprop.utils.console import console
from crystalprop.utils.stopping import STOP_SIGNALS
from crystalprop.training.jobs import OnEvent, TrainingFailed, TrainingStopped, run_job
from crystalprop.training.progress import TrainDisplay


def msrun_part(workers: int, output_dir: str, threads: int | None, args: Sequence[str]) -> bool:
    """Play this process's part of a data-parallel ``--workers`` run, if it has one; whether it had.

    Not yet under msrun, with more than one worker: start them (:func:`launch_msrun`). msrun's
    scheduler process runs the command too: it only coordinates the cluster.
    """
    from crystalprop.training.distributed import join_cluster, launched_by_msrun, serves_cluster  # noqa: PLC0415

    if workers > 1 and not launched_by_msrun():
        launch_msrun(workers, output_dir, threads, args)
        return True
    if serves_cluster():
        join_cluster()
        return True
    return False


def launch_msrun(workers: int, output_dir: str, threads: int | None, args: Sequence[str]) -> None:
    """Run the train command ``args`` (without its ``--workers``) in ``workers`` msrun processes,
    relaying rank 0's log; their logs go to OUTPUT_DIR/logs. Raises :class:`TrainingFailed`."""
    import subprocess  # noqa: PLC0415

    from crystalprop.training.distributed import msrun_command, msrun_environment  # noqa: PLC0415

    args = list(args)
    at = next(i for i, a in enumerate(args) if a == "--workers" or a.startswith("--workers="))
    del args[at : at + (1 if "=" in args[at] else 2)]
    if threads is None:
        args += ["--threads", str(max(1, (os.cpu_count() or 1) // workers))]
    log_dir = Path(output_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = msrun_command(workers, args, log_dir)
    console.print(f"starting {workers} training processes with msrun; logs in {log_dir}", highlight=False,
                  markup=False)
    with open(log_dir / "msrun.log", "w") as msrun_log:
        worker = subprocess.Popen(command, env=msrun_environment(), stdout=msrun_log, stderr=subprocess.STDOUT)
        interrupted = False
        try:
            rc = follow_log(log_dir / "worker_0.log", worker)
        except KeyboardInterrupt:
            interrupted = True
            worker.terminate()
            rc = worker.wait()
    if rc == 0 and interrupted:
        sys.exit(128 + signal.SIGINT)  # stopped cleanly by Ctrl-C, as a single process exits
    if rc != 0:
        raise TrainingFailed(f"distributed training failed (exit {rc}); the last checkpoint in {output_dir} is "
                             f"intact. Worker logs: {log_dir}")


def follow_log(log: Path, process, poll_s: float = 0.5) -> int:
    """Print ``log``'s lines as they come until ``process`` ends; its exit status.

    Only whole lines are printed, and none of MindSpore's own (they start with ``[LEVEL]``).
    """
    position = 0
    while True:
        done = process.poll() is not None
        if log.is_file():
            with open(log, "rb") as f:
                f.seek(position)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only; the rest comes next time
            position += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if line.strip() and not line.startswith("["):
                    console.print(line, highlight=False, markup=False)
        if done:
            return process.returncode
        time.sleep(poll_s)


def run_isolated(job: dict, on_event: OnEvent | None = None) -> dict:
    """:func:`crystalprop.training.jobs.run_job` in a child process, with the live display; its outcome.

    Raises :class:`TrainingStopped` where a stop signal ended it without a result, :class:`TrainingFailed`
    with the child's error, or when it ended without a result otherwise.
    """
    kind, payload = run_training_child(job, on_event)
    if kind == "stopped":
        raise TrainingStopped(payload, (Path(job["run"]["run_dir"]) / "last.ckpt").is_file())
    if kind == "error":
        raise TrainingFailed(payload)
    return payload


NO_RESULT = "training process ended without a result (killed?)"


def run_training_child(job: dict, on_event: OnEvent | None = None) -> tuple[str, object]:
    """Train in a child process of its own session, relaying its events to the display (and ``on_event``).

    Returns ("result", outcome), ("error", message), or ("stopped", signal) where a stop signal ended the child
    before it could stop cleanly (while it started, or forced by a second Ctrl-C). While it runs, the first of SIGINT,
    SIGTERM and SIGHUP (unless ignored, as under nohup) to this process is passed on to the child's group as SIGTERM, a
    SIGINT after it ends the child with SIGKILL, and Ctrl-Z stops both
    (:func:`relay_job_control`).
    """
    import multiprocessing as mp  # noqa: PLC0415
    import queue as queue_module  # noqa: PLC0415

    from crystalprop.utils.spawn import main_script_hidden  # noqa: PLC0415

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stepping = ctx.Value("b", 0, lock=False)  # set by the child as training begins: a stop then saves after a step
    child = ctx.Process(target=_train_child_main, args=(job, events, stepping))
    with main_script_hidden():  # a caller's script without a __main__ guard must not run again in the child
        child.start()

    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        if signum == signal.SIGINT and len(received) > 1:  # a Ctrl-C after a stop signal: now, as offered
            console.print("[yellow]forced: the training process ends without saving this step[/]")
            _signal_group(child.pid, signal.SIGKILL)
        elif len(received) == 1:
            console.print("[yellow]stopping after this step and saving... (Ctrl-C again to force)[/]"
                          if stepping.value else
                          "[yellow]stopping before training began: nothing new to save (Ctrl-C again to force)[/]")
            _signal_group(child.pid, signal.SIGTERM)  # its graph-building workers too, if it is still starting

    # a hang-up ignored here (under nohup) stays ignored: the run must outlive its terminal
    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS
                if not (sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN)}
    previous.update(relay_job_control(child.pid))
    outcome: tuple[str, object] | None = None
    try:
        with TrainDisplay() as display:
            while True:
                # liveness first: a child found dead sent everything before it exited, so one
                # more wait still reads its last message (checked after an empty wait, it was lost)
                alive = child.is_alive()
                try:
                    kind, info = events.get(timeout=0.5)
                except queue_module.Empty:
                    if alive:
                        continue
                    break
                if kind in ("result", "error"):
                    outcome = (kind, info)
                    break
                if kind != "stopping" or not received:  # this process said so when the signal came
                    display.event(kind, info)
                if on_event:
                    on_event(kind, info)
    finally:
        child.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if outcome is None:  # the training process ended without a word: killed
        return ("stopped", received[0]) if received else ("error", NO_RESULT)  # a stop signal's, or another's
    kind, payload = outcome
    if kind == "result" and received and isinstance(payload, dict) and payload.get("signal"):
        payload["signal"] = received[0]  # the command's own: Ctrl-C reached the training as SIGTERM
    return outcome


def _signal_group(leader: int | None, signum: int) -> None:
    """Send ``signum`` to the process group ``leader`` leads (the training process and its graph workers), or to
    ``leader`` alone while it is not yet a group leader; nothing where it is gone."""
    if leader:
        try:
            os.killpg(leader, signum)
        except (ProcessLookupError, PermissionError):  # gone already, or not yet its own group leader
            try:
                os.kill(leader, signum)
            except ProcessLookupError:
                pass


def relay_job_control(child: int) -> dict:
    """Make the terminal's Ctrl-Z (SIGTSTP) stop the training process group ``child`` with this
    process, and SIGCONT (the shell's ``fg``/``bg``) continue it; returns the replaced handlers.

    The child leads a session of its own (so that Ctrl-C reaches only this process), which also
    keeps the terminal's job control from reaching it: without the relay a suspended command
    left its training running.
    """

    def suspend(signum, frame) -> None:
        _signal_group(child, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once continued
        _signal_group(child, signal.SIGCONT)

    def resume(signum, frame) -> None:  # also after a SIGSTOP sent to this process from outside
        _signal_group(child, signal.SIGCONT)

    return {signal.SIGTSTP: signal.signal(signal.SIGTSTP, suspend),
            signal.SIGCONT: signal.signal(signal.SIGCONT, resume)}


def stop_when_orphaned(parent: int, grace_s: float = 300.0, poll_s: float = 1.0,
                       on_orphaned: Callable[[], None] | None = None) -> None:
    """If the process ``parent`` (that started this one) dies, call ``on_orphaned`` and stop cleanly
    (SIGTERM) rather than train unattended; leave for good if a clean stop has not happened within
    ``grace_s`` (e.g. a data-parallel peer died and an all-reduce waits for it)."""
    import threading  # noqa: PLC0415

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        if on_orphaned is not None:
            on_orphaned()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="orphan-watch").start()


def _train_child_main(job: dict, events, stepping) -> None:
    """Child process: run the training and report events, then the result or the error; ``stepping`` (a shared
    flag) is set as training begins, before the parent reads that event, so that its stop message is true."""
    os.setsid()  # the terminal's Ctrl-C goes to the parent only
    # At exit the queue's feeder thread sends what is left (the result or error, put just before):
    # only a queue nobody reads any more, the parent's being gone, may drop it rather than hang.
    stop_when_orphaned(os.getppid(), grace_s=60.0 if "MS_ROLE" in os.environ else 300.0,
                       on_orphaned=events.cancel_join_thread)

    def report(kind: str, info: dict) -> None:
        if kind == "start":
            stepping.value = 1
        events.put((kind, info))

    try:
        events.put(("result", run_job(job, report)))
    except Exception as exc:  # reported to the parent as a one-line error
        events.put(("error", str(exc) or type(exc).__name__))
