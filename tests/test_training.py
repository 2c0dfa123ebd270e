"""Tests for crystalprop.training: the loop, checkpoints it writes, resume, warm start, guards, CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Element, Structure

from conftest import TINY, TINY_CLI, read_history, run_cli, synthetic_target, train_state, write_json_dataset
from conftest import cell_graph_of, graph_of, perovskite, train_stopped_mid_epoch
from conftest import train_config as config
from crystalprop.utils.backend import mindspore_module, set_device

set_device("CPU")
ms = mindspore_module()

from crystalprop import predict  # noqa: E402
from crystalprop.evaluation.evaluate import evaluate_model  # noqa: E402
from crystalprop.model.checkpoint import CheckpointError, load_model, read_checkpoint  # noqa: E402
from crystalprop.model.inference import predict_graphs  # noqa: E402
from crystalprop.model.matformer import ModelConfig  # noqa: E402
from crystalprop.training import trainer as trainer_module  # noqa: E402
from crystalprop.data.datasets import ids_in_packed, load_dataset  # noqa: E402
from crystalprop.training.run import train_model  # noqa: E402
from crystalprop.training.trainer import STATE_KEY, Trainer, TrainingError  # noqa: E402

pytestmark = pytest.mark.slow

N_DATA = 40
STEPS_PER_EPOCH = 5  # 36 training structures, batch size 8
COMPARED = ("epoch", "train_loss", "val_mae", "val_rmse", "lr", "best")


def comparable(history: list[dict], keys=COMPARED) -> list[tuple]:
    return [tuple(row[k] for k in keys) for row in history]


def assert_same_val_curve(a: list[dict], b: list[dict], rel: float = 1e-4) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    np.testing.assert_allclose([r["val_mae"] for r in b], [r["val_mae"] for r in a], rtol=rel)


# --- parameter names --------------------------------------------------------------------------
#
# Regression (fixed in d97cb29): training wraps the Matformer in _LossNet, and MindSpore renames the
# wrapped parameters "net.<name>"; best.ckpt was saved under those names, so load_model refused it
# and --init-from found "no parameter" of a checkpoint saved from a bare network.


def test_trained_checkpoint_loads(data, tmp_path):
    train_model(data, tmp_path / "run", config(epochs=1), workers=1)
    _, params = read_checkpoint(tmp_path / "run" / "best.ckpt")
    assert not any(name.startswith("net.") for name in params)
    net, card = load_model(tmp_path / "run" / "best.ckpt")
    assert card.target == "y"


def test_init_from_plain_checkpoint(data, random_ckpt, tmp_path):
    events = []
    train_model(data, tmp_path / "warm", config(epochs=1), workers=1, init_from=random_ckpt,
                on_event=lambda kind, info: events.append((kind, info)))
    init = next(info for kind, info in events if kind == "init_from")
    assert init["loaded"] == init["total"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_json_dataset(tmp_path_factory.mktemp("data") / "data.json", N_DATA)


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory):
    """The reference run: 4 uninterrupted epochs."""
    run_dir = tmp_path_factory.mktemp("run_a")
    events = []
    result = train_model(data, run_dir, config(), workers=1, on_event=lambda kind, info: events.append((kind, info)))
    return result, run_dir, events


# --- one run: what it writes ---------------------------------------------------------------


def test_loss_falls_and_files_are_written(run_a):
    result, run_dir, events = run_a
    history = result.history
    assert result.stopped_because == "finished" and result.epochs_done == 4
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert min(r["val_mae"] for r in history) < history[0]["val_mae"]
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["best.ckpt", "history.csv", "last.ckpt", "skipped.log"]  # no .lock, no temporary files
    assert (run_dir / "skipped.log").read_text() == ""
    rows = read_history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([float(r["val_mae"]) for r in rows], [r["val_mae"] for r in history])
    assert sum(1 for kind, _ in events if kind == "step") == 4 * STEPS_PER_EPOCH
    data_event = next(info for kind, info in events if kind == "data")
    assert (data_event["n_train"], data_event["n_val"], data_event["n_skipped"]) == (36, 4, 0)
    assert result.best_val_mae == pytest.approx(min(r["val_mae"] for r in history))
    assert history[result.best_epoch - 1]["best"]


def test_best_checkpoint_card(run_a, data):
    result, run_dir, _ = run_a
    net, card = load_model(run_dir / "best.ckpt")
    assert (card.target, card.unit) == ("y", "eV")
    assert card.model == ModelConfig(**TINY)
    assert card.metrics["split"] == "val" and card.metrics["selection_metric"] == "mae"
    assert {"mae", "rmse", "r2", "max_error", "n"} <= set(card.metrics)
    assert card.metrics["n"] == 4
    assert card.metrics["mae"] == pytest.approx(result.best_val_mae, abs=1e-6)
    dataset = load_dataset(data, "y", seed=0)
    train_y = np.array([e.target for e in dataset.split("train")])
    assert not card.transform.log10
    assert card.transform.mean == pytest.approx(train_y.mean()) and card.transform.std == pytest.approx(train_y.std())
    assert card.training["data"]["n_train"] == 36 and card.training["epochs"] == result.best_epoch
    assert card.training["config"]["lr"] == 5e-3
    assert card.graph.cell == "canonical"  # the default, stored so that predictions use the same cells
    symbols = {site.specie.symbol for e in dataset.split("train") for site in Structure.from_dict(e.source)}
    assert card.elements == sorted(symbols, key=lambda s: Element(s).Z)
    # the stored validation MAE is what the checkpoint really scores on the validation split
    val = dataset.split("val")
    graphs = [cell_graph_of(Structure.from_dict(e.source)) for e in val]
    pred = card.transform.physical(predict_graphs(net, graphs))
    assert np.mean(np.abs(pred - [e.target for e in val])) == pytest.approx(card.metrics["mae"], rel=1e-4)


def test_same_seed_same_history_other_seed_differs(run_a, data, tmp_path):
    again = train_model(data, tmp_path / "again", config(), workers=1)
    assert comparable(again.history) == comparable(run_a[0].history)
    other = train_model(data, tmp_path / "other", config(seed=1), workers=1)
    assert comparable(other.history) != comparable(run_a[0].history)


def test_evaluate_run_directory_in_process(run_a, data):
    result, run_dir, _ = run_a
    metrics = evaluate_model(str(run_dir), data)
    assert metrics["split"] == "val" and metrics["n"] == 4 and metrics["target"] == "y"
    assert metrics["mae"] == pytest.approx(result.best_val_mae, rel=1e-4)


# --- stopping and resuming ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed_mid_epoch(data, tmp_path_factory):
    """Run B: stopped (as by Ctrl-C) after step 2 of epoch 3, then resumed."""
    run_dir = tmp_path_factory.mktemp("run_b")
    first = train_stopped_mid_epoch(data, run_dir, config())
    state = train_state(run_dir / "last.ckpt")
    second = train_model(data, run_dir, config(), workers=1, resume=True)
    return first, state, second, run_dir


def test_interrupted_run_saves_its_position(resumed_mid_epoch):
    first, state, _, run_dir = resumed_mid_epoch
    assert first.stopped_because == "interrupted"
    assert first.epochs_done == 2 and len(first.history) == 2
    assert state["state"]["epoch"] == 2 and state["state"]["step_in_epoch"] == 2
    assert state["state"]["global_step"] == 2 * STEPS_PER_EPOCH + 2


def test_a_stop_signal_adds_no_validation_of_the_partial_epoch(data, tmp_path, monkeypatch):
    """Stopped by a signal (to be resumed), a run validated its partial epoch and could keep it as best.ckpt:
    the resumed run then ended with a best model that the uninterrupted one never had, and that no row of
    history.csv shows (hunt10 6). Only a time budget keeps the partial epoch's best (README)."""
    calls = []
    validate = Trainer._validate
    monkeypatch.setattr(Trainer, "_validate", lambda self, *a: calls.append(1) or validate(self, *a))
    stopped = train_stopped_mid_epoch(data, tmp_path / "run", config())
    assert stopped.stopped_because == "interrupted" and len(calls) == 2  # epochs 1 and 2, not the cut third
    assert stopped.best_epoch in (1, 2)


def test_a_run_stopped_before_its_first_epoch_ended_says_so_not_inf(tmp_path, capsys):
    """A signal in the first epoch leaves no best.ckpt (no epoch validated): the end line read
    'best validation MAE inf at epoch 0'."""
    from crystalprop.training.progress import report_training

    (tmp_path / "last.ckpt").write_bytes(b"")
    status = report_training({"stopped_because": "interrupted", "best_val_mae": float("inf"), "best_epoch": 0,
                              "signal": 15}, str(tmp_path))
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert status == 143 and "inf" not in out
    assert "before its first epoch ended: no best.ckpt yet" in out and "--resume continues" in out


def test_resume_mid_epoch_matches_uninterrupted_run(resumed_mid_epoch, run_a):
    _, _, second, run_dir = resumed_mid_epoch
    assert second.stopped_because == "finished" and second.epochs_done == 4
    assert_same_val_curve(run_a[0].history, second.history)
    assert [int(r["epoch"]) for r in read_history(run_dir)] == [1, 2, 3, 4]
    assert second.best_val_mae == pytest.approx(run_a[0].best_val_mae, rel=1e-4)
    # epochs that were not cut keep their training loss exactly
    for a, b in zip(run_a[0].history, second.history):
        if a["epoch"] != 3:
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


def test_resume_mid_epoch_keeps_the_epoch_train_loss(resumed_mid_epoch, run_a):
    _, _, second, _ = resumed_mid_epoch
    assert second.history[2]["train_loss"] == pytest.approx(run_a[0].history[2]["train_loss"], rel=1e-4)


def test_a_run_resumed_at_the_end_of_an_epoch_keeps_that_epoch_s_row(data, run_a, tmp_path):
    """Stopped after an epoch's last step, resumed: its history row gave the next epoch's first lr and a
    time of 0 s (363,912 structures/s)."""
    run_dir = tmp_path / "edge"
    train_stopped_mid_epoch(data, run_dir, config(), epoch=1, step=STEPS_PER_EPOCH)
    second = train_model(data, run_dir, config(), workers=1, resume=True)
    assert [r["lr"] for r in second.history] == pytest.approx([r["lr"] for r in run_a[0].history])
    reference = max(r["structures_per_s"] for r in run_a[0].history)
    assert all(r["structures_per_s"] < 10 * reference for r in second.history)


def test_a_resume_that_trains_nothing_keeps_the_epoch_s_time(data, tmp_path):
    """A resume with no epoch left to run saved the machine's uptime as the time of the epoch it stopped in."""
    run_dir = tmp_path / "idle"
    train_stopped_mid_epoch(data, run_dir, config(epochs=3), epoch=1, step=2)
    before = train_state(run_dir / "last.ckpt")["state"]["epoch_elapsed_s"]
    train_model(data, run_dir, config(epochs=1), workers=1, resume=True)
    assert train_state(run_dir / "last.ckpt")["state"]["epoch_elapsed_s"] == pytest.approx(before)


def test_time_budget_stops_and_resume_continues(data, run_a, tmp_path):
    run_dir = tmp_path / "budget"
    first = train_model(data, run_dir, config(max_time_s=0.0), workers=1)
    assert first.stopped_because == "time budget reached"
    # the partial epoch is validated and kept as the best so far (a fraction of an epoch)
    assert first.epochs_done == 0 and (run_dir / "best.ckpt").exists()
    assert 0 < first.best_epoch < 1
    assert train_state(run_dir / "last.ckpt")["state"]["global_step"] == 1
    second = train_model(data, run_dir, config(), workers=1, resume=True)
    assert second.stopped_because == "finished"
    assert_same_val_curve(run_a[0].history, second.history)


def test_resume_refuses_another_model_configuration(run_a, data, tmp_path):
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    (run_dir / "last.ckpt").write_bytes((run_a[1] / "last.ckpt").read_bytes())
    with pytest.raises(TrainingError, match="another model: features 8 \\(now 16\\)"):
        train_model(data, run_dir, config(model=ModelConfig(**{**TINY, "features": 16})), workers=1, resume=True)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_model(data, tmp_path / "empty", config(), workers=1, resume=True)


@pytest.mark.parametrize("change", [{"log10": True}, {"floor": 0.5}, {"element_floor": 0.0}, {"unit": "meV"}])
def test_resume_refuses_another_target_transform(run_a, data, tmp_path, change):
    """`--resume --log10` (or `--floor`) was announced as changed but the saved transform stayed: the run
    then compared log10 errors with a best MAE in the target's unit and overwrote a better best.ckpt.
    `--resume --unit MPa` relabelled a model's GPa values as MPa (hunt17 3)."""
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("last.ckpt", "best.ckpt"):
        (run_dir / name).write_bytes((run_a[1] / name).read_bytes())
    before = (run_dir / "best.ckpt").read_bytes()
    with pytest.raises(TrainingError, match=f"{next(iter(change)).replace('_', '.')}.*fixed when a run starts"):
        train_model(data, run_dir, config(epochs=6, **change), workers=1, resume=True)
    assert (run_dir / "best.ckpt").read_bytes() == before


def test_max_time_is_the_budget_of_each_resumed_session(run_a, data, tmp_path):
    """`--max-time` counted the run's earlier sessions too, so a job resumed with the same budget (a
    cluster's time limit) trained one step and stopped, again and again."""
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("last.ckpt", "best.ckpt", "history.csv"):
        (run_dir / name).write_bytes((run_a[1] / name).read_bytes())
    params = ms.load_checkpoint(str(run_dir / "last.ckpt"))
    saved = json.loads(params.pop(STATE_KEY))
    saved["state"]["elapsed_s"] = 7200.0  # two hours behind it
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(run_dir / "last.ckpt"),
                       append_dict={STATE_KEY: json.dumps(saved)})
    result = train_model(data, run_dir, config(epochs=5, max_time_s=3600), workers=1, resume=True)
    assert result.stopped_because == "finished" and result.epochs_done == 5


def test_resume_refuses_another_target(run_a, tmp_path):
    """A resume with another --target went on training the old target's network on the new labels."""
    other = write_json_dataset(tmp_path / "other.json", N_DATA, target="z")
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    (run_dir / "last.ckpt").write_bytes((run_a[1] / "last.ckpt").read_bytes())
    with pytest.raises(TrainingError, match="target y, not z"):
        train_model(other, run_dir, config(target="z"), workers=1, resume=True)


def _copy_run(source: Path, run_dir: Path) -> Path:
    run_dir.mkdir()
    for name in ("last.ckpt", "best.ckpt", "history.csv"):
        (run_dir / name).write_bytes((source / name).read_bytes())
    return run_dir


def test_resume_refuses_other_data_naming_what_changed(run_a, data, tmp_path):
    """A resume on rows added to the data (so the random split was redrawn) kept the old target transform
    and replaced best.ckpt on a validation MAE of other structures than the best it was compared with."""
    run_dir = _copy_run(run_a[1], tmp_path / "copy")
    before = (run_dir / "best.ckpt").read_bytes()
    more = write_json_dataset(tmp_path / "more.json", N_DATA + 8)
    then, now = load_dataset(data, "y", seed=0), load_dataset(more, "y", seed=0)
    changed = {s: len({e.id for e in then.split(s)} ^ {e.id for e in now.split(s)}) for s in ("train", "val")}
    assert changed["train"] and changed["val"]
    with pytest.raises(TrainingError) as caught:
        train_model(more, run_dir, config(epochs=6), workers=1, resume=True)
    said = str(caught.value)
    assert f"{changed['train']} training and {changed['val']} validation structures differ from those the run " \
           "started with" in said
    assert "36 training and 4 validation then, 43 and 5 now" in said and "start a new run" in said
    assert (run_dir / "best.ckpt").read_bytes() == before


def test_resume_refuses_a_split_that_moved_structures(run_a, data, tmp_path):
    """The same records with a split column that swaps one validation and one training structure."""
    run_dir = _copy_run(run_a[1], tmp_path / "copy")
    val_ids = {e.id for e in load_dataset(data, "y", seed=0).split("val")}
    split = {e.id: ("val" if e.id in val_ids else "train") for e in load_dataset(data, "y", seed=0).entries}
    split.update({next(iter(sorted(val_ids))): "train", next(i for i in sorted(split) if i not in val_ids): "val"})
    records = json.loads(data.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**r, "split": split[r["id"]]} for r in records]))
    with pytest.raises(TrainingError, match=r"2 training and 2 validation structures differ"):
        train_model(other, run_dir, config(epochs=6), workers=1, resume=True)


def test_a_last_checkpoint_without_the_split_ids_still_resumes(run_a, data, tmp_path):
    """last.ckpt files written before the split's ids were kept resume without the check."""
    run_dir = _copy_run(run_a[1], tmp_path / "copy")
    params = ms.load_checkpoint(str(run_dir / "last.ckpt"))
    saved = json.loads(params.pop(STATE_KEY))
    saved.pop("split_ids", None)
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(run_dir / "last.ckpt"),
                       append_dict={STATE_KEY: json.dumps(saved)})
    result = train_model(data, run_dir, config(epochs=5), workers=1, resume=True)
    assert result.stopped_because == "finished" and result.epochs_done == 5
    assert train_state(run_dir / "last.ckpt")["split_ids"]


def test_init_from_a_model_of_another_size_is_refused_by_name(run_a, data, tmp_path):
    """A warm start from a model of other sizes loaded 1 of 33 parameters, then claimed its history."""
    with pytest.raises(CheckpointError, match="features") as caught:
        train_model(data, tmp_path / "warm", config(epochs=1, model=ModelConfig(**{**TINY, "features": 16})),
                    workers=1, init_from=run_a[1] / "best.ckpt")
    assert "of this model's" in str(caught.value) and "16 features" in str(caught.value)


def test_init_from_a_model_of_more_layers_is_refused_by_name(data, tmp_path):
    """Every parameter of a 1-layer run has a counterpart in a 2-layer model, so the warm start took the
    first layer of it and the other model's readout, and claimed that model's history, without a word."""
    from crystalprop.model.checkpoint import ModelCard, TargetTransform, save_checkpoint
    from crystalprop.model.matformer import Matformer

    deeper = Matformer(ModelConfig(**{**TINY, "layers": 2}))
    source = tmp_path / "deeper.ckpt"
    save_checkpoint(source, deeper, ModelCard(target="y", model=deeper.config, transform=TargetTransform(0.0, 1.0)))
    with pytest.raises(CheckpointError, match="2 layers") as caught:
        train_model(data, tmp_path / "warm", config(epochs=1), workers=1, init_from=source)
    assert "1 layer," in str(caught.value)
    assert "of this model's" not in str(caught.value)  # "79 of 79 parameters fit", then refused (hunt14 9)


def test_resume_of_a_finished_run_starts_no_epoch(run_a, data, tmp_path):
    """`train --resume` on a finished run showed a progress bar for "epoch 5/4"; it now only reports the result."""
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    for name in ("last.ckpt", "best.ckpt", "history.csv"):
        (run_dir / name).write_bytes((run_a[1] / name).read_bytes())
    events = []
    result = train_model(data, run_dir, config(), workers=1, resume=True,
                         on_event=lambda kind, info: events.append((kind, info)))
    assert [kind for kind, _ in events if kind in ("start", "step", "epoch")] == []
    assert result.stopped_because == "finished" and result.epochs_done == 4
    assert result.best_val_mae == run_a[0].best_val_mae


# --- warm start, log10, patience ---------------------------------------------------------------


def test_init_from_loads_the_weights(run_a, data, tmp_path):
    result, run_dir, _ = run_a
    source = run_dir / "best.ckpt"
    events = []
    warm = train_model(data, tmp_path / "warm", config(epochs=1, lr=1e-12), workers=1, init_from=source,
                       on_event=lambda kind, info: events.append((kind, info)))
    init = next(info for kind, info in events if kind == "init_from")
    assert init["loaded"] == init["total"] and init["path"] == str(source)
    assert warm.epochs_done == 1
    _, source_params = read_checkpoint(source)
    warm_card, warm_params = read_checkpoint(tmp_path / "warm" / "best.ckpt")
    trainable = [name for name, value in source_params.items() if "moving_" not in name]
    assert len(trainable) > 10
    for name in trainable:  # lr 1e-12 leaves the loaded weights where they were (batch-norm statistics move)
        np.testing.assert_allclose(warm_params[name].asnumpy(), source_params[name].asnumpy(), atol=1e-6,
                                   err_msg=name)
    assert warm_card.training["init_from"] == str(source)
    assert warm_card.training["cumulative_epochs"] == pytest.approx(result.best_epoch + 1)


def test_init_from_a_model_trained_on_the_validation_structures_says_so(run_a, data, tmp_path):
    """A warm start from a model that trained on this run's validation structures reported, and chose
    best.ckpt by, a validation MAE that `evaluate` refuses, without a word."""
    source = run_a[1] / "best.ckpt"
    trained = {e.id for e in load_dataset(data, "y", seed=0).split("train")}
    val = [e.id for e in load_dataset(data, "y", seed=1).split("val")]
    seen = sum(rid in trained for rid in val)
    assert seen
    events = []
    train_model(data, tmp_path / "warm", config(epochs=1), workers=1, init_from=source, split_seed=1,
                on_event=lambda kind, info: events.append((kind, info)))
    notes = next(info for kind, info in events if kind == "data").get("notes", [])
    assert f"{seen} of the {len(val)} validation structures were trained on by the --init-from model ({source})" \
        in " ".join(notes)
    assert any("not a figure on unseen crystals" in note for note in notes)
    card, _ = read_checkpoint(tmp_path / "warm" / "best.ckpt")
    assert any("--init-from model" in note for note in card.training["data"]["notes"])
    assert card.training["data"]["n_val_trained_on"] == seen
    from crystalprop.model.registry import MODEL_COLUMNS, describe_models  # noqa: PLC0415

    listed = [dict(zip(MODEL_COLUMNS, row))["val MAE"] for row in describe_models([tmp_path / "warm", source])]
    assert listed[0].endswith(f"({seen} of {len(val)} val trained on)") and "trained on" not in listed[1]  # hunt17 11
    events.clear()
    train_model(data, tmp_path / "same_split", config(epochs=1), workers=1, init_from=source,
                on_event=lambda kind, info: events.append((kind, info)))
    assert not next(info for kind, info in events if kind == "data").get("notes")


def test_a_warm_start_stopped_in_its_first_epoch_keeps_its_start_s_record_when_resumed(run_a, data, tmp_path):
    """Stopped by a signal before its first epoch ended, a warm start has no best.ckpt yet; resumed, it took what
    its start had trained on from that best.ckpt only, so the finished run forgot it (review of session 39)."""
    source = run_a[1] / "best.ckpt"
    start_ids = read_checkpoint(source)[0].training["data"]["split_record"]["trained_ids"]
    run_dir = tmp_path / "warm"
    train_stopped_mid_epoch(data, run_dir, config(epochs=1), epoch=0, step=1, init_from=source, split_seed=1)
    assert not (run_dir / "best.ckpt").exists()
    train_model(data, run_dir, config(epochs=1), workers=1, resume=True, split_seed=1)
    record = read_checkpoint(run_dir / "best.ckpt")[0].training["data"]["split_record"]
    starts = {e.id for e in load_dataset(data, "y", seed=0).split("train")}
    assert ids_in_packed(sorted(starts), record["trained_ids"]) == ids_in_packed(sorted(starts), start_ids) != []


def test_a_warm_start_keeps_the_elements_its_start_was_trained_on(run_a, tmp_path):
    """A model fine-tuned (same target) on structures without O listed only its own elements, so predict
    warned that O was absent from its training data, although its start was trained on O."""
    start = read_checkpoint(run_a[1] / "best.ckpt")[0]
    assert "O" in start.elements
    for target in ("y", "z"):
        path = write_json_dataset(tmp_path / f"{target}.json", N_DATA, target=target)
        no_oxygen = [r for r in json.loads(path.read_text())
                     if all(s["species"][0]["element"] != "O" for s in r["structure"]["sites"])]
        path.write_text(json.dumps(no_oxygen))
        train_model(path, tmp_path / target, config(epochs=1, target=target), workers=1,
                    init_from=run_a[1] / "best.ckpt")
    card = read_checkpoint(tmp_path / "y" / "best.ckpt")[0]
    assert set(start.elements) <= set(card.elements)
    assert card.elements == sorted(card.elements, key=lambda s: Element(s).Z)
    rows = predict([perovskite(3.9)], model=str(tmp_path / "y" / "best.ckpt"), workers=0)
    assert "absent" not in rows[0]["warning"]
    other = read_checkpoint(tmp_path / "z" / "best.ckpt")[0]  # another target's start: O is not in its data
    assert "O" not in other.elements


def test_init_from_the_same_target_starts_from_its_predictions(run_a, tmp_path):
    """A fine-tune of the same target on structures of a narrow range refitted the standardisation to
    them under the source's output layer, so the warm start began with the source's predictions rescaled
    and shifted. The output layer is now re-expressed in the new standardisation (for the same target only)."""
    _, run_dir, _ = run_a
    records = json.loads(write_json_dataset(tmp_path / "all.json", N_DATA).read_text())
    records = sorted(records, key=lambda r: r["y"])[N_DATA // 2:]  # the upper half: another mean and spread
    graphs = [graph_of(Structure.from_dict(r["structure"])) for r in records]
    y = np.array([r["y"] for r in records])
    net, source_card = load_model(run_dir / "best.ckpt")
    source = source_card.transform.physical(predict_graphs(net, graphs))

    def warm_start(target: str) -> tuple[np.ndarray, dict]:
        events = []
        trainer = Trainer(config(target=target), tmp_path / target, (graphs, y), (graphs[:4], y[:4]),
                          on_event=lambda kind, info: events.append((kind, info)))
        loop = trainer._setup(False, run_dir / "best.ckpt")
        loop.net.set_train(False)
        return loop.transform.physical(predict_graphs(loop.net, graphs)), dict(events)["init_from"]

    warm, event = warm_start("y")
    np.testing.assert_allclose(warm, source, rtol=1e-5)
    assert event["same_target"]
    other, event = warm_start("z")  # another target: the output layer is the source's, to be learned anew
    assert not event["same_target"]
    assert np.abs(other - source).mean() > 0.05


def test_init_from_an_ensemble_starts_from_its_first_member(run_a, data, tmp_path):
    """The shipped models are ensembles: ``--init-from formation_energy`` warm-starts from member 0."""
    from crystalprop.model.checkpoint import save_ensemble
    from crystalprop.model.ensemble import member_params

    _, run_dir, _ = run_a
    card, params = read_checkpoint(run_dir / "best.ckpt")
    other = {name: value * 0.5 for name, value in params.items()}
    card.ensemble = {"members": 2, "sigma_scale": 1.0}
    save_ensemble(tmp_path / "ens.ckpt", card, [params, other])
    events = []
    train_model(data, tmp_path / "warm", config(epochs=1, lr=1e-12), workers=1, init_from=tmp_path / "ens.ckpt",
                on_event=lambda kind, info: events.append((kind, info)))
    init = next(info for kind, info in events if kind == "init_from")
    assert init["loaded"] == init["total"]
    _, warm_params = read_checkpoint(tmp_path / "warm" / "best.ckpt")
    first = member_params(*read_checkpoint(tmp_path / "ens.ckpt"))[0]
    name = next(n for n in first if "moving_" not in n and "weight" in n)
    np.testing.assert_allclose(warm_params[name].asnumpy(), first[name].asnumpy(), atol=1e-6)


def test_log10_target_round_trip(tmp_path):
    path = write_json_dataset(tmp_path / "positive.json", 32, target="modulus")
    records = json.loads(path.read_text())
    for r in records:  # spread over two decades
        r["modulus"] = 10 ** (r["modulus"] / 2.5)
    path.write_text(json.dumps(records))
    result = train_model(path, tmp_path / "log", config(target="modulus", unit="GPa", log10=True, epochs=3),
                         workers=1)
    assert all(np.isfinite(r["val_log10_mae"]) for r in result.history)
    net, card = load_model(tmp_path / "log" / "best.ckpt")
    dataset = load_dataset(path, "modulus", seed=0)
    train_y = np.array([e.target for e in dataset.split("train")])
    assert card.transform.log10 and card.unit == "GPa"
    assert card.transform.mean == pytest.approx(np.log10(train_y).mean())
    assert card.metrics["selection_metric"] == "log10_mae" and "log10_mae" in card.metrics
    val = dataset.split("val")
    structures = [Structure.from_dict(e.source) for e in val]
    rows = predict(structures, model=str(tmp_path / "log" / "best.ckpt"), workers=0)
    values = np.array([row["best"] for row in rows])  # column named after the file
    raw = predict_graphs(net, [graph_of(s) for s in structures])
    np.testing.assert_allclose(values, 10 ** (raw * card.transform.std + card.transform.mean), rtol=1e-5)
    assert (values > 0).all()
    y = np.array([e.target for e in val])
    assert np.mean(np.abs(values - y)) == pytest.approx(card.metrics["mae"], rel=1e-4)  # physical units
    assert np.mean(np.abs(np.log10(values) - np.log10(y))) == pytest.approx(card.metrics["log10_mae"], rel=1e-4)
    metrics = evaluate_model(str(tmp_path / "log" / "best.ckpt"), path)
    assert metrics["log10_mae"] == pytest.approx(card.metrics["log10_mae"], rel=1e-4)


def test_log10_refuses_non_positive_targets(tmp_path):
    path = write_json_dataset(tmp_path / "signed.json", 16)
    records = json.loads(path.read_text())
    records[0]["y"] = -1.0
    path.write_text(json.dumps(records))
    with pytest.raises(TrainingError, match="positive"):
        train_model(path, tmp_path / "run", config(log10=True, epochs=1), workers=1)


def test_patience_stops_a_run_that_does_not_improve(data, tmp_path):
    result = train_model(data, tmp_path / "flat", config(epochs=20, lr=0.0, schedule="constant", patience=2),
                         workers=1)
    assert result.stopped_because == "no improvement for 2 epochs"
    # lr 0: only batch-norm running statistics move, so the score settles within a few epochs
    assert result.epochs_done == result.best_epoch + 2 < 20
    assert [r["best"] for r in result.history[-2:]] == [False, False]
    assert all(r["val_mae"] >= result.best_val_mae for r in result.history)
    resumed = train_model(data, tmp_path / "flat", config(epochs=20, lr=0.0, schedule="constant", patience=2),
                          workers=1, resume=True)
    assert resumed.stopped_because == result.stopped_because and resumed.epochs_done == result.epochs_done
    assert len(read_history(tmp_path / "flat")) == result.epochs_done  # no epoch trained beyond the stop
    # with other settings (here the lr) the patience starts afresh: it said "changed: lr" and trained nothing (hunt17 10)
    changed = train_model(data, tmp_path / "flat", config(epochs=20, lr=1e-4, schedule="constant", patience=2),
                          workers=1, resume=True)
    assert changed.epochs_done >= result.epochs_done + 2


# --- guards ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_run(data, tmp_path_factory):
    """A run whose learning rate explodes in epoch 2."""
    run_dir = tmp_path_factory.mktemp("nan")
    normal = trainer_module.learning_rate

    def exploding(schedule, step, *args):
        return 1e30 if step >= STEPS_PER_EPOCH else normal(schedule, step, *args)

    trainer_module.learning_rate = exploding
    try:
        with pytest.raises(TrainingError) as info:
            train_model(data, run_dir, config(epochs=3), workers=1)
    finally:
        trainer_module.learning_rate = normal
    return info.value, run_dir


def test_nan_loss_stops_with_the_step(nan_run):
    error, run_dir = nan_run
    message = str(error)
    assert "epoch 2" in message and "step" in message and str(run_dir) in message
    assert "nan" in message.lower() or "inf" in message.lower()
    assert not (run_dir / ".lock").exists()
    rows = read_history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1]
    net, card = load_model(run_dir / "best.ckpt")  # the epoch-1 model is intact
    assert np.isfinite([p.asnumpy() for p in net.get_parameters()][0]).all()
    assert card.training["epochs"] == 1


def test_nan_loss_keeps_a_resumable_last_checkpoint(nan_run, data):
    _, run_dir = nan_run
    params = ms.load_checkpoint(str(run_dir / "last.ckpt"))
    params.pop(STATE_KEY)
    bad = [name for name, value in params.items()
           if hasattr(value, "asnumpy") and not np.isfinite(value.asnumpy()).all()]
    assert bad == []
    result = train_model(data, run_dir, config(epochs=3, lr=1e-3), workers=1, resume=True)
    assert result.epochs_done == 3


def test_lock_refuses_a_second_trainer(data, tmp_path):
    run_dir = tmp_path / "locked"
    dataset = load_dataset(data, "y", seed=0)
    graphs = [graph_of(Structure.from_dict(e.source)) for e in dataset.entries]
    train = ([g for g, e in zip(graphs, dataset.entries) if e.split == "train"],
             np.array([e.target for e in dataset.split("train")]))
    val = ([g for g, e in zip(graphs, dataset.entries) if e.split == "val"],
           np.array([e.target for e in dataset.split("val")]))
    refusals = []

    def start_second(kind, info):
        if kind == "start":
            assert (run_dir / ".lock").read_text() == str(os.getpid())
            try:
                Trainer(config(epochs=1), run_dir, train, val).run()
            except TrainingError as exc:
                refusals.append(str(exc))

    result = Trainer(config(epochs=1), run_dir, train, val, on_event=start_second).run()
    assert result.epochs_done == 1
    assert len(refusals) == 1 and "another training" in refusals[0] and str(run_dir) in refusals[0]
    assert not (run_dir / ".lock").exists()

    # a lock left by a process that is gone is taken over
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / ".lock").write_text(str(dead.pid))
    with pytest.raises(TrainingError, match="nothing to resume"):  # got past the lock, failed inside it
        Trainer(config(epochs=1), stale, train, val).run(resume=True)
    assert not (stale / ".lock").exists()


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``crystalprop train`` on 40 good records, one with a bad target and one unreadable structure."""
    folder = tmp_path_factory.mktemp("cli")
    path = write_json_dataset(folder / "data.json", N_DATA)
    records = json.loads(path.read_text())
    records.append({"id": "bad-target", "structure": records[0]["structure"], "y": "n/a"})
    records.append({"id": "garbage", "structure": "not a structure\nat all\n", "y": 1.0})
    path.write_text(json.dumps(records))
    run_dir = folder / "run"
    args = ["train", path, "--target", "y", "-o", run_dir, "--epochs", "2", "--batch-size", "8", "--cell", "as-given",
            *TINY_CLI]
    done = run_cli(args, cwd=folder)
    return done, args, path, run_dir, records


def test_cli_train(cli_run):
    done, args, path, run_dir, _ = cli_run
    assert done.returncode == 0, done.stderr
    for name in ("best.ckpt", "last.ckpt", "history.csv", "skipped.log"):
        assert (run_dir / name).is_file(), name
    assert len(read_history(run_dir)) == 2
    skipped = (run_dir / "skipped.log").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == ["bad-target", "garbage"]
    assert "best validation MAE" in done.stderr
    card, _ = read_checkpoint(run_dir / "best.ckpt")
    assert card.target == "y" and card.model == ModelConfig(**TINY) and card.graph.cell == "as-given"
    assert card.training["data"]["n_skipped"] == 2 and card.training["data"]["n_train"] == 36
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.json", "run"]  # no litter in the cwd


def test_cli_train_refuses_to_overwrite_a_run(cli_run, tmp_path):
    _, args, path, run_dir, _ = cli_run
    before = (run_dir / "last.ckpt").read_bytes()
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 2
    assert "--resume" in again.stderr and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (run_dir / "last.ckpt").read_bytes() == before and len(read_history(run_dir)) == 2


def _check_evaluation(ev_dir: Path, records: list[dict], n: int) -> dict:
    for name in ("predictions.csv", "metrics.json", "parity.png", "error_histogram.png"):
        assert (ev_dir / name).is_file() and (ev_dir / name).stat().st_size > 0, name
    assert (ev_dir / "parity.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((ev_dir / "metrics.json").read_text())
    assert {"mae", "rmse", "r2", "max_error", "n"} <= set(metrics)
    assert metrics["n"] == n and metrics["n_failed"] == 1 and metrics["split"] == "all"
    with open(ev_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == n and "garbage" not in {r["id"] for r in rows}
    errors = np.array([float(r["predicted"]) - float(r["true"]) for r in rows])
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-4)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-4)
    assert metrics["max_error"] == pytest.approx(np.max(np.abs(errors)), rel=1e-4)
    truth = {r["id"]: synthetic_target(Structure.from_dict(r["structure"])) for r in records[:N_DATA]}
    assert all(float(r["true"]) == pytest.approx(truth[r["id"]], rel=1e-5) for r in rows)
    return metrics


def test_cli_evaluate_writes_reports(cli_run, random_ckpt, tmp_path):
    _, _, path, _, records = cli_run
    ev_dir = tmp_path / "ev"
    evaluated = run_cli(["evaluate", random_ckpt, path, "--split", "all", "-o", ev_dir], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = _check_evaluation(ev_dir, records, N_DATA)
    assert metrics["model"] == "rand" and metrics["unit"] == "eV"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]


def test_a_runs_last_checkpoint_given_as_a_model_points_to_best(cli_run):
    run_dir = cli_run[3]
    with pytest.raises(CheckpointError, match="best.ckpt") as caught:
        read_checkpoint(run_dir / "last.ckpt", arrays=True)
    assert "training state" in str(caught.value)


def test_cli_evaluate_trained_model(cli_run, tmp_path):
    _, _, path, run_dir, records = cli_run
    ev_dir = tmp_path / "ev"
    evaluated = run_cli(["evaluate", run_dir / "best.ckpt", path, "--split", "all", "-o", ev_dir], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert _check_evaluation(ev_dir, records, N_DATA)["cell"] == "as-given"  # the model's own setting
    again = run_cli(["evaluate", run_dir / "best.ckpt", path, "--split", "all", "-o", ev_dir, "--cell", "canonical",
                     "--overwrite"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _check_evaluation(ev_dir, records, N_DATA)["cell"] == "canonical"


@pytest.mark.slow
def test_resume_keeps_the_cells_the_run_was_trained_on(tmp_path):
    path = write_json_dataset(tmp_path / "data.json", 24)
    run_dir = tmp_path / "run"
    common = ["train", path, "--target", "y", "-o", run_dir, "--batch-size", "8", "--graph-workers", "1", *TINY_CLI]
    first = run_cli([*common, "--epochs", "1", "--cell", "as-given"])
    assert first.returncode == 0, first.stderr
    resumed = run_cli([*common, "--epochs", "2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    from crystalprop.model.checkpoint import read_checkpoint

    assert read_checkpoint(run_dir / "best.ckpt")[0].graph.cell == "as-given"
    other = run_cli([*common, "--epochs", "3", "--resume", "--cell", "canonical"])
    assert other.returncode != 0 and "--cell as-given" in " ".join((other.stdout + other.stderr).split())


@pytest.mark.slow
def test_resume_keeps_the_runs_own_settings_unless_given_again_and_says_what_changed(tmp_path):
    """`train --resume` without --epochs continued a 1-epoch run to the default 30 epochs with the
    default lr and seed, silently; a resumed run now keeps what it was started with."""
    from crystalprop.model.checkpoint import read_checkpoint

    path = write_json_dataset(tmp_path / "data.json", 24)
    run_dir = tmp_path / "run"
    common = ["train", path, "-o", run_dir, "--graph-workers", "1"]
    first = run_cli([*common, "--target", "y", "--epochs", "1", "--lr", "2e-3", "--seed", "3", "--batch-size", "8",
                     "--loss", "l1", "--ema", "0.9", *TINY_CLI])
    assert first.returncode == 0, first.stderr
    again = run_cli([*common, "--resume"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(read_history(run_dir)) == 1 and "changed" not in again.stdout + again.stderr
    longer = run_cli([*common, "--resume", "--epochs", "2"])
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "changed: epochs 1 -> 2" in longer.stdout + longer.stderr
    config = read_checkpoint(run_dir / "best.ckpt")[0].training["config"]
    assert (config["epochs"], config["lr"], config["seed"], config["batch_size"], config["loss"], config["ema"]) == \
        (2, 2e-3, 3, 8, "l1", 0.9)
    assert config["model"]["features"] == 8 and len(read_history(run_dir)) == 2


def test_resume_keeps_the_runs_limit(tmp_path):
    """A run started with --limit and resumed without it went on over all the data (another training set
    and another schedule, mid-run)."""
    from crystalprop.model.checkpoint import read_checkpoint

    path = write_json_dataset(tmp_path / "data.json", 40)
    run_dir = tmp_path / "run"
    common = ["train", path, "-o", run_dir, "--graph-workers", "1"]
    first = run_cli([*common, "--target", "y", "--epochs", "1", "--batch-size", "8", "--limit", "16", *TINY_CLI])
    assert first.returncode == 0, first.stderr
    assert read_checkpoint(run_dir / "best.ckpt")[0].training["data"]["n_train"] == 16
    longer = run_cli([*common, "--resume", "--epochs", "2"])
    assert longer.returncode == 0, longer.stdout + longer.stderr
    said = longer.stdout + longer.stderr
    assert "16 train, 2 val" in said and "epoch 2/2 step 2/2" in said and "step 3/" not in said
    assert len(read_history(run_dir)) == 2


@pytest.mark.slow
def test_a_run_without_validation_structures_says_what_it_selects_by(tmp_path):
    """With no validation split the training loss was reported as the 'best validation MAE', and an
    ensemble trained every member before it found it had nothing to calibrate σ on."""
    path = write_json_dataset(tmp_path / "data.json", 16)
    common = ["train", path, "-t", "y", "--val-fraction", "0", "--epochs", "1", "--batch-size", "8",
              "--graph-workers", "1", *TINY_CLI]
    done = run_cli([*common, "-o", tmp_path / "run"])
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "no validation structures" in said and "best training loss" in said
    assert "best validation MAE" not in said
    ensemble = run_cli([*common, "-o", tmp_path / "ens", "--ensemble", "2"])
    assert ensemble.returncode == 2 and "no validation structures" in ensemble.stdout + ensemble.stderr
    assert not (tmp_path / "ens" / "member0" / "last.ckpt").exists()
    few = run_cli([*[a if a != "0" else "0.2" for a in common], "-o", tmp_path / "few", "--ensemble", "2"])
    said = " ".join((few.stdout + few.stderr).split())  # 3 in val: σ could not be calibrated after the training
    assert few.returncode == 2 and "3 validation structures" in said and "at least 10 are needed" in said, said
    assert not (tmp_path / "few" / "member0" / "last.ckpt").exists()


@pytest.mark.parametrize("bad, says", [
    (dict(loss="mae"), "loss"), (dict(schedule="linear"), "schedule"), (dict(batch_size=0), "batch"),
    (dict(epochs=0), "epochs"), (dict(max_time_s="1m"), "max_time_s"), (dict(val_fraction=-0.1), "fraction"),
    (dict(val_fraction=0.6, test_fraction=0.5), "fraction"), (dict(fold="1/5"), "fold"),
    # were accepted: limit 0 trained on everything, -5 on all but 5; layers 0 saved a model without layers;
    # ensemble 0 ended in an IndexError, a negative lr or features 0 in MindSpore's errors after the folder was made
    (dict(limit=0), "limit"), (dict(limit=-5), "limit"), (dict(layers=0), "layers"), (dict(ensemble=0), "ensemble"),
    (dict(lr=-1e-3), "lr"), (dict(weight_decay=-1.0), "weight_decay"), (dict(features=0), "features"),
    # an ensemble trained every member before its unknown sigma was refused at joining; an unknown cell made
    # the folder and imported MindSpore first
    (dict(ensemble=2, sigma="latent+sprd"), "sigma"), (dict(cell="primitive"), "cell"),
])
def test_the_api_refuses_bad_settings_before_any_work(data, tmp_path, bad, says):
    """crystalprop.train(loss='mae') ended in a KeyError, batch_size=0 in a ZeroDivisionError, and
    max_time_s='1m' in a TypeError that left a last.ckpt behind."""
    import crystalprop

    with pytest.raises(ValueError, match=says):
        crystalprop.train(data, tmp_path / "run", target="y", **bad)
    assert not (tmp_path / "run").exists()


def test_an_unknown_start_is_refused_before_the_run_folder_is_made(data, tmp_path):
    """train --init-from no_such_model left an empty run folder behind its error (session 37)."""
    import crystalprop
    from crystalprop.model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no_such_model"):
        crystalprop.train(data, tmp_path / "run", target="y", init_from="no_such_model")
    assert not (tmp_path / "run").exists()


# --- the Python API in a fresh process ------------------------------------------------------------
#
# Regression: MindSpore 2.10 starts in PyNative mode, where the learning rate a step sets on the
# optimizer did not reach it: train_model called without set_device first trained every step at
# the first rate it saw (a 2- and a 12-epoch one-cycle run had the same first epochs).

FRESH_TRAINING = """
import json, sys
from crystalprop.model.matformer import ModelConfig
from crystalprop.training.config import TrainConfig
from crystalprop.training.run import train_model
data, run_dir, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = TrainConfig(target="y", epochs=epochs, batch_size=8, lr=5e-3, seed=0,
                     model=ModelConfig(**json.loads(sys.argv[4])))
result = train_model(data, run_dir, config, workers=0)
print(json.dumps([row["train_loss"] for row in result.history]))
"""


def test_the_python_api_follows_the_schedule_without_set_device(data, tmp_path):
    losses = {}
    for epochs in (2, 12):
        done = subprocess.run([sys.executable, "-c", FRESH_TRAINING, str(data), str(tmp_path / f"run{epochs}"),
                               str(epochs), json.dumps(TINY)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        losses[epochs] = json.loads(done.stdout.strip().splitlines()[-1])
    # in its first epoch a 2-epoch one-cycle run climbs to its 5e-3 peak, a 12-epoch run to a third of it
    assert losses[2][0] != pytest.approx(losses[12][0], rel=1e-3)


UNGUARDED_SCRIPT = """
import sys
import crystalprop
print("SCRIPT START", flush=True)
result = crystalprop.train(sys.argv[1], sys.argv[2], target="y", epochs=1, batch_size=8, layers=1, features=8,
                           heads=1, fc_features=8, graph_workers=1, threads=1, isolate=True)
print("DONE", result["stopped_because"], flush=True)
"""


@pytest.mark.slow
def test_isolated_training_does_not_run_the_callers_script_again(data, tmp_path):
    """train(isolate=True) from a script without an `if __name__ == "__main__":` guard ran the whole
    script again in the training process, which then failed (or trained a second run)."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("SCRIPT START") == 1 and "DONE finished" in done.stdout


def test_train_tells_split_json_ids_that_match_no_record(tmp_path):
    """A misspelt id in split.json's val list left its structure in training without a word."""
    path = write_json_dataset(tmp_path / "data.json", 16)
    names = [r["id"] for r in json.loads(path.read_text())]
    (tmp_path / "split.json").write_text(json.dumps({"train": names[:12], "val": names[12:14] + ["mp-0.cif"]}))
    done = run_cli(["train", path, "-t", "y", "-o", tmp_path / "run", "--epochs", "1", "--batch-size", "8",
                    "--graph-workers", "1", *TINY_CLI])
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "1 val id(s) match no record of the data (e.g. mp-0.cif)" in said
    assert read_checkpoint(tmp_path / "run" / "best.ckpt")[0].training["data"]["notes"] == [
        f"{tmp_path / 'split.json'}: 1 val id(s) match no record of the data (e.g. mp-0.cif)"]


def test_the_last_line_points_to_the_skipped_records(tmp_path):
    path = write_json_dataset(tmp_path / "data.json", 16)
    records = json.loads(path.read_text())
    records[3]["y"] = "n/a"
    path.write_text(json.dumps(records))
    done = run_cli(["train", path, "-t", "y", "-o", tmp_path / "run", "--epochs", "1", "--batch-size", "8",
                    "--graph-workers", "1", *TINY_CLI])
    assert done.returncode == 0, done.stdout + done.stderr
    last = " ".join((done.stdout + done.stderr).split()).rsplit("finished", 1)[1]
    assert "skipped.log: 1 record" in last


def test_a_log_file_gets_no_left_over_progress_bar(tmp_path):
    """Was: with standard error in a file, each epoch's bar was printed once more at its end, reading
    'epoch 1/1   0/2 loss ...' after the epoch was done."""
    path = write_json_dataset(tmp_path / "data.json", 16)
    done = run_cli(["train", path, "-t", "y", "-o", tmp_path / "run", "--epochs", "1", "--batch-size", "8",
                    "--graph-workers", "1", *TINY_CLI])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert any(line.startswith("epoch 1:") for line in lines)
    assert not [line for line in lines if re.match(r"\s*(epoch \d+/\d+|building graphs)\s.*━|^epoch \d+/\d+\s+\d+/\d+ loss", line)]


def test_init_from_the_same_target_in_another_unit_is_not_read_as_the_same(run_a, tmp_path):
    """A band gap in meV from the shipped band_gap (eV) was 'the same target': its eV values, re-expressed as if
    they were meV, started every prediction about 1000 times too small, and nothing was said (hunt14 4)."""
    _, run_dir, _ = run_a
    records = json.loads(write_json_dataset(tmp_path / "all.json", 8).read_text())
    graphs = [graph_of(Structure.from_dict(r["structure"])) for r in records]
    y = 1000.0 * np.array([r["y"] for r in records])
    events = []
    trainer = Trainer(config(unit="meV"), tmp_path / "mev", (graphs, y), (graphs[:4], y[:4]),
                      on_event=lambda kind, info: events.append((kind, info)))
    trainer._setup(False, run_dir / "best.ckpt")
    event = dict(events)["init_from"]
    assert not event["same_target"] and event["units"] == ["eV", "meV"]
    assert "elements" not in trainer.prior_training


def test_a_fine_tune_of_the_same_target_without_unit_keeps_its_starts_unit(run_a, tmp_path):
    """A fine-tune of the same target without --unit wrote a model whose card had no unit (its start's eV
    lost), so predict's column and evaluate's figures named none (hunt14 11). The start's unit is kept, and
    said; --unit given keeps its own (another unit is another target: test above)."""
    _, run_dir, _ = run_a
    records = json.loads(write_json_dataset(tmp_path / "all.json", 8).read_text())
    graphs = [graph_of(Structure.from_dict(r["structure"])) for r in records]
    y = np.array([r["y"] for r in records])
    events = []
    trainer = Trainer(config(unit=""), tmp_path / "tuned", (graphs, y), (graphs[:4], y[:4]),
                      on_event=lambda kind, info: events.append((kind, info)))
    trainer._setup(False, run_dir / "best.ckpt")
    event = dict(events)["init_from"]
    assert event["same_target"] and event["unit_from_start"] == "eV"
    assert trainer.config.unit == "eV" and trainer._card(trainer._transform(), {}, 0.0, 0.0).unit == "eV"


def test_a_fine_tune_of_the_same_target_keeps_its_starts_floors(run_a, tmp_path):
    """`train ... --init-from band_gap` without --floor 0 dropped the shipped model's floor: the fine-tune
    predicted Cu's gap at -0.86 eV and scored its start unfloored (hunt17 1); formation_energy's element floor
    went the same way. A same-target start's floors are kept where none is given, and said."""
    from dataclasses import replace  # noqa: PLC0415

    from crystalprop.model.checkpoint import build_model, read_checkpoint, save_checkpoint  # noqa: PLC0415

    _, run_dir, _ = run_a
    card, params = read_checkpoint(run_dir / "best.ckpt")
    start = tmp_path / "floored.ckpt"
    save_checkpoint(start, build_model(card, params, start), replace(
        card, transform=replace(card.transform, floor=-10.0, element_floor=0.0)))
    records = json.loads(write_json_dataset(tmp_path / "all.json", 8).read_text())
    graphs = [graph_of(Structure.from_dict(r["structure"])) for r in records]
    y = np.array([r["y"] for r in records])
    events = []
    trainer = Trainer(config(), tmp_path / "tuned", (graphs, y), (graphs[:4], y[:4]),
                      on_event=lambda kind, info: events.append((kind, info)))
    loop = trainer._setup(False, start)
    assert loop.transform.floor == -10.0 and loop.transform.element_floor == 0.0
    assert dict(events)["init_from"]["floors_from_start"] == {"floor": -10.0, "element_floor": 0.0}
    assert trainer._card(loop.transform, {}, 0.0, 0.0).transform.element_floor == 0.0
    own = Trainer(config(floor=-20.0), tmp_path / "own", (graphs, y), (graphs[:4], y[:4]))
    assert own._setup(False, start).transform.floor == -20.0  # given: its own
    high = tmp_path / "high.ckpt"  # a floor above some of this run's labels is not the data's: not kept (review 44)
    save_checkpoint(high, build_model(card, params, high), replace(
        card, transform=replace(card.transform, floor=float(np.median(y)))))
    assert Trainer(config(), tmp_path / "high", (graphs, y), (graphs[:4], y[:4]))._setup(False, high).transform.floor is None


def test_a_fine_tune_of_the_same_target_scores_its_start(run_a, tmp_path):
    """The weights a fine-tune starts from were never scored: a run whose every epoch was worse than its start
    reported its best epoch as if it had improved the model (hunt14 2)."""
    _, run_dir, _ = run_a
    records = json.loads(write_json_dataset(tmp_path / "all.json", 12).read_text())
    graphs = [graph_of(Structure.from_dict(r["structure"])) for r in records]
    y = np.array([r["y"] for r in records])
    net, card = load_model(run_dir / "best.ckpt")
    expected = np.mean(np.abs(card.transform.physical(predict_graphs(net, graphs[8:])) - y[8:]))
    events = []
    trainer = Trainer(config(), tmp_path / "ft", (graphs[:8], y[:8]), (graphs[8:], y[8:]),
                      on_event=lambda kind, info: events.append((kind, info)))
    loop = trainer._setup(False, run_dir / "best.ckpt")
    assert loop.state["start_score"] == pytest.approx(expected, rel=1e-4)
    assert dict(events)["start_score"] == {"score": loop.state["start_score"], "key": "mae"}
    other = Trainer(config(target="z"), tmp_path / "other", (graphs[:8], y[:8]), (graphs[8:], y[8:]))
    assert "start_score" not in other._setup(False, run_dir / "best.ckpt").state  # another target: no such start


def test_a_resume_says_when_it_does_not_use_a_new_init_from(run_a, data, tmp_path):
    """`--resume --init-from band_gap` on a run of other beginnings said nothing of the --init-from it ignored
    (hunt14 10); the same start given again (a resumed command line) is no news."""
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    for name in ("last.ckpt", "best.ckpt", "history.csv"):
        (run_dir / name).write_bytes((run_a[1] / name).read_bytes())
    events = []
    train_model(data, run_dir, config(), workers=1, resume=True, init_from=run_a[1] / "best.ckpt",
                on_event=lambda kind, info: events.append((kind, info)))
    assert dict(events)["init_from_unused"] == {"given": str(run_a[1] / "best.ckpt"), "started": None}
    warm = tmp_path / "warm"
    train_model(data, warm, config(epochs=1), workers=1, init_from=run_a[1] / "best.ckpt")
    again = []
    train_model(data, warm, config(epochs=1), workers=1, resume=True, init_from=run_a[1] / "best.ckpt",
                on_event=lambda kind, info: again.append((kind, info)))
    assert "init_from_unused" not in dict(again)


def test_the_loop_says_it_is_stopping_after_the_signal(data, tmp_path):
    """The stop handler only flags the stop now (it could hang on the event queue's lock): the loop itself must
    still say it is stopping, and stop at that step (review 42)."""
    import signal

    events = []

    def on_event(kind, info):
        events.append(kind)
        if kind == "step" and info["step"] == 1 and info["epoch"] == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    result = train_model(data, tmp_path / "stopped", config(epochs=2), workers=1, on_event=on_event)
    assert result.stopped_because == "interrupted" and result.stop_signal == signal.SIGTERM
    assert events.count("stopping") == 1 and events[events.index("stopping") - 1] == "step"
    assert events.count("step") == 1


@pytest.mark.parametrize(("setting", "message"), [({"floor": float("nan")}, "floor nan"),
                                                  ({"element_floor": float("inf")}, "element_floor inf"),
                                                  ({"patience": -1}, "patience -1"), ({"patience": 0}, "patience 0")])
def test_settings_that_cannot_work_are_refused_before_any_work(data, tmp_path, setting, message):
    """`--element-floor inf` predicted inf for every one-element crystal, `--floor nan` ended with a false "no
    best.ckpt yet", `--patience -1` with "no improvement for -1 epochs" (hunt17 12)."""
    from crystalprop.training.jobs import train  # noqa: PLC0415

    with pytest.raises(ValueError, match=message):
        train(data, tmp_path / "run", epochs=1, threads=1, **setting)
    assert not (tmp_path / "run").exists()


def test_a_fold_without_validation_structures_is_refused(data):
    """`--fold 150/200` on 130 records trained a 'cross-validation fold' with no validation structures (hunt17 12)."""
    from crystalprop.data.datasets import DatasetError, assign_fold, load_dataset  # noqa: PLC0415

    dataset = load_dataset(data)
    with pytest.raises(DatasetError, match="no structures"):
        assign_fold(dataset, (len(dataset.entries) + 5, len(dataset.entries) + 10))


def test_the_data_line_counts_the_test_structures_held_out(data, tmp_path, monkeypatch):
    """Training printed '80 train, 30 val, 0 skipped' for data with 20 test structures: the test count was never
    shown (hunt17 14)."""
    import io  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    from crystalprop.training import progress  # noqa: PLC0415

    events = []
    train_model(data, tmp_path / "run", config(epochs=1), workers=1, test_fraction=0.25,
                on_event=lambda kind, info: events.append((kind, info)))
    described = dict(events)["data"]
    n = len(json.loads(Path(data).read_text()))
    assert described["n_test"] == round(0.25 * n) and described["n_train"] + described["n_val"] + described["n_test"] == n
    buffer = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buffer, width=200, color_system=None))
    progress.TrainDisplay().event("data", described)
    assert f"{described['n_val']} val, {described['n_test']} test (held out)," in buffer.getvalue()
