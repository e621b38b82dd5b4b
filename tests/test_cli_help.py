"""Every `fmrilm` sub-command's --help has a description and shows each option's default, so a run can be
sized before it starts (checked in-process on the parser objects, not in subprocesses)."""

from __future__ import annotations

import argparse

import pytest

from fmrilm.cli import COMMANDS, _shows_default, build_parser


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every parser below ``parser`` that has no sub-commands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*path, name))


def _command_parser(name: str) -> argparse.ArgumentParser:
    top = build_parser(name)
    action = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # one line: a default may be wrapped anywhere


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_has_a_description_and_every_default(command):
    leaves = list(_leaf_parsers(_command_parser(command), (command,)))
    assert leaves
    for path, parser in leaves:
        text = _help(parser)
        where = "fmrilm " + " ".join(path)
        assert parser.description and parser.description.strip(), f"{where} has no description"
        for action in parser._actions:
            if not _shows_default(action):
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest
            if "default" in (action.help or "").lower():
                continue  # its help text states the default in its own words ('simple (default), ...')
            shown = f"(default: {action.default})" in text
            assert shown, f"{where} --help does not show the default of {flag} ({action.default!r})"


def test_training_help_shows_steps_lr_and_maximum_lengths_with_their_real_defaults():
    from fmrilm.train.finetune import FinetuneConfig
    from fmrilm.train.stage1 import Stage1Config
    from fmrilm.train.stage2 import Stage2Config
    from fmrilm.train.stage3 import InstructConfig

    train = {p[1]: parser for p, parser in _leaf_parsers(_command_parser("train"), ("train",))}
    cases = {
        "tokenizer": (train["tokenizer"], Stage1Config, ["--text-max-length TEXT_MAX_LENGTH"]),
        "align": (train["align"], Stage2Config, ["--max-length MAX_LENGTH"]),
        "instruct": (train["instruct"], InstructConfig, ["--max-length MAX_LENGTH"]),
        "finetune": (_command_parser("finetune"), FinetuneConfig, ["--max-length MAX_LENGTH"]),
    }
    for name, (parser, config, length_flags) in cases.items():
        text = _help(parser).split(" options: ", 1)[1]  # past the usage lines
        assert f"--steps STEPS optimizer steps of the whole run (default: {config.steps})" in text, name
        assert f"(default: {config.lr})" in text.split("--lr LR", 1)[1].split("--", 1)[0], name
        for flag in length_flags:
            after = text.split(flag, 1)[1].split(" --", 1)[0]
            assert "(default: " in after, f"{name}: {flag} shows no default"
    assert f"(default: {InstructConfig.max_length})" in _help(train["instruct"])
    assert f"(default: {FinetuneConfig.max_length})" in _help(_command_parser("finetune"))
    # the stages' step counts differ, so a shared default could not pass every line above
    assert len({Stage1Config.steps, Stage2Config.steps, InstructConfig.steps, FinetuneConfig.steps}) > 1


def test_instructions_build_says_what_it_writes():
    build = dict(_leaf_parsers(_command_parser("instructions"), ("instructions",)))[("instructions", "build")]
    assert "instruction set" in build.description and len(build.description) > 80
    assert "(default: whole)" in _help(build)


def test_a_raw_description_formatter_keeps_its_examples_and_gains_defaults():
    simulate = _command_parser("simulate")
    text = simulate.format_help()
    assert (
        "\nexamples:\n  fmrilm simulate --subjects 300 --out cohorts/sim\n" in text
    )  # epilog not re-wrapped
    assert "(default: 0)" in _help(simulate)  # --nifti


def test_a_help_that_states_its_default_is_not_repeated():
    corpus = dict(_leaf_parsers(_command_parser("corpus"), ("corpus",)))[("corpus", "build")]
    text = _help(corpus)
    assert "(default 16)" in text and "(default: 16)" not in text  # --components
