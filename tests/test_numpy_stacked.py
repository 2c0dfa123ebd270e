"""The numpy inference engine against the MindSpore Matformer run member by member."""

from __future__ import annotations

import numpy as np
import pytest

from crystals import hcp_mg, nacl_conventional, nacl_primitive, srtio3

from crystalprop.utils import backend

backend.set_device("CPU")
ms = backend.mindspore_module()

from conftest import graph_of, triclinic  # noqa: E402
from crystalprop.graph import GraphSettings, collate  # noqa: E402
from crystalprop.model import kernel_library  # noqa: E402
from crystalprop.model.matformer import Matformer, ModelConfig  # noqa: E402
from crystalprop.model.numpy_stacked import NumpyStackedMatformer  # noqa: E402
from crystalprop.model.folded import member_arrays  # noqa: E402
from test_stacked import SMALL, _assert_same, _per_member, _random_members, _shipped_members  # noqa: E402


def _arrays(site_features: bool = False) -> tuple[np.ndarray, ...]:
    structures = [nacl_primitive(), srtio3(), triclinic(5, seed=3), hcp_mg(), nacl_conventional()]
    return collate([graph_of(s, GraphSettings(site_features=site_features)) for s in structures]).arrays()


KERNELS = [False, pytest.param(True, marks=pytest.mark.skipif(kernel_library.loaded() is None, reason="no C++ compiler"))]


def _numpy(config: ModelConfig, members: list[dict], readout: bool = False, fused: bool = False, threads: int = 1):
    return NumpyStackedMatformer(config, member_arrays(config, members, "member"), readout=readout, fused=fused,
                                 threads=threads)


@pytest.mark.parametrize("fused", KERNELS)
@pytest.mark.parametrize("count", [1, 3])
def test_numpy_engine_matches_each_member(count, fused):
    members = _random_members(SMALL, count, seed=10 + count)
    arrays = _arrays()
    reference = _per_member(SMALL, members, [ms.Tensor(a) for a in arrays])
    out, features = _numpy(SMALL, members, fused=fused, threads=2)(*arrays)
    assert features is None and out.dtype == np.float32
    _assert_same(out, reference)


@pytest.mark.parametrize("fused", KERNELS)
def test_numpy_engine_matches_the_shipped_ensembles_with_their_readout(fused):
    config, members = _shipped_members("bulk_modulus", "shear_modulus")
    arrays = _arrays(config.site_features)
    out, features = _numpy(config, members, readout=True, fused=fused)(*arrays)
    _assert_same(out, _per_member(config, members, [ms.Tensor(a) for a in arrays]))
    assert features.shape == (len(members), out.shape[1], config.fc_features)
    for k, member in enumerate(members):  # the readout is what each member's output layer reads
        weight, bias = member["fc_out.weight"].asnumpy(), member["fc_out.bias"].asnumpy()
        _assert_same(features[k] @ weight.T[:, 0] + bias[0], out[k])


@pytest.mark.parametrize("config", [ModelConfig(), SMALL, ModelConfig(layers=1, features=8, heads=3, rbf_bins=10,
                                                                        fc_features=5)])
def test_parameter_shapes_are_the_networks(config):
    """Checkpoints are checked without MindSpore against ModelConfig.parameter_shapes: it must be the network's."""
    from crystalprop.model.checkpoint import parameter_shapes

    assert list(config.parameter_shapes().items()) == list(parameter_shapes(Matformer(config, fused=False)).items())


def test_predictor_engines_agree_on_every_column(random_ckpt):
    """The shipped models and a user's model, by the numpy engine and by MindSpore: the same values and σ."""
    from conftest import make_structures

    from crystalprop.prediction.predictor import Predictor
    from crystalprop.model.registry import checkpoints_dir

    structures = [s for _, s in make_structures(6)]
    models = [str(random_ckpt)] + [str(p) for p in sorted(checkpoints_dir().glob("*.ckpt"))]
    if len(models) < 5:
        pytest.skip("the shipped models are not here")
    results = {}
    for engine in ("numpy", "mindspore"):
        predictor = Predictor(models, cell="as-given", engine=engine)
        assert predictor.engine == engine
        rows = [row for rows in predictor.iter_rows(structures, workers=0) for row in rows]
        # no σ (None) for a structure beyond a model's latent range: NaN, which must fall alike in both engines
        results[engine] = {label: np.array([np.nan if row[label] is None else row[label] for row in rows], float)
                           for label in predictor.value_columns}
    assert len(results["numpy"]) == 1 + 3 * len(models[1:])  # every shipped model has a σ and a 95 % interval
    for label, values in results["mindspore"].items():
        # a σ with the members' spread takes their float32 differences times the spread's weight (band gap
        # 8.9): where the members nearly agree that is 1e-5 eV of the σ, not a disagreement of the engines;
        # the 95 % interval is σ times at most 4
        atol = 5e-5 if label.endswith("_std") else 2e-4 if label.endswith("_err95") else 1e-6
        np.testing.assert_allclose(results["numpy"][label], values, rtol=2e-5, atol=atol, err_msg=label)


def test_the_numpy_engine_needs_no_mindspore(tmp_path, random_ckpt):
    """`crystalprop predict` with the numpy engine never imports MindSpore (its import is most of the start-up)."""
    import subprocess
    import sys
    from pathlib import Path

    from pymatgen.io.cif import CifWriter

    from conftest import rocksalt

    if kernel_library.loaded() is None:
        pytest.skip("no C++ compiler: auto picks MindSpore")
    CifWriter(rocksalt(5.64)).write_file(tmp_path / "a.cif")
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from crystalprop.cli.commands import main\n"
        "try:\n"
        f"    main(['predict', 'a.cif', '-m', {str(random_ckpt)!r}])\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'mindspore' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.stdout.split()[-3:] == ["exit", "0", "False"], done.stdout + done.stderr[-2000:]
