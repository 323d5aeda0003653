"""GPU check for the embed stage: ViT-S/16 at 256 px, 6 channels, bf16 (run on a GPU machine).

    python tests/benchmarks/gpu_check.py --quick          # under 3 minutes
    python tests/benchmarks/gpu_check.py                  # larger plate, more repeats

For each model (default: the standard ViT-S/16 MAE and the channel-agnostic OpenPhenom-style
ViT-S/16), it writes a synthetic plate of 6-channel uint16 TIFFs, saves a randomly initialised
checkpoint, and measures images (256 px crops) per second of

* ``forward``: the bare encoder on a batch already on the GPU, under bf16 autocast, and
* ``embed_plate``: the whole stage (TIFF decoding in DataLoader workers, normalisation,
  tiling, host-to-device copies, the forward in bf16, pooling, writing the .h5ad),

and checks that bf16 embeddings agree with float32 ones (cosine similarity). Prints a table;
the last line is ``embed/forward ratio: <x>`` (the lowest over the models).
"""

from __future__ import annotations

import argparse
import os
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

CHANNELS = ["DNA", "ER", "Actin", "RNA", "Mito", "Membrane"]
MODELS = ("mae_vit_small_p16_256", "camae_vit_small_p16_256")


def write_plate(root: Path, n_sites: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4096, size=(len(CHANNELS), size, size), dtype=np.uint16)
    rows = []
    for i in range(n_sites):
        well = f"{chr(65 + i // 24 % 16)}{i % 24 + 1:02d}"
        record = {"site_id": f"GPU:{well}:{i}", "plate": "GPU", "batch": "B1", "well": well,
                  "row": 1 + i // 24 % 16, "col": i % 24 + 1, "site": i, "perturbation": "DMSO",
                  "is_control": True}
        shifted = np.roll(base, shift=17 * i, axis=2)  # distinct images without drawing new noise
        for c, name in enumerate(CHANNELS):
            path = root / f"{well}_s{i}_w{c + 1}.tif"
            tifffile.imwrite(path, shifted[c])
            record[f"path_{name}"] = str(path)
        rows.append(record)
    manifest = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def timed_forward(encoder: torch.nn.Module, batch: torch.Tensor, steps: int) -> float:
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            encoder(batch)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            encoder(batch)
        torch.cuda.synchronize()
    return steps * batch.shape[0] / (time.perf_counter() - start)


def bf16_agreement(encoder: torch.nn.Module, batch: torch.Tensor) -> float:
    with torch.inference_mode():
        full = encoder(batch.float())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = encoder(batch).float()
    return float(torch.nn.functional.cosine_similarity(full, half, dim=1).min())


def check_model(name: str, root: Path, manifest: Path, n_crops: int, args) -> dict:
    model_cfg = {"name": name}
    checkpoint = save_checkpoint(create_model(name, seed=0, in_chans=len(CHANNELS)), root / name,
                                 channels=CHANNELS)
    encoder = load_encoder(model_cfg, checkpoint, channels=CHANNELS).cuda()
    batch = torch.randn(args.batch_size, len(CHANNELS), 256, 256, device="cuda") * 500 + 1000
    steps = max(2, n_crops // args.batch_size)
    embed_cfg = {**schema_defaults("embed"), "crop_size": 256, "stride": 256, "batch_size": args.batch_size,
                 "num_workers": args.workers, "precision": "bf16"}
    forward, embed = [], []
    torch.cuda.reset_peak_memory_stats()
    for r in range(args.repeats):
        forward.append(timed_forward(encoder, batch, steps))
        torch.cuda.synchronize()
        start = time.perf_counter()
        embed_plate(manifest, out_h5ad=root / f"{name}_{r}.h5ad", model=model_cfg, checkpoint=str(checkpoint),
                    channels=CHANNELS, exclude_flagged=False, device="cuda", **embed_cfg)
        torch.cuda.synchronize()
        embed.append(n_crops / (time.perf_counter() - start))
    return {"model": name, "forward": statistics.median(forward), "embed": statistics.median(embed),
            "cosine": bf16_agreement(encoder, batch[:16]),
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small plate, 1 repeat (< 3 min)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sites", type=int, default=None)
    parser.add_argument("--size", type=int, default=1024, help="site side in px (multiple of 256)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 4) - 2)))
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (run it on a GPU machine)")
    args.sites = args.sites or (96 if args.quick else 384)
    args.repeats = args.repeats or (1 if args.quick else 3)
    torch.backends.cuda.matmul.allow_tf32 = True
    n_crops = args.sites * (args.size // 256) ** 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root = Path(tmp)
        manifest = write_plate(root, args.sites, args.size)
        results = [check_model(name, root, manifest, n_crops, args) for name in args.models]
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast, "
          f"{args.sites} sites of {args.size} px = {n_crops} crops of 6x256x256, batch {args.batch_size}, "
          f"{args.workers} loader workers, {args.repeats} repeat(s), {time.perf_counter() - started:.0f} s")
    print(f"{'model':<28}{'forward img/s':>15}{'embed img/s':>13}{'ratio':>8}{'bf16 cos':>10}{'peak GiB':>10}")
    for r in results:
        print(f"{r['model']:<28}{r['forward']:>15.1f}{r['embed']:>13.1f}{r['embed'] / r['forward']:>8.3f}"
              f"{r['cosine']:>10.4f}{r['peak_gib']:>10.2f}")
    ratio = min(r["embed"] / r["forward"] for r in results)
    print(f"embed/forward ratio: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main(sys.argv[1:])
