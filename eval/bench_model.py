"""Benchmark of the fMRI-LM: training-step overhead, chat speed, and (given a Stage-2 run) output quality.

    python -m fmrilm.eval.bench_model [--what overhead,chat] [--base smollm2] [--threads 2] [--rounds 5]
    python -m fmrilm.eval.bench_model --what quality --stage2 RUN --cohort DIR --corpus DIR

- **overhead**: one LoRA training step of fmrilm (`FmriLM` with adapters and trainable brain-token rows)
  against plain transformers + peft LoRA on the SAME resized LLM and the SAME token batch (Stage-2 style
  examples: brain tokens, prompt, a descriptor-length answer). fmrilm is timed with the standard token loss
  (pure wrapper + trainable-rows cost) and with Stage 2's example loss (logits only where an answer token is
  learned). Methods alternate within each round; the median step is reported.
- **chat**: one chat turn on the default SmolLM2 in float32: time to first token and decoding tokens/s of
  ``FmriLM.reply`` with a 4-window scan in the prompt, next to plain ``generate`` of the unmodified base model
  on a text prompt of the same length. Both are forced to the same number of new tokens (greedy, KV cache).
- **quality**: a Stage-2 run's model on its held-out subjects (``split.json``): ROUGE-L of ``describe`` against
  the true window descriptors, the share of z-bins stated correctly, and forecast R² of the next window against
  repeating the last window and against predicting the scan mean (0 after z-scoring), next to the tokenizer's
  own reconstruction of the true next window (the ceiling of any forecast decoded from brain tokens).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DESCRIPTOR_LIKE = (
    "Coupling between the default mode and frontoparietal networks is somewhat elevated (z = 1.3). "
    "Visual network segregation is typical (z = 0.2). Global efficiency is somewhat reduced (z = -1.1), "
    "and modularity is markedly elevated (z = 2.4)."
)


def _stage2_batch(model: Any, batch_size: int, n_windows: int, seed: int = 0):
    from fmrilm.model.processing import DESCRIBE_PROMPT

    rng = np.random.default_rng(seed)
    cfg = model.processor.config
    examples = []
    for _ in range(batch_size):
        codes = rng.integers(0, cfg.codebook_size, (n_windows, cfg.num_latents))
        messages = [
            {
                "role": "user",
                "content": [{"type": "fmri", "codes": codes}, {"type": "text", "text": DESCRIBE_PROMPT}],
            },
            {"role": "assistant", "content": DESCRIPTOR_LIKE},
        ]
        examples.append(model.processor.training_example(messages))
    return model.processor.pad(examples)


def bench_overhead(base: str | None, rounds: int, batch_size: int, n_windows: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fmrilm.model.adapters import LoraSettings
    from fmrilm.model.modeling import FmriLM

    torch.manual_seed(0)
    model = FmriLM.from_base(base, codebook_size=512, num_latents=32)
    batch = _stage2_batch(model, batch_size, n_windows)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        plain = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    settings = LoraSettings()
    plain = get_peft_model(
        plain,
        LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=settings.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    model.add_adapters(settings)
    plain.train()
    model.train()
    opt_plain = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-4)
    opt_fmri = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(fn, opt):
        start = time.perf_counter()
        loss = fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    methods = {
        "plain transformers + peft LoRA (baseline)": (lambda: plain(**batch).loss, opt_plain),
        "fmrilm, token loss": (lambda: model(**batch).loss, opt_fmri),
        "fmrilm, Stage-2 example loss": (lambda: model(**batch, loss_reduction="example").loss, opt_fmri),
    }
    for fn, opt in methods.values():  # warm-up (allocator, lazy init)
        step(fn, opt)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, (fn, opt) in methods.items():
            times[name].append(step(fn, opt))
    medians = {name: statistics.median(t) for name, t in times.items()}
    baseline = medians["plain transformers + peft LoRA (baseline)"]
    return {
        "tokens": tuple(batch["input_ids"].shape),
        "answer_tokens": int((batch["labels"] != -100).sum()),
        "trainable": {
            "plain": sum(p.numel() for p in plain.parameters() if p.requires_grad),
            "fmrilm": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
        "rows": [(name, medians[name], medians[name] / baseline) for name in methods],
    }


class _Clock:
    """A generate() streamer that notes when the prompt is in and when each new token comes out."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.calls = 0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls > 1:  # the first call is the prompt
            self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def bench_chat(base: str | None, rounds: int, new_tokens: int, n_windows: int) -> dict[str, Any]:
    import torch

    from fmrilm.model.base_model import load_base_model
    from fmrilm.model.modeling import FmriLM

    model = FmriLM.from_base(base, codebook_size=512, num_latents=32).eval()
    plain, plain_tok = load_base_model(base, dtype=torch.float32)
    plain.eval()
    codes = np.random.default_rng(0).integers(0, 512, (n_windows, 32))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "fmri"},
                {"type": "text", "text": "Describe the brain networks in this scan."},
            ],
        }
    ]
    prompt_len = int(model.processor(messages, [codes])["input_ids"].shape[1])
    words = "Tell me about the brain networks at rest and how they couple. " * 40
    ids = plain_tok(words, add_special_tokens=False)["input_ids"][: prompt_len - 16]
    text_prompt = plain_tok.decode(ids)
    plain_inputs = plain_tok.apply_chat_template(
        [{"role": "user", "content": text_prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )

    def run_fmrilm() -> tuple[float, float, int]:
        clock = _Clock()
        start = time.perf_counter()
        model.reply(messages, [codes], max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=clock)
        return _rates(start, clock)

    def run_plain() -> tuple[float, float, int]:
        clock = _Clock()
        start = time.perf_counter()
        with torch.no_grad():
            plain.generate(
                **plain_inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
                pad_token_id=plain_tok.pad_token_id,
            )
        return _rates(start, clock)

    methods = {
        "plain generate, base SmolLM2 (baseline)": run_plain,
        "fmrilm reply, brain tokens in prompt": run_fmrilm,
    }
    for fn in methods.values():
        fn()
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            results[name].append(fn())
    rows = []
    for name, values in results.items():
        ttft = statistics.median(v[0] for v in values)
        tps = statistics.median(v[1] for v in values)
        rows.append((name, ttft, tps, values[0][2]))
    return {
        "prompt_tokens": {"fmrilm": prompt_len, "plain": int(plain_inputs["input_ids"].shape[1])},
        "rows": rows,
    }


def _rates(start: float, clock: _Clock) -> tuple[float, float, int]:
    n = len(clock.times)
    ttft = clock.times[0] - start
    tps = (n - 1) / (clock.times[-1] - clock.times[0]) if n > 1 else float("nan")
    return ttft, tps, n


# --------------------------------------------------------------------------------------------------- quality
def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge_score's implementation, stemmed)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover - optional
        raise SystemExit("the quality benchmark needs rouge-score: pip install rouge-score") from exc
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_SCORER.score(reference, prediction)["rougeL"].fmeasure)


_SCORER = None


def bin_sequence(text: str) -> list[str]:
    """The z-bins a descriptor states, in order (the templates state them in a fixed feature order)."""
    import re

    from fmrilm.descriptors.text import BINS

    pattern = "|".join(re.escape(b) for b in sorted(BINS, key=len, reverse=True))
    return re.findall(pattern, text.lower())


def bin_accuracy(prediction: str, reference: str) -> float:
    """Share of the reference's z-bins that the prediction states at the same position."""
    truth, said = bin_sequence(reference), bin_sequence(prediction)
    if not truth:
        return float("nan")
    return float(np.mean([i < len(said) and said[i] == b for i, b in enumerate(truth)]))


def r2(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Pooled R² of a (time, regions) prediction against the truth, around each region's own mean."""
    sse = float(((truth - prediction) ** 2).sum())
    sst = float(((truth - truth.mean(0, keepdims=True)) ** 2).sum())
    return 1.0 - sse / sst if sst > 0 else float("nan")


def bench_quality(
    run_dir: Path,
    cohorts: list[str],
    corpora: list[str],
    *,
    max_windows: int = 60,
    max_new_tokens: int = 160,
    max_forecasts: int = 60,
    seed: int = 0,
) -> dict[str, Any]:
    """Describe and forecast held-out windows of a Stage-2 run, with the baselines named in the module doc."""
    import json

    import torch
    from fmrilm.train.stage1 import load_window_texts
    from fmrilm.train.stage2 import corpus_texts

    from fmrilm.cohort import load_cohort
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.processing import valid_windows

    train_config = json.loads((run_dir / "train_config.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    held_out = set(split["val_subjects"])
    cohorts = cohorts or train_config["cohorts"]
    corpora = corpora or train_config["corpus"]
    model = FmriLM.from_pretrained(run_dir / "model")
    tok = model.fmri_tokenizer
    texts: dict[tuple[str, int], str] = {}
    columns = train_config.get("text_columns")  # the descriptor columns this run was trained to say
    for corpus in corpora:
        texts.update(corpus_texts(corpus, columns) if columns else load_window_texts(corpus))
    rng = np.random.default_rng(seed)

    held: list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]] = []  # scan, windows, mask, codes
    train_texts: list[str] = []
    for c in cohorts:
        cohort = load_cohort(c)
        for i in range(len(cohort)):
            scan = cohort.scan(i)
            if str(scan.subject_id) not in held_out:
                train_texts += [t for (sid, w), t in texts.items() if sid == scan.scan_id and w >= 0][:1]
                continue
            windows, mask = tok.windows(scan)
            codes = tok.encode(windows, coords=scan.atlas, mask=mask).numpy()
            held.append((scan, windows, mask, codes))
    valid = {
        k: valid_windows(mask, tok.config.window_length, tok.config.patch_length)
        for k, (_, _, mask, _) in enumerate(held)
    }

    # ---- describe
    targets = [
        (k, w) for k, (scan, _, mask, _) in enumerate(held) for w in range(len(mask))
        if valid[k][w] and (scan.scan_id, w) in texts
    ]  # fmt: skip
    targets = [targets[i] for i in rng.permutation(len(targets))[:max_windows]]
    # A text-only baseline: one fixed training descriptor (the medoid of a sample by ROUGE-L).
    sample = [train_texts[i] for i in rng.permutation(len(train_texts))[:30]]
    medoid = (
        max(sample, key=lambda t: np.mean([rouge_l(t, o) for o in sample if o is not t])) if sample else ""
    )
    rouge, bins, rouge_base, bins_base, bins_typical = [], [], [], [], []
    start = time.perf_counter()
    for k, w in targets:
        scan, _, _, codes = held[k]
        truth = texts[(scan.scan_id, w)]
        said = model.describe(codes, window=w, max_new_tokens=max_new_tokens)
        rouge.append(rouge_l(said, truth))
        bins.append(bin_accuracy(said, truth))
        rouge_base.append(rouge_l(medoid, truth))
        bins_base.append(bin_accuracy(medoid, truth))
        truth_bins = bin_sequence(truth)
        bins_typical.append(
            float(np.mean([b == "typical" for b in truth_bins])) if truth_bins else float("nan")
        )
    describe_s = time.perf_counter() - start

    # ---- forecast
    pairs = [
        (k, w) for k, (_, _, mask, _) in enumerate(held) for w in range(1, len(mask))
        if valid[k][w] and valid[k][w - 1]
    ]  # fmt: skip
    pairs = [pairs[i] for i in rng.permutation(len(pairs))[:max_forecasts]]
    preds, persist, recon, truths = [], [], [], []
    ctx = model.processor.config.forecast_context_windows
    for k, w in pairs:
        scan, windows, mask, codes = held[k]
        context = codes[:w] if ctx is None else codes[max(0, w - ctx) : w]
        predicted = model.forecast_codes(context, 1)
        real = mask[w]
        with torch.no_grad():
            preds.append(tok.decode(predicted, scan.atlas)[0].numpy()[real])
            recon.append(tok.decode(codes[w : w + 1], scan.atlas)[0].numpy()[real])
        persist.append(windows[w - 1][real])
        truths.append(windows[w][real])
    pooled = (lambda xs: np.concatenate(xs)) if pairs else (lambda xs: np.zeros((0, 1)))
    t = pooled(truths)
    return {
        "held-out subjects": len(held_out),
        "described windows": len(targets),
        "ROUGE-L fmrilm describe": _mean_sd(rouge),
        "ROUGE-L fixed training descriptor (baseline)": _mean_sd(rouge_base),
        "z-bins stated correctly, fmrilm": _mean_sd(bins),
        "z-bins stated correctly, fixed training descriptor (baseline)": _mean_sd(bins_base),
        "z-bins stated correctly, always 'typical' (baseline)": _mean_sd(bins_typical),
        "seconds per description": round(describe_s / max(len(targets), 1), 2),
        "forecast windows": len(pairs),
        "forecast R2 fmrilm": round(r2(pooled(preds), t), 4) if pairs else None,
        "forecast R2 repeat last window (baseline)": round(r2(pooled(persist), t), 4) if pairs else None,
        "forecast R2 predict 0, the z-scored scan mean (baseline)": round(r2(np.zeros_like(t), t), 4)
        if pairs
        else None,
        "forecast R2 tokenizer reconstruction of the true window (ceiling)": round(r2(pooled(recon), t), 4)
        if pairs
        else None,
    }


def _mean_sd(values: list[float]) -> str:
    arr = np.asarray([v for v in values if v == v], dtype=float)
    if not len(arr):
        return "n/a"
    return f"{arr.mean():.3f} ± {arr.std(ddof=1) if len(arr) > 1 else 0:.3f} (n={len(arr)})"


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="overhead,chat", help="comma-separated: overhead, chat, quality")
    parser.add_argument("--base", default=None, help="base LLM (default: SmolLM2-135M-Instruct, offline)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--windows", type=int, default=4, help="windows of brain tokens per example / prompt")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--stage2", default=None, help="Stage-2 output folder (quality)")
    parser.add_argument(
        "--cohort", action="append", default=[], help="cohort folder(s) of the Stage-2 run (quality)"
    )
    parser.add_argument(
        "--corpus", action="append", default=[], help="corpus folder(s) of the Stage-2 run (quality)"
    )
    parser.add_argument("--max-windows", type=int, default=60, help="held-out windows to describe (quality)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="description length cap (quality)")
    args = parser.parse_args(argv)

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    what = {w.strip() for w in args.what.split(",") if w.strip()}
    print(f"# fmrilm model benchmark ({args.threads} torch threads, float32)")
    if "overhead" in what:
        res = bench_overhead(args.base, args.rounds, args.batch_size, args.windows)
        print(f"\n## training step: batch {res['tokens']} tokens, {res['answer_tokens']} answer tokens")
        print(f"trainable parameters: {res['trainable']}")
        print("| method | median step (s) | vs plain |\n| --- | ---: | ---: |")
        for name, sec, ratio in res["rows"]:
            print(f"| {name} | {sec:.3f} | {ratio:.3f}x |")
    if "chat" in what:
        res = bench_chat(args.base, args.rounds, args.new_tokens, args.windows)
        print(f"\n## chat turn: prompt tokens {res['prompt_tokens']}, {args.new_tokens} new tokens")
        print("| method | time to first token (s) | tokens/s |\n| --- | ---: | ---: |")
        for name, ttft, tps, _n in res["rows"]:
            print(f"| {name} | {ttft:.3f} | {tps:.1f} |")
    if "quality" in what:
        res = bench_quality(
            Path(args.stage2),
            args.cohort,
            args.corpus,
            max_windows=args.max_windows,
            max_new_tokens=args.max_new_tokens,
        )
        print("\n## quality on held-out subjects")
        for key, value in res.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
