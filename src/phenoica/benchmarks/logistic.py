"""Many L2-regularised binary logistic-regression probes fitted at once: one per perturbation,
each separating that perturbation's wells from control wells drawn from one shared pool.

The held-out-batch AUROC task fits an L2 probe on every coordinate and an L2 probe on the top-k
coordinates for each perturbation and fold. Fitted one by one with scikit-learn these cost
seconds per perturbation at 384 dimensions; here all probes of a fold are fitted together:

- :func:`fit_l2_probes` (all coordinates): the control rows of every probe are a prefix of one
  seeded order of the pool, so the control part of every objective and gradient is one matrix
  product ``C @ W`` for all probes; the case rows are stacked into a padded tensor. Batched
  L-BFGS, preconditioned by the curvature of the loss at zero on the controls (the same for
  every probe: one Cholesky factor), Armijo backtracking per probe.
- :func:`fit_small_probes` (a few coordinates per probe, e.g. the top-k probe): batched Newton
  steps with exact Hessians on per-probe gathered rows.

The L1 probe is not fitted here: batched OWL-QN (orthant-wise L-BFGS) needed hundreds of
iterations on these near-separable problems and was slower than liblinear per probe, so the AUROC
task keeps liblinear for it.

Both functions minimise scikit-learn's objective exactly (``LogisticRegression(l1_ratio=0,
solver="newton-cholesky")``)::

    C * sum_i s_i log(1 + exp(-y_i (x_i w + b))) + ||w||^2 / 2      (intercept b not penalised)

with balanced sample weights ``s_i`` (each class holds half of the total weight, the number of
rows): the solutions agree up to the solver tolerance (tests compare the AUROCs with
``LogisticRegression`` to 1e-4). Computation in float64 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

softplus = torch.nn.functional.softplus


@dataclass
class ProbeData:
    """The rows of ``P`` probes sharing one pool of control rows.

    ``cases``: (P, m, d) padded case rows (rows beyond ``n_cases[p]`` are ignored);
    ``controls``: (c, d) the control pool in its seeded order: probe ``p`` uses its first
    ``n_controls[p]`` rows.
    """

    cases: torch.Tensor
    n_cases: torch.Tensor
    controls: torch.Tensor
    n_controls: torch.Tensor

    @property
    def n_probes(self) -> int:
        return int(self.cases.shape[0])

    @property
    def dim(self) -> int:
        return int(self.cases.shape[2])


class _Objective:
    """The objective of every probe divided by ``C * n_rows`` (so each class has weight 1/2 and
    the L2 term is ``||w||^2 / (2 C n_rows)``), and its gradient. ``theta``: (P, d + 1), the
    weights then the intercept."""

    def __init__(self, cases, case_w, controls, ctrl_w, l2):
        self.cases, self.case_w = cases, case_w            # (P, m, d), (P, m)
        self.controls, self.ctrl_w = controls, ctrl_w      # (c, d), (c, P)
        self.l2 = l2                                       # (P,)

    @classmethod
    def build(cls, data: ProbeData, C: float) -> _Objective:
        dt, dev = data.cases.dtype, data.cases.device
        m = data.cases.shape[1]
        case_w = ((torch.arange(m, device=dev)[None, :] < data.n_cases[:, None]).to(dt)
                  / (2.0 * data.n_cases[:, None].to(dt)))
        c = int(data.n_controls.max()) if data.n_probes else 0
        ctrl_w = ((torch.arange(c, device=dev)[:, None] < data.n_controls[None, :]).to(dt)
                  / (2.0 * data.n_controls[None, :].to(dt)))
        l2 = 1.0 / (C * (data.n_cases + data.n_controls).to(dt))
        return cls(data.cases, case_w, data.controls[:c], ctrl_w, l2)

    def subset(self, idx: torch.Tensor) -> _Objective:
        ctrl_w = self.ctrl_w[:, idx]
        used = torch.nonzero(ctrl_w.sum(1) > 0).flatten()
        c = int(used.max()) + 1 if used.numel() else 0
        return _Objective(self.cases[idx], self.case_w[idx], self.controls[:c], ctrl_w[:c],
                          self.l2[idx])

    def _scores(self, theta):
        w, b = theta[:, :-1], theta[:, -1]
        z_case = torch.bmm(self.cases, w[:, :, None])[:, :, 0] + b[:, None]            # (P, m)
        z_ctrl = self.controls @ w.T + b[None, :]                                       # (c, P)
        return z_case, z_ctrl

    def value(self, theta):
        z_case, z_ctrl = self._scores(theta)
        return ((softplus(-z_case) * self.case_w).sum(1) + (softplus(z_ctrl) * self.ctrl_w).sum(0)
                + 0.5 * self.l2 * (theta[:, :-1] ** 2).sum(1))

    def value_grad(self, theta):
        z_case, z_ctrl = self._scores(theta)
        value = ((softplus(-z_case) * self.case_w).sum(1) + (softplus(z_ctrl) * self.ctrl_w).sum(0)
                 + 0.5 * self.l2 * (theta[:, :-1] ** 2).sum(1))
        r_case = -torch.sigmoid(-z_case) * self.case_w                                  # dloss/dz
        r_ctrl = torch.sigmoid(z_ctrl) * self.ctrl_w
        grad = torch.empty_like(theta)
        grad[:, :-1] = (torch.bmm(r_case[:, None, :], self.cases)[:, 0, :]
                        + (self.controls.T @ r_ctrl).T + self.l2[:, None] * theta[:, :-1])
        grad[:, -1] = r_case.sum(1) + r_ctrl.sum(0)
        return value, grad


@dataclass
class FitResult:
    """``coef`` (P, d), ``intercept`` (P,), iterations and convergence per probe."""

    coef: torch.Tensor
    intercept: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor


def fit_l2_probes(data: ProbeData, *, C: float, max_iter: int = 1000, tol: float = 1e-5,
                  history: int = 10) -> FitResult:
    """Fit every probe of ``data`` (see the module docstring) with batched L-BFGS.

    A probe has converged when the largest entry of its gradient is below ``tol`` times its
    value at zero, or when its objective has stopped decreasing (relative decrease below four
    machine epsilons on three successive steps).
    """
    P, d = data.n_probes, data.dim
    dt, dev = data.cases.dtype, data.cases.device
    full = _Objective.build(data, C)
    # curvature at zero on the controls of a typical probe (cases counted as controls) + L2
    c = max(1, int(torch.median(data.n_controls))) if P else 1
    Xa = torch.cat([data.controls[:c], torch.ones((c, 1), dtype=dt, device=dev)], 1)
    M = 0.25 * (Xa.T @ Xa) / c
    M[:-1, :-1] += float(full.l2.mean()) * torch.eye(d, dtype=dt, device=dev) if P else 0.0
    M += 1e-8 * torch.diagonal(M).mean() * torch.eye(d + 1, dtype=dt, device=dev)
    M_inv = torch.cholesky_inverse(torch.linalg.cholesky(M))   # symmetric: v @ M_inv = M^-1 v
    eps, tiny = torch.finfo(dt).eps, torch.finfo(dt).tiny

    def precondition(v):                                  # M^{-1} v for rows v (k, d + 1)
        return v @ M_inv

    theta = torch.zeros((P, d + 1), dtype=dt, device=dev)
    F, grad = full.value_grad(theta)
    g0 = grad.abs().amax(1).clamp_min(tiny)
    S = torch.zeros((P, history, d + 1), dtype=dt, device=dev)
    Y = torch.zeros_like(S)
    rho = torch.zeros((P, history), dtype=dt, device=dev)
    n_hist = torch.zeros(P, dtype=torch.long, device=dev)
    n_iter = torch.zeros(P, dtype=torch.long, device=dev)
    stalled = torch.zeros(P, dtype=torch.long, device=dev)
    converged = grad.abs().amax(1) <= tol * g0
    active = ~converged
    pack_idx, pack = torch.arange(P, device=dev), full
    lag = torch.arange(history, device=dev)
    for _ in range(int(max_iter)):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        if idx.numel() < 0.5 * pack_idx.numel():          # re-pack the active probes' rows
            pack_idx, pack = idx, full.subset(idx)
        pos = torch.searchsorted(pack_idx, idx)
        obj = pack if pos.numel() == pack_idx.numel() else pack.subset(pos)
        th, gr, Fi, hs = theta[idx], grad[idx], F[idx], n_hist[idx]
        # two-loop recursion over each probe's history (newest pair first), H0 = gamma M^{-1}
        order = torch.remainder(n_iter[idx][:, None] - 1 - lag[None, :], history)
        Si = torch.gather(S[idx], 1, order[:, :, None].expand(-1, -1, d + 1))
        Yi = torch.gather(Y[idx], 1, order[:, :, None].expand(-1, -1, d + 1))
        ri = torch.gather(rho[idx], 1, order) * (lag[None, :] < hs[:, None])
        q = -gr
        alpha = torch.zeros_like(ri)
        for j in range(history):
            alpha[:, j] = ri[:, j] * (Si[:, j] * q).sum(1)
            q = q - alpha[:, j, None] * Yi[:, j]
        y0 = Yi[:, 0]
        gamma = torch.where(hs > 0, (Si[:, 0] * y0).sum(1)
                            / (y0 * precondition(y0)).sum(1).clamp_min(tiny), torch.ones_like(Fi))
        r = precondition(q) * gamma[:, None]
        for j in reversed(range(history)):
            r = r + (alpha[:, j] - ri[:, j] * (Yi[:, j] * r).sum(1))[:, None] * Si[:, j]
        bad = ~((gr * r).sum(1) < 0)
        if bad.any():                                     # lost descent: restart from M^{-1}
            r = torch.where(bad[:, None], precondition(-gr), r)
            n_hist[idx[bad]] = 0
        # unit step, its gradient in the same pass; backtrack (values only) where it fails
        new_th = th + r
        F_new, g_new = obj.value_grad(new_th)
        ok = F_new <= Fi + 1e-4 * (gr * r).sum(1)
        failed = torch.zeros(len(idx), dtype=torch.bool, device=dev)
        todo = torch.nonzero(~ok).flatten()
        if todo.numel():
            sub = obj.subset(todo)
            step = torch.ones(todo.numel(), dtype=dt, device=dev)
            found = torch.zeros(todo.numel(), dtype=torch.bool, device=dev)
            slope = (gr[todo] * r[todo]).sum(1)
            for _ls in range(50):
                step = torch.where(found, step, 0.5 * step)
                good = ~found & (sub.value(th[todo] + step[:, None] * r[todo])
                                 <= Fi[todo] + 1e-4 * step * slope)
                found |= good
                if bool(found.all()):
                    break
            step = torch.where(found, step, torch.zeros_like(step))
            failed[todo[~found]] = True
            best = th[todo] + step[:, None] * r[todo]
            F_new[todo], g_new[todo] = sub.value_grad(best)
            new_th[todo] = best
        s_new, y_new = new_th - th, g_new - gr
        sy = (s_new * y_new).sum(1)
        keep = sy > eps * s_new.norm(dim=1) * y_new.norm(dim=1)
        slot = torch.remainder(n_iter[idx], history)
        n_iter[idx] += 1
        S[idx, slot] = torch.where(keep[:, None], s_new, S[idx, slot])
        Y[idx, slot] = torch.where(keep[:, None], y_new, Y[idx, slot])
        rho[idx, slot] = torch.where(keep, 1.0 / sy.clamp_min(tiny), rho[idx, slot])
        n_hist[idx] = torch.where(keep, torch.clamp(n_hist[idx] + 1, max=history), n_hist[idx])
        small = (Fi - F_new) <= 4 * eps * F_new.abs()
        stalled[idx] = torch.where(small, stalled[idx] + 1, torch.zeros_like(stalled[idx]))
        theta[idx], grad[idx], F[idx] = new_th, g_new, F_new
        done = (g_new.abs().amax(1) <= tol * g0[idx]) | (stalled[idx] >= 3)
        converged[idx] = done
        active[idx] = ~(done | failed)
    return FitResult(coef=theta[:, :-1], intercept=theta[:, -1], n_iter=n_iter, converged=converged)


def fit_small_probes(rows: torch.Tensor, is_case: torch.Tensor, valid: torch.Tensor, *,
                     C: float, max_iter: int = 100, tol: float = 1e-10) -> FitResult:
    """Batched Newton for probes with few coordinates each (the top-k probe).

    ``rows``: (P, n, k) each probe's own rows (padded); ``is_case``, ``valid``: (P, n) bool,
    which rows are cases and which rows count. Same objective as :func:`fit_l2_probes` (balanced weights over the
    probe's rows, unpenalised intercept). Converged when a Newton decrement is below ``tol``.
    """
    P, n, k = rows.shape
    dt, dev = rows.dtype, rows.device
    n_rows = valid.sum(1)
    n_case = (is_case & valid).sum(1).to(dt)
    n_ctrl = (~is_case & valid).sum(1).to(dt)
    weight = torch.where(is_case, 0.5 / n_case[:, None], 0.5 / n_ctrl[:, None]) * valid
    sign = torch.where(is_case, 1.0, -1.0).to(dt)
    l2 = 1.0 / (C * n_rows.to(dt))
    Xa = torch.cat([rows, torch.ones((P, n, 1), dtype=dt, device=dev)], 2)
    pen = torch.ones(k + 1, dtype=dt, device=dev)
    pen[-1] = 0.0

    theta = torch.zeros((P, k + 1), dtype=dt, device=dev)
    n_iter = torch.zeros(P, dtype=torch.long, device=dev)
    converged = torch.zeros(P, dtype=torch.bool, device=dev)
    eye = torch.eye(k + 1, dtype=dt, device=dev)
    for _ in range(int(max_iter)):
        idx = torch.nonzero(~converged).flatten()
        if idx.numel() == 0:
            break
        th, X, sg, wt = theta[idx], Xa[idx], sign[idx], weight[idx]
        z = torch.bmm(X, th[:, :, None])[:, :, 0]
        p = torch.sigmoid(sg * z)
        grad = torch.bmm(((p - 1.0) * sg * wt)[:, None, :], X)[:, 0, :] + l2[idx, None] * th * pen
        H = torch.bmm(X.transpose(1, 2), (p * (1.0 - p) * wt)[:, :, None] * X)
        H = H + l2[idx, None, None] * torch.diag_embed(pen.expand(len(idx), -1))
        H = H + 1e-12 * eye
        step = -torch.linalg.solve(H, grad[:, :, None])[:, :, 0]
        decrement = -(grad * step).sum(1)
        t = torch.ones(len(idx), dtype=dt, device=dev)
        f0 = (softplus(-sg * z) * wt).sum(1) + 0.5 * l2[idx] * (th[:, :-1] ** 2).sum(1)
        for _ls in range(50):
            cand = th + t[:, None] * step
            zc = torch.bmm(X, cand[:, :, None])[:, :, 0]
            fc = (softplus(-sg * zc) * wt).sum(1) + 0.5 * l2[idx] * (cand[:, :-1] ** 2).sum(1)
            ok = fc <= f0 - 1e-4 * t * decrement
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        theta[idx] = th + t[:, None] * step
        n_iter[idx] += 1
        converged[idx] = decrement <= tol * f0.abs().clamp_min(1e-300)
    return FitResult(coef=theta[:, :-1], intercept=theta[:, -1], n_iter=n_iter, converged=converged)


def auroc_columns(case_scores: list[np.ndarray], control_scores: np.ndarray) -> np.ndarray:
    """AUROC of every probe: case scores of probe ``p`` (a 1-D array) against column ``p`` of
    ``control_scores`` (n_controls x P): Mann-Whitney U with ties counted as one half, i.e.
    the average-rank AUROC. NaN when a side is empty."""
    out = np.full(len(case_scores), np.nan)
    if control_scores.shape[0] == 0:
        return out
    ordered = np.sort(control_scores, axis=0)
    n_ctrl = ordered.shape[0]
    for p, cases in enumerate(case_scores):
        if len(cases) == 0:
            continue
        below = np.searchsorted(ordered[:, p], cases, side="left")
        upto = np.searchsorted(ordered[:, p], cases, side="right")
        out[p] = float((below + upto).sum() / (2.0 * len(cases) * n_ctrl))
    return out
