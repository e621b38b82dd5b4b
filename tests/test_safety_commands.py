"""Nothing lost, numbers checked: `train *`, `finetune`, `corpus build`, `instructions build`, `cohort split`
and the numeric flags of the training commands and `eval` (issue 12, Build list).

Training runs and corpora work inside their --out folder (checkpoints, shards) and are marked as their own from
the start (``train_config.json``, ``reference.json``): a folder without that mark is never written into; an
earlier run continues with --resume (or, for a corpus, by re-running) and starts afresh only with --overwrite.
Instruction sets are written beside --out and renamed in, like cohorts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from fmrilm.cli import main
from fmrilm.errors import FmriInputError


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _foreign(tmp_path: Path) -> Path:
    """A results folder of the user's own, which no command may write into or delete."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "thesis.tex").write_text("chapter 1")
    return folder


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    """Six simulated subjects on 40 regions, with a stratified split stored in the cohort."""
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    from fmrilm.atlas import Atlas

    atlas = Atlas.builtin("dosenbach160").subset(np.arange(0, 160, 4), name="dos40")
    cohort = simulate_cohort(
        SimulationConfig(n_subjects=6, atlas=atlas, n_sites=1, timepoints=(80, 90), seed=1)
    )
    return cohort.save(tmp_path_factory.mktemp("cohorts") / "tiny")


# ----------------------------------------------------------------------------------------------- training
def _tokenizer_args(cohort: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "tokenizer", "--cohort", str(cohort), "--out", str(out), "--preset", "tiny", "--steps", "2",
        "--quantizer-warmup-steps", "1", "--codebook-size", "16", "--val-fraction", "0", "--threads", "1",
        "--no-progress", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_training_never_writes_into_a_folder_it_did_not_create(tiny_cohort, tmp_path, capsys, flag):
    out = _foreign(tmp_path)
    before = _snapshot(out)
    assert main(_tokenizer_args(tiny_cohort, out, *flag)) == 2
    err = capsys.readouterr().err
    assert "thesis.tex" in err and "not a training run" in err
    assert _snapshot(out) == before


@pytest.mark.parametrize("command", [["train", "align"], ["train", "instruct"], ["finetune"]])
def test_every_training_command_refuses_a_foreign_out(tmp_path, capsys, command):
    """The same rule holds before any input is read: the folder check is the run's first step."""
    from fmrilm.train.common import LoopSettings, prepare_out_dir

    out = _foreign(tmp_path)
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(FmriInputError, match="not a training run written by fmrilm"):
            prepare_out_dir(out, resume, LoopSettings(), overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "--overwrite" in capsys.readouterr().out


def test_a_run_is_marked_as_its_own_from_the_start_so_an_interrupted_one_resumes(tmp_path):
    from fmrilm.train.common import TRAIN_CONFIG, LoopSettings, prepare_out_dir

    out = tmp_path / "run"
    prepare_out_dir(out, False, LoopSettings(steps=5))  # the run is interrupted right after this
    (out / "text_embeddings-x.safetensors").write_bytes(b"cache")  # something it wrote before any checkpoint
    assert json.loads((out / TRAIN_CONFIG).read_text())["steps"] == 5
    with pytest.raises(FmriInputError, match="already holds a training run"):
        prepare_out_dir(out, False, LoopSettings(steps=5))
    prepare_out_dir(out, True, LoopSettings(steps=5))  # --resume: its own run, same settings
    with pytest.raises(FmriInputError, match="other settings"):
        prepare_out_dir(out, True, LoopSettings(steps=5, lr=1.0))
    assert (out / "text_embeddings-x.safetensors").exists()


def test_overwrite_starts_afresh_and_keeps_the_finished_model_until_replaced(tmp_path):
    from fmrilm.train.common import TRAIN_CONFIG, LoopSettings, prepare_out_dir

    out = tmp_path / "run"
    prepare_out_dir(out, False, LoopSettings(lr=1e-3))
    (out / "checkpoints" / "step-000500").mkdir(parents=True)  # the old run's, later than any new one
    (out / "model.safetensors").write_bytes(b"old model")
    prepare_out_dir(out, False, LoopSettings(lr=5e-4), overwrite=True)
    assert not (out / "checkpoints").exists()
    assert (out / "model.safetensors").read_bytes() == b"old model"
    assert json.loads((out / TRAIN_CONFIG).read_text())["lr"] == 5e-4


def test_a_half_done_demo_step_is_rerun_with_resume(tiny_cohort, tmp_path, one_torch_thread):
    """`fmrilm demo` re-runs an unfinished training step with --resume; a fresh --out simply starts."""
    from fmrilm.train.common import TRAIN_CONFIG, LoopSettings, prepare_out_dir

    out = tmp_path / "stage1_tokenizer"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_tokenizer_args(tiny_cohort, tmp_path / "fresh", "--resume")) == 0
        assert (tmp_path / "fresh" / "config.json").exists()
        settings = json.loads((tmp_path / "fresh" / TRAIN_CONFIG).read_text())
        settings["out"] = str(out)
        prepare_out_dir(out, False, LoopSettings())  # interrupted before its first checkpoint
        (out / TRAIN_CONFIG).write_text(json.dumps(settings))
        assert main(_tokenizer_args(tiny_cohort, out)) == 2  # without --resume: refused, not mixed
        assert main(_tokenizer_args(tiny_cohort, out, "--resume")) == 0
    assert (out / "config.json").exists()


def test_the_demo_passes_resume_to_every_training_step():
    import inspect

    from fmrilm.eval import demo

    source = inspect.getsource(demo.Demo.train)
    assert source.count('"--resume"') == 3


# ---------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "argv,flag",
    [
        (["train", "tokenizer", "--cohort", "c", "--out", "o", "--steps", "0"], "--steps"),
        (["train", "tokenizer", "--cohort", "c", "--out", "o", "--lr", "nan"], "--lr"),
        (["train", "tokenizer", "--cohort", "c", "--out", "o", "--batch-size", "-4"], "--batch-size"),
        (["train", "align", "--cohort", "c", "--tokenizer", "t", "--out", "o", "--max-length", "0"], "--max-length"),
        (["train", "align", "--cohort", "c", "--tokenizer", "t", "--out", "o", "--lr=-1e-4"], "--lr"),
        (["train", "instruct", "--model", "m", "--instructions", "i", "--out", "o", "--steps", "-1"], "--steps"),
        (["train", "instruct", "--model", "m", "--instructions", "i", "--out", "o", "--max-length", "-5"], "--max-length"),
        (["finetune", "--model", "m", "--cohort", "c", "--task", "sex", "--out", "o", "--lr", "inf"], "--lr"),
        (["finetune", "--model", "m", "--cohort", "c", "--task", "sex", "--out", "o", "--lora-dropout", "1"], "--lora-dropout"),
        (["cohort", "split", "c", "--kind", "stratified", "--test-size", "0"], "--test-size"),
        (["corpus", "build", "c", "--out", "o", "--density", "1.5"], "--density"),
        (["instructions", "build", "c", "--out", "o", "--seed", "-1"], "--seed"),
        (["train", "tokenizer", "--cohort", "c", "--out", "o", "--val-fraction", "1.5"], "--val-fraction"),
        (["train", "tokenizer", "--cohort", "c", "--out", "o", "--connectome-tokens", "-2"], "--connectome-tokens"),
        (["train", "align", "--cohort", "c", "--tokenizer", "t", "--out", "o", "--val-fraction", "nan"], "--val-fraction"),
        (["train", "align", "--cohort", "c", "--tokenizer", "t", "--out", "o", "--weight-replay", "-1"], "--weight-replay"),
        (["train", "instruct", "--model", "m", "--instructions", "i", "--out", "o", "--soft-lr-scale", "-1"], "--soft-lr-scale"),
        (["train", "instruct", "--model", "m", "--instructions", "i", "--out", "o", "--connectome-shown", "0"], "--connectome-shown"),
        (["finetune", "--model", "m", "--cohort", "c", "--task", "sex", "--out", "o", "--soft-lr-scale", "nan"], "--soft-lr-scale"),
        (["finetune", "--model", "m", "--cohort", "c", "--task", "sex", "--out", "o", "--test-size", "3"], "--test-size"),
        (["finetune", "--model", "m", "--cohort", "c", "--task", "sex", "--out", "o", "--shots", "0"], "--shots"),
        (["perturb", "--model", "m", "--scan", "s", "--attribute", "sex", "--seed", "-1"], "--seed"),
        (["networks", "--model", "m", "--scan", "s", "--seed", "-1"], "--seed"),
        (["embed", "--model", "m", "--cohort", "c", "--out", "o.csv", "--batch-size", "0"], "--batch-size"),
        (["simulate", "--out", "o", "--seed", "-1"], "--seed"),
        (["demo", "--threads", "0"], "--threads"),
    ],
)  # fmt: skip
def test_impossible_training_numbers_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "e.g." in err


EVAL = ["eval", "--model", "m", "--cohort", "c", "--task", "sex", "--out", "o"]


@pytest.mark.parametrize(
    "flags,flag",
    [
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--steps", "0"], "--steps"),
        (["--full-steps", "-3"], "--full-steps"),
        (["--seeds", "0"], "--seeds"),
        (["--test-size", "1"], "--test-size"),
        (["--test-size", "nan"], "--test-size"),
        (["--n-boot", "-1"], "--n-boot"),
        (["--batch-size", "0"], "--batch-size"),
        (["--paraphrases", "0"], "--paraphrases"),
        (["--n-test-sites", "0"], "--n-test-sites"),
        (["--warmup-steps", "-1"], "--warmup-steps"),
    ],
)
def test_impossible_eval_numbers_are_refused_naming_the_flag(flags, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*EVAL, *flags])
    assert exc.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_negative_shots_are_refused(capsys):
    assert main([*EVAL, "--shots", "0,-2"]) == 2
    assert "--shots must be whole numbers of 0 or more" in capsys.readouterr().err


def test_the_number_helpers_accept_what_is_possible():
    from fmrilm.safety import fraction, nonnegative_int, positive_float, positive_int, probability

    assert positive_int("3") == 3 and nonnegative_int("0") == 0 and positive_float("1e-4") == 1e-4
    assert fraction("0.25") == 0.25 and probability("0") == 0.0


# ------------------------------------------------------------------------------------------- cohort split
def _split(cohort: Path, *extra: str) -> int:
    return main(["cohort", "split", str(cohort), "--kind", "stratified", "--label", "sex", *extra])


def test_a_split_is_not_replaced_silently(tiny_cohort, tmp_path, capsys):
    import shutil

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    assert _split(cohort, "--test-size", "0.5", "--name", "s") == 0
    path = cohort / "splits" / "s.json"
    before = path.read_bytes()
    assert _split(cohort, "--test-size", "0.5", "--name", "s") == 0  # the very same split: nothing changes
    assert path.read_bytes() == before
    capsys.readouterr()
    assert _split(cohort, "--test-size", "0.5", "--seed", "3", "--name", "s") == 2
    err = capsys.readouterr().err
    assert "already holds a different split named 's'" in err and "--overwrite" in err
    assert path.read_bytes() == before
    assert _split(cohort, "--test-size", "0.5", "--seed", "3", "--name", "s", "--overwrite") == 0
    assert json.loads(path.read_text())["params"]["seed"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.json"]  # no temporary file left


# ----------------------------------------------------------------------------------------------- corpus
def _corpus(cohort: Path, out: Path, *extra: str) -> int:
    return main(["corpus", "build", str(cohort), "--out", str(out), "--components", "3", "--quiet", *extra])


def test_corpus_build_never_writes_into_a_foreign_folder_or_a_cohort(tiny_cohort, tmp_path, capsys):
    out = _foreign(tmp_path)
    before = _snapshot(out)
    for flags in ([], ["--overwrite"]):
        assert _corpus(tiny_cohort, out, *flags) == 2
        assert "thesis.tex" in capsys.readouterr().err
    assert _snapshot(out) == before
    cohort_before = _snapshot(tiny_cohort)
    assert _corpus(tiny_cohort, tiny_cohort, "--overwrite") == 2  # the cohort folder is not a corpus
    assert "not a descriptor corpus" in capsys.readouterr().err
    assert _snapshot(tiny_cohort) == cohort_before


def test_corpus_is_rebuilt_only_with_overwrite_and_swapped_in_when_complete(
    tiny_cohort, tmp_path, capsys, monkeypatch
):
    from fmrilm.data_gen.corpus import load_corpus

    out = tmp_path / "corpus"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _corpus(tiny_cohort, out) == 0
        before = _snapshot(out)
        assert _corpus(tiny_cohort, out) == 0  # a finished corpus with the same settings: kept as it is
        assert _snapshot(out) == before
        capsys.readouterr()
        assert _corpus(tiny_cohort, out, "--seed", "1") == 2
        assert "--overwrite" in capsys.readouterr().err and _snapshot(out) == before

        import datasets

        def stop(*args, **kwargs):
            raise KeyboardInterrupt

        with monkeypatch.context() as m:  # interrupted while the new corpus is written: the old one stays
            m.setattr(datasets.Dataset, "save_to_disk", stop)
            with pytest.raises(KeyboardInterrupt):
                _corpus(tiny_cohort, out, "--seed", "1", "--overwrite")
        assert _snapshot(out) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no staging folder left
        assert _corpus(tiny_cohort, out, "--seed", "1", "--overwrite") == 0
    assert load_corpus(out)[1]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


# ------------------------------------------------------------------------------------------ instructions
def _instructions(cohort: Path, out: Path, *extra: str) -> int:
    return main(["instructions", "build", str(cohort), "--tasks", "sex", "--out", str(out), *extra])


def test_instructions_build_refuses_foreign_folders_and_replaces_only_with_overwrite(
    tiny_cohort, tmp_path, capsys
):
    from fmrilm.instructions.builder import load_instruction_set

    out = _foreign(tmp_path)
    before = _snapshot(out)
    assert _instructions(tiny_cohort, out, "--overwrite") == 2
    assert "thesis.tex" in capsys.readouterr().err and _snapshot(out) == before

    out = tmp_path / "instructions"
    assert _instructions(tiny_cohort, out) == 0
    first = _snapshot(out)
    assert _instructions(tiny_cohort, out, "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "already holds an instruction set" in err and "--overwrite" in err and _snapshot(out) == first
    assert _instructions(tiny_cohort, out, "--seed", "1", "--overwrite") == 0
    assert load_instruction_set(out)[1]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instructions", "results"]
