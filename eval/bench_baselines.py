"""Benchmark: the FC baselines on ABIDE with leave-sites-out splits of the development sites.

    python -m fmrilm.eval.bench_baselines [--abide ../shared/data/abide] [--folds 5] [--json OUT.json]
                                          [--report DIR] [--threads 1] [--no-speed]

The 14 development sites are dealt into ``--folds`` groups of whole sites (balanced by scan count); each
group is held out once (``fmrilm.splits.leave_sites_out_split``), so every scan is predicted by a model that
never saw its site. Per task — autism (diagnosis), sex, age — and per fold: Fisher-z FC (upper triangle) +
standardization + LogisticRegressionCV (balanced class weights) / RidgeCV, hyperparameters chosen by
cross-validation grouped by site inside the training sites; a demographics-only model (age + sex, minus the
target); and the floor (training class frequencies / training mean). Printed: mean and SD over folds, the
pooled out-of-site predictions with a bootstrap interval, and ratios against the floor run in the same
process. ``--speed`` (default on) also times one fold's autism fit with and without the row-space rotation
(same predictions) to report the speed-up.

The ABIDE README's reference figures (autism balanced accuracy ~0.70, AUC ~0.77; sex AUC ~0.70; age MAE ~4.3
vs 4.9-5.1 for the training mean) were measured by training on these 14 sites and testing on 6 other sites
that are not in the folder, so they are a guide, not the same test set.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fmrilm.safety import nonnegative_int, positive_int

TASKS = ("diagnosis", "sex", "age")
REPO_ROOT = Path(__file__).resolve().parents[1]


def import_abide(folder: str | Path):
    """The shared ABIDE folder (CC200 scans, phenotypes, shipped value mapping) as a cohort, the way every
    ABIDE benchmark reads it; None, with a line on stderr, when the folder is not there."""
    from fmrilm.cohort_import import import_cohort

    folder = Path(folder)
    if not (folder / "phenotypes.csv").exists():
        print(f"ABIDE folder not found at {folder}", file=sys.stderr)
        return None
    return import_cohort(
        folder / "phenotypes.csv",
        atlas=folder / "cc200_centroids.csv",
        npz=folder / "timeseries_cc200.npz",
        mapping="abide",
        progress=False,
    )


def site_folds(table, n_folds: int, seed: int = 0) -> list[list[str]]:
    """Whole sites dealt into ``n_folds`` groups of similar scan count (largest site first, seeded ties)."""
    counts = table["site"].value_counts()
    rng = np.random.default_rng(seed)
    order = sorted(counts.index, key=lambda s: (-counts[s], rng.random()))
    groups: list[list[str]] = [[] for _ in range(n_folds)]
    sizes = [0] * n_folds
    for site in order:
        i = int(np.argmin(sizes))
        groups[i].append(str(site))
        sizes[i] += int(counts[site])
    return [sorted(g) for g in groups]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument("--folds", type=positive_int, default=5)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="BLAS threads (1 is polite on a shared machine)"
    )
    parser.add_argument("--json", help="write all figures to this JSON file")
    parser.add_argument("--report", help="also write a Markdown/PNG report of the pooled predictions here")
    parser.add_argument("--no-speed", action="store_true", help="skip timing the fit without the rotation")
    parser.add_argument("--n-boot", type=positive_int, default=1000)
    args = parser.parse_args(argv)

    from fmrilm.eval.baselines import demographics_baseline, fc_features, floor_baseline, linear_probe
    from fmrilm.eval.metrics import evaluate
    from fmrilm.eval.report import MethodResult, write_report
    from fmrilm.instructions.spec import load_task
    from threadpoolctl import threadpool_limits

    from fmrilm.splits import leave_sites_out_split

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # nanmean of the floor's all-NaN Pearson r
    threadpool_limits(args.threads)
    t0 = time.perf_counter()
    cohort = import_abide(args.abide)
    if cohort is None:
        return 2
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    fc = fc_features(cohort, progress=True)
    t_fc = time.perf_counter() - t0
    table = cohort.phenotype_table()
    tasks = {t: load_task(t) for t in TASKS}
    folds = site_folds(table, args.folds, args.seed)
    print(
        f"ABIDE: {len(cohort)} scans, {table['site'].nunique()} sites; import {t_import:.1f} s, FC {t_fc:.1f} s"
    )
    print(f"{args.folds} leave-sites-out folds: " + " | ".join(",".join(f) for f in folds))

    runs: dict[tuple[str, str], list[MethodResult]] = {}
    fit_seconds: dict[str, float] = {}
    speed = None
    for k, test_sites in enumerate(folds):
        split = leave_sites_out_split(cohort, test_sites=test_sites)
        for name, task in tasks.items():
            t0 = time.perf_counter()
            fc_res = linear_probe(
                fc, table, task, split, method="fc_linear", inner_groups="site", seed=args.seed
            )
            fit_seconds[name] = fit_seconds.get(name, 0.0) + time.perf_counter() - t0
            demo = demographics_baseline(table, task, split, seed=args.seed)
            floor = floor_baseline(table, task, split)
            for r in [*fc_res, *demo, *floor]:
                r.info["fold"] = k
                r.info["test_sites"] = test_sites
                runs.setdefault((name, r.method), []).append(r.score(n_boot=args.n_boot, seed=args.seed))
        if k == 0 and not args.no_speed:
            t0 = time.perf_counter()
            (fast,) = linear_probe(fc, table, tasks["diagnosis"], split, inner_groups="site", seed=args.seed)
            t_fast = time.perf_counter() - t0
            t0 = time.perf_counter()
            (slow,) = linear_probe(
                fc, table, tasks["diagnosis"], split, inner_groups="site", seed=args.seed, rotate=False
            )
            t_slow = time.perf_counter() - t0
            diff = float(np.abs(np.asarray(fast.y_score) - np.asarray(slow.y_score)).max())
            speed = {
                "rotated_s": t_fast,
                "plain_s": t_slow,
                "speedup": t_slow / t_fast,
                "max_prob_diff": diff,
            }
        print(f"fold {k + 1}/{len(folds)} done (test sites {','.join(test_sites)})", flush=True)

    figures: dict[str, dict] = {}
    pooled_results: list[MethodResult] = []
    for (task, method), rs in runs.items():
        metric_names = list(rs[0].metrics)
        per_fold = {m: [r.metrics[m]["value"] for r in rs] for m in metric_names}
        pooled = MethodResult.pooled(rs)
        pooled.metrics = evaluate(
            "regression" if pooled.task_type == "regression" else "classification",
            pooled.y_true,
            y_score=pooled.y_score,
            classes=pooled.classes,
            y_pred=pooled.y_pred,
            groups=pooled.subject_ids,
            n_boot=args.n_boot,
            seed=args.seed,
        )
        pooled_results.append(pooled)
        figures[f"{task}/{method}"] = {
            "fold_mean": {m: float(np.nanmean(v)) for m, v in per_fold.items()},
            "fold_sd": {m: float(np.nanstd(v, ddof=1)) for m, v in per_fold.items()},
            "per_fold": per_fold,
            "pooled": pooled.metrics,
            "n": pooled.n,
        }

    print()
    print("| task | method | metric | mean over folds (SD) | pooled out-of-site [95% CI] | vs floor |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task in TASKS:
        floor_name = "train_mean" if tasks[task].type == "regression" else "prior"
        metrics = ("mae", "pearson_r") if tasks[task].type == "regression" else ("balanced_accuracy", "auc")
        for method in ("fc_linear", "demographics", floor_name):
            if f"{task}/{method}" not in figures:
                continue
            f = figures[f"{task}/{method}"]
            for m in metrics:
                p = f["pooled"][m]
                base = figures[f"{task}/{floor_name}"]["fold_mean"][m]
                if m == "mae":
                    ratio = f"{f['fold_mean'][m] / base:.2f}x MAE"
                elif m in ("balanced_accuracy", "auc"):
                    ratio = f"{f['fold_mean'][m] - base:+.3f}"
                else:
                    ratio = ""
                print(
                    f"| {task} | {method} | {m} | {f['fold_mean'][m]:.3f} ({f['fold_sd'][m]:.3f}) | "
                    f"{p['value']:.3f} [{p['low']:.3f}, {p['high']:.3f}] | {ratio} |"
                )
    print()
    for task in TASKS:
        print(f"FC fit time, {task}: {fit_seconds[task] / len(folds):.1f} s per fold")
    if speed:
        print(
            f"Row-space rotation: autism fit {speed['rotated_s']:.1f} s vs {speed['plain_s']:.1f} s on the raw "
            f"19,900 features = {speed['speedup']:.1f}x faster; max probability difference {speed['max_prob_diff']:.1e}"
        )
    record = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads,
        "n_scans": len(cohort),
        "folds": folds,
        "import_s": t_import,
        "fc_s": t_fc,
        "fit_s_per_fold": {t: s / len(folds) for t, s in fit_seconds.items()},
        "rotation_speed": speed,
        "figures": figures,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    if args.report:
        write_report(
            pooled_results,
            args.report,
            title="ABIDE baselines, leave-sites-out (pooled out-of-site predictions)",
            context={
                "folds": [",".join(f) for f in folds],
                "command": "python -m fmrilm.eval.bench_baselines",
            },
            n_boot=args.n_boot,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
