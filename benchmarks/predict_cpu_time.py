"""CPU time of end-to-end `crystalprop predict` with all shipped models, for two code trees, interleaved.

On a loaded machine wall time says little; the CPU seconds of the whole process tree (the
command and its reader processes, user + system) change far less with the load. Each round runs
every tree once over the first ``--files`` mp2018 files (after one warm-up run per tree that
fills the compile cache) and records CPU seconds, wall seconds and peak memory of the tree;
the medians are printed. Usage, from the repository root:

    python benchmarks/predict_cpu_time.py --tree before=/tmp/old-checkout --tree after=. [--files 2000]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmarks import mp2018_files, run_measured  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a checkout to run")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    files = mp2018_files(args.files)
    work = Path(tempfile.mkdtemp(prefix="predict_cpu_"))
    folder = work / "files"
    folder.mkdir()
    for f in files:
        (folder / Path(f).name).symlink_to(f)
    models = ("formation_energy", "band_gap", "bulk_modulus", "shear_modulus")

    def run(path: str) -> tuple[float, float, float]:
        cmd = [sys.executable, "-m", "crystalprop.cli.commands", "predict", str(folder), "-o", str(work / "out.csv"),
               "--overwrite", *(arg for m in models for arg in ("-m", m))]
        os.environ["PYTHONPATH"] = str(Path(path).resolve())  # this tree's crystalprop, not the installed one
        before = _children_cpu()
        wall, peak, _ = run_measured(cmd)
        return _children_cpu() - before, wall, peak

    for path in trees.values():
        run(path)  # warm-up: kernels built, graphs compiled and cached
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, path in trees.items():
            results[name].append(run(path))
            cpu, wall, peak = results[name][-1]
            print(f"{name}: {cpu:.1f} CPU s, {wall:.1f} s wall, peak {peak:.2f} GB", flush=True)
    for name, rows in results.items():
        cpu, wall, peak = (statistics.median(column) for column in zip(*rows))
        print(f"{name:>8}: median {cpu:.1f} CPU s = {len(files) / cpu:.1f} structures per CPU-second; "
              f"wall {wall:.1f} s = {len(files) / wall:.1f} structures/s (loaded machine); peak {peak:.2f} GB")


if __name__ == "__main__":
    main()
