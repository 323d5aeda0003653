"""Masked autoencoders built from timm blocks.

Two encoder families share one interface (:class:`EncoderBase`):

* :class:`ViTEncoder` -- a standard ViT: all channels of a crop enter one patch embedding, so
  the model is tied to its channel count.
* :class:`ChannelAgnosticEncoder` -- the channel-agnostic design of OpenPhenom (CA-MAE): every
  channel is patchified on its own by one shared ``Conv2d(1, D, p, p)``; each token gets the
  spatial position code of its patch plus (optionally) a learned embedding of its channel, and
  the transformer attends over all ``C x N`` tokens. One model embeds any number of channels
  and can pool per channel.

:class:`MaskedAutoencoder` wraps an encoder and a light decoder and computes the MAE loss on
masked patches (optionally with per-patch normalised targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from timm.layers import LayerNorm
from torch import nn

from .layers import apply_input_norm, gather_tokens, make_block, random_masking, sincos_pos_embed

POOLINGS = ("mean", "cls", "channels")


class EncoderBase(nn.Module):
    """Shared ViT machinery: class token, fixed sin-cos positions, blocks, pooling.

    Layers are numbered from 1 (output of the first block) to ``depth`` (the last block, after
    the final norm when the model has one). Intermediate layers are taken without a norm.
    """

    channel_agnostic: bool = False

    def __init__(self, *, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, block: str = "standard", qkv_bias: bool = True,
                 qk_norm: bool = False, init_values: float | None = None, final_norm: bool = True,
                 input_norm: str = "none", drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.img_size = int(img_size)
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.depth = int(depth)
        self.input_norm = input_norm
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        drop_rates = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            make_block(block, embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                       qk_norm=qk_norm, init_values=init_values, drop_path=rate)
            for rate in drop_rates
        )
        self.norm = LayerNorm(embed_dim) if final_norm else nn.Identity()
        grid = self.img_size // self.patch_size
        self._grid = (grid, grid)
        # fixed codes are recomputed, never loaded: they are a function of the geometry only
        self.register_buffer("pos_embed", sincos_pos_embed(self._grid, embed_dim), persistent=False)

    def reset_fixed_buffers(self) -> None:
        """Recompute the fixed position codes (after materialising a module built on 'meta')."""
        self.pos_embed = sincos_pos_embed(self._grid, self.embed_dim).to(self.cls_token.device)

    # -- geometry -----------------------------------------------------------------------------
    def grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        height, width = x.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"crop {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def spatial_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, gh * gw, D) position codes of the patch grid (crops other than the trained size
        get the same sin-cos function evaluated on their grid)."""
        if grid == self._grid:
            return self.pos_embed[:, 1:]
        return sincos_pos_embed(grid, self.embed_dim, cls_token=False).to(self.pos_embed)

    def patch_tokens(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) normalised input -> (B, N_tokens, D) tokens with position codes."""
        raise NotImplementedError

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        return apply_input_norm(x, self.input_norm)

    def _with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        # the class token's position code is zero (OpenPhenom layout), so it is added as is
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        wanted = sorted({int(k) for k in layers})
        bad = [k for k in wanted if not 1 <= k <= self.depth]
        if not wanted or bad:
            raise ValueError(f"layers must be block numbers in 1..{self.depth}, got {list(layers)}")
        return wanted

    # -- inference ----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, layers: Sequence[int] | None = None, *,
                         channel_ids: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Token sequences (B, 1 + N, D) after each requested block; blocks after the deepest
        requested one are not run."""
        wanted = self.check_layers(layers if layers is not None else [self.depth])
        h = self._with_cls(self.patch_tokens(self.normalize_input(x), channel_ids))
        out: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks[: wanted[-1]], start=1):
            h = block(h)
            if index in wanted:
                out[index] = self.norm(h) if index == self.depth else h
        return out

    def pool(self, tokens: torch.Tensor, pooling: str, n_channels: int) -> torch.Tensor:
        """(B, 1 + N, D) -> (B, D) for ``mean`` (patch tokens) and ``cls``; (B, C, D) for
        ``channels`` (mean over each channel's patch tokens; channel-agnostic models only)."""
        if pooling == "mean":
            return tokens[:, 1:].mean(dim=1)
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "channels":
            if not self.channel_agnostic:
                raise ValueError("per-channel pooling needs a channel-agnostic model (CA-MAE)")
            batch, n_tokens, dim = tokens[:, 1:].shape
            return tokens[:, 1:].reshape(batch, n_channels, n_tokens // n_channels, dim).mean(dim=2)
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")

    def embed(self, x: torch.Tensor, layers: Sequence[int] | None = None, *, pooling: str = "mean",
              per_channel: bool = False, channel_ids: torch.Tensor | None = None
              ) -> dict[int, dict[str, torch.Tensor]]:
        """Pooled embeddings per requested layer: ``{k: {"pooled": ..., "channels": ...}}``
        (``channels`` only when ``per_channel``)."""
        feats = self.forward_features(x, layers, channel_ids=channel_ids)
        n_channels = x.shape[1]
        out: dict[int, dict[str, torch.Tensor]] = {}
        for layer, tokens in feats.items():
            entry = {"pooled": self.pool(tokens, pooling, n_channels)}
            if per_channel:
                entry["channels"] = self.pool(tokens, "channels", n_channels)
            out[layer] = entry
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain embedding: mean over patch tokens of the last layer, (B, D)."""
        return self.pool(self.forward_features(x)[self.depth], "mean", x.shape[1])

    # -- training -----------------------------------------------------------------------------
    def forward_masked(self, x: torch.Tensor, mask_ratio: float, *,
                       generator: torch.Generator | None = None,
                       channel_ids: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a random ``1 - mask_ratio`` share of the tokens of an already normalised input.

        Returns the latent (B, 1 + K, D), the mask (B, N; 1 = masked) and ``ids_restore``.
        """
        tokens = self.patch_tokens(x, channel_ids)
        ids_keep, mask, ids_restore = random_masking(tokens.shape[0], tokens.shape[1], mask_ratio,
                                                     device=tokens.device, generator=generator)
        h = self._with_cls(gather_tokens(tokens, ids_keep))
        for block in self.blocks:
            h = block(h)
        return self.norm(h), mask, ids_restore


class ViTEncoder(EncoderBase):
    """Standard ViT encoder over a fixed set of ``in_chans`` channels."""

    channel_agnostic = False

    def __init__(self, *, in_chans: int, **kwargs) -> None:
        super().__init__(**kwargs)
        from timm.layers import PatchEmbed

        self.in_chans = int(in_chans)
        self.patch_embed = PatchEmbed(img_size=self.img_size, patch_size=self.patch_size,
                                      in_chans=self.in_chans, embed_dim=self.embed_dim,
                                      strict_img_size=False)

    def patch_tokens(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1] != self.in_chans:
            raise ValueError(f"this model takes {self.in_chans} channels, got {x.shape[1]}")
        grid = self.grid_of(x)
        return self.patch_embed(x) + self.spatial_pos(grid).to(x.dtype)


class ChannelPatchEmbed(nn.Module):
    """One ``Conv2d(1, D, p, p)`` applied to every channel separately (shared weights)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, N, D)."""
        batch, channels, height, width = x.shape
        y = self.proj(x.reshape(batch * channels, 1, height, width))
        return y.flatten(2).transpose(1, 2).reshape(batch, channels, -1, y.shape[1])


class ChannelAgnosticEncoder(EncoderBase):
    """CA-MAE encoder: tokens ordered channel by channel (all of channel 0's patches first)."""

    channel_agnostic = True

    def __init__(self, *, channel_embed: bool = True, max_channels: int = 11, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_channels = int(max_channels)
        self.patch_embed = ChannelPatchEmbed(self.patch_size, self.embed_dim)
        self.channel_embed = (nn.Parameter(torch.zeros(self.max_channels, self.embed_dim))
                              if channel_embed else None)

    def channel_codes(self, n_channels: int, channel_ids: torch.Tensor | None) -> torch.Tensor | None:
        if n_channels > self.max_channels:
            raise ValueError(f"this model takes at most {self.max_channels} channels, got {n_channels}")
        if self.channel_embed is None:
            return None
        if channel_ids is None:
            return self.channel_embed[:n_channels]
        if channel_ids.shape != (n_channels,):
            raise ValueError(f"channel_ids must have shape ({n_channels},), got {tuple(channel_ids.shape)}")
        return self.channel_embed[channel_ids.to(self.channel_embed.device)]

    def patch_tokens(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        grid = self.grid_of(x)
        tokens = self.patch_embed(x) + self.spatial_pos(grid).unsqueeze(1).to(x.dtype)
        codes = self.channel_codes(x.shape[1], channel_ids)
        if codes is not None:
            tokens = tokens + codes[None, :, None, :].to(tokens.dtype)
        return tokens.flatten(1, 2)


class MAEDecoder(nn.Module):
    """Light transformer decoder: encoder latent -> per-token pixel predictions.

    For channel-agnostic models every token predicts the ``p x p`` pixels of its own channel and
    carries a learned decoder-side channel embedding; otherwise a token predicts ``p x p x C``.
    """

    def __init__(self, *, encoder_dim: int, dim: int, depth: int, num_heads: int, out_dim: int,
                 grid: tuple[int, int], mlp_ratio: float = 4.0, channel_agnostic: bool = False,
                 max_channels: int = 11) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.channel_embed = nn.Parameter(torch.zeros(max_channels, dim)) if channel_agnostic else None
        self.blocks = nn.ModuleList(make_block("standard", dim, num_heads, mlp_ratio=mlp_ratio,
                                               qkv_bias=True) for _ in range(depth))
        self.norm = LayerNorm(dim)
        self.pred = nn.Linear(dim, out_dim)
        self._grid = grid
        self.dim = dim
        self.register_buffer("pos_embed", sincos_pos_embed(grid, dim, cls_token=False), persistent=False)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, *, grid: tuple[int, int],
                n_channels: int = 1, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(latent)
        batch, n_total = ids_restore.shape
        fill = self.mask_token.to(h.dtype).expand(batch, n_total - (h.shape[1] - 1), -1)
        seq = gather_tokens(torch.cat([h[:, 1:], fill], dim=1), ids_restore)
        pos = (self.pos_embed if grid == self._grid
               else sincos_pos_embed(grid, self.dim, cls_token=False).to(self.pos_embed))
        if self.channel_embed is not None:
            ids = (torch.arange(n_channels, device=h.device) if channel_ids is None
                   else channel_ids.to(h.device))
            codes = self.channel_embed[ids]
            pos = (pos.unsqueeze(1) + codes[None, :, None, :]).flatten(1, 2)
        seq = torch.cat([h[:, :1], seq + pos.to(seq.dtype)], dim=1)
        for block in self.blocks:
            seq = block(seq)
        return self.pred(self.norm(seq))[:, 1:]


class MAEOutput(NamedTuple):
    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder + the MAE loss (mean squared error on masked patches)."""

    def __init__(self, encoder: EncoderBase, decoder: MAEDecoder, *, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.initialize_weights()

    @property
    def channel_agnostic(self) -> bool:
        return self.encoder.channel_agnostic

    def initialize_weights(self) -> None:
        """MAE initialisation: xavier-uniform linear and patch projections, N(0, 0.02) tokens."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for param in (self.encoder.cls_token, self.decoder.mask_token,
                      getattr(self.encoder, "channel_embed", None), self.decoder.channel_embed):
            if param is not None:
                nn.init.normal_(param, std=0.02)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> targets in token order: (B, N, p*p*C), or (B, C*N, p*p) for CA."""
        batch, channels, height, width = x.shape
        p = self.encoder.patch_size
        gh, gw = height // p, width // p
        x = x.reshape(batch, channels, gh, p, gw, p)
        if self.channel_agnostic:
            return x.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels * gh * gw, p * p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, gh * gw, p * p * channels)

    def forward(self, x: torch.Tensor, *, mask_ratio: float | None = None,
                generator: torch.Generator | None = None,
                channel_ids: torch.Tensor | None = None) -> MAEOutput:
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        x = self.encoder.normalize_input(x)
        grid = self.encoder.grid_of(x)
        latent, mask, ids_restore = self.encoder.forward_masked(x, ratio, generator=generator,
                                                                channel_ids=channel_ids)
        pred = self.decoder(latent, ids_restore, grid=grid, n_channels=x.shape[1], channel_ids=channel_ids)
        target = self.patchify(x.float())
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
        return MAEOutput(loss, pred, mask)
