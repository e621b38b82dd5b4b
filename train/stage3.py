"""Stage 3: multi-task instruction tuning of LoRA adapters (`fmrilm train instruct`).

Instruction sets (`fmrilm instructions build`) hold chat rows whose fMRI parts name a scan and window of their
cohort. Every scan is encoded once by the model's own fMRI tokenizer, each row becomes ``input_ids`` through
the base model's chat template (`FmriLMProcessor.training_example`) with labels on the assistant's answer only
(-100 elsewhere), and LoRA adapters plus the brain-token rows are trained on all tasks and paradigms together.
Each example's loss is its own mean token loss, so a long open-paradigm sentence does not outweigh a one-word
answer.

With ``replay_weight`` W > 0, a share W of every batch is plain text -> text chat pairs (`fmrilm.train.replay`:
the built-in set plus ``--replay-file``), task "replay" in the metrics, so the LLM stays a chat model that
answers free questions in sentences; the phenotype rows fill the rest of the batch exactly as they would without
replay (the same balanced shares), so replay never changes the tasks' class balance.

Rows of a set's ``test`` split part are never trained on; ``val`` rows give the held-out loss (per task);
rows without a split, or in ``train``, are trained on. The batch of step ``s`` is a function of (seed, s) only
(slices of seeded per-epoch permutations), so a resumed run sees the batches the uninterrupted run would have
seen; checkpoints hold only the trainable tensors.

The model keeps the tasks it learned (`fmrilm.model.scoring.TaskCard`, in its processor config), so
``FmriLM.from_pretrained(OUT/model).predict(scan, "diagnosis")`` scores the answers it was trained with.

Output folder (as Stage 2): ``model/`` (the `FmriLM` one-folder layout), ``metrics.json``,
``train_config.json``, ``data.json`` (examples per task and part), ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fmrilm.train.common import (
    TRAIN_CONFIG,
    LoopSettings,
    add_loop_arguments,
    add_lora_arguments,
    checkpointing_wanted,
    enable_gradient_checkpointing,
    loop_kwargs,
    lora_from_args,
    param_groups,
    prepare_out_dir,
    torch_threads,
)
from fmrilm.train.probe_init import CALIBRATION_ROUNDS

from fmrilm.errors import FmriInputError
from fmrilm.safety import nonnegative_float, nonnegative_int, positive_int

logger = logging.getLogger("fmrilm.train.stage3")

METRICS_FILE = "metrics.json"
DATA_FILE = "data.json"
MODEL_DIR = "model"
PROCESSOR_CONFIG = "fmri_processor_config.json"
#: Split parts: never trained on / held out for the validation loss.
TEST_PART, VAL_PART = "test", "val"
#: Task name of the text replay examples (metrics ``loss_replay`` / ``val_loss_replay``).
REPLAY_TASK = "replay"
#: Where a run keeps the replay pairs it trains on (with "own" answers: generated once, reused on resume).
REPLAY_PAIRS_FILE = "replay_pairs.json"
REPLAY_ANSWERS = ("written", "own")
#: Default share of each Stage-3 batch given to text replay (measured: BENCHMARKS.md, "Retention").
DEFAULT_REPLAY_WEIGHT = 0.0


@dataclass(kw_only=True)
class LoopConfig(LoopSettings):
    """Settings of `fit`, shared by Stage 3 and fine-tuning: the loop (`LoopSettings`, whose defaults are
    Stage 3's), the LoRA adapters and the examples."""

    lora: dict[str, Any] = field(default_factory=dict)
    max_length: int = 2048
    max_val_examples: int = 256
    mixed_precision: str | None = None
    gradient_checkpointing: bool | None = None  # None: on when batch_size x the longest example is large
    #: a batch of short and long examples runs as two forward passes, each padded to its own longest, when
    #: that saves a tenth of the padded tokens (`train.common.length_groups`; one process only): the same
    #: gradient, a quarter less of a CPU step for the demo's prompts
    split_by_length: bool = True
    #: learning-rate multiplier of the soft-token projection (a new linear map: it needs larger steps than
    #: LoRA, as the projector of LLaVA-style models does)
    soft_lr_scale: float = 10.0
    #: draw batches so every task, and every answer of a task, gets the same share (see balanced_weights)
    balance: bool = True
    #: with balance: each task's share of the batches relative to the others (missing tasks: 1), so a CPU run
    #: spends its few steps where it is judged (e.g. {"diagnosis": 2} gives diagnosis half of three tasks)
    task_weights: dict[str, float] | None = None


@dataclass(kw_only=True)
class InstructConfig(LoopConfig):
    """Everything a Stage 3 run depends on; saved as ``train_config.json`` and checked on resume."""

    model: str = ""
    instructions: list[str] = field(default_factory=list)
    out: str = ""
    cohorts: list[str] = field(default_factory=list)  # override the sets' cohort folders (one per set)
    new_adapters: bool = False
    max_windows: int | None = None
    #: connectome tokens a whole-scan part shows (None: all); the scan summary still reads every group
    connectome_shown: int | None = None
    #: the system turn of every prompt (None: keep the model's; "": an empty one, the shortest prompt)
    system_prompt: str | None = None
    #: share of every batch given to text replay pairs (0: none), so instruction tuning keeps the chat model
    replay_weight: float = DEFAULT_REPLAY_WEIGHT
    #: extra replay pairs (JSON lines with "prompt" and "response") on top of the built-in ones
    replay_file: str | None = None
    #: the replay pairs' answers: "written" (as in the pairs) or "own" (the model's own answers before tuning,
    #: adapters off: `fmrilm.train.replay.own_answers`), which hold the chat where it was
    replay_answers: str = "written"
    #: warm-start the scan summary from a linear probe per two-answer / binned regression task (`train.probe_init`)
    probe_init: bool = False
    #: with ``probe_init``: weight of the distillation term that pulls each two-answer answer's first-token
    #: margin towards its probe's (Platt-scaled) probability on that training scan (0: none)
    probe_teacher: float = 0.0
    #: with ``probe_init``: calibration rounds of the warm start's step (0: the first-order step alone, as both
    #: presets plant)
    probe_rounds: int = CALIBRATION_ROUNDS
    #: every whole-scan part ends with the scan's facts line (`fmrilm.descriptors.facts`), z-scored against
    #: the reference statistics of the instruction sets' descriptor corpora (None: keep the model's setting)
    scan_facts: bool | None = None

    def saved_before(self, saved: dict[str, Any]) -> dict[str, Any]:
        """A warm-started run saved before ``probe_rounds`` was a setting calibrated twice (the default until
        2026-12-07)."""
        return {"probe_rounds": 2} if saved.get("probe_init") else {}


# ------------------------------------------------------------------------------------------------------ data
@dataclass
class InstructionSource:
    """One instruction set with its task specs and the cohort its rows point into."""

    directory: Path
    dataset: Any
    meta: dict[str, Any]
    specs: dict[str, Any]
    cohort: Any


def resolve_model_dir(path: str | Path) -> Path:
    """A saved `FmriLM` folder, or the run folder of Stage 2/3 holding one in ``model/``."""
    path = Path(path)
    for candidate in (path, path / MODEL_DIR):
        if (candidate / PROCESSOR_CONFIG).exists():
            return candidate
    raise FmriInputError(
        "No saved fmrilm model here (no fmri_processor_config.json, nor in model/)",
        file=path,
        fix="pass the --out folder of `fmrilm train align` / `instruct`, or a folder written by FmriLM.save_pretrained",
    )


def load_sources(
    instruction_dirs: list[str], cohort_dirs: list[str] | None = None
) -> list[InstructionSource]:
    """Instruction sets and their cohorts (from each set's ``cohort_dir``, or ``cohort_dirs`` in order)."""
    from fmrilm.instructions.builder import load_instruction_set

    from fmrilm.cohort import load_cohort

    if not instruction_dirs:
        raise FmriInputError(
            "No instruction set given", fix="pass --instructions DIR (fmrilm instructions build)"
        )
    if cohort_dirs and len(cohort_dirs) != len(instruction_dirs):
        raise FmriInputError(
            f"{len(cohort_dirs)} --cohort folders for {len(instruction_dirs)} --instructions sets",
            fix="give one --cohort per --instructions, in the same order, or none",
        )
    sources = []
    for i, directory in enumerate(instruction_dirs):
        directory = Path(directory)
        dataset, meta, specs = load_instruction_set(directory)
        cohort_dir = Path(cohort_dirs[i]) if cohort_dirs else _cohort_of(directory, meta)
        sources.append(InstructionSource(directory, dataset, meta, specs, load_cohort(cohort_dir)))
    return sources


def _cohort_of(directory: Path, meta: dict[str, Any]) -> Path:
    stored = meta.get("cohort_dir")
    candidates = [] if not stored else [Path(stored), directory.parent / stored, directory / stored]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FmriInputError(
        f"The cohort of this instruction set ({stored or 'not recorded'}) is not found",
        file=directory,
        fix="pass its folder with --cohort DIR (one per --instructions)",
    )


def encode_scans(
    cohort: Any,
    fmri_tokenizer: Any,
    scan_ids: set[str] | None = None,
    progress: bool = False,
    windows: bool = True,
    facts: Any = None,
):
    """``{scan_id: codes (W, K)}`` of a cohort's scans (only ``scan_ids`` if given), each encoded once.

    ``windows=False`` (a model that shows connectome tokens only and no row asks for a window) skips the
    window tokenizer: every scan gets zero windows, and only its connectome tokens are computed. ``facts``
    (scan -> its facts line, the processor's ``scan_facts``) fills ``facts`` for whole-scan parts.
    """
    from fmrilm.train.stage2 import encode_cohorts

    if fmri_tokenizer is None:
        raise FmriInputError(
            "The model has no fMRI tokenizer, so scans cannot become brain tokens",
            fix="use a model saved with its fmri_tokenizer subfolder (Stage 2 output)",
        )
    if scan_ids is not None:
        all_ids = [str(s) for s in cohort.dataset["scan_id"]]
        cohort = cohort.select([i for i, s in enumerate(all_ids) if s in scan_ids])
    if windows or getattr(fmri_tokenizer, "connectome", None) is None:
        data = encode_cohorts([cohort], fmri_tokenizer, cache=None, progress=progress)
        encoded = EncodedScans(zip(data.scan_ids, data.codes, strict=True))
    else:
        k = int(fmri_tokenizer.config.num_latents)
        encoded = EncodedScans((str(s), np.zeros((0, k), np.int64)) for s in cohort.dataset["scan_id"])
    connectome = getattr(fmri_tokenizer, "connectome", None)
    if connectome is not None:
        ids = [str(s) for s in cohort.dataset["scan_id"]]
        scans = (cohort.scan(i) for i in range(len(cohort)))
        if progress:
            from tqdm.auto import tqdm

            scans = tqdm(scans, total=len(ids), desc="connectome tokens", unit="scan")
        encoded.connectome = dict(zip(ids, connectome.encode_many(scans), strict=True))
    if facts is not None:
        encoded.facts = {str(s): facts(cohort.scan(i)) for i, s in enumerate(cohort.dataset["scan_id"])}
    return encoded


def store_fact_references(config: Any, sources: list[InstructionSource]) -> None:
    """Put each instruction set's descriptor reference (the statistics its answers were computed against) in
    the model's ``descriptor_references``, replacing any stored one of the same atlas."""
    from fmrilm.data_gen.corpus import REFERENCE_FILE

    for source in sources:
        corpus = source.meta.get("descriptors")
        if not corpus:
            continue  # phenotype questions only: no corpus, and no facts for its atlas unless another set has one
        path = descriptor_corpus_of(source.directory, corpus) / REFERENCE_FILE
        if not path.is_file():
            raise FmriInputError(
                f"Scan facts need the descriptor reference of this instruction set's corpus, and {path} is missing",
                file=source.directory,
                fix="keep the corpus folder the set was built from (fmrilm corpus build), or leave out --scan-facts",
            )
        reference = json.loads(path.read_text())
        atlas = reference.get("atlas") or {}
        config.descriptor_references = [
            r for r in config.descriptor_references if (r.get("atlas") or {}).get("name") != atlas.get("name")
        ] + [reference]


def descriptor_corpus_of(directory: Path, stored: str) -> Path:
    """The descriptor corpus an instruction set was built from (its ``descriptors``, as stored or beside it)."""
    for candidate in (Path(stored), directory.parent / stored, directory / stored):
        if candidate.is_dir():
            return candidate
    raise FmriInputError(
        f"Scan facts need this instruction set's descriptor corpus ({stored}), which is not found",
        file=directory,
        fix="keep the corpus folder the set was built from (fmrilm corpus build), or leave out --scan-facts",
    )


def asks_for_windows(rows: Any) -> bool:
    """Whether any instruction row shows a single window (its fMRI part names one)."""
    for messages in rows["messages"]:
        messages = json.loads(messages) if isinstance(messages, str) else messages
        for message in messages:
            content = message.get("content")
            if isinstance(content, list) and any(
                p.get("type") == "fmri" and p.get("window") is not None for p in content
            ):
                return True
    return False


class EncodedScans(dict):
    """``{scan_id: window codes (W, K)}``, plus ``connectome``: ``{scan_id: ConnectomeTokens}`` when the
    tokenizer has connectome tokens (whole-scan parts then carry them)."""

    connectome: dict[str, Any]
    facts: dict[str, str]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connectome = {}
        self.facts = {}


def resolve_messages(
    messages: str | list[dict[str, Any]], codes: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Chat messages of an instruction row with each ``{"type": "fmri", "scan_id", "window"}`` part given its codes.

    ``window`` None is the whole scan (every window; the processor keeps its last ``max_windows`` exactly as it
    does for a scan at inference), an integer is that one window.
    """
    messages = json.loads(messages) if isinstance(messages, str) else messages
    resolved = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [_resolve_part(p, codes) for p in content]
        resolved.append({**message, "content": content})
    return resolved


def _resolve_part(part: dict[str, Any], codes: dict[str, np.ndarray]) -> dict[str, Any]:
    if part.get("type") != "fmri" or "scan_id" not in part:
        return part
    scan_id = str(part["scan_id"])
    if scan_id not in codes:
        raise FmriInputError(
            f"Instruction rows name scan '{scan_id}', which the cohort does not have",
            subject=scan_id,
            fix="rebuild the instruction set from this cohort, or pass the right --cohort",
        )
    scan_codes = codes[scan_id]
    window = part.get("window")
    if window is None:
        whole: dict[str, Any] = {"type": "fmri", "codes": scan_codes}
        connectome = getattr(codes, "connectome", {}).get(scan_id)
        if connectome is not None:
            whole["connectome"] = connectome
        facts = getattr(codes, "facts", {}).get(scan_id)
        if facts is not None:
            whole["facts"] = facts
        return whole
    if not 0 <= int(window) < len(scan_codes):
        raise FmriInputError(
            f"Instruction rows ask for window {window} of scan '{scan_id}', which has {len(scan_codes)} windows "
            "with this model's tokenizer",
            subject=scan_id,
            fix="build the instruction set with --windows whole, or with the tokenizer's window length",
        )
    return {"type": "fmri", "codes": scan_codes[int(window) : int(window) + 1]}


def build_examples(
    processor: Any, rows: Any, codes: dict[str, np.ndarray], max_length: int | None = None
) -> tuple[list[dict[str, Any]], Counter]:
    """Training examples (``input_ids``, ``labels``, ``task``) of instruction rows; too-long rows are counted, not cut.

    Cutting a row would cut its answer, which sits at the end; lower the model's ``max_windows`` instead.
    """
    examples, skipped = [], Counter()
    for row in rows:
        example = processor.training_example(resolve_messages(row["messages"], codes))
        if max_length and len(example["input_ids"]) > max_length:
            skipped[row["task"]] += 1
            continue
        examples.append(
            {
                **example,
                "task": row["task"],
                "answer": str(row.get("answer", "")),
                "scan_id": str(row.get("scan_id", "")),
            }
        )
    return examples, skipped


def task_cards(sources: list[InstructionSource]) -> list[Any]:
    """The scored tasks of the sets, bound as each set bound them (options, answer map)."""
    from fmrilm.model.scoring import TaskCard

    cards: dict[str, Any] = {}
    for source in sources:
        for name, info in source.meta.get("tasks", {}).items():
            spec = source.specs.get(name)
            if spec is None or spec.type == "open-ended":
                continue
            mapping = next(
                (m["values"] for m in spec.value_maps if m["name"] == info.get("answer_map")), None
            )
            options = info.get("options") or None
            card = TaskCard.from_spec(spec, options=options, mapping=mapping)
            if name in cards and cards[name].options != card.options:
                # Same task, other answers (e.g. sim "patient" vs ABIDE "autism"): keep both, the later one
                # under NAME@COHORT, so `predict(scan, "diagnosis@abide")` scores the ABIDE answers.
                alias = f"{name}@{source.cohort.name}"
                logger.info(
                    "task %s has answers %s in %s but %s in an earlier set: stored as '%s'",
                    name, card.options, source.directory, cards[name].options, alias,
                )  # fmt: skip
                cards.setdefault(alias, TaskCard.from_dict({**card.to_dict(), "name": alias}))
                continue
            cards.setdefault(name, card)
    return list(cards.values())


# -------------------------------------------------------------------------------------------------- training
def batch_rows(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of step ``step``'s batch: consecutive slices of seeded per-epoch permutations of ``n`` rows."""
    return permutation_rows(n, step * batch_size, batch_size, [seed])


def permutation_rows(n: int, position: int, count: int, key: list[int]) -> np.ndarray:
    """``count`` rows from ``position`` on in the stream of seeded per-epoch permutations of ``n`` rows
    (epoch ``e`` is ``default_rng([*key, e]).permutation(n)``)."""
    rows: list[int] = []
    while len(rows) < count:
        epoch, offset = divmod(position + len(rows), n)
        permutation = np.random.default_rng([*key, epoch]).permutation(n)
        rows.extend(permutation[offset : offset + count - len(rows)].tolist())
    return np.asarray(rows, dtype=np.int64)


def replay_rows_before(weight: float, batch_size: int, step: int) -> int:
    """Replay rows in the batches of steps ``0 .. step - 1``: ``floor(weight x batch_size x step)``, so step
    ``s`` holds ``replay_rows_before(s + 1) - replay_rows_before(s)`` of them and the share is ``weight``
    to within one row over any run length (a fraction of a row is carried to the next step)."""
    return int(np.floor(weight * batch_size * step + 1e-9))


def replay_batch_rows(n_replay: int, weight: float, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Replay rows (indices into the replay examples) of step ``step``: the next ones in seeded
    permutations of the replay pairs, so every pair is seen equally often; a function of (seed, step)."""
    start = replay_rows_before(weight, batch_size, step)
    count = replay_rows_before(weight, batch_size, step + 1) - start
    return permutation_rows(n_replay, start, count, [seed, 1])


#: A task with at most this many distinct answers is class-balanced; more (free text) is sampled uniformly.
MAX_BALANCED_ANSWERS = 12


def balanced_weights(
    examples: list[dict[str, Any]], task_weights: dict[str, float] | None = None
) -> np.ndarray:
    """Sampling probability of each example: every task gets the same share of the batches (or the share
    ``task_weights`` gives it), and inside a task every answer (class, age bin) the same share, so a rare
    class or a small task is seen as often as the rest (Stage 3 learns each phenotype task, not the most
    frequent answer of the largest one)."""
    tasks = [str(e.get("task")) for e in examples]
    share = check_task_weights(task_weights, set(tasks))
    answers = [str(e.get("answer", "")) for e in examples]
    by_task: dict[str, set[str]] = {}
    for t, a in zip(tasks, answers, strict=True):
        by_task.setdefault(t, set()).add(a)
    keys = [
        (t, a if len(by_task[t]) <= MAX_BALANCED_ANSWERS else "") for t, a in zip(tasks, answers, strict=True)
    ]
    counts = Counter(keys)
    classes = Counter(t for t, _ in counts)
    w = np.asarray([share.get(t, 1.0) / (len(by_task) * classes[t] * counts[(t, a)]) for t, a in keys])
    return w / w.sum()


def check_task_weights(task_weights: dict[str, float] | None, tasks: set[str]) -> dict[str, float]:
    """``task_weights`` checked against the tasks being trained: a name that is not one of them, or a weight
    that is not a positive finite number, is refused with the known task names."""
    share = dict(task_weights or {})
    for name, weight in share.items():
        if name not in tasks:
            raise FmriInputError(
                f"--task-weights names task {name!r}, which is not among the training tasks",
                fix=f"use one of: {', '.join(sorted(tasks))}",
            )
        if not (isinstance(weight, int | float) and np.isfinite(weight) and weight > 0):
            raise FmriInputError(
                f"--task-weights gives task {name!r} the weight {weight!r}",
                fix="give every task a positive number (1 is the default share)",
            )
    return {k: float(v) for k, v in share.items()}


def parse_task_weights(text: str) -> dict[str, float]:
    """``"diagnosis=2,modularity=1"`` -> ``{"diagnosis": 2.0, "modularity": 1.0}`` (argparse type)."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or not np.isfinite(weight) or weight <= 0:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not TASK=WEIGHT with a positive weight (e.g. diagnosis=2,modularity=1)"
            )
        out[name.strip()] = weight
    if not out:
        raise argparse.ArgumentTypeError("give at least one TASK=WEIGHT (e.g. diagnosis=2)")
    return out


def balanced_batch_rows(weights: np.ndarray, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of step ``step``'s batch drawn by ``weights``: a function of (seed, step) only, so resuming
    draws the batches the uninterrupted run would have drawn."""
    rng = np.random.default_rng([seed, step, 7])
    return rng.choice(len(weights), size=batch_size, replace=True, p=weights)


def fit(
    model: Any,
    train: list[dict[str, Any]],
    val: list[dict[str, Any]],
    cfg: LoopConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    desc: str = "instruct",
    setup: dict[str, Any] | None = None,
    replay: list[dict[str, Any]] | None = None,
    replay_val: list[dict[str, Any]] | None = None,
    replay_weight: float = 0.0,
    teacher_weight: float = 0.0,
) -> tuple[Any, Any]:
    """Train ``model``'s trainable tensors on ``train`` examples under accelerate; returns ``(model, state)``.

    Writes ``metrics.json`` (train loss per task, validation loss per task) and checkpoints into ``out_dir``;
    ``resume`` continues from the last checkpoint. The returned model is unwrapped and in eval mode.
    With ``replay_weight`` > 0, that share of every batch comes from the ``replay`` examples (in seeded
    permutations) and the rest from ``train`` as without replay; ``replay_val`` joins the validation loss.
    Training examples with ``answer_options`` and ``teacher`` (`attach_teachers`) add ``teacher_weight``
    times their distillation term to their loss.
    """
    import torch
    from fmrilm.train.common import (
        BatchShards,
        MetricsLog,
        TrainState,
        apply_gradients,
        has_answer,
        length_groups,
        load_checkpoint,
        lr_multiplier,
        make_accelerator,
        optimizer_step,
        progress_bar,
        save_checkpoint,
    )
    from fmrilm.train.stage2 import _trainable_only_checkpoints

    from fmrilm.model.processing import IGNORE_INDEX

    if not train:
        raise FmriInputError(
            "No training example is left", fix="check the instruction rows and their split parts"
        )
    replay = list(replay or []) if replay_weight > 0 else []
    replay_val = list(replay_val or []) if replay else []
    if replay_weight > 0 and not replay:
        raise FmriInputError("Replay is asked for but there is no replay pair", fix="pass --replay-weight 0")
    accelerator = make_accelerator(out_dir, seed=cfg.seed, mixed_precision=cfg.mixed_precision)
    _trainable_only_checkpoints(accelerator)
    shards = BatchShards(accelerator, cfg.batch_size)  # under `accelerate launch`: each process's share
    show = accelerator.is_main_process and (cfg.progress if cfg.progress is not None else None)
    processor = model.processor
    model.llm.train()
    longest = max(len(e["input_ids"]) for e in train + replay)
    if checkpointing_wanted(cfg.gradient_checkpointing, cfg.batch_size * longest):
        enable_gradient_checkpointing(model.llm)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device

    state = TrainState()
    if resume:
        state = load_checkpoint(accelerator, out_dir) or state
    metrics = MetricsLog(
        out_dir / METRICS_FILE, resume=resume, resume_step=state.step, write=accelerator.is_main_process
    )
    metrics.set(
        "setup",
        {
            "processes": accelerator.num_processes,
            "train_examples": dict(Counter(e["task"] for e in train + replay)),
            "val_examples": dict(Counter(e["task"] for e in val + replay_val)),
            "trainable_parameters": sum(p.numel() for p in trainable),
            **(setup or {}),
        },
    )
    rng = np.random.default_rng(cfg.seed + 1)
    val = [val[i] for i in sorted(rng.permutation(len(val))[: cfg.max_val_examples])]
    val += replay_val  # a few pairs: all of them, beside the task rows
    val_batches = [val[s : s + cfg.batch_size] for s in range(0, len(val), cfg.batch_size)]
    weights = balanced_weights(train, cfg.task_weights) if cfg.balance else None

    def collate(examples: list[dict[str, Any]], taught: bool = False):
        keys = ("input_ids", "labels", "connectome_values")
        batch = processor.pad([{k: e[k] for k in keys if k in e} for e in examples])
        if taught and teacher_weight and any("teacher" in e for e in examples):
            batch["answer_options"] = torch.as_tensor(
                [e.get("answer_options", (-1, -1)) for e in examples], dtype=torch.long
            )
            batch["teacher"] = torch.as_tensor([e.get("teacher", float("nan")) for e in examples])
        return {k: v.to(device) for k, v in batch.items()}

    def evaluate() -> dict[str, float]:
        inner = accelerator.unwrap_model(model)  # no DDP collective: processes evaluate different batches
        inner.eval()
        records = []
        with torch.no_grad():
            for part in shards.evaluation_share(val_batches):
                out = inner(**collate(part), loss_reduction="example")
                records += [(e["task"], x) for e, x in zip(part, out.example_losses.tolist(), strict=True)]
        inner.llm.train()
        losses: dict[str, list[float]] = {}
        for task, loss in shards.gather(records):
            losses.setdefault(task, []).append(loss)
        scores = {f"val_loss_{k}": float(np.mean(v)) for k, v in sorted(losses.items())}
        scores["val_loss"] = float(np.mean([x for v in losses.values() for x in v]))
        return scores

    running: dict[str, list[float]] = {}
    started, first_step = time.time(), state.step
    with progress_bar(
        total=cfg.steps, initial=state.step, desc=desc, disable=None if show is None else not show
    ) as bar:
        while state.step < cfg.steps:
            chosen = step_examples(train, replay, weights, cfg, replay_weight, state.step)
            answered = sum(has_answer(e) for e in chosen)
            part = shards.take(chosen)
            groups = (
                length_groups([len(e["input_ids"]) for e in part])
                if cfg.split_by_length and shards.world == 1
                else [list(range(len(part)))]
            )
            if len(groups) == 1:
                batch = collate(part, taught=True)
                if "teacher" in batch:
                    batch["teacher_weight"] = teacher_weight
                out = model(**batch, loss_reduction="example")
                loss = shards.loss(out, batch["labels"], answered, trainable)
                optimizer_step(accelerator, loss, trainable, optimizer, scheduler, cfg.grad_clip)
                losses = out.example_losses.detach().tolist()
            else:  # each group's summed example losses over the batch's answered count: the batch mean's gradient
                losses = [0.0] * len(part)
                for group in groups:
                    batch = collate([part[i] for i in group], taught=True)
                    if "teacher" in batch:
                        batch["teacher_weight"] = teacher_weight
                    out = model(**batch, loss_reduction="example")
                    answers = (batch["labels"][:, 1:] != IGNORE_INDEX).any(dim=1)
                    accelerator.backward(out.example_losses[answers].sum() / max(answered, 1))
                    for i, x in zip(group, out.example_losses.detach().tolist(), strict=True):
                        losses[i] = x
                apply_gradients(accelerator, trainable, optimizer, scheduler, cfg.grad_clip)
            state.step += 1
            bar.update(1)
            records = shards.gather(
                [(e["task"], x, has_answer(e)) for e, x in zip(part, losses, strict=True)]
            )
            for task, x, _ in records:
                running.setdefault(task, []).append(x)
            running.setdefault("all", []).append(float(np.mean([x for _, x, a in records if a] or [0.0])))
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                entry = {f"loss_{k}": float(np.mean(v)) for k, v in sorted(running.items())}
                rate = (state.step - first_step) / max(time.time() - started, 1e-9)
                metrics.log(
                    "train", step=state.step, lr=scheduler.get_last_lr()[0], steps_per_s=rate, **entry
                )
                bar.set_postfix(loss=f"{entry['loss_all']:.3f}")
                running = {}
            if val_batches and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
                scores = evaluate()
                metrics.log("val", step=state.step, **scores)
                if state.best_metric is None or scores["val_loss"] < state.best_metric:
                    state.best_metric, state.best_step = scores["val_loss"], state.step
            if state.step % cfg.save_every == 0 or state.step == cfg.steps:  # the last lets a run be extended
                save_checkpoint(accelerator, out_dir, state, keep=cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    metrics.set(
        "summary", {"steps": state.step, "best_val_loss": state.best_metric, "best_step": state.best_step}
    )
    return unwrapped, state


def step_examples(
    train: list[dict[str, Any]],
    replay: list[dict[str, Any]],
    weights: np.ndarray | None,
    cfg: LoopConfig,
    replay_weight: float,
    step: int,
) -> list[dict[str, Any]]:
    """The examples of step ``step``'s batch: task rows (balanced by ``weights``, or in permutations when
    None) then replay rows; a function of (seed, step) only, so a resumed run draws the same batches."""
    if not replay:
        n_tasks, picked = cfg.batch_size, []
    else:
        picked = replay_batch_rows(len(replay), replay_weight, cfg.batch_size, cfg.seed, step)
        n_tasks = cfg.batch_size - len(picked)
    if weights is not None:
        rows = balanced_batch_rows(weights, n_tasks, cfg.seed, step)
    elif not replay:
        rows = batch_rows(len(train), n_tasks, cfg.seed, step)
    else:  # the task rows' own stream: what the steps before consumed of it
        position = step * cfg.batch_size - replay_rows_before(replay_weight, cfg.batch_size, step)
        rows = permutation_rows(len(train), position, n_tasks, [cfg.seed])
    return [train[i] for i in rows] + [replay[i] for i in picked]


def replay_examples(
    processor: Any, pairs: list[tuple[str, str]], max_length: int | None = None
) -> list[dict[str, Any]]:
    """Training examples of text replay pairs, through the processor's normal path (chat template, loss on
    the answer only), as task "replay"; a pair longer than ``max_length`` is left out."""
    examples = []
    for prompt, response in pairs:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        example = processor.training_example(messages)
        if max_length and len(example["input_ids"]) > max_length:
            continue
        examples.append({**example, "task": REPLAY_TASK, "answer": ""})
    return examples


def split_replay(
    pairs: list[tuple[str, str]], seed: int, held_out: bool
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, val)`` pairs: a seeded tenth (at least one) held out for the validation loss when the
    instruction sets have validation rows, else all trained on."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    n_val = max(1, len(pairs) // 10) if held_out and len(pairs) > 1 else 0
    return pairs[n_val:], pairs[:n_val]


def check_replay_settings(weight: float, replay_file: str | None, answers: str = "written") -> None:
    """One clear error for a replay share outside [0, 1), an unknown answer source, or a replay file that
    would not be used."""
    if answers not in REPLAY_ANSWERS:
        raise FmriInputError(
            f"Unknown replay answers '{answers}'", fix=f"pass --replay-answers {' or '.join(REPLAY_ANSWERS)}"
        )
    if not 0.0 <= weight < 1.0 or not np.isfinite(weight):
        raise FmriInputError(
            f"--replay-weight {weight} is not a share of the batch in [0, 1)",
            fix="pass e.g. --replay-weight 0.25 (a quarter of each batch is text replay), or 0 for none",
        )
    if replay_file and weight == 0:
        raise FmriInputError(
            "--replay-file is given but --replay-weight is 0, so its pairs would never be trained on",
            file=replay_file,
            fix="pass --replay-weight above 0 (e.g. 0.25)",
        )


def own_replay_pairs(
    model: Any, pairs: list[tuple[str, str]], out_dir: Path, resume: bool
) -> list[tuple[str, str]]:
    """The replay prompts with the model's own answers before tuning (`fmrilm.train.replay.own_answers`);
    kept in ``OUT/replay_pairs.json`` so a resumed run trains on the same ones without generating again."""
    from fmrilm.train.common import write_json
    from fmrilm.train.replay import own_answers

    path = out_dir / REPLAY_PAIRS_FILE
    if resume and path.exists():
        return [(str(p), str(r)) for p, r in json.loads(path.read_text())]
    prompts = [prompt for prompt, _ in pairs]
    logger.info("Stage 3: generating the model's own answers to %d replay prompts", len(prompts))
    answers = own_answers(model, prompts)
    own = [(prompt, answer) for prompt, answer in zip(prompts, answers, strict=True) if answer]
    if is_main_process():
        write_json(path, own)
    return own


def load_trainable_model(path: str | Path, lora: dict[str, Any], new_adapters: bool, seed: int = 0):
    """The model to tune: its adapters are trained on, or (``new_adapters`` / none) fresh LoRA is added.

    With ``new_adapters`` the existing adapters are merged into the weights first, so their effect is kept.
    New adapters start from a ``seed``-ed draw, so a run (and its resumption) is reproducible.
    """
    from accelerate.utils import set_seed

    from fmrilm.model.adapters import LoraSettings
    from fmrilm.model.modeling import FmriLM

    set_seed(seed)
    model = FmriLM.from_pretrained(resolve_model_dir(path), is_trainable=True)
    if model.has_adapters and new_adapters:
        model.merge_adapters()
    if not model.has_adapters:
        model.add_adapters(LoraSettings(**lora))
    return model


def attach_teachers(processor: Any, examples: list[dict[str, Any]], probes: Sequence[Any]) -> dict[str, int]:
    """Give each single-answer training example of a probed two-answer task its teacher (in place): the
    options' first-token ids (``answer_options``) and the probe's probability of the second option on its
    scan (``teacher``), matched by the example's ``source`` (the index of its instruction set, 0 if absent) and
    ``scan_id``. Tasks whose options start with the same token are left out (a first-token margin cannot tell
    them apart); returns the examples taught per task."""
    from fmrilm.model.processing import IGNORE_INDEX
    from fmrilm.model.scoring import answer_ids

    taught: dict[str, int] = {}
    for probe in probes:
        if probe.teacher is None or len(probe.options) != 2:
            continue
        firsts = [answer_ids(processor, o)[0] for o in probe.options]
        if firsts[0] == firsts[1]:
            logger.info("probe teacher: %s left out (its options start with the same token)", probe.name)
            continue
        count = 0
        for e in examples:
            key = (int(e.get("source", 0)), str(e.get("scan_id")))
            if e.get("task") != probe.name or key not in probe.teacher:
                continue
            labels = e["labels"]
            learned = [t for t, lab in zip(e["input_ids"], labels, strict=True) if lab != IGNORE_INDEX]
            answers = sum(  # runs of learned labels: one per assistant turn
                lab != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)
                for i, lab in enumerate(labels)
            )
            if answers != 1 or not learned or learned[0] not in firsts:
                continue  # a chat's second question, or an answer that is not one of the options
            e["answer_options"] = tuple(firsts)
            e["teacher"] = probe.teacher[key]
            count += 1
        taught[probe.name] = count
    return taught


def train_instruct(cfg: InstructConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Run Stage 3 and write the tuned model to ``OUT/model``; returns that folder."""
    with torch_threads(cfg.threads):
        return _train_instruct(cfg, resume, overwrite)


def _train_instruct(cfg: InstructConfig, resume: bool, overwrite: bool = False) -> Path:
    from fmrilm.train.common import latest_checkpoint, write_json
    from fmrilm.train.replay import load_replay_pairs

    from fmrilm.model.scoring import store_tasks

    check_replay_settings(cfg.replay_weight, cfg.replay_file, cfg.replay_answers)
    if cfg.probe_teacher > 0 and not cfg.probe_init:
        raise FmriInputError(
            f"--probe-teacher {cfg.probe_teacher} distils the warm start's probes, but --probe-init is off",
            fix="add --probe-init, or leave out --probe-teacher",
        )
    pairs = load_replay_pairs(cfg.replay_file) if cfg.replay_weight > 0 else []
    out_dir = Path(cfg.out)
    sources = load_sources(cfg.instructions, cfg.cohorts or None)
    # a misspelt task fails here, before anything is written, the model loads or the scans are encoded
    # (fit checks it again against the tasks that have training rows)
    check_task_weights(cfg.task_weights, {str(t) for source in sources for t in source.dataset["task"]})
    prepare_out_dir(out_dir, resume, cfg, overwrite=overwrite)
    model = load_trainable_model(cfg.model, cfg.lora, cfg.new_adapters, cfg.seed)
    if cfg.max_windows is not None:
        model.processor.config.max_windows = int(cfg.max_windows)
    if cfg.connectome_shown is not None:
        model.processor.config.connectome_shown = int(cfg.connectome_shown)
    if cfg.system_prompt is not None:
        model.processor.config.system_prompt = str(cfg.system_prompt)
    if cfg.scan_facts is not None:
        model.processor.config.scan_facts = bool(cfg.scan_facts)
    if model.processor.config.scan_facts:
        store_fact_references(model.processor.config, sources)
    processor = model.processor

    train, val, info, probe_sources = [], [], {}, []
    for source in sources:
        ds = source.dataset
        parts = ds["split"] if "split" in ds.column_names else [None] * len(ds)
        keep = [i for i, p in enumerate(parts) if p != TEST_PART]
        scan_ids = {str(s) for s in ds.select(keep)["scan_id"]}
        windows = processor.config.max_windows != 0 or asks_for_windows(ds.select(keep))
        codes = encode_scans(
            source.cohort,
            processor.fmri_tokenizer,
            scan_ids,
            progress=bool(cfg.progress),
            windows=windows,
            facts=processor.scan_facts if processor.config.scan_facts else None,
        )
        train_rows = ds.select([i for i in keep if parts[i] != VAL_PART])
        val_rows = ds.select([i for i in keep if parts[i] == VAL_PART])
        probe_sources.append((train_rows, codes))
        tr, skipped_tr = build_examples(processor, train_rows, codes, cfg.max_length)
        for e in tr:  # which probe source it came from: scan ids are unique within a cohort only
            e["source"] = len(probe_sources) - 1
        va, skipped_va = build_examples(processor, val_rows, codes, cfg.max_length)
        train += tr
        val += va
        info[str(source.directory)] = {
            "cohort": source.cohort.name,
            "rows": len(ds),
            "test_rows_left_out": len(ds) - len(keep),
            "train_examples": dict(Counter(e["task"] for e in tr)),
            "val_examples": dict(Counter(e["task"] for e in va)),
            "too_long": dict(skipped_tr + skipped_va),
        }
        if skipped_tr or skipped_va:
            logger.warning(
                "%s: %d rows longer than --max-length %d were left out; lower --max-windows",
                source.directory,
                sum((skipped_tr + skipped_va).values()),
                cfg.max_length,
            )
    if pairs and cfg.replay_answers == "own":
        pairs = own_replay_pairs(model, pairs, out_dir, resume)
    replay_train, replay_val = split_replay(pairs, cfg.seed, held_out=bool(val))
    replay = replay_examples(processor, replay_train, cfg.max_length)
    replay_held = replay_examples(processor, replay_val, cfg.max_length)
    replay_info = {
        "weight": cfg.replay_weight,
        "file": cfg.replay_file,
        "answers": cfg.replay_answers,
        "train_examples": len(replay),
        "val_examples": len(replay_held),
        "too_long": len(pairs) - len(replay) - len(replay_held),
    }
    cards = task_cards(sources)
    if is_main_process():
        write_json(out_dir / TRAIN_CONFIG, cfg.to_dict())
        write_json(
            out_dir / DATA_FILE,
            {"sets": info, REPLAY_TASK: replay_info, "tasks": [c.to_dict() for c in cards]},
        )
    logger.info(
        "Stage 3: %d training and %d validation examples, %d text replay pairs (%.0f%% of each batch)",
        len(train), len(val), len(replay), 100 * cfg.replay_weight,
    )  # fmt: skip

    probe_info = None
    resumed = resume and latest_checkpoint(out_dir) is not None
    if cfg.probe_init and not resumed:  # a checkpoint has its own weights
        from fmrilm.train.common import precision_autocast
        from fmrilm.train.probe_init import warm_start_summary

        with precision_autocast(cfg.mixed_precision, model.device):  # measured as it will train
            probes = warm_start_summary(
                model,
                probe_sources,
                cards,
                seed=cfg.seed,
                rounds=cfg.probe_rounds,
                teachers=cfg.probe_teacher > 0,
            )
        probe_info = [p.summary() for p in probes]
    if cfg.probe_init and cfg.probe_teacher > 0:
        if resumed:  # the same teachers as the first run (fitted from the same rows), the model left alone
            from fmrilm.train.probe_init import probe_teachers

            probes = probe_teachers(model, probe_sources, cards, seed=cfg.seed)
        taught = attach_teachers(processor, train, probes)
        logger.info("probe teachers: %s training rows taught per task", taught)
        if probe_info is not None:
            probe_info.append({"teacher_weight": cfg.probe_teacher, "taught_examples": taught})

    model, state = fit(
        model, train, val, cfg, out_dir, resume=resume, desc="instruct",
        setup={"sets": info, REPLAY_TASK: replay_info, "probe_init": probe_info},
        replay=replay, replay_val=replay_held, replay_weight=cfg.replay_weight,
        teacher_weight=cfg.probe_teacher if cfg.probe_init else 0.0,
    )  # fmt: skip
    store_tasks(model, cards)
    final = out_dir / MODEL_DIR
    if is_main_process():
        model.save_pretrained(final)
    return final


def is_main_process() -> bool:
    from fmrilm.train.common import process_state

    return process_state().is_main_process


# ------------------------------------------------------------------------------------------------------- CLI
def add_tuning_arguments(p: argparse.ArgumentParser, defaults: type[LoopConfig], lora_note: str = "") -> None:
    """Flags of a `LoopConfig` (`fmrilm train instruct`, `fmrilm finetune`): loop, LoRA, longest example."""
    add_lora_arguments(p, lora_note)
    p.add_argument(
        "--max-length", type=positive_int, default=defaults.max_length, help="longest example in tokens"
    )
    p.add_argument(
        "--soft-lr-scale",
        type=nonnegative_float,
        default=defaults.soft_lr_scale,
        help="learning-rate multiplier of the soft brain-token projection (0 freezes it; default %(default)s)",
    )
    p.add_argument(
        "--no-balance",
        action="store_true",
        help="draw batches uniformly over examples instead of balancing tasks and their answers",
    )
    p.add_argument(
        "--task-weights", type=parse_task_weights, default=None, metavar="TASK=W,...",
        help="each task's share of the balanced batches relative to the others (unnamed tasks: 1), "
        "e.g. diagnosis=2",
    )  # fmt: skip
    add_loop_arguments(p, defaults)


def tuning_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `LoopConfig` keywords parsed by `add_tuning_arguments`."""
    return {
        **loop_kwargs(args),
        "lora": lora_from_args(args),
        "max_length": args.max_length,
        "soft_lr_scale": args.soft_lr_scale,
        "balance": not args.no_balance,
        "task_weights": args.task_weights,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", required=True, metavar="DIR", help="Stage-2 output (or any saved fmrilm model)")
    p.add_argument(
        "--instructions", action="append", required=True, metavar="DIR", help="instruction set (repeatable)"
    )
    p.add_argument(
        "--cohort", action="append", default=[], metavar="DIR",
        help="cohort of each instruction set, in order (default: the one recorded in the set)",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (model/, metrics, checkpoints)")
    p.add_argument(
        "--new-adapters", action="store_true", help="merge the model's adapters and train fresh LoRA on top"
    )
    p.add_argument(
        "--max-windows", type=nonnegative_int, default=None, help="windows of a whole scan shown to the model"
    )
    p.add_argument(
        "--connectome-shown", type=positive_int, default=None, metavar="K",
        help="connectome tokens a whole scan shows (default: all; with the scan summary, 1 keeps the whole "
        "connectome on the start marker in a prompt M - 1 tokens shorter)",
    )  # fmt: skip
    p.add_argument(
        "--system-prompt", default=None, metavar="TEXT",
        help="system turn of every prompt, saved with the model so chat uses it too (default: the model's; "
        "'' for an empty turn: SmolLM2's default costs 17 more tokens per example)",
    )  # fmt: skip
    p.add_argument(
        "--scan-facts", action=argparse.BooleanOptionalAction, default=None,
        help="end every whole-scan part with its facts line (the most elevated network-pair coupling, computed "
        "by fmrilm.descriptors against each instruction set's corpus reference), saved with the model so chat "
        "and eval state it too (default: the model's setting)",
    )  # fmt: skip
    p.add_argument(
        "--replay-weight", type=float, default=InstructConfig.replay_weight, metavar="W",
        help="share of every batch given to plain text -> text chat pairs, so the LLM stays a chat model "
        "(0: none; the phenotype tasks keep their balance in the rest; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--replay-file", default=None, metavar="JSONL",
        help="extra replay pairs on top of the built-in ones (JSON lines with 'prompt' and 'response')",
    )  # fmt: skip
    p.add_argument(
        "--replay-answers", choices=REPLAY_ANSWERS, default=InstructConfig.replay_answers,
        help="train replay prompts on their written answers, or on the model's own answers before tuning "
        "(greedy, adapters off: holds the chat where it was; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--probe-init", action="store_true",
        help="before tuning, warm-start the scan summary from a logistic regression per two-answer task and "
        "a ridge regression per binned regression task such as age (training scans only), so the LLM starts "
        "from a linear reading of the scan (LP-FT)",
    )  # fmt: skip
    p.add_argument(
        "--probe-teacher", type=nonnegative_float, default=InstructConfig.probe_teacher, metavar="W",
        help="with --probe-init: also distil each two-answer probe into the LLM while tuning, weight W on "
        "the cross-entropy between the answer's first-token margin and the probe's Platt-scaled probability "
        "on each training scan (0: none; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--probe-rounds", type=nonnegative_int, default=InstructConfig.probe_rounds, metavar="N",
        help="with --probe-init: calibration rounds of the warm start's step on training prompts (0: the "
        "first-order step alone; default %(default)s)",
    )  # fmt: skip
    add_tuning_arguments(
        p,
        InstructConfig,
        lora_note="; new adapters only: a model's own adapters keep their saved settings",
    )


def config_from_args(args: argparse.Namespace) -> InstructConfig:
    return InstructConfig(
        model=str(args.model),
        instructions=[str(d) for d in args.instructions],
        out=str(args.out),
        cohorts=[str(c) for c in args.cohort],
        new_adapters=bool(args.new_adapters),
        max_windows=args.max_windows,
        connectome_shown=args.connectome_shown,
        system_prompt=args.system_prompt,
        replay_weight=float(args.replay_weight),
        replay_file=None if args.replay_file is None else str(args.replay_file),
        replay_answers=str(args.replay_answers),
        probe_init=bool(args.probe_init),
        probe_teacher=float(args.probe_teacher),
        probe_rounds=int(args.probe_rounds),
        scan_facts=args.scan_facts,
        **tuning_kwargs(args),
    )


def run(args: argparse.Namespace) -> int:
    from fmrilm.train.common import setup_logging

    setup_logging()
    out = train_instruct(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # the main process reports the run (and alone writes its metrics)
        return 0
    summary = json.loads((Path(args.out) / METRICS_FILE).read_text()).get("summary", {})
    best = summary.get("best_val_loss")
    held_out = "no validation rows in the sets" if best is None else f"best held-out loss {best:.4f}"
    print(f"instruction-tuned model written to {out} ({held_out})")
    return 0
