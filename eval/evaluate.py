"""`fmrilm eval`: a trained model zero-shot, few-shot and fully fine-tuned, next to baselines on ONE split.

Every method is scored on the same test rows of the same subject-level split (site-level for leave-sites-out):

- ``fmrilm_zero_shot`` (shots 0): the model as it is, asked the task's question; answers are scored (the
  probability of each allowed answer, `fmrilm.model.scoring`), never parsed;
- ``fmrilm_few_shot`` (shots k, one run per seed): fresh LoRA adapters trained by `fmrilm.train.finetune` on k
  labelled subjects per class drawn from the TRAIN part (`sample_k_shot`, seeded), then scored (or, with
  ``few_shot_from="test"``, drawn from the TEST part: see below);
- ``fmrilm_full`` (``full=True``): the same fine-tuning on every train subject;
- baselines fitted on the train part (`fmrilm.eval.baselines`): ``fc_linear`` (Fisher-z FC + logistic
  regression / ridge), ``code_probe`` (the same linear model on the model's own tokenizer output per scan: its
  connectome values at the scale the LLM reads them, `code_probe_standardizes`, or pooled quantized latents or a
  code histogram), ``demographics`` (covariates only, where some apply) and the floor
  (``prior`` / ``train_mean``); and, for a like-for-like few-shot curve, ``fc_linear_few_shot`` and
  ``code_probe_few_shot`` fitted on exactly the k-shot subjects of each seed.

Few-shot from the test sites (``few_shot_from="test"``, ``--few-shot-from test``): the protocol a lab meets when it
brings a new cohort. For each k and seed, k labelled subjects per class are drawn from the test part (seeded, by
subject: every scan of a drawn subject is trained on), `fmrilm finetune` trains on them from the evaluated model,
and the fine-tuned model, the zero-shot model, the few-shot probes (fitted on the same subjects) and every method
fitted on the train part are all scored on the test subjects that draw left, so every result of one (k, seed) has
the same test subjects. These results carry ``protocol="few-shot-from-test"`` and ``shots=k`` (the draw they are
scored on; ``info["own_shots"]`` keeps a reference method's own); the zero-shot model and the train-part baselines
are also reported on the whole test part (``protocol="whole-test-part"``, as in the default protocol). The
report never averages over the two (`fmrilm.eval.report.by_protocol`).

Nothing is fitted on a test row that is scored: FC and code features are per-scan transforms, every scaler,
imputer and hyperparameter search lives inside the rows a method is fitted on, and prompts carry no phenotype. Metrics and intervals come
from `fmrilm.eval.report` (bootstrap over test subjects for one run, Student-t over seeds for repeated runs),
which writes ``report.json``, ``report.md`` and ``plots/`` into the output folder.

The fine-tuning runs are the slow part, so each finished model run's predictions are kept in a work folder
beside the output (``.<out>.eval-work/``); a re-run with the same settings, the same model files and the same
cohort content (`resume_key`) picks up where it stopped, any change starts afresh with one line saying why, and
the work folder is removed once the report is written. The report folder is written beside ``--out`` and renamed
in only when complete; ``--out`` must be new, empty or an earlier report holding nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError

logger = logging.getLogger("fmrilm.eval")

SPLIT_KINDS = ("leave-sites-out", "stratified")
#: where few-shot subjects are drawn from: the train part (default) or the test part (scored on the rest)
FEW_SHOT_FROM = ("train", "test")
#: what the code probe reads: "auto" is "connectome" for a tokenizer with connectome tokens, else "latents"
CODE_FEATURES = ("auto", "connectome", "latents", "histogram")
DEFAULT_SHOTS = (0, 2, 4, 8, 16)
#: Settings that do not change any number in the report (a resumed run may differ in them).
NOT_RESULT_SETTINGS = ("out", "progress", "threads", "keep_work", "batch_size_scoring", "device")
SPLIT_FILE = "split.json"


@dataclass
class EvalConfig:
    """Everything an evaluation depends on (stored in the report and checked when a run is resumed)."""

    model: str
    cohort: str
    task: str
    out: str
    split: str = (
        "leave-sites-out"  # leave-sites-out | stratified | a split .json file | a split stored in the cohort
    )
    test_sites: list[str] | None = None
    n_test_sites: int = 1
    test_size: float = 0.2
    shots: list[int] | None = (
        None  # None: DEFAULT_SHOTS, dropping k the train part cannot supply; 0 = zero-shot
    )
    seeds: int = 3
    seed: int = 0
    #: "train": few-shot subjects from the train part, all scored on the whole test part; "test": drawn from
    #: the test part, every method scored on the test subjects each draw leaves
    few_shot_from: str = "train"
    full: bool = False
    # fine-tuning (few-shot runs are kept cheap by default: a few steps on a CPU)
    steps: int = 20
    full_steps: int = 200
    batch_size: int = 4
    lr: float = 5e-4
    warmup_steps: int = 0
    #: learning-rate multiplier of the soft projection in each fine-tuning run (`fmrilm finetune
    #: --soft-lr-scale`; 0, its default, freezes it, and with it the scan reading Stage 3 planted there)
    soft_lr_scale: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    # scoring
    paraphrases: int = 1
    normalize: str = "sum"
    batch_size_scoring: int = 8
    # baselines
    code_features: str = "auto"
    few_shot_baselines: bool = True
    #: tangent-space FC + logistic/ridge next to Fisher-z FC (reference fitted on the train part only)
    tangent_baseline: bool = True
    covariates: list[str] = field(default_factory=lambda: ["age", "sex"])
    n_boot: int = 1000
    # running
    threads: int | None = None
    device: str | None = (
        None  # None: cuda when available, else cpu (fine-tuning places itself via accelerate)
    )
    progress: bool = True
    keep_work: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in NOT_RESULT_SETTINGS}


@dataclass
class EvalRun:
    """What `evaluate` returns: every scored method result, the split, and the files written."""

    results: list[Any]
    split: dict[str, list[int]]
    test_rows: list[int]
    paths: dict[str, Path]
    context: dict[str, Any]


# ------------------------------------------------------------------------------------------------------ task
def load_eval_task(name: str, table: Any, cohort_dir: str | Path) -> tuple[Any, Any, Any]:
    """``(spec, bound, card)``: the task spec, bound to this cohort's coding, and the card the model scores.

    Only phenotype tasks with scored answers (binary, multiclass, regression) have a truth to compare with.
    """
    from fmrilm.instructions.builder import bind_task
    from fmrilm.instructions.spec import load_task

    from fmrilm.model.scoring import TaskCard

    spec = load_task(name)
    if spec.source != "phenotype" or spec.type == "open-ended":
        raise FmriInputError(
            f"Task '{spec.name}' is answered from descriptors ({spec.type}), not from a cohort column",
            fix="evaluate a phenotype task (e.g. diagnosis, sex, age) or a task YAML with `source: phenotype`",
        )
    bound = bind_task(spec, table, None, cohort_file=cohort_dir)
    card = TaskCard.from_spec(spec, options=bound.options or None, mapping=bound.mapping)
    return spec, bound, card


# ----------------------------------------------------------------------------------------------------- split
def resolve_eval_split(
    cfg: EvalConfig, cohort: Any, label: str
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """``({part: rows}, how it was made)``: leave-sites-out, stratified, a split file, or a stored split."""
    from fmrilm.splits import leave_sites_out_split, list_splits, stratified_split

    kind = str(cfg.split)
    # A split stored in the cohort under this name wins over making a fresh one of that kind: `fmrilm cohort
    # split --kind leave-sites-out` stores "leave-sites-out", and a model trained on its train part must be
    # scored on exactly its test part. Explicit --test-sites still make a fresh leave-sites-out split.
    stored_by_name = kind in list_splits(cfg.cohort) and not cfg.test_sites
    if cfg.test_sites and kind != "leave-sites-out":
        raise FmriInputError(
            f"--test-sites only applies to a leave-sites-out split, not to '{kind}'",
            fix="pass --split leave-sites-out with --test-sites, or drop --test-sites",
        )
    if kind == "leave-sites-out" and not stored_by_name:
        split = leave_sites_out_split(
            cohort, test_sites=cfg.test_sites or None, n_test_sites=cfg.n_test_sites, seed=cfg.seed
        )
        how = {"kind": kind, "test_sites": _sites_of(cohort, split["test"]), "seed": cfg.seed}
    elif kind == "stratified" and not stored_by_name:
        split = stratified_split(cohort, label=label, test_size=cfg.test_size, seed=cfg.seed)
        how = {"kind": kind, "label": label, "test_size": cfg.test_size, "seed": cfg.seed}
    else:
        from fmrilm.train.finetune import FinetuneConfig, resolve_split

        path = Path(kind)
        if not (path.is_file() or path.suffix == ".json" or kind in list_splits(cfg.cohort)):
            stored = ", ".join(list_splits(cfg.cohort)) or "none"
            raise FmriInputError(
                f"Unknown split '{kind}' (not a split kind, a .json file, or a split stored in the cohort: {stored})",
                fix="pass --split leave-sites-out, stratified, a split .json file, or a name from "
                "`fmrilm cohort split`",
            )
        split, source = resolve_split(FinetuneConfig(cohort=cfg.cohort, split=kind), cohort, label)
        how = {"kind": "saved", "source": source, "test_sites": _sites_of(cohort, split.get("test", []))}
    for part in ("train", "test"):
        if not split.get(part):
            raise FmriInputError(
                f"The split has no '{part}' rows", fix="use a split with both a train and a test part"
            )
    _check_subject_level(cohort, split)
    return split, how


def _sites_of(cohort: Any, rows: list[int]) -> list[str]:
    """The named sites of these rows (a scan without a site adds none: no sites, an empty list)."""
    sites = cohort.phenotype_table()["site"].fillna("").astype(str).to_numpy()
    return sorted({sites[i] for i in rows} - {""})


def _check_subject_level(cohort: Any, split: dict[str, list[int]]) -> None:
    """No subject in two parts: a test subject's other scans must not be trained on."""
    subjects = cohort.phenotype_table()["subject_id"].astype(str).to_numpy()
    owner: dict[str, str] = {}
    for part, rows in split.items():
        for s in {subjects[i] for i in rows}:
            if owner.setdefault(s, part) != part:
                raise FmriInputError(
                    f"The split puts subject '{s}' in both '{owner[s]}' and '{part}'",
                    subject=s,
                    fix="make a subject-level split with `fmrilm cohort split` (or --split stratified)",
                )


def write_split_file(path: Path, cohort: Any, split: dict[str, list[int]], how: dict[str, Any]) -> Path:
    """The split as `fmrilm finetune --split` reads it (parts with their scan ids), written atomically."""
    scan_ids = [str(s) for s in cohort.dataset["scan_id"]]
    record = {
        **how,
        "parts": {p: [int(i) for i in rows] for p, rows in split.items()},
        "scan_ids": {p: [scan_ids[i] for i in rows] for p, rows in split.items()},
    }
    _write_json(path, record)
    return path


# --------------------------------------------------------------------------------------------- code features
def resolve_code_features(kind: str, fmri_tokenizer: Any) -> str:
    """``kind`` with "auto" made concrete: the connectome tokens' values when the tokenizer has them (what the
    scan summary and the soft connectome tokens carry into the LLM), else the window latents."""
    if kind not in CODE_FEATURES:
        raise FmriInputError(f"Unknown code features '{kind}'", fix=f"use one of {', '.join(CODE_FEATURES)}")
    if kind != "auto":
        return kind
    return "connectome" if getattr(fmri_tokenizer, "connectome", None) is not None else "latents"


def code_probe_standardizes(kind: str) -> bool:
    """Whether the code probe gives each feature unit variance: not for connectome values, whose components
    keep their relative variance on purpose and are read at that scale by the LLM's projection and by Stage
    3's planted probe (`train.probe_init.fit_probe`); standardizing them lifted noise-level components to the
    leading ones' weight, and the probe read autism below the model's own answer (BENCHMARKS.md)."""
    return kind != "connectome"


def code_features(fmri_tokenizer: Any, cohort: Any, kind: str = "auto", progress: bool = False) -> np.ndarray:
    """One row per scan summarising the model's tokenizer output, for the linear code probe.

    ``connectome``: the continuous values of the scan's connectome tokens, ``(n_scans, M * group_dim)``: the
    numbers the LLM reads through the scan summary and the soft tokens, so the probe says how much of the
    scan a linear reader gets from the LLM's own input (and it costs a fifth of the window encoding);
    ``latents``: the quantized latents of each window (``FmriTokenizerModel.embed``) averaged over the scan's
    windows, ``(n_scans, hidden)``; ``histogram``: the frequency of each code over the scan's windows and
    latent slots, ``(n_scans, codebook_size)``. The windows are those the model reads (a mostly-padded end
    window is dropped, as the processor does). ``auto``: `resolve_code_features`. All are fixed per-scan
    transforms: nothing is fitted here.
    """
    import torch

    from fmrilm.model.processing import valid_windows
    from fmrilm.progress import progress as show_progress

    if fmri_tokenizer is None:
        raise FmriInputError(
            "The model has no fMRI tokenizer, so scans cannot be encoded",
            fix="evaluate a model saved with its fmri_tokenizer subfolder (Stage 2 or 3 output)",
        )
    kind = resolve_code_features(kind, fmri_tokenizer)
    connectome = getattr(fmri_tokenizer, "connectome", None)
    if kind == "connectome" and connectome is None:
        raise FmriInputError(
            "code features 'connectome' need a tokenizer with connectome tokens; this model's has none",
            fix="use --code-features latents (or auto)",
        )
    config = fmri_tokenizer.config
    rows = []
    scans = show_progress(
        (cohort.scan(i) for i in range(len(cohort))),
        total=len(cohort),
        desc=f"code features ({kind})",
        disable=not progress,
        unit="scan",
    )
    if kind == "connectome":  # batched: the same values as scan by scan, a third of the time
        values = [np.asarray(t.values, dtype=np.float64).reshape(-1) for t in connectome.encode_many(scans)]
        return np.asarray(values, dtype=np.float64)
    with torch.no_grad():
        for scan in scans:
            windows, mask = fmri_tokenizer.windows(scan)
            keep = valid_windows(mask, config.window_length, config.patch_length)
            if kind == "latents":
                emb = fmri_tokenizer.embed(windows[keep], coords=scan, mask=mask[keep])
                rows.append(emb.float().mean(dim=0).cpu().numpy())
            else:
                codes = fmri_tokenizer.encode(windows[keep], coords=scan, mask=mask[keep]).cpu().numpy()
                rows.append(np.bincount(codes.ravel(), minlength=config.codebook_size) / max(codes.size, 1))
    return np.asarray(rows, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- model results
def model_result(
    frame: Any,
    method: str,
    task: Any,
    target: tuple[np.ndarray, list[Any] | None, str],
    rows: list[int],
    table: Any,
    *,
    shots: int | None = None,
    seed: int | None = None,
    info: dict[str, Any] | None = None,
) -> Any:
    """A `MethodResult` from `predict_cohort`'s table, labelled exactly as the baselines label the truth.

    The truth is the baselines' (`task_target`), and the model's own label column is checked against it, so
    no method can be scored against a differently coded answer.
    """
    from fmrilm.eval.report import MethodResult, sites_of

    from fmrilm.model.scoring import PROB_PREFIX

    y, classes, ttype = target
    frame = frame.set_index("index").loc[rows]
    truth = y[rows]
    labels = frame["label"].to_numpy()
    if ttype == "regression":
        same = np.allclose(labels.astype(float), truth.astype(float))
    else:
        same = [str(a) for a in labels] == [str(b) for b in truth]
    if not same:  # the card and the baselines disagree on the coding: a bug, never a silent mismatch
        raise RuntimeError(f"model labels {labels[:5]} differ from the baselines' truth {truth[:5]}")
    score = None
    if ttype == "regression":
        pred = frame["prediction"].astype(float).tolist()
    else:
        score = np.stack([frame[PROB_PREFIX + str(c)].to_numpy(dtype=float) for c in classes], axis=1)
        pred = np.asarray(classes, dtype=object)[score.argmax(axis=1)].tolist()
    return MethodResult(
        method=method,
        task=getattr(task, "name", str(task)),
        task_type=ttype,
        y_true=truth.tolist(),
        y_pred=pred,
        y_score=score,
        classes=None if classes is None else list(classes),
        part="test",
        subject_ids=table["subject_id"].astype(str).to_numpy()[rows].tolist(),
        sites=sites_of(table, rows),
        shots=shots,
        seed=seed,
        info=dict(info or {}),
    )


def result_to_record(r: Any) -> dict[str, Any]:
    record = r.to_dict(predictions=True)
    record["metrics"] = {}
    return record


def result_from_record(record: dict[str, Any]) -> Any:
    """A stored run's result, unscored (its metrics are computed with the rest of the report)."""
    from fmrilm.eval.report import MethodResult

    return MethodResult.from_dict({**record, "metrics": {}})


# ------------------------------------------------------------------------------------------------ few-shot
def shot_plan(
    cfg: EvalConfig, table: Any, spec: Any, split: dict[str, list[int]]
) -> tuple[list[int], dict[tuple[int, int], list[int]], list[dict[str, Any]]]:
    """``(k values, {(k, seed): training rows}, skipped)``, all drawn before any training starts.

    The rows are those `fmrilm finetune` will draw (`training_rows`: k subjects per class from the train part,
    seeded, never a test subject), so the few-shot baselines see exactly the model's subjects. A k that the
    train part cannot supply is an error when asked for explicitly, and is dropped (and reported) from the
    default list.
    """
    from fmrilm.train.finetune import training_rows

    return _plan_draws(cfg, lambda k, s: training_rows(table, spec, split, k, s)[0], "runs")


def _plan_draws(
    cfg: EvalConfig, draw: Any, what: str
) -> tuple[list[int], dict[tuple[int, int], Any], list[dict[str, Any]]]:
    """``(k values, {(k, seed): draw(k, seed)}, skipped)`` for the asked (or default) shots and seeds.

    A k whose draw fails (`FmriInputError`) is that error when the shots were asked for explicitly, and is
    dropped and reported from the default list.
    """
    explicit = cfg.shots is not None
    shots = sorted({int(k) for k in (cfg.shots if explicit else DEFAULT_SHOTS)})
    if any(k < 0 for k in shots):
        raise FmriInputError(f"--shots must be 0 or more, got {shots}", fix="give e.g. --shots 0,2,4,8")
    if int(cfg.seeds) < 1:
        raise FmriInputError(f"--seeds must be at least 1, got {cfg.seeds}", fix="give e.g. --seeds 3")
    plan: dict[tuple[int, int], Any] = {}
    kept, skipped = [], []
    for k in shots:
        if k == 0:
            kept.append(0)
            continue
        try:
            for s in seeds_of(cfg):
                plan[(k, s)] = draw(k, s)
        except FmriInputError as exc:
            if explicit:
                raise
            plan = {key: v for key, v in plan.items() if key[0] != k}
            skipped.append({"shots": k, "reason": exc.problem})
            logger.info("skipping %d-shot %s: %s", k, what, exc.problem)
            continue
        kept.append(k)
    return kept, plan, skipped


def test_draw_plan(
    cfg: EvalConfig, table: Any, spec: Any, split: dict[str, list[int]], test_rows: list[int]
) -> tuple[list[int], dict[tuple[int, int], dict[str, list]], list[dict[str, Any]]]:
    """Few-shot from the test sites: ``(k values, {(k, seed): draw}, skipped)``, all drawn before any training.

    Each draw is k labelled subjects per class from the test part (`sample_k_shot`, seeded, as `fmrilm
    finetune` draws from a train part); ``draw["train"]`` is every labelled test-part scan of those subjects,
    ``draw["scored"]`` the labelled test rows of the other subjects (in ``test_rows`` order), and
    ``draw["subjects"]`` the drawn subjects. A k that leaves no subject of some class to score (or fewer than
    two for a regression) is an error naming the task, k and the fix when asked for explicitly, and is dropped
    (and reported) from the default list.
    """
    from fmrilm.instructions.fewshot import sample_k_shot

    subjects = table["subject_id"].astype(str).to_numpy()
    train_subjects = {subjects[i] for i in split["train"]}
    regression = spec.type == "regression"
    bins = spec.number.bins if regression else None
    values = table[spec.target].to_numpy()
    classes = {str(values[i]) for i in test_rows}
    per_class: dict[str, set[str]] = {}
    for i in test_rows:
        per_class.setdefault(str(values[i]), set()).add(subjects[i])
    most = (min(len(v) for v in per_class.values()) - 1) if per_class and not regression else None

    def refuse(k: int, problem: str) -> FmriInputError:
        hint = f"at most {most} here" if most is not None else "fewer"
        return FmriInputError(
            f"Task '{spec.name}': k={k} labelled subjects per class cannot be drawn from the test part and "
            f"leave test subjects to score ({problem})",
            fix=f"lower --shots ({hint}), add test subjects (more --test-sites / --n-test-sites, a larger "
            "--test-size), or use --few-shot-from train",
        )

    def draw(k: int, s: int) -> dict[str, list]:
        try:
            picked = sample_k_shot(
                table, spec.target, k, s, exclude_subjects=train_subjects, candidates=test_rows, bins=bins
            )
        except FmriInputError as exc:
            raise refuse(k, exc.problem) from None
        drawn = {subjects[i] for i in picked}
        scored = [i for i in test_rows if subjects[i] not in drawn]
        left = {str(values[i]) for i in scored}
        if not regression and left != classes:
            missing = ", ".join(sorted(classes - left))
            raise refuse(k, f"seed {s}'s draw leaves no '{missing}' subject to score")
        if regression and len({subjects[i] for i in scored}) < 2:
            raise refuse(k, f"seed {s}'s draw leaves fewer than two subjects to score")
        return {
            "train": [i for i in test_rows if subjects[i] in drawn],
            "scored": scored,
            "subjects": sorted(drawn),
        }

    return _plan_draws(cfg, draw, "draws from the test part")


def restrict(result: Any, rows: list[int], test_rows: list[int], shots: int, seed: int) -> Any:
    """A whole-test-part result scored on some of its rows only (the test subjects a draw left): the same
    predictions, labelled ``protocol="few-shot-from-test"`` with the draw's ``shots`` and ``seed``."""
    from fmrilm.eval.report import FROM_TEST, MethodResult

    if result.n != len(test_rows):
        raise RuntimeError(f"{result.method} was scored on other test rows than the rest")
    where = {row: p for p, row in enumerate(test_rows)}
    pos = [where[i] for i in rows]
    score = None if result.y_score is None else np.asarray(result.y_score)[pos]
    return MethodResult(
        method=result.method,
        task=result.task,
        task_type=result.task_type,
        y_true=[result.y_true[p] for p in pos],
        y_pred=[result.y_pred[p] for p in pos],
        y_score=score,
        classes=result.classes,
        part=result.part,
        subject_ids=None if result.subject_ids is None else [result.subject_ids[p] for p in pos],
        sites=None if result.sites is None else [result.sites[p] for p in pos],
        shots=shots,
        seed=seed,
        info={**result.info, "own_shots": result.shots, "own_seed": result.seed},
        protocol=FROM_TEST,
    )


def seeds_of(cfg: EvalConfig) -> list[int]:
    return [int(cfg.seed) + i for i in range(int(cfg.seeds))]


def finetune_and_score(
    cfg: EvalConfig,
    shots: int | None,
    seed: int,
    split_file: Path,
    run_dir: Path,
    cohort: Any,
    card: Any,
    rows: list[int],
    *,
    steps: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train adapters with `fmrilm finetune` (k shots, or all train subjects) and score the test rows.

    ``steps`` overrides the step count (default: ``cfg.steps`` for k shots, ``cfg.full_steps`` for all)."""
    import torch
    from fmrilm.train.finetune import FINETUNE_FILE, FinetuneConfig, finetune, load_finetuned

    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run restarts from scratch
    targets = cfg.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    ft = FinetuneConfig(
        model=cfg.model,
        cohort=cfg.cohort,
        task=cfg.task,
        out=str(run_dir),
        shots=shots,
        split=str(split_file),
        steps=int(steps or (cfg.steps if shots else cfg.full_steps)),
        batch_size=int(cfg.batch_size),
        lr=float(cfg.lr),
        warmup_steps=int(cfg.warmup_steps),
        soft_lr_scale=float(cfg.soft_lr_scale),
        lora={
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "target_modules": targets,
        },
        seed=int(seed),
        threads=cfg.threads,
        progress=False,
        eval_every=10**9,
        save_every=10**9,
        log_every=max(1, int(steps or (cfg.steps if shots else cfg.full_steps))),
    )
    torch.manual_seed(int(seed))  # the fresh adapters' initialisation is drawn before training seeds its RNGs
    finetune(ft)
    model = load_finetuned(run_dir).to(_device(cfg.device))
    frame = model.predict_cohort(
        cohort,
        card,
        rows,
        normalize=cfg.normalize,
        paraphrases=cfg.paraphrases,
        batch_size=cfg.batch_size_scoring,
    )
    used = json.loads((run_dir / FINETUNE_FILE).read_text()).get("used", {})
    info = {
        "steps": ft.steps,
        "train_subjects": used.get("subjects", []),
        "n_train": len(used.get("rows", [])),
    }
    del model
    return frame, info


# -------------------------------------------------------------------------------------------------- running
def evaluate(
    cfg: EvalConfig,
    *,
    fc: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    command: str | None = None,
) -> EvalRun:
    """Run every method of the evaluation on one split and write the report into ``cfg.out``.

    The report records ``command`` (the command line as typed; the CLI passes it) and ``command_in_full``
    (`command_line`: every setting in force as a flag, which repeats this run exactly).

    ``fc`` / ``codes`` reuse per-scan features already computed for this cohort (`fc_features`,
    `code_features` with ``cfg.code_features`` and this model), e.g. across the folds and tasks of a benchmark;
    they are fixed transforms of each scan, so reusing them across splits leaks nothing.
    """
    import torch
    from fmrilm.eval.baselines import (
        demographics_baseline,
        fc_features,
        floor_baseline,
        linear_probe,
        tangent_features,
        task_target,
    )

    from fmrilm.cohort import load_cohort
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.scoring import stored_tasks
    from fmrilm.progress import progress as show_progress

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.code_features not in CODE_FEATURES:
        raise FmriInputError(
            f"Unknown code features '{cfg.code_features}'", fix=f"use one of {', '.join(CODE_FEATURES)}"
        )
    if cfg.few_shot_from not in FEW_SHOT_FROM:
        raise FmriInputError(
            f"Unknown --few-shot-from '{cfg.few_shot_from}'", fix=f"use one of {', '.join(FEW_SHOT_FROM)}"
        )
    from_test = cfg.few_shot_from == "test"
    out_dir = Path(cfg.out)
    _check_out_dir(out_dir)
    model_dir = _model_dir(cfg.model)
    cohort = load_cohort(cfg.cohort)
    table = cohort.phenotype_table()
    spec, bound, card = load_eval_task(cfg.task, table, cfg.cohort)
    split, how = resolve_eval_split(cfg, cohort, spec.target)
    y, classes, ttype, ok = task_target(table, spec)
    test_rows = [int(i) for i in split["test"] if ok[i]]
    if not test_rows:
        raise FmriInputError(
            f"No test subject has a '{spec.target}' value",
            fix="choose test sites or a split with labelled subjects",
        )
    if from_test:
        shots, draws, skipped = test_draw_plan(cfg, table, spec, split, test_rows)
        plan: dict[tuple[int, int], list[int]] = {}
    else:
        shots, plan, skipped = shot_plan(cfg, table, spec, split)
        draws = {}
    target = (y, classes, ttype)
    subjects = table["subject_id"].astype(str).to_numpy()
    test_subjects = sorted({subjects[i] for i in test_rows})

    work = _work_dir(out_dir, cfg, model_dir)
    split_file = write_split_file(work / SPLIT_FILE, cohort, split, how)
    # A site-disjoint split (leave-sites-out, made here or saved) chooses baseline hyperparameters by CV grouped
    # by site inside the train part, so the choice favours models that transfer to unseen scanners.
    sites = table["site"].fillna("").astype(str).to_numpy()
    site_level = not {sites[i] for i in split["train"]} & {sites[i] for i in split["test"]}
    inner = "site" if site_level else "subject_id"
    results: list[Any] = []

    # ---- the model as it is, and the features of its tokenizer
    model = FmriLM.from_pretrained(model_dir).to(_device(cfg.device))
    task_known = spec.name in stored_tasks(model)
    zero = None
    if 0 in shots or draws:  # the draws from the test part score the zero-shot model on what each leaves
        zero = _cached(work, "fmrilm_zero_shot-k0")
        if zero is None:
            logger.info("zero-shot: scoring %d test scans", len(test_rows))
            frame = model.predict_cohort(
                cohort,
                card,
                test_rows,
                normalize=cfg.normalize,
                paraphrases=cfg.paraphrases,
                batch_size=cfg.batch_size_scoring,
                progress=cfg.progress,
            )
            zero = model_result(
                frame, "fmrilm_zero_shot", spec, target, test_rows, table, shots=0,
                info={"task_stored_in_model": task_known, "options": list(card.options)},
            )  # fmt: skip
            _store(work, "fmrilm_zero_shot-k0", zero)
        if 0 in shots:
            results.append(zero)
    features = resolve_code_features(cfg.code_features, model.fmri_tokenizer)
    standardize_codes = code_probe_standardizes(features)
    if codes is None:
        codes = code_features(model.fmri_tokenizer, cohort, features, progress=cfg.progress)
    _check_rows(codes, cohort, "codes")
    model_info = {
        "folder": str(model_dir),
        "base_model": model.processor.config.base_model,
        "atlas": (model.processor.config.atlas or {}).get("name"),
        "tasks_stored": sorted(stored_tasks(model)),
    }
    del model

    # ---- baselines on the whole train part
    logger.info("baselines: FC, code probe, demographics, floor")
    if fc is None:
        fc = fc_features(cohort, progress=cfg.progress)
    _check_rows(fc, cohort, "fc")
    probe_kw = {"eval_parts": ("test",), "inner_groups": inner, "seed": cfg.seed}
    results += linear_probe(fc, table, spec, split, method="fc_linear", **probe_kw)
    if cfg.tangent_baseline:
        tangent = tangent_features(cohort, split["train"], progress=cfg.progress)
        results += linear_probe(tangent, table, spec, split, method="tangent_linear", **probe_kw)
    for r in linear_probe(
        codes, table, spec, split, method="code_probe", standardize=standardize_codes, **probe_kw
    ):
        r.info["features"] = features
        results.append(r)
    results += demographics_baseline(table, spec, split, covariates=cfg.covariates, seed=cfg.seed)
    results += floor_baseline(table, spec, split)

    # ---- few-shot and full fine-tuning
    runs = [] if from_test else [(k, s) for k in shots if k > 0 for s in seeds_of(cfg)]
    if cfg.full:
        runs.append((None, cfg.seed))
    for k, s in show_progress(
        runs, desc="fine-tuning runs", disable=not cfg.progress or not runs, unit="run"
    ):
        method = "fmrilm_few_shot" if k else "fmrilm_full"
        key = f"{method}-k{k or 'all'}-s{s}"
        result = _cached(work, key)
        if result is None:
            logger.info("%s: k=%s seed=%d", method, k or "all", s)
            frame, info = finetune_and_score(
                cfg, k, s, split_file, work / "runs" / key, cohort, card, test_rows
            )
            leaked = sorted(set(info["train_subjects"]) & set(test_subjects))
            if leaked:  # finetune promises this never happens; an evaluation must not trust it blindly
                raise RuntimeError(f"test subjects {leaked[:5]} were fine-tuned on")
            result = model_result(frame, method, spec, target, test_rows, table, shots=k, seed=s, info=info)
            _store(work, key, result)
            shutil.rmtree(work / "runs" / key, ignore_errors=True)
        results.append(result)
        if k and cfg.few_shot_baselines:
            results += _few_shot_baselines(
                fc, codes, table, spec, plan[(k, s)], test_rows, k, s, ttype, cfg, standardize_codes
            )

    # ---- one split, one test set: the promise of this module
    for r in results:
        if sorted(set(r.subject_ids)) != test_subjects or r.n != len(test_rows):
            raise RuntimeError(f"{r.method} was scored on other test rows than the rest")

    # ---- few-shot from the test sites: every method of one draw scored on the test subjects it left
    if draws:
        results += _test_draw_runs(
            cfg, draws, results, zero, work, cohort, card, spec, target, table, test_rows, split["test"], fc,
            codes, ttype, standardize_codes,
        )  # fmt: skip

    context = {
        "task": {"name": spec.name, "type": ttype, "target": spec.target, "options": list(card.options)},
        "cohort": {
            "folder": str(cfg.cohort),
            "name": cohort.name,
            "atlas": cohort.atlas.name,
            "scans": len(cohort),
        },
        "model": model_info,
        "split": {
            **how,
            "train_scans": len(split["train"]),
            "test_scans": len(test_rows),
            "test_subjects": len(test_subjects),
            "inner_cv_groups": inner,
        },
        "shots": shots,
        "seeds": seeds_of(cfg),
        "few_shot_from": cfg.few_shot_from,
        "skipped": skipped,
        "config": cfg.to_dict(),
        "command": command or command_line(cfg),
        "command_in_full": command_line(cfg),
    }
    paths = _write_report_folder(
        results,
        out_dir,
        split_file,
        title=f"fmrilm evaluation: {spec.name} on {cohort.name}",
        context=context,
        n_boot=cfg.n_boot,
    )
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return EvalRun(results=results, split=split, test_rows=test_rows, paths=paths, context=context)


def _test_draw_runs(
    cfg,
    draws,
    whole,
    zero,
    work,
    cohort,
    card,
    spec,
    target,
    table,
    test_rows,
    test_part,
    fc,
    codes,
    ttype,
    standardize_codes=True,
) -> list[Any]:
    """For each (k, seed) draw from the test part: fine-tune on the drawn subjects, score the rest, fit the
    few-shot probes on the same subjects, and score every whole-test-part method (and the zero-shot model) on
    the same remaining rows. Checks that no scored subject was trained on and that every result of a draw has
    the same subjects, in the same order."""
    from fmrilm.eval.report import FROM_TEST

    from fmrilm.progress import progress as show_progress

    subjects = table["subject_id"].astype(str).to_numpy()
    references = list(whole)
    if zero is not None and all(r.method != zero.method for r in references):
        references.insert(0, zero)
    out: list[Any] = []
    for (k, s), draw in show_progress(
        list(draws.items()), desc="test-part draws", disable=not cfg.progress, unit="run"
    ):
        scored, drawn = draw["scored"], set(draw["subjects"])
        refs = [restrict(r, scored, test_rows, k, s) for r in references]
        key = f"fmrilm_few_shot-test-k{k}-s{s}"
        result = _cached(work, key)
        if result is None:
            logger.info("fmrilm_few_shot from the test part: k=%d seed=%d", k, s)
            split_file = work / "draws" / f"{key}.json"
            rest = [i for i in test_part if subjects[i] not in drawn]  # held out, labelled or not
            how = {"kind": "few-shot-from-test", "shots": k, "seed": s, "subjects": sorted(drawn)}
            write_split_file(split_file, cohort, {"train": draw["train"], "test": rest}, how)
            frame, info = finetune_and_score(
                cfg, None, s, split_file, work / "runs" / key, cohort, card, scored, steps=cfg.steps
            )
            if set(info["train_subjects"]) != drawn:  # finetune must train on exactly the drawn subjects
                raise RuntimeError(f"fine-tuned on {info['train_subjects'][:5]}, not the drawn subjects")
            info["drawn_from"] = "test"
            result = model_result(
                frame, "fmrilm_few_shot", spec, target, scored, table, shots=k, seed=s, info=info
            )
            result.protocol = FROM_TEST
            _store(work, key, result)
            shutil.rmtree(work / "runs" / key, ignore_errors=True)
        # the reports list them in this order: the model zero-shot and fine-tuned, the probes on the same
        # subjects, then the methods fitted on the train part
        zero_first = [r for r in refs if r.method == "fmrilm_zero_shot"]
        mine = [*zero_first, result]
        if cfg.few_shot_baselines:
            mine += _few_shot_baselines(
                fc, codes, table, spec, draw["train"], scored, k, s, ttype, cfg, standardize_codes
            )
        mine += [r for r in refs if r.method != "fmrilm_zero_shot"]
        scored_subjects = [subjects[i] for i in scored]
        for r in mine:
            r.protocol = FROM_TEST
            r.info["scored_on"] = f"test subjects left by the {k}-per-class draw of seed {s}"
            if r.subject_ids != scored_subjects:
                raise RuntimeError(
                    f"{r.method} (k={k}, seed {s}) was scored on other rows than the draw left"
                )
            leaked = sorted(drawn & set(r.subject_ids))
            if leaked:  # a drawn subject is trained on; scoring it would flatter every few-shot method
                raise RuntimeError(f"drawn subjects {leaked[:5]} were scored")
            trained = set(r.info.get("train_subjects") or [])
            if trained & set(r.subject_ids):
                raise RuntimeError(f"{r.method} was scored on subjects it was trained on")
        out += mine
    return out


def _few_shot_baselines(
    fc, codes, table, spec, rows, test_rows, k, seed, ttype, cfg, standardize_codes=True
) -> list[Any]:
    """FC and code probes fitted on exactly the k-shot subjects of this seed (their scans in ``rows``: one
    each when drawn from the train part, all of them when drawn from the test part); the code probe scales
    its features as the zero-shot one does (`code_probe_standardizes`)."""
    from fmrilm.eval.baselines import linear_probe

    if ttype != "regression" and k < 2:
        return []  # one example per class leaves no inner cross-validation to choose the penalty
    part = {"train": list(rows), "test": list(test_rows)}
    subjects = table["subject_id"].astype(str).to_numpy()[list(rows)]
    # several scans of one subject: the inner CV keeps them in one fold (one scan each: plain folds)
    inner = "subject_id" if len(set(subjects)) < len(subjects) else None
    out = []
    for features, method, standardize in (
        (fc, "fc_linear_few_shot", True),
        (codes, "code_probe_few_shot", standardize_codes),
    ):
        for r in linear_probe(
            features, table, spec, part, method=method, inner_groups=inner, standardize=standardize, seed=seed
        ):
            r.shots, r.seed = k, seed
            r.info["train_subjects"] = sorted(set(subjects))
            out.append(r)
    return out


def summary_table(results: list[Any], compared: list[dict[str, Any]] | None = None) -> str:
    """Markdown table of the headline: each method (and k) with its main metrics, means over seeds.

    One table per protocol (`fmrilm.eval.report.by_protocol`), each saying which test subjects its numbers are
    scored on; numbers of different protocols are never averaged together. For few-shot draws from the test
    part, a row is the mean over seeds of each seed's metric on the test subjects that seed's draw left (the
    zero-shot model and the train-part baselines averaged the same way, on the same remainders). Under the
    whole-test-part table, each single model run minus each baseline on the same subjects: ``compared``, the
    report's `versus` rows, or computed here when not given.
    """
    from fmrilm.eval.report import (
        PROTOCOL_TITLES,
        PROTOCOLS,
        WHOLE_TEST,
        aggregate_seeds,
        by_protocol,
        versus,
    )

    for r in results:
        if not r.metrics:
            r.score()
    ttype = results[0].task_type
    names = ("mae", "pearson_r") if ttype == "regression" else ("balanced_accuracy", "auc", "f1")
    groups = by_protocol(results)
    lines = ["## Summary", ""]
    for protocol, group in groups.items():
        whole = protocol == WHOLE_TEST
        if len(groups) > 1:
            lines += [f"### {PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        lines.append(f"Protocol `{protocol}`: {PROTOCOLS.get(protocol, protocol)}.")
        if whole:
            lines.append(
                "Mean over seeds [95% interval: Student-t over seeds for repeated runs, bootstrap over test "
                "subjects for single runs]; every method is scored on the same test subjects."
            )
        else:
            lines.append(
                "Each row: the mean over seeds of each seed's metric on the test subjects that seed's draw of k "
                "per class left [95% interval: Student-t over seeds; bootstrap over test subjects for one seed]. "
                "Within one k and seed every method is scored on the same subjects; rows of different k are "
                "scored on different subjects, and none of them on the whole test part."
            )
        lines += [
            "",
            f"| method | {'shots' if whole else 'k drawn'} | runs | " + " | ".join(names) + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
        ]
        agg = aggregate_seeds(group)
        order = {m: i for i, m in enumerate(dict.fromkeys(r.method for r in group))}

        def row_order(item: tuple, whole: bool = whole, order: dict = order) -> tuple:
            (_, method, shots), _ = item
            k = -1 if shots is None else shots
            return (order[method], k) if whole else (k, order[method])  # draws: rows of one k together

        for (_, method, shots), v in sorted(agg.items(), key=row_order):
            cells = []
            for m in names:
                if v["n_seeds"] > 1:
                    cells.append(f"{_fmt(v[m]['mean'])} [{_fmt(v[m]['low'])}, {_fmt(v[m]['high'])}]")
                else:
                    single = next(r for r in group if r.method == method and r.shots == shots).metrics[m]
                    cells.append(f"{_fmt(single['value'])} [{_fmt(single['low'])}, {_fmt(single['high'])}]")
            k = "all" if shots is None else str(shots)
            lines.append(f"| {method} | {k} | {v['n_seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
        if whole:  # single runs only: repeated runs are compared per seed in report.md
            if compared is None:
                rows = versus([r for r in group if r.seed is None])
            else:  # the report's own rows (`report.json`'s "versus"): not bootstrapped a second time
                tasks = {r.task for r in group}
                rows = [
                    c
                    for c in compared
                    if c["protocol"] == protocol and c["seed"] is None and c["task"] in tasks
                ]
            lines += _versus_lines(rows, names[:2])
    return "\n".join(lines)


def _versus_lines(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[str]:
    """The summary's lines on each single model run against each baseline on the same subjects (none without
    any): the difference, its paired bootstrap interval, and how often the model is at least as good."""
    from fmrilm.eval.report import versus_text

    if not rows:
        return []
    lines = ["Model minus baseline on the same test subjects [95% paired bootstrap interval] (share of resamples "
             "where the model is at least as good" + ("; a smaller MAE is better" if "mae" in names else "") + "):", ""]  # fmt: skip
    lines += [f"- {versus_text(c, names)}" for c in rows]
    return [*lines, ""]


def _fmt(v: float) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _insert_summary(markdown: Path, summary: str) -> None:
    """Put the summary table right after the report's header block (atomically)."""
    text = markdown.read_text()
    marker = "\n## "
    at = text.find(marker)
    text = text + "\n" + summary if at < 0 else text[: at + 1] + summary + "\n" + text[at + 1 :]
    _write_text(markdown, text)


#: EvalConfig field -> its `fmrilm eval` flag, where the two names differ (see `command_line`)
_FLAG_NAMES = {"batch_size_scoring": "--score-batch-size"}
#: boolean fields set by a flag that turns them off
_OFF_FLAGS = {
    "few_shot_baselines": "--no-few-shot-baselines",
    "tangent_baseline": "--no-tangent",
    "progress": "--no-progress",
}


def command_line(cfg: EvalConfig) -> str:
    """The `fmrilm eval` command that gives exactly ``cfg``: every setting as a flag, defaults included, so
    the run can be repeated even after a default changes (`eval.cli.config_from_args` reads it back)."""
    import shlex

    parts = ["fmrilm", "eval"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _OFF_FLAGS:
            parts += [] if value else [_OFF_FLAGS[f.name]]
            continue
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif value is None:
            continue  # the flag's own default (None) is in force
        elif isinstance(value, (list, tuple)):
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


# ---------------------------------------------------------------------------------------------------- helpers
def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _model_dir(path: str | Path) -> Path:
    from fmrilm.train.stage3 import resolve_model_dir

    return resolve_model_dir(path)


def _check_rows(features: np.ndarray, cohort: Any, name: str) -> None:
    if np.ndim(features) != 2 or len(features) != len(cohort):
        raise FmriInputError(
            f"The precomputed '{name}' features have shape {np.shape(features)}, not one row per scan "
            f"of the cohort's {len(cohort)}",
            fix=f"compute them from this cohort, or pass {name}=None",
        )


def _check_out_dir(out_dir: Path) -> None:
    """The output folder must be new, empty or an earlier report holding nothing else (which is replaced only
    once the new report is complete); fmrilm never deletes files it did not write."""
    from fmrilm.safety import REPORT_OUTPUT, check_output

    check_output(out_dir, REPORT_OUTPUT, overwrite=True)


def _write_report_folder(
    results: list[Any], out_dir: Path, split_file: Path, **kwargs: Any
) -> dict[str, Path]:
    """``report.json``, ``report.md`` (with its summary), ``plots/`` and ``split.json``, all written in a
    folder beside ``out_dir`` and renamed in only when complete, so no half-written report is ever at
    ``out_dir``; an earlier report there is moved aside first and removed last."""
    from fmrilm.eval.report import write_report

    from fmrilm.safety import REPORT_OUTPUT, discard_stage, make_stage, publish

    stage = make_stage(out_dir)
    try:
        draft = stage / "report"
        written = write_report(results, draft, **kwargs)
        compared = json.loads(written["json"].read_text()).get("versus", [])
        _insert_summary(written["markdown"], summary_table(results, compared))
        shutil.copyfile(split_file, draft / SPLIT_FILE)
        publish(draft, out_dir, REPORT_OUTPUT, overwrite=True)
    finally:
        discard_stage(stage)
    paths = {k: out_dir / Path(p).relative_to(draft) for k, p in written.items()}
    paths["split"] = out_dir / SPLIT_FILE
    return paths


#: The file in the work folder that says what its finished runs were computed from.
RESUME_KEY_FILE = "resume_key.json"


def resume_key(cfg: EvalConfig, model_dir: Path) -> dict[str, Any]:
    """What the finished runs depend on: the settings, the model's files (weights, configs, tokenizer), the
    cohort's content, and the task / split files when given as files. Paths alone are not enough: a model
    replaced in the same folder must not be reported with the old one's scores."""
    from fmrilm.safety import cohort_fingerprint, content_hash

    settings = {k: v for k, v in cfg.result_settings().items() if k not in ("model", "cohort")}
    key: dict[str, Any] = {
        "settings": json.loads(json.dumps(settings, default=str)),
        "model_files": content_hash(model_dir, skip_prefixes=("README",)),  # the card is not the model
        "cohort": cohort_fingerprint(cfg.cohort),
    }
    for name in ("task", "split"):
        value = Path(str(getattr(cfg, name)))
        if value.is_file():
            key[f"{name}_file"] = content_hash(value)
    return key


def _why_not_resume(stored: dict[str, Any], key: dict[str, Any]) -> str | None:
    """None when the stored key matches; else what changed, in words."""
    if stored == key:
        return None
    reasons = []
    old, new = stored.get("settings", {}), key["settings"]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        reasons.append("settings changed: " + ", ".join(changed))
    names = {"model_files": "the model's files", "cohort": "the cohort", "task_file": "the task file"}
    names["split_file"] = "the split file"
    for part, words in names.items():
        if stored.get(part) != key.get(part):
            reasons.append(f"{words} changed")
    return "; ".join(reasons) or "its key differs"


def _work_dir(out_dir: Path, cfg: EvalConfig, model_dir: Path) -> Path:
    """``.<out>.eval-work`` beside the output: reused when its content key matches, started afresh otherwise
    (with one line saying why)."""
    work = out_dir.parent / f".{out_dir.name}.eval-work"
    key = resume_key(cfg, model_dir)
    stamp = work / RESUME_KEY_FILE
    if work.exists():
        if stamp.exists():
            try:
                stored = json.loads(stamp.read_text())
            except ValueError:
                stored = {}
            why = _why_not_resume(stored, key) if stored else "its key file is unreadable"
        elif (work / "settings.sha1").exists():
            why = "it was written by an older fmrilm that keyed runs on paths, not content"
        else:
            raise FmriInputError(
                "A folder with the name of eval's work folder exists but was not written by fmrilm eval",
                file=work,
                fix="move it away, or choose another --out",
            )
        if why:
            logger.warning("Not resuming from %s (%s): starting afresh.", work, why)
            shutil.rmtree(work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        _write_json(stamp, key)
    return work


def _cached(work: Path, key: str) -> Any:
    path = work / "results" / f"{key}.json"
    if not path.exists():
        return None
    logger.info("%s: reusing the finished run in %s", key, work)
    return result_from_record(json.loads(path.read_text()))


def _store(work: Path, key: str, result: Any) -> None:
    _write_json(work / "results" / f"{key}.json", result_to_record(result))


def _write_json(path: Path, data: Any) -> None:
    from fmrilm.eval.report import _json_default

    _write_text(path, json.dumps(data, indent=1, default=_json_default))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
