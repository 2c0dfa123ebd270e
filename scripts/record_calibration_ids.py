"""Add to a joined model the record of the structures its σ was calibrated on, where it predates it.

    python scripts/record_calibration_ids.py MODEL DATA OUT.ckpt

DATA is the data its card names under ``calibrated_on`` (the path as seen from here). The structures of
that split which get a σ are found again (only their count is checked against the card), their ids and
fingerprints packed into ``calibrated_on`` (``ids``, ``structures``), and the model written to OUT.ckpt with
its weights and σ unchanged, so that ``crystalprop evaluate`` counts which of its structures σ was
calibrated on, under their ids or others (their coverages are in-sample). Models joined since then carry it.
"""

from __future__ import annotations

import argparse

from crystalprop.evaluation.evaluate import calibration_record, given_sigma, labelled_split
from crystalprop.model.checkpoint import read_checkpoint
from crystalprop.model.ensemble import save_with_card
from crystalprop.model.registry import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("output")
    parser.add_argument("--id-column", help="as given to crystalprop ensemble, for a CSV data set")
    parser.add_argument("--structure-column", help="as given to crystalprop ensemble, for a CSV data set")
    args = parser.parse_args()
    _, path = resolve_model(args.model)
    card, params = read_checkpoint(path)
    calibrated = (card.ensemble or {}).get("calibrated_on")
    if not calibrated:
        raise SystemExit(f"{path}: its σ records no calibration (join it with crystalprop ensemble)")
    chosen = labelled_split(card, args.data, None, calibrated["split"], path, args.id_column, args.structure_column)
    with_sigma = given_sigma(card, [g for _, g in chosen.kept])
    if int(with_sigma.sum()) != calibrated["n"]:
        raise SystemExit(f"{args.data}: {int(with_sigma.sum())} structures with a σ in its {calibrated['split']} "
                         f"split, but σ was calibrated on {calibrated['n']}: not the data it was calibrated on")
    calibrated.update(calibration_record(chosen, with_sigma))
    save_with_card(args.output, card, params)
    print(f"{args.output}: the ids and fingerprints of the {calibrated['n']} structures σ was calibrated on recorded")


if __name__ == "__main__":
    main()
