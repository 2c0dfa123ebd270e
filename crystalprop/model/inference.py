"""Run a network over many graphs in batches (shared by predict, evaluate and training)."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from crystalprop.utils.backend import mindspore_module
from crystalprop.graph.batch import GraphBatch, batches_within, collate
from crystalprop.graph.settings import BATCH_MEMORY_BYTES
from crystalprop.graph.neighbors import CrystalGraph


def batch_tensors(batch: GraphBatch) -> list:
    """GraphBatch -> MindSpore tensors in the model's input order."""
    ms = mindspore_module()
    return [ms.Tensor(a) for a in batch.arrays()]


def iter_batches(graphs: Sequence[CrystalGraph], batch_size: int) -> Iterator[GraphBatch]:
    """Consecutive batches of at most ``batch_size`` graphs."""
    for start in range(0, len(graphs), batch_size):
        yield collate(graphs[start : start + batch_size])


def predict_batches(net, batches: Iterable[GraphBatch]) -> Iterator[np.ndarray]:
    """Normalised network outputs per batch (inference mode)."""
    net.set_train(False)
    for batch in batches:
        yield net(*batch_tensors(batch)).asnumpy().reshape(-1)


def predict_graphs(net, graphs: Sequence[CrystalGraph], batch_size: int = 64) -> np.ndarray:
    """Normalised network outputs for every graph, in order."""
    parts = list(predict_batches(net, iter_batches(graphs, batch_size)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def forward_members(net, tensors: list) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward pass of a stacked network over a batch's tensors: its (K, B) normalised outputs
    and, for a network built with ``readout``, its (K, B, F) readout features, else None."""
    result = net(*tensors)
    out, features = (result[0], result[1].asnumpy()) if net.readout else (result, None)
    return out.asnumpy().reshape(net.members, -1), features


def member_outputs(net, graphs: Sequence[CrystalGraph], batch_size: int = 64,
                   batch_memory: int = BATCH_MEMORY_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalised outputs (members × graphs) of a :class:`crystalprop.model.stacked.StackedMatformer`,
    and for a network built with ``readout`` its readout features (members × graphs × F), else None.

    Batches hold at most ``batch_size`` graphs and, as in prediction, no more atoms and edges than
    all the members' activations take in about ``batch_memory`` bytes.
    """
    net.set_train(False)
    outputs, features = [], []
    for batch in batches_within(graphs, net.batch_limits(batch_size, batch_memory)):
        out, readout = forward_members(net, batch_tensors(collate(batch)))
        outputs.append(out)
        if readout is not None:
            features.append(readout)
    if not outputs:
        return np.zeros((net.members, 0), dtype=np.float32), None
    return np.concatenate(outputs, axis=1), np.concatenate(features, axis=1) if features else None


def predict_members(net, graphs: Sequence[CrystalGraph], batch_size: int = 64,
                    batch_memory: int = BATCH_MEMORY_BYTES) -> np.ndarray:
    """Normalised outputs (members × graphs) of a stacked network (:func:`member_outputs`)."""
    return member_outputs(net, graphs, batch_size, batch_memory)[0]
