"""Baselines every fmrilm figure is reported next to, fitted on a split's train part and scored on the others.

- ``fc``: Fisher-z Pearson functional connectivity (upper triangle) + standardization + ``LogisticRegressionCV``
  (balanced class weights) or ``RidgeCV`` — the standard connectome-prediction pipeline;
- ``demographics``: the same linear models on covariates only (e.g. age + sex for diagnosis; missing values
  imputed from the train part with a missing indicator), which says how much a brain-based method adds;
- ``train_mean`` / ``prior``: the training mean (regression) or the training class frequencies
  (classification, always chance AUC), the floor;
- :func:`linear_probe` on any feature matrix (FC, descriptor z-features, pooled tokenizer codes).

Hyperparameters are chosen by cross-validation inside the train part only, grouped by subject (or by site, so
the choice favours models that transfer to unseen scanners); test rows never touch a fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from fmrilm.eval.report import MethodResult, sites_of
from sklearn.base import BaseEstimator, TransformerMixin

from fmrilm.cohort import is_missing as _missing
from fmrilm.errors import FmriInputError

LOGISTIC_CS = np.logspace(-5, 1, 7)
RIDGE_ALPHAS = np.logspace(-1, 7, 17)
#: lbfgs stopping tolerance of the logistic baselines: at sklearn's 1e-4 a weakly regularized fit on FC's
#: 19,900 features stops where the arithmetic's order leaves it, and the same baseline on the same split gave
#: sex probabilities up to 0.11 apart at one and at two BLAS threads (balanced accuracy 0.611 against 0.569,
#: ABIDE validation fold); at 1e-7, 0.0005 apart, for about twice the fitting time (seconds)
LOGISTIC_TOL = 1e-7
DEFAULT_COVARIATES = ("age", "sex")


# ------------------------------------------------------------------------------------------------- features
def fc_features(cohort: Any, *, detrend: bool = True, progress: bool = False) -> np.ndarray:
    """``(n_scans, R(R-1)/2)`` float32 Fisher-z correlations (upper triangle) of every scan of ``cohort``.

    Each scan goes through :func:`fmrilm.signal.preprocess` at its own TR (bad regions repaired to zero and
    flagged, detrended, z-scored); a zeroed region couples 0 with every other region, so features are never
    NaN. Correlation and Fisher z are :mod:`fmrilm.descriptors.connectivity`'s, the same as the descriptors.
    """
    from fmrilm.descriptors.connectivity import correlation, fisher_z
    from fmrilm.progress import progress as show_progress
    from fmrilm.signal import BadRegionWarning, SignalConfig, preprocess

    config = SignalConfig(
        target_tr=None, detrend=detrend, standardize=True, bad_regions="repair", min_timepoints=10
    )
    n_regions = cohort.atlas.n_regions
    iu = np.triu_indices(n_regions, k=1)
    out = np.empty((len(cohort), len(iu[0])), dtype=np.float32)
    for i in show_progress(range(len(cohort)), desc="FC features", disable=not progress, unit="scan"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadRegionWarning)  # recorded in scan.flags; nothing to add here
            scan = preprocess(cohort.scan(i), config)
        out[i] = fisher_z(correlation(scan.timeseries))[iu]
    if not np.isfinite(out).all():  # the promise of this function; a violation is a bug, not bad input
        raise RuntimeError("non-finite FC feature")
    return out


def tangent_features(
    cohort: Any, train_rows: Sequence[int], *, detrend: bool = True, progress: bool = False
) -> np.ndarray:
    """``(n_scans, R(R-1)/2)`` tangent-space FC of every scan, at the geometric mean of the ``train_rows``
    scans only (nilearn ``ConnectivityMeasure(kind="tangent")``, Ledoit-Wolf covariances of the cleaned,
    z-scored signal): the strongest classic pipeline of Dadi et al. (2019). Test scans never shape the
    reference, so the features are honest for any split whose train part is ``train_rows``."""
    from fmrilm import tangent
    from fmrilm.progress import progress as show_progress
    from fmrilm.signal import BadRegionWarning, SignalConfig, preprocess

    config = SignalConfig(
        target_tr=None, detrend=detrend, standardize=True, bad_regions="repair", min_timepoints=10
    )
    series = []
    for i in show_progress(range(len(cohort)), desc="tangent FC", disable=not progress, unit="scan"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadRegionWarning)
            series.append(preprocess(cohort.scan(i), config).timeseries.astype(np.float64))
    train_rows = [int(i) for i in train_rows]
    if len(train_rows) < 2:
        raise FmriInputError(
            f"Tangent-space FC needs at least 2 training scans, got {len(train_rows)}",
            fix="use a split with a larger train part",
        )
    # nilearn's ConnectivityMeasure(kind="tangent") fitted on the train rows, its per-scan work on threads
    covs = tangent.covariances(series)
    white = tangent.whitening(tangent.geometric_mean(covs[train_rows]))
    return tangent.tangent_vectors(covs, white).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- targets
def task_target(table, task: Any) -> tuple[np.ndarray, list[Any] | None, str, np.ndarray]:
    """Target values of every row, the class order, the task type and a mask of rows with a usable target.

    ``task`` is a :class:`fmrilm.instructions.spec.TaskSpec` (values become its answer strings, regression
    values outside ``valid_range`` count as missing; binary classes are ordered so the option listed first in
    the YAML is the positive class, ``classes[1]``) or a column name (classes sorted; numeric columns with
    more than 10 values are regression).
    """
    if hasattr(task, "target"):
        column, ttype = task.target, task.type
    else:
        column = str(task)
        ttype = None
    if column not in table.columns:
        raise FmriInputError(
            f"The cohort has no column '{column}'",
            fix=f"choose a task whose target is one of {[c for c in table.columns if c != 'timeseries']}",
        )
    raw = table[column].to_numpy(dtype=object)
    present = np.array([not _missing(v) for v in raw])
    if ttype is None:
        values = [v for v in raw[present]]
        numeric = bool(values) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in values)
        ttype = (
            "regression"
            if numeric and len(set(values)) > 10
            else ("binary" if len(set(values)) == 2 else "multiclass")
        )
    if ttype == "regression":
        fmt = getattr(task, "number", None)
        if fmt is not None:
            present &= np.array([fmt.is_valid(v) for v in raw])
        y = np.full(len(raw), np.nan)
        y[present] = raw[present].astype(float)
        return y, None, ttype, present
    if ttype == "open-ended":
        raise FmriInputError(
            f"Task '{getattr(task, 'name', column)}' is open-ended: it has no baseline",
            fix="evaluate baselines on binary, multiclass or regression tasks",
        )
    y = np.full(len(raw), None, dtype=object)
    if hasattr(task, "answer_map"):
        _, mapping = task.answer_map(list(raw[present]))
        y[present] = [task.answer_for(v, mapping) for v in raw[present]]
        classes = task.options(mapping)
        if ttype == "binary":
            classes = classes[::-1]
    else:
        y[present] = raw[present]
        classes = sorted(set(y[present].tolist()), key=str)
    return y, classes, ttype, present


# ----------------------------------------------------------------------------------------------------- fitting
def _inner_cv(y: np.ndarray, groups: np.ndarray | None, classification: bool, n_splits: int, seed: int):
    """Train-part CV splits (a list, so any sklearn estimator accepts them), grouped when groups are given."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    x = np.zeros(len(y))
    if groups is not None:
        n = min(n_splits, len(set(groups)))
        if n < 2:
            groups = None
        elif classification:
            return list(StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed).split(x, y, groups))
        else:
            return list(GroupKFold(n_splits=n).split(x, y, groups))
    if classification:
        n = min(n_splits, int(min(np.unique(y, return_counts=True)[1])))
        if n < 2:
            raise FmriInputError(
                "A class has fewer than 2 training examples, too few to fit a baseline",
                fix="use a split with more labelled subjects per class in the train part",
            )
        return list(StratifiedKFold(n_splits=n, shuffle=True, random_state=seed).split(x, y))
    return list(KFold(n_splits=min(n_splits, len(y)), shuffle=True, random_state=seed).split(x))


class RowSpaceRotation(BaseEstimator, TransformerMixin):
    """Lossless rotation of centred data into the span of the training rows: ``(n, d) -> (n, rank)``.

    An L2-penalized linear model (ridge, L2 logistic regression) always has its solution in the span of the
    training rows and its penalty is rotation invariant, so fitting it on these coordinates gives the same
    predictions as on the raw features (the tests check it) while each fit works on ``rank <= n`` columns
    instead of ``d``: ABIDE's 19,900 FC features become ~500. The basis comes from the eigendecomposition of
    the ``n x n`` Gram matrix (far cheaper than an SVD of ``n x d`` when ``d >> n``); directions with an
    eigenvalue below ``rtol`` of the largest (the centring null space, rounding noise) are dropped.
    scikit-learn's PCA gives the same coordinates but through the ``n x d`` SVD, and KernelPCA keeps
    numerically-zero directions, which it then amplifies on test rows.
    """

    def __init__(self, rtol: float = 1e-10) -> None:
        self.rtol = rtol

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        if X.shape[1] <= X.shape[0]:
            self.basis_ = None  # nothing to gain: keep the features as they are
            return self
        vals, vecs = np.linalg.eigh(X @ X.T)
        keep = vals > self.rtol * max(vals.max(), 1e-300)
        self.basis_ = (X.T @ vecs[:, keep]) / np.sqrt(vals[keep])  # (d, rank), orthonormal columns
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        return X if self.basis_ is None else X @ self.basis_


def make_model(
    task_type: str,
    cv,
    *,
    scoring: str | None = None,
    seed: int = 0,
    rotate: bool = True,
    standardize: bool = True,
):
    """Standardize, then LogisticRegressionCV (balanced class weights) or RidgeCV, hyperparameters by ``cv``.

    ``rotate`` inserts :class:`RowSpaceRotation` after the scaler: same predictions, much faster when there
    are more features than training rows. ``standardize=False`` only centres the features: for features that
    already share one scale on purpose (connectome components keep their relative variance), where giving
    every column unit variance would let the L2 penalty treat noise-level components like leading ones.
    """
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task_type == "regression":
        head = RidgeCV(alphas=RIDGE_ALPHAS, cv=cv, scoring=scoring or "neg_mean_absolute_error")
    else:
        head = LogisticRegressionCV(
            Cs=LOGISTIC_CS,
            l1_ratios=(0.0,),  # plain L2
            use_legacy_attributes=False,
            cv=cv,
            class_weight="balanced",
            scoring=scoring or ("roc_auc" if task_type == "binary" else "balanced_accuracy"),
            max_iter=2000,
            tol=LOGISTIC_TOL,
            random_state=seed,
        )
    steps = [StandardScaler(with_std=standardize)] + ([RowSpaceRotation()] if rotate else []) + [head]
    return make_pipeline(*steps)


def linear_probe(
    features: np.ndarray,
    task_table,
    task: Any,
    split: Mapping[str, Sequence[int]],
    *,
    method: str = "linear_probe",
    train_part: str = "train",
    eval_parts: Sequence[str] = ("test",),
    inner_groups: str | None = "subject_id",
    n_inner: int = 5,
    rotate: bool = True,
    standardize: bool = True,
    seed: int = 0,
) -> list[MethodResult]:
    """Fit the standardized linear model on ``features[split[train_part]]`` and predict the other parts.

    ``features`` has one row per cohort row (any matrix: FC, descriptor z-features, pooled codes);
    ``task_table`` is the cohort's phenotype table (``cohort.phenotype_table()``); rows whose target is missing
    are left out of both fitting and scoring (``info['n_missing']`` counts them). ``inner_groups`` is the
    column that groups the train part's CV folds (``subject_id``, or ``site`` for site transfer).
    ``standardize=False``: centre only (`make_model`); ``info['standardized']`` records which.
    """
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(task_table):
        raise FmriInputError(
            f"The feature matrix has shape {X.shape} but the cohort has {len(task_table)} rows",
            fix="give one feature row per cohort row, in cohort order",
        )
    if not np.isfinite(X).all():
        raise FmriInputError(
            "The feature matrix contains NaN or Inf", fix="impute or drop those features first"
        )
    y, classes, ttype, ok = task_target(task_table, task)
    train = _usable(split, train_part, ok)
    groups = None if inner_groups is None else task_table[inner_groups].astype(str).to_numpy()
    classification = ttype != "regression"
    if classification and len(set(y[train])) < 2:
        raise FmriInputError(
            f"The train part has one class only ({set(y[train])})",
            fix="use a split whose train part has every class",
        )
    cv = _inner_cv(y[train], None if groups is None else groups[train], classification, n_inner, seed)
    model = make_model(ttype, cv, seed=seed, rotate=rotate, standardize=standardize)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model.fit(X[train], y[train].astype(str) if classification else y[train])
    head = model[-1]
    info: dict[str, Any] = {
        "n_train": int(len(train)),
        "n_features": int(X.shape[1]),
        "n_missing": int((~ok).sum()),
        "inner_cv": f"{len(cv)} folds grouped by {inner_groups}" if inner_groups else f"{len(cv)} folds",
        "standardized": bool(standardize),
    }
    if classification:
        info["C"] = float(np.ravel(head.C_)[0])
    else:
        info["alpha"] = float(head.alpha_)
    return [
        _result(method, task, ttype, classes, y, part, idx, task_table, info, model=model, X=X, seed=seed)
        for part, idx in _eval_parts(split, eval_parts, ok)
    ]


def fc_baseline(cohort: Any, task: Any, split: Mapping[str, Sequence[int]], *, features=None, **kwargs):
    """The Fisher-z FC + logistic regression / ridge baseline (``features`` reuses precomputed FC)."""
    X = fc_features(cohort) if features is None else features
    return linear_probe(
        X, cohort.phenotype_table(), task, split, method=kwargs.pop("method", "fc_linear"), **kwargs
    )


def demographics_baseline(
    task_table,
    task: Any,
    split: Mapping[str, Sequence[int]],
    *,
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    train_part: str = "train",
    eval_parts: Sequence[str] = ("test",),
    seed: int = 0,
) -> list[MethodResult]:
    """Logistic / ridge regression on covariates only (the target itself is never a covariate).

    Numeric covariates: median-imputed from the train part, with a missing indicator, standardized;
    categorical ones: one-hot with a missing category. Returns [] when no covariate applies.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    target = getattr(task, "target", task)
    cols = [c for c in covariates if c in task_table.columns and c != target]
    if not cols:
        return []
    y, classes, ttype, ok = task_target(task_table, task)
    train = _usable(split, train_part, ok)
    frame = task_table[cols].copy()
    numeric = [c for c in cols if _is_numeric(frame[c])]
    categorical = [c for c in cols if c not in numeric]
    for c in numeric:
        frame[c] = frame[c].astype(float)
    for c in categorical:
        frame[c] = frame[c].astype(object).where(frame[c].notna(), "<missing>").astype(str)
    prep = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                numeric,
            ),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    if ttype == "regression":
        model = make_pipeline(prep, Ridge(alpha=1.0))
        model.fit(frame.iloc[train], y[train])
    else:
        model = make_pipeline(prep, LogisticRegression(class_weight="balanced", max_iter=2000))
        model.fit(frame.iloc[train], y[train].astype(str))
    info = {"covariates": cols, "n_train": int(len(train)), "n_missing": int((~ok).sum())}
    return [
        _result(
            "demographics",
            task,
            ttype,
            classes,
            y,
            part,
            idx,
            task_table,
            info,
            model=model,
            X=frame,
            seed=seed,
        )
        for part, idx in _eval_parts(split, eval_parts, ok)
    ]


def floor_baseline(
    task_table,
    task: Any,
    split: Mapping[str, Sequence[int]],
    *,
    train_part: str = "train",
    eval_parts: Sequence[str] = ("test",),
) -> list[MethodResult]:
    """``train_mean`` (regression) or ``prior`` (classification: train class frequencies, chance AUC)."""
    y, classes, ttype, ok = task_target(task_table, task)
    train = _usable(split, train_part, ok)
    results = []
    for part, idx in _eval_parts(split, eval_parts, ok):
        if ttype == "regression":
            mean = float(np.mean(y[train]))
            pred = np.full(len(idx), mean)
            results.append(
                _make("train_mean", task, ttype, None, y, part, idx, task_table, {"mean": mean}, pred, None)
            )
        else:
            freq = np.array([np.mean(y[train] == c) for c in classes])
            score = np.tile(freq, (len(idx), 1))
            pred = np.full(len(idx), classes[int(freq.argmax())], dtype=object)
            results.append(
                _make(
                    "prior",
                    task,
                    ttype,
                    classes,
                    y,
                    part,
                    idx,
                    task_table,
                    {"prior": freq.tolist()},
                    pred,
                    score,
                )
            )
    return results


def run_baselines(
    cohort: Any,
    tasks: Sequence[Any],
    split: Mapping[str, Sequence[int]],
    *,
    fc: np.ndarray | None = None,
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    eval_parts: Sequence[str] = ("test",),
    inner_groups: str | None = "subject_id",
    seed: int = 0,
) -> list[MethodResult]:
    """FC linear model, demographics and floor for every task on one split (FC computed once)."""
    table = cohort.phenotype_table()
    X = fc_features(cohort) if fc is None else fc
    results: list[MethodResult] = []
    for task in tasks:
        kw = {"eval_parts": eval_parts, "seed": seed}
        results += linear_probe(X, table, task, split, method="fc_linear", inner_groups=inner_groups, **kw)
        results += demographics_baseline(table, task, split, covariates=covariates, **kw)
        results += floor_baseline(table, task, split, eval_parts=eval_parts)
    return results


# ----------------------------------------------------------------------------------------------------- helpers
def _is_numeric(series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series)


def _usable(split: Mapping[str, Sequence[int]], part: str, ok: np.ndarray) -> np.ndarray:
    if part not in split:
        raise FmriInputError(
            f"The split has no '{part}' part (parts: {sorted(split)})", fix="use a train/test split"
        )
    idx = np.asarray([i for i in split[part] if ok[i]], dtype=np.int64)
    if len(idx) < 2:
        raise FmriInputError(
            f"The '{part}' part has {len(idx)} row(s) with a target, too few to fit",
            fix="use a split with more labelled subjects in the train part",
        )
    return idx


def _eval_parts(split: Mapping[str, Sequence[int]], parts: Sequence[str], ok: np.ndarray):
    for part in parts:
        if part in split:
            idx = np.asarray([i for i in split[part] if ok[i]], dtype=np.int64)
            if len(idx):
                yield part, idx


def _result(method, task, ttype, classes, y, part, idx, table, info, *, model, X, seed) -> MethodResult:
    rows = X.iloc[idx] if hasattr(X, "iloc") else X[idx]
    if ttype == "regression":
        return _make(method, task, ttype, None, y, part, idx, table, info, model.predict(rows), None)
    proba = model.predict_proba(rows)
    fitted = [str(c) for c in model.classes_]
    # A class absent from the train part gets probability 0 (it cannot be predicted), not an error.
    score = np.stack(
        [proba[:, fitted.index(str(c))] if str(c) in fitted else np.zeros(len(proba)) for c in classes],
        axis=1,
    )
    pred = np.asarray(classes, dtype=object)[score.argmax(axis=1)]
    return _make(method, task, ttype, classes, y, part, idx, table, info, pred, score)


def _make(method, task, ttype, classes, y, part, idx, table, info, pred, score) -> MethodResult:
    return MethodResult(
        method=method,
        task=getattr(task, "name", str(task)),
        task_type=ttype,
        y_true=y[idx].tolist(),
        y_pred=list(pred),
        y_score=score,
        classes=None if classes is None else list(classes),
        part=part,
        subject_ids=table["subject_id"].astype(str).to_numpy()[idx].tolist(),
        sites=sites_of(table, idx),
        info=dict(info),
    )
