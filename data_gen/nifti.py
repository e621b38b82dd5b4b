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
    inside = labels > 0
    region_of = labels[inside].astype(np.int64) - 1
    if region_of.max() >= regions:
        raise FmriInputError(
            f"The labels image has {region_of.max() + 1} regions but the scan has {regions}",
            fix="write the labels image from the scan's own atlas",
        )
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
