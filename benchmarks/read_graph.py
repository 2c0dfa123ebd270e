"""Read+graph throughput of one reader process, this version against another: structures/s.

Not a test: prints figures and writes JSON. Run from the repository root, with another version's
``crystalprop`` package extracted somewhere (e.g. ``git archive a287b3e crystalprop | tar -x -C /tmp/old``):

    PYTHONPATH=. .venv/bin/python benchmarks/read_graph.py --old /tmp/old --n 2000 --rounds 3

Each run is a fresh interpreter doing a reader process's work (``prepare_input``: read, check,
canonical cell, graph; shipped-model settings) on the first N mp2018 files (sorted), in that
version's reader environment (``predictor.READER_ENV`` where it has one), after one warm-up file.
It reports structures per second of wall time and of the process's CPU time (steadier on a loaded
machine). Runs alternate old, new, old, ... so both see the same machine load; the figures are
medians and the ratios new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MP2018 = ROOT.parent / "shared" / "data" / "mp2018" / "structures"


def _rates(n: int) -> tuple[float, float]:
    """Structures per second of wall and of CPU time of a reader's work on the first ``n`` mp2018 files."""
    import time  # noqa: PLC0415

    from crystalprop.graph.settings import GraphSettings  # noqa: PLC0415

    predictor = _predictor_module()
    prepare_input = predictor.prepare_input
    predictor._import_readers()
    paths = sorted(str(p) for p in MP2018.iterdir())[:n]
    settings = GraphSettings()
    prepare_input((0, paths[0], settings, 0.0))
    wall, cpu = time.perf_counter(), time.process_time()
    for k, path in enumerate(paths):
        prepare_input((k, path, settings, 0.0))
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


PREDICTOR_MODULES = ("crystalprop.prediction.predictor", "crystalprop.predictor")
"""Where ``prepare_input`` lives: since session 34, and before it (versions before the package layout)."""


def _predictor_module():
    """This interpreter's version's predictor module, wherever that version keeps it (looked up in its own
    folder: an editable install of another version would otherwise lend its subpackages)."""
    import importlib  # noqa: PLC0415

    import crystalprop  # noqa: PLC0415

    package = Path(crystalprop.__file__).parent
    for name in PREDICTOR_MODULES:
        if (package / Path(*name.split(".")[1:])).with_suffix(".py").is_file():
            return importlib.import_module(name)
    raise ModuleNotFoundError(f"none of {', '.join(PREDICTOR_MODULES)} in {package}")


def _reader_env(code_root: str) -> dict[str, str]:
    """The environment variables that version sets in its reader processes."""
    probe = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
             "from read_graph import _predictor_module; "
             "print(json.dumps(getattr(_predictor_module(), 'READER_ENV', {})))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=code_root), cwd=ROOT.parent)
    return json.loads(out.stdout.splitlines()[-1])


def _run(code_root: str, reader_env: dict[str, str], n: int) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=code_root, **reader_env)
    out = subprocess.run([sys.executable, __file__, "--worker", str(n)], check=True, env=env, capture_output=True,
                         text=True, cwd=ROOT.parent)
    wall, cpu = out.stdout.split()[-2:]
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="folder holding the other version's crystalprop package")
    parser.add_argument("--n", type=int, default=2000, help="first N mp2018 files (sorted)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each version, alternating")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "read_graph.json"))
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(*_rates(args.worker))
        return
    if not args.old:
        parser.error("--old is required")
    versions = {"old": args.old, "new": str(ROOT)}
    envs = {version: _reader_env(root) for version, root in versions.items()}
    runs: dict[str, dict[str, list[float]]] = {version: {"wall": [], "cpu": []} for version in versions}
    for _ in range(args.rounds):
        for version, root in versions.items():
            wall, cpu = _run(root, envs[version], args.n)
            runs[version]["wall"].append(wall)
            runs[version]["cpu"].append(cpu)
            print(f"{version}: {wall:.1f} structures/s wall, {cpu:.1f} structures/s CPU", flush=True)
    medians = {version: {clock: statistics.median(values) for clock, values in clocks.items()}
               for version, clocks in runs.items()}
    ratios = {clock: medians["new"][clock] / medians["old"][clock] for clock in ("wall", "cpu")}
    for clock in ("wall", "cpu"):
        print(f"{clock}: median old {medians['old'][clock]:.1f}/s, new {medians['new'][clock]:.1f}/s, "
              f"new/old {ratios[clock]:.2f}")
    Path(args.out).write_text(json.dumps({"n": args.n, "reader_env": envs, "runs": runs, "medians": medians,
                                          "ratios": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
