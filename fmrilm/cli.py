"""The `fmrilm` console script: one subcommand per job, each living in the module that does the job.

Only the chosen subcommand's module is imported, so `fmrilm --help` is fast and a broken optional
dependency of one job cannot break another. Bad input (FmriInputError) is printed as one sentence,
without a traceback, and exits with status 2.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
from typing import Any

from fmrilm.errors import FmriInputError

#: name -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": (
        "fmrilm.data_gen.simulate_cli",
        "Write a synthetic resting-state cohort (optionally NIfTI).",
    ),
    "cohort": (
        "fmrilm.cohort_cli",
        "Import a cohort (participants table + scans), print its summary, or split it by subject or site.",
    ),
    "corpus": ("fmrilm.data_gen.corpus_cli", "Write the descriptor corpus of a cohort (text, z values)."),
    "train": ("fmrilm.train.cli", "Train a stage (tokenizer = Stage 1; see `fmrilm train --help`)."),
    "instructions": (
        "fmrilm.instructions.cli",
        "Build seeded instruction sets from a cohort and task YAMLs.",
    ),
    "finetune": (
        "fmrilm.train.finetune_cli",
        "Fine-tune LoRA adapters on a new cohort, task or atlas from k labelled subjects per class.",
    ),
    "chat": (
        "fmrilm.chat_cli",
        "Talk with a saved model about one or more scans (interactive or --message).",
    ),
    "eval": (
        "fmrilm.eval.cli",
        "Evaluate a model zero-shot, few-shot and fine-tuned next to baselines on one split (JSON + Markdown).",
    ),
    "embed": (
        "fmrilm.embed_cli",
        "Write one embedding per scan (or window) of a cohort, from what the LLM reads.",
    ),
    "perturb": (
        "fmrilm.perturb_cli",
        "What-if answers for a scan with regions or a network perturbed; rank networks by their effect.",
    ),
    "networks": (
        "fmrilm.networks_cli",
        "Group a cohort's regions into K networks from the model alone; compare with the atlas and raw FC.",
    ),
    "demo": ("fmrilm.eval.demo", "Run the whole pipeline end to end, offline, on the built-in defaults."),
    "bench": ("fmrilm.eval.bench", "Run the speed and accuracy benchmarks under eval/ (see BENCHMARKS.md)."),
}


def _shows_default(action: argparse.Action) -> bool:
    """Whether an option's default tells the reader something (not None, False, empty or suppressed)."""
    default = action.default
    if (
        default is None
        or default is False
        or default is argparse.SUPPRESS
        or action.help == argparse.SUPPRESS
    ):
        return False
    if isinstance(default, (list, tuple, dict, str)) and not default:
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


class DefaultsHelpMixin:
    """`argparse.ArgumentDefaultsHelpFormatter`, also for options without a help text, and without repeating a
    default that the help text already states (``(default ...)`` or ``%(default)s``)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)  # type: ignore[misc]

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "%(default" in help_text or "(default" in help_text.lower() or not _shows_default(action):
            return help_text
        return f"{help_text} (default: %(default)s)"


class _SubParsersAction(argparse._SubParsersAction):
    """Sub-commands created without a description take their one-line help as description."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"]
        return super().add_parser(name, **kwargs)


class FmriArgumentParser(argparse.ArgumentParser):
    """The parser of `fmrilm` and of every sub-command below it (argparse builds sub-parsers of the parent's
    class): every ``--help`` shows each option's default, whichever formatter class a sub-command chose
    (e.g. `argparse.RawDescriptionHelpFormatter` for an epilog of examples), and has a description."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsersAction)

    def _get_formatter(self) -> argparse.HelpFormatter:
        base = self.formatter_class
        if not (isinstance(base, type) and issubclass(base, DefaultsHelpMixin)):
            base = type(f"Defaults{base.__name__}", (DefaultsHelpMixin, base), {})
        return base(prog=self.prog)


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = FmriArgumentParser(
        prog="fmrilm", description="fMRI for causal language models: simulate, import, train, chat, evaluate."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
            cmd.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    args.invocation = ["fmrilm", *argv]  # the command as typed, for the records of a run (e.g. eval's report)
    try:
        result = args.func(args)
    except FmriInputError as exc:
        print(f"fmrilm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
