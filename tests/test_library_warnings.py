"""Library warnings stay out of what a user reads, in training commands too, and a command run inside the demo
leaves them in the demo's warnings.log."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import fmrilm.signal
from fmrilm.logs import library_warnings

LIBRARY_FILE = "/site-packages/transformers/modeling_utils.py"
OUR_FILE = str(Path(fmrilm.signal.__file__))  # a warning raised inside fmrilm is about the user's data


def library_deprecation() -> None:
    warnings.warn_explicit("`old_api` is deprecated", FutureWarning, LIBRARY_FILE, 1)


def test_a_quiet_block_inside_a_logging_one_keeps_the_outer_log(tmp_path, capsys):
    log = tmp_path / "warnings.log"
    with library_warnings(log_file=log):
        with library_warnings():  # a command the demo runs in its own process
            library_deprecation()
    assert "old_api" in log.read_text()
    assert "old_api" not in capsys.readouterr().err


def test_a_quiet_block_on_its_own_drops_library_warnings_and_keeps_ours(capsys):
    with library_warnings():
        library_deprecation()
        warnings.warn_explicit("bad region 3 repaired", UserWarning, OUR_FILE, 1)
    err = capsys.readouterr().err
    assert "old_api" not in err
    assert "warning: bad region 3 repaired" in err


def stage_args(**options) -> argparse.Namespace:
    def stage_run(args: argparse.Namespace) -> int:
        library_deprecation()
        return 0

    return argparse.Namespace(stage_run=stage_run, **options)


def test_train_commands_keep_library_warnings_off_stderr_unless_asked(tmp_path, capsys):
    from fmrilm.train.cli import run

    assert run(stage_args(verbose=False, log_file=None)) == 0
    assert "old_api" not in capsys.readouterr().err
    assert run(stage_args(verbose=True, log_file=None)) == 0
    assert "FutureWarning" in capsys.readouterr().err
    log = tmp_path / "train.log"
    assert run(stage_args(verbose=False, log_file=str(log))) == 0
    assert "old_api" in log.read_text()


def test_every_train_stage_takes_the_warning_options():
    from fmrilm.train.cli import STAGES, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for stage in STAGES:
        help_text = parser._subparsers._group_actions[0].choices[stage].format_help()
        assert "--verbose" in help_text and "--log-file" in help_text


def test_finetune_and_eval_and_chat_take_the_warning_options():
    from fmrilm.cli import build_parser

    for command in ("finetune", "eval", "chat"):
        parser = build_parser(command)
        help_text = parser._subparsers._group_actions[0].choices[command].format_help()
        assert "--verbose" in help_text and "--log-file" in help_text
