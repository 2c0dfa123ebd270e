"""Product members: an ensemble member that is the product of other models (shear = bulk × G/K)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Element

from conftest import _random_checkpoint, make_structures, synthetic_target
from crystalprop.model.checkpoint import CheckpointError, METADATA_KEY, read_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Log10 models: two members of the target y, a two-member ensemble of k and one model of r."""
    from crystalprop.evaluation.joining import join_ensemble

    folder = tmp_path_factory.mktemp("product_models")
    y = [_random_checkpoint(folder / f"y{k}.ckpt", "y", "GPa", seed=30 + k, log10=True) for k in range(2)]
    # each factor with a transform of its own, as a bulk modulus and a G/K ratio have
    k_members = [_random_checkpoint(folder / f"k{k}.ckpt", "k", "GPa", seed=40 + k, log10=True, mean=2.0, std=0.3)
                 for k in range(2)]
    r = _random_checkpoint(folder / "r.ckpt", "r", "", seed=50, log10=True, mean=-0.3, std=0.2)
    data = folder / "k.json"
    data.write_text(json.dumps([{"id": name, "structure": s.as_dict(), "k": synthetic_target(s),
                                 "split": "val" if i % 4 == 0 else "train"}
                                for i, (name, s) in enumerate(make_structures(40))]))
    join_ensemble(k_members, folder / "kens.ckpt", data)
    return {"y": y, "k": folder / "kens.ckpt", "r": r}


@pytest.fixture(scope="module")
def log_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("product_data") / "data.json"
    path.write_text(json.dumps([{"id": name, "structure": s.as_dict(), "y": synthetic_target(s),
                                 "split": "val" if i % 4 == 0 else "train"}
                                for i, (name, s) in enumerate(make_structures(40))]))
    return path


@pytest.fixture(scope="module")
def product(models, log_data, tmp_path_factory):
    from crystalprop.evaluation.joining import join_ensemble

    out = tmp_path_factory.mktemp("product") / "shear.ckpt"
    result = join_ensemble(models["y"], out, log_data, products=[(models["k"], models["r"])])
    return out, result


def test_a_product_member_is_the_product_of_its_models_and_the_value_their_geometric_mean(models, product):
    import crystalprop

    out, result = product
    structures = [s for _, s in make_structures(6)]
    rows = crystalprop.predict(structures, [str(p) for p in (*models["y"], models["k"], models["r"], out)])
    alone = {label: np.array([row[label] for row in rows]) for label in ("y0", "y1", "kens", "r")}
    members = np.log10([alone["y0"], alone["y1"], alone["kens"] * alone["r"]])
    np.testing.assert_allclose([row["shear"] for row in rows], 10 ** members.mean(axis=0), rtol=1e-4)
    assert len(result["member_maes"]) == 3 and result["members"] == 5  # members; networks stored
    files = read_checkpoint(out)[0].ensemble["member_files"]
    assert files[2]["name"] == "kens × r" and [f["file"] for f in files[2]["files"]] == ["kens.ckpt", "r.ckpt"]


def test_evaluate_gives_the_joined_figures(product, log_data, tmp_path):
    from crystalprop.evaluation.evaluate import evaluate_model

    out, joined = product
    result = evaluate_model(out, log_data, split="val", output_dir=tmp_path)
    assert result["mae"] == pytest.approx(joined["mae"], rel=1e-6)
    assert result["sigma_spearman"] == pytest.approx(joined["sigma_spearman"], abs=1e-9)


@pytest.mark.parametrize("engine", ["numpy", "mindspore"])
def test_networks_shared_with_another_model_run_once(models, product, engine):
    """The bulk-modulus networks inside the shear model are stacked once when both predict together,
    and every model gets its own networks' outputs."""
    import crystalprop
    from crystalprop.prediction.predictor import Predictor

    out, _ = product
    predictor = Predictor([str(models["k"]), str(out)], engine=engine)
    networks = {id(net): net.members for _, net, _, _ in predictor.models}
    assert list(networks.values()) == [5]  # 2 k + 2 y + 1 r, not 2 + 5
    assert [rows for *_, rows in predictor.models] == [[0, 1], [2, 3, 0, 1, 4]]
    structures = [s for _, s in make_structures(4)]
    together = crystalprop.predict(structures, [str(models["k"]), str(out)], engine=engine)
    for label, path in (("kens", models["k"]), ("shear", out)):
        alone = crystalprop.predict(structures, str(path), engine=engine)
        np.testing.assert_allclose([r[label] for r in together], [r[label] for r in alone], rtol=1e-5)


def test_products_are_written_in_a_format_older_versions_refuse(product, models):
    ms = pytest.importorskip("mindspore")
    out, _ = product
    meta = json.loads(ms.load_checkpoint(str(out))[METADATA_KEY])
    assert meta["format"] == 3 and meta["ensemble"]["combination"][2] == [[2, 0.5], [3, 0.5], [4, 1.0]]
    plain = json.loads(ms.load_checkpoint(str(models["k"]))[METADATA_KEY])
    assert plain["format"] == 2 and "combination" not in plain["ensemble"]


def test_a_product_of_linear_targets_is_refused(tmp_path, log_data):
    from crystalprop.evaluation.joining import join_ensemble

    y = [_random_checkpoint(tmp_path / f"y{k}.ckpt", "y", "eV", seed=60 + k) for k in range(2)]
    factor = _random_checkpoint(tmp_path / "f.ckpt", "f", "eV", seed=62)
    with pytest.raises(CheckpointError, match="log10"):
        join_ensemble(y, tmp_path / "p.ckpt", log_data, products=[(y[0], factor)])


def test_a_product_whose_units_multiply_to_another_unit_is_refused(models, log_data, tmp_path):
    from crystalprop.evaluation.joining import join_ensemble

    other = _random_checkpoint(tmp_path / "g.ckpt", "g", "GPa", seed=63, log10=True)
    with pytest.raises(CheckpointError) as refused:  # GPa x GPa is not the ensemble's GPa
        join_ensemble(models["y"], tmp_path / "p.ckpt", log_data, products=[(models["k"], other)])
    assert "g.ckpt" in str(refused.value) and "unit" in str(refused.value)
    assert not (tmp_path / "p.ckpt").exists()


def test_a_product_of_one_model_is_refused(models, log_data, tmp_path):
    from crystalprop.evaluation.joining import join_ensemble

    with pytest.raises(ValueError, match="at least two models"):
        join_ensemble(models["y"], tmp_path / "p.ckpt", log_data, products=[(models["r"],)])


def test_cli_joins_a_product_member(models, log_data, tmp_path):
    from conftest import run_cli

    factors = f"{models['k']},{models['r']}"
    result = run_cli(["ensemble", tmp_path / "s.ckpt", *models["y"], "--product", factors, "--data", log_data])
    assert result.returncode == 0, result.stderr
    assert "ensemble of 3" in result.stdout
    assert read_checkpoint(tmp_path / "s.ckpt")[0].ensemble["members"] == 5


def test_a_member_given_twice_is_refused(models, log_data, tmp_path):
    from crystalprop.evaluation.joining import join_ensemble

    with pytest.raises(ValueError, match="given twice"):
        join_ensemble([models["y"][0], models["y"][1], models["y"][0]], tmp_path / "p.ckpt", log_data)


def test_latent_sigma_of_a_product_ensemble_is_its_own_beside_the_factor(models, log_data, tmp_path):
    """Predicted beside the factor, the product ensemble's first network sits after the factor's in the
    stacked network: its σ must still come from its own first member's readout."""
    import crystalprop
    from crystalprop.evaluation.joining import join_ensemble

    out = tmp_path / "lat.ckpt"
    join_ensemble(models["y"], out, log_data, sigma="latent", products=[(models["k"], models["r"])])
    structures = [s for _, s in make_structures(5)]
    alone = crystalprop.predict(structures, str(out), engine="numpy")
    beside = crystalprop.predict(structures, [str(models["k"]), str(out)], engine="numpy")
    np.testing.assert_allclose([r["lat_std"] for r in beside], [r["lat_std"] for r in alone], rtol=1e-5)
    np.testing.assert_allclose([r["lat"] for r in beside], [r["lat"] for r in alone], rtol=1e-5)


def test_a_product_given_twice_is_refused(models, log_data, tmp_path):
    from crystalprop.evaluation.joining import join_ensemble

    pair = (models["k"], models["r"])
    with pytest.raises(ValueError, match="given twice"):
        join_ensemble(models["y"], tmp_path / "p.ckpt", log_data, products=[pair, pair])


def test_an_ensemble_knows_the_elements_every_model_has_seen_in_periodic_table_order(log_data, tmp_path):
    from crystalprop.evaluation.joining import join_ensemble

    data = sorted({s["species"][0]["element"] for r in json.loads(log_data.read_text())
                   for s in r["structure"]["sites"]})  # σ is calibrated on structures of elements all know
    by_z = lambda elements: sorted(elements, key=lambda e: Element(e).Z)  # noqa: E731
    seen = [by_z(data + ["H", "Fe", "U"]), ["H", "C", "Fe"] + data, ["Pb", "H", "Fe"] + data]
    y = [_random_checkpoint(tmp_path / f"y{k}.ckpt", "y", "GPa", seed=60 + k, log10=True, elements=seen[k])
         for k in range(2)]
    k = _random_checkpoint(tmp_path / "k.ckpt", "k", "GPa", seed=62, log10=True, elements=seen[2])
    r = _random_checkpoint(tmp_path / "r.ckpt", "r", "", seed=63, log10=True, elements=seen[2])
    join_ensemble(y, tmp_path / "p.ckpt", log_data, products=[(k, r)])
    assert read_checkpoint(tmp_path / "p.ckpt")[0].elements == by_z(data + ["H", "Fe"])


def test_extract_member_names_a_product_factor_by_what_it_predicts(models, product, tmp_path):
    """scripts/extract_member.py gave a product's factor (network 4: r, dimensionless) the ensemble's target and
    unit, so the extracted G/K model called its ratios shear moduli in GPa (and joining it as a factor failed
    on 'GPa × GPa'). A factor needs --target and --unit; with them it is the factor's own model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import crystalprop

    out, _ = product
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "GLOG_v": "3"}
    script = [sys.executable, str(root / "scripts" / "extract_member.py"), str(out), "4", str(tmp_path / "r4.ckpt")]
    refused = subprocess.run(script, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode != 0 and "a factor of a product member" in refused.stderr and "--unit" in refused.stderr
    assert not (tmp_path / "r4.ckpt").exists()
    done = subprocess.run(script + ["--target", "r", "--unit", ""], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    card, _ = read_checkpoint(tmp_path / "r4.ckpt")
    assert (card.target, card.unit) == ("r", "")
    structures = [s for _, s in make_structures(4)]
    rows = crystalprop.predict(structures, [str(tmp_path / "r4.ckpt"), str(models["r"])])
    np.testing.assert_allclose([row["r4"] for row in rows], [row["r"] for row in rows], rtol=1e-6)
    plain = subprocess.run(script[:3] + ["0", str(tmp_path / "y0.ckpt")], capture_output=True, text=True,
                           timeout=300, env=env)
    assert plain.returncode == 0 and read_checkpoint(tmp_path / "y0.ckpt")[0].target == "y"
    relabelled = subprocess.run(script[:3] + ["0", str(tmp_path / "y0b.ckpt"), "--target", "r", "--unit", ""],
                                capture_output=True, text=True, timeout=300, env=env)
    assert relabelled.returncode != 0 and "for a factor of a product member" in relabelled.stderr
