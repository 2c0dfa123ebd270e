"""``evaluate -o DIR``: an earlier evaluation's results are kept unless ``--overwrite`` replaces them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_json_dataset
from crystalprop.utils.backend import set_device

set_device("CPU")

from crystalprop.evaluation.evaluate import evaluate_model  # noqa: E402
from crystalprop.utils.atomic import OutputExistsError  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_json_dataset(tmp_path_factory.mktemp("data") / "data.json", 6)


@pytest.mark.parametrize("earlier", ["metrics.json", "predictions.csv"])
def test_evaluate_refuses_a_folder_holding_an_earlier_evaluation(random_ckpt, data, tmp_path, earlier):
    out = tmp_path / "eval"
    out.mkdir()
    (out / earlier).write_text("earlier\n")
    with pytest.raises(OutputExistsError, match=rf"{re.escape(str(out))}.*{earlier}.*--overwrite"):
        evaluate_model(str(random_ckpt), data, split="all", output_dir=out)
    assert (out / earlier).read_text() == "earlier\n"


def test_evaluate_writes_into_a_folder_without_results(random_ckpt, data, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "calibration.png").write_text("mine\n")  # removed only with overwrite
    evaluate_model(str(random_ckpt), data, split="all", output_dir=out)
    assert (out / "metrics.json").is_file() and (out / "notes.txt").read_text() == "mine\n"
    assert (out / "calibration.png").read_text() == "mine\n"


def test_overwrite_removes_the_earlier_evaluations_own_files_only(random_ckpt, data, tmp_path):
    """A model without σ writes no calibration.png: an earlier one must not stay beside its results."""
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("predictions.csv", "predictions.csv.meta.json", "metrics.json", "parity.png",
                 "error_histogram.png", "calibration.png", "skipped.log"):
        (out / name).write_text("earlier\n")
    (out / "notes.txt").write_text("mine\n")
    result = evaluate_model(str(random_ckpt), data, split="all", output_dir=out, overwrite=True)
    assert not (out / "calibration.png").exists() and not (out / "skipped.log").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*result["files"], "notes.txt"])
    assert json.loads((out / "metrics.json").read_text())["n"] == 6
    assert (out / "notes.txt").read_text() == "mine\n"


def test_cli_refuses_then_overwrites(random_ckpt, data, tmp_path):
    out = tmp_path / "eval"
    assert run_cli(["evaluate", random_ckpt, data, "--split", "all", "-o", out]).returncode == 0
    (out / "calibration.png").write_text("stale\n")
    done = run_cli(["evaluate", random_ckpt, data, "--split", "all", "-o", out])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert str(out) in done.stderr and "--overwrite" in done.stderr
    done = run_cli(["evaluate", random_ckpt, data, "--split", "all", "-o", out, "--overwrite"])
    assert done.returncode == 0, done.stderr
    assert not (out / "calibration.png").exists()


def test_cli_takes_a_device_as_the_readme_says(random_ckpt, data, tmp_path):
    """The README gives --device GPU to predict, train and evaluate; evaluate had no --device."""
    done = run_cli(["evaluate", random_ckpt, data, "--split", "all", "--device", "cpu"])
    assert done.returncode == 0, done.stderr
    out = tmp_path / "gpu"
    done = run_cli(["evaluate", random_ckpt, data, "--split", "all", "--device", "GPU", "-o", out])
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout, done.stderr
    assert "GPU" in done.stderr and "--device CPU" in " ".join(done.stderr.split())
    assert not out.exists()


def test_the_metrics_table_gives_the_unit_only_to_the_metrics_in_it(random_ckpt, data):
    done = run_cli(["evaluate", random_ckpt, data, "--split", "all"], env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(re.match(r"\W*mae \(eV\)\W", line) for line in lines), done.stdout
    assert any(re.match(r"\W*r2\W", line) for line in lines) and "value (eV)" not in done.stdout


def test_log10_metrics_leave_out_labels_without_a_log10_and_say_how_many():
    """Was: one label <= 0 (a mechanically unstable crystal's modulus) dropped every log10 metric without a word."""
    from types import SimpleNamespace

    from crystalprop.evaluation.evaluate import error_metrics

    card = SimpleNamespace(transform=SimpleNamespace(log10=True), unit="GPa")
    metrics = error_metrics(card, np.array([10.0, 100.0, 0.0, 1000.0]), np.array([10.0, 110.0, 5.0, 1000.0]))
    assert metrics["log10_n_excluded"] == 1
    assert metrics["log10_mae"] == pytest.approx(np.log10(1.1) / 3)
    assert error_metrics(card, np.array([0.0, -1.0]), np.array([1.0, 1.0]))["log10_n_excluded"] == 2
    whole = error_metrics(card, np.array([10.0, 100.0]), np.array([10.0, 110.0]))
    assert "log10_n_excluded" not in whole and whole["log10_mae"] == pytest.approx(np.log10(1.1) / 2)


def test_a_column_other_than_the_model_s_target_is_named_as_an_assumption(random_ckpt, tmp_path):
    """`-t band_gap` on a formation-energy model measured it against band gaps labelled with the model's
    unit, without a word (hunt10 8): the column may be the same quantity under another name, or not."""
    data = write_json_dataset(tmp_path / "other.json", 6, target="gap")
    result = evaluate_model(str(random_ckpt), data, target="gap", split="all")
    assert result["target"] == "gap"
    assert any("learned y (eV)" in note and "compared with the data's gap" in note
               for note in result.get("data_notes", []))
    same = evaluate_model(str(random_ckpt), write_json_dataset(tmp_path / "y.json", 6), split="all")
    assert not any("learned" in note for note in same.get("data_notes", []))


def test_labels_without_a_column_name_are_named_as_an_assumption(random_ckpt, tmp_path):
    """A CGCNN id_prop.csv has no header, so its labels have no name: `evaluate band_gap data/cgcnn`, whose
    file held formation energies, was a complete band-gap evaluation without a word that the column was
    assumed to be band gap (hunt16 1)."""
    from conftest import make_structures, synthetic_target  # noqa: PLC0415

    folder = tmp_path / "cgcnn"
    folder.mkdir()
    lines = []
    for name, structure in make_structures(6):
        structure.to(filename=str(folder / f"{name}.cif"))
        lines.append(f"{name},{synthetic_target(structure)}\n")
    (folder / "id_prop.csv").write_text("".join(lines))
    result = evaluate_model(str(random_ckpt), folder, split="all")
    notes = result.get("data_notes", [])
    assert any("id_prop.csv" in note and "no column name" in note and "taken to be y" in note for note in notes), notes
    named = tmp_path / "named"
    named.mkdir()
    for path in folder.glob("*.cif"):
        (named / path.name).write_bytes(path.read_bytes())
    (named / "id_prop.csv").write_text("id,y\n" + "".join(lines))
    assert not any("no column name" in note for note in evaluate_model(str(random_ckpt), named, split="all")
                   .get("data_notes", []))


def test_the_metrics_table_names_the_unit_of_the_log10_figures(tmp_path):
    """The table gave (GPa) to mae and nothing to log10_mae, and never said log10(GPa) (hunt12 6)."""
    from conftest import _random_checkpoint

    ckpt = _random_checkpoint(tmp_path / "k.ckpt", "y", "GPa", seed=3, log10=True)
    data = write_json_dataset(tmp_path / "pos.json", 6)
    records = json.loads(Path(data).read_text())
    Path(data).write_text(json.dumps([{**r, "y": 10.0 + abs(r["y"])} for r in records]))
    done = run_cli(["evaluate", ckpt, data, "--split", "all"], env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(re.match(r"\W*log10_mae \(log10\(GPa\)\)\W", line) for line in lines), done.stdout
    assert any(re.match(r"\W*mae \(GPa\)\W", line) for line in lines), done.stdout


def test_the_sigma_note_says_a_relative_data_path_is_the_calibrating_machines():
    """The shipped band gap's note named '../shared/data/mp2018', a path that means nothing where a user
    stands (hunt15 10)."""
    import numpy as np  # noqa: PLC0415

    from crystalprop.evaluation.evaluate import _calibration_note  # noqa: PLC0415

    note, _ = _calibration_note({"data": "../shared/data/mp2018", "split": "val", "n": 3}, [], None,
                                np.zeros(0), np.zeros(0), np.zeros(0), None, {})
    assert "../shared/data/mp2018 (3 structures; a path on the machine where it was calibrated)" in note
