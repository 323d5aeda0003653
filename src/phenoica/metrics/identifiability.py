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

**Like with like: one k-dimensional subspace for every map.** ICA can only unmix as many
components as it keeps, and whitening to k < d components drops the target's trailing variance.
Scoring the ICA map against the full target while the other maps use every dimension makes the
ICA error include that truncation (the ICA error then measures truncation, not alignment). With
``k`` set, both representations are first projected onto their own top-k principal axes (fitted
on the fitting rows; the projection stays in the original coordinates, so the permutation map
still matches the model's own coordinates), and *every* map is fitted on, and scored against,
these projections: same input, same target, same diameter. The ICA map then reconstructs its
target exactly (no floor), and ``variance_share`` / ``truncation_error`` record what the
subspace leaves out. ``k=None`` keeps every dimension (each side's ICA whitens to its own
numerical rank: use it for the supervised maps only).

ICA efficiency (the paper's figure) = (err_perm - err_ica) / (err_perm - err_rigid), a ratio of
mean errors: over several seed pairs, average the errors first, then take the ratio
(:func:`ica_efficiency`; ``phenoica.benchmarks.identifiability.summarize_alignment``).

Which k? ICA components are only worth comparing across runs when ICA finds them reproducibly
in the first place: :func:`ica_stability` fits ICA of one representation's top-k subspace on two
disjoint halves of its rows, several times, and scores how well the least reproducible component
matches, corrected for the agreement of random rotations. The largest k whose least stable component still reaches a
threshold is the default k (:func:`stable_k`).

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

import functools
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


def numerical_rank(Z: np.ndarray, *, rel_tol: float = 1e-5) -> int:
    """Number of principal components of ``Z`` with variance above ``rel_tol`` times the
    largest (the rank whitening keeps, ``phenoica.postprocess.whitening.fit_whitening``)."""
    Z = np.asarray(Z, dtype=np.float64)
    return _rank(np.linalg.svd(Z - Z.mean(axis=0), compute_uv=False), rel_tol)


def _rank(singular_values: np.ndarray, rel_tol: float = 1e-5) -> int:
    s = np.asarray(singular_values) ** 2
    if s.size == 0 or s[0] <= 0:
        return 0
    return int(np.sum(s > rel_tol * s[0]))


@dataclass(frozen=True)
class Subspace:
    """The top-k principal axes of a representation: ``project`` keeps the part of each row
    inside them, in the original coordinates (``(z - mean) @ basis @ basis.T + mean``)."""

    mean: np.ndarray  # p
    basis: np.ndarray  # p x k, orthonormal columns

    @property
    def k(self) -> int:
        return int(self.basis.shape[1])

    def project(self, Z: np.ndarray) -> np.ndarray:
        centred = np.asarray(Z, dtype=np.float64) - self.mean
        return (centred @ self.basis) @ self.basis.T + self.mean


@dataclass(frozen=True)
class PrincipalAxes:
    """Every principal axis of a representation (one SVD), from which :meth:`subspace` takes
    the top-k ones for any k: a sweep over k (and every seed pair at each k) needs no other SVD."""

    mean: np.ndarray  # p
    vt: np.ndarray  # min(n, p) x p, the axes as rows, by decreasing variance
    rank: int  # numerical rank (:func:`numerical_rank`)

    def subspace(self, k: int) -> Subspace:
        """The top-``k`` axes; ``k`` must not exceed the numerical rank."""
        if not 1 <= int(k) <= self.rank:
            raise ValueError(f"k must be between 1 and the numerical rank {self.rank} of the representation, "
                             f"got {k}")
        return Subspace(mean=self.mean, basis=self.vt[: int(k)].T.copy())


def principal_axes(Z: np.ndarray) -> PrincipalAxes:
    """The principal axes of ``Z`` (n x p) and its numerical rank, from one SVD."""
    Z = np.asarray(Z, dtype=np.float64)
    mean = Z.mean(axis=0)
    _, s, vt = np.linalg.svd(Z - mean, full_matrices=False)
    return PrincipalAxes(mean=mean, vt=vt, rank=_rank(s))


def principal_subspace(Z: np.ndarray, k: int) -> Subspace:
    """Top-``k`` principal axes of ``Z`` (n x p); ``k`` must not exceed its numerical rank."""
    return principal_axes(Z).subspace(k)


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


def fit_whitened_ica(Z: np.ndarray, *, n_components: int | None = None, seed: int = 0,
                     backend: str = "auto", n_restarts: int = 3) -> WhitenedICA:
    """PCA-whiten ``Z`` to ``k`` components (``phenoica.postprocess.whitening``) and unmix them
    with ICA (``phenoica.postprocess.ica.fit_ica``: log-cosh contrast, symmetric decorrelation,
    seeded restarts, signs and order fixed).

    ``k`` = ``n_components`` (an integer: the top-k principal subspace), or, when None, the
    numerical rank of ``Z``.
    """
    from ..postprocess.ica import fit_ica
    from ..postprocess.whitening import fit_whitening

    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 3:
        raise ValueError(f"need a 2-D array with at least 3 rows, got shape {Z.shape}")
    if float(np.max(np.ptp(Z, axis=0))) == 0.0:
        raise ValueError("cannot whiten a constant representation")
    k = None if n_components is None else min(int(n_components), *Z.shape)
    whitening = fit_whitening(Z, n_components=k)
    project = whitening.projection()  # d x k, centred rows -> white
    white = (Z - whitening.mean) @ project
    ica = fit_ica(white, seed=seed, backend=backend, n_restarts=n_restarts, whiten=False)
    rotation = np.asarray(ica.unmixing, dtype=np.float64)  # k x k, orthogonal
    unmixing = rotation @ project.T
    # white = sources @ rotation (orthogonal), and centred Z = white @ (components sqrt(eig))^T
    dewhiten = whitening.components * np.sqrt(whitening.eigenvalues + whitening.reg)[None, :]
    return WhitenedICA(mean=whitening.mean.astype(np.float64), unmixing=unmixing, mixing=dewhiten @ rotation.T)


def ica_stability(Z: np.ndarray, *, k: int, seeds: list[int] | tuple[int, ...], backend: str = "auto",
                  n_restarts: int = 1) -> tuple[float, float]:
    """Split-half reproducibility of the ICA of ``Z``'s top-``k`` principal subspace.

    For each seed the rows of ``Z`` are split at random (with that seed) into two halves and
    ICA is fitted on each half on its own (initial rotations from two seeds derived from it);
    the two sets of sources, computed on all rows, are matched (Hungarian on |correlation|) and
    the split scores its *least* well matched component. ``raw`` = the median of that score
    over the splits. Two unrelated sets of white components (one a Haar-random rotation of the
    other) already match with a k-dependent |correlation| (about 0.92 at k = 2, 0.65 at k = 4,
    0.35 at k = 16: :func:`rotation_null`), so the index is chance-corrected:
    ``stability = (raw - null) / (1 - null)``, 0 = no better than chance, 1 = the halves agree
    exactly, comparable across k.

    Split halves, not just new initialisations: a near-Gaussian subspace has sample-specific
    "independent" directions that every restart on the *same* rows finds again (and that a second
    representation of the same rows, rotated, shares, so the cross-seed ICA alignment cannot
    tell them from real sources); two disjoint halves do not share them.

    Returns ``(stability, raw)``; NaN for k < 2 or fewer than 4 k rows.
    """
    Z = np.asarray(Z, dtype=np.float64)
    if len(seeds) < 1:
        raise ValueError("stability needs at least one split seed")
    if k < 2:
        return float("nan"), float("nan")
    if len(Z) < 4 * k:
        log.warning("%d rows are too few for split-half ICA stability at k = %d (need %d): NaN", len(Z), k, 4 * k)
        return float("nan"), float("nan")
    worst = []
    for s in seeds:
        order = np.random.default_rng(int(s)).permutation(len(Z))
        halves = (order[: len(Z) // 2], order[len(Z) // 2:])
        fits = [fit_whitened_ica(Z[h], n_components=k, seed=2 * int(s) + j, backend=backend, n_restarts=n_restarts)
                for j, h in enumerate(halves)]
        m = match_components(fits[0].sources(Z), fits[1].sources(Z))
        worst.append(float(np.min(np.abs(m.corr))))
    raw = float(np.median(worst))
    null = rotation_null(k)
    return float((raw - null) / (1.0 - null)), raw


@functools.lru_cache(maxsize=256)
def rotation_null(k: int, *, n_draws: int = 400, seed: int = 0) -> float:
    """Median, over Haar-random k x k rotations Q, of the smallest |Q[i, j]| kept by the best
    matching: the score two unrelated sets of k white components get in :func:`ica_stability`."""
    if k < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    worst = np.empty(n_draws)
    for i in range(n_draws):
        q, r = np.linalg.qr(rng.normal(size=(k, k)))
        q = q * np.sign(np.diag(r))[None, :]  # Haar measure
        m = match_components(np.eye(k), np.eye(k), corr=q)
        worst[i] = np.min(np.abs(m.corr))
    return float(np.median(worst))


def stable_k(stability: dict[int, float], threshold: float) -> int | None:
    """The largest k whose stability (e.g. the least stable component's score) reaches
    ``threshold``; None when no k does."""
    good = [int(k) for k, value in stability.items() if np.isfinite(value) and value >= threshold]
    return max(good) if good else None


@dataclass(frozen=True)
class ICAMap:
    """A -> sources of A -> matched, sign-flipped sources of B -> B's space."""

    ica_a: WhitenedICA
    ica_b: WhitenedICA
    matrix: np.ndarray  # k_a x k_b signed permutation

    def __call__(self, A: np.ndarray) -> np.ndarray:
        return self.ica_b.reconstruct(self.ica_a.sources(A) @ self.matrix)


def fit_ica_map(A: np.ndarray, B: np.ndarray, *, n_components: int | None = None, seed: int = 0,
                backend: str = "auto", fits: tuple[WhitenedICA, WhitenedICA] | None = None
                ) -> tuple[ICAMap, np.ndarray, np.ndarray]:
    """Whiten + ICA each side independently on the fitting rows (or take ``fits``, ICA already
    fitted on them), then match sources by the best signed permutation. Returns the map and the
    fitting-row sources of A and B."""
    A, B = _pair(A, B)
    if fits is None:
        fits = (fit_whitened_ica(A, n_components=n_components, seed=seed, backend=backend),
                fit_whitened_ica(B, n_components=n_components, seed=seed, backend=backend))
    ica_a, ica_b = fits
    sa, sb = ica_a.sources(A), ica_b.sources(B)
    m = match_components(sa, sb)
    matrix = np.zeros((sa.shape[1], sb.shape[1]))
    matrix[m.rows, m.cols] = m.signs
    return ICAMap(ica_a, ica_b, matrix), sa, sb


# --------------------------------------------------------------------------------------------
# the measurement
# --------------------------------------------------------------------------------------------
def alignment_errors(A_fit: np.ndarray, B_fit: np.ndarray, A_test: np.ndarray, B_test: np.ndarray,
                     *, maps: tuple[str, ...] | list[str] = MAP_CLASSES, k: int | None = None,
                     diameter: str = "max", seed: int = 0, ica_backend: str = "auto",
                     linear_ridge: float | str = "cv",
                     ica_fits: tuple[WhitenedICA, WhitenedICA] | None = None,
                     subspaces: tuple[Subspace, Subspace] | None = None) -> pd.DataFrame:
    """Alignment of representation A onto B after the best map of each class, every map in the
    same k-dimensional subspace.

    Parameters
    ----------
    A_fit, B_fit
        Paired rows (same inputs) used to fit the maps (n_fit x p, n_fit x q).
    A_test, B_test
        Other paired rows on which the maps are scored.
    maps
        Map classes to evaluate (subset of ``MAP_CLASSES``).
    k
        Both sides are projected onto their own top-k principal axes (of the fitting rows)
        before any map is fitted or scored, so every map class sees the same input and aims at
        the same target (see the module docstring). None: no projection (each side's ICA keeps
        its numerical rank).
    diameter
        ``"max"`` or ``"q99"`` (see :func:`latent_diameter`); of the (projected) ``B_test``.
    seed, ica_backend
        ICA seed and backend (``phenoica.postprocess.ica.fit_ica``).
    linear_ridge
        Penalty of the linear map (see :func:`fit_linear_map`): ``"cv"`` (default), 0 for plain
        least squares, or a fixed value.
    ica_fits
        ICA of each side's (projected) fitting rows, already fitted (e.g. shared by the seed
        pairs of a study); None fits them here.
    subspaces
        The top-k principal subspaces of ``A_fit`` and ``B_fit`` (:func:`principal_subspace`),
        already computed (e.g. shared by the seed pairs of a study); None computes them here.

    Returns
    -------
    DataFrame with columns ``map``, ``metric``, ``value``. Metrics per map:
    ``mean_error``, ``sup_error`` (both over the diameter), ``r2`` (1 - residual / total sum of
    squares on the test rows). For ``permutation`` also ``mcc_in_sample`` and ``mcc_split``
    (raw coordinates); for ``ica`` the same MCCs between the two sets of ICA sources and
    ``n_components`` (sources kept on the target side). Rows with ``map="all"``: ``diameter``
    (the one the errors are divided by), ``variance_share`` (share of the target's test
    variance inside its k-subspace, 1 without projection) and ``truncation_error`` (mean
    distance of the target's test rows to their projection over the full target's diameter:
    what the ICA error used to include when only the ICA map was truncated). The ICA efficiency
    is not here: it is a ratio of (pair-averaged) errors, :func:`ica_efficiency`.
    """
    A_fit, B_fit = _pair(A_fit, B_fit)
    A_test, B_test = _pair(A_test, B_test)
    if A_fit.shape[1] != A_test.shape[1] or B_fit.shape[1] != B_test.shape[1]:
        raise ValueError("fit and test splits must have the same columns")
    unknown = sorted(set(maps) - set(MAP_CLASSES))
    if unknown:
        raise ValueError(f"unknown map classes {unknown}; known: {MAP_CLASSES}")
    rows: list[tuple[str, str, float]] = []
    if k is not None:
        full_diam = latent_diameter(B_test, kind=diameter, seed=seed)
        sub_a, sub_b = subspaces or (principal_subspace(A_fit, k), principal_subspace(B_fit, k))
        B_test_k = sub_b.project(B_test)
        left = B_test - B_test_k
        total = float(np.sum((B_test - B_test.mean(axis=0)) ** 2))
        share = 1.0 - float(np.sum((left - left.mean(axis=0)) ** 2)) / total if total > 0 else np.nan
        trunc = float(np.linalg.norm(left, axis=1).mean() / full_diam) if full_diam > 0 else np.nan
        A_fit, A_test = sub_a.project(A_fit), sub_a.project(A_test)
        B_fit, B_test = sub_b.project(B_fit), B_test_k
        rows += [("all", "variance_share", share), ("all", "truncation_error", trunc)]
    else:
        rows += [("all", "variance_share", 1.0), ("all", "truncation_error", 0.0)]
    diam = latent_diameter(B_test, kind=diameter, seed=seed)
    if diam <= 0:
        raise ValueError("target representation is constant on the test split (diameter 0)")
    rows.insert(0, ("all", "diameter", diam))
    total_ss = float(np.sum((B_test - B_test.mean(axis=0)) ** 2))
    fit_mask = np.r_[np.ones(len(A_fit), bool), np.zeros(len(A_test), bool)]
    A_all, B_all = np.vstack([A_fit, A_test]), np.vstack([B_fit, B_test])

    for name in maps:
        if name == "ica":
            h, _, _ = fit_ica_map(A_fit, B_fit, n_components=k, seed=seed, backend=ica_backend, fits=ica_fits)
        else:
            h = {"permutation": fit_permutation_map, "rigid": fit_rigid_map,
                 "linear": lambda a, b: fit_linear_map(a, b, ridge=linear_ridge)}[name](A_fit, B_fit)
        residual = B_test - h(A_test)
        dist = np.linalg.norm(residual, axis=1)
        rows += [(name, "mean_error", float(dist.mean() / diam)), (name, "sup_error", float(dist.max() / diam)),
                 (name, "r2", 1.0 - float(np.sum(residual**2)) / total_ss if total_ss > 0 else np.nan)]
        if name == "permutation":
            rows += [(name, "mcc_in_sample", mcc(A_all, B_all)),
                     (name, "mcc_split", mcc_split(A_all, B_all, fit_mask))]
        if name == "ica":
            sa, sb = h.ica_a.sources(A_all), h.ica_b.sources(B_all)
            rows += [(name, "mcc_in_sample", mcc(sa, sb)), (name, "mcc_split", mcc_split(sa, sb, fit_mask)),
                     (name, "n_components", float(h.ica_b.unmixing.shape[0]))]
    return pd.DataFrame(rows, columns=["map", "metric", "value"])


def ica_efficiency(err_permutation: float, err_rigid: float, err_ica: float, *, tol: float = 1e-12) -> float:
    """Share of the gap between signed-permutation and rigid alignment that unsupervised
    ICA closes: (perm - ica) / (perm - rigid); NaN when permutation and rigid tie. Over several
    seed pairs pass the pair-averaged errors (the paper's figures are ratios of mean errors)."""
    gap = err_permutation - err_rigid
    if not np.isfinite(gap) or abs(gap) <= tol:
        return float("nan")
    return float((err_permutation - err_ica) / gap)


def split_rows(n: int, *, fit_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean mask of the fitting rows: a seeded random ``fit_fraction`` of ``n`` rows (at
    least 2 rows on either side)."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    n_fit = round(n * fit_fraction)
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
