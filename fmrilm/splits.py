"""Subject-level splits of a cohort: stratified by a label, or leave-sites-out.

Scans of one subject always land in the same part, so no model is tested on a brain it was trained on; a
leave-sites-out split also keeps every scan of a test site out of training, which is how generalisation to a
new scanner is measured. Splits are ``{part: [row indices]}`` dicts (parts ``train``, ``val``, ``test``) and
are stored inside the cohort folder as ``splits/<name>.json`` with the scan ids of each part, so a split read
back is checked against the cohort it is applied to. The grouping itself is scikit-learn's
(``StratifiedGroupKFold``, ``GroupShuffleSplit``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError

SPLITS_DIR = "splits"
PARTS = ("train", "val", "test")
MISSING_LABEL = "<missing>"
#: A numeric label with more distinct values than this is stratified by quantile bins.
MAX_CLASSES = 10
N_QUANTILE_BINS = 5
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")

Split = dict[str, list[int]]


# ---------------------------------------------------------------------------------------------------- making
def stratified_split(
    cohort: Cohort | Any,
    *,
    label: str = "diagnosis",
    test_size: float = 0.2,
    val_size: float = 0.0,
    seed: int = 0,
) -> Split:
    """Train/(val)/test by subject, keeping ``label`` proportions in every part.

    ``test_size`` and ``val_size`` are shares of the cohort's SUBJECTS, held to within one subject: the test
    part holds ``test_size * n_subjects`` subjects, rounded. ``StratifiedGroupKFold`` with
    ``round(1 / test_size)`` folds chooses the test subjects (one fold), and when that fold is a subject or
    more away from the share asked for (e.g. 0.3 gives three folds, a third), subjects are moved in or out of
    it, from the strata furthest from their share, until it holds the rounded count. The validation part is
    cut the same way from the rest. Missing labels form their own stratum; a numeric label with many values is
    stratified by quantile bins.
    """
    table = _table(cohort)
    _check_fraction("test_size", test_size)
    if val_size:
        _check_fraction("val_size", val_size)
        if test_size + val_size >= 1:
            raise FmriInputError(
                f"test_size + val_size = {test_size + val_size:.2f} leaves nothing to train on",
                fix="choose fractions that sum to less than 1, e.g. test 0.2 and val 0.1",
            )
    strata = _strata(table, label)
    groups = table["subject_id"].astype(str).to_numpy()
    everything = np.arange(len(table))
    rest, test = _one_fold(everything, strata, groups, test_size, seed, what="test_size")
    split: Split = {"train": rest, "test": test}
    if val_size:
        n_subjects = len(set(groups))
        n_val = _rounded(val_size * n_subjects)
        train, val = _one_fold(
            rest, strata[rest], groups[rest], val_size, seed + 1, n_held=n_val, what="val_size"
        )
        split = {"train": train, "val": val, "test": test}
    return _finish(split, table)


def stratified_folds(
    cohort: Cohort | Any, *, label: str = "diagnosis", n_folds: int = 5, seed: int = 0
) -> list[Split]:
    """K train/test splits by subject (cross-validation), each test fold keeping ``label`` proportions."""
    from sklearn.model_selection import StratifiedGroupKFold

    table = _table(cohort)
    strata = _strata(table, label)
    groups = table["subject_id"].astype(str).to_numpy()
    _check_groups(groups, n_folds)
    folds = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    return [
        _finish({"train": tr.tolist(), "test": te.tolist()}, table)
        for tr, te in folds.split(np.zeros(len(table)), strata, groups)
    ]


def leave_sites_out_split(
    cohort: Cohort | Any,
    *,
    test_sites: list[str] | None = None,
    n_test_sites: int = 1,
    val_sites: list[str] | None = None,
    n_val_sites: int = 0,
    val_size: float = 0.0,
    label: str | None = None,
    seed: int = 0,
) -> Split:
    """Every scan of the test sites in ``test``, none in ``train``; subjects never span two parts.

    Test sites are named, or ``n_test_sites`` are drawn at random with ``seed``. The optional validation part
    is other whole sites (``val_sites`` / ``n_val_sites``, to select models for unseen scanners) or a
    ``val_size`` fraction of the training subjects (stratified by ``label`` when given).
    """
    table = _table(cohort)
    site = table["site"].fillna("").astype(str).to_numpy()
    sites = sorted(set(site))
    rng = np.random.default_rng(seed)
    if test_sites:
        test_sites = _known_sites(test_sites, sites, "--test-sites")
    else:
        if not 1 <= int(n_test_sites) < len(sites):
            raise FmriInputError(
                f"Cannot hold out {n_test_sites} of the cohort's {len(sites)} site(s)",
                fix="name the test sites (--test-sites A,B) or choose fewer; a cohort with one site needs a "
                "stratified split",
            )
        test_sites = sorted(rng.choice(sites, size=int(n_test_sites), replace=False).tolist())
    remaining = [s for s in sites if s not in test_sites]
    if val_sites:
        val_sites = _known_sites(val_sites, sites, "--val-sites")
        overlap = sorted(set(val_sites) & set(test_sites))
        if overlap:
            raise FmriInputError(
                f"Site(s) {', '.join(overlap)} are both test and validation sites",
                fix="give disjoint --test-sites and --val-sites",
            )
    elif n_val_sites:
        if not 1 <= int(n_val_sites) < len(remaining):
            raise FmriInputError(
                f"Cannot draw {n_val_sites} validation site(s) from the {len(remaining)} left after the test sites",
                fix="choose fewer validation sites, or use --val-size for a fraction of the training subjects",
            )
        val_sites = sorted(rng.choice(remaining, size=int(n_val_sites), replace=False).tolist())
    if not [s for s in remaining if s not in (val_sites or [])]:
        raise FmriInputError(
            "No site is left for training", fix="hold out fewer sites for test and validation"
        )
    part = np.full(len(table), "train", dtype=object)
    part[np.isin(site, test_sites)] = "test"
    if val_sites:
        part[np.isin(site, val_sites)] = "val"
    _check_sites_share_no_subject(table, part)
    split: Split = {p: np.flatnonzero(part == p).tolist() for p in PARTS if (part == p).any()}
    if val_size and not val_sites:
        _check_fraction("val_size", val_size)
        train = np.asarray(split["train"])
        groups = table["subject_id"].astype(str).to_numpy()[train]
        if label:
            strata = _strata(table, label)[train]
            train_idx, val_idx = _one_fold(train, strata, groups, val_size, seed + 1)
        else:
            from sklearn.model_selection import GroupShuffleSplit

            _check_groups(groups, 2)
            gss = GroupShuffleSplit(n_splits=1, test_size=val_size, random_state=seed + 1)
            tr, va = next(gss.split(train, groups=groups))
            train_idx, val_idx = train[tr].tolist(), train[va].tolist()
        split = {"train": train_idx, "val": val_idx, "test": split["test"]}
    return _finish(split, table)


def split_cohort(cohort: Cohort, split: Split) -> dict[str, Cohort]:
    """One Cohort per part (``cohort.select``), named ``<cohort>-<part>``."""
    return {p: cohort.select(idx, name=f"{cohort.name}-{p}") for p, idx in split.items()}


def describe_split(cohort: Cohort | Any, split: Split, label: str | None = None) -> dict[str, dict[str, Any]]:
    """Per part: number of scans and subjects, scans per site and, with ``label``, per label value."""
    table = _table(cohort)
    out: dict[str, dict[str, Any]] = {}
    for p, idx in split.items():
        part = table.iloc[list(idx)]
        info: dict[str, Any] = {
            "n_scans": len(part),
            "n_subjects": int(part["subject_id"].nunique()),
            "sites": {str(k): int(v) for k, v in part["site"].fillna("").value_counts().sort_index().items()},
        }
        if label and label in table.columns:
            values = part[label].astype(object).where(part[label].notna(), MISSING_LABEL)
            if _is_continuous(table[label]):
                info[label] = {"mean": float(part[label].mean()), "sd": float(part[label].std())}
            else:
                # numbers in order, then '<missing>' (a numeric label with missing values mixes the two)
                counts = sorted(values.value_counts().items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))
                info[label] = {str(k): int(v) for k, v in counts}
        out[p] = info
    return out


# ------------------------------------------------------------------------------------------------ persistence
def save_split(
    cohort_dir: str | Path,
    name: str,
    split: Split,
    *,
    kind: str,
    params: dict[str, Any] | None = None,
    label: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<cohort_dir>/splits/<name>.json`` atomically, with the scan ids of each part.

    An existing split of that name is replaced only with ``overwrite`` (re-writing the very same split is
    allowed: nothing changes).
    """
    cohort_dir = Path(cohort_dir)
    cohort = Cohort.load(cohort_dir)
    _check_name(name)
    scan_ids = list(cohort.dataset["scan_id"])
    for p, idx in split.items():
        if idx and (min(idx) < 0 or max(idx) >= len(scan_ids)):
            raise FmriInputError(
                f"Part '{p}' has row indices outside the cohort's {len(scan_ids)} scans",
                file=cohort_dir,
                fix="make the split from this cohort",
            )
    record = {
        "name": name,
        "kind": kind,
        "params": params or {},
        "cohort": cohort.name,
        "n_scans": len(scan_ids),
        "parts": {p: [int(i) for i in idx] for p, idx in split.items()},
        "scan_ids": {p: [scan_ids[i] for i in idx] for p, idx in split.items()},
        "summary": describe_split(cohort, split, label),
    }
    folder = cohort_dir / SPLITS_DIR
    folder.mkdir(exist_ok=True)
    target = folder / f"{name}.json"
    if target.exists() and not overwrite and _stored(target) != json.loads(json.dumps(record)):
        raise FmriInputError(
            f"The cohort already holds a different split named '{name}' (other parts or settings); it is not "
            "replaced silently, since models and reports may rest on it",
            file=target,
            fix="give another --name, or pass --overwrite (overwrite=True in Python) to replace it",
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _stored(path: Path) -> Any:
    """The JSON held by ``path``, or None when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def list_splits(cohort_dir: str | Path) -> list[str]:
    folder = Path(cohort_dir) / SPLITS_DIR
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_split_record(cohort_dir: str | Path, name: str) -> dict[str, Any]:
    """The whole stored record (kind, params, parts, scan ids, summary)."""
    path = Path(cohort_dir) / SPLITS_DIR / f"{name}.json"
    if not path.exists():
        available = ", ".join(list_splits(cohort_dir)) or "none yet"
        raise FmriInputError(
            f"The cohort has no split '{name}' (available: {available})",
            file=path,
            fix="create it with `fmrilm cohort split DIR --kind stratified|leave-sites-out --name NAME`",
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FmriInputError(
            f"The split file is corrupt ({exc})", file=path, fix="re-create the split"
        ) from exc


def load_split(cohort_dir: str | Path, name: str, cohort: Cohort | None = None) -> Split:
    """``{part: row indices}``, checked against the cohort's scan ids (so a re-imported cohort is caught)."""
    record = load_split_record(cohort_dir, name)
    cohort = cohort if cohort is not None else Cohort.load(cohort_dir)
    scan_ids = list(cohort.dataset["scan_id"])
    for p, idx in record["parts"].items():
        stored = record.get("scan_ids", {}).get(p)
        if any(i >= len(scan_ids) for i in idx) or (
            stored is not None and [scan_ids[i] for i in idx] != stored
        ):
            raise FmriInputError(
                f"Split '{name}' was made for another version of the cohort (part '{p}' does not match its scans)",
                file=Path(cohort_dir) / SPLITS_DIR / f"{name}.json",
                fix="re-create the split with `fmrilm cohort split`",
            )
    return {p: [int(i) for i in idx] for p, idx in record["parts"].items()}


def load_split_cohorts(cohort_dir: str | Path, name: str) -> dict[str, Cohort]:
    """The cohort saved in ``cohort_dir``, cut into one Cohort per part of split ``name``."""
    cohort = Cohort.load(cohort_dir)
    return split_cohort(cohort, load_split(cohort_dir, name, cohort))


# ---------------------------------------------------------------------------------------------------- helpers
def _table(cohort: Cohort | Any):
    """Phenotype table of a Cohort (or a DataFrame with subject_id, site and label columns)."""
    table = cohort.phenotype_table() if isinstance(cohort, Cohort) else cohort
    table = table.reset_index(drop=True)
    for col in ("subject_id", "site"):
        if col not in table.columns:
            raise FmriInputError(f"The table has no '{col}' column", fix="split a Cohort or a table with ids")
    return table


def _check_fraction(what: str, value: float) -> None:
    if not 0 < float(value) < 1:
        raise FmriInputError(
            f"{what} must be a fraction between 0 and 1, got {value}", fix=f"give e.g. {what} 0.2"
        )


def _check_groups(groups: np.ndarray, n: int) -> None:
    if len(set(groups)) < n:
        raise FmriInputError(
            f"The cohort has {len(set(groups))} subject(s), too few to split {n} ways",
            fix="use a larger cohort or fewer parts / folds",
        )


def _is_continuous(values) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(values) and values.nunique(dropna=True) > MAX_CLASSES


def _strata(table, label: str) -> np.ndarray:
    """Class of each row for stratification: the label, '<missing>', or a quantile bin of a numeric label."""
    import pandas as pd

    if label not in table.columns:
        cols = [c for c in table.columns if c not in ("timeseries", "bad_regions")]
        raise FmriInputError(
            f"The cohort has no column '{label}' to stratify by",
            fix=f"use --label with one of: {', '.join(cols)}",
        )
    values = table[label]
    if _is_continuous(values):
        bins = pd.qcut(values, q=N_QUANTILE_BINS, labels=False, duplicates="drop")
        return bins.astype(object).where(values.notna(), MISSING_LABEL).astype(str).to_numpy()
    return values.astype(object).where(values.notna(), MISSING_LABEL).astype(str).to_numpy()


def _rounded(x: float) -> int:
    """Round half up (Python's round() goes to even: 2.5 -> 2)."""
    return int(np.floor(float(x) + 0.5))


def _one_fold(
    index: np.ndarray,
    strata: np.ndarray,
    groups: np.ndarray,
    fraction: float,
    seed: int,
    *,
    n_held: int | None = None,
    what: str = "test_size",
) -> tuple[list[int], list[int]]:
    """Split ``index`` into (rest, held): ``held`` is ``n_held`` subjects (default ``fraction`` of the subjects
    in ``index``, rounded), chosen as one fold of ``StratifiedGroupKFold`` and then moved to that count,
    stratum by stratum, when the fold is a subject or more away from it."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    index = np.asarray(index)
    subjects = list(dict.fromkeys(groups.tolist()))  # first-seen order: reproducible
    n_subjects = len(subjects)
    wanted = float(fraction) * n_subjects if n_held is None else float(n_held)
    target = _rounded(wanted)
    if not 1 <= target <= n_subjects - 1:
        raise FmriInputError(
            f"{what} {fraction} of {n_subjects} subject(s) is {wanted:.1f} subject(s): too few to split",
            fix="use a larger cohort or a fraction that leaves at least one subject in each part",
        )
    n_splits = max(2, int(round(n_subjects / max(wanted, 1e-9))))
    held: set[str] = set()
    if n_splits <= n_subjects:
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # A rare class with fewer subjects than folds is still spread as well as it can be; not an error.
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            try:
                _, fold = next(folds.split(np.zeros(len(index)), strata, groups))
                held = set(groups[fold].tolist())
            except ValueError:  # every class has fewer rows than folds: the strata below still apply
                held = set()
    if abs(len(held) - wanted) >= 1 or not held:
        held = _adjust_held(held, subjects, strata, groups, target, seed)
    mask = np.isin(groups, list(held))
    return index[~mask].tolist(), index[mask].tolist()


def _adjust_held(
    held: set[str], subjects: list[str], strata: np.ndarray, groups: np.ndarray, target: int, seed: int
) -> set[str]:
    """Move subjects into or out of ``held`` until it has ``target`` of them, always from the stratum whose
    held count is furthest from its share (a subject's stratum is its most frequent one)."""
    from collections import Counter

    per_subject: dict[str, Counter] = {s: Counter() for s in subjects}
    for g, st in zip(groups.tolist(), strata.tolist(), strict=True):
        per_subject[g][st] += 1
    stratum_of = {s: per_subject[s].most_common(1)[0][0] for s in subjects}
    names = list(dict.fromkeys(stratum_of[s] for s in subjects))
    size = {n: sum(1 for s in subjects if stratum_of[s] == n) for n in names}
    quota = {n: size[n] * target / len(subjects) for n in names}
    held = set(held)
    rng = np.random.default_rng([int(seed), 17])
    while len(held) != target:
        count = {n: sum(1 for s in held if stratum_of[s] == n) for n in names}
        if len(held) > target:
            pool = [n for n in names if count[n] > 0]
            worst = max(pool, key=lambda n: count[n] - quota[n])
            choices = [s for s in subjects if s in held and stratum_of[s] == worst]
            held.discard(choices[int(rng.integers(len(choices)))])
        else:
            pool = [n for n in names if count[n] < size[n]]
            worst = max(pool, key=lambda n: quota[n] - count[n])
            choices = [s for s in subjects if s not in held and stratum_of[s] == worst]
            held.add(choices[int(rng.integers(len(choices)))])
    return held


def _known_sites(names: list[str], sites: list[str], flag: str) -> list[str]:
    names = [str(n).strip() for n in names if str(n).strip()]
    by_lower = {s.lower(): s for s in sites}
    unknown = [n for n in names if n not in sites and n.lower() not in by_lower]
    if unknown:
        raise FmriInputError(
            f"Unknown site(s) {', '.join(unknown)} in {flag}",
            fix=f"use the cohort's sites: {', '.join(sites)}",
        )
    return sorted({n if n in sites else by_lower[n.lower()] for n in names})


def _check_sites_share_no_subject(table, part: np.ndarray) -> None:
    parts_of = table.assign(_part=part).groupby("subject_id")["_part"].nunique()
    spanning = parts_of[parts_of > 1].index.tolist()
    if spanning:
        raise FmriInputError(
            f"The subject has scans at sites that fall in different parts ({len(spanning)} such subject(s): "
            f"{', '.join(map(str, spanning[:5]))})",
            subject=str(spanning[0]),
            fix="choose test/validation sites that keep each subject's scans together, or drop those scans",
        )


def _finish(split: Split, table) -> Split:
    """Sorted python ints; and a guard that no subject is in two parts (the promise of this module)."""
    out = {p: sorted(int(i) for i in idx) for p, idx in split.items()}
    seen: dict[str, str] = {}
    subjects = table["subject_id"].astype(str).to_numpy()
    for p, idx in out.items():
        for s in set(subjects[idx]) if idx else ():
            if s in seen and seen[s] != p:
                raise RuntimeError(f"internal error: subject {s} in parts {seen[s]} and {p}")
            seen[s] = p
    return out


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise FmriInputError(
            f"'{name}' is not a usable split name",
            fix="use letters, digits and _ . + = - (it becomes splits/<name>.json)",
        )
