"""An exponential moving average of a network's weights, for validation and the saved model.

After every optimizer step ``average = decay · average + (1 - decay) · weights``, over every
parameter of the network, BatchNorm's moving statistics included. The average smooths out the
step-to-step noise of the last few hundred steps (about 1 / (1 - decay) of them) and is what a run
with ``--ema`` validates and keeps as ``best.ckpt``; training itself goes on from the raw weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import numpy as np

from crystalprop.backend import mindspore_module
from crystalprop.training.config import check_decay

AVERAGE_PREFIX = "ema."
"""Where ``last.ckpt`` keeps the average of parameter ``name``: ``ema.<name>``."""


class WeightAverage:
    """The running average of ``net``'s parameters, in float32 numpy arrays by parameter name."""

    def __init__(self, net, decay: float, saved: Mapping[str, np.ndarray] | None = None) -> None:
        """Starts from the network's weights as they are, or from ``saved`` (a resumed run's average)."""
        self.decay = check_decay(decay)
        self.params = dict(net.parameters_and_names())
        if saved is not None:
            missing = sorted(set(self.params) - set(saved))
            if missing:
                raise ValueError(f"the saved weight average lacks {len(missing)} parameters, e.g. {missing[0]}")
            self.average = {name: np.array(saved[name], dtype=np.float32) for name in self.params}
        else:
            self.average = {name: p.asnumpy().astype(np.float32) for name, p in self.params.items()}

    def update(self) -> None:
        """Move the average towards the current weights: one optimizer step's share."""
        rate = np.float32(1.0 - self.decay)
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
        """The average as MindSpore tensors named ``ema.<name>``, to save beside the weights."""
        ms = mindspore_module()
        return {AVERAGE_PREFIX + name: ms.Tensor(value) for name, value in self.average.items()}


def saved_average(params: dict) -> dict[str, np.ndarray] | None:
    """Take the ``ema.<name>`` entries out of a loaded checkpoint dict; None when it has none."""
    names = [key for key in params if key.startswith(AVERAGE_PREFIX)]
    if not names:
        return None
    return {key[len(AVERAGE_PREFIX):]: params.pop(key).asnumpy() for key in names}
