"""Metrics with confidence intervals: the numbers every method (model or baseline) is reported with.

The metrics themselves are scikit-learn's and scipy's; this module only fixes which ones are reported for
each task type, how multiclass AUC and F1 are averaged, and how confidence intervals are formed:
a percentile bootstrap over test rows (resampling whole subjects when ``groups`` is given) for one run, and a
Student-t interval over the per-seed values for repeated runs (few-shot seeds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CLASSIFICATION_METRICS = ("balanced_accuracy", "auc", "f1", "accuracy")
REGRESSION_METRICS = ("mae", "pearson_r", "r2")
#: Metrics where a smaller value is better (a paired difference's "at least as good" flips for them).
LOWER_IS_BETTER = frozenset({"mae"})
#: The values each metric can take; an interval is clipped to them (R² has no lower bound).
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "balanced_accuracy": (0.0, 1.0),
    "auc": (0.0, 1.0),
    "f1": (0.0, 1.0),
    "accuracy": (0.0, 1.0),
    "mae": (0.0, float("inf")),
    "pearson_r": (-1.0, 1.0),
    "r2": (float("-inf"), 1.0),
}


def _as_proba(y_score: np.ndarray, n_classes: int) -> np.ndarray:
    s = np.asarray(y_score, dtype=float)
    if s.ndim == 1:
        if n_classes != 2:
            raise ValueError("a 1-D score is only meaningful for a binary task (probability of classes[1])")
        s = np.stack([1.0 - s, s], axis=1)
    return s


def classification_metrics(
    y_true: Sequence[Any],
    y_score: np.ndarray,
    classes: Sequence[Any],
    y_pred: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Balanced accuracy, AUC, F1 and accuracy from class probabilities.

    ``y_score`` is ``(n, n_classes)`` probabilities in the order of ``classes`` (or, for two classes, the 1-D
    probability of ``classes[1]``, the positive class). ``y_pred`` defaults to the most probable class. AUC is
    one-vs-rest macro for more than two classes and NaN when the test part holds one class only; F1 is the
    positive class's for binary tasks and macro otherwise.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    classes = list(classes)
    y_true = np.asarray(list(y_true), dtype=object)
    proba = _as_proba(y_score, len(classes))
    if y_pred is None:
        y_pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    y_pred = np.asarray(list(y_pred), dtype=object)
    present = set(y_true.tolist())
    if len(classes) == 2:
        auc = roc_auc_score(y_true == classes[1], proba[:, 1]) if len(present) == 2 else float("nan")
        f1 = f1_score(y_true == classes[1], y_pred == classes[1], zero_division=0)
    else:
        if len(present) == len(classes):
            auc = roc_auc_score(
                _codes(y_true, classes),
                proba / proba.sum(axis=1, keepdims=True),
                multi_class="ovr",
                average="macro",
                labels=list(range(len(classes))),
            )
        else:
            auc = float("nan")
        f1 = f1_score(_codes(y_true, classes), _codes(y_pred, classes), average="macro", zero_division=0)
    return {
        "balanced_accuracy": float(balanced_accuracy_score(_codes(y_true, classes), _codes(y_pred, classes))),
        "auc": float(auc),
        "f1": float(f1),
        "accuracy": float(accuracy_score(_codes(y_true, classes), _codes(y_pred, classes))),
    }


def _codes(values: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray([lookup.get(v, -1) for v in values])


def _fast_classification(t: np.ndarray, proba: np.ndarray, p: np.ndarray, n_classes: int) -> dict[str, float]:
    """The same numbers as :func:`classification_metrics` from integer codes, without sklearn's per-call
    validation, so a 1000-draw bootstrap takes milliseconds (tests check it equals sklearn)."""
    from scipy.stats import rankdata

    present = np.unique(t)
    recalls = [np.mean(p[t == c] == c) for c in present]

    def auc_of(pos: np.ndarray, score: np.ndarray) -> float:
        n1 = int(pos.sum())
        n0 = len(pos) - n1
        if n1 == 0 or n0 == 0:
            return float("nan")
        ranks = rankdata(score)
        return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))

    def f1_of(c: int) -> float:
        tp = np.sum((p == c) & (t == c))
        denom = np.sum(p == c) + np.sum(t == c)
        return float(2 * tp / denom) if denom else 0.0

    if n_classes == 2:
        auc = auc_of(t == 1, proba[:, 1])
        f1 = f1_of(1)
    else:
        auc = (
            float(np.mean([auc_of(t == c, proba[:, c]) for c in range(n_classes)]))
            if len(present) == n_classes
            else float("nan")
        )
        f1 = float(np.mean([f1_of(c) for c in np.union1d(present, np.unique(p))]))
    return {
        "balanced_accuracy": float(np.mean(recalls)),
        "auc": auc,
        "f1": f1,
        "accuracy": float(np.mean(p == t)),
    }


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """MAE, Pearson r (NaN when either side is constant) and R²."""
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error, r2_score

    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    r = float(pearsonr(t, p).statistic) if len(t) > 1 and np.ptp(t) > 0 and np.ptp(p) > 0 else float("nan")
    return {
        "mae": float(mean_absolute_error(t, p)),
        "pearson_r": r,
        "r2": float(r2_score(t, p)) if len(t) > 1 else float("nan"),
    }


def resample_indices(n: int, groups: Sequence[Any] | None, n_boot: int, seed: int):
    """Yield ``n_boot`` bootstrap index arrays over ``n`` rows; with ``groups`` whole groups are drawn."""
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(int(n_boot)):
            yield rng.integers(0, n, size=n)
        return
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    for _ in range(int(n_boot)):
        yield np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])


def _fast_regression(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """:func:`regression_metrics` in plain numpy for bootstrap draws (tests check it equals scipy/sklearn)."""
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r = float(np.corrcoef(t, p)[0, 1]) if np.ptp(t) > 0 and np.ptp(p) > 0 else float("nan")
    return {
        "mae": float(np.mean(np.abs(t - p))),
        "pearson_r": r,
        "r2": 1.0 - float(np.sum((t - p) ** 2)) / ss_tot if ss_tot > 0 else float("nan"),
    }


def bootstrap_ci(
    metric: Callable[[np.ndarray], float],
    n: int,
    *,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(indices)`` over ``n`` test rows.

    ``metric`` receives an index array (rows drawn with replacement) and returns a number; draws where it is
    not finite (e.g. AUC of a one-class resample) are dropped. With ``groups`` (subject ids) whole subjects are
    resampled, so several scans of one person do not narrow the interval.
    """
    values = [v for v in (metric(idx) for idx in resample_indices(n, groups, n_boot, seed)) if np.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def seed_ci(
    values: Sequence[float], alpha: float = 0.05, metric: str | None = None
) -> tuple[float, float, float]:
    """Mean and Student-t interval over per-seed values: ``(mean, low, high)`` (low = high = mean for one seed).

    With ``metric`` the interval is clipped to the values that metric can take: with few seeds a Student-t
    interval on a balanced accuracy can otherwise claim values above 1.
    """
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) == 1 or np.ptp(v) == 0:
        return mean, mean, mean
    half = float(stats.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    low, high = METRIC_RANGE.get(metric or "", (float("-inf"), float("inf")))
    return mean, max(mean - half, low), min(mean + half, high)


def _scorer(
    task_type: str, y: np.ndarray, y_score: Any, classes: Sequence[Any] | None, y_pred: Any
) -> tuple[dict[str, float], Callable[[np.ndarray], dict[str, float]]]:
    """One method's point metrics on the test rows ``y`` and the function that scores it on a bootstrap draw
    of them (row indices), the fast numpy twins of sklearn's metrics."""
    if task_type == "regression":
        pred = np.asarray(y_pred, dtype=float)
        if len(pred) != len(y):
            raise ValueError("a method must predict every test row")

        def on_regression_rows(idx: np.ndarray) -> dict[str, float]:
            return _fast_regression(y[idx], pred[idx])

        return regression_metrics(y, pred), on_regression_rows
    classes = list(classes)
    score = _as_proba(y_score, len(classes))
    if len(score) != len(y):
        raise ValueError("a method must score every test row")
    t_codes = _codes(y, classes)
    p_codes = (
        score.argmax(axis=1) if y_pred is None else _codes(np.asarray(list(y_pred), dtype=object), classes)
    )
    proba = score / score.sum(axis=1, keepdims=True) if len(classes) > 2 else score

    def on_classification_rows(idx: np.ndarray) -> dict[str, float]:
        return _fast_classification(t_codes[idx], proba[idx], p_codes[idx], len(classes))

    return classification_metrics(y, score, classes, y_pred), on_classification_rows


def evaluate(
    task_type: str,
    y_true: Sequence[Any],
    *,
    y_score: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
    y_pred: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Every metric of the task type with its bootstrap interval: ``{metric: {"value", "low", "high"}}``."""
    y_true_arr = np.asarray(list(y_true), dtype=object if task_type != "regression" else float)
    n = len(y_true_arr)
    point, compute = _scorer(task_type, y_true_arr, y_score, classes, y_pred)
    out: dict[str, dict[str, float]] = {}
    # One bootstrap pass for all metrics: the same resamples give each metric's interval.
    draws = [compute(idx) for idx in resample_indices(n, groups, n_boot, seed)]
    for name, value in point.items():
        vals = np.asarray([d[name] for d in draws], dtype=float)
        vals = vals[np.isfinite(vals)]
        lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2]) if len(vals) else (np.nan, np.nan)
        out[name] = {"value": float(value), "low": float(lo), "high": float(hi)}
    return out


def paired_difference(
    task_type: str,
    y_true: Sequence[Any],
    first: dict[str, Any],
    second: dict[str, Any],
    *,
    classes: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each metric of ``first`` minus that of ``second`` on the same test rows, with a paired bootstrap interval.

    ``first`` and ``second`` are two methods' predictions of the same rows: ``{"y_pred": ...}`` for
    regression, ``{"y_score": ..., "y_pred": ...}`` (``y_pred`` optional) for classification. Every draw
    resamples the rows (whole subjects with ``groups``) once and scores both methods on it, so what the two
    share (a hard site, an easy subject) cancels and the interval is that of the difference, far narrower than
    two separate intervals suggest. Returns ``{metric: {"difference", "low", "high", "at_least_as_good"}}``,
    the last being the share of draws where ``first`` is at least as good as ``second`` (smaller MAE, larger
    everything else).

    Why: "the model reads sex at 0.598 AUC, FC at 0.609" says nothing about whether a second run, or other
    scans of the same sites, would order them the same way; the paired interval does.
    """
    y = np.asarray(list(y_true), dtype=float if task_type == "regression" else object)
    n = len(y)
    scored = [_scorer(task_type, y, m.get("y_score"), classes, m.get("y_pred")) for m in (first, second)]
    points = [point for point, _ in scored]

    def compute(idx: np.ndarray) -> list[dict[str, float]]:
        return [on_rows(idx) for _, on_rows in scored]

    draws = [compute(idx) for idx in resample_indices(n, groups, n_boot, seed)]
    out: dict[str, dict[str, float]] = {}
    for name in points[0]:
        diffs = np.asarray([a[name] - b[name] for a, b in draws], dtype=float)
        diffs = diffs[np.isfinite(diffs)]
        lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2]) if len(diffs) else (np.nan, np.nan)
        good = (diffs <= 0) if name in LOWER_IS_BETTER else (diffs >= 0)
        out[name] = {
            "difference": float(points[0][name] - points[1][name]),
            "low": float(lo),
            "high": float(hi),
            "at_least_as_good": float(good.mean()) if len(diffs) else float("nan"),
        }
    return out
