"""`make mutants`: mutation testing (mutmut) of the evaluation path, one module at a time, each against a fast
subset of the tests that exercise it; prints the share of mutants killed per module.

    python tests/mutants.py [MODULE ...] [--max-children N] [--work build/mutants] [--resume]
    python tests/mutants.py [MODULE ...] --sample 50 [--seed 0]     # a seeded random sample per module
    python tests/mutants.py [MODULE ...] --sample 50 --survivors     # re-test that sample's survivors
    python tests/mutants.py eval/evaluate.py --slow ...             # also its end-to-end tests (SLOW)

mutmut imports the code under test from its own ``mutants/`` copy, which needs the installed package layout
(``fmrilm.eval`` is the repository's ``eval/`` folder, mapped by setuptools). So each module gets a work folder
``build/mutants/<module>/`` holding ``src/fmrilm/`` laid out as installed, a copy of ``tests/`` and a
``setup.cfg`` naming the one file to mutate and the tests to run; mutmut then runs there, in its own processes
(``forkserver``: torch is not fork-safe). Nothing in the checkout is modified.

Killed share = (killed + timeout) / (mutants tested); mutants that no selected test reaches, and mutants not
run yet (an interrupted run: go on with ``--resume``), are counted apart. Survivors are listed by name in
``<work>/<module>/survivors.txt``; ``cd`` there and ``python -m mutmut show NAME`` prints one's diff.

A whole module costs about an hour of one core (hundreds of mutants, a test process each). ``--sample N`` tests
a seeded random sample of N mutants per module instead (the same seed and source give the same names, listed in
``<work>/<module>/sample.txt``) and prints the killed share among them with a 95% Wilson interval: an
estimate of the whole module's share, labelled as such. ``--resume`` with the same ``--sample``/``--seed``
tests only the sampled mutants that have no result yet.

``--survivors`` re-tests only the survivors (and mutants no selected test reached, or that timed out) of the
earlier run in each work folder, against the checkout as it is now (source, tests, ``MODULES`` selection): how a new test is shown
to kill what survived. The other verdicts are carried over for every function whose code is unchanged (tests
may be added to a selection, never removed, for this to hold); mutants of a changed function are re-tested.
The killed share printed afterwards is that of the whole run (or sample), updated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
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
        "tests/test_metrics_trust.py::test_bootstrap_ci_resamples_subjects_with_the_asked_level",
        "tests/test_metrics_trust.py::test_a_one_dimensional_score_is_refused_for_more_than_two_classes",
        "tests/test_metrics_trust.py::test_multiclass_draws_missing_a_class_are_left_out_of_the_auc_interval",
        "tests/test_metrics_trust.py::test_pearson_r_of_values_spread_less_than_one_is_still_computed",
        "tests/test_metrics_trust.py::test_constant_predictions_have_no_pearson_r_but_keep_their_mae_interval",
        "tests/test_metrics_trust.py::test_a_scan_by_scan_bootstrap_draws_every_row",
        "tests/test_metrics_trust.py::test_intervals_are_reproducible_with_their_seed_and_move_with_another",
    ],
    "fmrilm/splits.py": ["tests/test_splits.py", "tests/test_boundaries.py", "tests/test_cohort_subset.py"],
    "fmrilm/signal.py": ["tests/test_signal.py", "tests/test_boundaries.py"],
    "eval/baselines.py": ["tests/test_baselines.py", "tests/test_tangent_baseline.py"],
    "fmrilm/model/scoring.py": [
        "tests/test_scoring_units.py",
        "tests/test_scoring.py",
        "tests/test_behaviour.py",
    ],
    # evaluate() itself (fine-tuning, scoring, report writing) is reached only by the end-to-end tests
    # (test_evaluate.py, test_evaluate_from_test.py, test_metrics_trust.py: minutes each); its mutants count as
    # "not reached" here, and the killed share is that of the pure steps these unit tests check.
    "eval/evaluate.py": [
        "tests/test_evaluate_units.py",
        "tests/test_evaluate.py::test_the_full_command_of_a_report_gives_back_every_setting",
        "tests/test_evaluate.py::test_a_cohort_without_sites_reports_no_test_sites_not_an_empty_name",
        "tests/test_evaluate_from_test.py::test_the_default_protocol_is_few_shot_from_the_train_part",
    ],
}


#: module -> end-to-end tests that reach what its fast subset does not (``--slow``: about a minute per mutant).
#: ``evaluate()`` itself (loading, zero-shot scoring, baselines, the report folder) is reached only this way; the
#: few-shot and fine-tuning paths (`finetune_and_score`, `_test_draw_runs`) are not reached even then.
SLOW: dict[str, list[str]] = {
    "eval/evaluate.py": [
        "tests/test_metrics_trust.py::test_every_classification_row_equals_sklearn_on_its_own_predictions",
        "tests/test_metrics_trust.py::test_a_model_that_scores_the_true_class_higher_gets_the_auc_the_truth_gives",
        "tests/test_metrics_trust.py::test_every_regression_row_equals_sklearn_and_scipy",
    ],
}


#: mutmut's exit codes of a timed-out mutant (SIGXCPU from its CPU or wall-clock limit, or its own code 36).
TIMEOUT_CODES = (36, -24, 24, 152, 255)


def installed_path(repo_path: str) -> str:
    top, _, rest = repo_path.partition("/")
    return f"{LAYOUT[top]}/{rest}"


def work_folder(module: str, work: Path) -> Path:
    return work / module.replace("/", "_").removesuffix(".py")


def prepare(module: str, work: Path, resume: bool = False, slow: bool = False) -> Path:
    """A fresh work folder for one module: installed layout under src/, tests/, setup.cfg (with ``resume``,
    an existing one is kept, so mutmut goes on with the mutants it has not checked yet)."""
    folder = work_folder(module, work)
    if resume and (folder / "setup.cfg").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for top, target in sorted(LAYOUT.items(), key=lambda kv: kv[1].count("/")):
        shutil.copytree(REPO / top, folder / "src" / target, ignore=ignore, dirs_exist_ok=True)
    refresh_tests(module, folder, slow)
    return folder


def refresh_tests(module: str, folder: Path, slow: bool = False) -> None:
    """The checkout's tests/ and the module's test selection (``MODULES``) into a work folder."""
    shutil.rmtree(folder / "tests", ignore_errors=True)
    shutil.copytree(REPO / "tests", folder / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    selection = "\n    ".join(MODULES[module] + (SLOW.get(module, []) if slow else []))
    (folder / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = src\n"
        f"only_mutate = src/{installed_path(module)}\n"
        f"pytest_add_cli_args_test_selection =\n    {selection}\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -q\n    -x\n"
        "process_isolation = forkserver\n"
        "use_git_change_detection = false\n"
        # A mutant's wall-clock limit is (its tests' time in the stats run + this) x 15: the stats run times
        # tests with imports and module fixtures already warm, while each mutant's fresh process builds them
        # again, on a shared machine; mutmut's default of 1 s turns slow starts into false "timeout" kills.
        "timeout_constant = 60\n"
        # Its own pytest section makes this folder pytest's rootdir and conftest boundary: otherwise pytest
        # climbs to the checkout's pyproject.toml, loads the checkout's conftest.py, puts the checkout first on
        # sys.path and tests the unmutated package (mutmut then stops: "could not find any test case").
        "\n[tool:pytest]\n"
        "filterwarnings =\n    ignore::DeprecationWarning\n"
    )


#: Mutant generation only (what ``mutmut run`` does first), so that a sample can be drawn from the names
#: before any test runs; ``mutmut run`` later finds the mutated file up to date and keeps it.
GENERATE = """
import os
os.makedirs("mutants", exist_ok=True)
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths
from mutmut.mutation.trampoline import set_mutant_under_test
set_mutant_under_test("mutant_generation")
copy_src_dir()
copy_also_copy_files()
setup_source_paths()
create_mutants(1)
"""


def mutant_results(folder: Path, module: str) -> dict[str, int | None]:
    """Every mutant of ``module`` in a work folder, by name, with mutmut's exit code (None: not run yet)."""
    meta = folder / "mutants" / "src" / (installed_path(module) + ".meta")
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def restore_verdicts(folder: Path, module: str, verdicts: dict[str, int | None]) -> None:
    """Write earlier exit codes back into mutmut's record of ``module`` (see ``--survivors``)."""
    meta = folder / "mutants" / "src" / (installed_path(module) + ".meta")
    record = json.loads(meta.read_text())
    for name, code in verdicts.items():
        if name in record["exit_code_by_key"]:
            record["exit_code_by_key"][name] = code
    meta.write_text(json.dumps(record, indent=4))


def generate(folder: Path, module: str, env: dict[str, str]) -> list[str]:
    """The names of all mutants of ``module``, generating them first if the work folder has none yet."""
    if not mutant_results(folder, module):
        subprocess.run(
            [sys.executable, "-c", GENERATE], cwd=folder, env=env, capture_output=True, text=True, check=True
        )
    names = sorted(mutant_results(folder, module))
    if not names:
        raise RuntimeError(f"mutmut generated no mutants for {module} in {folder}")
    return names


def draw_sample(names: list[str], size: int, seed: int) -> list[str]:
    """A seeded random sample of mutant names (all of them if there are fewer); sorted for reading."""
    if size < 1:
        raise ValueError(f"--sample must be at least 1, got {size}")
    return sorted(random.Random(seed).sample(sorted(names), min(size, len(names))))


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial share: unlike the normal approximation it stays inside
    [0, 1] and keeps its coverage for the small samples and shares near 1 that mutation samples give."""
    if trials <= 0:
        return (math.nan, math.nan)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_module(
    module: str,
    work: Path,
    max_children: int,
    resume: bool = False,
    sample: int | None = None,
    seed: int = 0,
    survivors_only: bool = False,
    slow: bool = False,
) -> Counter:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    mutmut = [sys.executable, "-m", "mutmut"]
    chosen: list[str] | None = None
    names: list[str] = []
    carried: dict[str, int | None] = {}
    if survivors_only:
        folder, chosen, carried = _carry_over(module, work, env, sample is not None, slow)
        done = mutant_results(folder, module)
        # survived (0), reached by no selected test (5, 33), not run (None: its function changed since) or timed
        # out (possibly the machine's load rather than the mutant)
        names = [n for n in (chosen or sorted(done)) if done.get(n) in (None, 0, 5, 33, *TIMEOUT_CODES)]
        print(
            f"re-testing {len(names)} survivors / unreached / changed mutants against the checkout",
            flush=True,
        )
        resume = True
    else:
        folder = prepare(module, work, resume, slow)
        if sample is not None:
            chosen = draw_sample(generate(folder, module, env), sample, seed)
            (folder / "sample.txt").write_text("\n".join(chosen) + "\n")
            done = mutant_results(folder, module)
            # mutmut re-runs every mutant named on its command line, so a resumed sample names only the rest.
            names = [n for n in chosen if done.get(n) is None] if resume else chosen
    log = folder / "mutmut-run.log"
    if (chosen is None and not survivors_only) or names:
        with open(log, "a" if resume else "w") as handle:
            subprocess.run(
                [*mutmut, "run", "--max-children", str(max_children), *names],
                cwd=folder,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                check=False,
            )
    if survivors_only:  # in case mutmut reset them (it forgets every verdict when the test selection changes)
        restore_verdicts(folder, module, {k: v for k, v in carried.items() if k not in names})
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
        if chosen is not None and name not in chosen:
            continue
        counts[status.strip()] += 1
        if status.strip() == "survived":
            survivors.append(name)
    (folder / "survivors.txt").write_text("\n".join(survivors) + ("\n" if survivors else ""))
    if not counts:
        print(f"{module}: mutmut produced no results; see {log}", file=sys.stderr)
    return counts


def _carry_over(
    module: str, work: Path, env: dict[str, str], sampled: bool, slow: bool
) -> tuple[Path, list[str] | None, dict[str, int | None]]:
    """``--survivors``: a fresh work folder from the checkout (its source, tests and selection), with the
    earlier run's verdicts carried over for every mutant whose function is unchanged, and the earlier
    sample's names. The tests may only have grown since, so a mutant they killed is still killed."""
    folder = work_folder(module, work)
    meta = folder / "mutants" / "src" / (installed_path(module) + ".meta")
    # the earlier verdicts are kept beside the work folder until they are carried over, so a re-test stopped
    # before that can be started again
    keep = work / f".{folder.name}.previous"
    if meta.exists():
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        shutil.copy2(meta, keep / "meta.json")
        if (folder / "sample.txt").exists():
            shutil.copy2(folder / "sample.txt", keep / "sample.txt")
    if not (keep / "meta.json").exists():
        raise SystemExit(f"--survivors: {module} has no earlier run in {folder}")
    old = json.loads((keep / "meta.json").read_text())
    old_sample = (keep / "sample.txt").read_text().split() if (keep / "sample.txt").exists() else None
    if sampled and old_sample is None:
        raise SystemExit(f"--survivors --sample: {module}'s earlier run in {folder} was not a sample")
    folder = prepare(module, work, slow=slow)
    generate(folder, module, env)
    new = json.loads(meta.read_text())
    unchanged = {
        f for f, h in new["hash_by_function_name"].items() if old["hash_by_function_name"].get(f) == h
    }
    carried = {
        k: v
        for k, v in old["exit_code_by_key"].items()
        if k in new["exit_code_by_key"] and k.rsplit("__mutmut_", 1)[0].rpartition(".")[2] in unchanged
    }
    restore_verdicts(folder, module, carried)
    shutil.rmtree(keep, ignore_errors=True)
    chosen = None
    if sampled:
        chosen = [n for n in old_sample if n in new["exit_code_by_key"]]
        gone = len(old_sample) - len(chosen)
        if gone:
            print(f"{module}: {gone} sampled mutant(s) no longer exist (their code changed)", flush=True)
        (folder / "sample.txt").write_text("\n".join(chosen) + "\n")
    return folder, chosen, carried


def summary_line(module: str, counts: Counter, sampled_from: int | None = None) -> str:
    """One module's line; with ``sampled_from`` (the module's mutant count) it is a sample estimate with its
    95% Wilson interval."""
    killed = counts["killed"] + counts["timeout"]
    reached = killed + counts["survived"] + counts["suspicious"]
    share = f"{100 * killed / reached:.1f}%" if reached else "—"
    known = ("killed", "timeout", "survived", "suspicious", "no tests", "not checked")
    other = sum(v for k, v in counts.items() if k not in known)
    rest = (
        f"survived {counts['survived']}, timed out {counts['timeout']} (counted killed), "
        f"not reached by the tests {counts['no tests']}, "
        f"not run yet {counts['not checked']}, other {other}"
    )
    if sampled_from is None:
        return f"{module:26s} killed {killed:4d} / {reached:4d} tested = {share:>6s}   {rest}"
    low, high = wilson_interval(killed, reached)
    interval = f"95% CI {100 * low:.1f}-{100 * high:.1f}%" if reached else "no interval"
    return (
        f"{module:26s} SAMPLE ESTIMATE: killed {killed:3d} / {reached:3d} sampled mutants tested = {share:>6s} "
        f"({interval}; sample of {sum(counts.values())} of {sampled_from} mutants)   {rest}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (CPU cores)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "mutants")
    parser.add_argument(
        "--resume", action="store_true", help="keep each module's work folder and go on where mutmut stopped"
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="test a seeded random sample of N mutants per module (a sample estimate with a 95%% Wilson "
        "interval) instead of every mutant",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --sample draw (default 0)")
    parser.add_argument(
        "--slow",
        action="store_true",
        help="also run each module's end-to-end tests (SLOW in the script: about a minute per mutant)",
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="re-test only the survivors (and unreached mutants) of the earlier run in each work folder, "
        "against the checkout's current tests and MODULES selection; with --sample, of that sample",
    )
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be at least 1, got {args.sample}")
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose among {list(MODULES)}")
    lines = []
    for module in modules:
        tests = MODULES[module] + (SLOW.get(module, []) if args.slow else [])
        print(f"=== mutmut on {module} (tests: {' '.join(tests)})", flush=True)
        counts = run_module(
            module,
            args.work,
            args.max_children,
            args.resume,
            args.sample,
            args.seed,
            args.survivors,
            args.slow,
        )
        total = (
            len(mutant_results(work_folder(module, args.work), module)) if args.sample is not None else None
        )
        lines.append(summary_line(module, counts, total))
        print(lines[-1], flush=True)
    what = (
        f"a SAMPLE ESTIMATE from {args.sample} random mutants per module (seed {args.seed})"
        if args.sample is not None
        else "every mutant"
    )
    print(
        f"\nKilled share per module, {what} (killed or timed out / mutants tested; survivors in "
        "<work>/*/survivors.txt):"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
