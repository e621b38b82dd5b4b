"""Benchmark of the fMRI-LM: training-step overhead, chat speed, and (given a Stage-2 run) output quality.

    python -m fmrilm.eval.bench_model [--what overhead,chat] [--base smollm2] [--threads 2] [--rounds 5]
    python -m fmrilm.eval.bench_model --what quality --stage2 RUN --cohort DIR --corpus DIR
    python -m fmrilm.eval.bench_model --what memory [--memory-steps 3] [--work DIR]   (= fmrilm bench model ...)

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
- **memory**: peak memory (resident set size) of the README's training commands, each run as written (plus
  ``--steps N``) in a fresh process on the README's data at the README's sizes (a 300-subject simulated cohort,
  its corpus, a tokenizer of the default preset, the ``main`` split and the diagnosis/sex/age instruction set; a
  40-subject simulated cohort stands in for ``cohorts/mylab``): ``train align`` (Stage 2), ``train instruct``
  (Stage 3) and ``finetune``. Each row gives the whole command's peak (``getrusage`` max RSS: data, model,
  training, saving) and the peak within its training steps (RSS sampled every 5 ms from the first training
  forward to the last optimizer step), next to one plain transformers + peft LoRA step per recorded batch at
  the same shapes (same base model resized to the same vocabulary, same LoRA settings, the same number of
  label positions per row, the standard full-logits loss), also in a fresh process.
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

from fmrilm.safety import positive_int

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


# ---------------------------------------------------------------------------------------------------- memory
#: The README's training commands (sections "Instruction tuning, ..." and "The fMRI-LM and Stage 2 alignment"),
#: run from the benchmark's working folder; each measured run adds --steps N.
MEMORY_COMMANDS: dict[str, list[str]] = {
    "stage2": ["train", "align", "--cohort", "cohorts/sim", "--corpus", "corpus/sim", "--tokenizer",
               "runs/tokenizer", "--out", "runs/stage2"],
    "stage3": ["train", "instruct", "--model", "runs/stage2", "--instructions", "instr/sim", "--out", "runs/stage3"],
    "finetune": ["finetune", "--model", "runs/stage3", "--cohort", "cohorts/mylab", "--task", "diagnosis",
                 "--shots", "8", "--out", "runs/mylab"],
}  # fmt: skip
#: What the commands read, made once per working folder (skipped when the output is there).
MEMORY_INPUTS: list[tuple[str, list[str]]] = [
    ("cohorts/sim/cohort.json", ["simulate", "--subjects", "300", "--out", "cohorts/sim", "--quiet"]),
    ("corpus/sim/dataset", ["corpus", "build", "cohorts/sim", "--out", "corpus/sim", "--quiet"]),
    # the README trains 1000 steps; the sizes (and so the memory of later stages) do not depend on it
    ("runs/tokenizer/config.json", ["train", "tokenizer", "--cohort", "cohorts/sim", "--out", "runs/tokenizer",
                                    "--steps", "1", "--no-progress"]),
    ("cohorts/sim/splits/main.json", ["cohort", "split", "cohorts/sim", "--kind", "stratified", "--val-size",
                                      "0.1", "--name", "main"]),
    ("instr/sim/dataset", ["instructions", "build", "cohorts/sim", "--tasks", "diagnosis,sex,age", "--split",
                           "main", "--out", "instr/sim"]),
    ("cohorts/mylab/cohort.json", ["simulate", "--subjects", "40", "--seed", "1", "--out", "cohorts/mylab",
                                   "--quiet"]),
]  # fmt: skip


def _rss_mib() -> float:
    """This process's resident set size now (Linux /proc; 0 where it is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    """This process's peak resident set size so far (getrusage; KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _RssSampler:
    """Samples the resident set size every ``interval`` s in a thread (torch releases the GIL in its kernels)."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), _rss_mib()))
            self._stop.wait(interval)

    def peak_between(self, start: float, end: float) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside) if inside else float("nan")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def prepare_memory_inputs(work: Path) -> None:
    """Make the README's inputs of the measured commands in ``work`` (each skipped when already there)."""
    from fmrilm.cli import main as cli_main

    for done, argv in MEMORY_INPUTS:
        if (work / done).exists():
            continue
        print(f"$ fmrilm {' '.join(argv)}", flush=True)
        if cli_main(argv) != 0:
            raise SystemExit(f"preparing the memory benchmark failed at: fmrilm {' '.join(argv)}")


def measure_command(case: str, steps: int) -> dict[str, Any]:
    """Run one README training command (``--steps steps``) in this process; memory of it and of its steps."""
    import torch

    from fmrilm.cli import main as cli_main
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.processing import IGNORE_INDEX

    argv = [*MEMORY_COMMANDS[case], "--steps", str(steps), "--overwrite", "--no-progress"]
    record: dict[str, Any] = {"command": "fmrilm " + " ".join(argv), "batches": []}
    sampler = _RssSampler()
    forward = FmriLM.forward

    def recording_forward(self, *args: Any, **kwargs: Any):
        labels = kwargs.get("labels")
        if torch.is_grad_enabled() and labels is not None:  # a training step (validation runs without grad)
            if "step_start" not in record:
                record["step_start"], record["rss_before_steps"] = time.monotonic(), _rss_mib()
                record["vocab"] = int(self.llm.get_input_embeddings().weight.shape[0])
                record["lora"] = getattr(self.llm, "peft_config", {}).get("default")
            mask = kwargs.get("attention_mask")
            record["batches"].append(
                {
                    "shape": list(labels.shape),
                    "lengths": (
                        mask.sum(1) if mask is not None else torch.full_like(labels[:, 0], labels.shape[1])
                    ).tolist(),
                    "labels": (labels != IGNORE_INDEX).sum(1).tolist(),
                }
            )
        return forward(self, *args, **kwargs)

    def after_step(*_: Any) -> None:
        record["step_end"] = time.monotonic()

    FmriLM.forward = recording_forward
    from torch.optim.optimizer import register_optimizer_step_post_hook

    hook = register_optimizer_step_post_hook(after_step)
    try:
        code = cli_main(argv)
    finally:
        FmriLM.forward = forward
        hook.remove()
        sampler.stop()
    if code != 0:
        raise SystemExit(f"{record['command']} exited {code}")
    lora = record.pop("lora", None)
    targets = getattr(lora, "target_modules", None)
    record["lora"] = (
        {
            "r": lora.r,
            "alpha": lora.lora_alpha,
            "dropout": lora.lora_dropout,
            "targets": targets if isinstance(targets, str) else sorted(targets),
        }
        if lora is not None
        else None
    )
    record["peak_steps"] = sampler.peak_between(record.pop("step_start"), record.pop("step_end"))
    record["peak_command"] = _peak_mib()
    return record


def measure_plain(
    base: str | None, batches: list[dict[str, Any]], vocab: int, lora: dict[str, Any]
) -> dict[str, Any]:
    """Plain transformers + peft LoRA: the same base resized to ``vocab``, one step per recorded batch shape,
    right-padded rows of the recorded lengths whose last ``labels`` positions are learned (full-logits loss)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from fmrilm.model.base_model import load_base_model

    sampler = _RssSampler()
    llm, _ = load_base_model(base, dtype=torch.float32)
    llm.resize_token_embeddings(vocab)
    targets = lora["targets"]  # "all-linear" or module names
    llm = get_peft_model(
        llm,
        LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], task_type="CAUSAL_LM",
            target_modules=targets,
        ),
    )  # fmt: skip
    llm.train()
    optimizer = torch.optim.AdamW([p for p in llm.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    start, rss_before = time.monotonic(), _rss_mib()
    for batch in batches:
        rows, width = batch["shape"]
        ids = torch.randint(0, vocab, (rows, width), generator=gen)
        mask = torch.zeros(rows, width, dtype=torch.long)
        labels = torch.full((rows, width), -100)
        for i, (length, learned) in enumerate(zip(batch["lengths"], batch["labels"], strict=True)):
            mask[i, :length] = 1
            labels[i, length - learned : length] = ids[i, length - learned : length]
        loss = llm(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    end = time.monotonic()
    sampler.stop()
    return {
        "rss_before_steps": rss_before,
        "peak_steps": sampler.peak_between(start, end),
        "peak_command": _peak_mib(),
    }


def bench_memory(work: Path, steps: int, threads: int, base: str | None) -> dict[str, Any]:
    """Each case in a fresh process (so no case inherits another's peak); see the module doc."""
    import json
    import subprocess
    import sys

    work.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, "-m", "fmrilm.eval.bench_model", "--work", str(work), "--threads", str(threads)]
    common += ["--base", base] if base else []

    def run_case(*extra: str) -> dict[str, Any]:
        proc = subprocess.run([*common, *extra], capture_output=True, text=True, cwd=work)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("MEMORY ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"memory case {extra} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return json.loads(lines[-1].removeprefix("MEMORY "))

    run_case("--memory-prepare")
    rows = []
    for case in MEMORY_COMMANDS:
        ours = run_case("--memory-case", case, "--memory-steps", str(steps))
        plain = run_case("--memory-case", "plain", "--memory-shapes", json.dumps(ours))
        rows.append((case, ours, plain))
    return {"rows": rows}


def _memory_case(args: argparse.Namespace) -> int:
    """One case of ``--what memory``, run by `bench_memory` in a fresh process: prints ``MEMORY {json}``."""
    import json

    os.chdir(args.work)
    if args.memory_prepare:
        prepare_memory_inputs(Path("."))
        result: dict[str, Any] = {"prepared": str(Path(".").resolve())}
    elif args.memory_case == "plain":
        ours = json.loads(args.memory_shapes)
        result = measure_plain(args.base, ours["batches"], ours["vocab"], ours["lora"])
    else:
        result = measure_command(args.memory_case, args.memory_steps)
    print("MEMORY " + json.dumps(result), flush=True)
    return 0


def _print_memory(res: dict[str, Any], threads: int) -> None:
    gib = lambda mib: f"{mib / 1024:.2f}"  # noqa: E731
    print("\n## peak memory (GiB, resident set size) of the README's training commands, fresh process each")
    print(
        "| command | batches (rows x tokens, learned tokens) | whole command | during its steps | "
        "plain transformers + peft, same shapes: whole / steps |\n| --- | --- | ---: | ---: | ---: |"
    )
    for _case, ours, plain in res["rows"]:
        shapes = ", ".join(f"{b['shape'][0]}x{b['shape'][1]} ({sum(b['labels'])})" for b in ours["batches"])
        print(
            f"| `{ours['command']}` | {shapes} | {gib(ours['peak_command'])} | {gib(ours['peak_steps'])} | "
            f"{gib(plain['peak_command'])} / {gib(plain['peak_steps'])} |"
        )
    print(
        f"({threads} torch threads, float32; RSS before the steps: "
        + ", ".join(
            f"{case} {gib(o['rss_before_steps'])} (plain {gib(p['rss_before_steps'])})"
            for case, o, p in res["rows"]
        )
        + ")"
    )


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--what", default="overhead,chat", help="comma-separated: overhead, chat, quality, memory"
    )
    parser.add_argument("--base", default=None, help="base LLM (default: SmolLM2-135M-Instruct, offline)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument(
        "--windows", type=positive_int, default=4, help="windows of brain tokens per example / prompt"
    )
    parser.add_argument("--new-tokens", type=positive_int, default=64)
    parser.add_argument("--stage2", default=None, help="Stage-2 output folder (quality)")
    parser.add_argument(
        "--cohort", action="append", default=[], help="cohort folder(s) of the Stage-2 run (quality)"
    )
    parser.add_argument(
        "--corpus", action="append", default=[], help="corpus folder(s) of the Stage-2 run (quality)"
    )
    parser.add_argument(
        "--max-windows", type=positive_int, default=60, help="held-out windows to describe (quality)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=160, help="description length cap (quality)"
    )
    parser.add_argument(
        "--memory-steps", type=positive_int, default=3, help="training steps of each command (memory)"
    )
    parser.add_argument(
        "--work",
        default=None,
        help="folder for the memory benchmark's inputs and runs (default: a temporary one)",
    )
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # one case, in a fresh process
    parser.add_argument("--memory-shapes", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.memory_case or args.memory_prepare:
        return _memory_case(args)
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
    if "memory" in what:
        if args.work:
            res = bench_memory(Path(args.work).resolve(), args.memory_steps, args.threads, args.base)
        else:
            with tempfile.TemporaryDirectory(prefix="fmrilm-memory-") as tmp:
                res = bench_memory(Path(tmp), args.memory_steps, args.threads, args.base)
        _print_memory(res, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
