"""Post-processing methods: fit on a fitting set, re-apply to any wells, store as plain state.

Every method maps a raw representation ``X`` (n x d) plus its ``obs`` to float32 (n x k). Fitted
parameters go to :meth:`Method.to_state` (numpy arrays, scalars and strings only, so they fit in
AnnData ``uns``) and :func:`method_from_state` rebuilds a method that transforms new plates without
refitting. Methods that correct each batch with that batch's own controls (CenterScale, TVN)
re-estimate those per-batch statistics from the controls of the wells they transform: that is
their definition, and every plate carries controls. Transductive methods (ComBat, Harmony) must
see all the data they correct; they say so with ``transductive = True``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..logs import get_logger
from .ica import ICA, STABILITY_THRESHOLD, fit_ica, random_orthogonal
from .whitening import Whitening, column_moments, fit_whitening

log = get_logger(__name__)

STATE_FORMAT = 1


def _check_X(X: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError("X", f"expected a 2-D array (wells x features), got shape {X.shape}")
    if len(obs) != X.shape[0]:
        raise InputError("obs", f"has {len(obs)} rows but X has {X.shape[0]}")
    if not np.isfinite(X).all():
        raise InputError("X", "contains NaN or infinite values")
    return X


def _require(obs: pd.DataFrame, columns: list[str], method: str) -> None:
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise InputError("obs", f"missing column(s) {missing} needed by method {method!r}")


def _labels(obs: pd.DataFrame, key: str) -> np.ndarray:
    return obs[key].astype(str).to_numpy()


def _controls(obs: pd.DataFrame, key: str) -> np.ndarray:
    return obs[key].to_numpy().astype(bool)


class Method:
    """Base class. Subclasses set ``name``, ``defaults`` and implement ``_fit``/``_transform``
    and ``_state``/``_load``."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    transductive: ClassVar[bool] = False
    #: True when output columns are the input features (names carried over).
    keeps_features: ClassVar[bool] = False
    component_prefix: ClassVar[str] = "C"

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(f"method {self.name!r}: unknown parameter(s) {unknown}; "
                              f"known: {sorted(self.defaults)}")
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.fitted = False
        self.n_components_: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    # public API ------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, obs: pd.DataFrame) -> Method:
        X = _check_X(X, obs)
        self._fit(X, obs)
        self.fitted = True
        return self

    def transform(self, X: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError(f"method {self.name!r} must be fitted (or loaded) before transform")
        X = _check_X(X, obs)
        Z = np.asarray(self._transform(X, obs), dtype=np.float32)
        self.n_components_ = Z.shape[1]
        return Z

    def fit_transform(self, X: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
        return self.fit(X, obs).transform(X, obs)

    def component_names(self, k: int | None = None) -> list[str]:
        k = self.n_components_ if k is None else k
        return [f"{self.component_prefix}{i + 1}" for i in range(int(k or 0))]

    def component_stability(self) -> np.ndarray | None:
        """Per output component, the ICA stability index (:attr:`phenoica.postprocess.ica.ICA.
        stability`); None for methods without ICA."""
        return None

    def to_state(self) -> dict:
        if not self.fitted:
            raise RuntimeError(f"method {self.name!r} is not fitted")
        return {"name": self.name, "format": STATE_FORMAT,
                "params_json": json.dumps(self.params, sort_keys=True), **self._state()}

    @classmethod
    def from_state(cls, state: dict) -> Method:
        method = cls(**json.loads(str(state["params_json"])))
        method._load(state)
        method.fitted = True
        return method

    # subclass hooks --------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, obs: pd.DataFrame) -> None:
        raise NotImplementedError

    def _transform(self, X: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict:
        return {}

    def _load(self, state: dict) -> None:
        pass


# ---------------------------------------------------------------------------------------------

_PCA_DEFAULTS = {"n_components": None, "rel_tol": 1e-5, "standardize": False}
_ICA_DEFAULTS = {"seed": 0, "backend": "auto", "n_restarts": "auto", "tol": 1e-4, "max_iter": 200,
                 "stability_threshold": STABILITY_THRESHOLD}


#: The default caps the components at one per this many fitting wells; more are warned about.
WELLS_PER_COMPONENT = 5


def component_cap(n_fit: int) -> int:
    """Most components a whitening of ``n_fit`` wells keeps by default: n_fit / 5 (at least 1).
    Beyond that the trailing components are mostly sampling noise that whitening scales up to
    unit variance: on wells not in the fitting set their variance is far above 1 (e.g. 35-56 for
    299 components of 300 wells)."""
    return max(1, int(n_fit) // WELLS_PER_COMPONENT)


def _fit_pca(method: Method, X: np.ndarray, reg: float = 0.0) -> Whitening:
    p = method.params
    whitening = fit_whitening(X, p["n_components"], p["rel_tol"], standardize=bool(p["standardize"]),
                              reg=reg)
    n_fit, cap = X.shape[0], component_cap(X.shape[0])
    if p["n_components"] is None and whitening.n_components > cap:
        log.info("%s: n_components null keeps %d of %d components (one per %d of the %d fitting "
                 "wells; the numerical rank would overfit)", method.name, cap,
                 whitening.n_components, WELLS_PER_COMPONENT, n_fit)
        whitening = Whitening(mean=whitening.mean, feature_scale=whitening.feature_scale,
                              components=whitening.components[:, :cap],
                              eigenvalues=whitening.eigenvalues[:cap], reg=whitening.reg)
    elif whitening.n_components > cap:
        log.warning("%s: n_components=%d is more than n_fit / %d = %d (%d fitting wells): the "
                    "trailing components are mostly sampling noise scaled to unit variance and "
                    "overfit the fitting wells; consider n_components <= %d (or null)", method.name,
                    whitening.n_components, WELLS_PER_COMPONENT, cap, n_fit, cap)
    return whitening


def _fit_ica_params(method: Method, Z: np.ndarray) -> ICA:
    p = method.params
    restarts = p["n_restarts"]
    if not (restarts == "auto" or (isinstance(restarts, (int, np.integer)) and not isinstance(restarts, bool)
                                   and restarts >= 1)):
        raise ConfigError(f"method {method.name!r}: n_restarts must be 'auto' or an integer >= 1, "
                          f"got {restarts!r}")
    threshold = p["stability_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ConfigError(f"method {method.name!r}: stability_threshold must be a number in [0, 1], "
                          f"got {threshold!r}")
    return fit_ica(Z, backend=p["backend"], seed=int(p["seed"]), n_restarts=restarts,
                   tol=float(p["tol"]), max_iter=int(p["max_iter"]),
                   stability_threshold=float(threshold))


class Base(Method):
    """The raw representation, unchanged (float32)."""

    name = "base"
    keeps_features = True
    component_prefix = "F"

    def _fit(self, X, obs):
        self.n_features_ = X.shape[1]

    def _transform(self, X, obs):
        return X

    def _state(self):
        return {"n_features": int(self.n_features_)}

    def _load(self, state):
        self.n_features_ = int(state["n_features"])


class PCA(Method):
    """Whitened PCA with ``n_components`` components (``None``: the numerical rank, at most one
    per 5 fitting wells; see :func:`component_cap`)."""

    name = "pca"
    defaults = dict(_PCA_DEFAULTS)
    component_prefix = "PC"

    def _fit(self, X, obs):
        self.whitening = _fit_pca(self, X)

    def _transform(self, X, obs):
        return self.whitening.transform(X)

    def _state(self):
        return {"whitening": self.whitening.to_state()}

    def _load(self, state):
        self.whitening = Whitening.from_state(state["whitening"])


class PCAICA(PCA):
    """Whitened PCA, then ICA fitted on the whitened fitting set."""

    name = "pca_ica"
    defaults = {**_PCA_DEFAULTS, **_ICA_DEFAULTS}
    component_prefix = "IC"

    def _fit(self, X, obs):
        super()._fit(X, obs)
        self.ica = _fit_ica_params(self, self.whitening.transform(X))

    def _transform(self, X, obs):
        return self.ica.transform(self.whitening.transform(X))

    def component_stability(self):
        return self.ica.stability

    def _state(self):
        return {**super()._state(), "ica": self.ica.to_state()}

    def _load(self, state):
        super()._load(state)
        self.ica = ICA.from_state(state["ica"])


class PCARand(PCA):
    """Whitened PCA, then a Haar-random rotation drawn from ``seed`` (the control for ICA)."""

    name = "pca_rand"
    defaults = {**_PCA_DEFAULTS, "seed": 0}
    component_prefix = "RC"

    def _fit(self, X, obs):
        super()._fit(X, obs)
        self.rotation = random_orthogonal(self.whitening.n_components, int(self.params["seed"]))

    def _transform(self, X, obs):
        return self.whitening.transform(X).astype(np.float64) @ self.rotation.T

    def _state(self):
        return {**super()._state(), "rotation": self.rotation}

    def _load(self, state):
        super()._load(state)
        self.rotation = np.asarray(state["rotation"], dtype=np.float64)


# --- control-based methods -------------------------------------------------------------------

_CONTROL_DEFAULTS = {"batch_key": "batch", "control_key": "is_control", "min_controls": 2}


def _batch_control_groups(obs: pd.DataFrame, method: Method) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(batch, row indices, control row indices) for every batch in ``obs``; each batch needs
    ``min_controls`` controls since it is corrected with its own controls."""
    p = method.params
    _require(obs, [p["batch_key"], p["control_key"]], method.name)
    batches = _labels(obs, p["batch_key"])
    controls = _controls(obs, p["control_key"])
    groups = []
    for batch in pd.unique(batches):
        rows = np.flatnonzero(batches == batch)
        ctrl = rows[controls[rows]]
        if len(ctrl) < int(p["min_controls"]):
            raise InputError("obs", f"batch {batch!r} has {len(ctrl)} control well(s); method "
                                    f"{method.name!r} needs at least {p['min_controls']} per batch")
        groups.append((str(batch), rows, ctrl))
    return groups


def _center_scale(Z: np.ndarray, groups) -> np.ndarray:
    """Centre and scale every batch on its own controls (per component)."""
    out = np.empty_like(Z, dtype=np.float64)
    for _, rows, ctrl in groups:
        ref = Z[ctrl].astype(np.float64)
        mu = ref.mean(axis=0)
        sd = ref.std(axis=0)
        sd[sd <= 0] = 1.0  # a component constant on these controls is only centred
        out[rows] = (Z[rows] - mu) / sd
    return out


def _control_rows(obs: pd.DataFrame, method: Method) -> np.ndarray:
    p = method.params
    _require(obs, [p["control_key"]], method.name)
    ctrl = _controls(obs, p["control_key"])
    if ctrl.sum() < 3:
        raise InputError("obs", f"the fitting set has {int(ctrl.sum())} control well(s); method "
                                f"{method.name!r} fits its PCA on controls and needs at least 3")
    return ctrl


class CenterScale(Method):
    """PCA-CenterScale (OpenPhenom model card): PCA fitted on control wells, then every batch
    centred and scaled on its own controls."""

    name = "centerscale"
    defaults = {**_PCA_DEFAULTS, **_CONTROL_DEFAULTS}
    component_prefix = "CS"

    def _fit(self, X, obs):
        self.whitening = _fit_pca(self, X[_control_rows(obs, self)])

    def _transform(self, X, obs):
        return _center_scale(self.whitening.transform(X, whiten=False), _batch_control_groups(obs, self))

    def _state(self):
        return {"whitening": self.whitening.to_state()}

    def _load(self, state):
        self.whitening = Whitening.from_state(state["whitening"])


def _sym_power(C: np.ndarray, power: float) -> np.ndarray:
    s, u = np.linalg.eigh(C)
    return (u * np.clip(s, np.finfo(np.float64).tiny, None) ** power) @ u.T


class TVN(Method):
    """Typical variation normalisation: PCA whitening fitted on controls, each batch centred and
    scaled on its controls, then CORAL: the batch's control covariance (+ ``reg`` I) is mapped
    onto the pooled control covariance of the fitting set (+ ``reg`` I)."""

    name = "tvn"
    defaults = {**_PCA_DEFAULTS, **_CONTROL_DEFAULTS, "reg": 1.0}
    component_prefix = "TV"

    def _fit(self, X, obs):
        ctrl = _control_rows(obs, self)
        self.whitening = _fit_pca(self, X[ctrl])
        sub = obs.iloc[np.flatnonzero(ctrl)]
        Zc = _center_scale(self.whitening.transform(X[ctrl]), _batch_control_groups(sub, self))
        _, target = column_moments(Zc)
        self.target_sqrt = _sym_power(target + float(self.params["reg"]) * np.eye(len(target)), 0.5)

    def _transform(self, X, obs):
        groups = _batch_control_groups(obs, self)
        Z = _center_scale(self.whitening.transform(X), groups)
        reg = float(self.params["reg"])
        eye = np.eye(Z.shape[1])
        for _, rows, ctrl in groups:
            cov = np.cov(Z[ctrl], rowvar=False, ddof=0).reshape(Z.shape[1], Z.shape[1])
            Z[rows] = Z[rows] @ _sym_power(cov + reg * eye, -0.5) @ self.target_sqrt
        return Z

    def _state(self):
        return {"whitening": self.whitening.to_state(), "target_sqrt": self.target_sqrt}

    def _load(self, state):
        self.whitening = Whitening.from_state(state["whitening"])
        self.target_sqrt = np.asarray(state["target_sqrt"], dtype=np.float64)


class TVNICA(TVN):
    """TVN, then ICA fitted on the TVN representation of the fitting set (re-whitened first)."""

    name = "tvn_ica"
    defaults = {**TVN.defaults, **_ICA_DEFAULTS}
    component_prefix = "IC"

    def _fit(self, X, obs):
        super()._fit(X, obs)
        self.ica = _fit_ica_params(self, super()._transform(X, obs))

    def _transform(self, X, obs):
        return self.ica.transform(super()._transform(X, obs))

    def component_stability(self):
        return self.ica.stability

    def _state(self):
        return {**super()._state(), "ica": self.ica.to_state()}

    def _load(self, state):
        super()._load(state)
        self.ica = ICA.from_state(state["ica"])


NO_TREATED_WELLS = (
    "method {method!r} (drop: technical) has no treated wells in its fitting set: it labels a "
    "component technical when its batch share exceeds its perturbation share, and among control "
    "wells there is no perturbation variance, so every component with any batch share would be "
    "dropped. Fit it on all wells or the training batches (postprocess.fit_on: all or "
    "train_batches), or use drop: batch_share, which needs no treated wells")


def check_fit_on(methods: dict, fit_on: str) -> None:
    """Refuse, before anything runs, configurations whose fitting set cannot work:
    ``ica_clean`` dropping technical components fitted on control wells only."""
    if fit_on != "controls":
        return
    for name, spec in (methods or {}).items():
        spec = dict(spec or {})
        algorithm = spec.get("method", name)
        drop = spec.get("drop", ICAClean.defaults["drop"])
        if algorithm == "ica_clean" and drop == "technical":
            raise ConfigError("config key postprocess.fit_on: 'controls' does not work with "
                              + NO_TREATED_WELLS.format(method=name))


class ICAClean(PCAICA):
    """PCA+ICA with the components attributed to batch removed.

    Attribution is computed on the fitting set with :func:`phenoica.metrics.separation.
    component_attribution` (batch share on control wells vs. ``bio_key`` share within batch):
    ``drop="technical"`` drops components labelled technical; ``drop="batch_share"`` drops
    components whose batch share on controls exceeds ``max_batch_share`` (needs no biology labels).
    At least one component is always kept.

    Only stable components can be dropped: a component whose ICA stability index is below
    ``stability_threshold`` is labelled ``unstable`` and **kept**, whatever its batch share.
    Removing a component claims that its direction carries batch and nothing else; an unstable
    component's direction is not reproducible (another seed splits that subspace differently and
    attributes the pieces differently), so there is no basis for the claim. Keeping it also makes
    the output reproducible: the removed subspace is spanned by stable components only, which
    every seed finds, so the kept subspace (its orthogonal complement in the whitened space) does
    not depend on the seed either; dropping unstable components would remove a seed-dependent
    subspace. The price: batch variance inside unstable components stays, visible in their
    ``batch_share`` (stored) and in the scores.
    """

    name = "ica_clean"
    defaults = {**PCAICA.defaults, "batch_key": "batch", "control_key": "is_control",
                "bio_key": "perturbation", "drop": "technical", "margin": 2.0, "min_share": 0.05,
                "max_batch_share": 0.5}

    def _fit(self, X, obs):
        from ..metrics.separation import component_attribution

        p = self.params
        if p["drop"] not in ("technical", "batch_share"):
            raise ConfigError(f"method 'ica_clean': drop must be 'technical' or 'batch_share', "
                              f"got {p['drop']!r}")
        needed = [p["batch_key"], p["control_key"]] + ([p["bio_key"]] if p["drop"] == "technical" else [])
        _require(obs, needed, self.name)
        if p["drop"] == "technical" and _controls(obs, p["control_key"]).all():
            raise InputError("postprocess.fit_on", NO_TREATED_WELLS.format(method=self.name))
        super()._fit(X, obs)
        S = super()._transform(X, obs)
        attribution = component_attribution(
            S, obs, batch_key=p["batch_key"], bio_key=p["bio_key"] if p["drop"] == "technical" else None,
            control_key=p["control_key"], margin=float(p["margin"]), min_share=float(p["min_share"]),
            stability=self.ica.stability, stability_threshold=float(p["stability_threshold"]))
        stable = (attribution["label"] != "unstable").to_numpy()
        if p["drop"] == "technical":
            drop = (attribution["label"] == "technical").to_numpy()
        else:
            drop = stable & (attribution["batch_share"].fillna(0) > float(p["max_batch_share"])).to_numpy()
        if drop.all():
            drop[np.argmin(attribution["batch_share"].fillna(0).to_numpy())] = False
        self.keep = np.flatnonzero(~drop)
        self.batch_share = attribution["batch_share"].to_numpy(dtype=np.float64)
        log.info("ica_clean: dropping %d of %d components as batch-dominated (%d unstable components "
                 "kept unjudged)", int(drop.sum()), len(drop), int((~stable).sum()))

    def _transform(self, X, obs):
        return super()._transform(X, obs)[:, self.keep]

    def component_names(self, k=None):
        return [f"IC{i + 1}" for i in self.keep]

    def component_stability(self):
        return self.ica.stability[self.keep]

    def _state(self):
        return {**super()._state(), "keep": self.keep.astype(np.int64), "batch_share": self.batch_share}

    def _load(self, state):
        super()._load(state)
        self.keep = np.asarray(state["keep"], dtype=np.int64).reshape(-1)
        self.batch_share = np.asarray(state["batch_share"], dtype=np.float64)


# --- transductive baselines ------------------------------------------------------------------


class ComBat(Method):
    """ComBat (``scanpy.pp.combat``) on the features, per batch. Transductive: it estimates the
    batch parameters on the data it corrects, so ``fit`` only records settings."""

    name = "combat"
    defaults = {"batch_key": "batch", "covariates": None}
    transductive = True
    keeps_features = True
    component_prefix = "F"

    def _fit(self, X, obs):
        _require(obs, [self.params["batch_key"], *(self.params["covariates"] or [])], self.name)

    def _transform(self, X, obs):
        import anndata as ad
        import scanpy as sc

        key = self.params["batch_key"]
        _require(obs, [key, *(self.params["covariates"] or [])], self.name)
        counts = obs[key].astype(str).value_counts()
        small = counts[counts < 2]
        if len(small):
            raise InputError("obs", f"ComBat needs at least 2 wells per batch; batch(es) "
                                    f"{list(small.index)} have fewer")
        # ComBat divides by each feature's pooled variance: pass constant features through.
        varying = np.asarray(X, dtype=np.float64).std(axis=0) > 0
        out = np.asarray(X, dtype=np.float64).copy()
        obs_c = pd.DataFrame({key: obs[key].astype(str).astype("category").to_numpy()},
                             index=np.arange(len(obs)).astype(str))
        for cov in self.params["covariates"] or []:
            obs_c[cov] = obs[cov].to_numpy()
        adata = ad.AnnData(X=out[:, varying], obs=obs_c)
        out[:, varying] = sc.pp.combat(adata, key=key, covariates=self.params["covariates"],
                                       inplace=False)
        if not np.isfinite(out).all():
            raise InputError("X", "ComBat produced non-finite values (a feature constant within a batch?)")
        return out

    def _state(self):
        return {}


class Harmony(Method):
    """Harmony (harmonypy) on PCA scores fitted on the fitting set. Transductive: Harmony moves
    the wells it is given, so only the PCA is stored."""

    name = "harmony"
    defaults = {"n_components": 50, "rel_tol": 1e-5, "standardize": False, "batch_key": "batch",
                "theta": 2.0, "seed": 0, "max_iter": 10}
    transductive = True
    component_prefix = "H"

    def _fit(self, X, obs):
        _require(obs, [self.params["batch_key"]], self.name)
        self.whitening = _fit_pca(self, X)

    def _transform(self, X, obs):
        import harmonypy

        key = self.params["batch_key"]
        _require(obs, [key], self.name)
        Z = self.whitening.transform(X, whiten=False).astype(np.float64)
        meta = pd.DataFrame({key: obs[key].astype(str).to_numpy()})
        if meta[key].nunique() < 2:
            return Z  # nothing to integrate
        result = harmonypy.run_harmony(Z, meta, key, theta=float(self.params["theta"]),
                                       random_state=int(self.params["seed"]),
                                       max_iter_harmony=int(self.params["max_iter"]), verbose=False)
        out = np.asarray(result.Z_corr)
        return out if out.shape == Z.shape else out.T

    def _state(self):
        return {"whitening": self.whitening.to_state()}

    def _load(self, state):
        self.whitening = Whitening.from_state(state["whitening"])


# ---------------------------------------------------------------------------------------------

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    Base, PCA, PCAICA, PCARand, CenterScale, TVN, ComBat, Harmony, TVNICA, ICAClean)}
METHOD_NAMES: tuple[str, ...] = ("base", "pca", "pca_ica", "pca_rand", "centerscale", "tvn",
                                 "combat", "harmony", "tvn_ica", "ica_clean")


def make_method(name: str, **params: Any) -> Method:
    """A new, unfitted method by name (see :data:`METHOD_NAMES`)."""
    if name not in METHODS:
        raise ConfigError(f"unknown post-processing method {name!r}; choose from {METHOD_NAMES}")
    return METHODS[name](**params)


def method_from_state(state: dict) -> Method:
    """Rebuild a fitted method from :meth:`Method.to_state` (e.g. read back from ``uns``)."""
    name = str(state.get("name", ""))
    if name not in METHODS:
        raise InputError("state", f"unknown post-processing method {name!r}")
    return METHODS[name].from_state(state)


def fitting_mask(obs: pd.DataFrame, fit_on: str, train_batches=None, *,
                 batch_key: str = "batch", control_key: str = "is_control") -> np.ndarray:
    """Rows of ``obs`` a method is fitted on.

    ``fit_on``: ``"all"``; ``"controls"`` (``is_control``); ``"train_batches"`` (batches listed in
    ``train_batches``).
    """
    if fit_on == "all":
        return np.ones(len(obs), dtype=bool)
    if fit_on == "controls":
        _require(obs, [control_key], f"fit_on={fit_on}")
        mask = _controls(obs, control_key)
    elif fit_on == "train_batches":
        _require(obs, [batch_key], f"fit_on={fit_on}")
        if train_batches is None or len(train_batches) == 0:
            raise ConfigError("fit_on='train_batches' needs a non-empty list of train_batches")
        wanted = [str(b) for b in train_batches]
        present = set(_labels(obs, batch_key))
        unknown = sorted(set(wanted) - present)
        if unknown:
            raise InputError("train_batches", f"batch(es) {unknown} are not in the data; "
                                              f"known: {sorted(present)}")
        mask = np.isin(_labels(obs, batch_key), wanted)
    else:
        raise ConfigError(f"fit_on must be 'all', 'controls' or 'train_batches', got {fit_on!r}")
    if mask.sum() < 3:
        raise InputError("obs", f"fit_on={fit_on!r} selects {int(mask.sum())} wells; need at least 3")
    return mask


#: What every method parameter means (config/README.md lists them per method).
METHOD_PARAM_DOCS: dict[str, str] = {
    "n_components": "components kept (null: the numerical rank of the fitting set, at most one per 5 fitting "
                    "wells; more than that logs a warning)",
    "rel_tol": "eigenvalues below this share of the largest count as zero (rank cut-off)",
    "standardize": "z-score every feature on the fitting set first (for CellProfiler features)",
    "seed": "seed of the ICA restarts, the random rotation or Harmony",
    "backend": "ICA implementation: auto (torch), torch, sklearn, picard",
    "n_restarts": "ICA restarts from random starts, each run to convergence; the converged one with the "
                  "largest negentropy is kept, the others give each component's stability index. auto: "
                  "ceil(500 k / n) clipped to 5-20 (more with fewer wells per component)",
    "tol": "ICA convergence tolerance on the unmixing update",
    "stability_threshold": "ICA components whose stability index (median matched |corr| across restarts) "
                           "is below this are labelled unstable: attribution does not judge them and "
                           "ica_clean keeps them",
    "max_iter": "iteration cap (ICA iterations, Harmony rounds)",
    "batch_key": "obs column with the batch",
    "control_key": "obs column flagging control wells",
    "min_controls": "fewest control wells a batch needs for its own statistics",
    "reg": "ridge added to the control covariances before the CORAL map (TVN), standardised units",
    "bio_key": "obs column with the biology label that attribution uses",
    "drop": "which components ICA-clean removes: technical (attribution label) or batch_share",
    "margin": "a component is technical when its batch share exceeds its biology share this many times",
    "min_share": "shares below this count as no signal",
    "max_batch_share": "with drop: batch_share, remove components whose batch share exceeds this",
    "covariates": "obs columns ComBat keeps (e.g. the perturbation)",
    "theta": "Harmony's diversity penalty",
}
