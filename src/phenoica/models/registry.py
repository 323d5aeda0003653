"""Model registry and factory, in the spirit of ``timm.create_model``.

A registered name fixes everything a user needs to know to embed with the model: family (MAE or
channel-agnostic MAE), channels, crop size, input normalisation, embedding width, pooling and
the default layer. The workflow config names a model (``model.name``) and may override
fields (``model.overrides``); a checkpoint records the resolved spec so it rebuilds exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .layers import BLOCK_TYPES, INPUT_NORMS
from .mae import POOLINGS, ChannelAgnosticEncoder, MAEDecoder, MaskedAutoencoder, ViTEncoder

FAMILIES = ("mae", "camae")
NORMALIZATIONS = ("image", "plate", "none")

# fields that decide the shape of the encoder's weights or what it computes; a checkpoint's
# values of these win over config overrides (and a conflicting override is an error)
ENCODER_FIELDS = ("family", "in_chans", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
                  "mlp_ratio", "block", "qkv_bias", "qk_norm", "init_values", "final_norm",
                  "input_norm", "channel_embed", "max_channels")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and to feed it.

    ``in_chans`` is the channel count of a standard MAE (the training config's channels replace
    it); a CA-MAE takes 1..``max_channels`` channels. ``normalization`` is how the data stage
    scales pixels before the model (``image``: each channel of each site standardised;
    ``plate``: per-plate channel statistics; ``none``: raw intensities, for models that
    normalise inside, e.g. OpenPhenom's ``input_norm: self_standardize``).
    """

    name: str
    family: str
    description: str = ""
    in_chans: int = 5
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    block: str = "standard"
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None
    final_norm: bool = True
    drop_path_rate: float = 0.0
    input_norm: str = "none"
    channel_embed: bool = True
    max_channels: int = 11
    decoder_embed_dim: int = 256
    decoder_depth: int = 4
    decoder_num_heads: int = 8
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    normalization: str = "image"
    pooling: str = "mean"
    default_layer: int | None = None
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def embedding_dim(self) -> int:
        return self.embed_dim

    @property
    def layer(self) -> int:
        """The default layer (1-based block number)."""
        return self.depth if self.default_layer is None else self.default_layer

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("aliases")
        return out

    def replace(self, **overrides) -> ModelSpec:
        return validate_spec(dataclasses.replace(self, **overrides))


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(ModelSpec)}
OVERRIDABLE = tuple(name for name in _FIELD_TYPES if name not in {"name", "description", "aliases"})


def _check_type(name: str, value, source: str) -> object:
    kind = _FIELD_TYPES[name]
    if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
        return float(value)
    if kind == "float | None" and value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name} must be a number or null, got {value!r}")
        return float(value)
    if kind == "int | None" and value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{source}: {name} must be an integer or null, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
    return value


def validate_spec(spec: ModelSpec, source: str | None = None) -> ModelSpec:
    """Cross-field checks; raises ConfigError naming the model and the field."""
    where = source or f"model {spec.name!r}"

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    choices = {"family": FAMILIES, "block": BLOCK_TYPES, "input_norm": INPUT_NORMS,
               "normalization": NORMALIZATIONS, "pooling": POOLINGS}
    for key, allowed in choices.items():
        if getattr(spec, key) not in allowed:
            raise bad(f"{key} must be one of {', '.join(allowed)}, got {getattr(spec, key)!r}")
    for key in ("in_chans", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
                "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "max_channels"):
        if getattr(spec, key) < 1:
            raise bad(f"{key} must be >= 1, got {getattr(spec, key)}")
    if spec.img_size % spec.patch_size:
        raise bad(f"img_size {spec.img_size} is not a multiple of patch_size {spec.patch_size}")
    for dim, heads in ((spec.embed_dim, "num_heads"), (spec.decoder_embed_dim, "decoder_num_heads")):
        if dim % 4:
            raise bad(f"embedding widths must be divisible by 4 (sin-cos positions), got {dim}")
        if dim % getattr(spec, heads):
            raise bad(f"width {dim} is not divisible by {heads}={getattr(spec, heads)}")
    if not 0.0 <= spec.mask_ratio < 1.0:
        raise bad(f"mask_ratio must be in [0, 1), got {spec.mask_ratio}")
    if spec.default_layer is not None and not 1 <= spec.default_layer <= spec.depth:
        raise bad(f"default_layer must be in 1..{spec.depth}, got {spec.default_layer}")
    if spec.pooling == "channels" and spec.family != "camae":
        raise bad("pooling 'channels' needs family 'camae'")
    return spec


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add ``spec`` (and its aliases) to the registry."""
    validate_spec(spec)
    for key in (spec.name, *spec.aliases):
        if not overwrite and (key in _REGISTRY or key in _ALIASES):
            raise ValueError(f"model name {key!r} is already registered")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def list_models() -> list[str]:
    """Registered model names and aliases, sorted."""
    return sorted([*_REGISTRY, *_ALIASES])


def get_spec(name: str, **overrides) -> ModelSpec:
    """The registered spec of ``name`` with ``overrides`` applied and checked."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; registered: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"model.overrides: unknown key(s) {', '.join(unknown)} for {name!r}; "
                          f"allowed: {', '.join(OVERRIDABLE)}")
    source = f"model {name!r} (overrides {overrides})" if overrides else None
    checked = {k: _check_type(k, v, source or f"model {name!r}") for k, v in overrides.items()}
    return validate_spec(dataclasses.replace(_REGISTRY[key], **checked), source)


def build_model(spec: ModelSpec) -> MaskedAutoencoder:
    """Instantiate the MAE described by ``spec`` (random initialisation from torch's RNG)."""
    common = dict(img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
                  depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio,
                  block=spec.block, qkv_bias=spec.qkv_bias, qk_norm=spec.qk_norm,
                  init_values=spec.init_values, final_norm=spec.final_norm,
                  input_norm=spec.input_norm, drop_path_rate=spec.drop_path_rate)
    grid = spec.img_size // spec.patch_size
    if spec.family == "camae":
        encoder = ChannelAgnosticEncoder(channel_embed=spec.channel_embed,
                                         max_channels=spec.max_channels, **common)
        out_dim = spec.patch_size ** 2
    else:
        encoder = ViTEncoder(in_chans=spec.in_chans, **common)
        out_dim = spec.patch_size ** 2 * spec.in_chans
    decoder = MAEDecoder(encoder_dim=spec.embed_dim, dim=spec.decoder_embed_dim,
                         depth=spec.decoder_depth, num_heads=spec.decoder_num_heads,
                         out_dim=out_dim, grid=(grid, grid), mlp_ratio=spec.mlp_ratio,
                         channel_agnostic=spec.family == "camae", max_channels=spec.max_channels)
    model = MaskedAutoencoder(encoder, decoder, mask_ratio=spec.mask_ratio,
                              norm_pix_loss=spec.norm_pix_loss)
    model.spec = spec
    encoder.spec = spec
    return model


def create_model(name: str, *, seed: int | None = None, **overrides) -> MaskedAutoencoder:
    """Build a registered model: ``create_model("mae_vit_demo", depth=6)``.

    ``seed`` makes the random initialisation reproducible without touching the global RNG.
    The returned module has ``.spec`` (the resolved :class:`ModelSpec`) and ``.encoder``.
    """
    spec = get_spec(name, **overrides)
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        return build_model(spec)


def spec_from_dict(data: dict, source: str) -> ModelSpec:
    """Rebuild a spec recorded in a checkpoint's config.json."""
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown model spec field(s) {', '.join(unknown)}")
    try:
        checked = {k: _check_type(k, v, source) for k, v in data.items() if k in _FIELD_TYPES}
        return validate_spec(ModelSpec(**checked), source)
    except TypeError as exc:
        raise ConfigError(f"{source}: incomplete model spec ({exc})") from exc


# --- the registered models ---------------------------------------------------------------------

register_model(ModelSpec(
    name="mae_vit_demo",
    family="mae",
    description="Tiny ViT MAE for the 2-core demo: 64 px crops, 8 px patches, width 192, "
                "depth 5; trains to a clearly lower loss in ~2-3 min on 2 CPU cores",
    in_chans=5, img_size=64, patch_size=8, embed_dim=192, depth=5, num_heads=4,
    decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
    # per-plate channel statistics keep per-well intensity phenotypes that per-image
    # standardisation erases (on the demo plates: held-out mechanism accuracy 0.98 vs 0.53)
    normalization="plate",
))
register_model(ModelSpec(
    name="camae_vit_demo",
    family="camae",
    description="Tiny channel-agnostic MAE (CA-MAE) of the demo size: shared per-channel patch "
                "embedding plus a learned channel embedding; any 1..11 channels",
    img_size=64, patch_size=8, embed_dim=192, depth=5, num_heads=4,
    decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
))
register_model(ModelSpec(
    name="mae_vit_small_p16_256",
    family="mae",
    description="ViT-S/16 MAE on 256 px crops (width 384, depth 12, 6 heads)",
    in_chans=6, img_size=256, patch_size=16, embed_dim=384, depth=12, num_heads=6,
    decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8,
))
register_model(ModelSpec(
    name="camae_vit_small_p16_256",
    family="camae",
    description="OpenPhenom architecture: channel-agnostic ViT-S/16 MAE on 256 px crops "
                "(ParallelScalingBlocks, qk-norm, layer scale, no final norm, pixels/255 then "
                "per-crop channel standardisation inside the model, mean of all patch tokens). "
                "Loads an OpenPhenom checkpoint directory (config.json + model.safetensors)",
    img_size=256, patch_size=16, embed_dim=384, depth=12, num_heads=6,
    block="parallel_scaling", qkv_bias=False, qk_norm=True, init_values=1e-4, final_norm=False,
    drop_path_rate=0.1, input_norm="self_standardize", channel_embed=False, max_channels=11,
    decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8, norm_pix_loss=False,
    normalization="none", aliases=("openphenom",),
))
