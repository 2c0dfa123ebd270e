"""Time training steps of the shipped model size on real crystals, split into host and compiled work.

A seeded sample of mp2018's training split (``--steps`` + ``--warmup`` batches of ``--batch-size``)
has its graphs built once (then cached); a :class:`crystalprop.training.trainer.Trainer` with the
shipped architecture (5 layers, 64 features, 1 head, fc 128: ``ModelConfig``'s defaults) then runs
its own step functions: ``_step_inputs`` (learning rate, collate, tensors: the data side) and
``_apply_step`` (the compiled forward, backward and AdamW update, with the loss read back). Each
part is timed as process CPU time (all threads; with ``--threads 1`` that is one thread's work, the
figure to compare on a loaded machine) and as wall time; the medians over the timed steps are printed
and, with ``--json``, written. With ``--profile`` MindSpore's profiler records the timed steps and the
compiled step's time is printed by operator (shares of the summed operator time; the fused kernels by
name, forward and backward apart). With ``--ema DECAY`` the weight average's update after each step
(``train --ema``) is timed as a third part. Without the data folder the benchmark says so and exits 0.

Usage: python benchmarks/train_step.py [--steps 20] [--warmup 3] [--threads 1] [--ema 0.999] [--profile]
                                      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mp2018"


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _sample_graphs(data: Path, count: int, seed: int, cell: str):
    """Graphs and targets of ``count`` training crystals drawn with ``seed`` (built once, then cached)."""
    import numpy as np  # noqa: PLC0415

    from crystalprop.data.datasets import load_dataset  # noqa: PLC0415
    from crystalprop.data.graph_cache import build_graphs  # noqa: PLC0415
    from crystalprop.graph.settings import GraphSettings  # noqa: PLC0415

    entries = load_dataset(data, "formation_energy_per_atom").split("train")
    chosen = [entries[i] for i in np.random.default_rng(seed).permutation(len(entries))[:count]]
    graphs, _ = build_graphs(chosen, GraphSettings(cell=cell))
    kept = [(g, e.target) for g, e in zip(graphs, chosen) if g is not None]
    return [g for g, _ in kept], np.array([t for _, t in kept])


def _operator_shares(profile_dir: Path) -> list[tuple[str, float]]:
    """(operator, % of all operator time) from a MindSpore CPU profile, largest first: operators
    by type, those of the backward pass apart, the fused kernels by the cell they belong to (e.g.
    ``AttentionGate (backward)``)."""
    import csv  # noqa: PLC0415
    from collections import Counter  # noqa: PLC0415

    details = sorted(profile_dir.rglob("cpu_op_detail_info_*.csv"))
    if not details:
        raise SystemExit(f"{profile_dir}: the profiler wrote no CPU operator table")
    totals: Counter = Counter()
    for row in csv.DictReader(details[0].open(newline="")):
        name, kind = row["full_op_name"], row["op_type"]
        if kind == "Custom":  # .../layer_norm-AttentionGate/Custom-op0 or .../Grad_Custom/Custom-op0
            cell = next((part.split("-", 1)[1] for part in reversed(name.split("/")) if "-" in part
                         and not part.startswith(("Custom", "Grad_"))), "Custom")
            kind = cell
        totals[f"{kind} (backward)" if "Gradients" in name else kind] += float(row["op_total_time(ms)"])
    whole = sum(totals.values())
    return [(name, 100.0 * t / whole) for name, t in totals.most_common()]


def _profiled_steps(trainer, loop, args, lr: float, run_dir: Path) -> list[tuple[str, float]]:
    """Run the timed batches once more under MindSpore's profiler (apart from the timing, which
    the profiler would slow) and return :func:`_operator_shares` of its record."""
    import mindspore as ms  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    profiler = ms.Profiler(output_path=str(run_dir / "profile"))
    for step in range(args.warmup, args.warmup + args.steps):
        idx = np.arange(step * args.batch_size, (step + 1) * args.batch_size)
        trainer._apply_step(loop, trainer._step_inputs(loop, idx, lr))
    profiler.analyse()
    return _operator_shares(run_dir / "profile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one compiles)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="MindSpore and kernel CPU threads")
    parser.add_argument("--features", type=int, default=None, help="override the shipped size (64)")
    parser.add_argument("--heads", type=int, default=None, help="override the shipped size (1)")
    parser.add_argument("--cell", default="as-given", help="graph cells (the shipped members: as-given)")
    parser.add_argument("--seed", type=int, default=0, help="which crystals")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--ema", type=float, default=None, help="also time the weight average's update (train --ema)")
    parser.add_argument("--profile", action="store_true", help="also print the step's time by operator")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if not Path(args.data, "structures").is_dir():
        print(f"{args.data}: no mp2018 data here; nothing measured")
        return

    from crystalprop.utils.backend import set_device  # noqa: PLC0415

    set_device("CPU", threads=args.threads)
    import numpy as np  # noqa: PLC0415

    from crystalprop.model.config import ModelConfig  # noqa: PLC0415
    from crystalprop.training.config import TrainConfig  # noqa: PLC0415
    from crystalprop.training.trainer import Trainer  # noqa: PLC0415

    overrides = {k: v for k, v in (("features", args.features), ("heads", args.heads)) if v}
    model = ModelConfig(**overrides)
    total = args.steps + args.warmup
    graphs, y = _sample_graphs(Path(args.data), total * args.batch_size, args.seed, args.cell)
    config = TrainConfig(target="formation_energy_per_atom", batch_size=args.batch_size, model=model, ema=args.ema)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir, (graphs, y), ([], np.zeros(0)))
        loop = trainer._setup(False, None)
        loop.net.set_train(True)
        rows = []
        for step in range(min(total, len(graphs) // args.batch_size)):
            idx = np.arange(step * args.batch_size, (step + 1) * args.batch_size)
            c0, w0 = _clock()
            inputs = trainer._step_inputs(loop, idx, config.lr)
            c1, w1 = _clock()
            loss = trainer._apply_step(loop, inputs)
            c2, w2 = _clock()
            if loop.average is not None:
                loop.average.update()
            c3, w3 = _clock()
            if step >= args.warmup:
                rows.append({"data_cpu": c1 - c0, "data_wall": w1 - w0, "step_cpu": c2 - c1, "step_wall": w2 - w1,
                             "average_cpu": c3 - c2, "average_wall": w3 - w2,
                             "edges": int(inputs[1].shape[0]), "atoms": int(inputs[0].shape[0]), "loss": loss})
        shares = _profiled_steps(trainer, loop, args, config.lr, Path(run_dir)) if args.profile else []
    medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    medians["total_cpu"] = statistics.median(r["data_cpu"] + r["step_cpu"] + r["average_cpu"] for r in rows)
    medians["total_wall"] = statistics.median(r["data_wall"] + r["step_wall"] + r["average_wall"] for r in rows)
    print(f"{model.layers} layers, {model.features} features, {model.heads} heads; {len(rows)} steps of "
          f"{args.batch_size} crystals, {args.threads} thread(s); medians per step (s):")
    print(f"  data side (collate, tensors): cpu {medians['data_cpu']:.4f}  wall {medians['data_wall']:.4f}")
    print(f"  compiled step (fwd+bwd+AdamW): cpu {medians['step_cpu']:.4f}  wall {medians['step_wall']:.4f}")
    if args.ema:
        print(f"  weight average (--ema {args.ema}):   cpu {medians['average_cpu']:.4f}  wall {medians['average_wall']:.4f}")
    print(f"  total:                         cpu {medians['total_cpu']:.4f}  wall {medians['total_wall']:.4f}")
    print(f"  per batch: {medians['atoms']:.0f} atoms, {medians['edges']:.0f} distinct edges; "
          f"first losses {[round(r['loss'], 5) for r in rows[:3]]}")
    if shares:
        print("  by operator (MindSpore profiler, the timed batches once more; % of operator time):")
        for name, share in shares:
            if share >= 0.5:
                print(f"    {name:<40} {share:5.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "medians": medians, "steps": rows,
                                               "operator_shares": dict(shares)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
