"""Time repeated ``crystalprop.predict`` calls on one in-memory structure (all shipped models).

The first call loads and compiles the models; later calls with the same models reuse them.
Usage: python benchmarks/api_repeat.py [--calls 4] [--structure examples/Si_diamond.vasp]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--structure", default=str(ROOT / "examples" / "Si_diamond.vasp"))
    args = parser.parse_args()

    import crystalprop
    from pymatgen.core import Structure

    structure = Structure.from_file(args.structure)
    for call in range(args.calls):
        started = time.perf_counter()
        crystalprop.predict(structure)
        print(f"call {call + 1}: {time.perf_counter() - started:.3f} s")


if __name__ == "__main__":
    main()
