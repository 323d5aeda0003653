"""A whole screen through post-processing, separation scores and held-out-batch benchmarks:
wall time and peak memory per stage and method.

The table: 220,800 wells x 384 dims (the size of RxRx3-core's OpenPhenom embeddings), 16
batches of 10 plates of 1,380 wells, 2,000 perturbations, 10 % controls, generated in memory with
known structure (:func:`phenoica.benchmarks.screen.synthetic_screen`: Laplace biology sources
moved by sparse perturbation effects, per-batch and per-plate technical offsets, per-batch
feature gains, noise). Methods and settings as ``config/examples/rxrx3_scale.yaml``: base, pca,
pca_ica, pca_rand (128 components), centerscale, tvn; ``fit_on: controls``; no biology label;
every other key at its schema default. Each stage calls the function its rule calls, on the
arrays instead of files:

- ``postprocess``: :func:`phenoica.tl.postprocess` on the wells fitted on as ``fit_on`` says
  (:func:`phenoica.postprocess.run.run_postprocess`, rule ``postprocess``, is read, this, write);
- ``scores``: :func:`phenoica.metrics.separation.compute_scores` (rule ``score_separation``);
- ``benchmarks``: :func:`phenoica.benchmarks.generalization.evaluate_method` (rule
  ``benchmark_generalization``: the method refitted in every fold, then every default task).

Each size runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own; the peak of a
stage is sampled from ``/proc/self/status`` every 20 ms. Data generation is timed separately and
not counted. The same measurement runs at 55,200 wells (4 batches of the same plates, the same
2,000 perturbations) first, and the ratio of the two totals is printed: 4x the wells should cost
about 4x the time (the 55k run has 4 leave-one-batch-out folds, the 220k run 5 k-fold folds).

    .venv/bin/python tests/benchmarks/bench_screen.py                    # both sizes, all methods
    .venv/bin/python tests/benchmarks/bench_screen.py --sizes 55200 --methods base,pca

Last line: ``screen 220k: <s> s, peak <g> GiB`` (targets: < 1,800 s and < 8 GiB on 2 cores).
Timings depend on the machine's load: the table prints ``uptime``'s load averages at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

METHODS = {"base": {}, "pca": {"n_components": 128}, "pca_ica": {"n_components": 128},
           "pca_rand": {"n_components": 128, "seed": 0}, "centerscale": {}, "tvn": {}}
FIT_ON = "controls"
WELLS_PER_BATCH = 10 * 1380


def rss_gib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


class PeakRSS:
    """Peak resident memory while the block runs (sampled every ``interval`` s)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_gib())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = rss_gib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gib())


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def child(n_wells: int, methods: list[str], threads: int, seed: int) -> dict:
    """One size in this process: generate, then every stage of every method."""
    from phenoica.workflow import set_threads

    set_threads(threads)
    import anndata as ad
    import numpy as np

    from phenoica import tl
    from phenoica.benchmarks.generalization import evaluate_method
    from phenoica.benchmarks.screen import synthetic_screen
    from phenoica.config import schema_defaults
    from phenoica.metrics.separation import compute_scores
    from phenoica.postprocess.methods import fitting_mask

    n_batches = max(2, round(n_wells / WELLS_PER_BATCH))
    with PeakRSS() as gen:
        X, obs, _ = synthetic_screen(n_batches=n_batches, seed=seed)
    out = {"wells": int(X.shape[0]), "dims": int(X.shape[1]), "batches": n_batches,
           "perturbations": int(obs.loc[~obs["is_control"], "perturbation"].nunique()),
           "generate_s": gen.seconds, "rows": [], "load_start": load()}
    scores_kwargs = schema_defaults("scores")
    bench_kwargs = schema_defaults("benchmark")
    labels = {"biology": None, "dose": None}
    for method in methods:
        params = METHODS[method]
        with PeakRSS() as stage:
            wells = ad.AnnData(X, obs=obs)
            tl.postprocess(wells, method, key_added="postprocess", fit_mask=fitting_mask(obs, FIT_ON, None),
                           **params)
        out["rows"].append((method, "postprocess", stage.seconds, stage.peak))
        Z, names = wells.obsm["postprocess"], list(wells.uns["postprocess"]["component_names"])
        with PeakRSS() as stage:
            compute_scores(np.asarray(Z), obs, method=method, names=names, bio_key=None, **scores_kwargs)
        out["rows"].append((method, "scores", stage.seconds, stage.peak))
        del Z, wells
        parts: dict[str, float] = {}
        with PeakRSS() as stage:
            table = evaluate_method(X, obs, method, params, fit_on=FIT_ON, labels=labels,
                                    source="bench_screen", timings=parts, **bench_kwargs)
        out["rows"].append((method, "benchmarks", stage.seconds, stage.peak))
        out.setdefault("parts", {})[method] = parts
        pooled = table[(table["fold"] == "pooled") & (table["perturbation"] == "")]
        out.setdefault("results", {})[method] = {
            f"{t}.{m}": float(v) for t, m, v in pooled[["task", "metric", "value"]].itertuples(index=False)
            if t != "protocol" and not m.startswith(("n_", "p_", "q_"))}
        print(f"  [{n_wells}] {method}: " + ", ".join(f"{r[1]} {r[2]:.0f} s" for r in out["rows"][-3:]),
              file=sys.stderr, flush=True)
    out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["load_end"] = load()
    return out


def label(n: int) -> str:
    return f"{round(n / 1000)}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="55200,220800",
                        help="comma-separated well counts, measured in this order (default both)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2, help="BLAS/torch threads (2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if args.child:
        print(json.dumps(child(args.child, methods, args.threads, args.seed)))
        return
    os.environ.setdefault("PHENOICA_PROGRESS", "0")
    runs = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--methods", ",".join(methods),
               "--threads", str(args.threads), "--seed", str(args.seed)]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))

    for run in runs:
        print(f"\n{run['wells']:,} wells x {run['dims']} dims, {run['batches']} batches, "
              f"{run['perturbations']:,} perturbations (generated in {run['generate_s']:.0f} s, "
              f"not counted); load average {run['load_start']} at start, {run['load_end']} at end; "
              f"{args.threads} threads")
        print(f"{'method':<12}{'stage':<13}{'seconds':>9}{'peak GiB':>10}")
        for method, stage, seconds, peak in run["rows"]:
            print(f"{method:<12}{stage:<13}{seconds:>9.1f}{peak:>10.2f}")
        for method in methods:
            total = sum(r[2] for r in run["rows"] if r[0] == method)
            print(f"{method:<12}{'all':<13}{total:>9.1f}")
        names = list(dict.fromkeys(k for parts in run["parts"].values() for k in parts))
        print("benchmarks, seconds per part (summed over folds; fit = the method's fold fits):")
        print(f"{'method':<12}" + "".join(f"{n:>16}" for n in names))
        for method, parts in run["parts"].items():
            print(f"{method:<12}" + "".join(f"{parts.get(n, 0.0):>16.1f}" for n in names))
        print("pooled results: " + "; ".join(
            f"{m} " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(res.items())
                                if k.split(".")[0] in ("auroc", "auroc_cross") or k == "retrieval.map")
            for m, res in run.get("results", {}).items()))
    totals = {run["wells"]: sum(r[2] for r in run["rows"]) for run in runs}
    for run in runs:
        if run is not runs[-1]:
            print(f"screen {label(run['wells'])}: {totals[run['wells']]:.0f} s, "
                  f"peak {run['peak_gib']:.2f} GiB")
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        print(f"ratio {label(last['wells'])}/{label(first['wells'])}: time "
              f"x{totals[last['wells']] / totals[first['wells']]:.2f} for x"
              f"{last['wells'] / first['wells']:.2f} the wells (linear: equal factors)")
    last = runs[-1]
    print(f"screen {label(last['wells'])}: {totals[last['wells']]:.0f} s, peak {last['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
