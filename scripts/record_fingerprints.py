"""Add to a joined model the fingerprints of the crystals it was trained on, where it predates them.

    python scripts/record_fingerprints.py MODEL DATA OUT.ckpt

The structures of DATA whose ids the model records as trained on are read, their fingerprints
(reduced formula, volume per atom: :mod:`crystalprop.data.fingerprints`) packed into the card's split
record as ``trained_structures``, and the model written to OUT.ckpt with its weights unchanged, so
that ``crystalprop evaluate`` reports (and leaves out of ``--split unseen``) training crystals under
other ids. Runs trained since these records exist carry them already.
"""

from __future__ import annotations

import argparse

from crystalprop.data.datasets import ids_in_packed, load_dataset
from crystalprop.data.fingerprints import pack_fingerprints
from crystalprop.data.graph_cache import build_graphs
from crystalprop.evaluation.evaluate import recorded_split, split_settings
from crystalprop.model.checkpoint import read_checkpoint
from crystalprop.model.ensemble import save_with_card
from crystalprop.model.registry import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("output")
    args = parser.parse_args()
    _, path = resolve_model(args.model)
    card, params = read_checkpoint(path)
    if not card.ensemble:
        raise SystemExit(f"{path}: one network, not a joined model: join it first (crystalprop ensemble --sigma latent)")
    record = recorded_split(card.training)
    if not record.get("trained_ids"):
        raise SystemExit(f"{path}: records no training ids, so its training crystals cannot be found in {args.data}")
    dataset = load_dataset(args.data, card.target, **split_settings(card.training))
    trained = set(ids_in_packed([e.id for e in dataset.entries], record["trained_ids"]))
    entries = [e for e in dataset.entries if e.id in trained]
    if not entries:
        raise SystemExit(f"{args.data}: holds none of the structures {path} records it trained on")
    graphs, _ = build_graphs(entries, card.graph)
    found = [g for g in graphs if g is not None]
    record["trained_structures"] = pack_fingerprints(found)
    save_with_card(args.output, card, params)
    print(f"{args.output}: {len(found)} training structures fingerprinted "
          f"({len(trained)} trained ids found in {args.data}, {len(graphs) - len(found)} without a graph)")


if __name__ == "__main__":
    main()
