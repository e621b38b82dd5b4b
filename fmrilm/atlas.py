"""Atlases: region labels, MNI centroids and the network of each region.

Regions carry their MNI coordinates everywhere downstream (the tokenizer uses them as positions), so a scan
from any parcellation can be read. Built-in atlases come from coordinates that nilearn ships (no download);
any other atlas comes from a centroids table or a labels image, and its regions inherit the network of the
nearest Seitzman-300 region.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.errors import FmriInputError

UNASSIGNED = "unassigned"
#: Regions farther than this from every Seitzman-300 centre get the network "unassigned".
NETWORK_DISTANCE_CUTOFF_MM = 20.0
#: Every point of an MNI-space brain lies within this distance of the origin on each axis (mm).
MAX_MNI_MM = 150.0

BUILTIN_ATLASES = ("seitzman300", "dosenbach160")


@dataclass
class Atlas:
    """A parcellation: one label, one MNI centroid (mm) and one network name per region."""

    name: str
    labels: list[str]
    coords: np.ndarray
    networks: list[str]
    radius_mm: float | None = None
    labels_img: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # an own, writable copy: pandas (copy-on-write) hands out read-only arrays, which torch warns about
        self.coords = np.array(self.coords, dtype=np.float32).reshape(-1, 3)
        self.labels = [str(label) for label in self.labels]
        self.networks = [str(n) for n in self.networks]
        if not (len(self.labels) == len(self.coords) == len(self.networks)):
            raise ValueError(
                f"Atlas '{self.name}': {len(self.labels)} labels, {len(self.coords)} coordinates and "
                f"{len(self.networks)} networks must have the same length"
            )

    @property
    def n_regions(self) -> int:
        return len(self.labels)

    @property
    def network_names(self) -> list[str]:
        """Networks in first-seen order, 'unassigned' last."""
        seen = list(dict.fromkeys(n for n in self.networks if n != UNASSIGNED))
        return seen + ([UNASSIGNED] if UNASSIGNED in self.networks else [])

    def network_indices(self) -> dict[str, np.ndarray]:
        """Region indices of each network."""
        nets = np.asarray(self.networks)
        return {n: np.flatnonzero(nets == n) for n in self.network_names}

    def subset(self, regions: np.ndarray | list[int], name: str | None = None) -> Atlas:
        idx = np.asarray(regions, dtype=int)
        return Atlas(
            name=name or self.name,
            labels=[self.labels[i] for i in idx],
            coords=self.coords[idx],
            networks=[self.networks[i] for i in idx],
            radius_mm=self.radius_mm,
        )

    # ----------------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": self.labels,
            "coords": np.round(self.coords.astype(float), 3).tolist(),
            "networks": self.networks,
            "radius_mm": self.radius_mm,
            "labels_img": self.labels_img,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Atlas:
        return cls(
            name=data["name"],
            labels=data["labels"],
            coords=np.asarray(data["coords"], dtype=np.float32),
            networks=data["networks"],
            radius_mm=data.get("radius_mm"),
            labels_img=data.get("labels_img"),
            extra=data.get("extra") or {},
        )

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    # ------------------------------------------------------------------------------------------ constructors
    @classmethod
    def builtin(cls, name: str) -> Atlas:
        key = name.lower().replace("-", "").replace("_", "")
        if key not in BUILTIN_ATLASES:
            raise FmriInputError(
                f"Unknown atlas '{name}'",
                fix=f"use one of {', '.join(BUILTIN_ATLASES)}, a centroids table (.csv/.tsv with x, y, z "
                "columns) or a NIfTI labels image",
            )
        return _builtin(key)

    @classmethod
    def from_centroids_table(cls, path: str | Path, name: str | None = None) -> Atlas:
        """Read a table with x, y, z columns (MNI mm), an optional label column and an optional network column."""
        path = Path(path)
        if not path.exists():
            raise FmriInputError(
                "Atlas table not found", file=path, fix="check the path to the centroids table"
            )
        sep = "\t" if path.suffix.lower() in {".tsv", ".txt"} else ","
        try:
            table = pd.read_csv(path, sep=sep)
        except Exception as exc:  # pandas raises many types on corrupt text
            raise FmriInputError(
                f"Cannot read the atlas table ({exc})", file=path, fix="give a CSV/TSV with x, y, z columns"
            ) from exc
        cols = {c.lower().strip(): c for c in table.columns}
        missing = [c for c in ("x", "y", "z") if c not in cols]
        if missing:
            raise FmriInputError(
                f"The atlas table has no {'/'.join(missing)} column",
                file=path,
                fix="give one row per region with columns x, y, z in MNI mm (and optionally roi/label, network)",
            )
        xyz = table[[cols["x"], cols["y"], cols["z"]]]
        coords = xyz.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        if not np.isfinite(coords).all():
            row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(coords)))
            raise FmriInputError(
                f"The atlas table has a missing or non-numeric coordinate {str(xyz.iat[row, col])!r} "
                f"(row {row + 2}, column {xyz.columns[col]})",
                file=path,
                fix="fill every x, y, z with a number (MNI mm)",
            )
        if np.abs(coords).max() > MAX_MNI_MM:
            row, col = (int(v[0]) for v in np.nonzero(np.abs(coords) > MAX_MNI_MM))
            raise FmriInputError(
                f"The atlas table has coordinate {coords[row, col]:g} (row {row + 2}, column "
                f"{xyz.columns[col]}), outside the brain in MNI space (|x|, |y|, |z| <= {MAX_MNI_MM:g} mm)",
                file=path,
                fix="give MNI coordinates in mm, not voxel indices (convert them with the image's affine)",
            )
        label_col = next((cols[c] for c in ("label", "labels", "roi", "name", "region") if c in cols), None)
        labels = [str(v) for v in table[label_col]] if label_col else [str(i + 1) for i in range(len(table))]
        net_col = next((cols[c] for c in ("network", "networks") if c in cols), None)
        networks = [str(v) for v in table[net_col]] if net_col else assign_networks(coords)
        return cls(name=name or _atlas_name_from_file(path), labels=labels, coords=coords, networks=networks)

    @classmethod
    def from_labels_image(cls, labels_img: str | Path, name: str | None = None) -> Atlas:
        """An atlas from a NIfTI labels image: centroids from the image, networks by nearest Seitzman region."""
        import nibabel as nib
        from nibabel.affines import apply_affine
        from scipy import ndimage

        path = Path(labels_img)
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
        except Exception as exc:
            raise FmriInputError(
                f"Cannot read the labels image ({exc})",
                file=path,
                fix="give a 3D NIfTI image of integer labels",
            ) from exc
        if data.ndim != 3:
            raise FmriInputError(
                f"The labels image has {data.ndim} dimensions, not 3",
                file=path,
                fix="give a 3D NIfTI image with one integer label per region and 0 for background",
            )
        values = np.unique(data[data != 0]).astype(int)
        if values.size == 0:
            raise FmriInputError("The labels image has no labelled voxel", file=path, fix="check the image")
        centres = ndimage.center_of_mass(np.ones_like(data, dtype=float), labels=data, index=values)
        coords = apply_affine(img.affine, np.asarray(centres, dtype=float)).astype(np.float32)
        return cls(
            name=name or path.name.split(".")[0],
            labels=[str(v) for v in values],
            coords=coords,
            networks=assign_networks(coords),
            labels_img=str(path),
        )


def _atlas_name_from_file(path: Path) -> str:
    """'cc200_centroids.csv' -> 'cc200': the file's stem without a trailing centroids/coords word."""
    stem = path.name.split(".")[0]
    for suffix in ("_centroids", "-centroids", "_coords", "-coords", "_coordinates"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def resolve_atlas(spec: Atlas | str | Path | None) -> Atlas | None:
    """An Atlas from an Atlas, a built-in name, a centroids table or a labels image path."""
    if spec is None or isinstance(spec, Atlas):
        return spec
    text = str(spec)
    path = Path(text)
    lower = text.lower()
    if lower.endswith((".nii", ".nii.gz")):
        if not path.exists():
            raise FmriInputError("Atlas image not found", file=path, fix="check the path to the labels image")
        return Atlas.from_labels_image(path)
    if lower.endswith((".csv", ".tsv", ".txt")):
        return Atlas.from_centroids_table(path)
    if lower.endswith(".json") and path.exists():
        return Atlas.from_dict(json.loads(path.read_text()))
    return Atlas.builtin(text)


def assign_networks(coords: np.ndarray, cutoff_mm: float = NETWORK_DISTANCE_CUTOFF_MM) -> list[str]:
    """Network of the nearest Seitzman-300 region, or 'unassigned' beyond ``cutoff_mm``."""
    from scipy.spatial import cKDTree

    ref = _builtin("seitzman300")
    dist, idx = cKDTree(ref.coords).query(np.asarray(coords, dtype=float).reshape(-1, 3))
    return [ref.networks[i] if d <= cutoff_mm else UNASSIGNED for d, i in zip(dist, idx, strict=True)]


@cache
def _builtin(key: str) -> Atlas:
    from nilearn import datasets

    if key == "seitzman300":
        bunch = datasets.fetch_coords_seitzman_2018()
        rois = bunch.rois
        coords = np.column_stack([rois["x"], rois["y"], rois["z"]])
        return Atlas(
            name="seitzman300",
            labels=[f"{n}_{i + 1}" for i, n in enumerate(bunch.networks)],
            coords=coords,
            networks=[str(n) for n in bunch.networks],
            radius_mm=float(bunch.radius[0]) if np.ndim(bunch.radius) else float(bunch.radius),
        )
    bunch = datasets.fetch_coords_dosenbach_2010()
    rois = bunch.rois
    coords = np.column_stack([rois["x"], rois["y"], rois["z"]])
    return Atlas(
        name="dosenbach160",
        labels=[str(v) for v in bunch.labels],
        coords=coords,
        networks=[str(n) for n in bunch.networks],
        radius_mm=5.0,
    )
