"""``predict --resume``: a file with other columns is refused; ``--retry-failed`` redoes failed rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pymatgen.io.cif import CifWriter

from conftest import rocksalt, run_cli
from crystalprop.prediction.output import ResultWriter, done_rows, read_rows

OLD = ["index", "name", "formula", "model_a", "error", "warning"]
NEW = ["index", "name", "formula", "model_b", "error", "warning"]
ROWS = [
    {"index": 0, "name": "a.cif", "formula": "NaCl", "model_a": 1.5, "error": "", "warning": ""},
    {"index": 1, "name": "b.cif", "formula": "", "model_a": None, "error": "took too long", "warning": ""},
    {"index": 2, "name": "c.cif", "formula": "MgO", "model_a": 2.5, "error": "", "warning": "close atoms"},
]
SUFFIXES = [".csv", ".json", ".jsonl"]


def _killed_file(path: Path, columns=OLD, rows=ROWS) -> None:
    """A result file as a run killed after its rows leaves it (no closing bracket for JSON)."""
    writer = ResultWriter(path, columns, overwrite=True)
    writer.write(rows)
    writer.handle.close()
    writer._lock.release()  # as the kernel does for a killed process


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return read_rows(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resume_refuses_other_columns(tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    _killed_file(out)
    before = out.read_bytes()
    with pytest.raises(ValueError) as refused:
        ResultWriter(out, NEW, resume=True)
    message = str(refused.value)
    assert str(out) in message and "model_a" in message and "model_b" in message and "\n" not in message
    assert out.read_bytes() == before


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resume_with_the_same_columns_appends(tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    _killed_file(out, rows=ROWS[:1])
    writer = ResultWriter(out, OLD, resume=True)
    writer.write(ROWS[1:])
    writer.close()
    assert [r["name"] for r in _rows(out)] == ["a.cif", "b.cif", "c.cif"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_retry_failed_replaces_the_failed_rows(tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    _killed_file(out)
    assert {row["name"] for row in done_rows(out)} == {"a.cif", "b.cif", "c.cif"}
    assert {row["name"] for row in done_rows(out, retry_failed=True)} == {"a.cif", "c.cif"}
    writer = ResultWriter(out, OLD, resume=True, retry_failed=True)
    writer.write([{**ROWS[1], "formula": "KCl", "model_a": 3.5, "error": ""}])
    writer.close()
    rows = _rows(out)
    assert sorted(r["name"] for r in rows) == ["a.cif", "b.cif", "c.cif"]  # one row per structure
    assert all(not r["error"] for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert float(by_name["b.cif"]["model_a"]) == 3.5 and float(by_name["a.cif"]["model_a"]) == 1.5
    assert by_name["c.cif"]["warning"] == "close atoms"


@pytest.mark.slow
def test_cli_resume_refuses_another_model_set(random_ckpt, shipped_dir, tmp_path):
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    CifWriter(rocksalt(4.21, "Mg", "O")).write_file(tmp_path / "b.cif")
    first = run_cli(["predict", "a.cif", "-m", random_ckpt, "-o", "out.csv"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "out.csv").read_bytes()
    other = run_cli(["predict", "a.cif", "b.cif", "-m", shipped_dir / "formation_energy.ckpt", "-o", "out.csv",
                     "--resume"], cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "cannot resume" in other.stderr and "rand" in other.stderr and "formation_energy" in other.stderr
    assert (tmp_path / "out.csv").read_bytes() == before


@pytest.mark.slow
def test_cli_retry_failed(random_ckpt, tmp_path):
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    first = run_cli(["predict", "a.cif", "b.cif", "-m", random_ckpt, "-o", "out.csv"], cwd=tmp_path)
    assert first.returncode == 1  # b.cif does not exist yet
    CifWriter(rocksalt(4.21, "Mg", "O")).write_file(tmp_path / "b.cif")
    again = run_cli(["predict", "a.cif", "b.cif", "-m", random_ckpt, "-o", "out.csv", "--resume"], cwd=tmp_path)
    assert again.returncode == 0 and "0 predicted" in again.stderr  # plain --resume counts failures as done
    retried = run_cli(["predict", "a.cif", "b.cif", "-m", random_ckpt, "-o", "out.csv", "--resume",
                       "--retry-failed"], cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "1 predicted, 0 failed" in retried.stderr
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["name"] for r in rows) == ["a.cif", "b.cif"]
    assert all(r["error"] == "" and float(r["rand"]) for r in rows)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_output_folders_are_made_and_an_unwritable_place_is_named(tmp_path, suffix):
    """-o results/run1/out.csv makes its folders; where no file can be made, a ValueError names the path
    (the command shows it as an error line, not a traceback, before any structure is read)."""
    nested = tmp_path / "results" / "run1" / f"out{suffix}"
    writer = ResultWriter(nested, OLD)
    writer.write(ROWS[:1])
    writer.close()
    assert [r["name"] for r in read_rows(nested)] == ["a.cif"]
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="a_file/out"):
        ResultWriter(tmp_path / "a_file" / f"out{suffix}", OLD)


@pytest.mark.slow
def test_cli_output_in_a_new_folder(random_ckpt, tmp_path):
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    done = run_cli(["predict", "a.cif", "-m", random_ckpt, "-o", "results/run1/out.csv"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results" / "run1" / "out.csv.meta.json").is_file()
    (tmp_path / "taken").write_text("")
    blocked = run_cli(["predict", "a.cif", "-m", random_ckpt, "-o", "taken/out.csv"], cwd=tmp_path)
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr and "taken/out.csv" in blocked.stderr


def test_evaluate_train_and_ensemble_refuse_an_output_folder_they_cannot_make(random_ckpt, tmp_path):
    """Checked before any data is read or model run, with the file in the way named, no traceback."""
    (tmp_path / "taken").write_text("")
    for args in (["evaluate", random_ckpt, "data", "-o", "taken/eval"],
                 ["train", "data", "-t", "y", "-o", "taken/run"],
                 ["ensemble", "taken/e.ckpt", random_ckpt, random_ckpt, "--data", "data"]):
        (tmp_path / "data").mkdir(exist_ok=True)
        done = run_cli(args, cwd=tmp_path)
        assert done.returncode != 0 and "Traceback" not in done.stderr, (args, done.stderr)
        assert "taken is a file, not a folder" in done.stderr.replace("\n", " "), (args, done.stderr)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_file_saved_again_with_a_byte_order_mark_keeps_its_record_rows_and_columns(tmp_path, suffix):
    """Was: a result file saved by an editor or spreadsheet as "UTF-8 with BOM" lost its record
    (a JSON file then merged as if it had none: no shard check) and a CSV's first column was
    read as "\\ufeffindex", so that --resume and merge refused it as other columns."""
    from crystalprop.prediction.output import file_columns, is_finished, read_provenance

    record = {"models": [{"name": "model_a", "sha256": "0" * 64}], "cell": "canonical", "shard": "1/1"}
    out = tmp_path / f"out{suffix}"
    writer = ResultWriter(out, OLD, overwrite=True, provenance=record)
    writer.write(ROWS[:2])
    writer.close(finished=True)
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())
    assert read_provenance(out) == record
    assert is_finished(out)
    assert file_columns(out) == OLD
    assert [r["name"] for r in read_rows(out)] == ["a.cif", "b.cif"]
    writer = ResultWriter(out, OLD, resume=True, provenance=record)
    writer.write(ROWS[2:])
    writer.close(finished=True)
    assert [r["name"] for r in read_rows(out)] == ["a.cif", "b.cif", "c.cif"]
    assert read_provenance(out) == record


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_a_second_writer_of_one_output_is_refused_until_the_first_closes(tmp_path, suffix):
    """Two runs with one -o (an array job that forgot its task number, a requeued job beside the old one)
    both wrote the file and both said they succeeded: 99 of 200 rows were left, one of them pieces of two
    (hunt7 finding 1). The second writer is refused at once, and the file can be written again once the
    first has closed it."""
    path = tmp_path / f"out{suffix}"
    first = ResultWriter(path, ["name", "y"])
    for resume in (False, True):
        with pytest.raises(ValueError, match="another crystalprop run is writing"):
            ResultWriter(path, ["name", "y"], resume=resume, overwrite=not resume)
    first.write([{"name": "a", "y": 1.0}])
    first.close()
    second = ResultWriter(path, ["name", "y"], resume=True)
    second.write([{"name": "b", "y": 2.0}])
    second.close()
    assert [row["name"] for row in read_rows(path)] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]  # no lock left behind


@pytest.mark.slow
def test_cli_resume_refuses_other_inputs_also_unsharded(random_ckpt, tmp_path):
    """--resume over other inputs was checked for shards only: an unsharded file took rows of another folder (or
    of files added to its folder) with `index` values already in it (hunt7 finding 3)."""
    for folder, names in (("one", ["a", "b"]), ("two", ["c", "d"])):
        (tmp_path / folder).mkdir()
        for name in names:
            CifWriter(rocksalt(5.64)).write_file(tmp_path / folder / f"{name}.cif")
    first = run_cli(["predict", "one", "-m", random_ckpt, "-o", "out.csv"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "out.csv").read_bytes()
    other = run_cli(["predict", "two", "-m", random_ckpt, "-o", "out.csv", "--resume"], cwd=tmp_path)
    assert other.returncode == 2 and "cannot resume" in other.stderr and "other inputs" in other.stderr
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "one" / "e.cif")
    grown = run_cli(["predict", "one", "-m", random_ckpt, "-o", "out.csv", "--resume"], cwd=tmp_path)
    assert grown.returncode == 2 and "added, removed or renamed" in grown.stderr
    assert (tmp_path / "out.csv").read_bytes() == before


def test_a_lock_released_between_open_and_flock_is_taken_afresh(tmp_path, monkeypatch):
    """Run B opened <file>.lock just before run A removed and released it, then locked the removed file: B and
    a later run C both held 'the' lock and wrote one output (review of session 37)."""
    import fcntl

    from crystalprop.utils import file_lock

    out = tmp_path / "out.csv"
    first = file_lock.FileLock(out, "--output")
    real_flock, calls = fcntl.flock, []

    def flock(fd, operation):
        if not calls:
            calls.append(fd)
            first.release()  # run A ends between B's open and its flock
        return real_flock(fd, operation)

    monkeypatch.setattr(file_lock.fcntl, "flock", flock)
    second = file_lock.FileLock(out, "--output")
    monkeypatch.undo()
    with pytest.raises(file_lock.FileInUseError):
        file_lock.FileLock(out, "--output")
    second.release()
    assert not (tmp_path / "out.csv.lock").exists()


@pytest.mark.slow
def test_cli_resume_of_the_same_folder_under_another_path_adds_no_row(random_ckpt, tmp_path):
    """The inputs were checked by their names in their folders (node-local copies, another working directory),
    but the rows done by their paths as typed: a resume from elsewhere predicted every structure again and
    appended it under its new path (hunt13 1)."""
    from pymatgen.core import Structure

    for place in ("job1", "job2"):
        folder = tmp_path / place / "data"
        folder.mkdir(parents=True)
        for k, name in enumerate(["a", "b", "c"]):
            CifWriter(rocksalt(5.5 + 0.1 * k)).write_file(folder / f"{name}.cif")
        two = Structure.from_dict(rocksalt(5.64).as_dict())
        (folder / "multi.cif").write_text(f"{CifWriter(two)}\n{CifWriter(rocksalt(5.9))}".replace(
            "data_NaCl", "data_first", 1).replace("data_NaCl", "data_second", 1))
    first = run_cli(["predict", "job1/data", "-m", random_ckpt, "-o", "out.csv"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    rows = read_rows(tmp_path / "out.csv")
    assert len(rows) == 5, rows
    (tmp_path / "elsewhere").mkdir()
    for args, cwd in ((["job2/data"], tmp_path), (["../job1/data"], tmp_path / "elsewhere"),
                      ([str(tmp_path / "job1" / "data")], tmp_path), (["./job1/data"], tmp_path)):
        again = run_cli(["predict", *args, "-m", random_ckpt, "-o", str(tmp_path / "out.csv"), "--resume"], cwd=cwd)
        assert again.returncode == 0, again.stderr
        assert len(read_rows(tmp_path / "out.csv")) == 5, (args, again.stdout)
        said = again.stdout + again.stderr
        assert "0 predicted" in said and "5 already in" in said, said
