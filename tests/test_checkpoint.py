"""Tests for crystalprop.model.checkpoint: round trip, refusal of bad files, atomic saves, transforms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, graph_of, make_structures
from crystalprop.utils.backend import mindspore_module, set_device

set_device("CPU")
ms = mindspore_module()

from crystalprop.graph import GraphSettings  # noqa: E402
from crystalprop.model.ckpt_arrays import read_arrays  # noqa: E402
from crystalprop.model.checkpoint import (  # noqa: E402
    METADATA_KEY,
    CheckpointError,
    ModelCard,
    TargetTransform,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from crystalprop.model.inference import predict_graphs  # noqa: E402
from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: E402


@pytest.fixture(scope="module")
def graphs():
    return [graph_of(s) for _, s in make_structures(6)]


def _net(seed: int = 0, **overrides) -> Matformer:
    ms.set_seed(seed)
    return Matformer(ModelConfig(**{**TINY, **overrides}))


def _card(net: Matformer, **kw) -> ModelCard:
    return ModelCard(target="y", unit="eV", model=net.config, **kw)


def test_round_trip_gives_identical_predictions(tmp_path, graphs):
    net = _net(3)
    card = _card(net, transform=TargetTransform(mean=0.7, std=2.5), metrics={"mae": 0.1}, elements=["Na", "Cl"],
                 training={"epochs": 4}, graph=GraphSettings(cutoff=7.0, max_neighbors=10), description="d")
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, net, card)
    before = predict_graphs(net, graphs)
    loaded, loaded_card = load_model(path)
    after = predict_graphs(loaded, graphs)
    np.testing.assert_array_equal(before, after)
    assert not loaded.training
    assert loaded_card.model == net.config
    assert loaded_card.graph == GraphSettings(cutoff=7.0, max_neighbors=10)
    assert loaded_card.transform == TargetTransform(mean=0.7, std=2.5)
    assert (loaded_card.target, loaded_card.unit, loaded_card.metrics, loaded_card.elements) == (
        "y", "eV", {"mae": 0.1}, ["Na", "Cl"])
    assert loaded_card.training == {"epochs": 4} and loaded_card.description == "d"
    # a differently seeded net really predicts differently (so the equality above means something)
    assert not np.allclose(predict_graphs(_net(4), graphs), before)


def test_save_leaves_no_temporary_files(tmp_path):
    net = _net()
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, net, _card(net))
    save_checkpoint(path, net, _card(net))  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch, graphs):
    net = _net(1)
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, net, _card(net))
    original = path.read_bytes()

    def broken(params, filename, append_dict=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, _net(2), _card(net))
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]
    load_model(path)


@pytest.fixture()
def good_bytes(tmp_path):
    net = _net()
    path = tmp_path / "good.ckpt"
    save_checkpoint(path, net, _card(net))
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "cut_tail", "random", "text", "empty"])
def test_corrupt_files_are_refused_naming_the_file(tmp_path, good_bytes, kind):
    content = {
        "truncated": good_bytes[: len(good_bytes) // 2],
        "cut_tail": good_bytes[:-7],
        "random": np.random.default_rng(0).bytes(5000),
        "text": b"data_NaCl\n_cell_length_a 5.64\nthis is not a checkpoint\n",
        "empty": b"",
    }[kind]
    path = tmp_path / f"broken-{kind}.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError) as fast:
        read_checkpoint(path, arrays=True)  # the predictor's reader refuses it the same way
    assert str(fast.value) == str(info.value)


def test_arrays_are_read_without_parameters_as_mindspore_reads_them(tmp_path):
    """``arrays=True`` reads the values itself (no MindSpore Parameter each), equal to MindSpore's loader's."""
    net = _net(5)
    path = tmp_path / "model.ckpt"
    extra = {"step": ms.Tensor(np.array(7, np.int32)), "half": ms.Tensor(np.arange(6, dtype=np.float16).reshape(2, 3)),
             "wide": ms.Tensor(np.linspace(0, 1, 5)), "flag": ms.Tensor(np.array([True, False]))}
    save_checkpoint(path, net, _card(net, description="é ✓"), extra=extra)
    assert read_arrays(path) is not None  # the file is read by crystalprop's reader, not MindSpore's loader
    card, params = read_checkpoint(path)
    fast_card, arrays = read_checkpoint(path, arrays=True)
    assert fast_card == card and fast_card.description == "é ✓" and arrays.keys() == params.keys()
    for name, value in arrays.items():
        assert isinstance(value, np.ndarray) and value.dtype == params[name].asnumpy().dtype, name
        np.testing.assert_array_equal(value, params[name].asnumpy(), err_msg=name)


def test_arrays_refuse_what_mindspores_loader_refuses(tmp_path):
    """A checkpoint under another file name is refused with arrays=True as without (MindSpore wants .ckpt)."""
    net = _net()
    save_checkpoint(tmp_path / "model.ckpt", net, _card(net))
    path = (tmp_path / "model.ckpt").rename(tmp_path / "model.weights")
    with pytest.raises(CheckpointError) as loader:
        read_checkpoint(path)
    with pytest.raises(CheckpointError) as fast:
        read_checkpoint(path, arrays=True)
    assert str(fast.value) == str(loader.value)


def test_arrays_of_a_file_in_slices_come_from_mindspores_loader(tmp_path):
    """A tensor stored in slices (consecutive entries of one name) is left to MindSpore's loader, which joins them."""
    from mindspore.train.checkpoint_pb2 import Checkpoint

    net = _net()
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, net, _card(net))
    message = Checkpoint()
    message.ParseFromString(path.read_bytes()[:-17] if path.read_bytes()[-17:-10] == b"crc_num" else path.read_bytes())
    for half in (np.arange(4, dtype=np.float32), np.arange(4, 8, dtype=np.float32)):
        entry = message.value.add(tag="sliced")
        entry.tensor.dims.extend([2, 4])
        entry.tensor.tensor_type = "Float32"
        entry.tensor.tensor_content = half.tobytes()
    path.write_bytes(message.SerializeToString())
    assert read_arrays(path) is None
    _, arrays = read_checkpoint(path, arrays=True)
    np.testing.assert_array_equal(arrays["sliced"], np.arange(8, dtype=np.float32).reshape(2, 4))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.ckpt")


def test_a_run_stopped_before_its_first_epoch_is_named_as_such(tmp_path):
    """`evaluate RUN` of a run stopped before any validated epoch said only 'no such checkpoint file'."""
    from crystalprop.model.registry import resolve_model

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").write_bytes(b"state")
    with pytest.raises(CheckpointError, match="no best.ckpt yet") as caught:
        resolve_model(tmp_path / "run")
    assert "--resume" in str(caught.value)


def test_an_ensemble_run_not_yet_joined_is_named_as_such(tmp_path):
    """`models runs/ens` of an `--ensemble` run stopped before its join said 'no such checkpoint file' (hunt17 14)."""
    from crystalprop.model.registry import resolve_model

    (tmp_path / "ens" / "member0").mkdir(parents=True)
    (tmp_path / "ens" / "ensemble.json").write_text('{"members": 3, "sigma": "spread"}\n')
    (tmp_path / "ens" / "member0" / "last.ckpt").write_bytes(b"state")
    with pytest.raises(CheckpointError, match="ensemble of 3 not joined yet") as caught:
        resolve_model(tmp_path / "ens")
    assert "--resume" in str(caught.value)


def test_a_shipped_name_is_the_shipped_model_even_beside_a_folder_of_that_name(shipped_dir, random_ckpt, tmp_path,
                                                                              monkeypatch):
    """A run folder `formation_energy/` in the working directory stood in for the shipped model, also in a
    plain `predict` of every shipped model: another model's numbers under the shipped name."""
    from crystalprop.model.registry import resolve_model

    monkeypatch.setenv("CRYSTALPROP_CHECKPOINTS", str(shipped_dir))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "formation_energy").mkdir()
    (tmp_path / "formation_energy" / "best.ckpt").write_bytes(random_ckpt.read_bytes())
    assert resolve_model("formation_energy")[1] == shipped_dir / "formation_energy.ckpt"
    assert resolve_model("./formation_energy")[1] == Path("formation_energy") / "best.ckpt"  # a path: the folder
    assert resolve_model(Path("formation_energy"))[1] == Path("formation_energy") / "best.ckpt"


def test_plain_mindspore_checkpoint_without_metadata(tmp_path):
    path = tmp_path / "plain.ckpt"
    ms.save_checkpoint(_net(), str(path))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value) and "metadata" in str(info.value)


def test_metadata_describing_another_architecture(tmp_path):
    net = _net()  # features 8
    path = tmp_path / "mismatch.ckpt"
    save_checkpoint(path, net, ModelCard(target="y", model=ModelConfig(**{**TINY, "features": 16})))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "shape" in message


def test_metadata_with_more_layers_than_weights(tmp_path):
    net = _net()
    path = tmp_path / "layers.ckpt"
    save_checkpoint(path, net, ModelCard(target="y", model=ModelConfig(**{**TINY, "layers": 2})))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value) and "missing" in str(info.value)


def test_damaged_and_newer_metadata(tmp_path):
    net = _net()
    params = [{"name": p.name, "data": p} for p in net.get_parameters()]
    damaged = tmp_path / "damaged.ckpt"
    ms.save_checkpoint(params, str(damaged), append_dict={METADATA_KEY: "{not json"})
    with pytest.raises(CheckpointError) as info:
        load_model(damaged)
    assert str(damaged) in str(info.value) and "metadata" in str(info.value)

    card = json.loads(_card(net).to_json())
    card.update(format=99, crystalprop_version="9.0")
    newer = tmp_path / "newer.ckpt"
    ms.save_checkpoint(params, str(newer), append_dict={METADATA_KEY: json.dumps(card)})
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(newer)
    assert str(newer) in str(info.value) and "newer" in str(info.value)


@pytest.mark.parametrize("log10", [False, True])
def test_target_transform_inverse(log10):
    rng = np.random.default_rng(1)
    y = rng.uniform(0.5, 300.0, 50)
    transform = TargetTransform(mean=float(np.log10(y).mean() if log10 else y.mean()),
                                std=float(np.log10(y).std() if log10 else y.std()), log10=log10)
    z = transform.normalise(y)
    assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std() == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(transform.physical(z), y, rtol=1e-12)
    np.testing.assert_allclose(transform.normalise(transform.physical(np.array([-2.0, 0.0, 3.0]))),
                               [-2.0, 0.0, 3.0], atol=1e-12)
    if log10:
        assert transform.physical(np.array([0.0])) == pytest.approx(10 ** transform.mean)
        assert (transform.physical(rng.normal(0, 3, 20)) > 0).all()
    else:
        assert transform.physical(np.array([1.0])) == pytest.approx(transform.mean + transform.std)


def test_floor_raises_predictions_below_a_physical_bound():
    transform = TargetTransform(mean=1.0, std=2.0, floor=0.0)
    np.testing.assert_allclose(transform.physical(np.array([-1.0, -0.5, 0.0, 1.0])), [0.0, 0.0, 1.0, 3.0])
    # without a floor the same outputs can go negative, and old cards (no floor field) still load
    assert TargetTransform(mean=1.0, std=2.0).physical(np.array([-1.0]))[0] == -1.0
    card = ModelCard(target="band_gap", unit="eV", transform=transform)
    raw = json.loads(card.to_json())
    assert ModelCard.from_json(json.dumps(raw)).transform.floor == 0.0
    del raw["transform"]["floor"]
    assert ModelCard.from_json(json.dumps(raw)).transform.floor is None


def test_card_json_round_trip():
    card = ModelCard(target="bulk", unit="GPa", model=ModelConfig(**TINY),
                     transform=TargetTransform(1.2, 0.3, True), metrics={"log10_mae": 0.05}, elements=["O"])
    again = ModelCard.from_json(card.to_json())
    assert again == card


def test_a_run_folder_given_as_dot_is_named_after_the_folder(random_ckpt, tmp_path, monkeypatch):
    """`predict ... -m .` inside a run folder wrote a result column with an empty name (pandas: 'Unnamed: 5',
    units {'': ''}), and `-m ..` one named '..' (hunt16 2)."""
    import shutil  # noqa: PLC0415

    from crystalprop.model.registry import resolve_model  # noqa: PLC0415

    run = tmp_path / "runs" / "cg"
    run.mkdir(parents=True)
    shutil.copy(random_ckpt, run / "best.ckpt")
    monkeypatch.chdir(run)
    assert resolve_model(".")[0] == "cg"
    (run / "sub").mkdir()
    monkeypatch.chdir(run / "sub")
    assert resolve_model("..")[0] == "cg"
    assert resolve_model("../")[0] == "cg"
