"""Benchmark: render the built-in demo (4 batches x 2 plates, DEFAULT_PARAMS) on one core.

Run:  PHENOICA_PROGRESS=0 .venv/bin/python tests/benchmarks/bench_simulate.py [--keep DIR]

Prints the render time per plate, then a sanity check that the demo poses the problem the
pipeline is for: simple per-site pixel statistics (a stand-in for a raw embedding) predict the
batch far better than the perturbation, while the truth table separates perturbations.
Target: the whole demo in under 30 s on one core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from phenoica.io.images import read_image  # noqa: E402
from phenoica.simulate import CHANNELS, DEFAULT_PARAMS, simulate_plate  # noqa: E402

TARGET_S = 30.0
PLATES = [(f"P{i:02d}", f"B{(i + 1) // 2}") for i in range(1, 9)]  # as config/plates.tsv


def site_features(folder: Path, well: str, site: int) -> np.ndarray:
    feats = []
    for channel in CHANNELS:
        img = read_image(folder / f"{well}_s{site}_w{channel['token']}.tif").astype(np.float32)
        feats += [img.mean(), img.std(), *np.percentile(img, [5, 50, 95, 99])]
    return np.log1p(np.asarray(feats))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", help="write the demo here instead of a temporary folder")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="phenoica-sim-"))

    rows, total, total_cpu = [], 0.0, 0.0
    for plate, batch in PLATES:
        started, started_cpu = time.perf_counter(), time.process_time()
        simulate_plate(plate, batch, images_root=root / "images",
                       platemap_path=root / "platemaps" / f"{plate}.csv",
                       truth_path=root / "truth" / f"{plate}.tsv", params=None, seed=0)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        total += seconds
        total_cpu += cpu_seconds
        rows.append({"plate": plate, "batch": batch, "wall_s": round(seconds, 2),
                     "cpu_s": round(cpu_seconds, 2)})
    n_sites = DEFAULT_PARAMS["n_rows"] * DEFAULT_PARAMS["n_cols"] * DEFAULT_PARAMS["n_sites"]
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"\nimage {DEFAULT_PARAMS['image_size']} px, {n_sites} sites x {len(CHANNELS)} channels per plate, "
          f"{len(PLATES)} plates; {total_cpu / (len(PLATES) * n_sites) * 1e3:.1f} ms CPU per site; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    # sanity: what a raw representation sees
    X, obs = [], []
    for plate, batch in PLATES:
        platemap = pd.read_csv(root / "platemaps" / f"{plate}.csv")
        truth = pd.read_csv(root / "truth" / f"{plate}.tsv", sep="\t").merge(platemap, on="well")
        for row in truth.itertuples():
            X.append(site_features(root / "images" / plate, row.well, row.site))
            obs.append({"batch": batch, "perturbation": row.perturbation, "mechanism": row.mechanism,
                        **{c: getattr(row, c) for c in truth.columns if c.startswith("bio_")}})
    X, obs = np.vstack(X), pd.DataFrame(obs)
    bio = obs[[c for c in obs.columns if c.startswith("bio_")]].to_numpy()
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(5))
    checks = {
        "batch from pixel stats (chance 0.25)": cross_val_score(knn, X, obs["batch"], cv=4).mean(),
        f"perturbation from pixel stats (chance {1 / obs['perturbation'].nunique():.2f})":
            cross_val_score(knn, X, obs["perturbation"], cv=4).mean(),
        f"perturbation from true factors (chance {1 / obs['perturbation'].nunique():.2f})":
            cross_val_score(knn, bio, obs["perturbation"], cv=4).mean(),
    }
    print()
    for name, value in checks.items():
        print(f"{name:<50} {value:.3f}")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    status = "OK" if total_cpu < TARGET_S else "SLOW"  # CPU time: wall time depends on other load
    print(f"\ndemo render: {total:.1f} s wall, {total_cpu:.1f} s CPU for {len(PLATES)} plates "
          f"(target < {TARGET_S:.0f} s) {status}")


if __name__ == "__main__":
    main()
