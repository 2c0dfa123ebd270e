"""Would a floor under σ bring its 2σ coverage nearer 95 %? Cross-fitted on an evaluation's predictions.

    python scripts/sigma_floor.py EVAL_DIR/predictions.csv [...]

For each ``crystalprop evaluate ... -o EVAL_DIR`` predictions file (with its ``std`` column), σ' = s·(σ + c·m),
m the median σ, for c = 0 (σ as shipped) to 4: a floor keeps σ's ranks (its Spearman correlation) and narrows
its spread. s is fitted on one random half of the structures with a σ above 0 as joining fits it
(:func:`crystalprop.model.ensemble.calibration_scale`), and the fractions of errors within σ' and 2σ' are
counted on the other half, over 100 halvings.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from crystalprop.model.ensemble import calibration_scale

FLOORS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
"""The floors c tried, in units of the median σ."""


def crossfit(errors: np.ndarray, std: np.ndarray, floor: float, halvings: int = 100, seed: int = 0) -> np.ndarray:
    """(halvings, 2): the fractions within σ' and 2σ' on each second half, s fitted on the first."""
    rng = np.random.default_rng(seed)
    raw = std + floor * np.median(std)
    held = []
    for _ in range(halvings):
        order = rng.permutation(errors.size)
        fit, check = order[: errors.size // 2], order[errors.size // 2:]
        sigma = calibration_scale(errors[fit], raw[fit]) * raw[check]
        held.append([np.mean(np.abs(errors[check]) <= k * sigma) for k in (1, 2)])
    return np.array(held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("predictions", nargs="+", help="EVAL_DIR/predictions.csv of crystalprop evaluate, with std")
    for path in parser.parse_args().predictions:
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["std"] not in ("", "0")]  # σ of 0 covers only errors of 0
        errors = np.array([float(r["error"]) for r in rows])
        std = np.array([float(r["std"]) for r in rows])
        print(f"{path}: n {errors.size} with σ above 0")
        for floor in FLOORS:
            try:
                within = crossfit(errors, std, floor).mean(axis=0)
            except ValueError as exc:  # too few structures on a half to fit a scale on
                print(f"  {exc}")
                break
            print(f"  c = {floor:g} × median σ: within σ {100 * within[0]:.1f} %, "
                  f"within 2σ {100 * within[1]:.1f} %")


if __name__ == "__main__":
    main()
