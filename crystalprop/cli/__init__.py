"""The ``crystalprop`` command, a thin layer over the Python API: the commands (``commands``), their shared
options (``options``), tables and progress lines (``display``). Imports nothing heavy, so the command starts fast."""
