"""The cross-validated error of a recipe from its K fold runs (``crystalprop train ... --fold I/K``).

    .venv/bin/python scripts/cross_validate.py RUN_DIR [RUN_DIR ...] [--json OUT]

Reads each run's best.ckpt (validation metrics on its own fold, as recorded by the trainer,
at the best epoch) and the last epoch's validation MAE from its history.csv (no choice made on
the fold: the recipe's own result). An ensemble recipe gives one joined checkpoint per fold
(``crystalprop ensemble`` of that fold's members, ``--data`` the same data set: its metrics are on
the fold's held-out part); it has no last epoch. Checks that the runs share target and data
and cover folds 1..K once each, and prints each fold's figures and their mean and standard deviation.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def last_epoch(history: Path, log10: bool) -> dict:
    """The last epoch's validation MAE (``last_mae``, in log10 for a log10 target) from a run's history."""
    with open(history, newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    return {"last_epoch": int(last["epoch"]), "last_mae": float(last["val_log10_mae" if log10 else "val_mae"])}


def fold_rows(run_dirs: list[str]) -> tuple[list[dict], int]:
    """(one row per fold, K), refusing runs that do not form one cross-validation."""
    from crystalprop.model.checkpoint import read_checkpoint  # noqa: PLC0415

    rows = []
    for run in run_dirs:
        path = Path(run) / "best.ckpt" if Path(run).is_dir() else Path(run)
        card, _ = read_checkpoint(path)
        record = card.training.get("data", {}).get("split_record", {})
        if "fold" not in record:
            raise SystemExit(f"{path}: not trained with --fold")
        rows.append({"run": str(run), "fold": tuple(record["fold"]), "target": card.target,
                     "test_ids": record.get("test_ids_sha256"),
                     "data": card.training["data"]["source"], "unit": card.unit, **card.metrics,
                     **(last_epoch(path.parent / "history.csv", card.transform.log10) if not card.ensemble else {})})
    folds = sorted(r["fold"] for r in rows)
    k = folds[0][1]
    if folds != [(i, k) for i in range(1, k + 1)]:
        raise SystemExit(f"the runs hold folds {folds}, not each of 1..{k} of {k} once")
    if len({(r["target"], r["data"]) for r in rows}) != 1:
        raise SystemExit("the runs do not share one target and data set")
    if len({r["test_ids"] for r in rows}) != 1:
        raise SystemExit("the runs held out different test splits (a random test split drawn with other seeds): "
                         "their folds do not partition one set of structures")
    return sorted(rows, key=lambda r: r["fold"]), k


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json", default=None, help="also write the per-fold figures and the summary here")
    args = parser.parse_args()
    rows, k = fold_rows(args.runs)
    metrics = [m for m in ("mae", "rmse", "log10_mae", "log10_rmse", "last_mae") if all(m in r for r in rows)]
    unit = rows[0]["unit"]
    print(f"{rows[0]['target']} ({unit}), {k}-fold cross-validation on {rows[0]['data']}; best epoch on each "
          "fold, and last_mae: the last epoch's MAE" + (" in log10" if "log10_mae" in metrics else ""))
    print("fold  n     " + "  ".join(f"{m:>10}" for m in metrics))
    for r in rows:
        print(f"{r['fold'][0]}/{k}  {r['n']:<5} " + "  ".join(f"{r[m]:>10.4g}" for m in metrics))
    summary = {m: {"mean": statistics.fmean(r[m] for r in rows), "std": statistics.stdev(r[m] for r in rows)}
               for m in metrics}
    print("mean      " + "  ".join(f"{summary[m]['mean']:>10.4g}" for m in metrics))
    print("std       " + "  ".join(f"{summary[m]['std']:>10.4g}" for m in metrics))
    if args.json:
        Path(args.json).write_text(json.dumps({"folds": rows, "summary": summary}, indent=2, default=list) + "\n")


if __name__ == "__main__":
    sys.exit(main())
