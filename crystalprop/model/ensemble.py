"""Ensembles: several members of one architecture in one checkpoint, and their spread as σ.

Members are trained independently (another seed, so another data order; the same split and
target transform) and joined into one ``.ckpt``: member k's weights are stored under
``member{k}.<parameter name>`` and the card's ``ensemble`` entry holds the member count and
the calibration scale. A prediction is the members' mean in network units (so for a log10
target the geometric mean, as for one model), and its σ is the standard deviation of the
members' physical predictions times the scale, which makes σ match the errors on the split
it was calibrated on (``scale² = mean((error / raw σ)²)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crystalprop.model.checkpoint import CheckpointError, ModelCard, TargetTransform

MEMBER_PREFIX = "member"


@dataclass
class EnsembleOutput:
    """Per-structure prediction in physical units and its calibrated σ (None for one model)."""

    value: np.ndarray
    std: np.ndarray | None


def member_key(k: int, name: str) -> str:
    """Where member ``k`` keeps parameter ``name`` in an ensemble checkpoint."""
    return f"{MEMBER_PREFIX}{k}.{name}"


def member_params(card: ModelCard, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter dict of each member (one for a single model), by plain parameter name."""
    count = int(card.ensemble.get("members", 1)) if card.ensemble else 1
    if not card.ensemble:
        return [params]
    members: list[dict[str, Any]] = [{} for _ in range(count)]
    for key, value in params.items():
        head, _, name = key.partition(".")
        if head.startswith(MEMBER_PREFIX) and head[len(MEMBER_PREFIX):].isdigit():
            k = int(head[len(MEMBER_PREFIX):])
            if k < count:
                members[k][name] = value
    return members


def combine(outputs: np.ndarray, transform: TargetTransform, scale: float = 1.0) -> EnsembleOutput:
    """Members' normalised outputs (members × structures) -> value and σ in physical units."""
    outputs = np.atleast_2d(np.asarray(outputs, dtype=np.float64))
    value = transform.physical(outputs.mean(axis=0))
    if outputs.shape[0] == 1:
        return EnsembleOutput(value, None)
    spread = np.stack([transform.physical(z) for z in outputs]).std(axis=0, ddof=1)
    return EnsembleOutput(value, spread * scale)


def calibration_scale(errors: np.ndarray, raw_std: np.ndarray) -> float:
    """The factor s for which (error / (s·σ))² averages to 1 (the Gaussian maximum likelihood)."""
    errors, raw_std = np.asarray(errors, np.float64), np.asarray(raw_std, np.float64)
    ok = raw_std > 0
    if not ok.any():
        raise ValueError("the members agree exactly on every structure: no spread to calibrate")
    return float(np.sqrt(np.mean((errors[ok] / raw_std[ok]) ** 2)))


def check_compatible(cards: Sequence[ModelCard], paths: Sequence[str | Path]) -> None:
    """Refuse to join members that do not predict the same thing the same way."""
    first = cards[0]
    for card, path in zip(cards[1:], paths[1:]):
        for what, mine, theirs in (("target", card.target, first.target), ("architecture", card.model, first.model),
                                   ("graph settings", card.graph, first.graph),
                                   ("target transform", card.transform, first.transform)):
            if mine != theirs:
                raise CheckpointError(f"{path}: another {what} than {paths[0]} ({mine} != {theirs}); "
                                      "members must share target, architecture, graph and split")
        if card.ensemble:
            raise CheckpointError(f"{path}: already an ensemble; join its members' own checkpoints")
    if first.ensemble:
        raise CheckpointError(f"{paths[0]}: already an ensemble; join its members' own checkpoints")
