"""MAE foundation models: ViT MAE and channel-agnostic MAE (OpenPhenom design) from timm blocks,
a registry/factory, safe checkpoints (safetensors; OpenPhenom folders) and training."""

from .checkpoint import (
    checkpoint_kind,
    checkpoint_sha256,
    load_encoder,
    load_model,
    load_weights,
    read_state_dict,
    save_checkpoint,
)
from .mae import ChannelAgnosticEncoder, EncoderBase, MaskedAutoencoder, ViTEncoder
from .registry import ModelSpec, create_model, get_spec, list_models, register_model
from .train import train_model

__all__ = [
    "ChannelAgnosticEncoder",
    "EncoderBase",
    "MaskedAutoencoder",
    "ModelSpec",
    "ViTEncoder",
    "checkpoint_kind",
    "checkpoint_sha256",
    "create_model",
    "get_spec",
    "list_models",
    "load_encoder",
    "load_model",
    "load_weights",
    "read_state_dict",
    "register_model",
    "save_checkpoint",
    "train_model",
]
