"""The training loop: resumable, time-bounded, interruptible, deterministic with a seed.

Deterministic means: the same seed, data, batch size and thread count give the same run. The
fused kernels' results do not depend on the thread count (their LayerNorm gradients sum fixed
blocks of rows in order); MindSpore's own CPU ops were not checked for that.

A run directory holds ``best.ckpt`` (best validation MAE, a normal checkpoint usable by
``predict`` and ``evaluate``), ``last.ckpt`` (weights, optimizer state and loop position,
to resume from), ``history.csv``, ``skipped.log`` and ``train.log``. Every file is written
atomically, so a run killed at any moment leaves loadable checkpoints behind. With
``TrainConfig.ema`` the run validates, and keeps as ``best.ckpt``, a moving average of its weights
(:mod:`crystalprop.training.averaging`), which ``last.ckpt`` stores beside the weights.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from crystalprop.utils.atomic import atomic_write, atomic_write_text
from crystalprop.utils.backend import cpu_threads, ensure_device, mindspore_module
from crystalprop.graph.batch import collate
from crystalprop.graph.neighbors import CrystalGraph
from crystalprop.evaluation.metrics import regression_metrics
from crystalprop.model.checkpoint import (
    STATE_KEY,
    CheckpointError,
    ModelCard,
    TargetTransform,
    as_array,
    read_checkpoint,
    save_checkpoint,
    site_start_refused,
    why_ended,
    with_site_inputs,
    without_site_inputs,
)
from crystalprop.model.ensemble import combine, member_params, network_transform, one_element
from crystalprop.model.inference import batch_tensors, predict_graphs
from crystalprop.model.matformer import Matformer, input_signature
from crystalprop.utils.stopping import TRAINING_STOP_SIGNALS as STOP_SIGNALS
from crystalprop.training.averaging import WeightAverage, saved_average
from crystalprop.graph.settings import EVAL_BATCH_SIZE
from crystalprop.model.config import ModelConfig
from crystalprop.training.config import TrainConfig, changed_settings
from crystalprop.training.distributed import Cluster
from crystalprop.training.schedule import learning_rate

ms = mindspore_module()
nn, ops = ms.nn, ms.ops

SAVE_EVERY_S = 600.0  # last.ckpt is also refreshed mid-epoch, so a kill loses at most this much


RUN_LEGACY_CELL = "as-given"
"""The cells of a run saved before the cell setting existed: graphs were built on the file's cell."""


def saved_cell(state: dict) -> str:
    """The cell setting of a run's :func:`saved_state` (``as-given`` for runs that predate it)."""
    return state["config"].get("graph", {}).get("cell", RUN_LEGACY_CELL)


SPLIT_SETTINGS = ("seed", "val_fraction", "test_fraction", "limit")
"""What a run's ``last.ckpt`` keeps of how its split was drawn (the seed: of a random split)."""


def saved_split(state: dict) -> dict:
    """How the split of a run's :func:`saved_state` was drawn (:data:`SPLIT_SETTINGS`; empty for runs
    that predate the record)."""
    return state.get("split") or {}


def saved_fold(state: dict) -> tuple[int, int] | None:
    """The cross-validation fold of a run's :func:`saved_state` (None: no fold, or a run that predates folds)."""
    fold = state.get("fold")
    return tuple(fold) if fold else None


OVER_TIME = "time budget reached"
"""Why a run stopped at its --max-time: the one stop that keeps its partial epoch's best weights."""


class TrainingError(RuntimeError):
    """Training cannot start or had to stop (NaN loss, locked run directory, ...)."""


class _LossNet(nn.Cell):
    """Network + loss on normalised targets, each structure's loss times its weight (all 1 without
    ``--emphasize``; :func:`sample_weights`), averaged, times this worker's share of the global batch.

    ``floor`` (network units; -inf without ``--floor``): a target at the floor, such as a metal's band
    gap of 0, is compared with the prediction raised to the floor, as validation and users see it. A
    metal predicted at or below 0 eV then costs nothing and sends no gradient, instead of being pulled
    to exactly 0 (L1 pulls with full force however close it is); targets above the floor keep their
    loss, so a semiconductor predicted as a metal is still pushed up.
    """

    def __init__(self, net: Matformer, loss: str) -> None:
        super().__init__()
        self.net = net
        self.loss = {"mse": nn.MSELoss(reduction="none"), "l1": nn.L1Loss(reduction="none"),
                     "huber": nn.HuberLoss(reduction="none", delta=1.0)}[loss]

    def construct(self, node_features, src, dst, distance_index, edge_weight, distances, node_graph, inverse_counts,
                  targets, weights, share, floor):
        pred = self.net(node_features, src, dst, distance_index, edge_weight, distances, node_graph, inverse_counts)
        pred = ops.select(targets <= floor, ops.maximum(pred, floor), pred)
        return ops.mean(self.loss(pred, targets) * weights) * share


def normalised_floor(transform: TargetTransform) -> np.float32:
    """The transform's floor in network units, as the loss compares it; -inf for none (or none in log10)."""
    return np.float32(transform.network_floor())


def emphasized(targets: np.ndarray, emphasis: tuple[float, float, float]) -> np.ndarray:
    """Which targets lie in the range (low, high] of ``emphasis`` (low, high, factor)."""
    low, high, _ = emphasis
    return (targets > low) & (targets <= high)


def sample_weights(targets: np.ndarray, emphasis: tuple[float, float, float] | None) -> np.ndarray:
    """Each training structure's weight in the loss: ``factor`` for a target in (low, high] of
    ``emphasis``, 1 otherwise, scaled so that the mean is 1 (the learning rate keeps its meaning).

    Why: an L1 loss fits the median of what the network cannot tell apart, so a sparse range, such as
    band gaps of 0-1 eV between the metals and the wide gaps, is pulled toward its neighbours;
    weighting it trades some accuracy elsewhere for accuracy there."""
    weights = np.ones(len(targets), np.float64)
    if emphasis is not None:
        weights[emphasized(targets, emphasis)] = emphasis[2]
    return (weights / weights.mean()).astype(np.float32)


def _optimizer(net: Matformer, lr: float, weight_decay: float):
    """AdamW; no weight decay on biases and normalisation parameters."""
    decay = [p for p in net.trainable_params() if p.ndim >= 2]
    no_decay = [p for p in net.trainable_params() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return nn.AdamWeightDecay(groups, learning_rate=lr)


def _train_cell(net: Matformer, config: TrainConfig):
    optimizer = _optimizer(net, config.lr, config.weight_decay)
    cell = nn.TrainOneStepCell(_LossNet(net, config.loss), optimizer)
    targets, weights = ms.Tensor(shape=[None], dtype=ms.float32), ms.Tensor(shape=[None], dtype=ms.float32)
    share, floor = ms.Tensor(shape=[], dtype=ms.float32), ms.Tensor(shape=[], dtype=ms.float32)
    cell.set_inputs(*input_signature(config.model.atom_inputs), targets, weights, share, floor)
    return cell, optimizer


def _rescale_output(net: Matformer, source: TargetTransform, target: TargetTransform) -> None:
    """Make the output layer give in ``target``'s standardisation what it gave in ``source``'s: the same
    value y = z · std + mean (or its log10), so z' = (z · std_s + mean_s − mean_t) / std_t."""
    ratio = source.std / target.std
    weight, bias = net.fc_out.weight, net.fc_out.bias
    weight.set_data(ms.Tensor(weight.asnumpy() * ratio, weight.dtype))
    bias.set_data(ms.Tensor(bias.asnumpy() * ratio + (source.mean - target.mean) / target.std, bias.dtype))


class _RunLock:
    """A lock file so two trainings never write into the same run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"

    def __enter__(self) -> "_RunLock":
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = self.path.read_text().strip() or "?"
            if pid.isdigit() and not _alive(int(pid)):
                self.path.unlink(missing_ok=True)
                return self.__enter__()
            raise TrainingError(f"{self.path.parent}: another training (pid {pid}) is using this run directory") from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    best_val_mae: float
    best_epoch: int
    epochs_done: int
    stopped_because: str
    run_dir: Path
    history: list[dict]
    validated: bool = True
    """False where the run had no validation structures: ``best_val_mae`` is then the training loss."""
    stop_signal: int | None = None
    """The signal that stopped an ``interrupted`` run (SIGTERM, SIGINT); None otherwise."""
    n_skipped: int = 0
    """Records of the data left out (listed in skipped.log)."""
    start_score: float | None = None
    """The validation score of the weights a warm start of the same target began from (None otherwise):
    where no epoch beats it, the fine-tune made the model worse on this split."""
    start_model_score: float | None = None
    """Where those weights are the first network of a joined model: that model's own score on the same structures."""


@dataclass
class _Loop:
    """What the parts of one training loop share: network, train cell, target transform and loop state."""

    net: Matformer
    cell: object
    optimizer: object
    transform: TargetTransform
    state: dict
    y_train: np.ndarray
    weights: np.ndarray
    floor: np.float32
    steps_per_epoch: int
    total_steps: int
    started: float
    """When the run would have started had it never stopped (``time.monotonic``, earlier sessions counted)."""
    epoch_started: float | None = None
    """When the current epoch would have started had the run never stopped (its earlier sessions counted);
    None until this session starts one."""
    session_started: float = field(default_factory=time.monotonic)
    """When this process took the run up: ``--max-time`` is the budget of each session, so a job resumed
    under a cluster's time limit with the same budget goes on where it stopped."""
    last_save: float = 0.0
    diverged: bool = False
    average: WeightAverage | None = None

    def averaged(self):
        """Context in which the network holds the weights that are validated and kept: the moving
        average with ``--ema``, else its own."""
        return self.average.applied() if self.average is not None else nullcontext()


class Trainer:
    """Train a Matformer on graphs with targets; see the module docstring for the files.

    ``split_ids``: the packed ids of the run's training and validation records
    (:func:`crystalprop.training.run.split_ids`), kept in last.ckpt so that a resume can tell other data.
    ``score_start(path)``: the score and number of networks of the model a warm start of the same target takes its
    first network from, on the validation structures, where it joins several
    (:func:`crystalprop.evaluation.evaluate.joined_model_score`); None for one network."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        train: tuple[Sequence[CrystalGraph], np.ndarray],
        val: tuple[Sequence[CrystalGraph], np.ndarray],
        *,
        data_description: dict | None = None,
        split_ids: dict[str, str] | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        cluster: Cluster = Cluster(),
        score_start: Callable[[Path], tuple[float, int] | None] | None = None,
    ) -> None:
        ensure_device()
        self.score_start = score_start
        self.config = config
        self.run_dir = Path(run_dir)
        self.train_graphs, self.train_y = list(train[0]), np.asarray(train[1], dtype=np.float64)
        self.val_graphs, self.val_y = list(val[0]), np.asarray(val[1], dtype=np.float64)
        if not self.train_graphs:
            raise TrainingError("no training structures")
        if config.log10 and (self.train_y <= 0).any():
            raise TrainingError(f"--log10 needs positive targets; {int((self.train_y <= 0).sum())} are <= 0")
        below = int((self.train_y < config.floor).sum()) if config.floor is not None else 0
        if below:
            raise TrainingError(f"--floor {config.floor:g} is a lower bound, but {below} training targets lie "
                                f"below it (lowest {self.train_y.min():g})")
        if config.emphasis is not None:
            low, high, factor = config.emphasis
            if not emphasized(self.train_y, config.emphasis).any():
                raise TrainingError(f"--emphasize {low:g} {high:g} {factor:g}: no training target lies in "
                                    f"({low:g}, {high:g}] (they span {self.train_y.min():g} to {self.train_y.max():g})")
        self.data_description = data_description or {}
        self.split_ids = split_ids
        self.cluster = cluster
        self.on_event = cluster.events(on_event)
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.history: list[dict] = []
        self.prior_training: dict = {}

    # -- set-up -----------------------------------------------------------------------
    def _transform(self) -> TargetTransform:
        y = np.log10(self.train_y) if self.config.log10 else self.train_y
        return TargetTransform(mean=float(y.mean()), std=float(y.std() or 1.0), log10=self.config.log10,
                               floor=self.config.floor, element_floor=self.config.element_floor)

    def _card(self, transform: TargetTransform, metrics: dict, elapsed_h: float, epochs: float) -> ModelCard:
        prior = self.prior_training
        training = {
            "config": self.config.as_dict(),
            "data": self.data_description,
            "epochs": epochs,
            "wall_hours": round(elapsed_h, 4),
            "cumulative_wall_hours": round(prior.get("cumulative_wall_hours", 0.0) + elapsed_h, 4),
            "cumulative_epochs": round(prior.get("cumulative_epochs", 0.0) + epochs, 3),
            "cpu_threads": cpu_threads(),
            "workers": self.cluster.size,
            "init_from": prior.get("init_from"),
        }
        from pymatgen.core import Element  # noqa: PLC0415

        # a warm start of the same target keeps what its start was trained on, as its record keeps the ids
        elements = sorted({int(z) for g in self.train_graphs for z in np.unique(g.atomic_numbers)}
                          | {Element(symbol).Z for symbol in prior.get("elements", [])})

        return ModelCard(
            target=self.config.target,
            unit=self.config.unit,
            model=self.config.model,
            graph=self.config.graph,
            transform=transform,
            training=training,
            metrics=metrics,
            elements=[Element.from_Z(z).symbol for z in elements],
        )

    def _init_from(self, net: Matformer, path: str | Path, transform: TargetTransform) -> bool:
        """Warm start: copy every parameter of a model of the same sizes (an ensemble's first member).

        Where the source learned this run's target (same name and log10), its output layer is re-expressed
        in this run's ``transform`` (fitted to this run's training targets, as every member of a split
        shares it), so training starts from the source's own predictions: a fine-tune on a few structures
        of a narrow range otherwise began with the source's outputs rescaled and shifted. Returns whether it
        did (the same target, in the same unit)."""
        card, params = read_checkpoint(path)
        if self.config.model.site_features:  # a start without them learns them from zero weights
            card, params = with_site_inputs(card, member_params(card, params)[0])
        else:  # a start that reads them is refused, unless its network gives them zero weights
            start = without_site_inputs(card, member_params(card, params)[0])
            if start is None:
                raise CheckpointError(site_start_refused(path))
            card, params = start
        params = {name: ms.Tensor(as_array(value)) for name, value in params.items()}
        own = dict(net.parameters_and_names())
        loaded = 0
        for name, param in own.items():
            if name in params and tuple(params[name].shape) == tuple(param.shape):
                param.set_data(params[name])
                loaded += 1
        if loaded < len(own) or card.model != self.config.model:  # a deeper model fits a shallower one's names
            def sizes(model) -> str:
                heads = f"{model.heads} head{'s' if model.heads != 1 else ''}"
                layers = f"{model.layers} layer{'s' if model.layers != 1 else ''}"
                return f"{layers}, {model.features} features, {heads}, fc {model.fc_features}"

            missing = (name for name, param in own.items()
                       if name not in params or tuple(params[name].shape) != tuple(param.shape))
            fit = f"{loaded} of this model's {len(own)} parameters fit"
            if card.model != self.config.model:  # all may fit by name where a deeper model holds a shallower one
                counted = f" (only {fit})" if loaded < len(own) else ""
                raise CheckpointError(f"{path}: its model has {sizes(card.model)}, this run "
                                      f"{sizes(self.config.model)}{counted}: give the same sizes to start from it")
            raise CheckpointError(f"{path}: {fit} (e.g. {next(missing)} has no counterpart of its shape there), "
                                  "so it cannot be a warm start")
        source = network_transform(card)
        other_unit = bool(card.unit and self.config.unit and card.unit != self.config.unit)
        same_target = card.target == self.config.target and source.log10 == self.config.log10 and not other_unit
        inherited = same_target and not self.config.unit and card.unit
        if inherited:  # a fine-tune without --unit keeps its start's, so its card names one
            self.config.unit = card.unit
        self.prior_training = {
            "init_from": os.path.abspath(path),  # absolute, so that a resume from elsewhere compares it
            "cumulative_wall_hours": card.training.get("cumulative_wall_hours", card.training.get("wall_hours", 0.0)),
            "cumulative_epochs": card.training.get("cumulative_epochs", card.training.get("epochs", 0.0)),
            **({"elements": list(card.elements)} if same_target else {}),
        }
        kept = self._keep_start_floors(source, transform) if same_target else {}
        if same_target:  # its values in this run's standardisation; in another unit they would be read wrongly
            _rescale_output(net, source, transform)
        self.on_event("init_from", {"path": str(path), "loaded": loaded, "total": len(own),
                                    "same_target": same_target,
                                    **({"units": [card.unit, self.config.unit]} if other_unit else {}),
                                    **({"unit_from_start": card.unit} if inherited else {}),
                                    **({"floors_from_start": kept} if kept else {})})
        return same_target

    def _keep_start_floors(self, source: TargetTransform, transform: TargetTransform) -> dict[str, float]:
        """A fine-tune of its start's target keeps the start's ``floor`` and ``element_floor`` where this run
        gives none (in its config and ``transform``) and none of its labels lies below it: a band gap's 0 eV floor
        dropped unseen gave negative gaps and scored the start unfloored. Returns those kept, by name."""
        kept = {}
        for name in ("floor", "element_floor"):
            bound = getattr(source, name)
            if getattr(self.config, name) is None and bound is not None and not self._labels_below(name, bound):
                kept[name] = bound
                setattr(self.config, name, bound)
                setattr(transform, name, bound)
        return kept

    def _labels_below(self, name: str, bound: float) -> int:
        """How many of the run's labels lie below ``bound`` as floor ``name`` would apply it (all labels for
        ``floor``, those of one-element crystals for ``element_floor``): such a bound is not the data's."""
        labels = np.concatenate([self.train_y, self.val_y])
        if name == "element_floor":
            labels = labels[one_element([*self.train_graphs, *self.val_graphs])]
        return int((labels < bound).sum())

    # -- the loop -----------------------------------------------------------------------
    def run(self, *, resume: bool = False, init_from: str | Path | None = None) -> TrainResult:
        """Train until the epochs, the patience or the time budget run out, or Ctrl-C."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.cluster.is_main:
            return self._run(resume, init_from)
        with _RunLock(self.run_dir):
            return self._run(resume, init_from)

    def _run(self, resume: bool, init_from) -> TrainResult:
        loop = self._setup(resume, init_from)
        # SIGTERM stops cleanly. MindSpore 2.10 takes SIGINT over while a graph runs and ends the
        # process, so `crystalprop train` runs this loop in its own session and turns Ctrl-C
        # into SIGTERM (see training/launch.py); SIGINT is still caught here between steps.
        previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS}
        loop.last_save = time.monotonic()
        if self._why_done(loop) is None:  # else a finished run, resumed: nothing to start
            self.on_event("start", {"steps_per_epoch": loop.steps_per_epoch, "epochs": self.config.epochs,
                                    "epoch": loop.state["epoch"], "n_train": len(self.train_graphs),
                                    "n_val": len(self.val_graphs)})
        try:
            stopped_because = self._epochs(loop)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if not loop.diverged:
                self._save_loop(loop)
        return self._finish(loop, stopped_because)

    def _setup(self, resume: bool, init_from) -> _Loop:
        """Seeded network and optimizer, and the loop's state: fresh, warm-started, or resumed from last.ckpt."""
        cfg = self.config
        ms.set_seed(cfg.seed)
        net = Matformer(cfg.model)
        if self.cluster.distributed:
            net.sync_batch_statistics()
        cell, optimizer = _train_cell(net, cfg)
        transform = self._transform()
        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_mae": float("inf"), "best_epoch": 0,
                 "bad_epochs": 0, "elapsed_s": 0.0}
        saved = None
        if resume:
            state, saved = self._restore(cell, self.run_dir / "last.ckpt", state)
            transform = TargetTransform(**state["transform"])
            started = self.prior_training.get("init_from")
            if init_from and (not started or os.path.abspath(init_from) != os.path.abspath(started)):
                # the weights go on from last.ckpt: say so, not silently
                self.on_event("init_from_unused", {"given": str(init_from), "started": started})
        elif init_from and self._init_from(net, init_from, transform) and self.val_graphs:
            # the start's own score, so that a fine-tune that only makes it worse says so (train's report)
            _, key, state["start_score"] = self._validate(net, transform, [])
            self.on_event("start_score", {"score": state["start_score"], "key": key})
            joined = self.score_start(Path(init_from)) if self.score_start else None
            if joined is not None:  # the model the weights came from, as evaluate scores it
                state["start_model_score"] = joined[0]
                self.on_event("start_model_score", {"score": joined[0], "networks": joined[1], "key": key,
                                                    "path": str(init_from)})
        y_train = transform.normalise(self.train_y).astype(np.float32)
        steps_per_epoch = (len(self.train_graphs) + cfg.batch_size - 1) // cfg.batch_size
        average = WeightAverage(net, cfg.ema, saved) if cfg.ema else None  # a resume without one starts it here
        weights = sample_weights(self.train_y, cfg.emphasis)
        return _Loop(net, cell, optimizer, transform, state, y_train, weights, normalised_floor(transform),
                     steps_per_epoch, steps_per_epoch * cfg.epochs, started=time.monotonic() - state["elapsed_s"],
                     average=average)

    def _epochs(self, loop: _Loop) -> str:
        """Train epoch after epoch; why the loop ended (finished, a stop, the time budget, the patience)."""
        while (done := self._why_done(loop)) is None:
            earlier = loop.state.get("epoch_elapsed_s", 0.0) if loop.state["step_in_epoch"] else 0.0
            loop.epoch_started = time.monotonic() - earlier
            stopped_because, losses, lr = self._train_epoch(loop)
            if stopped_because != "finished":
                if stopped_because == OVER_TIME:  # a signal's stop is resumed: the epoch goes on
                    self._keep_partial_epoch(loop, losses)
                return stopped_because
            record = self._end_epoch(loop, losses, lr)
            self.on_event("epoch", record)
        return done

    def _why_done(self, loop: _Loop) -> str | None:
        """Why the run has no epoch left (all trained, or the patience spent, also when resumed), or None."""
        return why_ended(loop.state, self.config.epochs, self.config.patience)

    def _train_epoch(self, loop: _Loop) -> tuple[str, list[float], float]:
        """The steps of the current epoch from where it stands; (finished or why it stopped, losses, last lr).

        Every worker stops at the same step if any of them is asked to or runs out of time.
        """
        cfg, state = self.config, loop.state
        epoch = state["epoch"]
        order = np.random.default_rng(cfg.seed * 100_003 + epoch).permutation(len(self.train_graphs))
        loop.net.set_train(True)
        losses = state.pop("epoch_losses", []) if state["step_in_epoch"] else []
        state["epoch_losses"] = losses  # saved with a mid-epoch last.ckpt, so a resume averages them all
        last = state["global_step"] - 1 if state["step_in_epoch"] else state["global_step"]  # that of the last step
        lr = learning_rate(cfg.schedule, max(last, 0), loop.total_steps, cfg.lr, cfg.warmup_fraction)
        for step in range(state["step_in_epoch"], loop.steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            lr = learning_rate(cfg.schedule, state["global_step"], loop.total_steps, cfg.lr, cfg.warmup_fraction)
            loss = self._step(loop, idx, lr)
            if not np.isfinite(loss):
                loop.diverged = True  # the weights are now non-finite: keep the files as they were
                raise TrainingError(
                    f"loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is kept in {self.run_dir} (try a lower --lr)"
                )
            losses.append(loss)
            if loop.average is not None:
                loop.average.update()
            state["step_in_epoch"], state["global_step"] = step + 1, state["global_step"] + 1
            self.on_event("step", {"epoch": epoch, "step": step + 1, "loss": loss, "lr": lr, "structures": len(idx)})
            over_time = cfg.max_time_s is not None and time.monotonic() - loop.session_started > cfg.max_time_s
            stopping = bool(self.cluster.sum([float(self.stop_requested or over_time)])[0])
            if time.monotonic() - loop.last_save > SAVE_EVERY_S:
                self._save_loop(loop)
                loop.last_save = time.monotonic()
            if stopping:
                if self.stop_requested:
                    self.on_event("stopping", {})
                return (OVER_TIME if over_time and not self.stop_requested else "interrupted"), losses, lr
        return "finished", losses, lr

    def _step(self, loop: _Loop, idx: np.ndarray, lr: float) -> float:
        """One optimizer step on this worker's share of the global batch ``idx``; the global batch's loss."""
        return self._apply_step(loop, self._step_inputs(loop, idx, lr))

    def _step_inputs(self, loop: _Loop, idx: np.ndarray, lr: float) -> list:
        """The host side of a step: set the learning rate, collate this worker's share of ``idx``,
        and return the train cell's input tensors (benchmarks/train_step.py times it apart)."""
        loop.optimizer.learning_rate.set_data(ms.Tensor(lr, ms.float32))
        part, share = self.cluster.share(idx)
        batch = collate([self.train_graphs[i] for i in part])
        return [*batch_tensors(batch), ms.Tensor(loop.y_train[part]), ms.Tensor(loop.weights[part]),
                ms.Tensor(share, ms.float32), ms.Tensor(loop.floor, ms.float32)]

    def _apply_step(self, loop: _Loop, inputs: list) -> float:
        """The compiled forward, backward and optimizer update on ``inputs``; the global batch's loss."""
        loss = loop.cell(*inputs)
        return float(self.cluster.sum([float(loss.asnumpy())])[0])

    def _keep_partial_epoch(self, loop: _Loop, losses: list[float]) -> None:
        """After a stop mid-epoch, keep what the partial epoch gained (best.ckpt, if it is better)."""
        state = loop.state
        if state["step_in_epoch"] and self.val_graphs:
            done = state["epoch"] + state["step_in_epoch"] / loop.steps_per_epoch
            with loop.averaged():
                metrics, key, score = self._validate(loop.net, loop.transform, losses)
                self._keep_if_best(loop.net, loop.transform, state, metrics, key, score, loop.started, round(done, 3))

    def _finish(self, loop: _Loop, stopped_because: str) -> TrainResult:
        """The run's result, also reported as the ``end`` event."""
        state = loop.state
        result = TrainResult(state["best_mae"], state["best_epoch"], state["epoch"], stopped_because,
                             self.run_dir, self.history, validated=bool(self.val_graphs),
                             stop_signal=self.stop_signal if stopped_because == "interrupted" else None,
                             n_skipped=int(self.data_description.get("n_skipped", 0)),
                             start_score=state.get("start_score"), start_model_score=state.get("start_model_score"))
        self.on_event("end", asdict(result) | {"run_dir": str(self.run_dir)})
        return result

    def _save_loop(self, loop: _Loop) -> None:
        """Write last.ckpt with the loop's state as it stands."""
        loop.state["elapsed_s"], loop.state["transform"] = time.monotonic() - loop.started, loop.transform.as_dict()
        if loop.epoch_started is not None:  # else the saved time of the epoch stands
            loop.state["epoch_elapsed_s"] = time.monotonic() - loop.epoch_started if loop.state["step_in_epoch"] else 0.0
        self._save_last(loop)

    def _validate(self, net, transform, losses) -> tuple[dict, str, float]:
        """Validation metrics, the selection metric's name and its value (lower is better)."""
        cfg = self.config
        val_pred = (combine(predict_graphs(net, self.val_graphs, EVAL_BATCH_SIZE), transform,
                            one_element=one_element(self.val_graphs)).value if self.val_graphs else np.zeros(0))
        metrics = regression_metrics(self.val_y, val_pred)
        if cfg.log10 and self.val_graphs:
            log_metrics = regression_metrics(np.log10(self.val_y), np.log10(val_pred))
            metrics.update({f"log10_{k}": v for k, v in log_metrics.items() if k != "n"})
        net.set_train(True)
        key = "log10_mae" if cfg.log10 else "mae"
        score = metrics.get(key, float("nan")) if self.val_graphs else float(np.mean(losses))
        return metrics, key, score

    def _keep_if_best(self, net, transform, state, metrics, key, score, started, epochs: float) -> bool:
        """Write best.ckpt when ``score`` beats the best so far."""
        if not (np.isfinite(score) and score < state["best_mae"]):
            return False
        state["best_mae"], state["best_epoch"] = score, epochs
        card_metrics = {"split": "val", "selection_metric": key, **{k: round(v, 6) for k, v in metrics.items()}}
        elapsed_h = (time.monotonic() - started) / 3600
        if self.cluster.is_main:
            save_checkpoint(self.run_dir / "best.ckpt", net, self._card(transform, card_metrics, elapsed_h, epochs))
        return True

    def _end_epoch(self, loop: _Loop, losses: list[float], lr: float) -> dict:
        """Validate, update best.ckpt, history and state; return the history row."""
        state, started = loop.state, loop.started
        epoch_time = time.monotonic() - loop.epoch_started
        state["epoch"] += 1
        state["step_in_epoch"], state["epoch_elapsed_s"] = 0, 0.0
        state["epoch_losses"] = []
        with loop.averaged():
            metrics, key, score = self._validate(loop.net, loop.transform, losses)
            improved = self._keep_if_best(loop.net, loop.transform, state, metrics, key, score, started,
                                          state["epoch"])
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        elapsed_h = (time.monotonic() - started) / 3600
        record = {
            "epoch": state["epoch"],
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_mae": metrics.get("mae", float("nan")),
            "val_rmse": metrics.get("rmse", float("nan")),
            "val_log10_mae": metrics.get("log10_mae", float("nan")),
            "lr": lr,
            "epoch_s": round(epoch_time, 2),
            "structures_per_s": round(len(self.train_graphs) / max(epoch_time, 1e-9), 2),
            "elapsed_h": round(elapsed_h, 4),
            "best": improved,
        }
        self.history.append(record)
        self._write_history()
        state["elapsed_s"] = time.monotonic() - started
        state["transform"] = loop.transform.as_dict()
        self._save_last(loop)
        return record

    # -- persistence ------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        """The stop signals' handler: flags only. Reporting from here could wait for ever on a lock that the
        interrupted code holds (a training process's event queue); the loop says it is stopping."""
        self.stop_requested = True
        self.stop_signal = self.stop_signal or signum

    def _write_history(self) -> None:
        if not self.cluster.is_main:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.history[0]))
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / "history.csv", buffer.getvalue())

    def _save_last(self, loop: _Loop) -> None:
        """last.ckpt: the train cell's weights and optimizer state, the loop's state and any weight average."""
        if not self.cluster.is_main:
            return
        record = self.data_description.get("split_record", {})
        payload = json.dumps({"state": loop.state, "config": self.config.as_dict(), "history": self.history,
                              "prior_training": self.prior_training, "fold": record.get("fold"),
                              "split": {k: record[k] for k in SPLIT_SETTINGS if k in record},
                              **({"split_ids": self.split_ids} if self.split_ids else {})})
        extra = {STATE_KEY: payload, **(loop.average.tensors() if loop.average is not None else {})}
        atomic_write(self.run_dir / "last.ckpt", lambda tmp: ms.save_checkpoint(loop.cell, str(tmp), append_dict=extra))

    def _restore(self, cell, path: Path, state: dict) -> tuple[dict, dict[str, np.ndarray] | None]:
        """The saved loop state, loaded into ``cell``, and the saved weight average (None without one)."""
        if not path.is_file():
            raise TrainingError(f"{path}: nothing to resume (no last.ckpt in the run directory)")
        try:
            params = ms.load_checkpoint(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
        payload = params.pop(STATE_KEY, None)
        average = saved_average(params)
        if not isinstance(payload, str):
            raise CheckpointError(f"{path}: no training state in this checkpoint")
        saved = json.loads(payload)
        started = asdict(ModelConfig(**saved["config"]["model"]))  # a run from before a setting has its default
        now = asdict(self.config.model)
        changed = {k: (v, now[k]) for k, v in started.items() if v != now[k]}
        if changed:
            described = ", ".join(f"{k.replace('_', '-')} {was} (now {now})" for k, (was, now) in changed.items())
            raise TrainingError(f"{path}: the run was started with another model: {described}; resume it with its own")
        if saved["config"]["target"] != self.config.target:
            raise TrainingError(f"{path}: the run learns the target {saved['config']['target']}, not "
                                f"{self.config.target}: resume it with --target {saved['config']['target']}, or "
                                "start another run (--init-from its best.ckpt to warm-start)")
        cells = saved["config"].get("graph", {}).get("cell", RUN_LEGACY_CELL)
        if cells != self.config.graph.cell:
            raise TrainingError(f"{path}: the run was trained on {cells} cells, not {self.config.graph.cell}: "
                                f"resume it with --cell {cells}")
        for key in ("log10", "floor", "element_floor", "unit"):
            if saved["config"].get(key) != getattr(self.config, key):
                raise TrainingError(f"{path}: the run was started with {key.replace('_', ' ')} "
                                    f"{saved['config'].get(key)!r}, not {getattr(self.config, key)!r}: "
                                    f"--{key.replace('_', '-')} is part of the target its weights learned, so it is "
                                    "fixed when a run starts; resume without changing it, or start another run "
                                    "(--init-from its best.ckpt to warm-start)")
        not_loaded, _ = ms.load_param_into_net(cell, params, strict_load=True)
        if not_loaded:
            raise CheckpointError(f"{path}: {len(not_loaded)} parameters missing, e.g. {not_loaded[0]}")
        self.history = saved["history"]
        self.prior_training = saved.get("prior_training", {})
        changed = changed_settings(saved["config"], self.config.as_dict())
        patience = saved["config"].get("patience")
        restarted = bool(set(changed) - {"patience"} and patience and saved["state"]["bad_epochs"] >= patience)
        if restarted:  # it stopped for its patience, and other settings go on: "changed: lr" trained nothing
            saved["state"]["bad_epochs"] = 0
        self.on_event("resume", {"epoch": saved["state"]["epoch"], "step": saved["state"]["step_in_epoch"],
                                 "epochs": self.config.epochs, **({"patience_restarted": True} if restarted else {}),
                                 **({"changed": changed} if changed else {})})
        return saved["state"], average
