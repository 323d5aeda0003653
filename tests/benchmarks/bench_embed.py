"""Embed-stage throughput vs a bare ``model(x)`` forward of the same model (run on demand).

    .venv/bin/python tests/benchmarks/bench_embed.py [--sites 192] [--size 256] [--model mae_vit_demo]

Writes a synthetic plate of uint16 TIFFs (``--size`` px, 5 channels), then times, alternately:

* ``forward``: ``encoder(x)`` on a fixed batch of ``--batch-size`` crops (inference mode), and
* ``embed_plate``: the whole stage on that plate -- reading and decoding every TIFF in
  DataLoader workers, normalising, tiling, the same forward at the same batch size and thread
  count, pooling, aggregating and writing the .h5ad.

Both are reported as crops per second (medians over ``--repeats``). Each repeat times the
forward and the stage back to back, so both see the same machine load (this matters on a shared
machine); the ratio is the median of the per-repeat ratios. The last line is
``embed/forward ratio: <x>`` (target >= 0.90).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

from phenoica.config import schema_defaults
from phenoica.embed import embed_plate
from phenoica.models import create_model, load_encoder, save_checkpoint

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def write_plate(root: Path, n_sites: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_sites):
        well = f"{chr(65 + i // 24 % 16)}{i % 24 + 1:02d}"
        record = {"site_id": f"BENCH:{well}:{i}", "plate": "BENCH", "batch": "B1", "well": well,
                  "row": 1 + i // 24 % 16, "col": i % 24 + 1, "site": i, "perturbation": "DMSO",
                  "is_control": True}
        for c, name in enumerate(CHANNELS):
            path = root / f"{well}_s{i}_w{c + 1}.tif"
            tifffile.imwrite(path, rng.integers(0, 4096, size=(size, size), dtype=np.uint16))
            record[f"path_{name}"] = str(path)
        rows.append(record)
    manifest = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def bare_forward(encoder: torch.nn.Module, batch: torch.Tensor, n_crops: int) -> float:
    """Crops/s of ``encoder(x)`` over about ``n_crops`` crops (the plate's worth)."""
    steps = max(1, round(n_crops / batch.shape[0]))
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(steps):
            encoder(batch)
        return steps * batch.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mae_vit_demo")
    parser.add_argument("--sites", type=int, default=192)
    parser.add_argument("--size", type=int, default=256, help="site image side in px")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    model = {"name": args.model}
    spec_model = create_model(args.model, seed=0, in_chans=len(CHANNELS))
    crop = spec_model.spec.img_size
    tiles_per_site = (args.size // crop) ** 2
    n_crops = args.sites * tiles_per_site
    batch = torch.randn(args.batch_size, len(CHANNELS), crop, crop)
    embed_cfg = {**schema_defaults("embed"), "batch_size": args.batch_size, "num_workers": args.workers}

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        root = Path(tmp)
        manifest = write_plate(root, args.sites, args.size)
        # embed from a checkpoint on disk, as the workflow does
        checkpoint = save_checkpoint(spec_model, root / "checkpoint", channels=CHANNELS)
        encoder = load_encoder(model, checkpoint, channels=CHANNELS)
        bare_forward(encoder, batch, args.batch_size)  # warm-up
        forward_rates, embed_rates = [], []
        for r in range(args.repeats):
            forward_rates.append(bare_forward(encoder, batch, n_crops))
            start = time.perf_counter()
            embed_plate(manifest, out_h5ad=root / f"out{r}.h5ad", model=model, checkpoint=str(checkpoint),
                        channels=CHANNELS, exclude_flagged=False, device="cpu", **embed_cfg)
            seconds = time.perf_counter() - start
            embed_rates.append(n_crops / seconds)

    fwd = statistics.median(forward_rates)
    emb = statistics.median(embed_rates)
    ratio = statistics.median(e / f for e, f in zip(embed_rates, forward_rates))
    print(f"model {args.model} ({spec_model.spec.embed_dim} wide, {spec_model.spec.depth} blocks), crops "
          f"{len(CHANNELS)}x{crop}x{crop}, batch {args.batch_size}, torch threads {threads}, "
          f"loader workers {args.workers}")
    print(f"plate: {args.sites} sites of {args.size} px = {n_crops} crops, uint16 TIFF, {args.repeats} repeats")
    runs = lambda values: ", ".join(f"{v:.1f}" for v in values)  # noqa: E731
    print(f"{'stage':<30}{'crops/s':>9}{'sites/s':>9}  runs (crops/s)")
    print(f"{'bare forward encoder(x)':<30}{fwd:>9.1f}{fwd / tiles_per_site:>9.2f}  {runs(forward_rates)}")
    print(f"{'embed_plate (TIFF -> .h5ad)':<30}{emb:>9.1f}{emb / tiles_per_site:>9.2f}  {runs(embed_rates)}")
    print(f"{'per-repeat ratio':<30}{'':>18}  "
          f"{', '.join(f'{e / f:.3f}' for e, f in zip(embed_rates, forward_rates))}")
    print(f"embed/forward ratio: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main(sys.argv[1:])
