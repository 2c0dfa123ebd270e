"""CPU time of the fused message-pass kernel on synthetic tables, per member and edge-head row.

The kernel (``MessagePass`` of ``crystalprop/model/kernels/fused_ops.cc``) is called through ctypes
as the numpy engine calls it, on random tables of ``--members`` members, 1,000 atoms, 300 bond
lengths and ``--edges`` edges (one head, C = 64, the shipped size), with random row indices.
It prints the median over ``--rounds`` of the process CPU time per member-row; with ``--threads 1``
(the default) that is one core's work, which a loaded machine inflates far less than wall time.

Usage: python benchmarks/message_pass.py [--members 4] [--edges 10000] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from crystalprop.model import kernel_library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--edges", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    library = kernel_library.loaded()
    if library is None:
        print("the fused kernels cannot be built here (no C++ compiler, or CRYSTALPROP_FUSED_KERNELS=0)")
        return
    kernel_library.set_threads(library, args.threads)
    rng = np.random.default_rng(0)
    k, atoms, lengths, edges, c = args.members, 1000, 300, args.edges, 64

    def floats(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 1.0, shape).astype(np.float32)

    def rows(count: int) -> np.ndarray:
        return rng.integers(0, count, edges).astype(np.int32)

    inputs = [floats(k * atoms, c), floats(k * atoms, c), floats(k * lengths, c), floats(k * 3 * c),
              floats(k * 3 * c), floats(k * atoms, 3 * c), floats(k * atoms, 3 * c), floats(k * lengths, 3 * c),
              floats(k * 3 * c, c) / np.float32(np.sqrt(3 * c)), floats(k * c), floats(k * c), floats(k * c),
              np.ones(edges, np.float32), rows(atoms), rows(atoms), rows(lengths)]
    out = np.empty((k * atoms, c), np.float32)
    kernel_library.call(library, "MessagePass", inputs, out)  # warm the caches
    times = []
    for _ in range(args.rounds):
        start = time.process_time()
        kernel_library.call(library, "MessagePass", inputs, out)
        times.append(time.process_time() - start)
    per_row = statistics.median(times) / (k * edges) * 1e6
    print(f"message pass: {k} members, {edges} edges, {args.threads} thread(s): {per_row:.2f} µs CPU per member-row "
          f"(rounds: {', '.join(f'{t:.3f}' for t in times)} s)")


if __name__ == "__main__":
    main()
