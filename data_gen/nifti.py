"""Small NIfTI 4D images and a matching labels atlas from region time series.

Why: the NIfTI path (masker, header TR, BIDS sidecar) has to be tested end to end without downloading an
atlas or a scan. Each region becomes a blob of voxels around its MNI centroid on a coarse grid; every voxel
of a blob carries its region's signal plus a little independent noise, so parcellating the image with the
labels atlas gives the region signals back. Background voxels are 0.

Files written by :func:`write_nifti_scans` into a folder:

    atlas_labels.nii.gz          3D int16 labels, value i+1 = region i of the atlas, 0 = background
    atlas_labels.tsv             index, label, network, x, y, z (MNI mm) of each region
    <scan_id>_task-rest_bold.nii.gz    4D float32, header TR in pixdim[4] (seconds)
    <scan_id>_task-rest_bold.json      BIDS sidecar: RepetitionTime, TaskName, SubjectID, Site
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.safety import file_mode

LABELS_IMAGE = "atlas_labels.nii.gz"
LABELS_TABLE = "atlas_labels.tsv"
BOLD_SUFFIX = "_task-rest_bold"


def labels_volume(
    atlas: Atlas, voxel_mm: float = 5.0, radius_mm: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int16 3D, affine): each voxel within ``radius_mm`` of a centroid gets the nearest region.

    Close centroids can leave a region without a voxel on a coarse grid; the grid is then refined (down to
    2 mm) until every region has at least one voxel, so the image always has all ``R`` labels.
    """
    from scipy.spatial import cKDTree

    coords = atlas.coords.astype(float)
    tree = cKDTree(coords)
    size = float(voxel_mm)
    while True:
        reach = max(radius_mm, 0.9 * size)  # a blob must reach at least its own voxel
        lo = np.floor((coords.min(0) - reach) / size) * size - size
        hi = np.ceil((coords.max(0) + reach) / size) * size + size
        shape = tuple(int(v) for v in np.round((hi - lo) / size) + 1)
        grid = np.stack(
            np.meshgrid(*[lo[d] + size * np.arange(shape[d]) for d in range(3)], indexing="ij"), -1
        )
        dist, nearest = tree.query(grid.reshape(-1, 3))
        labels = np.where(dist <= reach, nearest + 1, 0).reshape(shape).astype(np.int16)
        present = np.unique(labels[labels > 0])
        if present.size == atlas.n_regions:
            affine = np.diag([size, size, size, 1.0])
            affine[:3, 3] = lo
            return labels, affine
        if size <= 2.0:
            raise FmriInputError(
                f"Atlas '{atlas.name}' has regions closer than a 2 mm grid can separate "
                f"({atlas.n_regions - present.size} regions get no voxel)",
                fix="use an atlas with distinct centroids",
            )
        size = max(2.0, size * 0.75)


def _atomic_nifti(img, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    try:
        img.to_filename(tmp)
        os.chmod(tmp, file_mode())  # mkstemp makes owner-only files; give what the user's umask gives
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_labels_image(atlas: Atlas, folder: str | Path, voxel_mm: float = 5.0, radius_mm: float = 6.0):
    """Write the labels image and its region table; returns (image path, labels volume, affine)."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels, affine = labels_volume(atlas, voxel_mm, radius_mm)
    img = nib.Nifti1Image(labels, affine)
    img.header.set_xyzt_units("mm")
    path = folder / LABELS_IMAGE
    _atomic_nifti(img, path)
    rows = ["index\tlabel\tnetwork\tx\ty\tz"]
    for i, (label, net, xyz) in enumerate(zip(atlas.labels, atlas.networks, atlas.coords, strict=True)):
        rows.append(f"{i + 1}\t{label}\t{net}\t" + "\t".join(f"{v:.2f}" for v in xyz))
    _atomic_text("\n".join(rows) + "\n", folder / LABELS_TABLE)
    return path, labels, affine


def _region_of_voxels(labels: np.ndarray, regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask of labelled voxels and each one's 0-based region; a label beyond the scan's regions is refused."""
    inside = labels > 0
    region_of = labels[inside].astype(np.int64) - 1
    if region_of.max() >= regions:
        raise FmriInputError(
            f"The labels image has {region_of.max() + 1} regions but the scan has {regions}",
            fix="write the labels image from the scan's own atlas",
        )
    return inside, region_of


def write_bold_image(
    timeseries: np.ndarray,
    tr: float,
    labels: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    rng: np.random.Generator,
    voxel_noise: float = 0.3,
    sidecar: dict | None = None,
) -> Path:
    """Write one 4D image: voxel = its region's signal + Gaussian noise (``voxel_noise`` x region SD)."""
    import nibabel as nib

    ts = np.asarray(timeseries, dtype=np.float32)
    t_len, regions = ts.shape
    inside, region_of = _region_of_voxels(labels, regions)
    sd = ts.std(axis=0)
    sd[sd == 0] = 1.0
    voxels = ts[:, region_of] + rng.standard_normal((t_len, region_of.size)).astype(np.float32) * (
        voxel_noise * sd[region_of]
    )
    data = np.zeros(labels.shape + (t_len,), dtype=np.float32)
    data[inside] = voxels.T
    img = nib.Nifti1Image(data, affine)
    zooms = tuple(float(v) for v in np.abs(np.diag(affine)[:3]))
    img.header.set_zooms(zooms + (float(tr),))
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    _atomic_nifti(img, path)
    meta = {"RepetitionTime": float(tr), "TaskName": "rest"}
    meta.update(sidecar or {})
    _atomic_text(json.dumps(meta, indent=1) + "\n", path.with_name(path.name.split(".nii")[0] + ".json"))
    return path


def write_nifti_scans(
    cohort,
    folder: str | Path,
    n_scans: int,
    *,
    voxel_mm: float = 5.0,
    radius_mm: float = 6.0,
    voxel_noise: float = 0.3,
    seed: int = 0,
) -> list[Path]:
    """The labels atlas plus the first ``n_scans`` scans of a cohort as 4D images with BIDS sidecars."""
    folder = Path(folder)
    _, labels, affine = write_labels_image(cohort.atlas, folder, voxel_mm, radius_mm)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(min(int(n_scans), len(cohort))):
        scan = cohort.scan(i)
        paths.append(
            write_bold_image(
                scan.timeseries,
                scan.tr,
                labels,
                affine,
                folder / f"{scan.scan_id}{BOLD_SUFFIX}.nii.gz",
                rng=rng,
                voxel_noise=voxel_noise,
                sidecar={"SubjectID": scan.subject_id, "Site": scan.site},
            )
        )
    return paths


# ------------------------------------------------------------------------------------- fMRIPrep-like tree
FMRIPREP_SPACE = "MNI152NLin2009cAsym"
MOTION_PARAMS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
PARTICIPANT_COLUMNS = ("age", "sex", "diagnosis", "site")


def bids_label(text: str) -> str:
    """A BIDS label (letters and digits only) from an id: ``sim-0001`` -> ``sim0001``."""
    label = "".join(ch for ch in str(text) if ch.isalnum())
    if not label:
        raise FmriInputError(
            f"The id '{text}' has no letter or digit to make a BIDS label of", fix="rename it"
        )
    return label


def _with_expansions(frame: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
    """Add fMRIPrep's ``_derivative1``, ``_power2`` and ``_derivative1_power2`` columns (first derivative n/a)."""
    for name in names:
        x = frame[name]
        d = np.concatenate([[np.nan], np.diff(x)])
        frame[f"{name}_derivative1"] = d
        frame[f"{name}_power2"] = x**2
        frame[f"{name}_derivative1_power2"] = d**2


def simulated_confounds(
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
    *,
    n_compcor: int = 5,
    non_steady: int = 1,
    n_spikes: int = 2,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """fMRIPrep-style confound columns (TSV order kept) and the JSON metadata of the CompCor components.

    Motion is a small random walk with ``n_spikes`` jumps (framewise displacement above 0.5 mm there, so
    scrubbing has volumes to drop); ``csf``, ``white_matter`` and the aCompCor components are smooth noise;
    ``global_signal``, ``dvars`` and ``std_dvars`` are filled in by the caller from the image itself.
    """
    t = n_volumes
    frame: dict[str, np.ndarray] = {}
    steps = rng.standard_normal((t, 6)) * np.array([0.02] * 3 + [0.0004] * 3)
    for when in rng.choice(
        np.arange(max(non_steady, 1) + 1, t - 1), size=min(n_spikes, t - 3), replace=False
    ):
        steps[when, :3] += rng.choice([-1.0, 1.0], 3) * 0.4  # a jerk of about 0.7 mm in all
    motion = np.cumsum(steps, axis=0)
    for j, name in enumerate(MOTION_PARAMS):
        frame[name] = motion[:, j]
    _with_expansions(frame, MOTION_PARAMS)
    kernel = np.exp(-0.5 * (np.arange(-4, 5) / 2.0) ** 2)
    kernel /= kernel.sum()

    def smooth() -> np.ndarray:
        return np.convolve(rng.standard_normal(t + 8), kernel, mode="valid")[:t]

    frame["csf"], frame["white_matter"] = smooth(), smooth()
    frame["global_signal"] = np.zeros(t)
    _with_expansions(frame, ("csf", "white_matter", "global_signal"))
    fd = np.abs(np.diff(motion[:, :3], axis=0)).sum(1) + 50.0 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1)
    frame["framewise_displacement"] = np.concatenate([[np.nan], fd])
    frame["dvars"] = np.full(t, np.nan)
    frame["std_dvars"] = np.full(t, np.nan)
    comp = np.stack([smooth() for _ in range(n_compcor)], axis=1)
    comp -= comp.mean(0)
    u, s, _ = np.linalg.svd(comp, full_matrices=False)
    meta: dict[str, dict] = {}
    explained = s**2 / (s**2).sum() * 0.5
    for k in range(n_compcor):
        name = f"a_comp_cor_{k:02d}"
        frame[name] = u[:, k]
        meta[name] = {
            "Method": "aCompCor",
            "Mask": "combined",
            "Retained": True,
            "SingularValue": float(s[k]),
            "VarianceExplained": float(explained[k]),
            "CumulativeVarianceExplained": float(explained[: k + 1].sum()),
        }
    n_cos = max(1, int(np.floor(2 * t * tr / 128.0)))
    times = np.arange(t)
    for k in range(n_cos):
        frame[f"cosine{k:02d}"] = np.sqrt(2.0 / t) * np.cos(np.pi * (times + 0.5) * (k + 1) / t)
    for k in range(non_steady):
        col = np.zeros(t)
        col[k] = 1.0
        frame[f"non_steady_state_outlier{k:02d}"] = col
    for name in ("csf", "white_matter", "global_signal"):
        meta[name] = {"Method": "Mean"}
    return frame, meta


def _tsv(frame: dict[str, np.ndarray]) -> str:
    names = list(frame)
    lines = ["\t".join(names)]
    for i in range(len(frame[names[0]])):
        lines.append("\t".join("n/a" if np.isnan(frame[n][i]) else f"{frame[n][i]:.8g}" for n in names))
    return "\n".join(lines) + "\n"


def write_fmriprep_run(
    timeseries: np.ndarray,
    tr: float,
    labels: np.ndarray,
    affine: np.ndarray,
    func_dir: str | Path,
    stem: str,
    *,
    rng: np.random.Generator,
    voxel_noise: float = 0.3,
    nuisance: float = 0.5,
    n_compcor: int = 5,
    non_steady: int = 1,
) -> Path:
    """One run as fMRIPrep writes it: preprocessed BOLD + sidecar, confounds TSV + JSON. Returns the BOLD path.

    ``stem`` is the run's entities (``sub-01_ses-1_task-rest_run-1``). Voxels are their region's signal plus
    noise plus ``nuisance`` x (motion, white matter, CSF and aCompCor series, with voxel-specific loadings) on a
    baseline of 100, and the first ``non_steady`` volumes are non-steady-state (much brighter), so denoising
    with the confounds really changes the region signals.
    """
    import nibabel as nib

    func_dir = Path(func_dir)
    func_dir.mkdir(parents=True, exist_ok=True)
    ts = np.asarray(timeseries, dtype=np.float64)
    t_len, regions = ts.shape
    frame, meta = simulated_confounds(t_len, tr, rng, n_compcor=n_compcor, non_steady=non_steady)
    inside, region_of = _region_of_voxels(labels, regions)
    sd = ts.std(axis=0)
    sd[sd == 0] = 1.0
    nuis = np.column_stack(
        [frame[n] for n in MOTION_PARAMS]
        + [frame["csf"], frame["white_matter"]]
        + [frame[f"a_comp_cor_{k:02d}"] for k in range(n_compcor)]
    )
    nuis = (nuis - nuis.mean(0)) / np.where(nuis.std(0) > 0, nuis.std(0), 1.0)
    # each region picks up the nuisance with its own loadings (so it survives averaging over the region's
    # voxels), each voxel with a little more of its own
    per_region = rng.standard_normal((nuis.shape[1], regions))[:, region_of]
    loadings = (per_region + 0.5 * rng.standard_normal((nuis.shape[1], region_of.size))) / np.sqrt(
        nuis.shape[1]
    )
    scale = sd[region_of]
    voxels = ts[:, region_of] + scale * (
        nuisance * (nuis @ loadings) + voxel_noise * rng.standard_normal((t_len, region_of.size))
    )
    voxels[:non_steady] += 4.0 * scale
    voxels += 100.0
    frame["global_signal"] = voxels.mean(1)
    frame["global_signal_derivative1"] = np.concatenate([[np.nan], np.diff(frame["global_signal"])])
    frame["global_signal_power2"] = frame["global_signal"] ** 2
    frame["global_signal_derivative1_power2"] = frame["global_signal_derivative1"] ** 2
    dvars = np.sqrt(np.mean(np.diff(voxels, axis=0) ** 2, axis=1))
    frame["dvars"] = np.concatenate([[np.nan], dvars])
    # DVARS over its typical value (on a few hundred voxels it varies far more than on a brain: shrunk so that
    # only real jumps pass scrubbing's 1.5)
    frame["std_dvars"] = np.concatenate([[np.nan], 1.0 + 0.4 * (dvars / np.median(dvars) - 1.0)])
    data = np.zeros(labels.shape + (t_len,), dtype=np.float32)
    data[inside] = voxels.T.astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    zooms = tuple(float(v) for v in np.abs(np.diag(affine)[:3]))
    img.header.set_zooms(zooms + (float(tr),))
    img.header.set_xyzt_units("mm", "sec")
    bold = func_dir / f"{stem}_space-{FMRIPREP_SPACE}_desc-preproc_bold.nii.gz"
    _atomic_nifti(img, bold)
    task = next((p.split("-", 1)[1] for p in stem.split("_") if p.startswith("task-")), "rest")
    sidecar = {"RepetitionTime": float(tr), "TaskName": task, "SkullStripped": False}
    _atomic_text(json.dumps(sidecar, indent=1) + "\n", bold.with_name(bold.name.replace(".nii.gz", ".json")))
    _atomic_text(_tsv(frame), func_dir / f"{stem}_desc-confounds_timeseries.tsv")
    _atomic_text(json.dumps(meta, indent=1) + "\n", func_dir / f"{stem}_desc-confounds_timeseries.json")
    return bold


def write_fmriprep_tree(
    cohort,
    folder: str | Path,
    n_scans: int,
    *,
    sessions: int = 1,
    runs: int = 1,
    task: str = "rest",
    atlas_folder: str | Path | None = None,
    voxel_mm: float = 5.0,
    radius_mm: float = 6.0,
    voxel_noise: float = 0.3,
    nuisance: float = 0.5,
    seed: int = 0,
) -> list[Path]:
    """A small fMRIPrep-like derivatives folder from the first ``n_scans`` scans of a cohort.

    Layout (what ``fmrilm cohort import --fmriprep`` reads)::

        dataset_description.json      DatasetType derivative, GeneratedBy
        participants.tsv              participant_id, age, sex, diagnosis, site (the cohort's phenotypes)
        sub-<label>/[ses-<s>/]func/sub-<label>[_ses-<s>]_task-rest[_run-<r>]_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz
                                   ... the same stem + .json (RepetitionTime), and
                                   sub-..._desc-confounds_timeseries.tsv / .json (motion with derivatives and
                                   squares, csf, white_matter, global_signal, framewise_displacement, dvars,
                                   std_dvars, a_comp_cor_*, cosine*, non_steady_state_outlier*)

    Consecutive scans become the ``sessions`` x ``runs`` runs of one participant (labelled after the first
    scan's subject id, phenotypes from that scan), so with the defaults each scan is one participant. The labels
    atlas image (``atlas_labels.nii.gz`` + ``atlas_labels.tsv``) goes to ``atlas_folder`` (default: ``folder``,
    where BIDS queries do not look). Returns the BOLD image paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sessions, runs = int(sessions), int(runs)
    if sessions < 1 or runs < 1:
        raise FmriInputError("sessions and runs must be at least 1", fix="give e.g. sessions=2, runs=1")
    _, labels, affine = write_labels_image(cohort.atlas, atlas_folder or folder, voxel_mm, radius_mm)
    rng = np.random.default_rng(seed)
    per_subject = sessions * runs
    table = cohort.phenotype_table()
    rows = ["participant_id\t" + "\t".join(PARTICIPANT_COLUMNS)]
    paths: list[Path] = []
    n = min(int(n_scans), len(cohort))
    for first in range(0, n, per_subject):
        sub = bids_label(cohort.scan(first).subject_id)
        record = table.iloc[first]
        cells = []
        for col in PARTICIPANT_COLUMNS:
            value = record.get(col) if col in table.columns else None
            if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
                cells.append("n/a")
            else:
                cells.append(f"{float(value):.6g}" if isinstance(value, (float, np.floating)) else str(value))
        rows.append(f"sub-{sub}\t" + "\t".join(cells))
        for k, i in enumerate(range(first, min(first + per_subject, n))):
            scan = cohort.scan(i)
            ses, run = divmod(k, runs)
            entities = [f"sub-{sub}"] + ([f"ses-{ses + 1}"] if sessions > 1 else [])
            func_dir = folder.joinpath(*entities, "func")
            entities.append(f"task-{task}")
            if runs > 1:
                entities.append(f"run-{run + 1}")
            paths.append(
                write_fmriprep_run(
                    scan.timeseries,
                    scan.tr,
                    labels,
                    affine,
                    func_dir,
                    "_".join(entities),
                    rng=rng,
                    voxel_noise=voxel_noise,
                    nuisance=nuisance,
                )
            )
    _atomic_text("\n".join(rows) + "\n", folder / "participants.tsv")
    description = {
        "Name": f"fMRIPrep-like derivatives of simulated cohort '{cohort.name}'",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fmrilm simulate", "Description": "simulated, fMRIPrep-like layout"}],
    }
    _atomic_text(json.dumps(description, indent=1) + "\n", folder / "dataset_description.json")
    return paths
