"""Each bad input fails with one clear FmriInputError that names the file or the argument (and, for scans, the
subject) and a fix: load_scan, cohort import, simulate, chat, from_pretrained, predict and eval."""

from __future__ import annotations

import gzip
import re

import h5py
import nibabel as nib
import numpy as np
import pytest

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.io import load_scan, load_scans
from fmrilm.signal import BadRegionWarning

T, R = 40, 4


def _data(t=T, r=R, seed=0):
    return np.random.default_rng(seed).normal(size=(t, r)).astype(np.float32)


def _atlas(n=R):
    return Atlas(name="toy", labels=[str(i) for i in range(n)], coords=np.zeros((n, 3)), networks=["x"] * n)


def _raises(path, subject, match, **kwargs):
    """Load and check the error: the problem matches, and the message names file, subject and a fix."""
    with pytest.raises(FmriInputError, match=match) as info:
        load_scan(path, **kwargs)
    message = str(info.value)
    assert f"'{path}'" in message, message
    assert f"subject '{subject}'" in message, message
    assert re.search(r"Fix: \S", message), message
    return info.value


def _write_csv(path, data):
    path.write_text("\n".join(",".join(str(v) for v in row) for row in data) + "\n")


# ------------------------------------------------------------------------------------------------- the file
def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.1D", "nope", "not found", tr=2.0)


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "scans.csv").mkdir()
    _raises(tmp_path / "scans.csv", "scans", "folder", tr=2.0)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "sub-1.xlsx"
    path.write_bytes(b"PK\x03\x04")
    error = _raises(path, "sub-1", "Unsupported file type '.xlsx'", tr=2.0)
    assert ".1D" in error.fix and ".nii.gz" in error.fix


@pytest.mark.parametrize(
    "name,content,what",
    [
        ("s.npy", b"\x93NUMPY garbage", "NumPy .npy"),
        ("s.npz", b"PK\x03\x04 not a zip", "NumPy .npz"),
        ("s.h5", b"\x89HDF\r\n\x1a\n broken", "HDF5"),
        ("s.nii.gz", gzip.compress(b"\x00" * 100), "NIfTI"),
        ("s.csv", b"\xff\xfe\x00\xd8 binary \x00\x9c", "text table"),
    ],
)
def test_corrupt_file(tmp_path, name, content, what):
    path = tmp_path / name
    path.write_bytes(content)
    kwargs = {"atlas": _atlas()} if name.endswith(".nii.gz") else {}
    _raises(path, "s", f"Cannot read the file as .*{what}", tr=2.0, **kwargs)


def test_truncated_nifti(tmp_path):
    img = nib.Nifti1Image(np.zeros((6, 6, 6, 30), np.float32), np.eye(4))
    full = tmp_path / "full.nii"
    nib.save(img, full)
    path = tmp_path / "cut.nii"
    path.write_bytes(full.read_bytes()[:2000])
    _raises(path, "cut", "Cannot read the file as a NIfTI", atlas=_atlas(), tr=2.0)


def test_ragged_table(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("1,2,3\n4,5,6\n7,8,9,10,11\n")
    _raises(path, "ragged", "Cannot read the file as a text table", tr=2.0)


def test_empty_table(tmp_path):
    path = tmp_path / "empty.1D"
    path.write_text("#1\t#2\n\n")
    _raises(path, "empty", "empty", tr=2.0)


# -------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(T,), (T, R, 2)])
def test_array_not_2d(tmp_path, shape):
    path = tmp_path / "odd.npy"
    np.save(path, np.ones(shape, np.float32))
    _raises(path, "odd", re.escape(f"got shape {shape}"), tr=2.0)


def test_nifti_without_atlas(tmp_path):
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5, 30), np.float32), np.eye(4)), path)
    error = _raises(path, "bold", "needs an atlas", tr=2.0)
    assert "atlas=" in error.fix


def test_nifti_3d_image(tmp_path):
    path = tmp_path / "anat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), np.eye(4)), path)
    _raises(path, "anat", "Expected a 4D NIfTI", atlas=_atlas(), tr=2.0)


def test_nifti_atlas_without_labels_image_or_radius(tmp_path):
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5, 30), np.float32), np.eye(4)), path)
    _raises(path, "bold", "neither a labels image nor a sphere radius", atlas=_atlas(), tr=2.0)


def test_transposed_table(tmp_path):
    path = tmp_path / "sub-t.csv"
    _write_csv(path, _data(t=T, r=R).T)  # regions x time
    error = _raises(path, "sub-t", "looks transposed", atlas=_atlas(R), tr=2.0)
    assert "transpose" in error.fix


def test_too_few_timepoints(tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, _data(t=10))
    _raises(path, "short", "10 timepoints, fewer than the 24 needed", tr=2.0)


def test_region_count_mismatch_with_atlas(tmp_path):
    path = tmp_path / "sub-m.npy"
    np.save(path, _data(r=5))
    _raises(path, "sub-m", "5 region columns but atlas 'toy' has 4", atlas=_atlas(4), tr=2.0)


def test_non_numeric_cell(tmp_path):
    path = tmp_path / "sub-n.csv"
    rows = [",".join(f"{v:.3f}" for v in row) for row in _data()]
    rows[6] = rows[6].replace(rows[6].split(",")[2], "n/a?", 1)
    path.write_text("a,b,c,d\n" + "\n".join(rows) + "\n")
    _raises(path, "sub-n", r"Non-numeric cell 'n/a\?' at line 8, column 'c'", tr=2.0)


def test_non_numeric_array(tmp_path):
    path = tmp_path / "sub-s.npy"
    np.save(path, np.array([["a"] * R] * T))
    _raises(path, "sub-s", "non-numeric type", tr=2.0)


# ------------------------------------------------------------------------------------------- bad regions
def _with_bad_regions():
    data = _data(t=T, r=6)
    data[3, 0] = np.nan
    data[:, 2] = np.inf
    data[:, 4] = 0.0
    data[:, 5] = 3.5
    return data


def test_bad_regions_rejected(tmp_path):
    path = tmp_path / "sub-b.npy"
    np.save(path, _with_bad_regions())
    error = _raises(
        path, "sub-b", r"4 of 6 regions .* \(region indices 0, 2, 4, 5\)", tr=2.0, bad_regions="reject"
    )
    assert "bad_regions='repair'" in error.fix


def test_bad_regions_repaired_and_flagged(tmp_path):
    path = tmp_path / "sub-b.npy"
    np.save(path, _with_bad_regions())
    with pytest.warns(BadRegionWarning, match=r"sub-b.*indices 0, 2, 4, 5"):
        scan = load_scan(path, tr=2.0)
    assert scan.flags["bad_regions"] == [0, 2, 4, 5]
    assert np.isfinite(scan.timeseries).all()
    assert (scan.timeseries[:, [2, 4, 5]] == 0).all()
    assert scan.timeseries[3, 0] != 0  # one NaN sample is interpolated, not zeroed


def test_all_regions_bad(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros((T, R), np.float32))
    _raises(path, "flat", "Every region is constant", tr=2.0)


def test_unknown_bad_region_policy(tmp_path):
    path = tmp_path / "sub-p.npy"
    np.save(path, _data())
    _raises(path, "sub-p", "Unknown bad-region policy 'ignore'", tr=2.0, bad_regions="ignore")


# ------------------------------------------------------------------------------------------ atlas and TR
def test_unknown_atlas(tmp_path):
    path = tmp_path / "sub-a.npy"
    np.save(path, _data())
    error = _raises(path, "sub-a", "Unknown atlas 'aal-9000'", atlas="aal-9000", tr=2.0)
    assert "seitzman300" in error.fix


def test_no_tr_known(tmp_path):
    path = tmp_path / "sub-r.csv"
    _write_csv(path, _data())
    error = _raises(path, "sub-r", "No TR is known")
    assert "tr=" in error.fix and "--tr" in error.fix


def test_tr_in_milliseconds(tmp_path):
    path = tmp_path / "sub-ms.npy"
    np.save(path, _data())
    _raises(path, "sub-ms", "looks like milliseconds", tr=2000)


# ------------------------------------------------------------------------------------------ keyed archives
def test_archive_with_many_arrays_needs_a_key(tmp_path):
    path = tmp_path / "cohort.npz"
    np.savez(path, a=_data(), b=_data())
    with pytest.raises(FmriInputError, match=r"holds 2 arrays .*Fix: pass key=") as info:
        load_scan(path, tr=2.0)
    assert f"'{path}'" in str(info.value)


def test_archive_unknown_key(tmp_path):
    path = tmp_path / "cohort.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("a", data=_data())
    _raises(path, "zz", "No array named 'zz'", key="zz", tr=2.0)


def test_bad_array_inside_archive_names_its_key(tmp_path):
    path = tmp_path / "cohort.npz"
    np.savez(path, good=_data(), short=_data(t=5))
    with pytest.raises(FmriInputError, match=r"subject 'short'.*array 'short'.*5 timepoints"):
        load_scans(path, tr=2.0)


# =====================================================================================================
# Issue 12: numbers checked where they enter, and the other entry points (cohort import, simulate, chat,
# from_pretrained, predict, eval). Each message names the file or the argument.
# =====================================================================================================
def _message(excinfo) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------------------------ load_scan: numbers (finding 8)
def test_huge_value_is_refused_naming_the_value_and_place(tmp_path):
    path = tmp_path / "sub-h.npy"
    data = _data()
    data[7, 2] = 1e30
    np.save(path, data)
    error = _raises(path, "sub-h", r"value 1e\+30 at timepoint 7, region 2 is beyond any BOLD signal", tr=2.0)
    assert "NaN" in error.fix


def test_header_with_fewer_names_than_data_columns(tmp_path):
    """A leading time column without a name: the time ramp must not become region 0."""
    path = tmp_path / "sub-t.csv"
    rows = [f"{2.0 * i}," + ",".join(f"{v:.4f}" for v in row) for i, row in enumerate(_data())]
    path.write_text("r1,r2,r3,r4\n" + "\n".join(rows) + "\n")
    error = _raises(path, "sub-t", "header .* names 4 columns but the first data row .* has 5 values", tr=2.0)
    assert "name" in error.fix


def test_header_with_more_names_than_data_columns(tmp_path):
    path = tmp_path / "sub-m.tsv"
    rows = ["\t".join(f"{v:.4f}" for v in row) for row in _data()]
    path.write_text("a\tb\tc\td\te\n" + "\n".join(rows) + "\n")
    _raises(path, "sub-m", "names 5 columns but the first data row .* has 4 values", tr=2.0)


def test_tr_not_a_number(tmp_path):
    path = tmp_path / "sub-n.npy"
    np.save(path, _data())
    _raises(path, "sub-n", "TR from the tr argument is nan", tr=float("nan"))


def test_truncated_bids_sidecar(tmp_path):
    path = tmp_path / "sub-j.npy"
    np.save(path, _data())
    (tmp_path / "sub-j.json").write_text('{"RepetitionTime": 2.')
    _raises(path, "sub-j", "Cannot read the BIDS sidecar .*sub-j.json", tr=None)


@pytest.mark.parametrize(
    "rows,match",
    [
        ("1,abc,0,0", r"non-numeric coordinate 'abc' \(row 2, column x\)"),
        ("1,0,900,0", r"coordinate 900 .*y"),
    ],
)
def test_atlas_table_coordinates_are_checked(tmp_path, rows, match):
    table = tmp_path / "atlas.csv"
    table.write_text("label,x,y,z\n" + rows + "\n2,10,10,10\n")
    path = tmp_path / "sub-c.npy"
    np.save(path, _data(r=2))
    with pytest.raises(FmriInputError, match=match) as info:
        load_scan(path, atlas=table, tr=2.0)
    assert "atlas.csv" in _message(info)


# ------------------------------------------------------------------------------------------- cohort import
@pytest.fixture
def study(tmp_path):
    """participants.csv + scans/<id>.1D + atlas.csv (4 regions) in one folder."""
    folder = tmp_path / "study"
    (folder / "scans").mkdir(parents=True)
    lines = ["participant_id,age,group"]
    for i in range(6):
        lines.append(f"p{i},{20 + i},{'a' if i % 2 else 'b'}")
        np.savetxt(folder / "scans" / f"p{i}.1D", _data(seed=i), fmt="%.5f")
    (folder / "participants.csv").write_text("\n".join(lines) + "\n")
    (folder / "atlas.csv").write_text("label,x,y,z\n1,-30,0,0\n2,30,0,0\n3,0,-40,10\n4,0,40,10\n")
    return folder


def _import(study, *extra, out=None):
    from fmrilm.cli import main

    out = out or study.parent / "cohort"
    args = [
        "cohort",
        "import",
        "--table",
        str(study / "participants.csv"),
        "--scans",
        "scans/{participant_id}.1D",
    ]
    args += ["--atlas", str(study / "atlas.csv"), "--out", str(out), *extra]
    return main(args)


def _cli_error(capsys) -> str:
    return capsys.readouterr().err


def test_import_out_holding_the_inputs(study, capsys):
    assert _import(study, "--tr", "2", out=study) == 2
    err = _cli_error(capsys)
    assert str(study) in err and "never deletes" in err
    assert (study / "participants.csv").exists() and len(list((study / "scans").iterdir())) == 6


def test_import_out_is_a_file(study, capsys):
    target = study.parent / "file.txt"
    target.write_text("x")
    assert _import(study, "--tr", "2", out=target) == 2
    assert "file.txt" in _cli_error(capsys) and target.read_text() == "x"


def test_import_out_is_the_working_folder(study, capsys, monkeypatch):
    monkeypatch.chdir(study)
    assert _import(study, "--tr", "2", out=".") == 2
    assert "--out is the working folder" in _cli_error(capsys)


def test_import_existing_cohort_needs_overwrite(study, capsys):
    assert _import(study, "--tr", "2") == 0
    capsys.readouterr()
    assert _import(study, "--tr", "2") == 2
    assert "--overwrite" in _cli_error(capsys)


@pytest.mark.parametrize("value", ["nan", "2000", "-1"])
def test_import_tr_flag_out_of_range(study, capsys, value):
    assert _import(study, "--tr", value) == 2
    assert "--tr must be seconds" in _cli_error(capsys)


def test_import_min_timepoints_zero(study, capsys):
    assert _import(study, "--tr", "2", "--min-timepoints", "0") == 2
    assert "--min-timepoints must be" in _cli_error(capsys)


def test_import_numeric_column_with_stray_text(study, capsys):
    table = study / "participants.csv"
    table.write_text(table.read_text().replace("p3,23,", "p3,unknown,"))
    assert _import(study, "--tr", "2", "--phenotype", "age") == 2
    err = _cli_error(capsys)
    assert "participants.csv" in err and "'unknown'" in err and "--missing age=unknown" in err


def test_import_npz_with_a_huge_value(study, tmp_path):
    from fmrilm.cohort_import import import_cohort

    arrays = {f"p{i}": _data(seed=i) for i in range(6)}
    arrays["p4"][3, 1] = -1e30
    np.savez(tmp_path / "ts.npz", **arrays)
    with pytest.raises(FmriInputError, match=r"array 'p4', value -1e\+30") as info:
        import_cohort(study / "participants.csv", atlas=study / "atlas.csv", npz=tmp_path / "ts.npz", tr=2.0)
    assert "ts.npz" in _message(info) and "subject 'p4'" in _message(info)


def test_import_tr_column_in_milliseconds(study, capsys):
    table = study / "participants.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0] + ",tr"] + [line + ",2000" for line in lines[1:]]) + "\n")
    assert _import(study) == 2
    err = _cli_error(capsys)
    assert "participants.csv" in err and "'2000'" in err


def test_import_into_a_read_only_folder(study, tmp_path, capsys, monkeypatch):
    import fmrilm.safety

    def read_only(path, *args, **kwargs):  # what a read-only folder answers (also when tests run as root)
        raise PermissionError(13, "Permission denied", str(path))

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(fmrilm.safety.os, "mkdir", read_only)
    assert _import(study, "--tr", "2", out=locked / "cohort") == 2
    err = _cli_error(capsys)
    assert "Cannot write beside the output folder (Permission denied)" in err and str(locked) in err
    assert list(locked.iterdir()) == []


# ------------------------------------------------------------------------------------------------ simulate
@pytest.mark.parametrize(
    "flags,named",
    [
        (["--subjects", "0"], "--subjects"),
        (["--subjects", "2", "--sites", "5"], "--sites"),
        (["--timepoints", "50", "20"], "--timepoints"),
        (["--tr-range", "nan", "2"], "--tr-range"),
        (["--effect-size", "inf"], "--effect-size"),
        (["--age-effect", "-0.5"], "--age-effect"),
        (["--voxel-mm", "0"], "--voxel-mm"),
        (["--nifti", "-1"], "--nifti"),
    ],
)
def test_simulate_numeric_flags(tmp_path, capsys, flags, named):
    from fmrilm.cli import main

    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--quiet", *flags]) == 2
    assert named in _cli_error(capsys) and not out.exists()


@pytest.mark.parametrize(
    "text,match",
    [('{"n_subjects": 3,', "Cannot read the settings file"), ('{"n_subjects": "ten"}', "wrong type")],
)
def test_simulate_bad_settings_file(tmp_path, capsys, text, match):
    from fmrilm.cli import main

    settings = tmp_path / "settings.json"
    settings.write_text(text)
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--config", str(settings), "--quiet"]) == 2
    err = _cli_error(capsys)
    assert match in err and "settings.json" in err


def test_simulate_into_a_folder_of_other_files(tmp_path, capsys):
    from fmrilm.cli import main

    out = tmp_path / "results"
    out.mkdir()
    (out / "table.csv").write_text("keep me")
    assert main(["simulate", "--out", str(out), "--subjects", "2", "--quiet", "--overwrite"]) == 2
    assert "table.csv" in _cli_error(capsys) and (out / "table.csv").read_text() == "keep me"


# ---------------------------------------------------------------------------------- model folders (shared)
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    llm, tok = tiny_causal_lm("llama")
    model = FmriLM.from_base(
        llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=16, num_latents=4),
        codebook_size=16, num_latents=4, atlas=Atlas.builtin("dosenbach160"),
    )  # fmt: skip
    folder = model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")
    return model.eval(), folder


@pytest.fixture
def broken(tiny_model, tmp_path):
    """A copy of the saved tiny model folder, to break."""
    import shutil

    return shutil.copytree(tiny_model[1], tmp_path / "model")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------------------- from_pretrained
@pytest.mark.parametrize(
    "name",
    ["config.json", "fmri_processor_config.json", "tokenizer_config.json", "fmri_tokenizer/config.json"],
)
def test_from_pretrained_truncated_json(broken, name):
    from fmrilm.model.modeling import FmriLM

    _truncate(broken / name)
    with pytest.raises(FmriInputError, match="not valid JSON") as info:
        FmriLM.from_pretrained(broken)
    assert str(broken / name) in _message(info)


@pytest.mark.parametrize("name", ["model.safetensors", "fmri_tokenizer/model.safetensors"])
def test_from_pretrained_truncated_weights(broken, name):
    from fmrilm.model.modeling import FmriLM

    _truncate(broken / name, keep=0.9)
    with pytest.raises(FmriInputError, match="corrupt or truncated") as info:
        FmriLM.from_pretrained(broken)
    assert str(broken / name) in _message(info)


def test_from_pretrained_garbage_weights(broken):
    from fmrilm.model.modeling import FmriLM

    (broken / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(FmriInputError, match="corrupt or truncated") as info:
        FmriLM.from_pretrained(broken)
    assert "model.safetensors" in _message(info)


def test_from_pretrained_missing_weights(broken):
    from fmrilm.model.modeling import FmriLM

    (broken / "model.safetensors").unlink()
    with pytest.raises(FmriInputError, match="Cannot load the model") as info:
        FmriLM.from_pretrained(broken)
    assert str(broken) in _message(info)


def test_from_pretrained_a_file(broken):
    from fmrilm.model.modeling import FmriLM

    with pytest.raises(FmriInputError, match="a file, not a model folder") as info:
        FmriLM.from_pretrained(broken / "config.json")
    assert "config.json" in _message(info)


def test_from_pretrained_subfolder_outside(broken):
    import json

    from fmrilm.model.modeling import FmriLM

    config = broken / "fmri_processor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "fmri_tokenizer_subfolder": "/etc"}))
    with pytest.raises(FmriInputError, match="fmri_tokenizer_subfolder is '/etc'") as info:
        FmriLM.from_pretrained(broken)
    assert "fmri_processor_config.json" in _message(info)


# ---------------------------------------------------------------------------------------------------- chat
def _chat(*args):
    from fmrilm.cli import main

    return main(["chat", *args, "--message", "hi"])


def test_chat_missing_model_path(tmp_path, capsys):
    assert _chat("--model", str(tmp_path / "nope" / "model")) == 2
    err = _cli_error(capsys)
    assert "--model names no folder" in err and "nope" in err


def test_chat_model_with_truncated_processor_config(broken, capsys):
    _truncate(broken / "fmri_processor_config.json")
    assert _chat("--model", str(broken)) == 2
    assert "fmri_processor_config.json" in _cli_error(capsys)


def test_chat_model_with_corrupt_weights(broken, capsys):
    _truncate(broken / "model.safetensors", keep=0.5)
    assert _chat("--model", str(broken)) == 2
    assert "model.safetensors" in _cli_error(capsys)


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "-1"], "--temperature"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--tr", "-2"], "--tr"),
        (["--tr", "inf"], "--tr"),
        (["--seed", "-3"], "--seed"),
    ],
)
def test_chat_numeric_flags(tiny_model, capsys, flags, named):
    assert _chat("--model", str(tiny_model[1]), *flags) == 2
    assert named in _cli_error(capsys)


def test_chat_scan_with_a_huge_value(tiny_model, tmp_path, capsys):
    path = tmp_path / "sub-x.npy"
    data = np.random.default_rng(0).normal(size=(40, 160)).astype(np.float32)
    data[0, 0] = 1e30
    np.save(path, data)
    assert _chat("--model", str(tiny_model[1]), "--scan", str(path), "--tr", "2") == 2
    err = _cli_error(capsys)
    assert "sub-x.npy" in err and "beyond any BOLD signal" in err


# ------------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def scan():
    from fmrilm.model.testing import random_scan

    return random_scan(40)


def test_predict_unknown_task_name(tiny_model, scan):
    with pytest.raises(FmriInputError, match="Unknown task 'handedness'"):
        tiny_model[0].predict(scan, "handedness")


def test_predict_options_outside_the_task(tiny_model, scan):
    from fmrilm.instructions.spec import load_task

    with pytest.raises(FmriInputError, match=r"\['robot'\] is not among the answers of task 'sex'"):
        tiny_model[0].predict(scan, load_task("sex"), options=["male", "robot"])


def test_predict_unknown_normalize(tiny_model, scan):
    from fmrilm.instructions.spec import load_task

    with pytest.raises(FmriInputError, match="Unknown normalize 'max'"):
        tiny_model[0].predict(scan, load_task("sex"), normalize="max")


def test_predict_zero_paraphrases(tiny_model, scan):
    from fmrilm.instructions.spec import load_task

    with pytest.raises(FmriInputError, match="paraphrases must be a whole number >= 1, got 0"):
        tiny_model[0].predict(scan, load_task("sex"), paraphrases=0)


def test_predict_missing_scan_file(tiny_model, tmp_path):
    from fmrilm.instructions.spec import load_task

    with pytest.raises(FmriInputError, match="Scan file not found") as info:
        tiny_model[0].predict(tmp_path / "sub-9.1D", load_task("sex"))
    assert "sub-9.1D" in _message(info)


def test_predict_unknown_regression_method(tiny_model, scan):
    from fmrilm.instructions.spec import load_task

    with pytest.raises(FmriInputError, match="Unknown regression method 'median'"):
        tiny_model[0].predict(scan, load_task("age"), method="median")


# ---------------------------------------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def eval_inputs(tiny_model, tmp_path_factory):
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    root = tmp_path_factory.mktemp("eval_inputs")
    simulate_cohort(SimulationConfig(n_subjects=8, n_sites=2, timepoints=(40, 40), seed=0)).save(
        root / "cohort"
    )
    return root / "cohort", tiny_model[1]


def _eval(cohort, model, out, *extra):
    from fmrilm.cli import main

    args = ["eval", "--model", str(model), "--cohort", str(cohort), "--task", "sex", "--out", str(out)]
    return main([*args, "--shots", "0", "--no-progress", *extra])


def test_eval_out_with_a_report_and_other_files(eval_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "draft.docx").write_text("keep")
    assert _eval(*eval_inputs, out) == 2
    assert "draft.docx" in _cli_error(capsys) and (out / "draft.docx").exists()


def test_eval_out_with_other_files(eval_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("keep")
    assert _eval(*eval_inputs, out) == 2
    assert "data.csv" in _cli_error(capsys) and (out / "data.csv").exists()


def test_eval_missing_model(eval_inputs, tmp_path, capsys):
    assert _eval(eval_inputs[0], tmp_path / "no-model", tmp_path / "out") == 2
    assert "no-model" in _cli_error(capsys)


def test_eval_corrupt_cohort(eval_inputs, tmp_path, capsys):
    import shutil

    cohort = shutil.copytree(eval_inputs[0], tmp_path / "cohort")
    _truncate(cohort / "cohort.json")
    assert _eval(cohort, eval_inputs[1], tmp_path / "out") == 2
    err = _cli_error(capsys)
    assert "corrupt" in err and str(cohort) in err


@pytest.mark.parametrize(
    "text,match",
    [('{"train": [0, 1', "Cannot read the split file as JSON"), ('{"train": ["a"]}', "not a list of row")],
)
def test_eval_bad_split_file(eval_inputs, tmp_path, capsys, text, match):
    split = tmp_path / "split.json"
    split.write_text(text)
    assert _eval(*eval_inputs, tmp_path / "out", "--split", str(split)) == 2
    err = _cli_error(capsys)
    assert match in err and "split.json" in err


def test_eval_shots_not_numbers(eval_inputs, tmp_path, capsys):
    from fmrilm.cli import main

    cohort, model = eval_inputs
    args = [
        "eval",
        "--model",
        str(model),
        "--cohort",
        str(cohort),
        "--task",
        "sex",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--shots", "two"]) == 2
    assert "--shots must be comma-separated whole numbers" in _cli_error(capsys)
