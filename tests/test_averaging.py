"""The moving average of the weights (``--ema``): its arithmetic, what a run validates and keeps, resume."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_CLI, run_cli, train_state, train_stopped_mid_epoch, write_json_dataset
from conftest import train_config as config
from crystalprop.utils.backend import mindspore_module, set_device

set_device("CPU")
ms = mindspore_module()

from crystalprop.model.checkpoint import load_model, read_checkpoint  # noqa: E402
from crystalprop.training.averaging import AVERAGE_PREFIX, SavedAverage, WeightAverage, saved_average  # noqa: E402
from crystalprop.training.run import train_model  # noqa: E402


def _dense(value: float):
    net = ms.nn.Dense(3, 2)
    for _, param in net.parameters_and_names():
        param.set_data(ms.Tensor(np.full(param.shape, value, np.float32)))
    return net


def _values(net) -> dict[str, np.ndarray]:
    return {name: p.asnumpy().copy() for name, p in net.parameters_and_names()}


def _set(net, value: float) -> None:
    for _, param in net.parameters_and_names():
        param.set_data(ms.Tensor(np.full(param.shape, value, np.float32)))


def test_update_averages_the_steps_taken_not_the_starting_weights():
    """The first step's weights are the whole average: the starting weights (another task's, or random
    ones) never enter it, so a short run with --ema 0.999 keeps what it learnt."""
    net = _dense(1.0)
    average = WeightAverage(net, 0.75)
    _set(net, 5.0)
    average.update()
    assert all(np.allclose(a, 5.0) for a in average.average.values())
    _set(net, 9.0)
    average.update()  # weights 0.75 * 0.25 for the first step, 0.25 for the second
    assert all(np.allclose(a, (0.1875 * 5 + 0.25 * 9) / 0.4375) for a in average.average.values())
    assert average.updates == 2


def test_update_moves_a_long_average_by_one_minus_decay():
    net = _dense(1.0)
    average = WeightAverage(net, 0.75)
    for _ in range(200):
        average.update()  # all at 1.0
    _set(net, 5.0)
    average.update()  # 0.75 * 1 + 0.25 * 5
    assert all(np.allclose(a, 2.0) for a in average.average.values())


def test_an_average_saved_without_its_count_is_taken_as_long():
    """last.ckpt files written before the count was kept resume as they did: by 1 - decay per step."""
    net = _dense(1.0)
    average = WeightAverage(net, 0.75, saved=SavedAverage(_values(net), updates=None))
    _set(net, 5.0)
    average.update()
    assert all(np.allclose(a, 2.0) for a in average.average.values())


def test_applied_swaps_the_average_in_and_the_own_weights_back():
    net = _dense(1.0)
    threes = {name: np.full(v.shape, 3.0) for name, v in _values(net).items()}
    average = WeightAverage(net, 0.5, saved=SavedAverage(threes, 4))
    with average.applied():
        assert all(np.allclose(v, 3.0) for v in _values(net).values())
    assert all(np.allclose(v, 1.0) for v in _values(net).values())
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError("validation failed")
    assert all(np.allclose(v, 1.0) for v in _values(net).values())  # restored on an error too


def test_saved_average_round_trip_and_refusals():
    net = _dense(2.0)
    average = WeightAverage(net, 0.9)
    for _ in range(3):
        average.update()
    params = {"other": ms.Tensor(np.zeros(1, np.float32)), **average.tensors()}
    restored = saved_average(params)
    assert list(params) == ["other"]  # the average and its count are taken out, the rest left
    assert restored.updates == 3
    assert set(restored.weights) == set(_values(net)) and all(np.allclose(v, 2.0) for v in restored.weights.values())
    assert WeightAverage(net, 0.9, restored).updates == 3
    assert saved_average({"other": 1}) is None
    with pytest.raises(ValueError, match="lacks 1 parameters"):
        WeightAverage(net, 0.9, saved=SavedAverage({"weight": restored.weights["weight"]}, 3))
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            WeightAverage(net, decay)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_json_dataset(tmp_path_factory.mktemp("data") / "data.json", 40)


@pytest.fixture(scope="module")
def averaged_run(data, tmp_path_factory):
    """4 uninterrupted epochs with --ema 0.8."""
    run_dir = tmp_path_factory.mktemp("ema_a")
    return train_model(data, run_dir, config(ema=0.8), workers=1), run_dir


@pytest.mark.slow
def test_best_checkpoint_holds_the_average_it_was_validated_with(averaged_run, data):
    result, run_dir = averaged_run
    net, card = load_model(run_dir / "best.ckpt")
    assert card.training["config"]["ema"] == 0.8
    # the weights kept are those validated: evaluating best.ckpt gives the recorded validation MAE
    from crystalprop.evaluation.evaluate import evaluate_model

    report = evaluate_model(run_dir / "best.ckpt", data, split="val")
    assert report["mae"] == pytest.approx(result.best_val_mae, rel=1e-4)
    # and they are the average, not the trained weights: last.ckpt holds both, and they differ
    raw = ms.load_checkpoint(str(run_dir / "last.ckpt"))
    average = saved_average(raw).weights
    assert not any(k.startswith(AVERAGE_PREFIX) for k in raw)
    name = "fc_out.weight"
    assert not np.allclose(average[name], raw[f"net.{name}"].asnumpy())
    if result.best_epoch == result.epochs_done:
        _, best = read_checkpoint(run_dir / "best.ckpt", arrays=True)
        np.testing.assert_allclose(best[name], average[name], rtol=1e-6)


@pytest.mark.slow
def test_without_ema_the_run_validates_its_own_weights(averaged_run, data, tmp_path):
    plain = train_model(data, tmp_path / "plain", config(), workers=1)
    averaged, _ = averaged_run
    assert [r["train_loss"] for r in plain.history] == pytest.approx([r["train_loss"] for r in averaged.history],
                                                                     rel=1e-5)  # same training
    assert [r["val_mae"] for r in plain.history] != pytest.approx([r["val_mae"] for r in averaged.history],
                                                                  rel=1e-3)  # other weights validated
    assert saved_average(ms.load_checkpoint(str(tmp_path / "plain" / "last.ckpt"))) is None


@pytest.mark.slow
def test_resume_mid_epoch_continues_the_average(averaged_run, data, tmp_path):
    """Stopped after step 2 of epoch 3 and resumed: the same validation curve as the uninterrupted run,
    which needs the average saved with last.ckpt (restarting it from the weights gives another curve)."""
    run_dir = tmp_path / "ema_b"
    first = train_stopped_mid_epoch(data, run_dir, config(ema=0.8))
    assert first.stopped_because == "interrupted" and train_state(run_dir / "last.ckpt")["state"]["epoch"] == 2
    second = train_model(data, run_dir, config(ema=0.8), workers=1, resume=True)
    reference, _ = averaged_run
    np.testing.assert_allclose([r["val_mae"] for r in second.history], [r["val_mae"] for r in reference.history],
                               rtol=1e-4)


@pytest.mark.slow
def test_cli_ema_option(data, tmp_path):
    bad = run_cli(["train", str(data), "-o", str(tmp_path / "bad"), "--epochs", "1", "--ema", "1.5", *TINY_CLI])
    assert bad.returncode != 0 and "between 0 and 1" in bad.stderr + bad.stdout
    assert not (tmp_path / "bad" / "last.ckpt").exists()
    good = run_cli(["train", str(data), "-o", str(tmp_path / "good"), "--epochs", "1", "--batch-size", "8",
                    "--ema", "0.9", *TINY_CLI])
    assert good.returncode == 0, good.stderr
    assert read_checkpoint(tmp_path / "good" / "best.ckpt")[0].training["config"]["ema"] == 0.9



@pytest.mark.slow
def test_a_warm_start_shorter_than_the_average_is_not_its_starting_point(averaged_run, data, tmp_path):
    """--init-from and --ema 0.999 for one epoch of 5 steps: the average is of those steps, so it lies
    about as far from the starting weights as the trained ones; it used to be 99.5 % the starting weights."""
    _, first_dir = averaged_run
    _, start = read_checkpoint(first_dir / "best.ckpt", arrays=True)
    train_model(data, tmp_path / "warm", config(ema=0.999, epochs=1), workers=1, init_from=first_dir / "best.ckpt")
    _, kept = read_checkpoint(tmp_path / "warm" / "best.ckpt", arrays=True)
    raw = ms.load_checkpoint(str(tmp_path / "warm" / "last.ckpt"))
    name = "fc_out.weight"
    moved, trained = np.abs(kept[name] - start[name]).sum(), np.abs(raw[f"net.{name}"].asnumpy() - start[name]).sum()
    assert trained > 0 and moved > 0.3 * trained
