"""The network's architecture settings, free of heavy imports so the CLI can show their defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored in full in every checkpoint.

    The defaults are those of ``crystalprop train`` and of the shipped models. Checkpoint cards
    have always stored every field, so these defaults never change how a checkpoint is read.
    """

    layers: int = 5
    features: int = 64
    heads: int = 1
    rbf_bins: int = 128
    rbf_max: float = 8.0
    fc_features: int = 128

    def as_dict(self) -> dict:
        """Plain dict for JSON metadata."""
        return asdict(self)
