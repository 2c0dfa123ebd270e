"""A band-gap evaluation's error by range of the true gap: all, metals, gapped, 0-1 eV.

    python scripts/gap_ranges.py EVAL_DIR/predictions.csv [...]

For each ``crystalprop evaluate band_gap ... -o EVAL_DIR`` predictions file, prints the mean absolute
error on all structures, on the metals (true gap 0), on the gapped ones, and on true gaps in (0, 1] eV,
with that range's mean signed error (predicted - true), the figures the band-gap card keeps apart.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

RANGES = {"all": lambda y: np.ones(y.shape, bool), "metals": lambda y: y == 0, "gapped": lambda y: y > 0,
          "0-1 eV": lambda y: (y > 0) & (y <= 1)}


def gap_ranges(true: np.ndarray, predicted: np.ndarray) -> dict[str, dict]:
    """{range: {n, mae, mean_signed_error}} for each range of the true gap that has structures."""
    figures = {}
    for name, select in RANGES.items():
        mask = select(true)
        if mask.any():
            error = predicted[mask] - true[mask]
            figures[name] = {"n": int(mask.sum()), "mae": float(np.mean(np.abs(error))),
                             "mean_signed_error": float(np.mean(error))}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("predictions", nargs="+", help="EVAL_DIR/predictions.csv of crystalprop evaluate")
    for path in parser.parse_args().predictions:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        true = np.array([float(r["true"]) for r in rows])
        predicted = np.array([float(r["predicted"]) for r in rows])
        print(path)
        for name, f in gap_ranges(true, predicted).items():
            print(f"  {name:7s} n = {f['n']:5d}  MAE {f['mae']:.4f}  mean signed error {f['mean_signed_error']:+.4f}")


if __name__ == "__main__":
    main()
