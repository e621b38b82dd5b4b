"""Cohorts: many scans of one atlas with their phenotypes, stored as a Hugging Face `datasets.Dataset`.

On disk a cohort is one folder:

    DIR/cohort.json    name, atlas (labels, MNI coords, networks), phenotype columns and their kinds,
                       label maps, free metadata (e.g. the simulator's ground-truth effects)
    DIR/dataset/       `Dataset.save_to_disk`: one row per scan
    DIR/splits/*.json  optional subject-level splits (`fmrilm cohort split`, see fmrilm.splits)

Row columns: ``scan_id`` (str, unique), ``subject_id`` (str), ``session_id`` (str), ``site`` (str),
``tr`` (float32, s), ``atlas`` (str), ``n_timepoints`` (int32), ``timeseries`` (float32 ``(T, R)``,
variable T), ``bad_regions`` (int32 list: regions found constant/all-zero/non-finite and repaired on the way
in, from ``scan.flags['bad_regions']``, so no repair is silent), plus one column per phenotype (``sex``
"male"/"female", ``age`` years, ``diagnosis`` label, ``fiq``, ...; missing values are None). Phenotypes never enter descriptors or prompts except as targets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

COHORT_META = "cohort.json"
#: Values per Arrow chunk of the time series column (below the 2**31 limit of 32-bit list offsets).
_MAX_CHUNK_VALUES = 2**30
DATASET_DIR = "dataset"
CORE_COLUMNS = (
    "scan_id",
    "subject_id",
    "session_id",
    "site",
    "tr",
    "atlas",
    "n_timepoints",
    "timeseries",
    "bad_regions",
)


@dataclass
class Cohort:
    """A `datasets.Dataset` of scans plus the atlas they share and metadata about their phenotypes.

    ``phenotypes`` maps column name -> kind ("binary", "multiclass", "regression").
    """

    dataset: Any  # datasets.Dataset
    atlas: Atlas
    name: str = "cohort"
    phenotypes: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Scan]:
        for i in range(len(self)):
            yield self.scan(i)

    def scan(self, index: int) -> Scan:
        row = self.dataset[int(index)]
        return self.row_to_scan(row)

    def row_to_scan(self, row: dict[str, Any]) -> Scan:
        bad = row.get("bad_regions")
        return Scan(
            timeseries=np.asarray(row["timeseries"], dtype=np.float32),
            tr=float(row["tr"]),
            atlas=self.atlas,
            scan_id=str(row["scan_id"]),
            subject_id=str(row["subject_id"]),
            session_id=str(row.get("session_id") or ""),
            site=str(row.get("site") or ""),
            flags={"bad_regions": [int(i) for i in bad]} if bad is not None and len(bad) else {},
        )

    def phenotype_table(self):
        """One row per scan: ids, site and phenotype columns (no time series), as a pandas DataFrame."""
        cols = [c for c in self.dataset.column_names if c != "timeseries"]
        return self.dataset.select_columns(cols).to_pandas()

    def select(self, indices: Iterable[int], name: str | None = None) -> Cohort:
        return Cohort(
            dataset=self.dataset.select(list(indices)),
            atlas=self.atlas,
            name=name or self.name,
            phenotypes=dict(self.phenotypes),
            meta=dict(self.meta),
        )

    # ---------------------------------------------------------------------------------------------- building
    @classmethod
    def from_scans(
        cls,
        scans: list[Scan],
        phenotypes: list[dict[str, Any]] | None = None,
        *,
        atlas: Atlas,
        name: str = "cohort",
        phenotype_kinds: dict[str, str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Cohort:
        """Build a cohort in memory; every scan must have ``atlas.n_regions`` columns."""
        import datasets

        if not scans:
            raise FmriInputError("No scan to put in the cohort", fix="give at least one scan")
        phenotypes = phenotypes or [{} for _ in scans]
        pheno_cols = list(dict.fromkeys(k for p in phenotypes for k in p))
        rows: dict[str, list[Any]] = {c: [] for c in CORE_COLUMNS if c != "timeseries"}
        rows.update({c: [] for c in pheno_cols})
        series: list[np.ndarray] = []
        for scan, pheno in zip(scans, phenotypes, strict=True):
            if scan.n_regions != atlas.n_regions:
                raise FmriInputError(
                    f"The scan has {scan.n_regions} regions but atlas '{atlas.name}' has {atlas.n_regions}",
                    file=scan.source,
                    subject=scan.subject_id,
                    fix="parcellate every scan of a cohort with the same atlas, or pass the matching atlas",
                )
            rows["scan_id"].append(scan.scan_id)
            rows["subject_id"].append(str(scan.subject_id))
            rows["session_id"].append(scan.session_id or "")
            rows["site"].append(scan.site or "")
            rows["tr"].append(float(scan.tr))
            rows["atlas"].append(atlas.name)
            rows["n_timepoints"].append(scan.n_timepoints)
            series.append(np.asarray(scan.timeseries, dtype=np.float32))
            rows["bad_regions"].append([int(i) for i in scan.flags.get("bad_regions", [])])
            for c in pheno_cols:
                rows[c].append(pheno.get(c))
        features = datasets.Features(
            {
                "scan_id": datasets.Value("string"),
                "subject_id": datasets.Value("string"),
                "session_id": datasets.Value("string"),
                "site": datasets.Value("string"),
                "tr": datasets.Value("float32"),
                "atlas": datasets.Value("string"),
                "n_timepoints": datasets.Value("int32"),
                "timeseries": datasets.Array2D(shape=(None, atlas.n_regions), dtype="float32"),
                "bad_regions": getattr(datasets, "List", datasets.Sequence)(datasets.Value("int32")),
                **{c: _infer_feature(rows[c]) for c in pheno_cols},
            }
        )
        dataset = _build_dataset(rows, series, features)
        kinds = phenotype_kinds or {c: _infer_kind(rows[c]) for c in pheno_cols}
        return cls(dataset=dataset, atlas=atlas, name=name, phenotypes=kinds, meta=meta or {})

    # ------------------------------------------------------------------------------------------- persistence
    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the cohort folder beside ``directory`` and rename it into place only when complete.

        ``directory`` must not exist, be empty, or (with ``overwrite``) hold an earlier cohort and nothing else;
        the earlier cohort is removed only after the new one is in place (see `fmrilm.safety`).
        """
        from fmrilm.safety import COHORT_OUTPUT, staged_output

        directory = Path(directory)
        with staged_output(directory, COHORT_OUTPUT, overwrite=overwrite, flag="the output folder") as stage:
            self.write_into(stage)
        return directory

    def write_into(self, folder: str | Path) -> None:
        """Write ``dataset/`` and then ``cohort.json`` (the file that marks a complete cohort) into ``folder``.

        Not atomic by itself: `save` calls it on a staging folder that is renamed into place afterwards.
        """
        folder = Path(folder)
        self.dataset.save_to_disk(str(folder / DATASET_DIR))
        meta = {
            "name": self.name,
            "atlas": self.atlas.to_dict(),
            "phenotypes": self.phenotypes,
            "meta": self.meta,
            "n_scans": len(self),
        }
        (folder / COHORT_META).write_text(json.dumps(meta, indent=1, default=_json_default))

    @classmethod
    def load(cls, directory: str | Path) -> Cohort:
        import datasets

        directory = Path(directory)
        meta_path = directory / COHORT_META
        if not meta_path.exists() or not (directory / DATASET_DIR).exists():
            raise FmriInputError(
                "Not a cohort folder (no cohort.json and dataset/)",
                file=directory,
                fix="create it with `fmrilm cohort import` or `fmrilm simulate`",
            )
        try:
            meta = json.loads(meta_path.read_text())
            atlas = Atlas.from_dict(meta["atlas"])
            dataset = datasets.load_from_disk(str(directory / DATASET_DIR))
        except FmriInputError:
            raise
        except Exception as exc:
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise FmriInputError(
                f"The cohort folder is corrupt ({type(exc).__name__}: {detail})",
                file=directory,
                fix="re-create the cohort with `fmrilm cohort import` or `fmrilm simulate`",
            ) from exc
        return cls(
            dataset=dataset,
            atlas=atlas,
            name=meta.get("name", directory.name),
            phenotypes=meta.get("phenotypes", {}),
            meta=meta.get("meta", {}),
        )


def _build_dataset(rows: dict[str, list[Any]], series: list[np.ndarray], features):
    """The dataset with its time series column built straight from the numpy arrays.

    ``Dataset.from_dict`` would turn every (T, R) array into nested Python lists first (about 6x the data
    in memory and most of the import time for ABIDE); here the arrays are concatenated into Arrow buffers,
    in chunks so that Arrow's 32-bit list offsets never overflow.
    """
    import datasets
    import pyarrow as pa
    from datasets.features.features import Array2DExtensionType
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.table import InMemoryTable

    column_features = datasets.Features({c: f for c, f in features.items() if c != "timeseries"})
    base = datasets.Dataset.from_dict(rows, features=column_features).data.table
    spec = features["timeseries"]
    ext_type = Array2DExtensionType(shape=spec.shape, dtype=spec.dtype)
    n_regions = int(spec.shape[1])
    chunks, start = [], 0
    while start < len(series):
        stop, size = start, 0
        while stop < len(series) and (stop == start or size + series[stop].size <= _MAX_CHUNK_VALUES):
            size += series[stop].size
            stop += 1
        part = series[start:stop]
        flat = np.concatenate([a.reshape(-1) for a in part]) if size else np.zeros(0, np.float32)
        rows_offsets = np.arange(0, flat.size + 1, n_regions, dtype=np.int32)
        time_offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in part])]).astype(np.int32)
        inner = pa.ListArray.from_arrays(pa.array(rows_offsets), pa.array(flat, type=pa.float32()))
        outer = pa.ListArray.from_arrays(pa.array(time_offsets), inner)
        chunks.append(pa.ExtensionArray.from_storage(ext_type, outer))
        start = stop
    column = pa.chunked_array(chunks, type=ext_type)
    position = list(features).index("timeseries")
    table = base.add_column(position, pa.field("timeseries", ext_type), column)
    # A random fingerprint, as datasets gives in-memory data anyway; the default would pickle the whole table.
    return datasets.Dataset(
        InMemoryTable(table),
        info=datasets.DatasetInfo(features=features),
        fingerprint=generate_random_fingerprint(),
    )


def load_cohort(directory: str | Path) -> Cohort:
    """Load a cohort folder written by `fmrilm cohort import` or `fmrilm simulate`."""
    return Cohort.load(directory)


def is_missing(value: Any) -> bool:
    """A phenotype value that means "not known": None, an empty string or NaN (never a default class)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False


def _infer_feature(values: list[Any]):
    import datasets

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        return datasets.Value("bool")
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        return datasets.Value("float32")
    return datasets.Value("string")


def _infer_kind(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        return "regression"
    return "binary" if len(set(present)) <= 2 else "multiclass"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
