"""Evaluate a model on a labelled data set: metrics, per-structure table, plots."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from crystalprop.atomic import atomic_write_text
from crystalprop.training.datasets import load_dataset
from crystalprop.training.graph_cache import build_graphs
from crystalprop.training.metrics import regression_metrics

ZERO_FRACTION_FOR_SPLIT_METRICS = 0.1  # e.g. band gaps: report metals and gapped apart


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


def evaluate_model(
    model: str,
    data: str | Path,
    *,
    target: str | None = None,
    split: str | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 128,
    id_column: str | None = None,
    structure_column: str | None = None,
    device: str = "CPU",
    cell: str | None = None,
) -> dict:
    """Metrics of ``model`` on one split (default: test if the data has one, else val).

    ``cell``: ``canonical`` or ``as-given`` instead of the model's own cell setting.
    """
    from crystalprop.backend import set_device  # noqa: PLC0415
    from crystalprop.model.checkpoint import load_model  # noqa: PLC0415
    from crystalprop.model.inference import predict_graphs  # noqa: PLC0415
    from crystalprop.registry import resolve_model  # noqa: PLC0415

    set_device(device)
    label, path = resolve_model(model)
    net, card = load_model(path)
    dataset = load_dataset(data, target or card.target, id_column=id_column, structure_column=structure_column)
    if split is None:
        split = "test" if any(e.split == "test" for e in dataset.entries) else "val"
    entries = dataset.entries if split == "all" else dataset.split(split)
    if not entries:
        raise ValueError(f"{data}: no structures in split {split!r}")
    settings = card.graph if cell is None else replace(card.graph, cell=cell)
    graphs, errors = build_graphs(entries, settings)
    kept = [(e, g) for e, g in zip(entries, graphs) if g is not None]
    y = np.array([e.target for e, _ in kept])
    pred = card.transform.physical(predict_graphs(net, [g for _, g in kept], batch_size))
    metrics = regression_metrics(y, pred)
    if card.transform.log10 and (y > 0).all():
        metrics.update({f"log10_{k}": v for k, v in regression_metrics(np.log10(y), np.log10(pred)).items() if k != "n"})
    zero = y == 0
    if zero.mean() >= ZERO_FRACTION_FOR_SPLIT_METRICS:
        metrics["mae_zero_targets"] = float(np.mean(np.abs(pred[zero] - y[zero])))
        metrics["mae_nonzero_targets"] = float(np.mean(np.abs(pred[~zero] - y[~zero])))
        metrics["n_zero_targets"] = int(zero.sum())
    result = {"model": label, "checkpoint": str(path), "data": str(data), "target": dataset.target,
              "unit": card.unit, "split": split, "cell": settings.cell, "n_failed": int(sum(1 for e in errors if e)), **metrics}
    if output_dir:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "true", "predicted", "error"])
            for (entry, _), t, p in zip(kept, y, pred):
                writer.writerow([entry.id, f"{t:.6g}", f"{p:.6g}", f"{p - t:.6g}"])
        result["files"] = ["predictions.csv", "metrics.json"] + _plots(out, y, pred, f"{dataset.target} ({card.unit})")
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    return result
