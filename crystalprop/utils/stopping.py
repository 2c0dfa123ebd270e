"""The signals that stop a command cleanly, and the handler that turns them into KeyboardInterrupt.

Light: imported at start-up.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops a command as Ctrl-C does: a cluster's time limit and ``kill`` send SIGTERM, a closed
terminal SIGHUP. ``predict`` stops on them (:func:`stop_signals_interrupt`); ``train`` passes them on to
its training process as SIGTERM."""

TRAINING_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What the training loop itself takes as a request to stop after the current step. Not SIGHUP, on
purpose: the loop takes these over even when ignored, which for SIGHUP would undo ``nohup`` around an
in-process training (``crystalprop.train``), and under ``crystalprop train`` the loop runs in a session
of its own, where no hangup comes but the SIGTERM that the command makes of one."""


class Interrupt:
    """The stop signals received (``received``, in order) and whether the next one raises (``armed``)."""

    __slots__ = ("armed", "received")

    def __init__(self) -> None:
        self.received: list[int] = []
        self.armed = True

    def disarm(self) -> None:
        """From now on note stop signals without raising: the work they would cut short must finish."""
        self.armed = False


@contextmanager
def stop_signals_interrupt() -> Iterator[Interrupt]:
    """Make the first of :data:`STOP_SIGNALS` raise KeyboardInterrupt in this, the main, thread, unless
    disarmed first; every one received is noted. A signal ignored on entry (a background job's SIGINT,
    ``nohup``'s SIGHUP) stays ignored; the previous handlers are back on exit."""
    interrupt = Interrupt()

    def stop(signum: int, frame: object) -> None:
        interrupt.received.append(signum)
        if interrupt.armed:
            interrupt.disarm()
            raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    taken = [sig for sig, handler in previous.items() if handler not in (signal.SIG_IGN, None)]
    for sig in taken:
        signal.signal(sig, stop)
    try:
        yield interrupt
    finally:
        for sig in taken:
            signal.signal(sig, previous[sig])
