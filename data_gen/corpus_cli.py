"""`fmrilm corpus build|info`: write the descriptor corpus of a cohort, or summarise a corpus folder.

Heavy imports stay inside the functions so `fmrilm --help` stays fast.
"""

from __future__ import annotations

import argparse
import json

EPILOG_BUILD = """examples:
  fmrilm corpus build cohorts/sim --out corpora/sim --num-proc 2
  fmrilm corpus build cohorts/abide --out corpora/abide --fit-on-split stratified:train
  fmrilm corpus build cohorts/new_site --out corpora/new_site --reference corpora/abide/reference.json

Reference statistics (population mean and SD of every feature, group gradients, group ICA) are fitted on the
cohort, or only on one part of a split with --fit-on-split NAME[:PART] (PART defaults to train; use it whenever
the corpus feeds an evaluation, so test scans never shape the z values), or loaded with --reference.
Re-running the same command resumes an interrupted build.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.safety import fraction, nonnegative_int, positive_int

    sub = parser.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    build = sub.add_parser(
        "build",
        help="Write the descriptor corpus (text per family + z-feature vector per window) of a cohort.",
        description="Fit or load reference statistics and write a Hugging Face dataset with one row per "
        "window: scan and subject ids, window index, one text column per descriptor family, the combined text "
        "and the z-feature vector.",
        epilog=EPILOG_BUILD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("cohort", help="cohort folder (from `fmrilm cohort import` or `fmrilm simulate`)")
    build.add_argument(
        "--out", required=True, help="corpus folder to write: new, empty or this corpus (re-run to resume)"
    )
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild over an earlier corpus in --out (replaced once the new one is complete)",
    )
    ref = build.add_mutually_exclusive_group()
    ref.add_argument("--reference", help="reference statistics JSON to use instead of fitting")
    ref.add_argument(
        "--fit-on-split",
        metavar="NAME[:PART]",
        help="fit reference statistics only on this part (default train) of the cohort's split NAME",
    )
    build.add_argument(
        "--num-proc", type=positive_int, default=1, help="worker processes for datasets.map (default 1)"
    )
    build.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of phrasings and of the group ICA (default 0)"
    )
    build.add_argument(
        "--scan-level", action="store_true", help="also write one whole-scan descriptor per scan (window -1)"
    )
    build.add_argument(
        "--shard-size", type=positive_int, help="scans per resumable shard (default max(32, 16 x procs))"
    )
    build.add_argument(
        "--components", type=positive_int, default=16, help="group ICA components (default 16)"
    )
    build.add_argument("--density", type=fraction, default=0.15, help="graph density kept (default 0.15)")
    build.add_argument(
        "--max-reference-scans", type=positive_int, help="fit reference statistics on at most N scans"
    )
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(corpus_func=run_build)

    info = sub.add_parser("info", help="Summarise a corpus folder and print an example descriptor.")
    info.add_argument("dir", help="corpus folder")
    info.add_argument("--json", action="store_true", help="print the metadata as JSON")
    info.set_defaults(corpus_func=run_info)


def run(args: argparse.Namespace) -> int:
    return int(args.corpus_func(args) or 0)


def run_build(args: argparse.Namespace) -> int:
    from fmrilm.data_gen.corpus import build_corpus

    from fmrilm.cohort import Cohort
    from fmrilm.descriptors import FeatureConfig
    from fmrilm.errors import FmriInputError

    if args.num_proc < 1:
        raise FmriInputError(
            f"--num-proc must be at least 1, got {args.num_proc}", fix="give e.g. --num-proc 2"
        )
    cohort = Cohort.load(args.cohort)
    fit_indices, fit_on = None, None
    if args.fit_on_split:
        from fmrilm.splits import list_splits, load_split

        name, _, part = args.fit_on_split.partition(":")
        part = part or "train"
        if name not in list_splits(args.cohort):
            raise FmriInputError(
                f"The cohort has no split '{name}'",
                file=args.cohort,
                fix="make one with `fmrilm cohort split` or pick one listed by `fmrilm cohort info`",
            )
        split = load_split(args.cohort, name, cohort)
        if part not in split or not split[part]:
            raise FmriInputError(
                f"Split '{name}' has no part '{part}' (parts: {', '.join(split)})",
                file=args.cohort,
                fix="give NAME:PART with one of those parts",
            )
        fit_indices, fit_on = split[part], f"split {name}:{part}"
    path = build_corpus(
        cohort,
        args.out,
        reference=args.reference,
        fit_indices=fit_indices,
        fit_on=fit_on,
        units=("window", "scan") if args.scan_level else ("window",),
        num_proc=args.num_proc,
        seed=args.seed,
        shard_size=args.shard_size,
        feature_config=FeatureConfig(n_components=args.components, density=args.density),
        max_reference_scans=args.max_reference_scans,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(f"Wrote the descriptor corpus to {path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from fmrilm.data_gen.corpus import load_corpus

    dataset, meta, _ = load_corpus(args.dir)
    if args.json:
        print(json.dumps({k: v for k, v in meta.items() if k != "feature_names"}, indent=1))
        return 0
    print(
        f"Corpus of cohort '{meta['cohort']}': {meta['n_rows']} rows from {meta['n_described_scans']} scans"
    )
    print(f"Features: {meta['n_features']} z values; text columns: {', '.join(meta['text_columns'])}")
    print(
        f"Reference statistics fitted on: {meta.get('reference_fit_on')} ({meta.get('reference_n_scans')} scans)"
    )
    if meta.get("skipped"):
        print(f"Skipped {len(meta['skipped'])} scan(s), e.g. {meta['skipped'][0]['scan_id']}: "
              f"{meta['skipped'][0]['reason']}")  # fmt: skip
    print(f"\nExample ({dataset[0]['scan_id']}, window {dataset[0]['window']}):\n{dataset[0]['text']}")
    return 0
