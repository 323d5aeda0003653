"""Speed and memory of cross-batch replicate retrieval (mAP with a permutation null) on 20,000
synthetic wells. Target: peak RSS under 4 GiB.

    .venv/bin/python tests/benchmarks/bench_retrieval.py [--wells 20000 --dim 384]

Prints a table and ends with ``retrieval 20k: <s> s, peak <GiB> GiB`` (peak RSS of this process
and its children, sampled by ``resource.getrusage``, which includes the interpreter and imports).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd


def peak_rss_gib() -> float:
    """Peak resident set size of this process plus its waited-for children (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 2**20


def synthetic_wells(n_wells: int, dim: int, n_batches: int, wells_per_batch_and_pert: int,
                    control_share: float, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Perturbations with effects of varying strength (a third inactive), batch shifts, noise."""
    rng = np.random.default_rng(seed)
    n_controls = int(round(control_share * n_wells))
    n_perts = (n_wells - n_controls) // (n_batches * wells_per_batch_and_pert)
    n_treated = n_perts * n_batches * wells_per_batch_and_pert
    n_controls = n_wells - n_treated
    pert = np.repeat(np.arange(n_perts), n_batches * wells_per_batch_and_pert)
    batch = np.tile(np.repeat(np.arange(n_batches), wells_per_batch_and_pert), n_perts)
    strength = rng.uniform(0.0, 1.5, n_perts) * (rng.random(n_perts) > 1 / 3)
    effects = rng.normal(size=(n_perts, dim)).astype(np.float32) * strength[:, None].astype(np.float32)
    shifts = rng.normal(scale=0.7, size=(n_batches, dim)).astype(np.float32)
    X = np.empty((n_wells, dim), dtype=np.float32)
    X[:n_treated] = effects[pert] + shifts[batch]
    ctrl_batch = rng.integers(0, n_batches, n_controls)
    X[n_treated:] = shifts[ctrl_batch]
    X += rng.standard_normal(size=X.shape, dtype=np.float32) * 2.0
    obs = pd.DataFrame({
        "batch": np.r_[batch, ctrl_batch].astype(str),
        "perturbation": np.r_[[f"g{i}" for i in pert], ["control"] * n_controls],
        "is_control": np.r_[np.zeros(n_treated, bool), np.ones(n_controls, bool)],
    })
    return X, obs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--replicates", type=int, default=3, help="wells per perturbation and batch")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from phenoica.benchmarks.generalization import retrieval_ap, retrieval_rows

    X, obs = synthetic_wells(args.wells, args.dim, args.batches, args.replicates, 0.1, args.seed)
    start = time.perf_counter()
    ap = retrieval_ap(X, obs, np.ones(len(obs), bool), by="perturbation", chunk_size=args.chunk)
    t_ap = time.perf_counter() - start
    rows = pd.DataFrame(retrieval_rows(ap, by="perturbation", task="retrieval", fold="all",
                                       null_size=args.permutations, alpha=0.05, seed=args.seed))
    total = time.perf_counter() - start
    peak = peak_rss_gib()
    summary = rows[rows["perturbation"] == ""].set_index("metric")["value"]
    per_pert = rows[(rows["perturbation"] != "") & (rows["metric"] == "map")]["value"]
    table = pd.DataFrame([
        ("wells", f"{len(obs):,}"),
        ("features", f"{X.shape[1]}"),
        ("batches", f"{args.batches}"),
        ("perturbations (queried)", f"{int(summary['n_groups']):,}"),
        ("query wells", f"{int((~obs['is_control']).sum()):,}"),
        ("mean positives / negatives per query",
         f"{ap['n_pos_pairs'].mean():.1f} / {(ap['n_total_pairs'] - ap['n_pos_pairs']).mean():.0f}"),
        ("chunk (query rows)", f"{args.chunk}"),
        ("permutations", f"{args.permutations}"),
        ("mAP (mean over perturbations)", f"{summary['map']:.3f}"),
        ("mAP range", f"{per_pert.min():.3f} - {per_pert.max():.3f}"),
        ("fraction significant (BH q < 0.05)", f"{summary['fraction_significant']:.3f}"),
        ("AP time (s)", f"{t_ap:.1f}"),
        ("null + p-values + FDR time (s)", f"{total - t_ap:.1f}"),
        ("peak RSS (GiB)", f"{peak:.2f}"),
    ], columns=["quantity", "value"])
    print(table.to_string(index=False))
    print(f"retrieval 20k: {total:.1f} s, peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
