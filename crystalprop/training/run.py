"""From a data set on disk to a trained run directory: the work behind ``crystalprop train``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from crystalprop.utils.atomic import atomic_write_text
from crystalprop.data import TEST_FRACTION, VAL_FRACTION, limited_val
from crystalprop.data.datasets import (Dataset, Entry, ids_in_packed, load_dataset, merge_trained, pack_ids,
                                       packed_differing, packed_size, split_record)
from crystalprop.data.fingerprints import pack_fingerprints
from crystalprop.data.graph_cache import build_graphs
from crystalprop.evaluation.evaluate import joined_model_score
from crystalprop.model.checkpoint import read_checkpoint, saved_state
from crystalprop.model.ensemble import MIN_CALIBRATION
from crystalprop.training.config import TrainConfig
from crystalprop.training.distributed import Cluster, join_cluster
from crystalprop.training.trainer import Trainer, TrainResult, TrainingError, saved_fold


def split_graphs(dataset: Dataset, graphs, split: str):
    """(graphs, targets, ids) of one split, leaving out failed graphs."""
    rows = [(g, e.target, e.id) for e, g in zip(dataset.entries, graphs) if e.split == split and g is not None]
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float64), [r[2] for r in rows]


def write_skipped(path: Path, dataset: Dataset, errors: list[str]) -> int:
    """One line per skipped record: id, then the reason."""
    lines = [f"{rid}\t{reason}" for rid, reason in dataset.skipped]
    lines += [f"{e.id}\t{err}" for e, err in zip(dataset.entries, errors) if err]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def build_graphs_shared(entries: list[Entry], settings, cluster: Cluster, workers: int | None, progress):
    """Graphs for all entries; in a cluster each worker builds every N-th one and reads the others'.

    Workers exchange graphs through the graph cache, so it must be on a file system they share.
    """
    if not cluster.distributed:
        return build_graphs(entries, settings, workers=workers, progress=progress)
    own = build_graphs(entries[cluster.rank :: cluster.size], settings, workers=workers, progress=progress)
    cluster.barrier()
    graphs, errors = [None] * len(entries), [""] * len(entries)
    for rank in range(cluster.size):
        theirs = entries[rank :: cluster.size]
        part_graphs, part_errors = own if rank == cluster.rank else build_graphs(theirs, settings)
        graphs[rank :: cluster.size], errors[rank :: cluster.size] = part_graphs, part_errors
    return graphs, errors


def check_resumed_fold(run_dir: Path, state: dict | None, fold: tuple[int, int] | None) -> None:
    """Refuse to resume a run (``state``: its :func:`saved_state`, None where it has none) on another
    cross-validation fold than it was trained on: its validation split would hold structures it has trained on."""
    saved = saved_fold(state) if state is not None else fold
    if saved != fold:
        def name(f) -> str:
            return f"--fold {f[0]}/{f[1]}" if f else "no --fold"

        raise TrainingError(f"{run_dir}: trained with {name(saved)}; resume it with {name(saved)}, not {name(fold)}")


SPLIT_IDS = ("train", "val")
"""The splits whose ids a run's last.ckpt keeps (:func:`split_ids`)."""


def split_ids(dataset: Dataset) -> dict[str, str]:
    """The ids of the records in the run's training and validation splits, packed (:func:`pack_ids`): what
    last.ckpt keeps, so that a resume can tell whether it was given the data the run started with."""
    return {name: pack_ids([e.id for e in dataset.entries if e.split == name]) for name in SPLIT_IDS}


def check_resumed_data(run_dir: Path, state: dict | None, data: str | Path, ids: dict[str, str]) -> None:
    """Refuse to resume a run on other data than it started with (``ids``: :func:`split_ids` of the data given
    now; ``state``: the run's :func:`saved_state`): other records, or rows added, so that a random split is
    drawn anew, would keep the target transform fitted to the first training set and compare a validation
    MAE of other structures with the run's best. A last.ckpt that predates the record resumes unchecked."""
    saved = (state or {}).get("split_ids") or {}
    if not all(name in saved for name in SPLIT_IDS):
        return
    changed = {name: packed_differing(saved[name], ids[name]) for name in SPLIT_IDS}
    if not any(changed.values()):
        return
    labels = {"train": "training", "val": "validation"}
    parts = [f"{n} {labels[name]}" for name, n in changed.items() if n]
    one = len(parts) == 1 and sum(changed.values()) == 1
    then = [packed_size(saved[name]) for name in SPLIT_IDS]
    now = [packed_size(ids[name]) for name in SPLIT_IDS]
    raise TrainingError(f"{run_dir}: {' and '.join(parts)} {'structure differs' if one else 'structures differ'} "
                        "from those the run started with "
                        f"({then[0]} training and {then[1]} validation then, {now[0]} and {now[1]} now, in {data}); "
                        "resume with the same data and split settings, or start a new run "
                        f"(--init-from {run_dir / 'best.ckpt'} to warm-start)")


def check_labels(dataset: Dataset, config: TrainConfig) -> None:
    """Refuse labels that ``--log10`` or ``--floor`` cannot take, in every split the run holds (all of them
    but where ``--limit`` cut the data), naming them: one validation label <= 0 under --log10 would make
    every validation error NaN, and no epoch could be kept."""
    def named(bad: list[Entry]) -> str:
        shown = ", ".join(f"{e.id} ({e.target:g}, {e.split})" for e in bad[:5])
        return shown + (", ..." if len(bad) > 5 else "")

    if config.log10 and (bad := [e for e in dataset.entries if e.target <= 0]):
        raise TrainingError(f"--log10 needs positive targets, but {len(bad)} are <= 0: {named(bad)}; leave them out "
                            "of the data, or train without --log10")
    if config.floor is not None and (bad := [e for e in dataset.entries if e.target < config.floor]):
        raise TrainingError(f"--floor {config.floor:g} is a lower bound, but {len(bad)} targets lie below it: "
                            f"{named(bad)}")


def earlier_trained(run_dir: Path, state: dict | None, init_from: str | Path | None, target: str) -> list[dict]:
    """The split records (packed ``trained_ids``, and ``trained_structures`` where recorded) of what the
    weights this run starts from already trained on for ``target``: a warm start's checkpoint of the same
    target, or when resuming (``state``: the run's :func:`saved_state`) the run's best.ckpt, whose record
    holds its warm start's too, and before its first epoch has written one, the warm start that last.ckpt names."""
    if state is not None:
        best, start = Path(run_dir) / "best.ckpt", (state.get("prior_training") or {}).get("init_from")
        sources = [best] if best.is_file() else [Path(start)] if start else []
    else:
        sources = [Path(init_from)] if init_from else []
    found = []
    for path in (p for p in sources if p.is_file()):
        card, _ = read_checkpoint(path)
        record = card.training.get("data", {}).get("split_record", {})
        if record.get("trained_ids") and card.target == target:
            found.append(record)
    return found


def validation_trained_on(val_ids: list[str], earlier: list[dict]) -> int:
    """How many of the run's validation structures the weights it starts from (``earlier``: :func:`earlier_trained`)
    were trained on."""
    packed = [r["trained_ids"] for r in earlier]
    return len({rid for p in packed for rid in ids_in_packed(val_ids, p)})


def trained_validation_notes(val_ids: list[str], seen: int, init_from: str | Path | None) -> list[str]:
    """A note where the weights the run starts from were trained on ``seen`` of its validation structures
    (:func:`validation_trained_on`): its validation MAE, and the epoch kept as best.ckpt by it, are then no figure
    on unseen crystals (``evaluate`` refuses that split). A warm start on the same data is a legitimate
    fine-tune, so it is told, not refused."""
    if not seen:
        return []
    by = (f"the --init-from model ({init_from})" if init_from else
          "the weights this run continues (its warm start, as its best.ckpt records)")
    return [f"{seen} of the {len(val_ids)} validation structures were trained on by {by}: the validation MAE "
            "(and the epoch kept as best.ckpt) is not a figure on unseen crystals"]


def train_model(
    data: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    id_column: str | None = None,
    structure_column: str | None = None,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    limit: int | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    workers: int | None = None,
    split_seed: int | None = None,
    fold: tuple[int, int] | None = None,
    require_val: bool = False,
    on_event: Callable[[str, dict], None] | None = None,
) -> TrainResult:
    """Load the data, build (or reuse) graphs, and train; see :class:`Trainer`.

    Without validation structures the epoch of least training loss is kept as best; ``require_val``
    (an ensemble member, whose σ is calibrated on them) refuses to train without any.

    A random split (data without split.json or a split column) is drawn with ``split_seed``,
    by default the training seed; ensemble members share one split and differ in their seed.
    Started under msrun, this process joins the cluster first and trains its share of each batch.
    """
    cluster = join_cluster()
    on_event = cluster.events(on_event)
    split_seed = config.seed if split_seed is None else split_seed
    last = Path(run_dir) / "last.ckpt"
    state = saved_state(last) if resume and last.is_file() else None
    if resume:
        check_resumed_fold(Path(run_dir), state, fold)
    dataset = load_dataset(data, config.target, id_column=id_column, structure_column=structure_column,
                           val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed, fold=fold)
    config.target = dataset.target
    full_splits = Dataset(list(dataset.entries), dataset.target, dataset.origin, split_source=dataset.split_source)
    if limit:
        dataset.entries = [e for e in dataset.entries if e.split == "train"][:limit] + \
            [e for e in dataset.entries if e.split == "val"][: limited_val(limit)]
    ids = split_ids(dataset)
    check_resumed_data(Path(run_dir), state, data, ids)
    check_labels(dataset, config)  # the labels this run trains and validates on
    on_event("graphs", {"total": len(dataset.entries[cluster.rank :: cluster.size])})
    graphs, errors = build_graphs_shared(dataset.entries, config.graph, cluster, workers,
                                         lambda n: on_event("graph_progress", {"advance": n}))
    train = split_graphs(dataset, graphs, "train")
    val = split_graphs(dataset, graphs, "val")
    calibration = len(full_splits.split("val")) if limit else len(val[0])  # joining calibrates on the whole split
    if require_val and calibration < MIN_CALIBRATION:  # before any member trains (or its folder is made)
        raise TrainingError(f"{data}: {calibration or 'no'} validation structures, on which an ensemble's σ is "
                            f"calibrated: at least {MIN_CALIBRATION} are needed; give a split (split.json, a split "
                            f"column) or a larger --val-fraction (now {val_fraction:g} of {len(full_splits.entries)} "
                            "records)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    n_skipped = write_skipped(run_dir / "skipped.log", dataset, errors) if cluster.is_main else 0
    if not train[0]:
        raise TrainingError(f"{data}: no training structures could be used (see {run_dir / 'skipped.log'})")
    earlier = earlier_trained(run_dir, state, init_from, dataset.target)
    seen = validation_trained_on(val[2], earlier)
    notes = dataset.notes + trained_validation_notes(val[2], seen, None if resume else init_from)
    description = {
        "source": str(data),
        "target": dataset.target,
        "split": dataset.split_source,
        "n_train": len(train[0]),
        "n_val": len(val[0]),
        "n_test": len(full_splits.split("test")),  # held out: not trained or validated on
        "n_skipped": n_skipped,
        **({"n_val_trained_on": seen} if seen else {}),  # models marks the validation MAE
        **({"notes": notes} if notes else {}),
    }
    on_event("data", description)
    record = split_record(full_splits, val_fraction, test_fraction, split_seed, train[2], fold)
    if limit:  # and how many validation structures it kept, which evaluate's split note names
        record["limit"], record["limit_val"] = limit, sum(e.split == "val" for e in dataset.entries)
    record["trained_structures"] = pack_fingerprints(train[0])
    merge_trained(record, earlier)
    recorded = {**description, "split_record": record}
    validated = set(val[2])
    val_entries = [e for e in dataset.entries if e.split == "val" and e.id in validated]
    trainer = Trainer(config, run_dir, train[:2], val[:2], data_description=recorded, split_ids=ids,
                      on_event=on_event, cluster=cluster,
                      score_start=None if cluster.size > 1 else
                      lambda start: joined_model_score(start, val_entries, workers=workers))
    return trainer.run(resume=resume, init_from=init_from)
