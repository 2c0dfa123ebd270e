"""Click options and parameter parsers shared by the commands of :mod:`crystalprop.cli.commands`.

Light to import (no numpy), as the command's start-up must be.
"""

from __future__ import annotations

import math
import re

import click

from crystalprop.utils.backend import DEVICES
from crystalprop.graph.settings import CELL_CHOICES
from crystalprop.model import SIGMA_CHOICES


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that refuses nan and inf: nan passes any bound (every comparison with it
    is False) and either fails deep inside the command instead of at the option."""

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def cell_option(default_text: str):
    """``--cell``: the cell each structure's graph is built on."""
    return click.option("--cell", type=click.Choice(CELL_CHOICES), default=None,
                        help="canonical: the Niggli-reduced primitive cell, so any cell of a crystal gives one "
                             f"answer; as-given: the file's own cell. Default: {default_text}.")


def sigma_option():
    """``--sigma``: where an ensemble's σ comes from (:func:`crystalprop.evaluation.joining.join_ensemble`)."""
    return click.option("--sigma", type=click.Choice(SIGMA_CHOICES), default=SIGMA_CHOICES[0], show_default=True,
                        help="An ensemble's σ. spread: from the members' spread; latent: from the distance to the "
                             "training structures in the first member's readout space, times their training errors "
                             "(ranks the errors better where the members share their training; stores 2-3 MB more); "
                             "latent+spread: the two added, the spread weighted to the latent σ's median.")


def split_models(values: tuple[str, ...]) -> tuple[str, ...]:
    """``-m`` values, each a model or several separated by commas (``-m band_gap,bulk_modulus``);
    a value naming an existing file or folder is one model, commas and all."""
    from crystalprop.model.registry import model_names  # noqa: PLC0415  (the command starts without it)

    if any(not value.strip(" ,") for value in values):
        raise click.BadParameter("an empty model name; leave -m out to run every shipped model")
    return tuple(model_names(values))


def models_option():
    """``--model/-m``: the models to run, repeatable or comma-separated."""
    return click.option("--model", "-m", "models", multiple=True, callback=lambda ctx, param, v: split_models(v),
                        help="Shipped model name, .ckpt file or run folder (its best.ckpt); repeat it or separate several "
                             "with commas. "
                             "Default: all shipped models.")


def device_option():
    """``--device``: the MindSpore backend."""
    return click.option("--device", default=DEVICES[0], show_default=True,
                        type=click.Choice(DEVICES, case_sensitive=False))


def duration_s(text: str | None) -> float | None:
    """'90m', '2h', '1h30m', '45s' or plain seconds -> seconds."""
    if not text:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text.lower()):
        raise click.BadParameter(f"{text!r}: use e.g. 2h, 90m, 1h30m or seconds")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)


def _i_of_n(text: str, option: str, example: str) -> tuple[int, int]:
    """'I/N' -> (I, N), with 1 <= I <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise click.BadParameter(f"{text!r}: use I/N with 1 <= I <= N, e.g. {example}", param_hint=option)
    return int(match[1]), int(match[2])


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (``--shard``) -> (I, N), with 1 <= I <= N."""
    return _i_of_n(text, "--shard", "2/8")


def fold_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """Click callback of ``train --fold I/K``: (I, K), or None; at least 2 folds."""
    if value is None:
        return None
    fold = _i_of_n(value, "--fold", "2/5")
    if fold[1] < 2:
        raise click.BadParameter(f"{value!r}: cross-validation needs at least 2 folds, e.g. 2/5", param_hint="--fold")
    return fold
