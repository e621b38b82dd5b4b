"""Training utilities shared by every stage (tokenizer, alignment, instruction tuning, fine-tuning).

A stage trainer is a plain loop; this module gives it the parts every loop needs, built on `accelerate`, so
multi-GPU / mixed precision / DeepSpeed work unchanged and no stage re-implements them:

    prepare_out_dir(out_dir, resume, cfg)   # refuses to start over a run, or to resume one with other settings
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
                save_checkpoint(accelerator, out_dir, state, keep=cfg.keep_checkpoints)

Under ``accelerate launch`` (several GPUs, or CPU processes over gloo) every process draws the same global batch
of ``--batch-size`` examples (a function of seed and step) and trains on its share (`BatchShards`), so a run
reaches the losses of one process with the same batch; only the main process writes metrics, checkpoint
metadata and the finished model (``tests/test_scale_out.py``).

Every stage config subclasses `LoopSettings` (the loop's fields, their resume rule and ``to_dict``) and
overrides only its defaults; every stage CLI takes the loop's flags from `add_loop_arguments` / `loop_kwargs`.

Checkpoints (``OUT/checkpoints/step-000123/``) are `accelerator.save_state` folders (model weights as
safetensors; optimizer, scheduler and RNG states in accelerate's own format) plus ``trainer_state.json``.
They exist to resume a run; a finished model is written separately with ``save_pretrained`` (safetensors
only) through `atomic_dir`. Every file is written to a temporary path and renamed, so an interrupted run never
leaves a half-written checkpoint or metrics file behind.
"""

from __future__ import annotations

import argparse
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fmrilm.errors import FmriInputError

logger = logging.getLogger("fmrilm.train")

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
#: A run's settings (its config's ``to_dict``), written at the start and compared on resume.
TRAIN_CONFIG = "train_config.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


# ------------------------------------------------------------------------------------------- loop settings
@dataclass(kw_only=True)
class LoopSettings:
    """The optimisation-loop settings of every stage, in one place.

    A stage config subclasses this and re-declares only the defaults it changes (the defaults here are Stage
    3's). Keyword-only, so a subclass may still declare required fields of its own.
    """

    steps: int = 500
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    #: After the warm-up: "cosine" decays to a tenth of ``lr`` by the last step; "constant" holds ``lr`` (a
    #: short run, such as the CPU demo's Stage 3, keeps learning to its end). None reads as "cosine", so
    #: runs saved before this setting existed still resume.
    lr_schedule: str | None = None
    grad_clip: float = 1.0
    eval_every: int = 100
    save_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    threads: int | None = None
    progress: bool | None = None  # None: a bar on a terminal only; False: never

    #: Settings that may differ between a run and its resumption: where it is, how long, how often it reports.
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "out", "steps", "eval_every", "save_every", "log_every", "keep_checkpoints", "progress", "threads",
        "gradient_checkpointing", "split_by_length",  # memory or padding against compute; the same gradients
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def saved_before(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Settings whose default has changed since runs were saved without them: the value the run saved as
        ``saved`` was trained with, which its missing key is read as (instead of today's default)."""
        return {}


def check_resume_config(cfg: LoopSettings, out_dir: str | os.PathLike) -> None:
    """Refuse to resume a run whose settings (other than RESUMABLE_CHANGES) differ from the saved ones.

    Compared key by key, so the order of the saved file does not matter; a key the saved file lacks is read
    as the value that run had (``saved_before``), else as that setting's default (a setting added since, at
    the default that keeps the older behaviour, does not block an older run).
    """
    import dataclasses

    path = Path(out_dir) / TRAIN_CONFIG
    if not path.exists():
        return
    old, new = json.loads(path.read_text()), cfg.to_dict()
    defaults = {}
    if dataclasses.is_dataclass(cfg):
        defaults = {
            f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING
        }
    before = cfg.saved_before(old)
    changed = sorted(
        k
        for k in new
        if k not in cfg.RESUMABLE_CHANGES and old.get(k, before.get(k, defaults.get(k))) != new[k]
    )
    if changed:
        raise FmriInputError(
            f"The run in this folder was started with other settings ({', '.join(changed)})",
            file=out_dir,
            fix="resume with the same settings, or write to a new --out folder",
        )


def prepare_out_dir(
    out_dir: str | os.PathLike, resume: bool, cfg: LoopSettings, *, overwrite: bool = False
) -> None:
    """Create ``out_dir`` and mark it as this run's (``train_config.json``) before anything else is written.

    A folder holding files of anything but a training run is refused whatever the flags (`check_run_folder`);
    an earlier run is continued with ``resume`` (only with the same settings, `check_resume_config`) or started
    afresh with ``overwrite``: its checkpoints are removed, and its finished model stays until the new one
    replaces it.
    """
    from fmrilm.safety import check_run_folder

    out_dir = Path(out_dir)
    # Under `accelerate launch` every process checks the folder before any of them writes (so none takes the
    # main process's fresh train_config.json for an earlier run), and only the main process writes.
    processes = process_state()
    earlier = check_run_folder(
        out_dir, (TRAIN_CONFIG, CHECKPOINTS_DIR), "training run", resume=resume, overwrite=overwrite
    )
    if earlier and resume:
        check_resume_config(cfg, out_dir)
    processes.wait_for_everyone()
    if processes.is_main_process:
        if earlier and not resume:  # --overwrite: old checkpoints would be taken for the new run's
            shutil.rmtree(out_dir / CHECKPOINTS_DIR, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and (out_dir / TRAIN_CONFIG).exists()):
            write_json(out_dir / TRAIN_CONFIG, cfg.to_dict())
    processes.wait_for_everyone()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (None: leave as is); the previous number is restored after."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -------------------------------------------------------------------------------------------- CLI flags
_LOOP_FLAGS = (
    "steps", "batch_size", "lr", "warmup_steps", "lr_schedule", "eval_every", "save_every", "log_every", "seed",
)  # fmt: skip
LR_SCHEDULES = ("cosine", "constant")
_LOOP_HELP = {
    "steps": "optimizer steps of the whole run",
    "batch_size": "examples per optimizer step",
    "lr": "peak learning rate (linear warm-up, then cosine decay)",
    "warmup_steps": "learning-rate warm-up steps",
    "lr_schedule": "learning rate after the warm-up: cosine decay to a tenth, or constant (default cosine)",
    "eval_every": "steps between held-out evaluations",
    "save_every": "steps between checkpoints (what --resume continues from)",
    "log_every": "steps between training-loss records in metrics.json",
    "seed": "seed of initialisation, batches and the validation split",
}


def optimizer_step(
    accelerator: Any, loss: Any, params: list[Any], optimizer: Any, scheduler: Any, grad_clip: float
) -> None:
    """One update, the same in every stage: backward, optional norm clipping, step, schedule, clear grads."""
    accelerator.backward(loss)
    apply_gradients(accelerator, params, optimizer, scheduler, grad_clip)


def apply_gradients(
    accelerator: Any, params: list[Any], optimizer: Any, scheduler: Any, grad_clip: float
) -> None:
    """The update after the step's gradients are in (one backward, or one per length group): clip, step,
    schedule, clear grads."""
    if grad_clip:
        accelerator.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def param_groups(model: Any, cfg: Any) -> list[dict[str, Any]]:
    """The LLM's trainable tensors at ``cfg.lr``; the soft-token projection, a fresh linear map into the
    embedding space, at ``cfg.lr * cfg.soft_lr_scale`` (see the LoopConfig field)."""
    soft = getattr(model, "soft_projection", None)
    soft_ids = {id(p) for p in soft.parameters()} if soft is not None else set()
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in soft_ids]
    groups = [{"params": rest}]
    soft_params = [p for p in (soft.parameters() if soft is not None else []) if p.requires_grad]
    if soft_params:
        groups.append({"params": soft_params, "lr": cfg.lr * cfg.soft_lr_scale})
    return groups


#: Gradient checkpointing is on by default when a batch can hold this many tokens (batch size x the longest
#: training sequence): the stored activations grow with it and dominate a CPU step's memory from there (8 x 218
#: tokens of SmolLM2: 6.9 GB without, 3.3 GB with; BENCHMARKS.md, "Training memory"); smaller runs keep the
#: faster step.
CHECKPOINTING_FROM_TOKENS = 1024


def checkpointing_wanted(setting: bool | None, batch_tokens: int) -> bool:
    """``--gradient-checkpointing`` / ``--no-gradient-checkpointing`` decide; unset (None), batches of
    `CHECKPOINTING_FROM_TOKENS` tokens or more (batch size x longest sequence) turn it on."""
    return bool(setting) if setting is not None else int(batch_tokens) >= CHECKPOINTING_FROM_TOKENS


def enable_gradient_checkpointing(llm: Any) -> None:
    """Checkpoint every decoder layer of ``llm`` (a peft or plain transformers model), non-reentrant.

    Non-reentrant checkpointing needs no input that requires grad, so it works with LoRA on a frozen embedding.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(llm, "config", None) is not None:
        llm.config.use_cache = False  # a cache is useless in training and conflicts with recomputation


def add_loop_arguments(parser: argparse.ArgumentParser, defaults: LoopSettings | type[LoopSettings]) -> None:
    """The loop flags of every training command, defaulting to one stage's config (class or instance).

    ``--mixed-precision`` is added only for configs that have that field; ``--resume`` is a flag, not a setting.
    """
    from fmrilm.safety import nonnegative_int, positive_float, positive_int

    p = parser
    for name in _LOOP_FLAGS:
        if name == "lr_schedule":
            p.add_argument(
                "--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule, help=_LOOP_HELP[name]
            )
            continue
        kind = {"lr": positive_float, "warmup_steps": nonnegative_int, "seed": nonnegative_int}.get(
            name, positive_int
        )
        p.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name), help=_LOOP_HELP[name]
        )
    if "mixed_precision" in {f.name for f in fields(defaults)}:
        p.add_argument(
            "--mixed-precision",
            choices=["no", "fp16", "bf16"],
            default=defaults.mixed_precision,
            help="accelerate mixed precision (default: the launcher's, else none)",
        )
    if "gradient_checkpointing" in {f.name for f in fields(defaults)}:
        p.add_argument(
            "--gradient-checkpointing",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="recompute the LLM's activations in the backward pass: far less memory, about a third more "
            f"compute (default: on when a batch can hold {CHECKPOINTING_FROM_TOKENS} tokens or more: batch "
            "size x the longest training sequence)",
        )
    p.add_argument("--threads", type=positive_int, default=defaults.threads, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh over an earlier run in --out (its checkpoints are removed; its finished model is "
        "replaced when the new one is written)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument(
        "--progress-every",
        type=float,
        metavar="SECONDS",
        action=_ProgressEvery,
        help="when the output is not a terminal (nohup, SLURM), a progress line every SECONDS; the same as "
        "$FMRILM_PROGRESS_EVERY (default: 30)",
    )


class _ProgressEvery(argparse.Action):
    """``--progress-every SECONDS`` sets ``$FMRILM_PROGRESS_EVERY`` for this process (read by `fmrilm.progress`),
    so every progress display of the run follows it, not only the training loop's."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None
    ):
        if values is None or not values >= 0:
            parser.error(f"{option}: give a number of seconds, 0 or more (got {values})")
        from fmrilm.progress import ENV_EVERY

        os.environ[ENV_EVERY] = f"{values:g}"
        setattr(namespace, self.dest, values)


def loop_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The loop settings parsed by `add_loop_arguments`, as keyword arguments of a stage config."""
    kwargs = {name: getattr(args, name) for name in _LOOP_FLAGS}
    if hasattr(args, "mixed_precision"):
        kwargs["mixed_precision"] = args.mixed_precision
    if hasattr(args, "gradient_checkpointing"):
        kwargs["gradient_checkpointing"] = args.gradient_checkpointing  # None: by sequence length
    kwargs["threads"] = args.threads
    kwargs["progress"] = False if args.no_progress else None
    return kwargs


def add_lora_arguments(parser: argparse.ArgumentParser, note: str = "") -> None:
    """LoRA flags of the commands that train adapters (`fmrilm train align` / `instruct`, `fmrilm finetune`);
    ``note`` ends every help text (Stage 3 says when its flags apply: it continues a model's own adapters)."""
    from fmrilm.safety import positive_int, probability

    p = parser
    p.add_argument("--lora-r", type=positive_int, default=16, help="LoRA rank" + note)
    p.add_argument(
        "--lora-alpha",
        type=positive_int,
        default=32,
        help="LoRA scaling numerator (scale = alpha / r)" + note,
    )
    p.add_argument("--lora-dropout", type=probability, default=0.05, help="dropout on the LoRA input" + note)
    p.add_argument(
        "--target-modules",
        default="all-linear",
        help="LoRA targets: 'all-linear' or comma-separated module names" + note,
    )


def lora_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``lora`` setting (`fmrilm.model.adapters.LoraSettings` keywords) parsed by `add_lora_arguments`."""
    targets = args.target_modules
    return {
        "r": args.lora_r,
        "alpha": args.lora_alpha,
        "dropout": args.lora_dropout,
        "target_modules": targets
        if targets == "all-linear"
        else [t.strip() for t in targets.split(",") if t.strip()],
    }


# ------------------------------------------------------------------------------------------------ accelerate
def runs_on_cpu() -> bool:
    """Whether the processes of this run use the CPU: ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU``), or
    several processes started (``accelerate launch --multi_gpu``, ``torchrun``) on a machine with no GPU, which
    accelerate alone would take for independent single-process runs all writing the same folder."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return not (accelerator.is_available() if accelerator is not None else torch.cuda.is_available())


def process_state():
    """accelerate's `PartialState` of this process (rank, world size, barriers), on the device `make_accelerator`
    will use; usable before the accelerator exists."""
    from accelerate import PartialState

    return PartialState(cpu=runs_on_cpu())


def _warn_if_one_cpu_process() -> None:
    """``accelerate launch --cpu --num_processes N`` starts N processes only through MPI (``--mpirun_hostfile``);
    without it accelerate starts one process and says nothing, so say it here."""
    env = os.environ
    mpi = any(k in env for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if "MASTER_PORT" in env and "WORLD_SIZE" not in env and not mpi and runs_on_cpu():
        logger.warning(
            "accelerate launch --cpu started ONE process (several CPU processes need MPI: --mpirun_hostfile); "
            "for several CPU processes without MPI use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes N` or torchrun (see the README's Scaling section)"
        )


def cpu_computes_bf16() -> bool:
    """Whether training here runs on a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX tiles).

    There a Stage-3 step under bf16 autocast takes 0.72x the time of a float32 one (BENCHMARKS.md, "bf16
    autocast in Stage 3"); a CPU without them emulates bf16 and is slower, and a GPU (any torch accelerator)
    is left to accelerate's own configuration. torch exposes the checks as private helpers: one that is
    missing reads as no.
    """
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    if (accelerator is not None and accelerator.is_available()) or torch.cuda.is_available():
        return False
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(getattr(torch, "cpu", None), name, None)
        try:
            if check is not None and check():
                return True
        except (RuntimeError, AttributeError):  # a private helper that changed: read as absent
            continue
    return False


def precision_autocast(mixed_precision: str | None, device: Any):
    """The autocast a stage's ``--mixed-precision`` trains under, for work outside accelerate's wrapped forward
    (Stage 3's warm start scores and differentiates the model before training): bf16 or fp16 on
    ``device``'s type, else no autocast; None is the launcher's choice, as `make_accelerator` reads it. The
    warm start then measures the model as it will train. The cast weights are not cached: the warm start edits
    a weight in place between measurements, and autocast's cache would keep reading the old one."""
    import torch

    if mixed_precision is None:  # what `accelerate launch --mixed_precision` (or its config) sets
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if mixed_precision not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtypes[mixed_precision], cache_enabled=False)


def make_accelerator(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    mixed_precision: str | None = None,
    cpu: bool = False,
    gradient_accumulation_steps: int = 1,
):
    """An `accelerate.Accelerator` writing under ``out_dir``, with every RNG seeded.

    ``mixed_precision`` is "no", "fp16", "bf16" or None (what ``accelerate launch`` or its config file says, else
    "no"); ``cpu`` forces the CPU even when a GPU is present (as
    `runs_on_cpu` does for a launch on the CPU). Under ``accelerate launch`` (or ``torchrun``) the model is
    wrapped in DDP by ``prepare``; a stage shares each global batch between the processes with `BatchShards`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _warn_if_one_cpu_process()
    _fresh_precision(mixed_precision)
    accelerator = Accelerator(
        cpu=cpu or runs_on_cpu(),
        mixed_precision=mixed_precision,  # None: the launcher's choice (accelerate config / --mixed_precision)
        gradient_accumulation_steps=gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(out_dir), automatic_checkpoint_naming=False),
        # --batch-size is the GLOBAL batch, shared by the processes: one optimizer step is one scheduler step
        # (by default accelerate steps the schedule once per process, as if each process had a batch of its own)
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    set_seed(seed)
    return accelerator


def _fresh_precision(mixed_precision: str | None) -> None:
    """Let this stage's precision differ from an earlier stage's in the same process (`fmrilm demo` runs Stage 2
    in float32, then Stage 3 in bf16 on a CPU that computes it): accelerate keeps one process-wide state and
    refuses a second precision, so its precision part is cleared (the processes' own state stays). None means
    the launcher's choice, as `Accelerator` reads it; DeepSpeed's config sets the precision itself."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    shared = AcceleratorState._shared_state
    if not shared or shared.get("distributed_type") == DistributedType.DEEPSPEED:
        return
    wanted = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if shared.get("_mixed_precision") != wanted:
        AcceleratorState._reset_state(reset_partial_state=False)


class BatchShards:
    """The global batch of a step split over the processes of a run (`accelerate launch --num_processes N`).

    Every process draws the same global batch (a function of seed and step), takes its own contiguous share
    (`take`) and back-propagates `loss`: the sum of its examples' losses scaled so that DDP's gradient average
    over processes is the gradient of the mean loss over the whole global batch, as one process would compute
    it. `gather` collects per-example records of every process (in batch order) for the metrics. With one
    process every method is the identity, so single-process runs are unchanged.
    """

    def __init__(self, accelerator: Any, batch_size: int) -> None:
        self.accelerator = accelerator
        self.rank = int(accelerator.process_index)
        self.world = int(accelerator.num_processes)
        if batch_size < self.world:
            raise FmriInputError(
                f"--batch-size {batch_size} is smaller than the {self.world} processes of this run, so some "
                "would have no example",
                fix=f"give --batch-size {self.world} or more (it is the global batch, shared by the processes)",
            )

    def take(self, items: Sequence[Any]) -> list[Any]:
        """This process's contiguous share of ``items`` (sizes differ by at most one)."""
        if self.world == 1:
            return list(items)
        bounds = np.linspace(0, len(items), self.world + 1).round().astype(int)
        return list(items[bounds[self.rank] : bounds[self.rank + 1]])

    def loss(self, out: Any, labels: Any, answered: int, params: Sequence[Any] = ()) -> Any:
        """What this process back-propagates: ``out.loss`` alone, or with several processes its examples'
        summed losses times ``world / answered`` (``answered``: examples of the GLOBAL batch with a learned
        token), so the averaged gradient is that of the global batch's mean example loss.

        With several processes, zero times every trainable tensor in ``params`` is added: a share of a batch
        may leave a tensor out of the graph (no scan in it: the soft-token projection), and DDP waits for a
        gradient of every parameter (``find_unused_parameters`` would instead search the graph at every step).
        """
        if self.world == 1:
            return out.loss
        from fmrilm.model.processing import IGNORE_INDEX

        has_answer = (labels[:, 1:] != IGNORE_INDEX).any(dim=1)
        loss = out.example_losses[has_answer].sum() * (self.world / max(int(answered), 1))
        for p in params:
            loss = loss + 0.0 * p.sum()
        return loss

    def gather(self, records: list[Any]) -> list[Any]:
        """``records`` of every process, in batch order (one process: unchanged)."""
        if self.world == 1:
            return records
        from accelerate.utils import gather_object

        return gather_object(records)

    def evaluation_share(self, batches: Sequence[Any]) -> list[Any]:
        """Held-out batches this process evaluates (every ``world``-th); their results are `gather`-ed."""
        return list(batches[self.rank :: self.world])


def length_groups(lengths: Sequence[int], min_saving: float = 0.1) -> list[list[int]]:
    """A batch's example indices in one group, or two (shorter and longer examples) when padding each group
    to its own longest saves at least ``min_saving`` of the padded tokens.

    A CPU step costs per padded token: a chat's second question is half again as long as a first one, so a
    batch of both pads every first question to the longest second one. The two groups' summed example
    losses over the batch's answered count give the batch's mean example loss and its gradient unchanged.
    """
    n = len(lengths)
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    sizes = [int(lengths[i]) for i in order]
    whole = n * sizes[-1] if n else 0
    best, cut = whole, n
    for k in range(1, n):
        cost = k * sizes[k - 1] + (n - k) * sizes[-1]
        if cost < best:
            best, cut = cost, k
    if n < 2 or best > (1.0 - min_saving) * whole:
        return [list(range(n))]
    return [sorted(order[:cut]), sorted(order[cut:])]


def has_answer(example: dict[str, Any]) -> bool:
    """Whether a training example (``labels`` list) has a learned token the loss can use."""
    from fmrilm.model.processing import IGNORE_INDEX

    return any(int(label) != IGNORE_INDEX for label in list(example["labels"])[1:])


def setup_logging(verbose: bool = True) -> None:
    """Log fmrilm.* messages to stderr once (the CLI's way to say what a run is doing); under a launcher only
    the main process says what the run is doing (the others report warnings)."""
    root = logging.getLogger("fmrilm")
    if not any(getattr(h, "_fmrilm", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._fmrilm = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose and is_main_rank() else logging.WARNING)


def is_main_rank() -> bool:
    """Whether this process is the main one of a launched run (torchrun / accelerate launch / MPI), from the
    launcher's environment alone (no process group needed): what the CLI prints once, not once per process."""
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return True


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

    def __init__(
        self,
        path: str | os.PathLike,
        resume: bool = False,
        resume_step: int | None = None,
        *,
        write: bool = True,
    ) -> None:
        self.path = Path(path)
        self.write = write  # False: kept in memory only (the processes of a run other than the main one)
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
        if self.write:
            write_json(self.path, self.data)


def progress_bar(total: int, initial: int = 0, desc: str = "training", disable: bool | None = None):
    """Progress over optimizer steps: a tqdm bar on a terminal; when the output goes to a file (nohup, SLURM),
    one line every ``--progress-every`` / ``$FMRILM_PROGRESS_EVERY`` seconds (default 30) with the step, the loss
    (what the loop passes to ``set_postfix``), steps per second and the time left (`fmrilm.progress`).

    ``disable=True`` (other processes than the main one, ``--no-progress``) shows nothing.
    """
    from fmrilm.progress import progress

    return progress(total=total, initial=initial, desc=desc, unit="step", disable=disable, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- scheduling
def lr_multiplier(cfg: LoopSettings):
    """The LR multiplier of a run's ``lr_schedule`` (for `torch.optim.lr_scheduler.LambdaLR`)."""
    schedule = cfg.lr_schedule or "cosine"
    if schedule not in LR_SCHEDULES:
        raise FmriInputError(
            f"Unknown learning-rate schedule {schedule!r} (lr_schedule)",
            fix=f"use one of {', '.join(LR_SCHEDULES)}",
        )
    if schedule == "constant":
        return warmup_constant(cfg.warmup_steps)
    return warmup_cosine(cfg.warmup_steps, cfg.steps)


def warmup_constant(warmup_steps: int):
    """LR multiplier: linear warm-up, then the peak rate to the end."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps))

    return factor


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
