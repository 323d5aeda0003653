"""Matching two sets of components up to a signed permutation (Hungarian on |correlation|).

Shared by the separation scores (components vs simulated ground truth) and the
identifiability measurements (components of one training run vs another).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def cross_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation between every column of ``a`` (n x p) and of ``b`` (n x q) -> p x q.

    Constant columns get correlation 0 (not NaN) so they never win a match.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need two 2-D arrays with the same rows, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    na = np.linalg.norm(a, axis=0)
    nb = np.linalg.norm(b, axis=0)
    na[na == 0] = np.inf
    nb[nb == 0] = np.inf
    return (a.T @ b) / np.outer(na, nb)


@dataclass(frozen=True)
class Matching:
    """Result of matching columns of ``a`` to columns of ``b``.

    ``rows[i]`` (a column of ``a``) is paired with ``cols[i]`` (a column of ``b``) with
    correlation ``corr[i]`` (signed); ``signs`` = sign(corr).
    """

    rows: np.ndarray
    cols: np.ndarray
    corr: np.ndarray

    @property
    def signs(self) -> np.ndarray:
        return np.where(self.corr < 0, -1.0, 1.0)

    @property
    def mcc(self) -> float:
        return float(np.mean(np.abs(self.corr))) if self.corr.size else float("nan")


def match_components(a: np.ndarray, b: np.ndarray, corr: np.ndarray | None = None) -> Matching:
    """Best one-to-one signed matching of columns of ``a`` and ``b`` (maximises sum |corr|).

    With p != q columns, min(p, q) pairs are returned. Pass ``corr`` (p x q) to match on a
    correlation computed elsewhere (e.g. on another split).
    """
    c = cross_correlation(a, b) if corr is None else np.asarray(corr)
    rows, cols = linear_sum_assignment(-np.abs(c))
    return Matching(rows=rows, cols=cols, corr=c[rows, cols])


def mcc(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute correlation after the best signed-permutation matching (in-sample)."""
    return match_components(a, b).mcc


def mcc_split(a: np.ndarray, b: np.ndarray, fit_mask: np.ndarray) -> float:
    """MCC with the matching fitted on rows ``fit_mask`` and scored on the other rows."""
    fit_mask = np.asarray(fit_mask, dtype=bool)
    m = match_components(a[fit_mask], b[fit_mask])
    held = cross_correlation(a[~fit_mask], b[~fit_mask])
    return float(np.mean(np.abs(held[m.rows, m.cols])))
