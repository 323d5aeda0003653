"""Small convolutional autoencoders for the synthetic disentanglement benchmark.

Three objectives on one architecture (a 4x4-kernel, stride-2 conv encoder and its transposed
mirror as decoder; Burgess et al. 2018 / Locatello et al. 2019 style, narrower for CPUs):

``ae``
    vanilla autoencoder: reconstruction only (the paper's recipe applies ICA to its latents).
``beta_vae``
    reconstruction + beta * KL(q(z|x) || N(0, I)) (Higgins et al. 2017).
``beta_tcvae``
    reconstruction + MI + beta * total correlation + dimension-wise KL, with the minibatch-
    weighted sampling estimator of q(z) (Chen et al. 2018).

Reconstruction is the Bernoulli log-likelihood (binary cross-entropy with logits) summed over
pixels and averaged over the batch, so beta has its usual scale. Images are float32 in [0, 1],
shape (n, channels, size, size) with size a power of two >= 8. Latents reported for a VAE are
the posterior means.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..io import atomic_path
from ..logs import get_logger, progress

log = get_logger(__name__)

KINDS: tuple[str, ...] = ("ae", "beta_vae", "beta_tcvae")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and objective of one autoencoder (stored with its weights)."""

    kind: str = "ae"
    in_channels: int = 3
    image_size: int = 32
    latent_dim: int = 10
    width: int = 32  # channels of the first conv layer (doubling once, capped at 2 x width)
    hidden: int = 256
    beta: float = 1.0  # KL weight (beta_vae) or total-correlation weight (beta_tcvae)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")
        if self.latent_dim < 1:
            raise ValueError("latent_dim must be >= 1")

    @property
    def n_down(self) -> int:
        return int(math.log2(self.image_size // 4))

    def channels(self) -> list[int]:
        return [self.width if i < 2 else 2 * self.width for i in range(self.n_down)]


class Autoencoder(nn.Module):
    """Conv encoder -> latent (mean and log-variance for VAEs) -> transposed-conv decoder."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        chans = config.channels()
        layers: list[nn.Module] = []
        prev = config.in_channels
        for c in chans:
            layers += [nn.Conv2d(prev, c, 4, stride=2, padding=1), nn.ReLU()]
            prev = c
        self.encoder_conv = nn.Sequential(*layers, nn.Flatten())
        flat = prev * 4 * 4
        out = config.latent_dim * (1 if config.kind == "ae" else 2)
        self.encoder_head = nn.Sequential(nn.Linear(flat, config.hidden), nn.ReLU(), nn.Linear(config.hidden, out))
        self.decoder_head = nn.Sequential(nn.Linear(config.latent_dim, config.hidden), nn.ReLU(),
                                          nn.Linear(config.hidden, flat), nn.ReLU())
        up: list[nn.Module] = []
        rev = chans[::-1]
        for i, c in enumerate(rev):
            nxt = rev[i + 1] if i + 1 < len(rev) else config.in_channels
            up.append(nn.ConvTranspose2d(c, nxt, 4, stride=2, padding=1))
            if i + 1 < len(rev):
                up.append(nn.ReLU())
        self.decoder_conv = nn.Sequential(*up)
        self._last_channels = prev

    @property
    def is_vae(self) -> bool:
        return self.config.kind != "ae"

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log-variance) for VAEs; (code, None) for the plain autoencoder."""
        h = self.encoder_head(self.encoder_conv(x))
        if not self.is_vae:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits (n, channels, size, size)."""
        h = self.decoder_head(z).view(len(z), self._last_channels, 4, 4)
        return self.decoder_conv(h)

    def loss(self, x: torch.Tensor, *, dataset_size: int, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training objective on a batch and its parts (floats, for the training log)."""
        mu, logvar = self.encode(x)
        if logvar is None:
            z = mu
        else:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        logits = self.decode(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        parts = {"recon": float(recon.detach())}
        if self.config.kind == "ae":
            total = recon
        elif self.config.kind == "beta_vae":
            kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar) / len(x)
            total = recon + self.config.beta * kl
            parts["kl"] = float(kl.detach())
        else:
            mi, tc, dim_kl = _tc_decomposition(z, mu, logvar, dataset_size)
            total = recon + mi + self.config.beta * tc + dim_kl
            parts.update(mi=float(mi.detach()), tc=float(tc.detach()), dim_kl=float(dim_kl.detach()))
        parts["loss"] = float(total.detach())
        return total, parts


_LOG_2PI = math.log(2.0 * math.pi)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def _tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index-code MI, total correlation and dimension-wise KL of a batch (Chen et al. 2018),
    with q(z) estimated by minibatch-weighted sampling."""
    batch = z.shape[0]
    log_qz_x = _log_normal(z, mu, logvar).sum(dim=1)
    log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    # pairwise densities q(z_i | x_j) per dimension: (batch, batch, dim)
    pairwise = _log_normal(z[:, None, :], mu[None, :, :], logvar[None, :, :])
    log_norm = math.log(batch * dataset_size)
    log_qz = torch.logsumexp(pairwise.sum(dim=2), dim=1) - log_norm
    log_prod_qzd = (torch.logsumexp(pairwise, dim=1) - log_norm).sum(dim=1)
    mi = (log_qz_x - log_qz).mean()
    tc = (log_qz - log_prod_qzd).mean()
    dim_kl = (log_prod_qzd - log_pz).mean()
    return mi, tc, dim_kl


# --------------------------------------------------------------------------------------------
# training and inference
# --------------------------------------------------------------------------------------------
def train_autoencoder(images: np.ndarray, *, kind: str = "ae", latent_dim: int = 10, steps: int = 2000,
                      batch_size: int = 64, lr: float = 1e-3, beta: float = 1.0, weight_decay: float = 0.0,
                      seed: int = 0, width: int = 32, hidden: int = 256, log_every: int = 100,
                      ) -> tuple[Autoencoder, pd.DataFrame]:
    """Train one autoencoder on ``images`` (n, channels, size, size) float in [0, 1].

    ``steps`` Adam(W) updates of ``batch_size`` images drawn without replacement per epoch;
    ``weight_decay`` is decoupled (AdamW), the knob of the isometry study. Deterministic given
    ``seed`` and the thread count. Returns the model (eval mode) and a training log (one row
    per ``log_every`` steps: step, seconds, loss and its parts, averaged since the last row).
    """
    images = _check_images(images)
    n, channels, size, _ = images.shape
    config = AutoencoderConfig(kind=kind, in_channels=channels, image_size=size, latent_dim=latent_dim,
                               width=width, hidden=hidden, beta=beta)
    torch.manual_seed(seed)
    model = Autoencoder(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(images)
    batch_size = min(batch_size, n)
    order, pos = rng.permutation(n), 0
    rows, running, count = [], {}, 0
    start = time.perf_counter()
    model.train()
    for step in progress(range(1, steps + 1), desc=f"train {kind}", total=steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos:pos + batch_size])
        pos += batch_size
        loss, parts = model.loss(data[idx], dataset_size=n, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not math.isfinite(parts["loss"]):
            raise FloatingPointError(f"{kind} training diverged at step {step} (loss {parts['loss']})")
        for key, value in parts.items():
            running[key] = running.get(key, 0.0) + value
        count += 1
        if step % log_every == 0 or step == steps:
            rows.append({"step": step, "seconds": round(time.perf_counter() - start, 3),
                         **{k: v / count for k, v in running.items()}})
            running, count = {}, 0
    model.eval()
    history = pd.DataFrame(rows)
    log.info("trained %s (latent %d, %d steps, seed %d) in %.1f s, final loss %.2f", kind, latent_dim,
             steps, seed, time.perf_counter() - start, history["loss"].iloc[-1])
    return model, history


@torch.no_grad()
def encode_images(model: Autoencoder, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Latent codes (posterior means for VAEs), float32 (n, latent_dim)."""
    images = _check_images(images)
    model.eval()
    out = [model.encode(torch.from_numpy(images[i:i + batch_size]))[0] for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def decode_latents(model: Autoencoder, latents: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Decoded images (pixel probabilities in [0, 1]), float32 (n, channels, size, size)."""
    latents = np.asarray(latents, dtype=np.float32)
    model.eval()
    out = [torch.sigmoid(model.decode(torch.from_numpy(latents[i:i + batch_size])))
           for i in range(0, len(latents), batch_size)]
    return torch.cat(out).numpy()


def save_autoencoder(model: Autoencoder, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write weights as safetensors with the config (and ``extra``) as JSON metadata, atomically."""
    from safetensors.torch import save_file

    metadata = {"phenoica_autoencoder": json.dumps(asdict(model.config)),
                "extra": json.dumps(extra or {}, default=str)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_autoencoder(path: str | os.PathLike) -> tuple[Autoencoder, dict]:
    """Read a model written by :func:`save_autoencoder` -> (model in eval mode, extra dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise InputError(path, f"cannot read autoencoder weights: {err}") from err
    if "phenoica_autoencoder" not in metadata:
        raise InputError(path, "safetensors file has no phenoica autoencoder config in its metadata")
    model = Autoencoder(AutoencoderConfig(**json.loads(metadata["phenoica_autoencoder"])))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(path, f"weights do not match the stored config: {err}") from err
    model.eval()
    return model, json.loads(metadata.get("extra", "{}"))


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (n, channels, size, size), got {images.shape}")
    return images
