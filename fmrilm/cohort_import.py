"""Build a cohort from a participants table plus its scans, with the value mapping declared, not coded.

A lab's table (ABIDE's phenotypic CSV, a BIDS ``participants.tsv``, ...) is used as it is: a small mapping
(YAML file, shipped preset, or CLI flags) says which column holds the scan id, subject, session, site and TR,
and how raw phenotype codes become fmrilm's standard labels (e.g. ``DX_GROUP`` 1 -> "autism"). Scans are found
by a filename pattern with ``{column}`` placeholders, by a column of paths, or in one keyed ``.npz``.

Everything that can be wrong with the mapping (a missing column, an unmapped value, a scan file that is not
there) is checked for every row before any scan is read, and raises one FmriInputError naming the file, the
subject and the fix. Scans that fail validation stop the import, or are skipped and listed with
``skip_bad=True``. Repaired regions (constant, all-zero, non-finite) are recorded per scan in the cohort's
``bad_regions`` column, and the import report lands in ``cohort.meta["import"]``.
"""

from __future__ import annotations

import math
import string
import warnings
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.atlas import Atlas, resolve_atlas
from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

#: Raw cell values (after strip, case-insensitive) that always mean "missing".
DEFAULT_MISSING = ("", "na", "n/a", "nan", "none", "null")
ID_FIELDS = ("scan_id", "subject_id", "session_id", "site", "tr")
KINDS = ("binary", "multiclass", "regression")
#: Column names (case-insensitive) used for an id when the mapping does not name one (BIDS-friendly).
ID_DEFAULT_COLUMNS = {
    "scan_id": ("scan_id",),
    "subject_id": ("subject_id", "participant_id", "subject"),
    "session_id": ("session_id", "session"),
    "site": ("site", "site_id"),
    "tr": ("tr", "repetition_time", "repetitiontime"),
}
#: Plausible TRs in seconds (same bounds as fmrilm.io); outside them the unit is almost surely wrong.
TR_RANGE_S = (0.05, 30.0)
SKIP_BAD_HINT = "or pass --skip-bad (skip_bad=True) to leave out scans that fail validation and list them"


# ----------------------------------------------------------------------------------------------- the mapping
@dataclass
class PhenotypeSpec:
    """How one standard phenotype column is read from the table."""

    column: str
    kind: str | None = None  # binary | multiclass | regression; inferred when None
    values: dict[str, str] | None = None  # raw code -> label (categorical phenotypes)
    missing: tuple[str, ...] = ()  # extra raw values that mean missing (besides DEFAULT_MISSING)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"column": self.column}
        if self.kind:
            out["kind"] = self.kind
        if self.values:
            out["values"] = dict(self.values)
        if self.missing:
            out["missing"] = list(self.missing)
        return out


@dataclass
class CohortMapping:
    """Table columns -> fmrilm ids and phenotypes. Built from YAML, a preset or CLI flags."""

    ids: dict[str, str] = field(default_factory=dict)
    phenotypes: dict[str, PhenotypeSpec] = field(default_factory=dict)
    name: str | None = None
    source: str | None = None  # where it came from, for error messages
    origins: dict[str, str] = field(default_factory=dict)  # "ids.site" / "phenotypes.age" -> its source

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> CohortMapping:
        """Validate the structure so that a typo in the YAML fails here, naming the file and the key."""

        def bad(problem: str, fix: str) -> FmriInputError:
            return FmriInputError(problem, fix=fix, file=source)

        if not isinstance(data, dict):
            raise bad("The mapping is not a YAML mapping", "write `ids:` and `phenotypes:` sections")
        unknown = set(data) - {"name", "ids", "phenotypes", "description"}
        if unknown:
            raise bad(
                f"Unknown mapping section(s) {', '.join(sorted(map(str, unknown)))}",
                "use only name, description, ids and phenotypes",
            )
        ids = data.get("ids") or {}
        if not isinstance(ids, dict) or set(ids) - set(ID_FIELDS):
            raise bad(
                f"The `ids` section must map {', '.join(ID_FIELDS)} to table columns, got {ids!r}",
                "write e.g. `ids: {scan_id: FILE_ID, subject_id: SUB_ID, site: SITE_ID, tr: TR}`",
            )
        phenos: dict[str, PhenotypeSpec] = {}
        raw_phenos = data.get("phenotypes") or {}
        if not isinstance(raw_phenos, dict):
            raise bad(
                "The `phenotypes` section is not a mapping", "write `phenotypes: {age: AGE_AT_SCAN, ...}`"
            )
        for pname, spec in raw_phenos.items():
            if isinstance(spec, str):
                spec = {"column": spec}
            if not isinstance(spec, dict) or "column" not in spec:
                raise bad(
                    f"Phenotype '{pname}' has no `column`",
                    f"write `{pname}: {{column: COLUMN}}` (plus optional kind, values, missing)",
                )
            extra = set(spec) - {"column", "kind", "values", "missing"}
            if extra:
                raise bad(
                    f"Phenotype '{pname}' has unknown key(s) {', '.join(sorted(map(str, extra)))}",
                    "use only column, kind, values and missing",
                )
            kind = spec.get("kind")
            if kind is not None and kind not in KINDS:
                raise bad(f"Phenotype '{pname}' has unknown kind '{kind}'", f"use one of {', '.join(KINDS)}")
            values = spec.get("values")
            if values is not None and not isinstance(values, dict):
                raise bad(
                    f"The values of phenotype '{pname}' are not a mapping",
                    f"write `values: {{1: label_a, 2: label_b}}` under {pname}",
                )
            if values and kind == "regression":
                raise bad(
                    f"Phenotype '{pname}' is a regression target but maps values to labels",
                    "drop `values`, or use kind binary/multiclass",
                )
            missing = spec.get("missing") or ()
            if not isinstance(missing, (list, tuple)):
                missing = (missing,)
            phenos[str(pname)] = PhenotypeSpec(
                column=str(spec["column"]),
                kind=kind,
                values={_norm(k): str(v) for k, v in values.items()} if values else None,
                missing=tuple(_norm(m) for m in missing),
            )
        ids = {k: str(v) for k, v in ids.items() if v is not None}
        origin = source or "the mapping"
        return cls(
            ids=ids,
            phenotypes=phenos,
            name=data.get("name"),
            source=source,
            origins={**{f"ids.{k}": origin for k in ids}, **{f"phenotypes.{k}": origin for k in phenos}},
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> CohortMapping:
        import yaml

        path = Path(path)
        if not path.exists():
            raise FmriInputError("Mapping file not found", file=path, fix="check the --mapping path")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise FmriInputError(
                f"The mapping is not valid YAML ({exc})".replace("\n", " "), file=path, fix="correct the YAML"
            ) from exc
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def preset(cls, name: str) -> CohortMapping:
        """A mapping shipped with fmrilm (``fmrilm/presets/<name>.yaml``), e.g. ``abide``."""
        import yaml

        available = list_presets()
        if name not in available:
            raise FmriInputError(
                f"Unknown mapping preset '{name}'",
                fix=f"use one of {', '.join(available) or '(none installed)'}, or give --mapping FILE.yaml",
            )
        text = resources.files("fmrilm").joinpath("presets", f"{name}.yaml").read_text()
        return cls.from_dict(yaml.safe_load(text), source=f"preset '{name}'")

    def merged(self, other: CohortMapping) -> CohortMapping:
        """``other`` (e.g. CLI flags) on top of this mapping: ids replaced, phenotype specs merged per key."""
        phenos = {k: replace(v) for k, v in self.phenotypes.items()}
        for pname, spec in other.phenotypes.items():
            if pname in phenos and spec.column == "":
                base = phenos[pname]
                phenos[pname] = PhenotypeSpec(
                    column=base.column,
                    kind=spec.kind or base.kind,
                    values={**(base.values or {}), **(spec.values or {})} or None,
                    missing=tuple(dict.fromkeys(base.missing + spec.missing)),
                )
            else:
                phenos[pname] = spec
        return CohortMapping(
            ids={**self.ids, **other.ids},
            phenotypes=phenos,
            name=other.name or self.name,
            source=" + ".join(s for s in (self.source, other.source) if s) or None,
            origins={
                **self.origins,
                **{k: v for k, v in other.origins.items() if not k.startswith("phenotypes.")},
                **{
                    f"phenotypes.{k}": other.source or "the mapping"
                    for k, spec in other.phenotypes.items()
                    if spec.column
                },
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ids": dict(self.ids),
            "phenotypes": {k: v.to_dict() for k, v in self.phenotypes.items()},
        }


def list_presets() -> list[str]:
    folder = resources.files("fmrilm").joinpath("presets")
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def mapping_from_flags(
    *,
    scan_id_column: str | None = None,
    subject_column: str | None = None,
    session_column: str | None = None,
    site_column: str | None = None,
    tr_column: str | None = None,
    phenotype: list[str] | None = None,
    values: list[str] | None = None,
    missing: list[str] | None = None,
    kind: list[str] | None = None,
) -> CohortMapping:
    """The same mapping as a YAML file, from CLI flags.

    ``phenotype``: ``NAME=COLUMN`` (or ``NAME`` when the column has that name); ``values``:
    ``NAME=RAW:LABEL,RAW:LABEL``; ``missing``: ``NAME=V1,V2``; ``kind``: ``NAME=binary|multiclass|regression``.
    ``values``/``missing``/``kind`` for a phenotype not given by ``phenotype`` refine the one from --mapping.
    """
    ids = {
        k: v
        for k, v in (
            ("scan_id", scan_id_column),
            ("subject_id", subject_column),
            ("session_id", session_column),
            ("site", site_column),
            ("tr", tr_column),
        )
        if v
    }
    specs: dict[str, dict[str, Any]] = {}
    for item in phenotype or []:
        pname, _, col = item.partition("=")
        specs.setdefault(pname.strip(), {})["column"] = (col or pname).strip()
    for item in values or []:
        pname, sep, pairs = item.partition("=")
        entries = {}
        for pair in pairs.split(","):
            raw, colon, label = pair.partition(":")
            if not sep or not colon or not raw.strip() or not label.strip():
                raise FmriInputError(
                    f"Cannot read --values '{item}'",
                    fix="write --values NAME=RAW:LABEL,RAW:LABEL, e.g. --values diagnosis=1:autism,2:control",
                )
            entries[raw.strip()] = label.strip()
        specs.setdefault(pname.strip(), {}).setdefault("values", {}).update(entries)
    for item in missing or []:
        pname, sep, vals = item.partition("=")
        if not sep:
            raise FmriInputError(
                f"Cannot read --missing '{item}'", fix="write --missing NAME=V1,V2, e.g. --missing fiq=-9999"
            )
        specs.setdefault(pname.strip(), {}).setdefault("missing", []).extend(
            v.strip() for v in vals.split(",")
        )
    for item in kind or []:
        pname, sep, k = item.partition("=")
        if not sep:
            raise FmriInputError(f"Cannot read --kind '{item}'", fix="write --kind NAME=regression")
        specs.setdefault(pname.strip(), {})["kind"] = k.strip()
    for spec in specs.values():
        spec.setdefault("column", "")  # "" = refine the spec of the same name from --mapping/--preset
    source = "command-line flags" if ids or specs else None
    return CohortMapping.from_dict({"ids": ids, "phenotypes": specs}, source=source)


def resolve_mapping(mapping: CohortMapping | dict | str | Path | None) -> CohortMapping:
    """A CohortMapping from an object, a dict, a preset name or a YAML path."""
    if mapping is None:
        return CohortMapping()
    if isinstance(mapping, CohortMapping):
        return mapping
    if isinstance(mapping, dict):
        return CohortMapping.from_dict(mapping, source="mapping dict")
    text = str(mapping)
    if not text.lower().endswith((".yaml", ".yml")) and text in list_presets():
        return CohortMapping.preset(text)
    return CohortMapping.from_yaml(text)


# ------------------------------------------------------------------------------------------------- the table
def read_table(path: str | Path):
    """Read a participants table (CSV, TSV) with every cell as text, so no code is reinterpreted by pandas."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FmriInputError("Participants table not found", file=path, fix="check the --table path")
    suffix = path.suffix.lower()
    sep = "\t" if suffix in {".tsv", ".tab"} else "," if suffix == ".csv" else None
    try:
        table = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, engine="python" if sep is None else "c"
        )
    except Exception as exc:  # pandas raises many types on malformed text
        raise FmriInputError(
            f"Cannot read the participants table ({exc})",
            file=path,
            fix="give a CSV or TSV with a header row",
        ) from exc
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise FmriInputError("The participants table has no rows", file=path, fix="give one row per scan")
    return table


# ------------------------------------------------------------------------------------------------ the import
@dataclass
class _Row:
    index: int
    raw: dict[str, str]
    scan_id: str
    subject_id: str
    session_id: str
    site: str
    tr: float | None
    phenotypes: dict[str, Any]
    file: Path | None = None
    npz_key: str | None = None


def import_cohort(
    table: str | Path,
    *,
    atlas: Atlas | str | Path,
    scans: str | None = None,
    path_column: str | None = None,
    npz: str | Path | None = None,
    npz_key: str | None = None,
    mapping: CohortMapping | dict | str | Path | None = None,
    tr: float | None = None,
    bad_regions: str = "repair",
    skip_bad: bool = False,
    skip_missing: bool = False,
    min_timepoints: int | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Cohort:
    """Read ``table`` and its scans into a Cohort (saved atomically to ``out`` when given).

    ``out`` must be new, empty, or (with ``overwrite``) an earlier cohort folder holding nothing else; it is
    checked before any scan is read, and an earlier cohort is replaced only once the new one is complete.

    Give exactly one of ``scans`` (a filename pattern with ``{column}`` placeholders, relative to the table's
    folder, glob characters allowed when they match one file), ``path_column`` (a column of file paths,
    relative to the table's folder) or ``npz`` (one array per scan, keyed by ``npz_key``'s column or the scan
    id). ``tr`` overrides the table's TR column; without either, file scans take the TR their format carries.
    ``bad_regions`` is the policy for constant/zero/non-finite regions ("repair": zeroed/interpolated and
    recorded in the ``bad_regions`` column; "reject": such a scan fails validation). Scans shorter than
    ``min_timepoints`` (default ``SignalConfig.min_timepoints``) fail validation too.
    """
    from tqdm.auto import tqdm

    table_path = Path(table)
    if out is not None:
        from fmrilm.safety import COHORT_OUTPUT, check_output

        check_output(out, COHORT_OUTPUT, overwrite=overwrite)
    if min_timepoints is not None and (not isinstance(min_timepoints, int) or min_timepoints < 2):
        raise FmriInputError(
            f"--min-timepoints must be a whole number of at least 2, got {min_timepoints!r}",
            fix="give e.g. --min-timepoints 24 (min_timepoints=24 in Python)",
        )
    frame = read_table(table_path)
    atlas_obj = resolve_atlas(atlas)
    if atlas_obj is None:
        raise FmriInputError(
            "No atlas given", fix="pass --atlas (a built-in name, centroids table or labels image)"
        )
    if bad_regions not in ("repair", "reject"):
        raise FmriInputError(f"Unknown bad-region policy '{bad_regions}'", fix="use repair or reject")
    sources = [s for s in (scans, path_column, npz) if s]
    if len(sources) != 1:
        raise FmriInputError(
            "Give exactly one source of scans",
            file=table_path,
            fix="pass one of --scans PATTERN, --path-column COLUMN or --npz FILE",
        )
    if tr is not None and not (math.isfinite(tr) and TR_RANGE_S[0] <= tr <= TR_RANGE_S[1]):
        raise FmriInputError(
            f"--tr must be seconds in {TR_RANGE_S[0]}-{TR_RANGE_S[1]}, got {tr}", fix="give e.g. --tr 2.0"
        )
    mapping_obj = _with_default_ids(resolve_mapping(mapping), list(frame.columns))
    _check_columns(mapping_obj, frame, table_path, path_column=path_column, npz_key=npz_key, pattern=scans)

    rows = [_parse_row(i, rec, mapping_obj, table_path, tr) for i, rec in enumerate(frame.to_dict("records"))]
    _check_unique(rows, table_path, mapping_obj)

    skipped: list[dict[str, Any]] = []
    npz_file = None
    if npz:
        npz_file = _open_npz(Path(npz))
        keys = set(npz_file.files)
        present = []
        for row in rows:
            key = row.raw[npz_key] if npz_key else row.scan_id
            row.file = Path(npz)
            row.npz_key = key
            if key in keys:
                present.append(row)
            elif skip_missing:
                skipped.append(_skip(row, f"no array '{key}' in {npz}"))
            else:
                raise FmriInputError(
                    f"The .npz has no array '{key}' for scan '{row.scan_id}'",
                    file=npz,
                    subject=row.subject_id,
                    fix="check that the npz is keyed by "
                    + (f"column {npz_key}" if npz_key else "the scan id (or pass --npz-key COLUMN)")
                    + ", or pass --skip-missing to leave out rows without a scan",
                )
        rows = present
    else:
        base = table_path.resolve().parent
        present = []
        for row in rows:
            found, why = _locate(row, base, scans, path_column)
            if found is not None:
                row.file = found
                present.append(row)
            elif skip_missing:
                skipped.append(_skip(row, why))
            else:
                raise FmriInputError(
                    why,
                    file=table_path,
                    subject=row.subject_id,
                    fix=(
                        "check the --scans pattern (placeholders are table columns, paths relative to the "
                        "table's folder)"
                        if scans
                        else f"check column {path_column} (paths relative to the table's folder)"
                    )
                    + ", or pass --skip-missing to leave out rows without a scan",
                )
        rows = present

    loaded: list[Scan] = []
    kept: list[_Row] = []
    label = name or mapping_obj.name or (Path(out).name if out else table_path.stem)
    for row in tqdm(rows, desc=f"Importing {label}", unit="scan", disable=not progress):
        try:
            scan = _load_row(row, npz_file, atlas_obj, bad_regions, min_timepoints)
        except FmriInputError as exc:
            if not skip_bad:
                raise FmriInputError(
                    exc.problem,
                    fix=f"{exc.fix}; {SKIP_BAD_HINT}",
                    file=exc.file or row.file,
                    subject=row.subject_id,
                ) from exc
            skipped.append(_skip(row, exc.problem))
            continue
        loaded.append(scan)
        kept.append(row)
    if npz_file is not None:
        npz_file.close()
    if not loaded:
        raise FmriInputError(
            "No scan could be imported" + (f" ({len(skipped)} skipped)" if skipped else ""),
            file=table_path,
            fix="check the scan source and the report of skipped rows",
        )

    kinds = _phenotype_kinds(mapping_obj, kept, table_path)
    meta = {
        "import": {
            "table": str(table_path.resolve()),
            "source": {"npz": str(Path(npz).resolve())}
            if npz
            else ({"pattern": scans} if scans else {"path_column": path_column}),
            "mapping": mapping_obj.to_dict(),
            "mapping_source": mapping_obj.source,
            "tr_override": tr,
            "bad_region_policy": bad_regions,
            "n_table_rows": len(frame),
            "n_scans": len(loaded),
            "skipped": skipped,
            "n_scans_with_bad_regions": sum(1 for s in loaded if s.flags.get("bad_regions")),
        },
        "label_maps": {k: v.values for k, v in mapping_obj.phenotypes.items() if v.values},
    }
    cohort = Cohort.from_scans(
        loaded,
        [r.phenotypes for r in kept],
        atlas=atlas_obj,
        name=label,
        phenotype_kinds=kinds,
        meta=meta,
    )
    if out is not None:
        cohort.save(out, overwrite=overwrite)
    return cohort


# -------------------------------------------------------------------------------------------------- helpers
def _norm(value: Any) -> str:
    """Canonical text of a raw code: ``1``, ``1.0`` and ``"1"`` all become ``"1"``; text is case-folded."""
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text.casefold()
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return text.casefold()


def _is_missing(raw: str, extra: tuple[str, ...] = ()) -> bool:
    key = _norm(raw)
    return key in DEFAULT_MISSING or key in extra


def _with_default_ids(mapping: CohortMapping, columns: list[str]) -> CohortMapping:
    """Fill unmapped ids from conventional column names (participant_id, session, site, tr ...)."""
    lower = {c.lower(): c for c in columns}
    ids, origins = dict(mapping.ids), dict(mapping.origins)
    for key, candidates in ID_DEFAULT_COLUMNS.items():
        if key not in ids:
            found = next((lower[c] for c in candidates if c in lower), None)
            if found is not None:
                ids[key] = found
                origins[f"ids.{key}"] = "its conventional column name"
    return replace(mapping, ids=ids, origins=origins)


def _check_columns(
    mapping: CohortMapping,
    frame,
    table_path: Path,
    *,
    path_column: str | None,
    npz_key: str | None,
    pattern: str | None,
) -> None:
    columns = list(frame.columns)
    have = set(columns)
    shown = ", ".join(columns[:30]) + (" ..." if len(columns) > 30 else "")
    if "scan_id" not in mapping.ids and "subject_id" not in mapping.ids:
        raise FmriInputError(
            "No column gives the subject or scan id",
            file=table_path,
            fix=f"map one with ids.subject_id / ids.scan_id in the mapping YAML or --subject-column / "
            f"--scan-id-column (table columns: {shown})",
        )
    wanted = [(f"ids.{k}", c) for k, c in mapping.ids.items()]
    wanted += [(f"phenotypes.{k}", s.column) for k, s in mapping.phenotypes.items()]
    for what, col in wanted:
        if col == "":
            raise FmriInputError(
                f"'{what.split('.', 1)[1]}' has values/missing/kind flags but no column",
                file=table_path,
                fix=f"add --phenotype {what.split('.', 1)[1]}=COLUMN, or define it in the mapping YAML",
            )
        if col not in have:
            where = mapping.origins.get(what, mapping.source or "the mapping")
            raise FmriInputError(
                f"The table has no column '{col}' (mapped to {what} by {where})",
                file=table_path,
                fix=f"correct the column name ({where}); the table's columns are: {shown}",
            )
    for flag, col in (("--path-column", path_column), ("--npz-key", npz_key)):
        if col and col not in have:
            raise FmriInputError(
                f"The table has no column '{col}' (given by {flag})",
                file=table_path,
                fix=f"use one of the table's columns: {shown}",
            )
    if pattern:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        except ValueError as exc:
            raise FmriInputError(
                f"Cannot read the --scans pattern '{pattern}' ({exc})",
                fix="write placeholders as {COLUMN}, e.g. scans/{FILE_ID}_rois_cc200.1D",
            ) from exc
        known = have | set(ID_FIELDS)
        for f in fields:
            root = f.split(".")[0].split("[")[0]
            if not root or root not in known:
                raise FmriInputError(
                    f"The --scans pattern '{pattern}' uses placeholder '{{{f}}}', which is not a table column",
                    file=table_path,
                    fix=f"use table columns ({shown}) or {', '.join(ID_FIELDS)} as placeholders",
                )


def _parse_row(
    index: int, raw: dict[str, str], mapping: CohortMapping, table_path: Path, tr_override: float | None
) -> _Row:
    ids = mapping.ids

    def cell(key: str) -> str | None:
        col = ids.get(key)
        if col is None or _is_missing(raw[col]):
            return None
        return raw[col].strip()

    subject = cell("subject_id")
    scan_id = cell("scan_id")
    session = cell("session_id") or ""
    who = subject or scan_id or f"row {index + 2}"
    if "subject_id" in ids and subject is None:
        raise FmriInputError(
            f"Row {index + 2} has no subject id in column {ids['subject_id']}",
            file=table_path,
            subject=scan_id,
            fix="fill the subject id, or remove the row",
        )
    if "scan_id" in ids and scan_id is None:
        raise FmriInputError(
            f"Row {index + 2} has no scan id in column {ids['scan_id']}",
            file=table_path,
            subject=subject,
            fix="fill the scan id, or remove the row",
        )
    subject = subject or scan_id
    scan_id = scan_id or (f"{subject}_{session}" if session else subject)
    tr = tr_override
    if tr is None and cell("tr") is not None:
        try:
            tr = float(cell("tr"))
        except ValueError:
            tr = None
        if tr is None or not (math.isfinite(tr) and TR_RANGE_S[0] <= tr <= TR_RANGE_S[1]):
            raise FmriInputError(
                f"Column {ids['tr']} has TR '{raw[ids['tr']]}', not a number of seconds in "
                f"{TR_RANGE_S[0]}-{TR_RANGE_S[1]} (milliseconds?)",
                file=table_path,
                subject=who,
                fix="correct the TR (seconds), or pass --tr to set it for every scan",
            )
    phenos: dict[str, Any] = {}
    for pname, spec in mapping.phenotypes.items():
        value = raw[spec.column]
        if _is_missing(value, spec.missing):
            phenos[pname] = None
        elif spec.values:
            key = _norm(value)
            if key not in spec.values:
                mapped = ", ".join(spec.values)
                raise FmriInputError(
                    f"Column {spec.column} has value '{value}', which the mapping of '{pname}' does not map "
                    f"(it maps {mapped})",
                    file=table_path,
                    subject=who,
                    fix=f"add `{value.strip()}: LABEL` under phenotypes.{pname}.values in the mapping YAML "
                    f"(or --values {pname}={value.strip()}:LABEL), or list it as missing "
                    f"(missing: [{value.strip()}] / --missing {pname}={value.strip()})",
                )
            phenos[pname] = spec.values[key]
        elif spec.kind == "regression":
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise FmriInputError(
                    f"Column {spec.column} has value '{value}', not a number, for regression target '{pname}'",
                    file=table_path,
                    subject=who,
                    fix=f"correct the value, or list it as missing (missing: ['{value.strip()}'] under "
                    f"phenotypes.{pname} / --missing {pname}={value.strip()})",
                )
            phenos[pname] = number
        else:
            phenos[pname] = value.strip()
    return _Row(
        index=index,
        raw=raw,
        scan_id=scan_id,
        subject_id=subject,
        session_id=session,
        site=cell("site") or "",
        tr=tr,
        phenotypes=phenos,
    )


def _phenotype_kinds(mapping: CohortMapping, rows: list[_Row], table_path: Path) -> dict[str, str]:
    """Declared kinds; undeclared text columns that all parse as numbers become regression targets.

    An undeclared column of numbers with a few text cells (``age`` with one ``unknown``) is refused rather
    than silently read as dozens of classes.
    """
    phenos = [r.phenotypes for r in rows]
    kinds: dict[str, str] = {}
    for pname, spec in mapping.phenotypes.items():
        present = [p[pname] for p in phenos if p[pname] is not None]
        if spec.kind:
            kinds[pname] = spec.kind
        elif spec.values:
            kinds[pname] = "binary" if len(set(spec.values.values())) <= 2 else "multiclass"
        elif present and all(_is_number(v) for v in present) and len(set(present)) > 2:
            for p in phenos:
                if p[pname] is not None:
                    p[pname] = float(p[pname])
            kinds[pname] = "regression"
        else:
            numbers = [v for v in present if _is_number(v)]
            if len(set(numbers)) > 2 and len(numbers) >= 0.8 * len(present):
                row = next(
                    r for r in rows if r.phenotypes[pname] is not None and not _is_number(r.phenotypes[pname])
                )
                value = str(row.phenotypes[pname])
                raise FmriInputError(
                    f"Column {spec.column} (phenotype '{pname}') holds numbers but also the text '{value}' "
                    f"({len(present) - len(numbers)} of {len(present)} cells), so its type is unclear",
                    file=table_path,
                    subject=row.subject_id,
                    fix=f"list such codes as missing (missing: ['{value}'] under phenotypes.{pname} / --missing "
                    f"{pname}={value}), or declare the kind (--kind {pname}=multiclass)",
                )
            kinds[pname] = "binary" if len(set(present)) <= 2 else "multiclass"
    return kinds


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _check_unique(rows: list[_Row], table_path: Path, mapping: CohortMapping) -> None:
    seen: dict[str, int] = {}
    for row in rows:
        if row.scan_id in seen:
            raise FmriInputError(
                f"Scan id '{row.scan_id}' appears in rows {seen[row.scan_id] + 2} and {row.index + 2}",
                file=table_path,
                subject=row.subject_id,
                fix="give each scan its own id: map a scan-id or session column (ids.scan_id / ids.session_id, "
                "--scan-id-column / --session-column), or remove the duplicate row"
                if "scan_id" not in mapping.ids
                else "remove the duplicate row or correct the id",
            )
        seen[row.scan_id] = row.index


def _placeholder_values(row: _Row) -> dict[str, Any]:
    """Table cells for a filename pattern; integer text without leading zeros becomes an int so that
    format specs work (``{SUB_ID:07d}`` gives ``0050003``)."""
    values: dict[str, Any] = {}
    for key, text in row.raw.items():
        text = text.strip()
        values[key] = int(text) if text.lstrip("-").isdigit() and str(int(text)) == text else text
    values.update(
        scan_id=row.scan_id, subject_id=row.subject_id, session_id=row.session_id, site=row.site, tr=row.tr
    )
    return values


def _locate(row: _Row, base: Path, pattern: str | None, path_column: str | None) -> tuple[Path | None, str]:
    if path_column:
        text = row.raw[path_column].strip()
        if _is_missing(text):
            return None, f"Column {path_column} gives no scan file for scan '{row.scan_id}'"
    else:
        try:
            text = pattern.format_map(_placeholder_values(row))
        except (ValueError, KeyError, IndexError) as exc:
            raise FmriInputError(
                f"The --scans pattern '{pattern}' cannot be filled for scan '{row.scan_id}' ({exc})",
                subject=row.subject_id,
                fix="write placeholders as {COLUMN} or with a format that fits the value (e.g. {SUB_ID:07d})",
            ) from exc
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    if any(ch in text for ch in "*?["):
        matches = (
            sorted(path.parent.glob(path.name)) if not any(ch in str(path.parent) for ch in "*?[") else []
        )
        if not matches:
            import glob

            matches = sorted(Path(p) for p in glob.glob(str(path)))
        if len(matches) == 1:
            return matches[0], ""
        if len(matches) > 1:
            raise FmriInputError(
                f"The pattern matches {len(matches)} files for scan '{row.scan_id}' "
                f"({', '.join(m.name for m in matches[:3])}...)",
                file=path,
                subject=row.subject_id,
                fix="make the pattern specific enough to match one file per row (e.g. add a session placeholder)",
            )
        return None, f"No scan file matches '{path}' for scan '{row.scan_id}'"
    if not path.is_file():
        return None, f"The scan file '{path}' for scan '{row.scan_id}' does not exist"
    return path, ""


def _open_npz(path: Path):
    if not path.exists():
        raise FmriInputError("The .npz file was not found", file=path, fix="check the --npz path")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a corrupt zip
        raise FmriInputError(
            f"Cannot read the .npz ({exc})",
            file=path,
            fix="give an .npz with one (time, regions) array per scan",
        ) from exc


def _load_row(row: _Row, npz_file, atlas: Atlas, policy: str, min_timepoints: int | None) -> Scan:
    """Read and validate one scan (the same checks as fmrilm.io.load_scan); any problem is an FmriInputError
    naming the file and the subject."""
    from fmrilm.signal import BadRegionWarning, SignalConfig, check_regions

    needed = int(min_timepoints if min_timepoints is not None else SignalConfig.min_timepoints)
    file, subject = row.file, row.subject_id
    if npz_file is not None:
        try:
            ts = np.asarray(npz_file[row.npz_key], dtype=np.float32)
        except Exception as exc:  # a corrupt member raises zipfile/zlib/ValueError errors
            raise FmriInputError(
                f"Cannot read array '{row.npz_key}' ({exc})", file=file, subject=subject, fix="re-export it"
            ) from exc
        known: list[int] = []
        if row.tr is None:
            raise FmriInputError(
                "The TR of this scan is unknown (an .npz carries none)",
                file=file,
                subject=subject,
                fix="map a TR column (ids.tr / --tr-column) or pass --tr SECONDS",
            )
        tr = row.tr
    else:
        from fmrilm.io import load_scan

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadRegionWarning)  # recorded per scan and reported below
            try:
                scan = load_scan(
                    file, atlas=atlas, tr=row.tr, subject=subject, bad_regions=policy, min_timepoints=needed
                )
            except FmriInputError:
                raise
            except (OSError, ValueError) as exc:
                raise FmriInputError(
                    f"Cannot read the scan ({exc})", file=file, subject=subject, fix="check the file"
                ) from exc
        ts = np.asarray(scan.timeseries, dtype=np.float32)
        known = [int(i) for i in scan.flags.get("bad_regions", [])]
        tr = float(scan.tr)
    if ts.ndim != 2:
        raise FmriInputError(
            f"Expected a (time, regions) array, got shape {ts.shape}",
            file=file,
            subject=subject,
            fix="store one 2D array per scan with one column per region",
        )
    if npz_file is not None:
        from fmrilm.io import check_values

        check_values(ts, file, subject, key=row.npz_key)
    if ts.shape[1] != atlas.n_regions:
        hint = " (it looks transposed)" if ts.shape[0] == atlas.n_regions else ""
        raise FmriInputError(
            f"The scan has {ts.shape[1]} regions but atlas '{atlas.name}' has {atlas.n_regions}{hint}",
            file=file,
            subject=subject,
            fix="import with the atlas the scans were parcellated with (--atlas), or store arrays as (time, regions)",
        )
    if ts.shape[0] < needed:
        raise FmriInputError(
            f"The scan has {ts.shape[0]} timepoints, fewer than the {needed} needed",
            file=file,
            subject=subject,
            fix="use a longer scan, or lower min_timepoints (--min-timepoints) if short scans are intended",
        )
    ts, bad = check_regions(ts, policy=policy, file=file, subject=subject, warn=False)
    flags = {"bad_regions": sorted(set(known) | set(bad))}
    return Scan(
        timeseries=ts,
        tr=tr,
        atlas=atlas,
        scan_id=row.scan_id,
        subject_id=row.subject_id,
        session_id=row.session_id,
        site=row.site,
        source=str(file),
        flags=flags,
    )


def _skip(row: _Row, reason: str) -> dict[str, Any]:
    return {
        "row": row.index + 2,  # line in the table file (header is line 1)
        "scan_id": row.scan_id,
        "subject_id": row.subject_id,
        "file": None if row.file is None else str(row.file),
        "reason": reason,
    }
