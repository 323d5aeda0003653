"""Identifiability rule functions: alignment.tsv from per-seed probe embeddings, and the decoder
isometry of (tiny) MAE checkpoints."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import ortho_group

from phenoica.benchmarks.identifiability import (
    ALIGNMENT_COLUMNS,
    ISOMETRY_COLUMNS,
    alignment_table,
    identifiability_alignment,
    identifiability_params,
    plot_isometry,
    summarize_alignment,
)
from phenoica.errors import ConfigError, InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_PROBE, DIM = 400, 4


def _sources() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, size=(N_PROBE, DIM))


def _write_seed(tmp_path, seed: int, *, drop_rows: int = 0, layers=(1, 2)) -> str:
    """Probe embeddings of one 'training seed': layer 1 = the shared sources in a seed-specific
    rotation (rigidly identifiable only), layer 2 = a seed-specific signed permutation."""
    S = _sources()
    rng = np.random.default_rng(100 + seed)
    obsm = {}
    if 1 in layers:
        obsm["X_layer1"] = (S @ ortho_group.rvs(DIM, random_state=seed + 1) + 0.01 * rng.normal(size=S.shape)).astype(np.float32)
    if 2 in layers:
        obsm["X_layer2"] = (S[:, rng.permutation(DIM)] * rng.choice([-1, 1], DIM)).astype(np.float32)
    obs = pd.DataFrame(index=[f"P1:A{i:02d}:1" for i in range(N_PROBE)])
    adata = ad.AnnData(X=obsm[next(iter(obsm))].copy(), obs=obs, obsm=obsm)
    # a seed may have embedded its probe rows in another order (and lost a few)
    adata = adata[rng.permutation(N_PROBE)[drop_rows:]].copy()
    path = tmp_path / f"seed{seed}.h5ad"
    adata.write_h5ad(path)
    return str(path)


def _value(table, layer, map_name, metric):
    hit = table[(table["layer"] == layer) & (table["map"] == map_name) & (table["metric"] == metric)]
    return hit["value"].to_numpy()


def test_alignment_table_known_structure(tmp_path):
    paths = [_write_seed(tmp_path, s, drop_rows=5 * s) for s in (2, 0, 1)]
    out, png = tmp_path / "alignment.tsv", tmp_path / "alignment.png"
    identifiability_alignment(embeddings=paths, seeds=[2, 0, 1], out_tsv=out, out_png=png,
                              params={"ica_components": None})
    table = pd.read_csv(out, sep="\t")
    assert tuple(table.columns) == ALIGNMENT_COLUMNS
    assert set(zip(table["seed_a"], table["seed_b"])) == {(0, 1), (0, 2), (1, 2)}
    assert set(table["layer"]) == {1, 2}
    assert set(table["map"]) == {"all", "permutation", "rigid", "linear", "ica"}
    # layer 2: signed permutations -> every map aligns exactly
    assert np.all(_value(table, 2, "permutation", "mean_error") < 1e-6)
    assert np.all(_value(table, 2, "permutation", "mcc_split") > 0.999)
    # layer 1: rotations -> permutation fails, rigid and ICA (non-Gaussian sources) succeed
    perm = _value(table, 1, "permutation", "mean_error")
    rigid = _value(table, 1, "rigid", "mean_error")
    ica = _value(table, 1, "ica", "mean_error")
    assert np.all(perm > 0.05) and np.all(rigid < 0.01) and np.all(ica < 0.5 * perm)
    assert np.all(_value(table, 1, "ica", "efficiency") > 0.7)
    assert np.all(_value(table, 1, "ica", "n_components") == DIM)
    assert png.stat().st_size > 1000
    summary = summarize_alignment(table)
    assert {"mean_error", "sup_error", "efficiency"} <= set(summary.columns)


def test_alignment_options_and_errors(tmp_path):
    paths = [_write_seed(tmp_path, s) for s in (0, 1)]
    table = alignment_table(paths, [0, 1], {"layers": [2], "maps": ["rigid"], "max_rows": 100, "diameter": "q99"})
    assert set(table["layer"]) == {2} and set(table["map"]) == {"all", "rigid"}
    only_one = _write_seed(tmp_path, 3, layers=(1,))
    with pytest.raises(InputError, match="X_layer2"):
        alignment_table([paths[0], only_one], [0, 3], {"layers": [2]})
    with pytest.raises(ConfigError, match="one seed each"):
        alignment_table(paths, [0], {})
    with pytest.raises(ConfigError, match="duplicate"):
        alignment_table(paths, [0, 0], {})
    with pytest.raises(ConfigError, match="identifiability.maps"):
        identifiability_params({"maps": ["affine"]})
    with pytest.raises(ConfigError, match="identifiability.ica_components"):
        identifiability_params({"ica_components": "all"})
    (tmp_path / "broken.h5ad").write_bytes(b"nope")
    with pytest.raises(InputError, match="broken.h5ad"):
        alignment_table([paths[0], str(tmp_path / "broken.h5ad")], [0, 1], {})


def test_too_few_shared_rows(tmp_path):
    a = _write_seed(tmp_path, 0)
    small = ad.read_h5ad(a)[:5].copy()
    small.write_h5ad(tmp_path / "small.h5ad")
    with pytest.raises(InputError, match="share only 5 probe rows"):
        alignment_table([a, str(tmp_path / "small.h5ad")], [0, 1], {})


def test_plot_isometry(tmp_path):
    table = pd.DataFrame({"weight_decay": [0.0, 0.0, 0.1, 0.1], "seed": [0, 1, 0, 1],
                          "bilipschitz_L": [1.2, 1.0, 0.5, 0.6], "rigid_error": [0.3, 0.3, 0.2, 0.2]})
    plot_isometry(table, tmp_path / "iso.png")
    assert (tmp_path / "iso.png").stat().st_size > 1000
    assert "bilipschitz_L" in ISOMETRY_COLUMNS and "rigid_error" in ISOMETRY_COLUMNS


# --------------------------------------------------------------------------------------------
# decoder isometry of tiny MAEs
# --------------------------------------------------------------------------------------------
TINY_MAE = dict(in_chans=2, img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def _write_manifest(tmp_path, n_sites: int = 6, size: int = 32) -> str:
    import tifffile

    rng = np.random.default_rng(0)
    rows = []
    for s in range(n_sites):
        record = {"site_id": f"P1:A01:{s + 1}", "plate": "P1", "well": "A01", "site": s + 1}
        for c, name in enumerate(("DNA", "ER")):
            path = tmp_path / f"s{s}_w{c + 1}.tif"
            tifffile.imwrite(path, rng.integers(100, 4000, size=(size, size)).astype(np.uint16))
            record[f"path_{name}"] = str(path)
        rows.append(record)
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return str(manifest)


def test_mae_decoder_bilipschitz_is_scale_free():
    import torch

    from phenoica.benchmarks.identifiability import mae_decoder_bilipschitz
    from phenoica.models import create_model

    model = create_model("mae_vit_demo", seed=0, **TINY_MAE)
    images = np.random.default_rng(1).normal(size=(24, 2, 16, 16)).astype(np.float32)
    base = mae_decoder_bilipschitz(model, images, n_pairs=200, quantile=0.0)
    assert np.isfinite(base["bilipschitz_L"]) and base["bilipschitz_L"] > 0
    with torch.no_grad():
        model.decoder.pred.weight.mul_(3.0)
        model.decoder.pred.bias.mul_(3.0)
    scaled = mae_decoder_bilipschitz(model, images, n_pairs=200, quantile=0.0)
    assert scaled["bilipschitz_L"] == pytest.approx(base["bilipschitz_L"], rel=1e-4)
    assert scaled["ratio_median"] == pytest.approx(3.0 * base["ratio_median"], rel=1e-4)


def test_decoder_isometry_end_to_end(tmp_path):
    from phenoica.benchmarks.identifiability import decoder_isometry
    from phenoica.models import create_model, save_checkpoint

    manifest = _write_manifest(tmp_path)
    checkpoints, embeddings, wds, seeds = [], [], [], []
    for wd in (0.0, 0.1):
        for seed in (0, 1):
            ckpt = tmp_path / f"wd{wd}_seed{seed}"
            save_checkpoint(create_model("mae_vit_demo", seed=seed, **TINY_MAE), ckpt, channels=["DNA", "ER"])
            checkpoints.append(str(ckpt))
            wds.append(wd)
            seeds.append(seed)
            embeddings.append(_write_seed(tmp_path, 10 * int(wd * 10) + seed))
    out, png = tmp_path / "isometry.tsv", tmp_path / "isometry.png"
    decoder_isometry(checkpoints=checkpoints, weight_decays=wds, seeds=seeds, embeddings=embeddings,
                     manifests=[manifest], channels=["DNA", "ER"], out_tsv=out, out_png=png,
                     params={"n_pairs": 100, "max_probe_crops": 12, "layer": 2})
    table = pd.read_csv(out, sep="\t")
    assert tuple(table.columns) == ISOMETRY_COLUMNS and len(table) == 4
    assert np.all(np.isfinite(table["bilipschitz_L"])) and np.all(table["bilipschitz_L"] > 0)
    assert np.all(table["n_probe"] == 6)  # one crop per site, fewer sites than max_probe_crops
    # layer 2 of the fake embeddings is a signed permutation per seed: rigid error ~ 0
    assert np.all(table["rigid_error"] < 1e-5)
    assert np.allclose(table["rigid_bound"], np.sqrt(2 * table["bilipschitz_L"] + table["bilipschitz_L"] ** 2))
    assert png.stat().st_size > 1000
