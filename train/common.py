"""Training utilities shared by every stage (tokenizer, alignment, instruction tuning, fine-tuning).

A stage trainer is a plain loop; this module gives it the parts every loop needs, built on `accelerate`, so
multi-GPU / mixed precision / DeepSpeed work unchanged and no stage re-implements them:

    accelerator = make_accelerator(out_dir, seed=cfg.seed)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    state = TrainState()
    if resume:
        state = load_checkpoint(accelerator, out_dir) or state      # restores models, optimizer, RNG, step
    metrics = MetricsLog(out_dir / "metrics.json", resume=resume)
    with progress_bar(total=cfg.steps, initial=state.step, desc="stage") as bar:
        while state.step < cfg.steps:
            ...; state.step += 1; bar.update(1)
            metrics.log("train", step=state.step, loss=...)
            if state.step % cfg.save_every == 0:
                save_checkpoint(accelerator, out_dir, state, keep=2)

Checkpoints (``OUT/checkpoints/step-000123/``) are `accelerator.save_state` folders (model weights as
safetensors; optimizer, scheduler and RNG states in accelerate's own format) plus ``trainer_state.json``.
They exist to resume a run; a finished model is written separately with ``save_pretrained`` (safetensors
only) through `atomic_dir`. Every file is written to a temporary path and renamed, so an interrupted run never
leaves a half-written checkpoint or metrics file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("fmrilm.train")

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


# ------------------------------------------------------------------------------------------------ accelerate
def make_accelerator(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    mixed_precision: str | None = None,
    cpu: bool = False,
    gradient_accumulation_steps: int = 1,
):
    """An `accelerate.Accelerator` writing under ``out_dir``, with every RNG seeded.

    ``mixed_precision`` is None/"no", "fp16" or "bf16"; ``cpu`` forces the CPU even when a GPU is present.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision or "no",
        gradient_accumulation_steps=gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(out_dir), automatic_checkpoint_naming=False),
    )
    set_seed(seed)
    return accelerator


def setup_logging(verbose: bool = True) -> None:
    """Log fmrilm.* messages to stderr once (the CLI's way to say what a run is doing)."""
    root = logging.getLogger("fmrilm")
    if not any(getattr(h, "_fmrilm", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._fmrilm = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. by a test's capture)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


# -------------------------------------------------------------------------------------------- trainer state
@dataclass
class TrainState:
    """Where a run is: the optimizer step reached, the best validation score so far and free extras."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(
            step=int(data.get("step", 0)),
            best_metric=data.get("best_metric"),
            best_step=data.get("best_step"),
            extra=dict(data.get("extra") or {}),
        )


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _STEP_RE.match(p.name)) and (p / TRAINER_STATE).exists()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator: Any, out_dir: str | os.PathLike, state: TrainState, keep: int = 2) -> Path:
    """Save models, optimizers, schedulers, RNG and ``state`` as ``checkpoints/step-N``; keep the last ``keep``."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{state.step:06d}"
    tmp = root / f".{target.name}.tmp"  # one agreed path: every process takes part in save_state
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / TRAINER_STATE, state.to_dict())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        for old in checkpoint_dirs(out_dir)[: -max(1, int(keep))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(
    accelerator: Any, out_dir: str | os.PathLike, path: str | os.PathLike | None = None
) -> TrainState | None:
    """Restore the latest (or the given) checkpoint into the prepared objects; None if there is none."""
    ckpt = Path(path) if path else latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    accelerator.load_state(str(ckpt))
    state = TrainState.from_dict(json.loads((ckpt / TRAINER_STATE).read_text()))
    logger.info("resumed from %s (step %d)", ckpt, state.step)
    return state


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target``, on error it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------- metrics
def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temporary file + rename); numpy scalars and arrays are converted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class MetricsLog:
    """Metrics of a run as one JSON file: ``{"<series>": [{"step": ..., ...}, ...], "summary": {...}}``.

    Rewritten atomically on every ``log`` (runs log every few dozen steps, so this is cheap). With
    ``resume=True`` an existing file is continued, dropping entries past the resumed step.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {}
        if resume and self.path.exists():
            self.data = json.loads(self.path.read_text())
            if resume_step is not None:
                for key, series in self.data.items():
                    if isinstance(series, list):
                        self.data[key] = [e for e in series if int(e.get("step", 0)) <= resume_step]

    def log(self, series: str, **values: Any) -> None:
        self.data.setdefault(series, []).append({k: _plain(v) for k, v in values.items()})
        self.flush()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = _plain(value)
        self.flush()

    def flush(self) -> None:
        write_json(self.path, self.data)


def progress_bar(total: int, initial: int = 0, desc: str = "training", disable: bool | None = None):
    """A tqdm bar over optimizer steps (shown only on the main process, only on a terminal by default)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=disable, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- scheduling
def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """LR multiplier: linear warm-up, then cosine decay to ``min_ratio`` (for `torch.optim.lr_scheduler.LambdaLR`)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ------------------------------------------------------------------------------------------------- splits
def subject_split(subject_ids: Sequence[str], val_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of validation rows: a seeded ``val_fraction`` of SUBJECTS (all their scans go together).

    At least one subject is held out when ``val_fraction`` > 0 and there are two or more subjects.
    """
    subjects = np.asarray([str(s) for s in subject_ids])
    unique = np.unique(subjects)
    if val_fraction <= 0 or len(unique) < 2:
        return np.zeros(len(subjects), dtype=bool)
    rng = np.random.default_rng(seed)
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    held = set(rng.permutation(unique)[:n_val].tolist())
    return np.asarray([s in held for s in subjects])


# --------------------------------------------------------------------------------------------------- helpers
def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _json_default(obj: Any) -> Any:
    plain = _plain(obj)
    if plain is not obj:
        return plain
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
