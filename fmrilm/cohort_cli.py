"""`fmrilm cohort import|info|split`: build a cohort from a participants table, summarise it, split it.

Heavy imports (datasets, scikit-learn) stay inside the functions so `fmrilm --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EPILOG_IMPORT = """examples:
  fmrilm cohort import --table ../shared/data/abide/phenotypes.csv \\
      --npz ../shared/data/abide/timeseries_cc200.npz --atlas ../shared/data/abide/cc200_centroids.csv \\
      --preset abide --out cohorts/abide
  fmrilm cohort import --table participants.tsv --scans 'scans/{participant_id}_rois.1D' --atlas seitzman300 \\
      --phenotype age --phenotype diagnosis=group --values diagnosis=1:patient,2:control --tr 2.0 --out cohorts/mine
  fmrilm cohort import --fmriprep bids/derivatives/fmriprep --atlas schaefer100_labels.nii.gz \\
      --confounds scrubbing --out cohorts/fmriprep-scrubbing

The mapping (--mapping FILE.yaml or --preset NAME) names the table columns of the ids (scan_id, subject_id,
session_id, site, tr) and of each phenotype, with value labels and missing codes; the column flags say the same
and refine it. Paths in the table and in --scans are relative to the table's folder.

--fmriprep DIR reads fMRIPrep derivatives: every sub-*/[ses-*/]func/*_desc-preproc_bold.nii.gz, denoised with
nilearn's load_confounds_strategy (--confounds simple|scrubbing|compcor|ica_aroma) and parcellated with the
atlas (a labels image, or coordinates as spheres of --radius mm); TR from each image's JSON sidecar, phenotypes
from participants.tsv (in DIR or the BIDS folder above it, or --table; default: all its columns).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.safety import fraction, nonnegative_int, positive_float, positive_int, probability

    sub = parser.add_subparsers(dest="cohort_command", required=True, metavar="ACTION")

    imp = sub.add_parser(
        "import",
        help="Build a cohort folder from a participants table and its scans.",
        description="Build a cohort folder (a Hugging Face dataset plus cohort.json) from a participants "
        "table (CSV/TSV) and scans found by a filename pattern, a path column or a keyed .npz.",
        epilog=EPILOG_IMPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument(
        "--table",
        help="participants table (.csv or .tsv), one row per scan (with --fmriprep: one row per participant, "
        "default DIR's participants.tsv)",
    )
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--scans", metavar="PATTERN", help="scan filename pattern with {COLUMN} placeholders")
    source.add_argument("--path-column", metavar="COL", help="table column holding each scan's file")
    source.add_argument("--npz", metavar="FILE", help="one .npz holding one (time, regions) array per scan")
    source.add_argument(
        "--fmriprep", metavar="DIR", help="fMRIPrep derivatives folder (denoised and parcellated here)"
    )
    prep = imp.add_argument_group("fMRIPrep derivatives (with --fmriprep)")
    prep.add_argument(
        "--confounds",
        default="simple",
        metavar="STRATEGY",
        help="nilearn denoising strategy: simple (default), scrubbing, compcor or ica_aroma",
    )
    prep.add_argument("--task", help="only runs of this task (e.g. rest)")
    prep.add_argument("--space", help="output space when runs exist in several (e.g. MNI152NLin2009cAsym)")
    prep.add_argument(
        "--radius",
        type=positive_float,
        metavar="MM",
        help="sphere radius for a coordinates atlas (default 5 mm)",
    )
    imp.add_argument(
        "--npz-key", metavar="COL", help="table column whose values key the .npz (default: scan id)"
    )
    imp.add_argument(
        "--atlas", required=True, help="built-in atlas name, centroids table (.csv) or labels image (.nii.gz)"
    )
    mapping = imp.add_mutually_exclusive_group()
    mapping.add_argument(
        "--mapping", metavar="YAML", help="value mapping file (see fmrilm/presets/abide.yaml)"
    )
    mapping.add_argument("--preset", metavar="NAME", help="a shipped mapping, e.g. abide")
    cols = imp.add_argument_group("column flags (the same mapping as a YAML file; they refine --mapping)")
    cols.add_argument("--scan-id-column", metavar="COL")
    cols.add_argument("--subject-column", metavar="COL")
    cols.add_argument("--session-column", metavar="COL")
    cols.add_argument("--site-column", metavar="COL")
    cols.add_argument("--tr-column", metavar="COL")
    cols.add_argument("--phenotype", action="append", metavar="NAME=COL", help="phenotype from a column")
    cols.add_argument(
        "--values",
        action="append",
        metavar="NAME=RAW:LABEL,...",
        help="value labels, e.g. sex=1:male,2:female",
    )
    cols.add_argument("--missing", action="append", metavar="NAME=V,...", help="codes meaning missing")
    cols.add_argument("--kind", action="append", metavar="NAME=KIND", help="binary, multiclass or regression")
    imp.add_argument(
        "--tr", type=float, help="TR in seconds for every scan (overrides the table's TR column)"
    )
    imp.add_argument(
        "--bad-regions",
        choices=("repair", "reject"),
        default="repair",
        help="constant/zero/non-finite regions: repair and record them (default) or reject the scan",
    )
    imp.add_argument("--skip-bad", action="store_true", help="skip scans that fail validation and list them")
    imp.add_argument("--skip-missing", action="store_true", help="skip table rows that have no scan")
    imp.add_argument("--min-timepoints", type=int, help="shortest acceptable scan (default 24)")
    imp.add_argument("--name", help="cohort name (default: the mapping's name or the output folder's)")
    imp.add_argument(
        "--out", required=True, help="cohort folder to write: new or empty (written beside, then renamed in)"
    )
    imp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it holds an earlier cohort and nothing else (after the new one is complete)",
    )
    imp.set_defaults(cohort_func=run_import)

    info = sub.add_parser(
        "info",
        help="Print a cohort's counts per site and label.",
        description="Print counts per site and per label, age mean/SD, timepoints, TRs and bad regions.",
    )
    info.add_argument("dir", help="cohort folder")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(cohort_func=run_info)

    split = sub.add_parser(
        "split",
        help="Write a subject-level split (stratified or leave-sites-out) into the cohort folder.",
        description="Write splits/<name>.json inside the cohort folder: row indices and scan ids of train, "
        "(val,) test. No subject is in two parts; leave-sites-out keeps test sites out of training.",
    )
    split.add_argument("dir", help="cohort folder")
    split.add_argument("--kind", required=True, choices=("stratified", "leave-sites-out"))
    split.add_argument("--label", help="column to stratify by (default diagnosis for --kind stratified)")
    split.add_argument(
        "--test-size", type=fraction, default=0.2, help="stratified: test fraction (default 0.2)"
    )
    split.add_argument(
        "--val-size", type=probability, default=0.0, help="validation fraction of subjects (default 0)"
    )
    split.add_argument("--test-sites", help="leave-sites-out: comma-separated test sites")
    split.add_argument(
        "--n-test-sites", type=positive_int, default=1, help="leave-sites-out: random test sites (default 1)"
    )
    split.add_argument("--val-sites", help="leave-sites-out: comma-separated validation sites")
    split.add_argument(
        "--n-val-sites", type=nonnegative_int, default=0, help="leave-sites-out: random validation sites"
    )
    split.add_argument("--seed", type=nonnegative_int, default=0)
    split.add_argument("--name", help="split name (default: the kind); written to splits/<name>.json")
    split.add_argument(
        "--overwrite", action="store_true", help="replace a different split of the same name in the cohort"
    )
    split.set_defaults(cohort_func=run_split)

    subset = sub.add_parser(
        "subset",
        help="Write one part of a stored split as a cohort of its own (e.g. train only).",
        description="Write the scans of one part of splits/<name>.json as a new cohort folder, so that "
        "unsupervised stages (tokenizer, alignment) can be kept off the test subjects and sites.",
    )
    subset.add_argument("dir", help="cohort folder")
    subset.add_argument(
        "--split", required=True, help="split name stored in the cohort (`fmrilm cohort split`)"
    )
    subset.add_argument("--part", default="train", help="part to keep (default train)")
    subset.add_argument("--out", required=True, help="new cohort folder (written atomically)")
    subset.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it holds an earlier cohort and nothing else",
    )
    subset.set_defaults(cohort_func=run_subset)


def run(args: argparse.Namespace) -> int:
    return int(args.cohort_func(args) or 0)


# ------------------------------------------------------------------------------------------------------ import
def run_import(args: argparse.Namespace) -> int:
    from fmrilm.cohort_import import CohortMapping, import_cohort, mapping_from_flags
    from fmrilm.errors import FmriInputError

    if not args.fmriprep:
        if args.table is None:
            raise FmriInputError(
                "--table is needed with --scans, --path-column or --npz",
                fix="give the participants table (--table FILE.csv|.tsv), or read fMRIPrep derivatives with --fmriprep DIR",
            )
        used = [f for f in ("task", "space", "radius") if getattr(args, f) is not None]
        if args.confounds != "simple":
            used.append("confounds")
        if used:
            raise FmriInputError(
                f"--{', --'.join(used)} appl{'ies' if len(used) == 1 else 'y'} to --fmriprep only",
                fix="drop them, or import fMRIPrep derivatives with --fmriprep DIR",
            )

    if args.preset:
        base = CohortMapping.preset(args.preset)
    elif args.mapping:
        base = CohortMapping.from_yaml(args.mapping)
    else:
        base = CohortMapping()
    flags = mapping_from_flags(
        scan_id_column=args.scan_id_column,
        subject_column=args.subject_column,
        session_column=args.session_column,
        site_column=args.site_column,
        tr_column=args.tr_column,
        phenotype=args.phenotype,
        values=args.values,
        missing=args.missing,
        kind=args.kind,
    )
    common = dict(  # what both import paths take from the flags
        bad_regions=args.bad_regions,
        skip_bad=args.skip_bad,
        skip_missing=args.skip_missing,
        min_timepoints=args.min_timepoints,
        name=args.name,
        out=args.out,
        overwrite=args.overwrite,
    )
    if args.fmriprep:
        if args.path_column or args.npz_key or args.scan_id_column or args.session_column or args.tr_column:
            raise FmriInputError(
                "--npz-key, --scan-id-column, --session-column and --tr-column do not apply to --fmriprep "
                "(runs, sessions and TRs come from the BIDS names and sidecars)",
                fix="drop them (--subject-column, --site-column and the phenotype flags do apply)",
            )
        from fmrilm.fmriprep import import_fmriprep

        cohort = import_fmriprep(
            args.fmriprep,
            atlas=args.atlas,
            confounds=args.confounds,
            table=args.table,
            mapping=base.merged(flags),
            task=args.task,
            space=args.space,
            tr=args.tr,
            radius_mm=args.radius,
            **common,
        )
    else:
        cohort = import_cohort(
            args.table,
            atlas=args.atlas,
            scans=args.scans,
            path_column=args.path_column,
            npz=args.npz,
            npz_key=args.npz_key,
            mapping=base.merged(flags),
            tr=args.tr,
            **common,
        )
    report = cohort.meta["import"]
    n_subjects = len(set(cohort.dataset["subject_id"]))
    print(
        f"Imported {len(cohort)} scans of {n_subjects} subjects into {args.out} "
        f"(atlas {cohort.atlas.name}, {cohort.atlas.n_regions} regions)."
    )
    if args.fmriprep:
        runs = report["runs"]
        dropped = sum(r["n_volumes"] - r["n_kept"] for r in runs)
        print(
            f"Denoised with nilearn's '{args.confounds}' strategy ({report['masker']}): "
            f"{min(r['n_confounds'] for r in runs)}-{max(r['n_confounds'] for r in runs)} confounds per run, "
            f"{dropped} of {sum(r['n_volumes'] for r in runs)} volumes left out (non-steady state, scrubbing); "
            "recorded in cohort.json."
        )
    if report["n_scans_with_bad_regions"]:
        print(
            f"{report['n_scans_with_bad_regions']} scans have constant/zero/non-finite regions "
            f"({report['bad_region_policy']}ed, listed in the bad_regions column; see `fmrilm cohort info`)."
        )
    if report["skipped"]:
        print(f"Skipped {len(report['skipped'])} row(s):")
        for item in report["skipped"]:
            print(
                f"  {'row ' + str(item['row']) + ' ' if 'row' in item else ''}scan {item['scan_id']} (subject {item['subject_id']}): {item['reason']}"
            )
    return 0


# -------------------------------------------------------------------------------------------------------- info
def summarize(cohort) -> dict[str, Any]:
    """Counts per site and label, age mean/SD, timepoints, TRs and bad regions, as plain data."""
    table = cohort.phenotype_table()
    bad = (
        table["bad_regions"].map(len) if "bad_regions" in table.columns else table["scan_id"].map(lambda _: 0)
    )
    categorical = [c for c, k in cohort.phenotypes.items() if k != "regression" and c in table.columns]
    numeric = [c for c, k in cohort.phenotypes.items() if k == "regression" and c in table.columns]

    def counts(frame, col: str) -> dict[str, int]:
        values = frame[col].astype(object).where(frame[col].notna(), "missing")
        return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}

    def stats(series) -> dict[str, Any]:
        present = series.dropna()
        return {
            "mean": float(present.mean()) if len(present) else None,
            "sd": float(present.std()) if len(present) > 1 else None,
            "n": int(len(present)),
            "missing": int(series.isna().sum()),
        }

    sites = {}
    for site, frame in table.groupby(table["site"].fillna(""), sort=True):
        sites[str(site)] = {
            "scans": len(frame),
            "subjects": int(frame["subject_id"].nunique()),
            "tr": sorted({round(float(t), 4) for t in frame["tr"]}),
            "timepoints": [int(frame["n_timepoints"].min()), int(frame["n_timepoints"].max())],
            "bad_region_scans": int((bad[frame.index] > 0).sum()),
            **{c: counts(frame, c) for c in categorical},
            **({"age": stats(frame["age"])} if "age" in numeric else {}),
        }
    return {
        "name": cohort.name,
        "atlas": cohort.atlas.name,
        "n_regions": cohort.atlas.n_regions,
        "n_scans": len(table),
        "n_subjects": int(table["subject_id"].nunique()),
        "n_sites": len(sites),
        "timepoints": {
            "min": int(table["n_timepoints"].min()),
            "median": float(table["n_timepoints"].median()),
            "max": int(table["n_timepoints"].max()),
        },
        "tr": {
            str(round(float(t), 4)): int(n)
            for t, n in table["tr"].round(4).value_counts().sort_index().items()
        },
        "bad_regions": {
            "scans": int((bad > 0).sum()),
            "regions_total": int(bad.sum()),
            "max_per_scan": int(bad.max()) if len(bad) else 0,
        },
        "labels": {c: counts(table, c) for c in categorical},
        "numeric": {c: stats(table[c]) for c in numeric},
        "sites": sites,
    }


def format_summary(summary: dict[str, Any], splits: list[str] | None = None) -> str:
    import pandas as pd

    lines = [
        f"Cohort '{summary['name']}': {summary['n_scans']} scans, {summary['n_subjects']} subjects, "
        f"{summary['n_sites']} sites; atlas {summary['atlas']} ({summary['n_regions']} regions)",
        f"Timepoints: {summary['timepoints']['min']}-{summary['timepoints']['max']} "
        f"(median {summary['timepoints']['median']:g})",
        "TR (s): " + ", ".join(f"{t} ({n} scans)" for t, n in summary["tr"].items()),
    ]
    bad = summary["bad_regions"]
    lines.append(
        f"Bad regions (constant/zero/non-finite, repaired): {bad['scans']} scans, {bad['regions_total']} regions "
        f"in all, at most {bad['max_per_scan']} in one scan"
        if bad["scans"]
        else "Bad regions: none"
    )
    for col, counts in summary["labels"].items():
        lines.append(f"{col}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for col, st in summary["numeric"].items():
        if st["mean"] is None:
            lines.append(f"{col}: all missing")
            continue
        sd = f", SD {st['sd']:.2f}" if st["sd"] is not None else ""
        missing = f", {st['missing']} missing" if st["missing"] else ""
        lines.append(f"{col}: mean {st['mean']:.2f}{sd} (n={st['n']}{missing})")
    rows = []
    for site, info in summary["sites"].items():
        row = {
            "site": site or "(none)",
            "scans": info["scans"],
            "subjects": info["subjects"],
            "TR": ",".join(f"{t:g}" for t in info["tr"]),
            "timepoints": f"{info['timepoints'][0]}-{info['timepoints'][1]}",
        }
        for col in summary["labels"]:
            for value, n in info[col].items():
                row[f"{col}:{value}"] = n
        if "age" in info and info["age"]["mean"] is not None:
            row["age"] = f"{info['age']['mean']:.1f}"
        row["bad"] = info["bad_region_scans"]
        rows.append(row)
    frame = pd.DataFrame(rows).fillna(0)
    for col in frame.columns:
        if frame[col].dtype.kind == "f":
            frame[col] = frame[col].astype(int)
    lines += ["", "Per site:", frame.to_string(index=False)]
    if splits is not None:
        lines += [
            "",
            "Splits: " + (", ".join(splits) if splits else "none (make one with `fmrilm cohort split`)"),
        ]
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from fmrilm.cohort import load_cohort
    from fmrilm.splits import list_splits

    cohort = load_cohort(args.dir)
    summary = summarize(cohort)
    splits = list_splits(args.dir)
    if args.json:
        print(json.dumps({**summary, "splits": splits}, indent=1))
    else:
        print(format_summary(summary, splits))
    return 0


# ------------------------------------------------------------------------------------------------------- split
def run_split(args: argparse.Namespace) -> int:
    from fmrilm.cohort import load_cohort
    from fmrilm.errors import FmriInputError
    from fmrilm.splits import describe_split, leave_sites_out_split, save_split, stratified_split

    cohort = load_cohort(args.dir)

    def names(text: str | None) -> list[str] | None:
        return [s.strip() for s in text.split(",") if s.strip()] if text else None

    if args.kind == "stratified":
        if args.test_sites or args.val_sites or args.n_val_sites:
            raise FmriInputError(
                "--test-sites / --val-sites / --n-val-sites apply to --kind leave-sites-out",
                fix="drop them, or use --kind leave-sites-out",
            )
        label = args.label or "diagnosis"
        params = {"label": label, "test_size": args.test_size, "val_size": args.val_size, "seed": args.seed}
        split = stratified_split(cohort, **params)
    else:
        label = args.label
        params = {
            "test_sites": names(args.test_sites),
            "n_test_sites": args.n_test_sites,
            "val_sites": names(args.val_sites),
            "n_val_sites": args.n_val_sites,
            "val_size": args.val_size,
            "label": label,
            "seed": args.seed,
        }
        split = leave_sites_out_split(cohort, **params)
    name = args.name or args.kind
    path = save_split(
        Path(args.dir), name, split, kind=args.kind, params=params, label=label, overwrite=args.overwrite
    )
    print(f"Wrote split '{name}' to {path}")
    for part, info in describe_split(cohort, split, label).items():
        extra = f"; {label}: {info[label]}" if label and label in info else ""
        print(
            f"  {part}: {info['n_scans']} scans, {info['n_subjects']} subjects, sites "
            f"{', '.join(info['sites'])}{extra}"
        )
    return 0


# ------------------------------------------------------------------------------------------------------ subset
def run_subset(args: argparse.Namespace) -> int:
    from fmrilm.cohort import load_cohort
    from fmrilm.errors import FmriInputError
    from fmrilm.splits import load_split

    if Path(args.out).resolve() == Path(args.dir).resolve():
        raise FmriInputError(
            "--out is the cohort the subset is read from", file=args.out, fix="give a new --out folder"
        )
    cohort = load_cohort(args.dir)
    split = load_split(args.dir, args.split, cohort)
    if args.part not in split:
        raise FmriInputError(
            f"Split '{args.split}' has no part '{args.part}'",
            file=args.dir,
            fix=f"choose one of {', '.join(split)}",
        )
    part = cohort.select(split[args.part], name=f"{cohort.name}-{args.part}")
    part.meta = {**part.meta, "subset_of": {"cohort": str(args.dir), "split": args.split, "part": args.part}}
    part.save(args.out, overwrite=args.overwrite)
    print(f"Wrote {len(part)} scans (part '{args.part}' of split '{args.split}') to {args.out}")
    return 0
