"""The information ladder: where a scan's trait signal is kept or lost on its way into the LLM.

    python -m fmrilm.eval.bench_information [--abide ../shared/data/abide] [--folds 5] [--only-folds 0,1]
        [--model DIR --test-sites UCLA_1,KKI,OHSU [--model DIR2 --test-sites ...]] [--base smollm2]
        [--tasks diagnosis,sex,age] [--json OUT]

The same probe (standardized logistic regression / ridge, hyperparameters by inner cross-validation grouped
by site, `fmrilm.eval.baselines.linear_probe`) on every representation a scan passes through, on the
leave-sites-out folds of `bench_baselines` (the connectome tokenizer is fitted on each fold's training sites
only, so no test site is ever seen):

    fisher_z_fc            Fisher-z correlations (the classic baseline)
    tangent_fc             tangent-space FC at the training population's geometric mean (nilearn)
    connectome_continuous  the PCA components the connectome tokens carry (what soft tokens add)
    connectome_dequantized what the residual quantizer keeps (all levels)
    connectome_codes       one-hot of the codes the tokens show (first level): what discrete tokens carry
    llm_input_soft         the input embeddings the LLM receives at the connectome-token positions (soft)
    llm_input_summary      the input embedding at the part's start marker, which holds the scan summary (a
                           projection of all components: the position the tuned LLM reads traits from)
    llm_input_codes        the same with codes only (discrete tokens, or the LLM loaded with plain transformers)
    llm_hidden             the LLM's last hidden state, mean over the connectome-token positions (soft inputs)
    llm_hidden_last        the LLM's last hidden state at the prompt's last position, where the answer is read

Each row's ratio to Fisher-z FC is printed per task. With ``--model`` the model's own tokenizer and LLM are
used (trained soft projection included) on one fold, ``--test-sites``: the model must not have seen them.
``--model`` and ``--test-sites`` may be repeated in pairs (one trained model per leave-sites-out fold, as
`fmrilm demo --test-sites` trains them): the folds' predictions are then pooled as the default folds' are.
Without it, the LLM rows use an untrained soft projection on the base model: a random linear map, so they
show what a projection can keep, not what training made of it.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.safety import nonnegative_int, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "fisher_z_fc",
    "tangent_fc",
    "connectome_continuous",
    "connectome_dequantized",
    "connectome_codes",
    "llm_input_soft",
    "llm_input_summary",
    "llm_input_codes",
    "llm_hidden",
    "llm_hidden_last",
)


def one_hot(codes: np.ndarray, size: int) -> np.ndarray:
    """``(N, G)`` codes -> ``(N, G * size)`` one-hot blocks."""
    n, g = codes.shape
    out = np.zeros((n, g * size), dtype=np.float32)
    out[np.arange(n)[:, None], np.arange(g)[None] * size + codes] = 1.0
    return out


def connectome_rows(tokenizer: Any, scans: list[Any]) -> dict[str, np.ndarray]:
    """Tangent FC, continuous components, dequantized components and first-level codes of every scan."""
    from fmrilm.tokenizer.connectome import one_blas_thread

    with one_blas_thread():
        tangent = np.stack([tokenizer.tangent_vector(tokenizer.reference_timeseries(s)) for s in scans])
    z = tokenizer.components_of(tangent).astype(np.float32)
    codes, deq = tokenizer.quantize(z)
    return {
        "tangent_fc": tangent.astype(np.float32),
        "connectome_continuous": z,
        "connectome_dequantized": deq.astype(np.float32),
        "connectome_codes": one_hot(codes[:, :, 0], tokenizer.config.codebook_size),
    }


def llm_rows(model: Any, tokens: list[Any], batch_size: int = 32) -> dict[str, np.ndarray]:
    """What the LLM receives at the connectome-token positions (soft and codes-only), and its pooled last
    hidden state, for prompts that hold only the scan's connectome tokens and a question."""
    import torch

    proc = model.processor
    k = proc.config.num_latents
    soft, summary, codes_only, hidden, final = [], [], [], [], []
    llm = model.llm
    llm.eval()
    for s in range(0, len(tokens), batch_size):
        convs = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "fmri", "codes": np.zeros((0, k), np.int64), "connectome": t},
                        {"type": "text", "text": "Describe this resting-state fMRI scan."},
                    ],
                }
            ]
            for t in tokens[s : s + batch_size]
        ]
        batch = proc(convs, add_generation_prompt=True).to(model.device)
        ids = batch["input_ids"]
        mask = proc.ids.is_connectome(ids)
        with torch.no_grad():
            embeds_codes = llm.get_input_embeddings()(ids)
            embeds = model.embed_inputs(ids, batch.get("connectome_values"))
            out = llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_hidden_states=True)
        last = out.hidden_states[-1]
        n = int(mask[0].sum())
        soft.append(embeds[mask].reshape(len(ids), n, -1).flatten(1).float().cpu().numpy())
        if model.soft_projection is not None and model.soft_projection.summary is not None:
            start = ids == proc.ids.start_id  # one part per prompt: one start marker
            summary.append(embeds[start].reshape(len(ids), -1).float().cpu().numpy())
        codes_only.append(embeds_codes[mask].reshape(len(ids), n, -1).flatten(1).float().cpu().numpy())
        hidden.append((last * mask[..., None]).sum(1).div(n).float().cpu().numpy())
        end = batch["attention_mask"].cumsum(1).argmax(1)  # the last real token, whichever side pads
        final.append(last[torch.arange(len(ids)), end].float().cpu().numpy())
    rows = {"llm_input_summary": np.concatenate(summary)} if summary else {}
    return rows | {
        "llm_input_soft": np.concatenate(soft),
        "llm_input_codes": np.concatenate(codes_only),
        "llm_hidden": np.concatenate(hidden),
        "llm_hidden_last": np.concatenate(final),
    }


def untrained_model(connectome: Any, base: str | None) -> Any:
    """A fresh fMRI-LM on ``base`` whose tokenizer carries ``connectome`` (window part tiny and unused)."""
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_fmri_tokenizer

    host = tiny_fmri_tokenizer()
    host.set_connectome(connectome)
    return FmriLM.from_base(base, host)


def main(argv: list[str] | None = None) -> int:
    from fmrilm.tokenizer.connectome import ConnectomeConfig

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--abide", default=str(REPO_ROOT / ".." / "shared" / "data" / "abide"))
    parser.add_argument(
        "--folds", type=positive_int, default=5, help="leave-sites-out folds (as bench_baselines)"
    )
    parser.add_argument("--only-folds", default=None, help="comma-separated fold numbers to run (0-based)")
    parser.add_argument(
        "--test-sites",
        action="append",
        default=None,
        help="one fold with these test sites instead (repeat it, one per --model, for several folds)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="a trained fmrilm model folder that never saw its --test-sites (repeatable, in pairs)",
    )
    parser.add_argument("--base", default=None, help="base LLM for the untrained LLM rows (default SmolLM2)")
    parser.add_argument("--tasks", default="diagnosis,sex,age")
    parser.add_argument("--connectome-tokens", type=positive_int, default=32)
    parser.add_argument("--connectome-components", type=positive_int, default=ConnectomeConfig.components)
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM rows")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads for the LLM rows")
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)

    import torch
    from fmrilm.eval.baselines import fc_features, linear_probe
    from fmrilm.eval.bench_baselines import import_abide, site_folds
    from fmrilm.eval.report import MethodResult
    from fmrilm.instructions.spec import load_task

    from fmrilm.splits import leave_sites_out_split
    from fmrilm.tokenizer.connectome import ConnectomeTokenizer, ConnectomeTokens

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.model and len(args.model) != len(args.test_sites or []):
        parser.error("each --model needs its own --test-sites: the sites that model never saw")
    if args.test_sites and not args.model and len(args.test_sites) > 1:
        parser.error("--test-sites is given once without --model (several folds come from --folds)")
    cohort = import_abide(args.abide)
    if cohort is None:
        return 2
    table = cohort.phenotype_table()
    tasks = {t: load_task(t) for t in args.tasks.split(",")}
    scans = [cohort.scan(i) for i in range(len(cohort))]
    fisher = fc_features(cohort, progress=True)
    if args.test_sites:
        folds = [[s.strip() for s in sites.split(",")] for sites in args.test_sites]
    else:
        folds = site_folds(table, args.folds, args.seed)
        if args.only_folds:
            folds = [folds[int(i)] for i in args.only_folds.split(",")]
    runs: dict[tuple[str, str], list[MethodResult]] = {}
    for k, test_sites in enumerate(folds):
        t0 = time.perf_counter()
        split = leave_sites_out_split(cohort, test_sites=test_sites)
        if args.model:
            from fmrilm.model.modeling import FmriLM

            fold_model = FmriLM.from_pretrained(args.model[k])  # one fold's model at a time in memory
            connectome = fold_model.processor.connectome_tokenizer
        else:
            config = ConnectomeConfig(
                num_tokens=args.connectome_tokens, components=args.connectome_components, seed=args.seed
            )
            connectome = ConnectomeTokenizer.fit([scans[i] for i in split["train"]], config)
            fold_model = None if args.no_llm else untrained_model(connectome, args.base)
        print(f"fold {k + 1}: connectome tokenizer ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        features = {"fisher_z_fc": fisher, **connectome_rows(connectome, scans)}
        print(f"fold {k + 1}: connectome rows ({time.perf_counter() - t0:.0f} s)", flush=True)
        if fold_model is not None:
            m = connectome.config.num_tokens
            codes, _ = connectome.quantize(features["connectome_continuous"])
            tokens = [
                ConnectomeTokens(c, z.reshape(m, -1))
                for c, z in zip(codes, features["connectome_continuous"], strict=True)
            ]
            features.update(llm_rows(fold_model, tokens))
            print(f"fold {k + 1}: LLM rows ({time.perf_counter() - t0:.0f} s)", flush=True)
        for name, task in tasks.items():
            for row, X in features.items():
                for r in linear_probe(X, table, task, split, method=row, inner_groups="site", seed=args.seed):
                    runs.setdefault((name, row), []).append(r)
        print(
            f"fold {k + 1}/{len(folds)} ({','.join(test_sites)}) {time.perf_counter() - t0:.0f} s", flush=True
        )

    figures = report(runs, tasks)
    if args.json:
        out = {"folds": folds, "model": args.model, "figures": figures}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def report(runs: dict[tuple[str, str], list[Any]], tasks: dict[str, Any]) -> dict[str, Any]:
    """Print one table per task (pooled over folds; ratio to Fisher-z FC) and return the figures."""
    from fmrilm.eval.metrics import evaluate
    from fmrilm.eval.report import MethodResult

    figures: dict[str, Any] = {}
    for name in tasks:
        rows = [r for r in ROWS if (name, r) in runs]
        pooled = {}
        for row in rows:
            p = MethodResult.pooled(runs[(name, row)])
            kind = "regression" if p.task_type == "regression" else "classification"
            pooled[row] = evaluate(
                kind, p.y_true, y_score=p.y_score, classes=p.classes, y_pred=p.y_pred, n_boot=0
            )
        keys = ["auc", "balanced_accuracy"] if "auc" in pooled[rows[0]] else ["mae", "pearson_r"]
        per_fold = {row: fold_values(runs[(name, row)], keys[0]) for row in rows}
        n = sum(r.n for r in runs[(name, rows[0])])
        print(f"\n{name}: out-of-site predictions pooled over folds (n = {n}); {keys[0]} per fold")
        print(
            f"{'representation':38s} "
            + " ".join(f"{k:>18s}" for k in keys)
            + "   ratio to FC"
            + (f"   {keys[0]} per fold (mean)" if len(per_fold[rows[0]]) > 1 else "")
        )
        base = pooled["fisher_z_fc"][keys[0]]["value"]
        for row in rows:
            vals = [pooled[row][k]["value"] for k in keys]
            ratio = vals[0] / base if keys[0] != "mae" else base / vals[0]
            folds = per_fold[row]
            line = f"{row:38s} " + " ".join(f"{v:18.3f}" for v in vals) + f"   {ratio:11.3f}"
            if len(folds) > 1:
                line += "   " + " ".join(f"{v:.2f}" for v in folds) + f" ({np.mean(folds):.3f})"
            print(line)
            figures[f"{name}/{row}"] = {k: pooled[row][k]["value"] for k in keys} | {
                "ratio_to_fc": ratio,
                f"{keys[0]}_per_fold": folds,
            }
    return figures


def fold_values(results: list[Any], metric: str) -> list[float]:
    """``metric`` of each fold's out-of-site predictions on their own: pooling folds mixes their probes' score
    scales (a strongly regularized probe's offset moves from fold to fold), so a row can rank scans well
    within every fold and still pool poorly; the per-fold figures show which."""
    from fmrilm.eval.metrics import evaluate

    values = []
    for r in results:
        kind = "regression" if r.task_type == "regression" else "classification"
        figures = evaluate(kind, r.y_true, y_score=r.y_score, classes=r.classes, y_pred=r.y_pred, n_boot=0)
        values.append(float(figures[metric]["value"]))
    return values


if __name__ == "__main__":
    raise SystemExit(main())
