"""The stacked network (every member in one forward pass) against the Matformer run member by
member with the same weights, with the fused kernels and with MindSpore's ops."""

from __future__ import annotations

import numpy as np
import pytest

from crystals import hcp_mg, nacl_conventional, nacl_primitive, srtio3

from crystalprop.utils import backend

backend.set_device("CPU")
ms = backend.mindspore_module()

from conftest import graph_of, triclinic  # noqa: E402
from crystalprop.graph import GraphSettings, collate  # noqa: E402
from crystalprop.model import compile_cache, fused  # noqa: E402
from crystalprop.model.checkpoint import load_weights, on_one_graph, read_checkpoint  # noqa: E402
from crystalprop.model.ensemble import member_params  # noqa: E402
from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: E402
from crystalprop.model.folded import member_arrays  # noqa: E402
from crystalprop.model.stacked import StackedMatformer  # noqa: E402
from crystalprop.model.registry import checkpoints_dir  # noqa: E402

SMALL = ModelConfig(layers=2, features=16, heads=2, fc_features=16)
KERNELS = [False, pytest.param(True, marks=pytest.mark.skipif(fused.library() is None, reason="no C++ compiler"))]


def _random_members(config: ModelConfig, count: int, seed: int) -> list[dict]:
    """``count`` members of random weights, unit-scale outputs, random LayerNorm/BatchNorm parameters."""
    template = Matformer(config)
    rng = np.random.default_rng(seed)
    members = []
    for _ in range(count):
        member = {}
        for name, p in template.parameters_and_names():
            shape = tuple(p.shape)
            if name.endswith("moving_variance"):
                value = rng.uniform(0.5, 4.0, shape)
            elif name.endswith(("moving_mean", "beta", "bias")):
                value = rng.normal(0.0, 0.5, shape)
            elif name.endswith("gamma"):
                value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
            else:  # Dense weight (out, in)
                value = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
            member[name] = ms.Tensor(value.astype(np.float32))
        members.append(member)
    return members


def _shipped_members(*names: str) -> tuple[ModelConfig, list[dict]]:
    """The members of the shipped models ``names``, all reading site descriptors where any does (as predict
    runs them: :func:`crystalprop.model.checkpoint.on_one_graph`), and their configuration."""
    paths = [checkpoints_dir() / f"{name}.ckpt" for name in names]
    for path in paths:
        if not path.is_file():
            pytest.skip(f"{path} not present")
    loaded = on_one_graph([read_checkpoint(path) for path in paths])
    return loaded[0][0].model, [member for card, params in loaded for member in member_params(card, params)]


def _batch(site_features: bool = False) -> list:
    """Structures of 1 to 8 atoms, one batch (with site descriptors where asked)."""
    structures = [nacl_primitive(), srtio3(), triclinic(5, seed=3), hcp_mg(), nacl_conventional()]
    settings = GraphSettings(site_features=site_features)
    return [ms.Tensor(a) for a in collate([graph_of(s, settings) for s in structures]).arrays()]


def _per_member(config: ModelConfig, members: list[dict], inputs: list) -> np.ndarray:
    net = Matformer(config)
    net.declare_dynamic_inputs()
    net.set_train(False)
    outputs = []
    for member in members:
        load_weights(net, member, "member")
        outputs.append(net(*inputs).asnumpy())
    return np.stack(outputs)


def _stacked(config: ModelConfig, members: list[dict], inputs: list, use_kernels: bool) -> np.ndarray:
    net = StackedMatformer(config, member_arrays(config, members, "member"), fused=use_kernels)
    net.declare_dynamic_inputs()
    net.set_train(False)
    return net(*inputs).asnumpy()


def _assert_same(stacked: np.ndarray, reference: np.ndarray) -> None:
    assert stacked.shape == reference.shape
    np.testing.assert_allclose(stacked, reference, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(reference).max()))


@pytest.mark.parametrize("use_kernels", KERNELS)
@pytest.mark.parametrize("count", [1, 3])
def test_stacked_random_members_match_each_member(use_kernels, count):
    members = _random_members(SMALL, count, seed=count)
    inputs = _batch()
    reference = _per_member(SMALL, members, inputs)
    assert count == 1 or np.ptp(reference, axis=0).min() > 1e-3  # the members do differ
    _assert_same(_stacked(SMALL, members, inputs, use_kernels), reference)


@pytest.mark.parametrize("use_kernels", KERNELS)
def test_stacked_shipped_ensembles_match_each_member(use_kernels):
    config, members = _shipped_members("bulk_modulus", "shear_modulus")
    inputs = _batch(config.site_features)
    _assert_same(_stacked(config, members, inputs, use_kernels), _per_member(config, members, inputs))


@pytest.mark.parametrize("use_kernels", KERNELS)
def test_stacked_readout_features_are_what_each_member_s_output_layer_reads(use_kernels):
    """readout=True adds each member's silu(fc(pooled)) (K, B, F): the member's fc_out of it is its output."""
    members = _random_members(SMALL, 3, seed=7)
    inputs = _batch()
    net = StackedMatformer(SMALL, member_arrays(SMALL, members, "member"), fused=use_kernels, readout=True)
    net.declare_dynamic_inputs()
    net.set_train(False)
    out, features = (t.asnumpy() for t in net(*inputs))
    _assert_same(out, _per_member(SMALL, members, inputs))
    assert features.shape == (3, out.shape[1], SMALL.fc_features) and np.all(features > -0.2785)  # silu's minimum
    for k, member in enumerate(members):
        weight, bias = member["fc_out.weight"].asnumpy(), member["fc_out.bias"].asnumpy()
        _assert_same(features[k] @ weight.T[:, 0] + bias[0], out[k])


class _NormSum(ms.nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.op = fused.row_norm_op()

    def construct(self, x, bias, gamma, beta):
        return (self.op(x, bias, gamma, beta) * x).sum()


def test_stacked_kernels_refuse_members_in_backward():
    """The backward kernels take one member's gamma/beta: K > 1 is refused, never misread."""
    if fused.library() is None:
        pytest.skip("no C++ compiler")
    x = ms.Tensor(np.ones((4, 3), np.float32))
    stacked = ms.Tensor(np.ones(6, np.float32))
    assert _NormSum()(x, stacked, stacked, stacked).asnumpy() == pytest.approx(12.0)  # LN of constant rows is beta
    with pytest.raises(RuntimeError):
        grads = ms.ops.GradOperation(get_all=True)(_NormSum())(x, stacked, stacked, stacked)
        [g.asnumpy() for g in grads]  # the kernels run asynchronously: wait for them


def test_predictor_stacks_models_of_one_configuration(random_ckpt, shipped_dir, monkeypatch):
    """Two models of one size run as one stacked network; each column is what the model gives
    alone, and the compile cache is keyed on the member count."""
    from conftest import make_structures

    from crystalprop.prediction.predictor import Predictor

    keys: list[tuple] = []
    monkeypatch.setattr(compile_cache, "enable_compile_cache", lambda *parts: keys.append(parts))
    other = shipped_dir / "formation_energy.ckpt"
    structures = [s for _, s in make_structures(5)]

    def columns(models: list[str]) -> dict[str, np.ndarray]:
        predictor = Predictor(models, cell="as-given", engine="mindspore")
        rows = [row for rows in predictor.iter_rows(structures, workers=0) for row in rows]
        return {label: np.array([row[label] for row in rows]) for label in predictor.value_columns}

    together = columns([str(random_ckpt), str(other)])
    assert len({id(net) for _, net, _, _ in Predictor([str(random_ckpt), str(other)], engine="mindspore").models}) == 1
    for model in (random_ckpt, other):
        alone = columns([str(model)])
        (label,) = alone
        np.testing.assert_allclose(together[label], alone[label], rtol=1e-5)
    assert [part for part in keys[0] if "stacked members: 2" in str(part)]
    assert [part for part in keys[-1] if "stacked members: 1" in str(part)]


def test_evaluating_many_members_keeps_batches_within_the_memory_bound(monkeypatch):
    """Each member of a stacked network holds its own activations: evaluation batches shrink with
    the member count, as prediction's do, and give the same outputs."""
    from crystalprop.graph.batch import BatchLimits
    from crystalprop.model import inference

    graphs = [graph_of(s) for s in (nacl_primitive(), srtio3(), hcp_mg(), nacl_conventional())] * 8
    sizes: list[tuple[int, int]] = []
    monkeypatch.setattr(inference, "batch_tensors", lambda batch, real=inference.batch_tensors: (
        sizes.append((batch.node_features.shape[0], batch.src.shape[0])) or real(batch)))
    from crystalprop.model.stacked import stack_checkpoints

    path = checkpoints_dir() / "bulk_modulus.ckpt"
    card, params = read_checkpoint(path)
    net, _ = stack_checkpoints(card.model, [(member_params(card, params), path)])
    whole = inference.predict_members(net, graphs, batch_size=64)
    memory = 4 << 20
    assert net.members == int(card.ensemble["members"]) > 1
    from crystalprop.graph.settings import STACKED_MEMORY_FACTOR as MEMORY_FACTOR

    limits = BatchLimits.for_model(64, card.model.features * net.members * MEMORY_FACTOR, card.model.heads, memory)
    sizes.clear()
    bounded = inference.predict_members(net, graphs, batch_size=64, batch_memory=memory)
    assert len(sizes) > 1 and all(edges <= limits.edges for _, edges in sizes)
    np.testing.assert_allclose(bounded, whole, rtol=1e-5, atol=1e-6)


def test_matformer_without_kernels_has_the_same_parameters():
    """The stacked network's template (names and shapes to check weights against) is built without
    the fused kernels: the same parameters, none of the kernels' operators."""
    with_kernels, without = Matformer(SMALL), Matformer(SMALL, fused=False)
    assert [(n, tuple(p.shape)) for n, p in without.parameters_and_names()] == [
        (n, tuple(p.shape)) for n, p in with_kernels.parameters_and_names()]
    layers = [cell for _, cell in without.cells_and_names() if hasattr(cell, "kernel")]
    assert len(layers) == 3 * SMALL.layers and all(cell.kernel is None for cell in layers)
