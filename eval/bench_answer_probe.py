"""Where a tuned model's answer parts from the linear probe planted in its scan summary.

    python -m fmrilm.eval.bench_answer_probe --model TUNED_MODEL --instructions SET [--tasks diagnosis]
        [--seed 0] [--threads 2] [--json OUT] [--plot OUT.png]

`train instruct --probe-init` (`train.probe_init`) plants a logistic probe of the scan summary's components in
the start marker's projection, and Stage 3 then tunes the LLM to answer. This refits that probe exactly as Stage
3 fitted it (the instruction set's training rows, the same seed; its logits spread by ``PROBE_LOGIT_SD`` over the
training scans) and sets it beside the tuned model's scored answers on the set's held-out (test-part) scans:

- **the probe on three kinds of scans**: AUC and logit SD on the training scans it was fitted on (what Stage 3
  trains the LLM with), out of fold on them (site-grouped inner folds, the same folds that chose its C: how the
  probe reads sites it did not see) and on the held-out scans. A probe whose training-scan AUC is far above the
  other two hands Stage 3 answers it cannot keep on new sites;
- **the answer**: its held-out AUC and its Spearman rank agreement with the probe (1: the answer ranks the
  held-out scans as the probe does, so the probe's AUC is its ceiling through this route);
- **by probe decile**: the answer's log-odds (``log p(second option) - log p(first)``, the margin `predict`
  reads) over the held-out scans in each tenth of the probe's logits: a mapping that is not monotone, or that
  spreads widely within a decile, is where the ranking is lost. ``--plot`` draws the same as a scatter;
- **the start marker**: the norm of the offset the summary adds to the start marker's embedding (median over
  training and over held-out scans) against the norm of that embedding itself. The LLM's first layer reads the
  marker through an RMSNorm, which divides by the vector's size: where the offset is many times the embedding,
  only its direction survives, so the answer can read the planted logit's sign but not how far it is from zero
  (a step). The calibrated warm start's offsets were 15 times the embedding on the validation fold's training
  scans, the first-order step's 1.3 times (BENCHMARKS.md, "The start marker reads the planted probe's sign").

Only training rows feed the probe; held-out scans are only scored. Two-answer tasks only (a regression's warm
start is a ridge probe with no AUC to compare).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import nonnegative_int, positive_int

#: held-out scans per decile below which the decile table is left out (its rows would be noise)
MIN_SCANS_PER_DECILE = 3
#: the summary's offset at the start marker, over training scans, this many times the marker's embedding: the
#: printed table warns that the first layer reads little but its direction (calibrated warm start: 15 times)
SATURATING_RATIO = 4.0


def probe_readings(card: Any, train_rows: Any, codes: Any, k: int, seed: int) -> dict[str, Any] | None:
    """The warm start's probe for ``card`` refitted on ``train_rows`` as Stage 3 fits it, with its scaled
    logits on those scans in sample and out of fold; None when Stage 3 would not have fitted one either."""
    from fmrilm.train.probe_init import fitted_probe, probe_data

    data = probe_data(card, [(train_rows, codes)], k)
    probe = None if data is None else fitted_probe(card, *data, seed=seed)
    if probe is None:
        return None
    _, X, y, groups = data
    in_sample, out_of_fold = planted_logits(probe, X, y.astype(int), groups, seed)
    return {"probe": probe, "y": y.astype(int), "in_sample": in_sample, "out_of_fold": out_of_fold}


def planted_logits(
    probe: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A planted probe's logits on its own training scans, in sample (what Stage 3 trains the LLM with) and
    out of fold (each scan read by the probe refitted without its inner fold: how it reads unseen sites), both
    on the planted scale (the warm start rescales the weights and drops the intercept)."""
    from fmrilm.train.probe_init import probe_logits

    oof, refit, intercept = probe_logits(X, y, groups, probe.C, seed)
    in_sample = X @ probe.weights
    scale = float(np.std(in_sample)) / max(float(np.std(refit)), 1e-12)
    return in_sample, scale * (oof - intercept)


def deciles(probe: np.ndarray, log_odds: np.ndarray, positive: np.ndarray) -> list[dict[str, float]]:
    """Held-out scans by tenth of the probe's logit: the probe's and the answer's mean, the answer's SD and
    range, and the share of scans whose label is the second option."""
    if len(probe) < 10 * MIN_SCANS_PER_DECILE:
        return []
    order = np.argsort(probe, kind="stable")
    out = []
    for d, part in enumerate(np.array_split(order, 10)):
        out.append(
            {
                "decile": d + 1,
                "scans": len(part),
                "probe_mean": float(np.mean(probe[part])),
                "answer_mean": float(np.mean(log_odds[part])),
                "answer_sd": float(np.std(log_odds[part], ddof=1)),
                "answer_min": float(np.min(log_odds[part])),
                "answer_max": float(np.max(log_odds[part])),
                "second_option_share": float(np.mean(positive[part])),
            }
        )
    return out


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score)) if len(set(positive.tolist())) == 2 else float("nan")


def held_out_labels(
    card: Any, test_rows: Any, codes: Any, k: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The held-out scans' ids, summary components and answers (1: the second option), from the instruction
    set's test-part rows: a descriptor task's answer (modularity) is no cohort column, so the rows hold it."""
    from fmrilm.train.probe_init import probe_data

    data = probe_data(card, [(test_rows, codes)], k)
    if data is None:
        return [], np.zeros((0, k)), np.zeros(0, dtype=bool)
    chosen, X, y, _ = data
    return [str(r["scan_id"]) for r, _, _ in chosen], X, y.astype(bool)


def compare(card: Any, readings: dict[str, Any], held: tuple, frame: Any) -> dict[str, Any]:
    """One task's figures: the probe in sample, out of fold and held out; the answer held out; the deciles.
    ``held``: `held_out_labels`; ``frame``: the model's scored answers (`predict_cohort`) on those scans."""
    from scipy.stats import spearmanr

    from fmrilm.model.scoring import PROB_PREFIX

    probe = readings["probe"]
    ids, X, positive = held
    proba = frame.set_index("scan_id").loc[ids, [PROB_PREFIX + o for o in card.options]].to_numpy(float)
    proba = np.clip(proba, 1e-12, 1.0)
    log_odds = np.log(proba[:, 1]) - np.log(proba[:, 0])
    probe_logits = X @ probe.weights
    y = readings["y"].astype(bool)
    return {
        "options": list(card.options),
        "C": probe.C,
        "training_scans": len(y),
        "held_out_scans": len(ids),
        "probe": {
            "in_sample": {
                "auc": _auc(y, readings["in_sample"]),
                "logit_sd": float(np.std(readings["in_sample"])),
            },
            "out_of_fold": {
                "auc": _auc(y, readings["out_of_fold"]),
                "logit_sd": float(np.std(readings["out_of_fold"])),
            },
            "held_out": {"auc": _auc(positive, probe_logits), "logit_sd": float(np.std(probe_logits))},
        },
        "answer": {
            "auc": _auc(positive, log_odds),
            "agreement": float(spearmanr(log_odds, probe_logits).statistic)
            if np.std(log_odds) > 0
            else float("nan"),
        },
        "deciles": deciles(probe_logits, log_odds, positive),
        "points": {
            "probe": probe_logits.tolist(),
            "answer": log_odds.tolist(),
            "second_option": positive.tolist(),
        },
    }


def marker_offsets(model: Any, codes: Any, scan_ids: list[str]) -> dict[str, float]:
    """The norm of the summary's offset at the start marker (`SoftBrainProjection.summary` of a scan's first
    components: what `FmriLM.embed_inputs` adds there), median over ``scan_ids``, and the marker embedding's
    own norm."""
    import torch
    from fmrilm.train.probe_init import summary_components

    projection = model.soft_projection
    k = projection.summary_components
    weight = projection.summary.weight
    X = np.stack([summary_components(codes.connectome[s].values, k) for s in scan_ids])
    with torch.no_grad():
        offsets = projection.summary(torch.as_tensor(X, dtype=weight.dtype, device=weight.device))
        marker = model.llm.get_input_embeddings().weight[model.processor.ids.start_id]
    return {
        "offset_norm": float(np.median(offsets.float().norm(dim=1).cpu().numpy())),
        "embedding_norm": float(marker.float().norm()),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from fmrilm.eval.bench_warm_start import split_parts
    from fmrilm.train.probe_init import two_answer_tasks
    from fmrilm.train.stage3 import TEST_PART, VAL_PART, encode_scans, load_sources, task_cards

    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.scoring import predict_cohort, resolve_task

    source = load_sources([args.instructions])[0]
    model = FmriLM.from_pretrained(args.model)
    projection = model.soft_projection
    if projection is None or projection.summary is None:
        raise SystemExit(
            f"{args.model}: the model has no scan summary, so no probe was planted in it; "
            "this compares models trained with `fmrilm train instruct --probe-init`"
        )
    cards = {c.name: c for c in two_answer_tasks(task_cards([source]))}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in cards]
    if unknown:
        raise SystemExit(
            f"unknown or not two-answer task(s) {unknown}: the instruction set's are {sorted(cards)}"
        )
    ds = source.dataset
    parts = split_parts(source)
    train_rows = ds.select([i for i, p in enumerate(parts) if p not in (TEST_PART, VAL_PART)])
    test_rows = ds.select([i for i, p in enumerate(parts) if p == TEST_PART])
    scan_ids = {str(s) for s in train_rows["scan_id"]} | {str(s) for s in test_rows["scan_id"]}
    codes = encode_scans(source.cohort, model.processor.fmri_tokenizer, scan_ids, windows=False)
    k = projection.summary_components
    row_of = {str(s): i for i, s in enumerate(source.cohort.dataset["scan_id"])}
    model.llm.eval()
    results = {}
    for name in tasks:
        readings = probe_readings(cards[name], train_rows, codes, k, args.seed)
        held = held_out_labels(cards[name], test_rows, codes, k)
        if readings is None or len(held[0]) == 0:
            raise SystemExit(f"{name}: too few labelled training or held-out scans to compare with a probe")
        rows = [row_of[s] for s in held[0]]
        frame = predict_cohort(model, source.cohort, resolve_task(model, name), rows, progress=True)
        results[name] = compare(cards[name], readings, held, frame)
    training = marker_offsets(model, codes, sorted({str(s) for s in train_rows["scan_id"]}))
    held_out = marker_offsets(model, codes, sorted({str(s) for s in test_rows["scan_id"]}))
    return {
        "model": str(args.model),
        "instructions": str(args.instructions),
        "seed": args.seed,
        "tasks": results,
        "start_marker": {
            "embedding_norm": training["embedding_norm"],
            "offset_norm": {"training": training["offset_norm"], "held_out": held_out["offset_norm"]},
        },
    }


def table(report: dict[str, Any]) -> str:
    """The report as markdown: one summary row per task, then each task's deciles."""
    lines = [
        "| task | probe AUC: training scans / out of fold / held out | probe logit SD: same | answer AUC "
        "held out | agreement (answer ~ probe, held out) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["tasks"].items():
        p = r["probe"]
        aucs = " / ".join(f"{p[s]['auc']:.3f}" for s in ("in_sample", "out_of_fold", "held_out"))
        sds = " / ".join(f"{p[s]['logit_sd']:.2f}" for s in ("in_sample", "out_of_fold", "held_out"))
        lines.append(
            f"| {name} | {aucs} | {sds} | {r['answer']['auc']:.3f} | {r['answer']['agreement']:.2f} |"
        )
    marker = report.get("start_marker")
    if marker:
        norm, offsets = marker["embedding_norm"], marker["offset_norm"]
        lines += [
            "",
            f"start marker: its embedding's norm {norm:.2f}; the summary's offset there (median) "
            + ", ".join(
                f"{offsets[s]:.2f} ({offsets[s] / max(norm, 1e-12):.1f}x) over {label} scans"
                for s, label in (("training", "training"), ("held_out", "held-out"))
            )
            + (
                " (many times the embedding: the first layer's RMSNorm keeps little but the offset's direction)"
                if offsets["training"] >= SATURATING_RATIO * norm
                else ""
            ),
        ]
    for name, r in report["tasks"].items():
        if not r["deciles"]:
            continue
        second = r["options"][1]
        lines += [
            "",
            f"{name}, held-out scans by decile of the probe's logit (the answer's log-odds of '{second}'):",
            "",
            f"| decile | scans | probe mean | answer mean | answer SD | answer min / max | share '{second}' |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for d in r["deciles"]:
            lines.append(
                f"| {d['decile']} | {d['scans']} | {d['probe_mean']:.2f} | {d['answer_mean']:.2f} | "
                f"{d['answer_sd']:.2f} | {d['answer_min']:.1f} / {d['answer_max']:.1f} | "
                f"{d['second_option_share']:.2f} |"
            )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str | Path) -> None:
    """One panel per task: each held-out scan's answer log-odds against the probe's logit, by its label."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"].items())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], tasks, strict=True):
        pts = r["points"]
        probe, answer, second = (np.asarray(pts[k]) for k in ("probe", "answer", "second_option"))
        for mask, label in ((~second, r["options"][0]), (second, r["options"][1])):
            ax.scatter(probe[mask], answer[mask], s=12, alpha=0.7, label=label)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("planted probe's logit")
        ax.set_ylabel(f"answer log-odds of '{r['options'][1]}'")
        ax.set_title(f"{name}: agreement {r['answer']['agreement']:.2f}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmrilm.eval.bench_answer_probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="a model tuned by `train instruct --probe-init`")
    parser.add_argument("--instructions", required=True, help="the instruction set its Stage 3 trained on")
    parser.add_argument(
        "--tasks", default="diagnosis", help="two-answer tasks to compare (default diagnosis)"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="Stage 3's --seed (the probe's folds)"
    )
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--plot", default=None, help="draw the answer against the probe here (PNG)")
    args = parser.parse_args(argv)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path and not Path(path).parent.is_dir():
            parser.error(f"{option} {path}: its folder does not exist; create it or give another path")

    from fmrilm.train.common import torch_threads

    from fmrilm.logs import library_warnings, no_library_progress_bars

    with torch_threads(args.threads), no_library_progress_bars(), library_warnings(verbose=False):
        report = measure(args)
    print(table(report))
    if args.json:
        path = Path(args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=float))
        tmp.replace(path)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
