"""ICA benchmark: whitening + ICA, phenoica's default (torch backend, restarts) vs scikit-learn.

Two mixtures the size of a screen's embeddings (100,000 wells x 384 dims, 128 sources), unmixed
side by side in one run:

- ``mixed``: 128 independent non-Gaussian sources (Laplace, uniform and skewed gamma) plus a
  little isotropic noise in all 384 dims (the historical bench data);
- ``laplace``: a plain Laplace mixture, 128 sources, no noise (rank 128).

Compared, each from the raw 384-dim table to 128 sources:

- phenoica: ``fit_whitening(X, 128)`` + ``fit_ica`` with its defaults: backend "auto" = torch,
  ``n_restarts="auto"`` (5 at this size) run to convergence on a row sample, the winner refined on
  all rows, the stability index computed;
- scikit-learn ``FastICA(n_components=128, whiten="unit-variance", fun="logcosh",
  algorithm="parallel")``: its defaults (whitening by SVD, one start), which whitens internally
  as well.

Both use tol=1e-4 (the same criterion: the largest 1 - |cos| by which an iteration turns an
unmixing row; see ``phenoica.postprocess.ica``) and ``--max-iter`` (default 1000 instead of
scikit-learn's 200 so that scikit-learn converges on the ``mixed`` data, where it needs ~200
iterations; the cap is never reached by phenoica). Reported per method: wall time, iterations
(phenoica: per restart on the restart rows, then the refinement on all rows), convergence and
the Amari distance of the full unmixing (whitening included) to the true mixing. Equal accuracy
means phenoica's Amari distance is within 5 % of scikit-learn's (or lower).

``--threads N`` limits both to N threads (torch and BLAS); on a shared, busy machine thread
pools waiting on each other distort both timings, and one thread each compares like with like.

Run: ``.venv/bin/python tests/benchmarks/bench_ica.py`` (several minutes on 2 cores, mostly
scikit-learn; ``--n 20000 --p 96 --k 32`` for a quick check). Last line:
``ica speedup vs sklearn: <x>x (...)`` with ``x`` the smaller of the two mixtures' speedups.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import numpy as np


def synthetic_mixture(n: int, p: int, k: int, seed: int = 0, noise: float = 0.05):
    """Sources (n x k, unit variance), mixing A (p x k) and X = S A^T + noise (float32)."""
    rng = np.random.default_rng(seed)
    kinds = np.arange(k) % 4
    S = np.empty((n, k))
    S[:, kinds <= 1] = rng.laplace(size=(n, int(np.sum(kinds <= 1)))) / np.sqrt(2)
    S[:, kinds == 2] = rng.uniform(-np.sqrt(3), np.sqrt(3), size=(n, int(np.sum(kinds == 2))))
    g = rng.gamma(2.0, size=(n, int(np.sum(kinds == 3))))
    S[:, kinds == 3] = (g - 2.0) / np.sqrt(2.0)
    A = rng.normal(size=(p, k))
    X = S @ A.T + noise * rng.normal(size=(n, p))
    return S, A, X.astype(np.float32)


def laplace_mixture(n: int, p: int, k: int, seed: int = 0):
    """Laplace sources (n x k), mixing A (p x k) and X = S A^T (float32), no noise."""
    rng = np.random.default_rng(seed)
    S = rng.laplace(size=(n, k))
    A = rng.normal(size=(p, k))
    return S, A, (S @ A.T).astype(np.float32)


def run_ours(X: np.ndarray, k: int, tol: float, max_iter: int, seed: int):
    from phenoica.postprocess.ica import fit_ica
    from phenoica.postprocess.whitening import fit_whitening

    start = time.perf_counter()
    wh = fit_whitening(X, n_components=k)
    ica = fit_ica(wh.transform(X), tol=tol, max_iter=max_iter, seed=seed)
    elapsed = time.perf_counter() - start
    stages = "; ".join(f"on {rows} rows {'/'.join(str(int(i)) for i in its)}"
                       for rows, its in zip(ica.stage_rows, ica.stage_n_iter))
    iters = f"{ica.n_restarts} restarts {stages}; refine on {X.shape[0]} rows: {ica.refine_n_iter}"
    stab = f"stability min {np.nanmin(ica.stability):.3f}" if np.isfinite(ica.stability).any() else ""
    return {"method": f"phenoica ({ica.backend})", "time": elapsed, "W": ica.full_unmixing @ wh.projection().T,
            "n_iter": ica.n_iter, "converged": ica.converged, "detail": f"{iters}; {stab}"}


def run_sklearn(X: np.ndarray, k: int, tol: float, max_iter: int, seed: int):
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    start = time.perf_counter()
    model = FastICA(n_components=k, algorithm="parallel", whiten="unit-variance", fun="logcosh",
                    tol=tol, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    elapsed = time.perf_counter() - start
    return {"method": "sklearn FastICA", "time": elapsed, "W": model.components_,
            "n_iter": int(model.n_iter_), "converged": model.n_iter_ < max_iter,
            "detail": "1 start, all rows, whitening by SVD"}


@contextlib.contextmanager
def limited_threads(n: int | None):
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--p", type=int, default=384)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="limit torch and BLAS threads of both methods (default: unchanged)")
    parser.add_argument("--data", nargs="+", default=["mixed", "laplace"], choices=["mixed", "laplace"])
    args = parser.parse_args()

    import torch

    from phenoica.postprocess.ica import amari_distance

    print(f"data: {args.n} x {args.p} -> {args.k} components, tol={args.tol}, "
          f"max_iter={args.max_iter}, threads={args.threads or torch.get_num_threads()}")
    rows, speedups = [], {}
    for data in args.data:
        make = synthetic_mixture if data == "mixed" else laplace_mixture
        _, A, X = make(args.n, args.p, args.k, args.seed)
        with limited_threads(args.threads):
            runs = [run_ours(X, args.k, args.tol, args.max_iter, args.seed),
                    run_sklearn(X, args.k, args.tol, args.max_iter, args.seed)]
        for run in runs:
            run["amari"] = amari_distance(run["W"], A)
            run["data"] = data
            rows.append(run)
        ours, ref = runs
        speedups[data] = (ref["time"] / ours["time"], ours["amari"], ref["amari"])
    print(f"{'data':<9}{'method':<20}{'time s':>9}{'iters':>7}{'conv':>6}{'amari':>10}  detail")
    for r in rows:
        print(f"{r['data']:<9}{r['method']:<20}{r['time']:>9.1f}{r['n_iter']:>7d}"
              f"{bool(r['converged'])!s:>6}{r['amari']:>10.5f}  {r['detail']}")
    for data, (x, a_ours, a_ref) in speedups.items():
        equal = "equal accuracy" if a_ours <= 1.05 * a_ref else "LESS ACCURATE"
        print(f"{data}: speedup {x:.1f}x, amari ours {a_ours:.5f} vs sklearn {a_ref:.5f} ({equal})")
    worst = min(speedups, key=lambda d: speedups[d][0])
    detail = ", ".join(f"{d} {x:.1f}x amari {a:.5f}/{b:.5f}" for d, (x, a, b) in speedups.items())
    print(f"ica speedup vs sklearn: {speedups[worst][0]:.1f}x ({detail}; ours/sklearn)")


if __name__ == "__main__":
    main()
