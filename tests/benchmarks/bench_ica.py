"""ICA benchmark: whitening + ICA, phenoica's default backend vs scikit-learn FastICA.

A synthetic mixture the size of a screen's embeddings (100,000 wells x 384 dims, 128 independent
non-Gaussian sources: Laplace, uniform and skewed gamma, plus a little isotropic noise) is
whitened to 128 components and unmixed by

- phenoica: ``fit_whitening`` + ``fit_ica`` with its defaults (backend "auto" = torch, 3 restarts),
- scikit-learn ``FastICA(whiten="unit-variance", fun="logcosh", algorithm="parallel")``,

both at the same tolerance and iteration cap. Reported: wall time, iterations, convergence and the
Amari distance of the full unmixing (whitening included) to the true mixing. Target: >= 5x faster
at equal or better Amari distance.

Run: ``.venv/bin/python tests/benchmarks/bench_ica.py`` (about 10 minutes on 2 cores; use
``--n 20000 --p 96 --k 32`` for a quick check). Last line:
``ica speedup vs sklearn: <x>x (amari ours <a>, sklearn <b>)``.
"""

from __future__ import annotations

import argparse
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


def run_ours(X: np.ndarray, k: int, tol: float, max_iter: int, seed: int):
    from phenoica.postprocess.ica import fit_ica
    from phenoica.postprocess.whitening import fit_whitening

    start = time.perf_counter()
    wh = fit_whitening(X, n_components=k)
    ica = fit_ica(wh.transform(X), tol=tol, max_iter=max_iter, seed=seed)
    elapsed = time.perf_counter() - start
    return elapsed, ica.unmixing @ wh.projection().T, ica.n_iter, ica.converged, ica.backend


def run_sklearn(X: np.ndarray, k: int, tol: float, max_iter: int, seed: int, solver: str = "svd"):
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    start = time.perf_counter()
    model = FastICA(n_components=k, algorithm="parallel", whiten="unit-variance", fun="logcosh",
                    tol=tol, max_iter=max_iter, random_state=seed, whiten_solver=solver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    elapsed = time.perf_counter() - start
    return elapsed, model.components_, int(model.n_iter_), model.n_iter_ < max_iter, f"sklearn ({solver})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--p", type=int, default=384)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eigh", action="store_true", help="also time sklearn with whiten_solver='eigh'")
    args = parser.parse_args()

    import torch

    from phenoica.postprocess.ica import amari_distance

    print(f"data: {args.n} x {args.p} -> {args.k} components, tol={args.tol}, "
          f"max_iter={args.max_iter}, torch threads={torch.get_num_threads()}")
    _, A, X = synthetic_mixture(args.n, args.p, args.k, args.seed)
    runs = [run_ours(X, args.k, args.tol, args.max_iter, args.seed),
            run_sklearn(X, args.k, args.tol, args.max_iter, args.seed)]
    if args.eigh:
        runs.append(run_sklearn(X, args.k, args.tol, args.max_iter, args.seed, solver="eigh"))
    rows = []
    for elapsed, W, n_iter, converged, name in runs:
        rows.append((name, elapsed, n_iter, converged, amari_distance(W, A)))
    print(f"{'method':<22}{'time s':>10}{'iters':>8}{'converged':>11}{'amari':>10}")
    for name, elapsed, n_iter, converged, amari in rows:
        print(f"{name:<22}{elapsed:>10.1f}{n_iter:>8d}{str(bool(converged)):>11}{amari:>10.5f}")
    ours, ref = rows[0], rows[1]
    print(f"ica speedup vs sklearn: {ref[1] / ours[1]:.1f}x (amari ours {ours[4]:.5f}, sklearn {ref[4]:.5f})")


if __name__ == "__main__":
    main()
