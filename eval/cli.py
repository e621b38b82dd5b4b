"""`fmrilm eval --model DIR --cohort DIR --task NAME [--split ...] [--shots 0,2,4,8,16] [--seeds N] --out DIR`.

Scores a trained model zero-shot, after few-shot LoRA fine-tuning (k labelled subjects per class, several seeds)
and optionally after full fine-tuning, next to FC, code-probe, demographics and floor baselines on the same
subject-level split; writes ``report.json``, ``report.md`` and ``plots/`` (see `fmrilm.eval.evaluate`).
``--few-shot-from test`` draws the few-shot subjects from the test part instead and scores every method on the
test subjects each draw leaves (a new cohort's protocol).
"""

from __future__ import annotations

import argparse
import json
import shlex

from fmrilm.errors import FmriInputError


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FmriInputError(
            f"{flag} must be comma-separated whole numbers, got '{text}'", fix=f"give e.g. {flag} 0,2,4,8"
        ) from None
    if not values:
        raise FmriInputError(f"{flag} is empty", fix=f"give e.g. {flag} 0,2,4,8")
    if any(v < 0 for v in values):
        raise FmriInputError(
            f"{flag} must be whole numbers of 0 or more, got '{text}'", fix=f"give e.g. {flag} 0,2,4,8"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.eval.evaluate import CODE_FEATURES, DEFAULT_SHOTS, FEW_SHOT_FROM, EvalConfig

    from fmrilm.logs import add_warning_options
    from fmrilm.safety import (
        fraction,
        nonnegative_float,
        nonnegative_int,
        positive_float,
        positive_int,
        probability,
    )

    d = EvalConfig(model="", cohort="", task="", out="")
    p = parser
    p.add_argument(
        "--model", required=True, metavar="DIR", help="trained fmrilm model (Stage 3 output or folder)"
    )
    p.add_argument("--cohort", required=True, metavar="DIR", help="imported or simulated cohort (any atlas)")
    p.add_argument(
        "--task", required=True, help="built-in task name (diagnosis, sex, age, ...) or a task .yaml"
    )
    p.add_argument(
        "--split",
        default=d.split,
        help="leave-sites-out (default), stratified, a split .json file, or a split stored in the cohort",
    )
    p.add_argument("--test-sites", default=None, help="comma-separated test sites (leave-sites-out)")
    p.add_argument(
        "--n-test-sites",
        type=positive_int,
        default=d.n_test_sites,
        help="sites drawn for testing when none are named",
    )
    p.add_argument(
        "--test-size", type=fraction, default=d.test_size, help="test share of subjects (stratified)"
    )
    p.add_argument(
        "--shots",
        default=None,
        help="labelled subjects per class for few-shot fine-tuning; 0 = zero-shot "
        f"(default {','.join(map(str, DEFAULT_SHOTS))}, dropping k the train part cannot supply)",
    )
    p.add_argument("--seeds", type=positive_int, default=d.seeds, help="few-shot draws (and adapters) per k")
    p.add_argument(
        "--seed", type=nonnegative_int, default=d.seed, help="first seed (split draw, k-shot draws)"
    )
    p.add_argument(
        "--few-shot-from",
        choices=FEW_SHOT_FROM,
        default=d.few_shot_from,
        help="where the k labelled subjects per class come from: 'train' (default) draws them from the train "
        "part and scores every method on the whole test part; 'test' draws them from the test part (the "
        "test sites: a new cohort with a few labels) and scores the fine-tuned model, the zero-shot model, "
        "the few-shot probes and the train-part baselines on the test subjects each draw leaves",
    )
    p.add_argument("--full", action="store_true", help="also fine-tune on every train subject (slow)")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="optimizer steps of each few-shot run")
    p.add_argument(
        "--full-steps", type=positive_int, default=d.full_steps, help="optimizer steps of the --full run"
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--warmup-steps", type=nonnegative_int, default=d.warmup_steps)
    p.add_argument(
        "--soft-lr-scale",
        type=nonnegative_float,
        default=d.soft_lr_scale,
        help="learning-rate multiplier of the soft brain-token projection in each fine-tuning run (0 freezes "
        "it; as `fmrilm finetune --soft-lr-scale`)",
    )
    p.add_argument("--lora-r", type=positive_int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=positive_int, default=d.lora_alpha)
    p.add_argument("--lora-dropout", type=probability, default=d.lora_dropout)
    p.add_argument(
        "--target-modules", default="all-linear", help="'all-linear' or comma-separated module names"
    )
    p.add_argument(
        "--paraphrases", type=positive_int, default=d.paraphrases, help="question wordings averaged per scan"
    )
    p.add_argument(
        "--normalize", choices=["sum", "mean"], default=d.normalize, help="answer log-prob pooling"
    )
    p.add_argument("--score-batch-size", type=positive_int, default=d.batch_size_scoring)
    p.add_argument(
        "--code-features",
        choices=CODE_FEATURES,
        default=d.code_features,
        help="what the code probe reads: the connectome tokens' values (what the LLM receives; 'auto' when the "
        "model has them), the window latents ('auto' otherwise) or the window codes' histogram",
    )
    p.add_argument("--no-few-shot-baselines", action="store_true", help="skip FC/code probes on the k shots")
    p.add_argument("--covariates", default=",".join(d.covariates), help="demographics baseline columns")
    p.add_argument(
        "--n-boot", type=positive_int, default=d.n_boot, help="bootstrap draws for single-run intervals"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="scoring device (default: cuda when available, else cpu)")
    p.add_argument("--keep-work", action="store_true", help="keep the per-run work folder beside --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--update-card",
        action="store_true",
        help="append the results table to the evaluated model's card (its README.md)",
    )
    add_warning_options(p)
    p.add_argument(
        "--no-tangent", action="store_true", help="leave out the tangent-space FC baseline (the slowest one)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="report folder (report.json, report.md, plots/)"
    )


def config_from_args(args: argparse.Namespace):
    from fmrilm.eval.evaluate import EvalConfig

    return EvalConfig(
        model=str(args.model),
        cohort=str(args.cohort),
        task=str(args.task),
        out=str(args.out),
        split=str(args.split),
        test_sites=[s.strip() for s in args.test_sites.split(",") if s.strip()] if args.test_sites else None,
        n_test_sites=args.n_test_sites,
        test_size=args.test_size,
        shots=None if args.shots is None else _int_list(args.shots, "--shots"),
        seeds=args.seeds,
        seed=args.seed,
        few_shot_from=args.few_shot_from,
        full=bool(args.full),
        steps=args.steps,
        full_steps=args.full_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        soft_lr_scale=args.soft_lr_scale,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules,
        paraphrases=args.paraphrases,
        normalize=args.normalize,
        batch_size_scoring=args.score_batch_size,
        code_features=args.code_features,
        tangent_baseline=not args.no_tangent,
        few_shot_baselines=not args.no_few_shot_baselines,
        covariates=[c.strip() for c in args.covariates.split(",") if c.strip()],
        n_boot=args.n_boot,
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
        keep_work=bool(args.keep_work),
    )


def run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext
    from pathlib import Path

    from fmrilm.eval.evaluate import evaluate, summary_table
    from fmrilm.train.common import setup_logging

    from fmrilm.logs import no_library_progress_bars, warnings_as_asked

    setup_logging()
    quiet = no_library_progress_bars() if getattr(args, "no_progress", False) else nullcontext()
    with (
        quiet,  # --no-progress: no "Loading weights" bars either
        warnings_as_asked(args),
    ):
        cfg = config_from_args(args)
        invocation = getattr(args, "invocation", None)  # set by fmrilm.cli.main: the command as typed
        result = evaluate(cfg, command=shlex.join(invocation) if invocation else None)
        compared = json.loads(Path(result.paths["json"]).read_text()).get("versus", [])
        table = summary_table(result.results, compared)  # the report's comparisons, not drawn again
        print(table)
        print(f"report written to {result.paths['markdown']} (JSON: {result.paths['json']})")
        if getattr(args, "update_card", False):
            path = update_card(cfg, table, result.paths["markdown"])
            print(f"results added to the model card {path}")
    return 0


def update_card(cfg, table: str, report: str | None = None):
    """Append the summary table to the card of the evaluated model (``fmrilm eval --update-card``)."""
    from pathlib import Path

    from fmrilm.eval.evaluate import _model_dir

    from fmrilm.model.model_card import add_evaluation

    # the table rows; with several protocols, each table under its protocol in bold (a card's results
    # section keeps its own ### headings)
    rows = []
    for line in table.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif line.startswith("Protocol `") and "###" in table:
            rows += ([""] if rows else []) + [f"**{line}**", ""]
    cohort = Path(cfg.cohort).resolve().name
    title = f"{Path(str(cfg.task)).stem} on {cohort} ({Path(str(cfg.split)).stem} split)"
    same = (
        "every method on the same test subjects"
        if getattr(cfg, "few_shot_from", "train") == "train"
        else "few-shot subjects drawn from the test part: each method of one k and seed scored on the test "
        "subjects that draw left"
    )
    note = (
        "`fmrilm eval` on subjects (and, for leave-sites-out, sites) this model was not trained on; mean over "
        f"seeds with 95% intervals, {same}"
        + (f" (full report: `{Path(report).name}` of that run)." if report else ".")
    )
    return add_evaluation(_model_dir(cfg.model), title, "\n".join(rows).strip(), note)
