"""Synthetic disentanglement benchmark (the paper's Table 2, on procedurally rendered data).

For each dataset (``phenoica.simulate.factors``: ``shapes``, ``cells``), model and seed:
train the autoencoder on the training images, encode held-out evaluation images, and score the
codes against the true factors with InfoM, InfoE, InfoC, MCC and DCI
(``phenoica.metrics.disentanglement``). Models: ``ae`` (vanilla autoencoder), ``ae_ica`` (the
same autoencoder's codes, whitened and unmixed by ICA fitted on the *training* codes: the
paper's recipe), ``beta_vae`` and ``beta_tcvae``; all share the architecture, the budget
(steps, batch size, learning rate) and the seeds.

Rule-level functions (one Snakemake job each)::

    make_synthetic_dataset(dataset=, out=, params=)           -> results/synthetic/data/{dataset}.npz
    train_synthetic(dataset_path=, model=, seed=, out_latents=, out_weights=, params=)
        model in TRAINED_MODELS                               -> .../{dataset}/{model}/seed{seed}.h5ad
    score_synthetic(latents=, model=, out_tsv=, params=)
        latents of base_model(model)                          -> .../{dataset}/{model}/seed{seed}.tsv
    collect_synthetic(tables=, out_tsv=, out_summary=, out_png=) -> results/synthetic/disentanglement.tsv

``run_synthetic_benchmark(out_tsv=, params=)`` runs the whole grid in one process.

The table is long: ``dataset, model, seed, metric, value``; metrics ``InfoM``, ``InfoE``,
``InfoC``, ``MCC``, ``DCI_D``, ``DCI_C``, ``DCI_I`` plus ``n_active`` (active latents) and
``recon_bce`` (held-out reconstruction loss per image, the paper's "reconstructs well"
premise).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..io import atomic_path, read_table, write_h5ad, write_tsv
from ..logs import get_logger
from ..provenance import add_record
from .synthetic_grid import MODELS, TRAINED_MODELS, base_model  # noqa: F401 (public names)

log = get_logger(__name__)

METRICS: tuple[str, ...] = ("InfoM", "InfoE", "InfoC", "MCC", "DCI_D", "DCI_C", "DCI_I")
TABLE_COLUMNS: tuple[str, ...] = ("dataset", "model", "seed", "metric", "value")

#: The paper's Table 2 (InfoM, InfoE, InfoC; mean over Shapes3D, MPI3D, Falcor3D, Isaac3D), for
#: side-by-side reporting only (docs/science.md).
PAPER_INFOMEC: dict[str, dict[str, float]] = {
    "ae": {"InfoM": 0.39, "InfoE": 0.76, "InfoC": 0.25},
    "beta_vae": {"InfoM": 0.59, "InfoE": 0.81, "InfoC": 0.55},
    "beta_tcvae": {"InfoM": 0.58, "InfoE": 0.72, "InfoC": 0.59},
    "ae_ica": {"InfoM": 0.65, "InfoE": 0.83, "InfoC": 0.40},
}

#: Demo defaults (2 CPU cores); the ``full`` configuration raises sizes and budget.
DEFAULT_PARAMS: dict[str, Any] = {
    "datasets": ["shapes", "cells"],
    "models": list(MODELS),
    "seeds": [0, 1],
    "data_seed": 0,
    "n_train": 4000,
    "n_eval": 1500,
    "image_size": 32,
    "n_values": {},  # per-factor grid sizes, e.g. {"pos_x": 16}
    "latent_dim": 10,
    "width": 16,
    "hidden": 256,
    "steps": 3000,
    "batch_size": 32,
    "lr": 0.002,
    "weight_decay": 0.0,
    "beta": {"beta_vae": 4.0, "beta_tcvae": 6.0},
    "n_neighbors": 10,
    "dci_estimator": "gbt",
}

FULL_PARAMS: dict[str, Any] = {
    **DEFAULT_PARAMS,
    "seeds": [0, 1, 2, 3, 4],
    "n_train": 50000,
    "n_eval": 10000,
    "image_size": 64,
    "n_values": {"pos_x": 16, "pos_y": 16, "rotation": 16},
    "width": 32,
    "batch_size": 64,
    "lr": 0.001,
    "steps": 100000,
}


def synthetic_params(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults overlaid with ``params`` (the config's ``synthetic`` block), validated.

    Raises ConfigError naming the ``synthetic.<key>`` that is wrong.
    """
    from ..simulate.factors import DATASETS

    out = copy.deepcopy(DEFAULT_PARAMS)
    for key, value in (params or {}).items():
        if key not in out:
            raise ConfigError(f"synthetic.{key}: unknown key; allowed keys: {', '.join(sorted(out))}")
        out[key] = dict(value) if isinstance(value, Mapping) else copy.deepcopy(value)
    beta = {**DEFAULT_PARAMS["beta"], **out["beta"]}
    if set(beta) - set(TRAINED_MODELS):
        raise ConfigError(f"synthetic.beta: keys must be among {TRAINED_MODELS}, got {sorted(beta)}")
    out["beta"] = beta
    for key, allowed in (("datasets", tuple(DATASETS)), ("models", MODELS)):
        values = out[key]
        if not isinstance(values, (list, tuple)) or not values or any(v not in allowed for v in values):
            raise ConfigError(f"synthetic.{key}: must be a non-empty list of {allowed}, got {values!r}")
    seeds = out["seeds"]
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"synthetic.seeds: must be a non-empty list of non-negative integers, got {seeds!r}")
    for key in ("n_train", "n_eval", "image_size", "latent_dim", "width", "hidden", "steps", "batch_size",
                "n_neighbors"):
        if not isinstance(out[key], int) or out[key] < 1:
            raise ConfigError(f"synthetic.{key}: must be a positive integer, got {out[key]!r}")
    if out["n_eval"] < 50:
        raise ConfigError("synthetic.n_eval: need at least 50 evaluation images for the metrics")
    if out["image_size"] < 8 or out["image_size"] & (out["image_size"] - 1):
        raise ConfigError(f"synthetic.image_size: must be a power of two >= 8, got {out['image_size']}")
    if out["dci_estimator"] not in ("gbt", "lasso"):
        raise ConfigError(f"synthetic.dci_estimator: 'gbt' or 'lasso', got {out['dci_estimator']!r}")
    if not (float(out["lr"]) > 0 and float(out["weight_decay"]) >= 0):
        raise ConfigError("synthetic.lr must be > 0 and synthetic.weight_decay >= 0")
    return out


# --------------------------------------------------------------------------------------------
# rule functions
# --------------------------------------------------------------------------------------------
def make_synthetic_dataset(*, dataset: str, out: str | os.PathLike, params: Mapping[str, Any] | None = None
                           ) -> None:
    """Render ``n_train + n_eval`` images of ``dataset`` (training rows first) to ``out`` (.npz)."""
    from ..simulate.factors import make_factor_dataset, save_factor_dataset

    p = synthetic_params(params)
    ds = make_factor_dataset(dataset, p["n_train"] + p["n_eval"], size=p["image_size"],
                             seed=p["data_seed"], n_values=p["n_values"] or None)
    save_factor_dataset(ds, out)


def train_synthetic(*, dataset_path: str | os.PathLike, model: str, seed: int,
                    out_latents: str | os.PathLike, out_weights: str | os.PathLike | None = None,
                    params: Mapping[str, Any] | None = None) -> None:
    """Train ``model`` (one of ``TRAINED_MODELS``) on the training rows; write the codes of the
    evaluation rows as AnnData.

    ``out_latents`` (.h5ad): ``X`` = codes (posterior means for VAEs), ``obsm["X_ica"]`` = the
    codes whitened and unmixed by ICA fitted on the training codes, ``obs`` = the true factor
    values, ``uns["synthetic"]`` = dataset, model, seed, factor names and kinds, held-out
    reconstruction loss; ``uns["training_log"]``; provenance. ``out_weights``: safetensors.
    """
    import torch

    from ..metrics.identifiability import fit_whitened_ica
    from ..models.autoencoders import decode_latents, encode_images, save_autoencoder, train_autoencoder
    from ..simulate.factors import load_factor_dataset

    p = synthetic_params(params)
    if model not in TRAINED_MODELS:
        raise ConfigError(f"synthetic: train_synthetic trains {TRAINED_MODELS}, not {model!r} "
                          f"(use base_model({model!r}))")
    ds = load_factor_dataset(dataset_path)
    if len(ds) != p["n_train"] + p["n_eval"]:
        raise InputError(dataset_path, f"has {len(ds)} images, expected n_train + n_eval = "
                                       f"{p['n_train'] + p['n_eval']} (rerun make_synthetic_dataset)")
    train, held = ds.subset(np.arange(p["n_train"])), ds.subset(np.arange(p["n_train"], len(ds)))
    net, history = train_autoencoder(
        train.images, kind=model, latent_dim=p["latent_dim"], steps=p["steps"], batch_size=p["batch_size"],
        lr=float(p["lr"]), beta=float(p["beta"].get(model, 1.0)), weight_decay=float(p["weight_decay"]),
        seed=int(seed), width=p["width"], hidden=p["hidden"])
    codes_train = encode_images(net, train.images)
    codes = encode_images(net, held.images)
    recon = decode_latents(net, codes)
    eps = 1e-6
    bce = -np.mean(np.sum(held.images * np.log(recon + eps) + (1 - held.images) * np.log(1 - recon + eps),
                          axis=(1, 2, 3)))
    ica = fit_whitened_ica(codes_train, seed=int(seed))

    obs = held.factor_frame()
    obs.index = [f"{ds.name}:{i}" for i in range(p["n_train"], len(ds))]
    adata = ad.AnnData(X=codes.astype(np.float32), obs=obs)
    adata.var_names = [f"z{j}" for j in range(codes.shape[1])]
    adata.obsm["X_ica"] = ica.sources(codes).astype(np.float32)
    adata.obsm["factor_codes"] = held.codes.astype(np.int64)
    adata.uns["synthetic"] = {
        "dataset": ds.name, "model": model, "seed": int(seed),
        "factor_names": np.array(ds.factor_names, dtype=object),
        "factor_kinds": np.array(ds.factor_kinds, dtype=object),
        "recon_bce": float(bce), "n_ica_components": int(ica.unmixing.shape[0]),
    }
    adata.uns["training_log"] = history
    add_record(adata.uns, "train_synthetic",
               params={k: p[k] for k in ("latent_dim", "width", "hidden", "steps", "batch_size", "lr",
                                         "weight_decay", "n_train", "n_eval", "image_size")}
               | {"beta": p["beta"].get(model, 1.0), "model": model, "torch_threads": torch.get_num_threads()},
               seeds={"model": int(seed), "ica": int(seed), "data": int(ds.meta.get("seed", -1))},
               inputs=[dataset_path])
    if out_weights is not None:
        save_autoencoder(net, out_weights, extra={"dataset": ds.name, "seed": int(seed)})
    write_h5ad(adata, out_latents)
    log.info("%s/%s seed %d: held-out reconstruction BCE %.1f per image", ds.name, model, seed, bce)


def score_synthetic(*, latents: str | os.PathLike, model: str, out_tsv: str | os.PathLike,
                    params: Mapping[str, Any] | None = None) -> None:
    """Score one (dataset, model, seed): rows ``dataset, model, seed, metric, value``."""
    write_tsv(score_latents(latents, model=model, params=params), out_tsv)


def score_latents(latents: str | os.PathLike | ad.AnnData, *, model: str,
                  params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The long-format rows for one file written by :func:`train_synthetic`."""
    from ..metrics.disentanglement import disentanglement_scores

    p = synthetic_params(params)
    adata = latents if isinstance(latents, ad.AnnData) else _read_latents(latents)
    source = "<AnnData>" if isinstance(latents, ad.AnnData) else latents
    info = adata.uns.get("synthetic", {})
    trained = str(info.get("model", ""))
    if trained != base_model(model):
        raise InputError(source, f"holds codes of {trained!r}, but {model!r} needs {base_model(model)!r}")
    if model == "ae_ica":
        if "X_ica" not in adata.obsm:
            raise InputError(source, "no obsm['X_ica'] (ICA of the codes) to score ae_ica")
        codes = np.asarray(adata.obsm["X_ica"])
    else:
        codes = np.asarray(adata.X)
    factor_codes = np.asarray(adata.obsm["factor_codes"])
    names = [str(n) for n in info["factor_names"]]
    kinds = [str(k) for k in info["factor_kinds"]]
    values = np.column_stack([
        factor_codes[:, k] if kinds[k] == "categorical" else adata.obs[name].to_numpy(dtype=np.float64)
        for k, name in enumerate(names)])
    seed = int(info["seed"])
    scores = disentanglement_scores(values, codes, kinds=kinds, seed=seed, n_neighbors=p["n_neighbors"],
                                    dci_estimator=p["dci_estimator"])
    scores["recon_bce"] = float(info["recon_bce"])
    rows = [(str(info["dataset"]), model, seed, metric, float(value)) for metric, value in scores.items()]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def collect_synthetic(*, tables: Sequence[str | os.PathLike], out_tsv: str | os.PathLike,
                      out_summary: str | os.PathLike | None = None, out_png: str | os.PathLike | None = None
                      ) -> None:
    """Concatenate per-job tables into ``disentanglement.tsv``; optionally the summary next to
    the paper's numbers and the figure."""
    parts = []
    for path in tables:
        df = read_table(path)
        missing = set(TABLE_COLUMNS) - set(df.columns)
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)}")
        parts.append(df[list(TABLE_COLUMNS)])
    if not parts:
        raise InputError("synthetic", "no score tables to collect")
    table = pd.concat(parts, ignore_index=True).sort_values(["dataset", "model", "seed", "metric"])
    write_tsv(table, out_tsv)
    if out_summary is not None:
        write_tsv(summarize_synthetic(table), out_summary)
    if out_png is not None:
        plot_synthetic(table, out_png)


def summarize_synthetic(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD over seeds per dataset, model, metric, plus a ``mean`` dataset (over datasets,
    as the paper averages), with the paper's Table 2 value where it has one."""
    per_seed_mean = table.groupby(["model", "metric", "seed"], observed=True)["value"].mean().reset_index()
    per_seed_mean["dataset"] = "mean"
    both = pd.concat([table, per_seed_mean], ignore_index=True)
    summary = (both.groupby(["dataset", "model", "metric"], observed=True)["value"]
               .agg(mean="mean", sd="std", n_seeds="count").reset_index())
    summary["paper"] = [PAPER_INFOMEC.get(m, {}).get(k, np.nan) if d == "mean" else np.nan
                        for d, m, k in zip(summary["dataset"], summary["model"], summary["metric"])]
    return summary


def plot_synthetic(table: pd.DataFrame | str | os.PathLike, out_png: str | os.PathLike,
                   metrics: Sequence[str] = METRICS) -> None:
    """One panel per metric: models on the x axis, one marker per dataset (mean over seeds,
    bars = SD), the paper's Table 2 value as a black bar where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(table, pd.DataFrame):
        table = read_table(table)
    models = [m for m in MODELS if m in set(table["model"])]
    datasets = sorted(set(table["dataset"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.2), sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sub = table[table["metric"] == metric]
        for i, dataset in enumerate(datasets):
            stats = sub[sub["dataset"] == dataset].groupby("model")["value"].agg(["mean", "std"]).reindex(models)
            x = np.arange(len(models)) + (i - (len(datasets) - 1) / 2) * 0.15
            ax.errorbar(x, stats["mean"], yerr=stats["std"].fillna(0), fmt="o", label=dataset, capsize=2)
        paper = [PAPER_INFOMEC.get(m, {}).get(metric, np.nan) for m in models]
        if not np.all(np.isnan(paper)):
            ax.scatter(np.arange(len(models)), paper, marker="_", s=300, color="k", label="paper (Table 2)")
        ax.set_title(metric)
        ax.set_xticks(np.arange(len(models)), models, rotation=45, ha="right")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_synthetic_benchmark(*, out_tsv: str | os.PathLike, params: Mapping[str, Any] | None = None,
                            workdir: str | os.PathLike | None = None, out_summary: str | os.PathLike | None = None,
                            out_png: str | os.PathLike | None = None) -> None:
    """The whole grid (datasets x models x seeds) in one process; intermediate files go to
    ``workdir`` (default: a temporary folder that is removed afterwards)."""
    p = synthetic_params(params)
    with tempfile.TemporaryDirectory(prefix="phenoica-synthetic-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        tables = []
        for dataset in p["datasets"]:
            data_path = root / "data" / f"{dataset}.npz"
            make_synthetic_dataset(dataset=dataset, out=data_path, params=p)
            trained = sorted({base_model(m) for m in p["models"]}, key=TRAINED_MODELS.index)
            for seed in p["seeds"]:
                for model in trained:
                    train_synthetic(dataset_path=data_path, model=model, seed=seed,
                                    out_latents=root / dataset / model / f"seed{seed}.h5ad", params=p)
                for model in p["models"]:
                    out = root / dataset / model / f"seed{seed}.tsv"
                    score_synthetic(latents=root / dataset / base_model(model) / f"seed{seed}.h5ad",
                                    model=model, out_tsv=out, params=p)
                    tables.append(out)
        collect_synthetic(tables=tables, out_tsv=out_tsv, out_summary=out_summary, out_png=out_png)


def _read_latents(path: str | os.PathLike) -> ad.AnnData:
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"cannot read latents: {err}") from err
    info = adata.uns.get("synthetic")
    if not isinstance(info, Mapping) or "factor_names" not in info or "factor_codes" not in adata.obsm:
        raise InputError(path, "not a train_synthetic output (no uns['synthetic'] or obsm['factor_codes'])")
    return adata
