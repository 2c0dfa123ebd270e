"""End a finished command's process without Python's interpreter finalisation.

Once MindSpore is loaded, finalisation (freeing every module, then MindSpore's runtime) takes
0.5-1 s after a command has done all its work: a quarter of a one-file ``predict``. A command
that keeps nothing needing it (its files are closed, its reader processes stopped) calls
:func:`request`; :func:`run`, the command's entry point, then does what finalisation would do
that matters (wait for other threads, run the ``atexit`` handlers, flush the standard streams)
and ends the process with ``os._exit``. Called in-process (tests, ``main([...])``), a command
returns or raises as usual.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, Callable, NoReturn

_state = {"requested": False}


def request() -> None:
    """Ask :func:`run` to end the process quickly once the running command is done."""
    _state["requested"] = True


def run(command: Callable[[], Any]) -> None:
    """Run ``command`` (a click group in standalone mode), then end quickly if it asked to.

    Not under a profiler or tracer (``python -m cProfile``, coverage): they write their
    results at the normal exit. Only a request made by this command counts.
    """
    _state["requested"] = False
    try:
        command()
    except SystemExit as exc:
        if not _quick():
            raise
        finish(exc.code)
    else:
        if _quick():
            finish(0)
    finally:
        _state["requested"] = False  # reached only where the process goes on (in-process calls)


def _quick() -> bool:
    return _state["requested"] and sys.getprofile() is None and sys.gettrace() is None


def finish(code: Any) -> NoReturn:
    """End the process with ``sys.exit(code)``'s status, after the steps of a normal exit that have effects."""
    status = _exit_status(code)
    current = threading.current_thread()
    for thread in threading.enumerate():  # as the interpreter does: non-daemon threads first
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # multiprocessing's (stops children), logging's, MindSpore's
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the stream closed (``>&-``): nothing to flush
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python exits with 120 then
            status = status or 120
    os._exit(status)


def _exit_status(code: Any) -> int:
    """The status ``sys.exit(code)`` gives: None 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
