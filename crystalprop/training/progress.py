"""The live display of a training run on standard error, fed with the trainer's events."""

from __future__ import annotations

import time
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from crystalprop.utils.console import console


class TrainDisplay:
    """Rich progress for graph building and epochs, one line per finished epoch.

    Where standard error is no terminal (nohup, batch jobs), a plain line every 5 % of an
    epoch stands in for the live bar.
    """

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, disable=not console.is_terminal)  # a log gets its plain lines only
        self.task = None
        self.started = time.monotonic()

    def __enter__(self) -> "TrainDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def event(self, kind: str, info: dict) -> None:
        """Show one event of :func:`crystalprop.training.run.train_model`."""
        p = self.progress
        if kind == "graphs":
            self.task = p.add_task("building graphs", total=info["total"], info="")
        elif kind == "graph_progress" and self.task is not None:
            p.advance(self.task, info["advance"])
        elif kind == "data":
            held_out = f"{info['n_test']} test (held out), " if info.get("n_test") else ""
            console.print(f"data: target {info['target']}; {info['n_train']} train, {info['n_val']} val, {held_out}"
                          f"{info['n_skipped']} skipped (split: {info['split']})", markup=False)
            for note in info.get("notes", []):
                console.print(f"[yellow]note[/]: {escape(note)}")
            if not info["n_val"]:
                console.print("[yellow]no validation structures[/]: best.ckpt is the epoch of least training loss, "
                              "and no validation MAE is measured")
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
                console.print(f"epoch {info['epoch'] + 1}/{self.epochs} step {info['step']}/{self.steps} "
                              f"loss {info['loss']:.4f} lr {info['lr']:.2e} "
                              f"{time.monotonic() - self.started:.0f} s", highlight=False)
        elif kind == "epoch":
            console.print(f"epoch {info['epoch']}: train loss {info['train_loss']:.4f}, val MAE {info['val_mae']:.4g}"
                          + (f" (log10 {info['val_log10_mae']:.4f})" if info["val_log10_mae"] == info["val_log10_mae"] else "")
                          + f", {info['structures_per_s']:.0f} structures/s" + ("  [green]best[/]" if info["best"] else ""))
            p.reset(self.task, total=self.steps)
        elif kind == "resume":
            changed = "; ".join(f"{key} {old} -> {new}" for key, (old, new) in info.get("changed", {}).items())
            where = (f"all {info['epochs']} epochs done" if info["epoch"] >= info["epochs"]
                     else f"epoch {info['epoch'] + 1}, after its step {info['step']}" if info["step"]
                     else f"epoch {info['epoch'] + 1}")  # the event counts the epochs done; the display from 1
            console.print(f"resume: {where}"
                          + (f"; changed: {changed}" if changed else "")
                          + ("; its patience starts afresh" if info.get("patience_restarted") else ""), markup=False)
        elif kind == "init_from_unused":
            began = f"it started from {info['started']}" if info["started"] else "it started from random weights"
            console.print(f"resume: --init-from {info['given']} is not used: the run goes on from its last.ckpt "
                          f"({began})", markup=False, highlight=False)
        elif kind == "init_from":
            unit = f", in {info['unit_from_start']}, its unit" if info.get("unit_from_start") else ""
            floors = "".join(f", its {name.replace('_', ' ')} {value:g}"
                             for name, value in info.get("floors_from_start", {}).items())
            start = (f"starting from its predictions (same target{unit}{floors})" if info["same_target"]
                     else (f"its target in {info['units'][0]}, this run's in {info['units'][1]}: its output layer "
                           "learns this one, as for another target") if info.get("units")
                     else "another target: its output layer learns this one")
            console.print(f"init_from: {info['path']} ({info['loaded']} of {info['total']} parameters); {start}",
                          markup=False, highlight=False)
        elif kind == "start_score":
            name = "MAE (log10)" if info["key"] == "log10_mae" else "MAE"
            console.print(f"start: validation {name} {info['score']:.4g} before training (the weights it starts "
                          "from)", markup=False)
        elif kind == "start_model_score":
            name = "MAE (log10)" if info["key"] == "log10_mae" else "MAE"
            console.print(f"start model: validation {name} {info['score']:.4g} ({info['path']}: its {info['networks']} "
                          "networks joined, as evaluate scores it; the run starts from the first one's weights)",
                          markup=False, highlight=False)
        elif kind == "stopping":
            console.print("stopping after this step (Ctrl-C again to force)", markup=False)


class EnsembleMessages:
    """The lines between ensemble members, and a spinner while they are joined (until the context ends)."""

    def __init__(self) -> None:
        self.status = console.status("joining the members and calibrating σ")

    def __enter__(self) -> "EnsembleMessages":
        return self

    def __exit__(self, *exc) -> None:
        self.status.stop()

    def event(self, kind: str, info: dict) -> None:
        """Show an event of :func:`crystalprop.training.jobs.train` (those of the members have their display)."""
        if kind == "member":
            console.print(f"[bold]member {info['member']} of {info['members']}[/] (seed {info['seed']}) in "
                          f"{escape(str(info['run_dir']))}", highlight=False)
        elif kind == "joining":
            self.status.start()
        elif kind == "ensemble_changed":
            console.print(f"resume: the ensemble changed: {'; '.join(info['changed'])}", highlight=False, markup=False)


def _no_gain_note(result: dict, who: str = "") -> None:
    """Say where a finished fine-tune of the same target has no epoch better than the weights it started from."""
    start, joined = result.get("start_score"), result.get("start_model_score")
    ended = result["stopped_because"] == "finished" or result["stopped_because"].startswith("no improvement")
    if joined is not None and start is not None and joined < start:  # the model it came from scores better
        start, what = joined, "the model it started from"
    else:
        what = "the weights it started from"
    if start is not None and ended and not result["best_val_mae"] < start:  # a cut run's later epochs may yet
        console.print(f"[yellow]note:[/] {who}no epoch beat {what} ({start:.4g} on the same "
                      "validation structures): the fine-tune made them worse here; keep the model it started from, "
                      "or train with a lower --lr (1e-4 or less for a fine-tune of the same target); on a few hundred "
                      "structures the BatchNorm statistics, re-estimated from their batches, can cost this at any lr",
                      highlight=False)


def report_training(result: dict, output_dir: str) -> int:
    """Print how a run (or an ensemble) ended; the command's exit status: 128 + the signal
    for a run a signal stopped (as ``predict``), 1 for an ensemble stopped by its time budget before
    its last member, else 0."""
    if "members" not in result:
        best = "best validation MAE" if result.get("validated", True) else "best training loss"
        files = [name for name in ("best.ckpt", "last.ckpt", "history.csv") if (Path(output_dir) / name).is_file()]
        n_skipped = result.get("n_skipped", 0)
        files += [f"skipped.log: {n_skipped} record{'s' if n_skipped > 1 else ''}"] if n_skipped else []
        best += " (log10)" if result.get("log10") and result.get("validated", True) else ""
        where = f"run in {escape(str(output_dir))} ({', '.join(files) or 'no file yet'})"
        if not result["best_epoch"]:  # stopped before an epoch ended: nothing validated yet
            console.print(f"[bold]{result['stopped_because']}[/] before its first epoch ended: no best.ckpt yet; "
                          f"{where}: --resume continues")
        else:
            console.print(f"[bold]{result['stopped_because']}[/]: {best} {result['best_val_mae']:.4g} at "
                          f"epoch {result['best_epoch']}; {where}")
        _no_gain_note(result)
        return 128 + result["signal"] if result.get("signal") else 0
    if result["ensemble"] is None:
        console.print(f"member {len(result['members'])} {result['stopped_because']}: --resume continues the ensemble")
        stopped_by = result["members"][-1].get("signal")
        return 128 + stopped_by if stopped_by else 1
    for k, member in enumerate(result["members"]):
        _no_gain_note(member, f"member {k + 1}: ")
    joined = result["ensemble"]
    if joined.get("kept"):
        console.print(f"best.ckpt already joins these {len(result['members'])} members as they are (σ "
                      f"{joined['sigma_from']}): kept; --resume --sigma, or `crystalprop ensemble`, joins them anew",
                      highlight=False, markup=False)
    on = f" on {joined['n']} validation structures" if "n" in joined else ""  # all of them, also after --limit
    console.print(f"ensemble of {len(result['members'])}: validation MAE {joined['mae']:.4g}{on} (members "
                  f"{', '.join(f'{m:.4g}' for m in joined['member_maes'])}); Spearman(σ, |error|) "
                  f"{joined['sigma_spearman']:.2f}; run in {output_dir} (best.ckpt)", highlight=False, markup=False)
    for note in joined.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    return 0
