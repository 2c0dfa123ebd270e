"""Save a finished run's last-epoch weights as a checkpoint with the run's card, e.g. to join the
members of a cross-validation fold as they ended rather than at the epoch the fold chose.

    .venv/bin/python scripts/last_epoch.py RUN_DIR OUT.ckpt

``best.ckpt`` holds the card and the weights of the best validation epoch; ``last.ckpt`` the train
cell's weights (``net.<name>``) and optimizer state at the end, and for a run with ``--ema`` the
weight average (``ema.<name>``), which is what such a run validates and keeps. The output has the card
(its validation metrics cleared: they belong to another epoch) and the last weights, or the average.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NET_PREFIX = "net."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()

    import mindspore as ms  # noqa: PLC0415

    from crystalprop.model.checkpoint import build_model, read_checkpoint, save_checkpoint  # noqa: PLC0415
    from crystalprop.training.averaging import saved_average  # noqa: PLC0415

    card, _ = read_checkpoint(args.run_dir / "best.ckpt")
    last = args.run_dir / "last.ckpt"
    saved = ms.load_checkpoint(str(last))
    average = saved_average(saved)
    params = average.weights if average else {k[len(NET_PREFIX):]: v for k, v in saved.items()
                                               if k.startswith(NET_PREFIX)}
    net = build_model(card, params, last)  # refuses missing or mis-shaped weights
    card.metrics = {}
    save_checkpoint(args.output, net, card)
    print(f"saved {args.output}: the last epoch of {args.run_dir}")


if __name__ == "__main__":
    sys.exit(main())
