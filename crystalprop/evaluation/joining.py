"""Join trained models into one ensemble checkpoint and calibrate its σ (or calibrate a joined one again)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from crystalprop.utils.atomic import make_folder
from crystalprop.data.datasets import Dataset, ids_in_packed, merge_trained
from crystalprop.evaluation.evaluate import (
    CALIBRATE_ELSEWHERE, calibration_record, check_unseen, error_metrics, given_sigma, labelled_split,
    network_outputs, recorded_split, split_dataset, split_settings,
)
from crystalprop.graph.settings import check_cell_choice
from crystalprop.evaluation.metrics import uncertainty_metrics
from crystalprop.model import check_sigma_choice
from crystalprop.model.ensemble import (
    calibration_scale, combine, interval_multiple, members_from_networks, one_element, raw_sigma, spread_weight,
)
from crystalprop.model.latent_sigma import LatentReference, stored_reference
from crystalprop.utils.hashing import cached_file_sha256
from crystalprop.graph.settings import EVAL_BATCH_SIZE


def _merge_trained_ids(first, others) -> None:
    """Record in ``first`` the structures any member trained on (ids, and fingerprints where every
    member has them), so that evaluating the ensemble refuses every one of them as validation or test,
    and reports the look-alikes of every member's, not only the first member's."""
    record = recorded_split(first.training)
    if not record or "trained_ids" not in record:
        return
    merge_trained(record, [recorded_split(c.training) for c in others])


def check_calibration_split(split: str) -> None:
    """Refuse to calibrate σ on the training split (or all structures): its errors are those of
    structures the members were fitted to, far smaller than a new structure's."""
    if split in ("train", "all"):
        raise ValueError(f"--split {split}: σ is calibrated on structures the members were not trained on "
                         "(val, test or unseen); the training errors would make it far too small")


def standing_join(output: Path, members: list[Path]) -> dict | None:
    """The report of the ensemble in ``output`` where it joins ``members`` (run folders) as they are now, in that
    order (by the sha256 of their ``best.ckpt``: a join made by hand, with another σ, is one too), with
    ``kept``; None where there is none, or it joins other weights."""
    from crystalprop.model.checkpoint import read_checkpoint  # noqa: PLC0415

    if not output.is_file():
        return None
    card, _ = read_checkpoint(output, arrays=True)
    files = (card.ensemble or {}).get("member_files", [])
    if [f.get("sha256") for f in files] != [cached_file_sha256(m / "best.ckpt") for m in members]:
        return None
    split = card.ensemble["calibrated_on"]["split"]
    return {"output": str(output), "split": split, "unit": card.unit, "kept": True,
            "member_maes": [f.get(f"{split}_mae", math.nan) for f in files], "notes": [], **_reported(card.ensemble),
            **card.metrics}


STEADY_CALIBRATION = 100
"""Calibration structures below which a joining notes that σ's scale and interval rest on a few errors."""


def few_calibration_notes(ensemble: dict) -> list[str]:
    """A note where σ was calibrated on fewer than :data:`STEADY_CALIBRATION` structures: the 95 % interval's multiple
    is then set by the largest one or two errors, and the scale is loose too."""
    n = ensemble["calibrated_on"]["n"]
    if n >= STEADY_CALIBRATION:
        return []
    interval = f" (err95 = {ensemble['interval95']:.2f} σ)" if ensemble.get("interval95") else ""
    return [f"σ is calibrated on {n} structures: its scale is loose, and its 95 % interval{interval} rests on the "
            f"largest {max(1, round(0.05 * n))} error(s); {STEADY_CALIBRATION} or more give steadier figures"]


def unfinished_notes(models: list[Path]) -> list[str]:
    """A note for each model that is a run's ``best.ckpt`` whose run has epochs left (still training, or stopped to
    be resumed): the ensemble takes its best so far, and falls behind the run as it goes on."""
    from crystalprop.model.checkpoint import epochs_left, saved_state  # noqa: PLC0415

    notes = []
    for path in models:
        last = path.parent / "last.ckpt"
        if path.name != "best.ckpt" or not last.is_file():
            continue
        try:
            where = epochs_left(saved_state(last))
        except (ValueError, KeyError, OSError):  # a last.ckpt cut short or of another kind: the note is advice only
            notes.append(f"{path.parent}: its last.ckpt could not be read, so whether its run has ended is unknown")
            continue
        if where:
            notes.append(f"{path.parent}: its run is not finished ({where} trained): joined at its best so far; "
                         "join again when the run has ended")
    return notes


def _refuse_member_output(output: str | Path, models: list[Path]) -> None:
    """Refuse an ``output`` that is one of the models joined: with --overwrite it replaced a member's own
    best.ckpt, whose run then reported the ensemble as its best epoch."""
    for path in models:
        same = (os.path.samefile(output, path) if Path(output).exists()
                else Path(output).resolve() == Path(path).resolve())
        if same:
            raise ValueError(f"{output} is one of the models it joins ({path}): write the ensemble to another file")


def _refuse_copied_members(paths: list[Path]) -> None:
    """Refuse two members with the same bytes (a copied run folder): one network run twice, with no spread."""
    seen: dict[str, Path] = {}
    for path in paths:
        digest = cached_file_sha256(path)
        if digest in seen:
            raise ValueError(f"{path} and {seen[digest]} are the same network (the same file contents): "
                             "an ensemble needs networks trained apart")
        seen[digest] = path


def join_ensemble(
    members: Sequence[str | Path],
    output: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    batch_size: int = EVAL_BATCH_SIZE,
    id_column: str | None = None,
    structure_column: str | None = None,
    device: str = "CPU",
    cell: str | None = None,
    sigma: str = "spread",
    products: Sequence[Sequence[str | Path]] = (),
    latent_prior: float = 0.0,
    overwrite: bool = True,
) -> dict:
    """Join independently trained members into one ensemble checkpoint whose σ is calibrated
    on ``split`` of ``data``; returns the ensemble's metrics on that split.

    ``cell`` (canonical or as-given): the cells the ensemble predicts on, for members trained on
    other cells than each other; None keeps the members' own setting, which must then agree.
    ``sigma``: ``spread``, σ from the members' spread; ``latent``, from the distance to the training
    structures in the first member's readout space (:mod:`crystalprop.model.latent_sigma`), whose
    reference is built on the training split of ``data`` and stored in the checkpoint; then one
    member is enough (a single model with a σ); ``latent+spread``, the latent σ plus the members'
    spread, weighted by the ratio of their medians on ``split`` (:func:`crystalprop.model.ensemble.spread_weight`,
    stored as ``spread_weight``). ``latent_prior``: the share of the mean training error
    added to the neighbours' (:class:`crystalprop.model.latent_sigma.LatentReference`; 0: none).
    ``products``: further members, each the product of the models given (checkpoints, run dirs or
    shipped names, an ensemble standing for its mean; log10 targets of one architecture and graph),
    e.g. ``[("bulk_modulus", "g_over_k.ckpt")]`` for a shear modulus as K × G/K. Every model's
    networks are stored in the checkpoint (:func:`crystalprop.model.ensemble.product_combination`).
    ``output`` must be named .ckpt; ``overwrite=False`` refuses an existing one (the command's default).
    """
    from crystalprop.utils.backend import set_device  # noqa: PLC0415
    from crystalprop.model.checkpoint import (  # noqa: PLC0415
        check_new_checkpoint, on_one_graph, read_checkpoint, save_ensemble,
    )
    from crystalprop.model.ensemble import (  # noqa: PLC0415
        check_compatible, check_factor, check_product_units, member_params, product_combination,
    )
    from crystalprop.model.registry import resolve_model  # noqa: PLC0415

    check_sigma_choice(sigma)
    latent = sigma != "spread"
    if latent_prior and not latent:
        raise ValueError("a latent prior weighs the training errors of σ from the latent distance: "
                         "give --sigma latent or latent+spread")
    if not (latent_prior >= 0 and math.isfinite(latent_prior)):
        raise ValueError(f"the latent prior is a share of the mean training error, 0 or more, not {latent_prior}")
    if not members:
        raise ValueError("an ensemble needs at least one member that predicts its target itself")
    if len(members) + len(products) < (1 if sigma == "latent" else 2):  # latent+spread needs a spread
        raise ValueError("an ensemble needs at least two members (one is enough with σ from the latent distance)")
    if any(len(factors) < 2 for factors in products):
        raise ValueError("a product member needs at least two models")
    resolved = [resolve_model(m) for m in members]
    factor_models = [[resolve_model(f) for f in factors] for factors in products]
    paths = [path for _, path in resolved]
    models = list(dict.fromkeys(paths + [path for factors in factor_models for _, path in factors]))
    _refuse_member_output(output, models)  # first: --overwrite is no way past it
    check_new_checkpoint(output, overwrite)
    check_calibration_split(split)
    make_folder(Path(output).parent)  # before the work, not after it
    set_device(device)
    given = [Path(p).resolve() for p in paths] + [tuple(Path(p).resolve() for _, p in f) for f in factor_models]
    twice = next((g for k, g in enumerate(given) if g in given[:k]), None)
    if twice is not None:
        raise ValueError(f"{' × '.join(map(str, twice)) if isinstance(twice, tuple) else twice}: "
                         "given twice as a member")
    _refuse_copied_members(paths)
    loaded = {path: read_checkpoint(path) for path in models}  # each model read once
    loaded = dict(zip(loaded, on_one_graph(list(loaded.values())), strict=True))
    cards = [loaded[path][0] for path in models]
    if cell is not None:
        check_cell_choice(cell)
        for card in cards:
            card.graph = replace(card.graph, cell=cell)
    check_compatible([loaded[p][0] for p in paths], paths)
    first = loaded[paths[0]][0]
    for path in models[len(set(paths)):]:
        check_factor(loaded[path][0], first, path, paths[0])
    chosen = labelled_split(first, data, None, split, paths[0], id_column, structure_column,
                            anyway=CALIBRATE_ELSEWHERE)
    split, split_check, kept = chosen.split, chosen.note, chosen.kept
    datasets: dict[str, Dataset] = {}  # one read of the data per distinct split setting
    for card, path in zip(cards[1:], models[1:]):
        key = json.dumps(split_settings(card.training), sort_keys=True)
        if key not in datasets:
            datasets[key] = split_dataset(data, first.target, card.training, id_column, structure_column)[0]
        check_unseen([e for e, _ in kept], split, datasets[key], card.training, path, CALIBRATE_ELSEWHERE)
    networks = {path: member_params(card, params) for path, (card, params) in loaded.items()}
    member_names = [name for name, _ in resolved] + [" × ".join(name for name, _ in f) for f in factor_models]
    combination, transforms = product_combination(
        first.transform, [[loaded[p][0].transform] * len(networks[p]) for p in models],
        [[models.index(p)] for p in paths] + [[models.index(p) for _, p in f] for f in factor_models],
        member_names)
    for factors in factor_models:  # after the log10 check: units multiply only as log10 values add
        check_product_units(first.unit, [(loaded[path][0].unit, path) for _, path in factors])
    checkpoints = [(loaded[p][0], loaded[p][1], p) for p in models]
    networks_of = network_outputs(checkpoints, readout=latent)
    first.ensemble = {"members": len(transforms)}  # after the network: until then ``first`` is one model
    if products:
        first.ensemble.update({"combination": combination, "network_transforms": [t.as_dict() for t in transforms]})
    reference, reference_record = None, {}
    if latent:
        reference, reference_record = _latent_reference(first, paths[0], networks_of, data, batch_size, id_column,
                                                        structure_column, latent_prior)
    if all(c.elements for c in cards):  # warn for an element any model has not seen; in the first one's order
        first.elements = [e for e in first.elements if all(e in c.elements for c in cards[1:])]
    graphs = [g for _, g in kept]
    y = np.array([e.target for e, _ in kept])
    outputs, features = networks_of(graphs, batch_size)
    outputs = members_from_networks(first, outputs)
    with_sigma, elemental = given_sigma(first, graphs), one_element(graphs)
    scale, metrics, weight = _calibrated(first, y, outputs, features[0] if reference else None, reference, sigma,
                                         with_sigma, elemental)
    reference_record.update(weight)
    member_maes = [float(np.mean(np.abs(combine(z, first.transform, one_element=elemental).value - y)))
                   for z in outputs]
    files = [[(name, p)] for name, p in resolved] + factor_models
    first.ensemble.update({
        "sigma_scale": scale, "sigma_from": sigma, **reference_record,
        "calibrated_on": {"data": str(data), "split": split, "n": int(with_sigma.sum()), "split_check": split_check,
                          **calibration_record(chosen, with_sigma)},
        "member_files": [{"name": name, **_files_record(f), f"{split}_mae": mae}
                         for name, f, mae in zip(member_names, files, member_maes)],
    })
    first.metrics = metrics
    _merge_trained_ids(first, cards[1:])
    notes = unfinished_notes(models) + few_calibration_notes(first.ensemble)  # before the file: advice cannot fail it
    save_ensemble(output, first, [params for p in models for params in networks[p]],
                  reference.arrays() if reference else None)
    return {"output": str(output), "split": split, "unit": first.unit, "member_maes": member_maes,
            "notes": notes, **_reported(first.ensemble), **metrics}


def _reported(ensemble: dict) -> dict:
    """A card's ensemble entries as joining returns them: the calibration structures counted, without their packed
    ids and fingerprints (kilobytes of text for a reader; the checkpoint keeps them for ``evaluate``)."""
    calibrated = {k: v for k, v in ensemble.get("calibrated_on", {}).items() if k not in ("ids", "structures")}
    return {**ensemble, **({"calibrated_on": calibrated} if "calibrated_on" in ensemble else {})}


def _calibrated(card, y: np.ndarray, outputs: np.ndarray, features: np.ndarray | None,
                reference: LatentReference | None, sigma: str,
                with_sigma: np.ndarray, elemental: np.ndarray) -> tuple[float, dict, dict]:
    """The calibration scale of σ in the form ``sigma`` on labels ``y``, given the members' normalised
    ``outputs`` (members × structures) and the first member's readout ``features``; the metrics of the
    calibrated σ; and the card's σ entries: ``interval95`` (:func:`interval_multiple`, where there is one),
    ``latent_range`` (the largest latent distance calibrated on) and ``spread_weight`` for ``latent+spread``. σ's entries and figures come from the structures
    ``with_sigma`` only (:func:`crystalprop.evaluation.evaluate.given_sigma`), the error figures from all;
    ``elemental``: which structures are of one element (the card's ``element_floor``), as predict combines them."""
    if not with_sigma.any():
        raise ValueError(f"none of the {len(y)} structures to calibrate σ on has only elements every member "
                         "trained on: σ cannot be calibrated on them")
    raw = combine(outputs, card.transform, one_element=elemental)
    raw_std, record = raw.std, {}
    if reference is not None:
        raw_std, distance = reference.sigma_and_distance(features)
        record["latent_range"] = float(distance[with_sigma].max())  # beyond it, no σ (ensemble_output)
        if sigma == "latent+spread":
            record["spread_weight"] = spread_weight(raw_std[with_sigma], raw.std[with_sigma])
            raw_std = raw_sigma(raw, raw_std, record["spread_weight"])
    y_known, value, raw_std = y[with_sigma], raw.value[with_sigma], raw_std[with_sigma]
    scale = calibration_scale(value - y_known, raw_std)
    interval = interval_multiple(value - y_known, raw_std * scale)
    record.update({"interval95": interval} if interval is not None else {})
    metrics = {**error_metrics(card, y, raw.value), **uncertainty_metrics(y_known, value, raw_std * scale, interval),
               **({"n_without_sigma": int((~with_sigma).sum())} if not with_sigma.all() else {})}
    if reference is not None and raw.std is not None:  # what the members' spread would have given, for the record
        metrics["spread_sigma_spearman"] = uncertainty_metrics(y_known, value, raw.std[with_sigma])["sigma_spearman"]
    return scale, metrics, record


def recalibrate_sigma(
    model: str | Path,
    output: str | Path,
    data: str | Path,
    *,
    sigma: str = "latent+spread",
    latent_prior: float | None = None,
    split: str = "val",
    batch_size: int = EVAL_BATCH_SIZE,
    id_column: str | None = None,
    structure_column: str | None = None,
    device: str = "CPU",
) -> dict:
    """Give a model whose σ comes from a latent reference σ in another form (``latent`` or
    ``latent+spread``; another ``latent_prior``, None keeping its own), calibrated again on ``split``
    of ``data``, and write it to ``output``: its networks, reference and values stay the same, so its
    member files are not needed (as :func:`join_ensemble` would). Returns the new σ's metrics."""
    from crystalprop.utils.backend import set_device  # noqa: PLC0415
    from crystalprop.model.checkpoint import check_new_checkpoint, read_checkpoint  # noqa: PLC0415
    from crystalprop.model.ensemble import save_with_card  # noqa: PLC0415
    from crystalprop.model.registry import resolve_model  # noqa: PLC0415

    if sigma not in ("latent", "latent+spread"):
        raise ValueError(f"only σ from a latent reference can be recalibrated: latent or latent+spread, not {sigma!r}")
    if latent_prior is not None and not (latent_prior >= 0 and math.isfinite(latent_prior)):
        raise ValueError(f"the latent prior is a share of the mean training error, 0 or more, not {latent_prior}")
    check_new_checkpoint(output)
    check_calibration_split(split)
    make_folder(Path(output).parent)
    set_device(device)
    _, path = resolve_model(model)
    card, params = read_checkpoint(path)
    reference = stored_reference(card, params, path)
    if reference is None:
        raise ValueError(f"{path}: its σ does not come from a latent reference (join its members with "
                         "crystalprop ensemble --sigma latent)")
    if sigma == "latent+spread" and card.ensemble["members"] < 2:
        raise ValueError(f"{path}: σ from latent+spread needs at least two members (it has one)")
    if latent_prior is not None:
        reference = replace(reference, prior=latent_prior)
    chosen = labelled_split(card, data, None, split, path, id_column, structure_column, anyway=CALIBRATE_ELSEWHERE)
    split, split_check, kept = chosen.split, chosen.note, chosen.kept
    y = np.array([e.target for e, _ in kept])
    graphs = [g for _, g in kept]
    outputs, features = network_outputs([(card, params, path)], readout=True)(graphs, batch_size)
    with_sigma = given_sigma(card, graphs)
    scale, metrics, weight = _calibrated(card, y, members_from_networks(card, outputs), features[0], reference, sigma,
                                         with_sigma, one_element(graphs))
    for key in ("spread_weight", "latent_prior", "interval95", "latent_range"):
        card.ensemble.pop(key, None)
    card.ensemble.update({"sigma_scale": scale, "sigma_from": sigma, **weight,
                          **({"latent_prior": reference.prior} if reference.prior else {}),
                          "calibrated_on": {"data": str(data), "split": split, "n": int(with_sigma.sum()),
                                            "split_check": split_check, **calibration_record(chosen, with_sigma)}})
    card.metrics = {**{k: v for k, v in (card.metrics or {}).items() if k != "n_without_sigma"}, **metrics}  # what else it records (an evaluation's data, cells) stays
    save_with_card(output, card, params)
    return {"output": str(output), "split": split, **_reported(card.ensemble), **metrics}


def _files_record(files: Sequence[tuple[str, Path]]) -> dict:
    """The card's record of a member's file (``file``, ``sha256``), or of a product member's files (``files``)."""
    records = [{"file": p.name, "sha256": cached_file_sha256(p)} for _, p in files]
    return records[0] if len(records) == 1 else {"files": [{"name": name, **r} for (name, _), r in zip(files, records)]}


def _latent_reference(first, path: Path, networks_of, data: str | Path, batch_size: int,
                      id_column: str | None, structure_column: str | None,
                      prior: float = 0.0) -> tuple[LatentReference, dict]:
    """The latent reference of the ensemble whose card is ``first`` (its first member's, ``path``),
    from ``networks_of`` (:func:`network_outputs` with readout): the first network's readout features
    and the ensemble's absolute errors on the structures of ``data``'s training split that the members
    trained on (all of it, unless ``--limit`` or other data trained them on part of it), and its record
    for the card."""
    kept = labelled_split(first, data, None, "train", path, id_column, structure_column).kept
    packed = recorded_split(first.training).get("trained_ids")
    if packed:
        trained = set(ids_in_packed([e.id for e, _ in kept], packed))
        kept = [(e, g) for e, g in kept if e.id in trained]
        if not kept:
            raise ValueError(f"{data}: none of its training structures is one the members trained on, so the "
                             "latent σ has no reference: join them on their own data")
    graphs = [g for _, g in kept]
    outputs, features = networks_of(graphs, batch_size)
    residuals = np.abs(combine(members_from_networks(first, outputs), first.transform, one_element=one_element(graphs))
                       .value - np.array([e.target for e, _ in kept]))
    reference = LatentReference.build(features[0], residuals, prior=prior)
    return reference, {"latent_neighbours": reference.neighbours, **({"latent_prior": prior} if prior else {}),
                       "latent_dimensions": int(reference.table.shape[1]),
                       "latent_reference": {"split": "train", "n": len(kept),
                                            "mae": float(residuals.mean())}}
