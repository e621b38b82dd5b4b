"""`fmrilm simulate`: write a synthetic resting-state cohort folder, optionally with NIfTI images.

The folder is built beside the target and renamed into place only when complete, so an interrupted run
leaves nothing half-written; an existing --out is used only when empty, or with --overwrite when it holds an
earlier cohort and nothing else (see `fmrilm.safety`). Heavy imports stay inside ``run`` so `fmrilm --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """examples:
  fmrilm simulate --subjects 300 --out cohorts/sim
  fmrilm simulate --subjects 200 --atlas seitzman300 --sites 6 --timepoints 120 300 --seed 7 --out cohorts/sim300
  fmrilm simulate --subjects 300 --effect-size 0 --out cohorts/null          # no phenotype effect at all
  fmrilm simulate --subjects 20 --nifti 4 --out cohorts/nii                  # + cohorts/nii/nifti/*.nii.gz
  fmrilm simulate --subjects 6 --timepoints 60 80 --fmriprep 6 --out cohorts/prep  # + cohorts/prep/fmriprep/

Effects (ground truth in DIR/cohort.json, meta.simulator.effects): each multiplies the coupling of named
networks by 1 + sign*size*z (z = +-0.5 per group, or the age position in [-0.5, 0.5]); size 0 = no effect.
  diagnosis (patient vs control): DMN-DMN and DMN-FrontoParietal coupling weaker in patients
  sex (female vs male):           Visual-Somatomotor coupling stronger in females
  age:                            DMN-DMN coupling weaker with age
Network names are mapped across atlases (DefaultMode/default -> DMN, fronto-parietal -> FrontoParietal,
occipital -> Visual, sensorimotor/SomatomotorDorsal -> Somatomotor; see fmrilm/data_gen/networks.py).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.safety import nonnegative_int

    from .simulate import SimulationConfig

    d = SimulationConfig()
    parser.description = (
        "Write a synthetic resting-state cohort: network-structured Ornstein-Uhlenbeck dynamics through a "
        "haemodynamic response, sampled at each site's TR, with site noise, drift and motion spikes, and "
        "phenotypes (age, sex, diagnosis) that change named network couplings by known amounts."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", required=True, metavar="DIR", help="cohort folder to create")
    parser.add_argument(
        "--subjects", type=int, metavar="N", help=f"subjects, one scan each (default {d.n_subjects})"
    )
    parser.add_argument(
        "--atlas",
        metavar="NAME|PATH",
        help=f"seitzman300, dosenbach160, a centroids table (.csv/.tsv) or a labels image (default {d.atlas})",
    )
    parser.add_argument("--sites", type=int, metavar="K", help=f"number of sites (default {d.n_sites})")
    parser.add_argument(
        "--timepoints",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help=f"timepoints per scan, drawn uniformly (default {d.timepoints[0]} {d.timepoints[1]})",
    )
    parser.add_argument(
        "--tr-range",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help=f"site TRs in seconds, spread evenly over this range (default {d.tr_range[0]} {d.tr_range[1]})",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, help=f"random seed; same seed = same cohort (default {d.seed})"
    )
    eff = parser.add_argument_group("phenotype effects (0 = no effect)")
    eff.add_argument("--effect-size", type=float, metavar="X", help="one size for all three effects")
    eff.add_argument("--diagnosis-effect", type=float, metavar="X", help=f"default {d.diagnosis_effect}")
    eff.add_argument("--sex-effect", type=float, metavar="X", help=f"default {d.sex_effect}")
    eff.add_argument("--age-effect", type=float, metavar="X", help=f"default {d.age_effect}")
    nii = parser.add_argument_group("NIfTI output")
    nii.add_argument(
        "--nifti",
        type=int,
        default=0,
        metavar="N",
        help="also write the first N scans as 4D NIfTI images + a labels atlas image into DIR/nifti/",
    )
    nii.add_argument(
        "--fmriprep",
        type=int,
        default=0,
        metavar="N",
        help="also write the first N scans as a small fMRIPrep-like derivatives tree into DIR/fmriprep/ "
        "(preproc BOLD + sidecars, confounds TSV/JSON, participants.tsv; labels atlas in DIR/nifti/)",
    )
    nii.add_argument(
        "--fmriprep-sessions",
        type=int,
        default=1,
        metavar="K",
        help="consecutive scans become K sessions of one participant in the fMRIPrep tree (default 1)",
    )
    nii.add_argument("--voxel-mm", type=float, default=5.0, help="NIfTI grid spacing in mm (default 5)")
    parser.add_argument(
        "--config", metavar="JSON", help="settings file (keys of SimulationConfig); flags given override it"
    )
    parser.add_argument("--name", help="cohort name (default: the output folder's name)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR when it holds an earlier cohort and nothing else (after the new one is complete)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    """A SimulationConfig from the flags (and --config), flags winning."""
    from fmrilm.errors import FmriInputError

    from .simulate import SimulationConfig

    base: dict = {}
    if args.config:
        path = Path(args.config)
        try:
            base = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FmriInputError(
                f"Cannot read the settings file ({exc})", file=path, fix="give a JSON object of settings"
            ) from exc
        if not isinstance(base, dict):
            raise FmriInputError("The settings file is not a JSON object", file=path, fix="give {key: value}")
    try:
        config = SimulationConfig.from_dict(base)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FmriInputError):
            raise
        raise FmriInputError(
            f"The settings file has a value of the wrong type ({exc})",
            file=args.config,
            fix="give numbers for numeric settings and [MIN, MAX] lists for ranges",
        ) from exc
    flags = {
        "n_subjects": args.subjects,
        "atlas": args.atlas,
        "n_sites": args.sites,
        "timepoints": args.timepoints,
        "tr_range": args.tr_range,
        "seed": args.seed,
        "name": args.name,
    }
    for key, value in flags.items():
        if value is not None:
            setattr(config, key, tuple(value) if isinstance(value, list) else value)
    if args.name is None and "name" not in base:
        config.name = Path(args.out).name
    if args.effect_size is not None:
        config.diagnosis_effect = config.sex_effect = config.age_effect = args.effect_size
    for pheno in ("diagnosis", "sex", "age"):
        value = getattr(args, f"{pheno}_effect")
        if value is not None:
            setattr(config, f"{pheno}_effect", value)
    try:
        config.validate()
    except FmriInputError as exc:
        where = f" (from the settings file {args.config} or the flags)" if args.config else ""
        raise FmriInputError(exc.problem + where, fix=exc.fix, file=args.config) from exc
    except (TypeError, ValueError) as exc:
        raise FmriInputError(
            f"A setting has a value of the wrong type ({exc})",
            file=args.config,
            fix="give numbers for numeric settings and [MIN, MAX] lists for ranges",
        ) from exc
    return config


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag checked where it enters, naming the flag (NaN and infinity included)."""
    import math

    from fmrilm.errors import FmriInputError

    def need(ok: bool, flag: str, value, fix: str) -> None:
        if not ok:
            raise FmriInputError(f"{flag} is {value}, which cannot be used", fix=fix)

    if args.subjects is not None:
        need(args.subjects >= 1, "--subjects", args.subjects, "give at least 1 subject, e.g. --subjects 100")
    if args.sites is not None:
        need(args.sites >= 1, "--sites", args.sites, "give at least 1 site, e.g. --sites 4")
        if args.subjects is not None:
            need(
                args.sites <= args.subjects,
                "--sites",
                args.sites,
                f"give at most as many sites as subjects ({args.subjects})",
            )
    if args.timepoints is not None:
        lo, hi = args.timepoints
        need(
            16 <= lo <= hi <= 100_000,
            "--timepoints",
            f"{lo} {hi}",
            "give MIN MAX with 16 <= MIN <= MAX <= 100000, e.g. --timepoints 120 300",
        )
    if args.tr_range is not None:
        lo, hi = args.tr_range
        need(
            math.isfinite(lo) and math.isfinite(hi) and 0.2 <= lo <= hi <= 10.0,
            "--tr-range",
            f"{lo} {hi}",
            "give MIN MAX seconds with 0.2 <= MIN <= MAX <= 10, e.g. --tr-range 0.8 2.5",
        )
    for flag in ("effect_size", "diagnosis_effect", "sex_effect", "age_effect"):
        value = getattr(args, flag)
        if value is not None:
            name = "--" + flag.replace("_", "-")
            need(math.isfinite(value) and 0.0 <= value < 1.9, name, value, f"give {name} in [0, 1.9)")
    need(args.nifti >= 0, "--nifti", args.nifti, "give 0 or a positive number of images")
    need(args.fmriprep >= 0, "--fmriprep", args.fmriprep, "give 0 or a positive number of scans")
    need(
        1 <= args.fmriprep_sessions <= 20,
        "--fmriprep-sessions",
        args.fmriprep_sessions,
        "give 1 to 20 sessions per participant",
    )
    need(
        math.isfinite(args.voxel_mm) and 1.0 <= args.voxel_mm <= 20.0,
        "--voxel-mm",
        args.voxel_mm,
        "give a grid spacing in mm between 1 and 20, e.g. --voxel-mm 5",
    )


def run(args: argparse.Namespace) -> int:
    from fmrilm.safety import COHORT_OUTPUT, check_output, staged_output

    from .nifti import BOLD_SUFFIX, LABELS_IMAGE, write_fmriprep_tree, write_nifti_scans
    from .simulate import simulate_cohort

    out = Path(args.out)
    check_output(out, COHORT_OUTPUT, overwrite=args.overwrite)  # before the slow part
    check_numbers(args)
    config = build_config(args)
    if args.quiet:
        import datasets

        datasets.disable_progress_bars()
    cohort = simulate_cohort(config, progress=not args.quiet)
    n_nifti = min(args.nifti, len(cohort))
    if n_nifti:
        ids = cohort.dataset["scan_id"][:n_nifti]
        cohort.meta["simulator"]["nifti"] = {
            "labels_image": f"nifti/{LABELS_IMAGE}",
            "images": [f"nifti/{sid}{BOLD_SUFFIX}.nii.gz" for sid in ids],
            "voxel_mm": args.voxel_mm,
        }
    n_prep = min(args.fmriprep, len(cohort))
    if n_prep:
        cohort.meta["simulator"]["fmriprep"] = {
            "folder": "fmriprep",
            "labels_image": f"nifti/{LABELS_IMAGE}",
            "scans": list(cohort.dataset["scan_id"][:n_prep]),
            "sessions": args.fmriprep_sessions,
            "voxel_mm": args.voxel_mm,
        }

    # Written beside --out and renamed in when complete; cohort.json (the mark of a complete cohort) last.
    with staged_output(out, COHORT_OUTPUT, overwrite=args.overwrite) as stage:
        if n_nifti:
            write_nifti_scans(cohort, stage / "nifti", n_nifti, voxel_mm=args.voxel_mm, seed=config.seed)
        if n_prep:
            write_fmriprep_tree(
                cohort,
                stage / "fmriprep",
                n_prep,
                sessions=args.fmriprep_sessions,
                atlas_folder=stage / "nifti",
                voxel_mm=args.voxel_mm,
                seed=config.seed,
            )
        cohort.write_into(stage)

    table = cohort.phenotype_table()
    site_text = ", ".join(
        f"{site} (TR {float(group['tr'].iloc[0]):.2f} s, {len(group)} scans)"
        for site, group in table.groupby("site")
    )
    sizes = config.effect_sizes()
    print(
        f"wrote {len(cohort)} simulated scans ({cohort.atlas.name}, {cohort.atlas.n_regions} regions) to {out}\n"
        f"sites: {site_text}\n"
        f"effects: "
        + ", ".join(f"{k} {v:g}" for k, v in sizes.items())
        + " (ground truth in cohort.json)"
        + (f"\nNIfTI: {n_nifti} images + labels atlas in {out / 'nifti'}" if n_nifti else "")
        + (
            f"\nfMRIPrep-like derivatives: {n_prep} runs in {out / 'fmriprep'} (labels atlas "
            f"{out / 'nifti' / LABELS_IMAGE})"
            if n_prep
            else ""
        )
    )
    return 0
