"""The headline commands at toy size: `fmrilm bench --list`, one fast benchmark through `fmrilm bench`, and the
README's ABIDE import command exactly as the README writes it."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fmrilm.cli import main

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------- bench
def test_bench_list_names_every_benchmark_module(capsys):
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    on_disk = sorted(p.stem.removeprefix("bench_") for p in (REPO / "eval").glob("bench_*.py"))
    assert listed == on_disk and "io" in listed


def test_an_unknown_benchmark_is_one_clear_error(capsys):
    assert main(["bench", "no_such_bench"]) == 2
    err = capsys.readouterr().err
    assert "Unknown benchmark no_such_bench" in err and "Fix:" in err and "Traceback" not in err


def test_a_fast_benchmark_runs_through_fmrilm_bench(monkeypatch, capfd):
    """`fmrilm bench io` runs the benchmark in a fresh process, as it always does; only its passes are cut to
    one (and one small NIfTI image) so the run takes seconds. Every row prints a positive rate, and each
    baseline's ratio against itself is 1.00x."""
    import fmrilm.eval.bench as bench

    real_call = bench.subprocess.call
    commands = []

    def small(cmd, *args, **kwargs):
        commands.append(list(cmd))
        quick = ["--rounds", "1", "--repeat-1d", "1", "--nifti-scans", "1", "--nifti-timepoints", "24"]
        return real_call([*cmd, *quick], *args, **kwargs)

    monkeypatch.setattr(bench.subprocess, "call", small)
    assert main(["bench", "io"]) == 0
    out = capfd.readouterr().out
    assert commands == [[sys.executable, "-m", "fmrilm.eval.bench_io"]]
    assert "=== io: exit 0" in out
    assert re.search(r"^\.1D: ", out, re.M) and re.search(r"^NIfTI: ", out, re.M)
    rows = re.findall(r"^  (fmrilm load_scan[^\n]*?|\S[^\n]*?\(baseline\))\s+([\d.]+)\s+(.*)$", out, re.M)
    assert len(rows) == 7, out  # four .1D methods, three NIfTI methods
    assert all(float(rate) > 0 for _, rate, _ in rows)
    for name, _, ratios in rows:
        if name == "np.loadtxt (baseline)":
            assert ratios.split()[0] == "1.00x"
        if name == "NiftiLabelsMasker.fit_transform (baseline)":
            assert ratios.split()[0] == "1.00x"


# ------------------------------------------------------------------------------------------------ README ABIDE
def readme_command(starts_with: str) -> list[str]:
    """A command of the README, its backslash-continued lines joined, split as a shell would."""
    lines = (REPO / "README.md").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(starts_with):
            text = line.strip()
            while text.endswith("\\"):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            return shlex.split(text)
    raise AssertionError(f"the README no longer has a command starting with '{starts_with}'")


def test_readme_abide_import_command_runs_as_written(abide_dir, tmp_path, monkeypatch, capsys):
    """Run in a folder that holds the ABIDE files (linked, not copied), as a user who followed the README."""
    argv = readme_command("fmrilm cohort import --table phenotypes.csv --npz")
    assert argv[:3] == ["fmrilm", "cohort", "import"] and "--preset" in argv
    for name in ("phenotypes.csv", "timeseries_cc200.npz", "cc200_centroids.csv"):
        assert name in argv, name
        (tmp_path / name).symlink_to(abide_dir / name)
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    out_dir = tmp_path / argv[argv.index("--out") + 1]
    assert (out_dir / "cohort.json").exists()

    from fmrilm.cohort import load_cohort

    cohort = load_cohort(out_dir)
    table = cohort.phenotype_table()
    pheno = pd.read_csv(abide_dir / "phenotypes.csv")
    assert len(cohort) == len(pheno) and cohort.atlas.n_regions == 200
    # labels as ABIDE codes them (DX_GROUP 1 = autism, SEX 1 = male), row for row
    by_scan = table.set_index("scan_id")
    pheno = pheno.set_index(pheno["FILE_ID"].astype(str))
    assert set(by_scan.index) == set(pheno.index)
    expected_dx = pheno["DX_GROUP"].map({1: "autism", 2: "control"})
    assert (by_scan.loc[pheno.index, "diagnosis"] == expected_dx).all()
    expected_sex = pheno["SEX"].map({1: "male", 2: "female"})
    assert (by_scan.loc[pheno.index, "sex"] == expected_sex).all()
    np.testing.assert_allclose(by_scan.loc[pheno.index, "age"].astype(float), pheno["AGE_AT_SCAN"], rtol=1e-6)
