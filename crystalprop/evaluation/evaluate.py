"""Evaluate a model on a labelled data set: metrics, per-structure table, plots; and the labelled split
and network outputs that joining ensemble members (:mod:`crystalprop.evaluation.joining`) shares."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from crystalprop.utils.atomic import atomic_write_text, make_folder
from crystalprop.utils.checks import check_whole_number
from crystalprop.data import limited_val
from crystalprop.data.datasets import (
    SPLITS, Dataset, Entry, assign_fold, ids_in_packed, ids_sha256, is_random_split, load_dataset, pack_ids,
)
from crystalprop.data.fingerprints import VOLUME_TOLERANCE, like_packed, pack_fingerprints
from crystalprop.data.graph_cache import build_graphs
from crystalprop.graph.elements import absent_elements
from crystalprop.evaluation.metrics import coverage_curve, regression_metrics, uncertainty_metrics
from crystalprop.model.ensemble import ensemble_output, member_params, one_element
from crystalprop.model.inference import member_outputs
from crystalprop.model.latent_sigma import stored_reference
from crystalprop.io.provenance import provenance, write_sidecar
from crystalprop.graph.settings import EVAL_BATCH_SIZE

ZERO_FRACTION_FOR_SPLIT_METRICS = 0.1  # e.g. band gaps: report metals and gapped apart
RESULT_FILES = ("predictions.csv", "metrics.json")  # an evaluation's results: a folder holding one is refused
EVALUATION_FILES = (*RESULT_FILES, "predictions.csv.meta.json", "parity.png", "error_histogram.png",
                    "calibration.png", "skipped.log")  # every file evaluate writes, removed by overwrite


def _output_folder(output_dir: str | Path, overwrite: bool) -> Path:
    """The results folder, made before the work; OutputExistsError where it holds an earlier
    evaluation's results and ``overwrite`` is not given."""
    from crystalprop.utils.atomic import OutputExistsError  # noqa: PLC0415

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


def recorded_split(training: dict) -> dict:
    """The record of how a checkpoint's run split its data (empty where unrecorded)."""
    return training.get("data", {}).get("split_record") or {}


def split_settings(training: dict) -> dict:
    """The seed, fractions and cross-validation fold the checkpoint's run split its data with (defaults where unrecorded)."""
    record = recorded_split(training)
    seed = record.get("seed", training.get("config", {}).get("seed", 0))
    fold = record.get("fold")
    return {"val_fraction": record.get("val_fraction", 0.1), "test_fraction": record.get("test_fraction", 0.0),
            "seed": seed, "fold": tuple(fold) if fold else None}


def split_dataset(data: str | Path, target: str, training: dict, id_column: str | None,
                  structure_column: str | None) -> tuple[Dataset, tuple[int, int] | None, str]:
    """``data`` split as the model's run split its own: with its seed and fractions where the data has
    no split of its own, and with its cross-validation fold where the data has none or is the very data
    it was trained on (every split holds the ids its record gives); a fold is one of the model's own
    data, so other data with a split of its own (split.json, a split column) keeps that split. Also the
    fold applied (None where none was) and a note where a recorded fold was not ("" where none was left aside)."""
    settings = split_settings(training)
    fold = settings.pop("fold")
    dataset = load_dataset(data, target, id_column=id_column, structure_column=structure_column, **settings)
    if fold is None:
        return dataset, None, ""
    own, source = [e.split for e in dataset.entries], dataset.split_source
    assign_fold(dataset, fold)
    if is_random_split(source) or _holds_recorded_splits(dataset, recorded_split(training)):
        return dataset, fold, ""
    for entry, split in zip(dataset.entries, own):
        entry.split = split
    dataset.split_source = source
    return dataset, None, (f"the model's fold {fold[0]}/{fold[1]} is one of the data it was trained on, not of "
                     f"{dataset.origin}, whose own split was used ({source})")


def _holds_recorded_splits(dataset: Dataset, record: dict) -> bool:
    """Whether every split of ``dataset`` holds the ids the record's digests give (a digest not recorded
    is not held against it): the data is the one the model's run split so."""
    return all(record.get(f"{name}_ids_sha256") in (None, ids_sha256([e.id for e in dataset.split(name)]))
               for name in SPLITS)


POSITIONAL_ID = re.compile(r"row\d+")
"""The id a record without one is named by (its position in the data, :mod:`crystalprop.data.datasets`)."""


def _positional(ids: list[str], dataset: Dataset) -> set[str]:
    """Those of ``ids`` made from row numbers, where ``dataset`` has records without an id: a position in
    the data says nothing of which crystal it holds, so such an id matching a training one is no evidence
    of training on it (the structures' fingerprints are, :func:`_look_alikes`)."""
    return {i for i in ids if POSITIONAL_ID.fullmatch(i)} if dataset.positional_ids else set()


def _recorded(ids: list[str], dataset: Dataset, packed: str | None) -> list[str]:
    """Those of ``ids`` that the ``packed`` record (training or calibration ids) holds, in their order; ids
    made from row numbers (:func:`_positional`) are never taken as recorded, and none are where nothing is."""
    if not packed:
        return []
    positional = _positional(ids, dataset)
    return ids_in_packed([i for i in ids if i not in positional], packed)


def _positional_note(n: int, record: dict) -> str:
    """What the note says of ``n`` ids made from row numbers that were not checked against the training ids."""
    structures = ("their structures were compared with the training ones instead" if record.get("trained_structures")
                  else "and the model records no training structures to compare them with: not checked")
    return (f"{n} id{'s' if n != 1 else ''} made from row numbers (records without an id) not checked against "
            f"the training ids, as a position in the data says nothing of the crystal there; {structures}")


EVALUATE_ANYWAY = "--split all evaluates them anyway"
CALIBRATE_ELSEWHERE = "σ is calibrated on structures no member trained on only: choose val, test or unseen"


def check_unseen(entries: list[Entry], split: str, dataset: Dataset, training: dict, checkpoint: str | Path,
                 anyway: str = EVALUATE_ANYWAY) -> str:
    """A note on how the split was checked against the training data; raise ValueError when a
    ``val`` or ``test`` figure would include structures the model was trained on, or when that
    cannot be told (a checkpoint without its training ids, on data without a fixed split); ``anyway``
    ends the refusal with the way on (evaluate's ``--split all``; joining has none)."""
    if split in ("all", "train"):
        return "not checked (split chosen deliberately)"
    record = recorded_split(training)
    if record and "trained_ids" in record:
        ids = [e.id for e in entries]
        positional = _positional(ids, dataset)
        trained = _recorded(ids, dataset, record["trained_ids"])
        if trained:
            raise ValueError(
                f"{dataset.origin}: {len(trained)} of the {len(entries)} {split!r} structures were used to train "
                f"{checkpoint} (e.g. {trained[0]}): not a {split} figure; {anyway}")
        same = record.get(f"{split}_ids_sha256") == ids_sha256(ids)
        note = f"none trained on; {'the same' if same else 'not the'} {split} split as in training"
        if not same and is_random_split(dataset.split_source):  # nothing the user chose: say what it is
            note += (f"; this data has no split of its own, so its {split} split is drawn here at "
                     f"{dataset.split_source} (--split unseen scores every structure not trained on)")
        if same and split == "val" and record.get("limit"):  # its epochs may have been chosen on a part of it
            kept = record.get("limit_val", min(limited_val(record["limit"]), len(ids)))  # recorded since session 42
            if kept < len(ids):
                note += (f" (its --limit {record['limit']} validated on the first {kept} of them, so these figures "
                         "are not the ones its training printed)")
        return f"{note}; {_positional_note(len(positional), record)}" if positional else note
    recorded = str(training.get("data", {}).get("split", ""))
    if is_random_split(dataset.split_source) or is_random_split(recorded):
        raise ValueError(
            f"{checkpoint}: records no training ids and its split ({recorded or 'unknown'}) is not fixed by "
            f"{dataset.origin} (no split.json or split column): cannot tell {split} structures from training ones; "
            f"{anyway}")
    return f"not verified (checkpoint records no training ids); split from {dataset.split_source}"


def default_split(dataset: Dataset, training: dict) -> str:
    """The split ``evaluate`` takes when none is given: test if the data has one, else val, where
    the data fixes its split or is the model's own (its val split is the run's); on other data
    with no split of its own, every structure the model records it has not trained on."""
    split = "test" if any(e.split == "test" for e in dataset.entries) else "val"
    record = recorded_split(training)
    own = record.get(f"{split}_ids_sha256") == ids_sha256([e.id for e in dataset.split(split)])
    if is_random_split(dataset.split_source) and not own and "trained_ids" in record:
        return "unseen"
    return split


def _unseen(dataset: Dataset, training: dict) -> tuple[list[Entry], str]:
    """The structures the model records it has not trained on, and a note on those left out."""
    record = recorded_split(training)
    if "trained_ids" not in record:
        raise ValueError(f"{dataset.origin}: the model records no training ids, so its unseen structures "
                         "cannot be told; choose --split")
    ids = [e.id for e in dataset.entries]
    positional = _positional(ids, dataset)
    trained = set(_recorded(ids, dataset, record["trained_ids"]))
    entries = [e for e in dataset.entries if e.id not in trained]
    note = (f"none trained on; {len(trained)} structures the model was trained on left out"
            if trained or not positional else "none trained on by id")
    return entries, f"{note}; {_positional_note(len(positional), record)}" if positional else note


def _placed_splits(dataset: Dataset, fold: tuple[int, int] | None) -> Callable[[str], frozenset[str]]:
    """A function of a skipped record's id giving the splits it may belong to: the one split.json or the
    split column names (``Dataset.skipped_splits``); train or val alike where a cross-validation ``fold``
    split them, and every split where the split is random: both deal out the usable records only."""
    if dataset.skipped_splits is None:
        return lambda rid: frozenset(SPLITS)
    named = dataset.skipped_splits.get

    def placed(rid: str) -> frozenset[str]:
        split = named(rid)
        if split is None:
            return frozenset(SPLITS)
        return frozenset({"train", "val"}) if fold and split != "test" else frozenset({split})

    return placed


def _sorted_skipped(dataset: Dataset, split: str, fold: tuple[int, int] | None,
                    training: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str, str | None]]]:
    """The data set's unusable records sorted by ``split``: (id, reason) of those that belong to it, and
    (id, reason, where) of the others, ``where`` naming what they belong to instead (another split, or
    the training structures for ``unseen``), None where their split cannot be told."""
    placed = _placed_splits(dataset, fold)
    packed = recorded_split(training).get("trained_ids") if split == "unseen" else None
    trained = set(_recorded([rid for rid, _ in dataset.skipped], dataset, packed))
    mine, others = [], []
    for rid, reason in dataset.skipped:
        if split == "all" or (split == "unseen" and rid not in trained):
            mine.append((rid, reason))
        elif split == "unseen":
            others.append((rid, reason, "trained on, not in the unseen split"))
        elif (possible := placed(rid)) == {split}:
            mine.append((rid, reason))
        else:
            others.append((rid, reason, None if split in possible else
                           f"{' or '.join(sorted(possible))} split, not evaluated"))
    return mine, others


class LabelledSplit(NamedTuple):
    """The labelled structures of one split, as evaluating or joining uses them."""

    dataset: Dataset
    split: str  # the split's name (the data's default where none was asked for)
    note: str  # what was checked and left out, for the report
    kept: list  # (entry, graph) of every usable structure
    skipped: list  # (id, reason) of every record of the split that could not be used
    alike: list[bool] | None  # per kept structure: looks like a training crystal (None where not asked)
    unusable: list  # (id, reason, where) of the data set's other unusable records (where: None if unknown)


def _what_it_holds(dataset: Dataset, split: str, anyway: str) -> str:
    """Why a split is empty, and which to choose instead: the data's splits and their sizes."""
    if split == "unseen":
        return f"the model was trained on all {len(dataset.entries)}; {anyway}"
    sizes = {name: len(dataset.split(name)) for name in SPLITS}
    held = ", ".join(f"{name} {n}" for name, n in sizes.items() if n) or "none"
    return f"the data holds {held}; " + ("choose one with --split, or --split all" if anyway == EVALUATE_ANYWAY
                                         else anyway)


def labelled_split(card, data, target, split, path, id_column, structure_column, settings=None,
                   anyway: str = EVALUATE_ANYWAY) -> LabelledSplit:
    """The labelled structures of one split that the model is evaluated on, with their graphs
    (built with ``settings``, by default the model's), and every record that could not be used, with
    its reason (training look-alikes left out of ``unseen`` are counted in the split's note instead),
    apart from the data set's other unusable records: those of other splits, and those whose split
    cannot be told (:func:`_sorted_skipped`). ``anyway``: the way on that refusals name (:func:`check_unseen`)."""
    dataset, fold, fold_note = split_dataset(data, target or card.target, card.training, id_column, structure_column)
    split = split or default_split(dataset, card.training)
    if split not in (*SPLITS, "all", "unseen"):
        raise ValueError(f"--split {split!r}: choose one of {', '.join((*SPLITS, 'all', 'unseen'))}")
    if split == "unseen":
        entries, split_check = _unseen(dataset, card.training)
    else:
        entries = dataset.entries if split == "all" else dataset.split(split)
        split_check = check_unseen(entries, split, dataset, card.training, path, anyway) if entries else ""
    if not entries:
        raise ValueError(f"{data}: no structures in split {split!r} ({_what_it_holds(dataset, split, anyway)})")
    graphs, errors = build_graphs(entries, settings or card.graph)
    kept = [(e, g) for e, g in zip(entries, graphs) if g is not None]
    skipped, unusable = _sorted_skipped(dataset, split, fold, card.training)
    skipped += [(e.id, err) for e, err in zip(entries, errors) if err]
    kept, split_check, alike = _look_alikes(kept, split, split_check, card.training)
    split_check = "; ".join(note for note in (split_check, fold_note) if note)
    if not kept:
        if any(g is not None for g in graphs):
            why = f"every one looks like a training crystal under another id ({split_check}); {anyway}"
        else:
            why = f"none could be used (e.g. {skipped[-1][0]}: {skipped[-1][1]})"
        raise ValueError(f"{data}: {len(entries)} structures in split {split!r}, but {why}")
    return LabelledSplit(dataset, split, split_check, kept, skipped, alike, unusable)


def _look_alikes(kept: list, split: str, note: str, training: dict) -> tuple[list, str, list[bool] | None]:
    """The structures that look like training crystals under other ids (:mod:`crystalprop.data.fingerprints`):
    left out of ``unseen``, counted in the note of any other split chosen as unseen (val, test); the
    structures kept, the note and, for a split that keeps them, which of them look alike (None where
    the question is not asked: ``all``, ``train``, ``unseen`` or a model without the records)."""
    packed = recorded_split(training).get("trained_structures")
    if split in ("all", "train") or not packed or not kept:
        return kept, note, None
    alike = like_packed([g for _, g in kept], packed)
    n = sum(alike)
    what = (f"look like training crystals under other ids (the same reduced formula, volume per atom within "
            f"{100 * VOLUME_TOLERANCE:g} %)")
    if split == "unseen":
        unlike = [k for k, a in zip(kept, alike) if not a]
        return unlike, (f"{note}; {n} more that {what} left out" if n else note), None
    return kept, (f"{note}; {n} of the {len(kept)} {what}" if n else note), alike


def network_outputs(checkpoints: Sequence[tuple[object, dict, Path]], readout: bool = False):
    """A function of graphs giving the normalised outputs (networks × graphs) of every network stored in the
    given (card, params, path) checkpoints, which share one architecture, in their order, and with
    ``readout`` their readout features (networks × graphs × F), else None. One stacked network runs
    them all, each distinct network once."""
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


def joined_model_score(path: str | Path, entries: list[Entry], batch_size: int = EVAL_BATCH_SIZE,
                       workers: int | None = None) -> tuple[float, int] | None:
    """The score of the model in ``path`` on the labelled ``entries`` as ``evaluate`` gives it (its MAE, of log10 for a
    log10 target) and its number of networks, where it joins more than one (a warm start takes the first network
    only, whose score differs); None for one network."""
    from crystalprop.model.checkpoint import read_checkpoint  # noqa: PLC0415

    card, params = read_checkpoint(path)
    networks = len(member_params(card, params))
    if networks < 2:
        return None
    graphs, _ = build_graphs(entries, card.graph, workers=workers)  # ``workers``: the run's graph workers
    kept = [(e, g) for e, g in zip(entries, graphs) if g is not None]
    outputs, _ = network_outputs([(card, params, Path(path))])([g for _, g in kept], batch_size)
    value = ensemble_output(card, outputs, one_element=one_element([g for _, g in kept])).value
    metrics = error_metrics(card, np.array([e.target for e, _ in kept]), value)
    return metrics["log10_mae" if card.transform.log10 else "mae"], networks


def error_metrics(card, y: np.ndarray, pred: np.ndarray) -> dict:
    metrics = regression_metrics(y, pred)
    positive = y > 0  # a label <= 0 has no log10: left out of the log10 metrics, and counted
    if card.transform.log10 and positive.any():
        metrics["log10_unit"] = f"log10({card.unit})" if card.unit else "log10"
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


def _unusable_counts(unusable: list[tuple[str, str, str | None]]) -> dict[str, int]:
    """metrics.json's counts of the unusable records outside the split's ``n_skipped``: those known to be
    of other splits, and those whose split cannot be told (each only where there are any)."""
    unknown = sum(where is None for _, _, where in unusable)
    return {**({"n_unusable_other_splits": len(unusable) - unknown} if len(unusable) > unknown else {}),
            **({"n_unusable_split_unknown": unknown} if unknown else {})}


def calibration_record(chosen: LabelledSplit, with_sigma: np.ndarray) -> dict[str, str]:
    """The record of which structures σ is calibrated on (those of ``chosen`` with a σ), so that ``evaluate``
    can tell which of its coverages are in-sample: their ids, packed as the training ids are (ids made from
    row numbers say nothing of the crystal and are left out), and their fingerprints (reduced formula, volume
    per atom: :mod:`crystalprop.data.fingerprints`), which find them under other ids or none."""
    kept = [(e, g) for (e, g), given in zip(chosen.kept, with_sigma, strict=True) if given]
    positional = _positional([e.id for e, _ in kept], chosen.dataset)
    return {"ids": pack_ids([e.id for e, _ in kept if e.id not in positional]),
            "structures": pack_fingerprints([g for _, g in kept])}


def _share(hits: np.ndarray) -> str:
    """A fraction as a percentage, or as a count where it is of fewer than 10."""
    return f"{hits.mean():.1%}" if hits.size >= 10 else f"{int(hits.sum())} of {hits.size}"


def _alike(graphs: list, packed: str | None) -> np.ndarray:
    """Which of ``graphs`` look like a structure of the packed fingerprints (none where there are none)."""
    return np.array(like_packed(graphs, packed), bool) if packed else np.zeros(len(graphs), bool)


def _calibration_note(calibrated: dict, kept: list, dataset: Dataset, y: np.ndarray, pred: np.ndarray,
                      std: np.ndarray, interval95: float | None, trained: dict,
                      like_training: list[bool] | None = None, differs: str | None = None) -> tuple[str | None, dict]:
    """What ``evaluate`` says of the structures σ was calibrated on (``calibrated``, the card's record)
    among those it scored (``kept``: (entry, graph), with their values; σ NaN where none is given): a note
    (None where none of them is or looks like one) and their count, where the record names them; otherwise
    the split it names. Those under other ids (or none) are found by their fingerprints, as training
    crystals are; the coverages on the others leave out those trained on (``trained``, the card's split record:
    by id, or by fingerprint where it records them; ``like_training``: which of ``kept`` look like training
    crystals where ``labelled_split`` has told already; ``differs``: how these labels or cells differ from those σ
    was calibrated with, where they do or may, so that coverages on the same structures are not called in-sample:
    :func:`_unlike_calibration`'s verdict)."""
    data = calibrated.get("data")
    relative = "" if data is None or Path(str(data)).is_absolute() else "; a path on the machine where it was calibrated"
    where = (f"σ was calibrated on the {calibrated.get('split')} split of {data or 'its data'} "
             f"({calibrated.get('n')} structures{relative})")
    coverages = "within σ, 2σ" + (" and the 95 % interval" if interval95 else "")
    verdict = "are in-sample" if differs is None else differs
    if "ids" not in calibrated:  # recorded before the ids were: say where, let the user judge
        return f"{where}: on those structures the coverages ({coverages}) {verdict}", {}
    ids = [e.id for e, _ in kept]
    given = ~np.isnan(std)
    graphs = [g for _, g in kept]
    inside = set(_recorded(ids, dataset, calibrated["ids"]))
    trained_ids = set(_recorded(ids, dataset, trained.get("trained_ids")))
    like_trained = (np.array(like_training, bool) if like_training is not None
                    else _alike(graphs, trained.get("trained_structures")))
    used = np.array([i in inside for i in ids], bool) & given
    seen = np.array([i in trained_ids for i in ids], bool) & given & ~used  # a training crystal under its own id
    alike = _alike(graphs, calibrated.get("structures")) & given & ~used & ~seen
    seen |= like_trained & given & ~used & ~alike
    others = given & ~used & ~alike & ~seen
    n, total = int(used.sum()), int(given.sum())
    counted = {"n_sigma_calibration": n, **({"n_like_sigma_calibration": int(alike.sum())} if alike.any() else {})}
    if not n and not alike.any():
        return None, counted
    if n == total:
        return f"{where}: all {n} structures with a σ here are among them, so their coverages ({coverages}) " \
               f"{verdict}", counted
    parts = [f"{n} of the {total} structures with a σ here are among them (their coverages {verdict})"] * bool(n)
    if alike.any():
        k = int(alike.sum())
        parts.append(f"{k} {'more ' * bool(n)}look{'s' * (k == 1)} like them under other ids or none (the same "
                     f"reduced formula, volume per atom within {100 * VOLUME_TOLERANCE:g} %)")
    if seen.any():
        k = int(seen.sum())
        parts.append(f"{k} was trained on or looks like a training crystal" if k == 1
                     else f"{k} were trained on or look like training crystals")
    if others.any():
        err = np.abs(pred[others] - y[others])
        within = [f"within σ {_share(err <= std[others])}", f"within 2σ {_share(err <= 2 * std[others])}"]
        within += [f"within the 95 % interval {_share(err <= interval95 * std[others])}"] if interval95 else []
        parts.append(f"on the other {int(others.sum())}: {', '.join(within)}")
    return f"{where}: {'; '.join(parts)}", counted


def _unlike_calibration(card, dataset: Dataset, cell: str) -> str | None:
    """The verdict on coverages of structures σ was calibrated on, where the labels of ``dataset`` on ``cell``
    cells differ from those it was calibrated with (its model's own target and cells), or may (labels without a
    name), in words; None where they do not (the coverages are in-sample)."""
    if dataset.target != card.target:
        return f"are not those it was fitted to: σ was calibrated against {card.target}, not {dataset.target}"
    if dataset.unnamed_labels:
        return f"are in-sample only if these labels, which have no name, are {card.target}, as taken"
    if cell != card.graph.cell:
        return f"are not those it was fitted to: σ was calibrated on {card.graph.cell} cells, here {cell}"
    return None


def given_sigma(card, graphs) -> np.ndarray:
    """Which structures get a σ: those whose elements the model trained on all of (every one where its card
    lists none), as ``predict`` gives it; σ is calibrated and judged on these alone."""
    known = set(card.elements or [])
    return np.array([not absent_elements(g.atomic_numbers, known) for g in graphs], bool)


def _number(value: float) -> str:
    """A value for predictions.csv: 6 significant digits, empty for none (NaN)."""
    return "" if value != value else f"{value:.6g}"


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
    :class:`crystalprop.utils.atomic.OutputExistsError` unless ``overwrite``, which removes that
    evaluation's files (:data:`EVALUATION_FILES`, nothing else) before the new ones are written.
    """
    from crystalprop.utils.backend import set_device  # noqa: PLC0415
    from crystalprop.model.checkpoint import read_checkpoint  # noqa: PLC0415
    from crystalprop.model.registry import resolve_model  # noqa: PLC0415

    check_whole_number("batch_size", batch_size)
    set_device(device)  # a device this machine lacks is refused before the folder is made
    out = _output_folder(output_dir, overwrite) if output_dir else None  # before the work, not after it
    label, path = resolve_model(model)
    card, params = read_checkpoint(path)
    settings = card.graph if cell is None else replace(card.graph, cell=cell)
    dataset, split, split_check, kept, skipped, flags, unusable = labelled_split(
        card, data, target, split, path, id_column, structure_column, settings)
    unreadable = {rid for rid, _ in dataset.skipped}
    n_failed = sum(rid not in unreadable for rid, _ in skipped)
    y = np.array([e.target for e, _ in kept])
    reference = stored_reference(card, params, path)
    outputs, features = network_outputs([(card, params, path)], readout=reference is not None)(
        [g for _, g in kept], batch_size)
    combined = ensemble_output(card, outputs, features[0] if reference else None, reference,
                               one_element([g for _, g in kept]))
    pred, std = combined.value, combined.std
    metrics = error_metrics(card, y, pred)
    if std is not None:  # no σ where the model lacks an element, as in predict: σ was calibrated on those it knows
        with_sigma = given_sigma(card, [g for _, g in kept])
        if combined.far is not None:  # beyond the range σ was calibrated on, as in predict
            with_sigma &= ~combined.far
        std = np.where(with_sigma, std, np.nan)
        if with_sigma.any():
            metrics.update(uncertainty_metrics(y[with_sigma], pred[with_sigma], std[with_sigma],
                                               (card.ensemble or {}).get("interval95")))
        if not with_sigma.all():
            metrics["n_without_sigma"] = int((~with_sigma).sum())
    if flags is not None:  # the figure on the crystals unlike any trained on, beside it (unseen has none left)
        alike = np.array(flags, bool)
        unlike = error_metrics(card, y[~alike], pred[~alike]) if not alike.all() else {}
        metrics.update({"n_like_training": int(alike.sum()), "mae_unlike_training": unlike.get("mae", float("nan")),
                        **({"log10_mae_unlike_training": unlike["log10_mae"]} if "log10_mae" in unlike else {})})
    notes = list(dataset.notes)
    calibrated = (card.ensemble or {}).get("calibrated_on", {})
    if std is not None and calibrated:
        note, counted = _calibration_note(calibrated, kept, dataset, y, pred, std,
                                          (card.ensemble or {}).get("interval95"), recorded_split(card.training),
                                          flags, _unlike_calibration(card, dataset, settings.cell))
        metrics.update(counted)
        notes += [note] if note else []
    if split == "train" and std is not None and with_sigma.any():
        notes.append("the coverages (within σ, 2σ) are on the structures the model was fitted to, where its errors "
                     "are smaller than on others")
    if dataset.target != card.target:  # another name for the same quantity, or another quantity: the user's call
        notes.append(f"the model learned {card.target} ({card.unit or 'no unit'}); it is compared with the data's "
                     f"{dataset.target}, taken to be the same quantity in the same unit")
    elif dataset.unnamed_labels:  # nothing in the data says what its numbers are
        notes.append(f"{dataset.unnamed_labels} has no header row, so its labels have no column name: they are "
                     f"taken to be {card.target} ({card.unit or 'no unit'}), the model's target; check that they are")
    result = {"model": label, "checkpoint": str(path), "data": str(data), "target": dataset.target,
              "unit": card.unit, "split": split, "cell": settings.cell, "split_check": split_check,
              "n_failed": n_failed, **metrics, "n_skipped": len(skipped), **_unusable_counts(unusable),
              **({"data_notes": notes} if notes else {}), "skipped": skipped, "unusable": unusable}
    result["provenance"] = provenance([(label, path)], cell=settings.cell, device=device, targets={label: card.target},
                                      units={column: card.unit for column in ["true", "predicted", "error"]
                                             + (["std"] if std is not None else [])
                                             + (["err95"] if std is not None and (card.ensemble or {}).get("interval95")
                                                else [])})
    if out is not None:
        if overwrite:
            _remove_earlier(out)
        with open(out / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            interval = (card.ensemble or {}).get("interval95") if std is not None else None
            writer.writerow(["id", "true", "predicted", "error"] + (["std"] if std is not None else [])
                            + (["err95"] if interval else []) + (["like_training"] if flags is not None else []))
            for k, ((entry, _), t, p) in enumerate(zip(kept, y, pred)):
                writer.writerow([entry.id, f"{t:.6g}", f"{p:.6g}", f"{p - t:.6g}"]
                                + ([_number(std[k])] if std is not None else [])
                                + ([_number(std[k] * interval)] if interval else [])
                                + ([int(flags[k])] if flags is not None else []))
        write_sidecar(out / "predictions.csv", result["provenance"])
        label_text = f"{dataset.target} ({card.unit})"
        result["files"] = ["predictions.csv", "predictions.csv.meta.json", "metrics.json"] + _plots(out, y, pred, label_text)
        if skipped or unusable:
            lines = [f"{rid}\t{reason}\n" for rid, reason in skipped]
            lines += [f"{rid}\t{reason} ({where or 'split unknown'})\n" for rid, reason, where in unusable]
            atomic_write_text(out / "skipped.log", "".join(lines))
            result["files"].append("skipped.log")
        if std is not None and with_sigma.any():
            result["files"].append(_calibration_plot(out, y[with_sigma], pred[with_sigma], std[with_sigma], label_text))
        recorded = {k: v for k, v in result.items() if k not in ("skipped", "unusable")}  # both in skipped.log
        atomic_write_text(out / "metrics.json", json.dumps(_undefined_as_null(recorded), indent=2, allow_nan=False))
    return result
