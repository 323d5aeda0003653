"""A synthetic per-well embedding table shaped like a real screen (RxRx3-core: ~220,000 wells x
384 dims), with known structure, for benchmarks and workflow tests at scale.

Layout: ``n_batches`` batches (experiments) of ``plates_per_batch`` plates of ``wells_per_plate``
wells; a share ``control_share`` of every plate are negative controls, the other wells cycle
through a shuffled list of ``n_perturbations`` perturbations, so every perturbation has about the
same number of wells in every batch (RxRx3-core repeats each perturbation across experiments).

Structure of a well's 384-dim profile::

    x = gain[batch] * (A_bio s + A_tech (t[batch] + t[plate]) + noise) * feature_scale

- ``s``: ``n_bio`` independent Laplace cell-state sources (non-Gaussian, as ICA assumes), shifted
  for the wells of an active perturbation along 1-3 of them (``active_share`` of the perturbations
  are active; effect sizes vary, so some perturbations are easy and some hard to detect);
- ``t``: ``n_tech`` technical sources, one offset per batch and a smaller one per plate;
- ``gain``: a per-batch, per-feature multiplicative gain (1 + ``gain_sd`` N(0, 1));
- ``feature_scale``: per-feature scales spanning about an order of magnitude, as in raw
  embeddings.

Everything is seeded; generation runs in blocks of rows (float32), so memory stays near the size
of the table itself (220,800 x 384 float32 = 324 MiB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CONTROL = "EMPTY_control"
#: Published RxRx3-core embeddings name their 384 columns feature_0 .. feature_383.
FEATURE_PREFIX = "feature_"


@dataclass(frozen=True)
class ScreenTruth:
    """What the generator put in: per-perturbation effect vectors (in source space) and whether
    the perturbation is active."""

    perturbations: list[str]
    effects: np.ndarray        # (n_perturbations, n_bio)
    active: np.ndarray         # (n_perturbations,) bool


def well_names(n: int, n_cols: int = 48) -> list[str]:
    """The first ``n`` wells of a 1536-well plate in row-major order: A01..A48, B01.., AA01.."""
    rows = [chr(65 + i) for i in range(26)] + ["A" + chr(65 + i) for i in range(6)]
    if n > len(rows) * n_cols:
        raise ValueError(f"a plate holds at most {len(rows) * n_cols} wells, asked for {n}")
    return [f"{rows[i // n_cols]}{i % n_cols + 1:02d}" for i in range(n)]


def synthetic_screen(*, n_batches: int = 16, plates_per_batch: int = 10,
                     wells_per_plate: int = 1380, n_perturbations: int = 2000,
                     control_share: float = 0.1, n_features: int = 384, n_bio: int = 32,
                     n_tech: int = 8, active_share: float = 0.4, batch_strength: float = 1.0,
                     gain_sd: float = 0.1, noise: float = 0.5, seed: int = 0,
                     block_rows: int = 32768) -> tuple[np.ndarray, pd.DataFrame, ScreenTruth]:
    """``(X, obs, truth)``: X float32 (wells x ``n_features``); obs with ``plate``, ``well``,
    ``batch``, ``perturbation``, ``is_control`` (plate names ``<batch>_P<k>``, batch names
    ``exp-<i>``; controls are named ``EMPTY_control``)."""
    rng = np.random.default_rng(seed)
    n_plates = n_batches * plates_per_batch
    n_wells = n_plates * wells_per_plate
    n_ctrl_plate = max(1, round(control_share * wells_per_plate))
    names = [f"gene{i:04d}" for i in range(n_perturbations)]

    # --- layout: controls spread over each plate, perturbations cycled per batch ------------
    plate_of = np.repeat(np.arange(n_plates), wells_per_plate)
    batch_of = plate_of // plates_per_batch
    slot = np.tile(np.arange(wells_per_plate), n_plates)
    ctrl_slots = np.zeros(wells_per_plate, bool)
    ctrl_slots[np.linspace(0, wells_per_plate - 1, n_ctrl_plate).round().astype(int)] = True
    is_control = ctrl_slots[slot]
    pert = np.full(n_wells, -1, dtype=np.int64)
    treated_per_batch = plates_per_batch * (wells_per_plate - n_ctrl_plate)
    for b in range(n_batches):
        rows = np.flatnonzero((batch_of == b) & ~is_control)
        order = np.resize(rng.permutation(n_perturbations), treated_per_batch)
        pert[rows] = rng.permutation(order)

    # --- structure --------------------------------------------------------------------------
    active = rng.random(n_perturbations) < active_share
    effects = np.zeros((n_perturbations, n_bio))
    for p in np.flatnonzero(active):
        k = rng.integers(1, 4)
        dims = rng.choice(n_bio, size=k, replace=False)
        effects[p, dims] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.5, 4.0, size=k)
    A_bio = rng.normal(size=(n_bio, n_features)) / np.sqrt(n_bio) * 2.0
    A_tech = rng.normal(size=(n_tech, n_features)) / np.sqrt(n_tech)
    t_batch = batch_strength * 1.5 * rng.normal(size=(n_batches, n_tech))
    t_plate = batch_strength * 0.5 * rng.normal(size=(n_plates, n_tech))
    gain = 1.0 + gain_sd * batch_strength * rng.normal(size=(n_batches, n_features))
    scale = np.exp(rng.uniform(-1.2, 1.2, size=n_features))

    X = np.empty((n_wells, n_features), dtype=np.float32)
    A_bio32, A_tech32 = A_bio.astype(np.float32), A_tech.astype(np.float32)
    for start in range(0, n_wells, block_rows):
        stop = min(n_wells, start + block_rows)
        rows = slice(start, stop)
        s = rng.laplace(scale=1 / np.sqrt(2), size=(stop - start, n_bio)).astype(np.float32)
        treated = pert[rows] >= 0
        s[treated] += effects[pert[rows][treated]].astype(np.float32)
        t = (t_batch[batch_of[rows]] + t_plate[plate_of[rows]]).astype(np.float32)
        block = s @ A_bio32 + t @ A_tech32
        block += noise * rng.standard_normal(size=block.shape, dtype=np.float32)
        block *= gain[batch_of[rows]].astype(np.float32)
        block *= scale.astype(np.float32)
        X[rows] = block

    batch_names = np.array([f"exp-{b + 1:03d}" for b in range(n_batches)], dtype=object)
    plate_names = np.array([f"exp-{p // plates_per_batch + 1:03d}_P{p % plates_per_batch + 1}"
                            for p in range(n_plates)], dtype=object)
    wells = np.array(well_names(wells_per_plate), dtype=object)
    pert_names = np.array(names + [CONTROL], dtype=object)
    obs = pd.DataFrame({
        "plate": pd.Categorical(plate_names[plate_of]),
        "well": pd.Categorical(wells[slot]),
        "batch": pd.Categorical(batch_names[batch_of]),
        "perturbation": pd.Categorical(pert_names[pert]),
        "is_control": is_control,
    })
    obs.index = (obs["plate"].astype(str) + ":" + obs["well"].astype(str)).to_numpy()
    return X, obs, ScreenTruth(perturbations=names, effects=effects, active=active)


def rxrx3_core_table(X: np.ndarray, obs: pd.DataFrame) -> pd.DataFrame:
    """The table in the layout of the published RxRx3-core OpenPhenom embeddings merged with
    their metadata: ``well_id``, ``experiment_name``, ``plate`` (number within the experiment),
    ``address`` (well), ``treatment`` (perturbation; controls ``EMPTY_control``),
    ``perturbation_type``, then ``feature_0`` .. ``feature_<d-1>``."""
    experiment = obs["batch"].astype(str).to_numpy()
    plate_no = obs["plate"].astype(str).str.rsplit("_P", n=1).str[-1].astype(int).to_numpy()
    address = obs["well"].astype(str).to_numpy()
    meta = pd.DataFrame({
        "well_id": [f"{e}_{p}_{a}" for e, p, a in zip(experiment, plate_no, address)],
        "experiment_name": experiment,
        "plate": plate_no,
        "address": address,
        "treatment": obs["perturbation"].astype(str).to_numpy(),
        "perturbation_type": np.where(obs["is_control"].to_numpy(bool), "CONTROL", "CRISPR"),
    })
    features = pd.DataFrame(np.asarray(X, dtype=np.float32),
                            columns=[f"{FEATURE_PREFIX}{i}" for i in range(X.shape[1])])
    return pd.concat([meta, features], axis=1)
