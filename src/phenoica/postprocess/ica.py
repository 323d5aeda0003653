"""Independent component analysis on whitened data, with three interchangeable backends.

All backends maximise the same log-cosh negentropy contrast under an orthogonality constraint
(symmetric decorrelation), so on the same data they find the same components up to sign and
order; :func:`fit_ica` then fixes sign (positive skewness) and order (decreasing excess
kurtosis, ties broken by the component's original index) so a run is reproducible.

Backends
--------
``"sklearn"``
    :class:`sklearn.decomposition.FastICA` (the reference): symmetric fixed point on all rows.
``"picard"``
    python-picard's Picard-O (``ortho=True, extended=True``): quasi-Newton on the same contrast.
    Its ``tol`` is a gradient-norm tolerance, not sklearn's change-of-W tolerance.
``"torch"`` (the default, ``"auto"``)
    The symmetric log-cosh fixed point in torch (float32 products, float64 decorrelation), on
    the GPU when there is one. Restarts run on a row subsample and the winner is refined on
    growing subsamples up to all rows, each stage to the same ``tol`` as sklearn's criterion
    (max |1 - |diag(W_new W_old^T)||). Same fixed point as sklearn, a fraction of the work.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..logs import get_logger, progress
from .whitening import Whitening, column_moments, fit_whitening

log = get_logger(__name__)

BACKENDS = ("torch", "sklearn", "picard")

# E[log cosh(nu)] for nu ~ N(0, 1) by Gauss-Hermite quadrature: the Gaussian reference of the
# negentropy approximation J(y) = (E G(y) - E G(nu))^2 used to rank restarts.
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(80)
LOGCOSH_GAUSS = float(np.sum(_GH_W * np.log(np.cosh(_GH_X))) / np.sqrt(2 * np.pi))

# The torch backend's schedule. Restarts compete for RESTART_ITER iterations on a row subsample
# (they only need to reach the right basin); the winner is then iterated to convergence on growing
# row prefixes (x4 per stage) up to all rows, so most iterations run on a fraction of the data and
# the full data only polishes a nearby fixed point.
RESTART_ROWS_PER_COMPONENT = 100
MIN_RESTART_ROWS = 10_000
RESTART_ITER = 25
STAGE_ROWS_PER_COMPONENT = 400
MIN_STAGE_ROWS = 20_000


def _logcosh(y: np.ndarray) -> np.ndarray:
    a = np.abs(y)
    return a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)


def negentropy(S: np.ndarray) -> np.ndarray:
    """Per-column log-cosh negentropy approximation of unit-variance sources (n x k)."""
    return (_logcosh(np.asarray(S, dtype=np.float64)).mean(axis=0) - LOGCOSH_GAUSS) ** 2


def sym_decorrelation(W: np.ndarray) -> np.ndarray:
    """(W W^T)^{-1/2} W: the nearest orthogonal matrix to W (rows stay unmixing vectors)."""
    W = np.asarray(W, dtype=np.float64)
    s, u = np.linalg.eigh(W @ W.T)
    s = np.clip(s, np.finfo(np.float64).tiny, None)
    return (u / np.sqrt(s)) @ u.T @ W


def random_orthogonal(k: int, seed: int) -> np.ndarray:
    """A Haar-distributed k x k rotation: QR of a Gaussian with the sign of diag(R) fixed."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))


def amari_distance(W: np.ndarray, A: np.ndarray) -> float:
    """Amari distance between an estimated unmixing ``W`` (k x p) and the true mixing ``A``
    (p x k): 0 when ``W @ A`` is a scaled signed permutation, at most 1."""
    P = np.abs(np.asarray(W, dtype=np.float64) @ np.asarray(A, dtype=np.float64))
    k = P.shape[0]
    if P.shape != (k, k) or k < 2:
        raise ValueError(f"W @ A must be square with k >= 2, got {P.shape}")
    rows = (P.sum(axis=1) / P.max(axis=1) - 1).sum()
    cols = (P.sum(axis=0) / P.max(axis=0) - 1).sum()
    return float((rows + cols) / (2 * k * (k - 1)))


@dataclass
class ICA:
    """Fitted ICA: ``sources = pre(Z - mean) @ unmixing.T`` where ``pre`` is the internal
    whitening (identity when the input was already white). ``n_iter`` counts all iterations
    (every restart and stage); ``kurtosis`` is each component's excess kurtosis on the fitting
    data (the order key)."""

    unmixing: np.ndarray
    mean: np.ndarray
    whitening: Whitening | None = None
    backend: str = "torch"
    seed: int = 0
    n_iter: int = 0
    converged: bool = True
    objective: float = float("nan")
    kurtosis: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_components(self) -> int:
        return int(self.unmixing.shape[0])

    @property
    def mixing(self) -> np.ndarray:
        """Mixing in the whitened space (the transpose, since the unmixing is orthogonal)."""
        return self.unmixing.T

    @property
    def full_unmixing(self) -> np.ndarray:
        """k x p matrix mapping centred input rows to sources."""
        if self.whitening is None:
            return self.unmixing
        return self.unmixing @ self.whitening.projection().T

    def transform(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z)
        if self.whitening is not None:
            Zw = self.whitening.transform(Z).astype(np.float64)
        else:
            if Z.ndim != 2 or Z.shape[1] != self.mean.shape[0]:
                raise InputError("Z", f"expected {self.mean.shape[0]} columns, got shape {Z.shape}")
            Zw = np.asarray(Z, dtype=np.float64) - self.mean
        return (Zw @ self.unmixing.T).astype(np.float32)

    def to_state(self) -> dict:
        state = {
            "unmixing": self.unmixing.astype(np.float64),
            "mean": self.mean.astype(np.float64),
            "backend": self.backend,
            "seed": int(self.seed),
            "n_iter": int(self.n_iter),
            "converged": bool(self.converged),
            "objective": float(self.objective),
            "kurtosis": np.asarray(self.kurtosis, dtype=np.float64),
        }
        if self.whitening is not None:
            state["whitening"] = self.whitening.to_state()
        return state

    @classmethod
    def from_state(cls, state: dict) -> ICA:
        wh = state.get("whitening")
        return cls(
            unmixing=np.asarray(state["unmixing"], dtype=np.float64),
            mean=np.asarray(state["mean"], dtype=np.float64),
            whitening=Whitening.from_state(wh) if isinstance(wh, dict) and wh else None,
            backend=str(state.get("backend", "")),
            seed=int(state.get("seed", 0)),
            n_iter=int(state.get("n_iter", 0)),
            converged=bool(state.get("converged", True)),
            objective=float(state.get("objective", np.nan)),
            kurtosis=np.asarray(state.get("kurtosis", np.zeros(0)), dtype=np.float64),
        )


# --------------------------------------------------------------------------------------------
# backends: each takes white, centred X (n x k, float32) and an initial W (k x k) and returns
# (W, n_iter, converged)


def _fastica_sklearn(X: np.ndarray, w_init: np.ndarray, tol: float, max_iter: int, seed: int):
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    model = FastICA(n_components=None, algorithm="parallel", whiten=False, fun="logcosh",
                    max_iter=max_iter, tol=tol, w_init=w_init, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    n_iter = int(model.n_iter_)
    return np.asarray(model.components_, dtype=np.float64), n_iter, n_iter < max_iter


def _picard(X: np.ndarray, w_init: np.ndarray, tol: float, max_iter: int, seed: int):
    from picard import picard

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, W, _, n_iter = picard(np.ascontiguousarray(X.T, dtype=np.float64), fun="tanh",
                                 ortho=True, extended=True, whiten=False, centering=False,
                                 max_iter=max_iter, tol=tol, w_init=w_init, random_state=seed,
                                 return_n_iter=True)
    converged = not any("did not converge" in str(w.message) for w in caught)
    return np.asarray(W, dtype=np.float64), int(n_iter), converged


def _torch_device(device: str | None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _sym_decorrelation_torch(W):
    """Torch twin of :func:`sym_decorrelation`, in float64. Kept in torch so the loop never
    alternates between torch's and numpy's BLAS thread pools (which stalls on busy CPUs)."""
    import torch

    W = W.double()
    s, u = torch.linalg.eigh(W @ W.T)
    s = s.clamp_min(torch.finfo(torch.float64).tiny)
    return (u / s.sqrt()) @ u.T @ W


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads (None: unchanged). Small k x k algebra and small
    stages are faster on one thread: waking a thread pool costs more than the work, and far more
    on a shared, busy machine."""
    import torch

    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None and n != before:
            torch.set_num_threads(before)


#: Per-iteration work (rows x components^2) below which a torch stage runs on one thread.
SINGLE_THREAD_WORK = 2e7


def _fastica_torch_stage(Xt, W: np.ndarray, tol: float, max_iter: int):
    """Symmetric log-cosh fixed point on the rows of ``Xt`` (a torch tensor), from ``W``."""
    import torch

    n, k = Xt.shape
    on_cpu = Xt.device.type == "cpu"
    small = on_cpu and n * k * k < SINGLE_THREAD_WORK
    with _torch_threads(1 if small else None):
        return _fastica_torch_loop(Xt, W, tol, max_iter, single_thread_algebra=on_cpu and not small)


def _fastica_torch_loop(Xt, W: np.ndarray, tol: float, max_iter: int, single_thread_algebra: bool):
    import torch

    n = Xt.shape[0]
    W64 = torch.as_tensor(W, dtype=torch.float64, device=Xt.device)
    converged, it = False, 0
    with torch.no_grad(), progress(total=max_iter, desc=f"ICA on {n} rows", leave=False) as bar:
        for it in range(1, max_iter + 1):
            bar.update()
            Wt = W64.to(Xt.dtype)
            G = torch.tanh(Xt @ Wt.T)                      # n x k
            gprime = 1.0 - (G * G).mean(dim=0)             # E g'(w^T x)
            W1 = (G.T @ Xt) / n - gprime[:, None] * Wt     # fixed-point update
            with _torch_threads(1 if single_thread_algebra else None):
                W1 = _sym_decorrelation_torch(W1)
            lim = float((torch.abs(torch.abs((W1 * W64).sum(dim=1)) - 1.0)).max())
            bar.set_postfix_str(f"change {lim:.1e}", refresh=False)
            W64 = W1
            if lim < tol:
                converged = True
                break
    return W64.cpu().numpy(), it, converged


def _stage_sizes(n: int, k: int) -> list[int]:
    """Row counts of the torch backend's convergence stages: a prefix, then x4 until all rows."""
    size = max(MIN_STAGE_ROWS, STAGE_ROWS_PER_COMPONENT * k)
    sizes = []
    while size < n:
        sizes.append(size)
        size *= 4
    sizes.append(n)
    return sizes


def _restart_rows(n: int, k: int) -> int:
    return min(n, max(MIN_RESTART_ROWS, RESTART_ROWS_PER_COMPONENT * k))


# --------------------------------------------------------------------------------------------


def _finalise(X: np.ndarray, W: np.ndarray, chunk_rows: int = 16384) -> tuple[np.ndarray, np.ndarray, float]:
    """Fix signs (positive skew) and order (decreasing excess kurtosis, ties by index) of the
    rows of W; also return the summed negentropy. Moments are accumulated in row blocks."""
    n, k = X.shape
    m3, m4, g = np.zeros(k), np.zeros(k), np.zeros(k)
    for start in range(0, n, chunk_rows):
        S = np.asarray(X[start:start + chunk_rows], dtype=np.float64) @ W.T
        S2 = S * S
        m3 += (S2 * S).sum(axis=0)
        m4 += (S2 * S2).sum(axis=0)
        g += _logcosh(S).sum(axis=0)
    signs = np.where(m3 < 0, -1.0, 1.0)
    kurt = m4 / n - 3.0
    order = np.lexsort((np.arange(k), -kurt))
    objective = float(((g / n - LOGCOSH_GAUSS) ** 2).sum())
    return (W * signs[:, None])[order], kurt[order], objective


def fit_ica(Z: np.ndarray, *, n_components: int | None = None, backend: str = "auto",
            seed: int = 0, n_restarts: int = 3, tol: float = 1e-4, max_iter: int = 200,
            whiten: bool | str = "auto", device: str | None = None,
            dtype: str = "float32") -> ICA:
    """Fit ICA on ``Z`` (n x p), normally already whitened.

    Parameters
    ----------
    n_components
        Number of components; fewer than ``p`` re-whitens ``Z`` to its leading components first.
    backend
        ``"auto"`` (= ``"torch"``), ``"torch"``, ``"sklearn"`` or ``"picard"``.
    seed, n_restarts
        Restart ``r`` starts from the Haar rotation drawn with seed ``seed + r``; the restart with
        the largest summed negentropy wins.
    tol, max_iter
        Convergence tolerance and iteration cap (per stage for torch).
    whiten
        ``"auto"`` whitens internally when ``Z``'s covariance differs from the identity (e.g. TVN
        output) or ``n_components < p``; ``True``/``False`` force it.
    device, dtype
        torch backend only: device (default: CUDA when present) and product precision.
    """
    Z = np.asarray(Z)
    if Z.ndim != 2 or Z.shape[0] < 3 or Z.shape[1] < 1:
        raise InputError("Z", f"need a 2-D array with at least 3 rows, got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise InputError("Z", "contains NaN or infinite values")
    if backend == "auto":
        backend = "torch"
    if backend not in BACKENDS:
        raise InputError("backend", f"unknown ICA backend {backend!r}; choose from {BACKENDS}")
    if n_restarts < 1:
        raise InputError("n_restarts", f"must be at least 1, got {n_restarts}")
    p = Z.shape[1]
    mean, cov = column_moments(Z)
    k = p if n_components is None else int(n_components)
    if not 1 <= k <= p:
        raise InputError("n_components", f"must be between 1 and {p}, got {n_components}")
    need_white = (k < p or float(np.max(np.abs(cov - np.eye(p)))) > 1e-3) if whiten == "auto" \
        else bool(whiten)
    whitening = None
    if need_white:
        whitening = fit_whitening(Z, n_components=k)
        X = whitening.transform(Z)
        k = whitening.n_components
    else:
        X = (np.asarray(Z, dtype=np.float64) - mean).astype(np.float32)
    inits = [random_orthogonal(k, seed + r) for r in range(n_restarts)]

    if backend == "torch":
        W, n_iter, converged = _fit_torch(X, inits, tol, max_iter, seed, device, dtype)
    else:
        solver = _fastica_sklearn if backend == "sklearn" else _picard
        best = None
        for r, w0 in enumerate(progress(inits, desc=f"ICA ({backend}) restarts")):
            W, n_iter, converged = solver(X, w0, tol, max_iter, seed + r)
            score = float(negentropy(X @ W.T).sum())
            log.info("ICA %s restart %d: %d iterations, converged=%s, negentropy %.5f",
                     backend, r, n_iter, converged, score)
            if best is None or score > best[0]:
                best = (score, W, n_iter, converged)
        _, W, n_iter, converged = best
    if not converged:
        log.warning("ICA (%s) did not converge to tol=%g in %d iterations", backend, tol, max_iter)
    W, kurt, objective = _finalise(X, W)
    return ICA(unmixing=W, mean=mean if whitening is None else np.zeros(p), whitening=whitening,
               backend=backend, seed=seed, n_iter=n_iter, converged=converged,
               objective=objective, kurtosis=kurt)


def _negentropy_torch(Xt, W: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        Y = Xt @ torch.as_tensor(W, dtype=Xt.dtype, device=Xt.device).T
        a = Y.abs()
        G = (a + torch.log1p(torch.exp(-2.0 * a)) - float(np.log(2.0))).double().mean(dim=0)
        return float(((G - LOGCOSH_GAUSS) ** 2).sum())


def _fit_torch(X: np.ndarray, inits: list[np.ndarray], tol: float, max_iter: int, seed: int,
               device: str | None, dtype: str):
    import torch

    dev = _torch_device(device)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    n, k = X.shape
    sizes = _stage_sizes(n, k)
    n_restart = _restart_rows(n, k)
    # One fixed random row order: every stage uses a prefix of it, so the samples nest.
    rows = np.random.default_rng(seed).permutation(n) if (len(sizes) > 1 or n_restart < n) else None
    Xall = torch.as_tensor(X if rows is None else X[rows], dtype=tdtype, device=dev)
    n_iter = 0
    W = inits[0]
    if len(inits) > 1:
        best = None
        for r, w0 in enumerate(inits):
            Wr, it, _ = _fastica_torch_stage(Xall[:n_restart], w0, tol, min(RESTART_ITER, max_iter))
            score = _negentropy_torch(Xall[:n_restart], Wr)
            n_iter += it
            log.info("ICA torch restart %d: %d iterations on %d rows, negentropy %.5f",
                     r, it, n_restart, score)
            if best is None or score > best[0]:
                best = (score, Wr)
        W = best[1]
    converged = False
    for size in sizes:
        W, it, converged = _fastica_torch_stage(Xall[:size], W, tol, max_iter)
        n_iter += it
        log.info("ICA torch stage on %d rows: %d iterations, converged=%s", size, it, converged)
    return W, n_iter, converged
