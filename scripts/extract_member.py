"""One network of a joined model as a model of its own, to warm-start a round from (``--init-from``).

    .venv/bin/python scripts/extract_member.py MODEL K OUT.ckpt [--target TARGET --unit UNIT]

``crystalprop train --init-from`` starts from an ensemble's first network; this gives network K
(counted from 0) of MODEL (a checkpoint or shipped model name): the band-gap model's second member, or
one route of the shear-modulus model (a product member's factors are networks of their own, each in
its own target transform). The card is the ensemble's without its σ and metrics, with that network's
transform, records where the weights came from and, for a network of the model's own target, the data the
model records it was trained on (so that joining it again refuses those structures for calibration); a
product's factor (shear modulus's G/K network or its bulk-modulus networks) predicts another target in another
unit, which the model does not record, so it needs ``--target`` and ``--unit`` (and only a factor takes them).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def _training_record(training: dict, path: str, network: int, factor: bool) -> dict:
    """The extracted network's training record: where it came from; for network 0 of the model's own target,
    whose run the model's record describes, that whole record (its budget for ``crystalprop models``); for
    another network of that target, the data the model records it was trained on (so that joining it again
    refuses those structures for calibration); nothing more for a product's factor."""
    record = {"network_of": path, "network": network}
    if factor:
        return record
    if network == 0:
        return {**training, **record}
    return {**record, **({"data": training["data"]} if "data" in training else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("network", type=int)
    parser.add_argument("output", type=Path)
    parser.add_argument("--target", help="what the network predicts, for a factor of a product member (G_over_K)")
    parser.add_argument("--unit", help="its unit, for a factor of a product member ('1' for a ratio)")
    args = parser.parse_args()

    from crystalprop.model.checkpoint import (  # noqa: PLC0415
        TargetTransform, build_model, read_checkpoint, save_checkpoint, without_site_inputs,
    )
    from crystalprop.model.ensemble import member_params  # noqa: PLC0415
    from crystalprop.model.registry import resolve_model  # noqa: PLC0415

    _, path = resolve_model(args.model)
    card, params = read_checkpoint(path)
    networks = member_params(card, params)
    if not 0 <= args.network < len(networks):
        sys.exit(f"{path} has {len(networks)} networks (0-{len(networks) - 1}), not {args.network}")
    transforms = (card.ensemble or {}).get("network_transforms")
    factor = any(len(terms) > 1 and any(network == args.network for network, _ in terms)
                 for terms in (card.ensemble or {}).get("combination") or [])
    if factor and (args.target is None or args.unit is None):
        sys.exit(f"{path}: network {args.network} is a factor of a product member, so it predicts its own target in "
                 "its own unit, which the model does not record: give --target and --unit (shear modulus's G/K "
                 "network: --target G_over_K --unit 1; its bulk networks: --target K_VRH --unit GPa)")
    if not factor and (args.target is not None or args.unit is not None):
        sys.exit(f"{path}: network {args.network} predicts the model's own target, {card.target} in {card.unit}: "
                 "--target and --unit are for a factor of a product member")
    if args.target is not None:
        card = replace(card, target=args.target)
    if args.unit is not None:
        card = replace(card, unit=args.unit)
    one = replace(card, ensemble={}, metrics={},
                  transform=TargetTransform(**transforms[args.network]) if transforms else card.transform,
                  training=_training_record(card.training, str(path), args.network, factor))
    # a network that gives the site descriptors zero weights (one joined beside networks that read them) is
    # written as the model it was, which reads none
    one, network = without_site_inputs(one, networks[args.network]) or (one, networks[args.network])
    save_checkpoint(args.output, build_model(one, network, path), one)
    print(f"{args.output}: network {args.network} of {path}")


if __name__ == "__main__":
    main()
