"""embed_plate and collect_wells: the AnnData contract, what the numbers are, determinism,
workers, errors, and a CA-MAE embedding the real 6-channel Phenix site."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from helpers_data import PHENIX, REPO
from helpers_models import TINY_MAE, write_plate, write_truth

from phenoica.config import schema_defaults
from phenoica.embed import collect_wells, embed_plate
from phenoica.errors import ConfigError, InputError
from phenoica.models import create_model, load_encoder, save_checkpoint
from phenoica.models.data import (
    manifest_path_lists,
    normalize_site,
    plate_channel_stats,
    read_manifest,
    read_site,
    tile_positions,
    tile_site,
)
from phenoica.provenance import file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHANNELS = ["DNA", "ER", "RNA"]
TINY = TINY_MAE


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    root = tmp_path_factory.mktemp("plates")
    return [write_plate(root, f"P{i}", batch=f"B{i}", n_wells=3, sites=2, size=48, channels=CHANNELS, seed=i)
            for i in range(2)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "mae"
    save_checkpoint(create_model("mae_vit_demo", seed=5, in_chans=3, normalization="image", **TINY),
                    folder, channels=CHANNELS)
    return folder


MODEL = {"name": "mae_vit_demo", "overrides": TINY}
DEFAULTS = schema_defaults("embed")
EMBED = {**DEFAULTS, "layers": [1, 3], "stride": 16, "num_workers": 0, "batch_size": 8}


def _embed(manifest, out, embed=EMBED, **kw):
    args = dict(model=MODEL, checkpoint=None, channels=CHANNELS, exclude_flagged=False)
    args.update(kw)
    embed_plate(manifest, out_h5ad=out, **args, **embed)
    return ad.read_h5ad(out)


def test_site_anndata_contract_and_values(tmp_path, plates, checkpoint):
    a = _embed(plates[0], tmp_path / "p0.h5ad", checkpoint=str(checkpoint))
    manifest = pd.read_parquet(plates[0])
    assert list(a.obs_names) == list(manifest["site_id"])
    assert not any(c.startswith("path_") for c in a.obs.columns)
    for col in ("plate", "well", "batch", "perturbation"):
        assert isinstance(a.obs[col].dtype, pd.CategoricalDtype)
    assert a.obs["site"].dtype == np.int64 and a.obs["is_control"].dtype == bool
    assert a.X.dtype == np.float32 and a.X.shape == (6, 32)
    assert sorted(a.obsm) == ["X_layer1", "X_layer3"]
    assert np.array_equal(a.X, a.obsm["X_layer3"])
    info = a.uns["phenoica"]["embedding"]
    assert info["model"] == "mae_vit_demo"
    assert info["checkpoint_sha256"] == file_sha256(checkpoint / "model.safetensors")
    assert list(info["layers"]) == [1, 3] and info["pooling"] == "mean" and info["crop_size"] == 32
    assert info["stride"] == 16 and info["tiles_per_site"] == 4 and info["normalization"] == "image"
    assert "embed_plate" in a.uns["phenoica"]["stages"]

    # the numbers: normalise the site, cut 4 crops, mean-pool tokens, average the crops
    encoder = load_encoder(MODEL, str(checkpoint), channels=CHANNELS)
    paths = manifest_path_lists(read_manifest(plates[0], CHANNELS), CHANNELS)
    tiles = tile_site(normalize_site(read_site(paths[2]), "image"), 32, 16)
    with torch.no_grad():
        out = encoder.embed(torch.from_numpy(tiles), [1, 3])
    assert np.allclose(a.obsm["X_layer1"][2], out[1]["pooled"].mean(0).numpy(), atol=1e-5)
    assert np.allclose(a.X[2], out[3]["pooled"].mean(0).numpy(), atol=1e-5)


def test_embedding_is_bit_identical_across_runs_and_worker_counts(tmp_path, plates):
    a = _embed(plates[0], tmp_path / "a.h5ad")
    b = _embed(plates[0], tmp_path / "b.h5ad")
    c = _embed(plates[0], tmp_path / "c.h5ad", embed={**EMBED, "num_workers": 2})
    for other in (b, c):
        assert np.array_equal(a.X, other.X)
        for key in a.obsm:
            assert np.array_equal(a.obsm[key], other.obsm[key])


def test_median_tiles_plate_normalisation_and_cls_pooling(tmp_path, plates):
    med = _embed(plates[0], tmp_path / "med.h5ad", embed={**EMBED, "tile_aggregate": "median",
                                                          "normalization": "plate", "pooling": "cls"})
    encoder = load_encoder(MODEL, None, channels=CHANNELS)
    paths = manifest_path_lists(read_manifest(plates[0], CHANNELS), CHANNELS)
    stats = plate_channel_stats(paths)
    tiles = tile_site(normalize_site(read_site(paths[1]), "plate", stats), 32, 16)
    with torch.no_grad():
        cls = encoder.embed(torch.from_numpy(tiles), [3], pooling="cls")[3]["pooled"]
    assert np.allclose(med.X[1], cls.median(0).values.numpy(), atol=1e-5)
    assert med.uns["phenoica"]["embedding"]["tile_aggregate"] == "median"


def test_camae_per_channel_embeddings_and_channel_pooling(tmp_path, plates):
    model = {"name": "camae_vit_demo", "overrides": TINY}
    a = _embed(plates[0], tmp_path / "ca.h5ad", model=model)
    assert a.obsm["X_layer3_channels"].shape == (6, 3 * 32)
    # channel-major layout: the pooled embedding is the mean of the channel blocks
    blocks = a.obsm["X_layer3_channels"].reshape(6, 3, 32)
    assert np.allclose(blocks.mean(1), a.X, atol=1e-5)
    b = _embed(plates[0], tmp_path / "cb.h5ad", model=model, embed={**EMBED, "pooling": "channels"})
    assert b.X.shape == (6, 96) and np.allclose(b.X, a.obsm["X_layer3_channels"], atol=1e-6)
    assert "X_layer3_channels" not in b.obsm


def test_camae_maps_channels_to_their_trained_embedding_slots(tmp_path, plates):
    model = create_model("camae_vit_demo", seed=2, **TINY).eval()
    save_checkpoint(model, tmp_path / "ca", channels=["Mito", "DNA", "AGP", "RNA"])
    cfg = {"name": "camae_vit_demo"}
    a = _embed(plates[0], tmp_path / "a.h5ad", model=cfg, checkpoint=str(tmp_path / "ca"),
               channels=["RNA", "DNA"])
    paths = manifest_path_lists(read_manifest(plates[0], ["RNA", "DNA"]), ["RNA", "DNA"])
    tiles = torch.from_numpy(tile_site(normalize_site(read_site(paths[0]), "image"), 32, 16))
    with torch.no_grad():
        want = model.encoder.embed(tiles, [3], channel_ids=torch.tensor([3, 1]))[3]["pooled"].mean(0)
        unmapped = model.encoder.embed(tiles, [3])[3]["pooled"].mean(0)
    assert np.allclose(a.X[0], want.numpy(), atol=1e-5)
    assert not np.allclose(a.X[0], unmapped.numpy(), atol=1e-3)
    with pytest.raises(ConfigError, match=r"channels \['ER'\] were not seen in training"):
        _embed(plates[0], tmp_path / "b.h5ad", model=cfg, checkpoint=str(tmp_path / "ca"), channels=["ER"])


def test_exclude_flagged_and_input_errors(tmp_path, plates):
    df = pd.read_parquet(plates[0])
    df.loc[[0, 3], "qc_pass"] = False
    flagged = tmp_path / "flagged.parquet"
    df.to_parquet(flagged, index=False)
    a = _embed(flagged, tmp_path / "f.h5ad", exclude_flagged=True)
    assert a.n_obs == 4 and set(a.obs_names) == set(df["site_id"][df["qc_pass"]])

    df.drop(columns=["path_ER"]).to_parquet(tmp_path / "no_er.parquet", index=False)
    with pytest.raises(InputError, match=r"no_er.parquet: manifest lacks column\(s\) path_ER"):
        _embed(tmp_path / "no_er.parquet", tmp_path / "x.h5ad")
    with pytest.raises(InputError, match="smaller than the crop size 64"):
        _embed(plates[0], tmp_path / "x.h5ad", embed={**EMBED, "crop_size": 64})
    with pytest.raises(ConfigError, match="per-channel|channel-agnostic"):
        _embed(plates[0], tmp_path / "x.h5ad", embed={**EMBED, "pooling": "channels"})
    assert not (tmp_path / "x.h5ad").exists() and not list(tmp_path.glob(".*partial"))


def test_unreadable_image_in_a_worker_is_an_input_error(tmp_path, plates):
    df = pd.read_parquet(plates[0])
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 this is not a tiff")
    df.loc[4, "path_RNA"] = str(broken)
    df.to_parquet(tmp_path / "m.parquet", index=False)
    for workers in (0, 1):
        with pytest.raises(InputError, match=r"broken.tif: .*(unreadable|cannot read)"):
            _embed(tmp_path / "m.parquet", tmp_path / "x.h5ad", embed={**EMBED, "num_workers": workers})
    assert not (tmp_path / "x.h5ad").exists()


def test_tiling_covers_every_pixel():
    assert tile_positions(48, 32, 16) == [0, 16]
    assert tile_positions(50, 32, 16) == [0, 16, 18]
    assert tile_positions(32, 32, 32) == [0]
    img = np.arange(2 * 50 * 40, dtype=np.float32).reshape(2, 50, 40)
    tiles = tile_site(img, 32, 32)
    assert tiles.shape == (4, 2, 32, 32) and np.array_equal(tiles[3], img[:, 18:50, 8:40])


def test_collect_wells_aggregates_sites_and_truth(tmp_path, plates):
    sites = [str(tmp_path / f"s{i}.h5ad") for i in range(2)]
    for manifest, out in zip(plates, sites):
        _embed(manifest, out)
    truth = [str(write_truth(m, tmp_path / f"t{i}.tsv")) for i, m in enumerate(plates)]
    for how in ("mean", "median"):
        out = tmp_path / f"wells_{how}.h5ad"
        collect_wells(sites, out_h5ad=str(out), aggregate=how, truth_paths=truth)
        wells = ad.read_h5ad(out)
        allsites = ad.concat([ad.read_h5ad(s) for s in sites])
        key = allsites.obs["plate"].astype(str) + ":" + allsites.obs["well"].astype(str)
        assert list(wells.obs_names) == list(dict.fromkeys(key))
        assert (wells.obs["n_sites"] == 2).all() and "site" not in wells.obs
        for layer in ("X_layer1", "X_layer3"):
            expected = pd.DataFrame(allsites.obsm[layer]).groupby(key.to_numpy(), sort=False).agg(how)
            assert np.allclose(wells.obsm[layer], expected.to_numpy(), atol=1e-6)
        assert np.array_equal(wells.X, wells.obsm["X_layer3"])
        assert isinstance(wells.obs["perturbation"].dtype, pd.CategoricalDtype)
        assert wells.obs["is_control"].dtype == bool
        bio = wells.obsm["truth_biology"]
        assert list(bio.columns) == ["phenotype", "dose"] and list(wells.obsm["truth_batch"].columns) == ["brightness"]
        t = pd.concat([pd.read_csv(p, sep="\t") for p in truth])
        expected_bio = t.groupby((t["plate"] + ":" + t["well"]).to_numpy(), sort=False)["bio_phenotype"].agg(how)
        assert np.allclose(bio["phenotype"].to_numpy(), expected_bio.loc[wells.obs_names].to_numpy())
        assert "collect_wells" in wells.uns["phenoica"]["stages"]


def test_collect_wells_refuses_mixed_models_and_missing_truth(tmp_path, plates):
    a, b = str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")
    _embed(plates[0], a)
    _embed(plates[1], b, embed={**EMBED, "normalization": "image"})
    with pytest.raises(InputError, match="other model or settings"):
        collect_wells([a, b], out_h5ad=str(tmp_path / "w.h5ad"), aggregate="mean")
    truth = str(write_truth(plates[0], tmp_path / "t.tsv"))
    _embed(plates[1], b)
    with pytest.raises(InputError, match="have no ground truth"):
        collect_wells([a, b], out_h5ad=str(tmp_path / "w.h5ad"), truth_paths=[truth], aggregate="mean")


def test_camae_embeds_the_real_six_channel_phenix_site(tmp_path):
    files = sorted((REPO / PHENIX).glob("r03c03f03p01-ch*sk1fk1fl1.tiff"))
    assert len(files) == 6
    channels = ["brightfield", "ER", "AGP", "Mito", "DNA", "RNA"]
    record = {"site_id": "BR00143976:C03:3", "plate": "BR00143976", "batch": "pediatric", "well": "C03",
              "row": 3, "col": 3, "site": 3, "perturbation": "unknown", "is_control": False}
    record.update({f"path_{c}": str(f) for c, f in zip(channels, files)})
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame([record]).to_parquet(manifest, index=False)
    out = tmp_path / "phenix.h5ad"
    embed_plate(manifest, out_h5ad=out, model={"name": "camae_vit_demo"}, checkpoint=None, channels=channels,
                exclude_flagged=False, **{**DEFAULTS, "stride": 256, "layers": [2, 5], "num_workers": 1})
    a = ad.read_h5ad(out)
    info = a.uns["phenoica"]["embedding"]
    # 540 px, 256-px crops at stride 256: crops at 0 and 256, then one flush with the edge at 284
    assert info["tiles_per_site"] == 9 and list(info["channels"]) == channels
    assert a.X.shape == (1, 192) and a.obsm["X_layer5_channels"].shape == (1, 6 * 192)
    assert np.isfinite(a.X).all() and np.isfinite(a.obsm["X_layer2_channels"]).all()
    per_channel = a.obsm["X_layer5_channels"].reshape(6, 192)
    assert np.allclose(per_channel.mean(0), a.X[0], atol=1e-5)
    # the channels carry different content, so their embeddings differ
    assert np.linalg.matrix_rank(per_channel.astype(np.float64), tol=1e-6) >= 5


def test_probe_set_stacks_every_plate_at_every_block(tmp_path, plates, checkpoint):
    from phenoica.benchmarks.probe import embed_probe_set

    out = tmp_path / "probe.h5ad"
    embed_probe_set(plates, out_h5ad=out, model=MODEL, checkpoint=checkpoint,
                    embed={**DEFAULTS, "stride": 16, "num_workers": 0, "batch_size": 8}, channels=CHANNELS)
    probe = ad.read_h5ad(out)
    one = _embed(plates[0], tmp_path / "one.h5ad", checkpoint=checkpoint,
                 embed={**EMBED, "layers": None})
    assert probe.n_obs == 2 * one.n_obs and not probe.obs_names.has_duplicates
    depth = TINY.get("depth", 5)
    assert sorted(probe.obsm) == sorted(f"X_layer{k}" for k in range(1, depth + 1))
    # the same sites embedded alone give the same numbers
    np.testing.assert_array_equal(probe[one.obs_names].obsm[f"X_layer{depth}"],
                                  one.obsm[f"X_layer{depth}"])
