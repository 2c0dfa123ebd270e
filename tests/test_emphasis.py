"""--emphasize: training targets in a range weigh more in the loss (band gaps of 0-1 eV, which an L1
loss pulls toward the metals and the wide gaps around them); the weighted loss itself: test_floor_loss.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crystalprop.utils.backend import set_device

set_device("CPU")

from conftest import run_cli, train_config, write_json_dataset  # noqa: E402
from crystalprop.model.checkpoint import read_checkpoint  # noqa: E402
from crystalprop.training.config import check_emphasis  # noqa: E402
from crystalprop.training.run import train_model  # noqa: E402
from crystalprop.training.trainer import TrainingError, sample_weights  # noqa: E402


def test_sample_weights_mark_the_range_and_average_one():
    targets = np.array([0.0, 0.5, 1.0, 1.5, 3.0])
    weights = sample_weights(targets, (0.0, 1.0, 3.0))
    np.testing.assert_allclose(weights, np.array([1, 3, 3, 1, 1]) / 1.8, rtol=1e-6)  # (low, high]: 0 is out, 1 in
    assert weights.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(sample_weights(targets, None), np.ones(5, np.float32))


@pytest.mark.parametrize(("emphasis", "why"), [((1.0, 0.0, 3.0), "LOW < HIGH"), ((0.0, 1.0, 0.0), "positive")])
def test_a_range_or_factor_that_means_nothing_is_refused(emphasis, why):
    with pytest.raises(ValueError, match=why):
        check_emphasis(emphasis)


def test_a_range_no_training_target_lies_in_is_refused(tmp_path):
    data = write_json_dataset(tmp_path / "data.json", 20)
    with pytest.raises(TrainingError, match=r"--emphasize 1000 2000 3: no training target lies in \(1000, 2000\]"):
        train_model(data, tmp_path / "run", train_config(epochs=1, emphasis=(1000.0, 2000.0, 3.0)), workers=1)


def test_the_weights_change_the_training_and_the_card_records_them(tmp_path):
    data = write_json_dataset(tmp_path / "data.json", 24)
    y = np.array([r["y"] for r in json.loads(data.read_text())])
    emphasis = (float(np.quantile(y, 0.2)), float(np.quantile(y, 0.6)), 10.0)
    plain = train_model(data, tmp_path / "plain", train_config(epochs=2), workers=1)
    weighted = train_model(data, tmp_path / "weighted", train_config(epochs=2, emphasis=emphasis), workers=1)
    assert weighted.best_val_mae != pytest.approx(plain.best_val_mae, rel=1e-6)
    card, _ = read_checkpoint(tmp_path / "weighted" / "best.ckpt")
    assert card.training["config"]["emphasis"] == list(emphasis)


def test_the_command_names_a_bad_range(tmp_path):
    data = write_json_dataset(tmp_path / "data.json", 10)
    done = run_cli(["train", data, "-o", tmp_path / "run", "--epochs", "1", "--emphasize", "1", "0", "3"])
    assert done.returncode != 0
    assert "--emphasize 1 0 3" in done.stderr and "LOW < HIGH" in done.stderr
    assert not (tmp_path / "run" / "last.ckpt").exists()
