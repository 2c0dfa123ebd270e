"""Terminal output of the ``crystalprop`` command: its two consoles and its tables.

A table is drawn by rich on a terminal wide enough for it, and as plain space-aligned text
otherwise (pipes, files, narrow terminals), where rich would cut names and headers short.
"""

from __future__ import annotations

import math
import signal
from typing import Iterable, Sequence

import click
from rich.cells import cell_len
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from crystalprop.utils.console import console, out
from crystalprop.utils.stopping import stop_signals_interrupt

TABLE_LIMIT = 25
"""Most prediction rows shown on the terminal."""

METRIC_KEYS = ("mae", "rmse", "r2", "max_error", "log10_mae", "log10_rmse", "log10_r2", "log10_max_error",
               "log10_n_excluded",
               "mae_zero_targets", "mae_nonzero_targets", "n_zero_targets", "n_failed", "sigma_spearman",
               "within_1sigma", "within_2sigma", "within_interval95", "mean_sigma", "n_without_sigma",
               "n_sigma_calibration", "n_like_sigma_calibration", "sigma_scale", "spread_sigma_spearman",
               "n_like_training", "mae_unlike_training", "log10_mae_unlike_training")
UNIT_KEYS = ("mae", "rmse", "max_error", "mae_zero_targets", "mae_nonzero_targets", "mean_sigma",
             "mae_unlike_training")
"""Metrics in the target's unit (the others are log10 values, ratios, fractions or counts)."""
LOG10_UNIT_KEYS = ("log10_mae", "log10_rmse", "log10_max_error", "log10_mae_unlike_training")
"""Metrics in log10 of the target's unit (``log10_unit`` of the result names it)."""


def fits(table: Table) -> bool:
    """Whether standard output is a terminal wide enough to draw ``table`` without cutting a cell."""
    if not out.is_terminal:
        return False
    return Measurement.get(out, out.options.update_width(10**6), table).maximum <= out.width


def plain_lines(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Header and rows as space-aligned text, every cell in full."""
    widths = [max(cell_len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        pads = [" " * (width - cell_len(cell)) for cell, width in zip(cells, widths)]
        return "  ".join(pad + cell if k in right else cell + pad
                         for k, (cell, pad) in enumerate(zip(cells, pads))).rstrip()

    return [line(headers)] + [line(row) for row in rows]


CELL_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def show_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = (),
               title: str | None = None) -> None:
    """``rows`` under ``headers`` on standard output, columns ``right`` right-aligned; line breaks and tabs in a
    cell (a file name may hold them) shown as escapes, so that each row stays on one line."""
    rows = [[cell.translate(CELL_ESCAPES) for cell in row] for row in rows]
    table = Table(title=title)
    for k, head in enumerate(headers):
        table.add_column(head, justify="right" if k in right else "left")
    for row in rows:
        table.add_row(*map(Text, row))
    if fits(table):
        out.print(table)
        return
    for line in ([title] if title else []) + plain_lines(headers, rows, set(right)):
        click.echo(line)


def value_text(row: dict, label: str) -> str:
    """A prediction as text, with ``± σ`` where the model gives one: σ to two significant figures and
    the value to the same decimal place (the digits beyond it are noise); four significant figures
    for a value without σ, or with σ = 0 or far outside 1e-4 to 1e6."""
    value = row[label]
    if value is None:
        return ""
    std = row.get(f"{label}_std")
    if std is None:
        return f"{value:.4g}"
    if not (1e-4 <= std < 1e6):
        return f"{value:.4g} ± {std:.2g}"
    decimals = 1 - math.floor(math.log10(std))  # σ's second significant figure
    shown = round(value, decimals) + 0.0  # + 0.0: a value that rounds to zero shows as 0, not -0
    if decimals > 0:
        return f"{shown:.{decimals}f} ± {std:.{decimals}f}"
    return f"{shown:.0f} ± {round(std, decimals):.0f}"


def print_rows(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Prediction rows as a table: structure, formula, sites, one column per model, note."""
    headers = ["structure", "formula", "sites"] + [f"{label} ({unit})" if unit else label for label, unit in columns]
    cells = [[row["name"], row["formula"], str(row["n_sites"] or "")]
             + [value_text(row, label) for label, _ in columns]
             + [row["error"] or row["warning"]] for row in rows]
    show_table(headers + ["note"], cells, right=range(3, 3 + len(columns)))


def print_metrics(result: dict, title: str, unit: str = "") -> None:
    """The metrics in ``result`` (those of :data:`METRIC_KEYS` it holds) as a two-column table, the
    ``unit`` beside the name of each metric in it (:data:`UNIT_KEYS`)."""
    table = Table(title=Text(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in METRIC_KEYS:
        if key in result:
            name = (f"{key} ({unit})" if unit and key in UNIT_KEYS
                    else f"{key} ({result['log10_unit']})" if key in LOG10_UNIT_KEYS and "log10_unit" in result
                    else key)
            table.add_row(name, f"{result[key]:.4g}" if isinstance(result[key], float) else str(result[key]))
    out.print(table)


def print_evaluation(result: dict, output_dir: str | None) -> None:
    """The report of :func:`crystalprop.evaluation.evaluate.evaluate_model`: metrics, the split check, the files."""
    print_metrics(result, f"{result['model']} on {result['data']} ({result['split']}, n = {result['n']}, "
                          f"{result['cell']} cells)", result["unit"])
    console.print(f"{result['split']} split checked against the training data: {result['split_check']}",
                  highlight=False, markup=False)
    for note in result.get("data_notes", []):
        console.print(f"note: {note}", highlight=False, markup=False)
    skipped = result.get("skipped") or []
    logged = f"; all in {output_dir}/skipped.log" if output_dir else ""
    if skipped:
        shown = "; ".join(f"{rid}: {reason}" for rid, reason in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        console.print(f"{len(skipped)} record{'s' * (len(skipped) != 1)} skipped ({shown}){logged}",
                      highlight=False, markup=False)
    unusable = result.get("unusable") or []
    other = [(rid, where) for rid, _, where in unusable if where is not None]
    if other:
        console.print(f"{len(other)} unusable records of other splits not counted (e.g. {other[0][0]}: "
                      f"{other[0][1]}){logged}", highlight=False, markup=False)
    unknown = [(rid, reason) for rid, reason, where in unusable if where is None]
    if unknown:
        console.print(f"{len(unknown)} records of the data set unusable, split unknown (the split deals out usable "
                      f"records only; e.g. {unknown[0][0]}: {unknown[0][1]}): whether the {result['split']} split "
                      f"would hold them cannot be told{logged}", highlight=False, markup=False)
    if output_dir:
        console.print(f"files in {output_dir}: {', '.join(result['files'])}", markup=False)


def print_ensemble(result: dict, data: str, split: str, output: str) -> None:
    """The report of :func:`crystalprop.evaluation.joining.join_ensemble`: metrics and the members' MAE."""
    print_metrics(result, f"ensemble of {len(result['member_maes'])} on {data} ({split}, n = {result['n']})",
                  result.get("unit"))
    maes = ", ".join(f"{m:.4g}" for m in result["member_maes"])
    console.print(f"members' MAE: {maes}; written to {output}", highlight=False, markup=False)
    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def stream_rows(batches: Iterable[list[dict]], writer=None, keep: int | None = TABLE_LIMIT
                ) -> tuple[list[dict], int, int, int | None]:
    """Consume prediction rows batch by batch with a progress line, naming each failure as it comes.

    Every batch goes to ``writer`` (a :class:`crystalprop.prediction.output.ResultWriter`, closed at the
    end, marked finished if the stream ran to its end) as it arrives, so Ctrl-C, SIGTERM or SIGHUP
    keeps what is done and leaves a whole file
    (:func:`crystalprop.utils.stopping.stop_signals_interrupt`; call it in the main thread). Returns the
    first ``keep`` rows or so (every row for ``keep=None``) for the table, the structures predicted,
    the structures failed, and the stop signal received, before the end of the stream or while the
    file was closed (None when none came).
    """
    shown, n_ok, n_failed, stopped, reached_end = [], 0, 0, None, False
    progress = Progress(TextColumn("[bold]predicting"), BarColumn(), TextColumn("{task.completed} structures"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=True,
                        disable=not console.is_terminal)  # a log file or pipe gets no bar (it left a blank line)
    with progress, stop_signals_interrupt() as interrupt:
        task = progress.add_task("predict", total=None, rate="")
        try:
            try:
                for rows in batches:
                    for row in rows:
                        if row["error"]:
                            n_failed += 1
                            console.print(f"[yellow]skipped[/] {escape(row['name'])}: {escape(row['error'])}",
                                          highlight=False)
                        else:
                            n_ok += 1
                    if writer:
                        writer.write(rows)
                    if keep is None or len(shown) <= keep:
                        shown.extend(rows)
                    elapsed = progress.tasks[0].elapsed or 1e-9
                    progress.update(task, advance=len(rows), rate=f"{(n_ok + n_failed) / elapsed:.1f}/s")
                reached_end = True
            finally:
                interrupt.disarm()  # from here on a stop signal is noted and cuts nothing short
        except KeyboardInterrupt:
            stopped = signal.SIGINT  # unless one of the stop signals raised it
        finally:
            if writer:
                writer.close(finished=reached_end)
    if interrupt.received:
        stopped = signal.Signals(interrupt.received[0])
    if stopped:
        console.print(f"[yellow]interrupted[/] ({stopped.name})" + (": results so far are saved" if writer else ""))
    return shown, n_ok, n_failed, stopped
