"""Resuming a run of any stage: the loop settings (one shared `LoopSettings`) decide what may change."""

from __future__ import annotations

import json

import pytest
from fmrilm.train.common import TRAIN_CONFIG, LoopSettings, prepare_out_dir
from fmrilm.train.finetune import FinetuneConfig
from fmrilm.train.stage1 import Stage1Config
from fmrilm.train.stage2 import Stage2Config
from fmrilm.train.stage3 import InstructConfig

from fmrilm.errors import FmriInputError

CONFIGS = {
    "tokenizer": lambda out, **kw: Stage1Config(cohorts=["c"], out=out, **kw),
    "align": lambda out, **kw: Stage2Config(cohorts=["c"], tokenizer="t", out=out, **kw),
    "instruct": lambda out, **kw: InstructConfig(model="m", instructions=["i"], out=out, **kw),
    "finetune": lambda out, **kw: FinetuneConfig(model="m", cohort="c", task="sex", out=out, **kw),
}


@pytest.mark.parametrize("stage", CONFIGS)
def test_a_saved_run_resumes_with_more_steps_but_not_with_another_learning_rate(stage, tmp_path):
    make = CONFIGS[stage]
    first = make(str(tmp_path / "run"))
    assert isinstance(first, LoopSettings)
    run = tmp_path / "run"
    run.mkdir()
    saved = first.to_dict()
    # the saved file's key order is not part of the contract (older versions wrote another order)
    (run / TRAIN_CONFIG).write_text(json.dumps(dict(reversed(list(saved.items())))))

    with pytest.raises(FmriInputError, match="--resume"):
        prepare_out_dir(run, resume=False, cfg=first)
    # a longer run, reporting more often, from a moved folder: allowed
    moved = tmp_path / "moved"
    run.rename(moved)
    longer = make(str(moved), steps=first.steps * 2, eval_every=1, log_every=1, threads=1, progress=False)
    prepare_out_dir(moved, resume=True, cfg=longer)
    # another learning rate or seed changes what is learned: refused, naming the settings
    with pytest.raises(FmriInputError, match=r"\(lr, seed\)"):
        prepare_out_dir(moved, resume=True, cfg=make(str(moved), lr=first.lr * 10, seed=first.seed + 1))


def test_a_run_saved_before_a_setting_existed_resumes_at_its_default_but_not_past_it(tmp_path):
    """Stage 3's probe teacher and calibration rounds came later: an older run had neither, which is their
    defaults' behaviour, so it resumes; asking it to resume with a teacher is another run."""
    run = tmp_path / "run"
    run.mkdir()
    saved = CONFIGS["instruct"](str(run)).to_dict()
    for key in ("probe_teacher", "probe_rounds"):
        saved.pop(key)
    (run / TRAIN_CONFIG).write_text(json.dumps(saved))
    prepare_out_dir(run, resume=True, cfg=CONFIGS["instruct"](str(run)))
    with pytest.raises(FmriInputError, match="probe_teacher"):
        prepare_out_dir(run, resume=True, cfg=CONFIGS["instruct"](str(run), probe_teacher=1.0))


def test_a_warm_started_run_saved_before_the_rounds_default_changed_resumes_with_its_own_rounds(tmp_path):
    """Runs saved before `probe_rounds` existed calibrated the warm start twice, the default of then; the
    default is now 0, so such a run resumes with `--probe-rounds 2` and is refused at today's default, while a
    run without the warm start, for which the rounds mean nothing, still resumes at the default."""
    for probe_init in (True, False):
        run = tmp_path / f"run_{probe_init}"
        run.mkdir()
        saved = CONFIGS["instruct"](str(run), probe_init=probe_init).to_dict()
        saved.pop("probe_rounds")
        (run / TRAIN_CONFIG).write_text(json.dumps(saved))
        today = CONFIGS["instruct"](str(run), probe_init=probe_init)
        if probe_init:
            with pytest.raises(FmriInputError, match="probe_rounds"):
                prepare_out_dir(run, resume=True, cfg=today)
            prepare_out_dir(
                run, resume=True, cfg=CONFIGS["instruct"](str(run), probe_init=True, probe_rounds=2)
            )
        else:
            prepare_out_dir(run, resume=True, cfg=today)
