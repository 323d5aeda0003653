"""Checkpoints, offline and safe.

* phenoica checkpoints: a folder with ``model.safetensors`` (every weight of the MAE) and
  ``config.json`` (format marker, the resolved :class:`ModelSpec`, channels, training record).
* plain weight files: ``.safetensors`` or a torch file (``.pt``/``.pth``/``.bin``) holding a
  state dict, built with the configured model name.
* OpenPhenom folders (``config.json`` + ``model.safetensors`` as published for
  recursionpharma/OpenPhenom): that ``model.safetensors`` is a torch zip/pickle written with
  ``torch.save({"state_dict": ...})``; it is read through an open file object with
  ``torch.load(weights_only=True)`` (recent torch sends ``*.safetensors`` paths to the
  safetensors reader, which rejects it).

Nothing here unpickles arbitrary objects: torch files go through ``weights_only=True`` and a file
that needs anything else is refused with an :class:`~phenoica.errors.InputError`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file as safetensors_save_file

from ..errors import ConfigError, InputError
from ..io import atomic_path, atomic_write_text
from ..logs import get_logger
from ..provenance import file_sha256, package_versions
from .layers import sincos_pos_embed
from .mae import EncoderBase, MaskedAutoencoder
from .registry import ENCODER_FIELDS, ModelSpec, build_model, get_spec, spec_from_dict

log = get_logger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "phenoica.mae"
FORMAT_VERSION = 1
OPENPHENOM_PREFIX = "encoder.vit_backbone."
_LIST_LIMIT = 8


# --- reading weight files ----------------------------------------------------------------------

def file_kind(path: str | os.PathLike) -> str:
    """``safetensors``, ``torch-zip``, ``pickle`` or ``unknown``, from the file's first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= os.path.getsize(path) - 8:
            return "safetensors"
    return "unknown"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a torch file, safely, onto the CPU.

    Torch files may wrap the state dict as ``{"state_dict": {...}}`` (OpenPhenom, Lightning).
    Raises InputError naming the file when it is missing, unreadable, or would need arbitrary
    unpickling.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "checkpoint file not found")
    kind = file_kind(p)
    if kind == "safetensors":
        try:
            state = safetensors_load(p.read_bytes())
        except Exception as exc:
            raise InputError(p, f"cannot read safetensors file ({exc})") from exc
    elif kind in ("torch-zip", "pickle"):
        try:
            with open(p, "rb") as handle:
                obj = torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError(p, "refused to load: the file contains Python objects other than "
                                "tensors and plain containers, and unpickling them could run "
                                f"arbitrary code (torch: \"{torch_refusal_reason(exc)}\"). Re-save "
                                "the weights as a state dict (safetensors preferred) and point the "
                                "config at that file") from exc
        except Exception as exc:
            raise InputError(p, f"cannot read torch checkpoint ({type(exc).__name__}: {exc})") from exc
        state = _unwrap_state_dict(obj, p)
    else:
        raise InputError(p, "not a safetensors file or a torch checkpoint (unrecognised header)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(p, f"state dict entries are not tensors: {', '.join(map(str, bad[:_LIST_LIMIT]))}")
    return state


_TORCH_BOILERPLATE = ("Weights only load failed", "(1)", "(2)", "Check the documentation",
                      "In PyTorch 2.6", "Re-running `torch.load`")


def torch_refusal_reason(exc: BaseException) -> str:
    """The specific line of torch's ``weights_only`` refusal (e.g. "Trying to load unsupported
    GLOBAL posix.system whose module posix is blocked.", "Unsupported global: GLOBAL
    __main__.Gadget was not an allowed global by default."), without torch's advice to retry
    with ``weights_only=False`` or to allowlist the global; the whole message when no line
    names the reason."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        line = line.removeprefix("WeightsUnpickler error:").strip()
        if "GLOBAL" in line or not line.startswith(_TORCH_BOILERPLATE):
            return line.split(" Please use ")[0].split(" Please file an issue")[0]
    return " ".join(lines) or type(exc).__name__


def _unwrap_state_dict(obj, source: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise InputError(source, f"expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else "")


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
                 *, what: str = "model", assign: bool = False) -> None:
    """Strictly load ``state`` into ``module``; InputError lists missing and unexpected keys
    and shape mismatches (checkpoint shape vs model shape). ``assign`` makes the state's
    tensors the module's (for modules built on the meta device)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (checkpoint vs model): {_listing(mismatched)}")
    if problems:
        raise InputError(source, f"checkpoint does not fit the {what}: " + "; ".join(problems))
    if assign:
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)


# --- phenoica checkpoints ----------------------------------------------------------------------

def save_checkpoint(model: MaskedAutoencoder, out_dir: str | os.PathLike, *, channels: list[str],
                    training: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` to ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    spec: ModelSpec = model.spec
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        safetensors_save_file(state, str(tmp), metadata={"format": FORMAT, "model": spec.name})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "spec": spec.to_dict(),
        "channels": list(channels),
        "weights_sha256": file_sha256(weights),
        "training": training or {},
        "versions": package_versions(),
    }
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read checkpoint config ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(path, "checkpoint config must be a JSON object")
    return data


def is_openphenom_config(config: dict) -> bool:
    return config.get("model_type") == "MAE" or "MAEModel" in (config.get("architectures") or [])


def checkpoint_kind(checkpoint: str | os.PathLike) -> tuple[str, Path, dict | None]:
    """Classify a checkpoint path: (``phenoica`` | ``openphenom`` | ``file``, weights file,
    config dict or None)."""
    path = Path(checkpoint)
    if not path.exists():
        raise InputError(path, "checkpoint not found (a phenoica checkpoint folder, an OpenPhenom "
                               "folder, or a .safetensors/.pt file)")
    if path.is_file():
        return "file", path, None
    weights = path / WEIGHTS_NAME
    config_path = path / CONFIG_NAME
    if not weights.is_file():
        raise InputError(path, f"checkpoint folder has no {WEIGHTS_NAME}")
    if not config_path.is_file():
        return "file", weights, None
    config = _read_json(config_path)
    if config.get("format") == FORMAT:
        return "phenoica", weights, config
    if is_openphenom_config(config):
        return "openphenom", weights, config
    raise InputError(config_path, f"neither a phenoica checkpoint (format {FORMAT!r}) nor an "
                                  "OpenPhenom config (model_type 'MAE')")


def checkpoint_sha256(checkpoint: str | os.PathLike | None) -> str:
    """sha256 of the weights file of a checkpoint ('' for none)."""
    if checkpoint is None:
        return ""
    _, weights, _ = checkpoint_kind(checkpoint)
    return file_sha256(weights)


def _split_encoder_state(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Encoder weights of a full MAE state dict (``encoder.*``); an encoder-only dict as is."""
    if not any(k.startswith("encoder.") for k in state):
        return state
    foreign = [k for k in state if not k.startswith(("encoder.", "decoder."))]
    if foreign:
        raise InputError(source, f"checkpoint does not fit the encoder: {len(foreign)} unexpected "
                                 f"key(s): {_listing(foreign)}")
    return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}


def _check_overrides_against(spec: ModelSpec, overrides: dict, source: Path) -> None:
    conflicts = [f"{k}={overrides[k]!r} (checkpoint: {getattr(spec, k)!r})"
                 for k in overrides if k in ENCODER_FIELDS and overrides[k] != getattr(spec, k)]
    if conflicts:
        raise ConfigError(f"{source}: model.overrides conflict with the checkpoint's architecture: "
                          + "; ".join(conflicts))


def _spec_for_config(model: dict, channels: list[str] | None) -> ModelSpec:
    overrides = dict(model.get("overrides") or {})
    spec = get_spec(model["name"], **overrides)
    if spec.family == "mae" and channels is not None and "in_chans" not in overrides:
        spec = spec.replace(in_chans=len(channels))
    return spec


def load_model(checkpoint: str | os.PathLike) -> MaskedAutoencoder:
    """The full MAE (encoder and decoder) of a phenoica checkpoint folder."""
    kind, weights, config = checkpoint_kind(checkpoint)
    if kind != "phenoica":
        raise InputError(checkpoint, f"not a phenoica checkpoint folder (found: {kind})")
    spec = spec_from_dict(config["spec"], f"{Path(checkpoint) / CONFIG_NAME}")
    model = build_model(spec)
    load_weights(model, read_state_dict(weights), weights, what=f"model {spec.name!r}")
    model.trained_channels = list(config.get("channels") or [])
    return model


def resolve_spec(model: dict, checkpoint: str | os.PathLike | None, *,
                 channels: list[str] | None = None) -> tuple[ModelSpec, str, Path | None, dict | None]:
    """The spec an encoder for ``model`` + ``checkpoint`` will have, without reading weights.

    Returns ``(spec, kind, weights file, checkpoint config)``; ``kind`` is ``random`` (no
    checkpoint), ``phenoica``, ``openphenom`` or ``file``. Raises ConfigError when the config
    and the checkpoint disagree (model name, architecture overrides, a standard MAE's channels).
    """
    if not model or "name" not in model:
        raise ConfigError("model.name: the model section must name a registered model")
    name = model["name"]
    overrides = dict(model.get("overrides") or {})
    if checkpoint is None:
        return _spec_for_config(model, channels), "random", None, None
    kind, weights, config = checkpoint_kind(checkpoint)
    if kind == "phenoica":
        source = Path(checkpoint) / CONFIG_NAME
        spec = spec_from_dict(config["spec"], str(source))
        if get_spec(name).name != spec.name:
            raise ConfigError(f"{source}: the checkpoint is a {spec.name!r} model but model.name is {name!r}")
        _check_overrides_against(spec, overrides, source)
        trained = list(config.get("channels") or [])
        if spec.family == "mae" and channels is not None and list(channels) != trained:
            raise ConfigError(f"{source}: the model was trained on channels {trained} but the config "
                              f"lists {list(channels)}; a standard MAE needs the same channels in the "
                              "same order (a CA-MAE does not)")
        return spec, kind, weights, config
    spec = _spec_for_config(model, channels)
    if kind == "openphenom" and spec.family != "camae":
        raise ConfigError(f"{checkpoint}: an OpenPhenom checkpoint needs a channel-agnostic model "
                          f"(model.name: camae_vit_small_p16_256 or openphenom), not {name!r}")
    return spec, kind, weights, config


def load_encoder(model: dict, checkpoint: str | os.PathLike | None, *,
                 channels: list[str] | None = None) -> EncoderBase:
    """The encoder to embed with, in eval mode.

    ``model`` is the config section (``name``, optional ``overrides``). ``checkpoint`` is a
    phenoica checkpoint folder, a ``.safetensors``/``.pt`` weights file, an OpenPhenom folder,
    or None (random weights, seeded; for tests and smoke runs). ``channels`` (the configured
    channel names) sets a standard MAE's channel count and, for a CA-MAE trained with a channel
    embedding, maps each channel to the embedding slot it was trained with.
    """
    spec, kind, weights, config = resolve_spec(model, checkpoint, channels=channels)
    if kind == "random":
        log.warning("model %s: no checkpoint given, embedding with randomly initialised weights", spec.name)
        encoder = build_model_seeded(spec).encoder
        encoder.trained_channels = None
        return encoder.eval()
    encoder = _meta_encoder(spec)
    state = read_state_dict(weights)
    if kind == "openphenom":
        state = openphenom_encoder_state(state, encoder, weights)
        what = f"encoder of {spec.name!r} (OpenPhenom layout)"
    else:
        state = _split_encoder_state(state, weights)
        what = f"encoder of {spec.name!r}"
    # the encoder lives on the meta device: take the checkpoint's tensors as its parameters
    load_weights(encoder, {k: v.contiguous() for k, v in state.items()}, weights, what=what, assign=True)
    encoder.reset_fixed_buffers()
    encoder.trained_channels = (list(config.get("channels") or []) or None) if kind == "phenoica" else None
    log.info("model %s: loaded %s checkpoint %s", spec.name, kind, weights)
    return encoder.eval()


def _meta_encoder(spec: ModelSpec) -> EncoderBase:
    """An encoder without storage, built on the meta device (no time spent initialising
    weights that a checkpoint replaces)."""
    with torch.device("meta"):
        encoder = build_model(spec).encoder
    encoder.spec = spec
    return encoder


def build_model_seeded(spec: ModelSpec, seed: int = 0) -> MaskedAutoencoder:
    """``build_model`` under a fixed seed, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec)


# --- OpenPhenom ---------------------------------------------------------------------------------

def openphenom_encoder_state(state: dict[str, torch.Tensor], encoder: EncoderBase,
                             source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Map an OpenPhenom ``MAEModel`` state dict onto :class:`ChannelAgnosticEncoder` keys.

    ``encoder.vit_backbone.*`` keys lose that prefix. Dropped on purpose: the decoder, the
    encoder-decoder projection and the pixel head (embedding needs none of them), ``fc_norm``
    (OpenPhenom's ``predict`` pools the block output without it) and ``pos_embed`` (fixed
    sin-cos codes; checked against the ones this encoder computes, since a mismatch means a
    different geometry).
    """
    source = Path(source)
    enc = {k[len(OPENPHENOM_PREFIX):]: v for k, v in state.items() if k.startswith(OPENPHENOM_PREFIX)}
    if not enc:
        raise InputError(source, f"no '{OPENPHENOM_PREFIX}*' keys: not an OpenPhenom MAEModel state dict")
    stray = [k for k in state if k.startswith("encoder.") and not k.startswith(OPENPHENOM_PREFIX)]
    if stray:
        raise InputError(source, f"unexpected encoder key(s) for the OpenPhenom layout: {_listing(stray)}")
    pos = enc.pop("pos_embed", None)
    if pos is None:
        raise InputError(source, f"missing key {OPENPHENOM_PREFIX}pos_embed")
    _check_openphenom_pos(pos, encoder, source)
    for key in ("fc_norm.weight", "fc_norm.bias"):
        enc.pop(key, None)
    return enc


def _check_openphenom_pos(pos: torch.Tensor, encoder: EncoderBase, source: Path) -> None:
    grid = encoder._grid
    n_spatial = grid[0] * grid[1]
    dim = encoder.embed_dim
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != dim or (pos.shape[1] - 1) % n_spatial:
        raise InputError(source, f"pos_embed shape {tuple(pos.shape)} does not fit {grid[0]}x{grid[1]} "
                                 f"patches of width {dim} (expected (1, 1 + channels * {n_spatial}, {dim}))")
    n_channels = (pos.shape[1] - 1) // n_spatial
    if n_channels != encoder.max_channels:
        raise InputError(source, f"pos_embed covers {n_channels} channels but the model allows "
                                 f"{encoder.max_channels}; set model.overrides.max_channels: {n_channels}")
    expected = sincos_pos_embed(grid, dim, cls_token=False).repeat(1, n_channels, 1)
    expected = torch.cat([torch.zeros(1, 1, dim), expected], dim=1)
    err = (pos.float() - expected).abs().max().item()
    if err > 1e-4:
        raise InputError(source, f"pos_embed is not the fixed sin-cos layout this model computes "
                                 f"(max difference {err:.3g}); the checkpoint has another geometry")
