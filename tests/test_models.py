"""Models: registry/factory, ViT MAE and channel-agnostic MAE behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_data import OPENPHENOM_SHAPES, REPO
from helpers_models import TINY_MAE

from phenoica.errors import ConfigError
from phenoica.models import ChannelAgnosticEncoder, ViTEncoder, create_model, get_spec, list_models
from phenoica.models.layers import random_masking, self_standardize, sincos_pos_embed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TINY_MAE


def test_registry_lists_the_required_models():
    names = list_models()
    for name in ("mae_vit_demo", "camae_vit_demo", "mae_vit_small_p16_256", "camae_vit_small_p16_256",
                 "openphenom"):
        assert name in names
    assert get_spec("openphenom") == get_spec("camae_vit_small_p16_256")
    vits = get_spec("mae_vit_small_p16_256")
    assert (vits.patch_size, vits.embed_dim, vits.depth, vits.num_heads, vits.img_size) == (16, 384, 12, 6, 256)
    demo = get_spec("mae_vit_demo")
    assert demo.family == "mae" and demo.img_size == 64 and demo.patch_size == 8 and demo.embedding_dim == 192


def test_create_model_applies_overrides_and_rejects_bad_ones():
    model = create_model("mae_vit_demo", seed=0, in_chans=3, **TINY)
    assert isinstance(model.encoder, ViTEncoder)
    assert model.spec.depth == 3 and len(model.encoder.blocks) == 3
    assert model.encoder.patch_embed.proj.in_channels == 3
    with pytest.raises(ConfigError, match="unknown key.*widht"):
        create_model("mae_vit_demo", widht=3)
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        create_model("mae_vit_demo", embed_dim=36, num_heads=5)
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        create_model("mae_vit_demo", img_size=60)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ConfigError, match="depth must be an integer"):
        create_model("mae_vit_demo", depth="4")


def test_seeded_creation_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_model("mae_vit_demo", seed=7, **TINY)
    after = torch.rand(1)
    b = create_model("mae_vit_demo", seed=7, **TINY)
    c = create_model("mae_vit_demo", seed=8, **TINY)
    assert torch.equal(before, after)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_mae_loss_only_on_masked_patches_and_mask_ratio():
    model = create_model("mae_vit_demo", seed=0, in_chans=2, **TINY)
    x = torch.randn(3, 2, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = model(x, generator=gen)
    n_tokens = (32 // 8) ** 2
    assert out.pred.shape == (3, n_tokens, 8 * 8 * 2)
    assert out.mask.shape == (3, n_tokens)
    assert torch.all(out.mask.sum(1) == n_tokens - round(n_tokens * 0.25))
    # changing pixels of a visible patch's target only (not the input) must not matter; the
    # loss is recomputed by hand from the prediction on masked patches
    target = model.patchify(x)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6).sqrt()
    manual = (((out.pred - target) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
    assert torch.allclose(out.loss, manual, atol=1e-6)
    # same generator seed -> same mask and loss
    again = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.mask, out.mask) and torch.equal(again.loss, out.loss)


def test_random_masking_restores_order():
    ids_keep, mask, ids_restore = random_masking(4, 10, 0.7, device=torch.device("cpu"),
                                                 generator=torch.Generator().manual_seed(1))
    assert ids_keep.shape == (4, 3) and torch.all(mask.sum(1) == 7)
    for b in range(4):
        assert torch.all(mask[b, ids_keep[b]] == 0)


def test_intermediate_layers_are_the_block_outputs():
    model = create_model("mae_vit_demo", seed=0, in_chans=2, **TINY).eval()
    enc = model.encoder
    x = torch.randn(2, 2, 32, 32)
    feats = enc.forward_features(x, [1, 3])
    assert sorted(feats) == [1, 3]
    with torch.no_grad():
        h = torch.cat([enc.cls_token.expand(2, -1, -1), enc.patch_tokens(x)], 1)
        h1 = enc.blocks[0](h)
        h3 = enc.norm(enc.blocks[2](enc.blocks[1](h1)))
    assert torch.allclose(feats[1], h1, atol=1e-6) and torch.allclose(feats[3], h3, atol=1e-6)
    pooled = enc.embed(x, [1, 3], pooling="cls")
    assert torch.allclose(pooled[1]["pooled"], h1[:, 0], atol=1e-6)
    assert torch.allclose(enc(x), h3[:, 1:].mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="layers must be block numbers in 1..3"):
        enc.forward_features(x, [4])


def test_channel_agnostic_encoder_takes_any_channel_count_and_pools_per_channel():
    model = create_model("camae_vit_demo", seed=0, **TINY).eval()
    enc = model.encoder
    assert isinstance(enc, ChannelAgnosticEncoder) and enc.channel_agnostic
    for channels in (1, 3, 6):
        x = torch.randn(2, channels, 32, 32)
        out = enc.embed(x, [3], per_channel=True)[3]
        assert out["pooled"].shape == (2, 32) and out["channels"].shape == (2, channels, 32)
        # the pooled embedding is the mean of the per-channel means (equal token counts)
        assert torch.allclose(out["pooled"], out["channels"].mean(1), atol=1e-5)
    # a channel's tokens come from the shared patch embedding of that channel alone
    x = torch.randn(1, 3, 32, 32)
    tokens = enc.patch_tokens(x)
    single = enc.patch_embed.proj(x[:, 1:2]).flatten(2).transpose(1, 2)
    expected = single + enc.spatial_pos((4, 4)) + enc.channel_embed[1]
    assert torch.allclose(tokens[:, 16:32], expected, atol=1e-6)
    with pytest.raises(ValueError, match="at most 11 channels"):
        enc(torch.randn(1, 12, 32, 32))


def test_channel_ids_select_channel_embedding_slots():
    enc = create_model("camae_vit_demo", seed=0, **TINY).eval().encoder
    x = torch.randn(2, 3, 32, 32)
    full = enc.patch_tokens(torch.cat([torch.zeros_like(x[:, :1]), x], 1))  # slots 0..3
    picked = enc.patch_tokens(x, channel_ids=torch.tensor([1, 2, 3]))
    assert torch.allclose(full[:, 16:], picked, atol=1e-6)


def test_camae_training_loss_is_per_channel():
    model = create_model("camae_vit_demo", seed=0, **TINY)
    out = model(torch.randn(2, 4, 32, 32))
    assert out.pred.shape == (2, 4 * 16, 64) and out.mask.shape == (2, 64)
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None


def test_sincos_layout_matches_the_openphenom_formula():
    dim, length = 16, 3
    codes = sincos_pos_embed((length, length), dim, cls_token=True)[0]
    assert torch.all(codes[0] == 0)
    quarter = dim // 4
    freqs = [1.0 / 10000 ** (i / quarter) for i in range(quarter)]
    for token, (h, w) in enumerate([(h, w) for h in range(length) for w in range(length)], start=1):
        expected = ([math.sin(h * f) for f in freqs] + [math.cos(h * f) for f in freqs]
                    + [math.sin(w * f) for f in freqs] + [math.cos(w * f) for f in freqs])
        assert torch.allclose(codes[token], torch.tensor(expected), atol=1e-6)


def test_self_standardize_matches_instance_norm_of_scaled_pixels():
    x = torch.rand(2, 3, 8, 8) * 4000
    y = self_standardize(x)
    scaled = x / 255.0
    mean = scaled.mean((2, 3), keepdim=True)
    var = scaled.var((2, 3), unbiased=False, keepdim=True)
    assert torch.allclose(y, (scaled - mean) / torch.sqrt(var + 1e-5), atol=1e-5)


def test_openphenom_architecture_state_dict_layout():
    """The OpenPhenom-style model's encoder has exactly the checkpoint's encoder keys (minus the
    fixed pos_embed and the unused fc_norm)."""
    import json

    shapes = json.loads((REPO / OPENPHENOM_SHAPES).read_text())["keys"]
    prefix = "encoder.vit_backbone."
    wanted = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    wanted.pop("pos_embed")
    wanted.pop("fc_norm.weight")
    wanted.pop("fc_norm.bias")
    enc = create_model("openphenom", seed=0).encoder
    got = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert got == wanted
