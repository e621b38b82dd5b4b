"""Descriptor benchmark: (a) how much phenotype signal the descriptors carry, (b) how fast they are computed.

(a) Signal in the text. On a subject-level split (stratified by diagnosis, 30% test), reference statistics are
fitted on the TRAINING scans only; every scan then gets its whole-scan descriptor (z vector + text) and its
window descriptors. Classifiers trained on the training scans predict the test scans' phenotypes from
  - the z-feature vector (standardized, ``LogisticRegressionCV`` / ``RidgeCV``),
  - the descriptor text only (TF-IDF of words and numbers, same models),
  - for context, the full Fisher-z FC matrix (upper triangle) of the same scans, the usual baseline.
Window rows are classified one by one and their probabilities averaged per scan. Chance: AUC 0.5, balanced
accuracy 0.5, accuracy = the majority-class rate of the test part; age: MAE of predicting the training mean, r 0.
Cohorts: a simulated cohort (``fmrilm.data_gen.simulate``; sex, diagnosis and age change known couplings) and
ABIDE (../shared/data/abide; autism, sex, age).

(b) Speed. Whole-scan descriptors of 200-region x 200-timepoint scans (ABIDE CC200, first 200 volumes, scans
without dead regions) from ``fmrilm.descriptors`` (batched numpy) against a straightforward pipeline run in the
same process: nilearn ``ConnectivityMeasure`` FC, network means by loops, networkx graph metrics, per-scan
gradients (numpy percentile, scikit-learn cosine similarity, full ``eigh``, scipy Procrustes) and per-scan
scikit-learn ``FastICA`` with per-component scipy periodograms. FC, graph and gradient values are asserted equal;
the ICA time-course metrics are asserted equal on the same (per-scan FastICA) time courses. BLAS runs on one
thread for both so the ratio is not a thread-count artefact; wall time and process CPU time are both reported,
because on a shared machine the wall time also counts other jobs' turns on the CPU.

    python -m fmrilm.eval.bench_descriptors            # both parts
    python -m fmrilm.eval.bench_descriptors --part speed
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import nonnegative_int, positive_int

ABIDE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "abide"


# ============================================================================================== (b) speed
def naive_features(ts: np.ndarray, atlas, ref, tr: float) -> dict[str, Any]:
    """The straightforward pipeline: one scan at a time, library calls and Python loops."""
    import networkx as nx
    from nilearn.connectome import ConnectivityMeasure
    from scipy.linalg import orthogonal_procrustes
    from scipy.signal import periodogram
    from sklearn.covariance import EmpiricalCovariance
    from sklearn.decomposition import FastICA
    from sklearn.metrics.pairwise import cosine_similarity

    from fmrilm.descriptors.connectivity import fc_pairs

    cfg = ref.feature_config
    out: dict[str, float] = {}
    r = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance()).fit_transform(
        [ts.astype(np.float64)]
    )[0]
    z = np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7))
    np.fill_diagonal(z, 0.0)
    nets = np.asarray(atlas.networks)
    n_reg = len(nets)
    iu = np.triu_indices(n_reg, 1)
    out["fc.mean"] = float(z[iu].mean())
    assigned = [n for n in atlas.network_names if n != "unassigned"]
    same, diff = [], []
    for i, j in zip(*iu, strict=True):
        if nets[i] == "unassigned" or nets[j] == "unassigned":
            continue
        (same if nets[i] == nets[j] else diff).append(z[i, j])
    out["fc.segregation"] = float(np.mean(same) - np.mean(diff))
    for a, b in fc_pairs(atlas):
        ia, ib = np.flatnonzero(nets == a), np.flatnonzero(nets == b)
        if a == b:
            block = z[np.ix_(ia, ia)]
            out[f"fc.within.{a}"] = float(block[np.triu_indices(len(ia), 1)].mean())
        else:
            out[f"fc.between.{a}~{b}"] = float(z[np.ix_(ia, ib)].mean())
    for a in assigned:
        ia = np.flatnonzero(nets == a)
        if len(ia) < 2:
            continue
        others = np.flatnonzero((nets != a) & (nets != "unassigned"))
        within = z[np.ix_(ia, ia)][np.triu_indices(len(ia), 1)].mean()
        out[f"fc.segregation.{a}"] = float(within - z[np.ix_(ia, others)].mean())

    # graph: keep the strongest density fraction of pairs, networkx metrics
    values = z[iu]
    k = int(round(cfg.density * len(values)))
    order = np.argsort(-values)[:k]
    g = nx.Graph()
    g.add_nodes_from(range(n_reg))
    for e in order:
        if values[e] > 0:
            g.add_edge(int(iu[0][e]), int(iu[1][e]), weight=float(values[e]))
    partition = [set(np.flatnonzero(nets == n).tolist()) for n in atlas.network_names]
    out["graph.global_efficiency"] = nx.global_efficiency(g)
    out["graph.modularity"] = nx.algorithms.community.modularity(g, partition, weight="weight")
    out["graph.clustering"] = nx.average_clustering(g, weight="weight")
    strength = dict(g.degree(weight="weight"))
    module = {node: m for m, part in enumerate(partition) for node in part}
    pc = {}
    for node in g.nodes:
        if strength[node] == 0:
            pc[node] = 0.0
            continue
        per = np.zeros(len(partition))
        for nb, data in g[node].items():
            per[module[nb]] += data["weight"]
        pc[node] = 1.0 - float(((per / strength[node]) ** 2).sum())
    for a in assigned:
        ia = np.flatnonzero(nets == a)
        out[f"graph.strength.{a}"] = float(np.mean([strength[i] for i in ia]))
    for a in assigned:
        ia = np.flatnonzero(nets == a)
        out[f"graph.participation.{a}"] = float(np.mean([pc[i] for i in ia]))

    # gradients: BrainSpace recipe one matrix at a time
    x = r.copy()
    x[x < np.percentile(x, cfg.gradient_sparsity * 100, axis=1, keepdims=True)] = 0
    aff = np.maximum(1 - np.arccos(np.clip(cosine_similarity(x), -1, 1)) / np.pi, 0)
    d = aff.sum(1) ** -0.5
    kk = aff * np.outer(d, d)
    d2 = kk.sum(1) ** -0.5
    vals, vecs = np.linalg.eigh(kk * np.outer(d2, d2))
    n_g = cfg.n_gradients
    vals, vecs = vals[::-1][: n_g + 1], vecs[:, ::-1][:, : n_g + 1]
    psi = vecs / vecs[:, [0]]
    emb = psi[:, 1:] * (vals[1:] / (1 - vals[1:]))
    rot, _ = orthogonal_procrustes(emb, ref.group_gradients)
    aligned = emb @ rot
    for i in range(n_g):
        out[f"gradient.range.G{i + 1}"] = float(aligned[:, i].max() - aligned[:, i].min())
    for a in assigned:
        out[f"gradient.position.{a}"] = float(aligned[nets == a, 0].mean())

    # ICA: fit FastICA on this scan, then per-component spectral metrics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = FastICA(
            n_components=ref.ica.n_components, whiten="unit-variance", random_state=0, max_iter=200, tol=1e-3
        ).fit_transform(ts.astype(np.float64))
    out["_ica_sources"] = sources
    lo_b, hi_b = cfg.low_band, cfg.high_band
    comp = []
    for c in range(sources.shape[1]):
        s = sources[:, c]
        f, p = periodogram(s, fs=1.0 / tr, detrend="constant", scaling="spectrum")
        if len(s) % 2 == 0:
            p[1:-1] /= 2
        else:
            p[1:] /= 2
        lo, hi = (f >= lo_b[0]) & (f <= lo_b[1]), (f > hi_b[0]) & (f <= hi_b[1])
        sc = s - s.mean()
        others = [abs(np.corrcoef(s, sources[:, o])[0, 1]) for o in range(sources.shape[1]) if o != c]
        comp.append(
            [
                s.std(),
                np.log10(p[lo].sum() / p[hi].sum()),
                np.sqrt(p[lo]).sum() / np.sqrt(p[f > 0]).sum(),
                (sc[1:] * sc[:-1]).sum() / (sc * sc).sum(),
                np.mean(others),
            ]
        )
    out["_ica_metrics"] = np.asarray(comp).T
    return out


def _speed_data(abide_dir: Path, n: int, n_ref: int):
    """Real 200 x 200 arrays: ABIDE scans with >= 200 volumes and no dead region, first 200 volumes, z-scored."""
    import pandas as pd

    from fmrilm.atlas import Atlas

    pheno = pd.read_csv(abide_dir / "phenotypes.csv")
    atlas = Atlas.from_centroids_table(abide_dir / "cc200_centroids.csv")
    arrays = []
    with np.load(abide_dir / "timeseries_cc200.npz") as npz:
        for fid in pheno.FILE_ID:
            ts = npz[fid].astype(np.float64)
            if len(ts) < 200:
                continue
            ts = ts[:200]
            if (ts.std(axis=0) < 1e-6).any():
                continue
            arrays.append(((ts - ts.mean(0)) / ts.std(0)).astype(np.float32))
            if len(arrays) == n + n_ref:
                break
    return atlas, arrays[:n_ref], np.stack(arrays[n_ref:])


def bench_speed(abide_dir: Path, n: int = 16, rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    from fmrilm.descriptors import FeatureConfig, ReferenceStats
    from fmrilm.descriptors.ica import timecourse_features
    from fmrilm.scan import Scan
    from fmrilm.signal import SignalConfig

    atlas, ref_arrays, batch = _speed_data(abide_dir, n, 30)
    tr = 2.0
    scans = [Scan(a, tr=tr, atlas=atlas, scan_id=f"ref-{i}") for i, a in enumerate(ref_arrays)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ReferenceStats.fit(
            scans,
            signal_config=SignalConfig(target_tr=tr),
            feature_config=FeatureConfig(),
            progress=False,
            seed=seed,
        )
    names = ref.feature_names
    ext = ref.extractor
    wall: dict[str, list[float]] = {"fmrilm features": [], "fmrilm descriptors": [], "naive": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}

    def timed(key, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall[key].append(time.perf_counter() - w0)
        cpu[key].append(time.process_time() - c0)
        return result

    def full():
        values, _ = ext.compute(batch)
        return ref.describe_values(values, np.full(n, -1), "x", "x", unit="scan")

    for _ in range(rounds):  # interleaved so background load hits every pipeline alike
        ext.compute(batch[:2])  # untimed warm-up: the naive run before it leaves the caches cold
        feats, _ = timed("fmrilm features", lambda: ext.compute(batch))
        descriptors = timed("fmrilm descriptors", full)
        naive = timed("naive", lambda: [naive_features(ts, atlas, ref, tr) for ts in batch])
    assert len(descriptors) == n and all(d.text for d in descriptors)
    # identical values for every shared metric
    shared = [k for k in names if not k.startswith("ica.")]
    ours_shared = feats[:, [names.index(k) for k in shared]]
    naive_shared = np.array([[nv[k] for k in shared] for nv in naive])
    max_diff = float(np.abs(ours_shared - naive_shared).max())
    assert np.allclose(ours_shared, naive_shared, rtol=1e-7, atol=1e-9), (
        f"shared metrics differ by {max_diff}"
    )
    ica_diff = 0.0
    for nv in naive:
        mine = timecourse_features(nv["_ica_sources"][None], tr, ref.feature_config.low_band,
                                   ref.feature_config.high_band)[0]  # fmt: skip
        ica_diff = max(ica_diff, float(np.abs(mine - nv["_ica_metrics"]).max()))
    assert ica_diff < 1e-9, f"ICA time-course metrics differ by {ica_diff}"
    best_wall = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    return {
        "n_scans": n,
        "shape": list(batch.shape[1:]),
        "rounds": rounds,
        "n_features": len(names),
        "n_shared_checked": len(shared),
        "max_abs_diff_shared": max_diff,
        "max_abs_diff_ica_metrics": ica_diff,
        "per_second_wall": {k: n / v for k, v in best_wall.items()},
        "per_second_cpu": {k: n / v for k, v in best_cpu.items()},
        "speedup_wall": {k: best_wall["naive"] / v for k, v in best_wall.items()},
        "speedup_cpu": {k: best_cpu["naive"] / v for k, v in best_cpu.items()},
    }


# ============================================================================================= (a) signal
def _descriptor_table(cohort, ref, progress: bool = True):
    """Whole-scan z + text, window z + text (with scan index), and full-FC vectors of every scan."""
    from tqdm.auto import tqdm

    from fmrilm.descriptors.connectivity import correlation, fisher_z

    scan_z, scan_text, win_z, win_text, win_scan, fc = [], [], [], [], [], []
    for i in tqdm(range(len(cohort)), desc="descriptors", disable=not progress):
        scan = cohort.scan(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts = ref.prepare(scan)
        for unit in ("scan", "window"):
            values, index = ref.features_from_timeseries(ts, unit)
            ds = ref.describe_values(values, index, scan.scan_id, str(scan.subject_id), unit)
            for d in ds:
                z = np.nan_to_num(d.z, nan=0.0)
                if unit == "scan":
                    scan_z.append(z)
                    scan_text.append(d.text)
                else:
                    win_z.append(z)
                    win_text.append(d.text)
                    win_scan.append(i)
        zfc = fisher_z(correlation(ts[None]))[0]
        fc.append(zfc[np.triu_indices(len(zfc), 1)].astype(np.float32))
    return {
        "scan_z": np.stack(scan_z),
        "scan_text": scan_text,
        "win_z": np.stack(win_z),
        "win_text": win_text,
        "win_scan": np.asarray(win_scan),
        "fc": np.stack(fc),
    }


def _classify(x_tr, y_tr, x_te, kind: str):
    """Probability of class 1 for the test rows; kind 'dense' (standardized) or 'text' (TF-IDF)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    first = TfidfVectorizer(**_TFIDF) if kind == "text" else StandardScaler()
    model = make_pipeline(
        first,
        LogisticRegressionCV(Cs=6, cv=5, class_weight="balanced", scoring="roc_auc", max_iter=3000),
    )
    model.fit(x_tr, y_tr)
    return model.predict_proba(x_te)[:, 1]


def _regress(x_tr, y_tr, x_te, kind: str):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    first = TfidfVectorizer(**_TFIDF) if kind == "text" else StandardScaler()
    model = make_pipeline(first, RidgeCV(alphas=np.logspace(-2, 5, 15)))
    model.fit(x_tr, y_tr)
    return model.predict(x_te)


#: Words and numbers (z values) as tokens, hyphenated network names kept whole, uni- to trigrams.
_TFIDF = {"token_pattern": r"(?u)-?\b\w[\w.-]*\b", "ngram_range": (1, 3), "min_df": 2, "sublinear_tf": True}


def _subset(rows, idx):
    return [rows[i] for i in idx] if isinstance(rows, list) else rows[idx]


def evaluate_signal(table, labels, split, targets: dict[str, str]) -> list[dict[str, Any]]:
    """One result row per (target, input) with its metrics and chance levels."""
    from scipy.stats import pearsonr
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, mean_absolute_error, roc_auc_score

    train, test = np.asarray(split["train"]), np.asarray(split["test"])
    results = []
    for target, kind in targets.items():
        y = labels[target]
        ok = np.array([v is not None and v == v for v in y])
        tr_idx, te_idx = train[ok[train]], test[ok[test]]
        if kind == "binary":
            classes = sorted({y[i] for i in tr_idx})
            positive = classes[1]
            yb = np.array([1 if v == positive else 0 for v in y])
        else:
            yb = np.array([float(v) if v is not None else np.nan for v in y])
        inputs = {
            "z vector (scan)": ("dense", table["scan_z"], None),
            "text (scan)": ("text", table["scan_text"], None),
            "z vector (windows, mean per scan)": ("dense", table["win_z"], table["win_scan"]),
            "text (windows, mean per scan)": ("text", table["win_text"], table["win_scan"]),
            "full FC (baseline)": ("dense", table["fc"], None),
        }
        for name, (xkind, x, row_scan) in inputs.items():
            if row_scan is None:
                rtr, rte, te_scans = tr_idx, te_idx, te_idx
            else:
                rtr = np.flatnonzero(np.isin(row_scan, tr_idx))
                rte = np.flatnonzero(np.isin(row_scan, te_idx))
                te_scans = te_idx
            x_tr, x_te = _subset(x, rtr), _subset(x, rte)
            y_tr = yb[row_scan[rtr]] if row_scan is not None else yb[rtr]
            t0 = time.perf_counter()
            pred = (
                _classify(x_tr, y_tr, x_te, xkind) if kind == "binary" else _regress(x_tr, y_tr, x_te, xkind)
            )
            if row_scan is not None:  # average window predictions per scan
                scan_of = row_scan[rte]
                pred = np.array([pred[scan_of == s].mean() for s in te_scans])
            y_te = yb[te_scans]
            row: dict[str, Any] = {"target": target, "input": name, "n_train": int(len(tr_idx)),
                                   "n_test": int(len(te_idx)), "seconds": time.perf_counter() - t0}  # fmt: skip
            if kind == "binary":
                majority = max(y_te.mean(), 1 - y_te.mean())
                row.update(
                    positive=positive,
                    auc=roc_auc_score(y_te, pred),
                    balanced_accuracy=balanced_accuracy_score(y_te, pred >= 0.5),
                    accuracy=accuracy_score(y_te, pred >= 0.5),
                    chance_accuracy=majority,
                    chance_balanced_accuracy=0.5,
                    chance_auc=0.5,
                )
            else:
                row.update(
                    mae=mean_absolute_error(y_te, pred),
                    r=float(pearsonr(y_te, pred)[0]),
                    chance_mae=mean_absolute_error(y_te, np.full_like(y_te, yb[tr_idx].mean())),
                    chance_r=0.0,
                )
            results.append(row)
    return results


def bench_signal(cohort, targets: dict[str, str], seed: int = 0, progress: bool = True) -> dict[str, Any]:
    from fmrilm.descriptors import ReferenceStats
    from fmrilm.splits import stratified_split

    split = stratified_split(cohort, label="diagnosis", test_size=0.3, seed=seed)
    train_ids = set(cohort.dataset.select(split["train"])["subject_id"])
    test_ids = set(cohort.dataset.select(split["test"])["subject_id"])
    assert not train_ids & test_ids, "subject in both parts"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ReferenceStats.fit(cohort.select(split["train"]), seed=seed, progress=progress)
    fit_s = time.perf_counter() - t0
    assert set(ref.meta["scan_ids"]) == set(cohort.dataset.select(split["train"])["scan_id"])
    t0 = time.perf_counter()
    table = _descriptor_table(cohort, ref, progress)
    describe_s = time.perf_counter() - t0
    pheno = cohort.phenotype_table()
    labels = {t: [None if (isinstance(v, float) and np.isnan(v)) else v for v in pheno[t]] for t in targets}
    rows = evaluate_signal(table, labels, split, targets)
    return {
        "cohort": cohort.name,
        "n_scans": len(cohort),
        "n_train": len(split["train"]),
        "n_test": len(split["test"]),
        "n_windows": len(table["win_text"]),
        "n_features": table["scan_z"].shape[1],
        "reference_fit_s": fit_s,
        "describe_s": describe_s,
        "example_text": table["scan_text"][split["test"][0]],
        "results": rows,
    }


# ==================================================================================================== main
def _print_signal(res: dict[str, Any]) -> None:
    print(f"\n### {res['cohort']}: {res['n_scans']} scans ({res['n_train']} train / {res['n_test']} test), "
          f"{res['n_windows']} windows, {res['n_features']} features")  # fmt: skip
    print("| target | input | AUC | bal. acc. | acc. (chance) | MAE (chance) | r |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in res["results"]:
        if "auc" in r:
            print(f"| {r['target']} ({r['positive']}) | {r['input']} | {r['auc']:.3f} | {r['balanced_accuracy']:.3f} "
                  f"| {r['accuracy']:.3f} ({r['chance_accuracy']:.3f}) | | |")  # fmt: skip
        else:
            print(
                f"| {r['target']} | {r['input']} | | | | {r['mae']:.2f} ({r['chance_mae']:.2f}) | {r['r']:.3f} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("all", "speed", "signal"), default="all")
    parser.add_argument("--abide-dir", type=Path, default=ABIDE_DIR)
    parser.add_argument("--n-speed", type=positive_int, default=16, help="scans timed per round (default 16)")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--sim-subjects", type=positive_int, default=240)
    parser.add_argument("--no-abide", action="store_true", help="skip the ABIDE signal benchmark")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn 1.9 API-transition notices

    report: dict[str, Any] = {}
    abide = args.abide_dir.resolve()
    has_abide = (abide / "phenotypes.csv").exists()
    with threadpool_limits(1):
        if args.part in ("all", "speed"):
            if not has_abide:
                raise SystemExit(f"The speed benchmark reads ABIDE scans from {abide}; not found")
            sp = bench_speed(abide, n=args.n_speed, rounds=args.rounds, seed=args.seed)
            report["speed"] = sp
            print(f"\n### Speed: whole-scan descriptors, {sp['shape'][0]} timepoints x {sp['shape'][1]} regions, "
                  f"{sp['n_scans']} scans, best of {sp['rounds']} rounds, 1 BLAS thread")  # fmt: skip
            print("| pipeline | descriptors/s (wall) | vs naive | descriptors/s (CPU time) | vs naive |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for k in sp["per_second_wall"]:
                print(f"| {k} | {sp['per_second_wall'][k]:.1f} | {sp['speedup_wall'][k]:.1f}x "
                      f"| {sp['per_second_cpu'][k]:.1f} | {sp['speedup_cpu'][k]:.1f}x |")  # fmt: skip
            print(f"Shared metrics checked: {sp['n_shared_checked']} (max |diff| {sp['max_abs_diff_shared']:.1e}); "
                  f"ICA time-course metrics max |diff| {sp['max_abs_diff_ica_metrics']:.1e}")  # fmt: skip
        if args.part in ("all", "signal"):
            from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sim = simulate_cohort(
                    SimulationConfig(n_subjects=args.sim_subjects, seed=args.seed), progress=not args.quiet
                )
            res = bench_signal(
                sim, {"sex": "binary", "diagnosis": "binary", "age": "regression"}, args.seed, not args.quiet
            )
            report["signal_simulated"] = res
            _print_signal(res)
            if has_abide and not args.no_abide:
                from fmrilm.cohort_import import import_cohort

                cohort = import_cohort(
                    abide / "phenotypes.csv",
                    npz=abide / "timeseries_cc200.npz",
                    atlas=abide / "cc200_centroids.csv",
                    mapping="abide",
                    name="abide",
                    progress=False,
                )
                res = bench_signal(
                    cohort,
                    {"diagnosis": "binary", "sex": "binary", "age": "regression"},
                    args.seed,
                    not args.quiet,
                )
                report["signal_abide"] = res
                _print_signal(res)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
