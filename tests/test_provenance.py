"""Every result file says where it came from: versions, each model's weights (sha256), cells, date."""

from __future__ import annotations

import csv
import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
from pymatgen.io.cif import CifWriter

import crystalprop
from crystalprop.model import kernel_library
from conftest import rocksalt, run_cli
from crystalprop.prediction.output import ResultWriter, is_finished, merge_results, read_provenance, read_rows
from crystalprop.io.result_files import KEY
from crystalprop.io.provenance import ProvenanceMismatchError, describe_difference, provenance, sidecar_path

COLUMNS = ["index", "name", "model_a", "error", "warning"]
ROWS = [{"index": 0, "name": "a.cif", "model_a": 1.5, "error": "", "warning": ""},
        {"index": 1, "name": "b.cif", "model_a": None, "error": "unreadable", "warning": ""}]
MORE = [{"index": 2, "name": "c.cif", "model_a": 2.5, "error": "", "warning": ""}]
SUFFIXES = [".csv", ".json", ".jsonl"]


@pytest.fixture
def weights(tmp_path) -> tuple[Path, Path]:
    """Two 'checkpoints' with different bytes."""
    one, two = tmp_path / "one.ckpt", tmp_path / "two.ckpt"
    one.write_bytes(b"weights one")
    two.write_bytes(b"weights two")
    return one, two


def _write(path: Path, record: dict, rows=ROWS, *, resume=False, finish=True) -> None:
    writer = ResultWriter(path, COLUMNS, resume=resume, provenance=record)
    writer.write(rows)
    if finish:
        writer.close()
    else:
        writer.handle.close()  # as a killed run leaves it
        writer._lock.release()  # which the kernel releases


def test_record_names_versions_weights_cells_and_date(weights):
    record = provenance([("model_a", weights[0])], cell="canonical")
    assert record["crystalprop"] == crystalprop.__version__
    assert record["mindspore"] == metadata.version("mindspore")
    assert record["models"] == [{"name": "model_a", "file": "one.ckpt", "path": str(weights[0].resolve()),
                                 "sha256": hashlib.sha256(b"weights one").hexdigest()}]
    assert record["cell"] == "canonical" and record["created"][:2] == "20"
    assert record["engine"] == "mindspore" and provenance([], engine="numpy")["engine"] == "numpy"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_each_format_carries_the_record_and_stays_loadable(tmp_path, weights, suffix):
    out = tmp_path / f"out{suffix}"
    record = provenance([("model_a", weights[0])])
    _write(out, record)
    assert read_provenance(out) == record
    assert [r["name"] for r in read_rows(out)] == ["a.cif", "b.cif"]
    if suffix == ".csv":
        with open(out, newline="") as handle:
            assert next(csv.reader(handle)) == COLUMNS  # the table itself is untouched
        assert json.loads(sidecar_path(out).read_text())[KEY] == record
    elif suffix == ".json":
        document = json.loads(out.read_text())
        assert document[KEY] == record and [r["name"] for r in document["results"]] == ["a.cif", "b.cif"]
    else:
        first, *rest = [json.loads(line) for line in out.read_text().splitlines()]
        assert first == {KEY: record} and len(rest) == 2


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resume_keeps_the_record_and_the_file_valid(tmp_path, weights, suffix):
    out = tmp_path / f"out{suffix}"
    record = provenance([("model_a", weights[0])])
    _write(out, record, finish=False)
    _write(out, provenance([("model_a", weights[0])]), MORE, resume=True)
    assert [r["name"] for r in read_rows(out)] == ["a.cif", "b.cif", "c.cif"]
    assert read_provenance(out)["models"] == record["models"]
    if suffix == ".json":
        assert len(json.loads(out.read_text())["results"]) == 3


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resume_with_other_weights_is_refused(tmp_path, weights, suffix):
    out = tmp_path / f"out{suffix}"
    _write(out, provenance([("model_a", weights[0])]), finish=False)
    before = out.read_bytes()
    with pytest.raises(ProvenanceMismatchError) as refused:
        ResultWriter(out, COLUMNS, resume=True, provenance=provenance([("model_a", weights[1])]))
    assert str(out) in str(refused.value) and "model_a" in str(refused.value)
    assert out.read_bytes() == before


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_retry_failed_keeps_the_record(tmp_path, weights, suffix):
    out = tmp_path / f"out{suffix}"
    record = provenance([("model_a", weights[0])])
    _write(out, record)
    writer = ResultWriter(out, COLUMNS, resume=True, retry_failed=True, provenance=record)
    writer.write([{"index": 1, "name": "b.cif", "model_a": 0.5, "error": "", "warning": ""}])
    writer.close()
    assert read_provenance(out)["models"] == record["models"]
    assert [(r["name"], r["model_a"]) for r in read_rows(out)] == [("a.cif", 1.5), ("b.cif", 0.5)]


def test_merge_joins_shards_of_the_same_models_and_refuses_others(tmp_path, weights):
    one, two, other = tmp_path / "p1.jsonl", tmp_path / "p2.csv", tmp_path / "p3.csv"
    _write(one, provenance([("model_a", weights[0])]), ROWS[:1])
    _write(two, provenance([("model_a", weights[0])]), ROWS[1:])
    _write(other, provenance([("model_a", weights[1])]), MORE)
    merge_results(tmp_path / "all.json", [one, two])
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged[KEY]["models"][0]["sha256"] == hashlib.sha256(b"weights one").hexdigest()
    assert merged[KEY]["merged_from"] == [str(one), str(two)] and len(merged["results"]) == 2
    with pytest.raises(ProvenanceMismatchError, match="p3.csv"):
        merge_results(tmp_path / "bad.csv", [one, other])


def test_merging_parts_with_the_models_in_another_order_says_so(tmp_path, weights):
    """Was: refused as "made by other weights or settings", of parts whose weights were the same."""
    one, two = tmp_path / "p1.jsonl", tmp_path / "p2.jsonl"
    models = [("model_a", weights[0]), ("model_b", weights[1])]
    _write(one, provenance(models), ROWS[:1])
    _write(two, provenance(models[::-1]), ROWS[1:])
    with pytest.raises(ProvenanceMismatchError) as refused:
        merge_results(tmp_path / "all.csv", [one, two])
    message = str(refused.value)
    assert str(two) in message and "order" in message and "other weights" not in message
    assert "model_a, model_b" in message and "model_b, model_a" in message
    with pytest.raises(ProvenanceMismatchError, match="same models in another order"):
        ResultWriter(one, COLUMNS, resume=True, provenance=provenance(models[::-1]))


def test_merge_keeps_each_parts_engine_and_time_and_says_when_they_differ(tmp_path, weights):
    """Parts of the numpy and the MindSpore engine merged into a record that named the first's engine."""
    one, two = tmp_path / "p1.jsonl", tmp_path / "p2.csv"
    _write(one, provenance([("model_a", weights[0])], engine="numpy"), ROWS[:1])
    _write(two, provenance([("model_a", weights[0])], engine="mindspore"), ROWS[1:])
    merge_results(tmp_path / "all.json", [one, two])
    merged = json.loads((tmp_path / "all.json").read_text())[KEY]
    assert merged["engine"] == "mixed (see parts)"
    assert [(p["file"], p["engine"]) for p in merged["parts"]] == [(str(one), "numpy"), (str(two), "mindspore")]
    assert all(p["created"] for p in merged["parts"]) and merged["python"] == merged["parts"][0]["python"]


def test_merge_over_an_existing_file_names_the_option_merge_has(tmp_path, weights):
    one = tmp_path / "p1.jsonl"
    _write(one, provenance([("model_a", weights[0])]), ROWS)
    (tmp_path / "all.csv").write_text("name\nx\n")
    with pytest.raises(FileExistsError) as caught:
        merge_results(tmp_path / "all.csv", [one])
    assert "--overwrite" in str(caught.value) and "--resume" not in str(caught.value)


@pytest.mark.slow
def test_cli_outputs_and_models_show_the_weights_hash(tmp_path, random_ckpt, shipped_dir):
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "nacl.cif")
    result = run_cli(["predict", "nacl.cif", "-m", random_ckpt, "-o", "out.jsonl"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = read_provenance(tmp_path / "out.jsonl")
    assert record["models"] == [{"name": "rand", "file": "rand.ckpt", "path": str(random_ckpt.resolve()),
                                 "sha256": hashlib.sha256(random_ckpt.read_bytes()).hexdigest(), "target": "y"}]
    assert record["units"] == {"rand": "eV"}  # what each number is, in the file itself
    assert record["mindspore"] and record["crystalprop"] == crystalprop.__version__
    assert record["engine"] == ("numpy" if kernel_library.loaded() else "mindspore")  # which engine computed them
    csv_run = run_cli(["predict", "nacl.cif", "-m", random_ckpt, "-o", "out.csv"], cwd=tmp_path)
    assert csv_run.returncode == 0 and "out.csv.meta.json" in csv_run.stdout + csv_run.stderr
    assert read_provenance(tmp_path / "out.csv")["units"] == {"rand": "eV"}
    listed = run_cli(["models"], env={"CRYSTALPROP_CHECKPOINTS": str(shipped_dir), "COLUMNS": "300"})
    assert hashlib.sha256((shipped_dir / "formation_energy.ckpt").read_bytes()).hexdigest() in listed.stdout


def _cut_inside_last_value(path: Path) -> None:
    """Cut the file inside the last row's number, as a hard kill (SIGKILL, lost node) can."""
    data = path.read_bytes()
    at = data.rfind(b"2.71828")
    path.write_bytes(data[:at + 3])


CUT = [{"index": 2, "name": "c.cif", "model_a": 2.71828, "error": "", "warning": ""}]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_merge_refuses_a_part_whose_last_row_was_cut_short(tmp_path, weights, suffix):
    record = provenance([("model_a", weights[0])])
    one, two = tmp_path / "p1.csv", tmp_path / f"p2{suffix}"
    _write(one, record, ROWS)
    _write(two, record, CUT, finish=False)
    _cut_inside_last_value(two)
    with pytest.raises(ValueError) as refused:
        merge_results(tmp_path / "all.csv", [one, two])
    message = str(refused.value)
    assert str(two) in message and "cut short" in message and "--resume" in message
    assert not (tmp_path / "all.csv").exists()


def test_merge_refuses_parts_with_other_columns(tmp_path):
    one, two = tmp_path / "p1.csv", tmp_path / "p2.csv"
    writer = ResultWriter(one, COLUMNS)
    writer.write(ROWS)
    writer.close()
    writer = ResultWriter(two, ["index", "name", "model_b", "error", "warning"])
    writer.write([{"index": 2, "name": "c.cif", "model_b": 7.0, "error": "", "warning": ""}])
    writer.close()
    with pytest.raises(ValueError) as refused:
        merge_results(tmp_path / "all.csv", [one, two])
    assert str(two) in str(refused.value) and "model_b" in str(refused.value) and "model_a" in str(refused.value)


def test_merge_refuses_a_csv_part_whose_record_is_missing(tmp_path, weights):
    one, two = tmp_path / "p1.csv", tmp_path / "p2.csv"
    _write(one, provenance([("model_a", weights[0])]), ROWS)
    _write(two, provenance([("model_a", weights[1])]), MORE)
    sidecar_path(two).unlink()  # only the table was copied off the cluster
    with pytest.raises(ProvenanceMismatchError) as refused:
        merge_results(tmp_path / "all.csv", [one, two])
    assert str(two) in str(refused.value) and sidecar_path(two).name in str(refused.value)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_csv_parts_merged_into_json_keep_numbers_and_nulls(tmp_path, weights, suffix):
    record = provenance([("model_a", weights[0])])
    one, two = tmp_path / "p1.csv", tmp_path / "p2.csv"
    _write(one, record, ROWS)
    _write(two, record, MORE)
    merge_results(tmp_path / f"all{suffix}", [one, two])
    rows = read_rows(tmp_path / f"all{suffix}")
    assert [(r["index"], r["model_a"], r["error"]) for r in rows] == [
        (0, 1.5, ""), (1, None, "unreadable"), (2, 2.5, "")]


def _shard(path: Path, part: int, parts: int, rows, weights, *, finished: bool = True) -> None:
    """Write shard ``part``/``parts`` as `predict --shard` does: finished when its run reached the end."""
    writer = ResultWriter(path, COLUMNS, provenance=provenance([("model_a", weights[0])], shard=(part, parts)))
    writer.write(rows)
    writer.close(finished=finished)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_run_that_reached_its_end_is_marked_finished_and_a_stopped_one_is_not(tmp_path, weights, suffix):
    """A kill or Ctrl-C leaves a whole file; only the mark tells it from one whose run reached its end."""
    record = provenance([("model_a", weights[0])], shard=(1, 1))
    done, stopped = tmp_path / f"done{suffix}", tmp_path / f"stopped{suffix}"
    _shard(done, 1, 1, ROWS, weights)
    _write(stopped, record)  # closed on the way out of a stopped run
    assert is_finished(done) and not is_finished(stopped)
    assert [r["name"] for r in read_rows(done)] == ["a.cif", "b.cif"]
    assert read_provenance(done) == {**record, "created": read_provenance(done)["created"]}
    if suffix == ".json":
        assert [r["name"] for r in json.loads(done.read_text())["results"]] == ["a.cif", "b.cif"]
    writer = ResultWriter(done, COLUMNS, resume=True, provenance=record)
    assert not is_finished(done)  # rows are being added: unfinished until this run ends
    writer.write(MORE)
    writer.close(finished=True)
    assert is_finished(done) and [r["name"] for r in read_rows(done)] == ["a.cif", "b.cif", "c.cif"]


def test_resuming_a_file_as_another_shard_is_refused(tmp_path, weights):
    part = tmp_path / "p1.csv"
    _shard(part, 1, 2, ROWS, weights, finished=False)
    with pytest.raises(ProvenanceMismatchError) as refused:
        ResultWriter(part, COLUMNS, resume=True, provenance=provenance([("model_a", weights[0])], shard=(2, 2)))
    assert str(part) in str(refused.value) and "1/2" in str(refused.value) and "2/2" in str(refused.value)


def test_merge_refuses_an_unfinished_shard(tmp_path, weights):
    one, two = tmp_path / "p1.csv", tmp_path / "p2.jsonl"
    _shard(one, 1, 2, ROWS, weights)
    _shard(two, 2, 2, MORE, weights, finished=False)  # its job hit the cluster's time limit
    with pytest.raises(ValueError) as refused:
        merge_results(tmp_path / "all.csv", [one, two])
    message = str(refused.value)
    assert str(two) in message and "--shard 2/2" in message and "--resume" in message
    assert not (tmp_path / "all.csv").exists()


def test_merge_refuses_a_missing_shard_and_a_shard_given_twice(tmp_path, weights):
    one, two, three = (tmp_path / f"p{i}.csv" for i in (1, 2, 3))
    _shard(one, 1, 3, ROWS[:1], weights)
    _shard(three, 3, 3, MORE, weights)
    with pytest.raises(ValueError) as missing:
        merge_results(tmp_path / "all.csv", [one, three])
    assert "2/3" in str(missing.value) and "missing" in str(missing.value)
    _shard(two, 1, 3, ROWS[1:], weights)  # predicted with the wrong --shard
    with pytest.raises(ValueError) as twice:
        merge_results(tmp_path / "all.csv", [one, two, three])
    assert str(one) in str(twice.value) and str(two) in str(twice.value) and "1/3" in str(twice.value)
    assert not (tmp_path / "all.csv").exists()


def test_merging_every_finished_shard_gives_a_finished_whole(tmp_path, weights):
    one, two = tmp_path / "p1.csv", tmp_path / "p2.jsonl"
    _shard(one, 1, 2, ROWS, weights)
    _shard(two, 2, 2, MORE, weights)
    merge_results(tmp_path / "all.json", [one, two])
    merged = tmp_path / "all.json"
    assert is_finished(merged) and read_provenance(merged)["shard"] == [1, 1]
    assert [r["name"] for r in json.loads(merged.read_text())["results"]] == ["a.cif", "b.cif", "c.cif"]


def test_merge_refuses_shards_of_other_inputs_naming_both(tmp_path, weights, monkeypatch):
    """Was: shard 1/2 of one folder and shard 2/2 of another merged into one table marked finished."""
    from crystalprop.io.provenance import input_record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder_a").mkdir()
    (tmp_path / "folder_b").mkdir()
    one, two, three = tmp_path / "p1.csv", tmp_path / "p2.jsonl", tmp_path / "p3.jsonl"
    for path, part, rows, folder in ((one, 1, ROWS, "folder_a"), (two, 2, MORE, "folder_b"),
                                     (three, 2, MORE, str(tmp_path / "folder_a"))):
        record = provenance([("model_a", weights[0])], shard=(part, 2), inputs=input_record([folder], False))
        _write(path, record, rows)
        ResultWriter(path, COLUMNS, resume=True, provenance=record).close(finished=True)
    assert read_provenance(one)["inputs"]["paths"] == [str(tmp_path / "folder_a")]
    with pytest.raises(ValueError) as refused:
        merge_results(tmp_path / "all.csv", [one, two])
    message = str(refused.value)
    assert str(one) in message and str(two) in message and "folder_a" in message and "folder_b" in message
    assert not (tmp_path / "all.csv").exists()
    merge_results(tmp_path / "all.csv", [one, three])  # the same folder, given relative and absolute
    assert read_provenance(tmp_path / "all.csv")["inputs"] == read_provenance(one)["inputs"]


def test_shards_of_node_local_copies_of_one_input_merge(tmp_path, weights):
    """Array jobs often read a copy of the input on each node ($TMPDIR/jobN/data): the same names in
    the same order at other places are one input."""
    from crystalprop.io.provenance import input_record

    parts = []
    for part in (1, 2):
        (tmp_path / f"job{part}" / "data").mkdir(parents=True)
        record = provenance([("model_a", weights[0])], shard=(part, 2),
                            inputs=input_record([tmp_path / f"job{part}" / "data"], False))
        path = tmp_path / f"p{part}.jsonl"
        _write(path, record, [ROWS, MORE][part - 1])
        ResultWriter(path, COLUMNS, resume=True, provenance=record).close(finished=True)
        parts.append(path)
    assert merge_results(tmp_path / "all.csv", parts) == 3


def test_a_recursive_input_whose_folders_changed_is_other_inputs(tmp_path):
    """Files of one name in many folders (a/POSCAR, b/POSCAR: DFT trees) compared as a count only: a
    folder swapped for another between shard runs went unseen."""
    from crystalprop.io.provenance import input_record, same_inputs

    for name in ("a", "b", "c"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        (tmp_path / "tree" / name / "POSCAR").write_text("x")
    before = {"inputs": input_record([tmp_path / "tree"], True)}
    (tmp_path / "tree" / "a").rename(tmp_path / "tree" / "d")  # the same names, one folder other
    assert same_inputs(before, {"inputs": input_record([tmp_path / "tree"], True)}) is False
    assert same_inputs(before, before)


def test_resuming_a_shard_over_other_inputs_is_refused_and_an_older_shard_resumes(tmp_path, weights):
    from crystalprop.io.provenance import input_record

    part = tmp_path / "p1.csv"
    shard = provenance([("model_a", weights[0])], shard=(1, 2), inputs=input_record([tmp_path / "a"], False))
    _write(part, shard, finish=False)
    again = provenance([("model_a", weights[0])], shard=(1, 2), inputs=input_record([tmp_path / "b"], False))
    with pytest.raises(ProvenanceMismatchError, match=r"cannot resume.*other inputs"):
        ResultWriter(part, COLUMNS, resume=True, provenance=again)
    with pytest.raises(ProvenanceMismatchError, match=r"cannot resume.*other inputs"):
        ResultWriter(part, COLUMNS, resume=True, provenance={**again, "inputs": input_record([tmp_path / "a"], True)})
    older = tmp_path / "older.csv"  # written before records named their inputs
    _write(older, provenance([("model_a", weights[0])], shard=(1, 2)), finish=False)
    ResultWriter(older, COLUMNS, resume=True, provenance=again).close(finished=True)
    assert is_finished(older) and "inputs" not in read_provenance(older)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resume_refuses_a_file_whose_record_is_missing(tmp_path, weights, suffix):
    """Rows that cannot be checked are not continued: with another --cell or model they would mix silently."""
    out = tmp_path / f"out{suffix}"
    _write(out, provenance([("model_a", weights[0])]) if suffix == ".csv" else None, finish=False)
    sidecar_path(out).unlink(missing_ok=True)  # only the table was copied off the cluster
    before = out.read_bytes()
    with pytest.raises(ProvenanceMismatchError) as refused:
        ResultWriter(out, COLUMNS, resume=True, provenance=provenance([("model_a", weights[0])]))
    message = str(refused.value)
    assert str(out) in message and "--overwrite" in message
    assert out.read_bytes() == before



def test_json_parts_merge(tmp_path, weights):
    """Was: every .json part with a record was refused, its first line read as a row cut short."""
    one, two, empty = tmp_path / "p1.json", tmp_path / "p2.json", tmp_path / "p3.json"
    _shard(one, 1, 3, ROWS, weights)
    _shard(two, 2, 3, MORE, weights)
    _shard(empty, 3, 3, [], weights)
    merge_results(tmp_path / "all.csv", [two, empty, one])
    assert [r["name"] for r in read_rows(tmp_path / "all.csv")] == ["a.cif", "b.cif", "c.cif"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_resuming_a_file_without_rows_or_record_starts_it_with_the_record(tmp_path, weights, suffix):
    """Was: resumed without a record, so the next --resume refused the file as unchecked."""
    out = tmp_path / f"out{suffix}"
    ResultWriter(out, COLUMNS).close()  # an older version's output of a run stopped before any row
    sidecar_path(out).unlink(missing_ok=True)
    record = provenance([("model_a", weights[0])], shard=(1, 1))
    writer = ResultWriter(out, COLUMNS, resume=True, provenance=record)
    writer.write(ROWS)
    writer.close(finished=True)
    assert read_provenance(out)["models"] == record["models"] and is_finished(out)
    again = ResultWriter(out, COLUMNS, resume=True, provenance=record)
    again.write(MORE)
    again.close(finished=True)
    assert [r["name"] for r in read_rows(out)] == ["a.cif", "b.cif", "c.cif"]


def test_retry_failed_unmarks_a_csv_before_it_drops_the_failed_rows(tmp_path, weights, monkeypatch):
    """A kill between dropping the failed rows and clearing the mark left a finished part that lacked them."""
    out = tmp_path / "out.csv"
    _shard(out, 1, 1, ROWS, weights)
    order = []
    monkeypatch.setattr("crystalprop.prediction.output._drop_failed_rows", lambda *a: order.append(("drop", is_finished(out))))
    ResultWriter(out, COLUMNS, resume=True, retry_failed=True,
                 provenance=provenance([("model_a", weights[0])], shard=(1, 1))).close()
    assert order == [("drop", False)]


def test_a_damaged_sidecar_is_named(tmp_path, weights):
    out = tmp_path / "out.csv"
    _shard(out, 1, 1, ROWS, weights)
    sidecar_path(out).write_text('{"crystalprop_provenance": {"cell": "canon')  # cut by a full disk
    with pytest.raises(ValueError, match=sidecar_path(out).name):
        read_provenance(out)


def test_a_refusal_names_other_weights_before_another_shard(tmp_path, weights):
    one = provenance([("model_a", weights[0])], shard=(1, 2))
    two = provenance([("model_a", weights[1])], shard=(2, 2))
    assert "model_a" in describe_difference(one, two) and "shard" not in describe_difference(one, two)
    assert "shard 1/2" in describe_difference(one, {**one, "shard": [2, 2]})
