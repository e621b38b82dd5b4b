"""How fast a tokenizer turns scans into brain tokens, as Stages 2-3, evaluation and the chat do it.

    python -m fmrilm.eval.bench_encode --tokenizer DIR [--cohort DIR] [--scans 100] [--threads 2] [--rounds 2]

``--tokenizer`` is a Stage-1 folder with connectome tokens (e.g. ``demo_out/stage1_tokenizer``); ``--cohort``
defaults to the real ABIDE scans (``../shared/data/abide``, imported into a temporary cohort). Milliseconds per
scan, best of ``--rounds``, for: the window tokens alone, the connectome tokens scan by scan and batched
(`ConnectomeTokenizer.encode_many`, as Stages 2-3 and evaluation encode now), both scan by scan (before) and
with the connectome batched, and both with the connectome's PCA projection left outside the one-BLAS-thread
block (the code before 2026-12-05), whose OpenBLAS threads, still spinning, slowed torch's next operations.
Ratios are against the window tokens alone, measured in the same process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fmrilm.safety import positive_int

ABIDE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "abide"


def _projection_outside_limit(connectome, scan):
    """The connectome tokens as computed before: tangent vectors under one BLAS thread, the PCA projection
    (1 x 19,900 by 19,900 x components) on every BLAS thread."""
    from fmrilm.tokenizer.connectome import ConnectomeTokens, one_blas_thread

    with one_blas_thread():
        vector = connectome.tangent_vector(connectome.reference_timeseries(scan))
    z = connectome.components_of(vector[None]).astype(np.float32)
    codes, _ = connectome.quantize(z)
    return ConnectomeTokens(codes=codes[0], values=z[0].reshape(connectome.config.num_tokens, -1))


def time_paths(tokenizer, scans, rounds: int) -> dict[str, float]:
    """Best milliseconds per scan of each path over ``rounds`` passes."""
    connectome = tokenizer.connectome

    def windows(scan):
        w, m = tokenizer.windows(scan)
        return tokenizer.encode(w, coords=scan.atlas, mask=m)

    def each(path):
        return lambda scans: [path(s) for s in scans]

    paths = {
        "window tokens": each(windows),
        "connectome tokens": each(connectome.encode),
        "connectome tokens, batched (encode_many, now)": lambda scans: list(connectome.encode_many(scans)),
        "both, scan by scan (Stages 2-3 before)": each(lambda s: (windows(s), connectome.encode(s))),
        "both, connectome batched (Stages 2-3 now)": lambda scans: (
            [windows(s) for s in scans],
            list(connectome.encode_many(scans)),
        ),
        "both, projection outside the BLAS limit (before 2026-12-05)": each(
            lambda s: (windows(s), _projection_outside_limit(connectome, s))
        ),
    }
    best = {}
    for name, run in paths.items():
        run(scans[:1])  # warm-up: kernels for these shapes
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            run(scans)
            times.append((time.perf_counter() - start) / len(scans) * 1000)
        best[name] = min(times)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="Stage-1 tokenizer folder with connectome tokens")
    parser.add_argument("--cohort", default=None, help="cohort folder (default: the ABIDE scans, imported)")
    parser.add_argument("--scans", type=positive_int, default=100, help="scans timed (default %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=2, help="passes; the best is reported")
    args = parser.parse_args(argv)

    import torch
    from fmrilm.eval.bench_baselines import import_abide

    from fmrilm.cohort import load_cohort
    from fmrilm.logs import library_warnings, no_library_progress_bars
    from fmrilm.tokenizer import FmriTokenizerModel

    torch.set_num_threads(args.threads)
    with library_warnings(), no_library_progress_bars():
        tokenizer = FmriTokenizerModel.from_pretrained(args.tokenizer).eval()
        if getattr(tokenizer, "connectome", None) is None:
            print(f"bench_encode: error: {args.tokenizer} has no connectome tokens", file=sys.stderr)
            return 2
        cohort = load_cohort(args.cohort) if args.cohort else import_abide(ABIDE)
        if cohort is None:
            return 2
        scans = [cohort.scan(i) for i in range(min(args.scans, len(cohort)))]
        with torch.no_grad():
            best = time_paths(tokenizer, scans, args.rounds)
    floor = best["window tokens"]
    print(f"{len(scans)} scans, {args.threads} torch thread(s), best of {args.rounds}")
    print("| path | ms per scan | ratio to window tokens alone |")
    print("| --- | ---: | ---: |")
    for name, ms in best.items():
        print(f"| {name} | {ms:.1f} | {ms / floor:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
