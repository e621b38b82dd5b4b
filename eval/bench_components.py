"""Whitened or not: how the connectome components should be scaled for a learner that sees them as they are.

    python -m fmrilm.eval.bench_components [--abide ../shared/data/abide] [--folds 5] [--tasks diagnosis,sex]
        [--passes 1,3] [--top 32,64,128,256] [--components N] [--seeds 3] [--exclude-sites A,B] [--probe-c]
        [--crops K] [--crop-fraction F] [--json OUT]

The LLM reads the connectome tokenizer's PCA components through a linear map trained by a few Adam passes,
starting from random: nothing rescales them first. Whitening (each component divided by its own SD, the
default) gives the tail of the tangent-FC spectrum the weight of its top; keeping the relative variance (every
component divided by one number, ``ConnectomeConfig(whiten=False)``) does not, and reading only the leading
components (``scan_summary_components``) drops the tail. Which a few passes learn more from is an empirical
question the information ladder cannot answer: its probes standardize their features. Fit the tokenizer per
fold, as here: a PCA fitted on scans that include the test scans favoured unwhitened components by 0.04 AUC in
a first probe, a gain that vanished once the fit left the test sites out.

This benchmark scores two learners that see the scale, on each leave-sites-out fold of `bench_baselines`
(tokenizer fitted on the fold's training sites only): L2 logistic regression on the components as given (C by
site-grouped CV inside the training sites), and minibatch Adam logistic regression from zero, class-balanced batches of 16, ``--passes`` passes at lr 3e-3 (what one Stage-3 pass resembles),
averaged over ``--seeds``; each scaling also reading only the leading ``--top`` components (the scan summary's
``scan_summary_components``; ``--top`` counts above ``--components`` are skipped). Out-of-site AUC per fold, and
the mean over folds.

``--probe-c`` also scores, on all whitened components (what the scan summary reads), Stage 3's warm-start probe
(`train.probe_init.fit_probe`) with its inner-CV seed 0-4, and logistic regression at each fixed C of the probe's
grid: whether the C the warm start picks, which moves with its seed, changes how well its probe ranks scans.

``--crops K`` asks whether training on the connectome of random stretches of each training scan (K contiguous
crops of ``--crop-fraction`` of its timepoints, a data augmentation whose noise is the scan-length sampling noise
of FC itself) reads unseen sites better: on all whitened components, L2 logistic regression on the whole
training scans plus their crops (C by site-grouped CV, crops in their scan's site group), and the Adam learner
with the same number of steps, each drawn row shown as its whole scan or one of its crops at random (what the
augmentation would do to Stage 3's batches). Test scans are always read whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import fraction, nonnegative_int, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]


def adam_logistic(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    *,
    passes: int,
    seed: int,
    lr: float = 3e-3,
    batch: int = 16,
    views: np.ndarray | None = None,
) -> np.ndarray:
    """Scores of a logistic regression trained from zero by ``passes`` passes of class-balanced Adam steps.

    ``views`` ``(N, V, D)``: other versions of each training row (crops of its scan); each drawn row is then
    shown as itself or one of its views, uniformly, so augmentation costs no extra steps."""
    rng = np.random.default_rng(seed)
    w, b = np.zeros(X.shape[1]), 0.0
    m, v = np.zeros_like(w), np.zeros_like(w)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    options = None if views is None else np.concatenate([X[:, None], views], axis=1)
    for t in range(1, passes * len(y) // batch + 1):
        idx = np.r_[rng.choice(pos, batch // 2), rng.choice(neg, batch // 2)]
        rows = X[idx] if options is None else options[idx, rng.integers(0, options.shape[1], len(idx))]
        p = 1.0 / (1.0 + np.exp(-(rows @ w + b)))
        g = rows.T @ (p - y[idx]) / batch
        b -= lr * float(np.mean(p - y[idx]))
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return X_test @ w


def binary_tasks(
    table: Any, names: str, error: Any
) -> dict[str, tuple[Any, list[str], np.ndarray, np.ndarray]]:
    """Each named two-answer task's card, its two classes (sorted), every row's value as text and a mask of the
    labelled rows; ``error`` (a parser's) names a task with other than two classes in ``table``."""
    from fmrilm.instructions.spec import load_task

    out = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        card = load_task(name)
        column = table[card.target]
        known = column.notna().to_numpy()
        values = column.astype(str).to_numpy()
        classes = sorted(set(values[known].tolist()))
        if len(classes) != 2:
            error(f"--tasks: {name} has {len(classes)} classes here; these benchmarks score two-answer tasks")
        out[name] = (card, classes, values, known)
    return out


def l2_logistic(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """L2 logistic regression on the features as given (no standardizing), C by site-grouped inner CV."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold

    search = GridSearchCV(
        LogisticRegression(max_iter=3000, class_weight="balanced"),
        {"C": np.logspace(-4, 1, 8)},
        scoring="roc_auc",
        cv=GroupKFold(min(5, len(set(groups)))),
    )
    search.fit(X, y, groups=groups)
    return search.decision_function(X_test)


def probe_c_scores(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, groups: np.ndarray, cv_seeds: int = 5
) -> dict[str, np.ndarray]:
    """Test scores of the warm-start probe for each inner-CV seed, and of logistic regression at each C of its
    grid (balanced classes, no standardizing, as the probe fits)."""
    from fmrilm.train.probe_init import PROBE_CS, fit_probe
    from sklearn.linear_model import LogisticRegression

    out = {}
    for seed in range(cv_seeds):
        w, _ = fit_probe(X, y, groups, seed)
        out[f"warm-start probe, CV seed {seed}"] = X_test @ w
    for c in PROBE_CS:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(X, y)
        out[f"logistic, C {c:.2g}"] = model.decision_function(X_test)
    return out


def random_crop(scan: Any, fraction: float, rng: np.random.Generator, min_timepoints: int = 40) -> Any:
    """The scan cut to one random contiguous stretch of ``fraction`` of its timepoints (at least
    ``min_timepoints``, at most all of them)."""
    total = scan.timeseries.shape[0]
    length = min(total, max(min_timepoints, int(round(fraction * total))))
    start = int(rng.integers(0, total - length + 1))
    return dataclasses.replace(scan, timeseries=scan.timeseries[start : start + length])


def crop_views(
    tokenizer: Any, scans: list[Any], rows: list[int], crops: int, fraction: float, seed: int
) -> np.ndarray:
    """``(len(scans), crops, components)``: the components of ``crops`` random crops of each scan in ``rows``
    (zeros elsewhere), through the fold's fitted tokenizer."""
    rng = np.random.default_rng(seed)
    cut = [random_crop(scans[i], fraction, rng) for i in rows for _ in range(crops)]
    out = np.zeros((len(scans), crops, tokenizer.config.components))
    out[np.asarray(rows)] = tokenizer.continuous(cut).reshape(len(rows), crops, -1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument(
        "--folds", type=positive_int, default=5, help="leave-sites-out folds (as bench_baselines)"
    )
    parser.add_argument("--tasks", default="diagnosis,sex", help="binary tasks")
    parser.add_argument("--passes", default="1,3", help="Adam passes to score")
    parser.add_argument(
        "--top",
        default="32,64,128,256",
        help="leading components read (each scaling)",
    )
    parser.add_argument(
        "--components",
        type=positive_int,
        default=None,
        help="PCA components fitted (default: the tokenizer's, lowered to a multiple of 32 below each fold's "
        "training scans, as Stage 1 lowers it)",
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="Adam runs per fold, averaged")
    parser.add_argument(
        "--exclude-sites",
        default="",
        help="sites left out entirely (e.g. the demo's held-out UCLA_1,KKI,OHSU, so a choice is made without them)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument(
        "--probe-c",
        action="store_true",
        help="also score the warm-start probe over its CV seeds and at each fixed C (all whitened components)",
    )
    parser.add_argument(
        "--crops",
        type=nonnegative_int,
        default=0,
        help="also train on K random contiguous crops of each training scan (all whitened components)",
    )
    parser.add_argument(
        "--crop-fraction", type=fraction, default=0.7, help="share of a scan's timepoints in each crop"
    )
    parser.add_argument(
        "--standardize",
        action="store_true",
        help="z-score the tangent features before the PCA, as the tokenizer now does by default (off: raw "
        "features, as this benchmark's recorded figures were measured; bench_connectome_features compares both)",
    )
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from fmrilm.eval.bench_baselines import import_abide, site_folds
    from sklearn.metrics import roc_auc_score

    from fmrilm.splits import leave_sites_out_split
    from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer, one_blas_thread

    cohort = import_abide(args.abide)
    if cohort is None:
        return 2
    excluded = [x.strip() for x in args.exclude_sites.split(",") if x.strip()]
    if excluded:
        keep = ~cohort.phenotype_table()["site"].astype(str).isin(excluded).to_numpy()
        cohort = cohort.select(np.flatnonzero(keep).tolist())
    table = cohort.phenotype_table()
    sites = table["site"].astype(str).to_numpy()
    scans = [cohort.scan(i) for i in range(len(cohort))]
    passes = [int(p) for p in args.passes.split(",")]
    tops = [int(t) for t in args.top.split(",")]
    labels = {
        name: ((values == classes[0]).astype(int), known)
        for name, (_, classes, values, known) in binary_tasks(table, args.tasks, parser.error).items()
    }
    results: dict[str, dict[str, list[float]]] = {}
    for k, test_sites in enumerate(site_folds(table, args.folds, args.seed)):
        t0 = time.perf_counter()
        split = leave_sites_out_split(cohort, test_sites=test_sites)
        config = ConnectomeConfig(seed=args.seed)
        room = config.components_supported(len(split["train"]))
        wanted = args.components or min(config.components, room)
        if wanted > room:
            parser.error(f"--components {wanted}: fold {k + 1} has {len(split['train'])} training scans")
        config = ConnectomeConfig(
            components=wanted, seed=args.seed, whiten=True, standardize=args.standardize
        )
        tok = ConnectomeTokenizer.fit([scans[i] for i in split["train"]], config)
        with one_blas_thread():
            tangent = np.stack([tok.tangent_vector(tok.reference_timeseries(s)) for s in scans])
        whitened = tok.components_of(tangent)
        if args.crops:
            crop_components = crop_views(
                tok, scans, split["train"], args.crops, args.crop_fraction, args.seed
            )
        scale = tok.pca_scale.numpy()
        kept = whitened * scale / np.sqrt(np.mean(scale**2))  # what ConnectomeConfig(whiten=False) gives
        train, test = np.asarray(split["train"]), np.asarray(split["test"])
        for name, (y, known) in labels.items():
            tr, te = train[known[train]], test[known[test]]
            variants = [
                (n, t, Z)
                for n, Z in (("whitened", whitened), ("relative variance", kept))
                for t in tops
                if t <= Z.shape[1]
            ]
            for scaling, top, Z in variants:
                Z = Z[:, :top]
                key = f"{name} | {scaling}, top {top}"
                scores = {"L2 logistic (C by CV)": l2_logistic(Z[tr], y[tr], Z[te], sites[tr])}
                for p in passes:
                    runs = [adam_logistic(Z[tr], y[tr], Z[te], passes=p, seed=s) for s in range(args.seeds)]
                    scores[f"Adam, {p} pass{'es' if p > 1 else ''}"] = runs
                for learner, s in scores.items():
                    runs = s if isinstance(s, list) else [s]
                    auc = float(np.mean([roc_auc_score(y[te], r) for r in runs]))
                    results.setdefault(key, {}).setdefault(learner, []).append(auc)
            if args.crops:
                key = f"{name} | whitened, all"
                crops = crop_components[tr]  # (n, K, components)
                augmented = {
                    f"L2 logistic, whole + {args.crops} crops": l2_logistic(
                        np.concatenate([whitened[tr], crops.reshape(-1, crops.shape[-1])]),
                        np.r_[y[tr], np.repeat(y[tr], args.crops)],
                        whitened[te],
                        np.r_[sites[tr], np.repeat(sites[tr], args.crops)],
                    ),
                    "L2 logistic, whole scans": l2_logistic(whitened[tr], y[tr], whitened[te], sites[tr]),
                }
                for p in passes:
                    for shown, views in (
                        ("whole scans", None),
                        (f"a crop or the whole ({args.crops})", crops),
                    ):
                        augmented[f"Adam, {p} pass{'es' if p > 1 else ''}, {shown}"] = [
                            adam_logistic(whitened[tr], y[tr], whitened[te], passes=p, seed=s, views=views)
                            for s in range(args.seeds)
                        ]
                for learner, s in augmented.items():
                    runs = s if isinstance(s, list) else [s]
                    auc = float(np.mean([roc_auc_score(y[te], r) for r in runs]))
                    results.setdefault(key, {}).setdefault(learner, []).append(auc)
            if args.probe_c:
                for learner, r in probe_c_scores(whitened[tr], y[tr], whitened[te], sites[tr]).items():
                    key = f"{name} | whitened, all"
                    results.setdefault(key, {}).setdefault(learner, []).append(float(roc_auc_score(y[te], r)))
        print(
            f"fold {k + 1} ({','.join(test_sites)}): {len(train)} training scans, {wanted} components, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    print("\nout-of-site AUC: mean over folds (per fold)")
    for key, learners in results.items():
        for learner, aucs in learners.items():
            print(f"{key:42s} {learner:24s} {np.mean(aucs):.3f}  ({' '.join(f'{a:.2f}' for a in aucs)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
