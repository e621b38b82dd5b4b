"""Which connectome features Stage 3's warm-start probe reads best.

    python -m fmrilm.eval.bench_connectome_features [--abide ../shared/data/abide] [--folds 3]
        [--judging-sites UCLA_1,KKI,OHSU,STANFORD,LEUVEN_2,OLIN,CMU] [--tasks diagnosis,sex]
        [--variants raw-whitened-384,std-relative-all,...] [--no-baselines] [--json OUT]

Stage 3 plants an L2 logistic probe of the connectome components in the LLM (`--probe-init`), and its tuned
answers follow that probe (rank agreement 0.8-0.9, BENCHMARKS.md), so how well the probe reads unseen sites is
the ceiling of the answer. The probe reads the components as the tokenizer gives them; this benchmark asks
which tokenizer gives the most: tangent-FC features raw or z-scored over the training scans before the PCA
(``ConnectomeConfig.standardize``), components whitened or keeping their relative variance (``whiten``), 384 of
them or every one the training scans support (``components``). A variant is written
``{raw|std}-{whitened|relative}-{N|all}``.

Test folds are leave-sites-out groups (`bench_baselines.site_folds`) of the sites that are not
``--judging-sites``; each fold trains on every other site, judging sites included: their labels train, they are
never scored, so nothing here is chosen on the sites the end-to-end runs are judged on. Per fold and variant a
connectome tokenizer is fitted on the fold's training scans (`ConnectomeTokenizer.fit`), the warm-start probe
(`train.probe_init.fit_probe`, C by site-grouped CV) is fitted on their components, and its out-of-site AUC
printed; the classic pipelines (Fisher-z FC and tangent FC, each standardized + logistic regression with C by
site-grouped CV: `fmrilm eval`'s baselines) run on the same folds unless ``--no-baselines``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmrilm.safety import nonnegative_int, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
JUDGING_SITES = "UCLA_1,KKI,OHSU,STANFORD,LEUVEN_2,OLIN,CMU"
DEFAULT_VARIANTS = (
    "raw-whitened-384,std-whitened-384,std-relative-384,raw-whitened-all,std-whitened-all,std-relative-all"
)
_VARIANT = re.compile(r"^(raw|std)-(whitened|relative)-(\d+|all)$")


@dataclass(frozen=True)
class Variant:
    """One way of turning tangent FC into components: its name and the tokenizer settings it stands for."""

    name: str
    standardize: bool
    whiten: bool
    components: int | None  # None: every component the training scans support

    @classmethod
    def parse(cls, text: str) -> Variant:
        match = _VARIANT.match(text.strip())
        if not match:
            raise ValueError(
                f"'{text}' is not a variant: write {{raw|std}}-{{whitened|relative}}-{{N|all}}, e.g. std-relative-all"
            )
        scaling, scale, count = match.groups()
        components = None if count == "all" else int(count)
        if components is not None and components < 1:
            raise ValueError(f"'{text}': the component count must be positive")
        return cls(text.strip(), scaling == "std", scale == "whitened", components)

    def config(self, n_training_scans: int, num_tokens: int = 32, seed: int = 0):
        """The `ConnectomeConfig` this variant fits with (the quantizer barely trained: only the continuous
        components are read here)."""
        from fmrilm.tokenizer.connectome import ConnectomeConfig

        room = ConnectomeConfig(num_tokens=num_tokens).components_supported(n_training_scans)
        wanted = room if self.components is None else min(self.components, room)
        wanted = wanted // num_tokens * num_tokens
        return ConnectomeConfig(
            num_tokens=num_tokens,
            components=max(wanted, num_tokens),
            standardize=self.standardize,
            whiten=self.whiten,
            quantizer_steps=1,
            seed=seed,
        )


def variants_arg(text: str) -> list[Variant]:
    try:
        out = [Variant.parse(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one variant")
    return out


def probe_auc(components: np.ndarray, y: np.ndarray, sites: np.ndarray, train, test) -> float:
    """Out-of-site AUC of the warm-start probe fitted on the training rows' components."""
    from fmrilm.train.probe_init import fit_probe
    from sklearn.metrics import roc_auc_score

    weights, _ = fit_probe(components[train], y[train], sites[train], 0)
    return float(roc_auc_score(y[test], components[test] @ weights))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument("--folds", type=positive_int, default=3, help="test folds of the non-judging sites")
    parser.add_argument(
        "--judging-sites",
        default=JUDGING_SITES,
        help="sites never scored here (default: both judging folds of the `full` preset)",
    )
    parser.add_argument("--tasks", default="diagnosis,sex", help="two-answer tasks")
    parser.add_argument("--variants", type=variants_arg, default=variants_arg(DEFAULT_VARIANTS))
    parser.add_argument("--no-baselines", action="store_true", help="skip Fisher-z FC and tangent FC")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from fmrilm.eval.baselines import fc_features, linear_probe, tangent_features
    from fmrilm.eval.bench_baselines import import_abide, site_folds
    from fmrilm.eval.bench_components import binary_tasks
    from sklearn.metrics import roc_auc_score

    from fmrilm.splits import leave_sites_out_split
    from fmrilm.tokenizer.connectome import ConnectomeTokenizer

    cohort = import_abide(args.abide)
    if cohort is None:
        return 2
    table = cohort.phenotype_table()
    sites = table["site"].astype(str).to_numpy()
    judging = {s.strip() for s in args.judging_sites.split(",") if s.strip()}
    unknown = judging - set(sites)
    if unknown:
        parser.error(f"--judging-sites: {', '.join(sorted(unknown))} not in the cohort's sites")
    scored = table[~table["site"].astype(str).isin(judging)]
    if scored["site"].nunique() < args.folds:
        parser.error(f"--folds {args.folds}: only {scored['site'].nunique()} sites are left to score")
    scans = [cohort.scan(i) for i in range(len(cohort))]
    tasks = {
        card.name: (card, (values == classes[1]).astype(int), known)
        for card, classes, values, known in binary_tasks(table, args.tasks, parser.error).values()
    }
    fc = None if args.no_baselines else fc_features(cohort)
    results: dict[str, dict[str, list[float]]] = {}
    for k, test_sites in enumerate(site_folds(scored, args.folds, args.seed)):
        t0 = time.perf_counter()
        split = leave_sites_out_split(cohort, test_sites=test_sites)
        train, test = np.asarray(split["train"]), np.asarray(split["test"])
        rows: dict[str, np.ndarray] = {}
        for variant in args.variants:
            config = variant.config(len(train), seed=args.seed)
            tok = ConnectomeTokenizer.fit([scans[i] for i in train], config)
            rows[f"{variant.name} ({config.components})"] = tok.continuous(scans)
        tangent = None if fc is None else tangent_features(cohort, train)
        for name, (card, y, known) in tasks.items():
            tr, te = train[known[train]], test[known[test]]
            for label, components in rows.items():
                key = re.sub(r" \(\d+\)$", "", label)
                results.setdefault(key, {}).setdefault(name, []).append(
                    probe_auc(components, y, sites, tr, te)
                )
            if fc is not None:
                for label, features in (("Fisher-z FC + LR", fc), ("tangent FC + LR", tangent)):
                    (res,) = linear_probe(features, table, card, split, inner_groups="site", seed=args.seed)
                    positive = np.asarray(res.y_true) == res.classes[1]
                    auc = float(roc_auc_score(positive, np.asarray(res.y_score)[:, 1]))
                    results.setdefault(label, {}).setdefault(name, []).append(auc)
        counts = ", ".join(rows)
        print(
            f"fold {k + 1} (test {','.join(test_sites)}): {len(train)} training scans; {counts}; "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    print(
        "\nout-of-site AUC of the warm-start probe (baselines: their own probe): mean over folds (per fold)"
    )
    for key, by_task in results.items():
        cells = "  ".join(
            f"{t} {np.mean(a):.3f} ({' '.join(f'{x:.2f}' for x in a)})" for t, a in by_task.items()
        )
        print(f"{key:22s} {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
