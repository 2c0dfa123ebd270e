"""Per-atom bond-angle features: the vectorised function against the per-atom definition, textbook shells."""

from __future__ import annotations

import importlib
import itertools
import warnings

import numpy as np
import pytest

from crystalprop.graph.site_features import N_SITE, site_features

module = importlib.import_module("crystalprop.graph.site_features")  # the module, whatever the package exports

_CENTRES = np.linspace(-1.0, 1.0, 9)


# The oracle: the per-atom definition, as written for the screen (a loop over atoms), kept verbatim.
def reference(vec: np.ndarray, centers: np.ndarray, n: int) -> np.ndarray:
    """The per-atom definition of the features (the loop the screen's trained weights were fitted with)."""
    out = np.zeros((n, 13), np.float32)
    order = np.argsort(centers, kind="stable")
    bounds = np.searchsorted(centers[order], np.arange(n + 1))
    for i in range(n):
        v = vec[order[bounds[i]:bounds[i + 1]]]
        d = np.linalg.norm(v, axis=1)
        if len(d) == 0 or d.min() <= 0:
            continue
        w = 1.0 / (1.0 + np.exp((d / d.min() - 1.2) / 0.03))
        u = v / d[:, None]
        c = np.clip(u @ u.T, -1.0, 1.0)
        W = w.sum()
        ww = w[:, None] * w[None, :]
        p2 = 0.5 * (3 * c**2 - 1)
        p4 = (35 * c**4 - 30 * c**2 + 3) / 8
        p6 = (231 * c**6 - 315 * c**4 + 105 * c**2 - 5) / 16
        q = [np.sqrt(max((ww * p).sum(), 0.0)) / W for p in (p2, p4, p6)]
        iu = np.triu_indices(len(d), 1)
        pw, pc = ww[iu], c[iu]
        hist = (pw[:, None] * np.exp(-0.5 * ((pc[:, None] - _CENTRES[None, :]) / 0.15) ** 2)).sum(0)
        hist = hist / hist.sum() if hist.sum() > 0 else hist
        out[i] = [W / 12.0, *q, *hist]
    return out


def oracle(vec: np.ndarray, centers: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # far neighbours overflow exp in the definition: weight 0
        return reference(vec, centers, n)


def shell_weight(ratio: float) -> float:
    """A neighbour's weight at ``ratio`` times the nearest distance."""
    return 1.0 / (1.0 + np.exp((ratio - 1.2) / 0.03))


def random_lists(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists of 0 to 20 entries per atom, shuffled: tied shells, a second shell across the sigmoid,
    far neighbours, collinear bonds (cosines ±1 to rounding)."""
    vectors, centers = [], []
    for atom in range(n):
        count = int(rng.choice([0, 1, 2, 3, 6, 12, 13, 14, 17, 20]))
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1)[:, None]
        ratios = rng.choice([1.0, 1.0, 1.1, 1.2]) * np.ones(count)
        ratios[count // 3:] = rng.uniform(1.0, 1.5, count - count // 3)
        ratios[: count // 4] = 1.0
        if count >= 6:
            directions[1], directions[2] = -directions[0], directions[0]  # bonds at 180° and 0°
            ratios[2] = 1.7
        vectors.append(directions * ratios[:, None] * rng.uniform(1.5, 3.0))
        centers.append(np.full(count, atom))
    order = rng.permutation(sum(len(c) for c in centers))
    return np.concatenate(vectors)[order], np.concatenate(centers)[order]


def knn_vectors(lattice: np.ndarray, frac: list[list[float]], k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Vectors from every atom to its k nearest neighbours over periodic images, ties at the k-th distance kept."""
    cart = np.asarray(frac, dtype=float) @ lattice
    shifts = np.array(list(itertools.product(range(-3, 4), repeat=3))) @ lattice
    vectors, centers = [], []
    for atom, position in enumerate(cart):
        v = (cart[None] + shifts[:, None] - position).reshape(-1, 3)
        d = np.linalg.norm(v, axis=1)
        v, d = v[d > 1e-8], d[d > 1e-8]
        keep = d <= np.sort(d)[k - 1] + 1e-6
        vectors.append(v[keep])
        centers.append(np.full(keep.sum(), atom))
    return np.concatenate(vectors), np.concatenate(centers)


def fcc_cell(a: float) -> np.ndarray:
    return np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


CRYSTALS = {
    "rock salt NaCl": (fcc_cell(5.64), [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "bcc Fe": (np.eye(3) * 2.87, [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "diamond Si": (fcc_cell(5.43), [[0, 0, 0], [0.25, 0.25, 0.25]]),
    "hcp Mg": (np.array([[3.21, 0, 0], [-1.605, 2.7799, 0], [0, 0, 5.21]]),
               [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
    "triclinic": (np.array([[4.7, 0, 0], [-1.2, 5.1, 0], [0.4, 0.9, 6.0]]),
                  [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.35, 0.7, 0.45], [0.8, 0.55, 0.05]]),
}


def gaussians(cosine: float) -> np.ndarray:
    return np.exp(-0.5 * ((cosine - _CENTRES) / 0.15) ** 2)


@pytest.mark.parametrize("seed", range(8))
def test_random_lists_match_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    vectors, centers = random_lists(rng, n)
    got = site_features(vectors, centers, n)
    want = oracle(vectors, centers, n)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert (want[:, 1:] > 0.01).any()  # the lists do have shells with angles


def test_lists_of_every_kind_at_once() -> None:
    """Empty lists, a single neighbour, ties beyond 12, a zero-length vector, unsorted centres, one call."""
    rng = np.random.default_rng(42)
    vectors, centers = random_lists(rng, 30)
    zero_atom = centers[0]
    vectors[np.flatnonzero(centers == zero_atom)[-1]] = 0.0
    counts = np.bincount(centers, minlength=30)
    assert (counts == 0).any() and (counts > 12).any() and (np.diff(centers) < 0).any()
    got = site_features(vectors, centers, 30)
    np.testing.assert_allclose(got, oracle(vectors, centers, 30), rtol=0, atol=1e-5)
    assert not got[counts == 0].any() and not got[zero_atom].any()


def test_chunks_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    vectors, centers = random_lists(rng, 25)
    whole = site_features(vectors, centers, 25)
    monkeypatch.setattr(module, "CHUNK_PAIRS", 1)  # one atom at a time
    np.testing.assert_array_equal(site_features(vectors, centers, 25), whole)
    np.testing.assert_allclose(whole, oracle(vectors, centers, 25), rtol=0, atol=1e-5)


def test_far_neighbours_weigh_zero_without_warnings() -> None:
    """Beyond 22.5 times the nearest distance exp overflows in the definition: weight exactly 0, so an atom whose
    only other neighbours are that far has no weighted pair and a zero histogram, not a normalised one."""
    vectors = np.array([[1.0, 0, 0], [0, 30.0, 0], [0, 0, -40.0], [2.0, 0, 0], [0, 2.1, 0], [0, 0, 60.0]])
    centers = np.array([0, 0, 0, 1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = site_features(vectors, centers, 2)
    np.testing.assert_allclose(got, oracle(vectors, centers, 2), rtol=0, atol=1e-5)
    assert not got[0, 4:].any() and got[0, 1:4] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert got[1, 4:].sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", CRYSTALS)
def test_crystals_match_the_definition(name: str) -> None:
    lattice, frac = CRYSTALS[name]
    vectors, centers = knn_vectors(lattice, frac)
    got = site_features(vectors, centers, len(frac))
    np.testing.assert_allclose(got, oracle(vectors, centers, len(frac)), rtol=0, atol=1e-5)


def test_octahedron() -> None:
    """Six bonds at 90° and 180°: the simple-cubic Steinhardt values, 12 pairs at cos 0 and 3 at cos -1."""
    octahedron = np.concatenate([np.eye(3), -np.eye(3)]) * 2.82
    got = site_features(octahedron, np.zeros(6, dtype=np.int64), 1)[0]
    assert got[0] == pytest.approx(6 * shell_weight(1.0) / 12, abs=1e-6)
    assert got[1:4] == pytest.approx([0.0, 0.76376, 0.35355], abs=1e-4)
    hist = 12 * gaussians(0.0) + 3 * gaussians(-1.0)
    np.testing.assert_allclose(got[4:], hist / hist.sum(), atol=1e-6)


def test_rock_salt() -> None:
    """Six Cl around each Na (and the reverse); the 12 like ions at √2 times the distance barely count."""
    vectors, centers = knn_vectors(*CRYSTALS["rock salt NaCl"])
    assert np.bincount(centers).tolist() == [18, 18]  # 6 + the 12 tied at the 12th distance
    got = site_features(vectors, centers, 2)
    np.testing.assert_allclose(got[0], got[1], rtol=0, atol=1e-6)  # Na and Cl see the same shell
    weight = (6 * shell_weight(1.0) + 12 * shell_weight(np.sqrt(2))) / 12
    assert got[0, 0] == pytest.approx(weight, abs=1e-6) and got[0, 0] == pytest.approx(0.5, abs=2e-3)
    assert got[0, 1:4] == pytest.approx([0.0, 0.7638, 0.3536], abs=3e-3)
    hist = got[0, 4:]
    assert hist.argmax() == 4 and hist[0] > hist[1]  # most at cos 0, a peak at cos -1


def test_bcc() -> None:
    """bcc's second shell (6 at 2/√3 = 1.155 times the first) lies inside the sigmoid at 1.2: it weighs 0.82 each."""
    vectors, centers = knn_vectors(*CRYSTALS["bcc Fe"])
    assert np.bincount(centers).tolist() == [14, 14]
    got = site_features(vectors, centers, 2)
    weight = (8 * shell_weight(1.0) + 6 * shell_weight(2 / np.sqrt(3))) / 12
    assert got[:, 0] == pytest.approx([weight, weight], abs=1e-6)
    assert got[0, 1] == pytest.approx(0.0, abs=1e-4)  # cubic symmetry: q2 = 0


def test_diamond() -> None:
    """Four bonds at the tetrahedral angle, cos -1/3: the histogram of one cosine, the tetrahedral q4 and q6."""
    vectors, centers = knn_vectors(*CRYSTALS["diamond Si"])
    got = site_features(vectors, centers, 2)
    assert got[:, 0] == pytest.approx([4 * shell_weight(1.0) / 12] * 2, abs=1e-6)
    assert got[0, 1:4] == pytest.approx([0.0, 0.50918, 0.62854], abs=1e-4)
    hist = gaussians(-1 / 3)
    np.testing.assert_allclose(got[:, 4:], np.tile(hist / hist.sum(), (2, 1)), atol=1e-5)


def test_order_parameters_are_steinhardts() -> None:
    """q_l from the Legendre sum equals sqrt(4π/(2l+1) Σ_m |Σ_j w_j Y_lm(r_j)|²) / Σ_j w_j."""
    special = pytest.importorskip("scipy.special")
    if not hasattr(special, "sph_harm_y"):
        pytest.skip("scipy without sph_harm_y")
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(9, 3)) * 0.1 + np.concatenate([np.eye(3), -np.eye(3), np.ones((3, 3))])
    lengths = np.linalg.norm(vectors, axis=1)
    weights = np.array([shell_weight(r) for r in lengths / lengths.min()])
    polar, azimuth = np.arccos(vectors[:, 2] / lengths), np.arctan2(vectors[:, 1], vectors[:, 0])
    q = []
    for l in (2, 4, 6):
        sums = [(weights * special.sph_harm_y(l, m, polar, azimuth)).sum() for m in range(-l, l + 1)]
        q.append(np.sqrt(4 * np.pi / (2 * l + 1) * np.sum(np.abs(sums) ** 2)) / weights.sum())
    got = site_features(vectors, np.zeros(9, dtype=np.int64), 1)[0]
    assert got[1:4] == pytest.approx(q, abs=1e-5)
    assert min(q) > 0.05


@pytest.mark.parametrize("name", ["random", "triclinic"])
def test_rotation_and_pair_order_change_nothing(name: str) -> None:
    rng = np.random.default_rng(11)
    if name == "random":
        n = 20
        vectors, centers = random_lists(rng, n)
    else:
        lattice, frac = CRYSTALS[name]
        n = len(frac)
        vectors, centers = knn_vectors(lattice, frac)
    features = site_features(vectors, centers, n)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    np.testing.assert_allclose(site_features(vectors @ rotation.T, centers, n), features, rtol=0, atol=1e-6)
    order = rng.permutation(len(centers))
    np.testing.assert_allclose(site_features(vectors[order], centers[order], n), features, rtol=0, atol=1e-6)
    assert features[:, 1:].std() > 0.01


def test_shape_and_type() -> None:
    rng = np.random.default_rng(0)
    vectors, centers = random_lists(rng, 7)
    got = site_features(vectors, centers.astype(np.int32), 9)  # two atoms past the last centre: no neighbours
    assert got.shape == (9, N_SITE) == (9, 13) and got.dtype == np.float32
    assert not got[7:].any()
    empty = site_features(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), 4)
    assert empty.shape == (4, 13) and empty.dtype == np.float32 and not empty.any()
    assert site_features(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), 0).shape == (0, 13)


def test_bad_input_is_refused() -> None:
    vectors = np.ones((3, 3))
    with pytest.raises(ValueError, match="centre indices"):
        site_features(vectors, np.array([0, 1, 3]), 3)
    with pytest.raises(ValueError, match="centre indices"):
        site_features(vectors, np.array([0, -1, 2]), 3)
    with pytest.raises(ValueError, match="vectors for"):
        site_features(vectors, np.array([0, 1]), 3)
