"""Does one crystal get one answer, whatever its cell? And how much do small displacements move it?

Not a test: prints figures and writes JSON. Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/cells.py invariance --n-mp 400 --n-elastic 200
    PYTHONPATH=. .venv/bin/python benchmarks/cells.py displacement --n 300
    PYTHONPATH=. .venv/bin/python benchmarks/cells.py speed --n 2000 --rounds 2
    PYTHONPATH=. .venv/bin/python benchmarks/cells.py reader --n 2000
    PYTHONPATH=. .venv/bin/python benchmarks/cells.py large --repeat 8 [--old /tmp/old]

invariance: for real files of ../shared/data (first N in sorted order), every shipped model's
prediction for the file, its conventional standard cell (symmetrised by pymatgen, and not), and
a 2x1x1 supercell, once on the cell as given and once on the canonical cell; differences to the
file's own prediction.
displacement: every atom moved by 0.01 Å in a random direction (on both cell settings).
speed: ``crystalprop predict`` on the first N mp2018 files, with and without the reduction,
runs interleaved (as-given, canonical, as-given, ...) so both see the same machine load.
reader: the CPU time of reading one file and building its graph, both settings alternating file by file.
large: a REPEAT^3 supercell of conventional Si (8 REPEAT^3 atoms) with 0.05 Å of random thermal
displacement, written as a P1 CIF; the reader's work on it (parse, checks, cell, graph) in a fresh
interpreter per setting, for this tree and, with --old, another version's crystalprop package.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CELLS = ("as-given", "canonical")


def _read(paths: list[Path]) -> list:
    from pymatgen.core import Structure  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_file(p) for p in paths]


def _exact_conventional(structure):
    """The conventional cell without idealisation: the file's own atoms, only the cell changed."""
    import spglib  # noqa: PLC0415
    from pymatgen.core import Structure  # noqa: PLC0415

    numbers = [site.specie.Z for site in structure]
    lattice, frac, found = spglib.standardize_cell((structure.lattice.matrix, structure.frac_coords, numbers),
                                                   to_primitive=False, no_idealize=True, symprec=0.01)
    return Structure(lattice, [int(z) for z in found], frac)


def _variants(structure) -> dict:
    """The file's cell, its conventional standard cell (pymatgen's, symmetrised: atoms move by up to
    0.01 Å), the same conventional cell with the file's own atoms, and a 2x1x1 supercell."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conventional = SpacegroupAnalyzer(structure).get_conventional_standard_structure()
        exact = _exact_conventional(structure)
    return {"file": structure, "conventional": conventional, "conventional, not idealised": exact,
            "2x1x1": structure * (2, 1, 1)}


def _predict(predictor, structures: list) -> dict[str, np.ndarray]:
    """Each model's predictions for ``structures`` (named in order), as arrays."""
    named = []
    for k, s in enumerate(structures):
        s.name = f"s{k}"
        named.append(s)
    rows = [row for rows in predictor.iter_rows(named, workers=0) for row in rows]
    return {label: np.array([np.nan if r[label] is None else r[label] for r in rows]) for label, _ in
            predictor.columns}


def _summary(diff: np.ndarray, reference: np.ndarray) -> dict:
    """Mean and max absolute difference; how many exceed 1e-4 relative (and 1e-4 absolute, for values near 0)."""
    beyond = diff > 1e-4 * np.maximum(np.abs(reference), 1.0)
    return {"mean_abs": float(np.nanmean(diff)), "max_abs": float(np.nanmax(diff)),
            "n_above_1e-4": int(np.sum(beyond)), "n": int(np.sum(~np.isnan(diff)))}


def invariance(n_mp: int, n_elastic: int) -> dict:
    """Differences between cells of one crystal, before (as given) and after (canonical)."""
    from crystalprop.prediction.predictor import Predictor  # noqa: PLC0415

    paths = (sorted((DATA / "mp2018" / "structures").glob("*.cif"))[:n_mp]
             + sorted((DATA / "mp2018_elastic" / "structures").glob("*.cif"))[:n_elastic])
    variants = [_variants(s) for s in _read(paths)]
    result: dict = {"n_files": len(paths), "sites_conventional_mean": float(np.mean(
        [len(v["conventional"]) for v in variants])), "cells": {}}
    for cell in CELLS:
        predictor = Predictor(None, cell=cell)
        values = {kind: _predict(predictor, [v[kind] for v in variants]) for kind in variants[0]}
        result["cells"][cell] = {
            label: {kind: _summary(np.abs(values[kind][label] - values["file"][label]), values["file"][label])
                    for kind in variants[0] if kind != "file"}
            for label, _ in predictor.columns}
    return result


def displacement(n: int, step: float = 0.01, seed: int = 0) -> dict:
    """Prediction changes when every atom moves by ``step`` Å in a random direction, on both cell settings."""
    from crystalprop.prediction.predictor import Predictor  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    structures = _read(sorted((DATA / "mp2018" / "structures").glob("*.cif"))[:n])
    moved = []
    for s in structures:
        shift = rng.normal(size=(len(s), 3))
        shift *= step / np.linalg.norm(shift, axis=1, keepdims=True)
        moved.append(s.copy())
        for i, vector in enumerate(shift):
            moved[-1].translate_sites([i], vector, frac_coords=False, to_unit_cell=True)
    result: dict = {"n": len(structures), "step_A": step}
    for cell in CELLS:
        predictor = Predictor(["formation_energy", "band_gap"], cell=cell)
        before, after = _predict(predictor, structures), _predict(predictor, moved)
        result[cell] = {label: {"mean_abs": float(np.mean(np.abs(after[label] - before[label]))),
                                "max_abs": float(np.max(np.abs(after[label] - before[label]))),
                                "n_above_0.05": int(np.sum(np.abs(after[label] - before[label]) > 0.05))}
                        for label in before}
    return result


def _timed_predict(paths: list[str], cell: str, out: Path) -> dict:
    """Wall and CPU time (this command and its children) of one ``crystalprop predict`` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "crystalprop", "predict", *paths, "-o", str(out), "--overwrite",
                           "--cell", cell], capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr[-2000:])
    return {"cell": cell, "wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def speed(n: int, rounds: int) -> dict:
    """End-to-end predict time with and without the reduction, interleaved."""
    paths = [str(p) for p in sorted((DATA / "mp2018" / "structures").glob("*.cif"))[:n]]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for cell in CELLS:
                runs.append(_timed_predict(paths, cell, Path(tmp) / f"{cell}.csv"))
                print(runs[-1], flush=True)
    total = {cell: {k: sum(r[k] for r in runs if r["cell"] == cell) for k in ("wall_s", "cpu_s")} for cell in CELLS}
    return {"n_files": n, "rounds": rounds, "runs": runs,
            "added_wall": total["canonical"]["wall_s"] / total["as-given"]["wall_s"] - 1,
            "added_cpu": total["canonical"]["cpu_s"] / total["as-given"]["cpu_s"] - 1}


def reader_cost(n: int) -> dict:
    """CPU time of the reader's work per file (parse, checks, cell, graph), both settings alternating file
    by file (which goes first alternates too), so that machine load hits both alike."""
    from crystalprop.graph.neighbors import GraphSettings  # noqa: PLC0415
    from crystalprop.prediction.predictor import prepare_input  # noqa: PLC0415

    paths = [str(p) for p in sorted((DATA / "mp2018" / "structures").glob("*.cif"))[:n]]
    spent = {cell: 0.0 for cell in CELLS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, path in enumerate(paths):
            for cell in (CELLS if k % 2 else CELLS[::-1]):
                start = time.thread_time()
                prepare_input((k, path, GraphSettings(cell=cell), 60.0))
                spent[cell] += time.thread_time() - start
    return {"n_files": n, "cpu_ms_per_file": {c: 1e3 * t / n for c, t in spent.items()},
            "added_ms_per_file": 1e3 * (spent["canonical"] - spent["as-given"]) / n}


def large_cell(repeat: int, old: str | None) -> dict:
    """Seconds of the reader's work on one thermally disordered Si supercell, per tree and setting."""
    from pymatgen.core import Lattice, Structure  # noqa: PLC0415

    conventional = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    supercell = conventional * (repeat, repeat, repeat)
    noise = np.random.default_rng(0).normal(0.0, 0.05 / np.sqrt(3), (len(supercell), 3))
    disordered = Structure(supercell.lattice, supercell.species, supercell.cart_coords + noise,
                           coords_are_cartesian=True)
    path = Path(tempfile.mkdtemp(prefix="large_cell_")) / f"Si_{len(disordered)}.cif"
    disordered.to(filename=str(path))
    script = ("import json, sys, time\n"
              "from crystalprop.graph.neighbors import GraphSettings\n"
              "from crystalprop.prediction.predictor import prepare_input\n"
              "prepare_input((0, sys.argv[1], GraphSettings(cell='as-given'), 1e6))  # imports, kernels\n"
              "start = time.perf_counter()\n"
              "(item,) = prepare_input((0, sys.argv[1], GraphSettings(cell=sys.argv[2]), 1e6))\n"
              "print(json.dumps({'s': round(time.perf_counter() - start, 2), 'cell_sites': item.cell_sites,\n"
              "                  'notes': item.warnings}))\n")
    trees = {"this": str(ROOT)} | ({"old": old} if old else {})
    seconds = {}
    for name, tree in trees.items():
        for cell in CELLS:
            done = subprocess.run([sys.executable, "-c", script, str(path), cell], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": tree}, cwd=path.parent, check=True)
            seconds[f"{name} {cell}"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, cell, seconds[f"{name} {cell}"], flush=True)
    return {"atoms": len(disordered), "displacement_A": 0.05, "reader_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["invariance", "displacement", "speed", "reader", "large"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n-mp", type=int, default=400)
    parser.add_argument("--n-elastic", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=8, help="large: Si supercell of REPEAT^3 conventional cells")
    parser.add_argument("--old", default=None, help="large: another version's tree to compare")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.what == "invariance":
        result = invariance(args.n_mp, args.n_elastic)
    elif args.what == "displacement":
        result = displacement(args.n)
    elif args.what == "reader":
        result = reader_cost(args.n)
    elif args.what == "large":
        result = large_cell(args.repeat, args.old)
    else:
        result = speed(args.n, args.rounds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
