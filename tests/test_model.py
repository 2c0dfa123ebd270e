"""Tests for crystalprop.model: agreement with a per-edge numpy reference, invariances,
and one compilation for batches of any size."""

from __future__ import annotations

import os

os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"  # the compile cache is keyed on source, not shapes

import warnings
import zlib

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystals import hcp_mg, nacl_conventional, nacl_primitive, srtio3

from crystalprop.utils import backend

backend.set_device("CPU")
ms = backend.mindspore_module()

from conftest import SHARED_DATA, cell_graph_of, graph_of, triclinic  # noqa: E402
from crystalprop.graph import GraphSettings, collate  # noqa: E402
from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: E402
from reference_matformer import matformer_forward  # noqa: E402

MP_STRUCTURES = SHARED_DATA / "mp2018" / "structures"
REAL_IDS = ("mp-1000", "mp-10000", "mp-10003")
RTOL = 1e-5

CONFIGS = {
    "L2-F16-H2": ModelConfig(layers=2, features=16, heads=2, fc_features=16),
    "L1-F8-H1": ModelConfig(layers=1, features=8, heads=1, fc_features=8),
}


# --- structures ------------------------------------------------------------





def wurtzite_zno() -> Structure:
    return Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.382]]
    )


def sample_structures() -> list[Structure]:
    return [nacl_primitive(), srtio3(), wurtzite_zno(), triclinic(5, seed=3), hcp_mg()]


def real_structures() -> list[Structure]:
    paths = [MP_STRUCTURES / f"{m}.cif" for m in REAL_IDS]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"{MP_STRUCTURES} not present")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_file(str(p)) for p in paths]


# --- networks --------------------------------------------------------------


def randomize(net: Matformer, seed: int) -> None:
    """Random weights of unit-scale outputs, and random LayerNorm/BatchNorm affine and moving stats."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        shape, name = tuple(p.shape), p.name
        if name.endswith("moving_variance"):
            value = rng.uniform(0.5, 4.0, shape)
        elif name.endswith("moving_mean"):
            value = rng.normal(0.0, 1.0, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        elif name.endswith(("beta", "bias")):
            value = rng.normal(0.0, 0.5, shape)
        else:  # Dense weight (out, in)
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))


def make_net(config: ModelConfig, seed: int, dynamic: bool = True) -> Matformer:
    net = Matformer(config)
    randomize(net, seed)
    if dynamic:
        net.declare_dynamic_inputs()
    net.set_train(False)
    return net


def parameters(net: Matformer) -> dict[str, np.ndarray]:
    # copy: on CPU asnumpy() may share memory with the parameter, which training updates in place
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def predict(net: Matformer, batch) -> np.ndarray:
    return net(*(ms.Tensor(a) for a in batch.arrays())).asnumpy()


@pytest.fixture(scope="module")
def nets() -> dict[str, Matformer]:
    return {key: make_net(config, seed=i) for i, (key, config) in enumerate(CONFIGS.items())}


@pytest.fixture(scope="module")
def invariance_net() -> Matformer:
    return make_net(CONFIGS["L2-F16-H2"], seed=11)


# --- agreement with the reference ------------------------------------------


def max_relative_deviation(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def check_against_reference(net: Matformer, config: ModelConfig, structures: list[Structure], training: bool):
    batch = collate([graph_of(s) for s in structures])
    net.set_train(training)
    try:
        before = parameters(net)
        out = predict(net, batch)
        after = parameters(net)
    finally:
        net.set_train(False)
    stats: list = []
    ref = matformer_forward(before, batch, heads=config.heads, training=training, rbf_max=config.rbf_max, stats=stats)
    assert out.shape == ref.shape == (len(structures),)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * scale)
    print(f"max relative deviation ({'train' if training else 'infer'}): {max_relative_deviation(out, ref):.2e}")
    if training:
        # the moving statistics follow PyTorch's BatchNorm1d: momentum 0.1, unbiased variance
        assert len(stats) == config.layers
        for layer in stats:
            name = layer["name"]
            for key, batch_value in (("moving_mean", layer["mean"]), ("moving_variance", layer["unbiased_var"])):
                expected = 0.9 * before[f"{name}.{key}"] + 0.1 * batch_value
                np.testing.assert_allclose(after[f"{name}.{key}"], expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())
    else:
        for name, value in before.items():
            np.testing.assert_array_equal(after[name], value)


@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_matches_reference(nets, key, training):
    check_against_reference(nets[key], CONFIGS[key], sample_structures(), training)


@pytest.mark.shared
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_matches_reference_on_real_structures(nets, training):
    structures = real_structures()
    check_against_reference(nets["L2-F16-H2"], CONFIGS["L2-F16-H2"], structures, training)


def test_matches_reference_with_static_shapes():
    """The same without declare_dynamic_inputs (the kernels compiled for fixed shapes)."""
    config = CONFIGS["L1-F8-H1"]
    net = make_net(config, seed=5, dynamic=False)
    check_against_reference(net, config, sample_structures()[:3], training=False)


def test_reference_is_sensitive(nets):
    """The comparison would notice a wrong BatchNorm statistic or LayerNorm parameter."""
    config, net = CONFIGS["L2-F16-H2"], nets["L2-F16-H2"]
    batch = collate([graph_of(s) for s in sample_structures()])
    params = parameters(net)
    out = predict(net, batch)
    for name in ("att_layers.1.bn.moving_variance", "att_layers.0.layer_norm.beta", "att_layers.0.msg_norm.gamma"):
        changed = dict(params)
        changed[name] = params[name] * 1.01 + 0.01
        ref = matformer_forward(changed, batch, heads=config.heads)
        assert max_relative_deviation(out, ref) > 100 * RTOL, name


# --- physics invariances ---------------------------------------------------


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rotated(structure: Structure, rng: np.random.Generator) -> Structure:
    rotation = random_rotation(rng)
    return Structure(
        Lattice(structure.lattice.matrix @ rotation.T),
        structure.species,
        structure.cart_coords @ rotation.T,
        coords_are_cartesian=True,
    )


def translated(structure: Structure, rng: np.random.Generator) -> Structure:
    shift = rng.uniform(-3.0, 3.0, 3)
    return Structure(structure.lattice, structure.species, structure.cart_coords + shift, coords_are_cartesian=True)


def permuted(structure: Structure, rng: np.random.Generator) -> Structure:
    order = rng.permutation(len(structure))
    if len(structure) > 1:
        while np.array_equal(order, np.arange(len(structure))):
            order = rng.permutation(len(structure))
    return Structure(structure.lattice, [structure.species[i] for i in order], structure.frac_coords[order])


def wrapped(structure: Structure, rng: np.random.Generator) -> Structure:
    shifts = rng.integers(-2, 3, (len(structure), 3))
    shifts[0] = [1, -1, 2]  # at least one atom leaves the cell
    return Structure(structure.lattice, structure.species, structure.frac_coords + shifts, to_unit_cell=False)


def supercell(structure: Structure, rng: np.random.Generator) -> Structure:
    return structure * (2, 2, 1)


INVARIANCE_STRUCTURES = {
    "NaCl-prim": nacl_primitive,
    "SrTiO3": srtio3,
    "Mg-hcp": hcp_mg,
    "triclinic": lambda: triclinic(4, seed=7),
}
TRANSFORMS = {"rotation": rotated, "translation": translated, "permutation": permuted, "wrap": wrapped}

def assert_same_prediction(net: Matformer, structures: list[Structure], settings: GraphSettings = GraphSettings()):
    out = predict(net, collate([cell_graph_of(s, settings) for s in structures]))
    scale = np.abs(out).max()
    np.testing.assert_allclose(out[1:], np.full(len(structures) - 1, out[0]), rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("name", list(INVARIANCE_STRUCTURES))
def test_invariance(invariance_net, name, transform):
    rng = np.random.default_rng(zlib.crc32(f"{name}/{transform}".encode()))
    structure = INVARIANCE_STRUCTURES[name]()
    variants = [TRANSFORMS[transform](structure, rng) for _ in range(2)]
    assert_same_prediction(invariance_net, [structure, *variants])


def test_all_transforms_combined(invariance_net):
    rng = np.random.default_rng(0)
    structure = triclinic(4, seed=7)
    changed = structure
    for transform in (permuted, wrapped, translated, rotated):
        changed = transform(changed, rng)
    assert_same_prediction(invariance_net, [structure, changed])


@pytest.mark.parametrize("name", list(INVARIANCE_STRUCTURES))
def test_supercell_invariance(invariance_net, name):
    structure = INVARIANCE_STRUCTURES[name]()
    assert_same_prediction(invariance_net, [structure, supercell(structure, None), structure * (2, 2, 2)])


def test_conventional_vs_primitive_nacl(invariance_net):
    assert_same_prediction(invariance_net, [nacl_primitive(), nacl_conventional()])


@pytest.mark.parametrize("name", list(INVARIANCE_STRUCTURES))
def test_the_cell_as_given_changes_the_prediction(invariance_net, name):
    """Why the canonical cell is the default: on the cell as given, Matformer's graph depends on the
    cell, as in the original: (1) the lattice self-edges i -> i+a, +b, +c, +(a+b), +(a+c), +(b+c) carry
    the cell's own vectors, which become 2a, 2b, 2a+2b... in a supercell; (2) a neighbour that is the
    atom's own periodic image is stored for +n and -n and each is emitted both ways, so it sends two
    messages, while the same neighbour in a supercell is a different atom and sends one."""
    structure = INVARIANCE_STRUCTURES[name]()
    with pytest.raises(AssertionError):
        assert_same_prediction(invariance_net, [structure, supercell(structure, None)], GraphSettings(cell="as-given"))


@pytest.mark.parametrize("make", [srtio3, nacl_conventional], ids=["SrTiO3", "NaCl-conv"])
def test_supercell_invariance_without_lattice_edges(invariance_net, make):
    """The control for the test above: on the cell as given, without lattice edges, and in cells where
    no atom's k nearest neighbours include its own images, a 2x2x1 (and 1x1x2) supercell predicts the same."""
    structure = make()
    assert_same_prediction(
        invariance_net,
        [structure, structure * (2, 2, 1), structure * (1, 1, 2)],
        GraphSettings(use_lattice=False, cell="as-given"),
    )


# --- compilation -----------------------------------------------------------


def test_compiles_once_for_any_batch_size():
    net = make_net(CONFIGS["L1-F8-H1"], seed=2)
    pool = sample_structures()
    graphs = [graph_of(s) for s in pool]
    for size in (1, 3, 5):
        out = predict(net, collate(graphs[:size]))
        assert out.shape == (size,)
        assert np.all(np.isfinite(out))
    assert len(net.compile_cache) == 1, net.compile_cache
