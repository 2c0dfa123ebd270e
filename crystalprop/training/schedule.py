"""Learning-rate schedules as plain functions of the step, so a resumed run continues exactly."""

from __future__ import annotations

import math

SCHEDULES = ("onecycle", "cosine", "constant")


def learning_rate(schedule: str, step: int, total_steps: int, peak: float, warmup_fraction: float = 0.3) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``.

    onecycle: cosine rise from peak/25 to peak over ``warmup_fraction`` of the run, then
    cosine decay to peak/1e4 (as PyTorch's OneCycleLR). cosine: 2 % linear warm-up, then
    cosine decay to zero. constant: peak throughout.
    """
    total_steps = max(total_steps, 1)
    progress = min(step / total_steps, 1.0)
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        warmup = 0.02
        if progress < warmup:
            return peak * (progress + 1.0 / total_steps) / warmup
        return peak * 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))
    if schedule == "onecycle":
        start, end = peak / 25.0, peak / 1e4
        if progress < warmup_fraction:
            phase = progress / warmup_fraction
            return end_interp(start, peak, phase)
        phase = (progress - warmup_fraction) / (1.0 - warmup_fraction)
        return end_interp(peak, end, phase)
    raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def end_interp(start: float, end: float, phase: float) -> float:
    """Cosine interpolation from ``start`` (phase 0) to ``end`` (phase 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * phase))
