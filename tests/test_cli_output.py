"""Tables on standard output: rich on a wide terminal, plain aligned text everywhere else.

Rich fits a table to the width it finds (80 columns when output goes to a pipe or a file)
by cutting cells short ('structu…'); names and headers must always come out in full.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import time

import pytest
from pymatgen.io.cif import CifWriter
from rich.console import Console

from conftest import perovskite, rocksalt, run_cli
from crystalprop.cli import display

LONG = "a_rather_long_file_name_for_a_strontium_titanate_perovskite_crystal_from_a_database_export"
HEADERS = ["structure", "formula", "sites", "some_property_with_a_long_name (eV/atom)", "note"]
ROWS = [[f"/data/{LONG}.cif", "SrTiO3", "5", "-3.21", ""], ["b.cif", "NaCl", "8", "-2.5", "atoms 0 and 1 are close"]]


def _columns_line_up(lines: list[str], headers: list[str]) -> None:
    """Every left-aligned column starts at the same place in the header and in each row."""
    starts = [lines[0].index(head) for head in headers]
    for line in lines[1:]:
        for start in starts[1:3]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (line, start)


def _assert_plain_and_whole(text: str, names: list[str], headers: list[str]) -> None:
    assert "…" not in text and "┃" not in text and "│" not in text, text
    for item in names + headers:
        assert item in text, (item, text)


@pytest.fixture()
def stdout_console(monkeypatch):
    """Make display.out a terminal of a given width, writing to a buffer."""

    def make(width: int, terminal: bool = True) -> io.StringIO:
        buffer = io.StringIO()
        monkeypatch.setattr(display, "out", Console(file=buffer, width=width, force_terminal=terminal, color_system=None))
        return buffer

    return make


def test_wide_terminal_gets_the_rich_table(stdout_console, capsys):
    buffer = stdout_console(300)
    display.show_table(HEADERS, ROWS, right=[3])
    assert "┃" in buffer.getvalue() and LONG in buffer.getvalue() and "…" not in buffer.getvalue()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("width, terminal", [(80, True), (300, False)])
def test_narrow_terminal_or_pipe_gets_plain_text_in_full(stdout_console, capsys, width, terminal):
    buffer = stdout_console(width, terminal)
    display.show_table(HEADERS, ROWS, right=[3], title="a title")
    assert buffer.getvalue() == ""
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "a title"
    _assert_plain_and_whole("\n".join(lines), [ROWS[0][0], "atoms 0 and 1 are close"], HEADERS)
    _columns_line_up(lines[1:], HEADERS)
    value_end = len(lines[1].split("  note")[0])  # the right-aligned column ends where its header does
    assert lines[2][:value_end].endswith("-3.21") and lines[3][:value_end].endswith("-2.5")


def test_plain_text_keeps_markup_like_names_literal(stdout_console, capsys):
    stdout_console(80, terminal=False)
    display.show_table(["structure"], [["[bold]x[/bold].cif"]])
    assert capsys.readouterr().out.splitlines()[1] == "[bold]x[/bold].cif"


@pytest.mark.slow
def test_piped_predict_and_inspect_print_full_names_and_headers(random_ckpt, tmp_path):
    names = [f"{LONG}_{k}.cif" for k in range(2)]
    for name, structure in zip(names, (perovskite(3.905), rocksalt(5.64))):
        CifWriter(structure).write_file(tmp_path / name)
    env = {"COLUMNS": "80"}
    done = run_cli(["predict", *names, "-m", random_ckpt], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    _assert_plain_and_whole(done.stdout, names, ["structure", "formula", "sites", "rand (eV)", "note"])
    lines = done.stdout.splitlines()
    _columns_line_up(lines, ["structure", "formula", "sites"])
    assert [line.split()[:3] for line in lines[1:]] == [[names[0], "SrTiO3", "5"], [names[1], "NaCl", "2"]]
    done = run_cli(["inspect", *names], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    _assert_plain_and_whole(done.stdout, names, ["structure", "edges/atom", "nearest Å", "mean Å", "note"])


@pytest.mark.slow
def test_piped_models_prints_full_names(shipped_dir, random_ckpt, tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(shipped_dir, folder)
    long_name = "my_band_gap_model_fine_tuned_on_the_oxides_of_the_2024_experimental_set"
    shutil.copy(random_ckpt, folder / f"{long_name}.ckpt")
    done = run_cli(["models"], cwd=tmp_path, env={"COLUMNS": "80", "CRYSTALPROP_CHECKPOINTS": str(folder)})
    assert done.returncode == 0, done.stderr
    _assert_plain_and_whole(done.stdout, [long_name, "formation_energy_per_atom", str(folder)],
                            ["name", "target", "unit", "val MAE", "trained on", "epochs"])


def test_messages_keep_square_brackets(tmp_path, random_ckpt):
    """File names and advice with [...] reach the terminal as written: rich markup must not eat them
    (``pip install crystalprop[ase]`` lost its extra; ``empty[red].cif`` was reported as ``empty.cif``)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty[red].cif").write_text("")
    CifWriter(rocksalt(5.64)).write_file(folder / "good.cif")
    done = run_cli(["predict", folder, "-m", random_ckpt, "-o", tmp_path / "out.csv"])
    assert "empty[red].cif" in done.stderr, done.stderr
    missing = run_cli(["predict", folder / "good.cif", "-m", tmp_path / "run[bold]" / "best.ckpt"])
    assert missing.returncode != 0 and "run[bold]" in missing.stderr, missing.stderr


def test_stream_rows_stops_on_sigterm_and_finishes_saving(tmp_path):
    """SIGTERM stops the stream as Ctrl-C does, with a closed JSON file; another stop signal while the
    file is closed does not cut that short; SIGHUP ignored on entry (nohup) stays ignored; the previous
    handlers are back afterwards."""
    from crystalprop.prediction.output import ResultWriter

    class ClosedUnderFire(ResultWriter):
        def close(self, **finished) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler repeating itself, or Ctrl-C hammered
            time.sleep(0.2)  # the handler runs here
            super().close(**finished)

    def batches():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.2)
        yield [{"index": 0, "name": "a.cif", "error": ""}]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler
        yield [{"index": 1, "name": "b.cif", "error": ""}]

    out = tmp_path / "out.json"
    ignored = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    term = signal.getsignal(signal.SIGTERM)
    try:
        _, n_ok, n_failed, stopped = display.stream_rows(batches(), ClosedUnderFire(out, ["index", "name", "error"]))
    except KeyboardInterrupt:
        pytest.fail("a second stop signal cut the saving short")
    finally:
        hup = signal.signal(signal.SIGHUP, ignored)
    assert (n_ok, n_failed, stopped) == (1, 0, signal.SIGTERM)
    assert [row["name"] for row in json.loads(out.read_text())] == ["a.cif"]
    assert hup is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is term


def test_stop_signal_while_the_file_is_closed_leaves_it_whole(tmp_path):
    """The first stop signal arriving while the writer closes the file (the rows all streamed) does not cut
    the closing short (was: a JSON file without its closing bracket, and "Aborted!"); the stream is still
    reported as stopped by it."""
    from crystalprop.prediction.output import ResultWriter

    class ClosedUnderFire(ResultWriter):
        def close(self, **finished) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs here
            super().close(**finished)

    out = tmp_path / "out.json"
    term = signal.getsignal(signal.SIGTERM)
    try:
        _, n_ok, n_failed, stopped = display.stream_rows(iter([[{"index": 0, "name": "a.cif", "error": ""}]]),
                                                         ClosedUnderFire(out, ["index", "name", "error"]))
    except KeyboardInterrupt:
        pytest.fail("a stop signal cut the closing of the file short")
    assert (n_ok, n_failed, stopped) == (1, 0, signal.SIGTERM)
    assert [row["name"] for row in json.loads(out.read_text())] == ["a.cif"]
    assert signal.getsignal(signal.SIGTERM) is term


def test_piped_output_holds_every_row(tmp_path, random_ckpt):
    """`crystalprop predict FOLDER > results.txt` (or `| wc -l`) gave the first 25 rows only."""
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(30):
        CifWriter(rocksalt(5.0 + 0.02 * k)).write_file(folder / f"s{k:02d}.cif")
    done = run_cli(["predict", folder, "-m", random_ckpt])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 31 and all(f"s{k:02d}.cif" in done.stdout for k in range(30)), done.stdout
    assert "first 25 shown" not in done.stderr


def test_piped_messages_are_not_broken_into_lines(tmp_path, random_ckpt):
    """Was: written to a file or pipe, stderr wrapped at 80 columns, breaking paths in two
    (``... (provenance in`` / ``out/run1.csv.meta.json)``), so a log could not be searched for them,
    and the progress bar, which such a log does not show, left a blank line before the summary."""
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "NaCl.cif")
    output = tmp_path / ("a_folder_whose_name_is_long_enough_to_pass_the_width_of_a_terminal" * 2) / "out.csv"
    done = run_cli(["predict", tmp_path / "NaCl.cif", "-m", random_ckpt, "-o", output], env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"1 predicted, 0 failed; results in {output} (provenance in {output}.meta.json)\n"


@pytest.mark.parametrize("value, std, shown", [
    (0.02302, 0.0891, "0.023 ± 0.089"),
    (50.05, 51.2, "50 ± 51"),
    (146.12, 9.93, "146.1 ± 9.9"),
    (-3.5812, 0.0213, "-3.581 ± 0.021"),
    (12345.6, 1234.0, "12300 ± 1200"),
    (0.0, 0.0, "0 ± 0"),
    (1.5e-7, 2.0e-8, "1.5e-07 ± 2e-08"),
    (2.5, None, "2.5"),
    (-0.0012, 0.11, "0.00 ± 0.11"),  # was "-0.00" (hunt15 10): a negative value that rounds to zero
    (-4.0, 120.0, "0 ± 120"),
    (-40.0, 120.0, "-40 ± 120"),
])
def test_a_value_is_shown_to_the_digits_its_sigma_allows(value, std, shown):
    """Was: four significant figures for every value and two for σ (``0.02302 ± 0.089``,
    ``50.05 ± 51``): digits the σ says are noise."""
    row = {"m": value, **({} if std is None else {"m_std": std})}
    assert display.value_text(row, "m") == shown


def test_a_models_folder_that_is_not_there_is_named(tmp_path):
    """CRYSTALPROP_CHECKPOINTS set to a mistyped folder: `models` printed an empty table and exited 0, and
    predict said only "unknown model 'band_gap' ... none shipped" (hunt7 finding 9)."""
    env = {"CRYSTALPROP_CHECKPOINTS": str(tmp_path / "nonexistent")}
    listed = run_cli(["models"], cwd=tmp_path, env=env)
    assert listed.returncode == 2 and "CRYSTALPROP_CHECKPOINTS" in listed.stderr and "nonexistent" in listed.stderr
    predicted = run_cli(["predict", "x.cif", "-m", "band_gap"], cwd=tmp_path, env=env)
    assert predicted.returncode == 2 and "CRYSTALPROP_CHECKPOINTS" in predicted.stderr


STOPPED_DURING_START_UP = """
import os, signal, sys, time
import crystalprop.prediction.predictor as predictor
real, stop = predictor.Predictor.__init__, getattr(signal, sys.argv[1])
def slow(self, *args, **kwargs):  # a stop signal as the models (and MindSpore, for that engine) load
    os.kill(os.getpid(), stop)
    time.sleep(0.5)
    real(self, *args, **kwargs)
predictor.Predictor.__init__ = slow
from crystalprop.cli.commands import run
sys.argv = ["crystalprop", "predict", *sys.argv[2:]]
run()
"""


@pytest.mark.parametrize(("name", "status", "engine"), [("SIGINT", 130, "numpy"), ("SIGTERM", 143, "numpy"),
                                                       ("SIGINT", 130, "mindspore")])
def test_a_stop_signal_during_start_up_is_the_same_stop(tmp_path, random_ckpt, name, status, engine):
    """The stop signals were taken only once rows streamed: during start-up (models loading, inputs listed; many
    seconds for a large folder) Ctrl-C ended with click's 'Aborted!' and status 1, SIGTERM killed the process by
    its default action, and a reader process printed a BrokenPipeError traceback (hunt9 finding 8); one in
    MindSpore's import became an ImportError. The start-up now runs whole and the stop follows it."""
    import subprocess
    import sys

    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    done = subprocess.run([sys.executable, "-c", STOPPED_DURING_START_UP, name, tmp_path / "a.cif", "-m", random_ckpt,
                           "-o", tmp_path / "out.csv", "--workers", "1", "--engine", engine],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "GLOG_v": "3"})
    assert done.returncode == status, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "Aborted" not in done.stderr, done.stderr
    assert "stopped" in done.stderr and "nothing predicted" in done.stderr, done.stderr


def test_models_lists_a_users_own_model_and_a_folder_with_files_that_are_not_models(random_ckpt, tmp_path):
    """`crystalprop models runs/x` was refused (no way to see one's own model's card), and a models folder holding
    a file that is no model (a run's last.ckpt, a broken copy) ended `models` in a traceback (hunt14 7)."""
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    shutil.copy(random_ckpt, run / "best.ckpt")
    done = run_cli(["models", "runs/mine"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert re.search(r"^mine +y +eV ", done.stdout, re.M), done.stdout
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(random_ckpt, folder / "good.ckpt")
    (folder / "last.ckpt").write_bytes(b"not a checkpoint")
    listed = run_cli(["models"], cwd=tmp_path, env={"COLUMNS": "200", "CRYSTALPROP_CHECKPOINTS": str(folder)})
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "good" in listed.stdout and "not a model" in listed.stdout, listed.stdout
    missing = run_cli(["models", "runs/none"], cwd=tmp_path)
    assert missing.returncode == 2 and "runs/none" in missing.stderr and "Traceback" not in missing.stderr


def test_models_tells_a_runs_own_epochs_from_those_of_its_starts(tmp_path):
    """`models` gave a fine-tune's epochs summed over its starts (236) beside only its own run's crystals
    (2,297), as if it had trained 236 epochs on those (hunt14 11): the epochs of its last run are given too."""
    from conftest import _random_checkpoint  # noqa: PLC0415
    from crystalprop.model.registry import MODEL_COLUMNS, describe_models  # noqa: PLC0415

    tuned = _random_checkpoint(tmp_path / "tuned.ckpt", "y", "eV", seed=3,
                               training={"epochs": 20, "cumulative_epochs": 236.0, "data": {"n_train": 2297}})
    fresh = _random_checkpoint(tmp_path / "fresh.ckpt", "y", "eV", seed=3,
                               training={"epochs": 3, "cumulative_epochs": 3.0, "data": {"n_train": 40}})
    rows = {row[0]: dict(zip(MODEL_COLUMNS, row)) for row in describe_models([str(tuned), str(fresh)])}
    assert rows["tuned"]["trained on"] == "2297 crystals" and rows["tuned"]["epochs"] == "236 (20 in its last run)"
    assert rows["fresh"]["epochs"] == "3"


def test_a_ctrl_c_no_command_took_ends_with_status_130_not_aborted():
    """Was (hunt15 6): a Ctrl-C before a command set its own stop (the first half-second of predict, or any
    time in a command without one) gave click's 'Aborted!' and status 1, which here means a structure failed."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = ("import sys\nfrom crystalprop.cli.commands import main, run\n"
            "@main.command()\ndef boom():\n    raise KeyboardInterrupt\n"
            "sys.argv = ['crystalprop', 'boom']\nrun()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "interrupted (SIGINT)" in done.stderr and "Aborted" not in done.stderr and "Traceback" not in done.stderr


def test_a_refused_train_leaves_no_empty_output_folder(tmp_path):
    """Was (hunt15 10): `train DATA -o r` refused for its data or arguments (an unknown column here) still made
    an empty r/; a folder that was there before stays."""
    from conftest import write_json_dataset  # noqa: PLC0415

    data = write_json_dataset(tmp_path / "data.json", 8)
    refused = run_cli(["train", data, "-t", "nope", "-o", tmp_path / "r", "--epochs", "1"])
    assert refused.returncode == 2 and "nope" in refused.stderr, refused.stderr
    assert not (tmp_path / "r").exists()
    nested = run_cli(["train", data, "-t", "nope", "-o", tmp_path / "runs" / "a" / "r", "--epochs", "1"])
    assert nested.returncode == 2 and not (tmp_path / "runs").exists()  # nor the folders made above it (session 43)
    (tmp_path / "kept").mkdir()
    again = run_cli(["train", data, "-t", "nope", "-o", tmp_path / "kept", "--epochs", "1"])
    assert again.returncode == 2 and (tmp_path / "kept").is_dir()


def test_a_ctrl_c_while_the_command_loads_ends_with_status_130_not_a_traceback():
    """Was (session 43's note): a Ctrl-C in the command's first ~0.2 s, while click, rich and the commands were
    imported, printed Python's KeyboardInterrupt traceback. Here the import of click raises it, as a Ctrl-C at
    that moment would; the installed entry point (the one the ``crystalprop`` script calls) is run."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from importlib.metadata import entry_points  # noqa: PLC0415

    entry = next(iter(entry_points(group="console_scripts", name="crystalprop")), None)
    if entry is None:  # not installed (conftest runs the module then): the entry point pyproject.toml names
        pytest.skip("crystalprop is not installed: no console script entry point to run")
    code = ("import sys\nclass Stop:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'click':\n            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Stop())\n"
            f"from {entry.module} import {entry.attr}\nsys.argv = ['crystalprop', 'models']\n{entry.attr}()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert "interrupted (SIGINT)" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("terminal", [True, False])
def test_a_name_with_a_line_break_keeps_its_row_on_one_line(monkeypatch, capsys, terminal):
    """Was (hunt18 9): a file name holding a newline split its row across two lines of the screen table."""
    import io  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    from crystalprop.cli import display  # noqa: PLC0415

    buffer = io.StringIO()
    monkeypatch.setattr(display, "out", Console(file=buffer, width=120, color_system=None, force_terminal=terminal))
    display.show_table(["structure", "formula"], [["odd\nname.cif", "NaCl"], ["tab\there.cif", "KCl"]])
    said = buffer.getvalue() + capsys.readouterr().out
    lines = [line for line in said.splitlines() if "name.cif" in line or "here.cif" in line]
    assert len(lines) == 2 and "odd\\nname.cif" in lines[0] and "NaCl" in lines[0], said
    assert "tab\\there.cif" in lines[1] and "KCl" in lines[1]
