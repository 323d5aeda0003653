"""Checkpoints: phenoica folders, plain weight files, OpenPhenom folders, refusal of pickles."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers_data import OPENPHENOM_SHAPES, REPO
from helpers_models import TINY_MAE
from safetensors.torch import save_file

from phenoica.errors import ConfigError, InputError
from phenoica.models import checkpoint_sha256, create_model, load_encoder, load_model, read_state_dict, save_checkpoint
from phenoica.models.checkpoint import file_kind
from phenoica.provenance import file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {**TINY_MAE, "depth": 2}
SHAPES = REPO / OPENPHENOM_SHAPES


def _tiny(name="mae_vit_demo", seed=0, **kw):
    return create_model(name, seed=seed, **{**TINY, **kw})


def test_phenoica_checkpoint_round_trip(tmp_path):
    model = _tiny(in_chans=2, seed=3).eval()
    save_checkpoint(model, tmp_path / "ckpt", channels=["DNA", "ER"], training={"epochs": 1})
    weights = tmp_path / "ckpt" / "model.safetensors"
    assert file_kind(weights) == "safetensors"
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["format"] == "phenoica.mae" and config["channels"] == ["DNA", "ER"]
    assert config["spec"]["depth"] == 2 and config["weights_sha256"] == file_sha256(weights)
    assert checkpoint_sha256(tmp_path / "ckpt") == file_sha256(weights)

    enc = load_encoder({"name": "mae_vit_demo", "overrides": {}}, tmp_path / "ckpt", channels=["DNA", "ER"])
    assert not enc.training and enc.trained_channels == ["DNA", "ER"]
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), model.encoder(x))
    full = load_model(tmp_path / "ckpt")
    for (k, a), (_, b) in zip(model.state_dict().items(), full.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("ckpt/*.partial"))


def test_phenoica_checkpoint_config_conflicts_are_config_errors(tmp_path):
    save_checkpoint(_tiny(in_chans=2), tmp_path / "ckpt", channels=["DNA", "ER"])
    with pytest.raises(ConfigError, match="is a 'mae_vit_demo' model but model.name is 'camae_vit_demo'"):
        load_encoder({"name": "camae_vit_demo"}, tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="overrides conflict.*depth=4"):
        load_encoder({"name": "mae_vit_demo", "overrides": {"depth": 4}}, tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="trained on channels"):
        load_encoder({"name": "mae_vit_demo"}, tmp_path / "ckpt", channels=["ER", "DNA"])


def test_plain_weight_files_load_into_the_configured_model(tmp_path):
    model = _tiny(in_chans=3, seed=1).eval()
    cfg = {"name": "mae_vit_demo", "overrides": TINY}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model.encoder(x)
    # full MAE state as real safetensors
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "full.safetensors")
    # encoder-only state wrapped like Lightning/OpenPhenom, as a torch zip
    torch.save({"state_dict": model.encoder.state_dict()}, tmp_path / "enc.pt")
    for path in (tmp_path / "full.safetensors", tmp_path / "enc.pt"):
        enc = load_encoder(cfg, path, channels=["a", "b", "c"])
        with torch.no_grad():
            assert torch.equal(enc(x), want), path


class Gadget:
    """Any class: unpickling it means running import machinery chosen by the file."""


class SystemCall:
    """A malicious pickle: unpickling it would call os.system (posix.system on Linux)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoints_are_refused_with_torchs_reason(tmp_path):
    model = _tiny(in_chans=2)
    torch.save({"model": model}, tmp_path / "module.pt")  # a pickled nn.Module
    with open(tmp_path / "gadget.pkl", "wb") as handle:
        pickle.dump({"weights": Gadget()}, handle, protocol=2)
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"weights": SystemCall(tmp_path / "ran")}, handle, protocol=2)
    torch.save({"state_dict": {"w": SystemCall(tmp_path / "ran")}}, tmp_path / "evil.pt")
    system = f"{os.system.__module__}.system"  # posix.system
    reasons = {
        "module.pt": "Unsupported global: GLOBAL phenoica.models.mae.MaskedAutoencoder was not an "
                     "allowed global by default.",
        "gadget.pkl": f"Unsupported global: GLOBAL {Gadget.__module__}.Gadget was not an allowed "
                      "global by default.",
        "evil.pkl": f"Trying to load unsupported GLOBAL {system} whose module "
                    f"{os.system.__module__} is blocked.",
        "evil.pt": f"Trying to load unsupported GLOBAL {system} whose module "
                   f"{os.system.__module__} is blocked.",
    }
    for name, reason in reasons.items():
        with pytest.raises(InputError) as err:
            load_encoder({"name": "mae_vit_demo", "overrides": TINY}, tmp_path / name)
        message = str(err.value)
        assert message.startswith(f"{tmp_path / name}: refused to load:"), message
        assert f'(torch: "{reason}")' in message, message
        assert "safetensors" in message and "weights_only=False" not in message
        assert "add_safe_globals" not in message and "\x1b[" not in message
    assert not (tmp_path / "ran").exists(), "the pickled os.system call ran"


def test_unreadable_and_mismatched_files_have_clear_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.safetensors: not a safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_encoder({"name": "mae_vit_demo"}, tmp_path / "missing")
    save_file({k: v.contiguous() for k, v in _tiny(in_chans=2).state_dict().items()}, tmp_path / "w.safetensors")
    with pytest.raises(InputError) as err:
        load_encoder({"name": "mae_vit_demo", "overrides": {**TINY, "depth": 3}}, tmp_path / "w.safetensors")
    assert "missing key(s): blocks.2." in str(err.value)
    with pytest.raises(InputError) as err:
        load_encoder({"name": "mae_vit_demo", "overrides": {**TINY, "depth": 1}}, tmp_path / "w.safetensors")
    assert "unexpected key(s): blocks.1." in str(err.value)
    with pytest.raises(InputError) as err:
        load_encoder({"name": "mae_vit_demo", "overrides": {**TINY, "embed_dim": 64}}, tmp_path / "w.safetensors")
    assert "shape mismatch" in str(err.value) and "cls_token (1, 1, 32) vs (1, 1, 64)" in str(err.value)


# --- OpenPhenom ----------------------------------------------------------------------------------

def openphenom_pos_embed(length: int = 16, dim: int = 384, channels: int = 11) -> torch.Tensor:
    """OpenPhenom's fixed codes, written out from its documented formula."""
    quarter = dim // 4
    freqs = torch.tensor([1.0 / 10000 ** (i / quarter) for i in range(quarter)])
    hh, ww = torch.meshgrid(torch.arange(length).float(), torch.arange(length).float(), indexing="ij")
    h = hh.flatten()[:, None] * freqs
    w = ww.flatten()[:, None] * freqs
    codes = torch.cat([h.sin(), h.cos(), w.sin(), w.cos()], dim=1).repeat(channels, 1)
    return torch.cat([torch.zeros(1, dim), codes])[None]


def random_openphenom_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key and shape of OpenPhenom's MAEModel with random values. Encoder weights are
    real random tensors; the decoder (unused for embedding) is stored as broadcast scalars so
    the file stays small while keys and shapes are exactly those of the published model."""
    shapes = json.loads(SHAPES.read_text())["keys"]
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key == "encoder.vit_backbone.pos_embed":
            state[key] = openphenom_pos_embed()
        elif key.startswith("encoder."):
            if key.endswith("ls.gamma"):
                value = 0.5 * torch.randn(shape, generator=gen)
            elif "norm.weight" in key:
                value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                value = 0.05 * torch.randn(shape, generator=gen)
            state[key] = value
        else:
            state[key] = torch.randn(1, generator=gen).expand(*shape)
    return state


def write_openphenom_dir(folder: Path, state: dict[str, torch.Tensor], *, real_safetensors: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["MAEModel"], "model_type": "MAE", "mask_ratio": 0.75, "crop_size": -1,
        "return_channelwise_embeddings": False, "torch_dtype": "float32",
    }))
    if real_safetensors:
        save_file({k: v.contiguous() for k, v in state.items() if k.startswith("encoder.")},
                  folder / "model.safetensors")
    else:  # as published: torch.save({"state_dict": ...}) under a .safetensors name
        torch.save({"state_dict": state}, folder / "model.safetensors")
    return folder


def reference_openphenom_embedding(state: dict[str, torch.Tensor], pixels: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenPhenom's predict() written independently with timm's block and torch ops: pixels/255,
    instance norm, one shared conv per channel, cls + channel-major tokens + pos_embed[:, :n],
    12 ParallelScalingBlocks, no final norm; mean over patch tokens, and per channel."""
    from timm.models.vision_transformer import ParallelScalingBlock

    p = "encoder.vit_backbone."
    x = F.instance_norm(pixels.float() / 255.0, eps=1e-5)
    batch, channels = x.shape[:2]
    w, b = state[p + "patch_embed.proj.weight"], state[p + "patch_embed.proj.bias"]
    tokens = torch.cat([F.conv2d(x[:, c:c + 1], w, b, stride=16).flatten(2).transpose(1, 2)
                        for c in range(channels)], dim=1)
    h = torch.cat([state[p + "cls_token"].expand(batch, -1, -1), tokens], dim=1)
    h = h + state[p + "pos_embed"][:, :h.shape[1]]
    for i in range(12):
        block = ParallelScalingBlock(384, 6, qkv_bias=False, qk_norm=True, init_values=1e-4)
        prefix = f"{p}blocks.{i}."
        block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        h = block.eval()(h)
    patches = h[:, 1:]
    return patches.mean(1), patches.reshape(batch, channels, -1, 384).mean(2)


@pytest.fixture(scope="module")
def openphenom_state():
    return random_openphenom_state(seed=0)


def test_openphenom_layout_loads_and_embeds_like_openphenom(tmp_path, openphenom_state):
    folder = write_openphenom_dir(tmp_path / "OpenPhenom", openphenom_state)
    assert file_kind(folder / "model.safetensors") == "torch-zip"
    enc = load_encoder({"name": "openphenom"}, folder)
    assert enc.channel_agnostic and enc.input_norm == "self_standardize"
    # a uint8-range image of 2 channels, 256 px (OpenPhenom's crop)
    pixels = torch.randint(0, 256, (1, 2, 256, 256), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        got = enc.embed(pixels, [12], per_channel=True)[12]
        want, want_channels = reference_openphenom_embedding(openphenom_state, pixels)
    assert got["pooled"].shape == (1, 384) and got["channels"].shape == (1, 2, 384)
    scale = want.abs().max().item()
    assert (got["pooled"] - want).abs().max().item() < 1e-4 * max(1.0, scale)
    assert (got["channels"] - want_channels).abs().max().item() < 1e-4 * max(1.0, want_channels.abs().max().item())
    # the normalisation is OpenPhenom's: scaling the raw intensities changes nothing
    with torch.no_grad():
        assert torch.allclose(enc(pixels * 7.0), got["pooled"], atol=1e-3 * max(1.0, scale))
    assert checkpoint_sha256(folder) == file_sha256(folder / "model.safetensors")


def test_openphenom_folder_with_real_safetensors_and_wrong_uses(tmp_path, openphenom_state):
    folder = write_openphenom_dir(tmp_path / "real", openphenom_state, real_safetensors=True)
    enc = load_encoder({"name": "camae_vit_small_p16_256"}, folder)
    assert torch.equal(enc.patch_embed.proj.weight,
                       openphenom_state["encoder.vit_backbone.patch_embed.proj.weight"])
    with pytest.raises(ConfigError, match="needs a channel-agnostic model"):
        load_encoder({"name": "mae_vit_small_p16_256"}, folder)
    broken = dict(openphenom_state)
    broken["encoder.vit_backbone.pos_embed"] = torch.randn(1, 2817, 384)
    bad = write_openphenom_dir(tmp_path / "bad", broken, real_safetensors=True)
    with pytest.raises(InputError, match="not the fixed sin-cos layout"):
        load_encoder({"name": "openphenom"}, bad)
    short = {k: v for k, v in openphenom_state.items() if "blocks.11." not in k}
    missing = write_openphenom_dir(tmp_path / "short", short, real_safetensors=True)
    with pytest.raises(InputError, match=r"13 missing key\(s\): blocks\.11\."):
        load_encoder({"name": "openphenom"}, missing)
    assert math.isclose(sum(v.numel() for k, v in openphenom_state.items() if k.startswith("encoder.")),
                        22_459_776)
