"""Independent component analysis on whitened data: restarts ranked after convergence, a
per-component stability index, and three interchangeable backends.

All backends use the log-cosh contrast under an orthogonality constraint. Their stationary
points coincide: symmetric FastICA stops where ``s_i E[g(y_i) y_j] = s_j E[g(y_j) y_i]`` (``g =
tanh``, ``s_i`` the sign of component ``i``'s non-Gaussianity), which is exactly where the
relative gradient of Picard-O's extended log-cosh likelihood vanishes. On the same data and from
the same start they therefore find the same components up to sign and order; :func:`fit_ica`
fixes sign (positive skewness) and order (decreasing excess kurtosis, ties by index).

Protocol (every backend)
------------------------
1. ``n_restarts`` random starts (restart ``r``: the Haar rotation drawn from the stream
   ``(seed, r)``, so different seeds share no start; ``"auto"``: :func:`auto_restarts`, more
   restarts when there are few rows per component) are each run **to convergence** on the
   restart rows: all rows for the reference backends; for torch a seeded row sample
   (:func:`restart_rows`) that grows while the restarts do not converge on it or disagree
   (:func:`_torch_restarts`), up to all rows.
2. The converged restarts are ranked by their summed negentropy on those rows; the best wins.
3. torch only: when the restart rows were a sample, the winner is refined on all rows.
4. Stability (:attr:`ICA.stability`): for each final component, the median over the other
   converged restarts of its best |correlation| after Hungarian matching
   (:func:`phenoica.metrics.matching.match_components`) on the restart rows. 1 = every restart
   finds the component; low = it depends on the seed. Needs :data:`MIN_STABILITY_RESTARTS`
   converged restarts (NaN otherwise).

Convergence means the same on every backend: the next step would turn no unmixing row by more
than ``tol`` (``max_i 1 - |<w_i, w_i'>|``, scikit-learn's criterion; for the quasi-Newton solver
``w'`` is the Newton step's row, not the damped one, so a short line-search step never counts
as convergence). python-picard's own ``tol`` is a gradient norm instead.

Backends
--------
``"sklearn"``
    :class:`sklearn.decomposition.FastICA` (the reference): symmetric fixed point, all rows.
``"picard"``
    python-picard's Picard-O (``ortho=True, extended=True``), all rows.
``"torch"`` (the default, ``"auto"``)
    Picard-O written for batches of restarts in torch (float32 data and products, float64
    k x k algebra; CUDA when present): L-BFGS on the orthogonal group preconditioned by the
    H~2 Hessian approximation, with a backtracking line search on the log-cosh loss. Unlike the
    FastICA fixed point, it converges on few rows per component (FastICA's iteration stops
    contracting there and oscillates), so the restarts can run on a small sample; the winner is
    then refined on all rows. The loop keeps everything on the device: the line search accepts
    or rejects per restart with masks, and convergence is read back every
    :data:`CHECK_EVERY_DEVICE` iterations on an accelerator (every iteration on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..logs import get_logger, progress
from .whitening import Whitening, fit_whitening

log = get_logger(__name__)

BACKENDS = ("torch", "sklearn", "picard")

# E[log cosh(nu)] for nu ~ N(0, 1) by Gauss-Hermite quadrature: the Gaussian reference of the
# negentropy approximation J(y) = (E G(y) - E G(nu))^2 used to rank restarts.
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(80)
LOGCOSH_GAUSS = float(np.sum(_GH_W * np.log(np.cosh(_GH_X))) / np.sqrt(2 * np.pi))
_LOG2 = math.log(2.0)

#: ``n_restarts="auto"``: ceil(AUTO_RESTARTS_RATIO * k / n) clipped to [min, max]: the minimum
#: (enough for the stability index) from 100 rows per component up, the maximum at 25 or fewer
#: (where the contrast has many local optima: BBBC021 has 8.5).
AUTO_RESTARTS_MIN = 5
AUTO_RESTARTS_MAX = 20
AUTO_RESTARTS_RATIO = 500
#: Converged restarts (the winner included) the stability index needs.
MIN_STABILITY_RESTARTS = 5
#: Components whose stability index is below this are unstable (the methods' default).
STABILITY_THRESHOLD = 0.95
#: torch backend: restarts start on min(n, max(MIN_RESTART_ROWS, RESTART_ROWS_PER_COMPONENT * k))
#: sampled rows (Picard-O converges there, FastICA's fixed point does not), a sample that grows
#: while they disagree (:func:`_torch_restarts`); the winner is refined on all rows.
RESTART_ROWS_PER_COMPONENT = 50
MIN_RESTART_ROWS = 5000
#: Growth of the restart sample between stages, and the iterations a restart gets on a sample
#: smaller than the data before the sample grows (see :func:`_torch_restarts`). On the bench
#: mixtures (k = 128): strongly non-Gaussian sources converge and agree at 50 rows per component
#: in ~45 iterations; weakly non-Gaussian ones (uniform) need ~400, where they converge in ~25.
STAGE_GROWTH = 8
STAGE_ITER = 60
#: Quasi-Newton settings (python-picard's defaults): L-BFGS memory, line-search halvings before
#: falling back to the gradient, floor of the Hessian approximation.
LBFGS_MEMORY = 7
LS_TRIES = 10
LAMBDA_MIN = 0.01
#: Rows x k elements of one row block of the torch loss/gradient pass (per restart): small
#: enough for the elementwise work to stay in cache, large enough for efficient matrix products.
#: Blocks depend on the rows only, so a restart's sums (and result) do not depend on which
#: other restarts share the batch.
CHUNK_ELEMENTS = 1 << 17
#: Convergence is read back to the host every this many iterations: on an accelerator (no host
#: sync in between; finished restarts stay frozen until then) and on the CPU (where it costs
#: nothing, so finished restarts leave the batch at once).
CHECK_EVERY_DEVICE = 8
CHECK_EVERY_CPU = 1
#: Per-iteration work (rows x restarts x k^2) from which the torch loss/gradient pass uses all
#: torch CPU threads (below: one thread; the k x k algebra always runs on one). Waking a thread
#: pool costs more than small work, and far more on a busy machine.
SINGLE_THREAD_WORK = 1e8


def _logcosh(y: np.ndarray) -> np.ndarray:
    a = np.abs(y)
    return a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)


def summed_negentropy(lc: np.ndarray) -> np.ndarray:
    """The restarts' ranking objective: the log-cosh negentropy approximation summed over the
    components, from each component's mean log cosh ``lc`` (..., k) on unit-variance sources."""
    return ((lc - LOGCOSH_GAUSS) ** 2).sum(axis=-1)


def sym_decorrelation(W: np.ndarray) -> np.ndarray:
    """(W W^T)^{-1/2} W: the nearest orthogonal matrix to W (rows stay unmixing vectors)."""
    W = np.asarray(W, dtype=np.float64)
    s, u = np.linalg.eigh(W @ W.T)
    s = np.clip(s, np.finfo(np.float64).tiny, None)
    return (u / np.sqrt(s)) @ u.T @ W


def random_orthogonal(k: int, seed: int | tuple[int, ...]) -> np.ndarray:
    """A Haar-distributed k x k rotation: QR of a Gaussian with the sign of diag(R) fixed.
    ``seed``: an integer or a tuple of integers (an independent stream per tuple)."""
    rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
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


def auto_restarts(n: int, k: int) -> int:
    """The number of restarts ``n_restarts="auto"`` gives for ``n`` rows and ``k`` components."""
    want = math.ceil(AUTO_RESTARTS_RATIO * k / max(n, 1))
    return int(min(AUTO_RESTARTS_MAX, max(AUTO_RESTARTS_MIN, want)))


def restart_rows(n: int, k: int) -> int:
    """Rows the torch backend's restarts run on (all ``n`` when that is few)."""
    return int(min(n, max(MIN_RESTART_ROWS, RESTART_ROWS_PER_COMPONENT * k)))


@dataclass
class ICA:
    """Fitted ICA: ``sources = pre(Z - mean) @ unmixing.T`` where ``pre`` is the internal
    whitening (identity when the input was already white).

    ``n_iter`` counts all iterations (every restart and the refinement); ``kurtosis`` is each
    component's excess kurtosis on the fitting data (the order key); ``stability`` each
    component's matched |corr| across restarts (see the module docstring; NaN when fewer than
    :data:`MIN_STABILITY_RESTARTS` restarts converged). ``restart_*`` describe every restart
    (objective on the restart rows, convergence, iterations); ``winner`` is the index of the
    restart that was kept and ``refine_n_iter`` the iterations of its refinement on all rows
    (0 when the restarts already used all rows). ``stage_rows`` (S,) and ``stage_n_iter``
    (S, restarts): the rows and iterations of each restart stage; ``restart_rows`` is the last
    stage's rows, on which the objectives and the stability index are measured."""

    unmixing: np.ndarray
    mean: np.ndarray
    whitening: Whitening | None = None
    backend: str = "torch"
    seed: int = 0
    n_iter: int = 0
    converged: bool = True
    objective: float = float("nan")
    kurtosis: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_restarts: int = 1
    restart_rows: int = 0
    restart_objective: np.ndarray = field(default_factory=lambda: np.zeros(0))
    restart_converged: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    restart_n_iter: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    winner: int = 0
    refine_n_iter: int = 0
    stage_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    stage_n_iter: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

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
            "stability": np.asarray(self.stability, dtype=np.float64),
            "n_restarts": int(self.n_restarts),
            "restart_rows": int(self.restart_rows),
            "restart_objective": np.asarray(self.restart_objective, dtype=np.float64),
            "restart_converged": np.asarray(self.restart_converged, dtype=np.int64),
            "restart_n_iter": np.asarray(self.restart_n_iter, dtype=np.int64),
            "winner": int(self.winner),
            "refine_n_iter": int(self.refine_n_iter),
            "stage_rows": np.asarray(self.stage_rows, dtype=np.int64),
            "stage_n_iter": np.asarray(self.stage_n_iter, dtype=np.int64),
        }
        if self.whitening is not None:
            state["whitening"] = self.whitening.to_state()
        return state

    @classmethod
    def from_state(cls, state: dict) -> ICA:
        wh = state.get("whitening")
        unmixing = np.asarray(state["unmixing"], dtype=np.float64)
        k = unmixing.shape[0]
        return cls(
            unmixing=unmixing,
            mean=np.asarray(state["mean"], dtype=np.float64),
            whitening=Whitening.from_state(wh) if isinstance(wh, dict) and wh else None,
            backend=str(state.get("backend", "")),
            seed=int(state.get("seed", 0)),
            n_iter=int(state.get("n_iter", 0)),
            converged=bool(state.get("converged", True)),
            objective=float(state.get("objective", np.nan)),
            kurtosis=np.asarray(state.get("kurtosis", np.zeros(0)), dtype=np.float64),
            # states written before the stability index existed: unknown (NaN)
            stability=np.asarray(state.get("stability", np.full(k, np.nan)), dtype=np.float64).reshape(-1),
            n_restarts=int(state.get("n_restarts", 1)),
            restart_rows=int(state.get("restart_rows", 0)),
            restart_objective=np.asarray(state.get("restart_objective", np.zeros(0)), dtype=np.float64).reshape(-1),
            restart_converged=np.asarray(state.get("restart_converged", np.zeros(0)), dtype=bool).reshape(-1),
            restart_n_iter=np.asarray(state.get("restart_n_iter", np.zeros(0)), dtype=np.int64).reshape(-1),
            winner=int(state.get("winner", 0)),
            refine_n_iter=int(state.get("refine_n_iter", 0)),
            stage_rows=np.asarray(state.get("stage_rows", np.zeros(0)), dtype=np.int64).reshape(-1),
            stage_n_iter=np.atleast_2d(np.asarray(state.get("stage_n_iter", np.zeros((0, 0))), dtype=np.int64)),
        )


# --------------------------------------------------------------------------------------------
# reference backends: each takes white, centred X (n x k, float32) and an initial W (k x k) and
# returns (W, n_iter, converged)


@contextlib.contextmanager
def _blas_threads(small: bool):
    """One BLAS thread for small problems: scipy's k x k eigh on a busy multi-threaded pool
    costs far more than the work (0.1-0.5 s per call on a loaded 2-core machine)."""
    if not small:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _fastica_sklearn(X: np.ndarray, w_init: np.ndarray, tol: float, max_iter: int, seed: int):
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    model = FastICA(n_components=None, algorithm="parallel", whiten=False, fun="logcosh",
                    max_iter=max_iter, tol=tol, w_init=w_init, random_state=seed)
    n, k = X.shape
    with warnings.catch_warnings(), _blas_threads(n * k * k < SINGLE_THREAD_WORK):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    n_iter = int(model.n_iter_)
    return np.asarray(model.components_, dtype=np.float64), n_iter, n_iter < max_iter


def _picard(X: np.ndarray, w_init: np.ndarray, tol: float, max_iter: int, seed: int):
    from picard import picard

    n, k = X.shape
    with warnings.catch_warnings(record=True) as caught, _blas_threads(n * k * k < SINGLE_THREAD_WORK):
        warnings.simplefilter("always")
        _, W, _, n_iter = picard(np.ascontiguousarray(X.T, dtype=np.float64), fun="tanh",
                                 ortho=True, extended=True, whiten=False, centering=False,
                                 max_iter=max_iter, tol=tol, w_init=w_init, random_state=seed,
                                 return_n_iter=True)
    converged = not any("did not converge" in str(w.message) for w in caught)
    return np.asarray(W, dtype=np.float64), int(n_iter), converged


# --------------------------------------------------------------------------------------------
# torch backend: batched Picard-O


def _torch_device(device: str | None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads (None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None and n != before:
            torch.set_num_threads(before)


def _contrast_stats(Xt, W, threads: int | None):
    """Log-cosh statistics of the sources ``Y_r = X W_r^T`` of every restart ``r``.

    ``W``: (R, k, k) float64. Returns float64 tensors: ``lc`` (R, k) mean log cosh, ``G``
    (R, k, k) with ``G[r, i, j] = E[tanh(y_i) y_j]`` and ``gp`` (R, k) mean tanh' = 1 - tanh^2.
    One exponential serves both: with ``v = 2y`` and ``e = exp(-|v|)``, log cosh y = |v|/2 +
    log(1 + e) - log 2 and |tanh y| = 2 / (1 + e) - 1 (``log`` of a number in [1, 2] needs no
    ``log1p``; the cheap vectorised kernels make this about twice as fast as softplus +
    sigmoid). Rows are processed in blocks of :data:`CHUNK_ELEMENTS` // k rows, on
    ``threads`` CPU threads (None: unchanged)."""
    import torch

    R, k, _ = W.shape
    n = Xt.shape[0]
    dev, f64 = Xt.device, torch.float64
    with _torch_threads(threads):
        Wt2 = (2.0 * W).to(Xt.dtype).transpose(1, 2)
        absum = torch.zeros(R, k, dtype=f64, device=dev)
        logsum = torch.zeros(R, k, dtype=f64, device=dev)
        t2 = torch.zeros(R, k, dtype=f64, device=dev)
        TV = torch.zeros(R, k, k, dtype=f64, device=dev)
        step = max(1, CHUNK_ELEMENTS // k)
        for start in range(0, n, step):
            V = torch.matmul(Xt[start:start + step], Wt2)          # v = 2y, (R, rows, k)
            P = V.abs()
            absum += P.sum(dim=1).to(f64)
            P = P.neg_().exp_().add_(1.0)                           # 1 + e
            logsum += torch.log(P).sum(dim=1).to(f64)
            T = torch.copysign(P.reciprocal_().mul_(2.0).sub_(1.0), V)   # tanh(y)
            t2 += (T * T).sum(dim=1).to(f64)
            TV += torch.bmm(T.transpose(1, 2), V).to(f64)
    lc = (0.5 * absum + logsum) / n - _LOG2
    return lc, TV / (2 * n), 1.0 - t2 / n


def _skew(M):
    return (M - M.transpose(-1, -2)) * 0.5


def _cayley(D):
    """Cayley retraction (I - D/2)^{-1} (I + D/2) of skew matrices D (R, k, k): orthogonal to
    float64 precision, no host sync (``solve_ex`` skips its error check)."""
    import torch

    eye = torch.eye(D.shape[-1], dtype=D.dtype, device=D.device).expand_as(D)
    Q, _ = torch.linalg.solve_ex(eye - 0.5 * D, eye + 0.5 * D)
    return Q


def _picard_geometry(lc, G, gp, y2):
    """Signs, relative gradient (skew), H~2 Hessian approximation and loss at the current
    points (python-picard's ``core_picard`` with ``ortho=True, extended=True``)."""
    import torch

    diagG = torch.diagonal(G, dim1=1, dim2=2)
    signs = torch.sign(gp * y2 - diagG)
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    Gs = G * signs[:, :, None]
    psid = gp * signs
    h_off = diagG * signs
    h = 0.5 * (psid[:, :, None] + psid[:, None, :] - h_off[:, :, None] - h_off[:, None, :])
    h = h.clamp_min(LAMBDA_MIN)
    grad = _skew(Gs)
    loss = (signs * lc).sum(dim=1)
    return signs, grad, h, loss


def _newton_change(grad, h):
    """FastICA-comparable change measure of the preconditioned Newton step -grad / h: per
    restart, max over rows of 1 - cos(angle the row would turn) ~ |row of the step|^2 / 2."""
    step = grad / h
    return 0.5 * (step * step).sum(dim=2).amax(dim=1)


def _lbfgs_direction(grad, h, S, Yd, rho):
    """L-BFGS two-loop recursion (memory slots ordered oldest -> newest, empty slots rho = 0),
    preconditioned by ``h``; returns the descent direction (skew)."""
    q = grad.clone()
    M = S.shape[1]
    alphas = [None] * M
    for j in reversed(range(M)):
        a = rho[:, j] * (S[:, j] * q).sum(dim=(1, 2))
        alphas[j] = a
        q = q - a[:, None, None] * Yd[:, j]
    z = _skew(q / h)
    for j in range(M):
        b = rho[:, j] * (Yd[:, j] * z).sum(dim=(1, 2))
        z = z + (alphas[j] - b)[:, None, None] * S[:, j]
    return -z


def _picard_torch(Xt, W0: np.ndarray, tol: float, max_iter: int, desc: str,
                  threads: int | None = None):
    """Picard-O (ortho, extended, log-cosh) from every start in ``W0`` (R, k, k) on the rows
    of ``Xt``; all restarts advance together, one loss-and-gradient pass per iteration. Returns
    (W (R, k, k), n_iter (R,), converged (R,), per-component mean log cosh (R, k)) as numpy.

    Per restart and iteration: a trial point ``cayley(alpha D) W`` along the L-BFGS direction
    ``D``; accepted when the loss decreases (then alpha = 1 and a new direction), else alpha is
    halved (after :data:`LS_TRIES` halvings: the preconditioned gradient with an empty memory;
    after as many more, the restart stalls). Accept/reject is done with masks, so the loop
    never waits for the device; finished restarts are frozen and, when the host looks (every
    iteration on the CPU, every :data:`CHECK_EVERY_DEVICE` on an accelerator), set aside."""
    import torch

    dev = Xt.device
    R, k, _ = W0.shape
    n = Xt.shape[0]
    f64 = torch.float64
    check_every = CHECK_EVERY_CPU if dev.type == "cpu" else CHECK_EVERY_DEVICE
    with _torch_threads(threads):
        second = (Xt.T @ Xt).to(f64) / n                       # E[x x^T] (picard's covariance)

    def stats(Wb):
        lc_, G_, gp_ = _contrast_stats(Xt, Wb, threads)
        y2_ = torch.einsum("rij,jl,ril->ri", Wb, second, Wb)
        return lc_, G_, gp_, y2_

    out_W, out_lc = np.zeros((R, k, k)), np.zeros((R, k))
    out_iter, out_done = np.zeros(R, dtype=np.int64), np.zeros(R, dtype=bool)
    ids = np.arange(R)                                           # restarts still in the loop
    W = torch.as_tensor(np.asarray(W0), dtype=f64, device=dev).clone()
    lc, G, gp, y2 = stats(W)
    signs, grad, h, loss = _picard_geometry(lc, G, gp, y2)
    S = torch.zeros(R, LBFGS_MEMORY, k, k, dtype=f64, device=dev)
    Yd = torch.zeros_like(S)
    rho = torch.zeros(R, LBFGS_MEMORY, dtype=f64, device=dev)
    D = _lbfgs_direction(grad, h, S, Yd, rho)
    alpha = torch.ones(R, dtype=f64, device=dev)
    fails = torch.zeros(R, dtype=torch.int64, device=dev)
    n_iter = torch.ones(R, dtype=torch.int64, device=dev)     # the evaluation at the start
    done = _newton_change(grad, h) < tol                        # converged: frozen
    stalled = torch.zeros(R, dtype=torch.bool, device=dev)

    def set_aside(keep):
        """Write finished restarts to the outputs; return the state of the others."""
        gone = ~keep
        W_end = torch.where(done[:, None, None], _cayley(-_skew(grad / h)) @ W, W)
        out_W[ids[gone]] = W_end[gone].cpu().numpy()
        out_lc[ids[gone]] = lc[gone].cpu().numpy()
        out_iter[ids[gone]] = n_iter[gone].cpu().numpy()
        out_done[ids[gone]] = done[gone].cpu().numpy()
        return keep

    it = 1
    with progress(total=max_iter, desc=desc, leave=False) as bar:
        while True:
            if it >= max_iter or it % check_every == 0:
                finished = (done | stalled).cpu().numpy()
                keep = ~finished if it < max_iter else np.zeros(len(ids), dtype=bool)
                if not keep.all():
                    set_aside(keep)
                    if not keep.any():
                        break
                    sel = torch.as_tensor(np.flatnonzero(keep), device=dev)
                    ids = ids[keep]
                    W, lc, grad, h, signs, loss, S, Yd, rho, D, alpha, fails, n_iter, done, stalled = (
                        t.index_select(0, sel) for t in
                        (W, lc, grad, h, signs, loss, S, Yd, rho, D, alpha, fails, n_iter, done, stalled))
            frozen = done | stalled
            step = alpha[:, None, None] * D
            W_try = _cayley(step) @ W
            lc_t, G_t, gp_t, y2_t = stats(W_try)
            loss_try = (signs * lc_t).sum(dim=1)
            accept = torch.isfinite(loss_try) & (loss_try < loss) & ~frozen
            signs_n, grad_n, h_n, loss_n = _picard_geometry(lc_t, G_t, gp_t, y2_t)
            # L-BFGS memory: the accepted step and gradient change; flushed on a sign change
            y_vec = grad_n - grad
            sy = (step * y_vec).sum(dim=(1, 2))
            new_rho = torch.where(sy > 1e-12, 1.0 / sy.clamp_min(1e-12), torch.zeros_like(sy))
            sign_change = (signs_n != signs).any(dim=1)
            acc1, acc3, acc4 = accept[:, None], accept[:, None, None], accept[:, None, None, None]
            S = torch.where(acc4, torch.cat([S[:, 1:], step[:, None]], dim=1), S)
            Yd = torch.where(acc4, torch.cat([Yd[:, 1:], y_vec[:, None]], dim=1), Yd)
            rho_new = torch.cat([rho[:, 1:], new_rho[:, None]], dim=1)
            rho = torch.where(acc1, torch.where(sign_change[:, None], torch.zeros_like(rho_new), rho_new), rho)
            W = torch.where(acc3, W_try, W)
            lc = torch.where(acc1, lc_t, lc)
            grad = torch.where(acc3, grad_n, grad)
            h = torch.where(acc3, h_n, h)
            signs = torch.where(acc1, signs_n, signs)
            loss = torch.where(accept, loss_n, loss)
            # rejected restarts halve the step; after LS_TRIES halvings they fall back to the
            # gradient with an empty memory (as python-picard); after as many more they stall
            fails = torch.where(accept, torch.zeros_like(fails), fails + 1)
            to_grad = fails == LS_TRIES
            D = torch.where(acc3, _lbfgs_direction(grad, h, S, Yd, rho),
                            torch.where(to_grad[:, None, None], -_skew(grad / h), D))
            rho = torch.where(to_grad[:, None], torch.zeros_like(rho), rho)
            alpha = torch.where(accept | to_grad, torch.ones_like(alpha), alpha * 0.5)
            stalled = stalled | ((fails >= 2 * LS_TRIES) & ~frozen)
            n_iter = n_iter + (~frozen).to(torch.int64)
            done = done | (accept & (_newton_change(grad, h) < tol))
            it += 1
            bar.update()
    log.debug("%s: %d iterations", desc, it)
    return out_W, out_iter, out_done, out_lc


# --------------------------------------------------------------------------------------------


def _finalise(X: np.ndarray, W: np.ndarray, chunk_rows: int = 16384):
    """Fix signs (positive skew) and order (decreasing excess kurtosis, ties by index) of the
    rows of W; also return the summed negentropy and the order. Moments are accumulated in row
    blocks (float32 products, float64 sums)."""
    import torch

    n, k = X.shape
    Wt = torch.as_tensor(W.T, dtype=torch.float32)
    m3, m4, g = (torch.zeros(k, dtype=torch.float64) for _ in range(3))
    for start in range(0, n, chunk_rows):
        S = torch.as_tensor(np.asarray(X[start:start + chunk_rows], dtype=np.float32)) @ Wt
        S2 = S * S
        m3 += (S2 * S).sum(dim=0, dtype=torch.float64)
        m4 += (S2 * S2).sum(dim=0, dtype=torch.float64)
        A = S.abs()
        g += (A + torch.log1p(torch.exp(-2.0 * A))).sum(dim=0, dtype=torch.float64)
    m3, m4, g = m3.numpy(), m4.numpy(), g.numpy() / n - _LOG2
    signs = np.where(m3 < 0, -1.0, 1.0)
    kurt = m4 / n - 3.0
    order = np.lexsort((np.arange(k), -kurt))
    objective = float(summed_negentropy(g))
    return (W * signs[:, None])[order], kurt[order], objective, order


def _stability(X: np.ndarray, W: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """Per row of ``W``: the median over ``others`` of its Hungarian-matched |correlation|
    (sources on the rows of ``X``)."""
    from ..metrics.matching import match_components

    k = W.shape[0]
    if len(others) < MIN_STABILITY_RESTARTS - 1:
        return np.full(k, np.nan)
    Xd = np.asarray(X, dtype=np.float64)
    C = np.cov(Xd, rowvar=False, ddof=0).reshape(k, k)
    sd_w = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", W, C, W), 1e-300, None))
    best = np.empty((len(others), k))
    for r, Wr in enumerate(others):
        sd_r = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", Wr, C, Wr), 1e-300, None))
        corr = (W @ C @ Wr.T) / np.outer(sd_w, sd_r)
        matched = match_components(W, Wr, corr=corr)
        best[r, matched.rows] = np.abs(matched.corr)
    return np.median(best, axis=0)


def _off_identity(Z: np.ndarray, mean: np.ndarray, chunk_rows: int = 16384) -> float:
    """max |cov(Z) - I|, from float32 products summed in float64 per row block (accurate to
    ~1e-6, plenty for the 1e-3 whiteness test, at a third of a float64 covariance's cost)."""
    import torch

    n, p = Z.shape
    cross = torch.zeros(p, p, dtype=torch.float64)
    for start in range(0, n, chunk_rows):
        # centred in float64 first (inputs can carry large offsets), multiplied in float32
        block = torch.as_tensor((np.asarray(Z[start:start + chunk_rows], dtype=np.float64) - mean)
                                .astype(np.float32))
        cross += (block.T @ block).double()
    cov = cross.numpy() / (n - 1)
    return float(np.max(np.abs(cov - np.eye(p))))


def _winner(converged: np.ndarray, objectives: np.ndarray) -> int:
    """The converged restart with the largest objective (all restarts when none converged)."""
    candidates = np.flatnonzero(converged) if converged.any() else np.arange(len(objectives))
    return int(candidates[np.argmax(objectives[candidates])])


def _torch_restarts(X: np.ndarray, inits: np.ndarray, tol: float, max_iter: int, seed: int,
                    device: str | None, dtype: str, stability_threshold: float):
    """The torch backend's restarts on growing row samples.

    All restarts run on ``m = restart_rows(n, k)`` sampled rows, at most :data:`STAGE_ITER`
    iterations while ``m < n``. The sample is enough when every restart converged and (with at
    least :data:`MIN_STABILITY_RESTARTS` restarts) the winner's components all reach
    ``stability_threshold`` against the others; otherwise it grows :data:`STAGE_GROWTH`-fold
    (nested: prefixes of one seeded row order) and the restarts begin again from their random
    starts, up to all rows, where they run to convergence (``max_iter``). Starting again keeps
    the result independent of the smaller samples (warm starts from restarts that wandered on
    too few rows converged no faster on the bench mixtures). Weakly non-Gaussian
    components need more rows than strongly non-Gaussian ones before restarts agree on them;
    this spends rows only where the data needs them. Returns the restarts' unmixings,
    iterations (summed over stages), convergence, mean log cosh on the final sample, that
    sample and ``[(rows, iterations per restart)]`` per stage."""
    n, k = X.shape
    R = len(inits)
    order = np.random.default_rng(seed).permutation(n)
    m = restart_rows(n, k)
    total, stages = np.zeros(R, dtype=np.int64), []
    while True:
        Xr = X if m == n else X[np.sort(order[:m])]
        cap = max_iter if m == n else min(max_iter, STAGE_ITER)
        Ws, iters, conv, lc = _fit_torch(Xr, inits, tol, cap, device, dtype, f"ICA restarts on {m} rows")
        total = total + iters
        stages.append((m, iters))
        if m == n:
            break
        enough = bool(conv.all())
        if enough and R >= MIN_STABILITY_RESTARTS:
            objectives = summed_negentropy(lc)
            winner = _winner(conv, objectives)
            stability = _stability(Xr, Ws[winner], [Ws[r] for r in range(R) if r != winner])
            enough = bool(np.nanmin(stability) >= stability_threshold)
            log.info("ICA torch restarts on %d rows: converged, stability min %.3f", m, np.nanmin(stability))
        else:
            log.info("ICA torch restarts on %d rows: %d of %d converged in %d iterations", m,
                     int(conv.sum()), R, cap)
        if enough:
            break
        m = min(n, STAGE_GROWTH * m)
    return Ws, total, conv, lc, Xr, stages


def fit_ica(Z: np.ndarray, *, n_components: int | None = None, backend: str = "auto",
            seed: int = 0, n_restarts: int | str = "auto", tol: float = 1e-4,
            max_iter: int = 200, whiten: bool | str = "auto", device: str | None = None,
            dtype: str = "float32", stability_threshold: float = STABILITY_THRESHOLD) -> ICA:
    """Fit ICA on ``Z`` (n x p), normally already whitened (see the module docstring).

    Parameters
    ----------
    n_components
        Number of components; fewer than ``p`` re-whitens ``Z`` to its leading components first.
    backend
        ``"auto"`` (= ``"torch"``), ``"torch"``, ``"sklearn"`` or ``"picard"``.
    seed, n_restarts
        Restart ``r`` starts from the Haar rotation drawn from the stream ``(seed, r)``; ``"auto"``:
        :func:`auto_restarts` (5 to 20, more when there are few rows per component). Each
        restart runs to convergence; the converged restart with the largest summed negentropy
        wins, and at least :data:`MIN_STABILITY_RESTARTS` give the stability index.
    tol, max_iter
        Convergence tolerance (largest 1 - |cos| by which a step turns an unmixing row) and
        iteration cap, per restart and for the refinement.
    whiten
        ``"auto"`` whitens internally when ``Z``'s covariance differs from the identity (e.g. TVN
        output) or ``n_components < p``; ``True``/``False`` force it.
    device, dtype
        torch backend only: device (default: CUDA when present) and product precision.
    stability_threshold
        torch backend only: the restart sample grows until every component of the winner
        reaches this stability (or the sample is all rows).
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
    if not (n_restarts == "auto" or (isinstance(n_restarts, (int, np.integer))
                                     and not isinstance(n_restarts, bool) and n_restarts >= 1)):
        raise InputError("n_restarts", f"must be 'auto' or an integer >= 1, got {n_restarts!r}")
    if dtype not in ("float32", "float64"):
        raise InputError("dtype", f"must be float32 or float64, got {dtype!r}")
    n, p = Z.shape
    k = p if n_components is None else int(n_components)
    if not 1 <= k <= p:
        raise InputError("n_components", f"must be between 1 and {p}, got {n_components}")
    mean = np.asarray(Z.sum(axis=0, dtype=np.float64)) / n
    if whiten == "auto":
        need_white = k < p or _off_identity(Z, mean) > 1e-3
    else:
        need_white = bool(whiten)
    whitening = None
    if need_white:
        whitening = fit_whitening(Z, n_components=k)
        X = whitening.transform(Z)
        k = whitening.n_components
    else:
        X = (np.asarray(Z, dtype=np.float64) - mean).astype(np.float32)
    R = auto_restarts(n, k) if n_restarts == "auto" else int(n_restarts)
    inits = np.stack([random_orthogonal(k, (seed, r)) for r in range(R)])

    refine_iter = 0
    if backend == "torch":
        Ws, iters, conv, lc, Xr, stages = _torch_restarts(X, inits, tol, max_iter, seed, device, dtype,
                                                          stability_threshold)
        m = Xr.shape[0]
    else:
        m, Xr = n, X
        solver = _fastica_sklearn if backend == "sklearn" else _picard
        results = [solver(X, w0, tol, max_iter, seed + r) for r, w0 in enumerate(inits)]
        Ws = np.stack([sym_decorrelation(W) for W, _, _ in results])
        iters = np.array([it for _, it, _ in results], dtype=np.int64)
        conv = np.array([c for _, _, c in results], dtype=bool)
        lc = np.stack([_logcosh(np.asarray(Xr, dtype=np.float64) @ W.T).mean(axis=0) for W in Ws])
        stages = [(n, iters)]
    objectives = summed_negentropy(lc)
    winner = _winner(conv, objectives)
    if not conv.any():
        log.warning("ICA (%s): none of %d restarts converged to tol=%g in %d iterations on %d rows; "
                    "keeping the best unconverged one", backend, R, tol, max_iter, m)
    for r in range(R):
        log.info("ICA %s restart %d: %s iterations on %s rows, converged=%s, negentropy %.5f%s",
                 backend, r, "+".join(str(int(it[r])) for _, it in stages),
                 "/".join(str(rows) for rows, _ in stages), bool(conv[r]), objectives[r],
                 " (winner)" if r == winner else "")
    W, converged = Ws[winner], bool(conv[winner])
    if m < n:
        Wf, it_f, conv_f, _ = _fit_torch(X, W[None], tol, max_iter, device, dtype, f"ICA refinement on {n} rows")
        W, refine_iter, converged = Wf[0], int(it_f[0]), bool(conv_f[0])
        log.info("ICA %s refinement of restart %d on all %d rows: %d iterations, converged=%s",
                 backend, winner, n, refine_iter, converged)
    if not converged:
        log.warning("ICA (%s) did not converge to tol=%g in %d iterations", backend, tol, max_iter)
    W = sym_decorrelation(W)
    others = [Ws[r] for r in np.flatnonzero(conv) if r != winner]
    stability = _stability(Xr, W, others)
    if R < MIN_STABILITY_RESTARTS:
        log.info("ICA (%s): %d restart(s); the stability index needs %d (NaN)", backend, R,
                 MIN_STABILITY_RESTARTS)
    elif np.isnan(stability).all():
        log.warning("ICA (%s): %d of %d restarts converged; the stability index needs %d converged "
                    "restarts (NaN)", backend, int(conv.sum()), R, MIN_STABILITY_RESTARTS)
    W, kurt, objective, order = _finalise(X, W)
    stability = stability[order]
    log.info("ICA %s: %d components, stability median %.3f (min %.3f)", backend, k,
             float(np.nanmedian(stability)) if np.isfinite(stability).any() else float("nan"),
             float(np.nanmin(stability)) if np.isfinite(stability).any() else float("nan"))
    return ICA(unmixing=W, mean=mean if whitening is None else np.zeros(p), whitening=whitening,
               backend=backend, seed=seed, n_iter=int(iters.sum()) + refine_iter,
               converged=converged, objective=objective, kurtosis=kurt, stability=stability,
               n_restarts=R, restart_rows=m, restart_objective=objectives,
               restart_converged=conv.astype(bool), restart_n_iter=iters.astype(np.int64),
               winner=winner, refine_n_iter=refine_iter,
               stage_rows=np.array([rows for rows, _ in stages], dtype=np.int64),
               stage_n_iter=np.stack([np.asarray(it, dtype=np.int64) for _, it in stages]))


def _fit_torch(X: np.ndarray, inits: np.ndarray, tol: float, max_iter: int, device: str | None,
               dtype: str, desc: str):
    import torch

    dev = _torch_device(device)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    n, k = X.shape
    # the k x k algebra always runs on one CPU thread (waking a thread pool costs more than the
    # work, far more on a busy machine); the loss/gradient pass uses all threads when it is big
    on_cpu = dev.type == "cpu"
    threads = torch.get_num_threads() if n * len(inits) * k * k >= SINGLE_THREAD_WORK else 1
    with torch.no_grad(), _torch_threads(1 if on_cpu else None):
        Xt = torch.as_tensor(np.ascontiguousarray(X), dtype=tdtype, device=dev)
        return _picard_torch(Xt, inits, tol, max_iter, desc, threads if on_cpu else None)
