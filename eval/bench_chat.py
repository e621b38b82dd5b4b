"""Does the chat answer the question asked, from the scan? The demo's chat rates on any model and split.

    python -m fmrilm.eval.bench_chat --model DIR --cohort DIR --instructions DIR [--split leave-sites-out]
        [--scans 60] [--seed 0] [--threads 2]

Each question the demo's chat asks (most strongly coupled network pair, modularity higher or lower, the
diagnostic group; worded as a user asks, without an answer list) is put to ``--scans`` scans of the split's
test part (drawn by ``--seed``) in a fresh greedy chat, and every one after the first again as the next turn of
the first one's chat; each rate is printed next to always giving the training rows' most frequent answer, with
how often the answer is one of the question's answers at all (`fmrilm.eval.demo.descriptor_rates`).
BENCHMARKS.md, "Stage-3 recipe, chosen on validation sites", ran it on a split whose test part is three
training sites held out of Stage 3.

``--compare-sequential`` first times the chats generated one by one (`FmriLM.chat`) against the same chats
generated in padded batches (`fmrilm.chat.chat_batch`, what the rates use) in this process, and prints the
ratio and how many answers agree.
"""

from __future__ import annotations

import argparse

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fmrilm.safety import nonnegative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a Stage-3 model folder (FmriLM.from_pretrained)")
    p.add_argument("--cohort", required=True, help="cohort folder the split is stored in")
    p.add_argument("--instructions", required=True, help="instruction set with the recorded answers")
    p.add_argument(
        "--split", default="leave-sites-out", help="split stored in the cohort (default %(default)s)"
    )
    p.add_argument("--scans", type=positive_int, default=60, help="test scans asked (default %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="which test scans (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument(
        "--compare-sequential",
        action="store_true",
        help="time one-by-one chats against batched ones first (same process)",
    )
    return p.parse_args(argv)


def compare_sequential(model, scans, questions) -> tuple[float, float, int, int]:
    """``(seconds one by one, seconds batched, answers that agree, answers)``: each question in a fresh chat
    about each scan, generated as the demo's rates ask (greedy, 24 new tokens), first alone, then batched."""
    import time

    from fmrilm.chat import chat_batch

    alone, together = [], []
    start = time.perf_counter()
    for question in questions:
        alone += [model.chat(scan, question, max_new_tokens=24)[0] for scan in scans]
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    for question in questions:
        together += [a for a, _ in chat_batch(model, scans, question, max_new_tokens=24)]
    batched = time.perf_counter() - start
    return sequential, batched, sum(a == b for a, b in zip(alone, together, strict=True)), len(alone)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from fmrilm.eval.demo import descriptor_rates

    from fmrilm import FmriLM
    from fmrilm.cohort import load_cohort
    from fmrilm.logs import library_warnings, no_library_progress_bars
    from fmrilm.splits import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    cohort = load_cohort(args.cohort)
    split = dict(load_split(args.cohort, args.split))
    split["test"] = np.random.default_rng(args.seed).permutation(split["test"])
    # peft's deprecation notices and transformers' "Loading weights" bars stay out of the printed rates
    with library_warnings(), no_library_progress_bars():
        model = FmriLM.from_pretrained(args.model)
        if args.compare_sequential:
            from fmrilm.eval.demo import CHAT_QUESTIONS

            scans = [cohort.scan(int(i)) for i in split["test"][: args.scans]]
            one, batch, same, n = compare_sequential(model, scans, [q for _, q in CHAT_QUESTIONS])
            print(
                f"chats one by one {one:.1f} s, in batches {batch:.1f} s ({batch / one:.2f}x); "
                f"the same answer in {same} of {n}"
            )
        descriptor_rates(model, cohort, split, args.instructions, n_scans=args.scans)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
