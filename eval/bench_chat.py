"""Does the chat answer the question asked, from the scan? The demo's chat rates on any model and split.

    python -m fmrilm.eval.bench_chat --model DIR --cohort DIR --instructions DIR [--split leave-sites-out]
        [--scans 60] [--seed 0] [--threads 2]

Each question the demo's chat asks (most strongly coupled network pair, modularity higher or lower, the
diagnostic group; worded as a user asks, without an answer list) is put to ``--scans`` scans of the split's
test part (drawn by ``--seed``) in a fresh greedy chat, and every one after the first again as the next turn of
the first one's chat; each rate is printed next to always giving the training rows' most frequent answer, with
how often the answer is one of the question's answers at all (`fmrilm.eval.demo.descriptor_rates`).
BENCHMARKS.md, "Stage-3 recipe, chosen on validation sites", ran it on a split whose test part is three
training sites held out of Stage 3.
"""

from __future__ import annotations

import argparse

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fmrilm.safety import nonnegative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a Stage-3 model folder (FmriLM.from_pretrained)")
    p.add_argument("--cohort", required=True, help="cohort folder the split is stored in")
    p.add_argument("--instructions", required=True, help="instruction set with the recorded answers")
    p.add_argument(
        "--split", default="leave-sites-out", help="split stored in the cohort (default %(default)s)"
    )
    p.add_argument("--scans", type=positive_int, default=60, help="test scans asked (default %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="which test scans (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from fmrilm.eval.demo import descriptor_rates

    from fmrilm import FmriLM
    from fmrilm.cohort import load_cohort
    from fmrilm.logs import library_warnings, no_library_progress_bars
    from fmrilm.splits import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    cohort = load_cohort(args.cohort)
    split = dict(load_split(args.cohort, args.split))
    split["test"] = np.random.default_rng(args.seed).permutation(split["test"])
    # peft's deprecation notices and transformers' "Loading weights" bars stay out of the printed rates
    with library_warnings(), no_library_progress_bars():
        descriptor_rates(
            FmriLM.from_pretrained(args.model), cohort, split, args.instructions, n_scans=args.scans
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
