"""Model-only CPU time of the stacked network of all shipped members, and where it goes.

Graphs of the first ``--files`` structure files (sorted) are built once and batched as ``predict``
batches them (``StackedMatformer.batch_limits``). Then:

* ``forward``: the compiled stacked network (graph mode) over every batch, ``--rounds`` times,
  with the fused message pass (``fused``, where the kernels are built) and without it
  (``unfused``: gate, message product, RowNorm and scatter as separate ops), the two alternating;
  each round's process CPU time (all threads of the process) is reported, and its median as
  structures per CPU-second. With ``--threads 1`` (the default) that is one core's throughput,
  which a loaded machine inflates far less than wall time.
* ``--profile``: the same forward op by op in PyNative mode, each op's CPU time summed over the
  batches, per layer and in total. PyNative adds per-call overhead, so the sum exceeds the
  compiled forward; the shares of the per-edge ops are what it is for.

Usage: python benchmarks/stacked_profile.py [--files 512] [--rounds 5] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ROOT.parent / "shared" / "data" / "mp2018" / "structures"
MODELS = ("formation_energy", "band_gap", "bulk_modulus", "shear_modulus")


def _cpu_seconds(run: Callable[[], Any]) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


class OpTimer:
    """Process CPU seconds per named step; the steps must run synchronously (PyNative with
    ``pynative_synchronize``), so that each one's time is its own."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, run: Callable[[], Any]) -> Any:
        started = time.process_time()
        result = run()
        self.seconds[name] += time.process_time() - started
        return result


def _profile_layer(layer, timer: OpTimer, index: int, x, edges, weight, dst, head_rows):
    """One StackedConv forward, as its ``construct``, with every op timed under 'L<index> <op>';
    returns the messages summed per atom (K*N, H*C)."""
    c, k = layer.channels, layer.members
    t = lambda name, run: timer(f"L{index} {name}", run)  # noqa: E731
    q = t("lin_query", lambda: layer.lin_query(x))
    key = t("lin_key", lambda: layer.lin_key(x))
    upd_i = t("upd_i", lambda: layer.upd_i(x).reshape(-1, 3 * c))
    upd_j = t("upd_j", lambda: layer.upd_j(x).reshape(-1, 3 * c))
    e = t("lin_edge", lambda: layer.lin_edge(edges).reshape(k, -1, c))
    upd_e = t("upd_e", lambda: layer.upd_e(e).reshape(-1, 3 * c))
    if layer.message is not None:
        return t("message pass (fused)",
                 lambda: layer.message_pass(q, key, e, upd_i, upd_j, upd_e, weight, head_rows))
    rows_i, rows_j, rows_e = head_rows
    gated = t("gate", lambda: layer.gate(q.reshape(-1, c), key.reshape(-1, c), e.reshape(-1, c), upd_i, upd_j,
                                         upd_e, rows_i, rows_j, rows_e))
    product = t("msg_layer matmul", lambda: layer.msg_layer(gated.reshape(k, -1, 3 * c)))
    message = t("msg_norm", lambda: layer.msg_norm(product.reshape(-1, c)))
    width = layer.heads * c
    return t("scatter", lambda: layer.scatter(message.reshape(-1, width), weight, dst, q.reshape(-1, width)))


def profile(net, batches: list[list], ms) -> dict[str, float]:
    """CPU seconds per op of the stacked network ``net``'s forward over ``batches`` (PyNative mode)."""
    from crystalprop.model.stacked import _with_ones  # noqa: PLC0415

    ops = ms.ops
    timer = OpTimer()
    k, c = net.members, net.channels
    for tensors in batches:
        node_features, src, dst, distance_index, edge_weight, distances, node_graph, inverse_counts = tensors
        x = timer("embedding", lambda: net._member_major(
            ops.bias_add(net.matmul(node_features, net.atom_weight), net.atom_bias)))
        hidden = timer("embedding", lambda: net._member_major(ops.softplus(ops.bias_add(
            net.matmul(net.rbf(distances), net.edge_in_weight), net.edge_in_bias))))
        edges = _with_ones(hidden, ops.ones_like(hidden[:, :, :1]))
        if net.fused_message:
            dst_k, weight = dst, edge_weight
            head_rows = timer("indices", lambda: (net.head_rows(dst), net.head_rows(src),
                                                  net.head_rows(distance_index)))
        else:
            dst_k = timer("indices", lambda: net._offset(dst, node_graph))
            head_rows = timer("indices", lambda: (net.head_rows(dst_k), net.head_rows(net._offset(src, node_graph)),
                                                  net.head_rows(net._offset(distance_index, distances))))
            weight = timer("indices", lambda: ops.tile(edge_weight, (k,)))
        ones = ops.ones_like(x[:, :, :1])
        for i, layer in enumerate(net.att_layers):
            x_in = _with_ones(x, ones)
            aggregated = _profile_layer(layer, timer, i, x_in, edges, weight, dst_k, head_rows)
            width = layer.heads * c
            concated = timer(f"L{i} lin_concate", lambda: layer.lin_concate(
                _with_ones(aggregated.reshape(k, -1, width), ones)))
            x = timer(f"L{i} silu+skip", lambda: ops.silu(concated) + layer.lin_skip(x_in))
        counts = ops.tile(inverse_counts, (k, 1))
        zeros = counts * ops.zeros((1, c), x.dtype)
        pooled = timer("pool+fc", lambda: (ops.index_add(zeros, net._offset(node_graph, inverse_counts),
                                                         x.reshape(-1, c), 0) * counts).reshape(k, -1, c))
        ones_b = ops.ones_like(pooled[:, :, :1])
        timer("pool+fc", lambda: net.fc_out(_with_ones(ops.silu(net.fc(_with_ones(pooled, ones_b))),
                                                       ones_b)).asnumpy())
    return dict(timer.seconds)


def without_message_kernel(net) -> None:
    """Switch ``net`` (before its first call) to the unfused message pass, the path before the kernel."""
    for layer in net.att_layers:
        layer.message = None
    net.fused_message = False


def _print_profile(seconds: dict[str, float], structures: int) -> None:
    total = sum(seconds.values())
    by_op: dict[str, float] = defaultdict(float)
    for name, value in seconds.items():
        by_op[name.split(" ", 1)[1] if name.startswith("L") and name[1].isdigit() else name] += value
    print(f"profile (PyNative, CPU s over {structures} structures; total {total:.2f} s):")
    print("  per op, all layers:")
    for name, value in sorted(by_op.items(), key=lambda item: -item[1]):
        print(f"    {name:>22}: {value:7.3f} s {100 * value / total:5.1f} %")
    print("  per layer and op:")
    for name, value in seconds.items():
        print(f"    {name:>25}: {value:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="MindSpore and kernel threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="also time each op (PyNative)")
    parser.add_argument("--variants", nargs="+", choices=("unfused", "fused"), default=["unfused", "fused"],
                        help="message passes to time (default both)")
    parser.add_argument("--structures", default=str(STRUCTURES))
    args = parser.parse_args()

    from crystalprop.utils.backend import mindspore_module, set_device

    set_device("CPU", threads=args.threads)
    ms = mindspore_module()
    import numpy as np

    from crystalprop.graph.batch import batches_within, collate
    from crystalprop.graph.settings import BATCH_MEMORY_BYTES
    from crystalprop.model.checkpoint import read_checkpoint
    from crystalprop.model.ensemble import member_params
    from crystalprop.model.fused import library
    from crystalprop.model.inference import batch_tensors
    from crystalprop.model.stacked import stack_checkpoints
    from crystalprop.prediction.predictor import iter_prepared
    from crystalprop.model.registry import resolve_model

    library()  # sets the kernels' thread count
    checkpoints = []
    for name in MODELS:
        path = resolve_model(name)[1]
        card, params = read_checkpoint(path)
        checkpoints.append((card, member_params(card, params), path))
    card = checkpoints[0][0]
    nets = {}
    for variant in ("unfused", "fused"):
        net, _ = stack_checkpoints(card.model, [(members, path) for _, members, path in checkpoints])
        if variant == "unfused":
            without_message_kernel(net)
        if variant in args.variants and (variant == "unfused" or net.fused_message):
            nets[variant] = net
    files = sorted(str(p) for p in Path(args.structures).iterdir())[: args.files]
    graphs = [p.graph for p in iter_prepared(files, card.graph, workers=0) if p.graph is not None]
    first = next(iter(nets.values()))
    limits = first.batch_limits(args.batch_size, BATCH_MEMORY_BYTES)
    batches = [batch_tensors(collate(b)) for b in batches_within(graphs, limits)]
    edges = sum(int(b[1].shape[0]) for b in batches)
    print(f"{len(graphs)} structures, {edges} edges in {len(batches)} batches; {first.members} members; "
          f"{args.threads} thread(s); message pass: {', '.join(nets)}")

    def forward(net) -> list[np.ndarray]:
        return [net(*tensors).asnumpy() for tensors in batches]

    outputs = {name: np.concatenate(forward(net), axis=1) for name, net in nets.items()}  # compiles
    if len(outputs) == 2:
        print(f"largest output difference fused - unfused: {np.abs(outputs['fused'] - outputs['unfused']).max():.2e}")
    rounds: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(args.rounds):  # interleaved, so that both see the same load
        for name, net in nets.items():
            rounds[name].append(_cpu_seconds(lambda: forward(net)))
    for name, values in rounds.items():
        median = statistics.median(values)
        print(f"forward {name:>7}: median {median:.2f} CPU s, {len(graphs) / median:.1f} structures per CPU-second "
              f"(rounds: {', '.join(f'{r:.2f}' for r in values)})")
    if args.profile:
        ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)
        for name, net in nets.items():
            profile(net, batches[:1], ms)  # warm-up
            print(f"-- message pass {name}")
            _print_profile(profile(net, batches, ms), len(graphs))


if __name__ == "__main__":
    main()
