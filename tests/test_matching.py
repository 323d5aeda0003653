import numpy as np

from phenoica.metrics.matching import cross_correlation, match_components, mcc, mcc_split


def test_signed_permutation_scores_one():
    rng = np.random.default_rng(0)
    a = rng.laplace(size=(500, 6))
    perm = rng.permutation(6)
    signs = rng.choice([-1.0, 1.0], size=6)
    b = a[:, perm] * signs
    m = match_components(a, b)
    assert np.isclose(m.mcc, 1.0)
    assert np.array_equal(perm[m.cols], m.rows)
    assert np.allclose(m.signs, signs[m.cols])
    assert np.isclose(mcc_split(a, b, np.arange(500) < 250), 1.0)


def test_rotation_lowers_mcc_and_constant_columns_are_safe():
    rng = np.random.default_rng(1)
    a = rng.laplace(size=(2000, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert mcc(a, a @ q) < 0.9
    b = np.column_stack([a[:, 0], np.zeros(2000)])
    c = cross_correlation(a, b)
    assert np.all(np.isfinite(c)) and np.all(c[:, 1] == 0)
