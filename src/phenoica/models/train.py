"""MAE training: seeded, resumable, CPU or GPU (bf16 autocast), single process or
torch.distributed data parallel (NCCL on GPU, gloo on CPU).

``train_model`` is what the ``train_model`` rule calls. With more than one process requested
(``nproc``; by default the number of visible GPUs) it re-launches itself under ``torchrun``
(``python -m torch.distributed.run``); each rank then runs :func:`run_training` on its shard of
the sites. Only rank 0 writes files.

Resumption: after every ``checkpoint_every`` epochs the full state (weights, optimiser, RNG
states, the epoch log) is written atomically to ``{out_dir}/.train_state.pt``; a rerun with the
same inputs and settings continues from there and produces the same weights as an
uninterrupted run. The state is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..config import section_values
from ..errors import ConfigError, InputError
from ..io import atomic_path, write_tsv
from ..logs import get_logger, progress
from ..provenance import file_sha256
from .checkpoint import save_checkpoint
from .data import SiteCrops, collate_crops, manifest_path_lists, plate_channel_stats, read_manifest
from .mae import MaskedAutoencoder
from .registry import ModelSpec, create_model, get_spec

log = get_logger(__name__)

STATE_NAME = ".train_state.pt"
ARGS_NAME = ".train_args.json"
LOG_NAME = "train_log.tsv"

def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr``."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress_ = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress_))


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only (not biases, norms, layer scales or tokens)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_token = name.endswith(("cls_token", "mask_token", "channel_embed"))
        (no_decay if param.ndim < 2 or is_token else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def params_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in state-dict order (bit-exact equality test)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


# --- distributed helpers -------------------------------------------------------------------------

def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_nproc(nproc: int | str, device: str) -> int:
    if nproc == "auto":
        wants_gpu = device == "auto" or str(device).startswith("cuda")
        return max(1, torch.cuda.device_count()) if wants_gpu and torch.cuda.is_available() else 1
    return int(nproc)


def _all_gather_digests(digest: str, world: int) -> list[str]:
    import torch.distributed as dist

    if world == 1:
        return [digest]
    mine = torch.tensor([int(digest[:15], 16)], dtype=torch.long)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mine = mine.to(backend_device)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    return [f"{int(t.item()):015x}" for t in gathered]


def _mean_across_ranks(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


# --- data --------------------------------------------------------------------------------------

def _training_sites(manifest_paths: Sequence[str], channels: list[str], cfg: dict, normalization: str
                    ) -> tuple[list[list[str]], list]:
    if not manifest_paths:
        raise InputError(None, "train_model got no manifests: there are no sites to train on")
    path_lists: list[list[str]] = []
    stats: list = []
    for path in manifest_paths:
        df = read_manifest(path, channels, exclude_flagged=cfg["exclude_flagged"])
        paths = manifest_path_lists(df, channels)
        plate_stats = (plate_channel_stats(paths, max_sites=cfg["plate_stats_sites"])
                       if normalization == "plate" else None)
        path_lists.extend(paths)
        stats.extend([plate_stats] * len(paths))
    return path_lists, stats


def _use_cache(cfg: dict, dataset: SiteCrops) -> bool:
    if cfg["cache_images"] in (True, False):
        return bool(cfg["cache_images"]) and cfg["num_workers"] == 0
    if cfg["num_workers"] != 0:
        return False
    first = dataset.load(0)
    return first.nbytes * len(dataset) <= cfg["cache_max_mb"] * 2 ** 20


def _epoch_batches(n_sites: int, epoch: int, seed: int, rank: int, world: int,
                   sites_per_batch: int, sites_per_epoch: int | None) -> list[list[tuple[int, int]]]:
    """Site order of one epoch (same on every rank), this rank's equal-length shard, batched."""
    order = np.random.default_rng((seed, epoch, 104729)).permutation(n_sites)
    if sites_per_epoch:
        order = order[:sites_per_epoch]
    per_rank = len(order) // world
    if per_rank == 0:
        raise ConfigError(f"{len(order)} training sites cannot be shared by {world} processes")
    mine = order[rank * per_rank:(rank + 1) * per_rank]
    return [[(epoch, int(s)) for s in mine[i:i + sites_per_batch]]
            for i in range(0, len(mine), sites_per_batch)]


# --- the training loop ---------------------------------------------------------------------------

def _fingerprint(manifest_paths: Sequence[str], model: dict, cfg: dict, channels: list[str], seed: int,
                 world: int) -> str:
    relevant = {k: v for k, v in cfg.items() if k not in {"num_workers", "nproc", "checkpoint_every",
                                                          "cache_images", "cache_max_mb", "seed"}}
    payload = {
        "manifests": [[str(p), file_sha256(p)] for p in manifest_paths],
        "model": {"name": model.get("name"), "overrides": model.get("overrides") or {}},
        "train": relevant, "channels": channels, "seed": seed, "world": world,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged state only costs the epochs it held
        log.warning("ignoring unreadable resume state %s (%s); starting from scratch", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("resume state %s belongs to other inputs or settings; starting from scratch", path)
        return None
    return state


def _run_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
               step: int, total_steps: int, warmup_steps: int, cfg: dict, device: torch.device,
               generator: torch.Generator, autocast_dtype: torch.dtype | None, bar) -> tuple[float, int, int]:
    """One pass over this rank's batches. Returns (summed loss, batches, crops)."""
    model.train()
    loss_sum, n_batches, n_crops = 0.0, 0, 0
    for crops in loader:
        lr = lr_at(step, total_steps, warmup_steps, cfg["lr"], cfg["min_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        crops = crops.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            out = model(crops, mask_ratio=cfg["mask_ratio"], generator=generator)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        value = float(out.loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}; lower train.lr")
        loss_sum += value
        n_batches += 1
        n_crops += crops.shape[0]
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
    return loss_sum, n_batches, n_crops


def run_training(manifest_paths: Sequence[str], out_dir: str | os.PathLike, model: dict, channels: list[str],
                 device: str = "auto", *, seed: int, epochs: int, batch_size: int, lr: float, min_lr: float,
                 warmup_epochs: float, weight_decay: float, betas: Sequence[float], grad_clip: float,
                 mask_ratio: float | None, norm_pix_loss: bool | None, crop_size: int | None,
                 crops_per_site: int, sites_per_epoch: int | None, normalization: str | None,
                 plate_stats_sites: int, num_workers: int, cache_images: str | bool, cache_max_mb: int,
                 exclude_flagged: bool, precision: str, checkpoint_every: int,
                 nproc: int | str) -> MaskedAutoencoder:
    """Train on this process (one rank when launched by torchrun) and return the model; the
    keyword arguments are those of :func:`train_model`.

    Rank 0 writes ``model.safetensors``, ``config.json`` and ``train_log.tsv`` to ``out_dir``.
    """
    cfg = section_values(run_training, locals())
    channels = list(channels)
    out = Path(out_dir)
    rank, world, local_rank = _dist_env()
    dev = resolve_device(device, local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    overrides = dict(model.get("overrides") or {})
    spec: ModelSpec = get_spec(model["name"], **overrides)
    if spec.family == "mae" and "in_chans" not in overrides:
        overrides["in_chans"] = len(channels)
    if spec.family == "camae" and len(channels) > spec.max_channels:
        raise ConfigError(f"model {spec.name!r} takes at most {spec.max_channels} channels, "
                          f"the config lists {len(channels)}")
    for key in ("mask_ratio", "norm_pix_loss"):
        if cfg[key] is not None:
            overrides[key] = cfg[key]
    cfg["mask_ratio"] = cfg["mask_ratio"] if cfg["mask_ratio"] is not None else spec.mask_ratio
    crop = cfg["crop_size"] or spec.img_size
    normalization = cfg["normalization"] or spec.normalization
    # the checkpoint's spec records how its inputs were scaled, so embedding scales them the same
    overrides["normalization"] = normalization
    precision = cfg["precision"]
    use_bf16 = dev.type == "cuda" and (precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()))
    if precision == "bf16" and dev.type != "cuda":
        log.warning("bf16 autocast is only used on GPU; training in float32 on %s", dev)

    path_lists, stats = _training_sites(manifest_paths, channels, cfg, normalization)
    dataset = SiteCrops(path_lists, crop=crop, crops_per_site=cfg["crops_per_site"],
                        normalization=normalization, stats=stats, seed=seed)
    if _use_cache(cfg, dataset):
        dataset._cache = dataset._cache if dataset._cache is not None else {}
    sites_per_batch = max(1, cfg["batch_size"] // cfg["crops_per_site"])
    batches_per_epoch = len(_epoch_batches(len(path_lists), 0, seed, rank, world, sites_per_batch,
                                           cfg["sites_per_epoch"]))
    total_steps = batches_per_epoch * cfg["epochs"]
    warmup_steps = int(round(cfg["warmup_epochs"] * batches_per_epoch))

    torch.manual_seed(_derived_seed(seed, 1))
    net = create_model(model["name"], seed=seed, **overrides).to(dev)
    optimizer = torch.optim.AdamW(_param_groups(net, cfg["weight_decay"]), lr=cfg["lr"],
                                  betas=tuple(cfg["betas"]))
    generator = torch.Generator(device=dev)
    generator.manual_seed(_derived_seed(seed, 2, rank))

    fingerprint = _fingerprint(manifest_paths, model, cfg, channels, seed, world)
    state_path = out / STATE_NAME
    start_epoch, rows = 0, []
    state = _load_state(state_path, fingerprint)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        rows = list(state["log"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["mask_rng"][rank].to(generator.get_state().device))
        log.info("resuming %s from epoch %d of %d (%s)", spec.name, start_epoch, cfg["epochs"], state_path)

    ddp = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    log.info("training %s (%s params) on %d sites x %d crops of %d px, %d epoch(s), %d process(es), "
             "device %s%s", spec.name, f"{sum(p.numel() for p in net.parameters()):,}", len(path_lists),
             cfg["crops_per_site"], crop, cfg["epochs"], world, dev, ", bf16 autocast" if use_bf16 else "")

    bar = (progress(total=total_steps, initial=start_epoch * batches_per_epoch, desc=f"train {spec.name}")
           if rank == 0 else _SilentBar())
    digests: list[str] = []
    with _deterministic(dev.type == "cpu"), bar:
        for epoch in range(start_epoch, cfg["epochs"]):
            batches = _epoch_batches(len(path_lists), epoch, seed, rank, world, sites_per_batch,
                                     cfg["sites_per_epoch"])
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_crops,
                                num_workers=cfg["num_workers"], pin_memory=dev.type == "cuda")
            started = time.perf_counter()
            loss_sum, n_batches, n_crops = _run_epoch(
                ddp, loader, optimizer, step=epoch * batches_per_epoch, total_steps=total_steps,
                warmup_steps=warmup_steps, cfg=cfg, device=dev, generator=generator,
                autocast_dtype=torch.bfloat16 if use_bf16 else None, bar=bar)
            seconds = time.perf_counter() - started
            loss = _mean_across_ranks(loss_sum / max(1, n_batches), world, dev)
            digests = _all_gather_digests(params_digest(net), world)
            if len(set(digests)) != 1:
                raise RuntimeError(f"data-parallel replicas diverged after epoch {epoch + 1}: {digests}")
            row = {"epoch": epoch + 1, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                   "seconds": seconds, "crops_per_s": n_crops * world / max(seconds, 1e-9)}
            rows.append(row)
            log.info("epoch %d/%d: loss %.4f, lr %.2e, %.1f s, %.0f crops/s", row["epoch"], cfg["epochs"],
                     loss, row["lr"], seconds, row["crops_per_s"])
            last = epoch + 1 == cfg["epochs"]
            if rank == 0 and ((epoch + 1) % cfg["checkpoint_every"] == 0 or last):
                mask_states = _gather_generator_states(generator, world)
                _save_state(state_path, {
                    "fingerprint": fingerprint, "epoch": epoch + 1, "log": rows,
                    "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                    "mask_rng": mask_states,
                })
            elif world > 1 and ((epoch + 1) % cfg["checkpoint_every"] == 0 or last):
                _gather_generator_states(generator, world)

    if rank == 0:
        training = {
            "seed": seed, "epochs": cfg["epochs"], "world_size": world, "device": str(dev),
            "precision": "bf16" if use_bf16 else "fp32", "crop_size": crop,
            "normalization": normalization, "n_sites": len(path_lists),
            "final_loss": rows[-1]["loss"] if rows else None, "replica_digests": digests,
            "params_digest": params_digest(net), "train": {k: v for k, v in cfg.items()},
            "manifests": [str(p) for p in manifest_paths],
        }
        save_checkpoint(net, out, channels=channels, training=training)
        write_tsv(pd.DataFrame(rows, columns=["epoch", "loss", "lr", "seconds", "crops_per_s"]), out / LOG_NAME)
        state_path.unlink(missing_ok=True)
        log.info("wrote %s (final loss %.4f)", out, rows[-1]["loss"] if rows else float("nan"))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return net


class _SilentBar(contextlib.nullcontext):
    """Stands in for the progress bar on ranks other than 0."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass


def _gather_generator_states(generator: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's masking-RNG state, so a resumed run masks exactly as the original."""
    state = generator.get_state().cpu()
    if world == 1:
        return [state]
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, state)
    return [torch.as_tensor(s) for s in gathered]


# --- entry points ---------------------------------------------------------------------------------

def train_model(manifest_paths: Sequence[str], out_dir: str | os.PathLike, model: dict, channels: list[str],
                device: str = "auto", *, seed: int, epochs: int, batch_size: int, lr: float, min_lr: float,
                warmup_epochs: float, weight_decay: float, betas: Sequence[float], grad_clip: float,
                mask_ratio: float | None, norm_pix_loss: bool | None, crop_size: int | None,
                crops_per_site: int, sites_per_epoch: int | None, normalization: str | None,
                plate_stats_sites: int, num_workers: int, cache_images: str | bool, cache_max_mb: int,
                exclude_flagged: bool, precision: str, checkpoint_every: int, nproc: int | str) -> None:
    """Train an MAE on the sites of ``manifest_paths`` and write a phenoica checkpoint.

    The keyword-only arguments are the ``train`` config section (documented, with their
    defaults, in config/README.md; outside the workflow pass
    ``**{**phenoica.config.schema_defaults("train"), **overrides}``); ``seed`` is the training
    seed. Writes ``{out_dir}/model.safetensors``, ``{out_dir}/config.json`` and
    ``{out_dir}/train_log.tsv`` (one row per epoch: epoch, loss, lr, seconds, crops_per_s),
    each atomically; resumes from ``{out_dir}/.train_state.pt`` when a previous run with the
    same inputs and settings was killed. ``nproc`` > 1 (``auto`` = the number of visible GPUs)
    runs data parallel under torchrun.
    """
    train = section_values(train_model, locals())
    n = _resolve_nproc(nproc, device)
    if n > 1 and _dist_env()[1] == 1:
        _launch_torchrun(n, manifest_paths=list(map(str, manifest_paths)), out_dir=str(out_dir),
                         model=dict(model), channels=list(channels), device=device, **train)
        return
    run_training(manifest_paths, out_dir, model, channels, device, **train)


def torchrun_command(nproc: int, args_file: str | os.PathLike) -> list[str]:
    """The command that runs ``nproc`` training ranks on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "phenoica.models.launch", str(args_file)]


def _launch_torchrun(n_processes: int, **kwargs) -> None:
    out = Path(kwargs["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    args_file = out / ARGS_NAME
    args_file.write_text(json.dumps(kwargs, default=str))
    env = dict(os.environ)
    # share this job's threads between the ranks (torchrun would otherwise pin each to 1)
    env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // n_processes))
    cmd = torchrun_command(n_processes, args_file)
    log.info("launching %d data-parallel ranks: %s", n_processes, " ".join(cmd))
    try:
        result = subprocess.run(cmd, env=env, check=False)
    finally:
        args_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"distributed training failed (torchrun exit code {result.returncode}); "
                           "see the ranks' messages above")
