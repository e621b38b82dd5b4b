"""Benchmark: networks discovered from the model alone, scored against the atlas's networks, next to raw FC.

    python -m fmrilm.eval.bench_networks [--model DIR | --tokenizer DIR] [--abide ../shared/data/abide]
        [--sim-scans 8] [--abide-scans 8] [--abide-sites UCLA_1,KKI,OHSU] [--llm-scans 1]
        [--methods llm,connectome,encoder] [--datasets sim,abide] [--seed 0] [--json OUT.json]

Datasets (no scan below was used to fit or train anything of the model it is read with):

- ``sim``: ``--sim-scans`` subjects of `fmrilm simulate`'s defaults on Dosenbach-160 (4 sites, TR 1.5-3 s,
  measurement noise, drift, motion spikes), drawn with seed ``1000 + --seed`` (the demo simulates with seed 0,
  so none of these subjects trained its model); the reference is the 6 planted networks (K = 6).
- ``abide``: ``--abide-scans`` scans drawn (seeded) from the held-out sites ``--abide-sites`` (the demo holds
  UCLA_1, KKI and OHSU out of every stage); the reference is each CC200 region's nearest Seitzman-300 network by
  MNI distance (`fmrilm.atlas`: within 20 mm, else 'unassigned', which is left out of the scores); K = the
  number of those networks (13).

The model (`fmrilm.networks.discover_networks`, methods ``llm``, ``connectome``, ``encoder``) is ``--model`` (a
saved `FmriLM`), ``--tokenizer`` (a Stage-1 folder: ``connectome`` and ``encoder`` only), or neither: an
*untrained stand-in* built per dataset: connectome tokens fitted (PCA of tangent FC, no labels) on
``--fit-scans`` other scans of the dataset, a randomly initialised window tokenizer (``small`` preset) and a
tiny random LLM (`fmrilm.model.testing`): the floor that the structure of the representation alone gives.

Each method's networks are scored by adjusted Rand index and accuracy after one-to-one (Hungarian) matching,
next to `fmrilm.networks.fc_networks` (the same spectral clustering on the mean Fisher-z FC) **of the same
scans**: the ``llm`` method runs one LLM pass per region and scan, so it reads only the first ``--llm-scans``
scans, and its FC row is computed on those.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import nonnegative_int, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_SITES = ("UCLA_1", "KKI", "OHSU")
DATASETS = ("sim", "abide")
#: Simulation seeds start here: the demo's cohort uses seed 0, so a demo model never saw these subjects.
SIM_SEED = 1000


# ------------------------------------------------------------------------------------------------ data
def simulated_scans(n_scans: int, n_fit: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``(scans to cluster, other subjects to fit an untrained stand-in on)`` from the simulator's defaults."""
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    cohort = simulate_cohort(SimulationConfig(n_subjects=n_scans + n_fit, seed=SIM_SEED + seed))
    scans = [cohort.scan(i) for i in range(len(cohort))]
    return scans[:n_scans], scans[n_scans:]


def abide_scans(
    folder: Path, n_scans: int, n_fit: int, sites: list[str], seed: int
) -> tuple[list[Any], list[Any]]:
    """``(scans of the held-out sites, scans of the other sites to fit a stand-in on)``, seeded choices."""
    import pandas as pd

    from fmrilm.atlas import Atlas
    from fmrilm.scan import Scan

    atlas = Atlas.from_centroids_table(folder / "cc200_centroids.csv", name="cc200")
    table = pd.read_csv(folder / "phenotypes.csv")
    unknown = sorted(set(sites) - set(table["SITE_ID"]))
    if unknown:
        raise SystemExit(f"unknown ABIDE sites {unknown}; sites: {sorted(set(table['SITE_ID']))}")
    arrays = np.load(folder / "timeseries_cc200.npz")
    rng = np.random.default_rng(seed)
    held = np.flatnonzero(table["SITE_ID"].isin(sites).to_numpy())
    other = np.flatnonzero(~table["SITE_ID"].isin(sites).to_numpy())
    chosen = np.sort(rng.choice(held, min(n_scans, len(held)), replace=False))
    fit = np.sort(rng.choice(other, min(n_fit, len(other)), replace=False))

    def scan(i: int) -> Any:
        row = table.iloc[int(i)]
        return Scan(
            np.asarray(arrays[str(row["FILE_ID"])], dtype=np.float32),
            float(row["TR"]),
            atlas,
            scan_id=str(row["FILE_ID"]),
            subject_id=str(row["SUB_ID"]),
            site=str(row["SITE_ID"]),
        )

    return [scan(i) for i in chosen], [scan(i) for i in fit]


# ----------------------------------------------------------------------------------------------- models
def stand_in(fit_scans: list[Any], seed: int = 0) -> Any:
    """An untrained `FmriLM`: connectome tokens fitted on ``fit_scans``, random small tokenizer, tiny random LLM."""
    import torch

    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm
    from fmrilm.tokenizer import FmriTokenizerConfig, FmriTokenizerModel
    from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

    components = 32 if len(fit_scans) > 32 else 8
    config = ConnectomeConfig(num_tokens=8, components=components, codebook_size=64, num_levels=2)
    torch.manual_seed(seed)
    tokenizer = FmriTokenizerModel(FmriTokenizerConfig.from_preset("small")).eval()
    tokenizer.set_connectome(ConnectomeTokenizer.fit(fit_scans, config))
    llm, text_tokenizer = tiny_causal_lm(seed=seed)
    return FmriLM.from_base(llm, tokenizer, tokenizer=text_tokenizer, atlas=fit_scans[0].atlas).eval()


def load_model(args: argparse.Namespace) -> tuple[Any, str]:
    if args.model:
        from fmrilm.model.modeling import FmriLM

        return FmriLM.from_pretrained(args.model).eval(), f"model {args.model}"
    if args.tokenizer:
        from fmrilm.tokenizer import FmriTokenizerModel

        return FmriTokenizerModel.from_pretrained(
            args.tokenizer
        ).eval(), f"Stage-1 tokenizer {args.tokenizer}"
    return None, "untrained stand-in (fitted connectome tokens, random tokenizer, tiny random LLM)"


# ------------------------------------------------------------------------------------------------- runs
def score_dataset(
    model: Any, scans: list[Any], k: int, methods: list[str], llm_scans: int, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per method: the model's ARI / accuracy and raw FC's on the same scans."""
    from fmrilm.networks import compare_networks, discover_networks, fc_networks

    rows = []
    fc_cache: dict[int, dict[str, Any]] = {}
    for method in methods:
        used = scans[: max(1, llm_scans)] if method == "llm" else scans
        found = discover_networks(model, used, k, method=method, seed=seed, progress=True)
        ours = compare_networks(found)
        if len(used) not in fc_cache:
            fc_cache[len(used)] = compare_networks(fc_networks(used, k, seed=seed))
        fc = fc_cache[len(used)]
        rows.append(
            {
                "method": method,
                "scans": len(used),
                "ari": ours["ari"],
                "accuracy": ours["accuracy"],
                "fc_ari": fc["ari"],
                "fc_accuracy": fc["accuracy"],
                "regions_scored": ours["n_regions"],
                "reference_networks": ours["n_reference"],
            }
        )
        print(
            f"  {method:<10} {len(used):>3} scans  ARI {ours['ari']:+.3f}  accuracy {ours['accuracy']:.3f}   "
            f"raw FC ARI {fc['ari']:+.3f}  accuracy {fc['accuracy']:.3f}",
            flush=True,
        )
    return rows


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("| dataset | K | method | scans | ARI | accuracy | raw FC ARI | raw FC accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, result in results.items():
        for row in result["rows"]:
            print(
                f"| {name} | {result['k']} | {row['method']} | {row['scans']} | {row['ari']:.3f} | "
                f"{row['accuracy']:.3f} | {row['fc_ari']:.3f} | {row['fc_accuracy']:.3f} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="DIR", help="a saved FmriLM (default: an untrained stand-in)")
    which.add_argument("--tokenizer", metavar="DIR", help="a Stage-1 fMRI tokenizer folder instead")
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument(
        "--abide-sites", default=",".join(TEST_SITES), help="held-out sites the scans come from"
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="sim, abide or both")
    parser.add_argument("--sim-scans", type=positive_int, default=8)
    parser.add_argument("--abide-scans", type=positive_int, default=8)
    parser.add_argument(
        "--fit-scans", type=positive_int, default=40, help="scans the untrained stand-in is fitted on"
    )
    parser.add_argument("--llm-scans", type=positive_int, default=1, help="scans the llm method reads (slow)")
    parser.add_argument("--methods", default="llm,connectome,encoder")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads))
    warnings.filterwarnings("ignore", category=UserWarning)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(datasets) - set(DATASETS) or not datasets:
        print(f"--datasets: choose among {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    model, described = load_model(args)
    if args.tokenizer and "llm" in methods:
        methods.remove("llm")
    print(f"network discovery with {described}; methods {', '.join(methods)}")
    results: dict[str, dict[str, Any]] = {}
    for name in datasets:
        if name == "sim":
            scans, fit = simulated_scans(args.sim_scans, args.fit_scans if model is None else 0, args.seed)
        else:
            folder = Path(args.abide)
            if not (folder / "phenotypes.csv").exists():
                print(f"ABIDE folder not found at {folder}: abide skipped", file=sys.stderr)
                continue
            sites = [s.strip() for s in args.abide_sites.split(",") if s.strip()]
            scans, fit = abide_scans(
                folder, args.abide_scans, args.fit_scans if model is None else 0, sites, args.seed
            )
        reference = np.asarray(scans[0].atlas.networks)
        k = len(set(reference.tolist()) - {"unassigned"})
        used = model if model is not None else stand_in(fit, args.seed)
        print(
            f"{name}: {len(scans)} scans, atlas {scans[0].atlas.name} ({scans[0].n_regions} regions), K = {k} "
            f"reference networks ({int((reference == 'unassigned').sum())} unassigned regions left out)",
            flush=True,
        )
        results[name] = {
            "k": k,
            "scan_ids": [s.scan_id for s in scans],
            "rows": score_dataset(used, scans, k, methods, args.llm_scans, args.seed),
        }
    print()
    print_table(results)
    for name, result in results.items():
        for row in result["rows"]:
            if row["fc_ari"] > row["ari"]:
                print(
                    f"{name}: raw FC beats the model's {row['method']} networks (ARI {row['fc_ari']:.3f} vs {row['ari']:.3f})"
                )
    if args.json:
        record = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "model": described,
            "methods": methods,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
