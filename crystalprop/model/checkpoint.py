"""Checkpoints: MindSpore ``.ckpt`` weights plus crystalprop's metadata, saved atomically.

The metadata (JSON, stored in the checkpoint itself under ``crystalprop_metadata``)
holds everything needed to rebuild and use the model: architecture, graph settings,
target name and unit, target transform, crystalprop version, training data and metrics.
Loading rebuilds the network from it and checks every parameter by name and shape,
because MindSpore's own loader accepts missing and extra parameters silently.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from crystalprop import __version__
from crystalprop.utils.atomic import atomic_write
from crystalprop.utils.backend import mindspore_module
from crystalprop.graph.settings import GraphSettings
from crystalprop.model.ckpt_arrays import read_arrays
from crystalprop.model.config import ModelConfig

if TYPE_CHECKING:
    from crystalprop.model.matformer import Matformer

METADATA_KEY = "crystalprop_metadata"
STATE_KEY = "crystalprop_train_state"
"""A run's ``last.ckpt`` keeps its training state under this key (:mod:`crystalprop.training.trainer`)."""
FORMAT_VERSION = 6  # 2: the graph settings name the cell the graphs are built on; ensembles. 3: product members.
# 4: σ from the latent distance plus the spread. 5: atoms that carry site descriptors. 6: a floor for one element.
PRODUCTS_FORMAT = 3  # written only by ensembles with product members, which older readers would average wrongly
SPREAD_WEIGHT_FORMAT = 4  # written only where σ adds the spread to the latent σ, which older readers would drop
SITE_FORMAT = 5  # written only where atoms carry site descriptors, which older readers cannot build
ELEMENT_FLOOR_FORMAT = 6  # written only where a one-element crystal has a floor, which older readers would not apply
PLAIN_FORMAT = 2  # every other checkpoint, readable by the versions before product members
# Format-1 checkpoints (the first shipped models among them) say nothing about cells: they were
# trained on Materials Project cells as given (primitive but for 1 in the first 2,000 mp2018 files), and
# predict on the canonical cell within 0.1 % of their validation MAE (README, "Cells"), so they use it too.
LEGACY_CELL = "canonical"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model it describes."""


@dataclass
class TargetTransform:
    """Maps physical targets to the network's normalised output and back.

    Forward: y -> (log10(y) if log10 else y - mean) / std. Back, predictions below ``floor``
    (a physical bound such as 0 eV for a band gap) are raised to it; those of crystals of one element
    below ``element_floor`` to that (each member's, :func:`crystalprop.model.ensemble.combine`).
    """

    mean: float = 0.0
    std: float = 1.0
    log10: bool = False
    floor: float | None = None
    element_floor: float | None = None
    """A bound for crystals of one element alone, such as 0 for a formation energy: 0 for an element's ground
    state by definition and above it for its other forms, where a model of compounds can err below it."""


    def as_dict(self) -> dict:
        """Plain dict for JSON metadata; ``element_floor`` only where set, so that older readers read the rest."""
        fields = asdict(self)
        if self.element_floor is None:
            del fields["element_floor"]
        return fields

    def normalise(self, y: np.ndarray) -> np.ndarray:
        """Physical units -> network units."""
        y = np.asarray(y, dtype=np.float64)
        return ((np.log10(y) if self.log10 else y) - self.mean) / self.std

    def network_floor(self, bound: float | None = None) -> float:
        """The floor (or another ``bound``, such as ``element_floor``) in network units; -inf for none (or one at
        or below 0 under log10, which bounds nothing)."""
        bound = self.floor if bound is None else bound
        if bound is None or (self.log10 and bound <= 0):
            return -np.inf
        return float(self.normalise(np.array([bound]))[0])

    def physical(self, z: np.ndarray) -> np.ndarray:
        """Network units -> physical units."""
        y = np.asarray(z, dtype=np.float64) * self.std + self.mean
        y = 10.0**y if self.log10 else y
        return y if self.floor is None else np.maximum(y, self.floor)


@dataclass
class ModelCard:
    """What a checkpoint says about itself."""

    target: str
    unit: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphSettings = field(default_factory=GraphSettings)
    transform: TargetTransform = field(default_factory=TargetTransform)
    name: str = ""
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    elements: list[str] = field(default_factory=list)
    version: str = __version__
    ensemble: dict[str, Any] = field(default_factory=dict)
    """For an ensemble checkpoint: ``members`` (the networks stored; more than the members where some
    are products, see :mod:`crystalprop.model.ensemble`), ``sigma_scale`` and the calibration record."""

    def to_json(self) -> str:
        """Serialise for the checkpoint's metadata entry."""
        return json.dumps(
            {
                "format": self._format(),
                "crystalprop_version": self.version,
                "name": self.name,
                "description": self.description,
                "target": self.target,
                "unit": self.unit,
                "model": self.model.as_dict(),
                "graph": self.graph.as_dict(),
                "transform": self.transform.as_dict(),
                "training": self.training,
                "metrics": self.metrics,
                "elements": self.elements,
                **({"ensemble": self.ensemble} if self.ensemble else {}),
            }
        )

    def _format(self) -> int:
        """The oldest format that reads this card right: older readers refuse a newer one rather than
        average product members as plain ones, or take σ from the latent distance alone."""
        ensemble = self.ensemble or {}
        transforms = [self.transform.as_dict(), *ensemble.get("network_transforms", [])]
        if any(t.get("element_floor") is not None for t in transforms):
            return ELEMENT_FLOOR_FORMAT
        if self.model.site_features:
            return SITE_FORMAT
        if ensemble.get("spread_weight"):
            return SPREAD_WEIGHT_FORMAT
        return PRODUCTS_FORMAT if ensemble.get("combination") else PLAIN_FORMAT

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        """Parse metadata written by :meth:`to_json`."""
        raw = json.loads(text)
        if raw.get("format", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"written by a newer crystalprop ({raw.get('crystalprop_version')}); upgrade to read it"
            )
        model, graph = ModelConfig(**raw["model"]), GraphSettings(**{"cell": LEGACY_CELL, **raw["graph"]})
        if model.site_features != graph.site_features:
            raise CheckpointError("its network and its graph settings disagree on site descriptors "
                                  f"({model.site_features} and {graph.site_features})")
        return cls(
            target=raw["target"],
            unit=raw.get("unit", ""),
            model=model,
            graph=graph,
            transform=TargetTransform(**raw["transform"]),
            name=raw.get("name", ""),
            description=raw.get("description", ""),
            training=raw.get("training", {}),
            metrics=raw.get("metrics", {}),
            elements=raw.get("elements", []),
            version=raw.get("crystalprop_version", ""),
            ensemble=raw.get("ensemble", {}),
        )


def save_checkpoint(path: str | Path, net: Matformer, card: ModelCard, extra: dict | None = None) -> None:
    """Write weights + metadata (and optional extra tensors, e.g. optimizer state) atomically."""
    params = [{"name": name, "data": p} for name, p in net.parameters_and_names()]
    if extra:
        params += [{"name": k, "data": v} for k, v in extra.items()]
    _write(path, params, {METADATA_KEY: card.to_json()})


def save_ensemble(path: str | Path, card: ModelCard, members: list[dict[str, Any]],
                  extra: dict[str, np.ndarray] | None = None) -> None:
    """Write the members' weights (``member{k}.<name>``), any ``extra`` arrays by name (the latent
    σ reference) and the ensemble's card atomically."""
    from crystalprop.model.ensemble import member_key  # noqa: PLC0415  (ensemble builds on this module)

    ms = mindspore_module()
    params = [{"name": member_key(k, name), "data": ms.Tensor(as_array(value))}
              for k, member in enumerate(members) for name, value in member.items()]
    params += [{"name": name, "data": ms.Tensor(value)} for name, value in (extra or {}).items()]
    _write(path, params, {METADATA_KEY: card.to_json()})


def check_new_checkpoint(path: str | Path, overwrite: bool = True) -> Path:
    """``path`` for a model about to be written, checked before the work: a ValueError unless its name
    ends in .ckpt (MindSpore would add the suffix), an OutputExistsError where it exists and
    ``overwrite`` is false."""
    from crystalprop.utils.atomic import OutputExistsError  # noqa: PLC0415

    path = Path(path)
    if path.suffix != ".ckpt":
        raise ValueError(f"{path}: a model file's name ends in .ckpt (e.g. {path.with_suffix('.ckpt').name})")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: use --overwrite to replace it")
    return path


def _write(path: str | Path, params: list[dict], append: dict) -> None:
    """Write ``params`` and ``append`` as the checkpoint ``path`` (named .ckpt) atomically."""
    path = check_new_checkpoint(path)
    atomic_write(path, lambda tmp: mindspore_module().save_checkpoint(params, str(tmp), append_dict=append))


def saved_state(last: Path) -> dict:
    """The training state stored in a run's ``last.ckpt`` (read once: the file holds all the weights)."""
    payload = mindspore_module().load_checkpoint(str(last)).get(STATE_KEY)
    if not isinstance(payload, str):
        raise CheckpointError(f"{last}: no training state in this checkpoint")
    return json.loads(payload)


def why_ended(position: dict, epochs: int, patience: int | None) -> str | None:
    """Why a run at ``position`` (its training state: ``epoch``, ``bad_epochs``) has no epoch left: all ``epochs``
    trained, or its ``patience`` spent; None where it has epochs to train."""
    if position["epoch"] >= epochs:
        return "finished"
    if patience and position["bad_epochs"] >= patience:
        return f"no improvement for {patience} epochs"
    return None


def epochs_left(state: dict) -> str | None:
    """Where a run of :func:`saved_state` stands if it has epochs to train (not all trained, its patience not
    spent: still training, or stopped by a time budget or a signal, for ``--resume``), e.g. "3 of 40 epochs";
    None for a run that ended on its own (:func:`why_ended`)."""
    config, position = state["config"], state["state"]
    if why_ended(position, config["epochs"], config.get("patience")):
        return None
    return f"{position['epoch']} of {config['epochs']} epochs"


def read_checkpoint(path: str | Path, arrays: bool = False) -> tuple[ModelCard, dict[str, Any]]:
    """Read a checkpoint's card and raw parameter dict; refuse non-checkpoints clearly.

    ``arrays``: the parameters as numpy arrays, read without making a MindSpore Parameter of each
    (:mod:`crystalprop.model.ckpt_arrays`; the predictor's start-up, which then needs no MindSpore
    unless the file is one that reader leaves to MindSpore's loader), instead of Parameters.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    raw = read_arrays(path) if arrays else None
    if raw is None:
        ms = mindspore_module()
        try:
            raw = ms.load_checkpoint(str(path))
        except Exception as exc:  # MindSpore raises ValueError/RuntimeError for bad files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({reason})") from None
        if arrays:
            raw = {name: value if isinstance(value, str) else value.asnumpy() for name, value in raw.items()}
    text = raw.pop(METADATA_KEY, None)
    if not isinstance(text, str) and STATE_KEY in raw:
        raise CheckpointError(f"{path}: the training state of a run (kept to resume it), not a model: "
                              f"give {path.with_name('best.ckpt')}")
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: a MindSpore checkpoint without crystalprop metadata")
    try:
        card = ModelCard.from_json(text)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: bad JSON, or an unknown cell setting
        raise CheckpointError(f"{path}: damaged crystalprop metadata ({exc})") from None
    return card, raw


EMBEDDING = "atom_embedding.weight"
"""The atom embedding's weight (out, in): its inputs are the element's features, then the site descriptors."""


def with_site_inputs(card: ModelCard, params: dict[str, Any]) -> tuple[ModelCard, dict[str, Any]]:
    """``card`` and ``params`` of a model that reads no site descriptors, made to take graphs that carry
    them: every atom embedding (each member's) gets zero weights for the site columns, so its outputs are
    unchanged, and the card says it reads them. Lets such a model run, join or warm-start beside models
    that use them (one graph for all). A model that reads them is returned as it is."""
    from crystalprop.graph.site_features import N_SITE  # noqa: PLC0415

    if card.model.site_features:
        return card, params
    padded = dict(params)
    for name, value in params.items():
        if name == EMBEDDING or name.endswith("." + EMBEDDING):
            weight = as_array(value)
            padded[name] = np.concatenate([weight, np.zeros((weight.shape[0], N_SITE), weight.dtype)], axis=1)
    return _with_site_setting(card, True), padded


def on_one_graph(models: list[tuple[ModelCard, dict[str, Any]]]) -> list[tuple[ModelCard, dict[str, Any]]]:
    """``models`` (card, parameters) made to run on one graph: where any reads site descriptors, every one
    does (:func:`with_site_inputs`, outputs unchanged); otherwise as they are."""
    if any(card.model.site_features for card, _ in models):
        return [with_site_inputs(card, params) for card, params in models]
    return models


def without_site_inputs(card: ModelCard, network: dict[str, Any]) -> tuple[ModelCard, dict[str, Any]] | None:
    """One network of ``card`` (its parameters ``network``) as a model that reads no site descriptors, where
    its embedding gives them zero weights everywhere (a network padded by :func:`with_site_inputs`, such as
    the older members of a model whose newer ones read them); None where it reads them."""
    from crystalprop.graph.elements import N_FEATURES  # noqa: PLC0415

    if not card.model.site_features:
        return card, network
    weight = as_array(network[EMBEDDING])
    if weight[:, N_FEATURES:].any():
        return None
    return _with_site_setting(card, False), {**network, EMBEDDING: weight[:, :N_FEATURES]}


def _with_site_setting(card: ModelCard, on: bool) -> ModelCard:
    """``card`` with its network's and its graphs' site-descriptor settings both ``on`` (they must agree)."""
    return replace(card, model=replace(card.model, site_features=on), graph=replace(card.graph, site_features=on))


def site_start_refused(path: str | Path) -> str:
    """Why a run without site descriptors cannot start from ``path``, whose first network reads them."""
    return (f"{path}: its network reads site descriptors (its atoms' bond angles), which this run's would not: "
            "give --site-features to start from it")


def check_site_start(path: str | Path, site_features: bool) -> None:
    """Refuse, before any work, a warm start from ``path`` whose first network reads site descriptors for a
    run (``site_features`` false) whose network would not (:func:`without_site_inputs`)."""
    from crystalprop.model.ensemble import member_params  # noqa: PLC0415  (ensemble builds on this module)

    if site_features:
        return
    card, params = read_checkpoint(path, arrays=True)
    if without_site_inputs(card, member_params(card, params)[0]) is None:
        raise CheckpointError(site_start_refused(path))


def load_weights(net: Matformer, params: dict[str, Any], path: str | Path) -> None:
    """Load parameters into ``net``, refusing any missing, extra or mis-shaped one."""
    assign_weights(net, weight_set(net, params, path))


def assign_weights(net: Matformer, weights: list) -> None:
    """Put a :func:`weight_set` into ``net``; a compiled graph runs with them at its next call."""
    for (_, param), tensor in zip(net.parameters_and_names(), weights, strict=True):
        param.set_data(tensor)


def weight_set(net: Matformer, params: dict[str, Any], path: str | Path) -> list:
    """``params`` as tensors in ``net``'s parameter order, refusing any missing or mis-shaped one."""
    ms = mindspore_module()
    return [ms.Tensor(as_array(value)) for value in checked_params(parameter_shapes(net), params, path)]


def parameter_shapes(net: Matformer) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape by its name relative to ``net`` (whatever wraps it), in ``net``'s order."""
    return {name: tuple(p.shape) for name, p in net.parameters_and_names()}


def checked_params(expected: Mapping[str, tuple[int, ...]], params: dict[str, Any], path: str | Path) -> list:
    """``params``' values (arrays or Parameters) in the order of ``expected`` (name -> shape: a network's
    :func:`parameter_shapes`, or :meth:`ModelConfig.parameter_shapes`), refusing any missing or mis-shaped one."""
    found = {k: tuple(params[k].shape) for k in expected.keys() & params.keys()}
    missing = sorted(set(expected) - set(found))
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or wrong:
        details = []
        if missing:
            details.append(f"missing {len(missing)} parameter(s), e.g. {missing[0]}")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} with the wrong shape, e.g. {k} {found[k]} != {expected[k]}")
        raise CheckpointError(f"{path}: weights do not fit the model it describes: " + "; ".join(details))
    return [params[name] for name in expected]  # by relative name: MindSpore's loader matches global names


def as_array(value: Any) -> np.ndarray:
    """A parameter's value as a numpy array, whether read as an array or as a MindSpore Parameter."""
    return value if isinstance(value, np.ndarray) else value.asnumpy()


def load_model(path: str | Path) -> tuple[Matformer, ModelCard]:
    """Rebuild the network described by a checkpoint and load its weights (inference mode)."""
    card, params = read_checkpoint(path)
    return build_model(card, params, path), card


def build_model(card: ModelCard, params: dict[str, Any], path: str | Path) -> Matformer:
    """The network of ``card`` with ``params`` (an ensemble's first member) loaded (inference mode).

    Parameters are not randomly initialised first (0.25 s per network): ``load_weights``
    fills every one of them or raises.
    """
    from mindspore.nn.utils import no_init_parameters  # noqa: PLC0415  (MindSpore is imported lazily)

    from crystalprop.model.ensemble import member_params  # noqa: PLC0415  (ensemble builds on this module)
    from crystalprop.model.matformer import Matformer  # noqa: PLC0415  (MindSpore)

    with no_init_parameters():
        net = Matformer(card.model)
    load_weights(net, member_params(card, params)[0], path)
    net.set_train(False)
    return net
