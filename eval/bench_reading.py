"""Does the LLM read the scan? Stage-3 diagnosis training from a Stage-2 model, scored after every epoch.

    python -m fmrilm.eval.bench_reading [--demo demo_out] [--model DIR --cohort DIR --instructions DIR]
        [--split leave-sites-out] [--task diagnosis]
        [--no-summary] [--max-windows 0] [--connectome-shown K] [--system-prompt TEXT] [--epochs 2] [--batch-size 16] [--threads 1] [--json OUT]

The decision this measures: how a scan should enter the LLM so that instruction tuning teaches it a trait
in the few passes a CPU affords. The model trains on the task's instruction rows of the split's train part
minus two validation sites (fixed by seed, never the test sites); after each epoch the model's scored answers
(`FmriLM.predict_cohort`, answer probabilities) give AUC on the validation sites, which is what settings are
chosen by, and on the test sites, which is reported. Fisher-z FC + logistic regression on the same fit rows is
scored on the same two sets in the same process (`fmrilm.eval.baselines`), so each figure has its ratio.

``--no-summary`` turns off the scan summary (the start marker's projection of all connectome components),
leaving the 32 per-group soft tokens; ``--connectome-shown 1`` keeps the summary but shows one connectome token
instead of 32 (a prompt of 57 tokens instead of 88); ``--max-windows`` sets how many window tokens each whole-scan part shows.
The loop is Stage 3's own pieces (`train.stage3.build_examples`, class-balanced batches, `param_groups`); only
the scoring between epochs is added. On a 2-core CPU an epoch of ABIDE's ~480 fit scans takes minutes idle,
half an hour under load. ``--demo`` (default ``demo_out``) takes the three folders from a finished
`fmrilm demo` run: its Stage-2 model, its ABIDE cohort and its ABIDE instruction set.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import nonnegative_float, nonnegative_int, positive_float, positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--demo", default="demo_out", help="a finished `fmrilm demo` folder (default %(default)s)")
    p.add_argument("--model", help="Stage-2 model folder (default: DEMO/stage2_align/model)")
    p.add_argument("--cohort", help="cohort folder with the split (default: DEMO/cohorts/abide)")
    p.add_argument("--instructions", help="instruction set of that cohort (default: DEMO/instructions/abide)")
    p.add_argument("--split", default="leave-sites-out", help="saved split name (default %(default)s)")
    p.add_argument("--task", default="diagnosis", help="binary task to train and score (default %(default)s)")
    p.add_argument("--positive", default="autism", help="answer scored as the positive class")
    p.add_argument("--no-summary", action="store_true", help="no scan summary: per-group soft tokens only")
    p.add_argument(
        "--max-windows", type=nonnegative_int, default=0, help="window tokens per whole-scan part (default 0)"
    )
    p.add_argument(
        "--connectome-shown",
        type=positive_int,
        default=None,
        help="connectome tokens each scan shows (default: all; the summary still reads every group)",
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system turn of every prompt (default: the model's; '' for an empty turn, 17 tokens shorter)",
    )
    p.add_argument(
        "--zero-init",
        action="store_true",
        help="start the soft projections at zero (the scan adds nothing until training makes it)",
    )
    p.add_argument("--epochs", type=positive_int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=2e-4)
    p.add_argument("--soft-lr-scale", type=nonnegative_float, default=10.0)
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads (1 on a shared 2-core machine)"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    demo = Path(args.demo)
    args.model = args.model or str(demo / "stage2_align" / "model")
    args.cohort = args.cohort or str(demo / "cohorts" / "abide")
    args.instructions = args.instructions or str(demo / "instructions" / "abide")
    return args


def check_inputs(args: argparse.Namespace) -> None:
    from fmrilm.errors import FmriInputError

    for name in ("model", "cohort", "instructions"):
        if not Path(getattr(args, name)).is_dir():
            raise FmriInputError(
                f"No {name} folder at {getattr(args, name)}",
                fix="run `fmrilm demo` first (its folder is --demo), or pass --model, --cohort and --instructions",
            )


def main(argv: list[str] | None = None) -> int:
    from fmrilm.errors import FmriInputError

    args = parse_args(argv)
    try:
        check_inputs(args)
    except FmriInputError as exc:
        print(f"bench reading: {exc}")
        return 2
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = run(args)
    print(json.dumps(result["epochs"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from fmrilm.eval.baselines import fc_features
    from fmrilm.train import stage3
    from fmrilm.train.common import param_groups
    from sklearn.metrics import roc_auc_score

    from fmrilm.cohort import load_cohort
    from fmrilm.model.modeling import FmriLM, SoftBrainProjection
    from fmrilm.model.scoring import store_tasks
    from fmrilm.splits import load_split

    model = FmriLM.from_pretrained(args.model, is_trainable=True)
    cfg = model.processor.config
    cfg.max_windows = args.max_windows
    cfg.connectome_shown = args.connectome_shown
    if args.system_prompt is not None:
        cfg.system_prompt = args.system_prompt
    summary = not args.no_summary
    if summary != cfg.uses_scan_summary:  # the Stage-2 model was saved with the other setting
        cfg.scan_summary = summary
        projection = SoftBrainProjection.for_llm(model.llm, cfg)
        projection.proj.load_state_dict(model.soft_projection.proj.state_dict())
        model.soft_projection = projection
    if args.zero_init and model.soft_projection is not None:
        with torch.no_grad():
            for weight in model.soft_projection.parameters():
                weight.zero_()
    cohort = load_cohort(args.cohort)
    split = load_split(args.cohort, args.split)
    table = cohort.phenotype_table()
    sites = table["site"].astype(str).to_numpy()
    scan_ids = table["scan_id"].astype(str).to_numpy()
    train_rows, test_rows = np.asarray(split["train"]), np.asarray(split["test"])
    rng = np.random.default_rng(args.seed)
    val_sites = sorted(rng.choice(sorted(set(sites[train_rows])), 2, replace=False).tolist())
    val_rows = train_rows[np.isin(sites[train_rows], val_sites)]
    fit_rows = train_rows[~np.isin(sites[train_rows], val_sites)]

    sources = stage3.load_sources([args.instructions], [args.cohort])
    card = next(c for c in stage3.task_cards(sources) if c.name == args.task)
    store_tasks(model, [card])
    ds = sources[0].dataset
    fit_ids = set(scan_ids[fit_rows])
    keep = [
        i
        for i, (t, s) in enumerate(zip(ds["task"], ds["scan_id"], strict=True))
        if t == args.task and str(s) in fit_ids
    ]
    rows = ds.select(keep)
    start = time.perf_counter()
    codes = stage3.encode_scans(
        cohort,
        model.processor.fmri_tokenizer,
        fit_ids,
        windows=args.max_windows != 0 or stage3.asks_for_windows(rows),
        facts=model.processor.scan_facts if model.processor.config.scan_facts else None,
    )
    examples, _ = stage3.build_examples(model.processor, rows, codes)
    encode_s = time.perf_counter() - start

    def labels(idx: np.ndarray) -> np.ndarray:
        return np.asarray(
            [card.label_of(v) == args.positive for v in table[card.target].to_numpy()[idx]], int
        )

    # the classic baseline on the same fit rows, scored on the same sets
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fc = fc_features(cohort)
    probe = make_pipeline(
        StandardScaler(), LogisticRegressionCV(Cs=8, max_iter=2000, class_weight="balanced")
    )
    probe.fit(fc[fit_rows], labels(fit_rows))
    baseline = {
        name: float(roc_auc_score(labels(idx), probe.predict_proba(fc[idx])[:, 1]))
        for name, idx in (("val", val_rows), ("test", test_rows))
    }

    def auc(idx: np.ndarray) -> float:
        model.eval()
        with torch.no_grad():
            frame = model.predict_cohort(cohort, args.task, idx.tolist(), batch_size=args.batch_size)
        model.llm.train()
        return float(roc_auc_score(labels(idx), frame[f"p:{args.positive}"].to_numpy()))

    class Rates:  # what param_groups reads
        lr, soft_lr_scale = args.lr, args.soft_lr_scale

    optimizer = torch.optim.AdamW(param_groups(model, Rates), lr=args.lr, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    weights = stage3.balanced_weights(examples)
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = int(np.ceil(len(examples) / args.batch_size))
    keys = ("input_ids", "labels", "connectome_values")
    step, epochs = 0, []
    model.llm.train()
    for epoch in range(args.epochs):
        losses, t0 = [], time.perf_counter()
        for _ in range(steps_per_epoch):
            batch_rows = stage3.balanced_batch_rows(weights, args.batch_size, args.seed, step)
            step += 1
            for group in optimizer.param_groups:  # 10 warm-up steps, then constant
                group["lr"] = group["base_lr"] * min(1.0, step / 10)
            batch = model.processor.pad(
                [{k: examples[i][k] for k in keys if k in examples[i]} for i in batch_rows]
            )
            out = model(**batch, loss_reduction="example")
            optimizer.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            losses.append(float(out.loss.detach()))
        train_s = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "train_s": round(train_s)}
        record["val_auc"], record["test_auc"] = auc(val_rows), auc(test_rows)
        record["val_ratio_to_fc"] = record["val_auc"] / baseline["val"]
        record["test_ratio_to_fc"] = record["test_auc"] / baseline["test"]
        epochs.append(record)
        print(
            f"epoch {epoch + 1}: loss {record['loss']:.3f} ({train_s:.0f} s) | AUC val {record['val_auc']:.3f} "
            f"(FC {baseline['val']:.3f}) test {record['test_auc']:.3f} (FC {baseline['test']:.3f})",
            flush=True,
        )
    return {
        "settings": {k: v for k, v in vars(args).items()},
        "summary": summary,
        "val_sites": val_sites,
        "n": {"fit": len(fit_rows), "val": len(val_rows), "test": len(test_rows), "examples": len(examples)},
        "tokens_per_example": len(examples[0]["input_ids"]),
        "encode_s": round(encode_s),
        "fc_logistic_auc": baseline,
        "epochs": epochs,
    }


if __name__ == "__main__":
    raise SystemExit(main())
