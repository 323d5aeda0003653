"""Test data for the models/embedding tests: small synthetic plates written as uint16 TIFFs
with a manifest in the ingest contract, and a generated plate sheet for scale dry runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
#: A demo MAE small enough for unit tests (architecture overrides of create_model).
TINY_MAE = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def render_site(rng: np.random.Generator, size: int, n_channels: int, phenotype: float,
                brightness: float = 1.0) -> np.ndarray:
    """(C, size, size) uint16 image of blob-shaped 'cells'; ``phenotype`` changes nucleus size
    and the cytoplasm/nucleus intensity ratio, ``brightness`` scales everything (a batch effect)."""
    n_cells = int(rng.integers(6, 12))
    cy, cx = rng.uniform(0, size, n_cells), rng.uniform(0, size, n_cells)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    nucleus = np.exp(-d2 / (2 * (3.0 + 2.0 * phenotype) ** 2)).sum(0)
    cell = np.exp(-d2 / (2 * 9.0 ** 2)).sum(0)
    planes = []
    for c in range(n_channels):
        mix = nucleus if c == 0 else (0.3 + 0.7 * phenotype * (c % 2)) * cell + 0.2 * nucleus
        texture = 1.0 + 0.3 * np.sin(xx / (2.0 + c)) * np.cos(yy / (3.0 + c))
        signal = 800.0 * brightness * mix * texture + rng.normal(120.0, 15.0, (size, size))
        planes.append(np.clip(signal, 0, 65535).astype(np.uint16))
    return np.stack(planes)


def write_plate(root: str | Path, plate: str = "P1", *, batch: str = "B1", n_wells: int = 4,
                sites: int = 2, size: int = 128, channels: list[str] | None = None, seed: int = 0,
                brightness: float = 1.0) -> Path:
    """Write TIFFs and ``{root}/{plate}/manifest.parquet``; returns the manifest path."""
    channels = channels or CHANNELS
    root = Path(root)
    img_dir = root / plate / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(n_wells):
        row_i, col_i = 1 + w // 12, 1 + w % 12
        well = f"{chr(64 + row_i)}{col_i:02d}"
        control = w % 2 == 0
        phenotype = 0.0 if control else 1.0
        for s in range(1, sites + 1):
            img = render_site(rng, size, len(channels), phenotype, brightness)
            record = {"site_id": f"{plate}:{well}:{s}", "plate": plate, "batch": batch, "well": well,
                      "row": row_i, "col": col_i, "site": s}
            for c, name in enumerate(channels):
                path = img_dir / f"{well}_s{s}_w{c + 1}.tif"
                tifffile.imwrite(path, img[c])
                record[f"path_{name}"] = str(path)
            record.update(perturbation="DMSO" if control else "drugA", is_control=control,
                          dose=0.0 if control else 1.0, qc_pass=True)
            rows.append(record)
    manifest = root / plate / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def write_truth(manifest: str | Path, out: str | Path) -> Path:
    """Ground-truth TSV in the simulator's contract for a plate written by :func:`write_plate`."""
    df = pd.read_parquet(manifest)
    truth = pd.DataFrame({
        "site_id": df["site_id"], "plate": df["plate"], "well": df["well"], "site": df["site"],
        "bio_phenotype": (~df["is_control"]).astype(float) + 0.1 * df["site"],
        "bio_dose": df["dose"], "batch_brightness": 1.0 + 0.01 * df["site"],
    })
    truth.to_csv(out, sep="\t", index=False)
    return Path(out)


def make_plate_sheet(root: str | Path, n_plates: int = 2000, *, plates_per_batch: int = 20,
                     n_wells: int = 384) -> Path:
    """A plate sheet of ``n_plates`` rxrx-layout plates for DAG dry runs at screen scale.

    All plates share one (existing, empty) image root and one plate map, so the sheet passes the
    file checks without writing thousands of files. Returns the sheet path.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows_, cols_ = (16, 24) if n_wells == 384 else (32, 48)
    wells = [f"{chr(65 + r) if r < 26 else 'A' + chr(65 + r - 26)}{c + 1:02d}"
             for r in range(rows_) for c in range(cols_)]
    platemap = root / "platemap.csv"
    pd.DataFrame({"well": wells,
                  "perturbation": ["DMSO" if i % 8 == 0 else f"gene{i % 97}" for i in range(len(wells))],
                  "is_control": [i % 8 == 0 for i in range(len(wells))]}).to_csv(platemap, index=False)
    sheet = pd.DataFrame({
        "plate": [f"RX{i:05d}" for i in range(n_plates)],
        "batch": [f"EXP{i // plates_per_batch:04d}" for i in range(n_plates)],
        "layout": "rxrx", "path": str(root / "images"), "platemap": str(platemap), "pattern": "",
    })
    path = root / "plates.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    return path
