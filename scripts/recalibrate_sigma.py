"""Give a shipped (or any latent-σ) model σ in another form, calibrated again, without its member files.

    python scripts/recalibrate_sigma.py MODEL OUT.ckpt DATA [--sigma latent+spread] [--latent-prior W]

(:func:`crystalprop.evaluation.joining.recalibrate_sigma`): the networks, the latent reference and so the
values stay; the card's σ entries and metrics are those of the new form on DATA's validation split.
"""

from __future__ import annotations

import argparse
import json

from crystalprop.evaluation.joining import recalibrate_sigma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("output")
    parser.add_argument("data")
    parser.add_argument("--sigma", default="latent+spread", choices=("latent", "latent+spread"))
    parser.add_argument("--latent-prior", type=float, default=None)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    result = recalibrate_sigma(args.model, args.output, args.data, sigma=args.sigma,
                               latent_prior=args.latent_prior, split=args.split)
    keep = ("sigma_from", "spread_weight", "latent_prior", "sigma_scale", "mae", "sigma_spearman",
            "spread_sigma_spearman", "within_1sigma", "within_2sigma", "interval95", "within_interval95", "mean_sigma")
    print(json.dumps({k: result[k] for k in keep if k in result}, indent=1))


if __name__ == "__main__":
    main()
