"""`make mutants`: mutation testing (mutmut) of the evaluation path, one module at a time, each against a fast
subset of the tests that exercise it; prints the share of mutants killed per module.

    python tests/mutants.py [MODULE ...] [--max-children N] [--work build/mutants]

mutmut imports the code under test from its own ``mutants/`` copy, which needs the installed package layout
(``fmrilm.eval`` is the repository's ``eval/`` folder, mapped by setuptools). So each module gets a work folder
``build/mutants/<module>/`` holding ``src/fmrilm/`` laid out as installed, a copy of ``tests/`` and a
``setup.cfg`` naming the one file to mutate and the tests to run; mutmut then runs there, in its own processes
(``forkserver``: torch is not fork-safe). Nothing in the checkout is modified.

Killed share = (killed + timeout) / (mutants tested); mutants that no selected test reaches, and mutants not
run yet (an interrupted run: go on with ``--resume``), are counted apart. Survivors are listed by name in
``<work>/<module>/survivors.txt``; ``cd`` there and ``python -m mutmut show NAME`` prints one's diff.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Where each repository folder sits in the installed package (pyproject's package-dir mapping).
LAYOUT = {
    "fmrilm": "fmrilm",
    "eval": "fmrilm/eval",
    "data_gen": "fmrilm/data_gen",
    "instructions": "fmrilm/instructions",
    "train": "fmrilm/train",
}

#: module -> the fast tests that exercise it (pytest node ids or files; a few seconds each).
MODULES: dict[str, list[str]] = {
    "eval/metrics.py": [
        "tests/test_baselines.py::test_binary_metrics_equal_sklearn",
        "tests/test_baselines.py::test_multiclass_metrics_equal_sklearn",
        "tests/test_baselines.py::test_regression_metrics_equal_sklearn_and_scipy",
        "tests/test_baselines.py::test_intervals_contain_the_point_estimate",
        "tests/test_metrics_trust.py::test_report_intervals_resample_subjects_not_scans",
        "tests/test_metrics_trust.py::test_every_bootstrap_draw_keeps_a_subjects_scans_together",
        "tests/test_metrics_trust.py::test_bootstrap_interval_equals_a_subject_bootstrap_by_hand",
        "tests/test_metrics_trust.py::test_seed_interval_equals_a_student_t_interval_by_hand",
        "tests/test_metrics_trust.py::test_report_over_seeds_row_is_the_hand_computed_interval",
    ],
    "fmrilm/splits.py": ["tests/test_splits.py", "tests/test_boundaries.py", "tests/test_cohort_subset.py"],
    "fmrilm/signal.py": ["tests/test_signal.py", "tests/test_boundaries.py"],
    "eval/baselines.py": ["tests/test_baselines.py"],
    "fmrilm/model/scoring.py": ["tests/test_scoring.py", "tests/test_behaviour.py"],
    "eval/evaluate.py": ["tests/test_metrics_trust.py"],
}


def installed_path(repo_path: str) -> str:
    top, _, rest = repo_path.partition("/")
    return f"{LAYOUT[top]}/{rest}"


def prepare(module: str, work: Path, resume: bool = False) -> Path:
    """A fresh work folder for one module: installed layout under src/, tests/, setup.cfg (with ``resume``,
    an existing one is kept, so mutmut goes on with the mutants it has not checked yet)."""
    folder = work / module.replace("/", "_").removesuffix(".py")
    if resume and (folder / "setup.cfg").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for top, target in sorted(LAYOUT.items(), key=lambda kv: kv[1].count("/")):
        shutil.copytree(REPO / top, folder / "src" / target, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(REPO / "tests", folder / "tests", ignore=ignore)
    selection = "\n    ".join(MODULES[module])
    (folder / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = src\n"
        f"only_mutate = src/{installed_path(module)}\n"
        f"pytest_add_cli_args_test_selection =\n    {selection}\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -q\n    -x\n"
        "process_isolation = forkserver\n"
        "use_git_change_detection = false\n"
    )
    return folder


def run_module(module: str, work: Path, max_children: int, resume: bool = False) -> Counter:
    folder = prepare(module, work, resume)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    mutmut = [sys.executable, "-m", "mutmut"]
    log = folder / "mutmut-run.log"
    with open(log, "a" if resume else "w") as handle:
        subprocess.run(
            [*mutmut, "run", "--max-children", str(max_children)],
            cwd=folder,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    listing = subprocess.run(
        [*mutmut, "results", "--all", "true"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts: Counter = Counter()
    survivors = []
    for name, status in re.findall(r"^\s+(\S+): (.+)$", listing, re.M):
        counts[status.strip()] += 1
        if status.strip() == "survived":
            survivors.append(name)
    (folder / "survivors.txt").write_text("\n".join(survivors) + ("\n" if survivors else ""))
    if not counts:
        print(f"{module}: mutmut produced no results; see {log}", file=sys.stderr)
    return counts


def summary_line(module: str, counts: Counter) -> str:
    killed = counts["killed"] + counts["timeout"]
    reached = killed + counts["survived"] + counts["suspicious"]
    share = f"{100 * killed / reached:.1f}%" if reached else "—"
    known = ("killed", "timeout", "survived", "suspicious", "no tests", "not checked")
    other = sum(v for k, v in counts.items() if k not in known)
    return (
        f"{module:26s} killed {killed:4d} / {reached:4d} tested = {share:>6s}   survived {counts['survived']}, "
        f"not reached by the tests {counts['no tests']}, not run yet {counts['not checked']}, other {other}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (CPU cores)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "mutants")
    parser.add_argument(
        "--resume", action="store_true", help="keep each module's work folder and go on where mutmut stopped"
    )
    args = parser.parse_args(argv)
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose among {list(MODULES)}")
    lines = []
    for module in modules:
        print(f"=== mutmut on {module} (tests: {' '.join(MODULES[module])})", flush=True)
        lines.append(summary_line(module, run_module(module, args.work, args.max_children, args.resume)))
        print(lines[-1], flush=True)
    print(
        "\nKilled share per module (killed or timed out / mutants tested; survivors in <work>/*/survivors.txt):"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
