"""Training as a Python call: :func:`train`, behind ``crystalprop.train`` and ``crystalprop train``.

A run's settings travel as one plain dict (a *job*) so that the command can hand them to a
child process (see :mod:`crystalprop.training.launch`); :func:`run_job` is what runs one,
in whatever process. This module imports nothing heavy until a job runs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Collection

from crystalprop.utils.atomic import atomic_write_text, make_folder
from crystalprop.utils.backend import DEVICES
from crystalprop.data import TEST_FRACTION, VAL_FRACTION, check_fold
from crystalprop.graph.settings import check_cell_choice
from crystalprop.model import check_sigma_choice
from crystalprop.model.config import ModelConfig
from crystalprop.training.config import TrainConfig, check_decay, check_emphasis, check_settings, kept_settings

OnEvent = Callable[[str, dict], None]


class TrainingFailed(RuntimeError):
    """A training in a child process failed; the message is its one-line error."""


class TrainingStopped(TrainingFailed):
    """A stop signal ended the training process before it could save (while it started, or a second Ctrl-C
    forced it): what was saved before stays, and ``--resume`` continues from it where anything was."""

    def __init__(self, signum: int, resumable: bool = True) -> None:
        saved = ("what was saved before is kept (--resume continues from it)" if resumable
                 else "nothing was saved yet (the same command starts it again, without --resume)")
        super().__init__(f"stopped by signal {signum} before the training process could save; {saved}")
        self.signum, self.resumable = signum, resumable


class RunDirError(ValueError):
    """The run directory does not fit the request (a new run over an old one, a resume of nothing)."""


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to start a new run over a saved one, to resume where nothing was saved, or to run
    where the folder cannot be made."""
    if resume and not (run_dir / "last.ckpt").is_file():
        members = (" (it holds ensemble members, member0 ...: resume them with --ensemble N)"
                   if (run_dir / "member0").is_dir() else "")
        raise RunDirError(f"{run_dir}: nothing to resume (no last.ckpt){members}")
    if not resume and (run_dir / "last.ckpt").is_file():
        raise RunDirError(f"{run_dir} already holds a run: add --resume to continue it, or choose another --output-dir")
    if not resume and ((run_dir / ENSEMBLE_RECORD).is_file() or (run_dir / "member0" / "last.ckpt").is_file()):
        raise RunDirError(f"{run_dir} already holds an ensemble run: add --resume to continue it, or choose another "
                          "--output-dir")
    try:
        make_folder(run_dir)
    except ValueError as exc:
        raise RunDirError(str(exc)) from exc


ENSEMBLE_RECORD = "ensemble.json"
"""In an ensemble run's folder: how many members it trains and the σ it joins them with, so that a
``--resume`` given neither continues the same ensemble."""


def ensemble_settings(output_dir: Path, resume: bool, members: int, sigma: str,
                      given: Collection[str]) -> tuple[int, str, list[str]]:
    """The members and σ of an ensemble run: on resume those of its record (:data:`ENSEMBLE_RECORD`) unless
    given again (``members`` 1 is not given), else as given; the record written for a later resume. Also what a
    resume changed of the record, in words (e.g. "members 3 -> 2")."""
    path = output_dir / ENSEMBLE_RECORD
    single = (output_dir / "last.ckpt").is_file()  # a single run's folder: its --resume continues it, nothing else
    if not resume and members > 1:  # before the record is written: a refused run must leave the folder's run as it is
        if single:
            raise RunDirError(f"{output_dir} already holds a single run: choose another --output-dir for the "
                              "ensemble (--resume without --ensemble continues that run)")
        for k in range(members):
            if (output_dir / f"member{k}" / "last.ckpt").is_file():
                check_run_dir(output_dir / f"member{k}", False)
    if resume and single and members > 1:
        raise RunDirError(f"{output_dir} holds a single run, not an ensemble: resume it without --ensemble")
    changed = []
    if resume and path.is_file() and not single:
        saved = json.loads(path.read_text())
        members = members if members > 1 else int(saved["members"])
        sigma = sigma if "sigma" in given else saved["sigma"]
        changed = [f"{what} {before} -> {now}" for what, before, now in
                   (("members", int(saved["members"]), members), ("σ", saved["sigma"], sigma)) if before != now]
    if members > 1:
        make_folder(output_dir)
        atomic_write_text(path, json.dumps({"members": members, "sigma": sigma}) + "\n")
    return members, sigma, changed


def forget_unstarted_ensemble(output_dir: Path) -> None:
    """Remove the ensemble record of a run refused before its first member saved anything, so that the folder
    is as it was (a later single run there is not taken for this ensemble by its --resume)."""
    if not (output_dir / "member0" / "last.ckpt").is_file():
        (output_dir / ENSEMBLE_RECORD).unlink(missing_ok=True)


def completed(payload: dict) -> bool:
    """Whether a run ended on its own (all epochs, or patience), not by a stop or a time budget."""
    return payload["stopped_because"] == "finished" or payload["stopped_because"].startswith("no improvement")


def _run_settings(job: dict) -> tuple[dict, dict, dict, dict | None]:
    """The job's training, model and run settings, and the saved state of the run they continue
    (:func:`crystalprop.training.trainer.saved_state`; None: a new one).

    On resume the cells and the cross-validation fold are the run's own unless given; with ``given``
    named, so are the settings not given (the split's fractions and seed, and ``limit``, too). An ensemble member not
    yet started takes them from the first member (``settings_from``), its seed shifted by its place.
    """
    from crystalprop.model.checkpoint import saved_state  # noqa: PLC0415
    from crystalprop.training.trainer import saved_split  # noqa: PLC0415

    config, model, run = job["config"], job["model"], dict(job["run"])
    member, settings_from = run.pop("member", None), run.pop("settings_from", None)
    own = Path(run["run_dir"]) / "last.ckpt"
    resumed = run["resume"] and own.is_file()
    source = own if resumed else Path(settings_from) if settings_from else None
    state = saved_state(source) if source else None
    if job.get("given") is None or state is None:
        return config, model, run, state
    given, saved, split = set(job["given"]), state["config"], saved_split(state)
    config, model = kept_settings(saved, config, model, given)
    run.update({k: split[k] for k in ("val_fraction", "test_fraction", "limit") if k not in given and k in split})
    if "seed" not in given and member is not None:  # members: seeds base + k, all on the split of the base seed
        base = saved["seed"] - (member if resumed else 0)
        config["seed"], run["split_seed"] = base + member, base
    elif "seed" not in given and "seed" in split:
        run["split_seed"] = split["seed"]
    return config, model, run, state


def run_job(job: dict, on_event: OnEvent | None = None) -> dict:
    """Train as ``job`` says, in this process; the outcome as ``stopped_because``, ``best_val_mae``, ``best_epoch``,
    ``validated`` (whether there were validation structures) and ``log10``."""
    from crystalprop.utils.backend import set_device  # noqa: PLC0415

    set_device(job["device"], threads=job["threads"])
    from crystalprop.graph.settings import GraphSettings  # noqa: PLC0415
    from crystalprop.model.registry import resolve_model  # noqa: PLC0415
    from crystalprop.training.run import train_model  # noqa: PLC0415
    from crystalprop.training.trainer import saved_cell, saved_fold  # noqa: PLC0415

    settings, model, run, state = _run_settings(job)
    cell = job["graph"]["cell"] or (saved_cell(state) if state else "canonical")
    graph = GraphSettings(cell=cell, site_features=model.get("site_features", False))
    config = TrainConfig(**settings, model=ModelConfig(**model), graph=graph)
    run["fold"] = tuple(run["fold"]) if run.get("fold") else saved_fold(state) if state else None
    if run["init_from"]:
        run["init_from"] = str(resolve_model(run["init_from"])[1])
    result = train_model(run.pop("data"), run.pop("run_dir"), config, **run, on_event=on_event)
    return {"stopped_because": result.stopped_because, "best_val_mae": result.best_val_mae,
            "best_epoch": result.best_epoch, "validated": result.validated, "log10": config.log10,
            "signal": result.stop_signal, "n_skipped": result.n_skipped, "start_score": result.start_score,
            "start_model_score": result.start_model_score}


def member_jobs(job: dict, members: int):
    """(member directory, job) of each ensemble member: seeds ``seed``, ``seed + 1``, ... on one split;
    a member already started is resumed when ``job`` resumes (a new run over started members is refused
    before, by :func:`ensemble_settings`)."""
    output_dir, seed, run = Path(job["run"]["run_dir"]), job["config"]["seed"], job["run"]
    first = output_dir / "member0" / "last.ckpt"
    settings_from = str(first) if run["resume"] and first.is_file() else None  # for members not yet started
    for k in range(members):
        member_dir = output_dir / f"member{k}"
        started = (member_dir / "last.ckpt").is_file()
        yield member_dir, {**job, "config": {**job["config"], "seed": seed + k},
                           "run": {**run, "run_dir": str(member_dir), "resume": started, "split_seed": seed,
                                   "require_val": True, "member": k, "settings_from": settings_from}}


def join_members(job: dict, members: int, sigma: str) -> dict:
    """Join the members of ``job`` into OUTPUT_DIR/best.ckpt, σ from ``sigma``; see
    :func:`crystalprop.evaluation.joining.join_ensemble`. A resume (``--sigma`` not given) keeps a best.ckpt that
    joins the members as they are (:func:`crystalprop.evaluation.joining.standing_join`)."""
    from crystalprop.evaluation.joining import join_ensemble, standing_join  # noqa: PLC0415

    run = job["run"]
    output_dir = Path(run["run_dir"])
    member_dirs = [output_dir / f"member{k}" for k in range(members)]
    if run["resume"] and "sigma" not in (job["given"] or ()):
        standing = standing_join(output_dir / "best.ckpt", member_dirs)
        if standing is not None:  # a join of these very members, perhaps the user's own: not replaced unasked
            return standing
    try:
        return join_ensemble(member_dirs, output_dir / "best.ckpt", run["data"], id_column=run["id_column"],
                             structure_column=run["structure_column"], device=job["device"], sigma=sigma)
    except ValueError as exc:  # the members stay trained: say where, and how to join them otherwise
        raise ValueError(f"the {members} members are trained ({', '.join(map(str, member_dirs))}) but could not be "
                         f"joined: {exc} (`crystalprop ensemble OUTPUT.ckpt MEMBERS... --data DATA` joins them on "
                         "other labelled data)") from None


def _given_by_the_caller(train_function: Callable[..., dict]) -> Callable[..., dict]:
    """``train_function`` whose ``given``, where the caller passes none, names the keyword arguments the
    caller passed: a resumed run then keeps its own settings for the others, as the command's --resume does."""
    @functools.wraps(train_function)
    def wrapper(*args: Any, **kwargs: Any) -> dict:
        if kwargs.get("given") is None:
            kwargs["given"] = sorted(kwargs)
        return train_function(*args, **kwargs)

    return wrapper


@_given_by_the_caller
def train(
    data: str | Path,
    output_dir: str | Path,
    *,
    target: str | None = None,
    unit: str = "",
    epochs: int = TrainConfig.epochs,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    weight_decay: float = TrainConfig.weight_decay,
    schedule: str = TrainConfig.schedule,
    loss: str = TrainConfig.loss,
    log10: bool = False,
    floor: float | None = None,
    element_floor: float | None = None,
    layers: int = ModelConfig.layers,
    features: int = ModelConfig.features,
    heads: int = ModelConfig.heads,
    fc_features: int = ModelConfig.fc_features,
    site_features: bool = False,
    patience: int | None = None,
    max_time_s: float | None = None,
    seed: int = TrainConfig.seed,
    ema: float | None = None,
    emphasize: tuple[float, float, float] | None = None,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    id_column: str | None = None,
    structure_column: str | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    limit: int | None = None,
    graph_workers: int | None = None,
    threads: int | None = None,
    device: str = DEVICES[0],
    ensemble: int = 1,
    sigma: str = "spread",
    cell: str | None = None,
    fold: tuple[int, int] | None = None,
    on_event: OnEvent | None = None,
    isolate: bool = False,
    given: Collection[str] | None = None,
) -> dict:
    """Train a Matformer on ``data`` into ``output_dir``; the options are those of ``crystalprop train``.

    Writes best.ckpt, last.ckpt, history.csv and skipped.log (see :mod:`crystalprop.training.trainer`);
    ``resume`` continues from last.ckpt. ``cell`` None means canonical for a new run and the run's
    own setting on resume. ``ema``: validate and keep a moving average of the weights with this decay
    (e.g. 0.999; :mod:`crystalprop.training.averaging`). ``emphasize`` (low, high, factor): training
    targets in (low, high], in the target's own unit, weigh ``factor`` times as much in the loss.
    ``site_features``: each atom also reads descriptors of its neighbour shell and bond angles
    (:mod:`crystalprop.graph.site_features`); a start without them (``init_from``) reads them with zero weights.
    ``fold`` (I, K) trains on cross-validation fold I of K: that fold of the training and validation
    structures is the validation split. ``given``: the names of the settings given explicitly (as the
    command passes them; by default the keyword arguments passed); on resume the others (the schedule,
    loss, seed, model size, ...: :data:`crystalprop.training.config.RESUMED_SETTINGS`) are the run's own. A resumed
    run whose settings differ from its start says which in its ``resume`` event. With ``ensemble`` N > 1 the members (seeds ``seed``, ``seed + 1``, ...; one
    split) train one after another in ``output_dir/member<k>`` and are joined into ``output_dir/best.ckpt``,
    with σ from ``sigma`` (``spread``, ``latent`` or ``latent+spread``, as :func:`crystalprop.evaluation.joining.join_ensemble`).

    ``on_event(kind, info)`` hears the progress (``graphs``, ``data``, ``start``, ``step``, ``epoch``, ...;
    ``member`` before each ensemble member). By default the training runs in this process: SIGTERM,
    or Ctrl-C between steps, stops it cleanly and saves, but MindSpore ends the process on a Ctrl-C
    that comes while a step runs. ``isolate=True`` trains in a child process, as the command does,
    so that Ctrl-C always stops cleanly, with the command's live progress on standard error; errors
    in the child then come back as :class:`TrainingFailed`.

    Returns ``stopped_because``, ``best_val_mae`` (of log10 for a ``log10`` run; the training loss where
    ``validated`` is false: no validation structures) and ``best_epoch``; for an ensemble
    ``stopped_because`` (that of the last member trained), ``members`` (each member's outcome) and
    ``ensemble`` (the joined model's validation metrics, None if a member stopped early:
    ``resume=True`` continues it).
    """
    check_settings(loss=loss, schedule=schedule, epochs=epochs, batch_size=batch_size, max_time_s=max_time_s,
                   val_fraction=val_fraction, test_fraction=test_fraction, lr=lr, weight_decay=weight_decay,
                   layers=layers, features=features, heads=heads, fc_features=fc_features, ensemble=ensemble,
                   limit=limit, patience=patience, floor=floor, element_floor=element_floor)
    check_sigma_choice(sigma)
    if cell is not None:
        check_cell_choice(cell)
    if fold is not None:
        if not (isinstance(fold, (tuple, list)) and len(fold) == 2):
            raise ValueError(f"fold {fold!r}: a pair (I, K) for fold I of K, e.g. (1, 5)")
        check_fold(fold)
    if ema is not None:
        check_decay(ema)
    if emphasize is not None:
        emphasize = check_emphasis(emphasize)
    if init_from is not None:
        from crystalprop.model.checkpoint import check_site_start  # noqa: PLC0415
        from crystalprop.model.registry import resolve_model  # noqa: PLC0415

        start = resolve_model(init_from)[1]  # an unknown start is refused before the run folder is made
        if not resume:  # a resumed run keeps its own setting (and does not start from init_from)
            check_site_start(start, site_features)
    job = {
        "config": dict(target=target or "", unit=unit, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, schedule=schedule, loss=loss, log10=log10, floor=floor,
                       element_floor=element_floor, patience=patience, max_time_s=max_time_s, seed=seed, ema=ema,
                       emphasis=emphasize),
        "model": dict(layers=layers, features=features, heads=heads, fc_features=fc_features,
                      site_features=site_features),
        "graph": dict(cell=cell),
        "run": dict(data=str(data), run_dir=str(output_dir), id_column=id_column, structure_column=structure_column,
                    val_fraction=val_fraction, test_fraction=test_fraction, limit=limit, resume=resume,
                    init_from=None if init_from is None else str(init_from), workers=graph_workers,
                    fold=None if fold is None else list(fold)),
        "threads": threads,
        "device": device,
        "given": None if given is None else sorted("emphasis" if g == "emphasize" else g for g in given),
    }
    if isolate:
        from crystalprop.training.launch import run_isolated  # noqa: PLC0415

        def run(one: dict) -> dict:
            return run_isolated(one, on_event)
    else:
        def run(one: dict) -> dict:
            return run_job(one, on_event)
    ensemble, sigma, changed = ensemble_settings(Path(output_dir), resume, ensemble, sigma, job["given"] or ())
    if changed and on_event:
        on_event("ensemble_changed", {"changed": changed})
    if ensemble == 1 and sigma != "spread":
        raise ValueError("--sigma is where an ensemble's σ comes from: use it with --ensemble N (N > 1)")
    if ensemble == 1:
        check_run_dir(Path(output_dir), resume)
        return run(job)
    outcomes = []
    for k, (member_dir, member) in enumerate(member_jobs(job, ensemble)):
        if on_event:
            on_event("member", {"member": k + 1, "members": ensemble, "seed": seed + k, "run_dir": str(member_dir)})
        try:
            outcomes.append(run(member))
        except TrainingStopped as exc:  # the members done are kept: the ensemble's --resume goes on after them
            raise TrainingStopped(exc.signum, resumable=True) if k else exc from None
        except TrainingFailed as exc:
            if not resume:  # a resume keeps its record: the members and σ it was started with
                forget_unstarted_ensemble(Path(output_dir))
            raise TrainingFailed(f"member {k + 1}: {exc}") from None
        except (ValueError, RuntimeError):  # refused (its data, its settings: TrainingError in this process)
            if not resume:
                forget_unstarted_ensemble(Path(output_dir))
            raise
        if not completed(outcomes[-1]):
            return {"stopped_because": outcomes[-1]["stopped_because"], "members": outcomes, "ensemble": None}
    if on_event:
        on_event("joining", {"members": ensemble})
    return {"stopped_because": outcomes[-1]["stopped_because"], "members": outcomes,
            "ensemble": join_members(job, ensemble, sigma)}
