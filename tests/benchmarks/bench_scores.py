"""Scoring benchmark: all separation scores for 100,000 wells x 384 dims, time and peak memory.

Writes a synthetic post-processed AnnData (100,000 wells in 40 batches, 10% controls, 2,000
perturbations in 50 mechanisms, ground-truth factor tables) and runs the ``score_separation``
rule function (:func:`phenoica.metrics.separation.run_scores`, default parameters, biology label
``mechanism``) on it in a fresh process, so the peak RSS is that of the rule alone (file reading
included). Target: < 5 minutes and < 4 GiB peak RSS on 2 cores.

Run: ``.venv/bin/python tests/benchmarks/bench_scores.py`` (``--n 20000`` for a quick check).
Last line: ``scores 100k: <s> s, peak <GiB> GiB``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_postprocessed(path: Path, n: int, d: int, seed: int = 0) -> None:
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_batches, n_perts, n_mech = 40, 2000, 50
    batch = rng.integers(0, n_batches, n)
    control = rng.random(n) < 0.10
    pert = np.where(control, -1, rng.integers(0, n_perts, n))
    mech = np.where(control, -1, pert % n_mech)
    bio = rng.laplace(size=(n, 10)).astype(np.float32)
    bio[~control, mech[~control] % 10] += 2.0
    tech = (rng.normal(size=(n_batches, 5))[batch] + 0.3 * rng.normal(size=(n, 5))).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    mixing = rng.normal(size=(15, d)).astype(np.float32)
    for start in range(0, n, 20000):  # bounded temporaries
        stop = min(n, start + 20000)
        X[start:stop] = np.hstack([bio[start:stop], tech[start:stop]]) @ mixing
        X[start:stop] += rng.normal(size=(stop - start, d)).astype(np.float32)
    obs = pd.DataFrame({
        "plate": pd.Categorical([f"P{b:03d}_{i % 4}" for i, b in enumerate(batch)]),
        "well": pd.Categorical([f"W{i:06d}" for i in range(n)]),
        "batch": pd.Categorical([f"B{b:02d}" for b in batch]),
        "perturbation": pd.Categorical(np.where(control, "DMSO", [f"cpd{p}" for p in pert])),
        "mechanism": pd.Categorical(np.where(control, "control", [f"moa{m}" for m in mech])),
        "is_control": control,
    }, index=[f"w{i}" for i in range(n)])
    adata = ad.AnnData(X=X, obs=obs)
    adata.var_names = [f"F{i + 1}" for i in range(d)]
    adata.obsm["truth_biology"] = pd.DataFrame(bio, index=obs.index, columns=[f"b{i}" for i in range(10)])
    adata.obsm["truth_batch"] = pd.DataFrame(tech, index=obs.index, columns=[f"t{i}" for i in range(5)])
    adata.write_h5ad(path)


def child(path: str, out_tsv: str) -> None:
    """Run the rule function on ``path``; print per-part timings as JSON on the last line."""
    from phenoica.metrics.separation import run_scores

    start = time.perf_counter()
    run_scores(path, out_tsv=out_tsv, method="bench", params={"labels": {"biology": "mechanism"}})
    total = time.perf_counter() - start
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"total": total, "peak_gib": rss_gib}))


def parts(path: str) -> dict[str, float]:
    """Per-part timings (a second, separate run through compute_scores)."""
    from phenoica.io import read_h5ad
    from phenoica.metrics.separation import compute_scores

    adata = read_h5ad(path)
    timings: dict[str, float] = {}
    truth = {k: adata.obsm[k] for k in ("truth_biology", "truth_batch")}
    compute_scores(np.asarray(adata.X), adata.obs, method="bench", truth=truth,
                   bio_key="mechanism", timings=timings)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--child", nargs=2, metavar=("H5AD", "TSV"), help=argparse.SUPPRESS)
    parser.add_argument("--parts", metavar="H5AD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.parts:
        print(json.dumps(parts(args.parts)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5ad"
        t0 = time.perf_counter()
        make_postprocessed(path, args.n, args.d)
        print(f"data: {args.n} wells x {args.d} dims written in {time.perf_counter() - t0:.0f} s "
              f"({path.stat().st_size / 2**20:.0f} MiB)")
        env_cmd = [sys.executable, __file__]
        run = subprocess.run(env_cmd + ["--child", str(path), str(Path(tmp) / "scores.tsv")],
                             capture_output=True, text=True, check=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        run = subprocess.run(env_cmd + ["--parts", str(path)], capture_output=True, text=True, check=True)
        timings = json.loads(run.stdout.strip().splitlines()[-1])
        import pandas as pd

        table = pd.read_csv(Path(tmp) / "scores.tsv", sep="\t")
    print(f"{'part (separate run)':<28}{'seconds':>10}")
    for part, seconds in timings.items():
        print(f"{part:<28}{seconds:>10.1f}")
    print(f"{'run_scores (rule, total)':<28}{result['total']:>10.1f}")
    overall = table[table.component == "all"].set_index("metric")["value"]
    print("scores: " + ", ".join(f"{k}={v:.3f}" for k, v in overall.items()))
    label = f"{args.n // 1000}k" if args.n % 1000 == 0 else str(args.n)
    print(f"scores {label}: {result['total']:.1f} s, peak {max(peak, result['peak_gib']):.2f} GiB")


if __name__ == "__main__":
    main()
