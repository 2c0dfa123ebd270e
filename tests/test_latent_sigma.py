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
