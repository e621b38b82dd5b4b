"""`fmrilm finetune --model DIR --cohort DIR --task NAME [--shots k] [--split FILE] --out DIR`.

LoRA fine-tuning of a trained model on a new cohort, task or atlas with few labelled subjects; writes an
adapters-only folder (see `fmrilm.train.finetune` for the layout and `load_finetuned` to load it).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.train.finetune import FinetuneConfig
    from fmrilm.train.stage3 import add_tuning_arguments

    from fmrilm.logs import add_warning_options
    from fmrilm.safety import fraction, positive_int

    p = parser
    p.add_argument(
        "--model", required=True, metavar="DIR", help="trained fmrilm model (Stage 3 output or folder)"
    )
    p.add_argument("--cohort", required=True, metavar="DIR", help="the new cohort (any atlas)")
    p.add_argument("--task", required=True, help="built-in task name or path to a task .yaml file")
    p.add_argument(
        "--shots",
        type=positive_int,
        default=None,
        help="labelled subjects per class (default: every train subject)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="a split stored in the cohort (name) or a split .json file; its test part is never trained on "
        "(default: a seeded stratified split made here, saved as OUT/split.json)",
    )
    p.add_argument(
        "--test-size", type=fraction, default=0.2, help="test share of subjects when no --split is given"
    )
    p.add_argument("--paradigms", default="brain", help="comma-separated paradigms to train (default: brain)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (adapters only)")
    add_tuning_arguments(p, FinetuneConfig)
    add_warning_options(p)


def run(args: argparse.Namespace) -> int:
    from fmrilm.train.common import setup_logging
    from fmrilm.train.finetune import FinetuneConfig, finetune
    from fmrilm.train.stage3 import is_main_process, tuning_kwargs

    setup_logging()
    cfg = FinetuneConfig(
        model=str(args.model),
        cohort=str(args.cohort),
        task=str(args.task),
        out=str(args.out),
        shots=args.shots,
        split=args.split,
        test_size=args.test_size,
        paradigms=[p.strip() for p in args.paradigms.split(",") if p.strip()],
        **tuning_kwargs(args),
    )
    from fmrilm.logs import warnings_as_asked

    with warnings_as_asked(args):  # peft's deprecation notices stay off the training log
        out = finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    if is_main_process():  # under a launcher, said once
        print(f"fine-tuned adapters written to {out} (load with fmrilm.train.finetune.load_finetuned)")
    return 0
