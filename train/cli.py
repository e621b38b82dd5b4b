"""`fmrilm train STAGE ...`: one sub-subcommand per training stage.

Each stage lives in its own module exposing ``add_arguments(parser)`` and ``run(args)`` (heavy imports inside
functions, so importing every stage module to build the parser stays cheap). To add a stage, add one line to
``STAGES``. A stage whose module fails to import is still listed, and says why when it is run, so a broken
optional dependency of one stage cannot break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fmrilm.logs import add_warning_options

#: stage name -> (module with add_arguments(parser) and run(args), one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "tokenizer": (
        "fmrilm.train.stage1",
        "Stage 1: train the VQ fMRI tokenizer (reconstruction + text alignment).",
    ),
    "align": (
        "fmrilm.train.stage2",
        "Stage 2: align the LLM to brain tokens (describe, forecast, text replay) with LoRA.",
    ),
    "instruct": (
        "fmrilm.train.stage3",
        "Stage 3: multi-task instruction tuning (LoRA) on instruction sets; loss on the answers only.",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            stage.set_defaults(stage_run=_unavailable(name, exc))
            continue
        module.add_arguments(stage)
        add_warning_options(stage)
        stage.set_defaults(stage_run=module.run)


def _unavailable(name: str, exc: ImportError):
    def run(args: argparse.Namespace) -> int:
        print(f"fmrilm train {name}: unavailable ({exc})", file=sys.stderr)
        return 1

    return run


def run(args: argparse.Namespace) -> int:
    """Run the stage with library warnings (deprecations of transformers, peft, ...) kept off the training
    log: to ``--log-file`` when given, on stderr with ``--verbose``. The stage's own log lines stay."""
    from fmrilm.logs import warnings_as_asked

    with warnings_as_asked(args):
        return int(args.stage_run(args) or 0)
