"""The shipped pretrained models and how names resolve to files.

The weights and cards live in the repository's top-level ``checkpoints/``; a wheel or a
plain ``pip install .`` carries them as the package data of ``crystalprop.checkpoints``
(``pyproject.toml`` maps that folder), so they sit beside the installed package.
The module imports no numpy at load: the command splits ``-m`` here before it limits numpy's
BLAS threads, which must come before numpy loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence


SHIPPED = ("formation_energy", "band_gap", "bulk_modulus", "shear_modulus")


def model_names(values: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The models named by ``values``: each a model or several separated by commas
    (``"band_gap,bulk_modulus"``), as ``-m`` takes them; a path object, or a string naming an
    existing file or folder, is one model, commas and all."""
    values = [values] if isinstance(values, (str, os.PathLike)) else list(values)
    return [part for value in values
            for part in ([os.fspath(value)] if not isinstance(value, str) or os.path.exists(value) else
                         [p.strip() for p in value.split(",") if p.strip()])]


def checkpoints_dir() -> Path:
    """``$CRYSTALPROP_CHECKPOINTS``, else the installed models, else the checkout's ``checkpoints/``."""
    override = os.environ.get("CRYSTALPROP_CHECKPOINTS")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent.parent  # crystalprop/
    installed = package / "checkpoints"  # a wheel or a non-editable install
    return installed if installed.is_dir() else package.parent / "checkpoints"


def no_models_reason() -> str | None:
    """Why there is no shipped model to list (the folder or ``$CRYSTALPROP_CHECKPOINTS`` named); None if there is one."""
    if available_models():
        return None
    folder = checkpoints_dir()
    where = (f"CRYSTALPROP_CHECKPOINTS names {folder}" if os.environ.get("CRYSTALPROP_CHECKPOINTS")
             else f"the models' folder {folder}")
    return f"{where}, which {'holds no model (.ckpt)' if folder.is_dir() else 'does not exist'}"


def available_models() -> list[str]:
    """Names of the shipped models present on disk, in the canonical order."""
    folder = checkpoints_dir()
    present = [n for n in SHIPPED if (folder / f"{n}.ckpt").is_file()]
    extra = sorted(p.stem for p in folder.glob("*.ckpt") if p.stem not in SHIPPED) if folder.is_dir() else []
    return present + extra


def resolve_model(name_or_path: str | os.PathLike) -> tuple[str, Path]:
    """(display name, checkpoint path) for a shipped model name or a ``.ckpt`` path/run dir.

    A shipped name given as text is the shipped model, also where a folder of that name lies in the working
    directory (a run's ``band_gap/`` would stand in for it unseen): give ``./band_gap`` or a Path for that."""
    shipped = checkpoints_dir() / f"{name_or_path}.ckpt"
    if isinstance(name_or_path, str) and Path(name_or_path).name == name_or_path and shipped.is_file():
        return name_or_path, shipped
    candidate = Path(name_or_path)
    if candidate.is_dir() and (candidate / "best.ckpt").is_file():
        return Path(os.path.abspath(candidate)).name, candidate / "best.ckpt"  # "." and "..": the folder's name
    if candidate.suffix == ".ckpt" or candidate.exists():
        if not candidate.is_file():
            from crystalprop.model.checkpoint import CheckpointError  # noqa: PLC0415  (numpy: after the CLI set BLAS)

            if (candidate / "ensemble.json").is_file():  # train --ensemble's record (training.jobs.ENSEMBLE_RECORD)
                try:
                    count = f" of {json.loads((candidate / 'ensemble.json').read_text())['members']}"
                except (OSError, ValueError, KeyError, TypeError):  # a record cut short: the count is no matter
                    count = ""
                raise CheckpointError(f"{candidate}: an ensemble{count} not joined yet (its members train in "
                                      f"{candidate / 'member0'} and on): `crystalprop train DATA -o {candidate} "
                                      "--resume` trains the rest and joins them")
            if (candidate / "last.ckpt").is_file():
                raise CheckpointError(f"{candidate}: no best.ckpt yet, the run stopped before its first validated "
                                      "epoch (its last.ckpt is for `crystalprop train ... --resume`)")
            raise CheckpointError(f"{candidate}: no such checkpoint file")
        return candidate.stem, candidate
    if shipped.is_file():
        return str(name_or_path), shipped
    known = ", ".join(available_models()) or f"none shipped ({no_models_reason()})"
    from crystalprop.model.checkpoint import CheckpointError  # noqa: PLC0415

    raise CheckpointError(f"unknown model {name_or_path!r}: give a .ckpt file, a run directory, or one of: {known}")


MODEL_COLUMNS = ("name", "target", "unit", "val MAE", "trained on", "epochs", "sha256")


def describe_models(models: Sequence[str | os.PathLike] = ()) -> list[list[str]]:
    """One row of :data:`MODEL_COLUMNS` per model of ``models`` (names, checkpoints, run folders; unknown ones
    raise CheckpointError), by default per available model, read from its card and weights; a file in the
    models folder that is no model (a run's last.ckpt, a broken copy) gets a row that says so."""
    from crystalprop.model.checkpoint import CheckpointError, read_checkpoint  # noqa: PLC0415
    from crystalprop.utils.hashing import cached_file_sha256  # noqa: PLC0415

    rows = []
    for name in models or available_models():
        label, path = resolve_model(name)
        try:
            card, _ = read_checkpoint(path)
        except CheckpointError as exc:
            if models:
                raise
            rows.append([label, f"not a model: {exc}", "", "", "", "", ""])
            continue
        metrics = card.metrics
        mae = metrics.get("log10_mae") if card.transform.log10 else metrics.get("mae")
        data = card.training.get("data", {})
        seen = data.get("n_val_trained_on")  # its start had trained on some of them: no figure on unseen crystals
        mae_text = "" if mae is None else f"{mae:.4f}" + (" (log10)" if card.transform.log10 else "") + (
            f" ({seen} of {data.get('n_val', '?')} val trained on)" if seen else "")
        rows.append([label, card.target, card.unit, mae_text, f"{data.get('n_train', '?')} crystals",
                     _epochs_text(card.training, joined=bool(card.ensemble)), cached_file_sha256(path)])
    return rows


def _epochs_text(training: dict, joined: bool = False) -> str:
    """A model's epochs in all its runs, and those of its last run (on the crystals it names) where they differ;
    a ``joined`` ensemble's members have runs of their own (its card gives them), so only the sum."""
    def text(value) -> str:
        return str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)

    last = training.get("epochs", "")
    total = training.get("cumulative_epochs", last)
    return text(total) if joined or text(total) == text(last) or last == "" else f"{text(total)} ({text(last)} in its last run)"
