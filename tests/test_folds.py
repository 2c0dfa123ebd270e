"""Cross-validation folds: ``train --fold I/K`` validates on fold I of the training and validation
structures, and evaluation, ensembles and resumes keep that fold."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import TINY_CLI, run_cli, train_config, write_json_dataset
from crystalprop.utils.backend import set_device

set_device("CPU")

from crystalprop.data.datasets import load_dataset  # noqa: E402
from crystalprop.evaluation.evaluate import evaluate_model  # noqa: E402
from crystalprop.model.checkpoint import read_checkpoint  # noqa: E402
from crystalprop.training.run import train_model  # noqa: E402
from crystalprop.training.trainer import TrainingError  # noqa: E402

N_DATA = 45
N_TEST = 10  # enough to calibrate a joined σ on (at least 10)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """45 records with a split.json: the first 10 ids are the test split, the next 5 validation."""
    path = write_json_dataset(tmp_path_factory.mktemp("folds") / "data.json", N_DATA)
    ids = [r["id"] for r in json.loads(path.read_text())]
    (path.parent / "split.json").write_text(json.dumps({"test": ids[:N_TEST], "val": ids[N_TEST:N_TEST + 5]}))
    return path


def val_ids(data: Path, fold: tuple[int, int], **kwargs) -> set[str]:
    return {e.id for e in load_dataset(data, "y", fold=fold, **kwargs).split("val")}


def test_folds_partition_the_training_and_validation_structures(data):
    folds = [val_ids(data, (i, 5)) for i in range(1, 6)]
    dataset = load_dataset(data, "y")
    pool = {e.id for e in dataset.entries if e.split != "test"}
    assert set().union(*folds) == pool and sum(map(len, folds)) == len(pool) == N_DATA - N_TEST
    assert sorted(map(len, folds)) == [7, 7, 7, 7, 7]
    for i in range(1, 6):
        split = load_dataset(data, "y", fold=(i, 5))
        assert {e.id for e in split.split("test")} == {e.id for e in dataset.split("test")}
        assert {e.id for e in split.split("train")} == pool - folds[i - 1]
        assert f"fold {i}/5" in split.split_source


def test_folds_depend_on_the_ids_only(data, tmp_path):
    """Another seed or another order of the records deals the same folds."""
    records = json.loads(data.read_text())
    random.Random(3).shuffle(records)
    shuffled = tmp_path / "data.json"
    shuffled.write_text(json.dumps(records))
    (tmp_path / "split.json").write_text((data.parent / "split.json").read_text())
    assert val_ids(shuffled, (2, 5), seed=7) == val_ids(data, (2, 5))


@pytest.mark.parametrize("fold", [(0, 5), (6, 5), (1, 1)])
def test_a_fold_that_does_not_exist_is_refused(data, fold):
    with pytest.raises(ValueError, match="at least 2 folds, numbered 1 to"):
        load_dataset(data, "y", fold=fold)


@pytest.fixture(scope="module")
def fold_run(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fold_run")
    train_model(data, folder, train_config(epochs=1), workers=1, fold=(2, 5))
    return folder


def test_a_fold_run_validates_and_is_evaluated_on_its_fold(fold_run, data):
    card, _ = read_checkpoint(fold_run / "best.ckpt")
    record = card.training["data"]["split_record"]
    assert record["fold"] == [2, 5] and "fold 2/5" in card.training["data"]["split"]
    assert card.training["data"]["n_val"] == 7
    result = evaluate_model(str(fold_run), data)
    assert result["split"] == "test" and result["n"] == N_TEST
    result = evaluate_model(str(fold_run), data, split="val")
    assert result["n"] == 7 and result["split_check"] == "none trained on; the same val split as in training"
    assert result["mae"] == pytest.approx(card.metrics["mae"], rel=1e-4)


def test_a_fold_run_resumes_only_on_its_fold(fold_run, data):
    with pytest.raises(TrainingError, match="trained with --fold 2/5; resume it with --fold 2/5, not --fold 3/5"):
        train_model(data, fold_run, train_config(epochs=2), workers=1, fold=(3, 5), resume=True)
    with pytest.raises(TrainingError, match="resume it with --fold 2/5, not no --fold"):
        train_model(data, fold_run, train_config(epochs=2), workers=1, resume=True)


def test_the_command_takes_a_fold_and_refuses_a_wrong_one(data, tmp_path):
    result = run_cli(["train", data, "-o", tmp_path / "bad", "--fold", "3/1", *TINY_CLI])
    assert result.returncode == 2 and "--fold" in result.stderr and "3/1" in result.stderr
    result = run_cli(["train", data, "-o", tmp_path / "one", "--fold", "1/1", *TINY_CLI])
    assert result.returncode == 2 and "at least 2 folds" in result.stderr
    result = run_cli(["train", data, "-o", tmp_path / "run", "--fold", "4/5", "--epochs", "1", "--batch-size", "8",
                      "--graph-workers", "1", *TINY_CLI])
    assert result.returncode == 0, result.stderr
    card, _ = read_checkpoint(tmp_path / "run" / "best.ckpt")
    assert card.training["data"]["split_record"]["fold"] == [4, 5]
    assert {e.id for e in load_dataset(data, "y", fold=(4, 5)).split("val")} != val_ids(data, (2, 5))


def test_an_ensemble_refuses_every_members_training_structures(fold_run, data, tmp_path):
    """A member warm-started from a run on another fold has trained on this fold's validation
    structures; joined (calibrated on the test split, clean for both), the ensemble remembers it."""
    from crystalprop.evaluation.joining import join_ensemble

    train_model(data, tmp_path / "fold1", train_config(epochs=1, seed=3), workers=1, fold=(1, 5))
    train_model(data, tmp_path / "warm", train_config(epochs=1, seed=4), workers=1, fold=(2, 5),
                init_from=tmp_path / "fold1" / "best.ckpt")
    join_ensemble([fold_run, tmp_path / "warm"], tmp_path / "ens.ckpt", data, split="test")
    with pytest.raises(ValueError, match="were used to train"):
        evaluate_model(str(tmp_path / "ens.ckpt"), data, split="val")
    assert evaluate_model(str(tmp_path / "ens.ckpt"), data, split="test")["n"] == N_TEST


def test_a_fold_run_resumed_by_the_command_keeps_its_fold(data, tmp_path):
    args = ["train", data, "-o", tmp_path / "run", "--epochs", "1", "--batch-size", "8", "--graph-workers", "1",
            *TINY_CLI]
    assert run_cli([*args, "--fold", "3/5"]).returncode == 0
    result = run_cli([*args[:4], "--epochs", "2", *args[6:], "--resume"])
    assert result.returncode == 0, result.stderr
    card, _ = read_checkpoint(tmp_path / "run" / "best.ckpt")
    assert card.training["data"]["split_record"]["fold"] == [3, 5]
    assert run_cli([*args[:4], "--epochs", "3", *args[6:], "--resume", "--fold", "1/5"]).returncode != 0


def _other_data(data: Path, folder: Path) -> tuple[Path, list[str]]:
    """24 of ``data``'s crystals, a quarter larger in volume and under ids no model here trained on, with a
    split.json of their own (12 val, the rest train): other data with a fixed split; and its val ids."""
    from pymatgen.core import Structure

    records = []
    for k, record in enumerate(json.loads(data.read_text())[15:39]):
        crystal = Structure.from_dict(record["structure"])
        crystal.scale_lattice(crystal.volume * 1.25)
        records.append({**record, "id": f"other-{k:02d}", "structure": crystal.as_dict()})
    folder.mkdir()
    (folder / "other.json").write_text(json.dumps(records))
    ids = [r["id"] for r in records]
    (folder / "split.json").write_text(json.dumps({"train": ids[12:], "val": ids[:12]}))
    return folder / "other.json", ids[:12]


def test_a_fold_run_on_other_data_takes_that_datas_own_split(fold_run, data, tmp_path):
    """The fold is one of the model's own data: on other data with a split of its own, fold 2/5 of that
    data's train and val structures was evaluated as "val" (6 structures, most from its train list)."""
    other, val = _other_data(data, tmp_path / "other")
    result = evaluate_model(str(fold_run), other, split="val", output_dir=tmp_path / "eval")
    assert result["n"] == len(val)
    with open(tmp_path / "eval" / "predictions.csv") as handle:
        assert sorted(row.split(",")[0] for row in handle.readlines()[1:]) == val
    assert "fold 2/5" in result["split_check"] and "split.json" in result["split_check"]
    assert evaluate_model(str(fold_run), other)["n"] == len(val)  # the default: its val split too


def test_members_of_a_fold_join_on_other_datas_own_split(fold_run, data, tmp_path):
    """Joining calibrated σ on fold 2/5 of other data too, as evaluate did."""
    from crystalprop.evaluation.joining import join_ensemble

    train_model(data, tmp_path / "seed1", train_config(epochs=1, seed=1), workers=1, fold=(2, 5))
    other, val = _other_data(data, tmp_path / "other")
    result = join_ensemble([fold_run, tmp_path / "seed1"], tmp_path / "ens.ckpt", other)
    assert result["n"] == len(val) and result["calibrated_on"]["n"] == len(val)
    assert "fold 2/5" in result["calibrated_on"]["split_check"]


def test_members_of_other_folds_are_refused_naming_the_folds(fold_run, data, tmp_path):
    """The data has a split.json: the advice to give it a split of its own was wrong; the folds differ."""
    from crystalprop.evaluation.joining import join_ensemble
    from crystalprop.model.checkpoint import CheckpointError

    train_model(data, tmp_path / "fold3", train_config(epochs=1, seed=1), workers=1, fold=(3, 5))
    with pytest.raises(CheckpointError, match=r"another cross-validation fold .*fold 3/5 and fold 2/5") as refused:
        join_ensemble([fold_run, tmp_path / "fold3"], tmp_path / "ens.ckpt", data)
    assert "split of its own" not in str(refused.value) and "--fold" in str(refused.value)


def test_unusable_records_are_counted_in_the_split_a_fold_leaves_them(tmp_path):
    """A fold deals out the usable train and val structures only: an unusable record split.json lists in
    val may be either, one it lists in test is of the test split, which the fold leaves alone."""
    path = write_json_dataset(tmp_path / "data.json", 30)
    records = json.loads(path.read_text())
    records[0]["y"] = records[7]["y"] = None
    path.write_text(json.dumps(records))
    ids = [r["id"] for r in records]
    (tmp_path / "split.json").write_text(json.dumps({"test": ids[:5], "val": ids[5:10]}))
    train_model(path, tmp_path / "run", train_config(epochs=1), workers=1, fold=(2, 5))
    val = evaluate_model(str(tmp_path / "run"), path, split="val")
    assert val["n_skipped"] == 0 and val["n_unusable_split_unknown"] == 1
    assert val["n_unusable_other_splits"] == 1 and "fold" not in val["split_check"]
    test = evaluate_model(str(tmp_path / "run"), path, split="test")
    assert [rid for rid, _ in test["skipped"]] == [ids[0]] and test["n_unusable_other_splits"] == 1
    assert [where for _, _, where in test["unusable"]] == ["train or val split, not evaluated"]
