"""Benchmark: simulated subjects per second, against a per-timestep Euler loop of the same dynamics.

    python -m fmrilm.eval.bench_simulate [--subjects 200] [--atlas dosenbach160] [--euler-subjects 4]
                                         [--nifti 8] [--rounds 3]

Rows (all single-threaded BLAS, as ``simulate_cohort`` runs; best of ``--rounds`` passes):
- ``simulate_cohort``: the whole job (sites, phenotypes, coupling, dynamics, noise, the ``datasets`` table);
- ``dynamics, spectral``: each subject's coupling -> unit-variance BOLD with the fast frequency-domain path;
- ``dynamics, Euler loop (baseline)``: the same couplings, TRs and lengths through ``simulate_euler``, a Python
  loop over 0.1 s steps with a regions x regions product per step, HRF convolution and TR sampling.
NIfTI: the first ``--nifti`` subjects written as 4D images (5 mm grid, BIDS sidecar) by
``data_gen.nifti.write_nifti_scans``, next to a bare ``nibabel`` save of arrays of the same size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fmrilm.safety import positive_int


def _best(func, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def _table(title: str, rows: list[tuple[str, float]], baseline: str) -> None:
    rates = dict(rows)
    print(f"\n{title} (baseline: {baseline})")
    print(f"  {'method':46s} {'subjects/s':>11s} {'vs baseline':>12s}")
    for name, rate in rows:
        print(f"  {name:46s} {rate:11.2f} {rate / rates[baseline]:11.2f}x")


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    from threadpoolctl import threadpool_limits

    from fmrilm.atlas import resolve_atlas

    from ..data_gen.hemodynamics import ModeSampler
    from ..data_gen.nifti import labels_volume, write_nifti_scans
    from ..data_gen.simulate import (
        PAD_SECONDS,
        CouplingModel,
        SimulationConfig,
        bold_from_coupling,
        simulate_cohort,
        simulate_euler,
    )

    config = SimulationConfig(n_subjects=args.subjects, atlas=args.atlas, timepoints=tuple(args.timepoints))
    atlas = resolve_atlas(args.atlas)
    config.atlas = atlas
    simulate_cohort(SimulationConfig.from_dict({**config.to_dict(), "n_subjects": 2}))  # warm imports/caches
    print(
        f"simulator benchmark: {args.subjects} subjects, atlas {atlas.name} ({atlas.n_regions} regions), "
        f"{args.timepoints[0]}-{args.timepoints[1]} timepoints, TR 1.5-3.0 s, dt {config.dt} s"
    )

    cohort = None

    def whole() -> None:
        nonlocal cohort
        cohort = simulate_cohort(config)

    t_whole = _best(whole, args.rounds)
    table = cohort.phenotype_table()
    model = CouplingModel(atlas, config)
    rng = np.random.default_rng(0)
    phenos = table[["sex", "age", "diagnosis"]].to_dict("records")
    couplings = [model.subject_coupling(rng, config, p) for p in phenos]
    trs = table["tr"].astype(float).round(3).tolist()
    lengths = table["n_timepoints"].astype(int).tolist()
    hi = int(args.timepoints[1])
    samplers = {tr: ModeSampler(tr, hi + int(np.ceil(PAD_SECONDS / tr)), dt=config.dt) for tr in set(trs)}

    with threadpool_limits(limits=1):

        def fast() -> None:
            for w, tr, n in zip(couplings, trs, lengths, strict=True):
                bold_from_coupling(rng, w, samplers[tr], n, config.tau_s)

        t_fast = _best(fast, args.rounds)
        m = min(args.euler_subjects, len(couplings))

        def euler() -> None:
            for w, tr, n in zip(couplings[:m], trs[:m], lengths[:m], strict=True):
                simulate_euler(rng, w, tr, n, tau_s=config.tau_s, dt=config.dt)

        t_euler = _best(euler, 1)

    n = len(couplings)
    baseline = f"dynamics, Euler loop ({m} subjects)"
    rows = [
        ("simulate_cohort (whole job)", n / t_whole),
        ("dynamics, spectral (fmrilm)", n / t_fast),
        (baseline, m / t_euler),
    ]
    _table("Simulation", rows, baseline)

    k = min(args.nifti, len(cohort))
    labels, affine = labels_volume(atlas)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t_nifti = _best(lambda: write_nifti_scans(cohort, folder / "fmrilm", k), args.rounds)

        def bare() -> None:
            for i in range(k):
                shape = labels.shape + (lengths[i],)
                data = np.zeros(shape, dtype=np.float32)
                data[labels > 0] = rng.standard_normal((int((labels > 0).sum()), lengths[i]))
                nib.Nifti1Image(data, affine).to_filename(folder / f"bare_{i}.nii.gz")

        t_bare = _best(bare, args.rounds)
    print(f"\nNIfTI grid: {labels.shape} voxels of 5 mm, {int((labels > 0).sum())} labelled")
    _table(
        "NIfTI writing",
        [("write_nifti_scans (fmrilm)", k / t_nifti), ("bare nibabel save", k / t_bare)],
        "bare nibabel save",
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subjects", type=positive_int, default=200)
    parser.add_argument("--atlas", default="dosenbach160")
    parser.add_argument("--timepoints", type=positive_int, nargs=2, default=[150, 250])
    parser.add_argument(
        "--euler-subjects", type=positive_int, default=4, help="subjects through the slow baseline"
    )
    parser.add_argument("--nifti", type=positive_int, default=8, help="NIfTI images to write")
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="passes per method; the best is reported"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
