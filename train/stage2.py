"""Stage 2: align the LLM to brain tokens (`fmrilm train align`).

LoRA adapters and the brain-token rows of a base causal LM are trained on a mixture of three tasks:

- **describe** (fMRI -> text): the brain tokens of a window (or of a whole scan) -> its descriptor text from a
  `fmrilm corpus build` corpus;
- **forecast** (fMRI -> fMRI): the brain tokens of up to ``context_windows`` windows -> those of the next window;
- **replay** (text -> text): ordinary chat pairs (built in, see `fmrilm.train.replay`), so language is not lost.

``weights`` set the share of each task in a batch; each example's loss is its mean token loss over the answer
only, so a long descriptor does not outweigh a 34-token forecast. Scans are encoded once by the Stage-1
tokenizer (cached in the output folder). A seeded share of SUBJECTS is held out for validation
(``split.json``). The batch of step ``s`` is a function of (seed, s) only, so a resumed run sees the batches the
uninterrupted run would have seen; checkpoints hold only the trainable tensors (adapters), not the frozen LLM.

Output folder: ``model/`` (the `FmriLM` one-folder layout: ``FmriLM.from_pretrained(OUT/model)``),
``metrics.json``, ``train_config.json``, ``split.json``, ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterator
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

from fmrilm.errors import FmriInputError
from fmrilm.model.processing import valid_windows
from fmrilm.safety import nonnegative_float, nonnegative_int, positive_int, probability

logger = logging.getLogger("fmrilm.train.stage2")

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
TASKS = ("describe", "forecast", "replay")

#: Paraphrases of the describe instruction; the first is the one `FmriLM.describe` uses.
DESCRIBE_PROMPTS = (
    "Describe this resting-state fMRI scan.",
    "What does this brain activity show?",
    "Summarize the functional connectivity in this recording.",
    "Give a description of this fMRI segment.",
    "Describe the brain networks in this scan.",
)


@dataclass(kw_only=True)
class Stage2Config(LoopSettings):
    """Everything a Stage 2 run depends on; saved as ``train_config.json`` and checked on resume.

    The loop settings and the resume rule come from `LoopSettings`; Stage 2 takes fewer, smaller steps.
    """

    cohorts: list[str]
    tokenizer: str
    out: str
    corpus: list[str] = field(default_factory=list)
    base: str | None = None
    init_from: str | None = None
    lora: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, float] = field(
        default_factory=lambda: {"describe": 1.0, "forecast": 0.5, "replay": 0.25}
    )
    context_windows: int = 2
    max_windows: int = 4
    max_length: int = 1024
    replay_file: str | None = None
    text_columns: list[str] | None = None
    val_fraction: float = 0.1
    max_val_examples: int = 32
    dtype: str | None = None
    quantization: str | None = None
    optim_8bit: bool = False
    soft_lr_scale: float = 10.0  # learning-rate multiplier of the soft-token projection (see Stage 3)
    mixed_precision: str | None = None
    gradient_checkpointing: bool | None = None  # None: on when batch_size x max_length is large (common.py)
    # Stage 2's loop defaults
    steps: int = 300
    batch_size: int = 4


# ------------------------------------------------------------------------------------------------------ data
@dataclass
class ScanCodes:
    """Brain codes of every scan of the training cohorts (one row per scan)."""

    scan_ids: list[str]
    subjects: list[str]
    codes: list[np.ndarray]  # (W, K) each
    valid: list[np.ndarray]  # (W,) bool each: window mostly real samples
    connectome: list[Any] | None = None  # ConnectomeTokens each, when the tokenizer has connectome tokens


def encode_cohorts(
    cohorts: list[Any], fmri_tokenizer: Any, cache: Path | None, progress: bool = False
) -> ScanCodes:
    """Encode every scan once with the Stage-1 tokenizer; reuse ``cache`` (an .npz, no pickles) when it matches."""
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            lengths = data["lengths"]
            flat, flat_valid = data["codes"], data["valid"]
            splits = np.cumsum(lengths)[:-1]
            connectome = None
            if "fc_codes" in data.files:
                from fmrilm.tokenizer.connectome import ConnectomeTokens

                connectome = [
                    ConnectomeTokens(c, v) for c, v in zip(data["fc_codes"], data["fc_values"], strict=True)
                ]
            return ScanCodes(
                [str(s) for s in data["scan_ids"]],
                [str(s) for s in data["subjects"]],
                list(np.split(flat, splits)),
                list(np.split(flat_valid, splits)),
                connectome,
            )
    config = fmri_tokenizer.config
    fc_tokenizer = getattr(fmri_tokenizer, "connectome", None)
    out = ScanCodes([], [], [], [], [] if fc_tokenizer is not None else None)
    total = sum(len(c) for c in cohorts)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="encoding scans", unit="scan")

    def window_encoded(cohort: Any) -> Iterator[Any]:
        """Each scan of ``cohort`` after its window codes are stored, for the connectome tokens to follow."""
        for i in range(len(cohort)):
            scan = cohort.scan(i)
            windows, mask = fmri_tokenizer.windows(scan)
            codes = (
                fmri_tokenizer.encode(windows, coords=scan.atlas, mask=mask).cpu().numpy().astype(np.int64)
            )
            out.scan_ids.append(str(scan.scan_id))
            out.subjects.append(str(scan.subject_id))
            out.codes.append(codes)
            out.valid.append(valid_windows(mask, config.window_length, config.patch_length))
            if bar is not None:
                bar.update(1)
            yield scan

    for cohort in cohorts:
        if out.connectome is None:
            for _ in window_encoded(cohort):
                pass
        else:  # batched: the same tokens as scan by scan, a third of the time (eval/bench_encode.py)
            out.connectome.extend(fc_tokenizer.encode_many(window_encoded(cohort)))
    if bar is not None:
        bar.close()
    if cache is not None:
        tmp = cache.with_name(f".{cache.name}.tmp.npz")
        np.savez(
            tmp,
            scan_ids=np.asarray(out.scan_ids),
            subjects=np.asarray(out.subjects),
            lengths=np.asarray([len(c) for c in out.codes]),
            codes=np.concatenate(out.codes),
            valid=np.concatenate(out.valid),
            **(
                {
                    "fc_codes": np.stack([t.codes for t in out.connectome]),
                    "fc_values": np.stack([t.values for t in out.connectome]),
                }
                if out.connectome
                else {}
            ),
        )
        os.replace(tmp, cache)
    return out


def build_items(
    data: ScanCodes, texts: dict[tuple[str, int], str], rows: np.ndarray
) -> dict[str, list[tuple]]:
    """Describe and forecast items of the scans ``rows``: ``(scan_row, window, text)`` and ``(scan_row, window)``."""
    describe: list[tuple] = []
    forecast: list[tuple] = []
    for r in rows.tolist():
        sid, valid = data.scan_ids[r], data.valid[r]
        for w in np.flatnonzero(valid).tolist():
            text = texts.get((sid, w))
            if text:
                describe.append((r, w, text))
            if w >= 1 and valid[w - 1]:
                forecast.append((r, w))
        whole = texts.get((sid, -1))
        if whole and valid.any():
            describe.append((r, -1, whole))
    return {"describe": describe, "forecast": forecast}


def conversation(task: str, item: tuple, data: ScanCodes | None, cfg: Stage2Config, rng: np.random.Generator):
    """The chat messages of one training example."""
    from fmrilm.model.processing import FORECAST_PROMPT

    if task == "replay":
        prompt, response = item
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if task == "describe":
        r, w, text = item
        codes = data.codes[r]
        if w >= 0:
            fmri = codes[w : w + 1]
        else:
            fmri = codes[np.flatnonzero(data.valid[r])][-cfg.max_windows :]
        prompt = DESCRIBE_PROMPTS[int(rng.integers(len(DESCRIBE_PROMPTS)))]
        part: dict[str, Any] = {"type": "fmri", "codes": fmri}
        if w < 0 and data.connectome is not None:  # the whole scan: its connectome tokens too
            part["connectome"] = data.connectome[r]
        user = [part, {"type": "text", "text": prompt}]
        return [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
    r, w = item
    codes, valid = data.codes[r], data.valid[r]
    start = w
    while start > 0 and valid[start - 1] and w - start < cfg.context_windows:
        start -= 1
    user = [{"type": "fmri", "codes": codes[start:w]}, {"type": "text", "text": FORECAST_PROMPT}]
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "fmri", "codes": codes[w : w + 1]}]},
    ]


def make_example(
    processor: Any, task: str, item: tuple, data: ScanCodes, cfg: Stage2Config, rng
) -> dict[str, Any]:
    example = processor.training_example(conversation(task, item, data, cfg, rng))
    if len(example["input_ids"]) > cfg.max_length:
        example = {k: v[: cfg.max_length] for k, v in example.items()}
    return example


def corpus_texts(corpus_dir: str | os.PathLike, columns: list[str]) -> dict[tuple[str, int], str]:
    """``{(scan_id, window): text}`` from chosen text columns of a corpus (e.g. one descriptor family)."""
    import datasets

    path = Path(corpus_dir)
    source = path / "dataset" if (path / "dataset").is_dir() else path
    try:
        dataset = datasets.load_from_disk(str(source))
    except Exception as exc:  # noqa: BLE001 - reported as one sentence
        raise FmriInputError(
            f"Cannot read the corpus ({exc})", file=path, fix="rebuild it with `fmrilm corpus build`"
        ) from exc
    missing = [c for c in [*columns, "scan_id", "window"] if c not in dataset.column_names]
    if missing:
        raise FmriInputError(
            f"The corpus has no column {', '.join(missing)}",
            file=path,
            fix=f"choose --text-columns among {', '.join(c for c in dataset.column_names if c.startswith('text'))}",
        )
    table = dataset.select_columns(["scan_id", "window", *columns]).to_pandas()
    out: dict[tuple[str, int], str] = {}
    for row in table.itertuples(index=False):
        text = " ".join(str(getattr(row, c)).strip() for c in columns if getattr(row, c))
        if text.strip():
            out[(str(row.scan_id), int(row.window))] = text.strip()
    return out


def reference_from_corpus(corpus_dirs: list[str]) -> dict[str, Any] | None:
    """Descriptor reference statistics saved beside a corpus (``reference*.json``), to store with the model."""
    for corpus in corpus_dirs:
        for path in sorted(Path(corpus).glob("reference*.json")):
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                logger.warning("ignoring unreadable reference statistics %s", path)
    return None


# -------------------------------------------------------------------------------------------------- training
def _trainable_only_checkpoints(accelerator: Any) -> None:
    """Checkpoints hold the trainable tensors only: the frozen LLM is rebuilt from its source on resume."""
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return  # those engines save (sharded) model states their own way; checkpoints hold the whole model

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
            # under DDP the state dict is the wrapper's ("module." before every name, which matched no
            # trainable name, so checkpoints were empty): saved under the model's own names, as with one process
            plain = {_unwrapped_name(k): v for k, v in weights[i].items()}
            weights[i] = {k: v for k, v in plain.items() if k in names}

    def load_hook(models, input_dir):
        for i, model in enumerate(models):
            suffix = "" if i == 0 else f"_{i}"
            state = load_file(str(Path(input_dir) / f"model{suffix}.safetensors"))
            target = accelerator.unwrap_model(model)
            missing = {n for n, p in target.named_parameters() if p.requires_grad} - set(state)
            result = target.load_state_dict(state, strict=False)
            if missing or result.unexpected_keys:
                raise FmriInputError(
                    "The checkpoint does not match this model's trainable tensors",
                    file=input_dir,
                    fix="resume with the same --base, --tokenizer and LoRA settings",
                )
        models.clear()  # loaded here; accelerate must not load them again (strictly, as full models)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _unwrapped_name(key: str) -> str:
    """A state-dict key without the DDP wrapper's prefix."""
    return key[len("module.") :] if key.startswith("module.") else key


def _dtype(name: str | None):
    import torch

    if name in (None, "", "auto"):
        return None
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise FmriInputError(f"Unknown dtype '{name}'", fix="use float32, bfloat16 or float16") from None


def build_model(cfg: Stage2Config, fmri_tokenizer: Any, atlas: Any, reference: dict | None):
    """The model to train: from ``init_from`` (adapters kept and trained on) or from the base LM."""
    from fmrilm.model.adapters import LoraSettings
    from fmrilm.model.modeling import FmriLM

    settings = LoraSettings(**cfg.lora)
    if cfg.init_from:
        model = FmriLM.from_pretrained(
            cfg.init_from, is_trainable=True, dtype=_dtype(cfg.dtype), quantization=cfg.quantization
        )
        if not model.has_adapters:
            model.add_adapters(settings)
    else:
        model = FmriLM.from_base(
            cfg.base,
            fmri_tokenizer,
            dtype=_dtype(cfg.dtype),
            quantization=cfg.quantization,
            atlas=atlas,
            descriptor_reference=reference,
            seed=cfg.seed,
            lora=settings,
        )
    model.processor.config.max_windows = cfg.max_windows
    model.processor.config.forecast_context_windows = cfg.context_windows
    if reference is not None and model.processor.config.descriptor_reference is None:
        model.processor.config.descriptor_reference = reference
    return model


def train_align(cfg: Stage2Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Run Stage 2 and write the aligned model to ``OUT/model``; returns that folder."""
    with torch_threads(cfg.threads):
        return _train_align(cfg, resume, overwrite)


def _train_align(cfg: Stage2Config, resume: bool, overwrite: bool = False) -> Path:
    import torch
    from fmrilm.train.common import (
        BatchShards,
        MetricsLog,
        TrainState,
        has_answer,
        load_checkpoint,
        lr_multiplier,
        make_accelerator,
        optimizer_step,
        progress_bar,
        save_checkpoint,
        subject_split,
        write_json,
    )
    from fmrilm.train.replay import load_replay_pairs
    from fmrilm.train.stage1 import load_window_texts

    from fmrilm.cohort import load_cohort
    from fmrilm.model.quantization import make_optimizer
    from fmrilm.tokenizer import FmriTokenizerModel

    if not cfg.cohorts:
        raise FmriInputError("No cohort to train on", fix="pass at least one --cohort DIR")
    weights = {t: float(cfg.weights.get(t, 0.0)) for t in TASKS}
    if any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
        raise FmriInputError(
            "Task weights must be non-negative and not all zero", fix="set --weight-* values >= 0"
        )
    if weights["describe"] > 0 and not cfg.corpus:
        raise FmriInputError(
            "The describe task needs descriptor texts",
            fix="pass --corpus DIR (fmrilm corpus build), or --weight-describe 0",
        )
    out_dir = Path(cfg.out)
    prepare_out_dir(out_dir, resume, cfg, overwrite=overwrite)
    accelerator = make_accelerator(out_dir, seed=cfg.seed, mixed_precision=cfg.mixed_precision)
    _trainable_only_checkpoints(accelerator)
    shards = BatchShards(accelerator, cfg.batch_size)  # under `accelerate launch`: each process's share
    show = accelerator.is_main_process and (cfg.progress if cfg.progress is not None else None)

    # ---- data
    tokenizer_dir = Path(cfg.tokenizer)
    if not (tokenizer_dir / "config.json").exists():
        raise FmriInputError(
            "No trained fMRI tokenizer here",
            file=tokenizer_dir,
            fix="pass the --out folder of `fmrilm train tokenizer`",
        )
    fmri_tokenizer = FmriTokenizerModel.from_pretrained(tokenizer_dir).eval()
    cohorts = [load_cohort(c) for c in cfg.cohorts]
    tag = hashlib.sha1(
        json.dumps(
            [str(tokenizer_dir.resolve()), (tokenizer_dir / "model.safetensors").stat().st_mtime_ns]
            + [str(Path(c).resolve()) for c in cfg.cohorts]
        ).encode()
    ).hexdigest()[:12]
    with accelerator.main_process_first():  # the main process writes the codes cache, the others read it
        data = encode_cohorts(cohorts, fmri_tokenizer, out_dir / f"codes-{tag}.npz", progress=bool(show))
    texts: dict[tuple[str, int], str] = {}
    for corpus in cfg.corpus:
        texts.update(
            load_window_texts(corpus) if not cfg.text_columns else corpus_texts(corpus, cfg.text_columns)
        )
    is_val = subject_split(data.subjects, cfg.val_fraction, seed=cfg.seed)
    train_items = build_items(data, texts, np.flatnonzero(~is_val))
    val_items = build_items(data, texts, np.flatnonzero(is_val))
    replay = load_replay_pairs(cfg.replay_file)
    rng_split = np.random.default_rng(cfg.seed)
    replay = [replay[i] for i in rng_split.permutation(len(replay))]
    n_val_replay = max(1, len(replay) // 10) if cfg.val_fraction > 0 else 0
    train_items["replay"], val_items["replay"] = replay[n_val_replay:], replay[:n_val_replay]
    if weights["describe"] > 0 and not train_items["describe"]:
        raise FmriInputError(
            "No training window has a descriptor text in the corpus (scan ids do not match)",
            file=cfg.corpus[0],
            fix="build the corpus from the same cohort with `fmrilm corpus build COHORT --out DIR`",
        )
    active = [t for t in TASKS if weights[t] > 0 and train_items[t]]
    probs = np.asarray([weights[t] for t in active]) / sum(weights[t] for t in active)

    # ---- model
    model = build_model(cfg, fmri_tokenizer, cohorts[0].atlas, reference_from_corpus(cfg.corpus))
    processor = model.processor
    model.train()
    if checkpointing_wanted(cfg.gradient_checkpointing, cfg.batch_size * cfg.max_length):  # cut at max_length
        enable_gradient_checkpointing(model.llm)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(
        param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, eight_bit=cfg.optim_8bit
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device

    state = TrainState()
    if resume:
        loaded = load_checkpoint(accelerator, out_dir)
        if loaded is None:
            logger.info("no checkpoint in %s: starting from step 0", out_dir)
        else:
            state = loaded
    split_info = {
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "val_subjects": sorted(set(np.asarray(data.subjects)[is_val].tolist())),
        "train_examples": {t: len(train_items[t]) for t in TASKS},
        "val_examples": {t: len(val_items[t]) for t in TASKS},
    }
    if accelerator.is_main_process:
        write_json(out_dir / TRAIN_CONFIG, cfg.to_dict())
        write_json(out_dir / SPLIT_FILE, split_info)
    metrics = MetricsLog(
        out_dir / METRICS_FILE, resume=resume, resume_step=state.step, write=accelerator.is_main_process
    )
    metrics.set(
        "setup",
        {
            "processes": accelerator.num_processes,
            "tasks": {t: float(p) for t, p in zip(active, probs, strict=True)},
            "trainable_parameters": sum(p.numel() for p in trainable),
            "parameters": sum(p.numel() for p in accelerator.unwrap_model(model).llm.parameters()),
            **split_info,
        },
    )
    logger.info(
        "Stage 2: %s examples, task shares %s, %d trainable parameters",
        split_info["train_examples"],
        dict(zip(active, np.round(probs, 3).tolist(), strict=True)),
        sum(p.numel() for p in trainable),
    )

    def batch_for(step: int):
        """This process's share of step ``step``'s global batch (drawn whole by every process, so the draws
        do not depend on the number of processes), its task names and the global count of examples with
        a learned token."""
        rng = np.random.default_rng([cfg.seed, step])
        tasks = rng.choice(len(active), size=cfg.batch_size, p=probs)
        examples, names = [], []
        for t in tasks:
            task = active[int(t)]
            item = train_items[task][int(rng.integers(len(train_items[task])))]
            examples.append(make_example(processor, task, item, data, cfg, rng))
            names.append(task)
        answered = sum(has_answer(e) for e in examples)
        examples, names = shards.take(examples), shards.take(names)
        return processor.pad(examples), names, [has_answer(e) for e in examples], answered

    val_batches = _validation_batches(processor, val_items, data, cfg)

    def evaluate() -> dict[str, float]:
        inner = accelerator.unwrap_model(model)  # no DDP collective: processes evaluate different batches
        inner.eval()
        records = []
        with torch.no_grad():
            for batch, names in shards.evaluation_share(val_batches):
                out = inner(**{k: v.to(device) for k, v in batch.items()}, loss_reduction="example")
                records += list(zip(names, out.example_losses.tolist(), strict=True))
        inner.train()
        sums: dict[str, list[float]] = {}
        for name, loss in shards.gather(records):
            sums.setdefault(name, []).append(loss)
        return {f"val_loss_{k}": float(np.mean(sums[k])) for k in TASKS if k in sums}

    running: dict[str, list[float]] = {}
    with progress_bar(
        total=cfg.steps, initial=state.step, desc="align", disable=None if show is None else not show
    ) as bar:
        while state.step < cfg.steps:
            batch, names, answers, answered = batch_for(state.step)
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch, loss_reduction="example")
            loss = shards.loss(out, batch["labels"], answered, trainable)
            optimizer_step(accelerator, loss, trainable, optimizer, scheduler, cfg.grad_clip)
            state.step += 1
            bar.update(1)
            losses = out.example_losses.detach().tolist()
            records = shards.gather(list(zip(names, losses, answers, strict=True)))
            for name, x, _ in records:
                running.setdefault(name, []).append(x)
            running.setdefault("all", []).append(float(np.mean([x for _, x, a in records if a] or [0.0])))
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                entry = {f"loss_{k}": float(np.mean(v)) for k, v in running.items()}
                metrics.log("train", step=state.step, lr=scheduler.get_last_lr()[0], **entry)
                bar.set_postfix(loss=f"{entry['loss_all']:.3f}")
                running = {}
            if val_batches and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
                scores = evaluate()
                metrics.log("val", step=state.step, **scores)
                total = float(np.mean(list(scores.values())))
                if state.best_metric is None or total < state.best_metric:
                    state.best_metric, state.best_step = total, state.step
            if (
                state.step % cfg.save_every == 0 or state.step == cfg.steps
            ):  # the last one lets a run be extended
                save_checkpoint(accelerator, out_dir, state, keep=cfg.keep_checkpoints)

    final = out_dir / MODEL_DIR
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        unwrapped.save_pretrained(final)
        metrics.set(
            "summary",
            {
                "steps": state.step,
                "best_val_loss": state.best_metric,
                "best_step": state.best_step,
                "model": str(final),
            },
        )
    accelerator.wait_for_everyone()
    return final


def _validation_batches(
    processor: Any, val_items: dict[str, list], data: ScanCodes, cfg: Stage2Config
) -> list:
    """Fixed held-out batches (same examples at every evaluation): up to ``max_val_examples`` per task."""
    rng = np.random.default_rng(cfg.seed + 1)
    batches = []
    for task in TASKS:
        if cfg.weights.get(task, 0) <= 0 or not val_items[task]:
            continue
        items = val_items[task]
        chosen = rng.permutation(len(items))[: cfg.max_val_examples]
        examples = [make_example(processor, task, items[i], data, cfg, rng) for i in chosen]
        for s in range(0, len(examples), cfg.batch_size):
            part = examples[s : s + cfg.batch_size]
            batches.append((processor.pad(part), [task] * len(part)))
    return batches


# ------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument(
        "--cohort", action="append", required=True, metavar="DIR", help="cohort folder (repeatable)"
    )
    p.add_argument(
        "--corpus", action="append", default=[], metavar="DIR", help="descriptor corpus (repeatable)"
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="Stage-1 output folder (fMRI tokenizer)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (model/, metrics, checkpoints)")
    p.add_argument(
        "--base", default=None, help="base LLM: hub id, folder or .gguf (default: SmolLM2-135M-Instruct)"
    )
    p.add_argument("--init-from", default=None, metavar="DIR", help="continue from a saved fmrilm model")
    add_lora_arguments(p)
    p.add_argument(
        "--weight-describe",
        type=nonnegative_float,
        default=1.0,
        help="share of fMRI -> descriptor text examples",
    )
    p.add_argument(
        "--weight-forecast", type=nonnegative_float, default=0.5, help="share of fMRI -> next-window examples"
    )
    p.add_argument(
        "--weight-replay", type=nonnegative_float, default=0.25, help="share of text -> text replay examples"
    )
    p.add_argument("--replay-file", default=None, help="extra replay pairs (JSON lines: prompt, response)")
    p.add_argument(
        "--text-columns",
        default=None,
        help="corpus columns to describe, comma-separated (default: 'text', all families); e.g. text_graph",
    )
    p.add_argument(
        "--context-windows", type=positive_int, default=2, help="windows of context for forecasting"
    )
    p.add_argument(
        "--max-windows", type=nonnegative_int, default=4, help="windows of a whole scan shown to the model"
    )
    p.add_argument("--max-length", type=positive_int, default=1024)
    add_loop_arguments(p, Stage2Config)
    p.add_argument(
        "--val-fraction", type=probability, default=0.1, help="share of subjects held out (0: none)"
    )
    p.add_argument(
        "--max-val-examples",
        type=positive_int,
        default=32,
        help="held-out examples per task at each evaluation",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--quantization", choices=["4bit", "8bit"], default=None, help="QLoRA (bitsandbytes, GPU)")
    p.add_argument("--optim-8bit", action="store_true", help="bitsandbytes 8-bit AdamW (GPU)")


def config_from_args(args: argparse.Namespace) -> Stage2Config:
    return Stage2Config(
        cohorts=[str(c) for c in args.cohort],
        tokenizer=str(args.tokenizer),
        out=str(args.out),
        corpus=[str(c) for c in args.corpus],
        base=args.base,
        init_from=args.init_from,
        lora=lora_from_args(args),
        weights={
            "describe": args.weight_describe,
            "forecast": args.weight_forecast,
            "replay": args.weight_replay,
        },
        context_windows=args.context_windows,
        max_windows=args.max_windows,
        max_length=args.max_length,
        replay_file=args.replay_file,
        text_columns=[c.strip() for c in args.text_columns.split(",") if c.strip()]
        if args.text_columns
        else None,
        val_fraction=args.val_fraction,
        max_val_examples=args.max_val_examples,
        dtype=args.dtype,
        quantization=args.quantization,
        optim_8bit=args.optim_8bit,
        **loop_kwargs(args),
    )


def run(args: argparse.Namespace) -> int:
    from fmrilm.train.common import process_state, setup_logging

    setup_logging()
    out = train_align(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    if not process_state().is_main_process:  # the main process reports the run (and alone writes its metrics)
        return 0
    summary = json.loads((Path(args.out) / METRICS_FILE).read_text()).get("summary", {})
    print(f"aligned model written to {out} (best held-out loss {summary.get('best_val_loss')})")
    return 0
