"""``python -m crystalprop``: the same as the ``crystalprop`` command (msrun starts workers this way)."""

from crystalprop.cli import run

if __name__ == "__main__":
    run()
