"""The training loss. --floor: a target at the floor (a metal's band gap of 0) is met by any prediction at or
below it, as the floored prediction that validation and users see; other targets keep their loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crystalprop.utils.backend import mindspore_module, set_device

set_device("CPU")
ms = mindspore_module()

from conftest import train_config, write_json_dataset  # noqa: E402
from crystalprop.model.checkpoint import TargetTransform  # noqa: E402
from crystalprop.training.run import train_model  # noqa: E402
from crystalprop.training.trainer import TrainingError, _LossNet, normalised_floor  # noqa: E402

FLOOR = -0.8  # the floor in network units
TARGETS = [FLOOR, FLOOR, 1.0]  # two metals, one gapped material
PREDICTED = [-1.5, -0.5, -1.5]  # metal below the floor, metal above it, gapped material below it


class _Fixed(ms.nn.Cell):
    """Stands for the network: returns its one parameter, whatever the graphs."""

    def __init__(self, values) -> None:
        super().__init__()
        self.value = ms.Parameter(ms.Tensor(np.array(values, np.float32)), name="value")

    def construct(self, *graphs):
        return self.value


def _loss_and_grad(loss: str, floor: float, weights=(1.0, 1.0, 1.0)):
    net = _LossNet(_Fixed(PREDICTED), loss)
    graphs = [ms.Tensor(np.zeros(1, np.float32))] * 8
    args = (*graphs, ms.Tensor(np.array(TARGETS, np.float32)), ms.Tensor(np.array(weights, np.float32)),
            ms.Tensor(1.0, ms.float32), ms.Tensor(floor, ms.float32))
    value, grad = ms.value_and_grad(net, grad_position=None, weights=net.trainable_params())(*args)
    return float(value.asnumpy()), grad[0].asnumpy()


def test_a_metal_predicted_below_the_floor_costs_nothing_and_pulls_nothing():
    value, grad = _loss_and_grad("l1", FLOOR)
    assert value == pytest.approx((0.0 + 0.3 + 2.5) / 3, rel=1e-5)
    np.testing.assert_allclose(grad, [0.0, 1 / 3, -1 / 3], rtol=1e-5)  # the gapped one is still pushed up


def test_mse_is_censored_the_same_way():
    value, _ = _loss_and_grad("mse", FLOOR)
    assert value == pytest.approx((0.0 + 0.09 + 6.25) / 3, rel=1e-5)


def test_without_a_floor_every_target_keeps_its_loss():
    value, grad = _loss_and_grad("l1", float("-inf"))
    assert value == pytest.approx((0.7 + 0.3 + 2.5) / 3, rel=1e-5)
    np.testing.assert_allclose(grad, [-1 / 3, 1 / 3, -1 / 3], rtol=1e-5)


def test_each_structures_loss_is_weighted():
    """--emphasize: each structure's loss (and its gradient) times its weight, then the mean."""
    value, grad = _loss_and_grad("l1", float("-inf"), weights=(0.5, 0.5, 2.0))
    assert value == pytest.approx((0.5 * 0.7 + 0.5 * 0.3 + 2.0 * 2.5) / 3, rel=1e-5)
    np.testing.assert_allclose(grad, [-0.5 / 3, 0.5 / 3, -2.0 / 3], rtol=1e-5)


def test_normalised_floor():
    transform = TargetTransform(mean=1.5, std=2.0, floor=0.0)
    assert normalised_floor(transform) == np.float32(-0.75)
    assert normalised_floor(TargetTransform(mean=1.5, std=2.0)) == -np.inf
    assert normalised_floor(TargetTransform(mean=1.0, std=0.5, log10=True, floor=0.0)) == -np.inf


def test_a_floor_above_some_targets_is_refused(tmp_path):
    data = write_json_dataset(tmp_path / "data.json", 20)
    with pytest.raises(TrainingError, match=r"--floor 1e\+06 is a lower bound, but \d+ targets lie below it"):
        train_model(data, tmp_path / "run", train_config(floor=1e6, epochs=1), workers=1)
    assert not (tmp_path / "run" / "last.ckpt").exists()


@pytest.mark.parametrize("option", ["log10", "floor"])
def test_a_label_log10_or_the_floor_cannot_take_is_refused_in_every_split(tmp_path, option):
    """Was: only training labels were checked; a validation label <= 0 with --log10 gave a NaN validation
    error every epoch, no best.ckpt, and a run reported as finished."""
    path = write_json_dataset(tmp_path / "data.json", 20)
    records = json.loads(path.read_text())
    records[3]["y"] = 0.0 if option == "log10" else -2.0
    path.write_text(json.dumps(records))
    (tmp_path / "split.json").write_text(json.dumps({"val": [records[3]["id"], records[4]["id"]]}))
    config = train_config(epochs=1, **({"log10": True} if option == "log10" else {"floor": -1.0}))
    if option == "log10":
        for record in records:
            record["y"] = abs(record["y"]) + 0.5 if record is not records[3] else 0.0
        path.write_text(json.dumps(records))
    with pytest.raises(TrainingError) as refused:
        train_model(path, tmp_path / "run", config, workers=1)
    assert records[3]["id"] in str(refused.value) and f"--{option}" in str(refused.value)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_labels_left_out_by_limit_are_not_checked(tmp_path):
    """Was: the labels were checked before --limit cut the data, so a label the run would never
    see refused a quick --limit trial."""
    path = write_json_dataset(tmp_path / "data.json", 20)
    records = json.loads(path.read_text())
    for record in records:
        record["y"] = abs(record["y"]) + 0.5
    records[-1]["y"] = 0.0
    path.write_text(json.dumps(records))
    ids = [r["id"] for r in records]
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:-2], "val": ids[-2:-1] + ids[:0], "test": ids[-1:]}))
    result = train_model(path, tmp_path / "run", train_config(epochs=1, log10=True), workers=1, limit=8)
    assert (tmp_path / "run" / "best.ckpt").exists() and result is not None
    with pytest.raises(TrainingError, match=records[-1]["id"]):
        train_model(path, tmp_path / "full", train_config(epochs=1, log10=True), workers=1)
