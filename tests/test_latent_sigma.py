"""σ from the distance to the training set in the readout space (crystalprop.model.latent_sigma)."""

from __future__ import annotations

import numpy as np
import pytest

from crystalprop.model.latent_sigma import LatentReference


def _cloud(n: int, features: int, seed: int) -> np.ndarray:
    """Readout-like features: a few strong directions, features of very different scales."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) @ rng.normal(size=(3, features)) + 0.1 * rng.normal(size=(n, features))) \
        * rng.uniform(0.1, 10.0, features)


def test_raw_sigma_is_mean_neighbour_distance_times_their_mean_training_error():
    hidden = _cloud(300, 12, seed=0)
    residuals = np.random.default_rng(1).uniform(0.01, 0.5, 300)
    reference = LatentReference.build(hidden, residuals, dimensions=4, neighbours=3)
    queries = _cloud(700, 12, seed=2)  # more than one block of queries
    z_table = reference.table.astype(np.float64)
    z = queries @ reference.projection.astype(np.float64) - reference.offset
    distances = np.linalg.norm(z[:, None, :] - z_table[None, :, :], axis=2)
    nearest = np.argsort(distances, axis=1)[:, :3]
    expected = np.take_along_axis(distances, nearest, axis=1).mean(axis=1) \
        * reference.residuals.astype(np.float64)[nearest].mean(axis=1)
    np.testing.assert_allclose(reference.raw_sigma(queries), expected, rtol=2e-3, atol=1e-6)


def test_a_prior_adds_a_share_of_the_mean_training_error_to_the_neighbours(tmp_path):
    """With ``prior`` w, σ_raw = mean distance × (mean error of the k nearest + w × mean error of all):
    a structure whose nearest training structures were fitted exactly keeps a σ that grows with
    its distance, and the prior survives the round trip through the checkpoint's arrays."""
    hidden = _cloud(200, 8, seed=7)
    residuals = np.random.default_rng(8).uniform(0.0, 0.4, 200)
    residuals[:100] = 0.0
    plain = LatentReference.build(hidden, residuals, dimensions=4, neighbours=3)
    shrunk = LatentReference.build(hidden, residuals, dimensions=4, neighbours=3, prior=0.5)
    queries = _cloud(50, 8, seed=9)
    z = queries.astype(np.float32) @ plain.projection - plain.offset
    distances = np.linalg.norm(z[:, None, :] - plain.table[None].astype(np.float32), axis=2)
    nearest = np.argsort(distances, axis=1)[:, :3]
    mean_distance = np.take_along_axis(distances, nearest, axis=1).mean(axis=1)
    stored = shrunk.residuals.astype(np.float64)
    np.testing.assert_allclose(shrunk.raw_sigma(queries),
                               mean_distance * (stored[nearest].mean(axis=1) + 0.5 * stored.mean()), rtol=2e-3)
    fitted_exactly = plain.raw_sigma(hidden[:100]) == 0
    assert fitted_exactly.any() and np.all(shrunk.raw_sigma(hidden[:100])[fitted_exactly] > 0)
    again = LatentReference.from_params(shrunk.arrays(), neighbours=3, prior=0.5)
    np.testing.assert_array_equal(again.raw_sigma(queries), shrunk.raw_sigma(queries))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_one_non_finite_training_error_spoils_only_the_structures_near_it():
    """Was (with the prior): the mean of all training errors entered every σ even with prior 0, so one
    residual that overflowed float16 (or a NaN training prediction) made every σ NaN."""
    hidden = _cloud(200, 8, seed=10)
    residuals = np.random.default_rng(11).uniform(0.01, 0.4, 200)
    residuals[0] = np.nan
    residuals[1] = 1e6  # inf in float16
    for prior in (0.0, 1.0):
        reference = LatentReference.build(hidden, residuals, dimensions=4, neighbours=3, prior=prior)
        sigma = reference.raw_sigma(hidden[2:])
        assert np.isfinite(sigma).mean() > 0.9, prior


def test_projection_standardises_features_and_keeps_the_leading_axes():
    hidden = _cloud(500, 10, seed=3)
    reference = LatentReference.build(hidden, np.ones(500), dimensions=3)
    z = reference.table.astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.02)
    leading = np.linalg.eigvalsh(np.corrcoef(hidden.T))[::-1][:3]  # of the standardised features
    np.testing.assert_allclose(z.var(axis=0), leading, rtol=0.01)


def test_structures_far_from_the_training_set_get_larger_sigma():
    hidden = _cloud(400, 8, seed=4)
    reference = LatentReference.build(hidden, np.full(400, 0.1), dimensions=8)
    near = reference.raw_sigma(hidden[:50])
    far = reference.raw_sigma(hidden[:50] + 5.0 * hidden.std(axis=0))
    assert np.all(far > 3 * near)


def test_reference_round_trips_through_its_arrays():
    hidden = _cloud(100, 6, seed=5)
    reference = LatentReference.build(hidden, np.linspace(0, 1, 100), dimensions=2, neighbours=4)
    again = LatentReference.from_params(reference.arrays(), neighbours=4)
    np.testing.assert_array_equal(again.raw_sigma(hidden), reference.raw_sigma(hidden))
    assert reference.arrays()["latent_sigma.table"].dtype == np.float16


@pytest.mark.parametrize("rows", [40, 129, 2001])  # fewer blocks than neighbours; one row past a block; many
def test_the_nearest_training_structures_are_the_k_closest(rows):
    rng = np.random.default_rng(rows)
    reference = LatentReference(np.eye(6, dtype=np.float32), np.zeros(6, np.float32),
                                rng.normal(size=(rows, 6)), rng.uniform(0.1, 1.0, rows), neighbours=5)
    queries = rng.normal(size=(300, 6)).astype(np.float32)
    distances = np.linalg.norm(queries[:, None, :] - reference.table[None, :, :], axis=2)
    nearest = np.sort(distances, axis=1)[:, :5]
    expected = nearest.mean(axis=1) * np.take_along_axis(
        np.broadcast_to(reference.residuals, distances.shape), np.argsort(distances, axis=1)[:, :5], axis=1).mean(axis=1)
    np.testing.assert_allclose(reference.raw_sigma(queries), expected, rtol=1e-4)


def test_k_smallest_falls_back_where_a_row_holds_nan():
    from crystalprop.model.latent_sigma import BLOCK, k_smallest

    values = np.random.default_rng(3).random((4, 8 * BLOCK)).astype(np.float32)
    values[2, 17] = np.nan
    got = k_smallest(values, 5)
    for row in (0, 1, 3):
        assert sorted(got[row]) == sorted(np.argsort(values[row])[:5])
    assert got.shape == (4, 5)


def test_distances_are_exact_far_from_the_origin_whatever_the_batch():
    """The nearest distances came from |z|² + |t|² - 2 z·t in float32, which loses them to cancellation where
    the latent vectors are long and close together: σ moved by up to 6e-4 relative with the batch a structure
    was predicted in. The k nearest are measured again as differences in float64."""
    rng = np.random.default_rng(3)
    centre = np.full(8, 10.0)
    table = (centre + rng.normal(scale=0.3, size=(300, 8))).astype(np.float32)
    reference = LatentReference(np.eye(8, dtype=np.float32), np.zeros(8, np.float32), table,
                                np.ones(300, np.float32), neighbours=3)
    queries = (centre + rng.normal(scale=0.3, size=(40, 8))).astype(np.float32)
    exact = np.sort(np.linalg.norm(queries[:, None, :].astype(np.float64) - table.astype(np.float64), axis=2),
                    axis=1)[:, :3].mean(axis=1)
    together = reference.sigma_and_distance(queries)[1]
    alone = np.array([reference.sigma_and_distance(query[None])[1][0] for query in queries])
    assert together == pytest.approx(exact, rel=1e-6)
    assert alone == pytest.approx(together, rel=1e-6)
