"""Time ``crystalprop predict <one file>`` from a cold process start, warm caches (graph compile cache, kernels).

Runs the command ``--runs`` times (after one unmeasured run that fills the caches) and prints
the median and the fastest wall time, and the same of the CPU time (user + system) of each
run's process tree; ``--phases`` then runs it once more inside this process with timers around
its phases (imports, model loading, compiling, reading, predicting, output), each phase's own
wall and CPU time without the phases nested in it; the modules that hold the timed functions
are imported first, each import timed as a phase of its own. On a busy machine wall times
grow with the load; CPU times much less so.
Usage: python benchmarks/predict_one.py [--runs 5] [--phases] [file.cif]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import resource
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
    ("crystalprop.model.folded", "stack_members", "check members"),
    ("crystalprop.model.folded", "FoldedMatformer.fold", "fold stacked weights"),
    ("crystalprop.prediction.predictor", "Predictor.compile", "compile (cache load, probe run)"),
    ("crystalprop.prediction.predictor", "_import_readers", "import readers (pymatgen)"),
    ("crystalprop.prediction.predictor", "prepare_input", "read + graph (pymatgen)"),
    ("crystalprop.prediction.predictor", "Predictor.predict_prepared", "predict"),
    ("crystalprop.cli.commands", "print_rows", "print table"),
)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and their children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall_times(path: str, runs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per run of ``python -m crystalprop predict path``, each a new process."""
    command = [sys.executable, "-m", "crystalprop", "predict", path]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(command, env=env, capture_output=True, check=True)  # fills the caches
    times = []
    for _ in range(runs):
        started, cpu = time.perf_counter(), children_cpu()
        subprocess.run(command, env=env, capture_output=True, check=True)
        times.append((time.perf_counter() - started, children_cpu() - cpu))
    return times


def now() -> tuple[float, float]:
    """(wall, CPU of this process) seconds."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since ``start``, a :func:`now`."""
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


class PhaseClock:
    """(Wall, CPU) time per phase; a phase nested in another is not counted in the outer one (but in :data:`WHOLE`)."""

    def __init__(self) -> None:
        self.totals: dict[str, tuple[float, float]] = {}
        self._stack: list[list[Any]] = []  # [phase, started, (wall, CPU) of nested phases]

    def add(self, phase: str, spent: tuple[float, float]) -> None:
        """Count ``spent`` (wall, CPU) to ``phase``."""
        total = self.totals.get(phase, (0.0, 0.0))
        self.totals[phase] = (total[0] + spent[0], total[1] + spent[1])

    def wrap(self, phase: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._stack and self._stack[-1][0] in WHOLE:
                return function(*args, **kwargs)
            frame = [phase, now(), (0.0, 0.0)]
            self._stack.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = since(frame[1])
                self.add(phase, (spent[0] - frame[2][0], spent[1] - frame[2][1]))
                if self._stack:
                    self._stack[-1][2] = (self._stack[-1][2][0] + spent[0], self._stack[-1][2][1] + spent[1])

        return timed


def phases(path: str) -> dict[str, tuple[float, float]]:
    """Run the command in this process with a timer around each of :data:`PHASES`; (wall, CPU) seconds per phase."""
    main_script = ROOT / "crystalprop" / "__main__.py"
    sys.argv = [str(main_script), "predict", path]  # before MindSpore's import, which keys its compile cache on it
    started = now()
    clock = PhaseClock()
    from crystalprop.cli import commands as cli  # noqa: PLC0415  (timed)

    clock.add("import crystalprop.cli.commands", since(started))
    from crystalprop.utils.gc_pause import collection_paused  # noqa: PLC0415

    for module_name, attribute, phase in PHASES:
        if module_name not in sys.modules:  # the model code imports MindSpore
            begun = now()
            with collection_paused():  # as the command's start-up
                importlib.import_module(module_name)
            clock.add(f"import {module_name}", since(begun))
        module = sys.modules[module_name]
        owner, _, name = attribute.rpartition(".")
        target = getattr(module, owner) if owner else module
        setattr(target, name, clock.wrap(phase, getattr(target, name)))
    try:
        cli.main()
    except SystemExit:
        pass
    total = since(started)
    clock.totals["rest"] = (total[0] - sum(w for w, _ in clock.totals.values()),
                            total[1] - sum(c for _, c in clock.totals.values()))
    clock.totals["total (in process)"] = total
    return clock.totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="also time the phases of one run in this process")
    args = parser.parse_args()

    times = wall_times(args.path, args.runs)
    walls, cpus = [wall for wall, _ in times], [cpu for _, cpu in times]
    print(f"{args.runs} warm runs of `crystalprop predict {args.path}`: "
          f"median {statistics.median(walls):.2f} s, min {min(walls):.2f} s; "
          f"CPU (user + system, process tree) median {statistics.median(cpus):.2f} s, min {min(cpus):.2f} s")
    if args.phases:
        timed = phases(args.path)
        print(f"  {'phase':<36} {'wall':>7} {'CPU':>7}", file=sys.stderr)
        for phase, (wall, cpu) in timed.items():
            print(f"  {phase:<36} {wall:6.3f}s {cpu:6.3f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
