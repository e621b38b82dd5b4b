"""How a regression answer is read: the bins' expectation against other readers of the same answer.

    python -m fmrilm.eval.bench_regression_readers --model MODEL --cohort COHORT --split SPLIT
        [--task age] [--threads 2] [--json OUT]

`fmrilm eval` reads a regression task (age) as the expectation of its bin values under the answer's
probabilities over the bins. Stage 3 trains on the whole-number answer itself ("12"), which is no bin
value, so other readers of the same model could be closer to what it learned. This scores the split's test
scans once over the bins and once over every whole number from the first to the last bin value (each a full
answer, as the bins are) and prints, for each reader, MAE, Pearson r and the predictions' mean and SD next
to the truth's:

- ``bins: expectation``: what `fmrilm eval` reports;
- ``bins: median``: the median of the bin probabilities, uniform inside each bin's edges;
- ``bins: most probable``: the value of the most probable bin;
- ``whole numbers: expectation`` and ``whole numbers: median``: the same over the whole numbers.

``SPLIT`` is the split file `fmrilm eval` writes (``OUT/split.json``), a split stored in the cohort or a
split kind `fmrilm eval --split` takes; only its test part is scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import positive_int

#: A whole-number reader scores at most this many answers (each one more continuation per scan).
MAX_WHOLE_NUMBERS = 150


def whole_number_card(card: Any) -> Any:
    """The card scoring every whole number from the first to the last bin value as its own answer."""
    from fmrilm.errors import FmriInputError

    values = card.bin_values()
    lo, hi = int(np.ceil(min(values))), int(np.floor(max(values)))
    if int((card.number or {}).get("decimals", 0)) != 0 or not 1 <= hi - lo < MAX_WHOLE_NUMBERS:
        raise FmriInputError(
            f"Task '{card.name}' has no whole-number reader: its answers have decimals or span "
            f"{lo}-{hi} (at most {MAX_WHOLE_NUMBERS} whole numbers)",
            fix="compare readers on a whole-number task such as age",
        )
    numbers = list(range(lo, hi + 1))
    number = {**card.number, "bins": None, "bin_values": [float(v) for v in numbers]}
    return dataclasses.replace(card, options=[str(v) for v in numbers], number=number)


def median_of(probs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Medians of rows of bin probabilities, each bin's mass spread evenly between its edges."""
    cdf = np.cumsum(probs, axis=1)
    k = np.minimum((cdf < 0.5).sum(axis=1), probs.shape[1] - 1)
    below = np.where(k > 0, cdf[np.arange(len(k)), k - 1], 0.0)
    inside = (0.5 - below) / np.maximum(probs[np.arange(len(k)), k], 1e-12)
    return edges[k] + np.clip(inside, 0.0, 1.0) * (edges[k + 1] - edges[k])


def edges_around(values: np.ndarray) -> np.ndarray:
    """Edges of bins centred on sorted ``values``: midway between neighbours, and as far out at either end
    (half a step either side of consecutive whole numbers)."""
    mids = (values[1:] + values[:-1]) / 2.0
    return np.concatenate([[2 * values[0] - mids[0]], mids, [2 * values[-1] - mids[-1]]])


def readers(bins_probs: np.ndarray, card: Any, whole_probs: np.ndarray, whole: Any) -> dict[str, np.ndarray]:
    """Each reader's predictions from the two probability tables (see the module docstring)."""
    values = np.asarray(card.bin_values(), dtype=float)
    edges = np.asarray((card.number or {}).get("bins") or [], dtype=float)
    if len(edges) != len(values) + 1:
        edges = edges_around(values)
    numbers = np.asarray(whole.bin_values(), dtype=float)
    return {
        "bins: expectation": bins_probs @ values,
        "bins: median": median_of(bins_probs, edges),
        "bins: most probable": values[bins_probs.argmax(axis=1)],
        "whole numbers: expectation": whole_probs @ numbers,
        "whole numbers: median": median_of(whole_probs, edges_around(numbers)),
    }


def run(model_dir: str, cohort_dir: str, split: str, task: str = "age") -> dict[str, Any]:
    """Score the test part's scans over the bins and over the whole numbers; every reader's figures."""
    from fmrilm.eval.evaluate import EvalConfig, load_eval_task, resolve_eval_split
    from fmrilm.eval.metrics import regression_metrics

    from fmrilm import FmriLM
    from fmrilm.cohort import load_cohort
    from fmrilm.errors import FmriInputError
    from fmrilm.model.scoring import score_options
    from fmrilm.progress import progress

    model = FmriLM.from_pretrained(model_dir)
    cohort = load_cohort(cohort_dir)
    table = cohort.phenotype_table()
    card = load_eval_task(task, table, cohort_dir)[2]  # the card `fmrilm eval` scores
    if card.type != "regression":
        raise FmriInputError(
            f"Task '{task}' is {card.type}, not a regression", fix="pass a regression task such as age"
        )
    whole = whole_number_card(card)
    config = EvalConfig(model=str(model_dir), cohort=str(cohort_dir), task=task, out="", split=str(split))
    parts, how = resolve_eval_split(config, cohort, card.target or task)
    labels = {i: card.label_of(table[card.target].iloc[i]) for i in parts["test"]}
    rows = [i for i, label in labels.items() if label is not None]
    if len(rows) < 2:
        raise FmriInputError(
            f"The split's test part has {len(rows)} scan(s) with a '{card.target}' value, too few to score",
            file=cohort_dir,
            fix=f"use a split whose test part holds scans with '{card.target}'",
        )
    truth = np.asarray([float(labels[i]) for i in rows])
    bins_probs, whole_probs = [], []
    for start in progress(range(0, len(rows), 8), desc=f"scoring {task}", unit="batch"):
        scans = [cohort.scan(i) for i in rows[start : start + 8]]
        bins_probs.append(score_options(model, scans, card))
        whole_probs.append(score_options(model, scans, whole))
    predictions = readers(np.concatenate(bins_probs), card, np.concatenate(whole_probs), whole)
    results = {
        name: {
            **{k: v for k, v in regression_metrics(truth, p).items() if k in ("mae", "pearson_r")},
            "mean": float(p.mean()),
            "sd": float(p.std()),
        }
        for name, p in predictions.items()
    }
    return {
        "model": str(model_dir),
        "task": task,
        "split": how,
        "test_scans": len(rows),
        "truth": {"mean": float(truth.mean()), "sd": float(truth.std())},
        "whole_numbers": [whole.options[0], whole.options[-1]],
        "results": results,
    }


def table_of(report: dict[str, Any]) -> str:
    truth = report["truth"]
    lines = [
        f"{report['task']} on {report['test_scans']} test scans (truth: mean {truth['mean']:.1f}, "
        f"SD {truth['sd']:.1f}); whole numbers {report['whole_numbers'][0]}-{report['whole_numbers'][1]}",
        "",
        "| reader | MAE | Pearson r | prediction mean | SD |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['mae']:.2f} | {r['pearson_r']:.3f} | {r['mean']:.1f} | {r['sd']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from fmrilm.errors import FmriInputError

    parser = argparse.ArgumentParser(
        prog="python -m fmrilm.eval.bench_regression_readers", description=__doc__
    )
    parser.add_argument("--model", required=True, help="a saved FmriLM folder")
    parser.add_argument("--cohort", required=True, help="the cohort folder the split indexes")
    parser.add_argument("--split", required=True, help="fmrilm eval's split.json, a stored split, or a kind")
    parser.add_argument("--task", default="age", help="a regression phenotype task (default: age)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        report = run(args.model, args.cohort, args.split, args.task)
    except FmriInputError as err:  # one clear sentence, no traceback
        raise SystemExit(str(err)) from None
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(table_of(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
