"""Alignment errors, latent diameter and decoder isometry on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ortho_group

from phenoica.metrics.identifiability import (
    alignment_errors,
    bilipschitz_from_ratios,
    decoder_bilipschitz,
    distance_ratios,
    fit_linear_map,
    fit_permutation_map,
    fit_rigid_map,
    fit_whitened_ica,
    ica_efficiency,
    ica_stability,
    latent_diameter,
    numerical_rank,
    principal_axes,
    principal_subspace,
    rigid_error_bound,
    rotation_null,
    sample_pairs,
    split_rows,
    stable_k,
)
from phenoica.metrics.matching import mcc


def _value(table: pd.DataFrame, map_name: str, metric: str) -> float:
    hit = table[(table["map"] == map_name) & (table["metric"] == metric)]["value"]
    assert len(hit) == 1, (map_name, metric)
    return float(hit.iloc[0])


def _uniform_sources(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, d))


def _split(X: np.ndarray, Y: np.ndarray, seed: int = 0):
    mask = split_rows(len(X), seed=seed)
    return X[mask], Y[mask], X[~mask], Y[~mask]


def test_latent_diameter_known_values():
    square = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
    assert latent_diameter(square) == pytest.approx(5.0)
    # chunking must not change the answer
    pts = np.random.default_rng(1).normal(size=(300, 5))
    from scipy.spatial.distance import pdist

    assert latent_diameter(pts, chunk=7) == pytest.approx(pdist(pts).max())
    assert latent_diameter(pts, kind="q99") == pytest.approx(np.quantile(pdist(pts), 0.99))
    # an outlier moves the max diameter but hardly the robust one
    with_outlier = np.vstack([pts, [[100.0] * 5]])
    assert latent_diameter(with_outlier) > 100
    assert latent_diameter(with_outlier, kind="q99") < 2 * latent_diameter(pts, kind="q99")
    with pytest.raises(ValueError, match="diameter kind"):
        latent_diameter(pts, kind="median")


def test_signed_permutation_is_recovered_exactly():
    rng = np.random.default_rng(0)
    A = _uniform_sources(600, 6, seed=0) * rng.uniform(0.5, 2.0, 6)
    perm, signs = rng.permutation(6), rng.choice([-1.0, 1.0], 6)
    B = A[:, perm] * signs + rng.normal(size=6)  # plus a translation
    table = alignment_errors(*_split(A, B))
    for name in ("permutation", "rigid", "linear"):
        assert _value(table, name, "mean_error") < 1e-9
        assert _value(table, name, "sup_error") < 1e-9
        assert _value(table, name, "r2") == pytest.approx(1.0)
    assert _value(table, "permutation", "mcc_in_sample") == pytest.approx(1.0)
    assert _value(table, "permutation", "mcc_split") == pytest.approx(1.0)
    # the permutation map itself is the signed permutation matrix
    h = fit_permutation_map(A, B)
    expected = np.zeros((6, 6))
    expected[perm, np.arange(6)] = signs
    np.testing.assert_allclose(h.matrix, expected)


def test_rotation_raises_permutation_error_not_rigid():
    A = _uniform_sources(800, 5, seed=1)
    Q = ortho_group.rvs(5, random_state=3)
    B = A @ Q + 0.5
    table = alignment_errors(*_split(A, B), maps=("permutation", "rigid", "linear"))
    assert _value(table, "rigid", "mean_error") < 1e-9
    assert _value(table, "linear", "mean_error") < 1e-9
    assert _value(table, "permutation", "mean_error") > 0.05
    assert _value(table, "permutation", "mcc_split") < 0.95
    np.testing.assert_allclose(fit_rigid_map(A, B).matrix, Q, atol=1e-9)


def test_nested_map_classes_in_sample():
    """Fitted and scored on the same rows, RMS error: linear <= rigid <= permutation."""
    rng = np.random.default_rng(4)
    A = rng.normal(size=(400, 4))
    B = np.tanh(A @ rng.normal(size=(4, 4))) + 0.1 * rng.normal(size=(400, 4))
    rms = {}
    for name, fit in (("permutation", fit_permutation_map), ("rigid", fit_rigid_map), ("linear", fit_linear_map)):
        rms[name] = np.sqrt(np.mean(np.sum((B - fit(A, B)(A)) ** 2, axis=1)))
    assert rms["linear"] <= rms["rigid"] + 1e-12 <= rms["permutation"] + 2e-12


def test_ica_undoes_rotation_of_independent_non_gaussian_sources():
    S = _uniform_sources(3000, 4, seed=2)
    rng = np.random.default_rng(5)
    A = S @ rng.normal(size=(4, 4))  # two different invertible mixings of the same sources
    B = S @ ortho_group.rvs(4, random_state=6) * 2.0 + 1.0
    table = alignment_errors(*_split(A, B), seed=0)
    err_ica = _value(table, "ica", "mean_error")
    assert err_ica < 0.01
    assert _value(table, "permutation", "mean_error") > 5 * err_ica
    assert _value(table, "ica", "mcc_split") > 0.99
    assert "efficiency" not in set(table["metric"])  # a ratio of pair-averaged errors, not per pair
    # the unsupervised ICA map also recovers the sources themselves
    ica = fit_whitened_ica(A, seed=0)
    assert mcc(ica.sources(A), S) > 0.99
    np.testing.assert_allclose(ica.reconstruct(ica.sources(A)), A, atol=1e-8)


def _rotated_runs(n: int, d: int, p: int, *, gaussian: bool = False, noise: float = 0.01, seed: int = 0):
    """A representation of d independent sources (distinct scales) in p dimensions and a second
    'run' of the same inputs: an exact rotation of it plus a little noise."""
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(n, d)) if gaussian else rng.uniform(-np.sqrt(3), np.sqrt(3), size=(n, d))
    A = (S * np.linspace(2.0, 0.5, d)) @ ortho_group.rvs(p, random_state=seed + 1)[:d]
    B = A @ ortho_group.rvs(p, random_state=seed + 2) + noise * rng.normal(size=(n, p))
    return A, B


def test_positive_control_ica_efficiency_near_one_at_every_k():
    """Non-Gaussian independent sources, second run = rotation + 1 % noise: ICA closes the whole
    permutation-to-rigid gap at every k once every map is scored in the same k-subspace. (Before,
    only the ICA map was truncated: 0.16 at k = 2, 0.50 at k = 3, and 0.03 at full rank, where the
    noise raises the second run's numerical rank (24) above the first's (5).)"""
    A, B = _rotated_runs(600, 5, 24)
    assert numerical_rank(A) == 5 and numerical_rank(B) == 24
    for k in (2, 3, 5):
        table = alignment_errors(*_split(A, B), maps=("permutation", "rigid", "ica"), k=k)
        errors = [_value(table, name, "mean_error") for name in ("permutation", "rigid", "ica")]
        assert ica_efficiency(*errors) > 0.95, (k, errors)
        assert _value(table, "ica", "n_components") == k
        # the subspace of the top-k sources holds their share of the variance, and no more
        share = np.sum(np.linspace(2.0, 0.5, 5)[:k] ** 2) / np.sum(np.linspace(2.0, 0.5, 5) ** 2)
        assert _value(table, "all", "variance_share") == pytest.approx(share, abs=0.03)
        assert (_value(table, "all", "truncation_error") > 0.01) == (k < 5)


def test_ica_stability_tells_sources_from_gaussian_directions():
    """Split-half ICA stability: non-Gaussian sources are found again on every half; in a Gaussian
    subspace each half finds its own arbitrary directions (about as unrelated as random
    rotations: chance-corrected stability near 0)."""
    for gaussian, low, high in ((False, 0.8, 1.0), (True, -0.5, 0.5)):
        A, _ = _rotated_runs(400, 4, 8, gaussian=gaussian, seed=3)
        Z = principal_subspace(A, 4).project(A)
        stability, raw = ica_stability(Z, k=4, seeds=[1, 2, 3, 4, 5])
        assert low < stability < high, (gaussian, stability, raw)
        assert stability == pytest.approx((raw - rotation_null(4)) / (1 - rotation_null(4)))


def test_rotation_null_and_stable_k():
    # k = 2: the best matching of two random 2-D frames leaves an angle uniform on [0, 45 deg]
    assert rotation_null(2) == pytest.approx(np.cos(np.pi / 8), abs=0.02)
    assert 1.0 > rotation_null(2) > rotation_null(4) > rotation_null(16) > 0
    assert stable_k({2: 0.9, 4: 0.8, 8: 0.3, 16: np.nan}, 0.75) == 4
    assert stable_k({2: 0.9, 4: 0.5, 8: 0.8}, 0.75) == 8  # the largest stable k, not the first failure
    assert stable_k({2: 0.1}, 0.75) is None


def test_principal_subspace_projection():
    rng = np.random.default_rng(12)
    Z = rng.normal(size=(300, 5)) * np.array([5.0, 3.0, 1.0, 0.1, 0.01]) + 2.0
    sub = principal_subspace(Z, 2)
    P = sub.project(Z)
    assert numerical_rank(P) == 2 and sub.k == 2
    np.testing.assert_allclose(sub.project(P), P, atol=1e-10)  # a projection
    np.testing.assert_allclose(P.mean(axis=0), Z.mean(axis=0))
    with pytest.raises(ValueError, match="numerical rank"):
        principal_subspace(P, 3)
    assert ica_efficiency(0.2, 0.2, 0.1) != ica_efficiency(0.2, 0.2, 0.1)  # NaN when perm and rigid tie
    assert ica_efficiency(0.3, 0.1, 0.2) == pytest.approx(0.5)


def test_principal_axes_give_every_subspace_of_one_svd():
    """A k sweep takes each representation's subspaces from one SVD (principal_axes): the same
    subspaces, rank and alignment errors as computing them per k and per pair."""
    A, B = _rotated_runs(200, 4, 8, gaussian=False, seed=5)
    fit = split_rows(len(A), fit_fraction=0.5, seed=0)
    axes_a, axes_b = principal_axes(A[fit]), principal_axes(B[fit])
    assert axes_a.rank == numerical_rank(A[fit])
    for k in (2, 4):
        np.testing.assert_array_equal(axes_a.subspace(k).basis, principal_subspace(A[fit], k).basis)
        given = alignment_errors(A[fit], B[fit], A[~fit], B[~fit], k=k, maps=("permutation", "rigid"),
                                 subspaces=(axes_a.subspace(k), axes_b.subspace(k)))
        computed = alignment_errors(A[fit], B[fit], A[~fit], B[~fit], k=k, maps=("permutation", "rigid"))
        pd.testing.assert_frame_equal(given, computed)
    with pytest.raises(ValueError, match="numerical rank"):
        axes_a.subspace(axes_a.rank + 1)


def test_alignment_errors_validates_inputs():
    A = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same rows"):
        alignment_errors(A, A[:5], A, A)
    with pytest.raises(ValueError, match="unknown map"):
        alignment_errors(A, A, A, A, maps=("affine",))
    X = np.random.default_rng(0).normal(size=(10, 3))
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        alignment_errors(X, X, X, X)


def test_different_dimensions_supported_by_all_maps():
    S = _uniform_sources(1200, 3, seed=10)
    rng = np.random.default_rng(11)
    A = S @ rng.normal(size=(3, 5))  # rank 3 in 5 dimensions
    B = S @ rng.normal(size=(3, 3))
    table = alignment_errors(*_split(A, B))
    assert _value(table, "linear", "mean_error") < 1e-8
    assert _value(table, "ica", "mean_error") < 0.02  # whitening keeps the rank (3) on both sides
    assert set(table["map"]) == {"all", "permutation", "rigid", "linear", "ica"}


def test_split_rows():
    mask = split_rows(100, fit_fraction=0.3, seed=1)
    assert mask.sum() == 30
    np.testing.assert_array_equal(mask, split_rows(100, fit_fraction=0.3, seed=1))
    with pytest.raises(ValueError):
        split_rows(3)


def test_bilipschitz_of_isometry_and_stretch():
    z = np.random.default_rng(0).normal(size=(200, 3))
    Q = ortho_group.rvs(3, random_state=1)
    iso = decoder_bilipschitz(lambda v: 3.0 * v @ Q, z, n_pairs=500, quantile=0.0)
    assert iso["bilipschitz_L"] == pytest.approx(0.0, abs=1e-9)
    assert iso["ratio_median"] == pytest.approx(3.0)
    # an axis stretch by 4 has singular values 1 and 4: ratios within [1, 4], L <= sqrt(4) - 1
    stretch = decoder_bilipschitz(lambda v: v * np.array([4.0, 1.0, 1.0]), z, n_pairs=2000, quantile=0.0)
    assert 0.5 < stretch["bilipschitz_L"] <= 1.0 + 1e-9
    assert stretch["rigid_bound"] == pytest.approx(rigid_error_bound(stretch["bilipschitz_L"]))
    assert bilipschitz_from_ratios(np.array([1.0, 4.0])) == pytest.approx(1.0)
    assert bilipschitz_from_ratios(np.array([0.0, 1.0])) == np.inf
    assert rigid_error_bound(0.0) == 0.0


def test_pairs_and_ratios():
    z = np.arange(20, dtype=float).reshape(10, 2)
    pairs = sample_pairs(z, 50, seed=0)
    assert pairs.shape == (50, 2) and np.all(pairs[:, 0] != pairs[:, 1])
    local = sample_pairs(z, 50, seed=0, local=True)
    # neighbours on a line are at most 5 steps apart
    assert np.all(np.abs(local[:, 0] - local[:, 1]) <= 5) and np.all(local[:, 0] != local[:, 1])
    np.testing.assert_allclose(distance_ratios(z, 2 * z, pairs), 2.0)
    with pytest.raises(ValueError, match="differ in rows"):
        distance_ratios(z, z[:5], pairs)


def test_linear_map_ridge_cv_when_rows_are_few():
    """With about as many fitting rows as dimensions plain least squares interpolates noise
    (the interpolation peak); the cross-validated ridge does not, and with ample rows both
    agree."""
    rng = np.random.default_rng(12)
    S = rng.uniform(-1, 1, size=(240, 3))
    A = S @ rng.normal(size=(3, 40)) + 0.3 * rng.normal(size=(240, 40))
    B = S @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(240, 8))
    fit = np.zeros(240, bool)
    fit[:42] = True
    plain = alignment_errors(A[fit], B[fit], A[~fit], B[~fit], maps=("linear",), linear_ridge=0)
    cv = alignment_errors(A[fit], B[fit], A[~fit], B[~fit], maps=("linear",))
    assert _value(cv, "linear", "mean_error") < 0.7 * _value(plain, "linear", "mean_error")
    Q = ortho_group.rvs(4, random_state=2)
    X = _uniform_sources(500, 4, seed=3)
    np.testing.assert_allclose(fit_linear_map(X, X @ Q).matrix, Q, atol=1e-4)
    np.testing.assert_allclose(fit_linear_map(X, X @ Q, ridge=0).matrix, Q, atol=1e-9)
    assert fit_linear_map(X, X @ Q, ridge=1e6).matrix.std() < 0.1  # a huge penalty shrinks
