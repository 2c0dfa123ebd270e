"""The ``crystalprop`` command: a thin layer over the Python API with rich output."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import click
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)
out = Console()
TABLE_LIMIT = 25
CELL_CHOICES = ("canonical", "as-given")  # crystalprop.graph.cells.CELL_CHOICES, without importing numpy here


def _cell_option(default_text: str):
    """``--cell``: the cell each structure's graph is built on."""
    return click.option("--cell", type=click.Choice(CELL_CHOICES), default=None,
                        help="canonical: the Niggli-reduced primitive cell, so any cell of a crystal gives one "
                             f"answer; as-given: the file's own cell. Default: {default_text}.")


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def _duration(text: str | None) -> float | None:
    """'90m', '2h', '1h30m', '45s' or plain seconds -> seconds."""
    if not text:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text.lower()):
        raise click.BadParameter(f"{text!r}: use e.g. 2h, 90m, 1h30m or seconds")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crystalprop")
def main() -> None:
    """Predict crystal properties with pretrained Matformer models; train and evaluate your own."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", "-m", "models", multiple=True, help="Shipped model name or .ckpt file (repeatable). Default: all shipped models.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write results to .csv, .json or .jsonl as they come.")
@click.option("--batch-size", default=64, show_default=True,
              help="Most structures per batch. A batch also holds at most as many atoms and edges as the "
                   "largest model takes within --batch-memory (edges x features x heads x 16 bytes), "
                   "so a batch of large cells is smaller; a single larger cell forms a batch of its own.")
@click.option("--batch-memory", default=1024, show_default=True, type=click.IntRange(min=1),
              help="MiB of model activations one batch may take.")
@click.option("--device", default="CPU", show_default=True, type=click.Choice(["CPU", "GPU", "Ascend"], case_sensitive=False))
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-folders.")
@click.option("--workers", default=None, type=int,
              help="Reader processes (default: cores, at most 4; 0 = in-process). One that dies costs only "
                   "the structure it held (a failed row); a new one takes over.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds allowed to prepare one structure (read the file, check it, find its neighbours); "
                   "a structure over it gets a failed row.")
@click.option("--resume", is_flag=True, help="Continue an existing --output file, skipping structures already in it.")
@click.option("--retry-failed", is_flag=True,
              help="With --resume: predict again the structures whose rows hold an error, replacing those rows.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.option("--shard", default="1/1", show_default=True,
              help="I/N: process only the I-th of N interleaved parts of the input (cluster array jobs).")
@_cell_option("the models' own setting (canonical for the shipped models)")
def predict(paths, models, output, batch_size, batch_memory, device, recursive, workers, timeout, resume, retry_failed,
            overwrite, shard, cell) -> None:
    """Predict properties for structure files, folders or glob patterns."""
    from crystalprop.backend import DeviceUnavailableError  # noqa: PLC0415
    from crystalprop.output import OutputExistsError, ResultWriter, done_names  # noqa: PLC0415
    from crystalprop.predictor import open_prediction  # noqa: PLC0415
    from crystalprop.provenance import sidecar_path  # noqa: PLC0415

    if retry_failed and not (output and resume):
        _fail("--retry-failed needs --resume and --output")
    part = _shard(shard)
    skip = done_names(Path(output), retry_failed=retry_failed) if output and resume else None
    try:
        predictor, reader = open_prediction(list(paths), list(models) or None, device, cell, recursive=recursive,
                                            workers=workers, timeout=timeout, skip=skip, shard=part)
    except (DeviceUnavailableError, ValueError) as exc:  # CheckpointError is a ValueError
        _fail(str(exc))
    columns = ["index", "name", "source", "formula", "n_sites", *predictor.value_columns, "error", "warning"]
    writer = None
    if output:
        try:
            writer = ResultWriter(output, columns, resume=resume, overwrite=overwrite, retry_failed=retry_failed,
                                  provenance=predictor.provenance())
        except (OutputExistsError, ValueError) as exc:
            reader.close()
            _fail(str(exc))
    rows_shown, n_ok, n_failed = [], 0, 0
    progress = Progress(TextColumn("[bold]predicting"), BarColumn(), TextColumn("{task.completed} structures"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=True)
    with progress:
        task = progress.add_task("predict", total=None, rate="")
        try:
            for rows in predictor.iter_rows(reader, batch_size=batch_size, batch_memory=batch_memory << 20):
                for row in rows:
                    if row["error"]:
                        n_failed += 1
                        console.print(f"[yellow]skipped[/] {row['name']}: {row['error']}", highlight=False)
                    else:
                        n_ok += 1
                if writer:
                    writer.write(rows)
                if len(rows_shown) <= TABLE_LIMIT:
                    rows_shown.extend(rows)
                elapsed = progress.tasks[0].elapsed or 1e-9
                progress.update(task, advance=len(rows), rate=f"{(n_ok + n_failed) / elapsed:.1f}/s")
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: results so far are saved" if writer else "[yellow]interrupted[/]")
            n_failed += 1
        finally:
            if writer:
                writer.close()
    if not output or len(rows_shown) <= TABLE_LIMIT:
        _print_rows(rows_shown[:TABLE_LIMIT], predictor.columns)
        if len(rows_shown) > TABLE_LIMIT:
            console.print(f"(first {TABLE_LIMIT} shown; use --output for all)")
    where = ""
    if output:
        where = f"; results in {output}" + (f" (provenance in {sidecar_path(output)})" if output.lower().endswith(".csv")
                                            else "")
    console.print(f"{n_ok} predicted, {n_failed} failed{where}")
    sys.exit(0 if n_failed == 0 else 1)


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise click.BadParameter(f"{text!r}: use I/N with 1 <= I <= N, e.g. 2/8", param_hint="--shard")
    return int(match[1]), int(match[2])


@main.command()
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--overwrite", is_flag=True)
def merge(output, parts, overwrite) -> None:
    """Join the outputs of sharded `predict --shard I/N` runs into one file, in input order."""
    from crystalprop.output import OutputExistsError, merge_results  # noqa: PLC0415

    try:
        n = merge_results(output, parts, overwrite=overwrite)
    except (OutputExistsError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"{n} rows from {len(parts)} files written to {output}")


def _fits(table: Table) -> bool:
    """Whether standard output is a terminal wide enough to draw ``table`` without cutting a cell."""
    if not out.is_terminal:
        return False
    return Measurement.get(out, out.options.update_width(10**6), table).maximum <= out.width


def _plain_lines(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Header and rows as space-aligned text, every cell in full."""
    widths = [max(cell_len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        pads = [" " * (width - cell_len(cell)) for cell, width in zip(cells, widths)]
        return "  ".join(pad + cell if k in right else cell + pad
                         for k, (cell, pad) in enumerate(zip(cells, pads))).rstrip()

    return [line(headers)] + [line(row) for row in rows]


def _show_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = (),
                title: str | None = None) -> None:
    """A rich table on a terminal wide enough for it; plain aligned text otherwise (pipes, files,
    narrow terminals), where rich would cut names and headers short ('structu…')."""
    table = Table(title=title)
    for k, head in enumerate(headers):
        table.add_column(head, justify="right" if k in right else "left")
    for row in rows:
        table.add_row(*map(Text, row))
    if _fits(table):
        out.print(table)
        return
    for line in ([title] if title else []) + _plain_lines(headers, rows, set(right)):
        click.echo(line)


def _value_text(row: dict, label: str) -> str:
    """A prediction as text, with ``± σ`` where the model is an ensemble."""
    if row[label] is None:
        return ""
    std = row.get(f"{label}_std")
    return f"{row[label]:.4g}" + ("" if std is None else f" ± {std:.2g}")


def _print_rows(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    headers = ["structure", "formula", "sites"] + [f"{label} ({unit})" if unit else label for label, unit in columns]
    cells = [[row["name"], row["formula"], str(row["n_sites"] or "")]
             + [_value_text(row, label) for label, _ in columns]
             + [row["error"] or row["warning"]] for row in rows]
    _show_table(headers + ["note"], cells, right=range(3, 3 + len(columns)))


@main.command()
def models() -> None:
    """List the shipped models with their target, unit, validation MAE and the sha256 of their weights."""
    from crystalprop.model.checkpoint import read_checkpoint  # noqa: PLC0415
    from crystalprop.provenance import file_sha256  # noqa: PLC0415
    from crystalprop.registry import available_models, checkpoints_dir, resolve_model  # noqa: PLC0415

    rows = []
    for name in available_models():
        path = resolve_model(name)[1]
        card, _ = read_checkpoint(path)
        metrics = card.metrics
        mae = metrics.get("log10_mae") if card.transform.log10 else metrics.get("mae")
        mae_text = "" if mae is None else f"{mae:.4f}" + (" (log10)" if card.transform.log10 else "")
        data = card.training.get("data", {})
        rows.append([name, card.target, card.unit, mae_text, f"{data.get('n_train', '?')} crystals",
                     str(card.training.get("cumulative_epochs", card.training.get("epochs", ""))), file_sha256(path)])
    _show_table(["name", "target", "unit", "val MAE", "trained on", "epochs", "sha256"], rows,
                title=f"models in {checkpoints_dir()}")


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--recursive", "-r", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cutoff", default=8.0, show_default=True)
@click.option("--neighbors", default=12, show_default=True)
@_cell_option("canonical")
def inspect(paths, recursive, as_json, cutoff, neighbors, cell) -> None:
    """Show what the model will see: sites (in the file -> in the cell used), graph edges, neighbour distances, warnings."""
    import numpy as np  # noqa: PLC0415

    from crystalprop.graph.neighbors import GraphSettings  # noqa: PLC0415
    from crystalprop.predictor import iter_prepared  # noqa: PLC0415

    records, failed = [], 0
    settings = GraphSettings(cutoff, neighbors, cell=cell or "canonical")
    for item in iter_prepared(list(paths), settings, recursive=recursive, workers=0):
        record = {"name": item.name, "formula": item.formula, "n_sites": item.n_sites, "cell": settings.cell,
                  "cell_sites": item.cell_sites, "error": item.error or "", "warnings": item.warnings}
        if item.graph is not None:
            d = item.graph.distances
            record.update(n_edges=item.graph.num_edges, edges_per_atom=round(item.graph.num_edges / item.cell_sites, 2),
                          nearest_neighbor_A=round(float(d.min()), 4), mean_neighbor_A=round(float(np.mean(d)), 4))
        failed += bool(item.error)
        records.append(record)
    if as_json:
        out.print_json(json.dumps(records))
    else:
        rows = [[r["name"], r["formula"],
                 f"{r['n_sites']} -> {r['cell_sites']}" if r["cell_sites"] else str(r["n_sites"] or ""),
                 str(r.get("n_edges", "")), str(r.get("edges_per_atom", "")), str(r.get("nearest_neighbor_A", "")),
                 str(r.get("mean_neighbor_A", "")), r["error"] or "; ".join(r["warnings"])] for r in records]
        _show_table(["structure", "formula", f"sites (file -> {settings.cell} cell)", "edges", "edges/atom",
                     "nearest Å", "mean Å", "note"], rows)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--target", "-t", help="Property to learn (default: the only numeric field).")
@click.option("--unit", default="", help="Unit of the target, stored in the model card.")
@click.option("--output-dir", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--weight-decay", default=1e-5, show_default=True)
@click.option("--schedule", default="onecycle", show_default=True, type=click.Choice(["onecycle", "cosine", "constant"]))
@click.option("--loss", default="mse", show_default=True, type=click.Choice(["mse", "l1", "huber"]))
@click.option("--log10", is_flag=True, help="Learn log10 of a positive target (e.g. moduli).")
@click.option("--floor", default=None, type=float,
              help="Physical lower bound: predictions below it are raised to it (e.g. 0 for band gaps).")
@click.option("--layers", default=5, show_default=True)
@click.option("--features", default=64, show_default=True)
@click.option("--heads", default=1, show_default=True)
@click.option("--fc-features", default=128, show_default=True)
@click.option("--patience", default=None, type=int, help="Stop after this many epochs without improvement.")
@click.option("--max-time", default=None, help="Time budget, e.g. 2h or 90m; stops cleanly and saves.")
@click.option("--seed", default=0, show_default=True)
@click.option("--val-fraction", default=0.1, show_default=True, help="Used when the data has no split.")
@click.option("--test-fraction", default=0.0, show_default=True)
@click.option("--id-column", default=None)
@click.option("--structure-column", default=None, help="CSV column holding CIF/POSCAR text.")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from last.ckpt.")
@click.option("--init-from", default=None, help="Start from these weights (checkpoint or shipped model name).")
@click.option("--limit", default=None, type=int, help="Use only the first N training structures (quick trials).")
@click.option("--workers", default=1, show_default=True,
              help="Data-parallel training processes on this machine (started with msrun).")
@click.option("--graph-workers", default=None, type=int, help="Graph-building processes (default: all cores).")
@click.option("--threads", default=None, type=int, help="MindSpore CPU threads per training process.")
@click.option("--device", default="CPU", show_default=True, type=click.Choice(["CPU", "GPU", "Ascend"], case_sensitive=False))
@click.option("--ensemble", default=1, show_default=True, type=click.IntRange(min=1),
              help="Train N members (seeds --seed, --seed+1, ...; one split) in OUTPUT_DIR/member<k>, then join "
                   "them into OUTPUT_DIR/best.ckpt with σ calibrated on the validation split.")
@_cell_option("canonical; stored in the model, which then predicts on the same cells")
def train(data, target, unit, output_dir, epochs, batch_size, lr, weight_decay, schedule, loss, log10, floor, layers,
          features, heads, fc_features, patience, max_time, seed, val_fraction, test_fraction, id_column,
          structure_column, resume, init_from, limit, workers, graph_workers, threads, device, ensemble, cell) -> None:
    """Train a Matformer model on DATA (JSON/JSONL, a folder with a CSV table, or a CSV with structures).

    Ctrl-C (or SIGTERM) stops after the current step and saves last.ckpt; --resume continues.
    With --workers N (or started under msrun) each process trains on its share of every
    batch and gradients are averaged by MindSpore's all-reduce; rank 0 writes the files.
    """
    from crystalprop.training.distributed import join_cluster, launched_by_msrun, serves_cluster  # noqa: PLC0415

    if workers > 1 and not launched_by_msrun():
        _launch_msrun(workers, output_dir, threads)
        return
    if serves_cluster():  # msrun's scheduler process runs this command too: it only coordinates
        join_cluster()
        return
    if ensemble > 1 and workers > 1:
        _fail("--ensemble trains its members one after another: use it without --workers")
    if ensemble == 1:
        _check_run_dir(Path(output_dir), resume)
    job = {
        "config": dict(target=target or "", unit=unit, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, schedule=schedule, loss=loss, log10=log10, floor=floor,
                       patience=patience, max_time_s=_duration(max_time), seed=seed),
        "model": dict(layers=layers, features=features, heads=heads, fc_features=fc_features),
        "graph": dict(cell=cell),  # None: canonical for a new run, the run's own setting for --resume
        "run": dict(data=data, run_dir=output_dir, id_column=id_column, structure_column=structure_column,
                    val_fraction=val_fraction, test_fraction=test_fraction, limit=limit, resume=resume,
                    init_from=init_from, workers=graph_workers),
        "threads": threads,
        "device": device,
    }
    if ensemble > 1:
        _train_ensemble(job, ensemble)
        return
    kind, payload = _run_training_child(job)
    if kind == "error":
        _fail(payload)
    console.print(f"[bold]{payload['stopped_because']}[/]: best validation MAE {payload['best_val_mae']:.4g} at "
                  f"epoch {payload['best_epoch']}; run in {output_dir} (best.ckpt, last.ckpt, history.csv)")


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume and not (run_dir / "last.ckpt").is_file():
        _fail(f"{run_dir}: nothing to resume (no last.ckpt)")
    if not resume and (run_dir / "last.ckpt").is_file():
        _fail(f"{run_dir} already holds a run: add --resume to continue it, or choose another --output-dir")


def _train_ensemble(job: dict, members: int) -> None:
    """Train the members one after another (--resume continues the unfinished ones), then join them."""
    from crystalprop.evaluation import join_ensemble  # noqa: PLC0415
    from crystalprop.model.checkpoint import CheckpointError  # noqa: PLC0415

    output_dir, seed, run = Path(job["run"]["run_dir"]), job["config"]["seed"], job["run"]
    dirs = [output_dir / f"member{k}" for k in range(members)]
    for k, member_dir in enumerate(dirs):
        started = (member_dir / "last.ckpt").is_file()
        if started and not run["resume"]:
            _check_run_dir(member_dir, False)
        console.print(f"[bold]member {k + 1} of {members}[/] (seed {seed + k}) in {member_dir}", highlight=False)
        kind, payload = _run_training_child({**job, "config": {**job["config"], "seed": seed + k},
                                             "run": {**run, "run_dir": str(member_dir), "resume": started,
                                                     "split_seed": seed}})
        if kind == "error":
            _fail(f"member {k + 1}: {payload}")
        if payload["stopped_because"] != "finished" and not payload["stopped_because"].startswith("no improvement"):
            console.print(f"member {k + 1} {payload['stopped_because']}: --resume continues the ensemble")
            sys.exit(1)
    try:
        with console.status("joining the members and calibrating σ"):
            result = join_ensemble(dirs, output_dir / "best.ckpt", run["data"], id_column=run["id_column"],
                                   structure_column=run["structure_column"], device=job["device"])
    except (CheckpointError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"ensemble of {members}: validation MAE {result['mae']:.4g} (members "
                  f"{', '.join(f'{m:.4g}' for m in result['member_maes'])}); Spearman(σ, |error|) "
                  f"{result['sigma_spearman']:.2f}; run in {output_dir} (best.ckpt)", highlight=False)


def _launch_msrun(workers: int, output_dir: str, threads: int | None) -> None:
    """Run this same train command in ``workers`` msrun processes; their logs go to OUTPUT_DIR/logs."""
    import subprocess  # noqa: PLC0415

    from crystalprop.training.distributed import msrun_command, msrun_environment  # noqa: PLC0415

    args = sys.argv[1:]
    at = next(i for i, a in enumerate(args) if a == "--workers" or a.startswith("--workers="))
    del args[at : at + (1 if "=" in args[at] else 2)]
    if threads is None:
        args += ["--threads", str(max(1, (os.cpu_count() or 1) // workers))]
    log_dir = Path(output_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = msrun_command(workers, args, log_dir)
    console.print(f"starting {workers} training processes with msrun; logs in {log_dir}", highlight=False)
    with open(log_dir / "msrun.log", "w") as msrun_log:
        worker = subprocess.Popen(command, env=msrun_environment(), stdout=msrun_log, stderr=subprocess.STDOUT)
        try:
            rc = _follow(log_dir / "worker_0.log", worker)
        except KeyboardInterrupt:
            worker.terminate()
            rc = worker.wait()
    if rc != 0:
        _fail(f"distributed training failed (exit {rc}); the last checkpoint in {output_dir} is intact. "
              f"Worker logs: {log_dir}", code=1)


def _follow(log: Path, process) -> int:
    """Print rank 0's log lines as they come until ``process`` ends; its exit status."""
    position = 0
    while True:
        done = process.poll() is not None
        if log.is_file():
            with open(log, "rb") as f:
                f.seek(position)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only; the rest comes next time
            position += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if line.strip() and not line.startswith("["):  # MindSpore's own log lines start with [LEVEL]
                    console.print(line, highlight=False, markup=False)
        if done:
            return process.returncode
        time.sleep(0.5)


def _run_training_child(job: dict) -> tuple[str, object]:
    """Train in a child process of its own session, relaying its events to the display.

    MindSpore ends the process on SIGINT while a graph runs, so the terminal's Ctrl-C is
    caught here instead and passed on as SIGTERM, which the trainer turns into a clean stop.
    """
    import multiprocessing as mp  # noqa: PLC0415
    import queue as queue_module  # noqa: PLC0415
    import signal  # noqa: PLC0415

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    child = ctx.Process(target=_train_child_main, args=(job, events))
    child.start()

    def forward(signum, frame) -> None:
        console.print("[yellow]stopping after this step and saving...[/]")
        if child.pid:
            os.kill(child.pid, signal.SIGTERM)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    outcome: tuple[str, object] = ("error", "training process ended without a result (killed?)")
    try:
        with _TrainDisplay() as display:
            while True:
                try:
                    kind, info = events.get(timeout=0.5)
                except queue_module.Empty:
                    if not child.is_alive():
                        break
                    continue
                if kind in ("result", "error"):
                    outcome = (kind, info)
                    break
                display.event(kind, info)
    finally:
        child.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcome


def _stop_when_orphaned(parent: int, grace_s: float = 300.0) -> None:
    """If the command that started this process dies, stop cleanly (SIGTERM) rather than train
    unattended; leave for good if a clean stop has not happened within ``grace_s`` (e.g. a
    data-parallel peer died and an all-reduce waits for it)."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="orphan-watch").start()


def _run_cell(run: dict) -> str:
    """The cell setting a resumed run was trained with (canonical for a new run)."""
    from crystalprop.training.trainer import saved_cell  # noqa: PLC0415

    last = Path(run["run_dir"]) / "last.ckpt"
    return saved_cell(last) if run["resume"] and last.is_file() else "canonical"


def _train_child_main(job: dict, events) -> None:
    """Child process: run the training and report events, then the result or the error."""
    os.setsid()  # the terminal's Ctrl-C goes to the parent only
    events.cancel_join_thread()  # never hang at exit on an unread queue
    _stop_when_orphaned(os.getppid(), grace_s=60.0 if "MS_ROLE" in os.environ else 300.0)

    def report(kind: str, info: dict) -> None:
        events.put((kind, info))

    try:
        from crystalprop.backend import set_device  # noqa: PLC0415

        set_device(job["device"], threads=job["threads"])
        from crystalprop.graph.neighbors import GraphSettings  # noqa: PLC0415
        from crystalprop.model.matformer import ModelConfig  # noqa: PLC0415
        from crystalprop.registry import resolve_model  # noqa: PLC0415
        from crystalprop.training.run import train_model  # noqa: PLC0415
        from crystalprop.training.trainer import TrainConfig  # noqa: PLC0415

        config = TrainConfig(**job["config"], model=ModelConfig(**job["model"]),
                             graph=GraphSettings(cell=job["graph"]["cell"] or _run_cell(job["run"])))
        run = dict(job["run"])
        if run["init_from"]:
            run["init_from"] = str(resolve_model(run["init_from"])[1])
        result = train_model(run.pop("data"), run.pop("run_dir"), config, **run,
                             on_event=report)
        events.put(("result", {"stopped_because": result.stopped_because, "best_val_mae": result.best_val_mae,
                               "best_epoch": result.best_epoch}))
    except Exception as exc:  # reported to the parent as a one-line error
        events.put(("error", str(exc) or type(exc).__name__))


class _TrainDisplay:
    """Rich progress for graph building and epochs, one line per finished epoch."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console)
        self.task = None
        self.started = time.monotonic()

    def __enter__(self) -> "_TrainDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def event(self, kind: str, info: dict) -> None:
        p = self.progress
        if kind == "graphs":
            self.task = p.add_task("building graphs", total=info["total"], info="")
        elif kind == "graph_progress" and self.task is not None:
            p.advance(self.task, info["advance"])
        elif kind == "data":
            console.print(f"data: {info['n_train']} train, {info['n_val']} val, {info['n_skipped']} skipped "
                          f"(split: {info['split']})")
        elif kind == "start":
            if self.task is not None:
                p.remove_task(self.task)
            self.steps = info["steps_per_epoch"]
            self.task = p.add_task(f"epoch {info['epoch'] + 1}/{info['epochs']}", total=self.steps, info="")
            self.epochs = info["epochs"]
        elif kind == "step":
            p.update(self.task, completed=info["step"], description=f"epoch {info['epoch'] + 1}/{self.epochs}",
                     info=f"loss {info['loss']:.4f}  lr {info['lr']:.2e}")
            if not console.is_terminal and info["step"] % max(1, self.steps // 20) == 0:
                # logs (nohup, batch jobs) get a plain line every 5 % of an epoch instead of a live bar
                console.print(f"epoch {info['epoch'] + 1}/{self.epochs} step {info['step']}/{self.steps} "
                              f"loss {info['loss']:.4f} lr {info['lr']:.2e} "
                              f"{time.monotonic() - self.started:.0f} s", highlight=False)
        elif kind == "epoch":
            console.print(f"epoch {info['epoch']}: train loss {info['train_loss']:.4f}, val MAE {info['val_mae']:.4g}"
                          + (f" (log10 {info['val_log10_mae']:.4f})" if info["val_log10_mae"] == info["val_log10_mae"] else "")
                          + f", {info['structures_per_s']:.0f} structures/s" + ("  [green]best[/]" if info["best"] else ""))
            p.reset(self.task, total=self.steps)
        elif kind in ("resume", "init_from", "stopping"):
            console.print(f"{kind}: {info}" if info else "stopping after this step (Ctrl-C again to force)")


METRIC_KEYS = ("mae", "rmse", "r2", "max_error", "log10_mae", "log10_rmse", "log10_r2", "mae_zero_targets",
               "mae_nonzero_targets", "n_zero_targets", "n_failed", "sigma_spearman", "within_1sigma",
               "within_2sigma", "mean_sigma", "sigma_scale")


def _add_metric_rows(table: Table, result: dict) -> None:
    for key in METRIC_KEYS:
        if key in result:
            table.add_row(key, f"{result[key]:.4g}" if isinstance(result[key], float) else str(result[key]))


@main.command()
@click.argument("model")
@click.argument("data", type=click.Path(exists=True))
@click.option("--target", "-t", default=None, help="Property column (default: the model's target).")
@click.option("--split", default=None,
              help="train, val, test or all (default: test if present, else val). The split is the one the "
                   "model was trained with; val/test are refused if any of their structures were trained on.")
@click.option("--output-dir", "-o", default=None, type=click.Path(file_okay=False),
              help="Write predictions.csv, metrics.json, parity.png, error_histogram.png here.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--id-column", default=None)
@click.option("--structure-column", default=None)
@_cell_option("the model's own setting (canonical for the shipped models)")
def evaluate(model, data, target, split, output_dir, batch_size, id_column, structure_column, cell) -> None:
    """Measure MODEL (shipped name, .ckpt or run dir) on a labelled DATA set."""
    from crystalprop.evaluation import evaluate_model  # noqa: PLC0415
    from crystalprop.model.checkpoint import CheckpointError  # noqa: PLC0415
    from crystalprop.data.datasets import DatasetError  # noqa: PLC0415

    try:
        with console.status("evaluating"):
            result = evaluate_model(model, data, target=target, split=split, output_dir=output_dir,
                                    batch_size=batch_size, id_column=id_column, structure_column=structure_column,
                                    cell=cell)
    except (CheckpointError, DatasetError, ValueError) as exc:
        _fail(str(exc))
    table = Table(title=f"{result['model']} on {result['data']} ({result['split']}, n = {result['n']}, "
                        f"{result['cell']} cells)")
    table.add_column("metric")
    table.add_column(f"value ({result['unit']})" if result["unit"] else "value", justify="right")
    _add_metric_rows(table, result)
    out.print(table)
    console.print(f"{result['split']} split checked against the training data: {result['split_check']}",
                  highlight=False)
    if output_dir:
        console.print(f"files in {output_dir}: {', '.join(result['files'])}")


@main.command()
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("members", nargs=-1, required=True)
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Labelled data set the members were trained on; its --split calibrates σ.")
@click.option("--split", default="val", show_default=True, help="Split that calibrates σ (never one trained on).")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--id-column", default=None, help="As given to train, for a CSV data set.")
@click.option("--structure-column", default=None, help="As given to train, for a CSV data set.")
@click.option("--device", default="CPU", show_default=True, type=click.Choice(["CPU", "GPU", "Ascend"], case_sensitive=False))
def ensemble(output, members, data, split, batch_size, id_column, structure_column, device) -> None:
    """Join MEMBERS (checkpoints or run dirs of one target, architecture and split, e.g. other
    seeds) into one ensemble OUTPUT.ckpt: predictions are the members' mean, with a σ per
    structure from their spread, scaled to match the errors on DATA's validation split."""
    from crystalprop.evaluation import join_ensemble  # noqa: PLC0415
    from crystalprop.model.checkpoint import CheckpointError  # noqa: PLC0415
    from crystalprop.data.datasets import DatasetError  # noqa: PLC0415

    try:
        with console.status("calibrating"):
            result = join_ensemble(members, output, data, split=split, batch_size=batch_size, id_column=id_column,
                                   structure_column=structure_column, device=device)
    except (CheckpointError, DatasetError, ValueError) as exc:
        _fail(str(exc))
    table = Table(title=f"ensemble of {result['members']} on {data} ({split}, n = {result['n']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    _add_metric_rows(table, result)
    out.print(table)
    maes = ", ".join(f"{m:.4g}" for m in result["member_maes"])
    console.print(f"members' MAE: {maes}; written to {output}", highlight=False)


if __name__ == "__main__":
    main()
