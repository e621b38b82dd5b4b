"""Benchmark: the Stage 1 fMRI tokenizer — reconstruction, codebook use, text retrieval, probes, speed.

    python -m fmrilm.eval.bench_tokenizer [--abide ../shared/data/abide] [--work DIR] [--steps 800]
        [--sim-subjects 60] [--sim-steps 600] [--llm smollm2] [--text-column text_fc] [--text-max-length 64]
        [--threads 1] [--json OUT.json] [--skip-abide] [--skip-align] [--subject-weight 0]

Three parts, each against a baseline run in the same process:

1. Simulated cohort with descriptor alignment: a cohort is simulated (Dosenbach-160), its descriptor corpus is
   built (`fmrilm corpus build`), and the default tokenizer is trained on the training subjects with the
   alignment losses against the frozen default LLM's embeddings of one descriptor family. On held-out
   subjects: reconstruction R² (against each region's mean over the window: R² 0 = that baseline),
   codebook usage and perplexity, and fMRI -> descriptor retrieval top-1 / top-5 among the held-out windows'
   distinct texts, against chance (k / number of texts).
2. ABIDE (real data, CC200): one subject-level split stratified by diagnosis (`fmrilm.splits`); the default
   tokenizer is trained on the training subjects only (reconstruction + commitment); on the test subjects:
   reconstruction R², codebook usage and perplexity; then linear probes (standardization + logistic
   regression / ridge, CV inside the training part) on pooled codes (mean quantized latent; code histogram)
   for autism, sex and age, next to Fisher-z FC + the same linear models on the same split.
3. Speed: windows encoded per second by the default configuration on 200-region windows, with 1 and 2 CPU
   threads, next to Fisher-z FC of the same windows.

Intermediate results (cohorts, corpus, trained tokenizers) are kept in ``--work`` and reused on a re-run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fmrilm.safety import nonnegative_float, nonnegative_int, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = ("diagnosis", "sex", "age")


def _train(cfg, log_name: str):
    """Train (or reuse a finished run in ``cfg.out``) and return the output folder."""
    from fmrilm.train.stage1 import train_tokenizer

    out = Path(cfg.out)
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        print(f"{log_name}: reusing {out}")
        return out
    t0 = time.perf_counter()
    train_tokenizer(cfg, resume=out.exists())  # an interrupted run (marked by train_config.json) continues
    print(f"{log_name}: trained in {time.perf_counter() - t0:.0f} s")
    return out


def held_out_quality(model, cohort, rows) -> dict[str, float]:
    """R² (all patches, and patches hidden from the encoder), codebook usage/perplexity on ``rows``."""
    import torch
    from fmrilm.train.stage1 import cohort_windows

    from fmrilm.tokenizer.metrics import code_usage, reconstruction_r2

    data = cohort_windows(cohort.select(rows), model.config)
    x, m = torch.from_numpy(data["windows"]), torch.from_numpy(data["mask"])
    coords = torch.as_tensor(cohort.atlas.coords)
    result = reconstruction_r2(model, x, m, coords, mask_ratio=0.5)
    result.update(code_usage(model.encode(x, coords, m), model.config.codebook_size))
    result["n_windows"] = int(len(x))
    return result


def part_simulated(args, work: Path) -> dict:
    from fmrilm.data_gen.corpus import build_corpus
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort
    from fmrilm.train.common import subject_split
    from fmrilm.train.stage1 import Stage1Config

    from fmrilm.cohort import load_cohort

    sim_dir = work / "sim"
    if not (sim_dir / "cohort.json").exists():
        cohort = simulate_cohort(
            SimulationConfig(
                n_subjects=args.sim_subjects, atlas="dosenbach160", n_sites=3, seed=args.seed + 11
            )
        )
        cohort.save(sim_dir)
    cohort = load_cohort(sim_dir)
    table = cohort.phenotype_table()
    val_fraction = 0.2
    held = subject_split(table["subject_id"].tolist(), val_fraction, seed=args.seed)  # the trainer's split
    t0 = time.perf_counter()
    build_corpus(
        cohort,
        work / "sim_corpus",
        fit_indices=np.flatnonzero(~held).tolist(),
        fit_on="training subjects",
        units=("window",),
        seed=args.seed,
        progress=True,
    )
    t_corpus = time.perf_counter() - t0
    cfg = Stage1Config(
        cohorts=[str(sim_dir)],
        out=str(work / "tok_sim_aligned"),
        corpus=[str(work / "sim_corpus")],
        llm=args.llm,
        align=not args.skip_align,
        text_columns=[args.text_column],
        text_max_length=args.text_max_length,
        steps=args.sim_steps,
        val_fraction=val_fraction,
        eval_every=max(1, args.sim_steps // 4),
        save_every=max(1, args.sim_steps // 4),
        max_val_windows=100_000,
        seed=args.seed,
        threads=args.threads,
    )
    out = _train(cfg, "simulated (aligned)")
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["val"][-1]
    split_info = json.loads((out / "split.json").read_text())["cohorts"]
    val_subjects = set(next(iter(split_info.values()))["val_subjects"])
    train_subjects = set(table["subject_id"]) - val_subjects
    train_retrieval = (
        window_retrieval(
            out, cohort, work / "sim_corpus", args.text_column, train_subjects, len(val_subjects)
        )
        if metrics["setup"]["alignment"]
        else None
    )
    return {
        "cohort": {"n_scans": len(cohort), "atlas": cohort.atlas.name, "held_out_subjects": int(held.sum())},
        "corpus_build_s": t_corpus,
        "train_steps": args.sim_steps,
        "alignment": metrics["setup"]["alignment"],
        "n_texts_train_and_val": metrics["setup"]["n_texts"],
        "held_out": final,
        "train_windows_retrieval": train_retrieval,
    }


def window_retrieval(
    out: Path, cohort, corpus_dir: Path, column: str, subjects: set, n_subjects: int
) -> dict:
    """Retrieval among the windows of ``n_subjects`` of ``subjects`` (seeded), with the cached LLM
    embeddings: on training subjects it shows what the alignment fitted, next to the held-out figure."""
    import torch
    from fmrilm.train.stage1 import cohort_windows, load_window_texts
    from safetensors.torch import load_file

    from fmrilm.tokenizer import FmriTokenizerModel
    from fmrilm.tokenizer.metrics import retrieval_accuracy
    from fmrilm.tokenizer.text_embedding import text_key

    model = FmriTokenizerModel.from_pretrained(out)
    cache: dict = {}
    for path in out.glob("text_embeddings-*.safetensors"):
        cache.update(load_file(str(path)))
    texts = load_window_texts(corpus_dir, [column])
    chosen = sorted(np.random.default_rng(0).choice(sorted(subjects), n_subjects, replace=False).tolist())
    table = cohort.phenotype_table()
    data = cohort_windows(cohort.select(np.flatnonzero(table["subject_id"].isin(chosen))), model.config)
    keys = [(str(s), int(w)) for s, w in zip(data["scan_ids"], data["window_index"], strict=True)]
    rows = [i for i, k in enumerate(keys) if k in texts]
    uniq = sorted({texts[keys[i]] for i in rows})
    target = torch.tensor([uniq.index(texts[keys[i]]) for i in rows])
    emb = torch.stack([cache[text_key(t)] for t in uniq]) - model.text_center
    coords = torch.as_tensor(cohort.atlas.coords)
    x, m = torch.from_numpy(data["windows"][rows]), torch.from_numpy(data["mask"][rows])
    with torch.no_grad():
        brain = model.align_proj(model.embed(x, coords, m))
    return retrieval_accuracy(brain, emb, target)


def part_abide(args, work: Path) -> dict:
    import torch
    from fmrilm.eval.baselines import fc_features, linear_probe
    from fmrilm.eval.evaluate import code_features
    from fmrilm.instructions.spec import load_task
    from fmrilm.train.stage1 import Stage1Config

    from fmrilm.cohort import load_cohort
    from fmrilm.cohort_import import import_cohort
    from fmrilm.splits import stratified_split
    from fmrilm.tokenizer import FmriTokenizerModel

    abide = Path(args.abide)
    cohort_dir = work / "abide"
    if not (cohort_dir / "cohort.json").exists():
        import_cohort(
            abide / "phenotypes.csv",
            atlas=abide / "cc200_centroids.csv",
            npz=abide / "timeseries_cc200.npz",
            mapping="abide",
            progress=False,
        ).save(cohort_dir)
    cohort = load_cohort(cohort_dir)
    table = cohort.phenotype_table()
    split = stratified_split(cohort, label="diagnosis", test_size=0.2, seed=args.seed)
    train_dir = work / "abide_train"
    if not (train_dir / "cohort.json").exists():
        cohort.select(split["train"], name="abide-train").save(train_dir)
    cfg = Stage1Config(
        cohorts=[str(train_dir)],
        out=str(
            work / ("tok_abide" if not args.subject_weight else f"tok_abide_subject{args.subject_weight:g}")
        ),
        steps=args.steps,
        loss={"subject_weight": args.subject_weight},
        val_fraction=0.1,
        eval_every=max(1, args.steps // 4),
        save_every=max(1, args.steps // 4),
        seed=args.seed,
        threads=args.threads,
    )
    out = _train(cfg, "ABIDE (training subjects)")
    model = FmriTokenizerModel.from_pretrained(out)
    torch.set_num_threads(args.threads)
    quality = held_out_quality(model, cohort, split["test"])

    t0 = time.perf_counter()
    fc = fc_features(cohort, progress=True)
    t_fc = time.perf_counter() - t0
    t0 = time.perf_counter()
    latents = code_features(model, cohort, "latents", progress=True)
    hist = code_features(model, cohort, "histogram", progress=True)
    t_codes = time.perf_counter() - t0
    probes: dict[str, dict] = {}
    for name in TASKS:
        task = load_task(name)
        for method, X in (("fc_linear", fc), ("codes_latents", latents), ("codes_histogram", hist)):
            (res,) = linear_probe(
                X, table, task, split, method=method, inner_groups="subject_id", seed=args.seed
            )
            res.score(n_boot=args.n_boot, seed=args.seed)
            probes[f"{name}/{method}"] = {"metrics": res.metrics, "n": res.n, "info": res.info}
    return {
        "cohort": {
            "n_scans": len(cohort),
            "train_scans": len(split["train"]),
            "test_scans": len(split["test"]),
            "test_subjects": int(table.iloc[split["test"]]["subject_id"].nunique()),
        },
        "train_steps": args.steps,
        "held_out": quality,
        "probes": probes,
        "features_s": {"fc": t_fc, "codes_both": t_codes},
        "tokenizer_dir": str(out),
    }


def part_speed(model_dir: str | None, n_windows: int = 256, n_regions: int = 200, rounds: int = 3) -> dict:
    """Windows per second: tokenizer encode (default config) vs Fisher-z FC of the same windows."""
    import torch

    from fmrilm.atlas import Atlas
    from fmrilm.descriptors.connectivity import correlation, fisher_z
    from fmrilm.tokenizer import FmriTokenizerConfig, FmriTokenizerModel

    if model_dir:
        model = FmriTokenizerModel.from_pretrained(model_dir)
    else:
        model = FmriTokenizerModel(FmriTokenizerConfig())
    config = model.config
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((n_windows, config.window_length, n_regions)).astype(np.float32)
    coords = Atlas.builtin("seitzman300").coords[:n_regions]
    previous = torch.get_num_threads()
    result: dict = {"n_windows": n_windows, "n_regions": n_regions, "batch_size": 64}
    try:
        for _ in range(rounds):  # methods take turns within a round; the best round is kept (shared machine)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                model.encode(windows[:64], coords)  # warm-up
                t0 = time.perf_counter()
                model.encode(windows, coords, batch_size=64)
                key = f"encode_windows_per_s_{threads}t"
                result[key] = max(result.get(key, 0.0), n_windows / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for w in windows:
                fisher_z(correlation(w))
            result["fc_windows_per_s"] = max(
                result.get("fc_windows_per_s", 0.0), n_windows / (time.perf_counter() - t0)
            )
    finally:
        torch.set_num_threads(previous)
    result["encode_vs_fc_2t"] = result["encode_windows_per_s_2t"] / result["fc_windows_per_s"]
    result["parameters"] = sum(p.numel() for p in model.parameters())
    return result


def _fmt(metric: dict) -> str:
    return f"{metric['value']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument(
        "--work", default="/tmp/fmrilm-bench-tokenizer", help="folder for intermediate results"
    )
    parser.add_argument("--steps", type=positive_int, default=800, help="ABIDE tokenizer training steps")
    parser.add_argument("--sim-subjects", type=positive_int, default=60)
    parser.add_argument("--sim-steps", type=positive_int, default=600)
    parser.add_argument("--llm", default=None, help="base LLM for text embeddings (default: SmolLM2-135M)")
    parser.add_argument("--text-column", default="text_fc", help="descriptor family aligned to")
    parser.add_argument("--text-max-length", type=positive_int, default=64)
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads for training (1 is polite)"
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--n-boot", type=positive_int, default=1000)
    parser.add_argument(
        "--subject-weight",
        type=nonnegative_float,
        default=0.0,
        help="ABIDE tokenizer with the subject loss (each window predicts its scan's connectome components)",
    )
    parser.add_argument("--skip-abide", action="store_true")
    parser.add_argument("--skip-align", action="store_true", help="simulated part without the LLM")
    parser.add_argument("--skip-sim", action="store_true")
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    threadpool_limits(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "args": vars(args)}

    if not args.skip_sim:
        figures["simulated"] = part_simulated(args, work)
    abide_ok = (Path(args.abide) / "phenotypes.csv").exists()
    if not args.skip_abide and not abide_ok:
        print(f"ABIDE folder not found at {args.abide}: skipping the ABIDE part", file=sys.stderr)
    if not args.skip_abide and abide_ok:
        figures["abide"] = part_abide(args, work)
    with threadpool_limits(2):
        trained = work / "tok_abide"
        default_dir = str(trained) if (trained / "model.safetensors").exists() else None
        figures["speed"] = part_speed(figures.get("abide", {}).get("tokenizer_dir", default_dir))

    print()
    if "simulated" in figures:
        s = figures["simulated"]["held_out"]
        print(
            f"Simulated ({figures['simulated']['cohort']['n_scans']} subjects, Dosenbach-160), held-out subjects:"
        )
        print(
            f"  reconstruction R2 {s['r2']:.3f} (masked patches {s['r2_masked']:.3f}); 0 = per-window region mean"
        )
        print(
            f"  codebook usage {s['usage']:.3f} ({s['codes_used']} codes), perplexity {s['perplexity']:.1f}"
        )
        if "retrieval_top1" in s:
            print(
                f"  retrieval among {s['retrieval_n_texts']} texts: top-1 {s['retrieval_top1']:.3f} "
                f"(chance {s['retrieval_chance_top1']:.3f}, {s['retrieval_top1'] / s['retrieval_chance_top1']:.1f}x), "
                f"top-5 {s['retrieval_top5']:.3f} (chance {s['retrieval_chance_top5']:.3f}, "
                f"{s['retrieval_top5'] / s['retrieval_chance_top5']:.1f}x)"
            )
        tr = figures["simulated"].get("train_windows_retrieval")
        if tr:
            print(
                f"  (as many training subjects: top-1 {tr['top1']:.3f} among {tr['n_texts']} texts, "
                f"chance {tr['chance_top1']:.3f}; top-5 {tr['top5']:.3f}, chance {tr['chance_top5']:.3f})"
            )
    if "abide" in figures:
        a = figures["abide"]
        q = a["held_out"]
        print(f"ABIDE, {a['cohort']['test_scans']} test scans ({a['cohort']['test_subjects']} subjects):")
        print(
            f"  reconstruction R2 {q['r2']:.3f} (masked patches {q['r2_masked']:.3f}); 0 = per-window region mean"
        )
        print(
            f"  codebook usage {q['usage']:.3f} ({q['codes_used']} codes), perplexity {q['perplexity']:.1f}"
        )
        print("| task | method | metric | value [95% CI] | vs FC |")
        print("| --- | --- | --- | --- | --- |")
        for task in TASKS:
            reg = task == "age"
            for metric in ("mae", "pearson_r") if reg else ("auc", "balanced_accuracy"):
                fc_val = a["probes"][f"{task}/fc_linear"]["metrics"][metric]["value"]
                for method in ("fc_linear", "codes_latents", "codes_histogram"):
                    m = a["probes"][f"{task}/{method}"]["metrics"][metric]
                    vs = f"{m['value'] / fc_val:.2f}x" if metric == "mae" else f"{m['value'] - fc_val:+.3f}"
                    print(f"| {task} | {method} | {metric} | {_fmt(m)} | {vs} |")
    sp = figures["speed"]
    print(
        f"Speed ({sp['n_regions']} regions, default config, {sp['parameters']} parameters): encode "
        f"{sp['encode_windows_per_s_1t']:.1f} windows/s (1 thread), {sp['encode_windows_per_s_2t']:.1f} windows/s "
        f"(2 threads); Fisher-z FC of the same windows {sp['fc_windows_per_s']:.1f} windows/s "
        f"(encode = {sp['encode_vs_fc_2t']:.2f}x FC)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
