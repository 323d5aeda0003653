"""Held-out-batch generalization benchmarks: protocol, tasks, invariances, output contract."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import ortho_group
import torch
from threadpoolctl import threadpool_limits

from phenoica.benchmarks import generalization as gen
from phenoica.errors import ConfigError, InputError
from phenoica.io import standardize_obs, write_h5ad
from phenoica.postprocess import make_method

# --------------------------------------------------------------------------------------------
# a small screen with known biology and batch effects
# --------------------------------------------------------------------------------------------

MECHANISMS = {"p0": "m1", "p1": "m1", "p2": "m1", "p3": "m2", "p4": "m2", "p5": "m2",
              "p6": "none", "p7": "none"}


def make_wells(n_batches: int = 4, wells_per_pert: int = 3, n_controls: int = 8, n_features: int = 16,
               batch_strength: float = 1.0, seed: int = 0) -> ad.AnnData:
    """Wells of ``n_batches`` batches: 8 perturbations (two mechanisms of three members, two
    inactive) plus controls; sparse non-Gaussian factors mixed into ``n_features`` dimensions;
    each batch shifts and rescales the features."""
    rng = np.random.default_rng(seed)
    n_factors = 6
    mixing = rng.normal(size=(n_factors, n_features))
    mech_effect = {"m1": np.array([3.0, 0, 0, 0, 0, 0]), "m2": np.array([0, 0, 3.0, 0, 0, 0]),
                   "none": np.zeros(n_factors)}
    effects = {p: mech_effect[m] + (0.8 * rng.normal(size=n_factors) * (m != "none"))
               for p, m in MECHANISMS.items()}
    effects["ctrl"] = np.zeros(n_factors)
    rows, X = [], []
    for b in range(n_batches):
        shift = batch_strength * rng.normal(size=n_features)
        scale = 1.0 + 0.2 * batch_strength * rng.random(n_features)
        layout = [("ctrl", True)] * n_controls + [(p, False) for p in MECHANISMS for _ in range(wells_per_pert)]
        for i, (pert, is_control) in enumerate(layout):
            factors = rng.laplace(size=n_factors) * 0.7 + effects[pert]
            X.append((factors @ mixing) * scale + shift + 0.3 * rng.normal(size=n_features))
            rows.append({"plate": f"P{b}", "well": f"A{i + 1:02d}", "batch": f"b{b}",
                         "perturbation": pert, "is_control": is_control,
                         "mechanism": "none" if is_control else MECHANISMS[pert]})
    obs = pd.DataFrame(rows)
    obs.index = obs["plate"] + ":" + obs["well"]
    return ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=standardize_obs(obs))


class Recording:
    """Wraps a real post-processing method and keeps what ``fit`` and ``transform`` were given."""

    def __init__(self, inner):
        self.inner = inner
        self.transductive = inner.transductive
        self.fit_obs: pd.DataFrame | None = None

    def fit(self, X, obs):
        self.fit_obs, self.n_fit = obs.copy(), X.shape[0]
        self.inner.fit(X, obs)
        return self

    def transform(self, X, obs):
        self.transform_obs = obs.copy()
        return self.inner.transform(X, obs)


CREATED: list[Recording] = []


def recording_factory(name: str, **params) -> Recording:
    method = Recording(make_method(name, **params))
    CREATED.append(method)
    return method


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2 shared cores: BLAS/torch thread pools only oversubscribe them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


FAST = {"labels": {"biology": "mechanism"}, "retrieval_permutations": 200}


@pytest.fixture(scope="module")
def wells() -> ad.AnnData:
    return make_wells()


@pytest.fixture(scope="module")
def tables(wells) -> dict[str, pd.DataFrame]:
    out = {}
    for name in ("pca", "pca_ica", "pca_rand"):
        params = {"n_components": 6, **({"n_restarts": 1} if name == "pca_ica" else {})}
        out[name] = gen.evaluate_method(wells.X, wells.obs, method=name, method_params=params,
                                        params=FAST, method_factory=recording_factory)
    return out


def summary(table: pd.DataFrame, task: str, metric: str, fold: str = gen.POOLED) -> float:
    rows = table[(table["task"] == task) & (table["metric"] == metric) & (table["fold"] == fold)
                 & (table["perturbation"] == "")]
    assert len(rows) == 1, (task, metric, fold, rows)
    return float(rows["value"].iloc[0])


# --------------------------------------------------------------------------------------------
# folds and parameters
# --------------------------------------------------------------------------------------------

def test_leave_one_batch_out_folds_cover_each_batch_once():
    batches = ["a", "a", "b", "c", "c", "b"]
    folds = gen.make_folds(batches)
    assert [f.name for f in folds] == ["a", "b", "c"]
    assert np.array_equal(np.sum([f.test for f in folds], axis=0), np.ones(6))
    for f in folds:
        assert set(np.asarray(batches)[f.test]) == {f.name}


def test_kfold_over_batches_never_splits_a_batch_and_is_seeded():
    batches = np.repeat([f"b{i}" for i in range(20)], 3)
    folds = gen.make_folds(batches, split="auto", n_folds=4, max_lobo_batches=12, seed=1)
    assert len(folds) == 4
    assert np.array_equal(np.sum([f.test for f in folds], axis=0), np.ones(60))
    for f in folds:
        assert not set(batches[f.test]) & set(batches[f.train])
    again = gen.make_folds(batches, split="kfold", n_folds=4, seed=1)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again))


def test_kfold_protocol_end_to_end_is_deterministic(wells):
    params = {**FAST, "split": "kfold", "n_folds": 2, "tasks": ["classification", "retrieval"]}
    runs = [gen.evaluate_method(wells.X, wells.obs, method="pca", method_params={"n_components": 6},
                                params=params, method_factory=recording_factory) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    table = runs[0]
    assert set(table["fold"]) == {"fold0", "fold1", gen.POOLED}
    tested = table[(table["metric"] == "n_test_wells") & (table["task"] == "protocol")]["value"]
    assert tested.sum() == wells.n_obs  # every well is tested once
    # each query finds replicates in the other test batch as well as in training batches
    assert summary(table, "retrieval", "map") > 0.2


def test_one_batch_is_an_input_error():
    with pytest.raises(InputError, match="at least 2 batches"):
        gen.make_folds(["a", "a"])


def test_unknown_parameter_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="unknown parameter"):
        gen.resolve_params({"n_fold": 3})
    with pytest.raises(ConfigError, match="split"):
        gen.resolve_params({"split": "random"})
    with pytest.raises(ConfigError, match="tasks"):
        gen.resolve_params({"tasks": ["auroc", "magic"]})
    p = gen.resolve_params({"labels": {"biology": "moa", "dose": "dose"}})
    assert (p["label"], p["dose"]) == ("moa", "dose")


# --------------------------------------------------------------------------------------------
# fitting sees training batches only
# --------------------------------------------------------------------------------------------

def test_methods_are_fitted_on_training_batches_only(wells):
    CREATED.clear()
    gen.evaluate_method(wells.X, wells.obs, method="pca", method_params={"n_components": 6},
                        params={**FAST, "tasks": ["auroc"]}, method_factory=recording_factory)
    assert len(CREATED) == 4
    held_out = set()
    for method in CREATED:
        fitted_batches = set(method.fit_obs["batch"].astype(str))
        missing = set(wells.obs["batch"].astype(str)) - fitted_batches
        assert len(missing) == 1
        held_out |= missing
    assert held_out == set(wells.obs["batch"].astype(str))


def test_fit_on_controls_fits_on_training_controls_only(wells):
    CREATED.clear()
    gen.evaluate_method(wells.X, wells.obs, method="pca", method_params={"n_components": 6},
                        params={**FAST, "tasks": ["classification"]}, fit_on="controls",
                        method_factory=recording_factory)
    for method in CREATED:
        assert method.fit_obs["is_control"].all()
        assert method.fit_obs["batch"].nunique() == 3


def test_transductive_methods_see_test_wells_without_labels(wells):
    CREATED.clear()
    table = gen.evaluate_method(wells.X, wells.obs, method="harmony", method_params={"n_components": 6},
                                params={**FAST, "tasks": ["auroc"]}, method_factory=recording_factory)
    assert len(CREATED) == 4
    for method in CREATED:
        assert method.n_fit == wells.n_obs
        for seen in (method.fit_obs, method.transform_obs):
            hidden = seen["perturbation"].isna().to_numpy()
            assert hidden.sum() == (wells.obs["batch"] == seen.loc[hidden, "batch"].iloc[0]).sum()
            assert seen.loc[hidden, "mechanism"].isna().all()
            assert seen["batch"].notna().all() and seen["is_control"].notna().all()
            assert seen.loc[hidden, "batch"].nunique() == 1
    assert summary(table, "protocol", "transductive") == 1.0
    assert summary(table, "auroc", "auroc_l2") > 0.7


# --------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------

def test_output_contract(tables):
    table = tables["pca_ica"]
    assert list(table.columns) == gen.TABLE_COLUMNS
    assert set(table["task"]) == {"protocol", "auroc", "classification", "retrieval",
                                  "retrieval_biology", "relationships"}
    assert set(table["fold"]) == {"b0", "b1", "b2", "b3", gen.POOLED}
    assert table["value"].notna().all()
    per_pert = table[(table["task"] == "auroc") & (table["perturbation"] != "")]
    assert set(per_pert["perturbation"]) == set(MECHANISMS)
    assert summary(table, "protocol", "transductive") == 0.0


def test_biology_is_found_on_held_out_batches(tables):
    pca = tables["pca"]
    # mechanism members carry strong effects: far above chance on every task
    assert summary(pca, "auroc", "auroc_l2") > 0.75
    assert summary(pca, "classification", "accuracy_linear") > 0.8
    # random rank lists give mAP ~0.1 here (9 positives among ~110 candidates)
    assert summary(pca, "retrieval", "map") > 0.2
    assert summary(pca, "retrieval", "fraction_significant") >= 0.5
    per_map = pca[(pca["task"] == "retrieval") & (pca["metric"] == "map") & (pca["fold"] == gen.POOLED)
                  & (pca["perturbation"] != "")].set_index("perturbation")["value"]
    assert per_map[["p0", "p1", "p2", "p3", "p4", "p5"]].mean() > 2 * per_map[["p6", "p7"]].mean()
    # by mechanism: 18 positives among ~100 candidates, chance ~0.2
    assert summary(pca, "retrieval_biology", "map") > 0.3
    assert summary(pca, "retrieval_biology", "fraction_significant") == 1.0
    # 8 profiles per fold -> 28 pairs, of which the top 10% hold 2: recall_top_0.1 is at most 2/6
    # per fold and 2/28 for random pairs
    assert summary(pca, "relationships", "recall_top_0.1") > 0.2
    # the inactive perturbations are not separable from controls
    inactive = pca[(pca["metric"] == "auroc_l2") & (pca["fold"] == gen.POOLED)
                   & pca["perturbation"].isin(["p6", "p7"])]["value"]
    assert inactive.mean() < 0.8


@pytest.mark.parametrize("other", ["pca_ica", "pca_rand"])
def test_rotation_invariant_tasks_tie_for_pca_ica_and_rand(tables, other):
    invariant = {("auroc", "auroc_l2"), ("classification", "accuracy_linear"),
                 ("classification", "macro_f1_linear"), ("classification", "accuracy_knn"),
                 ("classification", "macro_f1_knn"), ("retrieval", "map"),
                 ("retrieval_biology", "map"), ("relationships", "recall_0.05_0.95"),
                 ("relationships", "recall_0.1_0.9")}
    keys = ["task", "metric", "fold", "perturbation"]
    a = tables["pca"].set_index(keys)["value"]
    b = tables[other].set_index(keys)["value"]
    mask = [(t, m) in invariant for t, m, _, _ in a.index]
    a, b = a[mask], b.reindex(a.index[mask])
    assert len(a) > 50
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), atol=2e-3)


def test_sparse_and_topk_probes_change_under_rotation(wells):
    folds = gen.make_folds(wells.obs["batch"])
    fold = folds[0]
    Z, _ = gen.fold_embedding(recording_factory, "pca", {"n_components": 6}, wells.X, wells.obs, fold)
    R = ortho_group.rvs(Z.shape[1], random_state=3)
    tr, te = np.flatnonzero(fold.train), np.flatnonzero(fold.test)
    kwargs = dict(top_k=2, c_l1=0.5, exclude=["none"])
    base = gen.auroc_task(Z[tr], wells.obs.iloc[tr], Z[te], wells.obs.iloc[te], **kwargs)
    rot = gen.auroc_task(Z[tr] @ R, wells.obs.iloc[tr], Z[te] @ R, wells.obs.iloc[te], **kwargs)
    merged = base.merge(rot, on=["metric", "perturbation"], suffixes=("", "_rot"))
    diff = (merged["value"] - merged["value_rot"]).abs().groupby(merged["metric"]).max()
    assert diff["auroc_l2"] < 1e-6
    assert diff["auroc_l1"] > 0.01
    assert diff["auroc_topk"] > 0.01


def test_probe_scaling_leaves_a_representation_whitened_on_the_training_wells_unchanged(wells):
    fold = gen.make_folds(wells.obs["batch"])[1]
    Z, _ = gen.fold_embedding(recording_factory, "pca", {"n_components": 6}, wells.X, wells.obs, fold)
    tr, te = Z[fold.train], Z[fold.test]
    scaled_tr, scaled_te = gen.scale_for_probes(tr, te, "standardize")
    np.testing.assert_allclose(scaled_tr, tr, atol=1e-4)
    np.testing.assert_allclose(scaled_te, te, atol=1e-4)
    raw_tr, raw_te = gen.scale_for_probes(wells.X[fold.train], wells.X[fold.test], "standardize")
    np.testing.assert_allclose(raw_tr.std(axis=0, ddof=1), 1.0, atol=1e-6)
    assert np.abs(raw_te.mean(axis=0)).max() > 0.1  # test wells keep their batch shift


def test_auroc_probe_on_separable_and_inseparable_data():
    rng = np.random.default_rng(0)
    n = 40
    obs = pd.DataFrame({"perturbation": ["ctrl"] * n + ["hit"] * n + ["dud"] * n,
                        "is_control": [True] * n + [False] * (2 * n)})
    Z = rng.normal(size=(3 * n, 5))
    Z[n:2 * n, 0] += 6.0  # "hit" moves along one coordinate
    table = gen.auroc_task(Z[::2], obs.iloc[::2], Z[1::2], obs.iloc[1::2], top_k=1)
    value = table.set_index(["metric", "perturbation"])["value"]
    for probe in ("auroc_l2", "auroc_l1", "auroc_topk"):
        assert value[(probe, "hit")] > 0.99
        assert 0.2 < value[(probe, "dud")] < 0.8
    assert value[("n_perturbations", "")] == 2


def test_classification_skips_classes_unseen_in_training():
    obs_tr = pd.DataFrame({"lab": ["a"] * 5 + ["b"] * 5, "is_control": False})
    obs_te = pd.DataFrame({"lab": ["a", "b", "c"], "is_control": False})
    Z_tr = np.r_[np.zeros((5, 2)) + [1, 0], np.zeros((5, 2)) + [0, 1]] + 0.01 * np.arange(10)[:, None]
    Z_te = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pred = gen.classification_task(Z_tr, obs_tr, Z_te, obs_te, label="lab", knn_k=3)
    assert list(pred["label"]) == ["a", "b", "c"] and list(pred["seen"]) == [True, True, False]
    scores = gen.classification_scores(pred)
    assert scores["accuracy_knn"] == 1.0 and scores["accuracy_linear"] == 1.0
    assert scores["n_test_wells"] == 2 and scores["n_unseen_class_wells"] == 1


def test_relations_from_labels(wells):
    pairs = gen.relations_from_labels(wells.obs, "mechanism", exclude=["none"])
    assert len(pairs) == 6  # three pairs per mechanism, inactive perturbations excluded
    assert set(pairs["relation"]) == {"m1", "m2"}


def test_moa_nsc_and_nscb_on_a_toy_screen():
    # two compounds per MOA, each in its own batch; compound c1 has a near-duplicate dose
    obs = pd.DataFrame({
        "perturbation": ["c1", "c1", "c2", "c3", "c4"],
        "dose": ["1", "2", "1", "1", "1"],
        "moa": ["A", "A", "A", "B", "B"],
        "batch": ["w1", "w1", "w2", "w1", "w2"],
        "is_control": False,
    })
    Z = np.array([[1.0, 0.0], [1.0, 0.01], [0.9, 0.2], [0.1, 1.0], [0.0, 1.0]])
    treatments = gen.treatment_profiles(Z, obs, dose="dose", label="moa")
    pred = gen.moa_nearest_neighbors(treatments)
    # NSC: c1 doses may not match each other, so they find c2 (A); NSCB: c1 (w1) must leave w1
    assert list(pred["nsc"]) == ["A", "A", "A", "B", "B"]
    assert list(pred["nscb"]) == ["A", "A", "A", "B", "B"]
    scores = gen.moa_scores(pred)
    assert scores["nsc_accuracy"] == 1.0 and scores["n_treatments"] == 5
    # move c3 (B, batch w1) next to c1: NSC picks c1 (A); NSCB must leave w1 and picks c2 (A)
    Z[3] = [0.95, 0.05]
    pred = gen.moa_nearest_neighbors(gen.treatment_profiles(Z, obs, dose="dose", label="moa"))
    assert pred["nsc"].iloc[3] == "A" and pred["nscb"].iloc[3] == "A"


# --------------------------------------------------------------------------------------------
# the workflow entry point
# --------------------------------------------------------------------------------------------

def test_run_generalization_writes_the_tsv(tmp_path, wells):
    wells_path = tmp_path / "wells.h5ad"
    write_h5ad(wells, wells_path)
    relations = tmp_path / "relations.tsv"
    pd.DataFrame({"perturbation_a": ["p0", "p3"], "perturbation_b": ["p1", "p4"],
                  "relation": ["m1", "m2"]}).to_csv(relations, sep="\t", index=False)
    out = tmp_path / "bench" / "pca_ica.tsv"
    gen.run_generalization(str(wells_path), out_tsv=str(out), method="pca_ica",
                           method_params={"n_components": 6, "n_restarts": 1},
                           params={**FAST, "tasks": ["relationships", "classification"]},
                           relations_path=str(relations), name="pca_ica32",
                           method_factory=recording_factory)
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(table.columns) == gen.TABLE_COLUMNS
    assert set(table["method"]) == {"pca_ica32"}
    assert summary(table.assign(value=table["value"].astype(float)), "relationships", "n_pairs") == 8
    assert not list(out.parent.glob("*.partial"))


def test_bad_inputs_name_the_file(tmp_path, wells):
    wells_path = tmp_path / "wells.h5ad"
    broken = wells.copy()
    del broken.obs["is_control"]
    write_h5ad(broken, wells_path)
    with pytest.raises(InputError, match="wells.h5ad.*is_control"):
        gen.run_generalization(str(wells_path), out_tsv=str(tmp_path / "o.tsv"), method="pca",
                               method_params={}, params=FAST, method_factory=recording_factory)
    write_h5ad(wells, wells_path)
    bad = tmp_path / "rel.csv"
    bad.write_text("gene1,gene2\nA,B\n")
    with pytest.raises(InputError, match="rel.csv.*perturbation_a"):
        gen.run_generalization(str(wells_path), out_tsv=str(tmp_path / "o.tsv"), method="pca",
                               method_params={}, params=FAST, relations_path=str(bad),
                               method_factory=recording_factory)
    with pytest.raises(InputError, match="layer"):
        gen.run_generalization(str(wells_path), out_tsv=str(tmp_path / "o.tsv"), method="pca",
                               method_params={}, params=FAST, layer="X_layer9",
                               method_factory=recording_factory)
    assert not (tmp_path / "o.tsv").exists()
