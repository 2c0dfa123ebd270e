"""The ``crystalprop`` command, a thin layer over the Python API: the commands (``commands``), their shared
options (``options``), tables and progress lines (``display``). Imports nothing heavy, so the command starts fast."""

from __future__ import annotations

import signal
import sys


def run() -> None:
    """The ``crystalprop`` command's entry point: loads the commands and runs them. A Ctrl-C while they load
    (click, rich and the commands' modules: the command's first ~0.2 s) ends as one during a command does,
    with one line and status 130, not Python's traceback."""
    try:
        from crystalprop.cli.commands import run as run_commands  # noqa: PLC0415
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (SIGINT)\n")
        sys.exit(128 + signal.SIGINT)
    run_commands()
