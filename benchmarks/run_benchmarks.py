"""Speed and memory benchmarks of crystalprop against the original Matformer's figures.

Not a test: it prints a table and writes JSON. Run from the repository root:

    .venv/bin/python benchmarks/run_benchmarks.py --json benchmarks/results.json

Rows (paper configuration = 5 layers, 128 features, 4 heads, 12 neighbours, lattice
edges; first 2,000 files of ../shared/data/mp2018/structures in sorted order; batches
of 64), each next to the original Matformer's figure measured on the same kind of
2-core machine, where one exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ORIGINAL = {  # the original Matformer (PyTorch) on 2 cores, from the project's issue
    "read_graph": 103.0,
    "model_inference": 15.3,
    "end_to_end": 13.3,
    "train_epoch_s": 160.0,
}
TARGETS = {
    "read_graph": None,
    "model_inference": 61.0,
    "end_to_end": 67.0,
    "train_epoch_s": 40.0,
    "train_peak_gb": 4.0,
    "shipped_end_to_end": 120.0,  # issue 20: all four shipped properties with their σ
    "predict_one_s": 5.0,
    "predict_20k_peak_gb": 2.0,
    "qmof_peak_gb": 4.0,
}


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    import psutil  # noqa: PLC0415  (installed with MindSpore)

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS of its process tree in GB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    return wall, peak[0] / 1e9, stdout


class OtherLoad:
    """CPU time that processes outside this benchmark's own tree used while it ran (Linux).

    A training left running beside the benchmark takes cores from it without a word; stopping a
    `crystalprop train` command's process group does not stop its training, which runs in a session
    of its own (send SIGTSTP to the command, as Ctrl-Z does). Session 13's figures were most likely
    taken that way: 74 structures/s for the shipped models, where the idle machine gives 129-143.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
        busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
        own = sum(os.times()[:4])  # this process and its waited-for children
        return time.monotonic(), busy, own

    def share(self) -> float | None:
        """The other processes' CPU as a fraction of all cores over the run so far."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(others, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def mp2018_files(n: int) -> list[str]:
    folder = DATA / "mp2018" / "structures"
    return [str(folder / name) for name in sorted(os.listdir(folder))[:n]]


def random_checkpoint(path: Path, features: int = 128, heads: int = 4, layers: int = 5) -> Path:
    """A paper-configuration model with random weights (speed does not depend on them)."""
    from crystalprop.model.checkpoint import ModelCard, save_checkpoint  # noqa: PLC0415
    from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: PLC0415

    config = ModelConfig(layers=layers, features=features, heads=heads, fc_features=features)
    save_checkpoint(path, Matformer(config), ModelCard(target="random", unit="", model=config))
    return path


def bench_read_graph(files: list[str]) -> dict:
    """Reading CIFs with pymatgen + building graphs, one process."""
    from crystalprop.graph.neighbors import build_graph  # noqa: PLC0415
    from crystalprop.io.adapters import crystal_from_structure  # noqa: PLC0415
    from crystalprop.io.readers import read_file  # noqa: PLC0415

    start = time.perf_counter()
    graphs = [build_graph(crystal_from_structure(read_file(f)[0][1])) for f in files]
    elapsed = time.perf_counter() - start
    return {"read_graph": len(files) / elapsed, "graphs": graphs}


def bench_model(graphs, batch_size: int = 64) -> dict:
    """Model-only inference at the paper configuration (batches collated beforehand)."""
    from crystalprop.model.inference import batch_tensors, iter_batches  # noqa: PLC0415
    from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: PLC0415

    net = Matformer(ModelConfig(features=128, heads=4))  # the paper configuration
    net.declare_dynamic_inputs()
    net.set_train(False)
    batches = [batch_tensors(b) for b in iter_batches(graphs, batch_size)]
    net(*batches[0]).asnumpy()  # compile
    start = time.perf_counter()
    for tensors in batches:
        net(*tensors).asnumpy()
    elapsed = time.perf_counter() - start
    return {"model_inference": len(graphs) / elapsed, "batch_s": elapsed / len(batches)}


def bench_cli_predict(files: list[str], models: list[str], workdir: Path, engine: str = "auto") -> tuple[float, float]:
    """End-to-end `crystalprop predict --engine ENGINE` over a file list: (structures/s, peak GB).

    A first run on 64 of the files fills MindSpore's compile cache (for that engine), as any
    earlier run of the same models would; the measured run then starts the process, reads,
    builds graphs, predicts and writes the CSV.
    """
    def command(subset: list[str], folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        for f in subset:
            link = folder / Path(f).name
            if not link.exists():
                link.symlink_to(f)
        cmd = [sys.executable, "-m", "crystalprop.cli.commands", "predict", str(folder), "-o", str(folder.parent / "out.csv"),
               "--overwrite", "--engine", engine]
        return cmd + [arg for m in models for arg in ("-m", m)]

    run_measured(command(files[:64], workdir / "warm_up"))
    wall, peak, _ = run_measured(command(files, workdir / "files"))
    return len(files) / wall, peak


def bench_train(workdir: Path, n: int = 1000) -> tuple[float, float]:
    """One epoch of `crystalprop train` on n mp2018 structures at the paper configuration."""
    import csv  # noqa: PLC0415

    data = workdir / "train_data"
    data.mkdir(parents=True, exist_ok=True)
    props = {}
    with open(DATA / "mp2018" / "properties.csv") as handle:
        for row in csv.DictReader(handle):
            props[row["material_id"]] = row["formation_energy_per_atom"]
    files = [f for f in mp2018_files(n + 100) if props.get(Path(f).stem)][:n]
    with open(data / "id_prop.csv", "w") as handle:
        for f in files:
            handle.write(f"{Path(f).stem},{props[Path(f).stem]}\n")
            link = data / Path(f).name
            if not link.exists():
                link.symlink_to(f)
    run_dir = workdir / "train_run"
    cmd = [sys.executable, "-m", "crystalprop.cli.commands", "train", str(data), "-o", str(run_dir), "--epochs", "1",
           "--features", "128", "--heads", "4", "--layers", "5", "--fc-features", "128", "--val-fraction", "0.0001"]
    run_measured(cmd + ["--limit", "64"])  # builds and caches the graphs, compiles once
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    wall, peak, _ = run_measured(cmd)
    history = (run_dir / "history.csv").read_text().splitlines()
    epoch_s = float(dict(zip(history[0].split(","), history[1].split(",")))["epoch_s"])
    return epoch_s, peak


def bench_scaling(structure_file: str) -> dict:
    """Fitted exponent of cost vs atoms for graph building and the model (supercells)."""
    from crystalprop.graph.batch import collate  # noqa: PLC0415
    from crystalprop.graph.neighbors import build_graph  # noqa: PLC0415
    from crystalprop.io.adapters import crystal_from_structure  # noqa: PLC0415
    from crystalprop.io.readers import read_file  # noqa: PLC0415
    from crystalprop.model.inference import batch_tensors  # noqa: PLC0415
    from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: PLC0415

    base = read_file(structure_file)[0][1]
    net = Matformer(ModelConfig(features=128, heads=4))  # the paper configuration
    net.declare_dynamic_inputs()
    net.set_train(False)
    sizes, graph_t, model_t = [], [], []
    for reps in [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 3, 2), (4, 4, 2), (4, 4, 4), (5, 5, 5), (6, 6, 5)]:
        s = crystal_from_structure(base * reps)
        start = time.perf_counter()
        g = build_graph(s)
        graph_t.append(time.perf_counter() - start)
        tensors = batch_tensors(collate([g]))
        net(*tensors).asnumpy()
        start = time.perf_counter()
        net(*tensors).asnumpy()
        model_t.append(time.perf_counter() - start)
        sizes.append(len(s))
    x = np.log(sizes)
    fit = lambda t: float(np.polyfit(x[2:], np.log(t[2:]), 1)[0])  # noqa: E731  (skip overhead-bound sizes)
    return {"atoms": sizes, "graph_s": graph_t, "model_s": model_t,
            "graph_exponent": fit(np.array(graph_t)), "model_exponent": fit(np.array(model_t))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--skip", nargs="*", default=[], help="rows to skip: train memory scaling shipped")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not DATA.is_dir():
        sys.exit(f"needs {DATA} (the shared data sets)")
    os.environ.setdefault("CRYSTALPROP_CACHE", tempfile.mkdtemp(prefix="crystalprop_bench_cache_"))
    from crystalprop.utils.backend import set_device  # noqa: PLC0415

    set_device("CPU")
    load = OtherLoad()
    work = Path(tempfile.mkdtemp(prefix="crystalprop_bench_"))
    files = mp2018_files(args.files)
    results: dict = {"machine": {"cores": os.cpu_count()}, "files": len(files)}
    rg = bench_read_graph(files)
    results["read_graph"] = rg["read_graph"]
    graphs = rg.pop("graphs")
    results["edges_per_structure"] = float(np.mean([g.num_edges for g in graphs]))
    results.update(bench_model(graphs))
    paper = random_checkpoint(work / "paper.ckpt")
    results["end_to_end"], results["end_to_end_peak_gb"] = bench_cli_predict(files, [str(paper)], work / "e2e")
    if "train" not in args.skip:
        results["train_epoch_s"], results["train_peak_gb"] = bench_train(work)
    if "shipped" not in args.skip:
        from crystalprop.model.registry import available_models  # noqa: PLC0415

        shipped = available_models()
        results["shipped_models"] = shipped
        results["shipped_end_to_end"], results["shipped_peak_gb"] = bench_cli_predict(files, shipped, work / "shipped")
        results["shipped_mindspore"], results["shipped_mindspore_peak_gb"] = bench_cli_predict(
            files, shipped, work / "shipped_ms", engine="mindspore")
        one = files[0]
        cmd = [sys.executable, "-m", "crystalprop.cli.commands", "predict", one]
        run_measured(cmd)
        results["predict_one_s"], _, _ = run_measured(cmd)
    if "memory" not in args.skip:  # with the shipped models, all properties
        from crystalprop.model.registry import available_models  # noqa: PLC0415

        many = mp2018_files(20000)
        results["predict_20k_per_s"], results["predict_20k_peak_gb"] = bench_cli_predict(
            many, available_models(), work / "many")
        qmof = sorted(str(p) for p in (DATA / "qmof_subset" / "structures").iterdir())
        results["qmof_per_s"], results["qmof_peak_gb"] = bench_cli_predict(qmof, available_models(), work / "qmof")
    if "scaling" not in args.skip:
        results["scaling"] = bench_scaling(files[5])
    results["other_processes_cpu_share"] = load.share()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(r: dict) -> None:
    rows = [
        ("reading CIF + building graphs", "read_graph", "structures/s"),
        ("model only, inference (paper config)", "model_inference", "structures/s"),
        ("end to end, files -> predictions (paper config)", "end_to_end", "structures/s"),
        ("training, 1,000 structures, one epoch (paper config)", "train_epoch_s", "s"),
        ("training peak memory", "train_peak_gb", "GB"),
        ("shipped models, all properties, end to end", "shipped_end_to_end", "structures/s"),
        ("shipped models, 2,000 files: peak memory", "shipped_peak_gb", "GB"),
        ("shipped models, end to end, --engine mindspore", "shipped_mindspore", "structures/s"),
        ("shipped models, --engine mindspore: peak memory", "shipped_mindspore_peak_gb", "GB"),
        ("`crystalprop predict one.cif`, second run", "predict_one_s", "s wall"),
        ("predict 20,000 files (shipped models): peak memory", "predict_20k_peak_gb", "GB"),
        ("predict 20,000 files (shipped models): throughput", "predict_20k_per_s", "structures/s"),
        ("3,000 QMOF cells (shipped models): peak memory", "qmof_peak_gb", "GB"),
        ("3,000 QMOF cells (shipped models): throughput", "qmof_per_s", "structures/s"),
    ]
    print(f"{'stage':55s} {'crystalprop':>14s} {'original':>10s} {'ratio':>7s} {'target':>8s}")
    for label, key, unit in rows:
        if key not in r:
            continue
        value, orig, target = r[key], ORIGINAL.get(key), TARGETS.get(key)
        ratio = "" if orig is None else f"{(orig / value if unit == 's' else value / orig):.1f}x"
        print(f"{label:55s} {value:10.2f} {unit[:3]:>3s} {'' if orig is None else orig:>10} {ratio:>7s} "
              f"{'' if target is None else target:>8}")
    share = r.get("other_processes_cpu_share")
    if share is not None:
        print(f"other processes used {100 * share:.0f} % of the CPUs meanwhile"
              + ("" if share < 0.05 else ": these are not an idle machine's figures"))
    if "scaling" in r:
        s = r["scaling"]
        print(f"cost vs atoms ({s['atoms'][0]}..{s['atoms'][-1]}): graph exponent {s['graph_exponent']:.2f}, "
              f"model exponent {s['model_exponent']:.2f}")


if __name__ == "__main__":
    main()
