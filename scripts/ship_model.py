"""Ship a trained run as a pretrained model: checkpoints/<name>.ckpt plus its model card.

    .venv/bin/python scripts/ship_model.py RUN_DIR|ENSEMBLE.ckpt NAME DATA [--target T] [--notes FILE]

Evaluates RUN_DIR/best.ckpt (or an ensemble joined by ``crystalprop ensemble``) on the validation split of DATA with the same code as
``crystalprop evaluate``, stores the metrics, data description and training budget in the
checkpoint's metadata, and writes checkpoints/<NAME>.md from the same facts.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_GOOD_FOR = (
    "- Disordered or partially occupied structures (refused: order them first).\n"
    "- Molecules, surfaces and slabs with vacuum: trained on bulk 3D crystals only (such inputs\n"
    "  are predicted with a warning and no σ).\n"
    "- Elements absent from the training data (listed above): predictions carry a warning.\n"
    "- Structures far from DFT-relaxed geometries (the training data are relaxed PBE structures).\n"
)
CELL_TEXT = {
    "canonical": "the canonical cell (Niggli-reduced primitive cell), in training and prediction alike, so "
                 "every cell of a crystal gives the same value (README, \"Cells\")",
    "as-given": "the cell as given, in training and prediction alike: a supercell or conventional cell of "
                "the same crystal can give a slightly different value (README, \"Cells\")",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("name")
    parser.add_argument("data")
    parser.add_argument("--target", default=None)
    parser.add_argument("--description", default="")
    parser.add_argument("--notes", default=None, help="Markdown file appended to the card (choices, gaps).")
    parser.add_argument("--cell", choices=("canonical", "as-given"), default=None,
                        help="Predict on these cells (default: those the run was trained on).")
    parser.add_argument("--trained-cell", choices=("canonical", "as-given"), default=None,
                        help="The cells the members were trained on, for an ensemble joined with `ensemble --cell` "
                             "(its card holds the cell it predicts on); default: the checkpoint's cell setting.")
    parser.add_argument("--floor", type=float, default=None,
                        help="Set the card's physical lower bound (e.g. 0 for band gaps) before evaluating.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from crystalprop.utils.backend import set_device  # noqa: PLC0415

    set_device("CPU")  # before any network is built
    from crystalprop.evaluation.evaluate import evaluate_model  # noqa: PLC0415
    from crystalprop.model.checkpoint import build_model, read_checkpoint, save_checkpoint  # noqa: PLC0415
    from crystalprop.model.ensemble import save_with_card  # noqa: PLC0415

    source = Path(args.run_dir)
    best = source if source.suffix == ".ckpt" else source / "best.ckpt"
    card, params = read_checkpoint(best)
    net = build_model(card, params, best)
    if args.floor is not None:
        card.transform.floor = args.floor
    args.trained_cell = args.trained_cell or card.graph.cell
    if args.cell is not None:
        card.graph = replace(card.graph, cell=args.cell)
    card.name, card.description = args.name, args.description
    out = ROOT / "checkpoints" / f"{args.name}.ckpt"

    def save() -> None:
        if card.ensemble:
            save_with_card(out, card, params)
        else:
            save_checkpoint(out, net, card)

    save()
    metrics = evaluate_model(str(out), args.data, target=args.target, split="val")
    card.metrics = {k: v for k, v in metrics.items()  # the figures and counts; the records left out are in the data
                    if k not in ("checkpoint", "files", "model", "provenance", "skipped", "unusable", "data_notes")}
    save()
    notes = Path(args.notes).read_text() if args.notes else ""
    (ROOT / "checkpoints" / f"{args.name}.md").write_text(render_card(card, metrics, args) + notes)
    print(json.dumps(card.metrics, indent=2))


def repo_layout(path: str) -> str:
    """``path`` as seen from a clone with the shared data beside it (``../shared/...``)."""
    _, sep, tail = str(path).partition("/shared/")
    return f"../shared/{tail}" if sep else str(path)


def ensemble_lines(card, m: dict) -> list[str]:
    """The card's account of an ensemble: members, calibration of σ and how well σ ranks errors."""
    e = card.ensemble
    files = e.get("member_files", [])
    members = ", ".join(f"{f.get('name') or f['file']} ({f.get('val_mae', float('nan')):.4g})" for f in files)
    unit = card.unit
    if e.get("sigma_from") in ("latent", "latent+spread"):
        reference = e["latent_reference"]
        raw = (f"mean distance from the structure to its {e['latent_neighbours']} nearest training structures "
               f"(n = {reference['n']}) in the first member's readout features (standardised, "
               f"{e['latent_dimensions']} principal axes) times "
               + (f"(the ensemble's mean absolute error on those neighbours + {e['latent_prior']:g} × its mean "
                  f"absolute error on all {reference['n']} training structures, {reference['mae']:.4g} {card.unit}; "
                  f"`--latent-prior "
                  f"{e['latent_prior']:g}`)" if e.get("latent_prior") else
                  "the ensemble's mean absolute error on those neighbours")
               + (f", plus {e['spread_weight']:.4g} × the members' standard deviation (the ratio of the two's medians "
                  "on the validation split)" if e.get("spread_weight") else "")
               + f" (`crystalprop ensemble --sigma {e['sigma_from']}`; README, \"Ensembles and error bars\")")
    else:
        raw = "standard deviation of their predictions"
    count = len(files) or e["members"]
    one = count == 1
    return [
        "",
        "## Uncertainty: one model with a latent σ" if one else f"## Uncertainty: ensemble of {count} members",
        ("- The value is the model's prediction" if one else
         "- The value is the members' mean (in log10 for a log10 target)") + f"; σ (`{card.name}_std`, {unit}) is the "
        f"{raw}, times {e['sigma_scale']:.4g}, the one scale for which the "
        f"Gaussian intervals ± z·σ cover the validation errors as often as they should, averaged over "
        f"5-95 % (n = {e['calibrated_on']['n']}).",
        f"- {'Model' if one else 'Members'} and {'its' if one else 'their'} own validation MAE ({unit}): {members}.",
        f"- On the validation split: Spearman(σ, |error|) {m['sigma_spearman']:.3f}; |error| ≤ σ for "
        f"{100 * m['within_1sigma']:.1f} % and ≤ 2σ for {100 * m['within_2sigma']:.1f} % (68 % and 95 % for "
        f"Gaussian errors); mean σ {m['mean_sigma']:.4g} {unit}. The scale was fitted on this split, so the "
        + ("coverages are in-sample for two parameters (the spread's weight and the scale); the Spearman correlation "
           "depends on the weight only." if e.get("spread_weight") else
           "coverages are in-sample for one parameter; the Spearman correlation does not depend on it."),
        *([f"- 95 % interval: `{card.name}_err95` = {e['interval95']:.3f} σ, the least multiple of σ that holds 95 % of "
           "the validation errors (the errors' tails are heavier than a Gaussian's, so 2σ holds fewer); cross-fitted "
           "on halves of the split: `python scripts/interval_crossfit.py DIR/predictions.csv` after "
           "`crystalprop evaluate NAME DATA --split val -o DIR`."] if e.get("interval95") else []),
        "- `crystalprop evaluate NAME DATA -o DIR` draws the calibration plot (`calibration.png`).",
    ]


def warm_start(init_from: str | None) -> str:
    """What the run started from: a shipped model (checkpoints/NAME.ckpt) or another run's weights."""
    if not init_from:
        return "none (from scratch)"
    path = Path(init_from)
    if path.parent.name == "checkpoints":
        return f"{path.stem}, the shipped model of that name at the time"
    return f"{path.parent.name if path.name in ('best.ckpt', 'last.ckpt') else path.stem} ({path.name})"


def cells_line(cell: str, trained_cell: str) -> str:
    """The card's line on the cells the graphs are built on, in training and in prediction."""
    if cell == trained_cell:
        return f"- Cells: graphs are built on {CELL_TEXT[cell]}."
    return (f"- Cells: trained on {'the cells as given' if trained_cell == 'as-given' else 'canonical cells'} "
            f"(`--cell {trained_cell}`); predicts on {CELL_TEXT[cell].replace(', in training and prediction alike', '')}. "
            "The validation figures below are measured on the cells it predicts on.")


def render_card(card, m: dict, args) -> str:
    t = card.training
    cfg, data = t.get("config", {}), t.get("data", {})
    model = card.model.as_dict()
    log = card.transform.log10
    lines = [
        f"# `{card.name}`: {card.target} ({card.unit})",
        "",
        card.description,
        "",
        "## Data and split",
        f"- Training data: `{repo_layout(data.get('source', '?'))}`, "
        f"target `{card.target}` in {card.unit}{' (learned as log10)' if log else ''}.",
        f"- Split: {repo_layout(data.get('split', '?'))}: {data.get('n_train', '?')} training and {data.get('n_val', '?')} "
        f"validation crystals; {data.get('n_skipped', 0)} records skipped (no label or unreadable).",
        "- Model selection on the validation split only.",
        "",
        "## Model",
        f"- Matformer, {model['layers']} layers, {model['features']} features, {model['heads']} head(s), "
        f"fc {model['fc_features']}; graph: cutoff {card.graph.cutoff} Å, {card.graph.max_neighbors} neighbours, "
        f"lattice edges {'on' if card.graph.use_lattice else 'off'}"
        + ("; each atom also carries 13 descriptors of its first neighbour shell, bond angles among them "
           "(`--site-features`)." if card.graph.site_features else "."),
        cells_line(card.graph.cell, args.trained_cell),
        f"- Target transform: {'log10, then ' if log else ''}standardised with mean {card.transform.mean:.5g}, "
        f"std {card.transform.std:.5g} (training split)"
        + (f"; predictions below {card.transform.floor:g} {card.unit} are raised to it." if card.transform.floor
           is not None else "."),
        "",
        "## Training budget",
        f"- This run: {t.get('epochs')} epochs (best point of a {cfg.get('epochs')}-epoch {cfg.get('schedule')} "
        f"schedule), {t.get('wall_hours')} wall-clock hours on a {t.get('cpu_threads', 2)}-core CPU (shared with "
        f"other work), batch {cfg.get('batch_size')}, AdamW peak lr {cfg.get('lr')}, {cfg.get('loss')} loss, "
        f"seed {cfg.get('seed')}.",
        f"- Warm start: {warm_start(t.get('init_from'))}; "
        f"cumulative including the weights it started from: {t.get('cumulative_epochs', t.get('epochs'))} epochs, "
        f"{t.get('cumulative_wall_hours', t.get('wall_hours'))} wall-clock hours.",
        "",
        "## Validation metrics (measured with `crystalprop evaluate`)",
        "| n | MAE | RMSE | R² | max error |",
        "|---|---|---|---|---|",
        f"| {m['n']} | {m['mae']:.4f} {card.unit} | {m['rmse']:.4f} | {m['r2']:.4f} | {m['max_error']:.3f} |",
    ]
    if log:
        lines += ["", f"In log10(GPa): MAE {m['log10_mae']:.4f}, RMSE {m['log10_rmse']:.4f}, R² {m['log10_r2']:.4f}."]
    if "mae_zero_targets" in m:
        lines += ["", f"Metals (true gap = 0, n = {m['n_zero_targets']}): MAE {m['mae_zero_targets']:.4f} {card.unit}; "
                      f"gapped materials (n = {m['n'] - m['n_zero_targets']}): MAE {m['mae_nonzero_targets']:.4f} {card.unit}."]
    if card.ensemble:
        lines += ensemble_lines(card, m)
    lines += [
        "",
        "Reproduce:",
        "```bash",
        f".venv/bin/crystalprop evaluate {card.name} {repo_layout(args.data)} --split val",
        "```",
        "",
        "## Element coverage",
        ", ".join(card.elements) + f" ({len(card.elements)} elements).",
        "",
        "## Not good for",
        NOT_GOOD_FOR,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
