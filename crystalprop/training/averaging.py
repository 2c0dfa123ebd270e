"""An exponential moving average of a network's weights, for validation and the saved model.

After optimizer step t the weights of step s enter with ``(1 - decay) · decay^(t - s)``, over every
parameter of the network, BatchNorm's moving statistics included, divided by the sum of those
shares, ``1 - decay^t`` (the bias correction of Adam's moments). So the average holds only the
weights this run's steps produced: the starting weights (random, or another task's with
``--init-from``) never enter it, and a run shorter than 1 / (1 - decay) steps is the plain
average of its steps rather than mostly its starting point. Later the average smooths out the
step-to-step noise of about the last 1 / (1 - decay) steps. It is what a run with ``--ema``
validates and keeps as ``best.ckpt``; training itself goes on from the raw weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, NamedTuple

import numpy as np

from crystalprop.utils.backend import mindspore_module
from crystalprop.training.config import check_decay

AVERAGE_PREFIX = "ema."
"""Where ``last.ckpt`` keeps the average of parameter ``name``: ``ema.<name>``."""
UPDATES_KEY = "ema_updates"
"""Where ``last.ckpt`` keeps how many steps the average holds."""


class SavedAverage(NamedTuple):
    """A weight average read back from ``last.ckpt``."""

    weights: Mapping[str, np.ndarray]
    updates: int | None
    """Steps it holds; None in files written before the count was kept (taken as a long average)."""


class WeightAverage:
    """The running average of ``net``'s parameters, in float32 numpy arrays by parameter name."""

    def __init__(self, net, decay: float, saved: SavedAverage | None = None) -> None:
        """A new average (of no steps yet), or ``saved``, a resumed run's."""
        self.decay = check_decay(decay)
        self.params = dict(net.parameters_and_names())
        if saved is not None:
            missing = sorted(set(self.params) - set(saved.weights))
            if missing:
                raise ValueError(f"the saved weight average lacks {len(missing)} parameters, e.g. {missing[0]}")
            self.average = {name: np.array(saved.weights[name], dtype=np.float32) for name in self.params}
            self.updates = saved.updates
        else:
            self.average = {name: p.asnumpy().astype(np.float32) for name, p in self.params.items()}
            self.updates = 0

    def update(self) -> None:
        """Move the average towards the current weights: this step's share of all steps' so far."""
        if self.updates is None:
            rate = np.float32(1.0 - self.decay)
        else:
            self.updates += 1
            rate = np.float32((1.0 - self.decay) / (1.0 - self.decay ** self.updates))
        for name, param in self.params.items():
            average = self.average[name]
            average += rate * (param.asnumpy() - average)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The network holds the averaged weights inside the block, its own weights again after it."""
        ms = mindspore_module()
        own = {name: p.asnumpy().copy() for name, p in self.params.items()}
        try:
            for name, param in self.params.items():
                param.set_data(ms.Tensor(self.average[name]))
            yield
        finally:
            for name, param in self.params.items():
                param.set_data(ms.Tensor(own[name]))

    def tensors(self) -> dict:
        """The average as MindSpore tensors named ``ema.<name>``, and its count, to save beside the weights."""
        ms = mindspore_module()
        tensors = {AVERAGE_PREFIX + name: ms.Tensor(value) for name, value in self.average.items()}
        if self.updates is not None:
            tensors[UPDATES_KEY] = ms.Tensor(np.array(self.updates, dtype=np.int64))
        return tensors


def saved_average(params: dict) -> SavedAverage | None:
    """Take the average and its count out of a loaded checkpoint dict; None when it has no average."""
    names = [key for key in params if key.startswith(AVERAGE_PREFIX)]
    updates = params.pop(UPDATES_KEY, None)
    if not names:
        return None
    weights = {key[len(AVERAGE_PREFIX):]: params.pop(key).asnumpy() for key in names}
    return SavedAverage(weights, None if updates is None else int(updates.asnumpy()))
