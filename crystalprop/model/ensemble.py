"""Ensembles: several members of one architecture in one checkpoint, and their spread as σ.

Members are trained independently (another seed, so another data order; the same split and
target transform) and joined into one ``.ckpt``: member k's weights are stored under
``member{k}.<parameter name>`` and the card's ``ensemble`` entry holds the member count and
the calibration scale. A prediction is the members' mean in network units (so for a log10
target the geometric mean, as for one model), and its σ is the standard deviation of the
members' physical predictions times the scale, which makes σ match the errors on the split
it was calibrated on (see :func:`calibration_scale`). An ensemble joined with ``sigma="latent"``
takes its σ instead from the distance to the training set in its first member's readout space
(:mod:`crystalprop.model.latent_sigma`); with ``sigma="latent+spread"`` from both, the spread times the
card's ``spread_weight`` added to the latent σ before the scale. The card's ``sigma_from`` says which.

A member can also be a product of models (:func:`product_combination`): shear modulus as bulk
modulus times G/K, where each factor is a model of its own (an ensemble's mean, or one network).
For log10 targets a product is a sum of the factors' log10 values, so such a member's output is
a weighted sum of networks' outputs, each in its own target transform. The card then stores the
networks (``members``: their count), each network's transform (``network_transforms``) and each
member's terms (``combination``: [network, weight] pairs); :func:`members_from_networks` turns the
networks' outputs into the members'.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crystalprop.model.checkpoint import CheckpointError, ModelCard, TargetTransform, as_array, save_ensemble
from crystalprop.model.latent_sigma import PREFIX as LATENT_PREFIX

MEMBER_PREFIX = "member"
RANGE_MARGIN = 1.5
"""A structure is beyond the latent σ's range only where its distance exceeds this multiple of ``latent_range``
(the largest on the calibration split): the farthest of 319 validation crystals understates where ordinary
crystals lie (bcc Fe, an elastic training crystal, is at 1.05 times shear modulus's), while two O atoms in a
3 Å box, band gap 0 ± 0 eV, are at 1.71 times band gap's (session 37)."""


@dataclass
class EnsembleOutput:
    """Per-structure prediction in physical units and its calibrated σ (None for one model)."""

    value: np.ndarray
    std: np.ndarray | None
    far: np.ndarray | None = None  # structures beyond the latent σ's calibrated range: their σ is not known


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


def network_transform(card: ModelCard, k: int = 0) -> TargetTransform:
    """The target transform network ``k`` was trained in: its own in a product ensemble, else the card's."""
    transforms = (card.ensemble or {}).get("network_transforms")
    return TargetTransform(**transforms[k]) if transforms else card.transform


def save_with_card(path: str | Path, card: ModelCard, params: dict[str, Any]) -> None:
    """Write the joined model read as ``params`` to ``path`` under ``card`` (its σ recalibrated, its
    records completed): every network's weights and the latent σ reference (if any) as they were."""
    extra = {name: as_array(value) for name, value in params.items() if name.startswith(LATENT_PREFIX)}
    save_ensemble(path, card, member_params(card, params), extra or None)


def members_from_networks(card: ModelCard, networks: np.ndarray) -> np.ndarray:
    """The members' normalised outputs (members × structures, in the card's transform) from the stored
    networks' (networks × structures, each in its own): the same array for a plain ensemble."""
    combination = (card.ensemble or {}).get("combination")
    if not combination:
        return networks
    transforms = [TargetTransform(**t) for t in card.ensemble["network_transforms"]]
    networks = np.atleast_2d(np.asarray(networks, dtype=np.float64))
    exponents = np.stack([z * t.std + t.mean for z, t in zip(networks, transforms, strict=True)])  # log10 y
    members = np.stack([sum(weight * exponents[k] for k, weight in terms) for terms in combination])
    return (members - card.transform.mean) / card.transform.std


def product_combination(target: TargetTransform, models: Sequence[Sequence[TargetTransform]],
                        members: Sequence[Sequence[int]], paths: Sequence[str | Path]
                        ) -> tuple[list[list[tuple[int, float]]], list[TargetTransform]]:
    """The card's ``combination`` and ``network_transforms``: ``models`` holds each distinct model's
    network transforms (one for a single network, several for an ensemble, whose mean it stands
    for), stored in that order; ``members`` the models whose product each member is (one model: a
    plain member); ``paths`` names each member in errors."""
    first = [sum(len(m) for m in models[:i]) for i in range(len(models))]  # each model's first network
    combination = []
    for factors, path in zip(members, paths, strict=True):
        if len(factors) > 1 and not (target.log10 and all(t.log10 for i in factors for t in models[i])):
            raise CheckpointError(f"{path}: a product member needs log10 targets (its value is the sum of "
                                  "the factors' log10 values), for the ensemble and each factor")
        combination.append([(first[i] + k, 1.0 / len(models[i])) for i in factors for k in range(len(models[i]))])
    return combination, [t for m in models for t in m]


def combine(outputs: np.ndarray, transform: TargetTransform, scale: float = 1.0,
            one_element: np.ndarray | None = None) -> EnsembleOutput:
    """Members' normalised outputs (members × structures) -> value and σ in physical units.

    Each member is floored before the mean (the value is the mean of the members' own predictions, in
    log10 for a log10 target): below the floor a member's output means nothing (the floor loss leaves it
    free), so one member's -1.3 eV must not cancel another's 0.18 eV. So is each member's value of a crystal
    of one element (``one_element``, a mask over the structures) at the transform's ``element_floor``."""
    outputs = np.maximum(np.atleast_2d(np.asarray(outputs, dtype=np.float64)), transform.network_floor())
    if one_element is not None and transform.element_floor is not None:
        outputs = np.where(one_element, np.maximum(outputs, transform.network_floor(transform.element_floor)), outputs)
    value = transform.physical(outputs.mean(axis=0))
    if outputs.shape[0] == 1:
        return EnsembleOutput(value, None)
    spread = np.stack([transform.physical(z) for z in outputs]).std(axis=0, ddof=1)
    return EnsembleOutput(value, spread * scale)


def ensemble_output(card: ModelCard, outputs: np.ndarray, features: np.ndarray | None = None,
                    reference: Any = None, one_element: np.ndarray | None = None) -> EnsembleOutput:
    """A model's values and calibrated σ from its stored networks' normalised outputs (networks ×
    structures; :func:`members_from_networks` makes them the members'): σ from the
    :class:`crystalprop.model.latent_sigma.LatentReference` ``reference`` and the first
    member's readout ``features`` (structures × F) where the model has one (plus its weighted
    spread, :func:`raw_sigma`), else from the spread. The values of crystals of one element
    (``one_element``, a mask) are raised to the card's ``element_floor``, where it has one."""
    scale = (card.ensemble or {}).get("sigma_scale", 1.0)
    outputs = members_from_networks(card, outputs)
    if reference is None:
        return combine(outputs, card.transform, scale, one_element)
    plain = combine(outputs, card.transform, one_element=one_element)
    latent, distance = reference.sigma_and_distance(features)
    reach = (card.ensemble or {}).get("latent_range")
    far = None if reach is None else distance > reach * RANGE_MARGIN
    return EnsembleOutput(plain.value, raw_sigma(plain, latent, (card.ensemble or {}).get("spread_weight", 0.0)) * scale,
                          far)


def one_element(graphs: Sequence[Any]) -> np.ndarray:
    """Which of ``graphs`` (anything with ``atomic_numbers``) are crystals of one element, for a card's
    ``element_floor`` (:func:`ensemble_output`)."""
    return np.array([np.unique(g.atomic_numbers).size == 1 for g in graphs], bool)


def raw_sigma(combined: EnsembleOutput, latent: np.ndarray, spread_weight: float) -> np.ndarray:
    """The uncalibrated σ from the latent distance: ``latent`` (structures,) plus ``spread_weight`` ×
    the members' spread in ``combined`` (its ``std``, unscaled; none for one member). The two rank the
    errors differently (campaign, session 27, cross-fitted on the validation splits: Spearman 0.565 → 0.581
    bulk, 0.525 → 0.548 shear, 0.761 → 0.797 band gap), so their sum ranks better than either."""
    if not spread_weight:
        return latent
    return latent + spread_weight * combined.std


def spread_weight(latent: np.ndarray, spread: np.ndarray) -> float:
    """The weight that puts the members' ``spread`` on the scale of the ``latent`` σ: the ratio of their
    medians over the structures where each is positive (1 where either is never positive)."""
    latent, spread = np.asarray(latent, np.float64), np.asarray(spread, np.float64)
    if not (latent > 0).any() or not (spread > 0).any():
        return 1.0
    return float(np.median(latent[latent > 0]) / np.median(spread[spread > 0]))


MIN_CALIBRATION = 10
"""The fewest structures (with a σ above 0 and an error above 0) a σ scale is fitted on: fewer, or errors
mostly 0, gave scales of 0 that made every later prediction claim certainty and an interval95 of 0 that
dropped the err95 column (hunt10 1); a scale of 0 is refused too."""


def calibration_scale(errors: np.ndarray, raw_std: np.ndarray, levels: int = 19) -> float:
    """The factor s for which the central Gaussian intervals ± z·s·σ cover the errors as often as
    they should, on average over the levels 5 %, 10 %, ..., 95 % (the least miscalibration area).

    Matching the coverage curve rather than mean((error/σ)²) keeps a few large errors (heavy
    tails, common in materials data) from inflating every σ.
    """
    from scipy.stats import norm  # noqa: PLC0415  (scipy comes with pymatgen)

    errors, raw_std = np.abs(np.asarray(errors, np.float64)), np.asarray(raw_std, np.float64)
    ok = raw_std > 0
    if not ok.any():
        raise ValueError("the members agree exactly on every structure: no spread to calibrate (runs of one seed on "
                         "one split are one network: give each member its own --seed)")
    n, erring = int(ok.sum()), int((errors[ok] > 0).sum())
    if n < MIN_CALIBRATION:
        raise ValueError(f"σ would be calibrated on {n} structures (those where it is not 0): at least "
                         f"{MIN_CALIBRATION} are needed; calibrate on more labelled structures")
    zeros = (f"{n - erring} of the {n} structures where σ is not 0 have errors of 0: the fitted scale would make "
             "every σ 0; calibrate on structures the model does not predict exactly")
    if erring < MIN_CALIBRATION:
        raise ValueError(zeros)
    ratios = np.sort(errors[ok] / raw_std[ok])
    expected = np.linspace(0.05, 0.95, levels)
    z = norm.ppf(0.5 + expected / 2)
    exact = np.quantile(ratios, expected) / z  # each makes one level exact
    low, high = max(exact.min(), 1e-12), max(exact.max(), 1e-12)
    candidates = np.concatenate([exact, np.geomspace(low, high, 400)])

    def miscalibration(scale: float) -> float:
        observed = np.searchsorted(ratios, z * scale, side="right") / ratios.size
        return float(np.mean(np.abs(observed - expected)))

    scale = float(min(candidates, key=miscalibration))
    if scale <= 0:  # exact predictions cover most levels at σ = 0
        raise ValueError(zeros)
    return scale


INTERVAL_LEVEL = 0.95
"""The coverage of the interval stored beside σ (``interval95``, the ``<label>_err95`` column)."""


INTERVAL_MARGIN = 1e-4
"""The relative margin on the interval's multiple, so that the structure that sets it stays inside when its
values are computed again (float32 arithmetic, another batch or engine: a change of about 1e-6): on the small
validation sets of users' own data that one structure is several points of the coverage."""


def interval_multiple(errors: np.ndarray, std: np.ndarray, level: float = INTERVAL_LEVEL) -> float | None:
    """The least k for which |error| ≤ k·σ on ``level`` of the structures, raised by :data:`INTERVAL_MARGIN`:
    the half-width of an honest ``level`` interval in units of the calibrated σ; None where σ is 0 under more than 1 - ``level`` of
    the errors that are not 0 (members that all floor a structure at 0 agree exactly), as no k does.

    Materials models err with heavier tails than a Gaussian's, so σ fitted to the whole coverage curve
    covers too few errors at 2σ (campaign, session 30: formation energy 91 % against 95 %, in every
    quintile of σ); k (2.44 there, 1.96 for Gaussian errors) gives the interval that does. A σ of 0 covers
    an error of 0 (a metal predicted at 0 eV) and no other.
    """
    errors, std = np.abs(np.asarray(errors, np.float64)), np.asarray(std, np.float64)
    uncovered = (std <= 0) & (errors > 0)
    if uncovered.mean() > 1 - level:
        return None
    ratios = np.sort(np.where(uncovered, np.inf, errors / np.where(std > 0, std, 1.0)))
    return float(ratios[max(int(np.ceil(level * ratios.size)) - 1, 0)]) * (1.0 + INTERVAL_MARGIN)


def check_compatible(cards: Sequence[ModelCard], paths: Sequence[str | Path]) -> None:
    """Refuse to join members that do not predict the same thing the same way."""
    for card, path in zip(cards, paths):
        if card.ensemble:
            raise CheckpointError(f"{path}: already an ensemble; join its members' own checkpoints")
    first = cards[0]
    for card, path in zip(cards[1:], paths[1:]):
        for what, mine, theirs in (("target", card.target, first.target), ("unit", card.unit, first.unit),
                                   ("architecture", card.model, first.model),
                                   ("graph settings", card.graph, first.graph),
                                   ("target transform", card.transform, first.transform)):
            if mine != theirs and what == "target transform" and _split(card)["val"] != _split(first)["val"]:
                raise CheckpointError(_other_split_message(card, first, path, paths[0]))
            if mine != theirs:
                raise CheckpointError(f"{path}: another {what} than {paths[0]} ({_difference(mine, theirs)}); "
                                      "members must share target, unit, architecture, graph and split")


def _difference(mine, theirs) -> str:
    """How two settings differ, in words: the fields that differ where both are records (sizes, graph
    settings, transforms), else the two values."""
    if is_dataclass(mine) and type(mine) is type(theirs):
        return ", ".join(f"{f.name} {getattr(mine, f.name)!r} against {getattr(theirs, f.name)!r}" for f in fields(mine)
                         if getattr(mine, f.name) != getattr(theirs, f.name))
    return f"{mine!r} against {theirs!r}"


def _split(card: ModelCard) -> dict:
    """A model's split as its record gives it: ``source`` (e.g. a random one and its seed), the
    digest of its ``val`` ids (None where not recorded) and its cross-validation ``fold`` (None where none)."""
    record = card.training.get("data", {}).get("split_record", {})
    return {"source": record.get("source", "an unrecorded split"), "val": record.get("val_ids_sha256"),
            "fold": tuple(record["fold"]) if record.get("fold") else None}


def _other_split_message(card: ModelCard, first: ModelCard, path: str | Path, first_path: str | Path) -> str:
    """Why a member trained on another split than the first cannot join it, and what to do: members of
    other cross-validation folds are named by their folds (the data's own split is not at fault);
    members of other random splits need a split that the data fixes, or one run of them all."""
    from crystalprop.data.datasets import is_random_split  # noqa: PLC0415

    mine, theirs = _split(card), _split(first)
    why = "other training structures, so another target transform"
    if mine["fold"] != theirs["fold"]:
        folds = " and ".join(f"fold {f[0]}/{f[1]}" if f else "no fold" for f in (mine["fold"], theirs["fold"]))
        return (f"{path}: trained on another cross-validation fold than {first_path} ({folds}: {why}); join the "
                "members of one fold (trained with the same --fold), or train them together with crystalprop "
                "train --ensemble N --fold I/K")
    advice = ("give the data a split of its own (split.json or a split column), or " if
              is_random_split(mine["source"]) or is_random_split(theirs["source"]) else "")
    return (f"{path}: trained on another split than {first_path} ({mine['source']} and {theirs['source']}: "
            f"{why}); {advice}train the members together with crystalprop train --ensemble N, which shares one")


DIMENSIONLESS = ("", "1", "-", "dimensionless")
"""Units a ratio model may carry (``crystalprop train --unit``)."""


def check_product_units(unit: str, factors: Sequence[tuple[str, str | Path]]) -> None:
    """Refuse a product member whose factors' units (``(unit, path)`` each) do not multiply to the
    ensemble's ``unit``: one factor in that unit, the others dimensionless (GPa × 1 for K × G/K)."""
    dimensioned = [u for u, _ in factors if u.strip().lower() not in DIMENSIONLESS]
    if dimensioned != ([] if unit.strip().lower() in DIMENSIONLESS else [unit]):
        product = " × ".join(u or "1" for u, _ in factors)
        raise CheckpointError(f"{' × '.join(str(p) for _, p in factors)}: a product in {product}, not the "
                              f"ensemble's unit ({unit or '1'}); a product member is one model in that unit "
                              "times dimensionless ones (e.g. a bulk modulus in GPa × G/K in 1)")


def check_factor(card: ModelCard, first: ModelCard, path: str | Path, first_path: str | Path) -> None:
    """Refuse a factor of a product member that cannot be stored and run beside ``first``, the
    ensemble's first member: another architecture or graph, or a product ensemble itself."""
    for what, mine, theirs in (("architecture", card.model, first.model), ("graph settings", card.graph, first.graph)):
        if mine != theirs:
            raise CheckpointError(f"{path}: another {what} than {first_path} ({mine} != {theirs}); "
                                  "the models of a product member must share architecture and graph")
    if card.ensemble.get("combination"):
        raise CheckpointError(f"{path}: already holds product members; give the models it was joined from")
