"""Model-only throughput of the shipped models' members: one pass per member vs one stacked pass.

Graphs of the first ``--files`` structure files (sorted) are built once; every batch is then run
through all members of the four shipped models, (a) member by member on one compiled Matformer,
swapping weights as the predictor used to, and (b) through one stacked network. The two alternate
for ``--rounds`` rounds and the medians are reported: on a loaded machine only the ratio means much.
``--members N`` pads each single model to N members (its weights repeated), as when every shipped
model is an ensemble. Usage: python benchmarks/stacked_members.py [--files 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ROOT.parent / "shared" / "data" / "mp2018" / "structures"
MODELS = ("formation_energy", "band_gap", "bulk_modulus", "shear_modulus")


def _seconds(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--members", type=int, default=1, help="pad single models to this many members")
    parser.add_argument("--structures", default=str(STRUCTURES))
    args = parser.parse_args()

    from crystalprop.utils.backend import set_device

    set_device("CPU")
    import numpy as np

    from crystalprop.graph.batch import collate
    from crystalprop.model.checkpoint import assign_weights, build_model, read_checkpoint, weight_set
    from crystalprop.model.ensemble import member_params
    from crystalprop.model.inference import batch_tensors
    from crystalprop.model.folded import member_arrays
    from crystalprop.model.stacked import stacked_network
    from crystalprop.prediction.predictor import iter_prepared
    from crystalprop.model.registry import resolve_model

    checkpoints = []
    for name in MODELS:
        path = resolve_model(name)[1]
        card, params = read_checkpoint(path)
        members = member_params(card, params)
        checkpoints.append((card, params, path, members * (args.members if len(members) == 1 else 1)))
    if len({card.model for card, *_ in checkpoints}) != 1:
        raise SystemExit("the shipped models differ in architecture; this benchmark assumes one")
    files = sorted(str(p) for p in Path(args.structures).iterdir())[: args.files]
    graphs = [p.graph for p in iter_prepared(files, checkpoints[0][0].graph, workers=0) if p.graph is not None]
    batches = [batch_tensors(collate(graphs[i : i + args.batch_size])) for i in range(0, len(graphs), args.batch_size)]

    card, params, path, _ = checkpoints[0]
    net = build_model(card, params, path)
    net.declare_dynamic_inputs()
    weights = [weight_set(net, member, path) for *_, path, members in checkpoints for member in members]
    # every member its own network, repeats included (stack_checkpoints would run a repeated one once)
    stacked = stacked_network(card.model, [a for *_, path, members in checkpoints
                                           for a in member_arrays(card.model, members, path)])

    def per_member() -> list[np.ndarray]:
        outputs = []
        for tensors in batches:
            for member in weights:
                assign_weights(net, member)
                outputs.append(net(*tensors).asnumpy())
        return outputs

    def one_stack() -> list[np.ndarray]:
        return [stacked(*tensors).asnumpy() for tensors in batches]

    reference, together = per_member(), one_stack()  # compiles both; then the outputs must agree
    split = np.concatenate([np.stack(reference[b * len(weights) : (b + 1) * len(weights)])
                            for b in range(len(batches))], axis=1)
    deviation = float(np.abs(np.concatenate(together, axis=1) - split).max())
    times: dict[str, list[float]] = {"per-member": [], "stacked": []}
    for _ in range(args.rounds):
        times["per-member"].append(_seconds(per_member))
        times["stacked"].append(_seconds(one_stack))
    print(f"{len(graphs)} structures in {len(batches)} batches of up to {args.batch_size}; {len(weights)} members "
          f"of {len(checkpoints)} models; largest output difference {deviation:.2e}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>10}: median {median:.2f} s, {len(graphs) / median:.1f} structures/s "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(times["per-member"]) / statistics.median(times["stacked"])
    print(f"stacked is {ratio:.2f}x the per-member throughput")


if __name__ == "__main__":
    main()
