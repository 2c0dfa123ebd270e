"""What defines a training run besides the data, free of heavy imports so the CLI can show its defaults."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from numbers import Real

from crystalprop.graph.settings import GraphSettings
from crystalprop.utils.checks import check_whole_number
from crystalprop.model.config import ModelConfig
from crystalprop.training.schedule import SCHEDULES

LOSSES = ("mse", "l1", "huber")


def check_decay(decay: float) -> float:
    """``decay`` (of ``--ema``) if it lies in (0, 1); else a ValueError that says what it means."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"--ema {decay}: the decay must lie between 0 and 1 (e.g. 0.999 averages about "
                         "the last 1,000 steps)")
    return decay


def check_emphasis(emphasis) -> tuple[float, float, float]:
    """``(low, high, factor)`` of ``--emphasize`` as floats if low < high and factor > 0; else a ValueError."""
    low, high, factor = (float(v) for v in emphasis)
    if not low < high:
        raise ValueError(f"--emphasize {low:g} {high:g} {factor:g}: the range (LOW, HIGH] needs LOW < HIGH")
    if not factor > 0:
        raise ValueError(f"--emphasize {low:g} {high:g} {factor:g}: the FACTOR must be positive")
    return low, high, factor


OPTIONAL_COUNTS = ("limit", "patience")
"""Whole-number settings that may be left out (None)."""


def check_settings(*, loss: str, schedule: str, epochs: int, batch_size: int, max_time_s: float | None,
                   val_fraction: float, test_fraction: float, lr: float = 1e-3, weight_decay: float = 0.0,
                   floor: float | None = None, element_floor: float | None = None, **counts: int | None) -> None:
    """A ValueError naming the first setting of a run that cannot work (the command's options check
    most of these themselves; the Python API reaches here with whatever it was given). ``counts``:
    whole numbers of 1 or more (model sizes, ``ensemble``; ``limit`` and ``patience`` where given);
    the floors finite numbers where given."""
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}: choose one of {', '.join(LOSSES)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), *counts.items()):
        if value is not None or name not in OPTIONAL_COUNTS:
            check_whole_number(name, value)
    for name, value in (("floor", floor), ("element_floor", element_floor)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)):
            raise ValueError(f"{name} {value!r}: a finite number (a bound that predictions are raised to)")
    for name, value, least in (("lr", lr, "above 0"), ("weight_decay", weight_decay, "0 or more")):
        if isinstance(value, bool) or not isinstance(value, Real) or not (value > 0 if name == "lr" else value >= 0):
            raise ValueError(f"{name} {value!r}: a number {least}")
    if max_time_s is not None and (isinstance(max_time_s, bool) or not isinstance(max_time_s, Real)
                                   or not max_time_s >= 0):
        raise ValueError(f"max_time_s {max_time_s!r}: a number of seconds, 0 or more (the command takes "
                         "--max-time 2h)")
    fractions = (val_fraction, test_fraction)
    if not all(isinstance(f, Real) and not isinstance(f, bool) and 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"val_fraction {val_fraction!r}, test_fraction {test_fraction!r}: each fraction lies in "
                         "[0, 1) and together they leave structures to train on")


RESUMED_SETTINGS = ("target", "unit", "epochs", "batch_size", "lr", "weight_decay", "schedule", "loss", "log10",
                    "floor", "element_floor", "patience", "seed", "ema", "emphasis")
"""What ``crystalprop train --resume`` keeps from the run's start unless given again (the model's size too)."""


def changed_settings(saved: dict, now: dict) -> dict[str, list]:
    """``{setting: [saved, now]}`` for each of :data:`RESUMED_SETTINGS` in which the config dict ``now``
    differs from the ``saved`` one (both as :meth:`TrainConfig.as_dict` gives them)."""
    def plain(value):
        return json.loads(json.dumps(value))  # a tuple as the list it is saved as

    return {key: [saved[key], plain(now[key])] for key in RESUMED_SETTINGS
            if key in saved and saved[key] != plain(now[key])}


def kept_settings(saved: dict, config: dict, model: dict, given: set[str]) -> tuple[dict, dict]:
    """The ``config`` and ``model`` dicts of a resumed job, with every setting of
    :data:`RESUMED_SETTINGS` and every model size not in ``given`` taken from the ``saved`` config."""
    config = {**config, **{k: saved[k] for k in RESUMED_SETTINGS if k not in given and k in saved and k in config}}
    model = {**model, **{k: v for k, v in saved["model"].items() if k not in given and k in model}}
    if config.get("emphasis") is not None:
        config["emphasis"] = tuple(config["emphasis"])
    return config, model


@dataclass
class TrainConfig:
    """Everything that defines a run besides the data."""

    target: str
    unit: str = ""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    schedule: str = "onecycle"
    warmup_fraction: float = 0.3
    loss: str = "mse"
    log10: bool = False
    floor: float | None = None
    element_floor: float | None = None
    """A bound for crystals of one element alone (``TargetTransform.element_floor``): 0 for a formation energy."""
    patience: int | None = None
    max_time_s: float | None = None
    seed: int = 0
    ema: float | None = None
    """Decay of the weight average that is validated and kept (:mod:`crystalprop.training.averaging`); None: none."""
    emphasis: tuple[float, float, float] | None = None
    """(low, high, factor): training targets in (low, high] weigh ``factor`` times as much in the loss
    (:func:`crystalprop.training.trainer.sample_weights`); None: all alike."""
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphSettings = field(default_factory=GraphSettings)

    def as_dict(self) -> dict:
        """JSON-ready."""
        d = asdict(self)
        d["model"], d["graph"] = self.model.as_dict(), self.graph.as_dict()
        return d
