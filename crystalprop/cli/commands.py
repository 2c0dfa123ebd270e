"""The ``crystalprop`` command: a thin layer over the Python API with rich output; light to start."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click
from click.core import ParameterSource
from rich.markup import escape

from crystalprop.cli.options import (
    FiniteFloatRange, cell_option, device_option, duration_s, fold_option, models_option, parse_shard, sigma_option,
)
from crystalprop.data import TEST_FRACTION, VAL_FRACTION
from crystalprop.cli.display import (
    TABLE_LIMIT, console, out, print_ensemble, print_evaluation, print_rows, show_table, stream_rows,
)
from crystalprop.utils.gc_pause import collection_paused
from crystalprop.graph.settings import (
    BATCH_MEMORY_BYTES, BATCH_SIZE, BYTES_PER_EDGE_CHANNEL, STACKED_MEMORY_FACTOR, GraphSettings,
)
from crystalprop.io.limits import READ_TIMEOUT_S
from crystalprop.model import ENGINES
from crystalprop.model.config import ModelConfig
from crystalprop.utils.quick_exit import request as request_quick_exit, run as run_quick_exit
from crystalprop.utils.stopping import stop_signals_interrupt
from crystalprop.graph.settings import EVAL_BATCH_SIZE
from crystalprop.training.config import LOSSES, TrainConfig
from crystalprop.training.schedule import SCHEDULES


def _fail(message: str, code: int = 2) -> None:
    """Print ``message`` as an error and exit with ``code``."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(code)


class _Commands(click.Group):
    """The command group; a Ctrl-C that no command turned into its own stop ends with status 130 and one line,
    not click's "Aborted!" and status 1 (which here means that some structure failed)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/] (SIGINT)")
            sys.exit(128 + signal.SIGINT)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crystalprop")
def main() -> None:
    """Predict crystal properties with pretrained Matformer models; train and evaluate your own."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@models_option()
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write results to .csv, .json or .jsonl as they come.")
@click.option("--batch-size", default=BATCH_SIZE, show_default=True, type=click.IntRange(min=1),
              help="Most structures per batch. A batch also holds at most as many atoms and edges as the "
                   f"models take within --batch-memory (edges x features x heads x "
                   f"{BYTES_PER_EDGE_CHANNEL * STACKED_MEMORY_FACTOR} bytes per member; "
                   "the members of all models of one size run together), "
                   "so a batch of large cells is smaller; a single larger cell forms a batch of its own.")
@click.option("--batch-memory", default=BATCH_MEMORY_BYTES >> 20, show_default=True, type=click.IntRange(min=1),
              help="MiB of model activations one batch may take.")
@device_option()
@click.option("--engine", type=click.Choice(ENGINES), default=ENGINES[0], show_default=True,
              help="Inference engine. auto: on CPU, numpy with crystalprop's fused kernels (same results to float32 "
                   "rounding, no MindSpore import: about 1.5 s less start-up) where a C++ compiler built them, "
                   "else MindSpore.")
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-folders (symlinked ones too, each once).")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Reader processes (default: the cores this process may use, at most 4; 0 = in-process). "
                   "One that dies costs only the structure it held (a failed row); a new one takes over.")
@click.option("--timeout", default=READ_TIMEOUT_S, show_default=True, type=FiniteFloatRange(min=0),
              help="Seconds allowed to prepare one structure (read the file, check it, find its neighbours); "
                   "a structure over it gets a failed row. 0: no limit.")
@click.option("--resume", is_flag=True, help="Continue an existing --output file, skipping structures already in it.")
@click.option("--retry-failed", is_flag=True,
              help="With --resume: predict again the structures whose rows hold an error, replacing those rows.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.option("--shard", default="1/1", show_default=True,
              help="I/N: process only the I-th of N interleaved parts of the input (cluster array jobs).")
@cell_option("the models' own setting (canonical for the shipped models)")
def predict(paths, models, output, batch_size, batch_memory, device, engine, recursive, workers, timeout, resume,
            retry_failed, overwrite, shard, cell) -> None:
    """Predict properties for structure files, folders or glob patterns.

    A model with an error bar shows value ± σ (one standard deviation: about two thirds of the validation
    errors lie within it); the result files add <model>_std (σ) and <model>_err95 (the half-width that held
    95 % of them), in the value's unit. A note says where a structure has no error bar and why.

    Ctrl-C, SIGTERM (a cluster's time limit) or SIGHUP stops it with the rows so far saved in --output
    and the exit status 128 + the signal (130, 143, 129); --resume continues. During start-up it stops
    once the models are ready.
    """
    from crystalprop.utils.backend import single_threaded_blas  # noqa: PLC0415
    from crystalprop.io.discovery import no_structures_found, output_among_inputs  # noqa: PLC0415

    if resume and overwrite:
        raise click.UsageError("--resume continues the --output file and --overwrite replaces it: give one")
    if resume and not output:
        raise click.UsageError("--resume continues an --output file: give it with -o")
    if output and (given := output_among_inputs(output, paths, recursive)):
        _fail(f"{output} is one of the inputs (read from {given}): write the results to another file, or leave it "
              "out of the inputs")

    single_threaded_blas()  # before numpy is imported
    from crystalprop.prediction.output import done_rows  # noqa: PLC0415
    from crystalprop.io.provenance import sidecar_path  # noqa: PLC0415
    from crystalprop.prediction.predictor import resumed_names  # noqa: PLC0415

    request_quick_exit()  # nothing here needs Python's finalisation (0.5-1 s with MindSpore loaded)
    if retry_failed and not (output and resume):
        _fail("--retry-failed needs --resume and --output")
    part = parse_shard(shard)
    with stop_signals_interrupt() as interrupt:  # start-up: many seconds for a large folder on a busy machine
        try:
            nothing_to_read = no_structures_found(paths, recursive)
            if nothing_to_read:
                _fail(nothing_to_read)
            done = done_rows(Path(output), retry_failed=retry_failed) if output and resume else []
            skip = resumed_names(done, paths, recursive) if done else None
        except KeyboardInterrupt:
            _stopped_while_starting(interrupt.received)
        # the rest of the start-up runs whole, a stop signal acted on after it: MindSpore's import and compile
        # cannot be cut cleanly (a traceback, other statuses), nor can readers be left to nobody
        interrupt.disarm()
        predictor, reader, writer = _start_prediction(paths, models, device, cell, engine, recursive, workers,
                                                      timeout, skip, part, output, resume, overwrite, retry_failed)
        if interrupt.received:
            reader.close()
            if writer is not None:
                writer.close()
            _stopped_while_starting(interrupt.received, resumable=writer is not None)
        every_row = not output and not out.is_terminal  # piped or redirected: the results are the output
        try:
            rows_shown, n_ok, n_failed, stopped = stream_rows(predictor.iter_rows(reader, batch_size=batch_size,
                                                                                  batch_memory=batch_memory << 20),
                                                              writer, keep=None if every_row else TABLE_LIMIT)
        except OSError as exc:  # a full disk or a lost file system: the rows written so far are whole
            reader.close()
            _fail(f"{output}: cannot write the results ({exc.strerror or exc}); the rows before are saved, and the "
                  "same command with --resume continues once it can write there")
    try:
        if every_row:
            print_rows(rows_shown, predictor.columns)
        elif rows_shown and (not output or len(rows_shown) <= TABLE_LIMIT):
            print_rows(rows_shown[:TABLE_LIMIT], predictor.columns)
            if len(rows_shown) > TABLE_LIMIT:
                console.print(f"(first {TABLE_LIMIT} shown; use --output for all)")
    except BrokenPipeError:  # `| head`: the reader took what it wanted, as SIGPIPE would end a C program
        sys.stdout = None
        sys.exit(128 + signal.SIGPIPE)
    except OSError as exc:  # a full standard output (> /dev/full)
        _fail(f"cannot write the results to the standard output ({exc.strerror or exc}); give --output")
    where = f"; {len(done)} already in {output}" if done else ""
    if output:
        where += f"; results in {output}" + (f" (provenance in {sidecar_path(output)})" if output.lower().endswith(".csv")
                                            else "")
    if stopped:
        where = ", interrupted before the end" + where + ("; --resume continues" if output else "")
    console.print(f"{n_ok} predicted, {n_failed} failed{where}", markup=False)
    sys.exit(128 + stopped if stopped else 0 if n_failed == 0 else 1)


def _start_prediction(paths, models, device, cell, engine, recursive, workers, timeout, skip, part, output, resume,
                      overwrite, retry_failed) -> tuple:
    """The predictor (its models loaded and compiled), the reader (its processes started) and the output's
    writer (None without ``output``)."""
    from crystalprop.io.provenance import input_record  # noqa: PLC0415
    from crystalprop.prediction.output import ResultWriter  # noqa: PLC0415
    from crystalprop.prediction.predictor import open_prediction  # noqa: PLC0415
    from crystalprop.utils.atomic import OutputExistsError  # noqa: PLC0415
    from crystalprop.utils.backend import DeviceUnavailableError  # noqa: PLC0415

    try:
        with collection_paused():  # the models (and MindSpore's import, for that engine)
            predictor, reader = open_prediction(list(paths), list(models) or None, device, cell, engine=engine,
                                                recursive=recursive, workers=workers, timeout=timeout, skip=skip,
                                                shard=part)
    except (DeviceUnavailableError, ValueError) as exc:  # CheckpointError is a ValueError
        _fail(str(exc))
    writer = None
    if output:
        try:
            writer = ResultWriter(output, predictor.result_columns, resume=resume, overwrite=overwrite,
                                  retry_failed=retry_failed, provenance=predictor.provenance(
                                      part, input_record(paths, recursive)))
        except (OutputExistsError, ValueError) as exc:
            reader.close()
            _fail(str(exc))
    with collection_paused():
        predictor.compile()  # else done by iter_rows: the same, without the collector
    return predictor, reader, writer


def _stopped_while_starting(received: list[int], resumable: bool = False) -> None:
    """End a ``predict`` stopped before its first row: one line, status 128 + the first stop signal."""
    stop = signal.Signals(received[0]) if received else signal.SIGINT
    console.print(f"[yellow]stopped[/] ({stop.name}) while starting: nothing predicted"
                  + ("; --resume continues" if resumable else ""))
    sys.exit(128 + stop)


@main.command()
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--overwrite", is_flag=True)
def merge(output, parts, overwrite) -> None:
    """Join the outputs of sharded `predict --shard I/N` runs into one file, in input order."""
    from crystalprop.prediction.output import merge_results, read_provenance  # noqa: PLC0415
    from crystalprop.utils.atomic import OutputExistsError  # noqa: PLC0415

    try:
        n = merge_results(output, parts, overwrite=overwrite)
    except (OutputExistsError, ValueError) as exc:
        _fail(str(exc))
    unchecked = "" if read_provenance(output) else (
        "; the parts carry no provenance record, so they were not checked to come from the same models and settings")
    console.print(f"{n} rows from {len(parts)} files written to {output}{unchecked}", markup=False)


@main.command()
@click.argument("names", nargs=-1)
def models(names) -> None:
    """List the shipped models (or the given ones: names, checkpoints, run folders) with their target, unit,
    validation MAE and the sha256 of their weights."""
    from crystalprop.model.registry import MODEL_COLUMNS, checkpoints_dir, describe_models, no_models_reason  # noqa: PLC0415

    reason = None if names else no_models_reason()
    if reason:
        _fail(f"no models to list: {reason}")
    try:
        rows = describe_models(names)
    except ValueError as exc:  # CheckpointError: an unknown name, a file that is no model
        _fail(str(exc))
    show_table(MODEL_COLUMNS, rows, title="models" if names else f"models in {checkpoints_dir()}")


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--recursive", "-r", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cutoff", default=GraphSettings.cutoff, show_default=True, type=FiniteFloatRange(min=0, min_open=True))
@click.option("--neighbors", default=GraphSettings.max_neighbors, show_default=True, type=click.IntRange(min=1))
@cell_option("canonical")
def inspect(paths, recursive, as_json, cutoff, neighbors, cell) -> None:
    """Show what the model will see: sites (in the file -> in the cell used), graph edges, neighbour distances, warnings."""
    from crystalprop.prediction.inspection import inspect_structures, inspection_columns, inspection_rows  # noqa: PLC0415

    settings = GraphSettings(cutoff, neighbors, cell=cell or GraphSettings.cell)
    try:
        records = inspect_structures(paths, settings, recursive=recursive)
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps(records))
    else:
        show_table(inspection_columns(settings.cell), inspection_rows(records))
    sys.exit(1 if any(r["error"] for r in records) else 0)


@main.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--target", "-t", help="Property to learn (default: the only numeric field).")
@click.option("--unit", default="", help="Unit of the target, stored in the model card.")
@click.option("--output-dir", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=TrainConfig.lr, show_default=True, help="Peak learning rate.")
@click.option("--weight-decay", default=TrainConfig.weight_decay, show_default=True)
@click.option("--schedule", default=TrainConfig.schedule, show_default=True, type=click.Choice(SCHEDULES))
@click.option("--loss", default=TrainConfig.loss, show_default=True, type=click.Choice(LOSSES))
@click.option("--log10", is_flag=True, help="Learn log10 of a positive target (e.g. moduli).")
@click.option("--floor", default=None, type=FiniteFloatRange(),
              help="Physical lower bound: predictions below it are raised to it (e.g. 0 for band gaps), "
                   "and a target at it costs nothing when predicted at or below it.")
@click.option("--element-floor", default=None, type=FiniteFloatRange(),
              help="Lower bound for crystals of one element alone: their predictions below it are raised to it "
                   "(0 for a formation energy, which is 0 for an element's ground state and above it otherwise).")
@click.option("--layers", default=ModelConfig.layers, show_default=True)
@click.option("--features", default=ModelConfig.features, show_default=True)
@click.option("--heads", default=ModelConfig.heads, show_default=True)
@click.option("--fc-features", default=ModelConfig.fc_features, show_default=True)
@click.option("--site-features", is_flag=True,
              help="Atoms also see their first neighbour shell: its size, bond-orientational order (Steinhardt "
                   "q2, q4, q6) and bond-angle histogram; --init-from a model without them starts them at zero.")
@click.option("--patience", default=None, type=click.IntRange(min=1), help="Stop after this many epochs without improvement.")
@click.option("--max-time", default=None,
              help="Time budget of this run of the command (a --resume, and each member of an --ensemble, "
                   "gets its own), e.g. 2h or 90m; stops cleanly and saves.")
@click.option("--seed", default=TrainConfig.seed, show_default=True)
@click.option("--ema", default=None, type=float, metavar="DECAY",
              help="Validate and keep a moving average of the weights, updated every step with this decay "
                   "(e.g. 0.999: about the last 1,000 steps).")
@click.option("--emphasize", default=None, type=(float, float, float), metavar="LOW HIGH FACTOR",
              help="Weigh training targets in (LOW, HIGH] (the target's unit) FACTOR times as much in the loss, "
                   "e.g. 0 1 3 for band gaps of 0-1 eV, between the metals and the wide gaps.")
@click.option("--val-fraction", default=VAL_FRACTION, show_default=True, help="Used when the data has no split.")
@click.option("--test-fraction", default=TEST_FRACTION, show_default=True)
@click.option("--id-column", default=None)
@click.option("--structure-column", default=None, help="CSV column holding CIF/POSCAR text.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --output-dir from last.ckpt, with the settings it was started with "
                   "(schedule, loss, seed, model size, ...) except those given again.")
@click.option("--init-from", default=None, help="Start from these weights (checkpoint or shipped model name).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use only the first N training structures and N/8 validation ones (quick trials).")
@click.option("--workers", default=1, show_default=True,
              help="Data-parallel training processes on this machine (started with msrun).")
@click.option("--graph-workers", default=None, type=int, help="Graph-building processes (default: all cores).")
@click.option("--threads", default=None, type=int, help="MindSpore CPU threads per training process.")
@device_option()
@click.option("--ensemble", default=1, show_default=True, type=click.IntRange(min=1),
              help="Train N members (seeds --seed, --seed+1, ...; one split) in OUTPUT_DIR/member<k>, then join "
                   "them into OUTPUT_DIR/best.ckpt with σ calibrated on the validation split.")
@sigma_option()
@click.option("--fold", default=None, callback=fold_option, metavar="I/K",
              help="Cross-validation: fold I of K of the training and validation structures is the validation "
                   "split (folds fixed by the ids); e.g. --fold 1/5 ... --fold 5/5.")
@cell_option("canonical; stored in the model, which then predicts on the same cells")
def train(data, output_dir, max_time, workers, ensemble, **options) -> None:
    """Train a Matformer model on DATA (JSON/JSONL, a folder with a CSV table, a CSV with structures, or an
    extended XYZ whose frames carry their labels).

    Ctrl-C (or SIGTERM) stops after the current step and saves last.ckpt (exit status 128 + the signal:
    130, 143; a hang-up, 129, unless under nohup); a Ctrl-C after it ends it at once, without saving that
    step; --resume continues. With --workers N (or started under msrun) each process trains on its share of every
    batch and gradients are averaged by MindSpore's all-reduce; rank 0 writes the files.
    """
    from crystalprop.training.jobs import TrainingFailed, TrainingStopped, train as train_run  # noqa: PLC0415
    from crystalprop.training.distributed import launched_by_msrun  # noqa: PLC0415
    from crystalprop.training.launch import msrun_part  # noqa: PLC0415
    from crystalprop.training.progress import EnsembleMessages, report_training  # noqa: PLC0415

    if ensemble > 1 and workers > 1:
        _fail("--ensemble trains its members one after another: use it without --workers")
    try:
        if msrun_part(workers, output_dir, options["threads"], sys.argv[1:]):
            return
    except TrainingFailed as exc:
        _fail(str(exc), code=1)
    context = click.get_current_context()
    given = [name for name in options if context.get_parameter_source(name) is not ParameterSource.DEFAULT]
    made = _first_missing_folder(Path(output_dir))
    try:
        with EnsembleMessages() as messages:
            result = train_run(data, output_dir, max_time_s=duration_s(max_time), ensemble=ensemble, isolate=True,
                               on_event=messages.event, given=given, **options)
    except TrainingStopped as exc:
        console.print(f"[bold]interrupted[/]: {escape(str(exc))}", highlight=False)
        sys.exit(128 + exc.signum)
    except (TrainingFailed, ValueError) as exc:
        _remove_empty_folders(Path(output_dir), made)  # a refused run leaves no empty folder of its own making
        _fail(str(exc))
    code = report_training(result, output_dir)
    sys.exit(0 if code > 128 and launched_by_msrun() else code)  # a rank's clean stop: the launcher tells it


def _first_missing_folder(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (what a run would make), or None."""
    missing = None
    folder = Path(os.path.abspath(folder))  # "a/b/../c" makes a/ and a/c/, not a/b/
    for path in (folder, *folder.parents):
        if path.exists():
            return missing
        missing = path
    return missing


def _remove_empty_folders(folder: Path, made: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``made`` (:func:`_first_missing_folder`) while they are empty."""
    if made is None:
        return
    path = Path(os.path.abspath(folder))
    while path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path == made:
            return
        path = path.parent


@main.command()
@click.argument("model")
@click.argument("data", type=click.Path(exists=True))
@click.option("--target", "-t", default=None, help="Property column (default: the model's target).")
@click.option("--split", default=None,
              help="train, val, test, all, or unseen: every structure the model was not trained on, nor looks "
                   "like a training crystal under another id (the same reduced formula and volume per atom). Default: "
                   "test if present, else val, on data with a split of its own (split.json or a split column) "
                   "or on the model's own data; unseen on other data. The split is the one the model was "
                   "trained with; val/test are refused if any of their structures were trained on, and count "
                   "the look-alikes.")
@click.option("--output-dir", "-o", default=None, type=click.Path(file_okay=False),
              help="Write predictions.csv (with its provenance, predictions.csv.meta.json), metrics.json, parity.png, "
                   "error_histogram.png, calibration.png (a model with σ) and skipped.log (records skipped) here; "
                   "a folder holding an earlier evaluation is refused without --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier evaluation in --output-dir (its files only; nothing else there is touched).")
@click.option("--batch-size", default=EVAL_BATCH_SIZE, show_default=True, type=click.IntRange(min=1))
@click.option("--id-column", default=None)
@click.option("--structure-column", default=None)
@device_option()
@cell_option("the model's own setting (canonical for the shipped models)")
def evaluate(model, data, **options) -> None:
    """Measure MODEL (shipped name, .ckpt or run dir) on a labelled DATA set."""
    from crystalprop.evaluation.evaluate import evaluate_model  # noqa: PLC0415
    from crystalprop.utils.atomic import OutputExistsError  # noqa: PLC0415
    from crystalprop.utils.backend import DeviceUnavailableError  # noqa: PLC0415

    try:
        with console.status("evaluating"):
            result = evaluate_model(model, data, **options)
    except (DeviceUnavailableError, OutputExistsError, ValueError) as exc:  # CheckpointError, DatasetError
        _fail(str(exc))
    print_evaluation(result, options["output_dir"])


@main.command()
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("members", nargs=-1, required=True)
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Labelled data set the members were trained on; its --split calibrates σ.")
@click.option("--split", default="val", show_default=True, help="Split that calibrates σ: val, test, or unseen (every structure the members record they were not trained on); never one trained on.")
@click.option("--batch-size", default=EVAL_BATCH_SIZE, show_default=True, type=click.IntRange(min=1))
@click.option("--id-column", default=None, help="As given to train, for a CSV data set.")
@click.option("--structure-column", default=None, help="As given to train, for a CSV data set.")
@click.option("--product", "products", multiple=True, metavar="MODEL,MODEL[,...]",
              help="One more member: the product of these models' predictions (log10 targets; an "
                   "ensemble counts as its mean), e.g. --product bulk_modulus,g_over_k.ckpt for a shear "
                   "modulus as K × G/K. Repeatable.")
@sigma_option()
@click.option("--latent-prior", default=0.0, show_default=True, type=FiniteFloatRange(min=0),
              help="With --sigma latent or latent+spread: add this share of the mean training error to the "
                   "nearest training structures' own, so that σ grows with the distance even where they were "
                   "fitted exactly.")
@device_option()
@cell_option("the members' own setting, which must then agree")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
def ensemble(output, members, data, split, products, **options) -> None:
    """Join MEMBERS (checkpoints or run dirs of one target, architecture and split, e.g. other
    seeds on data with a split of its own) into one ensemble OUTPUT.ckpt: predictions are the
    members' mean, with a σ per structure (see --sigma), scaled to match the errors on DATA's
    validation split. With --sigma latent one member is enough: a single model gains a σ."""
    from crystalprop.evaluation.joining import join_ensemble  # noqa: PLC0415
    from crystalprop.utils.atomic import OutputExistsError  # noqa: PLC0415

    try:
        with console.status("calibrating"):
            result = join_ensemble(members, output, data, split=split,
                                   products=[[f.strip() for f in p.split(",") if f.strip()] for p in products], **options)
    except (ValueError, OutputExistsError) as exc:  # CheckpointError, DatasetError
        _fail(str(exc))
    print_ensemble(result, data, split, output)


def run() -> None:
    """The ``crystalprop`` command's entry point: :func:`main`, ending quickly where the command allows."""
    run_quick_exit(main)


if __name__ == "__main__":
    run()
