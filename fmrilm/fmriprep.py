"""Build a cohort from fMRIPrep derivatives: find the runs, denoise them, parcellate them, add the phenotypes.

Each subject's, session's and run's ``*_desc-preproc_bold.nii.gz`` is found with nilearn's BIDS helpers
(``nilearn.interfaces.bids.get_bids_files`` / ``parse_bids_filename``), its confounds are chosen by one of
nilearn's named denoising strategies (``nilearn.interfaces.fmriprep.load_confounds_strategy``: simple,
scrubbing, compcor, ica_aroma) and regressed out by the same masker `fmrilm.io` uses (``NiftiLabelsMasker`` for
a labels image, ``NiftiSpheresMasker`` for coordinates), with the volumes the strategy drops (non-steady state,
scrubbed motion) left out. The TR comes from each BOLD image's JSON sidecar (``RepetitionTime``), the
phenotypes from the dataset's ``participants.tsv``; the strategy and its parameters are recorded in
``cohort.json`` (``meta["import"]["confounds"]``), and the volumes kept per scan in ``meta["import"]["runs"]``.

Every problem (no BOLD image, a missing confounds file, a run in several spaces, a subject missing from
``participants.tsv``) is one FmriInputError naming the file, the subject and the fix, raised before any image
is read where it can be.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fmrilm.atlas import Atlas, resolve_atlas
from fmrilm.cohort import Cohort
from fmrilm.cohort_import import (
    SKIP_BAD_HINT,
    TR_RANGE_S,
    CohortMapping,
    _is_missing,
    _parse_row,
    _phenotype_kinds,
    _with_default_ids,
    read_table,
    resolve_mapping,
)
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

#: nilearn's named denoising strategies (``load_confounds_strategy``).
STRATEGIES = ("simple", "scrubbing", "compcor", "ica_aroma")
#: Radius (mm) of the spheres when the atlas is a table of coordinates without a radius of its own.
DEFAULT_RADIUS_MM = 5.0
#: Entities that tell runs apart (space and resolution are versions of the same run).
RUN_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part")


@dataclass
class FmriprepRun:
    """One preprocessed BOLD run found in the derivatives."""

    path: Path
    entities: dict[str, str | None]
    scan_id: str
    subject: str  # BIDS label, without "sub-"
    session: str
    phenotypes: dict[str, Any] = field(default_factory=dict)
    site: str = ""


def find_runs(root: str | Path, *, task: str | None = None, space: str | None = None) -> list[FmriprepRun]:
    """Every ``*_desc-preproc_bold.nii[.gz]`` below ``root``, one per run (``space`` picks among spaces)."""
    from nilearn.interfaces.bids import get_bids_files, parse_bids_filename

    root = Path(root)
    if not root.is_dir():
        raise FmriInputError(
            "The fMRIPrep folder does not exist",
            file=root,
            fix="give the fMRIPrep derivatives folder (--fmriprep)",
        )
    filters = [("desc", "preproc")]
    if task:
        filters.append(("task", task))
    if space:
        filters.append(("space", space))
    files = [
        Path(p)
        for p in get_bids_files(
            root, file_tag="bold", file_type="nii*", modality_folder="func", filters=filters
        )
        if str(p).endswith((".nii", ".nii.gz"))
    ]
    if not files:
        wanted = "".join(f"_{k}-{v}" for k, v in filters[1:])
        raise FmriInputError(
            f"No sub-*/[ses-*/]func/sub-*{wanted}*_desc-preproc_bold.nii.gz image was found",
            file=root,
            fix="give the fMRIPrep output folder (the one holding the sub-* folders)"
            + (", or check --task / --space" if task or space else ""),
        )
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for path in files:
        entities = dict(parse_bids_filename(str(path))["entities"])
        key = tuple((k, entities.get(k)) for k in RUN_ENTITIES if entities.get(k) is not None)
        groups.setdefault(key, []).append((path, entities))
    runs = []
    for key, versions in sorted(groups.items(), key=lambda kv: str(kv[1][0][0])):
        if len(versions) > 1:
            spaces = sorted(
                {str(e.get("space")) + (f" res-{e['res']}" if e.get("res") else "") for _, e in versions}
            )
            raise FmriInputError(
                f"Run {'_'.join(f'{k}-{v}' for k, v in key)} has {len(versions)} preprocessed images "
                f"(spaces {', '.join(spaces)})",
                file=versions[0][0],
                fix="pick one with --space (space= in Python), e.g. --space MNI152NLin2009cAsym",
            )
        path, entities = versions[0]
        subject = str(entities.get("sub") or "")
        runs.append(
            FmriprepRun(
                path=path,
                entities=entities,
                scan_id="_".join(f"{k}-{v}" for k, v in key),
                subject=subject,
                session=str(entities.get("ses") or ""),
            )
        )
    return runs


def find_participants(root: Path) -> Path | None:
    """``participants.tsv`` in the derivatives folder, or in the BIDS dataset above it (``derivatives/fmriprep``)."""
    for folder in (root, root.parent, root.parent.parent):
        candidate = folder / "participants.tsv"
        if candidate.is_file():
            return candidate
    return None


def _strip_sub(text: str) -> str:
    text = str(text).strip()
    return text[4:] if text.lower().startswith("sub-") else text


def _attach_phenotypes(
    runs: list[FmriprepRun], table: Path, mapping: CohortMapping, skip_missing: bool
) -> tuple[list[FmriprepRun], CohortMapping, list[dict[str, Any]]]:
    """Phenotypes (and site) of each run's subject from the participants table; runs without a row are an
    error, or skipped with ``skip_missing``."""
    from fmrilm.cohort_import import _check_columns

    frame = read_table(table)
    mapping = _with_default_ids(mapping, list(frame.columns))
    if "subject_id" not in mapping.ids:
        raise FmriInputError(
            "The participants table has no participant_id column",
            file=table,
            fix="name the subject column participant_id (BIDS), or map it with --subject-column",
        )
    if not mapping.phenotypes:  # nothing named: every other column is a phenotype (kinds inferred)
        used = set(mapping.ids.values())
        specs = {c: {"column": c} for c in frame.columns if c not in used}
        mapping = CohortMapping(
            ids=mapping.ids,
            phenotypes=CohortMapping.from_dict({"phenotypes": specs}).phenotypes,
            name=mapping.name,
            source=f"the columns of {table.name}",
            origins=mapping.origins,
        )
    _check_columns(mapping, frame, table, path_column=None, npz_key=None, pattern=None)
    ids = {k: v for k, v in mapping.ids.items() if k in ("subject_id", "site")}
    row_mapping = CohortMapping(ids=ids, phenotypes=mapping.phenotypes, source=mapping.source)
    by_subject: dict[str, Any] = {}
    for i, record in enumerate(frame.to_dict("records")):
        if _is_missing(record[mapping.ids["subject_id"]]):
            continue
        row = _parse_row(i, record, row_mapping, table, None)
        by_subject.setdefault(_strip_sub(row.subject_id), row)
    kept, skipped = [], []
    for run in runs:
        row = by_subject.get(run.subject)
        if row is None:
            if skip_missing:
                skipped.append({"scan_id": run.scan_id, "subject_id": run.subject, "file": str(run.path),
                                "reason": f"sub-{run.subject} has no row in {table}"})  # fmt: skip
                continue
            raise FmriInputError(
                f"Subject sub-{run.subject} has no row in the participants table",
                file=table,
                subject=run.subject,
                fix="add the subject's row (participant_id sub-" + run.subject + "), give another table with "
                "--table, or pass --skip-missing to leave out runs without phenotypes",
            )
        run.phenotypes = dict(row.phenotypes)
        run.site = row.site
        run.row = row  # type: ignore[attr-defined]  (for the kinds below)
        kept.append(run)
    return kept, mapping, skipped


def confounds_parameters(strategy: str) -> dict[str, Any]:
    """The ``load_confounds`` parameters of one of nilearn's named strategies (recorded with the cohort)."""
    from nilearn.interfaces.fmriprep.load_confounds_strategy import preset_strategies

    if strategy not in preset_strategies:
        raise FmriInputError(
            f"Unknown confounds strategy '{strategy}'",
            fix=f"use one of nilearn's strategies: {', '.join(preset_strategies)}",
        )
    params = dict(preset_strategies[strategy])
    params["strategy"] = list(params["strategy"])
    return params


def load_run_confounds(path: Path, strategy: str, subject: str | None = None) -> tuple[Any, Any]:
    """``(confounds DataFrame, sample_mask or None)`` of one BOLD image by a named strategy (nilearn)."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "not all confounds found" is raised below
            return load_confounds_strategy(str(path), denoise_strategy=strategy)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise FmriInputError(
            f"Cannot load the '{strategy}' confounds of this run ({first})",
            file=path,
            subject=subject,
            fix="check that fMRIPrep's *_desc-confounds_timeseries.tsv (and .json for compcor) sit next to the "
            "image with the columns the strategy needs, or choose another --confounds strategy",
        ) from exc


def _check_degrees_of_freedom(run: FmriprepRun, strategy: str, regressors: Any, sample_mask: Any) -> None:
    """Regressing out as many confounds as there are kept volumes leaves nothing: say so before nilearn does."""
    if regressors is None:
        return
    kept = len(regressors) if sample_mask is None else len(sample_mask)
    if regressors.shape[1] >= kept - 1:
        raise FmriInputError(
            f"The '{strategy}' strategy regresses out {regressors.shape[1]} confounds but only {kept} of "
            f"{len(regressors)} volumes are kept, so no signal would be left",
            file=run.path,
            subject=run.subject,
            fix="use a strategy with fewer confounds (--confounds simple) or longer runs",
        )


def import_fmriprep(
    fmriprep_dir: str | Path,
    *,
    atlas: Atlas | str | Path,
    confounds: str = "simple",
    table: str | Path | None = None,
    mapping: CohortMapping | dict | str | Path | None = None,
    task: str | None = None,
    space: str | None = None,
    tr: float | None = None,
    radius_mm: float | None = None,
    bad_regions: str = "repair",
    skip_bad: bool = False,
    skip_missing: bool = False,
    min_timepoints: int | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Cohort:
    """A Cohort from fMRIPrep derivatives (saved atomically to ``out`` when given); see the module doc.

    ``confounds`` is one of nilearn's named strategies; ``table`` overrides the ``participants.tsv`` found in
    ``fmriprep_dir`` or the BIDS dataset above it; ``mapping`` (as for `import_cohort`) names the phenotype
    columns and value labels (default: every column besides the ids, kinds inferred). ``task`` / ``space`` filter
    the runs; ``tr`` overrides the sidecars. A coordinates atlas without a radius gets spheres of ``radius_mm``
    (default 5 mm).
    """
    from tqdm.auto import tqdm

    from fmrilm.io import load_denoised_nifti
    from fmrilm.signal import BadRegionWarning

    root = Path(fmriprep_dir)
    if out is not None:
        from fmrilm.safety import COHORT_OUTPUT, check_output

        check_output(out, COHORT_OUTPUT, overwrite=overwrite)
    params = confounds_parameters(confounds)
    if bad_regions not in ("repair", "reject"):
        raise FmriInputError(f"Unknown bad-region policy '{bad_regions}'", fix="use repair or reject")
    if tr is not None and not (math.isfinite(tr) and TR_RANGE_S[0] <= tr <= TR_RANGE_S[1]):
        raise FmriInputError(
            f"--tr must be seconds in {TR_RANGE_S[0]}-{TR_RANGE_S[1]}, got {tr}", fix="give e.g. --tr 2.0"
        )
    if min_timepoints is not None and (not isinstance(min_timepoints, int) or min_timepoints < 2):
        raise FmriInputError(
            f"--min-timepoints must be a whole number of at least 2, got {min_timepoints!r}",
            fix="give e.g. --min-timepoints 24 (min_timepoints=24 in Python)",
        )
    atlas_obj = resolve_atlas(atlas)
    if atlas_obj is None:
        raise FmriInputError("No atlas given", fix="pass --atlas (a labels image or a coordinates table)")
    if atlas_obj.labels_img is None and atlas_obj.radius_mm is None:
        radius = DEFAULT_RADIUS_MM if radius_mm is None else float(radius_mm)
        if not (math.isfinite(radius) and 0 < radius <= 50):
            raise FmriInputError(f"--radius must be 0-50 mm, got {radius_mm}", fix="give e.g. --radius 5")
        atlas_obj = replace(atlas_obj, radius_mm=radius)  # a copy: built-in atlases are shared
    elif radius_mm is not None and atlas_obj.labels_img is None:
        atlas_obj = replace(atlas_obj, radius_mm=float(radius_mm))

    runs = find_runs(root, task=task, space=space)
    participants = Path(table) if table is not None else find_participants(root)
    skipped: list[dict[str, Any]] = []
    mapping_obj = resolve_mapping(mapping)
    if participants is not None:
        runs, mapping_obj, skipped = _attach_phenotypes(runs, participants, mapping_obj, skip_missing)
    elif mapping_obj.phenotypes:
        raise FmriInputError(
            "Phenotypes were asked for but no participants.tsv was found",
            file=root,
            fix="put participants.tsv in the derivatives or BIDS folder, or give it with --table",
        )

    loaded: list[Scan] = []
    kept: list[FmriprepRun] = []
    details: list[dict[str, Any]] = []
    label = name or mapping_obj.name or (Path(out).name if out else root.name)
    for run in tqdm(runs, desc=f"Importing {label} ({confounds})", unit="run", disable=not progress):
        try:
            regressors, sample_mask = load_run_confounds(run.path, confounds, run.subject)
            _check_degrees_of_freedom(run, confounds, regressors, sample_mask)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BadRegionWarning)  # recorded per scan in bad_regions
                scan = load_denoised_nifti(
                    run.path,
                    atlas_obj,
                    confounds=regressors,
                    sample_mask=sample_mask,
                    tr=tr,
                    subject=f"sub-{run.subject}",
                    scan_id=run.scan_id,
                    bad_regions=bad_regions,
                    min_timepoints=min_timepoints,
                )
        except FmriInputError as exc:
            if not skip_bad:
                raise FmriInputError(
                    exc.problem,
                    fix=f"{exc.fix}; {SKIP_BAD_HINT}",
                    file=exc.file or run.path,
                    subject=run.subject,
                ) from exc
            skipped.append(
                {
                    "scan_id": run.scan_id,
                    "subject_id": run.subject,
                    "file": str(run.path),
                    "reason": exc.problem,
                }
            )
            continue
        scan.session_id, scan.site, scan.source = run.session, run.site, str(run.path)
        n_volumes = len(regressors) if regressors is not None else scan.n_timepoints
        details.append(
            {
                "scan_id": run.scan_id,
                "file": str(run.path.resolve()),
                "n_volumes": int(n_volumes),
                "n_kept": int(scan.n_timepoints),
                "n_confounds": 0 if regressors is None else int(regressors.shape[1]),
            }
        )
        loaded.append(scan)
        kept.append(run)
    if not loaded:
        raise FmriInputError(
            "No run could be imported" + (f" ({len(skipped)} skipped)" if skipped else ""),
            file=root,
            fix="check the derivatives folder and the report of skipped runs",
        )
    kinds: dict[str, str] = {}
    if participants is not None:
        kinds = _phenotype_kinds(mapping_obj, [r.row for r in kept], participants)  # type: ignore[attr-defined]
    phenotypes = [dict(r.row.phenotypes) if participants is not None else {} for r in kept]  # type: ignore[attr-defined]
    meta = {
        "import": {
            "fmriprep": str(root.resolve()),
            "table": None if participants is None else str(participants.resolve()),
            "source": {"fmriprep": str(root.resolve()), "task": task, "space": space},
            "confounds": {
                "strategy": confounds,
                "parameters": params,
                "by": "nilearn load_confounds_strategy",
            },
            "masker": "NiftiLabelsMasker" if atlas_obj.labels_img is not None else "NiftiSpheresMasker",
            "mapping": mapping_obj.to_dict(),
            "mapping_source": mapping_obj.source,
            "tr_override": tr,
            "bad_region_policy": bad_regions,
            "n_runs_found": len(runs) + sum(1 for s in skipped if "has no row" in s["reason"]),
            "n_scans": len(loaded),
            "runs": details,
            "skipped": skipped,
            "n_scans_with_bad_regions": sum(1 for s in loaded if s.flags.get("bad_regions")),
        },
        "label_maps": {k: v.values for k, v in mapping_obj.phenotypes.items() if v.values},
    }
    cohort = Cohort.from_scans(
        loaded, phenotypes, atlas=atlas_obj, name=label, phenotype_kinds=kinds or None, meta=meta
    )
    if out is not None:
        cohort.save(out, overwrite=overwrite)
    return cohort
