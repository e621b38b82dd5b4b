"""Where Stage 3 starts: held-out answers of the Stage-2 model, of the probe warm start, and of the probes.

    python -m fmrilm.eval.bench_warm_start --model STAGE2_MODEL --instructions SET [--tasks diagnosis,sex,age]
        [--rounds 0,2] [--seed 0] [--max-windows 0] [--connectome-shown 1] [--system-prompt ''] [--threads 2]
        [--gradient-speed] [--repeats 2] [--json OUT]

`train instruct --probe-init` (`train.probe_init`) moves the scan summary's projection so that the LLM's
answers start from a linear reading of the scan. This scores that start before any tuning step, on the
instruction set's held-out (test-part) scans, with the same scored answers `fmrilm eval` reads (answer
probabilities; a regression's expectation over its bins), for:

- ``stage2``: the model as Stage 2 left it (the processor set as Stage 3 sets it);
- ``warm start, R rounds``: after `warm_start_summary` with ``R`` calibration rounds (0: the first-order step
  alone; the package's default is ``CALIBRATION_ROUNDS``);
- ``probe``: the probes themselves on the same scans (logistic: AUC of its logit; ridge: Pearson r of its
  prediction, which has no intercept, so no MAE): what the warm start aims at.

Per task: balanced accuracy and AUC (two answers) or MAE and Pearson r (a regression). Training rows only feed
the probes; the held-out scans are only scored. The processor settings default to the `cpu` / `full` presets'.

``--gradient-speed`` also times the warm start's margin gradient (`train.probe_init.margin_gradient`) on each
task's ``GRADIENT_PROMPTS`` training prompts, all together as Stage 3 runs it and one prompt at a time,
interleaved in this process (``--repeats`` each, the median kept), with the largest difference between the two
gradients relative to the largest component.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import nonnegative_int, positive_int


def split_parts(source: Any) -> list[Any]:
    """Each instruction row's part (train / val / test); a set without a split is refused by name."""
    ds = source.dataset
    if "split" not in ds.column_names:
        raise SystemExit(
            f"{source.directory}: the instruction set has no split column, so no held-out scans to score; "
            "build it with `fmrilm instructions build ... --split NAME`"
        )
    return ds["split"]


def held_out(source: Any) -> list[int]:
    """Cohort rows of the scans whose instruction rows are in the test part (never used by the warm start)."""
    from fmrilm.train.stage3 import TEST_PART

    ds = source.dataset
    parts = split_parts(source)
    test = {str(s) for s, p in zip(ds["scan_id"], parts, strict=True) if p == TEST_PART}
    ids = [str(s) for s in source.cohort.dataset["scan_id"]]
    return [i for i, s in enumerate(ids) if s in test]


def score(model: Any, cohort: Any, card: Any, rows: list[int]) -> dict[str, float]:
    """The task's held-out metrics from the model's scored answers (what `fmrilm eval` computes)."""
    from fmrilm.eval.metrics import classification_metrics, regression_metrics

    from fmrilm.model.scoring import PROB_PREFIX, predict_cohort

    frame = predict_cohort(model, cohort, card, rows)
    frame = frame[frame["label"].notna()]
    if card.type == "regression":
        out = regression_metrics(frame["label"].astype(float), frame["prediction"].astype(float))
        return {"mae": out["mae"], "pearson_r": out["pearson_r"]}
    proba = frame[[PROB_PREFIX + o for o in card.options]].to_numpy()
    out = classification_metrics(frame["label"], proba, card.options)
    return {"balanced_accuracy": out["balanced_accuracy"], "auc": out["auc"]}


def probe_scores(probes: list[Any], cohort: Any, codes: Any, cards: dict[str, Any], rows: list[int], k: int):
    """Each probe's own held-out score: AUC of its logit, or Pearson r of its (intercept-free) prediction."""
    from fmrilm.train.probe_init import summary_components
    from scipy.stats import pearsonr
    from sklearn.metrics import roc_auc_score

    table = cohort.phenotype_table()
    out = {}
    for probe in probes:
        card = cards.get(probe.name)
        if card is None or card.target not in table.columns:
            continue
        labels, values = [], []
        for i in rows:
            label = card.label_of(table.iloc[i][card.target])
            sid = str(table.iloc[i]["scan_id"])
            if label is None or sid not in codes.connectome:
                continue
            labels.append(label)
            values.append(float(summary_components(codes.connectome[sid].values, k) @ probe.weights))
        if len(set(map(str, labels))) < 2:
            continue
        if probe.values is None:
            out[probe.name] = {"auc": float(roc_auc_score(np.asarray(labels) == card.options[1], values))}
        else:
            out[probe.name] = {"pearson_r": float(pearsonr(np.asarray(labels, float), values).statistic)}
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from fmrilm.train.probe_init import warm_start_summary
    from fmrilm.train.stage3 import (
        TEST_PART,
        VAL_PART,
        InstructConfig,
        encode_scans,
        load_sources,
        load_trainable_model,
        task_cards,
    )

    sources = load_sources([args.instructions])
    source = sources[0]
    cards = {c.name: c for c in task_cards(sources)}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in cards]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}: the instruction set has {sorted(cards)}")
    columns = set(source.cohort.phenotype_table().columns)
    unlabelled = [t for t in tasks if cards[t].target not in columns]
    if unlabelled:
        scored = sorted(t for t, c in cards.items() if c.target in columns)
        raise SystemExit(
            f"task(s) {unlabelled} have no column in the cohort to score held-out answers against (their answers "
            f"come from the scans' descriptors); pass --tasks from {scored}"
        )
    model = load_trainable_model(args.model, InstructConfig().lora, False, args.seed)
    config = model.processor.config
    config.max_windows, config.connectome_shown = int(args.max_windows), int(args.connectome_shown)
    config.system_prompt = str(args.system_prompt)
    model.llm.eval()
    ds = source.dataset
    parts = ds["split"] if "split" in ds.column_names else [None] * len(ds)
    train_rows = ds.select([i for i, p in enumerate(parts) if p not in (TEST_PART, VAL_PART)])
    test_rows = held_out(source)
    scan_ids = {str(s) for s in train_rows["scan_id"]} | {
        str(source.cohort.dataset["scan_id"][i]) for i in test_rows
    }
    codes = encode_scans(source.cohort, model.processor.fmri_tokenizer, scan_ids, windows=False)
    k = model.soft_projection.summary_components

    results: dict[str, Any] = {"stage2": {t: score(model, source.cohort, cards[t], test_rows) for t in tasks}}
    probes: list[Any] = []
    for rounds in [int(r) for r in args.rounds.split(",")]:
        start = time.perf_counter()
        warm = copy.deepcopy(model)
        probes = warm_start_summary(
            warm, [(train_rows, codes)], list(cards.values()), seed=args.seed, rounds=rounds
        )
        seconds = time.perf_counter() - start
        warm.llm.eval()
        results[f"warm start, {rounds} rounds"] = {
            **{t: score(warm, source.cohort, cards[t], test_rows) for t in tasks},
            "probes": [p.summary() for p in probes],
            "seconds": seconds,
        }
    results["probe"] = probe_scores(probes, source.cohort, codes, cards, test_rows, k)
    report = {"held_out_scans": len(test_rows), "tasks": tasks, "results": results}
    if args.gradient_speed:
        chosen = [cards[t] for t in tasks]
        report["gradient_speed"] = gradient_speed(model, train_rows, codes, chosen, args.seed, args.repeats)
    return report


def gradient_speed(
    model: Any, train_rows: Any, codes: Any, cards: list[Any], seed: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Per task, seconds of the margin gradient over its warm-start prompts run together and one prompt at a
    time (median of ``repeats``, interleaved), their ratio, and how far the two gradients differ."""
    from fmrilm.train.probe_init import (
        GRADIENT_PROMPTS,
        bin_values_of,
        binned_regressions,
        margin_gradient,
        probe_data,
        two_answer_tasks,
    )
    from fmrilm.train.stage3 import resolve_messages

    k = model.soft_projection.summary_components
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for card in [*two_answer_tasks(cards), *binned_regressions(cards)]:
        data = probe_data(card, [(train_rows, codes)], k)
        if data is None:
            continue
        chosen = data[0]
        messages = [resolve_messages(r["messages"], c) for r, c, _ in chosen]
        prompts = [messages[i] for i in rng.permutation(len(chosen))[:GRADIENT_PROMPTS]]
        values = bin_values_of(card)
        together, alone = [], []
        for _ in range(max(1, int(repeats))):
            start = time.perf_counter()
            joint = margin_gradient(model, prompts, card.options, values)
            together.append(time.perf_counter() - start)
            start = time.perf_counter()
            single = np.mean([margin_gradient(model, [m], card.options, values) for m in prompts], axis=0)
            alone.append(time.perf_counter() - start)
        out[card.name] = {
            "prompts": len(prompts),
            "together_s": float(np.median(together)),
            "one_at_a_time_s": float(np.median(alone)),
            "speedup": float(np.median(alone) / np.median(together)),
            "max_relative_difference": float(np.abs(joint - single).max() / np.abs(single).max()),
        }
    return out


def table(report: dict[str, Any]) -> str:
    tasks = report["tasks"]
    lines = [
        "| start | " + " | ".join(tasks) + " |",
        "| --- | " + " | ".join("---:" for _ in tasks) + " |",
    ]
    for name, row in report["results"].items():
        cells = []
        for t in tasks:
            m = row.get(t)
            if not m:
                cells.append("")
            elif "auc" in m and "balanced_accuracy" in m:
                cells.append(f"BA {m['balanced_accuracy']:.3f} / AUC {m['auc']:.3f}")
            elif "mae" in m:
                cells.append(f"MAE {m['mae']:.2f} / r {m['pearson_r']:.2f}")
            else:
                cells.append(" / ".join(f"{k} {v:.3f}" for k, v in m.items()))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmrilm.eval.bench_warm_start", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="a Stage-2 model folder (what Stage 3 starts from)")
    parser.add_argument("--instructions", required=True, help="the instruction set Stage 3 trains on")
    parser.add_argument("--tasks", default="diagnosis", help="tasks to score (default diagnosis)")
    parser.add_argument("--rounds", default="0,2", help="calibration rounds to compare (default 0,2)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--max-windows", type=nonnegative_int, default=0)
    parser.add_argument("--connectome-shown", type=nonnegative_int, default=1)
    parser.add_argument("--system-prompt", default="")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument(
        "--gradient-speed",
        action="store_true",
        help="also time the warm start's margin gradient, prompts together against one at a time",
    )
    parser.add_argument("--repeats", type=positive_int, default=2, help="timings of each way (default 2)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        rounds = [int(r) for r in args.rounds.split(",")]
    except ValueError:
        parser.error(f"--rounds must be whole numbers separated by commas, got {args.rounds!r}")
    if not rounds or min(rounds) < 0:
        parser.error(f"--rounds must be whole numbers >= 0, got {args.rounds!r}")

    from fmrilm.train.common import torch_threads

    from fmrilm.logs import library_warnings, no_library_progress_bars

    with torch_threads(args.threads), no_library_progress_bars(), library_warnings(verbose=False):
        report = measure(args)
    print(f"Held-out scans: {report['held_out_scans']}")
    print(table(report))
    for task, t in report.get("gradient_speed", {}).items():
        print(
            f"margin gradient, {task} ({t['prompts']} prompts): together {t['together_s']:.2f} s, one at a "
            f"time {t['one_at_a_time_s']:.2f} s ({t['speedup']:.2f}x); largest difference "
            f"{t['max_relative_difference']:.1e} of the largest component"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
