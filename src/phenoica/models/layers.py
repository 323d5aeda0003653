"""Building blocks shared by the MAE variants: timm transformer blocks, fixed sin-cos position
codes, random token masking and OpenPhenom's input self-standardisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, ParallelScalingBlock
from torch import nn

BLOCK_TYPES = ("standard", "parallel_scaling")
INPUT_NORMS = ("none", "self_standardize")


def sincos_pos_embed(grid: tuple[int, int], dim: int, *, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position codes, shape (1, [1 +] gh * gw, dim), float32.

    Layout per token: [sin(h), cos(h), sin(w), cos(w)], each ``dim // 4`` frequencies
    ``1 / 10000 ** (i / (dim // 4))``, row-major over the patch grid. This is the layout the
    OpenPhenom checkpoint was trained with; the class token gets a zero code.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position codes need an embedding width divisible by 4, got {dim}")
    codes = build_sincos2d_pos_embed(list(grid), dim=dim, interleave_sin_cos=True)
    if cls_token:
        codes = torch.cat([torch.zeros(1, dim), codes], dim=0)
    return codes.unsqueeze(0)


def make_block(kind: str, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, qk_norm: bool = False, init_values: float | None = None,
               drop_path: float = 0.0) -> nn.Module:
    """One timm transformer block: ``standard`` (pre-norm ViT block) or ``parallel_scaling``
    (attention and MLP in parallel from one fused input projection; OpenPhenom's block)."""
    kwargs = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm, init_values=init_values,
                  drop_path=drop_path, norm_layer=LayerNorm)
    if kind == "standard":
        return Block(dim, num_heads, **kwargs)
    if kind == "parallel_scaling":
        return ParallelScalingBlock(dim, num_heads, **kwargs)
    raise ValueError(f"unknown block type {kind!r}; expected one of {BLOCK_TYPES}")


def random_masking(batch: int, n_tokens: int, mask_ratio: float, *, device: torch.device,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random subset of tokens to keep.

    Returns ``ids_keep`` (B, K) token indices kept (in shuffled order), ``mask`` (B, N) float
    with 1 for masked tokens, and ``ids_restore`` (B, N) that undoes the shuffle.
    """
    n_keep = max(1, int(round(n_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch, n_tokens, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch, n_tokens, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def self_standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """OpenPhenom's input normalisation: pixels / 255, then every channel of every image
    standardised over its H x W pixels (InstanceNorm2d without affine, biased variance)."""
    return F.instance_norm(x.float() / 255.0, eps=eps)


def apply_input_norm(x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "none":
        return x
    if mode == "self_standardize":
        return self_standardize(x)
    raise ValueError(f"unknown input_norm {mode!r}; expected one of {INPUT_NORMS}")
