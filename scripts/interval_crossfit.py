"""How often the 95 % interval holds an unseen error: cross-fitted on an evaluation's predictions.

    python scripts/interval_crossfit.py EVAL_DIR/predictions.csv [...]

For each ``crystalprop evaluate ... -o EVAL_DIR`` predictions file (with its ``std`` column), fits the
multiple of σ that holds 95 % of the errors (:func:`crystalprop.model.ensemble.interval_multiple`, as
joining does) on one random half of the structures with a σ and counts the errors it holds on the other half,
over 200 halvings.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from crystalprop.model.ensemble import interval_multiple


def crossfit(errors: np.ndarray, std: np.ndarray, halvings: int = 200, seed: int = 0) -> tuple[list, list]:
    """The multiples fitted on the first halves and the fractions they hold on the second halves."""
    rng = np.random.default_rng(seed)
    multiples, held = [], []
    for _ in range(halvings):
        order = rng.permutation(errors.size)
        fit, check = order[: errors.size // 2], order[errors.size // 2:]
        k = interval_multiple(errors[fit], std[fit])
        if k is None:  # σ is 0 under too many of this half's errors: no multiple holds 95 % there
            continue
        multiples.append(k)
        held.append(float(np.mean(np.abs(errors[check]) <= k * std[check])))
    return multiples, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("predictions", nargs="+", help="EVAL_DIR/predictions.csv of crystalprop evaluate, with std")
    for path in parser.parse_args().predictions:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "std" not in rows[0]:
            print(f"{path}: no std column (a model without σ): nothing to cross-fit")
            continue
        known = [r for r in rows if r["std"] != ""]  # no σ for a structure with an element the model lacks
        if len(known) < 2:
            print(f"{path}: {len(known)} structures with σ ({len(rows) - len(known)} without): too few to cross-fit")
            continue
        errors = np.array([float(r["error"]) for r in known])
        std = np.array([float(r["std"]) for r in known])
        whole = interval_multiple(errors, std)
        multiples, held = crossfit(errors, std)
        if whole is None or not held:
            print(f"{path}: n {errors.size} with σ: σ is 0 under more than 5 % of the errors, so no multiple of σ "
                  "holds 95 % of them")
            continue
        low, high = np.quantile(held, [0.05, 0.95])
        skipped = f"; {200 - len(held)} halvings without one" if len(held) < 200 else ""
        print(f"{path}: n {errors.size} with σ ({len(rows) - len(known)} without), multiple on all {whole:.3f}, "
              f"on halves {np.mean(multiples):.3f} ± {np.std(multiples):.3f}; held on the other half "
              f"{100 * np.mean(held):.1f} % (5-95 % of halvings {100 * low:.1f}-{100 * high:.1f} %){skipped}")


if __name__ == "__main__":
    main()
