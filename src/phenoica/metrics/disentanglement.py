"""Disentanglement metrics against known generative factors: InfoMEC, DCI and MCC.

All functions take ``factors`` (n x K, the true factor values of each sample) and ``latents``
(n x D, a representation of the same samples).

InfoMEC (Hsu et al. 2023, "Disentanglement via latent quantization")
    Normalised mutual information NMI[k, j] = I(factor k; latent j) / H(factor k), with factors
    discretised (their own values when they take few, else quantile bins) and I estimated by
    the kNN estimator of ``sklearn.feature_selection.mutual_info_classif`` (10 neighbours).
    Only *active* latents count: range above 1/20 of the largest range (collapsed VAE units
    drop out). InfoM (modularity): mean over active latents of max_k NMI / sum_k NMI, rescaled
    so that 0 = spread evenly over factors and 1 = one factor per latent. InfoC (compactness):
    the same over latents for each factor. InfoE (explicitness): per factor,
    (H0 - CE) / H0 with CE the in-sample cross-entropy of an unregularised multinomial logistic
    regression from all latents with balanced class weights, and H0 the cross-entropy of the same
    regression without latents (log of the number of classes), averaged over factors; fitted to
    convergence (see :func:`info_explicitness` for how this differs from the reference code).

DCI (Eastwood & Williams 2018)
    An importance matrix R (D latents x K factors) from one predictor per factor, fitted on a
    training split: gradient-boosted trees (``feature_importances_``; a classifier for
    categorical factors, a regressor for ordinal ones) or lasso (|coefficients| on
    standardised data). Disentanglement = sum_j rho_j (1 - H_K(R[j] / sum R[j])) with rho_j the
    latent's share of total importance; completeness = sum_k w_k (1 - H_D(R[:, k] / sum R[:, k]))
    with w_k the factor's share; informativeness = mean over factors of the held-out skill,
    R^2 (ordinal) or chance-corrected accuracy (acc - majority) / (1 - majority) (categorical),
    both clipped to [0, 1] so 0 = no information and 1 = perfect.

MCC
    Mean absolute Pearson correlation between factors and latents after the best one-to-one
    matching (``phenoica.metrics.matching``), over factors (pass ordinal factors: a categorical
    factor's codes have no order).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..logs import get_logger
from .matching import match_components

log = get_logger(__name__)

FACTOR_KINDS = ("categorical", "ordinal")
DCI_ESTIMATORS = ("gbt", "lasso")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def discretize_factors(factors: np.ndarray, *, max_values: int = 20) -> np.ndarray:
    """Integer codes (n x K) per factor column: the rank of each distinct value when a column
    takes at most ``max_values`` values, else ``max_values`` equal-frequency bins."""
    factors = _as_2d(factors, "factors")
    codes = np.empty(factors.shape, dtype=np.int64)
    for k in range(factors.shape[1]):
        values, inverse = np.unique(factors[:, k], return_inverse=True)
        if len(values) <= max_values:
            codes[:, k] = inverse
        else:
            edges = np.quantile(factors[:, k], np.linspace(0, 1, max_values + 1)[1:-1])
            codes[:, k] = np.unique(np.searchsorted(edges, factors[:, k], side="right"),
                                    return_inverse=True)[1]
    return codes


def entropy_of_codes(codes: np.ndarray) -> float:
    """Plug-in entropy (nats) of one column of integer codes."""
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def active_latents(latents: np.ndarray, *, threshold: float = 1 / 20) -> np.ndarray:
    """Boolean mask of latents whose range exceeds ``threshold`` times the largest range."""
    latents = _as_2d(latents, "latents")
    ranges = latents.max(axis=0) - latents.min(axis=0)
    if ranges.max() <= 0:
        return np.zeros(latents.shape[1], dtype=bool)
    return ranges > threshold * ranges.max()


def _concentration(mass: np.ndarray, axis: int) -> float:
    """Mean over the other axis of max/sum along ``axis``, rescaled from [1/m, 1] to [0, 1].
    Rows with no mass (an uninformative latent) count as evenly spread."""
    m = mass.shape[axis]
    if m <= 1:
        return 1.0
    total = mass.sum(axis=axis)
    ratio = np.where(total > 0, mass.max(axis=axis) / np.where(total > 0, total, 1.0), 1.0 / m)
    return float((ratio.mean() - 1.0 / m) / (1.0 - 1.0 / m))


# --------------------------------------------------------------------------------------------
# InfoMEC
# --------------------------------------------------------------------------------------------
def nmi_matrix(factor_codes: np.ndarray, latents: np.ndarray, *, n_neighbors: int = 10,
               seed: int = 0) -> np.ndarray:
    """NMI[k, j] = I(factor k; latent j) / H(factor k) with the kNN estimator (K x D)."""
    from sklearn.feature_selection import mutual_info_classif

    codes = _as_2d(factor_codes, "factor codes").astype(np.int64)
    latents = _standardize(_as_2d(latents, "latents"))
    _same_rows(codes, latents)
    nmi = np.zeros((codes.shape[1], latents.shape[1]))
    for k in range(codes.shape[1]):
        h = entropy_of_codes(codes[:, k])
        if h <= 0:
            continue  # a constant factor carries no information to share
        mi = mutual_info_classif(latents, codes[:, k], discrete_features=False,
                                 n_neighbors=n_neighbors, random_state=seed)
        nmi[k] = np.clip(mi / h, 0.0, 1.0)
    return nmi


def info_explicitness(factor_codes: np.ndarray, latents: np.ndarray, *, max_iter: int = 1000,
                      tol: float = 1e-6) -> float:
    """InfoE (Hsu et al. 2023): mean over factors of (H0 - CE) / H0.

    CE is the in-sample cross-entropy of an unregularised multinomial logistic regression from
    the latents to the factor's classes, fitted (L-BFGS) with balanced class weights; H0 is the
    cross-entropy of the same regression without latents, which balanced weights make the
    uniform prediction: log(number of classes). 0 = the latents tell nothing about the factor,
    1 = its classes are perfectly (linearly) predictable. As in the reference implementation
    (``disentangle/metrics/infomec.py`` of Hsu et al.): balanced classes, no penalty, every
    latent (active or not), in-sample loss.

    Deviations from the reference, and why:

    - **Fitted to convergence** (gradient below ``tol``, at most ``max_iter`` iterations; a warning
      when a fit stops at ``max_iter``), where the reference stops at 100 L-BFGS iterations. An
      unregularised logistic regression's optimum does not change under invertible linear maps
      of its inputs, so the AE's codes and the same codes after whitening + ICA have the same
      InfoE; capped at 100 iterations, the value depends on how well conditioned the codes are
      (the AE vs AE+ICA difference of the synthetic benchmark came from the cap alone).
    - **Whitened latents** instead of standardised ones: the same optimum (a linear map again),
      reached in far fewer iterations, and identical conditioning for any linear transform of
      the codes.
    - Remaining: when a factor's classes are linearly separable in-sample, the optimum lies at
      infinity: CE tends to 0, InfoE to 1, and the reported value approaches 1 as far as
      ``max_iter`` allows (the reference's cap stops that path early, which is why its values are
      lower on separable factors).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    codes = _as_2d(factor_codes, "factor codes").astype(np.int64)
    X = _whiten(_as_2d(latents, "latents"))
    _same_rows(codes, X)
    scores = []
    for k in range(codes.shape[1]):
        y = codes[:, k]
        n_classes = len(np.unique(y))
        if n_classes < 2:
            continue
        model = LogisticRegression(C=np.inf, class_weight="balanced", solver="lbfgs", max_iter=max_iter, tol=tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported below, once per factor
            model.fit(X, y)
        if int(np.max(model.n_iter_)) >= max_iter:
            log.warning("InfoE: the logistic regression of factor %d stopped at max_iter=%d before converging "
                        "(near-separable classes: InfoE approaches 1)", k, max_iter)
        ce = log_loss(y, model.predict_proba(X), labels=model.classes_)
        h0 = float(np.log(n_classes))
        scores.append(max(0.0, (h0 - ce) / h0))
    return float(np.mean(scores)) if scores else float("nan")


def infomec(factors: np.ndarray, latents: np.ndarray, *, n_neighbors: int = 10, seed: int = 0,
            active_threshold: float = 1 / 20, max_values: int = 20) -> dict:
    """InfoM, InfoE, InfoC of ``latents`` against ``factors``.

    Returns a dict with ``infom``, ``infoe``, ``infoc`` (floats), ``nmi`` (K x D array over all
    latents) and ``active`` (D boolean mask).
    """
    factors = _as_2d(factors, "factors")
    latents = _as_2d(latents, "latents")
    _same_rows(factors, latents)
    codes = discretize_factors(factors, max_values=max_values)
    active = active_latents(latents, threshold=active_threshold)
    nmi = np.zeros((codes.shape[1], latents.shape[1]))
    if active.any():
        nmi[:, active] = nmi_matrix(codes, latents[:, active], n_neighbors=n_neighbors, seed=seed)
    pruned = nmi[:, active]
    if pruned.shape[1] == 0:
        log.warning("no active latents: InfoMEC is undefined")
        return {"infom": np.nan, "infoe": np.nan, "infoc": np.nan, "nmi": nmi, "active": active}
    return {
        "infom": _concentration(pruned, axis=0),  # per latent, over factors
        "infoc": _concentration(pruned, axis=1),  # per factor, over latents
        "infoe": info_explicitness(codes, latents),  # every latent, as the reference
        "nmi": nmi,
        "active": active,
    }


# --------------------------------------------------------------------------------------------
# DCI
# --------------------------------------------------------------------------------------------
def dci(factors: np.ndarray, latents: np.ndarray, *, kinds: Sequence[str] | None = None,
        estimator: str = "gbt", test_fraction: float = 0.3, seed: int = 0, n_estimators: int = 50,
        lasso_alpha: float = 0.02) -> dict:
    """DCI disentanglement, completeness and informativeness.

    ``kinds``: one of ``FACTOR_KINDS`` per factor (default: all ordinal). Returns a dict with
    ``disentanglement``, ``completeness``, ``informativeness`` and ``importance`` (D x K).
    """
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import Lasso

    factors = _as_2d(factors, "factors")
    latents = _as_2d(latents, "latents")
    _same_rows(factors, latents)
    n_factors, n_latents = factors.shape[1], latents.shape[1]
    kinds = list(kinds) if kinds is not None else ["ordinal"] * n_factors
    if len(kinds) != n_factors or any(k not in FACTOR_KINDS for k in kinds):
        raise ValueError(f"kinds must give one of {FACTOR_KINDS} for each of the {n_factors} factors")
    if estimator not in DCI_ESTIMATORS:
        raise ValueError(f"estimator must be one of {DCI_ESTIMATORS}, got {estimator!r}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(factors), dtype=bool)
    test[rng.choice(len(factors), max(1, round(test_fraction * len(factors))), replace=False)] = True
    mu, sd = latents[~test].mean(axis=0), latents[~test].std(axis=0)
    X = (latents - mu) / np.where(sd > 0, sd, 1.0)

    importance = np.zeros((n_latents, n_factors))
    skill = np.zeros(n_factors)
    for k, kind in enumerate(kinds):
        y = factors[:, k]
        if kind == "categorical":
            y = np.unique(y, return_inverse=True)[1]
            if len(np.unique(y[~test])) < 2:
                continue
            if estimator == "gbt":
                model = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=3, random_state=seed)
                model.fit(X[~test], y[~test])
                importance[:, k] = model.feature_importances_
            else:
                # lasso on the one-hot classes: importance of a latent = its summed |coefficient|
                onehot = (y[:, None] == np.unique(y)[None, :]).astype(float)
                fit = Lasso(alpha=lasso_alpha).fit(X[~test], onehot[~test])
                importance[:, k] = np.abs(fit.coef_).sum(axis=0)
                model = _ArgmaxClassifier(fit, np.unique(y))
            acc = float(np.mean(model.predict(X[test]) == y[test]))
            majority = np.bincount(y[~test]).max() / (~test).sum()
            skill[k] = np.clip((acc - majority) / (1.0 - majority), 0.0, 1.0) if majority < 1 else 0.0
        else:
            y = y.astype(np.float64)
            y_sd = y[~test].std()
            if y_sd <= 0:
                continue
            y = (y - y[~test].mean()) / y_sd
            if estimator == "gbt":
                model = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=3, random_state=seed)
                model.fit(X[~test], y[~test])
                importance[:, k] = model.feature_importances_
            else:
                model = Lasso(alpha=lasso_alpha).fit(X[~test], y[~test])
                importance[:, k] = np.abs(model.coef_)
            resid = np.sum((y[test] - model.predict(X[test])) ** 2)
            total = np.sum((y[test] - y[test].mean()) ** 2)
            skill[k] = np.clip(1.0 - resid / total, 0.0, 1.0) if total > 0 else 0.0
    return {
        "disentanglement": _dci_score(importance, axis=1),
        "completeness": _dci_score(importance, axis=0),
        "informativeness": float(skill.mean()),
        "importance": importance,
    }


class _ArgmaxClassifier:
    def __init__(self, regressor, classes: np.ndarray):
        self.regressor, self.classes = regressor, classes

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(self.regressor.predict(X), axis=1)]


def _dci_score(importance: np.ndarray, axis: int) -> float:
    """1 - entropy (base = number of alternatives) of each latent's (axis=1) or factor's
    (axis=0) normalised importances, weighted by its share of the total importance."""
    total = importance.sum()
    m = importance.shape[axis]
    if total <= 0 or m <= 1:
        return float("nan") if total <= 0 else 1.0
    mass = importance.sum(axis=axis)
    denominator = np.expand_dims(mass, axis)
    p = importance / np.where(denominator > 0, denominator, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=axis) / np.log(m)
    return float(np.sum((mass / total) * (1.0 - h)))


# --------------------------------------------------------------------------------------------
# MCC and all together
# --------------------------------------------------------------------------------------------
def mcc_factors(factors: np.ndarray, latents: np.ndarray) -> float:
    """Mean |Pearson correlation| over factors after the best one-to-one matching of factors
    to latents (a factor without a partner, when K > D, counts as 0)."""
    factors = _as_2d(factors, "factors")
    latents = _as_2d(latents, "latents")
    _same_rows(factors, latents)
    m = match_components(factors, latents)
    return float(np.sum(np.abs(m.corr)) / factors.shape[1])


def disentanglement_scores(factors: np.ndarray, latents: np.ndarray, *,
                           kinds: Sequence[str] | None = None, seed: int = 0, n_neighbors: int = 10,
                           dci_estimator: str = "gbt") -> dict[str, float]:
    """InfoM, InfoE, InfoC, MCC (ordinal factors only) and DCI D/C/I as one flat dict."""
    factors = _as_2d(factors, "factors")
    kinds = list(kinds) if kinds is not None else ["ordinal"] * factors.shape[1]
    info = infomec(factors, latents, n_neighbors=n_neighbors, seed=seed)
    d = dci(factors, latents, kinds=kinds, estimator=dci_estimator, seed=seed)
    ordinal = [k for k, kind in enumerate(kinds) if kind == "ordinal"]
    return {
        "InfoM": info["infom"],
        "InfoE": info["infoe"],
        "InfoC": info["infoc"],
        "MCC": mcc_factors(factors[:, ordinal], latents) if ordinal else float("nan"),
        "DCI_D": d["disentanglement"],
        "DCI_C": d["completeness"],
        "DCI_I": d["informativeness"],
        "n_active": float(info["active"].sum()),
    }


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (samples x columns), got shape {x.shape}")
    if x.dtype.kind in "fc" and not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def _same_rows(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"factors and latents need the same rows, got {a.shape[0]} and {b.shape[0]}")


def _whiten(x: np.ndarray, *, rel_tol: float = 1e-10) -> np.ndarray:
    """PCA-whitened columns (unit variance, uncorrelated), numerically null directions dropped."""
    x = x.astype(np.float64) - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return np.zeros((x.shape[0], 1))
    return u[:, s > rel_tol * s[0]] * np.sqrt(x.shape[0])


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
