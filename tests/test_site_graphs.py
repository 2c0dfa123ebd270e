"""Graphs whose atoms carry site descriptors: built, batched, cached, trained, joined and predicted with
models that read them and models that do not (one graph serves both, the latter's outputs unchanged)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY, _random_checkpoint, make_structures, perovskite, rocksalt, synthetic_target, train_config
from crystalprop.graph.batch import GraphError, collate
from crystalprop.graph.elements import N_FEATURES
from crystalprop.graph.settings import GraphSettings
from crystalprop.graph.site_features import N_SITE
from crystalprop.model.checkpoint import CheckpointError, ModelCard, read_checkpoint, with_site_inputs
from crystalprop.model.config import ModelConfig

SITE = GraphSettings(site_features=True)


def _graphs(settings: GraphSettings):
    from conftest import cell_graph_of

    return [cell_graph_of(s, settings) for s in (rocksalt(5.64), perovskite(3.905))]


def test_graphs_carry_site_descriptors_only_where_asked_and_batch_them_after_the_element_features():
    plain, site = _graphs(GraphSettings()), _graphs(SITE)
    assert all(g.site is None for g in plain)
    assert [g.site.shape for g in site] == [(g.num_nodes, N_SITE) for g in site]
    np.testing.assert_allclose(site[0].site[:, 0], 6 / 12, atol=1e-3)  # rock salt: six first neighbours (smooth count)
    batch, plain_batch = collate(site), collate(plain)
    assert batch.node_features.shape == (sum(g.num_nodes for g in site), N_FEATURES + N_SITE)
    np.testing.assert_array_equal(batch.node_features[:, :N_FEATURES], plain_batch.node_features)
    np.testing.assert_array_equal(batch.node_features[:, N_FEATURES:], np.concatenate([g.site for g in site]))
    with pytest.raises(GraphError, match="with and without site descriptors"):
        collate([site[0], plain[1]])


def test_the_graph_cache_keeps_site_descriptors_and_rebuilds_a_file_without_them(tmp_path):
    from crystalprop.data.datasets import Entry
    from crystalprop.data import graph_cache

    entries = [Entry(id=name, source=s.as_dict(), target=1.0) for name, s in make_structures(3)]
    built, _ = graph_cache.build_graphs(entries, SITE, workers=1)
    again, _ = graph_cache.build_graphs(entries, SITE, workers=1)  # from the cache
    for a, b in zip(built, again):
        np.testing.assert_array_equal(a.site, b.site)
    path = next((graph_cache.cache_dir() / "graphs").glob("*.npz"))
    graph_cache._save(path, [e.id for e in entries], [g.__class__(**{**g.__dict__, "site": None}) for g in built],
                      ["", "", ""])
    with pytest.warns(UserWarning, match="site descriptors missing"):
        rebuilt, _ = graph_cache.build_graphs(entries, SITE, workers=1)
    assert all(g.site is not None for g in rebuilt)


def test_a_card_whose_network_and_graph_disagree_on_site_descriptors_is_refused():
    card = ModelCard(target="y", model=ModelConfig(**TINY, site_features=True), graph=SITE)
    assert ModelCard.from_json(card.to_json()).graph.site_features
    assert json.loads(card.to_json())["format"] == 5  # older readers refuse it rather than misread it
    raw = json.loads(card.to_json())
    raw["graph"]["site_features"] = False
    with pytest.raises(CheckpointError, match="disagree on site descriptors"):
        ModelCard.from_json(json.dumps(raw))
    old = json.loads(ModelCard(target="y").to_json())  # as a card from before the setting: no key
    assert not ModelCard.from_json(json.dumps(old)).model.site_features


def test_a_model_without_site_inputs_gives_the_same_outputs_on_site_graphs_once_padded(tmp_path):
    from crystalprop.model.checkpoint import build_model
    from crystalprop.model.inference import predict_graphs

    path = _random_checkpoint(tmp_path / "plain.ckpt", "y", "eV", seed=3)
    card, params = read_checkpoint(path)
    padded_card, padded = with_site_inputs(card, params)
    assert padded_card.model.site_features and padded_card.graph.site_features and not card.model.site_features
    weight = padded["atom_embedding.weight"]
    assert weight.shape[1] == N_FEATURES + N_SITE and not weight[:, N_FEATURES:].any()
    before = predict_graphs(build_model(card, params, path), _graphs(GraphSettings()))
    after = predict_graphs(build_model(padded_card, padded, path), _graphs(SITE))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_predict_runs_models_with_and_without_site_inputs_on_one_graph(tmp_path):
    from crystalprop.prediction.predictor import predict

    plain = _random_checkpoint(tmp_path / "plain.ckpt", "y", "eV", seed=4)
    site = _random_checkpoint(tmp_path / "site.ckpt", "z", "eV", seed=5, site_features=True)
    structures = [rocksalt(5.64), perovskite(3.905)]
    alone = predict(structures, model=str(plain), workers=0)
    both = predict(structures, model=[str(plain), str(site)], workers=0)
    site_alone = predict(structures, model=str(site), workers=0)
    np.testing.assert_allclose([r["plain"] for r in both], [r["plain"] for r in alone], rtol=1e-5)
    np.testing.assert_allclose([r["site"] for r in both], [r["site"] for r in site_alone], rtol=1e-5)
    assert len({round(r["site"], 6) for r in both}) == 2


def _labelled(tmp_path, n: int = 40):
    path = tmp_path / "data.json"
    records = [{"id": name, "structure": s.as_dict(), "y": synthetic_target(s),
                "split": "val" if k % 4 == 0 else "train"} for k, (name, s) in enumerate(make_structures(n))]
    path.write_text(json.dumps(records))
    return path


def test_members_with_and_without_site_inputs_join_into_one_ensemble(tmp_path):
    from crystalprop.evaluation.joining import join_ensemble
    from crystalprop.prediction.predictor import predict

    members = [_random_checkpoint(tmp_path / "a.ckpt", "y", "eV", seed=6),
               _random_checkpoint(tmp_path / "b.ckpt", "y", "eV", seed=7, site_features=True)]
    join_ensemble(members, tmp_path / "ens.ckpt", _labelled(tmp_path))
    card, _ = read_checkpoint(tmp_path / "ens.ckpt")
    assert card.model.site_features and card.graph.site_features
    structures = [rocksalt(5.64), perovskite(3.905)]
    rows = predict(structures, model=str(tmp_path / "ens.ckpt"), workers=0)
    each = [np.array([r[m.stem] for r in predict(structures, model=str(m), workers=0)]) for m in members]
    np.testing.assert_allclose([r["ens"] for r in rows], np.mean(each, axis=0), rtol=1e-4)


def test_training_with_site_features_starts_from_a_model_without_them_at_zero_weights(tmp_path):
    from crystalprop.training.run import train_model

    start = _random_checkpoint(tmp_path / "start.ckpt", "y", "eV", seed=8)
    config = train_config(epochs=1, model=ModelConfig(**TINY, site_features=True), graph=SITE)
    events = []
    train_model(_labelled(tmp_path), tmp_path / "run", config, workers=1, init_from=start,
                on_event=lambda kind, info: events.append((kind, info)))
    loaded = next(info for kind, info in events if kind == "init_from")
    assert loaded["loaded"] == loaded["total"]
    card, params = read_checkpoint(tmp_path / "run" / "best.ckpt")
    assert card.model.site_features and card.graph.site_features
    assert params["atom_embedding.weight"].shape[1] == N_FEATURES + N_SITE
    assert np.abs(params["atom_embedding.weight"].asnumpy()[:, N_FEATURES:]).max() > 0  # they learned


def test_a_start_that_reads_site_descriptors_is_refused_by_a_run_without_them_before_any_work(tmp_path):
    from crystalprop.training.jobs import train
    from crystalprop.training.run import train_model

    start = _random_checkpoint(tmp_path / "start.ckpt", "y", "eV", seed=9, site_features=True)
    with pytest.raises(CheckpointError, match="give --site-features"):
        train_model(_labelled(tmp_path), tmp_path / "run", train_config(epochs=1), workers=1, init_from=start)
    with pytest.raises(CheckpointError, match="give --site-features"):
        train(_labelled(tmp_path), tmp_path / "early", init_from=start, epochs=1, **TINY)
    assert not (tmp_path / "early").exists()


def test_a_network_padded_to_run_beside_site_readers_starts_a_run_without_them(tmp_path):
    """The older members of a joined model (the shipped shear modulus's first network) give the site columns
    zero weights: a run without site descriptors may start from them, with the weights they had."""
    from crystalprop.evaluation.joining import join_ensemble
    from crystalprop.training.run import train_model

    plain = _random_checkpoint(tmp_path / "a.ckpt", "y", "eV", seed=10)
    members = [plain, _random_checkpoint(tmp_path / "b.ckpt", "y", "eV", seed=11, site_features=True)]
    join_ensemble(members, tmp_path / "ens.ckpt", _labelled(tmp_path))
    train_model(_labelled(tmp_path), tmp_path / "run", train_config(epochs=1), workers=1,
                init_from=tmp_path / "ens.ckpt")
    card, params = read_checkpoint(tmp_path / "run" / "best.ckpt")
    assert not card.model.site_features and params["atom_embedding.weight"].shape[1] == N_FEATURES


def test_records_without_site_descriptors_stay_readable_by_versions_before_them():
    """Older versions build ModelConfig and GraphSettings from every key they find: a plain model's card and a
    plain run's state must not name the setting (they read it as damaged), nor change the graph cache's keys."""
    card = json.loads(ModelCard(target="y", model=ModelConfig(**TINY)).to_json())
    assert "site_features" not in card["model"] and "site_features" not in card["graph"]
    assert card["format"] == 2
    assert train_config().as_dict()["model"] == dict(layers=1, features=8, heads=1, rbf_bins=128, rbf_max=8.0,
                                                      fc_features=8)


def test_resuming_with_other_site_settings_names_them(tmp_path):
    from conftest import train_stopped_mid_epoch
    from crystalprop.training.run import train_model
    from crystalprop.training.trainer import TrainingError

    data = _labelled(tmp_path)
    train_stopped_mid_epoch(data, tmp_path / "run", train_config(epochs=3), epoch=1)
    site = train_config(epochs=3, model=ModelConfig(**TINY, site_features=True), graph=SITE)
    with pytest.raises(TrainingError, match="site-features False \\(now True\\)"):
        train_model(data, tmp_path / "run", site, workers=1, resume=True)
