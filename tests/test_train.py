"""Training: outputs, determinism, resumption after a kill, the weight-decay knob, learning,
and data-parallel training with two gloo processes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers_models import TINY_MAE, write_plate

from phenoica.config import schema_defaults
from phenoica.errors import ConfigError
from phenoica.models import load_model, read_state_dict, train_model
from phenoica.models import train as train_mod
from phenoica.models.train import lr_at, params_digest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHANNELS = ["DNA", "ER"]
TINY = {**TINY_MAE, "depth": 2}
MODEL = {"name": "mae_vit_demo", "overrides": TINY}
DEFAULTS = schema_defaults("train")
TRAIN = {**DEFAULTS, "epochs": 2, "batch_size": 4, "crops_per_site": 2, "lr": 2e-3, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    return [str(write_plate(root, "P1", n_wells=2, sites=2, size=40, channels=CHANNELS, seed=0)),
            str(write_plate(root, "P2", n_wells=2, sites=2, size=40, channels=CHANNELS, seed=1))]


def _weights(folder):
    return read_state_dict(folder / "model.safetensors")


def test_training_writes_checkpoint_and_log_and_is_reproducible(tmp_path, plate):
    train_model(plate, out_dir=str(tmp_path / "a"), model=MODEL, channels=CHANNELS, **{**TRAIN, "seed": 0})
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["config.json", "model.safetensors", "train_log.tsv"]  # no state, no partials
    log = pd.read_csv(tmp_path / "a" / "train_log.tsv", sep="\t")
    assert list(log.columns) == ["epoch", "loss", "lr", "seconds", "crops_per_s"]
    assert list(log["epoch"]) == [1, 2] and log["loss"].notna().all()
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["channels"] == CHANNELS and config["training"]["seed"] == 0
    assert config["training"]["n_sites"] == 8 and config["spec"]["in_chans"] == 2

    train_model(plate, out_dir=str(tmp_path / "b"), model=MODEL, channels=CHANNELS, **{**TRAIN, "seed": 0})
    train_model(plate, out_dir=str(tmp_path / "c"), model=MODEL, channels=CHANNELS, **{**TRAIN, "seed": 1})
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert list(pd.read_csv(tmp_path / "b" / "train_log.tsv", sep="\t")["loss"]) == list(log["loss"])


def test_resumes_after_a_kill_and_matches_an_uninterrupted_run(tmp_path, plate, monkeypatch):
    train = {**TRAIN, "epochs": 3}
    train_model(plate, out_dir=str(tmp_path / "full"), model=MODEL, channels=CHANNELS, **{**train, "seed": 2})

    real_epoch = train_mod._run_epoch
    calls = {"n": 0}

    def killed_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_run_epoch", killed_in_second_epoch)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_model(plate, out_dir=str(out), model=MODEL, channels=CHANNELS, **{**train, "seed": 2})
    assert (out / ".train_state.pt").is_file() and not (out / "model.safetensors").exists()
    monkeypatch.setattr(train_mod, "_run_epoch", real_epoch)

    ran = []
    monkeypatch.setattr(train_mod, "_run_epoch", lambda *a, **k: ran.append(1) or real_epoch(*a, **k))
    train_model(plate, out_dir=str(out), model=MODEL, channels=CHANNELS, **{**train, "seed": 2})
    assert len(ran) == 2  # epochs 2 and 3 only
    full, resumed = _weights(tmp_path / "full"), _weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    log_full = pd.read_csv(tmp_path / "full" / "train_log.tsv", sep="\t")
    log_resumed = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert list(log_full["loss"]) == list(log_resumed["loss"]) and len(log_resumed) == 3
    assert not (out / ".train_state.pt").exists()


def test_a_resume_state_from_other_settings_is_ignored(tmp_path, plate, monkeypatch):
    out = tmp_path / "run"
    real_epoch = train_mod._run_epoch

    def kill(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_run_epoch", lambda *a, **k: (real_epoch(*a, **k), setattr(
        train_mod, "_run_epoch", kill))[0])
    with pytest.raises(KeyboardInterrupt):
        train_model(plate, out_dir=str(out), model=MODEL, channels=CHANNELS, **{**TRAIN, "epochs": 3})
    monkeypatch.setattr(train_mod, "_run_epoch", real_epoch)
    # other learning rate -> the saved state must not be reused
    train_model(plate, out_dir=str(out), model=MODEL, channels=CHANNELS, **{**TRAIN, "lr": 1e-3})
    train_model(plate, out_dir=str(tmp_path / "fresh"), model=MODEL, channels=CHANNELS, **{**TRAIN, "lr": 1e-3})
    a, b = _weights(out), _weights(tmp_path / "fresh")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_shrinks_the_weights(tmp_path, plate):
    norms = {}
    for wd in (0.0, 5.0):
        out = tmp_path / f"wd{wd}"
        train_model(plate, out_dir=str(out), model=MODEL, channels=CHANNELS,
                    **{**TRAIN, "weight_decay": wd, "lr": 1e-2})
        w = _weights(out)
        norms[wd] = sum(float(v.norm() ** 2) for k, v in w.items() if k.endswith("weight") and v.ndim == 2)
    assert norms[5.0] < 0.9 * norms[0.0]


def test_the_loss_goes_down(tmp_path, plate):
    train = {**DEFAULTS, "epochs": 8, "batch_size": 8, "crops_per_site": 4, "lr": 3e-3, "warmup_epochs": 1}
    train_model(plate, out_dir=str(tmp_path / "m"), model=MODEL, channels=CHANNELS, **train)
    loss = pd.read_csv(tmp_path / "m" / "train_log.tsv", sep="\t")["loss"].to_numpy()
    assert loss[-2:].mean() < 0.85 * loss[:2].mean()


def test_train_config_errors(tmp_path, plate):
    # the schema checks each key (tests/test_config.py); the model-dependent checks are here
    with pytest.raises(ConfigError, match="at most 11 channels"):
        train_model(plate, out_dir=str(tmp_path), model={"name": "camae_vit_demo"},
                    channels=[f"c{i}" for i in range(12)], **TRAIN)


def test_learning_rate_schedule():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


@pytest.mark.slow
def test_data_parallel_with_two_gloo_processes(tmp_path, plate):
    out = tmp_path / "ddp"
    train_model(plate, out_dir=str(out), model=MODEL, channels=CHANNELS, device="cpu", **{**TRAIN, "nproc": 2})
    config = json.loads((out / "config.json").read_text())
    training = config["training"]
    assert training["world_size"] == 2
    digests = training["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # the ranks stayed in sync
    model = load_model(out)
    assert params_digest(model) == training["params_digest"]
    assert training["params_digest"].startswith(digests[0])
    log = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert list(log["epoch"]) == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "train_log.tsv"]
