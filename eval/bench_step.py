"""What a Stage-3 step costs on a CPU: the scan's facts line, batches split by length, and bf16 autocast.

    python -m fmrilm.eval.bench_step --model DIR --instructions DIR [--batch-size 16] [--steps 6]
        [--connectome-shown 1] [--system-prompt ''] [--threads 2]

``--model`` is a Stage-2 folder (e.g. ``demo_out/stage2_align``), ``--instructions`` an instruction set of its
cohort (e.g. ``demo_out/instructions/abide``). Examples are built as Stage 3 builds them (connectome tokens only,
the demo's prompt settings), with and without the facts line (`fmrilm.descriptors.facts`, computed from each
scan); ``--steps`` seeded batches of ``--batch-size`` run forward and backward (LoRA gradients, no update) as
one padded batch and as the two length groups Stage 3 now splits them into (`train.common.length_groups`),
and the split batches once more with the forward pass under CPU bf16 autocast, as `--mixed-precision bf16` runs
it (the cpu demo's Stage 3 where `train.common.cpu_computes_bf16`: on a CPU without native bf16 that path is
emulated and slow), and once more with peft's own forward of the brain-token rows (which copies the whole
embedding matrix on every call) instead of their look-up (`fmrilm.model.adapters.look_up_brain_rows`). It
prints padded tokens and seconds per step of each, with ratios to the batch as Stage 3 ran it before the facts
line and the split, measured in the same process, the paths interleaved step by step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fmrilm.safety import positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a Stage-2 model folder (its OUT or OUT/model)")
    p.add_argument("--instructions", required=True, help="an instruction set of the model's cohort")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--steps", type=positive_int, default=6, help="batches per path (default %(default)s)")
    p.add_argument("--connectome-shown", type=positive_int, default=1)
    p.add_argument("--system-prompt", default="")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument(
        "--no-bf16",
        action="store_true",
        help="leave out the bf16 path (emulated, minutes a step, on AVX2 CPUs)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from fmrilm.train.common import length_groups, torch_threads
    from fmrilm.train.stage3 import (
        encode_scans,
        load_sources,
        load_trainable_model,
        resolve_messages,
        resolve_model_dir,
        store_fact_references,
    )

    from fmrilm.logs import library_warnings
    from fmrilm.model.processing import IGNORE_INDEX

    with library_warnings(), torch_threads(args.threads):
        model = load_trainable_model(resolve_model_dir(args.model), {}, False, 0)
        processor = model.processor
        cfg = processor.config
        cfg.max_windows, cfg.connectome_shown, cfg.system_prompt = (
            0,
            args.connectome_shown,
            args.system_prompt,
        )
        (source,) = load_sources([args.instructions])
        cfg.scan_facts = True
        store_fact_references(cfg, [source])
        rng = np.random.default_rng(0)
        rows = source.dataset.select(
            rng.choice(len(source.dataset), args.batch_size * args.steps, replace=False).tolist()
        )
        ids = {str(s) for s in rows["scan_id"]}
        codes = encode_scans(
            source.cohort, processor.fmri_tokenizer, ids, windows=False, facts=processor.scan_facts
        )
        examples = {}
        for facts in (False, True):
            cfg.scan_facts = facts
            examples[facts] = [
                processor.training_example(resolve_messages(r["messages"], codes)) for r in rows
            ]
        model.llm.train()

        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

        rows = [m for m in model.llm.modules() if isinstance(m, TrainableTokensLayer)]
        lookup = {m: type(m) for m in rows}

        def step(
            batch_examples: list[dict], groups: list[list[int]], bf16: bool = False, peft_rows: bool = False
        ) -> tuple[float, int]:
            for m in rows:  # peft's own forward on the same parameters, or the look-up
                m.__class__ = TrainableTokensLayer if peft_rows else lookup[m]
            answered = len(batch_examples)
            start, tokens = time.perf_counter(), 0
            for group in groups:
                batch = processor.pad([batch_examples[i] for i in group])
                tokens += int(batch["input_ids"].numel())
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as accelerate wraps forward
                    out = model(**batch, loss_reduction="example")
                keep = (batch["labels"][:, 1:] != IGNORE_INDEX).any(dim=1)
                (out.example_losses[keep].sum() / answered).backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - start, tokens

        paths = {
            "one batch, no facts line (before)": (False, False, False, False),
            "one batch, facts line": (True, False, False, False),
            "facts line, split by length": (True, True, False, False),
            "the same in bf16 autocast": (True, True, True, False),
            "split, peft's brain-row copy": (True, True, False, True),
        }
        if args.no_bf16:
            paths = {k: v for k, v in paths.items() if not v[2]}
        times: dict[str, list[float]] = {k: [] for k in paths}
        tokens: dict[str, list[int]] = {k: [] for k in paths}
        step(examples[False][: args.batch_size], [list(range(args.batch_size))])  # warm-up
        if not args.no_bf16:
            step(examples[True][: args.batch_size], [list(range(args.batch_size))], True)  # and in bf16
        for s in range(args.steps):
            for name, (facts, split, bf16, peft_rows) in paths.items():
                batch = examples[facts][s * args.batch_size : (s + 1) * args.batch_size]
                lengths = [len(e["input_ids"]) for e in batch]
                groups = length_groups(lengths) if split else [list(range(len(batch)))]
                seconds, n = step(batch, groups, bf16, peft_rows)
                times[name].append(seconds)
                tokens[name].append(n)
    base = "one batch, no facts line (before)"
    print(
        f"{args.steps} steps of {args.batch_size}, {torch.get_num_threads()} threads; median seconds a step"
    )
    print(f"{'path':<38} {'padded tokens':>13} {'s/step':>7} {'x before':>9}")
    for name in paths:
        ratio = np.median(times[name]) / np.median(times[base])
        print(f"{name:<38} {np.mean(tokens[name]):>13.0f} {np.median(times[name]):>7.2f} {ratio:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
