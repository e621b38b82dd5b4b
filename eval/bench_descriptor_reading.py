"""Can any linear reader of what the LLM receives answer the descriptor questions? The chat's ceiling.

    python -m fmrilm.eval.bench_descriptor_reading --model DIR --cohort DIR --instructions DIR
        [--split leave-sites-out] [--tasks coupled_pair,modularity] [--threads 2]

The chat answers a descriptor question (most strongly coupled network pair, modularity higher or lower) from the
scan summary the start marker carries: the connectome components of the model's tokenizer. Logistic regression
(L2, balanced classes, C by site-grouped inner CV) on the training scans' components, scored on the split's
test scans, is what a linear reader of that input reaches; it is printed next to always giving the training
rows' most frequent answer (the bar the chat must beat, `fmrilm.eval.demo.descriptor_rates`). Where the reader
cannot beat the bar, neither can a chat that reads the same numbers through an LLM (BENCHMARKS.md,
"Descriptor questions: what the input allows").
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmrilm.safety import positive_int


@dataclass
class ReaderRate:
    """One question's linear-reader accuracy on test scans next to the most-frequent-answer bar."""

    task: str
    n_train: int
    n_test: int
    n_answers: int
    reader: float
    bar: float
    C: float


def linear_reader_rate(
    task: str, X: np.ndarray, answers: np.ndarray, train: np.ndarray, groups: np.ndarray, seed: int = 0
) -> ReaderRate:
    """Logistic regression on ``X[train]`` (C by site-grouped CV) scored on the rest, and the bar."""
    from sklearn.model_selection import GroupKFold

    answers = np.asarray(answers).astype(str)
    test = ~train
    values, counts = np.unique(answers[train], return_counts=True)
    majority = values[np.argmax(counts)]
    grid = np.logspace(-4, 1, 8)
    folds = min(5, len(set(groups[train].tolist())))
    best, best_c = -1.0, float(grid[0])
    if folds >= 2:
        for c in grid:  # inner CV over training sites only: never the test scans
            right = []
            for a, b in GroupKFold(folds).split(X[train], answers[train], groups[train]):
                model = _logistic(c, seed).fit(X[train][a], answers[train][a])
                right.append(np.mean(model.predict(X[train][b]) == answers[train][b]))
            if np.mean(right) > best:
                best, best_c = float(np.mean(right)), float(c)
    model = _logistic(best_c, seed).fit(X[train], answers[train])
    return ReaderRate(
        task=task,
        n_train=int(train.sum()),
        n_test=int(test.sum()),
        n_answers=len(values),
        reader=float(np.mean(model.predict(X[test]) == answers[test])),
        bar=float(np.mean(answers[test] == majority)),
        C=best_c,
    )


def _logistic(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", required=True, help="a Stage-2 or Stage-3 model folder (its connectome tokenizer)"
    )
    p.add_argument("--cohort", required=True, help="cohort folder the split is stored in")
    p.add_argument("--instructions", required=True, help="instruction set with the recorded answers")
    p.add_argument(
        "--split", default="leave-sites-out", help="split stored in the cohort (default %(default)s)"
    )
    p.add_argument(
        "--tasks", default="coupled_pair,modularity", help="descriptor questions (default %(default)s)"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fmrilm.logs import library_warnings

    with library_warnings(verbose=False):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch
    from fmrilm.eval.demo import answer_table

    from fmrilm import FmriLM
    from fmrilm.cohort import load_cohort
    from fmrilm.errors import FmriInputError
    from fmrilm.splits import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    connectome = FmriLM.from_pretrained(args.model).processor.fmri_tokenizer.connectome
    if connectome is None:
        raise FmriInputError(
            "The model has no connectome tokens to read", file=args.model, fix="use a model with them"
        )
    cohort = load_cohort(args.cohort)
    split = load_split(args.cohort, args.split)
    ids = [str(s) for s in cohort.dataset["scan_id"]]
    sites = np.asarray([str(s) for s in cohort.dataset["site"]])
    rows = np.concatenate([np.asarray(split["train"]), np.asarray(split["test"])]).astype(int)
    is_train = np.zeros(len(ids), dtype=bool)
    is_train[np.asarray(split["train"], dtype=int)] = True
    X = connectome.continuous([cohort.scan(int(i)) for i in rows])
    table = answer_table(args.instructions)
    print(f"{'question':<14} {'answers':>7} {'train':>5} {'test':>5} {'linear reader':>13} {'bar':>6}  C")
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        truth = dict(zip(*(table[table["task"] == task][c] for c in ("scan_id", "answer")), strict=True))
        keep = np.asarray([ids[i] in truth for i in rows])
        if not keep.any():
            raise FmriInputError(f"The instruction set has no '{task}' answers", file=args.instructions,
                                 fix="name a task it was built with (--tasks)")  # fmt: skip
        answers = np.asarray([truth[ids[i]] for i in rows[keep]])
        r = linear_reader_rate(task, X[keep], answers, is_train[rows[keep]], sites[rows[keep]])
        print(
            f"{r.task:<14} {r.n_answers:>7} {r.n_train:>5} {r.n_test:>5} {r.reader:>13.1%} {r.bar:>6.1%}  {r.C:.3g}"
        )
        if task == "coupled_pair":
            test = rows[keep][~is_train[rows[keep]]]
            rate = facts_rate(
                args.instructions, [cohort.scan(int(i)) for i in test], [truth[ids[i]] for i in test]
            )
            print(
                f"{'':<14} the facts line (fmrilm.descriptors.facts) names it on {rate:.1%} of the test scans"
            )
    return 0


def facts_rate(instructions: str, scans: list, answers: list[str]) -> float:
    """How often the facts line of a scan, z-scored against the instruction set's corpus reference, names the
    recorded most-coupled pair (the line a model with ``scan_facts`` shows its LLM)."""
    from fmrilm.data_gen.corpus import REFERENCE_FILE
    from fmrilm.instructions.builder import load_instruction_set
    from fmrilm.train.stage3 import descriptor_corpus_of

    from fmrilm.descriptors import ReferenceStats
    from fmrilm.descriptors.facts import FACTS_PREFIX, CouplingFacts, render_coupling_facts

    _, meta, _ = load_instruction_set(instructions)
    facts = CouplingFacts(
        ReferenceStats.load(descriptor_corpus_of(Path(instructions), meta["descriptors"]) / REFERENCE_FILE)
    )
    said = [render_coupling_facts(facts.pair_z(scan)) for scan in scans]
    return float(
        np.mean([line == f"{FACTS_PREFIX} {answer}." for line, answer in zip(said, answers, strict=True)])
    )


if __name__ == "__main__":
    raise SystemExit(main())
