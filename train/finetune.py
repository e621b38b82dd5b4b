"""Fine-tuning on a new cohort: LoRA on a trained model with few labelled subjects (`fmrilm finetune`).

A lab brings its own cohort (any atlas: the fMRI tokenizer reads region coordinates) and a task (built in, or a
new task YAML). The cohort is split by subject (a stored split, a split JSON, or a seeded stratified split
made here); ``--shots k`` picks k subjects per class from the TRAIN part only, balanced and seeded
(`fmrilm.instructions.fewshot.sample_k_shot`), so a test subject is never trained on. The instruction rows of
those subjects are built by the same builder as Stage 3, the model's own adapters are merged into its weights
and fresh LoRA adapters are trained on top.

Only the new adapters are saved: the output folder holds peft's ``adapter_config.json`` and
``adapter_model.safetensors`` (LoRA + brain-token rows, a few MB at most) and ``fmrilm_finetune.json``, which
names the base model folder (with a fingerprint of its weights), the task card and the subjects used. Load it
with::

    from fmrilm.train.finetune import load_finetuned
    model = load_finetuned("OUT")                 # base read from fmrilm_finetune.json
    model = load_finetuned("OUT", base="BASE")    # if the base folder has moved
    model.predict(scan, "diagnosis")

which loads the base `FmriLM`, merges its adapters exactly as training did and puts these adapters on top.
``split.json`` (the parts and test subjects) lets an evaluation score the held-out part; ``metrics.json`` and
``train_config.json`` describe the run. Checkpoints are deleted once the adapters are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fmrilm.train.common import TRAIN_CONFIG, prepare_out_dir, torch_threads
from fmrilm.train.stage3 import (
    LoopConfig,
    build_examples,
    encode_scans,
    fit,
    is_main_process,
    load_trainable_model,
    resolve_model_dir,
)

from fmrilm.errors import FmriInputError

logger = logging.getLogger("fmrilm.train.finetune")

FINETUNE_FILE = "fmrilm_finetune.json"
SPLIT_FILE = "split.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(kw_only=True)
class FinetuneConfig(LoopConfig):
    """Everything a fine-tuning run depends on; saved as ``train_config.json`` and checked on resume."""

    model: str = ""
    cohort: str = ""
    task: str = ""
    out: str = ""
    shots: int | None = None
    split: str | None = None
    test_size: float = 0.2
    paradigms: list[str] = field(default_factory=lambda: ["brain"])
    # fine-tuning's loop defaults: few examples, a short run at a higher rate
    steps: int = 200
    lr: float = 5e-4
    #: the soft projection stays as Stage 3 left it (0: frozen; `--soft-lr-scale` trains it). It is not a new
    #: map here, and it holds the scan reading Stage 3 planted: at 10 times the LoRA rate (Stage 3's default)
    #: 8 or 16 subjects per class pulled a `full` model's autism answers from balanced accuracy 0.653 / 0.644
    #: zero-shot to 0.562 / 0.549; frozen, 0.636 / 0.644 (BENCHMARKS.md, "Second seeds, ...,
    #: few-shot with the projection frozen")
    soft_lr_scale: float = 0.0


# ------------------------------------------------------------------------------------------------- subjects
def resolve_split(cfg: FinetuneConfig, cohort: Any, label: str) -> tuple[dict[str, list[int]], str]:
    """``({part: rows}, where it came from)``: a split JSON file, a split stored in the cohort, or a new one.

    The new one is a seeded stratified split by subject (``test_size`` of the subjects held out for testing).
    """
    from fmrilm.splits import load_split, stratified_split

    if not cfg.split:
        parts = stratified_split(cohort, label=label, test_size=cfg.test_size, seed=cfg.seed)
        return parts, f"stratified by {label}, test_size {cfg.test_size}, seed {cfg.seed}"
    path = Path(cfg.split)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FmriInputError(
                "The split file does not exist", file=path, fix="give a split .json file or a split name"
            )
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FmriInputError(
                f"Cannot read the split file as JSON ({exc})",
                file=path,
                fix='re-create it with `fmrilm cohort split`, or write {"train": [rows], "test": [rows]}',
            ) from exc
        parts = record.get("parts", record) if isinstance(record, dict) else None
        scan_ids = [str(s) for s in cohort.dataset["scan_id"]]
        if not isinstance(parts, dict) or "train" not in parts:
            raise FmriInputError(
                "The split file has no 'train' part", file=path, fix='write {"train": [rows], "test": [rows]}'
            )
        for name, rows in parts.items():
            if not isinstance(rows, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in rows
            ):
                raise FmriInputError(
                    f"Part '{name}' of the split is not a list of row numbers",
                    file=path,
                    fix="make the split from this cohort (fmrilm cohort split)",
                )
            if any(not 0 <= int(i) < len(scan_ids) for i in rows):
                raise FmriInputError(
                    f"Part '{name}' of the split has rows outside the cohort's {len(scan_ids)} scans",
                    file=path,
                    fix="make the split from this cohort (fmrilm cohort split)",
                )
            stored = (record.get("scan_ids") or {}).get(name)
            if stored is not None and [scan_ids[int(i)] for i in rows] != [str(s) for s in stored]:
                raise FmriInputError(
                    f"Part '{name}' of the split was made for another version of the cohort",
                    file=path,
                    fix="re-create the split with `fmrilm cohort split`",
                )
        return {k: [int(i) for i in v] for k, v in parts.items()}, str(path)
    return load_split(cfg.cohort, cfg.split, cohort), f"cohort split '{cfg.split}'"


def training_rows(
    table: Any, spec: Any, parts: dict[str, list[int]], shots: int | None, seed: int
) -> tuple[list[int], set[str]]:
    """``(rows to train on, test subjects)``: k per class from the train part, never a test subject."""
    from fmrilm.instructions.fewshot import sample_k_shot

    subjects = table["subject_id"].astype(str).to_numpy()
    test_subjects = {subjects[i] for i in parts.get("test", [])}
    candidates = [i for i in parts["train"] if subjects[i] not in test_subjects]
    if shots:
        bins = spec.number.bins if spec.type == "regression" else None
        rows = sample_k_shot(
            table,
            spec.target,
            int(shots),
            seed,
            exclude_subjects=test_subjects,
            candidates=candidates,
            bins=bins,
        ).tolist()
    else:
        rows = sorted(candidates)
    leaked = sorted({subjects[i] for i in rows} & test_subjects)
    if leaked:  # sample_k_shot excludes them; this guards the promise, whatever changes upstream
        raise RuntimeError(f"test subjects {leaked} were selected for training")
    return [int(i) for i in rows], test_subjects


def instruction_rows(cohort: Any, rows: list[int], spec: Any, bound: Any, paradigms: list[str], seed: int):
    """Instruction rows of the chosen scans, built by the Stage-3 builder with the cohort's answer map."""
    from fmrilm.instructions.builder import build_instructions

    chosen = [p for p in paradigms if p in spec.paradigms and p != "multi"]
    if not chosen:
        raise FmriInputError(
            f"Task '{spec.name}' is not asked in the paradigms {paradigms} (it lists {spec.paradigms})",
            fix="pass --paradigms with one of the task's paradigms",
        )
    dataset, meta = build_instructions(cohort.select(rows), [spec], paradigms=chosen, seed=seed)
    if spec.is_choice and meta["tasks"][spec.name]["answer_map"] != bound.map_name:
        raise FmriInputError(
            f"The training subjects of task '{spec.name}' do not cover the cohort's answer coding "
            f"({bound.map_name})",
            fix="use more shots, or a split whose train part holds every class",
        )
    return dataset


# --------------------------------------------------------------------------------------------------- running
def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Fine-tune LoRA adapters for one task on a cohort; writes the adapters-only folder ``cfg.out``."""
    with torch_threads(cfg.threads):
        return _finetune(cfg, resume, overwrite)


def _finetune(cfg: FinetuneConfig, resume: bool, overwrite: bool = False) -> Path:
    from fmrilm.instructions.builder import bind_task
    from fmrilm.instructions.spec import load_task
    from fmrilm.train.common import write_json

    from fmrilm.cohort import load_cohort
    from fmrilm.model.scoring import TaskCard, store_tasks

    out_dir = Path(cfg.out)
    prepare_out_dir(out_dir, resume, cfg, overwrite=overwrite)
    base_dir = resolve_model_dir(cfg.model)
    cohort = load_cohort(cfg.cohort)
    spec = load_task(cfg.task)
    if spec.source != "phenotype" or spec.type == "open-ended":
        raise FmriInputError(
            f"Task '{spec.name}' is answered from descriptors; fine-tuning learns a cohort column",
            fix="fine-tune a phenotype task (source: phenotype), or teach descriptor tasks in Stage 3",
        )
    table = cohort.phenotype_table()
    bound = bind_task(spec, table, None, cohort_file=cfg.cohort)
    parts, split_source = resolve_split(cfg, cohort, spec.target)
    rows, test_subjects = training_rows(table, spec, parts, cfg.shots, cfg.seed)
    train_rows = instruction_rows(cohort, rows, spec, bound, cfg.paradigms, cfg.seed)
    val_idx = [i for i in parts.get("val", []) if str(table["subject_id"].iloc[i]) not in test_subjects]
    val_rows = instruction_rows(cohort, val_idx, spec, bound, cfg.paradigms, cfg.seed) if val_idx else []

    model = load_trainable_model(base_dir, cfg.lora, new_adapters=True, seed=cfg.seed)
    all_scan_ids = [str(s) for s in cohort.dataset["scan_id"]]
    processor = model.processor  # the model's facts line, if it states one, as its chat and eval will
    facts = processor.scan_facts if processor.config.scan_facts else None
    codes = encode_scans(
        cohort, processor.fmri_tokenizer, {all_scan_ids[i] for i in rows + val_idx}, facts=facts
    )
    train, _ = build_examples(model.processor, train_rows, codes, cfg.max_length)
    val, _ = build_examples(model.processor, val_rows, codes, cfg.max_length) if val_idx else ([], None)

    subjects = table["subject_id"].astype(str)
    used = {
        "rows": rows,
        "subjects": sorted({subjects.iloc[i] for i in rows}),
        "labels": {str(subjects.iloc[i]): _plain(table[spec.target].iloc[i]) for i in rows},
    }
    split_record = {
        "source": split_source,
        "parts": parts,
        "test_subjects": sorted(test_subjects),
        "scan_ids": {p: [all_scan_ids[i] for i in idx] for p, idx in parts.items()},
    }
    if is_main_process():
        write_json(out_dir / TRAIN_CONFIG, cfg.to_dict())
        write_json(out_dir / SPLIT_FILE, split_record)
    logger.info(
        "fine-tuning %s on %d subjects (%s shots per class), %d held-out test subjects",
        spec.name,
        len(used["subjects"]),
        cfg.shots or "all",
        len(test_subjects),
    )
    model, _ = fit(
        model, train, val, cfg, out_dir, resume=resume, desc=f"finetune {spec.name}", setup={"used": used}
    )

    card = TaskCard.from_spec(spec, options=bound.options or None, mapping=bound.mapping)
    store_tasks(model, [card])
    if is_main_process():
        info = {
            "format": "fmrilm-finetune",
            "base_model": str(base_dir.resolve()),
            "base_fingerprint": base_fingerprint(base_dir),
            "base_adapters": "merged",
            "task": card.to_dict(),
            "shots": cfg.shots,
            "seed": cfg.seed,
            "cohort": str(Path(cfg.cohort).resolve()),
            "atlas": cohort.atlas.name,
            "used": used,
            "test_subjects": sorted(test_subjects),
        }
        save_adapters(model, out_dir, info)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return out_dir


def save_adapters(model: Any, out_dir: Path, info: dict[str, Any]) -> None:
    """Write the adapters (peft) and ``fmrilm_finetune.json`` into ``out_dir``, the JSON last, via a temp folder."""
    from fmrilm.train.common import write_json

    tmp = Path(tempfile.mkdtemp(prefix=".adapters.tmp-", dir=out_dir))
    try:
        model.llm.save_pretrained(tmp, save_embedding_layers=False)
        if getattr(model, "soft_projection", None) is not None:  # fine-tuned with the adapters
            model.soft_projection.save(tmp)
        write_json(tmp / FINETUNE_FILE, info)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == FINETUNE_FILE):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def base_fingerprint(base_dir: str | Path) -> str:
    """Names and sizes of the base folder's weight files: enough to notice adapters put on another base."""
    base_dir = Path(base_dir)
    files = sorted(p for p in base_dir.rglob("*.safetensors") if p.is_file())
    text = json.dumps([[str(p.relative_to(base_dir)), p.stat().st_size] for p in files])
    return hashlib.sha1(text.encode()).hexdigest()


def load_finetuned(directory: str | Path, base: str | Path | None = None, *, is_trainable: bool = False):
    """The fine-tuned `FmriLM`: its base (merged adapters) with the saved adapters on top; tasks stored."""
    from peft import PeftModel

    from fmrilm.compat import peft_wrapping
    from fmrilm.model.adapters import look_up_brain_rows
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.scoring import TaskCard, store_tasks

    directory = Path(directory)
    path = directory / FINETUNE_FILE
    if not path.exists() or not (directory / ADAPTER_FILES[0]).exists():
        raise FmriInputError(
            "Not a fine-tuned adapter folder (no fmrilm_finetune.json and adapter_config.json)",
            file=directory,
            fix="pass the --out folder of `fmrilm finetune`",
        )
    info = json.loads(path.read_text())
    base_dir = resolve_model_dir(base or info["base_model"])
    if base_fingerprint(base_dir) != info.get("base_fingerprint"):
        raise FmriInputError(
            "These adapters were trained on another base model (its weight files differ)",
            file=base_dir,
            fix=f"pass base= the folder they were trained on ({info['base_model']})",
        )
    model = FmriLM.from_pretrained(base_dir)
    if model.has_adapters:
        model.merge_adapters()
    with peft_wrapping():
        model.llm = look_up_brain_rows(
            PeftModel.from_pretrained(model.llm, directory, is_trainable=is_trainable)
        )
    if not is_trainable:
        model.llm.eval()
    if model.soft_projection is not None and (directory / model.soft_projection.WEIGHTS_NAME).exists():
        model.soft_projection.load(directory)  # the projection fine-tuned with these adapters
    store_tasks(model, [TaskCard.from_dict(info["task"])])
    return model


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
