"""`python -m fmrilm.eval.pool RUN [RUN ...] --out DIR`: one report from several runs on disjoint test subjects.

Leave-sites-out evaluation gives one report per fold (`fmrilm eval`, or `fmrilm demo --test-sites ...`, each
with its own model). This pools each method's out-of-fold predictions over the folds (`MethodResult.pooled`)
and writes one report (``report.json``, ``report.md``, plots) with the same metrics and subject bootstrap as
`fmrilm eval`, and prints each fold's figures next to the pooled ones. A RUN is a ``report.json``, a folder
holding one, or a `fmrilm demo` folder (its ``eval/*/report.json``, every task).

The runs must score disjoint subjects (checked: pooling a subject twice would count it twice) and the same
answer options in the same order. A pooled AUC ranks the scores of different models together (one per
fold): the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError
from fmrilm.safety import positive_int

#: The figures printed per fold and pooled, by task type (the report has all metrics).
SHOWN = {
    "binary": ("balanced_accuracy", "auc"),
    "multiclass": ("balanced_accuracy", "auc"),
    "regression": ("mae", "pearson_r"),
}
CAVEAT = (
    "Pooled: every run's out-of-fold predictions scored at once; each run has its own model, so a pooled AUC "
    "ranks scores of different models together."
)


def report_files(paths: list[str | Path]) -> dict[Path, int]:
    """The ``report.json`` files that RUN arguments name, in the order given, each with the number of its RUN
    (a demo folder is one run with a report per task)."""
    files: dict[Path, int] = {}
    for number, given in enumerate(paths, start=1):
        path = Path(given)
        if path.is_file():
            found = [path]
        elif (path / "report.json").is_file():
            found = [path / "report.json"]
        elif path.is_dir():
            found = sorted(path.glob("eval/*/report.json"))
        else:
            raise FmriInputError(
                "No such report or folder", file=str(path), fix="give a report.json or its folder"
            )
        if not found:
            raise FmriInputError(
                "The folder holds no report.json (nor a demo's eval/*/report.json)",
                file=str(path),
                fix="give the folder `fmrilm eval --out` wrote, or a `fmrilm demo --out` folder",
            )
        for f in found:
            if any(f.resolve() == seen.resolve() for seen in files):
                raise FmriInputError(
                    "The same report is given twice, so its subjects would be pooled twice",
                    file=str(f),
                    fix="name each run once",
                )
            files[f] = number
    return files


def load_results(file: Path) -> list[Any]:
    """Every result of one report, with its predictions."""
    from fmrilm.eval.report import MethodResult

    try:
        record = json.loads(file.read_text())
        results = [MethodResult.from_dict(r) for r in record["results"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise FmriInputError(
            f"Not a readable report ({exc})", file=str(file), fix="give a report.json"
        ) from None
    except KeyError as exc:
        what = "its predictions" if exc.args and exc.args[0] in ("y_true", "y_pred") else f"field {exc}"
        raise FmriInputError(
            f"The report lacks {what}",
            file=str(file),
            fix="re-run the evaluation; its report.json keeps them",
        ) from None
    return results


def _key(r: Any) -> tuple:
    return (r.task, r.method, r.protocol, r.shots, r.seed)


def pool_runs(
    runs: dict[Path, list[Any]],
) -> tuple[list[Any], dict[tuple, list[tuple[Path, Any]]], list[tuple]]:
    """Pooled results of every (task, method, protocol, shots, seed) that two or more runs have; also each
    pooled key's per-run results and the keys left out (held by one run only)."""
    from fmrilm.eval.report import MethodResult

    groups: dict[tuple, list[tuple[Path, Any]]] = defaultdict(list)
    for file, results in runs.items():
        for r in results:
            groups[_key(r)].append((file, r))
    pooled, parts, single = [], {}, []
    for key, members in groups.items():
        if len(members) < 2:
            single.append(key)
            continue
        (first_file, first), *rest = members
        for file, r in rest:
            if list(r.classes or []) != list(first.classes or []) or r.task_type != first.task_type:
                raise FmriInputError(
                    f"Task '{r.task}' has answers {r.classes} here but {first.classes} in {first_file}",
                    file=str(file),
                    fix="pool runs of the same task definition only",
                )
        seen: dict[str, Path] = {}
        for file, r in members:
            if not r.subject_ids:
                raise FmriInputError(
                    f"The '{r.method}' result has no subject ids, so disjoint test parts cannot be checked",
                    file=str(file),
                    fix="re-run the evaluation with this version of fmrilm",
                )
            for s in r.subject_ids:
                if s in seen and seen[s] != file:
                    raise FmriInputError(
                        f"Subject '{s}' is scored in two runs (also in {seen[s]}); pooled, it would count twice",
                        file=str(file),
                        fix="pool runs whose test parts are disjoint (different held-out sites)",
                    )
                seen[s] = file
        pooled.append(MethodResult.pooled([r for _, r in members]))
        parts[key] = members
    return pooled, parts, sorted(single, key=str)


def point_metrics(r: Any) -> dict[str, float]:
    """The point figures of one result, computed from its predictions as `fmrilm eval` computes them."""
    from fmrilm.eval.metrics import classification_metrics, regression_metrics

    if r.task_type == "regression":
        return regression_metrics(r.y_true, r.y_pred)
    return classification_metrics(r.y_true, r.y_score, r.classes, y_pred=r.y_pred)


def summary(
    pooled: list[Any], parts: dict[tuple, list[tuple[Path, Any]]], files: dict[Path, int], runs: list[str]
) -> str:
    """A Markdown table per task: each run's figures, then the pooled ones (with their intervals)."""
    lines = [CAVEAT, ""]
    lines += [f"- run {i}: {r}" for i, r in enumerate(runs, start=1)]
    by_task: dict[str, list[Any]] = defaultdict(list)
    for p in pooled:
        by_task[p.task].append(p)
    for task, results in by_task.items():
        shown = SHOWN.get(results[0].task_type, SHOWN["binary"])
        lines += ["", f"### {task}", ""]
        head = ["method", "protocol", "shots", "seed"]
        cols = [f"run {i} {m}" for i in range(1, len(runs) + 1) for m in shown]
        lines += ["| " + " | ".join([*head, *cols, *[f"pooled {m}" for m in shown], "n"]) + " |"]
        lines += ["| " + " | ".join(["---"] * (len(head) + len(cols) + len(shown) + 1)) + " |"]
        for p in results:
            own = {files[f]: point_metrics(r) for f, r in parts[_key(p)]}
            cells = [p.method, p.protocol, "all" if p.shots is None else str(p.shots), str(p.seed)]
            cells += [_fmt(own[i][m]) if i in own else "" for i in range(1, len(runs) + 1) for m in shown]
            cells += [
                f"{_fmt(p.metrics[m]['value'])} [{_fmt(p.metrics[m]['low'])}, {_fmt(p.metrics[m]['high'])}]"
                for m in shown
            ]
            lines.append("| " + " | ".join([*cells, str(p.n)]) + " |")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def run(args: argparse.Namespace) -> int:
    from fmrilm.eval.report import versus_text, write_report

    files = report_files(args.runs)
    runs = {f: load_results(f) for f in files}
    pooled, parts, single = pool_runs(runs)
    if not pooled:
        raise FmriInputError(
            "No method is in two or more of the reports, so nothing can be pooled",
            file=str(files[0]),
            fix="give the reports of the same evaluation on different folds",
        )
    for p in pooled:
        p.score(n_boot=args.n_boot)
    text = summary(pooled, parts, files, [str(r) for r in args.runs])
    context = {
        "pooled_from": [str(f) for f in files],
        "note": CAVEAT,
        "per_run": {
            str(f): {"/".join(map(str, _key(r))): point_metrics(r) for r in results if _key(r) in parts}
            for f, results in runs.items()
        },
        "not_pooled": ["/".join(map(str, k)) for k in single],
    }
    paths = write_report(
        pooled,
        args.out,
        title=f"fmrilm evaluation pooled over {len(files)} runs",
        context=context,
        n_boot=args.n_boot,
    )
    print(text)
    compared = json.loads(Path(paths["json"]).read_text()).get("versus", [])
    lines = [
        f"- {c['task']}: " + versus_text(c, SHOWN["regression" if "mae" in c["metrics"] else "binary"])
        for c in compared
        if c["seed"] is None
    ]
    if lines:
        print(
            "\npooled, model minus baseline on the same subjects [95% paired bootstrap interval] (share of "
            "resamples where the model is at least as good; a smaller MAE is better):"
        )
        print("\n".join(lines))
    if single:
        print(f"\nnot pooled (in one run only): {', '.join('/'.join(map(str, k)) for k in single)}")
    print(f"\nreport written to {Path(args.out) / 'report.md'} (JSON: {Path(args.out) / 'report.json'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmrilm.eval.pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="report.json, its folder, or a demo folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder of the pooled report")
    parser.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap draws (default 1000)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FmriInputError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
