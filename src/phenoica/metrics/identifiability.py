"""Statistical near-identifiability: how well one representation maps onto another.

Two representations ``A`` (n x p) and ``B`` (n x q) of the *same* inputs (e.g. two training
seeds of one model, one layer) are compared after the best map ``h: A -> B`` of a class:

``permutation``
    signed permutation of coordinates (Hungarian on absolute correlations) plus translation.
``rigid``
    orthogonal map (Procrustes, via SVD) plus translation.
``linear``
    least squares with intercept (any affine map); ridge-stabilised by leave-one-out CV when
    the fitting rows are too few for plain least squares (see :func:`fit_linear_map`).
``ica``
    *unsupervised*: each side is whitened and unmixed by ICA on its own, the two sets of
    sources are matched by the best signed permutation, and the matched sources of ``A`` are
    mapped back through ``B``'s own mixing matrix.

Every class includes a translation, so the classes are nested (signed permutation is a special
rigid map, rigid a special affine map): with maps fitted and scored on the same rows,
``linear <= rigid <= permutation`` in root-mean-square error.

Maps are fitted on one split (``*_fit``) and scored on another (``*_test``). Errors are
reported relative to the **latent diameter** of the target: the largest Euclidean distance
between two test rows of ``B`` (``diameter="max"``, the textbook diameter of the point set),
or, less sensitive to outliers, the 99th percentile of pairwise distances
(``diameter="q99"``). Two errors per map: ``mean_error`` = mean_i ||b_i - h(a_i)|| / diameter
(the paper's table) and ``sup_error`` = max_i ||b_i - h(a_i)|| / diameter (the sup-norm
of the definition of near-identifiability).

The module also holds the decoder-isometry estimate: a decoder is (1 + L)-bi-Lipschitz up to a
global scale when every ratio ||g(z) - g(z')|| / ||z - z'|| lies in [c / (1 + L), c (1 + L)];
the smallest such L is sqrt(max ratio / min ratio) - 1, and the paper's rigid-alignment bound
grows like sqrt(2 L + L^2) times the diameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..logs import get_logger
from .matching import match_components, mcc, mcc_split

log = get_logger(__name__)

MAP_CLASSES: tuple[str, ...] = ("permutation", "rigid", "linear", "ica")
DIAMETERS: tuple[str, ...] = ("max", "q99")


# --------------------------------------------------------------------------------------------
# latent diameter
# --------------------------------------------------------------------------------------------
def latent_diameter(Z: np.ndarray, *, kind: str = "max", max_rows: int = 4000, seed: int = 0,
                    chunk: int = 1024) -> float:
    """Diameter of the point set ``Z`` (n x d).

    ``kind="max"``: the largest pairwise Euclidean distance (exact, computed in chunks).
    ``kind="q99"``: the 99th percentile of pairwise distances, on a seeded subsample of at most
    ``max_rows`` rows (robust to a few outlying points).
    """
    if kind not in DIAMETERS:
        raise ValueError(f"diameter kind must be one of {DIAMETERS}, got {kind!r}")
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 2:
        raise ValueError(f"need a 2-D array with at least 2 rows, got shape {Z.shape}")
    if kind == "q99":
        if Z.shape[0] > max_rows:
            Z = Z[np.random.default_rng(seed).choice(Z.shape[0], max_rows, replace=False)]
        from scipy.spatial.distance import pdist

        return float(np.quantile(pdist(Z), 0.99))
    sq = np.einsum("ij,ij->i", Z, Z)
    best = 0.0
    for start in range(0, Z.shape[0], chunk):
        block = Z[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ Z.T
        best = max(best, float(d2.max()))
    return float(np.sqrt(max(best, 0.0)))


# --------------------------------------------------------------------------------------------
# maps between representations
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AffineMap:
    """h(a) = (a - mean_in) @ matrix + mean_out, matrix p x q."""

    mean_in: np.ndarray
    matrix: np.ndarray
    mean_out: np.ndarray

    def __call__(self, A: np.ndarray) -> np.ndarray:
        return (np.asarray(A, dtype=np.float64) - self.mean_in) @ self.matrix + self.mean_out


def fit_permutation_map(A: np.ndarray, B: np.ndarray) -> AffineMap:
    """Best signed permutation (Hungarian on |correlation|) plus translation from A to B.

    With p != q only min(p, q) coordinates are paired; the other target coordinates are
    predicted by their mean.
    """
    A, B = _pair(A, B)
    m = match_components(A, B)
    matrix = np.zeros((A.shape[1], B.shape[1]))
    matrix[m.rows, m.cols] = m.signs
    return AffineMap(A.mean(axis=0), matrix, B.mean(axis=0))


def fit_rigid_map(A: np.ndarray, B: np.ndarray) -> AffineMap:
    """Orthogonal Procrustes plus translation: the rotation/reflection R minimising
    ||(A - mean A) R - (B - mean B)||_F (semi-orthogonal when p != q)."""
    A, B = _pair(A, B)
    Ac, Bc = A - A.mean(axis=0), B - B.mean(axis=0)
    u, _, vt = np.linalg.svd(Ac.T @ Bc, full_matrices=False)
    return AffineMap(A.mean(axis=0), u @ vt, B.mean(axis=0))


def fit_linear_map(A: np.ndarray, B: np.ndarray, *, ridge: float | str = "cv") -> AffineMap:
    """Least squares with intercept.

    ``ridge="cv"``: ridge penalty chosen by 5-fold cross-validation on the fitting rows over a
    log grid (relative to the mean eigenvalue of A's scatter), so a map fitted on about as many
    rows as dimensions does not interpolate noise; with ample rows it selects a negligible
    penalty, i.e. plain least squares. ``ridge=0``: plain (minimum-norm) least squares; a
    positive number: that fixed penalty.
    """
    A, B = _pair(A, B)
    Ac, Bc = A - A.mean(axis=0), B - B.mean(axis=0)
    if ridge == "cv":
        ridge = _ridge_by_cv(A, B)
    if float(ridge) > 0:
        # through the SVD: stable for any shape, no p x p system to form
        u, sv, vt = np.linalg.svd(Ac, full_matrices=False)
        matrix = vt.T @ ((sv / (sv**2 + float(ridge)))[:, None] * (u.T @ Bc))
    else:
        matrix, *_ = np.linalg.lstsq(Ac, Bc, rcond=None)
    return AffineMap(A.mean(axis=0), matrix, B.mean(axis=0))


def _ridge_by_cv(A: np.ndarray, B: np.ndarray, *, n_folds: int = 5, seed: int = 0) -> float:
    """Ridge penalty with the lowest K-fold validation error (sum of squares) on a log grid of
    1e-9 .. 10 times the mean eigenvalue of the scatter of ``A``. Efficient leave-one-out
    formulas are avoided on purpose: they break down numerically when rows <= dimensions."""
    n = A.shape[0]
    scale = float(np.sum((A - A.mean(axis=0)) ** 2)) / max(A.shape[1], 1)
    if scale <= 0 or n < 2 * n_folds:
        return 0.0
    alphas = scale * np.logspace(-9, 1, 21)
    folds = np.random.default_rng(seed).permutation(n) % n_folds
    errors = np.zeros(len(alphas))
    for k in range(n_folds):
        tr, va = folds != k, folds == k
        mu_a, mu_b = A[tr].mean(axis=0), B[tr].mean(axis=0)
        u, sv, vt = np.linalg.svd(A[tr] - mu_a, full_matrices=False)
        utb = u.T @ (B[tr] - mu_b)
        proj_va = (A[va] - mu_a) @ vt.T  # validation rows in the singular basis
        for i, alpha in enumerate(alphas):
            pred = proj_va @ ((sv / (sv**2 + alpha))[:, None] * utb) + mu_b
            errors[i] += float(np.sum((B[va] - pred) ** 2))
    return float(alphas[int(np.argmin(errors))])


def components_for_variance(Z: np.ndarray, share: float) -> int:
    """Smallest number of principal components holding ``share`` of the variance of ``Z``."""
    Z = np.asarray(Z, dtype=np.float64)
    s = np.linalg.svd(Z - Z.mean(axis=0), compute_uv=False) ** 2
    if s.sum() <= 0:
        return 1
    return int(min(np.searchsorted(np.cumsum(s) / s.sum(), share - 1e-12) + 1, len(s)))


@dataclass(frozen=True)
class WhitenedICA:
    """Whitening followed by ICA of one representation: sources = (Z - mean) @ unmixing.T,
    and back: Z ~ sources @ mixing.T + mean (exact when no component was dropped)."""

    mean: np.ndarray
    unmixing: np.ndarray  # k x d
    mixing: np.ndarray  # d x k

    def sources(self, Z: np.ndarray) -> np.ndarray:
        return (np.asarray(Z, dtype=np.float64) - self.mean) @ self.unmixing.T

    def reconstruct(self, S: np.ndarray) -> np.ndarray:
        return np.asarray(S, dtype=np.float64) @ self.mixing.T + self.mean


def fit_whitened_ica(Z: np.ndarray, *, n_components: int | float | None = None, seed: int = 0,
                     backend: str = "auto", n_restarts: int = 3) -> WhitenedICA:
    """PCA-whiten ``Z`` to ``k`` components (``phenoica.postprocess.whitening``) and unmix them
    with ICA (``phenoica.postprocess.ica``: log-cosh contrast, symmetric decorrelation, seeded
    restarts, signs and order fixed).

    ``k`` = ``n_components`` (an integer), the number of principal components holding that
    share of the variance (a float in (0, 1)), or, when None, the numerical rank of ``Z``.
    """
    from ..postprocess.ica import fit_ica
    from ..postprocess.whitening import fit_whitening

    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 3:
        raise ValueError(f"need a 2-D array with at least 3 rows, got shape {Z.shape}")
    if float(np.max(np.ptp(Z, axis=0))) == 0.0:
        raise ValueError("cannot whiten a constant representation")
    if n_components is None:
        k = None
    elif isinstance(n_components, float) and 0.0 < n_components < 1.0:
        k = components_for_variance(Z, n_components)
    else:
        k = min(int(n_components), *Z.shape)
    whitening = fit_whitening(Z, n_components=k)
    project = whitening.projection()  # d x k, centred rows -> white
    white = (Z - whitening.mean) @ project
    ica = fit_ica(white, seed=seed, backend=backend, n_restarts=n_restarts, whiten=False)
    rotation = np.asarray(ica.unmixing, dtype=np.float64)  # k x k, orthogonal
    unmixing = rotation @ project.T
    # white = sources @ rotation (orthogonal), and centred Z = white @ (components sqrt(eig))^T
    dewhiten = whitening.components * np.sqrt(whitening.eigenvalues + whitening.reg)[None, :]
    return WhitenedICA(mean=whitening.mean.astype(np.float64), unmixing=unmixing, mixing=dewhiten @ rotation.T)


@dataclass(frozen=True)
class ICAMap:
    """A -> sources of A -> matched, sign-flipped sources of B -> B's space."""

    ica_a: WhitenedICA
    ica_b: WhitenedICA
    matrix: np.ndarray  # k_a x k_b signed permutation

    def __call__(self, A: np.ndarray) -> np.ndarray:
        return self.ica_b.reconstruct(self.ica_a.sources(A) @ self.matrix)


def fit_ica_map(A: np.ndarray, B: np.ndarray, *, n_components: int | float | None = None, seed: int = 0,
                backend: str = "auto") -> tuple[ICAMap, np.ndarray, np.ndarray]:
    """Whiten + ICA each side independently on the fitting rows, then match sources by the
    best signed permutation. Returns the map and the fitting-row sources of A and B."""
    A, B = _pair(A, B)
    ica_a = fit_whitened_ica(A, n_components=n_components, seed=seed, backend=backend)
    ica_b = fit_whitened_ica(B, n_components=n_components, seed=seed, backend=backend)
    sa, sb = ica_a.sources(A), ica_b.sources(B)
    m = match_components(sa, sb)
    matrix = np.zeros((sa.shape[1], sb.shape[1]))
    matrix[m.rows, m.cols] = m.signs
    return ICAMap(ica_a, ica_b, matrix), sa, sb


# --------------------------------------------------------------------------------------------
# the measurement
# --------------------------------------------------------------------------------------------
def alignment_errors(A_fit: np.ndarray, B_fit: np.ndarray, A_test: np.ndarray, B_test: np.ndarray,
                     *, maps: tuple[str, ...] | list[str] = MAP_CLASSES, diameter: str = "max",
                     n_components: int | float | None = None, seed: int = 0, ica_backend: str = "auto",
                     linear_ridge: float | str = "cv") -> pd.DataFrame:
    """Alignment of representation A onto B after the best map of each class.

    Parameters
    ----------
    A_fit, B_fit
        Paired rows (same inputs) used to fit the maps (n_fit x p, n_fit x q).
    A_test, B_test
        Other paired rows on which the maps are scored.
    maps
        Map classes to evaluate (subset of ``MAP_CLASSES``).
    diameter
        ``"max"`` or ``"q99"`` (see :func:`latent_diameter`); of ``B_test``.
    n_components
        Components kept by whitening before ICA, on each side: an integer, a share of variance
        (float in (0, 1)), or None (the numerical rank).
    seed, ica_backend
        ICA seed and backend (``phenoica.postprocess.ica.fit_ica``).
    linear_ridge
        Penalty of the linear map (see :func:`fit_linear_map`): ``"cv"`` (default), 0 for plain
        least squares, or a fixed value.

    Returns
    -------
    DataFrame with columns ``map``, ``metric``, ``value``. Metrics per map:
    ``mean_error``, ``sup_error`` (both over the diameter), ``r2`` (1 - residual / total sum of
    squares on the test rows). For ``permutation`` also ``mcc_in_sample`` and ``mcc_split``
    (raw coordinates); for ``ica`` the same MCCs between the two sets of ICA sources,
    ``n_components`` (sources kept on the target side), ``projection_error`` (mean error of B's
    own projection onto its kept components: the floor of the ICA map's error; with fewer
    components than dimensions the ICA map also drops B's trailing, often noise-dominated,
    variance, so it can beat the rigid map and the efficiency can exceed 1) and
    ``efficiency`` = (err_perm - err_ica) / (err_perm - err_rigid) on ``mean_error`` (needs
    permutation and rigid too; NaN when they tie). One extra row ``map="all"``,
    ``metric="diameter"`` records the diameter used.
    """
    A_fit, B_fit = _pair(A_fit, B_fit)
    A_test, B_test = _pair(A_test, B_test)
    if A_fit.shape[1] != A_test.shape[1] or B_fit.shape[1] != B_test.shape[1]:
        raise ValueError("fit and test splits must have the same columns")
    unknown = sorted(set(maps) - set(MAP_CLASSES))
    if unknown:
        raise ValueError(f"unknown map classes {unknown}; known: {MAP_CLASSES}")
    diam = latent_diameter(B_test, kind=diameter, seed=seed)
    if diam <= 0:
        raise ValueError("target representation is constant on the test split (diameter 0)")
    total_ss = float(np.sum((B_test - B_test.mean(axis=0)) ** 2))
    fit_mask = np.r_[np.ones(len(A_fit), bool), np.zeros(len(A_test), bool)]
    A_all, B_all = np.vstack([A_fit, A_test]), np.vstack([B_fit, B_test])

    rows: list[tuple[str, str, float]] = [("all", "diameter", diam)]
    mean_err: dict[str, float] = {}
    for name in maps:
        if name == "ica":
            h, _, _ = fit_ica_map(A_fit, B_fit, n_components=n_components, seed=seed, backend=ica_backend)
        else:
            h = {"permutation": fit_permutation_map, "rigid": fit_rigid_map,
                 "linear": lambda a, b: fit_linear_map(a, b, ridge=linear_ridge)}[name](A_fit, B_fit)
        residual = B_test - h(A_test)
        dist = np.linalg.norm(residual, axis=1)
        mean_err[name] = float(dist.mean() / diam)
        rows += [(name, "mean_error", mean_err[name]), (name, "sup_error", float(dist.max() / diam)),
                 (name, "r2", 1.0 - float(np.sum(residual**2)) / total_ss if total_ss > 0 else np.nan)]
        if name == "permutation":
            rows += [(name, "mcc_in_sample", mcc(A_all, B_all)),
                     (name, "mcc_split", mcc_split(A_all, B_all, fit_mask))]
        if name == "ica":
            sa, sb = h.ica_a.sources(A_all), h.ica_b.sources(B_all)
            floor = np.linalg.norm(B_test - h.ica_b.reconstruct(h.ica_b.sources(B_test)), axis=1)
            rows += [(name, "mcc_in_sample", mcc(sa, sb)), (name, "mcc_split", mcc_split(sa, sb, fit_mask)),
                     (name, "n_components", float(h.ica_b.unmixing.shape[0])),
                     (name, "projection_error", float(floor.mean() / diam))]
    if {"permutation", "rigid", "ica"} <= set(maps):
        rows.append(("ica", "efficiency", ica_efficiency(mean_err["permutation"], mean_err["rigid"],
                                                         mean_err["ica"])))
    return pd.DataFrame(rows, columns=["map", "metric", "value"])


def ica_efficiency(err_permutation: float, err_rigid: float, err_ica: float, *, tol: float = 1e-12) -> float:
    """Share of the gap between signed-permutation and rigid alignment that unsupervised
    ICA closes: (perm - ica) / (perm - rigid); NaN when permutation and rigid tie."""
    gap = err_permutation - err_rigid
    if not np.isfinite(gap) or abs(gap) <= tol:
        return float("nan")
    return float((err_permutation - err_ica) / gap)


def split_rows(n: int, *, fit_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean mask of the fitting rows: a seeded random ``fit_fraction`` of ``n`` rows (at
    least 2 rows on either side)."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    n_fit = int(round(n * fit_fraction))
    if n_fit < 2 or n - n_fit < 2:
        raise ValueError(f"{n} rows are too few to split into fitting and test rows")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, n_fit, replace=False)] = True
    return mask


# --------------------------------------------------------------------------------------------
# decoder isometry
# --------------------------------------------------------------------------------------------
def sample_pairs(latents: np.ndarray, n_pairs: int, *, seed: int = 0, local: bool = False) -> np.ndarray:
    """Index pairs (n_pairs x 2) of distinct rows of ``latents``.

    ``local=False``: uniformly random pairs. ``local=True``: each pair is a random row and
    one of its 5 nearest neighbours (ratios probe the decoder's local stretch, closer to its
    Jacobian).
    """
    latents = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    n = latents.shape[0]
    if n < 2:
        raise ValueError("need at least 2 latents to form pairs")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, n_pairs)
    if local:
        from sklearn.neighbors import NearestNeighbors

        k = min(6, n)
        nn = NearestNeighbors(n_neighbors=k).fit(latents)
        neigh = nn.kneighbors(latents[first], return_distance=False)[:, 1:]
        second = neigh[np.arange(n_pairs), rng.integers(0, k - 1, n_pairs)]
    else:
        second = (first + rng.integers(1, n, n_pairs)) % n
    return np.stack([first, second], axis=1)


def distance_ratios(latents: np.ndarray, outputs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """||g(z_i) - g(z_j)|| / ||z_i - z_j|| for every pair (rows flattened; pairs at zero
    latent distance are dropped)."""
    z = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    x = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if len(z) != len(x):
        raise ValueError(f"latents ({len(z)}) and outputs ({len(x)}) differ in rows")
    pairs = np.asarray(pairs, dtype=int)
    dz = np.linalg.norm(z[pairs[:, 0]] - z[pairs[:, 1]], axis=1)
    dx = np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1)
    keep = dz > 0
    return dx[keep] / dz[keep]


def bilipschitz_from_ratios(ratios: np.ndarray, *, quantile: float = 0.0) -> float:
    """Smallest L with all ratios in [c / (1 + L), c (1 + L)] for the best scale c:
    L = sqrt(hi / lo) - 1 with lo, hi the ``quantile`` and ``1 - quantile`` ratio quantiles
    (0 = extremes; e.g. 0.01 ignores the 1 % most extreme pairs on either side)."""
    r = np.asarray(ratios, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise ValueError("no finite distance ratios")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    lo, hi = np.quantile(r, quantile), np.quantile(r, 1.0 - quantile)
    if lo <= 0:
        return float("inf")  # the decoder collapses some pairs: not injective on them
    return float(np.sqrt(hi / lo) - 1.0)


def decoder_bilipschitz(decode: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, *,
                        n_pairs: int = 2000, seed: int = 0, local: bool = False,
                        quantile: float = 0.01) -> dict[str, float]:
    """Estimate a decoder's bi-Lipschitz constant 1 + L from pairs of latents.

    ``decode`` maps an array of latents (rows) to outputs (rows, any trailing shape). Returns
    ``bilipschitz_L``, ``ratio_median`` (the scale c), ``ratio_min``/``ratio_max`` (the
    quantiles used) and ``rigid_bound`` = sqrt(2 L + L^2), the paper's rigid-error bound in
    units of the latent diameter.
    """
    latents = np.asarray(latents)
    pairs = sample_pairs(latents, n_pairs, seed=seed, local=local)
    used = np.unique(pairs)
    outputs = np.asarray(decode(latents[used]))
    remap = np.full(len(latents), -1)
    remap[used] = np.arange(len(used))
    ratios = distance_ratios(latents[used], outputs, remap[pairs])
    L = bilipschitz_from_ratios(ratios, quantile=quantile)
    return {"bilipschitz_L": L, "ratio_median": float(np.median(ratios)),
            "ratio_min": float(np.quantile(ratios, quantile)),
            "ratio_max": float(np.quantile(ratios, 1 - quantile)),
            "rigid_bound": rigid_error_bound(L)}


def rigid_error_bound(L: float) -> float:
    """sqrt(2 L + L^2): the paper's rigid near-identifiability error per unit diameter."""
    return float(np.sqrt(2.0 * L + L * L)) if np.isfinite(L) else float("inf")


def _pair(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"representations must be 2-D (rows x features), got {A.shape} and {B.shape}")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"paired representations need the same rows, got {A.shape[0]} and {B.shape[0]}")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise ValueError("representations contain NaN or infinite values")
    return A, B
