"""Ingest speed on a demo-sized plate: 32 wells x 2 sites x 5 channels of 128x128 uint16 TIFFs.

Target (issue #3): about one second per plate on a laptop CPU. Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_ingest.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

os.environ.setdefault("PHENOICA_PROGRESS", "0")

from phenoica.config import schema_defaults  # noqa: E402
from phenoica.ingest import ingest_plate  # noqa: E402

CHANNELS = [{"name": n, "token": t} for n, t in
            [("DNA", "1"), ("ER", "2"), ("RNA", "3"), ("AGP", "4"), ("Mito", "5")]]
SETTINGS = {**schema_defaults("ingest"), **schema_defaults("qc")}  # the demo's ingest and QC


def write_demo_plate(root: Path, n_rows: int = 4, n_cols: int = 8, n_sites: int = 2,
                     size: int = 128) -> dict:
    rng = np.random.default_rng(0)
    folder = root / "images" / "P01"
    folder.mkdir(parents=True)
    wells = [f"{chr(ord('A') + r)}{c + 1:02d}" for r in range(n_rows) for c in range(n_cols)]
    for well in wells:
        for site in range(1, n_sites + 1):
            for channel in CHANNELS:
                img = (400 + 200 * rng.standard_normal((size, size))).clip(0, 65535)
                tifffile.imwrite(folder / f"{well}_s{site}_w{channel['token']}.tif",
                                 img.astype(np.uint16))
    pd.DataFrame({"well": wells, "perturbation": ["DMSO"] * 8 + ["drug"] * (len(wells) - 8),
                  "is_control": [True] * 8 + [False] * (len(wells) - 8)}
                 ).to_csv(root / "map.csv", index=False)
    return {"plate": "P01", "batch": "B1", "layout": "rxrx", "path": str(root / "images"),
            "platemap": str(root / "map.csv"), "pattern": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        row = write_demo_plate(root)
        n_images = len(list((root / "images" / "P01").iterdir()))
        ingest_plate(row, channels=CHANNELS, manifest_path=str(root / "warm.parquet"),
                     qc_path=str(root / "warm_qc.parquet"), **SETTINGS)  # imports, file cache
        print(f"{'threads':>8} {'best s/plate':>13} {'median s':>9} {'ms/image':>9}")
        results = {}
        for threads in (1, 2):
            times = []
            for i in range(args.repeats):
                start = time.perf_counter()
                ingest_plate(row, channels=CHANNELS, threads=threads,
                             manifest_path=str(root / f"m{threads}_{i}.parquet"),
                             qc_path=str(root / f"q{threads}_{i}.parquet"), **SETTINGS)
                times.append(time.perf_counter() - start)
            results[threads] = min(times)
            print(f"{threads:>8} {min(times):>13.2f} {np.median(times):>9.2f} "
                  f"{1000 * min(times) / n_images:>9.2f}")
    print(f"ingest demo plate ({n_images} images, 128x128): {results[1]:.2f} s per plate "
          f"with 1 thread (target ~1 s)")


if __name__ == "__main__":
    main()
