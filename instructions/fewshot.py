"""Seeded, balanced k-shot sampling by subject for few-shot fine-tuning and evaluation.

Few-shot numbers are only honest when the k labelled examples are (1) the same for the same seed, so a run can
be repeated, (2) k per class, so a "k-shot" model is not secretly trained on the majority class, (3) one scan per
subject, so k shots are k people and not k sessions of one person, and (4) never from a test subject.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fmrilm.cohort import is_missing
from fmrilm.errors import FmriInputError


def _table(cohort_or_table: Any):
    """A pandas DataFrame of ids and phenotypes from a Cohort, a DataFrame or a datasets.Dataset."""
    import pandas as pd

    if isinstance(cohort_or_table, pd.DataFrame):
        return cohort_or_table.reset_index(drop=True)
    if hasattr(cohort_or_table, "phenotype_table"):
        return cohort_or_table.phenotype_table()
    if hasattr(cohort_or_table, "column_names") and hasattr(cohort_or_table, "select_columns"):
        cols = [c for c in cohort_or_table.column_names if c != "timeseries"]
        return cohort_or_table.select_columns(cols).to_pandas()
    return pd.DataFrame(cohort_or_table)


def sample_k_shot(
    cohort_or_table: Any,
    label: str,
    k: int,
    seed: int,
    exclude_subjects: Iterable[str] | None = None,
    *,
    candidates: Sequence[int] | None = None,
    bins: Sequence[float] | None = None,
    subject_column: str = "subject_id",
) -> np.ndarray:
    """Row indices of k subjects per class of ``label`` (one scan each), never from ``exclude_subjects``.

    ``candidates`` restricts the pick to some rows (e.g. a split's train part); ``bins`` turns a numeric label
    into bins that share a budget of k per bin: each bin gives up to k subjects and a bin with too few leaves its
    shortfall to the others (round robin), so a large k works on a small cohort whose extreme bins are sparse.
    Without ``bins`` a numeric label with more than 10 distinct values is sampled as one class of k subjects.
    Rows with a missing label are never picked. Subjects whose scans disagree on the label
    are left out (their class is ambiguous). The same ``seed`` always gives the same rows; the result is
    ordered by class, then by the random draw. Raises FmriInputError when a class has fewer than k eligible
    subjects, naming the class and how many there are.
    """
    if int(k) < 1:
        raise FmriInputError(
            f"k must be at least 1, got {k}", fix="ask for k >= 1 labelled subjects per class"
        )
    table = _table(cohort_or_table)
    if label not in table.columns:
        raise FmriInputError(
            f"The cohort has no column '{label}'",
            fix=f"use one of {[c for c in table.columns if c not in ('timeseries',)]}",
        )
    if subject_column not in table.columns:
        raise FmriInputError(f"The cohort has no '{subject_column}' column", fix="import it with subject ids")
    excluded = {str(s) for s in (exclude_subjects or [])}
    rows = np.arange(len(table)) if candidates is None else np.asarray(sorted({int(i) for i in candidates}))
    values = table[label].to_numpy()
    subjects = table[subject_column].astype(str).to_numpy()

    def class_of(v: Any) -> Any:
        if bins is not None:
            b = np.asarray(bins, dtype=float)
            return int(np.clip(np.searchsorted(b, float(v), side="right") - 1, 0, len(b) - 2))
        return v

    numeric = bins is None and _is_continuous(values)
    per_subject: dict[str, dict[Any, list[int]]] = {}
    for i in rows:
        v = values[i]
        if subjects[i] in excluded or is_missing(v):
            continue
        cls = "all" if numeric else class_of(v)
        per_subject.setdefault(subjects[i], {}).setdefault(cls, []).append(int(i))
    by_class: dict[Any, list[str]] = {}
    for subject, classes in per_subject.items():
        if len(classes) == 1:  # a subject whose scans disagree on the label belongs to no class
            by_class.setdefault(next(iter(classes)), []).append(subject)
    if not by_class:
        raise FmriInputError(
            f"No eligible subject has a '{label}' value",
            fix="check the label column and that not every subject is excluded (test part)",
        )
    rng = np.random.default_rng(seed)
    order = sorted(by_class, key=str)
    counts = _bin_counts(by_class, order, int(k), label) if bins is not None else None
    picked: list[int] = []
    for cls in order:
        pool = sorted(by_class[cls])
        take = int(k) if counts is None else counts[cls]
        if len(pool) < take:
            raise FmriInputError(
                f"Class '{cls}' of '{label}' has only {len(pool)} eligible subject(s), fewer than k={k}",
                fix="lower --shots, or add labelled subjects outside the test part",
            )
        for subject in rng.choice(pool, size=take, replace=False):
            scans = per_subject[str(subject)][cls]
            picked.append(int(scans[rng.integers(len(scans))]))
    return np.asarray(picked, dtype=np.int64)


def _bin_counts(by_class: dict[Any, list[str]], order: list[Any], k: int, label: str) -> dict[Any, int]:
    """Subjects to draw per bin: k each where possible, a sparse bin's shortfall spread over the others.

    ``order`` lists the bins that hold any eligible subject; the total is k times their number, so a k-shot
    regression run sees as many subjects as a k-shot classification with that many classes.
    """
    n_bins = max(len(order), 1)
    budget = k * n_bins
    available = {c: len(by_class[c]) for c in order}
    if sum(available.values()) < budget:
        raise FmriInputError(
            f"'{label}' has only {sum(available.values())} eligible subject(s), fewer than k={k} per bin "
            f"over {n_bins} bin(s) ({budget})",
            fix="lower --shots, or add labelled subjects outside the test part",
        )
    counts = {c: min(k, available[c]) for c in order}
    left = budget - sum(counts.values())
    while left > 0:  # round robin over the bins that still have subjects to give
        for c in order:
            if left and counts[c] < available[c]:
                counts[c] += 1
                left -= 1
    return counts


def _is_continuous(values: np.ndarray) -> bool:
    present = [v for v in values if not is_missing(v)]
    if not present or not all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        return False
    return len(set(present)) > 10
