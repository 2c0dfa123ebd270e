"""``evaluate`` takes its split from the checkpoint and never calls trained structures validation."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest

from pymatgen.core import Structure

from conftest import SHARED_DATA, graph_of, run_cli, train_config, write_json_dataset
from crystalprop.utils.backend import set_device

set_device("CPU")

from crystalprop.evaluation.evaluate import check_unseen, evaluate_model  # noqa: E402
from crystalprop.model.checkpoint import read_checkpoint  # noqa: E402
from crystalprop.data.datasets import ids_in_packed, load_dataset, pack_ids  # noqa: E402
from crystalprop.data.fingerprints import like_packed  # noqa: E402
from crystalprop.training.run import train_model  # noqa: E402

N_DATA = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """40 records without split.json: the split is random, made from the run's settings."""
    return write_json_dataset(tmp_path_factory.mktemp("data") / "data.json", N_DATA)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory) -> Path:
    """One epoch trained with a split other than the defaults (val 0.3, seed 5)."""
    folder = tmp_path_factory.mktemp("run")
    train_model(data, folder, train_config(epochs=1, seed=5), val_fraction=0.3, workers=1)
    return folder


def test_packed_ids_round_trip():
    packed = pack_ids([f"mp-{i}" for i in range(1000)])
    assert len(packed) == 8000
    assert ids_in_packed(["mp-5", "mp-1000", "mp-999", "other"], packed) == ["mp-5", "mp-999"]


def test_checkpoint_records_the_split(run_dir, data):
    card, _ = read_checkpoint(run_dir / "best.ckpt")
    record = card.training["data"]["split_record"]
    assert (record["seed"], record["val_fraction"], record["test_fraction"]) == (5, 0.3, 0.0)
    dataset = load_dataset(data, "y", val_fraction=0.3, seed=5)
    trained = [e.id for e in dataset.split("train")]
    assert ids_in_packed([e.id for e in dataset.entries], record["trained_ids"]) == trained
    graphs = {e.id: graph_of(Structure.from_dict(e.source)) for e in dataset.entries}
    assert all(like_packed([graphs[i] for i in trained], record["trained_structures"]))
    assert not any(like_packed([graphs[e.id] for e in dataset.split("val")], record["trained_structures"]))


def test_evaluate_uses_the_split_of_the_run(run_dir, data):
    card, _ = read_checkpoint(run_dir / "best.ckpt")
    result = evaluate_model(str(run_dir), data)
    assert result["split"] == "val" and result["n"] == 12  # 0.3 of 40, not the default 0.1
    assert result["mae"] == pytest.approx(card.metrics["mae"], rel=1e-4)
    assert result["split_check"] == "none trained on; the same val split as in training"


def test_an_unknown_split_is_refused_with_the_choices(run_dir, data):
    """--split bogus said only 'no structures in split', as if the data lacked that split."""
    with pytest.raises(ValueError, match="choose one of train, val, test, all, unseen"):
        evaluate_model(str(run_dir), data, split="bogus")


def test_an_empty_split_names_the_splits_the_data_holds(run_dir, data, tmp_path):
    """'no structures in split 'test'' left the user to guess which split to choose (hunt10 11)."""
    with pytest.raises(ValueError, match=r"no structures in split 'test' \(the data holds train 28, val 12; "
                                         r"choose one with --split, or --split all\)"):
        evaluate_model(str(run_dir), data, split="test")


def test_evaluate_refuses_trained_structures_as_validation(run_dir, data, tmp_path):
    copy = shutil.copy(data, tmp_path / "data.json")
    ids = [r["id"] for r in json.loads(Path(copy).read_text())]
    (tmp_path / "split.json").write_text(json.dumps({"val": ids[:10]}))  # a fixed split unlike the run's
    with pytest.raises(ValueError, match=r"of the 10 'val' structures were used to train .*--split all"):
        evaluate_model(str(run_dir), copy, split="val")
    assert evaluate_model(str(run_dir), copy, split="all")["n"] == N_DATA


def test_a_warm_start_carries_the_ids_it_was_trained_on(run_dir, data, tmp_path):
    """Warm-started on another split of the same data: its validation holds ids trained on before."""
    train_model(data, tmp_path / "again", train_config(epochs=1, seed=6), val_fraction=0.3, workers=1,
                init_from=run_dir / "best.ckpt")
    with pytest.raises(ValueError, match="were used to train"):
        evaluate_model(str(tmp_path / "again"), data)
    ids = [f"m-{i:03d}" for i in range(N_DATA)]

    def trained(path: Path) -> set[str]:
        return set(ids_in_packed(ids, read_checkpoint(path)[0].training["data"]["split_record"]["trained_ids"]))

    assert trained(run_dir / "best.ckpt") < trained(tmp_path / "again" / "best.ckpt")


def test_cli_refuses_trained_structures_in_one_line(run_dir, data, tmp_path):
    copy = shutil.copy(data, tmp_path / "data.json")
    ids = [r["id"] for r in json.loads(Path(copy).read_text())]
    (tmp_path / "split.json").write_text(json.dumps({"val": ids}))
    done = run_cli(["evaluate", run_dir, copy, "--split", "val"], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "were used to train" in done.stderr


def test_old_checkpoint_needs_a_fixed_split(random_ckpt, data, tmp_path):
    """A checkpoint without training ids: a random split cannot be checked, split.json is trusted."""
    with pytest.raises(ValueError, match="records no training ids"):
        evaluate_model(str(random_ckpt), data, split="val")
    with pytest.raises(ValueError, match="records no training ids"):  # the default: val, as it cannot tell unseen
        evaluate_model(str(random_ckpt), data)
    copy = shutil.copy(data, tmp_path / "data.json")
    ids = [r["id"] for r in json.loads(Path(copy).read_text())]
    (tmp_path / "split.json").write_text(json.dumps({"val": ids[:5]}))
    result = evaluate_model(str(random_ckpt), copy, split="val")
    assert result["n"] == 5 and result["split_check"].startswith("not verified")


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_DATA / "mp2018" / "split.json").is_file(), reason="needs ../shared/data")
@pytest.mark.parametrize(("model", "folder"), [("formation_energy", "mp2018"), ("bulk_modulus", "mp2018_elastic")])
def test_shipped_checkpoints_validate_on_their_split_json(model, folder):
    """A shipped model's validation split checks out: by its trained ids where its checkpoint records
    them (formation energy since session 7), else (the elastic ones predate the record) by the
    data's split.json, which still counts as validation."""
    from crystalprop.model.registry import resolve_model

    _, path = resolve_model(model)
    card, _ = read_checkpoint(path)
    dataset = load_dataset(SHARED_DATA / folder, card.target)
    note = check_unseen(dataset.split("val"), "val", dataset, card.training, path)
    if "split_record" in card.training.get("data", {}):
        assert note == "none trained on; the same val split as in training"
    else:
        assert note.startswith("not verified") and "split.json" in note


def _expanded(structure: dict) -> dict:
    crystal = Structure.from_dict(structure)
    crystal.scale_lattice(crystal.volume * 1.25)
    return crystal.as_dict()


def _foreign(data: Path, folder: Path, n_new: int, trained_ids: list[str],
             same_crystals: bool = False) -> tuple[Path, list[dict]]:
    """``n_new`` of ``data``'s records under ids the model never saw, plus the records of ``trained_ids``;
    the new records' crystals expanded by a quarter in volume unless ``same_crystals``."""
    records = json.loads(Path(data).read_text())
    new = [{**r, "id": f"new-{k}", "structure": r["structure"] if same_crystals else _expanded(r["structure"])}
           for k, r in enumerate(records[:n_new])]
    records = new + [r for r in records if r["id"] in trained_ids]
    path = folder / "theirs.json"
    path.write_text(json.dumps(records))
    return path, records


def test_evaluate_on_other_data_takes_every_structure_the_model_has_not_seen(run_dir, data, tmp_path):
    """Data without a split of its own and not the model's: every unseen structure, not a random 10 %."""
    card, _ = read_checkpoint(run_dir / "best.ckpt")
    all_ids = [r["id"] for r in json.loads(Path(data).read_text())]
    trained = ids_in_packed(all_ids, card.training["data"]["split_record"]["trained_ids"])[:5]
    theirs, _ = _foreign(data, tmp_path, 30, trained, same_crystals=True)
    renamed = ids_in_packed(all_ids[:30], card.training["data"]["split_record"]["trained_ids"])  # trained, now new-k
    result = evaluate_model(str(run_dir), theirs)
    assert result["split"] == "unseen" and result["n"] == 30 - len(renamed) and renamed
    assert "5 structures the model was trained on left out" in result["split_check"]
    assert (f"{len(renamed)} more that look like training crystals under other ids (the same reduced formula, "
            "volume per atom within 2 %) left out") in result["split_check"]


def test_a_validation_figure_says_how_many_look_like_training_crystals(run_dir, data, tmp_path):
    """Training crystals under other ids are not caught by the id check: the note counts them."""
    card, _ = read_checkpoint(run_dir / "best.ckpt")
    records = json.loads(Path(data).read_text())
    trained = set(ids_in_packed([r["id"] for r in records], card.training["data"]["split_record"]["trained_ids"]))
    copies = [{**r, "id": f"copy-{r['id']}", "split": "val"} for r in records if r["id"] in trained][:4]
    fresh = [{**r, "split": "val"} for r in records if r["id"] not in trained][:6]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(copies + fresh))
    result = evaluate_model(str(run_dir), path, split="val", output_dir=tmp_path / "ev")
    assert result["n"] == 10
    with open(tmp_path / "ev" / "predictions.csv", newline="") as handle:  # the figure can be checked per row
        flagged = {row["id"]: row["like_training"] for row in csv.DictReader(handle)}
    assert flagged == {**{r["id"]: "1" for r in copies}, **{r["id"]: "0" for r in fresh}}
    assert result["split_check"].startswith("none trained on")
    assert ("4 of the 10 look like training crystals under other ids (the same reduced formula, volume per "
            "atom within 2 %)") in result["split_check"]
    path.write_text(json.dumps(fresh))
    assert result["n_like_training"] == 4
    fresh_only = evaluate_model(str(run_dir), path, split="val")
    assert result["mae_unlike_training"] == pytest.approx(fresh_only["mae"], rel=1e-6)


def test_evaluate_names_the_records_it_could_not_use(run_dir, data, tmp_path):
    theirs, records = _foreign(data, tmp_path, 12, [])
    records[3]["y"] = float("nan")
    records[5]["structure"] = {"not": "a structure"}
    theirs.write_text(json.dumps(records))
    result = evaluate_model(str(run_dir), theirs, output_dir=tmp_path / "eval")
    assert result["n"] == 10
    assert sorted(rid for rid, _ in result["skipped"]) == ["new-3", "new-5"]
    log = (tmp_path / "eval" / "skipped.log").read_text()
    assert "new-3\t" in log and "new-5\t" in log and "skipped.log" in result["files"]
    recorded = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert recorded["n_skipped"] == 2 and "skipped" not in recorded
    done = run_cli(["evaluate", run_dir, theirs], cwd=tmp_path)
    assert done.returncode == 0 and "2 records skipped" in done.stderr and "new-3" in done.stderr, done.stderr


def test_metrics_json_is_standard_json_when_a_metric_is_undefined(run_dir, data, tmp_path):
    """R² of targets that are all equal is undefined: null in metrics.json, not a bare NaN."""
    theirs, records = _foreign(data, tmp_path, 6, [])
    theirs.write_text(json.dumps([{**r, "y": 1.5} for r in records]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" reached the terminal
        evaluate_model(str(run_dir), theirs, output_dir=tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["r2"] is None and metrics["n"] == 6


def test_ids_made_from_row_numbers_are_said_to_be_no_evidence(tmp_path):
    """Records without an id are named row1, row2, ...: positions, not crystals, so they are not checked
    against the training ids, and the note says so (was: "none trained on", whatever the crystals)."""
    records = json.loads(write_json_dataset(tmp_path / "data.json", 6).read_text())
    for record in records:
        del record["id"]
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset = load_dataset(tmp_path / "data.json", "y")
    training = {"data": {"split_record": {"trained_ids": pack_ids(["mp-x"]), "val_ids_sha256": ""}}}
    note = check_unseen(dataset.entries[:2], "val", dataset, training, "model.ckpt")
    assert "row numbers" in note
    named = load_dataset(write_json_dataset(tmp_path / "named.json", 6), "y")
    assert "row numbers" not in check_unseen(named.entries[:2], "val", named, training, "model.ckpt")


def test_unseen_data_that_all_look_like_training_crystals_is_refused_by_name(run_dir, data, tmp_path):
    """Every structure left out as a training look-alike: a clear refusal, not a crash on no structures."""
    card, _ = read_checkpoint(run_dir / "best.ckpt")
    records = json.loads(Path(data).read_text())
    trained = set(ids_in_packed([r["id"] for r in records], card.training["data"]["split_record"]["trained_ids"]))
    path = tmp_path / "copies.json"
    path.write_text(json.dumps([{**r, "id": f"copy-{r['id']}"} for r in records if r["id"] in trained][:4]))
    with pytest.raises(ValueError, match=r"copies\.json: 4 structures in split 'unseen', but every one looks like"):
        evaluate_model(str(run_dir), path)
    done = run_cli(["evaluate", run_dir, path], cwd=tmp_path)
    assert done.returncode != 0 and "--split all" in done.stderr and "Traceback" not in done.stderr


def test_ids_made_from_row_numbers_are_not_taken_for_training_crystals(tmp_path):
    """A model trained on records without ids (row1, row2, ...) evaluated on other such records: the same
    row numbers were taken for the crystals it trained on ("9 structures the model was trained on left out",
    --split val refused as "used to train"); only the structures can tell, and these are all new."""
    records = json.loads(write_json_dataset(tmp_path / "all.json", 40).read_text())
    for record in records:
        del record["id"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "a.json").write_text(json.dumps(records[:30]))
    (tmp_path / "b" / "b.json").write_text(json.dumps(records[30:]))
    train_model(tmp_path / "a" / "a.json", tmp_path / "run", train_config(epochs=1), workers=1)
    result = evaluate_model(str(tmp_path / "run"), tmp_path / "b" / "b.json")
    assert result["split"] == "unseen" and result["n"] == 10
    assert "trained on left out" not in result["split_check"] and "row numbers" in result["split_check"]
    result = evaluate_model(str(tmp_path / "run"), tmp_path / "b" / "b.json", split="val")
    assert result["n"] == 1 and "row numbers" in result["split_check"]


@pytest.mark.parametrize("layout", ["split.json", "split column"])
def test_records_of_other_splits_are_not_counted_as_skipped_from_the_figure(run_dir, data, tmp_path, layout):
    """--split val counted and listed every unusable record of the data set (mp2018: "261 records skipped",
    none of them a val structure): only the val split's count as skipped; the others are named apart."""
    theirs, records = _foreign(data, tmp_path, 12, [])
    splits = ["val"] * 4 + ["train"] * 8
    for k in (1, 6, 8):
        records[k]["y"] = None  # one val record and two train records unusable
    if layout == "split.json":
        (tmp_path / "split.json").write_text(json.dumps({"val": [r["id"] for r in records[:4]]}))
    else:
        records = [{**r, "split": s} for r, s in zip(records, splits)]
    theirs.write_text(json.dumps(records))
    result = evaluate_model(str(run_dir), theirs, split="val", output_dir=tmp_path / "eval")
    assert result["n"] == 3 and [rid for rid, _ in result["skipped"]] == ["new-1"]
    recorded = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert recorded["n_skipped"] == 1 and recorded["n_unusable_other_splits"] == 2
    assert "n_unusable_split_unknown" not in recorded
    log = (tmp_path / "eval" / "skipped.log").read_text().splitlines()
    assert log[0].startswith("new-1\t") and sorted(line.split("\t")[0] for line in log[1:]) == ["new-6", "new-8"]
    assert all("train split, not evaluated" in line for line in log[1:])
    done = run_cli(["evaluate", run_dir, theirs, "--split", "val"], cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 0 and "1 record skipped" in said and "2 unusable records of other splits" in said


def test_unusable_records_of_a_random_split_are_said_to_be_of_no_known_split(run_dir, data, tmp_path):
    """A random split deals the usable records only: an unusable one belongs to no split, and is not
    counted as skipped from the val figure but as unusable, split unknown."""
    theirs, records = _foreign(data, tmp_path, 12, [])
    for k in (1, 6):
        records[k]["y"] = None
    theirs.write_text(json.dumps(records))
    result = evaluate_model(str(run_dir), theirs, split="val", output_dir=tmp_path / "eval")
    recorded = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["skipped"] == [] and recorded["n_skipped"] == 0 and recorded["n_unusable_split_unknown"] == 2
    log = (tmp_path / "eval" / "skipped.log").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in log) == ["new-1", "new-6"] and all("split unknown" in line for line in log)
    done = run_cli(["evaluate", run_dir, theirs, "--split", "val"], cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 0 and "2 records of the data set unusable, split unknown" in said, said


def test_evaluate_tells_split_json_ids_that_match_no_record(run_dir, tmp_path):
    """A misspelt val id in split.json leaves its structure in training; evaluate says so, as train does."""
    path = tmp_path / "theirs.json"
    records = [{**r, "id": f"theirs-{r['id']}"} for r in json.loads(write_json_dataset(path, 12).read_text())]
    path.write_text(json.dumps(records))
    names = [r["id"] for r in records]
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:6], "test": names[6:] + ["x.cif"]}))
    result = evaluate_model(str(run_dir), path, split="test", output_dir=tmp_path / "ev")
    assert result["data_notes"] == [f"{tmp_path / 'split.json'}: 1 test id(s) match no record of the data (e.g. x.cif)"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["data_notes"] == result["data_notes"]
    done = run_cli(["evaluate", run_dir, path, "--split", "test"])
    assert "1 test id(s) match no record of the data" in " ".join((done.stdout + done.stderr).split())


def test_the_evaluation_table_shows_the_log10_max_error(tmp_path):
    from crystalprop.cli.display import METRIC_KEYS

    assert "log10_max_error" in METRIC_KEYS


def test_the_split_note_says_a_limit_run_validated_on_a_part_of_it(tmp_path):
    """A `--limit` run picked its best epoch on N/8 validation structures while evaluate and the join scored the
    whole split, saying "the same val split as in training" (hunt14 3)."""
    from types import SimpleNamespace

    from crystalprop.data.datasets import Entry, ids_sha256, pack_ids
    from crystalprop.evaluation.evaluate import check_unseen

    val = [Entry(f"v{k}", 1.0, None, "val") for k in range(20)]
    dataset = SimpleNamespace(origin="data", positional_ids=0)
    record = {"trained_ids": pack_ids(["t1", "t2"]), "val_ids_sha256": ids_sha256([e.id for e in val])}
    plain = check_unseen(val, "val", dataset, {"data": {"split_record": record}}, "m.ckpt")
    assert plain == "none trained on; the same val split as in training"
    limited = check_unseen(val, "val", dataset, {"data": {"split_record": {**record, "limit": 40, "limit_val": 5}}},
                           "m.ckpt")
    assert "the same val split as in training" in limited and "validated on the first 5 of them" in limited
    whole = check_unseen(val, "val", dataset, {"data": {"split_record": {**record, "limit": 400, "limit_val": 20}}},
                         "m.ckpt")
    assert whole == plain  # a limit that kept every validation structure changed nothing there (review 42)
    older = {**record, "limit": 40}  # recorded before limit_val: the rule of --limit, N / 8
    assert "validated on the first 5 of them" in check_unseen(val, "val", dataset, {"data": {"split_record": older}},
                                                             "m.ckpt")
    assert check_unseen(val, "val", dataset, {"data": {"split_record": {**older, "limit": 400}}}, "m.ckpt") == plain


def test_a_val_split_drawn_from_data_without_one_says_so(run_dir, data, tmp_path):
    """Was (hunt15 9): `evaluate MODEL DATA --split val` on data with no split of its own scored a random 10 %
    of it (drawn with the run's settings) and called it "not the val split as in training", as if the data had one."""
    dataset = load_dataset(data, "y", val_fraction=0.3, seed=5)
    held = {e.id for e in dataset.split("val")}
    records = [r for r in json.loads(Path(data).read_text()) if r["id"] in held]
    (tmp_path / "mine.json").write_text(json.dumps(records))
    result = evaluate_model(str(run_dir), tmp_path / "mine.json", split="val")
    assert result["n"] < len(records)
    assert "has no split of its own" in result["split_check"] and "at random (val 0.3, test 0.0, seed 5)" in result["split_check"]
    assert "--split unseen" in result["split_check"]
