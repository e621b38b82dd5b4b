"""Cohort import: ABIDE as it is, pattern / path-column / npz sources, mapping by YAML or flags, clear errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from fmrilm.atlas import Atlas
from fmrilm.cli import main
from fmrilm.cohort import Cohort, load_cohort
from fmrilm.cohort_import import CohortMapping, import_cohort, mapping_from_flags
from fmrilm.errors import FmriInputError
from fmrilm.splits import leave_sites_out_split, load_split, save_split

N_REGIONS = 5


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def abide_import(abide_dir, tmp_path_factory):
    """The whole ABIDE folder imported once per session (npz + abide preset): (cohort, folder)."""
    out = tmp_path_factory.mktemp("cohorts") / "abide"
    cohort = import_cohort(
        abide_dir / "phenotypes.csv",
        atlas=abide_dir / "cc200_centroids.csv",
        npz=abide_dir / "timeseries_cc200.npz",
        mapping="abide",
        out=out,
        progress=False,
    )
    return cohort, out


@pytest.fixture(scope="session")
def abide_pheno(abide_dir) -> pd.DataFrame:
    return pd.read_csv(abide_dir / "phenotypes.csv")


@pytest.fixture
def toy_atlas() -> Atlas:
    coords = np.arange(N_REGIONS * 3, dtype=float).reshape(N_REGIONS, 3)
    return Atlas(
        name="toy", labels=[f"r{i}" for i in range(N_REGIONS)], coords=coords, networks=["net"] * N_REGIONS
    )


def _series(seed: int, n_time: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_time, N_REGIONS)).astype(np.float32)


def _write_1d(path, ts: np.ndarray) -> None:
    header = "\t".join(f"#{i + 1}" for i in range(ts.shape[1]))
    body = "\n".join("\t".join(f"{v:.6f}" for v in row) for row in ts)
    path.write_text(header + "\n" + body + "\n")


def _toy_table(tmp_path, rows: list[dict], name: str = "participants.tsv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, sep="\t" if name.endswith(".tsv") else ",", index=False)
    return path


TOY_ROWS = [
    {
        "FILE_ID": "A_001",
        "SUB_ID": "001",
        "SITE_ID": "A",
        "DX_GROUP": 1,
        "SEX": 1,
        "AGE": 20.5,
        "FIQ": 110,
        "TR": 2.0,
    },
    {
        "FILE_ID": "A_002",
        "SUB_ID": "002",
        "SITE_ID": "A",
        "DX_GROUP": 2,
        "SEX": 2,
        "AGE": 31.0,
        "FIQ": -9999,
        "TR": 2.0,
    },
    {
        "FILE_ID": "B_003",
        "SUB_ID": "003",
        "SITE_ID": "B",
        "DX_GROUP": 2,
        "SEX": 1,
        "AGE": 12.25,
        "FIQ": "",
        "TR": 2.5,
    },
]

TOY_YAML = """
name: toy
ids: {scan_id: FILE_ID, subject_id: SUB_ID, site: SITE_ID, tr: TR}
phenotypes:
  diagnosis: {column: DX_GROUP, values: {1: autism, 2: control}}
  sex: {column: SEX, kind: binary, values: {1: male, 2: female}}
  age: {column: AGE, kind: regression}
  fiq: {column: FIQ, kind: regression, missing: [-9999]}
"""


def toy_mapping() -> CohortMapping:
    import yaml

    return CohortMapping.from_dict(yaml.safe_load(TOY_YAML), source="toy.yaml")


@pytest.fixture
def toy_scans(tmp_path):
    """Three .1D scans in tmp_path/scans named by FILE_ID, and the table describing them."""
    (tmp_path / "scans").mkdir()
    arrays = {}
    for i, row in enumerate(TOY_ROWS):
        arrays[row["FILE_ID"]] = _series(i)
        _write_1d(tmp_path / "scans" / f"{row['FILE_ID']}_rois.1D", arrays[row["FILE_ID"]])
    return _toy_table(tmp_path, TOY_ROWS, "pheno.csv"), arrays


# ------------------------------------------------------------------------------------------------ real ABIDE
def test_abide_import_has_every_scan_with_the_right_labels(abide_import, abide_pheno):
    cohort, _ = abide_import
    table = cohort.phenotype_table().set_index("scan_id")
    assert len(cohort) == len(abide_pheno) == 695
    expected_dx = abide_pheno["DX_GROUP"].map({1: "autism", 2: "control"}).value_counts().to_dict()
    expected_sex = abide_pheno["SEX"].map({1: "male", 2: "female"}).value_counts().to_dict()
    assert table["diagnosis"].value_counts().to_dict() == expected_dx
    assert table["sex"].value_counts().to_dict() == expected_sex
    assert table["site"].value_counts().to_dict() == abide_pheno["SITE_ID"].value_counts().to_dict()
    # FIQ: empty and -9999 are missing, everything else kept as a number
    fiq = pd.to_numeric(abide_pheno["FIQ"], errors="coerce")
    assert int(table["fiq"].isna().sum()) == int((fiq.isna() | (fiq == -9999)).sum())
    pheno = abide_pheno.set_index("FILE_ID").loc[table.index]
    np.testing.assert_allclose(table["age"], pheno["AGE_AT_SCAN"], rtol=1e-5)
    np.testing.assert_allclose(table["tr"], pheno["TR"], rtol=1e-5)
    assert (table["subject_id"] == pheno["SUB_ID"].astype(str)).all()
    assert cohort.phenotypes["diagnosis"] == "binary" and cohort.phenotypes["age"] == "regression"


def test_abide_scans_have_200_regions_and_bad_regions_are_recorded(abide_import, abide_dir):
    _, folder = abide_import
    cohort = load_cohort(folder)  # what a user gets back from disk
    raw = np.load(abide_dir / "timeseries_cc200.npz")
    rows = cohort.dataset.with_format("numpy")
    n_with_bad = 0
    for row in rows:
        ts = row["timeseries"]
        assert ts.shape == (row["n_timepoints"], 200)
        source = raw[row["scan_id"]].astype(np.float32)
        constant = np.flatnonzero(np.ptp(source, axis=0) == 0)
        assert sorted(row["bad_regions"].tolist()) == constant.tolist()  # every defect listed, no other
        assert not ts[:, constant].any()
        good = np.setdiff1d(np.arange(200), constant)
        np.testing.assert_array_equal(ts[:, good], source[:, good])  # the rest is the data as given
        n_with_bad += bool(len(constant))
    assert n_with_bad == cohort.meta["import"]["n_scans_with_bad_regions"] > 0
    assert cohort.scan(0).atlas.n_regions == 200


def test_abide_leave_sites_out_split_keeps_subjects_and_sites_apart(abide_import):
    cohort, folder = abide_import
    split = leave_sites_out_split(cohort, test_sites=["NYU", "UCLA_1"], n_val_sites=2, seed=3)
    table = cohort.phenotype_table()
    parts_of_subject = {}
    for part, idx in split.items():
        for subject in table.loc[idx, "subject_id"]:
            parts_of_subject.setdefault(subject, set()).add(part)
    assert all(len(p) == 1 for p in parts_of_subject.values())
    assert sorted(i for idx in split.values() for i in idx) == list(range(len(cohort)))
    train_sites = set(table.loc[split["train"], "site"])
    assert set(table.loc[split["test"], "site"]) == {"NYU", "UCLA_1"}
    assert not train_sites & {"NYU", "UCLA_1"}
    assert not train_sites & set(table.loc[split["val"], "site"])
    # saved inside the cohort folder and read back identically
    save_split(folder, "lso_test", split, kind="leave-sites-out")
    assert load_split(folder, "lso_test") == split


def test_abide_pattern_import_of_the_1d_samples_matches_the_npz(abide_dir, abide_pheno, tmp_path):
    samples = sorted(p.name.split("_rois")[0] for p in (abide_dir / "samples").glob("*.1D"))
    table = _toy_table(
        tmp_path, abide_pheno[abide_pheno["FILE_ID"].isin(samples)].to_dict("records"), "p.csv"
    )
    cohort = import_cohort(
        table,
        atlas=abide_dir / "cc200_centroids.csv",
        scans=str(abide_dir / "samples" / "{FILE_ID}_rois_cc200.1D"),
        mapping="abide",
        progress=False,
    )
    raw = np.load(abide_dir / "timeseries_cc200.npz")
    assert sorted(cohort.dataset["scan_id"]) == samples
    for scan in cohort:
        assert scan.timeseries.shape[1] == 200 and scan.tr == pytest.approx(1.5)
        reference = raw[scan.scan_id].astype(np.float32)
        good = np.setdiff1d(np.arange(200), scan.flags.get("bad_regions", []))
        np.testing.assert_allclose(scan.timeseries[:, good], reference[:, good], rtol=2e-3, atol=2e-2)


def test_cohort_info_prints_counts_per_site_and_label(abide_import, abide_pheno, capsys):
    _, folder = abide_import
    assert main(["cohort", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "695 scans" in out and "14 sites" in out
    for label, n in abide_pheno["DX_GROUP"].map({1: "autism", 2: "control"}).value_counts().items():
        assert f"{label} {n}" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for site, n in abide_pheno["SITE_ID"].value_counts().items():
        assert lines[site][1] == str(n)  # site, scans, subjects, ...
    age = abide_pheno["AGE_AT_SCAN"]
    mean, sd = re.search(r"^age: mean ([\d.]+), SD ([\d.]+)", out, re.M).groups()
    assert float(mean) == pytest.approx(age.mean(), abs=0.006) and float(sd) == pytest.approx(
        age.std(), abs=0.006
    )

    assert main(["cohort", "info", str(folder), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["labels"]["sex"] == abide_pheno["SEX"].map({1: "male", 2: "female"}).value_counts().to_dict()
    )
    assert {s: v["scans"] for s, v in summary["sites"].items()} == abide_pheno[
        "SITE_ID"
    ].value_counts().to_dict()
    assert summary["timepoints"]["min"] >= 78 and summary["timepoints"]["max"] <= 316
    assert summary["bad_regions"]["scans"] > 0


# --------------------------------------------------------------------------------------- sources and mapping
def test_pattern_import_reads_each_file_with_its_ids_and_labels(toy_scans, toy_atlas):
    table, arrays = toy_scans
    cohort = import_cohort(
        table, atlas=toy_atlas, scans="scans/{FILE_ID}_rois.1D", mapping=toy_mapping(), progress=False
    )
    assert len(cohort) == 3
    pheno = cohort.phenotype_table().set_index("scan_id")
    assert pheno.loc["A_001", "diagnosis"] == "autism" and pheno.loc["A_002", "sex"] == "female"
    assert pheno.loc["A_002", "subject_id"] == "002"  # ids are text: leading zeros kept
    assert np.isnan(pheno.loc["A_002", "fiq"]) and np.isnan(pheno.loc["B_003", "fiq"])
    assert pheno.loc["B_003", "tr"] == pytest.approx(2.5)
    for scan in cohort:
        np.testing.assert_allclose(scan.timeseries, arrays[scan.scan_id], atol=1e-5)


def test_pattern_placeholders_accept_format_specs_and_globs(tmp_path, toy_atlas):
    (tmp_path / "data").mkdir()
    rows = [
        {"participant_id": 7, "age": 30},
        {"participant_id": 12, "age": 40},
        {"participant_id": 9, "age": 25},
    ]
    for i, row in enumerate(rows):
        np.save(tmp_path / "data" / f"sub-{row['participant_id']:03d}_run-1_bold.npy", _series(i))
    table = _toy_table(tmp_path, rows)
    cohort = import_cohort(
        table,
        atlas=toy_atlas,
        scans="data/sub-{participant_id:03d}_*_bold.npy",
        mapping={"phenotypes": {"age": "age"}},
        tr=0.8,
        progress=False,
    )
    assert cohort.dataset["subject_id"] == ["7", "12", "9"]  # participant_id is found without a mapping
    assert cohort.phenotypes == {"age": "regression"}  # numeric without a declared kind
    assert cohort.dataset["age"] == [30.0, 40.0, 25.0]
    np.testing.assert_allclose(cohort.scan(1).timeseries, _series(1))
    assert cohort.scan(0).tr == pytest.approx(0.8)


def test_path_column_import_reads_mixed_formats_relative_to_the_table(tmp_path, toy_atlas):
    (tmp_path / "deep").mkdir()
    ts = [_series(0), _series(1, n_time=30)]
    _write_1d(tmp_path / "deep" / "one.1D", ts[0])
    pd.DataFrame(ts[1], columns=[f"r{i}" for i in range(N_REGIONS)]).to_csv(tmp_path / "two.csv", index=False)
    table = _toy_table(
        tmp_path,
        [
            {"subject": "s1", "session": "1", "scan": "deep/one.1D", "group": "patient"},
            {"subject": "s1", "session": "2", "scan": "two.csv", "group": "patient"},
        ],
    )
    cohort = import_cohort(
        table,
        atlas=toy_atlas,
        path_column="scan",
        mapping=mapping_from_flags(
            subject_column="subject", session_column="session", phenotype=["diagnosis=group"]
        ),
        tr=2.0,
        progress=False,
    )
    assert cohort.dataset["scan_id"] == ["s1_1", "s1_2"]  # subject + session when no scan id is mapped
    assert cohort.dataset["n_timepoints"] == [40, 30]
    np.testing.assert_allclose(cohort.scan(1).timeseries, ts[1], atol=1e-5)
    assert set(cohort.dataset["diagnosis"]) == {"patient"}


def test_yaml_mapping_and_flags_give_the_same_cohort(toy_scans, toy_atlas, tmp_path):
    table, _ = toy_scans
    (tmp_path / "map.yaml").write_text(TOY_YAML)
    from_yaml = import_cohort(
        table, atlas=toy_atlas, scans="scans/{FILE_ID}_rois.1D", mapping=tmp_path / "map.yaml", progress=False
    )
    atlas_json = tmp_path / "toy_atlas.json"
    toy_atlas.to_json(atlas_json)
    argv = ["cohort", "import", "--table", str(table), "--scans", "scans/{FILE_ID}_rois.1D"]
    argv += ["--atlas", str(atlas_json), "--out", str(tmp_path / "flags"), "--name", "toy"]
    argv += ["--scan-id-column", "FILE_ID", "--subject-column", "SUB_ID", "--site-column", "SITE_ID"]
    argv += [
        "--tr-column",
        "TR",
        "--phenotype",
        "diagnosis=DX_GROUP",
        "--values",
        "diagnosis=1:autism,2:control",
    ]
    argv += ["--phenotype", "sex=SEX", "--values", "sex=1:male,2:female", "--kind", "sex=binary"]
    argv += ["--phenotype", "age=AGE", "--kind", "age=regression", "--phenotype", "fiq=FIQ"]
    argv += ["--kind", "fiq=regression", "--missing", "fiq=-9999"]
    assert main(argv) == 0
    from_flags = load_cohort(tmp_path / "flags")
    pd.testing.assert_frame_equal(from_yaml.phenotype_table(), from_flags.phenotype_table())
    assert from_yaml.phenotypes == from_flags.phenotypes
    for a, b in zip(from_yaml, from_flags, strict=True):
        np.testing.assert_array_equal(a.timeseries, b.timeseries)


def test_flags_refine_a_preset(abide_dir, abide_pheno, tmp_path):
    """--preset abide plus --values relabels diagnosis without copying the YAML."""
    mapping = CohortMapping.preset("abide").merged(mapping_from_flags(values=["diagnosis=1:asd,2:td"]))
    assert mapping.phenotypes["diagnosis"].column == "DX_GROUP"
    assert set(mapping.phenotypes["diagnosis"].values.values()) == {"asd", "td"}


# ----------------------------------------------------------------------------------------------- bad input
def _error(excinfo) -> str:
    return str(excinfo.value)


def test_unmapped_value_names_file_subject_and_fix(toy_scans, toy_atlas):
    table, _ = toy_scans
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.loc[1, "DX_GROUP"] = "3"
    frame.to_csv(table, index=False)
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(table, atlas=toy_atlas, scans="scans/{FILE_ID}_rois.1D", mapping=toy_mapping())
    msg = _error(excinfo)
    assert str(table) in msg and "subject '002'" in msg and "'3'" in msg
    assert "--values diagnosis=3:LABEL" in msg and "Fix:" in msg


def test_missing_column_names_the_column_and_the_table_columns(toy_scans, toy_atlas, tmp_path):
    table, _ = toy_scans
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(
            table,
            atlas=toy_atlas,
            scans="scans/{FILE_ID}_rois.1D",
            mapping=toy_mapping().merged(mapping_from_flags(phenotype=["handedness=HANDEDNESS_CATEGORY"])),
        )
    msg = _error(excinfo)
    assert str(table) in msg and "HANDEDNESS_CATEGORY" in msg and "DX_GROUP" in msg  # lists real columns


def test_missing_scan_file_names_the_subject_and_can_be_skipped(toy_scans, toy_atlas, tmp_path, capsys):
    table, _ = toy_scans
    (tmp_path / "scans" / "A_002_rois.1D").unlink()
    out = tmp_path / "out"
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(table, atlas=toy_atlas, scans="scans/{FILE_ID}_rois.1D", mapping=toy_mapping(), out=out)
    msg = _error(excinfo)
    assert "A_002_rois.1D" in msg and "subject '002'" in msg and "--skip-missing" in msg
    assert not out.exists()  # nothing half-written
    cohort = import_cohort(
        table,
        atlas=toy_atlas,
        scans="scans/{FILE_ID}_rois.1D",
        mapping=toy_mapping(),
        skip_missing=True,
        progress=False,
    )
    assert cohort.dataset["scan_id"] == ["A_001", "B_003"]
    assert [s["subject_id"] for s in cohort.meta["import"]["skipped"]] == ["002"]


def test_bad_scan_stops_the_import_or_is_skipped_and_reported(toy_scans, toy_atlas, tmp_path, capsys):
    table, _ = toy_scans
    _write_1d(tmp_path / "scans" / "B_003_rois.1D", _series(5)[:, :3])  # 3 regions, atlas has 5
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(table, atlas=toy_atlas, scans="scans/{FILE_ID}_rois.1D", mapping=toy_mapping())
    msg = _error(excinfo)
    assert "B_003_rois.1D" in msg and "subject '003'" in msg and "--skip-bad" in msg
    atlas_json = tmp_path / "toy_atlas.json"
    toy_atlas.to_json(atlas_json)
    (tmp_path / "map.yaml").write_text(TOY_YAML)
    argv = ["cohort", "import", "--table", str(table), "--scans", "scans/{FILE_ID}_rois.1D", "--atlas"]
    argv += [str(atlas_json), "--mapping", str(tmp_path / "map.yaml"), "--out", str(tmp_path / "c")]
    assert main(argv) == 2  # the CLI prints the error, no traceback
    assert "subject '003'" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "Skipped 1 row" in out and "B_003" in out and "regions" in out
    assert load_cohort(tmp_path / "c").dataset["scan_id"] == ["A_001", "A_002"]


def test_constant_region_is_repaired_and_recorded_or_rejected(toy_scans, toy_atlas, tmp_path):
    table, arrays = toy_scans
    ts = arrays["A_001"].copy()
    ts[:, 2] = 0.0
    _write_1d(tmp_path / "scans" / "A_001_rois.1D", ts)
    cohort = import_cohort(
        table, atlas=toy_atlas, scans="scans/{FILE_ID}_rois.1D", mapping=toy_mapping(), progress=False
    )
    assert cohort.dataset["bad_regions"] == [[2], [], []]
    assert cohort.scan(0).flags["bad_regions"] == [2]
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(
            table,
            atlas=toy_atlas,
            scans="scans/{FILE_ID}_rois.1D",
            mapping=toy_mapping(),
            bad_regions="reject",
        )
    assert "subject '001'" in _error(excinfo)


def test_npz_without_tr_or_key_is_a_clear_error(tmp_path, toy_atlas):
    np.savez(tmp_path / "ts.npz", s1=_series(0), s2=_series(1))
    table = _toy_table(tmp_path, [{"subject_id": "s1"}, {"subject_id": "s2"}, {"subject_id": "s3"}])
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(table, atlas=toy_atlas, npz=tmp_path / "ts.npz", tr=2.0)
    assert "no array 's3'" in _error(excinfo) and "subject 's3'" in _error(excinfo)
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(table, atlas=toy_atlas, npz=tmp_path / "ts.npz", skip_missing=True, progress=False)
    assert "TR" in _error(excinfo) and "--tr" in _error(excinfo)
    cohort = import_cohort(
        table, atlas=toy_atlas, npz=tmp_path / "ts.npz", tr=2.0, skip_missing=True, progress=False
    )
    assert cohort.dataset["scan_id"] == ["s1", "s2"]


def test_duplicate_scan_ids_are_refused(tmp_path, toy_atlas):
    np.savez(tmp_path / "ts.npz", s1=_series(0))
    table = _toy_table(tmp_path, [{"subject_id": "s1"}, {"subject_id": "s1"}])
    with pytest.raises(FmriInputError) as excinfo:
        import_cohort(table, atlas=toy_atlas, npz=tmp_path / "ts.npz", tr=2.0)
    assert "rows 2 and 3" in _error(excinfo) and "--session-column" in _error(excinfo)


def test_bad_mapping_yaml_names_the_key(tmp_path):
    (tmp_path / "m.yaml").write_text("ids: {subject: SUB_ID}\n")
    with pytest.raises(FmriInputError) as excinfo:
        CohortMapping.from_yaml(tmp_path / "m.yaml")
    assert "m.yaml" in _error(excinfo) and "subject_id" in _error(excinfo)
    with pytest.raises(FmriInputError) as excinfo:
        CohortMapping.preset("abid")
    assert "abide" in _error(excinfo)


def test_saved_cohort_round_trips(toy_scans, toy_atlas, tmp_path):
    table, _ = toy_scans
    out = tmp_path / "cohort"
    made = import_cohort(
        table,
        atlas=toy_atlas,
        scans="scans/{FILE_ID}_rois.1D",
        mapping=toy_mapping(),
        out=out,
        progress=False,
    )
    back = Cohort.load(out)
    pd.testing.assert_frame_equal(made.phenotype_table(), back.phenotype_table())
    assert back.meta["label_maps"]["diagnosis"] == {"1": "autism", "2": "control"}
    assert back.meta["import"]["mapping"]["ids"]["subject_id"] == "SUB_ID"


def test_cohort_keeps_every_time_series_exactly_across_arrow_chunks(monkeypatch, toy_atlas, tmp_path):
    """Time series go into Arrow buffers directly (in chunks for huge cohorts): nothing is altered or lost."""
    import fmrilm.cohort as cohort_module
    from fmrilm.scan import Scan

    monkeypatch.setattr(cohort_module, "_MAX_CHUNK_VALUES", 3 * 40 * N_REGIONS)  # ~3 scans per chunk
    scans = [Scan(_series(i, n_time=30 + i), tr=2.0, scan_id=f"s{i}") for i in range(10)]
    scans[4].flags["bad_regions"] = [1, 3]
    made = Cohort.from_scans(scans, [{"age": float(i)} for i in range(10)], atlas=toy_atlas)
    assert made.dataset.data.column("timeseries").num_chunks > 1
    back = Cohort.load(made.save(tmp_path / "c"))
    for i, scan in enumerate(back):
        np.testing.assert_array_equal(scan.timeseries, scans[i].timeseries)
    assert back.dataset["n_timepoints"] == [30 + i for i in range(10)]
    assert back.scan(4).flags["bad_regions"] == [1, 3] and back.scan(3).flags == {}
    assert back.select([7, 2]).scan(0).scan_id == "s7"
