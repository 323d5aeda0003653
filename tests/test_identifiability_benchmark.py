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
    ALIGNMENT_KEYS,
    ISOMETRY_COLUMNS,
    ISOMETRY_KEYS,
    SUMMARY_COLUMNS,
    alignment_table,
    identifiability_alignment,
    k_grid,
    plot_isometry,
    selected_rows,
    summarize_alignment,
)
from phenoica.config import schema_defaults
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
        rotated = S @ ortho_group.rvs(DIM, random_state=seed + 1)
        obsm["X_layer1"] = (rotated + 0.01 * rng.normal(size=S.shape)).astype(np.float32)
    if 2 in layers:
        obsm["X_layer2"] = (S[:, rng.permutation(DIM)] * rng.choice([-1, 1], DIM)).astype(np.float32)
    obs = pd.DataFrame(index=[f"P1:A{i:02d}:1" for i in range(N_PROBE)])
    adata = ad.AnnData(X=obsm[next(iter(obsm))].copy(), obs=obs, obsm=obsm)
    # a seed may have embedded its probe rows in another order (and lost a few)
    adata = adata[rng.permutation(N_PROBE)[drop_rows:]].copy()
    path = tmp_path / f"seed{seed}.h5ad"
    adata.write_h5ad(path)
    return str(path)


def _value(table, layer, map_name, metric, k=None):
    hit = table[(table["layer"] == layer) & (table["map"] == map_name) & (table["metric"] == metric)]
    if k is not None:
        hit = hit[hit["k"] == k]
    return hit["value"].to_numpy()


def _settings(**overrides):
    """The config's identifiability keys of the alignment rule: schema defaults + overrides
    (2 stability splits instead of 5 keep the test fast)."""
    defaults = schema_defaults("identifiability")
    return {**{key: defaults[key] for key in ALIGNMENT_KEYS}, "stability_seeds": 2, **overrides}


def _table(paths, seeds, **overrides):
    settings = _settings(**overrides)
    settings.pop("stability_threshold")
    return alignment_table(paths, seeds, **settings)


def test_alignment_table_known_structure(tmp_path, caplog):
    paths = [_write_seed(tmp_path, s, drop_rows=5 * s) for s in (2, 0, 1)]
    out, summary_tsv, png = tmp_path / "alignment.tsv", tmp_path / "summary.tsv", tmp_path / "alignment.png"
    identifiability_alignment(paths, [2, 0, 1], out, summary_tsv, png, **_settings(dims=[2, 4]))
    table = pd.read_csv(out, sep="\t")
    assert tuple(table.columns) == ALIGNMENT_COLUMNS
    pairs = table[table["seed_a"] != table["seed_b"]]
    assert set(zip(pairs["seed_a"], pairs["seed_b"])) == {(0, 1), (0, 2), (1, 2)}
    assert set(table["layer"]) == {1, 2} and set(table["k"]) == {2, 4}
    assert set(table["map"]) == {"all", "permutation", "rigid", "linear", "ica"}
    # layer 2: signed permutations -> every map aligns exactly, at full k
    assert np.all(_value(table, 2, "permutation", "mean_error", k=4) < 1e-6)
    assert np.all(_value(table, 2, "permutation", "mcc_split", k=4) > 0.999)
    # layer 1: rotations -> permutation fails, rigid and ICA (non-Gaussian sources) succeed
    perm = _value(table, 1, "permutation", "mean_error", k=4)
    rigid = _value(table, 1, "rigid", "mean_error", k=4)
    ica = _value(table, 1, "ica", "mean_error", k=4)
    assert np.all(perm > 0.05) and np.all(rigid < 0.01) and np.all(ica < 0.2 * perm)
    assert np.all(_value(table, 1, "ica", "n_components", k=2) == 2)
    # one stability row per seed, layer and k (seed_a == seed_b)
    stability = table[table["metric"] == "stability"]
    assert len(stability) == 3 * 2 * 2 and (stability["seed_a"] == stability["seed_b"]).all()
    # the 4 sources (equal scales) are found again on halves of ~96 rows at k = 4; the top-2
    # principal axes of isotropic sources mix them arbitrarily: no reproducible components at k = 2
    assert np.median(_value(table, 1, "ica", "stability", k=4)) > 0.75
    assert np.median(_value(table, 1, "ica", "stability", k=2)) < 0.5

    summary = pd.read_csv(summary_tsv, sep="\t")
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    chosen = selected_rows(summary).set_index("layer")
    assert chosen.loc[1, "k"] == 4  # the uniform sources are stable at every k: the largest k
    assert chosen.loc[1, "efficiency"] > 0.9 and chosen.loc[1, "k_below_5"] == 1.0
    assert "k = 4 components (< 5)" in caplog.text
    assert png.stat().st_size > 1000


def test_summary_efficiency_is_a_ratio_of_pair_averaged_errors():
    """Two seed pairs: efficiencies 1.0 and 0.0 per pair, but the paper's figure is the ratio of
    mean errors, (0.30 - 0.25) / (0.30 - 0.10) = 0.25, not the mean of the ratios, 0.5."""
    rows = []
    for (a, b), (perm, rigid, ica) in (((0, 1), (0.2, 0.1, 0.1)), ((0, 2), (0.4, 0.1, 0.4))):
        for name, value in (("permutation", perm), ("rigid", rigid), ("ica", ica)):
            rows.append((3, a, b, name, 8, "mean_error", value))
    for seed, value in ((0, 0.9), (1, 0.8), (2, 0.2)):
        rows.append((3, seed, seed, "ica", 8, "stability", value))
    table = pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)
    summary = summarize_alignment(table, k="stable", stability_threshold=0.75)
    row = selected_rows(summary).iloc[0]
    assert row["efficiency"] == pytest.approx(0.25)
    assert row["stability"] == pytest.approx(0.8)  # median over the seeds
    assert row["permutation"] == pytest.approx(0.3)
    assert _value(summary, 3, "permutation", "mean_error_max", k=8) == pytest.approx(0.4)
    # no k reaches a stricter threshold: the smallest k is reported, flagged as not stable
    strict = summarize_alignment(table, k="stable", stability_threshold=0.95)
    assert _value(strict, 3, "all", "stable", k=8) == 0.0


def test_k_grid():
    assert k_grid(None, "stable", rank=64, n_fit=200) == [2, 3, 4, 6, 8, 12, 16, 24, 32, 40]
    assert k_grid(None, "stable", rank=5, n_fit=200) == [2, 3, 4, 5]
    assert k_grid([2, 8, 100], 6, rank=20, n_fit=1000) == [2, 6, 8]  # 100 > rank is left out
    with pytest.raises(ValueError, match="rank 1"):
        k_grid(None, "stable", rank=1, n_fit=200)


def test_alignment_options_and_errors(tmp_path):
    paths = [_write_seed(tmp_path, s) for s in (0, 1)]
    table = _table(paths, [0, 1], layers=[2], maps=["rigid"], max_rows=100, diameter="q99", dims=[3])
    assert set(table["layer"]) == {2} and set(table["map"]) == {"all", "rigid", "ica"}  # ica: stability rows
    assert set(table["k"]) == {3}
    only_one = _write_seed(tmp_path, 3, layers=(1,))
    with pytest.raises(InputError, match="X_layer2"):
        _table([paths[0], only_one], [0, 3], layers=[2])
    with pytest.raises(ConfigError, match="one seed each"):
        _table(paths, [0])
    with pytest.raises(ConfigError, match="duplicate"):
        _table(paths, [0, 0])
    with pytest.raises(ConfigError, match="identifiability.maps"):
        _table(paths, [0, 1], maps=["affine"])
    with pytest.raises(ConfigError, match="unknown settings .'ica_components'"):
        identifiability_alignment(paths, [0, 1], tmp_path / "a.tsv", tmp_path / "s.tsv",
                                  **_settings(ica_components="auto"))
    (tmp_path / "broken.h5ad").write_bytes(b"nope")
    with pytest.raises(InputError, match="broken.h5ad"):
        _table([paths[0], str(tmp_path / "broken.h5ad")], [0, 1])


def test_too_few_shared_rows(tmp_path):
    a = _write_seed(tmp_path, 0)
    small = ad.read_h5ad(a)[:5].copy()
    small.write_h5ad(tmp_path / "small.h5ad")
    with pytest.raises(InputError, match="share only 5 probe rows"):
        _table([a, str(tmp_path / "small.h5ad")], [0, 1])


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
    defaults = schema_defaults("identifiability")
    settings = {**{key: defaults[key] for key in ISOMETRY_KEYS}, "n_pairs": 100, "max_probe_crops": 12, "layer": 2}
    decoder_isometry(checkpoints, wds, seeds, embeddings, [manifest], ["DNA", "ER"], out, png, **settings)
    table = pd.read_csv(out, sep="\t")
    assert tuple(table.columns) == ISOMETRY_COLUMNS and len(table) == 4
    assert np.all(np.isfinite(table["bilipschitz_L"])) and np.all(table["bilipschitz_L"] > 0)
    assert np.all(table["n_probe"] == 6)  # one crop per site, fewer sites than max_probe_crops
    # layer 2 of the fake embeddings is a signed permutation per seed: rigid error ~ 0
    assert np.all(table["rigid_error"] < 1e-5)
    assert np.allclose(table["rigid_bound"], np.sqrt(2 * table["bilipschitz_L"] + table["bilipschitz_L"] ** 2))
    assert png.stat().st_size > 1000
