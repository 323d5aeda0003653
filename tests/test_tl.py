"""The scanpy-style API phenoica.tl and the scanpy-facing obsm keys."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

SCANPY_RESERVED = ("X_pca", "X_umap", "X_tsne", "X_diffmap", "X_draw_graph_fr", "X_pca_harmony")


def _wells(n: int = 40, d: int = 6, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({"batch": pd.Categorical(np.repeat(["B0", "B1"], n // 2)),
                        "perturbation": pd.Categorical(np.tile(["DMSO", "a", "b", "c"], n // 4)),
                        "is_control": np.tile([True, False, False, False], n // 4)},
                       index=[f"w{i}" for i in range(n)])
    return ad.AnnData(X=rng.laplace(size=(n, d)).astype(np.float32) @ rng.normal(size=(d, d)).astype(np.float32),
                      obs=obs)


def test_collected_obsm_keys_never_collide_with_scanpy():
    """A post-processing output named like a scanpy embedding (pca, umap, pca_harmony) is stored
    under X_phenoica_<name>; sc.pp.pca / sc.tl.umap cannot overwrite it."""
    from phenoica.collect import assemble

    wells = _wells()
    post = ad.AnnData(X=np.ones((wells.n_obs, 2), dtype=np.float32), obs=wells.obs.copy())
    out = assemble(wells, {"pca": post, "umap": post, "pca_harmony": post})
    assert sorted(out.obsm) == ["X_phenoica_pca", "X_phenoica_pca_harmony", "X_phenoica_umap"]
    assert not set(out.obsm) & set(SCANPY_RESERVED)
