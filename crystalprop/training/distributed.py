"""Data-parallel training on MindSpore's dynamic cluster (``msrun``): who am I, and how to talk.

Every worker holds the whole model and the same global batch order; worker r trains on
positions r, r+N, ... of each global batch, and MindSpore's all-reduce sums the gradients.
Each worker scales its mean loss by its share of the batch, so the summed gradient is the
gradient of the global batch's mean loss: 1 and N workers follow the same curve.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Cluster:
    """This process's place among the data-parallel workers (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, history and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def events(self, on_event: Callable[[str, dict], None] | None) -> Callable[[str, dict], None]:
        """The event callback for this worker: progress is reported by rank 0 only."""
        if on_event is None or not self.is_main:
            return lambda kind, info: None
        return on_event

    def share(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """This worker's part of a global batch and its weight in the batch mean.

        A worker left with nothing (a last batch smaller than the cluster) still takes part in
        the all-reduce: it runs one structure with weight 0, whose atoms then count in that
        step's BatchNorm statistics (the one place where N workers differ from one process).
        """
        part = batch[self.rank :: self.size]
        if len(part) == 0:
            return batch[:1], 0.0
        return part, len(part) / len(batch)

    def sum(self, values: Sequence[float]) -> np.ndarray:
        """Element-wise sum over all workers (the values themselves when alone)."""
        array = np.asarray(values, dtype=np.float32)
        if not self.distributed:
            return array
        from crystalprop.utils.backend import mindspore_module  # noqa: PLC0415

        return _all_reduce()(mindspore_module().Tensor(array)).asnumpy()

    def barrier(self) -> None:
        """Wait until every worker gets here."""
        self.sum([0.0])


@functools.cache
def _all_reduce():
    """One AllReduce (sum) primitive for the process: Cluster.sum runs twice per training step."""
    from crystalprop.utils.backend import mindspore_module  # noqa: PLC0415

    return mindspore_module().ops.AllReduce()


def launched_by_msrun() -> bool:
    """True in a process that msrun started as a worker or scheduler."""
    return "MS_ROLE" in os.environ


def serves_cluster() -> bool:
    """True in msrun's scheduler process, which coordinates the workers and trains nothing."""
    return os.environ.get("MS_ROLE") == "MS_SCHED"


def join_cluster() -> Cluster:
    """Join the msrun cluster and switch MindSpore to data parallelism; alone, rank 0 of 1.

    In msrun's scheduler process MindSpore's ``init()`` serves the cluster until the workers end.
    """
    if not launched_by_msrun():
        return Cluster()
    from crystalprop.utils.backend import mindspore_module  # noqa: PLC0415

    ms = mindspore_module()
    from mindspore.communication import get_group_size, get_rank, init  # noqa: PLC0415

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=False)
    return Cluster(get_rank(), get_group_size())


def free_port() -> int:
    """A TCP port nobody listens on now, for msrun's scheduler."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_command(workers: int, args: Sequence[str], log_dir: Path, port: int | None = None) -> list[str]:
    """The msrun command line that runs ``crystalprop ARGS`` in ``workers`` local processes."""
    msrun = shutil.which("msrun", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if msrun is None:
        raise RuntimeError("msrun (MindSpore's launcher) was not found next to this Python or on PATH")
    return [msrun, "--worker_num", str(workers), "--local_worker_num", str(workers),
            "--master_port", str(port or free_port()), "--log_dir", str(log_dir), "--join", "True",
            "--cluster_time_out", "120", "python", "-m", "crystalprop", *args]


def msrun_environment() -> dict[str, str]:
    """msrun starts ``python`` from PATH: make that this interpreter."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("GLOG_v", "3")
    return env
