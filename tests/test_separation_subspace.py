"""Subspace-level separation scores (batch variance left, biology variance captured) and the
linear recoverability of ground truth (phenoica.metrics.separation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phenoica.config import schema_defaults
from phenoica.metrics.separation import ALL, compute_scores, subspace_scores, truth_r2
from phenoica.postprocess.ica import random_orthogonal


def _screen(seed: int = 0):
    """Column 0: batch offset + noise; columns 1-2: perturbation effects + noise."""
    rng = np.random.default_rng(seed)
    batches = np.repeat(["b0", "b1", "b2", "b3"], 60)
    perts = np.tile(np.r_[["ctrl"] * 12, np.repeat([f"p{i}" for i in range(6)], 8)], 4)
    obs = pd.DataFrame({"batch": batches, "perturbation": perts, "is_control": perts == "ctrl"})
    offsets = dict(zip(["b0", "b1", "b2", "b3"], [-2.0, -0.5, 0.5, 2.0]))
    effects = {f"p{i}": rng.normal(0, 2, 2) for i in range(6)} | {"ctrl": np.zeros(2)}
    Z = np.column_stack([
        [offsets[b] for b in batches],
        *np.array([effects[p] for p in perts]).T,
    ]) + rng.normal(0, 0.3, (len(obs), 3))
    return Z, obs


def test_subspace_scores_on_a_known_split():
    Z, obs = _screen()
    labels = np.array(["technical", "biological", "biological"])
    out = subspace_scores(Z, obs, labels)
    assert out["batch_variance_share"] > 0.5  # the batch column dominates the controls' variance
    assert out["batch_variance_in_bio"] < 0.05  # none of it in the biology columns
    assert out["bio_variance_captured"] > 0.95
    # labelling the batch column biological moves batch into "biology" and nothing else
    wrong = subspace_scores(Z, obs, np.array(["biological", "mixed", "mixed"]))
    assert wrong["batch_variance_in_bio"] > 0.9 and wrong["bio_variance_captured"] < 0.05
    # dropping the batch column removes the batch variance (what ica_clean must do)
    clean = subspace_scores(Z[:, 1:], obs, labels[1:])
    assert clean["batch_variance_share"] < 0.05
    none = subspace_scores(Z, obs, np.array(["mixed"] * 3))
    assert np.isnan(none["batch_variance_in_bio"]) and none["bio_variance_captured"] == 0.0


def test_batch_variance_share_and_truth_r2_are_rotation_invariant():
    Z, obs = _screen(1)
    Zw = (Z - Z.mean(0)) / Z.std(0)
    R = random_orthogonal(3, 4)
    labels = np.array(["mixed"] * 3)
    a = subspace_scores(Zw, obs, labels)["batch_variance_share"]
    b = subspace_scores(Zw @ R.T, obs, labels)["batch_variance_share"]
    assert a == pytest.approx(b, rel=1e-9)
    truth = pd.DataFrame(Z[:, 1:] + np.random.default_rng(2).normal(0, 0.1, (len(Z), 2)))
    assert truth_r2(Zw, truth) == pytest.approx(truth_r2(Zw @ R.T, truth), abs=1e-9)
    # unequal component scales (a whitened space rotated is not always whitened again)
    Zs = Zw * np.array([1.0, 3.0, 0.2])
    assert truth_r2(Zs, truth) == pytest.approx(truth_r2(Zs @ R.T, truth), abs=1e-9)
    assert truth_r2(Zw, truth) > 0.9
    assert truth_r2(Zw[:, :1], truth) < 0.2  # the batch column holds no biology


def test_compute_scores_reports_the_subspace_rows():
    Z, obs = _screen(2)
    truth = {"truth_biology": pd.DataFrame(Z[:, 1:])}
    long, _ = compute_scores(Z.astype(np.float32), obs, method="m", truth=truth,
                             **{**schema_defaults("scores"), "mixing": False})
    whole = long[long["component"] == ALL].set_index("metric")["value"]
    for metric in ("batch_variance_share", "batch_variance_in_bio", "bio_variance_captured",
                   "r2_biology"):
        assert metric in whole.index
    assert whole["r2_biology"] > 0.95
