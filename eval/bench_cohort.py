"""Benchmark: importing a whole cohort (ABIDE, 695 scans), and building its dataset against the plain baseline.

    python -m fmrilm.eval.bench_cohort [--rounds 3] [--no-memory]

End to end: ``fmrilm.cohort_import.import_cohort`` on ``../shared/data/abide`` (phenotypes.csv + the keyed
float16 ``timeseries_cc200.npz`` + the ``abide`` preset; the CC200 atlas resolved once beforehand) and the
atomic save. Dataset building: ``Cohort.from_scans`` (time series written straight into Arrow buffers) against
``datasets.Dataset.from_dict`` with the same features (the obvious way, which turns every array into Python
lists and fingerprints the table by pickling it). Peak memory of each way is measured in a fresh subprocess.
Without the ABIDE folder a synthetic cohort of the same shape is used. Each time is the best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fmrilm.safety import positive_int

ABIDE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "abide"


def _synthetic_abide(folder: Path, n: int = 695, regions: int = 200) -> Path:
    """Table, npz and centroids shaped like the ABIDE folder (T 78-316, float16)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    ids = [f"S{i:05d}" for i in range(n)]
    arrays = {k: rng.standard_normal((int(rng.integers(78, 317)), regions)).astype(np.float16) for k in ids}
    np.savez(folder / "timeseries_cc200.npz", **arrays)
    pd.DataFrame(
        {
            "FILE_ID": ids,
            "SUB_ID": range(n),
            "SITE_ID": [f"SITE{i % 14}" for i in range(n)],
            "DX_GROUP": rng.integers(1, 3, n),
            "AGE_AT_SCAN": rng.uniform(7, 60, n).round(2),
            "SEX": rng.integers(1, 3, n),
            "FIQ": rng.integers(80, 140, n),
            "func_mean_fd": rng.uniform(0.02, 0.5, n),
            "TR": 2.0,
        }
    ).to_csv(folder / "phenotypes.csv", index=False)
    coords = rng.uniform(-60, 60, (regions, 3))
    pd.DataFrame(
        {"roi": range(1, regions + 1), "x": coords[:, 0], "y": coords[:, 1], "z": coords[:, 2]}
    ).to_csv(folder / "cc200_centroids.csv", index=False)
    return folder


def _scans(folder: Path):
    from fmrilm.scan import Scan

    with np.load(folder / "timeseries_cc200.npz") as data:
        return [Scan(data[k], tr=2.0, scan_id=k) for k in data.files]


def _build(method: str, scans, atlas):
    """Build the cohort dataset one way or the other (the same features, the same rows)."""
    from fmrilm.cohort import Cohort

    cohort = Cohort.from_scans(scans, atlas=atlas)
    if method == "fmrilm":
        return cohort
    import datasets

    rows = {c: cohort.dataset[c] for c in cohort.dataset.column_names if c != "timeseries"}
    rows["timeseries"] = [s.timeseries for s in scans]
    start = time.perf_counter()
    datasets.Dataset.from_dict(rows, features=cohort.dataset.features)
    return time.perf_counter() - start


def _peak_kib() -> int:
    """Peak resident memory of this process (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(method: str, folder: Path) -> None:
    """Peak RSS added by building the dataset one way, in a fresh process (printed as JSON)."""
    from fmrilm.atlas import resolve_atlas

    atlas = resolve_atlas(folder / "cc200_centroids.csv")
    scans = _scans(folder)
    before = _peak_kib()
    if method == "fmrilm":
        _build("fmrilm", scans, atlas)
    else:
        import datasets

        from fmrilm.cohort import Cohort

        features = Cohort.from_scans(scans[:1], atlas=atlas).dataset.features
        rows = {c: [] for c in features}
        for s in scans:
            for c, v in (
                ("scan_id", s.scan_id),
                ("subject_id", s.subject_id),
                ("session_id", ""),
                ("site", ""),
            ):
                rows[c].append(v)
            rows["tr"].append(s.tr)
            rows["atlas"].append(atlas.name)
            rows["n_timepoints"].append(s.n_timepoints)
            rows["timeseries"].append(s.timeseries)
            rows["bad_regions"].append([])
        before = _peak_kib()
        datasets.Dataset.from_dict(rows, features=features)
    after = _peak_kib()
    print(json.dumps({"peak_mib": (after - before) / 1024}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurement")
    parser.add_argument("--child", choices=("fmrilm", "from_dict"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, Path(args.folder))
        return

    from fmrilm.atlas import resolve_atlas
    from fmrilm.cohort_import import import_cohort

    tmp = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    try:
        folder = ABIDE if (ABIDE / "timeseries_cc200.npz").exists() else _synthetic_abide(tmp)
        print(
            f"data: {'ABIDE ' + str(folder.resolve()) if folder == ABIDE else 'synthetic (ABIDE folder absent)'}"
        )
        atlas = resolve_atlas(folder / "cc200_centroids.csv")
        scans = _scans(folder)
        n = len(scans)
        best = {"import+save": np.inf, "fmrilm from_scans": np.inf, "datasets from_dict": np.inf}
        for r in range(args.rounds):
            start = time.perf_counter()
            import_cohort(
                folder / "phenotypes.csv",
                atlas=atlas,
                npz=folder / "timeseries_cc200.npz",
                mapping="abide",
                out=tmp / f"cohort{r}",
                progress=False,
            )
            best["import+save"] = min(best["import+save"], time.perf_counter() - start)
            start = time.perf_counter()
            _build("fmrilm", scans, atlas)
            best["fmrilm from_scans"] = min(best["fmrilm from_scans"], time.perf_counter() - start)
            best["datasets from_dict"] = min(best["datasets from_dict"], _build("from_dict", scans, atlas))
            shutil.rmtree(tmp / f"cohort{r}", ignore_errors=True)
        print(
            f"\nwhole import of {n} scans (read npz, validate, map phenotypes, build, save): best of {args.rounds}"
        )
        print(f"  {best['import+save']:.2f} s  = {n / best['import+save']:.0f} scans/s")
        base = best["datasets from_dict"]
        print("\nbuilding the dataset from the loaded scans:")
        print("| method | s | scans/s | vs from_dict |")
        print("| --- | ---: | ---: | ---: |")
        for name in ("datasets from_dict", "fmrilm from_scans"):
            label = name + (" (baseline)" if name == "datasets from_dict" else "")
            print(f"| {label} | {best[name]:.2f} | {n / best[name]:.0f} | {base / best[name]:.2f}x |")
        if not args.no_memory:
            print("\npeak memory added by the build (fresh process each):")
            for method in ("from_dict", "fmrilm"):
                cmd = [
                    sys.executable,
                    "-m",
                    "fmrilm.eval.bench_cohort",
                    "--child",
                    method,
                    "--folder",
                    str(folder),
                ]
                out = (
                    subprocess.run(cmd, capture_output=True, text=True, check=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                print(f"  {method}: {json.loads(out)['peak_mib']:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
