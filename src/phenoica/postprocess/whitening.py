"""PCA whitening fitted on a fitting set and re-applied to any wells.

Whitening follows ``docs/science.md``: centre (optionally standardise each feature),
eigendecompose the covariance, keep ``k`` components (all whose eigenvalue exceeds ``rel_tol``
times the largest when ``k`` is not given) and scale them to unit variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..logs import get_logger

log = get_logger(__name__)

#: Rows per block when accumulating moments, so a float64 copy of X is never made whole.
CHUNK_ROWS = 16384


def _gram(block: np.ndarray) -> np.ndarray:
    """block^T block (torch's BLAS: faster than numpy's here, and it keeps to the one thread
    pool the ICA that follows uses)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(block))
    return (t.T @ t).double().numpy()


def _work_dtype(X: np.ndarray) -> type:
    """float32 products for float32 data (as scikit-learn's PCA/FastICA do), else float64."""
    return np.float32 if X.dtype == np.float32 else np.float64


def column_moments(X: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1) of the columns of ``X``, accumulated block by block.

    Two passes (mean first, then centred cross-products) so large feature offsets do not cancel
    catastrophically; float64 blocks, so no float64 copy of X is ever made whole. (float32
    products would be 3x faster but leave whitened data off the identity by ~1e-3 when the
    spectrum spans several decades.)
    """
    n, d = X.shape
    if n < 2:
        raise InputError("X", f"need at least 2 rows to estimate a covariance, got {n}")
    mean = np.asarray(X.sum(axis=0, dtype=np.float64)) / n
    cross = np.zeros((d, d))
    for start in range(0, n, chunk_rows):
        cross += _gram(np.asarray(X[start:start + chunk_rows], dtype=np.float64) - mean)
    return mean, cross / (n - 1)


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive (reproducible signs)."""
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


@dataclass
class Whitening:
    """A fitted whitening ``Z = ((X - mean) / feature_scale) @ components / sqrt(eigenvalues + reg)``.

    ``components`` is d x k (eigenvectors, largest eigenvalue first); ``feature_scale`` is all ones
    unless the whitening standardised features first.
    """

    mean: np.ndarray
    feature_scale: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    reg: float = 0.0

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.components.shape[0])

    def projection(self, whiten: bool = True) -> np.ndarray:
        """The d x k matrix applied to the centred (and scaled) data."""
        proj = self.components / self.feature_scale[:, None]
        if whiten:
            proj = proj / np.sqrt(self.eigenvalues + self.reg)
        return proj

    def transform(self, X: np.ndarray, *, whiten: bool = True,
                  chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        """Project ``X`` (n x d) to float32 (n x k); ``whiten=False`` gives plain PCA scores."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise InputError("X", f"expected {self.n_features} features, got shape {X.shape}")
        import torch

        work = _work_dtype(X)
        proj = torch.from_numpy(np.ascontiguousarray(self.projection(whiten), dtype=work))
        out = np.empty((X.shape[0], self.n_components), dtype=np.float32)
        for start in range(0, X.shape[0], chunk_rows):
            # centre in float64 first: raw features can carry large offsets
            block = (np.asarray(X[start:start + chunk_rows], dtype=np.float64) - self.mean).astype(work)
            out[start:start + chunk_rows] = (torch.from_numpy(block) @ proj).numpy()
        return out

    def to_state(self) -> dict:
        return {
            "mean": self.mean.astype(np.float64),
            "feature_scale": self.feature_scale.astype(np.float64),
            "components": self.components.astype(np.float64),
            "eigenvalues": self.eigenvalues.astype(np.float64),
            "reg": float(self.reg),
        }

    @classmethod
    def from_state(cls, state: dict) -> Whitening:
        return cls(
            mean=np.asarray(state["mean"], dtype=np.float64),
            feature_scale=np.asarray(state["feature_scale"], dtype=np.float64),
            components=np.asarray(state["components"], dtype=np.float64),
            eigenvalues=np.asarray(state["eigenvalues"], dtype=np.float64),
            reg=float(state.get("reg", 0.0)),
        )


def fit_whitening(X: np.ndarray, n_components: int | None = None, rel_tol: float = 1e-5, *,
                  standardize: bool = False, reg: float = 0.0) -> Whitening:
    """Fit PCA whitening on ``X`` (n x d).

    Parameters
    ----------
    n_components
        Components to keep; ``None`` keeps all with eigenvalue > ``rel_tol`` x the largest. A
        request above the numerical rank is lowered to the rank (with a warning), since whitening
        a null direction only amplifies rounding noise.
    rel_tol
        Relative eigenvalue floor defining the numerical rank.
    standardize
        Divide each feature by its standard deviation first (for feature tables with mixed units,
        e.g. CellProfiler profiles); constant features keep scale 1.
    reg
        Added to the eigenvalues before scaling (regularised whitening, used by TVN).
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError("X", f"expected a 2-D array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InputError("X", "contains NaN or infinite values")
    mean, cov = column_moments(X)
    scale = np.ones_like(mean)
    if standardize:
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        scale = np.where(std > 0, std, 1.0)
        cov = cov / np.outer(scale, scale)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    if evals[0] <= 0:
        raise InputError("X", "all features are constant; nothing to whiten")
    rank = int(np.sum(evals > rel_tol * evals[0]))
    if n_components is None:
        k = rank
    else:
        k = int(n_components)
        if k < 1:
            raise InputError("n_components", f"must be at least 1, got {n_components}")
        if k > rank:
            log.warning("n_components=%d exceeds the numerical rank %d of the fitting set "
                        "(%d rows, %d features); keeping %d", k, rank, X.shape[0], X.shape[1], rank)
            k = rank
    return Whitening(mean=mean, feature_scale=scale, components=_fix_signs(evecs[:, :k]),
                     eigenvalues=evals[:k], reg=float(reg))
