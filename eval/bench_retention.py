"""Benchmark: does the tuned model keep its general language? Perplexity of the base model's own answers.

    python -m fmrilm.eval.bench_retention [--model DIR] [--base SPEC] [--max-new-tokens 48] [--threads 1]
                                          [--questions N] [--json OUT.json]

Twenty fixed questions (ten about neuroscience, ten general) are put to the base LLM the tuned model started
from, in its chat template; it answers greedily (``--max-new-tokens``, its end-of-turn token included when it
stops). Those answers, as the base model's own token ids, are then scored under the base model and under the
tuned model (``FmriLM.from_pretrained(--model)``: its LLM with its adapters, no scan in the prompt). The figure
is the perplexity of all answer tokens together, exp(total NLL / tokens), under each, and their ratio tuned /
base: 1.0 means the tuned model finds the base model's language exactly as likely as the base model does; the
aim is at most 1.3x. The base model scores its own greedy answers, so its perplexity is low by construction;
the ratio is what matters.

The tuned model is scored twice: its raw distribution (every output row, brain tokens included) and the
distribution the chat actually samples from (`fmrilm.chat.TextTokensOnly`: brain tokens excluded, the words
renormalised; "chat" in the report). The base model has no brain tokens, so its two are the same.

Two diagnostics say where a loss comes from: the same ratio with the tuned model's adapters switched off (peft's
``disable_adapter``: LoRA and the trained brain-token rows off, which leaves the base LLM with its brain-token
rows as first initialised), and the mean probability put on brain tokens where the answer has words, with the
adapters on and off (brain tokens sit in the output layer too, so every bit of their probability is taken from
the words).

``--model`` defaults to a demo's Stage-3 model (``demo_out/stage3_instruct/model``, then
``/tmp/demo_cpu/stage3_instruct/model``); ``--base`` to the base recorded in the model's processor config
(the offline default SmolLM2-135M-Instruct for the demo).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

from fmrilm.safety import positive_int

#: Ten neuroscience and ten general questions, fixed: the benchmark's whole input.
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("neuroscience", "What is the default mode network?"),
    ("neuroscience", "What does functional connectivity measure in resting-state fMRI?"),
    ("neuroscience", "What does the BOLD signal reflect?"),
    ("neuroscience", "Which brain regions belong to the salience network?"),
    ("neuroscience", "What is the role of the hippocampus in memory?"),
    ("neuroscience", "Why is head motion a problem in fMRI studies?"),
    ("neuroscience", "What is the difference between grey matter and white matter?"),
    ("neuroscience", "What does the prefrontal cortex do?"),
    ("neuroscience", "How is autism spectrum disorder usually diagnosed?"),
    ("neuroscience", "What is the repetition time of an fMRI scan?"),
    ("general", "What is the capital of France?"),
    ("general", "Explain photosynthesis in simple terms."),
    ("general", "Give three tips for a good night's sleep."),
    ("general", "What is the difference between weather and climate?"),
    ("general", "How do vaccines work?"),
    ("general", "Write a short sentence describing a sunny morning."),
    ("general", "What is 12 multiplied by 7?"),
    ("general", "Why is the sky blue?"),
    ("general", "What is a prime number?"),
    ("general", "Summarize the water cycle in two sentences."),
)
#: Where a demo leaves its Stage-3 model (`fmrilm demo`'s default --out, then the CPU demo used for BENCHMARKS).
DEFAULT_MODELS = ("demo_out/stage3_instruct/model", "/tmp/demo_cpu/stage3_instruct/model")
AIM = 1.3


def default_model() -> Path:
    from fmrilm.errors import FmriInputError

    for candidate in DEFAULT_MODELS:
        if (Path(candidate) / "fmri_processor_config.json").exists():
            return Path(candidate)
    raise FmriInputError(
        f"No tuned model given and no demo model found (looked in {', '.join(DEFAULT_MODELS)})",
        fix="pass --model DIR (a saved fmrilm model, e.g. the model/ folder of `fmrilm train instruct`), or "
        "run `fmrilm demo` first",
    )


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The question as a user turn in the tokenizer's chat template, ready for the assistant's answer."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def greedy_answer(
    llm: Any, tokenizer: Any, prompt: list[int], max_new_tokens: int, brain_ids: list[int] | None = None
) -> list[int]:
    """The base model's greedy answer as token ids (its end-of-turn token kept when it stops); ``brain_ids``
    its vocabulary may hold (a base saved with brain tokens) are never generated: the answers are words."""
    import torch

    from fmrilm.chat import TextTokensOnly

    ids = torch.tensor([prompt])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = llm.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            logits_processor=[TextTokensOnly(brain_ids)] if brain_ids else None,
        )
    return out[0, len(prompt) :].tolist()


def answer_nll(llm: Any, prompt: list[int], answer: list[int], brain_ids: list[int] | None = None):
    """Summed negative log-likelihood (nats) of ``answer`` after ``prompt`` under ``llm``; with ``brain_ids``,
    ``(nll, brain probability summed over the answer's positions, nll with those tokens excluded and the rest
    renormalised)``: the last is the distribution the chat samples from (`fmrilm.chat.TextTokensOnly`)."""
    import torch

    ids = torch.tensor([prompt + answer])
    target = torch.tensor(answer)
    with torch.no_grad():
        logits = llm(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    nll = float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    if brain_ids is None:
        return nll
    text_logits = logits.index_fill(-1, torch.tensor(brain_ids), float("-inf"))
    nll_text = float(torch.nn.functional.cross_entropy(text_logits, target, reduction="sum"))
    return nll, float(logits.softmax(-1)[:, brain_ids].sum()), nll_text


def perplexity(rows: list[dict[str, Any]], key: str) -> float:
    tokens = sum(r["tokens"] for r in rows)
    return math.exp(sum(r[key] for r in rows) / max(tokens, 1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate with the base, score with both; the figures as a dict (printed by `main`)."""
    import torch
    from fmrilm.train.stage3 import resolve_model_dir

    from fmrilm.model.base_model import load_base_model, resolve_base_model
    from fmrilm.model.modeling import FmriLM

    model_dir = resolve_model_dir(args.model) if args.model else default_model()
    tuned = FmriLM.from_pretrained(model_dir)
    tuned.llm.eval()
    base_spec = args.base or tuned.processor.config.base_model
    base, base_tokenizer = load_base_model(base_spec)
    base.eval()
    questions = QUESTIONS[: args.questions] if args.questions else QUESTIONS
    brain_ids = list(tuned.processor.ids.all_ids)

    rows = []
    for group, question in questions:
        prompt = prompt_ids(base_tokenizer, question)
        if prompt_ids(tuned.processor.tokenizer, question) != prompt:
            from fmrilm.errors import FmriInputError

            raise FmriInputError(
                "The tuned model's tokenizer writes the questions differently from the base model's, so the "
                "two cannot score the same tokens",
                file=model_dir,
                fix=f"pass --base the base LLM this model was trained from (its config names '{base_spec}')",
            )
        answer = greedy_answer(base, base_tokenizer, prompt, args.max_new_tokens, brain_ids)
        nll_base = answer_nll(base, prompt, answer)
        nll_tuned, brain_mass, nll_chat = answer_nll(tuned.llm, prompt, answer, brain_ids)
        row = {
            "group": group,
            "question": question,
            "answer": base_tokenizer.decode(answer, skip_special_tokens=True).strip(),
            "tokens": len(answer),
            "nll_base": nll_base,
            "nll_tuned": nll_tuned,
            "nll_chat": nll_chat,
            "ratio": math.exp((nll_tuned - nll_base) / max(len(answer), 1)),
            "chat_ratio": math.exp((nll_chat - nll_base) / max(len(answer), 1)),
            "brain_probability": brain_mass / max(len(answer), 1),
        }
        if tuned.has_adapters:
            with tuned.llm.disable_adapter():
                off, off_mass, off_chat = answer_nll(tuned.llm, prompt, answer, brain_ids)
            row["nll_adapters_off"] = off
            row["nll_adapters_off_chat"] = off_chat
            row["brain_probability_adapters_off"] = off_mass / max(len(answer), 1)
        rows.append(row)
    groups = {}
    for name in ("neuroscience", "general", "all"):
        part = [r for r in rows if name == "all" or r["group"] == name]
        if part:
            base_ppl, tuned_ppl = perplexity(part, "nll_base"), perplexity(part, "nll_tuned")
            tokens = sum(r["tokens"] for r in part)
            groups[name] = {
                "questions": len(part),
                "tokens": tokens,
                "base_ppl": base_ppl,
                "tuned_ppl": tuned_ppl,
                "ratio": tuned_ppl / base_ppl,
                "chat_ppl": perplexity(part, "nll_chat"),
                "chat_ratio": perplexity(part, "nll_chat") / base_ppl,
                "brain_probability": sum(r["brain_probability"] * r["tokens"] for r in part) / max(tokens, 1),
            }
            if "nll_adapters_off" in part[0]:
                groups[name]["adapters_off_ratio"] = perplexity(part, "nll_adapters_off") / base_ppl
                groups[name]["adapters_off_chat_ratio"] = perplexity(part, "nll_adapters_off_chat") / base_ppl
                groups[name]["brain_probability_adapters_off"] = sum(
                    r["brain_probability_adapters_off"] * r["tokens"] for r in part
                ) / max(tokens, 1)
    return {
        "model": str(model_dir),
        "base": str(base_spec),
        "base_path": resolve_base_model(base_spec),
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "groups": groups,
        "aim": AIM,
        "aim_met": groups["all"]["ratio"] <= AIM,
        "aim_met_chat": groups["all"]["chat_ratio"] <= AIM,
        "questions": rows,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"retention: perplexity of the base model's own greedy answers ({len(result['questions'])} questions, "
        f"up to {result['max_new_tokens']} new tokens), under the base and under the tuned model",
        f"  tuned model  {result['model']}",
        f"  base model   {result['base']} ({result['base_path']})",
        "  raw: the tuned LLM's whole distribution; chat: what the chat samples from (brain tokens excluded,",
        "  the words renormalised); p(brain): mean probability on brain tokens at the answers' positions",
        "",
        f"  {'questions':<18}{'tokens':>7}{'base ppl':>10}{'raw ppl':>9}{'raw/base':>10}{'p(brain)':>10}"
        f"{'chat ppl':>10}{'chat/base':>10}   | adapters off: {'raw/base':>8}{'p(brain)':>10}{'chat/base':>10}",
    ]
    for name, g in result["groups"].items():
        label = f"{name} ({g['questions']})"
        off = (
            f"{g['adapters_off_ratio']:>22.2f}x{g['brain_probability_adapters_off']:>10.4f}"
            f"{g['adapters_off_chat_ratio']:>9.2f}x"
            if "adapters_off_ratio" in g
            else f"{'-':>23}{'-':>10}{'-':>10}"
        )
        lines.append(
            f"  {label:<18}{g['tokens']:>7}{g['base_ppl']:>10.3f}{g['tuned_ppl']:>9.3f}{g['ratio']:>9.2f}x"
            f"{g['brain_probability']:>10.4f}{g['chat_ppl']:>10.3f}{g['chat_ratio']:>9.2f}x   |{off}"
        )
    every = result["groups"]["all"]
    lines.append("")
    for label, ratio, met in (
        ("raw distribution", every["ratio"], result["aim_met"]),
        ("as the chat samples (no brain tokens)", every["chat_ratio"], result["aim_met_chat"]),
    ):
        verdict = "met" if met else "NOT met"
        lines.append(f"  aim: tuned/base at most {result['aim']:.1f}x, {label} -> {ratio:.2f}x, {verdict}")
    lines += ["", "  per question (raw / chat tuned/base perplexity of its answer), worst first:"]
    for r in sorted(result["questions"], key=lambda r: -r["ratio"]):
        answer = r["answer"].replace("\n", " ")
        answer = answer if len(answer) <= 50 else answer[:47] + "..."
        lines.append(f"  {r['ratio']:>6.2f}x {r['chat_ratio']:>6.2f}x  {r['question']:<62} {answer}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", metavar="DIR", help=f"the tuned fmrilm model (default: {' or '.join(DEFAULT_MODELS)})"
    )
    parser.add_argument(
        "--base", help="the base LLM (hub id, folder, .gguf; default: the one the model's config names)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=48, help="length of each greedy answer"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--questions", type=positive_int, help="use only the first N questions (a quick check)"
    )
    parser.add_argument("--json", help="write the figures and every answer to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="show library warnings")
    args = parser.parse_args(argv)

    import torch

    from fmrilm.errors import FmriInputError
    from fmrilm.logs import library_warnings, no_library_progress_bars

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        with library_warnings(verbose=args.verbose), no_library_progress_bars():  # loading bars: not figures
            result = run(args)
    except FmriInputError as exc:
        print(f"bench_retention: error: {exc}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    result["torch"] = torch.__version__
    print(report(result))
    print(f"\n  {result['seconds']:.0f} s on {result['threads']} thread(s), {result['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
