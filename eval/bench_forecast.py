"""Benchmark: forecasting held-out ABIDE scans (BrainLM's protocol, scaled to ABIDE) next to simple baselines.

    python -m fmrilm.eval.bench_forecast [--abide ../shared/data/abide] [--context-s 96] [--horizon 10]
                                         [--test-sites UCLA_1,KKI,OHSU] [--ar-order 3] [--var-order 2]
                                         [--model DIR] [--max-test-scans N] [--threads 1] [--json OUT.json]

Protocol. Scans of the test sites (leave-sites-out: no subject or scanner of theirs is seen in training) give
their first ``--context-s`` seconds as context and the following ``--horizon`` samples as targets, at the
scan's own TR (UCLA_1 3 s, KKI and OHSU 2.5 s). Nothing is resampled across the context's end: resampling a
whole scan first would let the filter carry future samples into the context (and interpolation inflates the
lag-1 autocorrelation: 0.14 native vs 0.53 after 3 s -> 2 s on UCLA_1). Each region is z-scored with the mean
and SD of its own context, so nothing about the future leaks in and the context mean is 0; bad (all-zero)
regions are left out of every figure. For each test TR the baselines are fitted on the training sites' scans
at that TR (native, or downsampled; scans with a longer TR are not upsampled), each z-scored whole:

- ``mean``: the context mean (0 in these units) for every horizon;
- ``last``: the last context value;
- ``ar``: a per-region AR(p) model (least squares with intercept, one set of coefficients per region, pooled
  over training scans), iterated for horizons beyond 1;
- ``var``: a ridge VAR(p) (scikit-learn ``RidgeCV`` on the lagged values of every region, alpha by efficient
  leave-one-out on training rows), iterated;
- ``model`` (with ``--model``): ``FmriLM.forecast`` on the context alone resampled to the model's TR (its last
  whole windows), interpolated back to the native target times, in the model's standardised units.

Metrics per horizon h (pooled over test scans and their usable regions): R² = 1 - SSE / SST with SST about
each region's mean target across test scans (so a forecast that knows the population mean of the future
scores 0), Pearson r between forecast and target, and MSE. BrainLM reports R² 0.086 (r 0.280) on UK Biobank
for 20 timepoints after 180: a reference, not a same-data comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import nonnegative_int, positive_float, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_SITES = ("UCLA_1", "KKI", "OHSU")
BASELINES = ("mean", "last", "ar", "var")


# ---------------------------------------------------------------------------------------------- data
def zscore(ts: np.ndarray, reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``ts`` z-scored per region with the statistics of ``reference`` (default: itself), and the usable mask."""
    ref = ts if reference is None else reference
    mean, sd = ref.mean(axis=0), ref.std(axis=0)
    usable = sd > 1e-8
    return (ts - mean) / np.where(usable, sd, 1.0) * usable, usable


def split_context(ts: np.ndarray, context: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(context z-scored, targets (horizon, R) in the same units, usable regions)``."""
    ctx, target = ts[:context], ts[context : context + horizon]
    z_ctx, usable = zscore(ctx)
    z_target, _ = zscore(target, ctx)
    return z_ctx, z_target, usable


# ------------------------------------------------------------------------------------------- baselines
def lagged(series: Sequence[np.ndarray], p: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[x(t-1), ..., x(t-p)]`` (lag-major, ``(n, p * R)``) and targets ``x(t)`` ``(n, R)``."""
    xs, ys = [], []
    for ts in series:
        n = len(ts)
        if n <= p:
            continue
        xs.append(np.concatenate([ts[p - k - 1 : n - k - 1] for k in range(p)], axis=1))
        ys.append(ts[p:])
    return np.concatenate(xs), np.concatenate(ys)


class ARModel:
    """Per-region AR(p) with intercept: ``x_r(t) = c_r + sum_k a_{r,k} x_r(t-k)``."""

    def __init__(self, p: int = 3) -> None:
        self.p = int(p)

    def fit(self, series: Sequence[np.ndarray]) -> ARModel:
        from threadpoolctl import threadpool_limits

        x, y = lagged(series, self.p)  # (n, p*R), (n, R)
        r = y.shape[1]
        lags = x.reshape(len(x), self.p, r)  # [n, k, region]
        self.coef = np.zeros((r, self.p))
        self.intercept = np.zeros(r)
        with threadpool_limits(1):
            for j in range(r):
                design = np.column_stack([np.ones(len(x)), lags[:, :, j]])
                sol, *_ = np.linalg.lstsq(design, y[:, j], rcond=None)
                self.intercept[j], self.coef[j] = sol[0], sol[1:]
        return self

    def step(self, history: np.ndarray) -> np.ndarray:
        recent = history[::-1][: self.p]  # (p, R): x(t-1), x(t-2), ...
        return self.intercept + (self.coef.T * recent).sum(axis=0)


class RidgeVAR:
    """VAR(p) on every region's lags, fitted with scikit-learn ``RidgeCV`` (efficient leave-one-out alpha)."""

    def __init__(self, p: int = 2, alphas: Sequence[float] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)) -> None:
        self.p, self.alphas = int(p), tuple(alphas)

    def fit(self, series: Sequence[np.ndarray], max_rows: int = 40_000, seed: int = 0) -> RidgeVAR:
        from sklearn.linear_model import RidgeCV
        from threadpoolctl import threadpool_limits

        x, y = lagged(series, self.p)
        if len(x) > max_rows:  # a seeded subsample: the fit stays a few seconds on one thread
            keep = np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))
            x, y = x[keep], y[keep]
        with threadpool_limits(1):
            self.model = RidgeCV(alphas=list(self.alphas)).fit(x.astype(np.float64), y.astype(np.float64))
        self.alpha = float(self.model.alpha_)
        return self

    def step(self, history: np.ndarray) -> np.ndarray:
        row = history[::-1][: self.p].reshape(1, -1)  # lag-major, as in `lagged`
        return self.model.predict(row)[0]


def iterate(model: Any, context: np.ndarray, horizon: int) -> np.ndarray:
    """Recursive multi-step forecast ``(horizon, R)``: each prediction is appended and used as a lag."""
    history = np.array(context, dtype=np.float64, copy=True)
    out = []
    for _ in range(horizon):
        nxt = model.step(history)
        out.append(nxt)
        history = np.vstack([history, nxt[None]])
    return np.stack(out)


def baseline_forecasts(
    name: str, contexts: Sequence[np.ndarray], horizon: int, fitted: dict[str, Any]
) -> np.ndarray:
    """``(n_scans, horizon, R)`` forecasts of one baseline."""
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(1):
        for ctx in contexts:
            if name == "mean":
                out.append(np.repeat(ctx.mean(axis=0)[None], horizon, axis=0))
            elif name == "last":
                out.append(np.repeat(ctx[-1][None], horizon, axis=0))
            else:
                out.append(iterate(fitted[name], ctx, horizon))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------- metrics
def horizon_metrics(pred: np.ndarray, target: np.ndarray, usable: np.ndarray) -> list[dict[str, float]]:
    """Per horizon: pooled R², Pearson r and MSE over scans x usable regions.

    ``pred``/``target`` are ``(n_scans, horizon, R)``, ``usable`` ``(n_scans, R)``. R²'s SST is taken about each
    region's mean target across the test scans at that horizon.
    """
    rows = []
    w = usable.astype(np.float64)
    for h in range(target.shape[1]):
        y, f = target[:, h], pred[:, h]
        count = w.sum(axis=0)
        region_mean = (y * w).sum(axis=0) / np.maximum(count, 1.0)
        sse = float((((y - f) ** 2) * w).sum())
        sst = float((((y - region_mean) ** 2) * w).sum())
        mask = usable.astype(bool)
        yy, ff = y[mask], f[mask]
        r = float(np.corrcoef(yy, ff)[0, 1]) if ff.std() > 1e-12 and yy.std() > 1e-12 else float("nan")
        rows.append({"h": h + 1, "r2": 1.0 - sse / sst, "r": r, "mse": sse / float(w.sum())})
    return rows


# ------------------------------------------------------------------------------------------------- runs
def fit_baselines(train: Sequence[np.ndarray], ar_order: int = 3, var_order: int = 2, seed: int = 0) -> dict:
    """AR and ridge VAR fitted on training signals (each z-scored whole), with their fit times."""
    train_z = [zscore(ts)[0] for ts in train]
    fitted: dict[str, Any] = {"fit_s": {}}
    t0 = time.perf_counter()
    fitted["ar"] = ARModel(ar_order).fit(train_z)
    fitted["fit_s"]["ar"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted["var"] = RidgeVAR(var_order).fit(train_z, seed=seed)
    fitted["fit_s"]["var"] = time.perf_counter() - t0
    return fitted


def run_benchmark(
    train: Sequence[np.ndarray],
    test: Sequence[np.ndarray],
    *,
    context: int,
    horizon: int,
    ar_order: int = 3,
    var_order: int = 2,
    extra: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the baselines on ``train`` and score every forecast of ``test`` (all signals at one TR).

    ``extra`` adds forecasts made elsewhere (``(n_test, >= horizon, R)``, e.g. the model's, in the units of
    `split_context`). Returns ``{"metrics": {method: [per-horizon dicts]}, "fit_s": ..., "var_alpha": ...}``.
    """
    too_short = [i for i, ts in enumerate(test) if len(ts) < context + horizon]
    if too_short:
        raise ValueError(f"{len(too_short)} test scans are shorter than context + horizon")
    fitted = fit_baselines(train, ar_order, var_order, seed)
    parts = [split_context(ts, context, horizon) for ts in test]
    contexts = [p[0] for p in parts]
    targets = np.stack([p[1] for p in parts])
    usable = np.stack([p[2] for p in parts])
    metrics = {}
    for name in BASELINES:
        metrics[name] = horizon_metrics(baseline_forecasts(name, contexts, horizon, fitted), targets, usable)
    for name, pred in (extra or {}).items():
        metrics[name] = horizon_metrics(np.asarray(pred)[:, :horizon], targets, usable)
    return {
        "metrics": metrics,
        "fit_s": fitted["fit_s"],
        "var_alpha": fitted["var"].alpha,
        "n_test": len(test),
    }


def model_forecast(model: Any, scan: Any, context: np.ndarray, horizon: int) -> np.ndarray:
    """``FmriLM.forecast`` from a native-TR context (z-scored), at the scan's native TR: ``(horizon, R)``.

    The context alone is resampled to the model's TR (nothing after it is seen), its last whole windows are
    given to ``model.forecast``, and the generated signal (model TR) is interpolated linearly, from the last
    context value on, at the native target times.
    """
    from dataclasses import replace

    from fmrilm.signal import resample

    model_tr = float(model.processor.config.target_tr or scan.tr)
    window = int(model.processor.config.window_length)
    ctx = resample(context, float(scan.tr), model_tr) if not np.isclose(scan.tr, model_tr) else context
    n_windows = max(1, len(ctx) // window)
    ctx = ctx[-n_windows * window :]
    need = math.ceil(horizon * float(scan.tr) / model_tr) + 1
    windows = max(1, math.ceil(need / window))
    ctx_scan = replace(scan, timeseries=ctx.astype(np.float32), tr=model_tr, flags={})
    generated = np.asarray(model.forecast(ctx_scan, windows=windows).timeseries, dtype=np.float64)
    times = np.concatenate([[0.0], model_tr * np.arange(1, len(generated) + 1)])
    values = np.vstack([context[-1:], generated])
    wanted = float(scan.tr) * np.arange(1, horizon + 1)
    return np.column_stack([np.interp(wanted, times, values[:, j]) for j in range(values.shape[1])])


def print_table(result: dict[str, Any], horizons: Sequence[int]) -> None:
    methods = list(result["metrics"])
    print("| method | " + " | ".join(f"h={h} R² / r / MSE" for h in horizons) + " |")
    print("| --- |" + " --- |" * len(horizons))
    for name in methods:
        cells = []
        for h in horizons:
            m = result["metrics"][name][h - 1]
            r = "n/a" if not math.isfinite(m["r"]) else f"{m['r']:.3f}"
            cells.append(f"{m['r2']:.3f} / {r} / {m['mse']:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def native(scan: Any) -> np.ndarray:
    """A scan's signal at its own TR, bad regions repaired to 0, float64, not standardised."""
    from fmrilm.signal import BadRegionWarning, SignalConfig, preprocess

    config = SignalConfig(target_tr=None, detrend=False, standardize=False, min_timepoints=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRegionWarning)
        return np.asarray(preprocess(scan, config).timeseries, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument("--test-sites", default=",".join(TEST_SITES), help="comma-separated held-out sites")
    parser.add_argument("--context-s", type=positive_float, default=96.0, help="context length in seconds")
    parser.add_argument(
        "--horizon", type=positive_int, default=10, help="forecast samples (native TR) after the context"
    )
    parser.add_argument("--ar-order", type=positive_int, default=3)
    parser.add_argument("--var-order", type=positive_int, default=2)
    parser.add_argument("--model", metavar="DIR", help="also forecast with this saved FmriLM")
    parser.add_argument(
        "--max-test-scans", type=positive_int, help="score only the first N test scans (all methods)"
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads for the model's forecasts"
    )
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)

    from fmrilm.eval.bench_baselines import import_abide
    from threadpoolctl import threadpool_limits

    from fmrilm.signal import resample

    warnings.filterwarnings("ignore", category=UserWarning)
    abide = Path(args.abide)
    if not (abide / "phenotypes.csv").exists():
        print(f"ABIDE folder not found at {abide}", file=sys.stderr)
        return 2
    model = None
    if args.model:
        import torch

        from fmrilm.model.modeling import FmriLM

        torch.set_num_threads(args.threads)
        model = FmriLM.from_pretrained(args.model).eval()
    start = time.perf_counter()
    with threadpool_limits(1):
        cohort = import_abide(abide)
        table = cohort.phenotype_table()
        test_sites = [s.strip() for s in args.test_sites.split(",") if s.strip()]
        unknown = sorted(set(test_sites) - set(table["site"]))
        if unknown:
            print(f"unknown test sites {unknown}; sites: {sorted(set(table['site']))}", file=sys.stderr)
            return 2
        is_test = table["site"].isin(test_sites).to_numpy()
        trs = table["tr"].astype(float).to_numpy()
        series = [native(cohort.scan(i)) for i in range(len(cohort))]
    t_prep = time.perf_counter() - start

    def n_context(i: int) -> int:
        return int(round(args.context_s / trs[i]))

    test_idx = [i for i in np.flatnonzero(is_test) if len(series[i]) >= n_context(i) + args.horizon]
    dropped = int(is_test.sum()) - len(test_idx)
    if args.max_test_scans:
        test_idx = test_idx[: args.max_test_scans]
    train_idx = np.flatnonzero(~is_test)
    print(
        f"ABIDE: {len(train_idx)} training scans ({len(set(table['site'][~is_test]))} sites), {len(test_idx)} "
        f"test scans from {','.join(test_sites)} ({dropped} too short left out); context {args.context_s:g} s, "
        f"horizons 1..{args.horizon} at each test site's own TR; import {t_prep:.0f} s"
    )
    preds: dict[str, list[np.ndarray]] = {name: [] for name in (*BASELINES, *(["model"] if model else []))}
    targets, usable, fits = [], [], {}
    t_model = 0.0
    order = []
    for tr in sorted({float(trs[i]) for i in test_idx}):
        group = [i for i in test_idx if np.isclose(trs[i], tr)]
        order += group
        # Training scans at this TR: native or downsampled; never upsampled (interpolation would fake
        # short-lag autocorrelation that the native test scans do not have).
        with threadpool_limits(1):
            train = [
                series[i] if np.isclose(trs[i], tr) else resample(series[i], trs[i], tr)
                for i in train_idx
                if trs[i] <= tr + 1e-6
            ]
        fitted = fit_baselines(train, args.ar_order, args.var_order, args.seed)
        fits[f"{tr:g}"] = {"n_train": len(train), "fit_s": fitted["fit_s"], "var_alpha": fitted["var"].alpha}
        parts = [split_context(series[i], n_context(i), args.horizon) for i in group]
        contexts = [p[0] for p in parts]
        targets += [p[1] for p in parts]
        usable += [p[2] for p in parts]
        for name in BASELINES:
            preds[name].append(baseline_forecasts(name, contexts, args.horizon, fitted))
        if model is not None:
            from tqdm.auto import tqdm

            t0 = time.perf_counter()
            rows = [
                model_forecast(model, cohort.scan(i), ctx, args.horizon)
                for i, ctx in zip(tqdm(group, desc=f"model forecasts (TR {tr:g} s)"), contexts, strict=True)
            ]
            preds["model"].append(np.stack(rows))
            t_model += time.perf_counter() - t0
        print(
            f"TR {tr:g} s: {len(group)} test scans; fitted on {len(train)} training scans: AR({args.ar_order}) "
            f"{fitted['fit_s']['ar']:.1f} s, ridge VAR({args.var_order}) {fitted['fit_s']['var']:.1f} s "
            f"(alpha {fitted['var'].alpha:g})",
            flush=True,
        )
    target_arr, usable_arr = np.stack(targets), np.stack(usable)
    result = {
        "metrics": {
            name: horizon_metrics(np.concatenate(p), target_arr, usable_arr) for name, p in preds.items()
        }
    }
    shown = sorted({h for h in (1, 2, 3, 5, args.horizon) if h <= args.horizon})
    print()
    print_table(result, shown)
    print()
    for h in shown:
        best = max(result["metrics"], key=lambda m: result["metrics"][m][h - 1]["r2"])
        print(f"h={h}: best R² {result['metrics'][best][h - 1]['r2']:.3f} by {best}")
    if model is not None:
        print(f"model forecasts: {t_model:.0f} s for {len(order)} scans")
    if args.json:
        record = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "context_s": args.context_s,
            "horizon": args.horizon,
            "test_sites": test_sites,
            "test_scan_ids": [str(table["scan_id"].iloc[i]) for i in order],
            "fits": fits,
            "model": args.model,
            **result,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
