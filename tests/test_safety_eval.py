"""`fmrilm eval` output and resume (issue 12, findings 3 and 4, and interruptions).

The report folder is written beside --out and renamed in only when complete, never deletes files it did not
write, and resuming reuses finished runs only when the model's files, the cohort's content and the settings are
the ones they were computed from.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

import fmrilm.safety as safety
from fmrilm.errors import FmriInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _model(seed: int):
    from fmrilm.atlas import Atlas
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    llm, tok = tiny_causal_lm("llama", seed=seed, initializer_range=0.3)
    fmri_tok = tiny_fmri_tokenizer(codebook_size=16, num_latents=4, seed=seed)
    return FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok, atlas=Atlas.builtin("seitzman300"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    from fmrilm.atlas import Atlas

    root = tmp_path_factory.mktemp("safety_eval")
    atlas = Atlas.builtin("dosenbach160").subset(
        range(0, 160, 5), name="dosenbach32"
    )  # small FC: fast probes
    config = SimulationConfig(n_subjects=24, n_sites=2, timepoints=(40, 50), seed=1, atlas=atlas)
    simulate_cohort(config).save(root / "cohort")
    _model(0).save_pretrained(root / "model")
    return root


def _cfg(root: Path, out: Path, **changes):
    from fmrilm.eval.evaluate import EvalConfig

    settings = dict(
        model=str(root / "model"), cohort=str(root / "cohort"), task="sex", out=str(out), split="stratified",
        test_size=0.25, shots=[0], seeds=1, n_boot=20, progress=False, keep_work=True, covariates=[],
    )  # fmt: skip
    settings.update(changes)
    return EvalConfig(**settings)


def _count_scoring(monkeypatch) -> list[int]:
    from fmrilm.model.modeling import FmriLM

    calls: list[int] = []
    real = FmriLM.predict_cohort

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FmriLM, "predict_cohort", counted)
    return calls


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _staging_left(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and ".eval-work" not in p.name)


# ------------------------------------------------------------------- finding 3: never delete other files
def test_eval_never_deletes_files_it_did_not_write_beside_a_report(setup, tmp_path):
    from fmrilm.eval.evaluate import evaluate

    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "analysis.ipynb").write_text("months of work")
    with pytest.raises(FmriInputError, match="analysis.ipynb") as info:
        evaluate(_cfg(setup, out))
    assert str(out) in str(info.value)
    assert (out / "analysis.ipynb").read_text() == "months of work"
    (out / "report.json").unlink()
    with pytest.raises(FmriInputError, match="not a evaluation report written by fmrilm|not an? evaluation"):
        evaluate(_cfg(setup, out))
    assert (out / "analysis.ipynb").exists()


# ----------------------------------------------------------------------- finding 4: resume keyed on content
def test_resume_is_keyed_on_the_model_files_not_its_path(setup, tmp_path, monkeypatch, caplog):
    from fmrilm.eval.evaluate import evaluate

    root = tmp_path / "copy"
    shutil.copytree(setup, root)
    out = tmp_path / "report"
    calls = _count_scoring(monkeypatch)
    first = evaluate(_cfg(root, out))  # keep_work: the finished zero-shot run stays, as after an interruption
    assert len(calls) == 1
    evaluate(_cfg(root, out))
    assert len(calls) == 1, "an unchanged model and cohort must reuse the finished run"

    _model(7).save_pretrained(root / "model")  # another model in the same folder
    with caplog.at_level(logging.WARNING, logger="fmrilm.eval"):
        again = evaluate(_cfg(root, out))
    assert len(calls) == 2, "the old model's scores were reported for the new model"
    lines = [r.getMessage() for r in caplog.records if "Not resuming" in r.getMessage()]
    assert len(lines) == 1 and "the model's files changed" in lines[0]
    old_scores = {r.method: r for r in first.results}["fmrilm_zero_shot"].y_score
    new_scores = {r.method: r for r in again.results}["fmrilm_zero_shot"].y_score
    assert old_scores.tolist() != new_scores.tolist()  # the new model's own scores, not the cached ones

    from fmrilm.cohort import load_cohort

    cohort = load_cohort(root / "cohort")
    cohort.meta = {**cohort.meta, "edited": True}
    cohort.save(root / "cohort", overwrite=True)  # same path, other content
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fmrilm.eval"):
        evaluate(_cfg(root, out, normalize="mean"))
    assert len(calls) == 3
    messages = [r.getMessage() for r in caplog.records if "Not resuming" in r.getMessage()]
    assert (
        len(messages) == 1
        and "settings changed: normalize" in messages[0]
        and "the cohort changed" in messages[0]
    )


def test_a_work_folder_fmrilm_did_not_write_is_refused_not_deleted(setup, tmp_path):
    from fmrilm.eval.evaluate import evaluate

    out = tmp_path / "report"
    work = tmp_path / ".report.eval-work"
    work.mkdir()
    (work / "mine.txt").write_text("not eval's")
    with pytest.raises(FmriInputError, match="not written by fmrilm eval"):
        evaluate(_cfg(setup, out))
    assert (work / "mine.txt").exists()


# ------------------------------------------------------------------------ interrupted at several moments
@pytest.fixture(scope="module")
def earlier(setup, tmp_path_factory):
    """A complete earlier report (and the kept work folder, so later runs skip the zero-shot scoring)."""
    from fmrilm.eval.evaluate import evaluate

    out = tmp_path_factory.mktemp("earlier") / "report"
    evaluate(_cfg(setup, out))
    return out


@pytest.mark.parametrize("moment", ["scoring", "writing report.md", "adding the summary", "the final rename"])
def test_an_interrupted_eval_leaves_the_earlier_report_or_nothing(
    setup, earlier, tmp_path, monkeypatch, moment
):
    import fmrilm.eval.evaluate as evaluate_module
    import fmrilm.eval.report as report_module

    from fmrilm.model.modeling import FmriLM

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "report"
    shutil.copytree(earlier, out)
    shutil.copytree(earlier.parent / ".report.eval-work", tmp_path / ".report.eval-work")
    before = _snapshot(out)
    fresh = tmp_path / "fresh"
    if moment == "scoring":
        shutil.rmtree(tmp_path / ".report.eval-work")  # nothing cached: the model scores the test scans
        monkeypatch.setattr(FmriLM, "predict_cohort", boom)
    elif moment == "writing report.md":
        monkeypatch.setattr(report_module, "_markdown", boom)
    elif moment == "adding the summary":
        monkeypatch.setattr(evaluate_module, "_insert_summary", boom)
    else:
        real_rename = os.rename

        def stop(src, dst):
            if Path(src).name == "report" and ".tmp-" in str(src):
                raise KeyboardInterrupt
            return real_rename(src, dst)

        monkeypatch.setattr(safety.os, "rename", stop)
    for target in (out, fresh) if moment in ("scoring", "the final rename") else (out,):
        with pytest.raises(KeyboardInterrupt):
            evaluate_module.evaluate(_cfg(setup, target))
    assert _snapshot(out) == before  # the earlier report, whole
    assert not fresh.exists()  # a first run leaves no report at all
    assert _staging_left(tmp_path) == []
