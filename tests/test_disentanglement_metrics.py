"""InfoMEC, DCI and MCC on representations with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from phenoica.metrics.disentanglement import (
    active_latents,
    dci,
    discretize_factors,
    disentanglement_scores,
    entropy_of_codes,
    info_explicitness,
    infomec,
    mcc_factors,
)

N = 1000


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    """Four independent factors on grids of 3 to 10 values (like a dSprites-style dataset)."""
    rng = np.random.default_rng(0)
    cols = [rng.integers(0, m, N) / (m - 1) for m in (3, 6, 8, 10)]
    return np.stack(cols, axis=1)


def test_discretize_and_entropy():
    x = np.array([[0.1, 5.0], [0.2, 5.0], [0.1, 7.0], [0.3, 7.0]])
    codes = discretize_factors(x)
    np.testing.assert_array_equal(codes, [[0, 0], [1, 0], [0, 1], [2, 1]])
    assert entropy_of_codes(codes[:, 1]) == pytest.approx(np.log(2))
    cont = np.random.default_rng(0).normal(size=(1000, 1))
    binned = discretize_factors(cont, max_values=10)
    assert binned.max() == 9 and np.all(np.bincount(binned[:, 0]) == 100)


def test_signed_permutation_of_factors_is_perfect(factors):
    rng = np.random.default_rng(1)
    perm, signs = rng.permutation(4), rng.choice([-1.0, 1.0], 4)
    latents = factors[:, perm] * signs * rng.uniform(0.5, 3.0, 4) + rng.normal(size=4)
    assert mcc_factors(factors, latents) == pytest.approx(1.0)
    info = infomec(factors, latents)
    assert info["infom"] > 0.95
    assert info["infoc"] > 0.95
    assert info["infoe"] > 0.8
    assert info["active"].all()
    # each latent's information sits on its own factor
    np.testing.assert_array_equal(np.argmax(info["nmi"], axis=0), perm)
    d = dci(factors, latents)
    assert d["disentanglement"] > 0.9 and d["completeness"] > 0.9 and d["informativeness"] > 0.95


def test_rotation_of_factors_lowers_modularity_and_mcc(factors):
    Q = ortho_group.rvs(4, random_state=2)
    standardized = (factors - factors.mean(0)) / factors.std(0)
    mixed = standardized @ Q
    perfect = infomec(factors, standardized)
    rotated = infomec(factors, mixed)
    assert rotated["infom"] < perfect["infom"] - 0.2
    assert rotated["infoc"] < perfect["infoc"] - 0.2
    # a rotation keeps all information linearly decodable
    assert rotated["infoe"] > 0.8
    assert mcc_factors(factors, mixed) < 0.9
    d_rot, d_perfect = dci(factors, mixed), dci(factors, standardized)
    assert d_rot["disentanglement"] < d_perfect["disentanglement"] - 0.2


def test_noise_latents_carry_no_information(factors):
    noise = np.random.default_rng(3).normal(size=(N, 5))
    info = infomec(factors, noise)
    assert info["nmi"].max() < 0.05
    assert info["infoe"] < 0.05
    assert mcc_factors(factors, noise) < 0.1
    assert dci(factors, noise)["informativeness"] < 0.1


def test_collapsed_latents_are_inactive(factors):
    latents = np.hstack([factors, np.full((N, 2), 0.3) + 1e-4 * np.random.default_rng(4).normal(size=(N, 2))])
    mask = active_latents(latents)
    np.testing.assert_array_equal(mask, [True, True, True, True, False, False])
    info = infomec(factors, latents)
    assert info["infom"] > 0.95 and info["infoc"] > 0.95
    assert np.all(info["nmi"][:, 4:] == 0)


def test_dci_categorical_and_lasso(factors):
    shape = np.random.default_rng(5).integers(0, 3, N).astype(float)
    all_factors = np.column_stack([shape, factors[:, :2]])
    kinds = ["categorical", "ordinal", "ordinal"]
    onehot_latent = np.column_stack([shape == 1, shape == 2]).astype(float)
    latents = np.column_stack([onehot_latent, factors[:, :2]])
    for estimator in ("gbt", "lasso"):
        d = dci(all_factors, latents, kinds=kinds, estimator=estimator)
        assert d["informativeness"] > 0.9, estimator
        assert d["importance"].shape == (4, 3)
        # the shape factor's importance sits on the two one-hot latents
        assert d["importance"][:2, 0].sum() > 0.9 * d["importance"][:, 0].sum()
    with pytest.raises(ValueError, match="kinds"):
        dci(all_factors, latents, kinds=["nominal", "ordinal", "ordinal"])


def test_disentanglement_scores_keys_and_validation(factors):
    latents = factors + 0.01 * np.random.default_rng(6).normal(size=factors.shape)
    scores = disentanglement_scores(factors, latents, kinds=["categorical"] + ["ordinal"] * 3)
    assert set(scores) == {"InfoM", "InfoE", "InfoC", "MCC", "DCI_D", "DCI_C", "DCI_I", "n_active"}
    assert scores["MCC"] > 0.99 and scores["InfoM"] > 0.9
    with pytest.raises(ValueError, match="same rows"):
        infomec(factors, latents[:10])
    bad = latents.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mcc_factors(factors, bad)


def test_infoe_is_the_same_for_codes_and_an_invertible_linear_map_of_them(factors):
    """AE vs AE+ICA: ICA codes are an invertible linear map of the AE codes, and an unregularised
    logistic regression's optimum does not change under such a map. Capped at 100 iterations on
    standardised codes (the old code) the two got 0.483 and 0.446 here."""
    rng = np.random.default_rng(7)
    codes = discretize_factors(factors)
    latents = np.tanh((factors - 0.5) @ rng.normal(size=(4, 6))) + 0.2 * rng.normal(size=(N, 6))
    # badly conditioned, and not undone by standardising columns
    mixing = ortho_group.rvs(6, random_state=1) @ np.diag(np.logspace(0, 2, 6)) @ ortho_group.rvs(6, random_state=2)
    a, b = info_explicitness(codes, latents), info_explicitness(codes, latents @ mixing)
    assert 0.2 < a < 0.95
    assert b == pytest.approx(a, abs=1e-4)


def test_infoe_uses_balanced_classes_like_the_reference():
    """The reference fits with balanced class weights, so the no-information baseline is the
    uniform prediction, log(classes), whatever the class frequencies."""
    rng = np.random.default_rng(8)
    y = (rng.uniform(size=2000) < 0.1).astype(int)  # 10 % / 90 %
    assert info_explicitness(y[:, None], rng.normal(size=(2000, 3))) < 0.01
    informative = y + rng.normal(scale=0.7, size=2000)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    balanced = LogisticRegression(C=np.inf, class_weight="balanced", max_iter=10_000, tol=1e-10)
    z = (informative - informative.mean()) / informative.std()
    ce = log_loss(y, balanced.fit(z[:, None], y).predict_proba(z[:, None]))
    expected = (np.log(2) - ce) / np.log(2)
    assert info_explicitness(y[:, None], informative[:, None]) == pytest.approx(expected, abs=1e-4)
    # unweighted with the entropy as baseline (the old definition) gives another number
    plain = LogisticRegression(C=np.inf, max_iter=10_000).fit(z[:, None], y)
    h = entropy_of_codes(y)
    assert abs((h - log_loss(y, plain.predict_proba(z[:, None]))) / h - expected) > 0.02
