"""Synthetic disentanglement benchmark (the paper's Table 2, on procedurally rendered data).

For each dataset (``phenoica.simulate.factors``: ``shapes``, ``cells``), model and seed:
train the autoencoder on the training images, encode held-out evaluation images, and score the
codes against the true factors with InfoM, InfoE, InfoC, MCC and DCI
(``phenoica.metrics.disentanglement``). Models: ``ae`` (vanilla autoencoder), ``ae_ica`` (the
same autoencoder's codes, whitened and unmixed by ICA fitted on the *training* codes: the
paper's recipe), ``beta_vae`` and ``beta_tcvae``; all share the architecture, the budget
(steps, batch size, learning rate) and the seeds.

Rule-level functions (one Snakemake job each)::

    make_synthetic_dataset(dataset, out, **DATASET_KEYS)      -> results/synthetic/data/{dataset}.npz
    train_synthetic(dataset_path, model, seed, out_latents, out_weights, **TRAIN_KEYS)
        model in TRAINED_MODELS                               -> .../{dataset}/{model}/seed{seed}.h5ad
    score_synthetic(latents, model, out_tsv, **SCORE_KEYS)
        latents of base_model(model)                          -> .../{dataset}/{model}/seed{seed}.tsv
    collect_synthetic(tables, out_tsv, out_summary, out_png)  -> results/synthetic/disentanglement.tsv

``run_synthetic_benchmark(out_tsv, **settings)`` runs the whole grid in one process. The keyword-only
arguments are the config's ``synthetic`` keys; their defaults (the 2-core demo) live in the
workflow's schema only: call e.g. ``run_synthetic_benchmark(out, **phenoica.config.schema_defaults(
"synthetic"))``; ``config/examples/identifiability_full.yaml`` holds the full sizes.

The table is long: ``dataset, model, seed, metric, value``; metrics ``InfoM``, ``InfoE``,
``InfoC``, ``MCC``, ``DCI_D``, ``DCI_C``, ``DCI_I`` plus ``n_active`` (active latents) and
``recon_bce`` (held-out reconstruction loss per image, the paper's "reconstructs well"
premise).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..config import section_values
from ..errors import ConfigError, InputError
from ..io import atomic_path, read_table, write_h5ad, write_tsv
from ..logs import get_logger
from ..provenance import add_record
from .rule_keys import DATASET_KEYS, SCORE_KEYS, TRAIN_KEYS, check_keys, keyword_only
from .synthetic_grid import MODELS, TRAINED_MODELS, base_model

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

# --------------------------------------------------------------------------------------------
# rule functions
# --------------------------------------------------------------------------------------------
def make_synthetic_dataset(dataset: str, out: str | os.PathLike, *, data_seed: int, n_train: int, n_eval: int,
                           image_size: int, n_values: Mapping[str, int]) -> None:
    """Render ``n_train + n_eval`` images of ``dataset`` (training rows first) to ``out`` (.npz)."""
    from ..simulate.factors import make_factor_dataset, save_factor_dataset

    ds = make_factor_dataset(dataset, int(n_train) + int(n_eval), size=int(image_size), seed=int(data_seed),
                             n_values=dict(n_values) or None)
    save_factor_dataset(ds, out)


def train_synthetic(dataset_path: str | os.PathLike, model: str, seed: int, out_latents: str | os.PathLike,
                    out_weights: str | os.PathLike | None = None, *, n_train: int, n_eval: int, latent_dim: int,
                    width: int, hidden: int, steps: int, batch_size: int, lr: float, weight_decay: float,
                    beta: Mapping[str, float]) -> None:
    """Train ``model`` (one of ``TRAINED_MODELS``) on the training rows; write the codes of the
    evaluation rows as AnnData.

    ``out_latents`` (.h5ad): ``X`` = codes (posterior means for VAEs), ``obsm["X_ica"]`` = the
    codes whitened and unmixed by ICA fitted on the training codes, ``obs`` = the true factor
    values, ``uns["synthetic"]`` = dataset, model, seed, factor names and kinds, held-out
    reconstruction loss; ``uns["training_log"]``; provenance. ``out_weights``: safetensors.
    """
    import torch

    from ..metrics.identifiability import fit_whitened_ica
    from ..models.autoencoders import (
        decode_latents,
        encode_images,
        save_autoencoder,
        train_autoencoder,
    )
    from ..simulate.factors import load_factor_dataset

    if model not in TRAINED_MODELS:
        raise ConfigError(f"synthetic: train_synthetic trains {TRAINED_MODELS}, not {model!r} "
                          f"(use base_model({model!r}))")
    if model != "ae" and model not in beta:
        raise ConfigError(f"synthetic.beta: no value for {model!r}, got {dict(beta)}")
    model_beta = float(beta[model]) if model != "ae" else 1.0
    ds = load_factor_dataset(dataset_path)
    if len(ds) != n_train + n_eval:
        raise InputError(dataset_path, f"has {len(ds)} images, expected n_train + n_eval = "
                                       f"{n_train + n_eval} (rerun make_synthetic_dataset)")
    train, held = ds.subset(np.arange(n_train)), ds.subset(np.arange(n_train, len(ds)))
    net, history = train_autoencoder(
        train.images, kind=model, latent_dim=int(latent_dim), steps=int(steps), batch_size=int(batch_size),
        lr=float(lr), beta=model_beta, weight_decay=float(weight_decay), seed=int(seed), width=int(width),
        hidden=int(hidden))
    codes_train = encode_images(net, train.images)
    codes = encode_images(net, held.images)
    recon = decode_latents(net, codes)
    eps = 1e-6
    bce = -np.mean(np.sum(held.images * np.log(recon + eps) + (1 - held.images) * np.log(1 - recon + eps),
                          axis=(1, 2, 3)))
    ica = fit_whitened_ica(codes_train, seed=int(seed))

    obs = held.factor_frame()
    obs.index = [f"{ds.name}:{i}" for i in range(n_train, len(ds))]
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
               params={"latent_dim": latent_dim, "width": width, "hidden": hidden, "steps": steps,
                       "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "n_train": n_train,
                       "n_eval": n_eval, "image_size": int(ds.images.shape[-1]), "beta": model_beta, "model": model,
                       "torch_threads": torch.get_num_threads()},
               seeds={"model": int(seed), "ica": int(seed), "data": int(ds.meta.get("seed", -1))},
               inputs=[dataset_path])
    if out_weights is not None:
        save_autoencoder(net, out_weights, extra={"dataset": ds.name, "seed": int(seed)})
    write_h5ad(adata, out_latents)
    log.info("%s/%s seed %d: held-out reconstruction BCE %.1f per image", ds.name, model, seed, bce)


def score_synthetic(latents: str | os.PathLike, model: str, out_tsv: str | os.PathLike, *, n_neighbors: int,
                    dci_estimator: str) -> None:
    """Score one (dataset, model, seed): rows ``dataset, model, seed, metric, value``."""
    write_tsv(score_latents(latents, model, n_neighbors=n_neighbors, dci_estimator=dci_estimator), out_tsv)


def score_latents(latents: str | os.PathLike | ad.AnnData, model: str, *, n_neighbors: int,
                  dci_estimator: str) -> pd.DataFrame:
    """The long-format rows for one file written by :func:`train_synthetic`."""
    from ..metrics.disentanglement import disentanglement_scores

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
    scores = disentanglement_scores(values, codes, kinds=kinds, seed=seed, n_neighbors=int(n_neighbors),
                                    dci_estimator=dci_estimator)
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


def run_synthetic_benchmark(out_tsv: str | os.PathLike, workdir: str | os.PathLike | None = None,
                            out_summary: str | os.PathLike | None = None, out_png: str | os.PathLike | None = None,
                            *, datasets: Sequence[str], models: Sequence[str], seeds: Sequence[int], data_seed: int,
                            n_train: int, n_eval: int, image_size: int, n_values: Mapping[str, int], latent_dim: int,
                            width: int, hidden: int, steps: int, batch_size: int, lr: float, weight_decay: float,
                            beta: Mapping[str, float], n_neighbors: int, dci_estimator: str) -> None:
    """The whole grid (datasets x models x seeds) in one process; intermediate files go to
    ``workdir`` (default: a temporary folder that is removed afterwards). The keyword arguments
    are the config's ``synthetic`` keys."""
    settings = {name: value for name, value in locals().items() if name in SYNTHETIC_KEYS}
    data_kw, train_kw, score_kw = (section_values(f, settings) for f in (make_synthetic_dataset, train_synthetic,
                                                                         score_synthetic))
    with tempfile.TemporaryDirectory(prefix="phenoica-synthetic-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        tables = []
        for dataset in datasets:
            data_path = root / "data" / f"{dataset}.npz"
            make_synthetic_dataset(dataset, data_path, **data_kw)
            trained = sorted({base_model(m) for m in models}, key=TRAINED_MODELS.index)
            for seed in seeds:
                for model in trained:
                    train_synthetic(data_path, model, seed, root / dataset / model / f"seed{seed}.h5ad", **train_kw)
                for model in models:
                    out = root / dataset / model / f"seed{seed}.tsv"
                    score_synthetic(root / dataset / base_model(model) / f"seed{seed}.h5ad", model, out, **score_kw)
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


#: The config's ``synthetic`` keys; those each rule function reads are in rule_keys (read by the
#: Snakefile), checked here against the functions.
SYNTHETIC_KEYS: tuple[str, ...] = keyword_only(run_synthetic_benchmark)
check_keys(DATASET_KEYS, make_synthetic_dataset)
check_keys(TRAIN_KEYS, train_synthetic)
check_keys(SCORE_KEYS, score_synthetic)
