"""The demo's science: does PCA+ICA recover the simulator's biological factors, and why not?

Run after the demo (``snakemake --cores 2``), from the project root:

    .venv/bin/python tests/benchmarks/science_demo.py [results]

Reads ``results/embeddings/<model>/wells.h5ad`` (the MAE embedding with the per-well ground
truth in ``obsm["truth_biology"]``) and ``results/simulated/design.tsv``, and prints, for the raw
embedding, PCA, PCA+ICA, 20 random rotations (PCA+Rand) and, as a reference, the ground truth
itself:

- MCC against the 10 true factors and against the 3 mechanisms' activities (in-sample),
- the linear R^2 of the factors (ridge, fitted on half the wells, scored on the other half),
- PCA+ICA's percentile among the rotations.

The raw embedding has 384 coordinates to choose 10 matches from, PCA+ICA 32: a random
rotation of the raw embedding measures what width alone buys.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main(results: str = "results") -> None:
    import anndata as ad

    from phenoica.demo_science import mechanism_recovery
    from phenoica.metrics.matching import mcc
    from phenoica.metrics.separation import truth_r2
    from phenoica.nulls import percentile_in_null
    from phenoica.postprocess import make_method
    from phenoica.postprocess.ica import random_orthogonal
    from phenoica.simulate.params import DEFAULT_PARAMS

    started = time.perf_counter()
    root = Path(results)
    wells_path = next((root / "embeddings").glob("*/wells.h5ad"))
    wells = ad.read_h5ad(wells_path)
    design = pd.read_csv(root / "simulated" / "design.tsv", sep="\t")
    truth = wells.obsm["truth_biology"]
    T = truth.to_numpy(np.float64)
    strength = design.set_index("perturbation")["strength"]
    mechanisms = sorted(m for m in design["mechanism"].unique() if m != "none")
    pert = wells.obs["perturbation"].astype(str)
    mech = wells.obs["mechanism"].astype(str).to_numpy()
    S = np.stack([np.where(mech == m, strength.loc[pert].to_numpy(), 0.0) for m in mechanisms], 1)
    X = np.asarray(wells.X, dtype=np.float32)
    k = 32
    reps = {"raw embedding (384)": X,
            "raw embedding, random rotation (384)": X @ random_orthogonal(X.shape[1], 0).T.astype(np.float32)}
    for name in ("pca", "pca_ica"):
        reps[f"{name} ({k})"] = make_method(name, n_components=k).fit_transform(X, wells.obs)
    white = make_method("pca", n_components=k).fit_transform(X, wells.obs).astype(np.float64)
    null_f, null_m = [], []
    for seed in range(20):
        Z = white @ random_orthogonal(k, seed).T
        null_f.append(mcc(Z, T))
        null_m.append(mcc(Z, S))
    rows = []
    for name, Z in reps.items():
        rows.append({"representation": name, "MCC factors": mcc(Z, T), "MCC mechanisms": mcc(Z, S),
                     "R2 factors": truth_r2(Z, truth)})
    rows.append({"representation": f"pca_rand, 20 rotations ({k}): median",
                 "MCC factors": np.median(null_f), "MCC mechanisms": np.median(null_m),
                 "R2 factors": truth_r2(white, truth)})
    obs = wells.obs
    Tz = T.astype(np.float32)
    rows.append({"representation": "ground truth itself (10)", "MCC factors": mcc(T, T),
                 "MCC mechanisms": mcc(T, S), "R2 factors": 1.0})
    rows.append({"representation": "pca_ica of the ground truth (10)",
                 "MCC factors": mcc(make_method("pca_ica", n_components=10).fit_transform(Tz, obs), T),
                 "MCC mechanisms": mcc(make_method("pca_ica", n_components=10).fit_transform(Tz, obs), S),
                 "R2 factors": 1.0})
    table = pd.DataFrame(rows)
    ica = reps[f"pca_ica ({k})"]
    print(f"{len(X)} wells, {len(mechanisms)} mechanisms, {T.shape[1]} factors ({wells_path})")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"pca_ica percentile among 20 rotations: MCC factors {percentile_in_null(mcc(ica, T), null_f):.0f}, "
          f"MCC mechanisms {percentile_in_null(mcc(ica, S), null_m):.0f}")
    science = mechanism_recovery(design, n_wells=len(X), well_sd=DEFAULT_PARAMS["well_sd"],
                                 activity=0.15, n_rotations=20, seed=0)
    print("Ground-truth factor vectors built from the design (phenoica.demo_science):")
    print(science.pivot(index="mode", columns="method", values="value").to_string(
        float_format=lambda v: f"{v:.3f}"))
    print(f"science_demo: {time.perf_counter() - started:.0f} s; MCC factors raw "
          f"{table.iloc[0]['MCC factors']:.3f}, raw rotated {table.iloc[1]['MCC factors']:.3f}, "
          f"pca_ica {mcc(ica, T):.3f} (rotations median {np.median(null_f):.3f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
