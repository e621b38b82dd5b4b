"""Load one scan from any common format into a :class:`~fmrilm.scan.Scan`, or fail with one clear sentence.

Region tables (AFNI ``.1D``, ``.csv``, ``.tsv``, ``.txt``, ``.npy``, ``.npz``, ``.h5``) are read as
``(time, regions)``; NIfTI 4D images are parcellated with nilearn's ``NiftiLabelsMasker`` (labels-image atlas)
or ``NiftiSpheresMasker`` (coordinates with a radius). The TR comes from the argument, the NIfTI header, a BIDS
sidecar JSON or a time/TR column, in that order of precedence; with none of them the load fails and asks for
``tr=``. Defective regions go through :func:`fmrilm.signal.check_regions`, so they are repaired *and flagged*
or rejected, never passed on silently.
"""

from __future__ import annotations

import json
import re
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.atlas import Atlas, resolve_atlas
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan
from fmrilm.signal import BAD_REGION_POLICIES, SignalConfig, check_regions

TABLE_EXTENSIONS = (".1d", ".csv", ".tsv", ".txt")
ARRAY_EXTENSIONS = (".npy", ".npz", ".h5", ".hdf5")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
SUPPORTED_EXTENSIONS = TABLE_EXTENSIONS + ARRAY_EXTENSIONS + NIFTI_EXTENSIONS
#: Column names that hold time stamps (seconds) rather than a region; they give the TR and are dropped.
TIME_COLUMNS = ("time", "t", "time_s", "times", "onset", "timestamp", "seconds")
#: Column / array / attribute names that hold the TR itself.
TR_NAMES = ("tr", "repetitiontime", "repetition_time", "t_r")
#: A TR outside this range (seconds) is almost surely given in the wrong unit.
TR_RANGE_S = (0.05, 30.0)
#: No BOLD signal, in any scanner unit or after any preprocessing, comes near this magnitude; a value beyond it
#: is a corrupt or mis-typed cell (it would overflow the float32 variance and silently zero its region).
MAX_ABS_SIGNAL = 1e8
TR_FIX = "pass the TR in seconds (tr=2.0 in Python, --tr 2.0 on the command line) or add a BIDS sidecar JSON "
TR_FIX += "with RepetitionTime next to the file"

PathType = str | PathLike


def load_scan(
    path: PathType,
    atlas: Atlas | str | PathType | None = None,
    tr: float | None = None,
    subject: str | None = None,
    key: str | None = None,
    bad_regions: str = "repair",
    *,
    min_timepoints: int | None = None,
) -> Scan:
    """Read one scan as ``(T, R)`` float32 with its TR (s), atlas and ids; see the module doc for formats.

    ``key`` picks one array of a multi-array ``.npz`` / ``.h5`` (use :func:`load_scans` for all of them).
    ``bad_regions`` is ``"repair"`` (constant / all-zero / NaN regions fixed, warned about and listed in
    ``scan.flags['bad_regions']``) or ``"reject"`` (raise). ``min_timepoints`` defaults to
    ``SignalConfig.min_timepoints``.
    """
    path = Path(path)
    named = subject or key or _stem(path)  # who the error messages name before the data is read
    kind = _check_path(path, named)
    if kind in ("npz", "h5"):
        arrays, meta_tr, close = _open_keyed(path, kind, named)
        try:
            return _load_keyed(
                path, kind, arrays, meta_tr, atlas, tr, subject, key, bad_regions, min_timepoints
            )
        finally:
            close()
    subject = subject or _stem(path)
    return _load_single(path, kind, atlas, tr, subject, bad_regions, min_timepoints)


def _load_keyed(
    path: Path,
    kind: str,
    arrays: dict[str, Any],
    meta_tr: Any,
    atlas: Any,
    tr: float | None,
    subject: str | None,
    key: str | None,
    bad_regions: str,
    min_timepoints: int | None,
) -> Scan:
    names = list(arrays)
    if key is None:
        if len(names) != 1:
            raise FmriInputError(
                f"The file holds {len(names)} arrays ({_short(names)}), so it is not clear which scan to load",
                fix="pass key= one of those names, or use fmrilm.io.load_scans to load them all",
                file=path,
                subject=subject,
            )
        key = names[0]
        default_id = _stem(path)
    else:
        if key not in arrays:
            raise FmriInputError(
                f"No array named '{key}' in the file (it holds {_short(names)})",
                fix="pass key= one of the names listed",
                file=path,
                subject=subject or key,
            )
        default_id = key
    subject = subject or default_id
    data = _read_keyed(path, kind, key, arrays, subject)
    return _finish(
        path, data, atlas, tr, meta_tr(key), subject, default_id, bad_regions, min_timepoints, key=key
    )


def load_scans(
    path: PathType,
    atlas: Atlas | str | PathType | None = None,
    tr: float | dict[str, float] | None = None,
    bad_regions: str = "repair",
    *,
    min_timepoints: int | None = None,
) -> list[Scan]:
    """Every scan in a file: one per key of a ``.npz`` / ``.h5`` (subject id = key), else a one-item list.

    ``tr`` may be one value for all scans or a ``{key: tr}`` mapping (e.g. per-site TRs).
    """
    path = Path(path)
    kind = _check_path(path, None)
    if kind not in ("npz", "h5"):
        return [load_scan(path, atlas, tr, bad_regions=bad_regions, min_timepoints=min_timepoints)]
    atlas_obj = _resolve_atlas(atlas, path, None)
    arrays, meta_tr, close = _open_keyed(path, kind, None)
    scans = []
    try:
        for name in arrays:
            scan_tr = tr.get(name) if isinstance(tr, dict) else tr
            data = _read_keyed(path, kind, name, arrays, name)
            scans.append(
                _finish(
                    path,
                    data,
                    atlas_obj,
                    scan_tr,
                    meta_tr(name),
                    name,
                    name,
                    bad_regions,
                    min_timepoints,
                    key=name,
                )
            )
    finally:
        close()
    return scans


# ---------------------------------------------------------------------------------------------------- checks
def _check_path(path: Path, subject: str | None) -> str:
    if not path.exists():
        raise FmriInputError(
            "Scan file not found",
            fix="check the path (and the working directory)",
            file=path,
            subject=subject,
        )
    if path.is_dir():
        raise FmriInputError(
            "Expected a scan file but got a folder",
            fix="give one scan file; load a folder of scans with `fmrilm cohort import`",
            file=path,
            subject=subject,
        )
    name = path.name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return {".1d": "table", ".csv": "table", ".tsv": "table", ".txt": "table", ".npy": "npy",
                    ".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".nii": "nifti", ".nii.gz": "nifti"}[ext]  # fmt: skip
    raise FmriInputError(
        f"Unsupported file type '{''.join(path.suffixes) or path.name}'",
        fix=f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS).replace('.1d', '.1D')} (time x regions, "
        "or a NIfTI 4D image)",
        file=path,
        subject=subject,
    )


def _stem(path: Path) -> str:
    name = path.name
    lower = name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _short(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _corrupt(path: Path, subject: str | None, exc: BaseException, what: str) -> FmriInputError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FmriInputError(
        f"Cannot read the file as {what} ({detail[:200]})",
        fix=f"check that the file is complete and really {what} (re-export or re-download it)",
        file=path,
        subject=subject,
    )


def _resolve_atlas(atlas: Any, path: Path, subject: str | None) -> Atlas | None:
    try:
        return resolve_atlas(atlas)
    except FmriInputError as exc:
        problem = exc.problem if exc.file is None else f"{exc.problem} (atlas file '{exc.file}')"
        raise FmriInputError(problem, fix=exc.fix, file=path, subject=subject) from exc


# ---------------------------------------------------------------------------------------------------- single
def _load_single(
    path: Path,
    kind: str,
    atlas: Any,
    tr: float | None,
    subject: str,
    bad_regions: str,
    min_timepoints: int | None,
) -> Scan:
    atlas_obj = _resolve_atlas(atlas, path, subject)
    found_tr: tuple[float, str] | None = None
    flags: dict[str, Any] = {}
    if kind == "table":
        data, found_tr = _read_table(path, subject)
    elif kind == "npy":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise _corrupt(path, subject, exc, "a NumPy .npy array") from exc
        data = _numeric(data, path, subject)
    else:
        data, found_tr, empty = _read_nifti(path, atlas_obj, subject, bad_regions)
        if empty:
            flags["empty_regions"] = empty
    return _finish(
        path, data, atlas_obj, tr, found_tr, subject, subject, bad_regions, min_timepoints, flags=flags
    )


def load_denoised_nifti(
    path: PathType,
    atlas: Atlas | str | PathType,
    *,
    confounds: Any = None,
    sample_mask: Any = None,
    tr: float | None = None,
    subject: str | None = None,
    scan_id: str | None = None,
    bad_regions: str = "repair",
    min_timepoints: int | None = None,
) -> Scan:
    """A 4D NIfTI image parcellated by nilearn's masker with ``confounds`` regressed out and only the volumes
    of ``sample_mask`` kept (what ``nilearn.interfaces.fmriprep.load_confounds_strategy`` returns); then the same
    checks as :func:`load_scan` (shape, atlas, length, TR from the argument / BIDS sidecar / header, bad regions).
    """
    path = Path(path)
    subject = subject or _stem(path)
    kind = _check_path(path, subject)
    if kind != "nifti":
        raise FmriInputError(
            "Only a 4D NIfTI image can be denoised with confounds",
            fix="give the preprocessed BOLD image (.nii.gz)",
            file=path,
            subject=subject,
        )
    atlas_obj = _resolve_atlas(atlas, path, subject)
    clean: dict[str, Any] = {}
    if confounds is not None:
        clean["confounds"] = confounds
    if sample_mask is not None:
        clean["sample_mask"] = sample_mask
    data, found_tr, empty = _read_nifti(path, atlas_obj, subject, bad_regions, clean)
    flags: dict[str, Any] = {"empty_regions": empty} if empty else {}
    return _finish(
        path,
        data,
        atlas_obj,
        tr,
        found_tr,
        subject,
        scan_id or subject,
        bad_regions,
        min_timepoints,
        flags=flags,
    )


def _finish(
    path: Path,
    data: np.ndarray,
    atlas: Any,
    tr: float | None,
    found_tr: tuple[float, str] | None,
    subject: str,
    scan_id: str,
    bad_regions: str,
    min_timepoints: int | None,
    *,
    key: str | None = None,
    flags: dict[str, Any] | None = None,
) -> Scan:
    """Shared validation of every format: shape, length, atlas match, TR, bad regions."""
    if bad_regions not in BAD_REGION_POLICIES:
        raise FmriInputError(
            f"Unknown bad-region policy '{bad_regions}'",
            fix=f"use bad_regions= one of {', '.join(BAD_REGION_POLICIES)}",
            file=path,
            subject=subject,
        )
    atlas = _resolve_atlas(atlas, path, subject)
    where = f" (array '{key}')" if key else ""
    if data.ndim != 2:
        fix = "save a 2D array of shape (timepoints, regions)"
        if data.ndim == 1:
            fix += "; for a single region reshape it to (timepoints, 1)"
        raise FmriInputError(
            f"Expected a 2D (time, regions) table{where}, got shape {tuple(data.shape)}",
            fix=fix,
            file=path,
            subject=subject,
        )
    if atlas is not None and data.shape[1] != atlas.n_regions:
        if data.shape[0] == atlas.n_regions:
            raise FmriInputError(
                f"The table{where} has shape {tuple(data.shape)}: its rows match the {atlas.n_regions} regions "
                f"of atlas '{atlas.name}', so it looks transposed (regions x time)",
                fix="transpose it to (timepoints, regions), one column per region",
                file=path,
                subject=subject,
            )
        raise FmriInputError(
            f"The table{where} has {data.shape[1]} region columns but atlas '{atlas.name}' has "
            f"{atlas.n_regions} regions",
            fix="give the atlas the scan was parcellated with, or omit atlas=",
            file=path,
            subject=subject,
        )
    check_values(data, path, subject, key=key)
    needed = int(min_timepoints if min_timepoints is not None else SignalConfig.min_timepoints)
    if data.shape[0] < needed:
        raise FmriInputError(
            f"The scan{where} has {data.shape[0]} timepoints, fewer than the {needed} needed "
            f"(shape {tuple(data.shape)}; a table is read as one row per timepoint)",
            fix="use a longer scan, check the table is (timepoints, regions), or lower min_timepoints",
            file=path,
            subject=subject,
        )
    scan_tr = _choose_tr(path, subject, tr, found_tr)
    ts, bad = check_regions(data, policy=bad_regions, file=path, subject=subject, warn=True)
    all_flags = dict(flags or {})
    if bad:
        all_flags["bad_regions"] = bad
    if key is not None:
        all_flags["key"] = key
    return Scan(
        timeseries=ts,
        tr=scan_tr,
        atlas=atlas,
        scan_id=scan_id,
        subject_id=subject,
        source=str(path),
        flags=all_flags,
    )


def check_values(data: np.ndarray, path: Any, subject: str | None, key: str | None = None) -> None:
    """Refuse a finite value beyond ``MAX_ABS_SIGNAL`` (NaN and infinity are bad regions, handled apart)."""
    data = np.asarray(data)
    with np.errstate(invalid="ignore"):
        huge = np.isfinite(data) & (np.abs(data) > MAX_ABS_SIGNAL)
    if not huge.any():
        return
    positions = np.argwhere(huge)
    t, r = (int(v) for v in positions[0][:2]) if data.ndim == 2 else (int(positions[0][0]), 0)
    where = f" array '{key}'," if key else ""
    raise FmriInputError(
        f"The{where} value {float(data[tuple(positions[0])]):.6g} at timepoint {t}, region {r} is beyond any BOLD "
        f"signal (|value| > {MAX_ABS_SIGNAL:.0e}; {len(positions)} such value(s) in all)",
        fix="correct or remove that value (write NaN for a missing sample: it is interpolated and flagged)",
        file=path,
        subject=subject,
    )


def _numeric(data: np.ndarray, path: Path, subject: str | None, key: str | None = None) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        where = f" array '{key}'" if key else ""
        raise FmriInputError(
            f"The{where} data has non-numeric type {data.dtype}",
            fix="save the region time series as numbers (float32 or float64)",
            file=path,
            subject=subject,
        )
    return data.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------------- TR
def _check_tr_value(value: Any, source: str, path: Path, subject: str | None) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise FmriInputError(
            f"The TR from {source} is not a number ({value!r})", fix=TR_FIX, file=path, subject=subject
        ) from exc
    if not np.isfinite(out) or not TR_RANGE_S[0] <= out <= TR_RANGE_S[1]:
        hint = " (it looks like milliseconds)" if np.isfinite(out) and out > 100 else ""
        raise FmriInputError(
            f"The TR from {source} is {out}{hint}, outside {TR_RANGE_S[0]}-{TR_RANGE_S[1]} s",
            fix="give the TR in seconds, e.g. tr=2.0",
            file=path,
            subject=subject,
        )
    return out


def _sidecar_tr(path: Path, subject: str | None) -> tuple[float, str] | None:
    sidecar = path.with_name(_stem(path) + ".json")
    if not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except Exception as exc:
        raise FmriInputError(
            f"Cannot read the BIDS sidecar '{sidecar}' ({exc})",
            fix="fix or remove the sidecar JSON, or pass tr=",
            file=path,
            subject=subject,
        ) from exc
    if isinstance(meta, dict) and "RepetitionTime" in meta:
        source = f"sidecar '{sidecar.name}'"
        return _check_tr_value(meta["RepetitionTime"], source, path, subject), source
    return None


def _choose_tr(path: Path, subject: str | None, tr: float | None, found: tuple[float, str] | None) -> float:
    """The argument wins; else the BIDS sidecar (which, per BIDS, overrides the header); else the file's own TR.

    Any disagreement between two sources is warned about, never resolved silently.
    """
    sidecar = _sidecar_tr(path, subject)
    if sidecar is not None and found is not None and not np.isclose(sidecar[0], found[0], rtol=1e-3):
        if tr is None:
            warnings.warn(
                f"'{path}': the {sidecar[1]} says TR {sidecar[0]} s but the {found[1]} says {found[0]} s; "
                f"using {sidecar[0]} s (BIDS sidecars override the header)",
                UserWarning,
                stacklevel=3,
            )
        found = sidecar
    found = sidecar or found
    if tr is not None:
        value = _check_tr_value(tr, "the tr argument", path, subject)
        if found is not None and not np.isclose(value, found[0], rtol=1e-3):
            warnings.warn(
                f"'{path}': tr={value} s given, but the {found[1]} says {found[0]} s; using {value} s",
                UserWarning,
                stacklevel=3,
            )
        return value
    if found is not None:
        return found[0]
    raise FmriInputError(
        "No TR is known (no NIfTI header TR, no BIDS sidecar JSON with RepetitionTime, no time or TR column)",
        fix=TR_FIX,
        file=path,
        subject=subject,
    )


# ---------------------------------------------------------------------------------------------------- tables
def _split(line: str, sep: str | None) -> list[str]:
    return line.split() if sep is None else [c.strip() for c in line.split(sep)]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_table(path: Path, subject: str) -> tuple[np.ndarray, tuple[float, str] | None]:
    """Read a delimited table: ``#`` lines skipped (AFNI header), delimiter sniffed, header row detected."""
    import pandas as pd

    try:
        with open(path, encoding="utf-8-sig") as handle:
            skip, first = 0, None
            for line in handle:
                if line.strip() and not line.lstrip().startswith("#"):
                    first = line.rstrip("\r\n")
                    break
                skip += 1
    except UnicodeDecodeError as exc:
        raise _corrupt(path, subject, exc, "a text table") from exc
    except OSError as exc:
        raise _corrupt(path, subject, exc, "a text table") from exc
    if first is None:
        raise FmriInputError(
            "The table is empty (no data rows)",
            fix="give one row per timepoint and one column per region",
            file=path,
            subject=subject,
        )
    sep = "\t" if "\t" in first else "," if "," in first else ";" if ";" in first else None
    cells = _split(first, sep)
    has_header = not all(_is_float(c) for c in cells if c) or _is_index_header(cells)
    if has_header:
        _check_header_width(path, subject, sep, skip, cells)
    special = has_header and _has_special_columns(cells)
    if not special:
        fast = _loadtxt(path, sep, skip + int(has_header))
        if fast is not None:
            return fast, None
    # Slow path: pandas handles quoting, empty cells, index/time columns, and locates a bad cell for the message.
    try:
        table = pd.read_csv(
            path,
            sep=sep if sep is not None else r"\s+",
            header=0 if has_header else None,
            skiprows=skip,
            comment="#" if path.suffix.lower() == ".1d" else None,
            skip_blank_lines=True,
            encoding="utf-8-sig",
        )
    except Exception as exc:  # pandas raises ParserError, ValueError, UnicodeError... on broken text
        raise _corrupt(path, subject, exc, "a text table") from exc
    found_tr = None
    if has_header:
        table, found_tr = _special_columns(table, path, subject)
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise FmriInputError(
            "The table has no data rows or no region columns",
            fix="give one row per timepoint and one column per region",
            file=path,
            subject=subject,
        )
    numeric = table.copy()
    for column in table.columns[[dtype.kind not in "biuf" for dtype in table.dtypes]]:
        numeric[column] = pd.to_numeric(table[column], errors="coerce")
    bad = numeric.isna().to_numpy() & ~table.isna().to_numpy()
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        line = row + skip + 1 + (1 if has_header else 0)
        raise FmriInputError(
            f"Non-numeric cell {str(table.iat[row, col])[:40]!r} at line {line}, column "
            f"{table.columns[col]!r} ({int(bad.sum())} non-numeric cell(s) in all)",
            fix="every cell must be a number (use NaN for a missing value); remove text columns or extra header rows",
            file=path,
            subject=subject,
        )
    return numeric.to_numpy(dtype=np.float32), found_tr


def _check_header_width(path: Path, subject: str, sep: str | None, skip: int, header: list[str]) -> None:
    """A header must name as many columns as the data rows have: a leading time column without a name would
    otherwise be read as region 0 (or, in pandas, silently become the index)."""
    names = _trim(header)
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= skip + 1 or not line.strip() or line.lstrip().startswith("#"):
                continue
            cells = _trim(_split(line.rstrip("\r\n"), sep))
            if len(cells) != len(names):
                raise FmriInputError(
                    f"The header (line {skip + 1}) names {len(names)} columns but the first data row (line "
                    f"{number}) has {len(cells)} values",
                    fix="give every column a name in the header (e.g. 'time' for a leading time column), or "
                    "remove the header row",
                    file=path,
                    subject=subject,
                )
            return


def _trim(cells: list[str]) -> list[str]:
    """Cells without the empty one a trailing delimiter leaves."""
    return cells[:-1] if len(cells) > 1 and cells[-1] == "" else cells


def _loadtxt(path: Path, sep: str | None, skip: int) -> np.ndarray | None:
    """NumPy's C reader for the common clean case (all numbers); None sends the caller to the pandas path."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": reported by the pandas path
            data = np.loadtxt(
                path,
                delimiter=sep,
                skiprows=skip,
                comments="#",
                dtype=np.float32,
                ndmin=2,
                encoding="utf-8-sig",
            )
    except (ValueError, TypeError, UnicodeError):
        return None
    return data if data.size else None


def _has_special_columns(cells: list[str]) -> bool:
    names = [c.strip().strip('"').lower() for c in cells]
    return bool(names and names[0] == "") or any(n in TIME_COLUMNS or n in TR_NAMES for n in names)


def _is_index_header(cells: list[str]) -> bool:
    """A numeric first row that is just 0..R-1 or 1..R is a header of region numbers, not a timepoint."""
    if len(cells) < 3 or not all(_is_float(c) for c in cells):
        return False
    values = np.asarray([float(c) for c in cells])
    seq = np.arange(len(values))
    return bool(np.array_equal(values, seq) or np.array_equal(values, seq + 1))


def _special_columns(table: Any, path: Path, subject: str) -> tuple[Any, tuple[float, str] | None]:
    """Drop a pandas index column; read the TR from a time-stamp or TR column and drop it."""
    first = str(table.columns[0])
    if first == "" or first.startswith("Unnamed: 0"):
        table = table.iloc[:, 1:]
    found = None
    names = {str(c).strip().lower(): c for c in table.columns}
    for name in TR_NAMES:
        if name in names:
            column = table[names[name]]
            values = np.unique(column.dropna().to_numpy(dtype=float))
            if values.size == 1:
                found = (
                    _check_tr_value(values[0], f"column '{names[name]}'", path, subject),
                    f"column '{names[name]}'",
                )
            table = table.drop(columns=[names[name]])
            break
    for name in TIME_COLUMNS:
        if name in names and names[name] in table.columns:
            times = table[names[name]].to_numpy(dtype=float)
            steps = np.diff(times)
            if found is None and steps.size and np.all(steps > 0):
                source = f"time column '{names[name]}'"
                found = (_check_tr_value(float(np.median(steps)), source, path, subject), source)
            table = table.drop(columns=[names[name]])
            break
    return table, found


# --------------------------------------------------------------------------------------------- keyed arrays
def _open_keyed(path: Path, kind: str, subject: str | None) -> tuple[dict[str, Any], Any, Any]:
    """The scan arrays of a .npz / .h5 by name, a function giving the TR stored with one, and a closer."""
    if kind == "npz":
        try:
            archive = np.load(path, allow_pickle=False)
            names = list(archive.files)
        except Exception as exc:
            raise _corrupt(path, subject, exc, "a NumPy .npz archive") from exc
        tr_name = next((n for n in names if n.lower() in TR_NAMES), None)
        file_tr = None
        if tr_name is not None:
            try:
                value = archive[tr_name]
            except Exception as exc:
                raise _corrupt(path, subject, exc, "a NumPy .npz archive") from exc
            if np.ndim(value) == 0:
                file_tr = (_check_tr_value(value, f"entry '{tr_name}'", path, subject), f"entry '{tr_name}'")
            names.remove(tr_name)
        arrays = {n: archive for n in names}
        if not arrays:
            archive.close()
            raise FmriInputError(
                "The archive holds no scan arrays",
                fix="save one (time, regions) array per subject",
                file=path,
            )
        return arrays, lambda _name: file_tr, archive.close
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:
        raise _corrupt(path, subject, exc, "an HDF5 file") from exc
    datasets: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name.split("/")[-1].lower() not in TR_NAMES:
            datasets[name] = obj

    handle.visititems(visit)
    if not datasets:
        handle.close()
        raise FmriInputError(
            "The HDF5 file holds no datasets", fix="save one (time, regions) dataset per subject", file=path
        )

    def h5_tr(name: str) -> tuple[float, str] | None:
        obj = datasets[name]
        for holder, label in ((obj.attrs, f"attribute of '{name}'"), (handle.attrs, "file attribute")):
            for attr in holder:
                if str(attr).lower() in TR_NAMES:
                    return _check_tr_value(
                        holder[attr], f"{label} '{attr}'", path, subject
                    ), f"{label} '{attr}'"
        for tr_name in TR_NAMES:
            if tr_name in handle and isinstance(handle[tr_name], h5py.Dataset) and handle[tr_name].ndim == 0:
                return _check_tr_value(handle[tr_name][()], f"dataset '{tr_name}'", path, subject), tr_name
        return None

    return datasets, h5_tr, handle.close


def _read_keyed(path: Path, kind: str, name: str, arrays: dict[str, Any], subject: str | None) -> np.ndarray:
    try:
        data = arrays[name][name] if kind == "npz" else arrays[name][()]
    except Exception as exc:
        what = "a NumPy .npz archive" if kind == "npz" else "an HDF5 file"
        raise _corrupt(path, subject, exc, what) from exc
    return _numeric(data, path, subject, key=name)


# ----------------------------------------------------------------------------------------------------- NIfTI
def _read_nifti(
    path: Path, atlas: Atlas | None, subject: str, bad_regions: str, clean: dict[str, Any] | None = None
) -> tuple[np.ndarray, tuple[float, str] | None, list[int]]:
    """Parcellate a 4D image with nilearn; returns (T, R), the header TR, and regions with no voxel.

    ``clean`` goes to the masker's ``fit_transform`` (``confounds``, ``sample_mask``): confounds regressed out,
    volumes outside the sample mask dropped, exactly as nilearn does it.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape
    except Exception as exc:
        raise _corrupt(path, subject, exc, "a NIfTI image") from exc
    if len(shape) != 4:
        raise FmriInputError(
            f"Expected a 4D NIfTI image (x, y, z, time), got shape {tuple(shape)}",
            fix="give the 4D functional image, or a (time, regions) table",
            file=path,
            subject=subject,
        )
    if atlas is None:
        raise FmriInputError(
            f"A 4D NIfTI image (shape {tuple(shape)}) needs an atlas to become region time series",
            fix="pass atlas= a labels image (.nii/.nii.gz), a built-in atlas name (seitzman300, dosenbach160) "
            "or an Atlas with coordinates and radius_mm (--atlas on the command line)",
            file=path,
            subject=subject,
        )
    header_tr = _nifti_tr(img, path, subject)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)  # read once: a truncated file fails here, clearly
    except Exception as exc:
        raise _corrupt(path, subject, exc, "a NIfTI image") from exc
    img = nib.Nifti1Image(data, img.affine, img.header)
    if atlas.labels_img is not None:
        series = _labels_signals(img, atlas, path, subject, clean)
        return series, header_tr, []
    if atlas.radius_mm is None:
        raise FmriInputError(
            f"Atlas '{atlas.name}' has coordinates but neither a labels image nor a sphere radius",
            fix="give a labels image as atlas, or set radius_mm on the Atlas (e.g. Atlas(..., radius_mm=5))",
            file=path,
            subject=subject,
        )
    series, empty = _sphere_signals(img, atlas, path, subject, bad_regions, clean)
    return series, header_tr, empty


def _nifti_tr(img: Any, path: Path, subject: str) -> tuple[float, str] | None:
    """TR from pixdim[4] in the header's time unit; unknown unit with the nibabel default 1.0 counts as unset."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    value = float(zooms[3])
    unit = img.header.get_xyzt_units()[1]
    if unit == "msec":
        value /= 1000.0
    elif unit == "usec":
        value /= 1e6
    elif unit != "sec":
        if value == 1.0:
            return None
        if value > 100:  # unitless and large: written in milliseconds
            value /= 1000.0
    return _check_tr_value(value, "NIfTI header", path, subject), "NIfTI header"


def _labels_signals(
    img: Any, atlas: Atlas, path: Path, subject: str, clean: dict[str, Any] | None = None
) -> np.ndarray:
    from nilearn.maskers import NiftiLabelsMasker

    masker = NiftiLabelsMasker(labels_img=atlas.labels_img, standardize=None, reports=False)
    try:
        series = masker.fit_transform(img, **(clean or {}))
    except FmriInputError:
        raise
    except Exception as exc:
        raise FmriInputError(
            f"Cannot parcellate the image with labels image '{atlas.labels_img}' ({str(exc).splitlines()[0][:200]})",
            fix="check that the image and the labels image are in the same space (MNI) and both readable",
            file=path,
            subject=subject,
        ) from exc
    # Columns follow masker.region_ids_; put them in atlas label order, zero for a label the masker lost.
    ids = [v for k, v in masker.region_ids_.items() if k != "background"]
    column = {str(int(v)) if float(v).is_integer() else str(v): j for j, v in enumerate(ids)}
    out = np.zeros((series.shape[0], atlas.n_regions), dtype=np.float32)
    for i, label in enumerate(atlas.labels):
        j = column.get(label)
        if j is not None:
            out[:, i] = series[:, j]
    if not column.keys() & set(atlas.labels):
        raise FmriInputError(
            f"None of the labels of atlas '{atlas.name}' occur in its labels image '{atlas.labels_img}'",
            fix="build the atlas with Atlas.from_labels_image so labels match the image values",
            file=path,
            subject=subject,
        )
    return out


def _sphere_signals(
    img: Any, atlas: Atlas, path: Path, subject: str, bad_regions: str, clean: dict[str, Any] | None = None
) -> tuple[np.ndarray, list[int]]:
    """Sphere means; spheres outside the image's field of view give zero columns (then flagged as bad)."""
    from nilearn.maskers import NiftiSpheresMasker

    keep = list(range(atlas.n_regions))
    for _ in range(2):
        masker = NiftiSpheresMasker(
            seeds=[tuple(map(float, atlas.coords[i])) for i in keep],
            radius=float(atlas.radius_mm),
            allow_overlap=True,
            standardize=None,
            reports=False,
        )
        try:
            series = masker.fit_transform(img, **(clean or {}))
            break
        except ValueError as exc:
            match = re.search(r"spheres are empty: \[([\d,\s]*)\]", str(exc))
            if match is None:
                raise FmriInputError(
                    f"Cannot extract sphere signals ({str(exc).splitlines()[0][:200]})",
                    fix="check that the image is in MNI space and the atlas coordinates are MNI mm",
                    file=path,
                    subject=subject,
                ) from exc
            empty_pos = {int(v) for v in match.group(1).replace(",", " ").split()}
            if bad_regions == "reject" or len(empty_pos) == len(keep):
                raise FmriInputError(
                    f"{len(empty_pos)} of {atlas.n_regions} spheres of atlas '{atlas.name}' contain no voxel of "
                    "the image",
                    fix="check the image covers the brain in MNI space, or load with bad_regions='repair' to zero "
                    "and flag those regions",
                    file=path,
                    subject=subject,
                ) from exc
            keep = [r for j, r in enumerate(keep) if j not in empty_pos]
    else:  # pragma: no cover - nilearn reports all empty spheres at once
        raise FmriInputError(
            "Cannot extract sphere signals", fix="check the atlas", file=path, subject=subject
        )
    out = np.zeros((series.shape[0], atlas.n_regions), dtype=np.float32)
    out[:, keep] = series
    return out, sorted(set(range(atlas.n_regions)) - set(keep))
