"""fMRIPrep derivatives in: a simulated fMRIPrep-like tree imports with each confounds strategy, and its scans
equal what a hand-made nilearn pipeline (load_confounds_strategy + NiftiLabelsMasker) gives for the same run.

Images are tiny (8 regions on a 5 mm grid: about 11 x 13 x 12 voxels, 60 volumes), so the whole file runs in
seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fmrilm.data_gen.nifti import LABELS_IMAGE, write_fmriprep_tree
from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort
from threadpoolctl import threadpool_limits

from fmrilm.cohort import load_cohort
from fmrilm.errors import FmriInputError
from fmrilm.fmriprep import import_fmriprep

NETS = ["DMN", "DMN", "Visual", "Visual", "FrontoParietal", "FrontoParietal", "Somatomotor", "Somatomotor"]
STRATEGIES = ("simple", "scrubbing", "compcor")


def _atlas_table(folder: Path) -> Path:
    """Eight regions in a 24 x 30 x 25 mm box: a labels image of about 11 x 13 x 12 voxels at 5 mm."""
    rows = ["x,y,z,label,network"]
    coords = [(x, y, z) for x in (-12, 12) for y in (-40, -10) for z in (10, 35)]
    rows += [f"{x},{y},{z},r{i},{NETS[i]}" for i, (x, y, z) in enumerate(coords)]
    path = folder / "tiny_atlas.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Three participants with two sessions each (six runs of 60 volumes) and their labels atlas."""
    root = tmp_path_factory.mktemp("fmriprep")
    atlas_csv = _atlas_table(root)
    with threadpool_limits(1):
        cohort = simulate_cohort(
            SimulationConfig(n_subjects=6, atlas=str(atlas_csv), timepoints=(60, 60), n_sites=2, seed=5),
            progress=False,
        )
        bolds = write_fmriprep_tree(
            cohort, root / "derivatives" / "fmriprep", 6, sessions=2, atlas_folder=root
        )
    return root / "derivatives" / "fmriprep", root / LABELS_IMAGE, atlas_csv, bolds, cohort


def _nilearn_by_hand(bold: Path, labels: Path, strategy: str) -> np.ndarray:
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiLabelsMasker

    confounds, sample_mask = load_confounds_strategy(str(bold), denoise_strategy=strategy)
    masker = NiftiLabelsMasker(labels_img=str(labels), standardize=None)
    return masker.fit_transform(str(bold), confounds=confounds, sample_mask=sample_mask)


def test_simulated_tree_has_the_fmriprep_layout(tree):
    root, labels, _, bolds, _ = tree
    assert len(bolds) == 6 and labels.exists()
    assert json.loads((root / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    first = bolds[0]
    assert first.parent == root / "sub-sim0001" / "ses-1" / "func"
    assert first.name == "sub-sim0001_ses-1_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    confounds = pd.read_csv(
        first.parent / "sub-sim0001_ses-1_task-rest_desc-confounds_timeseries.tsv", sep="\t"
    )
    for column in (
        "trans_x", "rot_z", "trans_x_derivative1", "rot_z_power2", "trans_y_derivative1_power2", "csf",
        "white_matter", "global_signal", "framewise_displacement", "std_dvars", "a_comp_cor_00", "cosine00",
    ):  # fmt: skip
        assert column in confounds.columns, column
    assert len(confounds) == 60 and np.isnan(confounds["framewise_displacement"][0])
    meta = json.loads(
        (first.parent / "sub-sim0001_ses-1_task-rest_desc-confounds_timeseries.json").read_text()
    )
    assert meta["a_comp_cor_00"]["Mask"] == "combined" and meta["a_comp_cor_00"]["Method"] == "aCompCor"
    assert set(pd.read_csv(root / "participants.tsv", sep="\t")["participant_id"]) == {
        "sub-sim0001",
        "sub-sim0003",
        "sub-sim0005",
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_import_equals_a_hand_made_nilearn_pipeline(tree, strategy, tmp_path):
    root, labels, _, bolds, _ = tree
    with threadpool_limits(1):
        cohort = import_fmriprep(
            root, atlas=labels, confounds=strategy, out=tmp_path / "cohort", progress=False
        )
        expected = {bold: _nilearn_by_hand(bold, labels, strategy) for bold in bolds}
    assert len(cohort) == 6
    table = cohort.phenotype_table()
    assert list(table["scan_id"][:2]) == ["sub-sim0001_ses-1_task-rest", "sub-sim0001_ses-2_task-rest"]
    assert list(table["subject_id"][:2]) == ["sub-sim0001"] * 2 and list(table["session_id"][:2]) == [
        "1",
        "2",
    ]
    for i, bold in enumerate(bolds):
        scan = cohort.scan(i)
        np.testing.assert_allclose(scan.timeseries, expected[bold], rtol=1e-5, atol=1e-4)
        sidecar = json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())
        assert scan.tr == pytest.approx(sidecar["RepetitionTime"])
    if strategy == "scrubbing":  # high-motion volumes are dropped, beyond the non-steady-state one
        assert (table["n_timepoints"] < 59).any()
    else:
        assert (table["n_timepoints"] == 59).all()  # the non-steady-state volume is left out
    participants = pd.read_csv(root / "participants.tsv", sep="\t").set_index("participant_id")
    for _, row in table.iterrows():
        truth = participants.loc[row["subject_id"]]
        assert (row["sex"], row["diagnosis"], row["site"]) == (
            truth["sex"],
            truth["diagnosis"],
            truth["site"],
        )
        assert row["age"] == pytest.approx(truth["age"], abs=1e-3)
    assert cohort.phenotypes["age"] == "regression"
    saved = load_cohort(tmp_path / "cohort").meta["import"]
    assert saved["confounds"]["strategy"] == strategy
    assert saved["confounds"]["parameters"]["strategy"][0] == "high_pass"
    assert [r["n_kept"] for r in saved["runs"]] == list(table["n_timepoints"])
    assert [r["file"] for r in saved["runs"]] == [str(b.resolve()) for b in bolds]


def test_the_strategy_changes_the_signals(tree):
    """The simulator puts motion, CSF/WM and CompCor nuisance into every voxel: each strategy removes a
    different part of it, so the scans differ from each other and from the undenoised region means."""
    from nilearn.maskers import NiftiLabelsMasker

    root, labels, _, bolds, _ = tree
    with threadpool_limits(1):
        simple = import_fmriprep(root, atlas=labels, confounds="simple", progress=False)
        compcor = import_fmriprep(root, atlas=labels, confounds="compcor", progress=False)
        raw = NiftiLabelsMasker(labels_img=str(labels), standardize=None).fit_transform(str(bolds[0]))[1:]
    a, b = simple.scan(0).timeseries, compcor.scan(0).timeseries
    assert a.shape == b.shape == raw.shape
    assert not np.allclose(a, b, atol=1e-2) and not np.allclose(a - a.mean(0), raw - raw.mean(0), atol=1e-2)


def test_cli_simulates_and_imports_a_tree_with_coordinates_or_labels(tmp_path, capsys):
    from fmrilm.cli import main

    atlas_csv = _atlas_table(tmp_path)
    out = tmp_path / "sim"
    argv = ["simulate", "--subjects", "3", "--atlas", str(atlas_csv), "--timepoints", "60", "60"]
    with threadpool_limits(1):
        assert main(argv + ["--sites", "1", "--fmriprep", "3", "--out", str(out), "--quiet"]) == 0
        assert "fMRIPrep-like derivatives: 3 runs" in capsys.readouterr().out
        assert sorted(p.name for p in (out / "fmriprep").iterdir()) == [
            "dataset_description.json",
            "participants.tsv",
            "sub-sim0001",
            "sub-sim0002",
            "sub-sim0003",
        ]
        labels = out / "nifti" / LABELS_IMAGE
        code = main(
            ["cohort", "import", "--fmriprep", str(out / "fmriprep"), "--atlas", str(labels)]
            + ["--confounds", "compcor", "--out", str(tmp_path / "c1")]
        )
        assert code == 0
        assert "'compcor' strategy (NiftiLabelsMasker)" in capsys.readouterr().out
        assert load_cohort(tmp_path / "c1").meta["import"]["confounds"]["strategy"] == "compcor"
        code = main(
            ["cohort", "import", "--fmriprep", str(out / "fmriprep"), "--atlas", str(atlas_csv)]
            + ["--radius", "6", "--phenotype", "diagnosis", "--out", str(tmp_path / "c2")]
        )
        assert code == 0
    spheres = load_cohort(tmp_path / "c2")
    assert spheres.meta["import"]["masker"] == "NiftiSpheresMasker" and spheres.atlas.radius_mm == 6
    assert set(spheres.phenotypes) == {"diagnosis"}  # only the phenotype asked for
    assert len(spheres) == 3 and np.all(np.std(spheres.scan(0).timeseries, axis=0) > 0)


def test_problems_are_one_sentence_naming_the_file(tree, tmp_path):
    root, labels, _, bolds, _ = tree
    with pytest.raises(FmriInputError, match="Unknown confounds strategy 'aggressive'.*simple, scrubbing"):
        import_fmriprep(root, atlas=labels, confounds="aggressive", progress=False)
    with pytest.raises(FmriInputError, match="No sub-.*desc-preproc_bold"):
        import_fmriprep(tmp_path, atlas=labels, progress=False)

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (
        broken
        / "sub-sim0003"
        / "ses-2"
        / "func"
        / "sub-sim0003_ses-2_task-rest_desc-confounds_timeseries.tsv"
    ).unlink()
    with pytest.raises(FmriInputError, match="confounds of this run") as err:
        import_fmriprep(broken, atlas=labels, progress=False)
    assert "sub-sim0003_ses-2" in str(err.value) and "--skip-bad" in str(err.value)
    with threadpool_limits(1):
        partial = import_fmriprep(broken, atlas=labels, skip_bad=True, progress=False)
    assert len(partial) == 5 and partial.meta["import"]["skipped"][0]["subject_id"] == "sim0003"

    table = tmp_path / "participants.tsv"
    table.write_text("participant_id\tage\nsub-sim0001\t30\nsub-sim0003\t40\n")
    with pytest.raises(FmriInputError, match="sub-sim0005 has no row"):
        import_fmriprep(root, atlas=labels, table=table, progress=False)
    with threadpool_limits(1):
        fewer = import_fmriprep(root, atlas=labels, table=table, skip_missing=True, progress=False)
    assert len(fewer) == 4 and set(map(float, fewer.phenotype_table()["age"])) == {30.0, 40.0}

    two_spaces = tmp_path / "spaces"
    shutil.copytree(root, two_spaces)
    func = two_spaces / "sub-sim0001" / "ses-1" / "func"
    src = func / bolds[0].name
    shutil.copy(src, func / src.name.replace("MNI152NLin2009cAsym", "T1w"))
    with pytest.raises(FmriInputError, match="2 preprocessed images.*--space"):
        import_fmriprep(two_spaces, atlas=labels, progress=False)


def test_fmriprep_flags_are_refused_without_fmriprep(tmp_path):
    from fmrilm.cli import main

    code = main(
        ["cohort", "import", "--table", str(tmp_path / "t.csv"), "--npz", str(tmp_path / "x.npz")]
        + ["--atlas", "dosenbach160", "--confounds", "compcor", "--out", str(tmp_path / "o")]
    )
    assert code == 2
