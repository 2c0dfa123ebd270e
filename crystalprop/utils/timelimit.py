"""Run a function under a wall-clock limit: SIGALRM in a process's main thread, a watched helper
thread elsewhere. Used by the readers, the canonical-cell search and the predictor alike."""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def call_with_alarm(func: Callable[[], T], seconds: float, on_timeout: Callable[[], BaseException]) -> T:
    """Run ``func`` under a SIGALRM timer, restoring the previous handler and timer.

    Inside an enclosing limit that ends sooner, the timer fires at the enclosing deadline and
    raises the enclosing limit's error (its handler runs), so a nested limit never extends it.
    The nested ``finally`` keeps the handler restore safe even if the alarm
    fires just as ``func`` returns.
    """
    started = time.monotonic()
    previous_timer = signal.getitimer(signal.ITIMER_REAL)
    outer_first = 0 < previous_timer[0] < seconds

    delivered = []  # the enclosing limit's alarm, once its handler has run here

    def _alarm(signum: int, frame: Any) -> None:
        if outer_first and callable(previous_handler):
            delivered.append(True)
            previous_handler(signum, frame)
        raise on_timeout()

    previous_handler = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, previous_timer[0] if outer_first else seconds)
    try:
        try:
            return func()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer[0] > 0 and not delivered:
            remaining = max(previous_timer[0] - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_timer[1])


class _Abandoned(SystemExit):
    """Raised into a timed-out worker thread to stop it; threads end silently on SystemExit."""


def call_in_watched_thread(func: Callable[[], T], seconds: float, on_timeout: Callable[[], BaseException]) -> T:
    """Run ``func`` in a helper thread and wait at most ``seconds`` for it: the limit where
    SIGALRM cannot serve (Windows, or any thread but the main one).

    On time-out the caller gets ``on_timeout()`` at once; the helper is stopped by an exception
    raised into it at its next Python instruction (a C call it is in finishes first).
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func()
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="crystalprop-read", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_Abandoned))
        raise on_timeout()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def run_with_time_limit(func: Callable[[], T], seconds: float | None, on_timeout: Callable[[], BaseException]) -> T:
    """``func()``, interrupted by ``on_timeout()`` after ``seconds`` (None or 0: no limit):
    SIGALRM in the main thread of a process, a watched helper thread elsewhere (other threads,
    platforms without SIGALRM), so the limit holds wherever it is called."""
    if not seconds or seconds <= 0:
        return func()
    with_alarm = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    return (call_with_alarm if with_alarm else call_in_watched_thread)(func, seconds, on_timeout)
