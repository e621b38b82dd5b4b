"""Benchmark: a trained fmrilm model on ABIDE, leave-sites-out, next to the FC baseline on the same splits.

    python -m fmrilm.eval.bench_abide_model --model DIR [--abide ../shared/data/abide] [--cohort DIR]
        [--tasks diagnosis,sex,age] [--folds 5] [--max-folds N] [--shots 0,4,16] [--seeds 3] [--steps 20]
        [--threads 1] [--json OUT.json] [--out DIR] [--test-sites UCLA_1,KKI,OHSU]

Only sites the model never saw in any training stage give honest figures. A model trained by `fmrilm demo`
saw every ABIDE site but its held-out trio (UCLA_1, KKI, OHSU): evaluate it with ``--test-sites`` set to those,
which runs that one leave-sites-out fold (train part = the other 11 sites, for few-shot draws and for the FC
baseline). The ``--folds`` mode is for a model that never saw ABIDE at all (e.g. trained on another cohort).

The 14 development sites are dealt into ``--folds`` groups of whole sites exactly as `bench_baselines` deals
them (same seed, same groups), so the FC figures here are directly comparable with BENCHMARKS.md's Baselines
section. For each fold (``--max-folds`` limits how many are run, e.g. 1 for a quick look) and task, one
`fmrilm.eval.evaluate` run scores, on the held-out sites: the model zero-shot, the model after few-shot LoRA
fine-tuning on k subjects per class from the training sites (``--seeds`` draws each), the FC baseline
(Fisher-z FC + LogisticRegressionCV / RidgeCV, hyperparameters chosen by CV grouped by site), the linear
probe on the model's tokenizer codes, demographics and the floor. FC and code features are computed once and
shared by every fold and task (they are per-scan transforms, so nothing leaks).

Printed: per task, method and k, the mean over folds (and seeds) with its SD, the pooled out-of-site
predictions with a bootstrap / over-seed interval, and the difference to ``fc_linear`` run in the same process
(balanced accuracy and AUC: model minus FC; MAE: model / FC). Per-fold reports go to ``--out``/TASK/foldN and
the pooled report to ``--out``/pooled.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from fmrilm.eval.evaluate import CODE_FEATURES

from fmrilm.safety import nonnegative_int, positive_float, positive_int

TASKS = ("diagnosis", "sex", "age")
REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", help="trained fmrilm model folder (Stage 3 output); without it, nothing runs"
    )
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument(
        "--cohort", help="an already imported ABIDE cohort folder (imported into --out if absent)"
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--folds", type=positive_int, default=5)
    parser.add_argument("--max-folds", type=positive_int, default=None, help="run only the first N folds")
    parser.add_argument(
        "--test-sites",
        default=None,
        help="comma-separated sites the model never saw: one fold with exactly these as its test part "
        "(use the demo's UCLA_1,KKI,OHSU for a demo-trained model); overrides --folds",
    )
    parser.add_argument("--shots", default="0,4,16", help="0 = zero-shot; k = k subjects per class")
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--steps", type=positive_int, default=20, help="optimizer steps per few-shot run")
    parser.add_argument("--lr", type=positive_float, default=5e-4)
    parser.add_argument(
        "--full", action="store_true", help="also fine-tune on every training-site subject (full fine-tuning)"
    )
    parser.add_argument(
        "--full-steps", type=positive_int, default=200, help="optimizer steps of the full fine-tune"
    )
    parser.add_argument("--code-features", default="auto", choices=CODE_FEATURES)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch and BLAS threads")
    parser.add_argument("--n-boot", type=positive_int, default=1000)
    parser.add_argument("--out", default="bench_abide_model", help="reports (per fold and pooled)")
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    if not args.model:  # `fmrilm bench` runs every benchmark with no arguments: say why this one does not
        print("bench_abide_model skipped: it evaluates a trained model; pass --model DIR (a Stage-3 output)")
        return 0

    import torch
    from fmrilm.eval.baselines import fc_features
    from fmrilm.eval.bench_baselines import site_folds
    from fmrilm.eval.evaluate import EvalConfig, code_features, evaluate
    from fmrilm.eval.report import MethodResult, aggregate_seeds, write_report
    from fmrilm.train.stage3 import resolve_model_dir
    from threadpoolctl import threadpool_limits

    from fmrilm.cohort import load_cohort
    from fmrilm.cohort_import import import_cohort
    from fmrilm.model.modeling import FmriLM

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    threadpool_limits(args.threads)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    abide = Path(args.abide)
    cohort_dir = Path(args.cohort) if args.cohort else out / "abide_cohort"
    t0 = time.perf_counter()
    if not (cohort_dir / "cohort.json").exists():
        if not (abide / "phenotypes.csv").exists():
            print(f"ABIDE folder not found at {abide}", file=sys.stderr)
            return 2
        import_cohort(
            abide / "phenotypes.csv",
            atlas=abide / "cc200_centroids.csv",
            npz=abide / "timeseries_cc200.npz",
            mapping="abide",
            out=cohort_dir,
            progress=False,
        )
    cohort = load_cohort(cohort_dir)
    table = cohort.phenotype_table()
    t_import = time.perf_counter() - t0

    t0 = time.perf_counter()
    fc = fc_features(cohort, progress=True)
    t_fc = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = FmriLM.from_pretrained(resolve_model_dir(args.model))
    codes = code_features(model.fmri_tokenizer, cohort, args.code_features, progress=True)
    del model
    t_codes = time.perf_counter() - t0

    if args.test_sites:
        test_sites = tuple(s.strip() for s in args.test_sites.split(",") if s.strip())
        unknown = sorted(set(test_sites) - set(table["site"].astype(str)))
        if unknown:
            print(f"--test-sites: {unknown} are not ABIDE sites of {cohort_dir}", file=sys.stderr)
            return 2
        folds = run_folds = [test_sites]
    else:
        folds = site_folds(table, args.folds, args.seed)
        run_folds = folds[: args.max_folds] if args.max_folds else folds
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    shots = [int(k) for k in args.shots.split(",") if k.strip()]
    print(f"ABIDE: {len(cohort)} scans; import {t_import:.1f} s, FC {t_fc:.1f} s, codes {t_codes:.1f} s")
    print(
        f"{len(run_folds)} of {len(folds)} leave-sites-out folds: "
        + " | ".join(",".join(f) for f in run_folds)
    )

    per_run: dict[tuple, list[MethodResult]] = defaultdict(list)  # (task, method, shots, seed) -> per fold
    seconds: dict[str, float] = defaultdict(float)
    for f, test_sites in enumerate(run_folds):
        for task in tasks:
            cfg = EvalConfig(
                model=args.model,
                cohort=str(cohort_dir),
                task=task,
                out=str(out / task / f"fold{f}"),
                split="leave-sites-out",
                test_sites=list(test_sites),
                shots=shots,
                seeds=args.seeds,
                seed=args.seed,
                steps=args.steps,
                lr=args.lr,
                full=args.full,
                full_steps=args.full_steps,
                code_features=args.code_features,
                n_boot=args.n_boot,
                threads=args.threads,
                progress=False,
            )
            t0 = time.perf_counter()
            run = evaluate(cfg, fc=fc, codes=codes)
            seconds[task] += time.perf_counter() - t0
            for r in run.results:
                r.info["fold"] = f
                per_run[(task, r.method, r.shots, r.seed)].append(r)
            print(f"fold {f + 1}/{len(run_folds)} {task}: {time.perf_counter() - t0:.0f} s", flush=True)

    pooled: list[MethodResult] = []
    fold_values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (task, method, k, _seed), rs in per_run.items():
        p = MethodResult.pooled(rs)
        pooled.append(p.score(n_boot=args.n_boot, seed=args.seed))
        for r in rs:
            for m, v in r.metrics.items():
                fold_values[(task, method, k)][m].append(v["value"])
    agg = aggregate_seeds(pooled)
    write_report(
        pooled,
        out / "pooled",
        title="fmrilm on ABIDE, leave-sites-out (pooled out-of-site predictions)",
        context={
            "folds": [",".join(f) for f in run_folds],
            "model": args.model,
            "command": " ".join(sys.argv),
        },
        n_boot=args.n_boot,
    )

    figures: dict[str, dict] = {}
    print()
    print("| task | method | k | metric | mean over folds (SD) | pooled [95% CI] | vs fc_linear |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for task in tasks:
        regression = any(p.task_type == "regression" for p in pooled if p.task == task)
        metrics = ("mae", "pearson_r") if regression else ("balanced_accuracy", "auc")
        keys = sorted({(m, k) for (t, m, k) in fold_values if t == task}, key=lambda mk: (mk[0], mk[1] or -1))
        for method, k in keys:
            vals = fold_values[(task, method, k)]
            a = agg[(task, method, k)]
            for m in metrics:
                mean, sd = (
                    float(np.nanmean(vals[m])),
                    float(np.nanstd(vals[m], ddof=1)) if len(vals[m]) > 1 else 0.0,
                )
                if a["n_seeds"] > 1:
                    pooled_text = f"{a[m]['mean']:.3f} [{a[m]['low']:.3f}, {a[m]['high']:.3f}] over seeds"
                else:
                    single = next(
                        p for p in pooled if (p.task, p.method, p.shots) == (task, method, k)
                    ).metrics[m]
                    pooled_text = f"{single['value']:.3f} [{single['low']:.3f}, {single['high']:.3f}]"
                base = float(np.nanmean(fold_values[(task, "fc_linear", None)][m]))
                if m == "mae":
                    ratio = f"{mean / base:.2f}x MAE"
                elif m in ("balanced_accuracy", "auc"):
                    ratio = f"{mean - base:+.3f}"
                else:
                    ratio = ""
                kk = "—" if k is None else str(k)
                print(f"| {task} | {method} | {kk} | {m} | {mean:.3f} ({sd:.3f}) | {pooled_text} | {ratio} |")
                figures[f"{task}/{method}/{kk}/{m}"] = {"fold_mean": mean, "fold_sd": sd, "vs_fc": ratio}
    print()
    for task in tasks:
        print(f"evaluation wall time, {task}: {seconds[task] / len(run_folds):.0f} s per fold")
    if args.json:
        record = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "threads": args.threads,
            "model": args.model,
            "folds": run_folds,
            "shots": shots,
            "seeds": args.seeds,
            "steps": args.steps,
            "import_s": t_import,
            "fc_s": t_fc,
            "codes_s": t_codes,
            "eval_s_per_fold": {t: s / len(run_folds) for t, s in seconds.items()},
            "figures": figures,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
