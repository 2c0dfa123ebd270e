"""The command's two terminal streams: messages and progress on stderr, results on stdout.

Here rather than in the command line's display module, so that training's progress bars and log relay
(:mod:`crystalprop.training`) write to the same streams without importing the command line."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
"""Progress, messages and errors."""
console.soft_wrap = not console.is_terminal  # a log file or pipe keeps each message on one line
out = Console()
"""Results."""
