"""`fmrilm instructions build COHORT --tasks sex,age,... --out DIR`: write a seeded instruction set.

Also `fmrilm instructions list` (built-in tasks) and `fmrilm instructions check FILE.yaml` (validate a task).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.instructions.builder import REGRESSION_ANSWERS

    from fmrilm.safety import nonnegative_int, share

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser(
        "build",
        help="Build an instruction set (datasets folder) from a cohort and task specs.",
        description="Write a seeded instruction set (a Hugging Face dataset folder) with one chat example per "
        "scan (or window), task and paradigm: a question drawn from the task's paraphrases, answered from the "
        "cohort's phenotype table or the descriptor corpus (a missing target is skipped and counted, never "
        "defaulted). With --split, a column says which part of the split each row belongs to.",
    )
    build.add_argument("cohort", help="cohort folder (from `fmrilm cohort import` or `fmrilm simulate`)")
    build.add_argument(
        "--tasks",
        default="all",
        help="comma-separated built-in task names and/or paths to task .yaml files; 'all' = every built-in "
        "task that applies to the cohort (default)",
    )
    build.add_argument(
        "--corpus", help="descriptor corpus folder (`fmrilm corpus build`): descriptor text and tasks"
    )
    build.add_argument(
        "--out",
        required=True,
        help="output folder: new or empty (written beside it, then renamed into place)",
    )
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier instruction set in --out, once the new one is complete",
    )
    build.add_argument("--seed", type=nonnegative_int, default=0)
    build.add_argument(
        "--split", help="name of a split stored in the cohort (`fmrilm cohort split`): adds a split column"
    )
    build.add_argument(
        "--windows",
        default="whole",
        help="'whole' (one row per scan, all windows in one fMRI part), 'all' (one row per window) or N windows per scan",
    )
    build.add_argument("--paradigms", help="restrict to some of brain,brain_descriptors,multi,open,followup")
    build.add_argument("--max-multi", type=int, default=3, help="most questions in one multi-question turn")
    build.add_argument(
        "--bare-questions",
        type=share,
        default=0.0,
        metavar="SHARE",
        help="share of brain and followup rows asked without 'Answer with one of: ...', as people ask in a "
        "chat (default 0)",
    )
    build.add_argument(
        "--regression-answers",
        choices=REGRESSION_ANSWERS,
        default="value",
        help="how a regression answer (age) is written: the number itself, or one of the two bin values that "
        "enclose it, drawn with the weights whose mean is the number, so training teaches the bin answers "
        "that scoring reads (default value)",
    )
    sub.add_parser(
        "list", help="List the built-in tasks.", description="List the built-in tasks: name, type, source."
    )
    check = sub.add_parser("check", help="Validate task .yaml files and print a summary.")
    check.add_argument("files", nargs="+")


def run(args: argparse.Namespace) -> int:
    from fmrilm.instructions.spec import builtin_tasks, load_task

    if args.action == "list":
        for name in builtin_tasks():
            t = load_task(name)
            print(f"{name:20s} {t.type:11s} {t.source:11s} {t.description}")
        return 0
    if args.action == "check":
        for f in args.files:
            t = load_task(f)
            print(
                f"{f}: ok ({t.name}, {t.type}, {len(t.questions)} questions, paradigms {', '.join(t.paradigms)})"
            )
        return 0
    return _build(args)


def _build(args: argparse.Namespace) -> int:
    from fmrilm.instructions.builder import DescriptorIndex, build_instructions, save_instruction_set
    from fmrilm.instructions.spec import load_tasks

    from fmrilm.cohort import Cohort
    from fmrilm.errors import FmriInputError
    from fmrilm.safety import INSTRUCTIONS_OUTPUT, check_output

    check_output(args.out, INSTRUCTIONS_OUTPUT, overwrite=args.overwrite)  # before the slow part
    cohort = Cohort.load(args.cohort)
    descriptors = DescriptorIndex.from_corpus(args.corpus) if args.corpus else None
    tasks = load_tasks(args.tasks)
    if args.tasks in (None, "", "all"):  # 'all' keeps the built-in tasks this cohort (and corpus) can answer
        table_cols = set(cohort.dataset.column_names)
        tasks = [
            t
            for t in tasks
            if (t.target in table_cols if t.source == "phenotype" else descriptors is not None)
        ]
    windows = args.windows if args.windows in ("whole", "all") else _positive_int(args.windows)
    split = None
    if args.split:
        from fmrilm.splits import load_split

        split = load_split(args.cohort, args.split, cohort)
    paradigms = [p.strip() for p in args.paradigms.split(",")] if args.paradigms else None
    if args.max_multi < 2:
        raise FmriInputError(f"--max-multi must be at least 2, got {args.max_multi}", fix="give 2 or more")
    dataset, meta = build_instructions(
        cohort,
        tasks,
        descriptors=descriptors,
        split=split,
        windows=windows,
        paradigms=paradigms,
        max_multi=args.max_multi,
        seed=args.seed,
        cohort_file=args.cohort,
        bare_questions=args.bare_questions,
        regression_answers=args.regression_answers,
    )
    meta["cohort_dir"] = str(args.cohort)
    meta["split_name"] = args.split
    save_instruction_set(dataset, meta, tasks, args.out, overwrite=args.overwrite)
    print(f"Wrote {len(dataset)} instruction rows to {args.out}")
    for name, counts in meta["counts"].items():
        extra = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "rows")
        print(f"  {name:20s} {counts.get('rows', 0):6d} rows" + (f"  ({extra})" if extra else ""))
    return 0


def _positive_int(text: str) -> int:
    from fmrilm.errors import FmriInputError

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise FmriInputError(
            f"--windows '{text}' is not whole, all or a positive number", fix="give e.g. --windows 4"
        )
    return n
