"""Evaluation results and the report they are written to: JSON for machines, Markdown + PNG plots for people.

Every method — a baseline, the model zero-shot, the model after k-shot fine-tuning with some seed — hands
back a :class:`MethodResult` with its raw predictions on the same split part; metrics and confidence intervals
are computed here the same way for all of them, so no method is scored differently from another.
Plots (matplotlib, Agg backend, no display needed): ROC curves, calibration curves, confusion matrices and
few-shot curves with over-seed confidence intervals.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fmrilm.eval.metrics import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    classification_metrics,
    evaluate,
    paired_difference,
    regression_metrics,
    seed_ci,
)

#: The headline metric of each task type (few-shot curves, summary lines).
MAIN_METRIC = {"binary": "balanced_accuracy", "multiclass": "balanced_accuracy", "regression": "mae"}

#: Which test subjects a result was scored on (`MethodResult.protocol`), in the words the reports use.
WHOLE_TEST = "whole-test-part"
FROM_TEST = "few-shot-from-test"
PROTOCOLS = {
    WHOLE_TEST: "every method scored on the whole test part (few-shot subjects, if any, drawn from the train "
    "part)",
    FROM_TEST: "few-shot from the test sites: k subjects per class drawn from the test part, scored on the rest "
    "(per seed, every method on the same remaining test subjects)",
}
#: Short headings of the protocols (summary sections, plot legends).
PROTOCOL_TITLES = {WHOLE_TEST: "Whole test part", FROM_TEST: "Few-shot from the test sites"}
#: The linear readers a model's answers are ranked against (`agreement`): Fisher-z FC, tangent FC, and the
#: same linear model on the model's own input (its connectome values or codes), each fitted on the training part.
AGREEMENT_READERS = ("fc_linear", "tangent_linear", "code_probe")
#: The baselines every model run is compared with on the same test subjects (`versus`): the classic
#: connectivity readers, and FC + logistic regression fitted on the same few-shot subjects.
VERSUS_REFERENCES = ("fc_linear", "tangent_linear", "fc_linear_few_shot")
#: The metrics `versus` shows in report.md, by task type (report.json has them all).
VERSUS_SHOWN = {"regression": ("mae", "pearson_r"), "binary": ("balanced_accuracy", "auc")}


def by_protocol(results: list[MethodResult]) -> dict[str, list[MethodResult]]:
    """The results grouped by protocol, in the order of `PROTOCOLS` (unknown names last): numbers of different
    protocols are scored on different test subjects and are never averaged together."""
    groups: dict[str, list[MethodResult]] = defaultdict(list)
    for r in results:
        groups[r.protocol].append(r)
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    return dict(sorted(groups.items(), key=lambda kv: order.get(kv[0], len(order))))


def sites_of(table: Any, rows: Any) -> list[str] | None:
    """The acquisition site of each of ``rows`` of a cohort's phenotype table (None without a site column)."""
    if "site" not in getattr(table, "columns", ()):
        return None
    return table["site"].fillna("").astype(str).to_numpy()[rows].tolist()


@dataclass
class MethodResult:
    """One method's predictions for one task on one split part (and, for few-shot runs, one k and seed).

    ``y_score`` is ``(n, len(classes))`` class probabilities (classification); ``y_pred`` the predicted class
    or number. For binary tasks ``classes[1]`` is the positive class (ROC, F1). ``subject_ids`` lets the
    bootstrap resample whole subjects. ``protocol`` says which test subjects were scored (`PROTOCOLS`): the
    whole test part, or, for few-shot draws from the test part, the test subjects left by the draw of
    ``shots`` and ``seed``.
    """

    method: str
    task: str
    task_type: str
    y_true: list[Any]
    y_pred: list[Any]
    y_score: np.ndarray | None = None
    classes: list[Any] | None = None
    part: str = "test"
    subject_ids: list[str] | None = None
    shots: int | None = None
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    protocol: str = WHOLE_TEST
    #: each test subject's acquisition site ("" unknown): the report's by-site table
    sites: list[str] | None = None

    @classmethod
    def pooled(cls, runs: list[MethodResult]) -> MethodResult:
        """One result from the same method's runs on disjoint test parts (e.g. leave-sites-out folds).

        Predictions are concatenated, so the pooled metrics score every out-of-fold prediction at once;
        ``info["folds"]`` says how many runs were pooled. Call :meth:`score` on the result.
        """
        first = runs[0]
        return cls(
            method=first.method,
            task=first.task,
            task_type=first.task_type,
            y_true=[y for r in runs for y in r.y_true],
            y_pred=[y for r in runs for y in r.y_pred],
            y_score=None if first.y_score is None else np.concatenate([r.y_score for r in runs]),
            classes=first.classes,
            subject_ids=[s for r in runs for s in (r.subject_ids or [])] or None,
            shots=first.shots,
            seed=first.seed,
            info={"folds": len(runs)},
            protocol=first.protocol,
            sites=[s for r in runs for s in (r.sites or [""] * r.n)] if any(r.sites for r in runs) else None,
        )

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> MethodResult:
        """A result as :meth:`to_dict` wrote it with ``predictions=True`` (``report.json``'s ``results``),
        metrics included; a record without its predictions raises ``KeyError('y_true')``."""
        score = record.get("y_score")
        return cls(
            method=record["method"],
            task=record["task"],
            task_type=record["task_type"],
            y_true=list(record["y_true"]),
            y_pred=list(record["y_pred"]),
            y_score=None if score is None else np.asarray(score, dtype=float),
            classes=record.get("classes"),
            part=record.get("part", "test"),
            subject_ids=record.get("subject_ids"),
            shots=record.get("shots"),
            seed=record.get("seed"),
            info=dict(record.get("info") or {}),
            metrics=dict(record.get("metrics") or {}),
            protocol=record.get("protocol", WHOLE_TEST),
            sites=record.get("sites"),
        )

    @property
    def n(self) -> int:
        return len(self.y_true)

    def score(self, n_boot: int = 1000, seed: int = 0) -> MethodResult:
        """Fill :attr:`metrics` with every metric of the task type and its bootstrap interval."""
        self.metrics = evaluate(
            "regression" if self.task_type == "regression" else "classification",
            self.y_true,
            y_score=self.y_score,
            classes=self.classes,
            y_pred=self.y_pred,
            groups=self.subject_ids,
            n_boot=n_boot,
            seed=seed,
        )
        return self

    def to_dict(self, predictions: bool = False) -> dict[str, Any]:
        out = {
            "method": self.method,
            "task": self.task,
            "task_type": self.task_type,
            "part": self.part,
            "protocol": self.protocol,
            "shots": self.shots,
            "seed": self.seed,
            "n": self.n,
            "metrics": self.metrics,
            "info": self.info,
        }
        if predictions:
            out["y_true"] = _jsonable(self.y_true)
            out["y_pred"] = _jsonable(self.y_pred)
            out["classes"] = _jsonable(self.classes)
            # every digit: rounding a confident baseline's probabilities (1e-7 -> 0.0) ties scans and moved
            # an AUC recomputed from report.json by 0.002 (ABIDE FC, sex) away from the one reported
            out["y_score"] = None if self.y_score is None else np.asarray(self.y_score, dtype=float).tolist()
            out["subject_ids"] = self.subject_ids
            out["sites"] = self.sites
        by_site = self.by_site()
        if by_site:
            out["by_site"] = by_site
        return out

    def by_site(self) -> dict[str, dict[str, Any]]:
        """Point metrics of each test site with at least two subjects (``{site: {"n", metric: value}}``), for
        results whose subjects come from two sites or more; empty otherwise. A classification site whose
        subjects do not hold every answer (an all-male site, for sex) gets NaN metrics.

        Why: a pooled AUC over several unseen sites also scores how far each site's answers sit from the
        others' (a per-site offset), which the within-site rows separate from how each site's scans are ranked.
        """
        if not self.sites or len(self.sites) != self.n:
            return {}
        if self.task_type != "regression" and self.y_score is None:
            return {}
        sites = np.asarray(self.sites, dtype=object)
        names = [s for s in dict.fromkeys(self.sites) if s and int((sites == s).sum()) >= 2]
        if len(names) < 2:
            return {}
        out = {}
        for site in sorted(names):
            idx = np.flatnonzero(sites == site)
            y_true = [self.y_true[i] for i in idx]
            y_pred = [self.y_pred[i] for i in idx]
            if self.task_type == "regression":
                values = regression_metrics(y_true, y_pred)
            elif set(y_true) != set(self.classes):  # a site without every answer: nothing balanced to score
                values = dict.fromkeys(CLASSIFICATION_METRICS, float("nan"))
            else:
                values = classification_metrics(y_true, np.asarray(self.y_score)[idx], self.classes, y_pred)
            out[site] = {"n": len(idx), **values}
        return out


def aggregate_seeds(results: list[MethodResult]) -> dict[tuple[str, str, int | None], dict[str, Any]]:
    """Group runs by (task, method, shots) and give each metric's mean and Student-t interval over seeds.

    Give it the results of one protocol (`by_protocol`): runs of different protocols are not comparable.
    """
    groups: dict[tuple[str, str, int | None], list[MethodResult]] = defaultdict(list)
    for r in results:
        groups[(r.task, r.method, r.shots)].append(r)
    out = {}
    for key, runs in groups.items():
        names = REGRESSION_METRICS if runs[0].task_type == "regression" else CLASSIFICATION_METRICS
        out[key] = {
            "n_seeds": len(runs),
            "task_type": runs[0].task_type,
            **{
                m: dict(
                    zip(
                        ("mean", "low", "high"),
                        seed_ci([r.metrics[m]["value"] for r in runs], metric=m),
                        strict=False,
                    )
                )
                for m in names
            },
        }
    return out


# --------------------------------------------------------------------------------------------------- writing
def agreement(results: list[MethodResult]) -> list[dict[str, Any]]:
    """Spearman rank correlation of each model run's scores with each linear reader's (`AGREEMENT_READERS`) on
    the test subjects both scored in the same protocol: a two-answer task's probability of its second answer, a
    regression's value. Multi-class tasks and runs without subject ids are left out.

    Why: a model can trail a linear reader of its own input by reading less of it or by reading something else;
    the AUC alone does not say which. A correlation near 1 with ``code_probe`` says the answer follows that
    reading (so the reader's own figure is the ceiling to raise); a low one says the answer mixes in what the
    reader ignores (BENCHMARKS.md, "Where the tuned answer parts from its input's probe").
    """
    from scipy.stats import spearmanr

    def scores(r: MethodResult) -> dict[str, float] | None:
        if not r.subject_ids or len(r.subject_ids) != r.n:
            return None
        if r.task_type == "regression":
            values = np.asarray(r.y_pred, dtype=float)
        elif r.task_type == "binary" and r.y_score is not None:
            values = _positive_score(r)[1]
        else:
            return None
        return dict(zip(map(str, r.subject_ids), values.tolist(), strict=True))

    out = []
    for protocol, runs in by_protocol(results).items():
        readers = [r for r in runs if r.method in AGREEMENT_READERS and r.shots is None]
        for model in (r for r in runs if r.method.startswith("fmrilm_")):
            mine = scores(model)
            if mine is None:
                continue
            for reader in readers:
                theirs = scores(reader)
                if reader.task != model.task or theirs is None:
                    continue
                shared = [s for s in mine if s in theirs]
                a = np.asarray([mine[s] for s in shared])
                b = np.asarray([theirs[s] for s in shared])
                constant = len(shared) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0
                out.append(
                    {
                        "task": model.task, "protocol": protocol, "method": model.method,
                        "shots": model.shots, "seed": model.seed, "reader": reader.method,
                        "n": len(shared),
                        "spearman": float("nan") if constant else float(spearmanr(a, b)[0]),
                    }
                )  # fmt: skip
    return out


def _paired_rows(model: MethodResult, reference: MethodResult) -> tuple[list[int], list[int]] | None:
    """Row positions of ``model`` and ``reference`` that hold the same test subjects, in one order; None when
    the two were not scored on the same subjects (or a run has no subject ids)."""
    if not model.subject_ids or not reference.subject_ids:
        return None
    if len(model.subject_ids) != model.n or len(reference.subject_ids) != reference.n:
        return None
    if model.subject_ids == reference.subject_ids:
        return list(range(model.n)), list(range(model.n))

    def keyed(ids: list[str]) -> dict[tuple[str, int], int]:
        seen: dict[str, int] = defaultdict(int)
        out = {}
        for pos, sid in enumerate(map(str, ids)):
            out[(sid, seen[sid])] = pos  # several scans of one subject: matched in their order
            seen[sid] += 1
        return out

    mine, theirs = keyed(model.subject_ids), keyed(reference.subject_ids)
    if set(mine) != set(theirs):
        return None
    keys = list(mine)
    return [mine[k] for k in keys], [theirs[k] for k in keys]


def versus(results: list[MethodResult], n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Each model run's metrics minus each baseline's (`VERSUS_REFERENCES`) on the same test subjects, with a
    paired bootstrap interval (`fmrilm.eval.metrics.paired_difference`, whole subjects resampled).

    A model run (a method named ``fmrilm_*``) is compared with a baseline of the same task and protocol that
    was scored with the same shots and seed (few-shot draws), else with the baseline fitted once (no shots, no
    seed), and only where both scored exactly the same subjects.

    Why: the question a reader asks of a report is whether the model beats the connectivity baseline, and two
    overlapping intervals do not answer it; the paired difference does, with the share of resamples where the
    model is at least as good.
    """
    out = []
    for protocol, runs in by_protocol(results).items():
        for model in (r for r in runs if r.method.startswith("fmrilm_")):
            for name in VERSUS_REFERENCES:
                same = [r for r in runs if r.method == name and r.task == model.task]
                exact = [r for r in same if (r.shots, r.seed) == (model.shots, model.seed)]
                fitted_once = [r for r in same if r.shots is None and r.seed is None]
                if not (exact or fitted_once):
                    continue
                reference = (exact or fitted_once)[0]
                rows = _paired_rows(model, reference)
                if rows is None or len(rows[0]) < 3:
                    continue
                mine, theirs = rows
                if [model.y_true[i] for i in mine] != [reference.y_true[i] for i in theirs]:
                    continue  # the same subjects with other answers: not the same question
                if model.task_type == "regression":
                    a = {"y_pred": [model.y_pred[i] for i in mine]}
                    b = {"y_pred": [reference.y_pred[i] for i in theirs]}
                else:
                    if (
                        model.y_score is None
                        or reference.y_score is None
                        or model.classes != reference.classes
                    ):
                        continue
                    a = {
                        "y_score": np.asarray(model.y_score)[mine],
                        "y_pred": [model.y_pred[i] for i in mine],
                    }
                    b = {
                        "y_score": np.asarray(reference.y_score)[theirs],
                        "y_pred": [reference.y_pred[i] for i in theirs],
                    }
                diff = paired_difference(
                    model.task_type,
                    [model.y_true[i] for i in mine],
                    a,
                    b,
                    classes=model.classes,
                    groups=[model.subject_ids[i] for i in mine],
                    n_boot=n_boot,
                    seed=seed,
                )
                out.append(
                    {
                        "task": model.task, "protocol": protocol, "method": model.method, "shots": model.shots,
                        "seed": model.seed, "reference": name, "n": len(mine), "metrics": diff,
                    }
                )  # fmt: skip
    return out


def write_report(
    results: list[MethodResult],
    out_dir: str | Path,
    *,
    title: str = "fmrilm evaluation",
    context: dict[str, Any] | None = None,
    predictions: bool = True,
    n_boot: int = 1000,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``plots/*.png`` into ``out_dir`` (atomically, as one folder).

    Results without metrics are scored first. ``context`` (cohort, split summary, commands) is copied into
    both files. Returns the paths written.
    """
    import matplotlib

    from fmrilm.safety import REPORT_OUTPUT, check_output, make_stage, publish

    matplotlib.use("Agg", force=True)
    out_dir = Path(out_dir)
    check_output(out_dir, REPORT_OUTPUT, overwrite=True, flag="the report folder")
    for r in results:
        if not r.metrics:
            r.score(n_boot=n_boot)
    tmp = make_stage(out_dir, "the report folder")  # umask permissions, unlike mkdtemp's owner-only
    try:
        (tmp / "plots").mkdir()
        plots = _plots(results, tmp / "plots")
        groups = by_protocol(results)
        aggs = {p: aggregate_seeds(runs) for p, runs in groups.items()}
        agreed = agreement(results)
        compared = versus(results, n_boot=n_boot)
        record = {
            "title": title,
            "context": context or {},
            "protocols": {p: PROTOCOLS.get(p, p) for p in groups},
            "results": [r.to_dict(predictions=predictions) for r in results],
            "over_seeds": [
                {"task": t, "method": m, "shots": k, "protocol": p, **v}
                for p, agg in aggs.items()
                for (t, m, k), v in sorted(agg.items(), key=_agg_key)
            ],
            "plots": {k: [str(Path("plots") / p.name) for p in v] for k, v in plots.items()},
            "agreement": agreed,
            "versus": compared,
        }
        (tmp / "report.json").write_text(json.dumps(record, indent=1, default=_json_default, allow_nan=True))
        (tmp / "report.md").write_text(
            _markdown(title, context or {}, results, aggs, plots, agreed, compared)
        )
        # An earlier report is moved aside and removed only after this one is in place; a folder holding
        # anything a report does not is refused, never deleted (fmrilm.safety).
        publish(tmp, out_dir, REPORT_OUTPUT, overwrite=True, flag="the report folder")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        **{f"plot:{p.name}": out_dir / "plots" / p.name for v in plots.values() for p in v},
    }


def _agg_key(item: tuple) -> tuple:
    (task, method, shots), _ = item
    return (task, method, -1 if shots is None else shots)


def _fmt(v: float, digits: int = 3) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _markdown(
    title: str,
    context: dict[str, Any],
    results: list[MethodResult],
    aggs: dict[str, dict],
    plots: dict[str, list[Path]],
    agreed: list[dict[str, Any]] | None = None,
    compared: list[dict[str, Any]] | None = None,
) -> str:
    lines = [f"# {title}", ""]
    for key, value in context.items():
        text = value if isinstance(value, str) else json.dumps(value, default=_json_default)
        lines.append(f"- **{key}**: {text}")
    if context:
        lines.append("")
    for protocol in aggs:
        lines.append(f"Protocol `{protocol}`: {PROTOCOLS.get(protocol, protocol)}.")
    lines.append("")
    lines.append(
        "Intervals: 95% bootstrap over test subjects for single runs; Student-t over seeds for repeated runs."
    )
    lines.append("")
    by_task: dict[str, list[MethodResult]] = defaultdict(list)
    for r in results:
        by_task[r.task].append(r)
    for task, runs in by_task.items():
        ttype = runs[0].task_type
        names = REGRESSION_METRICS if ttype == "regression" else CLASSIFICATION_METRICS
        lines += [f"## {task} ({ttype})", ""]
        lines.append("| method | protocol | part | shots | seed | n | " + " | ".join(names) + " |")
        lines.append("| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
        for r in runs:
            cells = [
                f"{_fmt(r.metrics[m]['value'])} [{_fmt(r.metrics[m]['low'])}, {_fmt(r.metrics[m]['high'])}]"
                for m in names
            ]
            shots = "—" if r.shots is None else str(r.shots)
            seed = "—" if r.seed is None else str(r.seed)
            lines.append(
                f"| {r.method} | {r.protocol} | {r.part} | {shots} | {seed} | {r.n} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
        lines += _site_table(runs)
        lines += _versus_table([c for c in compared or [] if c["task"] == task], ttype)
        lines += _agreement_table([a for a in agreed or [] if a["task"] == task])
        repeated = {
            (p, k): v for p, agg in aggs.items() for k, v in agg.items() if k[0] == task and v["n_seeds"] > 1
        }
        if repeated:
            lines += ["Over seeds (mean [95% CI]; each protocol on its own):", ""]
            lines.append("| method | protocol | shots | seeds | " + " | ".join(names) + " |")
            lines.append("| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
            for p in aggs:
                mine = {k: v for (q, k), v in repeated.items() if q == p}
                for (_, method, shots), v in sorted(mine.items(), key=_agg_key):
                    cells = [
                        f"{_fmt(v[m]['mean'])} [{_fmt(v[m]['low'])}, {_fmt(v[m]['high'])}]" for m in names
                    ]
                    lines.append(
                        f"| {method} | {p} | {'—' if shots is None else shots} | {v['n_seeds']} | "
                        + " | ".join(cells)
                        + " |"
                    )
            lines.append("")
        for p in plots.get(task, []):
            lines.append(f"![{p.stem}](plots/{p.name})")
        lines.append("")
    return "\n".join(lines)


def _site_table(runs: list[MethodResult]) -> list[str]:
    """Markdown lines of the by-site table (point values) of a task's zero-shot and fully trained runs;
    none when the test subjects come from one site. Few-shot runs keep theirs in report.json only."""
    rows = [(r, r.by_site()) for r in runs if not r.shots]
    rows = [(r, sites) for r, sites in rows if sites]
    if not rows:
        return []
    regression = rows[0][0].task_type == "regression"
    first, second = ("mae", "pearson_r") if regression else ("balanced_accuracy", "auc")
    names = sorted({s for _, sites in rows for s in sites})
    counts = {s: max(sites[s]["n"] for _, sites in rows if s in sites) for s in names}
    lines = [
        f"By test site ({'MAE / Pearson r' if regression else 'balanced accuracy / AUC'}, point values; the "
        "mean over sites is unweighted; a pooled figure also scores how far apart the sites' answers sit):",
        "",
        "| method | protocol | seed | "
        + " | ".join(f"{s} (n={counts[s]})" for s in names)
        + " | mean over sites |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for r, sites in rows:
        cells = [
            f"{_fmt(sites[s][first], 2 if regression else 3)} / {_fmt(sites[s][second])}"
            if s in sites
            else "—"
            for s in names
        ]
        means = [_finite_mean([v[m] for v in sites.values()]) for m in (first, second)]
        seed = "—" if r.seed is None else str(r.seed)
        lines.append(
            f"| {r.method} | {r.protocol} | {seed} | "
            + " | ".join(cells)
            + f" | {_fmt(means[0], 2 if regression else 3)} / {_fmt(means[1])} |"
        )
    return [*lines, ""]


def versus_text(row: dict[str, Any], names: Sequence[str]) -> str:
    """One `versus` row as a line of text: each metric's difference, its interval and the share of draws
    where the model is at least as good (the eval summary and the pooled print)."""
    parts = [f"{m} {_difference(row['metrics'][m])}" for m in names]
    return f"{row['method']} minus {row['reference']}: " + "; ".join(parts)


def _difference(d: dict[str, float]) -> str:
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({d['at_least_as_good']:.0%})"


def _versus_table(rows: list[dict[str, Any]], task_type: str) -> list[str]:
    """Markdown lines of a task's `versus` rows (none without any): the model minus each baseline."""
    if not rows:
        return []
    names = VERSUS_SHOWN.get(task_type, VERSUS_SHOWN["binary"])
    lines = [
        "Against the baselines on the same test subjects: the model minus the baseline [95% paired bootstrap "
        "interval] (the share of resamples where the model is at least as good"
        + ("; a smaller MAE is better" if "mae" in names else "")
        + "):",
        "",
        "| method | protocol | shots | seed | baseline | n | " + " | ".join(names) + " |",
        "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for c in rows:
        cells = [_difference(c["metrics"][m]) for m in names]
        lines.append(
            f"| {c['method']} | {c['protocol']} | {'—' if c['shots'] is None else c['shots']} | "
            f"{'—' if c['seed'] is None else c['seed']} | {c['reference']} | {c['n']} | "
            + " | ".join(cells)
            + " |"
        )
    return [*lines, ""]


def _agreement_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of a task's `agreement` rows (none without any): one line per model run, one column per
    linear reader."""
    if not rows:
        return []
    readers = list(dict.fromkeys(a["reader"] for a in rows))
    runs: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for a in rows:
        runs[(a["method"], a["protocol"], a["shots"], a["seed"])][a["reader"]] = a
    lines = [
        "Rank agreement with the linear readers (Spearman over the test subjects both scored; 1: the same "
        "ranking; `code_probe` reads the model's own input):",
        "",
        "| method | protocol | shots | seed | n | " + " | ".join(readers) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in readers) + " |",
    ]
    for (method, protocol, shots, seed), mine in runs.items():
        n = max(a["n"] for a in mine.values())
        cells = [_fmt(mine[r]["spearman"], 2) if r in mine else "—" for r in readers]
        lines.append(
            f"| {method} | {protocol} | {'—' if shots is None else shots} | {'—' if seed is None else seed} | "
            f"{n} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


# ----------------------------------------------------------------------------------------------------- plots
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower() or "x"


def _label(r: MethodResult) -> str:
    shots = "" if r.shots is None else f" ({r.shots}-shot)"
    return r.method + shots + ("" if r.protocol == WHOLE_TEST else " from test")


def _suffix(protocol: str) -> str:
    """The plot file name's mark of a protocol (none for the whole test part, as before protocols existed)."""
    return "" if protocol == WHOLE_TEST else "_" + _slug(protocol)


def _plots(results: list[MethodResult], folder: Path) -> dict[str, list[Path]]:
    """Per task: ROC and calibration (binary), confusion matrices (classification), few-shot curves."""
    import matplotlib.pyplot as plt

    out: dict[str, list[Path]] = defaultdict(list)
    by_task: dict[str, list[MethodResult]] = defaultdict(list)
    for r in results:
        by_task[r.task].append(r)
    for task, runs in by_task.items():
        # One curve per (method, shots): the first seed stands for the others in ROC/calibration/confusion.
        # Of a protocol after the first, only the methods it adds are shown (the others are the same
        # predictions, scored on fewer subjects).
        first: dict[tuple[str, str, int | None], MethodResult] = {}
        seen: set[str] = set()
        for protocol, group in by_protocol(runs).items():
            for r in group:
                if r.method not in seen:
                    first.setdefault((protocol, r.method, r.shots), r)
            seen |= {r.method for r in group}
        shown = list(first.values())
        binary = [
            r for r in shown if r.task_type == "binary" and r.y_score is not None and len(set(r.y_true)) == 2
        ]
        if binary:
            out[task].append(_roc_plot(task, binary, folder, plt))
            out[task].append(_calibration_plot(task, binary, folder, plt))
        for r in shown:
            if r.task_type != "regression" and r.classes:
                out[task].append(_confusion_plot(task, r, folder, plt))
        for group in by_protocol(runs).values():
            curve = _fewshot_plot(task, group, folder, plt)
            if curve is not None:
                out[task].append(curve)
    return dict(out)


def _positive_score(r: MethodResult) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(r.y_score, dtype=float)
    score = score[:, 1] if score.ndim == 2 else score
    return np.asarray([y == r.classes[1] for y in r.y_true]), score


def _roc_plot(task: str, runs: list[MethodResult], folder: Path, plt) -> Path:
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for r in runs:
        truth, score = _positive_score(r)
        fpr, tpr, _ = roc_curve(truth, score)
        auc = r.metrics.get("auc", {}).get("value", float("nan"))
        ax.plot(fpr, tpr, label=f"{_label(r)} (AUC {_fmt(auc, 2)})")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="chance")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {task} ({runs[0].classes[1]})"
    )
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, folder / f"roc_{_slug(task)}.png", plt)


def _calibration_plot(task: str, runs: list[MethodResult], folder: Path, plt) -> Path:
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for r in runs:
        truth, score = _positive_score(r)
        n_bins = max(2, min(10, len(truth) // 10))
        frac, mean = calibration_curve(truth, np.clip(score, 0, 1), n_bins=n_bins, strategy="quantile")
        ax.plot(mean, frac, "o-", ms=3, label=_label(r))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed fraction", title=f"Calibration: {task}")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, folder / f"calibration_{_slug(task)}.png", plt)


def _confusion_plot(task: str, r: MethodResult, folder: Path, plt) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    labels = list(r.classes)
    cm = confusion_matrix(
        [str(y) for y in r.y_true], [str(y) for y in r.y_pred], labels=[str(c) for c in labels]
    )
    size = max(3.5, 0.5 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(cm, display_labels=[str(c) for c in labels]).plot(ax=ax, colorbar=False)
    ax.set_title(f"{task}: {_label(r)}", fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    name = f"confusion_{_slug(task)}_{_slug(r.method)}" + ("" if r.shots is None else f"_{r.shots}shot")
    name += _suffix(r.protocol)
    return _save(fig, folder / f"{name}.png", plt)


def _fewshot_plot(task: str, runs: list[MethodResult], folder: Path, plt) -> Path | None:
    """Main metric against k, mean and over-seed interval per method; reference lines for methods without k.

    ``runs`` are of one protocol; for few-shot draws from the test part, every method has a point at each k
    (its mean over seeds on the subjects those draws left)."""
    shot_runs = [r for r in runs if r.shots is not None]
    if len({r.shots for r in shot_runs}) < 2:
        return None
    metric = MAIN_METRIC[runs[0].task_type]
    agg = aggregate_seeds(runs)
    fig, ax = plt.subplots(figsize=(5, 4))
    colour = 0  # explicit colours: axhline does not advance the colour cycle, so every line would be C0
    for method in dict.fromkeys(r.method for r in shot_runs):
        ks = sorted({r.shots for r in shot_runs if r.method == method})
        mean = np.array([agg[(task, method, k)][metric]["mean"] for k in ks])
        lo = np.array([agg[(task, method, k)][metric]["low"] for k in ks])
        hi = np.array([agg[(task, method, k)][metric]["high"] for k in ks])
        ax.plot(ks, mean, "o-", label=method, color=f"C{colour}")
        ax.fill_between(ks, lo, hi, alpha=0.2, color=f"C{colour}")
        colour += 1
    for method in dict.fromkeys(r.method for r in runs if r.shots is None):
        mean = agg[(task, method, None)][metric]["mean"]
        ax.axhline(mean, ls="--", lw=1, label=method, color=f"C{colour % 10}")
        colour += 1
    protocol = runs[0].protocol
    where = "" if protocol == WHOLE_TEST else f" ({PROTOCOL_TITLES.get(protocol, protocol).lower()})"
    ax.set(
        xlabel="labelled subjects per class (k)",
        ylabel=metric.replace("_", " "),
        title=f"Few-shot: {task}{where}",
    )
    ax.set_xscale("symlog", linthresh=1)
    ks = sorted({r.shots for r in shot_runs})
    ax.set_xticks(ks, [str(k) for k in ks])  # symlog ticks only at powers of ten: name every k run
    ax.legend(fontsize=7)
    return _save(fig, folder / f"fewshot_{_slug(task)}{_suffix(protocol)}.png", plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _jsonable(values: Any) -> Any:
    if values is None:
        return None
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
