"""Time ``crystalprop predict <one file>`` from a cold process start, warm caches (graph compile cache, kernels).

Runs the command ``--runs`` times (after one unmeasured run that fills the caches) and prints
the median and the fastest wall time; ``--phases`` then runs it once more inside this
process with timers around its phases (imports, model loading, compiling, reading,
predicting, output), each phase's own time without the phases nested in it; the modules
that hold the timed functions are imported first, each import timed as a phase of its own.
Usage: python benchmarks/predict_one.py [--runs 5] [--phases] [file.cif]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "tests" / "files" / "mp2018" / "mp-1.cif"

# (module, attribute, phase): the functions timed by --phases, looked up by name at call time
WHOLE = {"compile (cache load, probe run)"}  # phases that keep the time of the phases nested in them
PHASES = (
    ("crystalprop.model.checkpoint", "read_checkpoint", "read checkpoints"),
    ("crystalprop.backend", "enable_compile_cache", "compile-cache key"),
    ("crystalprop.model.checkpoint", "build_model", "build networks"),
    ("crystalprop.model.checkpoint", "weight_set", "weight sets"),
    ("crystalprop.predictor", "Predictor.compile", "compile (cache load, probe run)"),
    ("crystalprop.predictor", "prepare_input", "read + graph (pymatgen)"),
    ("crystalprop.predictor", "Predictor.predict_prepared", "predict"),
    ("crystalprop.cli", "print_rows", "print table"),
)


def wall_times(path: str, runs: int) -> list[float]:
    """Seconds per run of ``python -m crystalprop predict path``, each a new process."""
    command = [sys.executable, "-m", "crystalprop", "predict", path]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(command, env=env, capture_output=True, check=True)  # fills the caches
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


class PhaseClock:
    """Time per phase; a phase nested in another is not counted in the outer one (but in :data:`WHOLE`)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list[Any]] = []  # [phase, started, time of nested phases]

    def wrap(self, phase: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._stack and self._stack[-1][0] in WHOLE:
                return function(*args, **kwargs)
            frame = [phase, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = time.perf_counter() - frame[1]
                self.totals[phase] = self.totals.get(phase, 0.0) + spent - frame[2]
                if self._stack:
                    self._stack[-1][2] += spent

        return timed


def phases(path: str) -> dict[str, float]:
    """Run the command in this process with a timer around each of :data:`PHASES`; seconds per phase."""
    main_script = ROOT / "crystalprop" / "__main__.py"
    sys.argv = [str(main_script), "predict", path]  # before MindSpore's import, which keys its compile cache on it
    started = time.perf_counter()
    clock = PhaseClock()
    from crystalprop import cli  # noqa: PLC0415  (timed)

    clock.totals["import crystalprop.cli"] = time.perf_counter() - started
    from crystalprop.backend import prefer_compiled_protobuf  # noqa: PLC0415
    from crystalprop.gc_pause import collection_paused  # noqa: PLC0415

    prefer_compiled_protobuf()  # as the command does before MindSpore's import
    for module_name, attribute, phase in PHASES:
        if module_name not in sys.modules:  # the model code imports MindSpore
            begun = time.perf_counter()
            with collection_paused():  # as the command's start-up
                importlib.import_module(module_name)
            clock.totals[f"import {module_name}"] = time.perf_counter() - begun
        module = sys.modules[module_name]
        owner, _, name = attribute.rpartition(".")
        target = getattr(module, owner) if owner else module
        setattr(target, name, clock.wrap(phase, getattr(target, name)))
    try:
        cli.main()
    except SystemExit:
        pass
    total = time.perf_counter() - started
    clock.totals["rest"] = total - sum(clock.totals.values())
    clock.totals["total (in process)"] = total
    return clock.totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="also time the phases of one run in this process")
    args = parser.parse_args()

    times = wall_times(args.path, args.runs)
    print(f"{args.runs} warm runs of `crystalprop predict {args.path}`: "
          f"median {statistics.median(times):.2f} s, min {min(times):.2f} s")
    if args.phases:
        for phase, seconds in phases(args.path).items():
            print(f"  {phase:<26} {seconds:6.3f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
