"""Do two versions of crystalprop's readers give the same graphs? Hashes of every graph array, compared.

Not a test: prints figures and writes JSON. Run from the repository root, with another version's
``crystalprop`` package extracted somewhere (e.g. ``git archive a287b3e crystalprop | tar -x -C /tmp/old``):

    PYTHONPATH=. .venv/bin/python benchmarks/graph_identity.py --old /tmp/old --n-mp 2000 --n-qmof 100

Each version reads the files the way ``crystalprop predict`` does (one reader process of its own
``ReadAhead``, so with that version's reader environment), once per cell setting. Per structure the
hash covers the graph's arrays (bytes, dtype, shape, in order), the cell's site count, the error and
the warnings; any difference is a mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CELLS = ("canonical", "as-given")


def _hash_all(paths: list[str], cell: str) -> dict[str, str]:
    """name -> hash of what the readers prepare for it (runs inside the version under test)."""
    import hashlib  # noqa: PLC0415

    from crystalprop.graph.settings import GraphSettings  # noqa: PLC0415
    from crystalprop.prediction.predictor import ReadAhead  # noqa: PLC0415

    out = {}
    for item in ReadAhead(paths, GraphSettings(cell=cell), workers=1):
        digest = hashlib.sha256(repr((item.cell_sites, item.error, item.warnings)).encode())
        if item.graph is not None:
            for array in (item.graph.atomic_numbers, item.graph.src, item.graph.dst, item.graph.distances):
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(array.tobytes())
        out[item.name] = digest.hexdigest()
    return out


def _run(code_root: str, paths: list[str], cell: str) -> dict[str, str]:
    """Hashes computed by the crystalprop package under ``code_root``, in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        listing, result = Path(tmp) / "paths.json", Path(tmp) / "hashes.json"
        listing.write_text(json.dumps(paths))
        env = dict(os.environ, PYTHONPATH=code_root)
        subprocess.run([sys.executable, __file__, "--worker", str(listing), str(result), cell], check=True, env=env,
                       cwd=tmp)
        return json.loads(result.read_text())


def _files(folder: Path, n: int | None) -> list[str]:
    paths = sorted(str(p) for p in folder.iterdir() if p.is_file())
    return paths if n is None else paths[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="folder holding the other version's crystalprop package")
    parser.add_argument("--n-mp", type=int, default=2000, help="first N mp2018 files (sorted)")
    parser.add_argument("--n-elastic", type=int, default=None, help="first N mp2018_elastic files (default: all)")
    parser.add_argument("--n-qmof", type=int, default=100, help="first N qmof_subset files")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "graph_identity.json"))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        listing, result, cell = args.worker
        Path(result).write_text(json.dumps(_hash_all(json.loads(Path(listing).read_text()), cell)))
        return
    if not args.old:
        parser.error("--old is required")
    sets = {"mp2018": _files(DATA / "mp2018" / "structures", args.n_mp),
            "mp2018_elastic": _files(DATA / "mp2018_elastic" / "structures", args.n_elastic),
            "qmof_subset": _files(DATA / "qmof_subset" / "structures", args.n_qmof)}
    report = {}
    for name, paths in sets.items():
        for cell in CELLS:
            old, new = _run(args.old, paths, cell), _run(str(ROOT), paths, cell)
            mismatched = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            graphs = len(new)
            report[f"{name}/{cell}"] = {"structures": graphs, "mismatches": len(mismatched), "first": mismatched[:10]}
            print(f"{name:15s} {cell:9s} {graphs:5d} structures, {len(mismatched)} mismatches", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
