"""``python -m crystalprop``: the same as the ``crystalprop`` command (msrun starts workers this way)."""

from crystalprop.cli import main

if __name__ == "__main__":
    main()
