"""Nothing lost: output folders of `cohort import`, `cohort subset` and `simulate` (issue 12, findings 1 and 2).

A command writes into a staging folder beside --out and renames it in when complete; it refuses a non-empty
--out it did not write, replaces an earlier result only with --overwrite (old moved aside, new renamed in, old
removed last), and an interruption at any moment leaves the old result or the new one whole, never a folder
that looks complete but is not.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import fmrilm.safety as safety
from fmrilm.cli import main
from fmrilm.cohort import Cohort, load_cohort
from fmrilm.errors import FmriInputError

N_REGIONS, N_TIME = 5, 30
SUBJECTS = ("s1", "s2", "s3", "s4")


@pytest.fixture
def data(tmp_path) -> Path:
    """A participants table, one .1D scan per row and an atlas table, all in one folder."""
    folder = tmp_path / "data"
    (folder / "scans").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["participant_id,age"]
    for i, sub in enumerate(SUBJECTS):
        lines.append(f"{sub},{20 + 3 * i}")
        np.savetxt(folder / "scans" / f"{sub}.1D", rng.normal(size=(N_TIME, N_REGIONS)), fmt="%.5f")
    (folder / "participants.csv").write_text("\n".join(lines) + "\n")
    coords = "\n".join(f"{i + 1},{-40 + 20 * i},{10 * i},{5 * i}" for i in range(N_REGIONS))
    (folder / "atlas.csv").write_text("label,x,y,z\n" + coords + "\n")
    return folder


def _import_args(data: Path, out, *extra: str) -> list[str]:
    return [
        "cohort", "import", "--table", str(data / "participants.csv"), "--scans", "scans/{participant_id}.1D",
        "--atlas", str(data / "atlas.csv"), "--tr", "2.0", "--phenotype", "age", "--out", str(out), *extra,
    ]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------- finding 1: never delete what is there
def test_import_into_the_folder_holding_the_table_and_scans_deletes_nothing(data, capsys):
    before = _snapshot(data)
    assert main(_import_args(data, data, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert str(data) in err and "not a cohort written by fmrilm" in err and "participants.csv" in err
    assert _snapshot(data) == before


def test_import_into_an_unrelated_results_folder_deletes_nothing(data, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "months_of_work.csv").write_text("precious\n")
    assert main(_import_args(data, results)) == 2
    assert main(_import_args(data, results, "--overwrite")) == 2
    assert "months_of_work.csv" in capsys.readouterr().err
    assert (results / "months_of_work.csv").read_text() == "precious\n"


def test_import_into_the_working_folder_is_refused(data, monkeypatch, capsys):
    monkeypatch.chdir(data)
    before = _snapshot(data)
    for out in (".", str(data), str(data.parent)):
        assert main(_import_args(data, out, "--overwrite")) == 2
        assert "working folder" in capsys.readouterr().err
    assert _snapshot(data) == before


def test_an_earlier_cohort_is_replaced_only_with_overwrite_and_only_when_it_holds_nothing_else(
    data, tmp_path, capsys
):
    out = tmp_path / "cohort"
    assert main(_import_args(data, out)) == 0
    first = _snapshot(out)
    assert main(_import_args(data, out, "--min-timepoints", "20")) == 2
    assert "--overwrite" in capsys.readouterr().err and _snapshot(out) == first
    (out / "notes.md").write_text("my notes")
    assert main(_import_args(data, out, "--overwrite")) == 2
    assert "notes.md" in capsys.readouterr().err and (out / "notes.md").read_text() == "my notes"
    (out / "notes.md").unlink()
    assert main(_import_args(data, out, "--overwrite")) == 0
    assert len(load_cohort(out)) == len(SUBJECTS) and _leftovers(tmp_path) == []


def test_an_empty_out_folder_is_used_and_gets_umask_permissions(data, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    old = os.umask(0o027)
    try:
        assert main(_import_args(data, out)) == 0
    finally:
        os.umask(old)
    assert len(load_cohort(out)) == len(SUBJECTS)
    assert (out.stat().st_mode & 0o777) == 0o750  # what the umask gives, not mkdtemp's owner-only 0o700


# ------------------------------------------------------- finding 2: replace by writing beside and renaming
@pytest.fixture
def two_cohorts(data, tmp_path):
    """An earlier cohort (4 scans) at out, and the import arguments of a new one (3 scans)."""
    out = tmp_path / "cohort"
    assert main(_import_args(data, out)) == 0
    (data / "scans" / "s4.1D").unlink()
    return out, _import_args(data, out, "--overwrite", "--skip-missing")


def test_a_failed_removal_of_the_old_cohort_keeps_both_whole(two_cohorts, tmp_path, monkeypatch):
    """The old cohort is removed only after the new one is in place; if removing it fails part way, the new
    cohort is whole at --out and what is left of the old one waits aside, named in a warning."""
    out, args = two_cohorts
    real_rmtree = safety.shutil.rmtree

    def stuck(path, *a, **k):
        if Path(path).name == "dataset" and ".old-" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(safety.shutil, "rmtree", stuck)
    with pytest.warns(UserWarning, match="could not be removed completely"):
        assert main(args) == 0
    assert len(load_cohort(out)) == 3
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".cohort.old-")]
    assert len(aside) == 1 and (aside[0] / "dataset").is_dir()


def test_a_failed_rename_of_the_new_cohort_puts_the_old_one_back(two_cohorts, tmp_path, monkeypatch):
    out, args = two_cohorts
    before = _snapshot(out)
    real_rename = os.rename

    def failing(src, dst):
        if ".tmp-" in str(src) and Path(dst) == out:
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(safety.os, "rename", failing)
    with pytest.raises(OSError, match="Input/output"):
        main(args)
    assert _snapshot(out) == before and len(load_cohort(out)) == len(SUBJECTS)
    assert _leftovers(tmp_path) == []


# -------------------------------------------------------------------------- interrupted at several moments
def _interrupt(monkeypatch, target, name):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, name, boom)


@pytest.mark.parametrize(
    "moment",
    ["reading a scan", "writing the dataset", "after the files, before the rename", "the final rename"],
)
@pytest.mark.parametrize("earlier", [False, True], ids=["new", "replacing"])
def test_an_interrupted_import_leaves_the_old_result_or_nothing(data, tmp_path, monkeypatch, moment, earlier):
    import datasets

    import fmrilm.io

    out = tmp_path / "cohort"
    if earlier:
        assert main(_import_args(data, out)) == 0
    before = _snapshot(out) if earlier else None
    if moment == "reading a scan":
        _interrupt(monkeypatch, fmrilm.io, "load_scan")
    elif moment == "writing the dataset":
        _interrupt(monkeypatch, datasets.Dataset, "save_to_disk")
    elif moment == "after the files, before the rename":
        real = Cohort.write_into

        def then_stop(self, folder):
            real(self, folder)
            raise KeyboardInterrupt

        monkeypatch.setattr(Cohort, "write_into", then_stop)
    else:
        real_rename = os.rename

        def stop(src, dst):
            if ".tmp-" in str(src):
                raise KeyboardInterrupt
            return real_rename(src, dst)

        monkeypatch.setattr(safety.os, "rename", stop)
    with pytest.raises(KeyboardInterrupt):
        main(_import_args(data, out, "--overwrite"))
    if earlier:
        assert _snapshot(out) == before
    else:
        assert not out.exists()
        with pytest.raises(FmriInputError, match="Not a cohort folder"):
            load_cohort(out)
    assert _leftovers(tmp_path) == []  # no staging folder is left to be mistaken for a result


def _simulate_args(out, *extra: str) -> list[str]:
    return ["simulate", "--subjects", "3", "--timepoints", "40", "40", "--quiet", "--out", str(out), *extra]


@pytest.mark.parametrize("moment", ["simulating", "writing NIfTI", "writing the dataset", "the final rename"])
def test_an_interrupted_simulate_leaves_the_old_result_or_nothing(tmp_path, monkeypatch, moment):
    import datasets
    import fmrilm.data_gen.nifti as nifti
    import fmrilm.data_gen.simulate as simulate

    out = tmp_path / "sim"
    assert main(_simulate_args(out, "--subjects", "2")) == 0
    before = _snapshot(out)
    if moment == "simulating":
        _interrupt(monkeypatch, simulate, "simulate_cohort")
    elif moment == "writing NIfTI":
        _interrupt(monkeypatch, nifti, "write_nifti_scans")
    elif moment == "writing the dataset":
        _interrupt(monkeypatch, datasets.Dataset, "save_to_disk")
    else:
        real_rename = os.rename

        def stop(src, dst):
            if ".tmp-" in str(src):
                raise KeyboardInterrupt
            return real_rename(src, dst)

        monkeypatch.setattr(safety.os, "rename", stop)
    with pytest.raises(KeyboardInterrupt):
        main(_simulate_args(out, "--nifti", "1", "--overwrite"))
    assert _snapshot(out) == before and len(load_cohort(out)) == 2
    assert _leftovers(tmp_path) == []
    fresh = tmp_path / "fresh"  # the same moment on a first run: nothing at all appears at --out
    with pytest.raises(KeyboardInterrupt):
        main(_simulate_args(fresh, "--nifti", "1"))
    assert not fresh.exists() and _leftovers(tmp_path) == []


def test_simulate_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "cohort.json").write_text("{}")  # looks like a cohort, but also holds a thesis
    (out / "thesis.tex").write_text("chapter 1")
    assert main(_simulate_args(out, "--overwrite")) == 2
    assert "thesis.tex" in capsys.readouterr().err and (out / "thesis.tex").exists()


def test_cohort_subset_refuses_to_replace_its_own_source(data, tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(_import_args(data, out)) == 0
    assert main(["cohort", "subset", str(out), "--split", "x", "--out", str(out), "--overwrite"]) == 2
    assert "read from" in capsys.readouterr().err and len(load_cohort(out)) == len(SUBJECTS)
