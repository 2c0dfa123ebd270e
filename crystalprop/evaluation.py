"""Evaluate a model on a labelled data set: metrics, per-structure table, plots."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from crystalprop.atomic import atomic_write_text, make_folder
from crystalprop.data.datasets import (
    Dataset, Entry, ids_in_packed, ids_sha256, is_random_split, load_dataset, merge_packed,
)
from crystalprop.data.graph_cache import build_graphs
from crystalprop.graph.settings import check_cell_choice
from crystalprop.metrics import coverage_curve, regression_metrics, uncertainty_metrics
from crystalprop.model import SIGMA_CHOICES
from crystalprop.model.ensemble import (
    calibration_scale, combine, ensemble_output, members_from_networks, raw_sigma, spread_weight,
)
from crystalprop.model.inference import member_outputs
from crystalprop.model.latent_sigma import LatentReference, stored_reference
from crystalprop.provenance import file_sha256, provenance, write_sidecar
from crystalprop.training.config import EVAL_BATCH_SIZE

ZERO_FRACTION_FOR_SPLIT_METRICS = 0.1  # e.g. band gaps: report metals and gapped apart
RESULT_FILES = ("predictions.csv", "metrics.json")  # an evaluation's results: a folder holding one is refused
EVALUATION_FILES = (*RESULT_FILES, "predictions.csv.meta.json", "parity.png", "error_histogram.png",
                    "calibration.png", "skipped.log")  # every file evaluate writes, removed by overwrite


def _output_folder(output_dir: str | Path, overwrite: bool) -> Path:
    """The results folder, made before the work; OutputExistsError where it holds an earlier
    evaluation's results and ``overwrite`` is not given."""
    from crystalprop.output import OutputExistsError  # noqa: PLC0415

    folder = Path(output_dir)
    earlier = [name for name in RESULT_FILES if (folder / name).exists()]
    if earlier and not overwrite:
        raise OutputExistsError(f"{folder} holds an earlier evaluation ({', '.join(earlier)}): "
                                "use --overwrite to replace it or choose another folder")
    return make_folder(folder)


def _remove_earlier(out: Path) -> None:
    """Remove the files an earlier evaluation wrote into ``out`` (and nothing else), so none is left stale."""
    for name in EVALUATION_FILES:
        (out / name).unlink(missing_ok=True)


def _plots(out: Path, y: np.ndarray, p: np.ndarray, label: str) -> list[str]:
    """Parity plot and error histogram as PNG."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y, p, s=4, alpha=0.5)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(f"MAE {np.mean(np.abs(p - y)):.4g}, n = {len(y)}")
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(p - y, bins=60)
    ax.set_xlabel(f"predicted - true {label}")
    ax.set_ylabel("structures")
    fig.tight_layout()
    fig.savefig(out / "error_histogram.png", dpi=120)
    plt.close(fig)
    return ["parity.png", "error_histogram.png"]


def _calibration_plot(out: Path, y: np.ndarray, p: np.ndarray, std: np.ndarray, label: str) -> str:
    """Expected against observed coverage of the central Gaussian intervals ± z·σ."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    expected, observed = coverage_curve(y, p, std)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(expected, observed, "o-", ms=3)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("expected coverage (Gaussian interval from σ)")
    ax.set_ylabel("observed coverage")
    ax.set_title(f"calibration of σ, {label}, n = {len(y)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=120)
    plt.close(fig)
    return "calibration.png"


def _split_record(training: dict) -> dict:
    """The record of how a checkpoint's run split its data (empty where unrecorded)."""
    return training.get("data", {}).get("split_record") or {}


def _split_settings(training: dict) -> dict:
    """The seed, fractions and cross-validation fold the checkpoint's run split its data with (defaults where unrecorded)."""
    record = _split_record(training)
    seed = record.get("seed", training.get("config", {}).get("seed", 0))
    fold = record.get("fold")
    return {"val_fraction": record.get("val_fraction", 0.1), "test_fraction": record.get("test_fraction", 0.0),
            "seed": seed, "fold": tuple(fold) if fold else None}


def check_unseen(entries: list[Entry], split: str, dataset: Dataset, training: dict, checkpoint: str | Path) -> str:
    """A note on how the split was checked against the training data; raise ValueError when a
    ``val`` or ``test`` figure would include structures the model was trained on, or when that
    cannot be told (a checkpoint without its training ids, on data without a fixed split)."""
    if split in ("all", "train"):
        return "not checked (split chosen deliberately)"
    record = _split_record(training)
    if record and "trained_ids" in record:
        trained = ids_in_packed([e.id for e in entries], record["trained_ids"])
        if trained:
            raise ValueError(
                f"{dataset.origin}: {len(trained)} of the {len(entries)} {split!r} structures were used to train "
                f"{checkpoint} (e.g. {trained[0]}): not a {split} figure; --split all evaluates them deliberately")
        same = record.get(f"{split}_ids_sha256") == ids_sha256([e.id for e in entries])
        positions = (f" (ids from row numbers: {dataset.positional_ids} records have none, so this compares positions "
                     "in the data, not crystals)") if dataset.positional_ids else ""
        return f"none trained on; {'the same' if same else 'not the'} {split} split as in training{positions}"
    recorded = str(training.get("data", {}).get("split", ""))
    if is_random_split(dataset.split_source) or is_random_split(recorded):
        raise ValueError(
            f"{checkpoint}: records no training ids and its split ({recorded or 'unknown'}) is not fixed by "
            f"{dataset.origin} (no split.json or split column): cannot tell {split} structures from training ones; "
            "--split all evaluates anyway")
    return f"not verified (checkpoint records no training ids); split from {dataset.split_source}"


def default_split(dataset: Dataset, training: dict) -> str:
    """The split ``evaluate`` takes when none is given: test if the data has one, else val, where
    the data fixes its split or is the model's own (its val split is the run's); on other data
    with no split of its own, every structure the model records it has not trained on."""
    split = "test" if any(e.split == "test" for e in dataset.entries) else "val"
    record = _split_record(training)
    own = record.get(f"{split}_ids_sha256") == ids_sha256([e.id for e in dataset.split(split)])
    if is_random_split(dataset.split_source) and not own and "trained_ids" in record:
        return "unseen"
    return split


def _unseen(dataset: Dataset, training: dict) -> tuple[list[Entry], str]:
    """The structures the model records it has not trained on, and a note on those left out."""
    record = _split_record(training)
    if "trained_ids" not in record:
        raise ValueError(f"{dataset.origin}: the model records no training ids, so its unseen structures "
                         "cannot be told; choose --split")
    trained = set(ids_in_packed([e.id for e in dataset.entries], record["trained_ids"]))
    entries = [e for e in dataset.entries if e.id not in trained]
    return entries, f"none trained on; {len(trained)} structures the model was trained on left out"


def _split_for(card, data, target, split, path, id_column, structure_column, settings=None):
    """The labelled structures of one split that the model is evaluated on, with their graphs
    (built with ``settings``, by default the model's), and every record left out with its reason."""
    dataset = load_dataset(data, target or card.target, id_column=id_column, structure_column=structure_column,
                           **_split_settings(card.training))
    split = split or default_split(dataset, card.training)
    if split == "unseen":
        entries, split_check = _unseen(dataset, card.training)
    else:
        entries = dataset.entries if split == "all" else dataset.split(split)
        split_check = check_unseen(entries, split, dataset, card.training, path) if entries else ""
    if not entries:
        raise ValueError(f"{data}: no structures in split {split!r}")
    graphs, errors = build_graphs(entries, settings or card.graph)
    kept = [(e, g) for e, g in zip(entries, graphs) if g is not None]
    skipped = list(dataset.skipped) + [(e.id, err) for e, err in zip(entries, errors) if err]
    return dataset, split, split_check, kept, skipped


def _network_outputs(checkpoints: Sequence[tuple[object, dict, Path]], readout: bool = False):
    """A function of graphs giving the normalised outputs (networks × graphs) of every network stored in the
    given (card, params, path) checkpoints, which share one architecture, in their order, and with
    ``readout`` their readout features (networks × graphs × F), else None. One stacked network runs
    them all, each distinct network once."""
    from crystalprop.model.ensemble import member_params  # noqa: PLC0415
    from crystalprop.model.stacked import stack_checkpoints  # noqa: PLC0415

    net, rows = stack_checkpoints(checkpoints[0][0].model,
                                  [(member_params(card, params), path) for card, params, path in checkpoints],
                                  readout=readout)
    order = [k for indices in rows for k in indices]
    order = None if order == list(range(net.members)) else order  # no copy where every network is distinct

    def run(graphs: list, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        outputs, features = member_outputs(net, graphs, batch_size)
        if order is None:
            return outputs, features
        return outputs[order], None if features is None else features[order]

    return run


def _error_metrics(card, y: np.ndarray, pred: np.ndarray) -> dict:
    metrics = regression_metrics(y, pred)
    positive = y > 0  # a label <= 0 has no log10: left out of the log10 metrics, and counted
    if card.transform.log10 and positive.any():
        metrics.update({f"log10_{k}": v for k, v in
                        regression_metrics(np.log10(y[positive]), np.log10(pred[positive])).items() if k != "n"})
    if card.transform.log10 and not positive.all():
        metrics["log10_n_excluded"] = int((~positive).sum())
    zero = y == 0
    if zero.mean() >= ZERO_FRACTION_FOR_SPLIT_METRICS and not zero.all():
        metrics["mae_zero_targets"] = float(np.mean(np.abs(pred[zero] - y[zero])))
        metrics["mae_nonzero_targets"] = float(np.mean(np.abs(pred[~zero] - y[~zero])))
        metrics["n_zero_targets"] = int(zero.sum())
    return metrics


def _undefined_as_null(result: dict) -> dict:
    """``result`` with undefined (NaN) metrics as None, so that metrics.json stays standard JSON."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in result.items()}


def evaluate_model(
    model: str | Path,
    data: str | Path,
    *,
    target: str | None = None,
    split: str | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    id_column: str | None = None,
    structure_column: str | None = None,
    device: str = "CPU",
    cell: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Metrics of ``model`` on one split (default: test if the data has one, else val); for an
    ensemble also how well its σ tells the size of its errors.

    ``cell``: ``canonical`` or ``as-given`` instead of the model's own cell setting.
    ``output_dir`` holding an earlier evaluation (predictions.csv or metrics.json) is refused with
    :class:`crystalprop.output.OutputExistsError` unless ``overwrite``, which removes that
    evaluation's files (:data:`EVALUATION_FILES`, nothing else) before the new ones are written.
    """
    from crystalprop.backend import set_device  # noqa: PLC0415
    from crystalprop.model.checkpoint import read_checkpoint  # noqa: PLC0415
    from crystalprop.registry import resolve_model  # noqa: PLC0415

    out = _output_folder(output_dir, overwrite) if output_dir else None  # before the work, not after it
    set_device(device)
    label, path = resolve_model(model)
    card, params = read_checkpoint(path)
    settings = card.graph if cell is None else replace(card.graph, cell=cell)
    dataset, split, split_check, kept, skipped = _split_for(card, data, target, split, path, id_column,
                                                            structure_column, settings)
    n_failed = len(skipped) - len(dataset.skipped)
    y = np.array([e.target for e, _ in kept])
    reference = stored_reference(card, params, path)
    outputs, features = _network_outputs([(card, params, path)], readout=reference is not None)(
        [g for _, g in kept], batch_size)
    combined = ensemble_output(card, outputs, features[0] if reference else None, reference)
    pred, std = combined.value, combined.std
    metrics = _error_metrics(card, y, pred)
    if std is not None:
        metrics.update(uncertainty_metrics(y, pred, std))
    result = {"model": label, "checkpoint": str(path), "data": str(data), "target": dataset.target,
              "unit": card.unit, "split": split, "cell": settings.cell, "split_check": split_check,
              "n_failed": n_failed, **metrics, "n_skipped": len(skipped), "skipped": skipped}
    result["provenance"] = provenance([(label, path)], cell=settings.cell, device=device)
    if out is not None:
        if overwrite:
            _remove_earlier(out)
        with open(out / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "true", "predicted", "error"] + (["std"] if std is not None else []))
            for k, ((entry, _), t, p) in enumerate(zip(kept, y, pred)):
                writer.writerow([entry.id, f"{t:.6g}", f"{p:.6g}", f"{p - t:.6g}"]
                                + ([f"{std[k]:.6g}"] if std is not None else []))
        write_sidecar(out / "predictions.csv", result["provenance"])
        label_text = f"{dataset.target} ({card.unit})"
        result["files"] = ["predictions.csv", "predictions.csv.meta.json", "metrics.json"] + _plots(out, y, pred, label_text)
        if skipped:
            atomic_write_text(out / "skipped.log", "".join(f"{rid}\t{reason}\n" for rid, reason in skipped))
            result["files"].append("skipped.log")
        if std is not None:
            result["files"].append(_calibration_plot(out, y, pred, std, label_text))
        recorded = {k: v for k, v in result.items() if k != "skipped"}  # the list is in skipped.log
        atomic_write_text(out / "metrics.json", json.dumps(_undefined_as_null(recorded), indent=2, allow_nan=False))
    return result


def _merge_trained_ids(first, others) -> None:
    """Record in ``first`` the structures any member trained on, so that evaluating the ensemble
    refuses every one of them as validation or test, not only the first member's."""
    record = _split_record(first.training)
    if not record or "trained_ids" not in record:
        return
    packed = [_split_record(c.training).get("trained_ids") for c in others]
    record["trained_ids"] = merge_packed(record["trained_ids"], *(p for p in packed if p))


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
    """
    from crystalprop.backend import set_device  # noqa: PLC0415
    from crystalprop.model.checkpoint import read_checkpoint, save_ensemble  # noqa: PLC0415
    from crystalprop.model.ensemble import (  # noqa: PLC0415
        check_compatible, check_factor, check_product_units, member_params, product_combination,
    )
    from crystalprop.registry import resolve_model  # noqa: PLC0415

    if sigma not in SIGMA_CHOICES:
        raise ValueError(f"sigma must be one of {', '.join(SIGMA_CHOICES)}, not {sigma!r}")
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
    make_folder(Path(output).parent)  # before the work, not after it
    set_device(device)
    resolved = [resolve_model(m) for m in members]
    factor_models = [[resolve_model(f) for f in factors] for factors in products]
    paths = [path for _, path in resolved]
    given = [Path(p).resolve() for p in paths] + [tuple(Path(p).resolve() for _, p in f) for f in factor_models]
    twice = next((g for k, g in enumerate(given) if g in given[:k]), None)
    if twice is not None:
        raise ValueError(f"{' × '.join(map(str, twice)) if isinstance(twice, tuple) else twice}: "
                         "given twice as a member")
    models = list(dict.fromkeys(paths + [path for factors in factor_models for _, path in factors]))
    loaded = {path: read_checkpoint(path) for path in models}  # each model read once
    cards = [loaded[path][0] for path in models]
    if cell is not None:
        check_cell_choice(cell)
        for card in cards:
            card.graph = replace(card.graph, cell=cell)
    check_compatible([loaded[p][0] for p in paths], paths)
    first = loaded[paths[0]][0]
    for path in models[len(set(paths)):]:
        check_factor(loaded[path][0], first, path, paths[0])
    _, split, split_check, kept, _ = _split_for(first, data, None, split, paths[0], id_column, structure_column)
    datasets: dict[str, Dataset] = {}  # one read of the data per distinct split setting
    for card, path in zip(cards[1:], models[1:]):
        settings = _split_settings(card.training)
        key = json.dumps(settings, sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(data, first.target, id_column=id_column, structure_column=structure_column,
                                         **settings)
        check_unseen([e for e, _ in kept], split, datasets[key], card.training, path)
    networks = {path: member_params(card, params) for path, (card, params) in loaded.items()}
    member_names = [name for name, _ in resolved] + [" × ".join(name for name, _ in f) for f in factor_models]
    combination, transforms = product_combination(
        first.transform, [[loaded[p][0].transform] * len(networks[p]) for p in models],
        [[models.index(p)] for p in paths] + [[models.index(p) for _, p in f] for f in factor_models],
        member_names)
    for factors in factor_models:  # after the log10 check: units multiply only as log10 values add
        check_product_units(first.unit, [(loaded[path][0].unit, path) for _, path in factors])
    checkpoints = [(loaded[p][0], loaded[p][1], p) for p in models]
    networks_of = _network_outputs(checkpoints, readout=latent)
    first.ensemble = {"members": len(transforms)}  # after the network: until then ``first`` is one model
    if products:
        first.ensemble.update({"combination": combination, "network_transforms": [asdict(t) for t in transforms]})
    reference, reference_record = None, {}
    if latent:
        reference, reference_record = _latent_reference(first, paths[0], networks_of, data, batch_size, id_column,
                                                        structure_column, latent_prior)
    graphs = [g for _, g in kept]
    y = np.array([e.target for e, _ in kept])
    outputs, features = networks_of(graphs, batch_size)
    outputs = members_from_networks(first, outputs)
    scale, metrics, weight = _calibrated(first, y, outputs, features[0] if reference else None, reference, sigma)
    reference_record.update(weight)
    member_maes = [float(np.mean(np.abs(first.transform.physical(z) - y))) for z in outputs]
    files = [[(name, p)] for name, p in resolved] + factor_models
    first.ensemble.update({
        "sigma_scale": scale, "sigma_from": sigma, **reference_record,
        "calibrated_on": {"data": str(data), "split": split, "n": int(len(y)), "split_check": split_check},
        "member_files": [{"name": name, **_files_record(f), f"{split}_mae": mae}
                         for name, f, mae in zip(member_names, files, member_maes)],
    })
    first.metrics = metrics
    if all(c.elements for c in cards):  # warn for an element any model has not seen; in the first one's order
        first.elements = [e for e in first.elements if all(e in c.elements for c in cards[1:])]
    _merge_trained_ids(first, cards[1:])
    save_ensemble(output, first, [params for p in models for params in networks[p]],
                  reference.arrays() if reference else None)
    return {"output": str(output), "split": split, "member_maes": member_maes, **first.ensemble, **metrics}


def _calibrated(card, y: np.ndarray, outputs: np.ndarray, features: np.ndarray | None,
                reference: LatentReference | None, sigma: str) -> tuple[float, dict, dict]:
    """The calibration scale of σ in the form ``sigma`` on labels ``y``, given the members' normalised
    ``outputs`` (members × structures) and the first member's readout ``features``; the metrics of the
    calibrated σ; and ``{"spread_weight": w}`` for ``latent+spread`` (else empty)."""
    raw = combine(outputs, card.transform)
    raw_std, record = raw.std, {}
    if reference is not None:
        raw_std = reference.raw_sigma(features)
        if sigma == "latent+spread":
            record["spread_weight"] = spread_weight(raw_std, raw.std)
            raw_std = raw_sigma(raw, raw_std, record["spread_weight"])
    scale = calibration_scale(raw.value - y, raw_std)
    metrics = {**_error_metrics(card, y, raw.value), **uncertainty_metrics(y, raw.value, raw_std * scale)}
    if reference is not None and raw.std is not None:  # what the members' spread would have given, for the record
        metrics["spread_sigma_spearman"] = uncertainty_metrics(y, raw.value, raw.std)["sigma_spearman"]
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
    from crystalprop.backend import set_device  # noqa: PLC0415
    from crystalprop.model.checkpoint import read_checkpoint, save_ensemble  # noqa: PLC0415
    from crystalprop.model.ensemble import member_params  # noqa: PLC0415
    from crystalprop.registry import resolve_model  # noqa: PLC0415

    if sigma not in ("latent", "latent+spread"):
        raise ValueError(f"only σ from a latent reference can be recalibrated: latent or latent+spread, not {sigma!r}")
    if latent_prior is not None and not (latent_prior >= 0 and math.isfinite(latent_prior)):
        raise ValueError(f"the latent prior is a share of the mean training error, 0 or more, not {latent_prior}")
    make_folder(Path(output).parent)
    set_device(device)
    _, path = resolve_model(model)
    card, params = read_checkpoint(path)
    reference = stored_reference(card, params, path)
    if reference is None:
        raise ValueError(f"{path}: its σ does not come from a latent reference (join its members with "
                         "crystalprop ensemble --sigma latent)")
    networks = member_params(card, params)
    if sigma == "latent+spread" and card.ensemble["members"] < 2:
        raise ValueError(f"{path}: σ from latent+spread needs at least two members (it has one)")
    if latent_prior is not None:
        reference = replace(reference, prior=latent_prior)
    _, split, split_check, kept, _ = _split_for(card, data, None, split, path, id_column, structure_column)
    y = np.array([e.target for e, _ in kept])
    outputs, features = _network_outputs([(card, params, path)], readout=True)([g for _, g in kept], batch_size)
    scale, metrics, weight = _calibrated(card, y, members_from_networks(card, outputs), features[0], reference, sigma)
    for key in ("spread_weight", "latent_prior"):
        card.ensemble.pop(key, None)
    card.ensemble.update({"sigma_scale": scale, "sigma_from": sigma, **weight,
                          **({"latent_prior": reference.prior} if reference.prior else {}),
                          "calibrated_on": {"data": str(data), "split": split, "n": int(len(y)),
                                            "split_check": split_check}})
    card.metrics = {**(card.metrics or {}), **metrics}  # what else it records (an evaluation's data, cells) stays
    save_ensemble(output, card, networks, reference.arrays())
    return {"output": str(output), "split": split, **card.ensemble, **metrics}


def _files_record(files: Sequence[tuple[str, Path]]) -> dict:
    """The card's record of a member's file (``file``, ``sha256``), or of a product member's files (``files``)."""
    records = [{"file": p.name, "sha256": file_sha256(p)} for _, p in files]
    return records[0] if len(records) == 1 else {"files": [{"name": name, **r} for (name, _), r in zip(files, records)]}


def _latent_reference(first, path: Path, networks_of, data: str | Path, batch_size: int,
                      id_column: str | None, structure_column: str | None,
                      prior: float = 0.0) -> tuple[LatentReference, dict]:
    """The latent reference of the ensemble whose card is ``first`` (its first member's, ``path``),
    from ``networks_of`` (:func:`_network_outputs` with readout): the first network's readout features
    and the ensemble's absolute errors on the training split of ``data``, and its record for the card."""
    _, _, _, kept, _ = _split_for(first, data, None, "train", path, id_column, structure_column)
    outputs, features = networks_of([g for _, g in kept], batch_size)
    residuals = np.abs(combine(members_from_networks(first, outputs), first.transform).value
                       - np.array([e.target for e, _ in kept]))
    reference = LatentReference.build(features[0], residuals, prior=prior)
    return reference, {"latent_neighbours": reference.neighbours, **({"latent_prior": prior} if prior else {}),
                       "latent_dimensions": int(reference.table.shape[1]),
                       "latent_reference": {"split": "train", "n": len(kept),
                                            "mae": float(residuals.mean())}}
