"""Autoencoders for the synthetic benchmark: shapes, objectives, training, determinism, storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phenoica.errors import InputError
from phenoica.models.autoencoders import (
    KINDS,
    Autoencoder,
    AutoencoderConfig,
    _tc_decomposition,
    decode_latents,
    encode_images,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n: int = 96, size: int = 16, seed: int = 0) -> np.ndarray:
    """Bright squares at random positions: a tiny dataset with two factors."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 2, size, size), dtype=np.float32)
    for i, (x, y) in enumerate(rng.integers(0, size - 5, size=(n, 2))):
        images[i, 0, y:y + 5, x:x + 5] = 1.0
        images[i, 1] = 0.3
    return images


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [16, 32])
def test_shapes_of_codes_and_reconstructions(kind, size):
    model = Autoencoder(AutoencoderConfig(kind=kind, in_channels=2, image_size=size, latent_dim=5, width=8, hidden=32))
    x = torch.rand(4, 2, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == (4, 5)
    assert (logvar is None) == (kind == "ae")
    assert model.decode(mu).shape == (4, 2, size, size)
    loss, parts = model.loss(x, dataset_size=100)
    assert torch.isfinite(loss) and parts["loss"] == pytest.approx(float(loss.detach()))
    expected = {"ae": {"recon", "loss"}, "beta_vae": {"recon", "kl", "loss"},
                "beta_tcvae": {"recon", "mi", "tc", "dim_kl", "loss"}}[kind]
    assert set(parts) == expected


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        AutoencoderConfig(kind="vae")
    with pytest.raises(ValueError, match="power of two"):
        AutoencoderConfig(image_size=24)


def test_tc_decomposition_sums_to_sampled_kl_and_sees_dependence():
    torch.manual_seed(0)
    n, d = 256, 3
    logvar = torch.full((n, d), -4.0)
    independent = torch.randn(n, d)
    shared = torch.randn(n, 1).repeat(1, d)  # all dimensions carry the same value
    for mu in (independent, shared):
        z = mu + torch.randn(n, d) * torch.exp(0.5 * logvar)
        mi, tc, dim_kl = _tc_decomposition(z, mu, logvar, dataset_size=n)
        log_q = (-0.5 * (np.log(2 * np.pi) + logvar + (z - mu) ** 2 / logvar.exp())).sum(1)
        log_p = (-0.5 * (np.log(2 * np.pi) + z**2)).sum(1)
        assert float(mi + tc + dim_kl) == pytest.approx(float((log_q - log_p).mean()), rel=1e-5)
    _, tc_ind, _ = _tc_decomposition(independent, independent, logvar, dataset_size=n)
    _, tc_dep, _ = _tc_decomposition(shared, shared, logvar, dataset_size=n)
    assert float(tc_dep) > float(tc_ind) + 1.0


def test_beta_vae_kl_matches_closed_form():
    model = Autoencoder(AutoencoderConfig(kind="beta_vae", in_channels=2, image_size=16, latent_dim=3,
                                          width=8, hidden=16, beta=4.0))
    x = torch.rand(5, 2, 16, 16)
    mu, logvar = model.encode(x)
    closed = 0.5 * torch.sum(mu**2 + logvar.exp() - 1 - logvar) / 5
    _, parts = model.loss(x, dataset_size=5, generator=torch.Generator().manual_seed(0))
    assert parts["kl"] == pytest.approx(float(closed), rel=1e-5)
    assert parts["loss"] == pytest.approx(parts["recon"] + 4.0 * parts["kl"], rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_the_loss_and_is_deterministic(kind):
    images = _blobs()
    kwargs = dict(kind=kind, latent_dim=3, steps=40, batch_size=32, lr=3e-3, seed=1, width=8,
                  hidden=32, log_every=10, beta=2.0)
    model, history = train_autoencoder(images, **kwargs)
    assert list(history["step"]) == [10, 20, 30, 40]
    assert history["recon"].iloc[-1] < 0.8 * history["recon"].iloc[0]
    again, _ = train_autoencoder(images, **kwargs)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    codes = encode_images(model, images)
    assert codes.shape == (len(images), 3) and codes.dtype == np.float32
    recon = decode_latents(model, codes)
    assert recon.shape == images.shape and 0.0 <= recon.min() and recon.max() <= 1.0


def test_weight_decay_shrinks_weights():
    images = _blobs()
    kwargs = dict(latent_dim=3, steps=40, batch_size=32, lr=3e-3, seed=0, width=8, hidden=32)
    plain, _ = train_autoencoder(images, weight_decay=0.0, **kwargs)
    decayed, _ = train_autoencoder(images, weight_decay=5.0, **kwargs)

    def norm(model):
        return sum(float(p.norm() ** 2) for p in model.parameters())

    assert norm(decayed) < norm(plain)


def test_save_load_round_trip(tmp_path):
    model = Autoencoder(AutoencoderConfig(kind="beta_tcvae", in_channels=2, image_size=16, latent_dim=4,
                                          width=8, hidden=16, beta=6.0))
    path = save_autoencoder(model, tmp_path / "m.safetensors", extra={"dataset": "shapes", "seed": 3})
    back, extra = load_autoencoder(path)
    assert back.config == model.config and extra == {"dataset": "shapes", "seed": 3}
    images = _blobs(8)
    np.testing.assert_array_equal(encode_images(back, images), encode_images(model, images))
    assert not list(tmp_path.glob("*.partial"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="bad.safetensors"):
        load_autoencoder(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(InputError, match="no phenoica autoencoder config"):
        load_autoencoder(tmp_path / "foreign.safetensors")
