"""`fmrilm demo`: the whole pipeline, end to end, offline, through the public command line.

simulate a cohort -> import ABIDE (when its folder is there) -> subject/site-level splits -> descriptor corpora
-> instruction sets -> Stage 1 (tokenizer) -> Stage 2 (align the LLM) -> Stage 3 (instruction tuning) -> reload
with `FmriLM.from_pretrained` -> chat about a held-out scan -> evaluation next to the FC baseline.

Every step is a `fmrilm ...` command run in this process, printed before it runs, so a reader can re-run any
step by hand. A step whose output folder is complete is skipped, so an interrupted demo resumes. Presets trade
time for quality: ``cpu`` (default; BENCHMARKS.md, "Demo": 12.6 minutes on an idle 2-core Xeon at two
threads with 75 Stage-3 steps, 14.7 on a 2-core AMD EPYC with 70; Stage 3 70 steps of 16 on ABIDE, in bf16
autocast where the CPU computes bf16 natively, from a logistic-regression warm start of the scan summary,
autism half of them, half of every task's rows a chat's second question and half asked without the answer
list, prompts with the scan summary, one connectome token, the scan's facts line and an empty system turn;
autism AUC 0.614 on its held-out sites, FC 0.668). ``full`` is the same recipe with sex and age as well and
150 Stage-3 steps (27.8 minutes on the EPYC); ``gpu`` is the GPU-sized recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_ABIDE = Path("..") / "shared" / "data" / "abide"
#: ABIDE sites held out from all training (leave-sites-out); a mid-sized, mixed-TR trio.
ABIDE_TEST_SITES = ("UCLA_1", "KKI", "OHSU")


@dataclass
class Preset:
    """Sizes of every step (``cpu``: see the module docstring and BENCHMARKS.md for its measured time)."""

    sim_subjects: int = 120
    tokenizer_preset: str = "small"
    #: 800 steps of "small" reach held-out R² ~0.12 in ~2 min on 2 cores ("tiny"/150: 0.02 in 20 s).
    tokenizer_steps: int = 200
    #: "input" embeds descriptors with the LLM's input embeddings (seconds on CPU); "hidden" runs the LLM.
    text_pooling: str = "input"
    align_steps: int = 10
    #: Stage 2 describes windows with these corpus columns; one short family keeps CPU steps affordable.
    align_text_columns: str = "text_graph"
    align_max_length: int = 256
    #: Stage 2's held-out loss reads this many examples per task (its default 32: a minute of a CPU demo).
    align_max_val_examples: int | None = 8
    #: Window tokens per fMRI part (the last windows of a scan): each window is K tokens; the connectome tokens
    #: carry the trait signal, so the CPU preset shows one window and keeps prompts short.
    max_windows: int = 1
    #: Window tokens in Stage 3 prompts: 0 shows the connectome tokens and the scan summary only (the
    #: phenotype and descriptor questions are about connectivity), which halves a CPU step; None keeps Stage 2's.
    instruct_max_windows: int | None = 0
    #: Connectome tokens a Stage-3 prompt shows: with the scan summary on the start marker reading all 32
    #: groups, 1 token keeps the whole connectome in 57-token prompts instead of 88 (BENCHMARKS.md, "Does the
    #: LLM read the scan?"); None shows all.
    instruct_connectome_shown: int | None = 1
    #: The system turn of Stage-3 prompts (and of the model's chat): "" replaces SmolLM2's 21-token default by
    #: an empty turn, 40-token prompts instead of 57; None keeps the template's.
    instruct_system_prompt: str | None = ""
    #: Each Stage-3 task's share of the batches (`train instruct --task-weights`); None: equal shares. Autism
    #: half of 70 steps of 16 (560 rows, half of them a chat's second question, whose first question trains
    #: too): about one pass over its 549 training scans, and 280 rows for each descriptor question. The
    #: coupled pair at 0.4 of a share (85 steps: 160 rows) did not learn to copy the facts line on the
    #: validation fold (right on 5% of 20 held-out scans; at an equal share, 340 rows: 100%; "Scan facts").
    instruct_task_weights: str | None = "diagnosis=2"
    #: Stage 3's learning rate after its warm-up (`train instruct --lr-schedule`): a run of a few dozen steps
    #: keeps learning to its end at "constant" (cosine spends its second half at a fraction of the rate).
    instruct_lr_schedule: str | None = "constant"
    #: Stage 3 starts from a logistic-regression reading of the scan summary for each two-answer task
    #: (`train instruct --probe-init`): on a validation fold whose sites no step saw, the modularity question
    #: was answered right on 70% of 60 held-out scans against 47% without it (most frequent answer: 45%), autism
    #: balanced accuracy / AUC 0.644 / 0.646 against 0.580 / 0.633 (BENCHMARKS.md, "A validation fold no step
    #: has seen").
    instruct_probe_init: bool = True
    #: With the warm start: its calibration rounds (`train instruct --probe-rounds`; None: that command's
    #: default, now 0 too). 0 plants the first-order step alone, whose offset at the start marker stays near
    #: the size of the marker's own embedding (1.3 times on the validation fold's training scans, against 15
    #: times after the calibration), so the first layer's RMSNorm keeps how far a scan lies along the probe and
    #: not only on which side: on the validation fold the autism answer's log-odds rise over every decile of
    #: its probe (agreement 0.92 against 0.86), AUC 0.660 against 0.644, the modularity answer's 0.831 against
    #: 0.779 (BENCHMARKS.md, "The start marker reads the planted probe's sign")
    instruct_probe_rounds: int | None = 0
    #: With the warm start: weight of distilling each two-answer probe into the answer while tuning
    #: (`train instruct --probe-teacher`; 0: none)
    instruct_probe_teacher: float = 0.0
    #: Stage 3's learning-rate multiplier of the soft projection (`train instruct --soft-lr-scale`; None: its
    #: default 10, sized for a projection learned from random). After the warm start the summary projection
    #: already holds a fitted reading, and fine-tuning from a fitted head keeps more at the LoRA rate (LP-FT):
    #: on the validation fold, two seeds each, autism AUC 0.646 against 0.635 at 10, balanced accuracy 0.628
    #: against 0.624, modularity 68% / 40% (fresh / second) against 69% / 36% (BENCHMARKS.md)
    instruct_soft_lr_scale: float | None = 1.0
    #: every Stage-3 prompt (and so the chat's) ends the scan with its facts line, the most elevated
    #: network-pair coupling computed by `fmrilm.descriptors` (`train instruct --scan-facts`): the connectome
    #: tokens do not carry it, and the chat named it on 0-3% of held-out scans without (BENCHMARKS.md,
    #: "Scan facts")
    instruct_scan_facts: bool = True
    instruct_warmup_steps: int | None = 5
    #: Stage 3 under bf16 autocast (`train instruct --mixed-precision bf16`) where it trains on a CPU that
    #: computes bf16 natively (`train.common.cpu_computes_bf16`), float32 elsewhere: a step in 0.72x the time,
    #: the demo in 12.6 minutes instead of 14.7, and the same reading on the validation fold (autism BA / AUC
    #: 0.601 / 0.645 against 0.601 / 0.646, the chat above its bars; BENCHMARKS.md, "bf16 autocast in Stage 3")
    instruct_native_bf16: bool = True
    #: Dropout on the LoRA input (Stage 2 creates the adapters, Stage 3 continues them): 0 lets peft skip the
    #: dropout copy of every linear layer's input, a fifth of a CPU step; a few dozen steps cannot overfit.
    lora_dropout: float | None = 0.0
    #: Gradient checkpointing in Stages 2 and 3 (None: the batch-token rule). Off on a CPU with memory to
    #: spare: recomputing every layer costs a third more time per step.
    gradient_checkpointing: bool | None = False
    #: Stage 3 on the simulated cohort as well (the cpu preset spends its few steps on ABIDE, where it is judged)
    instruct_sim: bool = False
    #: 70 steps of 16 (100 before the facts line, 75 until the eighth session): the facts line's ten tokens a
    #: prompt, with batches split by length, fit in the 15 minutes (85 steps took 15.4 min on the demo's fold;
    #: BENCHMARKS.md, "Scan facts"); on a slow hour of a 2-core AMD EPYC 75 steps took 15.1 min, and 70 read the
    #: validation fold as 75 do (BENCHMARKS.md, "Demo runs", runs 11-12)
    instruct_steps: int = 70
    instruct_batch_size: int = 16
    #: Which instruction paradigms to build; the CPU preset leaves out prompts that carry a whole descriptor
    #: text (~900 tokens each, four times the cost of a brain-token prompt) and keeps second questions of a
    #: chat (followup: without them a second question was answered right on 0-7%, BENCHMARKS.md). None builds
    #: every paradigm.
    instruct_paradigms: str | None = "brain,followup"
    #: Share of the brain and followup rows whose question comes without "Answer with one of: ..."
    #: (`instructions build --bare-questions`), the way a user asks in a chat. Without them the tuned model
    #: answered "What is the diagnostic group of the participant in this scan?" with a diagnosis on 10-22% of
    #: held-out scans (a network pair, "mice"); with half the rows bare, on 100%, right on 62% (most frequent
    #: answer 48%), and a chat's second modularity question right on 62-75% against 32-48%; the scored autism
    #: answer 0.02 lower (AUC 0.629 against 0.646, inside one seed's spread; validation fold, two seeds each,
    #: BENCHMARKS.md, "Questions asked as a user asks them").
    instruct_bare_questions: float = 0.5
    #: Descriptor texts as answers ("describe") are long; the CPU preset trains short answers only.
    sim_tasks: str = "diagnosis,coupled_pair,modularity"
    #: Stage 3 on CPU affords about one pass per task over ABIDE's 549 training subjects for three tasks: the
    #: cpu preset trains the task it is judged on (autism) and the two descriptor questions its chat asks.
    abide_tasks: str = "diagnosis,coupled_pair,modularity"
    batch_size: int = 4
    #: the demo's chat rates also ask each question as a chat's second one (`bench_chat` always does): 40 more
    #: answers, 20 s of a CPU demo
    chat_second_questions: bool = False
    eval_shots: str = "0"
    eval_seeds: int = 1
    eval_tasks: tuple[str, ...] = ("diagnosis",)
    device_args: list[str] = field(default_factory=list)
    connectome_tokens: int = 32
    #: the most tangent-FC PCA components the connectome tokens and the scan summary carry: Stage 1 keeps as
    #: many as the training scans support (608 of the demo's 639), each token 19 of them (BENCHMARKS.md,
    #: "Standardized tangent features, every component")
    connectome_components: int = 1024
    #: the real ABIDE scans join when their folder exists (the tiny preset stays simulated: seconds, not minutes)
    use_abide: bool = True


#: The GPU-sized recipe: a base tokenizer of 3000 steps, Stage 2 on whole descriptor texts, Stage 3 of 2000
#: steps on every paradigm and both cohorts, few-shot evaluation. Hours on a CPU; never run there.
_GPU = Preset(
    sim_subjects=400,
    tokenizer_preset="base",
    tokenizer_steps=3000,
    text_pooling="hidden",
    align_text_columns="text",
    align_max_length=1024,
    sim_tasks="diagnosis,sex,age,coupled_pair,modularity,describe",
    abide_tasks="diagnosis,sex,age,coupled_pair,modularity",
    align_steps=1000,
    align_max_val_examples=None,
    instruct_steps=2000,
    instruct_batch_size=16,
    max_windows=4,
    instruct_max_windows=None,
    instruct_sim=True,
    batch_size=16,
    eval_shots="0,4,16",
    eval_seeds=3,
    eval_tasks=("diagnosis", "sex", "age"),
    instruct_paradigms=None,
    instruct_connectome_shown=None,
    instruct_system_prompt=None,
    instruct_task_weights=None,
    instruct_lr_schedule=None,
    instruct_probe_init=False,
    instruct_soft_lr_scale=None,
    instruct_warmup_steps=None,
    lora_dropout=None,
    gradient_checkpointing=None,
    instruct_native_bf16=False,
)
PRESETS: dict[str, Preset] = {
    "cpu": Preset(),
    #: The cpu recipe with every phenotype task (autism, sex, age), evaluated on all three: 150 Stage-3 steps
    #: of 16, the three phenotype tasks two shares each and the two descriptor questions one (about 1.1 passes
    #: over the training scans per phenotype task, as the cpu preset gives autism). Chosen on the validation
    #: fold (PITT / MAX_MUN / TRINITY, one seed): autism AUC 0.672 and sex AUC 0.850 against 0.614 / 0.822 for
    #: the recipe before (300 steps, the probe teacher, the calibrated warm start, no facts line, float32),
    #: age alike (r 0.549 against 0.562); 27.8 minutes on an idle 2-core AMD EPYC (BENCHMARKS.md, "The `full`
    #: preset on the `cpu` recipe").
    "full": Preset(
        abide_tasks="diagnosis,sex,age,coupled_pair,modularity",
        instruct_steps=150,
        instruct_task_weights="diagnosis=2,sex=2,age=2",
        eval_tasks=("diagnosis", "sex", "age"),
    ),
    "gpu": _GPU,
}
#: Every step at toy size, simulated cohort only: the whole pipeline in a couple of minutes (the test suite).
PRESETS["tiny"] = Preset(
    sim_subjects=32,
    tokenizer_preset="tiny",
    tokenizer_steps=20,
    align_steps=2,
    align_max_length=256,
    instruct_steps=2,
    instruct_batch_size=2,
    instruct_sim=True,
    #: the probe teacher (`train instruct --probe-teacher`, which no other preset uses now), so the suite runs
    #: that path end to end
    instruct_probe_teacher=1.0,
    chat_second_questions=True,
    batch_size=2,
    connectome_tokens=4,
    use_abide=False,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.safety import positive_int

    parser.add_argument(
        "--out", default="demo_out", help="working folder (default demo_out; re-run to resume)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="sizes (default cpu)")
    parser.add_argument(
        "--abide",
        default=str(DEFAULT_ABIDE),
        help="ABIDE folder (phenotypes.csv, timeseries_cc200.npz, cc200_centroids.csv); skipped when absent",
    )
    parser.add_argument("--no-abide", action="store_true", help="simulated cohort only")
    parser.add_argument("--base", default=None, help="base LLM (default: offline SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: all cores)"
    )
    parser.add_argument(
        "--test-sites",
        default=",".join(ABIDE_TEST_SITES),
        help="ABIDE sites held out from every step and scored at the end (default %(default)s); another "
        "set gives a validation fold on which a recipe can be chosen without touching the default's sites",
    )


def run(args: argparse.Namespace) -> int:
    from fmrilm.logs import library_warnings, no_library_progress_bars

    Path(args.out).mkdir(parents=True, exist_ok=True)
    # the demo prints its own progress per step; transformers' "Loading weights" / "Writing model shards" bars,
    # a dozen per run, would only bury it
    with (
        no_library_progress_bars(),
        library_warnings(verbose=False, log_file=Path(args.out) / "warnings.log"),
    ):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    demo = Demo(
        out=Path(args.out),
        preset=preset,
        abide=None if args.no_abide or not preset.use_abide else Path(args.abide),
        base=args.base,
        threads=args.threads,
        test_sites=tuple(x.strip() for x in str(args.test_sites).split(",") if x.strip()),
    )
    return demo.run()


class Demo:
    def __init__(
        self,
        out: Path,
        preset: Preset,
        abide: Path | None,
        base: str | None,
        threads: int | None,
        test_sites: tuple[str, ...] = ABIDE_TEST_SITES,
    ) -> None:
        self.out = out
        self.p = preset
        self.abide = abide if abide is not None and (abide / "phenotypes.csv").exists() else None
        self.abide_requested = abide
        self.base = base
        self.threads = threads
        self.test_sites = tuple(test_sites) or ABIDE_TEST_SITES
        self.timings: list[tuple[str, float]] = []

    # ----------------------------------------------------------------------------------------------- helpers
    def path(self, *parts: str) -> str:
        return str(self.out.joinpath(*parts))

    def step(self, title: str, argv: list[str], done: Path | None = None) -> None:
        """Run one `fmrilm` command in this process (skipped when ``done`` exists), timing it."""
        from fmrilm.cli import main

        print(f"\n[{len(self.timings) + 1}] {title}\n    $ fmrilm {shlex.join(argv)}", flush=True)
        if done is not None and done.exists():
            print("    (already done: skipped)")
            self.timings.append((title, 0.0))
            return
        start = time.perf_counter()
        code = main(argv)
        elapsed = time.perf_counter() - start
        self.timings.append((title, elapsed))
        if code != 0:
            raise SystemExit(f"demo step failed ({title}); fix the error above and re-run to resume")
        print(f"    done in {elapsed:.0f} s (peak memory so far {peak_mib():.0f} MiB)", flush=True)

    def check_test_sites(self, split_file: Path) -> None:
        """A resumed run must hold out the sites asked for: its saved split decides every later step."""
        saved = json.loads(split_file.read_text()).get("params", {}).get("test_sites") or []
        if sorted(map(str, saved)) != sorted(self.test_sites):
            raise SystemExit(
                f"{split_file} holds out {', '.join(map(str, saved))}, not the --test-sites asked for "
                f"({', '.join(self.test_sites)}); use another --out for another set of held-out sites"
            )

    def checkpointing(self) -> list[str]:
        flag = self.p.gradient_checkpointing
        return [] if flag is None else ["--gradient-checkpointing" if flag else "--no-gradient-checkpointing"]

    def instruct_precision(self) -> list[str]:
        """``--mixed-precision bf16`` for Stage 3 where the preset asks for it and this CPU computes bf16."""
        from fmrilm.train.common import cpu_computes_bf16

        return ["--mixed-precision", "bf16"] if self.p.instruct_native_bf16 and cpu_computes_bf16() else []

    def workers(self) -> int:
        """Worker processes of the per-scan steps (descriptor corpora): ``--threads``, else every core."""
        return max(1, self.threads or os.cpu_count() or 1)

    def common(self) -> list[str]:
        return ["--threads", str(self.threads)] if self.threads else []

    # ----------------------------------------------------------------------------------------------- the run
    def run(self) -> int:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.abide is None:
            where = self.abide_requested or "(disabled)"
            print(f"ABIDE folder not found at {where}: the demo runs on the simulated cohort only.")
        cohorts = self.prepare_cohorts()
        corpora = self.prepare_corpora(cohorts)
        instructions = self.prepare_instructions(cohorts, corpora)
        model_dir = self.train(cohorts, corpora, instructions)
        self.talk(model_dir, cohorts, instructions)
        reports = self.evaluate(model_dir, cohorts)
        self.summary(reports, time.perf_counter() - t0)
        return 0

    def prepare_cohorts(self) -> dict[str, dict[str, str]]:
        sim = self.path("cohorts", "sim")
        self.step(
            "Simulate a resting-state cohort (network dynamics, HRF, sites, planted phenotype effects)",
            ["simulate", "--subjects", str(self.p.sim_subjects), "--out", sim, "--seed", "0", "--quiet"],
            done=Path(sim) / "cohort.json",
        )
        self.step(
            "Split it by subject, stratified by diagnosis",
            ["cohort", "split", sim, "--kind", "stratified", "--label", "diagnosis", "--test-size", "0.25"],
            done=Path(sim) / "splits" / "stratified.json",
        )
        cohorts = {"sim": {"dir": sim, "split": "stratified"}}
        if self.abide is not None:
            abide = self.path("cohorts", "abide")
            self.step(
                "Import the real ABIDE scans (CC200) with the shipped value mapping",
                [
                    "cohort", "import",
                    "--table", str(self.abide / "phenotypes.csv"),
                    "--npz", str(self.abide / "timeseries_cc200.npz"),
                    "--atlas", str(self.abide / "cc200_centroids.csv"),
                    "--preset", "abide", "--out", abide,
                ],
                done=Path(abide) / "cohort.json",
            )  # fmt: skip
            self.step(
                f"Hold out whole ABIDE sites ({', '.join(self.test_sites)}) for testing",
                [
                    "cohort",
                    "split",
                    abide,
                    "--kind",
                    "leave-sites-out",
                    "--test-sites",
                    ",".join(self.test_sites),
                ],
                done=Path(abide) / "splits" / "leave-sites-out.json",
            )
            self.check_test_sites(Path(abide) / "splits" / "leave-sites-out.json")
            cohorts["abide"] = {"dir": abide, "split": "leave-sites-out"}
        for name, c in cohorts.items():
            train = self.path("cohorts", f"{name}-train")
            self.step(
                f"Keep the train part of '{name}' for Stages 1-2 (no test subject or site is ever seen)",
                ["cohort", "subset", c["dir"], "--split", c["split"], "--part", "train", "--out", train],
                done=Path(train) / "cohort.json",
            )
            c["train"] = train
        return cohorts

    def prepare_corpora(self, cohorts: dict[str, dict[str, str]]) -> dict[str, str]:
        corpora = {}
        for name, c in cohorts.items():
            corpus = self.path("corpora", name)
            argv = ["corpus", "build", c["dir"], "--out", corpus, "--fit-on-split", f"{c['split']}:train"]
            argv += ["--num-proc", str(self.workers())]
            self.step(
                f"Descriptor corpus of '{name}' (reference statistics fitted on its train part only)",
                argv + ["--scan-level", "--quiet"],
                done=Path(corpus) / "dataset",
            )
            corpora[name] = corpus
        return corpora

    def prepare_instructions(
        self, cohorts: dict[str, dict[str, str]], corpora: dict[str, str]
    ) -> dict[str, str]:
        tasks = {
            "sim": self.p.sim_tasks,
            "abide": self.p.abide_tasks,
        }
        sets = {}
        for name, c in cohorts.items():
            out = self.path("instructions", name)
            self.step(
                f"Instruction set of '{name}' (test part marked, never trained on)",
                [
                    "instructions", "build", c["dir"], "--tasks", tasks[name], "--corpus", corpora[name],
                    "--split", c["split"], "--out", out, "--seed", "0",
                ]
                + (["--paradigms", self.p.instruct_paradigms] if self.p.instruct_paradigms else [])
                + (
                    ["--bare-questions", str(self.p.instruct_bare_questions)]
                    if self.p.instruct_bare_questions
                    else []
                ),
                done=Path(out) / "dataset",
            )  # fmt: skip
            sets[name] = out
        return sets

    def train(self, cohorts: dict[str, dict[str, str]], corpora: dict[str, str], sets: dict[str, str]) -> str:
        base = ["--base", self.base] if self.base else []
        cohort_args = [a for c in cohorts.values() for a in ("--cohort", c["train"])]
        corpus_args = [a for c in corpora.values() for a in ("--corpus", c)]
        tok = self.path("stage1_tokenizer")
        self.step(
            "Stage 1: train the VQ fMRI tokenizer, aligned to the LLM's text space",
            [
                "train",
                "tokenizer",
                *cohort_args,
                *corpus_args,
                "--out",
                tok,
                "--preset",
                self.p.tokenizer_preset,
                "--resume",  # an interrupted step continues (a fresh --out simply starts)
            ]
            + ["--steps", str(self.p.tokenizer_steps), "--text-pooling", self.p.text_pooling]
            + ["--connectome-tokens", str(self.p.connectome_tokens)]
            + ["--connectome-components", str(self.p.connectome_components)]
            + (["--llm", self.base] if self.base else [])
            + self.common(),
            done=Path(tok) / "config.json",
        )
        align = self.path("stage2_align")
        self.step(
            "Stage 2: align the LLM (describe windows, forecast the next window, text replay)",
            [
                "train",
                "align",
                *cohort_args,
                *corpus_args,
                "--tokenizer",
                tok,
                "--out",
                align,
                *base,
                "--resume",
            ]
            + ["--steps", str(self.p.align_steps), "--batch-size", str(self.p.batch_size)]
            + ["--text-columns", self.p.align_text_columns, "--max-length", str(self.p.align_max_length)]
            + ["--max-windows", str(self.p.max_windows)]
            + ([] if self.p.lora_dropout is None else ["--lora-dropout", str(self.p.lora_dropout)])
            + (
                []
                if self.p.align_max_val_examples is None
                else ["--max-val-examples", str(self.p.align_max_val_examples)]
            )
            + self.checkpointing()
            + self.common(),
            done=Path(align) / "model" / "config.json",
        )
        instruct = self.path("stage3_instruct")
        tuned = {n: s for n, s in sets.items() if n != "sim" or self.p.instruct_sim or len(sets) == 1}
        set_args = [a for s in tuned.values() for a in ("--instructions", s)]
        self.step(
            "Stage 3: multi-task instruction tuning (loss on answers only)",
            ["train", "instruct", "--model", align, *set_args, "--out", instruct, "--resume"]
            + ["--steps", str(self.p.instruct_steps), "--batch-size", str(self.p.instruct_batch_size)]
            + (
                []
                if self.p.instruct_max_windows is None
                else ["--max-windows", str(self.p.instruct_max_windows)]
            )
            + (
                []
                if self.p.instruct_connectome_shown is None
                else ["--connectome-shown", str(self.p.instruct_connectome_shown)]
            )
            + (
                []
                if self.p.instruct_system_prompt is None
                else ["--system-prompt", self.p.instruct_system_prompt]
            )
            + (
                []
                if self.p.instruct_task_weights is None
                else ["--task-weights", self.p.instruct_task_weights]
            )
            + ([] if self.p.instruct_lr_schedule is None else ["--lr-schedule", self.p.instruct_lr_schedule])
            + (["--probe-init"] if self.p.instruct_probe_init else [])
            + (
                ["--probe-rounds", str(self.p.instruct_probe_rounds)]
                if self.p.instruct_probe_init and self.p.instruct_probe_rounds is not None
                else []
            )
            + (["--scan-facts"] if self.p.instruct_scan_facts else [])
            + (
                ["--probe-teacher", str(self.p.instruct_probe_teacher)]
                if self.p.instruct_probe_init and self.p.instruct_probe_teacher
                else []
            )
            + (
                []
                if self.p.instruct_soft_lr_scale is None
                else ["--soft-lr-scale", str(self.p.instruct_soft_lr_scale)]
            )
            + (
                []
                if self.p.instruct_warmup_steps is None
                else ["--warmup-steps", str(self.p.instruct_warmup_steps)]
            )
            + self.instruct_precision()
            + self.checkpointing()
            + self.common(),
            done=Path(instruct) / "model" / "config.json",
        )
        return str(Path(instruct) / "model")

    def talk(self, model_dir: str, cohorts: dict[str, dict[str, str]], sets: dict[str, str]) -> None:
        """Chat about one held-out scan; each answer is printed next to what its descriptors say."""
        from fmrilm import FmriLM
        from fmrilm.cohort import load_cohort
        from fmrilm.model.scoring import stored_tasks
        from fmrilm.splits import load_split

        name = "abide" if "abide" in cohorts else "sim"
        cohort = load_cohort(cohorts[name]["dir"])
        split = load_split(cohorts[name]["dir"], cohorts[name]["split"])
        scan = cohort.scan(int(split["test"][0]))
        truth = reference_answers(sets[name], scan.scan_id)
        print(f"\n[{len(self.timings) + 1}] Reload with FmriLM.from_pretrained('{model_dir}') and chat about "
              f"held-out scan {scan.scan_id} (site {scan.site}, never trained on)")  # fmt: skip
        start = time.perf_counter()
        model = FmriLM.from_pretrained(model_dir)
        history = None
        for task, question in CHAT_QUESTIONS:
            print(f"\n  user> {question}\n  fmrilm> ", end="", flush=True)
            answer, history = model.chat(scan if history is None else None, question, history=history,
                                         max_new_tokens=40, stream=True)  # fmt: skip
            if not answer.endswith("\n"):
                print()
            if task in truth:
                source = "recorded" if task in PHENOTYPE_QUESTIONS else "its descriptors say"
                print(f"  ({source}: {truth[task]})")
        descriptor_rates(model, cohort, split, sets[name], second_questions=self.p.chat_second_questions)
        stored = stored_tasks(model)
        task = f"diagnosis@{cohort.name}" if f"diagnosis@{cohort.name}" in stored else "diagnosis"
        probs = model.predict(scan, task)
        shown = json.dumps({k: round(v, 3) for k, v in probs.items()})
        print(f"\n  model.predict(scan, '{task}') -> {shown}  (recorded: {truth.get('diagnosis', '?')})")
        self.timings.append(("Reload and chat", time.perf_counter() - start))

    def evaluate(self, model_dir: str, cohorts: dict[str, dict[str, str]]) -> list[Path]:
        name = "abide" if "abide" in cohorts else "sim"
        c = cohorts[name]
        reports = []
        for task in self.p.eval_tasks:
            out = self.path("eval", f"{name}_{task}")
            self.step(
                f"Evaluate '{task}' on the held-out part of '{name}' next to the FC baseline (same split)",
                [
                    "eval", "--model", model_dir, "--cohort", c["dir"], "--task", task,
                    "--split", c["split"], "--shots", self.p.eval_shots, "--seeds", str(self.p.eval_seeds),
                    "--out", out, "--no-progress",
                ]
                + self.common(),
                done=Path(out) / "report.json",
            )  # fmt: skip
            reports.append(Path(out))
        return reports

    def summary(self, reports: list[Path], wall: float) -> None:
        print("\n" + "=" * 100)
        for report in reports:
            md = report / "report.md"
            if md.exists():
                text = md.read_text()
                start = text.find("## Summary")
                print(text[start:].split("\n## ", 2)[0] if start >= 0 else text[:3000])
                # where each held-out site's answers are lost, and whether the answers rank the scans as the
                # linear readers do (its own input's among them): each a heading paragraph and its table
                for heading in ("By test site", "Rank agreement with the linear readers"):
                    at = text.find(heading)
                    if at >= 0:
                        print("\n\n".join(text[at:].split("\n\n", 2)[:2]) + "\n")
        print("Step times:")
        for title, seconds in self.timings:
            print(f"  {seconds:7.0f} s  {title}")
        print(f"Demo wall time {wall / 60:.1f} min; peak memory {peak_mib():.0f} MiB (this process).")
        print(f"Everything is in {self.out}/ ; the trained model loads with FmriLM.from_pretrained.")
        sys.stdout.flush()


#: The questions the demo's chat asks, as a user would (no answer list; held-out scans are scored on the same
#: wording): two descriptor questions and the diagnosis.
CHAT_QUESTIONS = (
    ("coupled_pair", "Which pair of networks is most strongly coupled relative to the reference population?"),
    ("modularity", "Is modularity in this scan higher or lower than in the reference population?"),
    ("diagnosis", "What is the diagnostic group of the participant in this scan?"),
)
#: Tasks of CHAT_QUESTIONS answered from the phenotype table, not from the scan's descriptors.
PHENOTYPE_QUESTIONS = {"diagnosis"}


def descriptor_rates(
    model, cohort, split, instruction_set: str, n_scans: int = 20, second_questions: bool = True
) -> None:
    """How often the model's chat answers `CHAT_QUESTIONS` (the descriptor questions and the diagnosis, asked
    without an answer list, as a user asks) right on held-out scans, next to always giving the answer most
    frequent in the training rows (the bar a model that ignores the scan reaches), and how often it answers
    with one of the question's answers at all.

    Each question is asked in a fresh chat (greedy decoding, as `fmrilm chat` answers), and every question
    after the first once more as the next turn of the first question's chat, the way a user goes on asking
    about a scan. An answer is right when it is the recorded one, a network pair in either order.
    Generating costs a few tokens per scan, where scoring every one of the 78 network pairs cost minutes; the
    scans' chats are generated together (`fmrilm.chat.chat_batch`), each with the answer it gets alone."""
    from fmrilm.chat import chat_batch

    answers = answer_table(instruction_set)
    test_ids = {str(cohort.dataset[int(i)]["scan_id"]): int(i) for i in split["test"][:n_scans]}
    train_ids = {str(cohort.dataset[int(i)]["scan_id"]) for i in split["train"]}
    first_chats: dict[str, list] = {}  # scan id -> the history of the first question's chat
    for k, (task, question) in enumerate(CHAT_QUESTIONS):
        rows = answers[answers["task"] == task]
        truth = dict(zip(rows["scan_id"], rows["answer"], strict=True))
        majority = rows[rows["scan_id"].isin(train_ids)]["answer"].value_counts()
        scored = [sid for sid in test_ids if sid in truth]
        if majority.empty or not scored:
            continue
        base = float(np.mean([truth[s] == majority.index[0] for s in scored]))
        options = next(iter(rows["options"]), None)
        options = list(options) if options is not None and len(options) else sorted(set(rows["answer"]))
        asked = {"in a fresh chat": {s: None for s in scored}}
        if second_questions and k > 0 and first_chats:
            asked["as the second question of a chat"] = {
                s: first_chats[s] for s in scored if s in first_chats
            }
        for how, histories in asked.items():
            right, valid = [], []
            scans = [cohort.scan(test_ids[s]) if h is None else None for s, h in histories.items()]
            replies = chat_batch(model, scans, question, list(histories.values()), max_new_tokens=24)
            for s, (said, chat) in zip(histories, replies, strict=True):
                right.append(same_answer(said, truth[s]))
                valid.append(any(same_answer(said, o) for o in options))
                if k == 0:
                    first_chats[s] = chat
            print(
                f"  {task}: chat answers right on {np.mean(right):.0%} of {len(right)} held-out scans {how} "
                f"(always '{majority.index[0]}', the most frequent training answer: {base:.0%}); "
                f"one of the question's answers on {np.mean(valid):.0%}"
            )


def same_answer(said: str, recorded: str) -> bool:
    """Whether a chat answer is the recorded one: case, surrounding space and a final full stop aside, and a
    pair of networks in either order ("A and B" is "B and A")."""

    def words(text: str) -> str:
        return " ".join(text.strip().rstrip(".").lower().split())

    said, recorded = words(said), words(recorded)
    if said == recorded:
        return True
    pair = recorded.split(" and ")
    return len(pair) == 2 and said == f"{pair[1]} and {pair[0]}"


def peak_mib() -> float:
    """This process's peak resident memory so far; every step runs in this process, so it covers them all."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # macOS reports bytes, Linux KiB


def answer_table(instruction_set: str):
    """Scan id, task, answer and options of the set's brain-paradigm rows (one per scan and task), as a DataFrame."""
    import datasets

    rows = datasets.load_from_disk(str(Path(instruction_set) / "dataset"))
    columns = rows.select_columns(["scan_id", "paradigm", "task", "answer", "options"]).to_pandas()
    return columns[columns["paradigm"] == "brain"].drop_duplicates(["scan_id", "task"])


def reference_answers(instruction_set: str, scan_id: str) -> dict[str, str]:
    """The answers an instruction set records for one scan, by task (descriptor-derived or phenotype)."""
    mine = answer_table(instruction_set)
    mine = mine[mine["scan_id"] == scan_id]
    return dict(zip(mine["task"], mine["answer"], strict=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="fmrilm demo", description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
