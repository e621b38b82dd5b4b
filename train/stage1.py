"""Stage 1: train the VQ fMRI tokenizer on one or more cohorts (`fmrilm train tokenizer`).

Cohorts may use different atlases: every cohort is cut into windows once (with the tokenizer's own signal
settings), and each batch is drawn from ONE cohort, since region counts differ; cohorts are drawn in
proportion to their training windows. A seeded share of SUBJECTS of every cohort is held out for validation
(``split.json`` lists them). The batch of step ``s`` and its patch masking are a function of (seed, s) only,
so a resumed run sees exactly the batches the uninterrupted run would have seen.

Descriptor texts (from a `fmrilm corpus build` folder) and a frozen base LLM add the alignment losses;
without a corpus the tokenizer learns reconstruction + commitment only, and the log says so.

Output folder: ``config.json`` + ``model.safetensors`` (load with ``FmriTokenizerModel.from_pretrained(OUT)``),
``metrics.json``, ``train_config.json``, ``split.json``, ``checkpoints/`` (resume) and the text-embedding cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fmrilm.train.common import (
    TRAIN_CONFIG,
    LoopSettings,
    add_loop_arguments,
    loop_kwargs,
    prepare_out_dir,
    torch_threads,
)

from fmrilm.errors import FmriInputError

logger = logging.getLogger("fmrilm.train.stage1")

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.json"
#: Windows with fewer real samples than this share of the window are not used (mostly padding).
MIN_VALID_SHARE = 0.5
#: Columns of a corpus that are identifiers or numbers, never descriptor text.
_NON_TEXT_COLUMNS = {
    "scan_id",
    "subject_id",
    "session_id",
    "site",
    "atlas",
    "window",
    "unit",
    "split",
    "cohort",
    "seed",
}


@dataclass(kw_only=True)
class Stage1Config(LoopSettings):
    """Everything a Stage 1 run depends on; saved as ``train_config.json`` and checked on resume.

    The loop settings (steps, lr, checkpoints, ...) and the resume rule come from `LoopSettings`; Stage 1
    re-declares the defaults it changes (a small model trained from scratch: more, larger steps).
    """

    cohorts: list[str]
    out: str
    corpus: list[str] = field(default_factory=list)
    llm: str | None = None
    align: bool = True
    text_columns: list[str] = field(default_factory=list)
    text_max_length: int = 256
    text_pooling: str = "hidden"
    init_from: str | None = None
    preset: str = "small"
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    quantizer_warmup_steps: int = 100
    connectome: dict[str, Any] = field(default_factory=dict)
    connectome_tokens: int = 32
    val_fraction: float = 0.1
    max_val_windows: int = 1024
    # Stage 1's loop defaults
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    eval_every: int = 250
    save_every: int = 250
    log_every: int = 25


# ------------------------------------------------------------------------------------------------ data
@dataclass
class WindowSet:
    """All windows of one cohort (one atlas), as tensors ready for batching."""

    name: str
    coords: Any  # torch (R, 3)
    windows: Any  # torch (N, L, R)
    mask: Any  # torch (N, L) bool
    scan_ids: np.ndarray
    window_index: np.ndarray
    subjects: np.ndarray
    sites: np.ndarray  # global site index, -1 unknown
    text_index: Any  # torch (N,) long, -1 = no text
    #: torch (N, K): connectome components of each window's scan (the subject loss's targets), or None
    subject_target: Any = None

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def subset(self, rows: np.ndarray) -> WindowSet:
        import torch

        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return WindowSet(
            name=self.name,
            coords=self.coords,
            windows=self.windows[idx],
            mask=self.mask[idx],
            scan_ids=self.scan_ids[rows],
            window_index=self.window_index[rows],
            subjects=self.subjects[rows],
            sites=self.sites[rows],
            text_index=self.text_index[idx],
            subject_target=None if self.subject_target is None else self.subject_target[idx],
        )


def cohort_windows(cohort: Any, config: Any, progress: bool = False) -> dict[str, Any]:
    """Cut every scan of a cohort into the windows of a tokenizer ``config``; drop mostly-padding windows."""
    from fmrilm.signal import scan_windows

    signal_config = config.signal_config()
    scans = range(len(cohort))
    if progress:
        from tqdm.auto import tqdm

        scans = tqdm(scans, desc=f"windows of {cohort.name}", unit="scan")
    wins, masks, scan_ids, widx, subjects, sites = [], [], [], [], [], []
    min_valid = max(config.patch_length, int(MIN_VALID_SHARE * config.window_length))
    for i in scans:
        scan = cohort.scan(i)
        w, m = scan_windows(scan, signal_config)
        keep = m.sum(1) >= min(min_valid, m.sum(1).max())
        for j in np.flatnonzero(keep):
            wins.append(w[j])
            masks.append(m[j])
            scan_ids.append(scan.scan_id)
            widx.append(int(j))
            subjects.append(str(scan.subject_id))
            sites.append(str(scan.site or ""))
    if not wins:
        raise FmriInputError("The cohort has no usable window", file=cohort.name, fix="check its scans")
    return {
        "windows": np.stack(wins).astype(np.float32),
        "mask": np.stack(masks),
        "scan_ids": np.asarray(scan_ids),
        "window_index": np.asarray(widx),
        "subjects": np.asarray(subjects),
        "sites": np.asarray(sites),
    }


def load_window_texts(
    corpus_dir: str | os.PathLike, columns: list[str] | None = None
) -> dict[tuple[str, int], str]:
    """``{(scan_id, window): descriptor text}`` from a corpus folder written by `fmrilm corpus build`.

    ``columns`` chooses the text columns (e.g. ``["text_fc"]`` for one descriptor family), joined in order;
    by default a ``text`` column is used when present, otherwise every string column that is not an
    identifier (one per descriptor family) is joined, in column order. ``window`` -1 (or a missing window column) means a
    whole-scan text, used for every window of that scan that has no text of its own.
    """
    import datasets

    path = Path(corpus_dir)
    candidates = [path, path / "dataset", path / "corpus"]
    dataset = None
    for cand in candidates:
        if (
            (cand / "dataset_info.json").exists()
            or (cand / "state.json").exists()
            or (cand / "dataset_dict.json").exists()
        ):
            try:
                dataset = datasets.load_from_disk(str(cand))
                break
            except Exception as exc:  # noqa: BLE001 - any failure is reported as one clear sentence
                raise FmriInputError(
                    f"Cannot read the descriptor corpus ({exc})",
                    file=cand,
                    fix="rebuild it with `fmrilm corpus build`",
                ) from exc
    if dataset is None:
        raise FmriInputError(
            "Not a descriptor corpus folder (no saved datasets.Dataset found)",
            file=path,
            fix="build it with `fmrilm corpus build COHORT --out DIR`",
        )
    if isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.concatenate_datasets(list(dataset.values()))
    if "scan_id" not in dataset.column_names:
        raise FmriInputError(
            "The corpus has no scan_id column", file=path, fix="rebuild it with `fmrilm corpus build`"
        )
    if columns:
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise FmriInputError(
                f"The corpus has no column {', '.join(missing)}",
                file=path,
                fix=f"choose among {', '.join(c for c in dataset.column_names if c not in _NON_TEXT_COLUMNS)}",
            )
        text_cols = list(columns)
    elif "text" in dataset.column_names:
        text_cols = ["text"]
    else:
        text_cols = [
            name
            for name, feature in dataset.features.items()
            if name not in _NON_TEXT_COLUMNS and getattr(feature, "dtype", None) in ("string", "large_string")
        ]
    if not text_cols:
        raise FmriInputError(
            "The corpus has no text column", file=path, fix="rebuild it with `fmrilm corpus build`"
        )
    columns = ["scan_id", *text_cols] + (["window"] if "window" in dataset.column_names else [])
    table = dataset.select_columns(columns).to_pandas()
    out: dict[tuple[str, int], str] = {}
    for row in table.itertuples(index=False):
        row = row._asdict()
        text = " ".join(str(row[c]).strip() for c in text_cols if row[c] is not None and str(row[c]).strip())
        if not text:
            continue
        window = row.get("window")
        window = -1 if window is None or (isinstance(window, float) and np.isnan(window)) else int(window)
        out[(str(row["scan_id"]), window)] = text
    return out


# ---------------------------------------------------------------------------------------------- training
def _resolve_llm_spec(cfg: Stage1Config) -> str | None:
    return cfg.llm if cfg.llm else None


def _text_embedder(cfg: Stage1Config, out_dir: Path):
    from fmrilm.tokenizer.text_embedding import TextEmbedder

    spec = _resolve_llm_spec(cfg)
    tag = hashlib.sha1(f"{spec or 'default'}|{cfg.text_pooling}".encode()).hexdigest()[:10]
    return TextEmbedder.from_pretrained(
        spec,
        max_length=cfg.text_max_length,
        pooling=cfg.text_pooling,
        cache_path=out_dir / f"text_embeddings-{tag}.safetensors",
    )


def train_tokenizer(cfg: Stage1Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Run Stage 1 and write the trained tokenizer to ``cfg.out``; returns that folder."""
    with torch_threads(cfg.threads):
        return _train(cfg, resume, overwrite)


def _train(cfg: Stage1Config, resume: bool, overwrite: bool = False) -> Path:
    import torch
    from fmrilm.train.common import (
        MetricsLog,
        TrainState,
        load_checkpoint,
        lr_multiplier,
        make_accelerator,
        optimizer_step,
        progress_bar,
        save_checkpoint,
        subject_split,
        write_json,
    )

    from fmrilm.cohort import load_cohort
    from fmrilm.tokenizer import FmriTokenizerConfig, FmriTokenizerModel
    from fmrilm.tokenizer.losses import TokenizerLoss, TokenizerLossConfig

    if not cfg.cohorts:
        raise FmriInputError("No cohort to train on", fix="pass at least one --cohort DIR")
    loss_cfg = TokenizerLossConfig.from_dict(cfg.loss)
    check_subject_loss(cfg, loss_cfg)
    out_dir = Path(cfg.out)
    prepare_out_dir(out_dir, resume, cfg, overwrite=overwrite)
    accelerator = make_accelerator(out_dir, seed=cfg.seed)
    # progress bars: None = automatic (shown on a terminal), False = never; only the main process shows them
    show = accelerator.is_main_process and cfg.progress is not False

    # ---- model config (the model itself is built once the LLM width is known)
    if cfg.init_from:
        model_config = FmriTokenizerConfig.from_pretrained(cfg.init_from)
    else:
        model_config = FmriTokenizerConfig.from_preset(cfg.preset, **cfg.model)

    # ---- data
    cohorts = [load_cohort(c) for c in cfg.cohorts]
    names = [c.name for c in cohorts]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    texts: dict[tuple[str, int], str] = {}
    use_align = bool(cfg.corpus) and cfg.align
    for corpus in cfg.corpus if use_align else []:
        texts.update(load_window_texts(corpus, cfg.text_columns or None))
    if not use_align:
        reason = "no --corpus given" if not cfg.corpus else "alignment switched off"
        logger.info(
            "training with reconstruction + commitment only (%s: no descriptor-text alignment)", reason
        )

    raw = [cohort_windows(c, model_config, progress=show) for c in cohorts]
    connectome, subject_targets = None, None
    if loss_cfg.subject_weight > 0:
        connectome, subject_targets = subject_loss_targets(cohorts, cfg, loss_cfg, show)
    site_names = sorted({f"{n}:{s}" for n, r in zip(names, raw, strict=True) for s in set(r["sites"]) if s})
    site_of = {s: i for i, s in enumerate(site_names)}
    unique_texts: list[str] = []
    text_pos: dict[str, int] = {}
    sets_train, sets_val, split_info = [], [], {}
    for c_index, (name, cohort, r) in enumerate(zip(names, cohorts, raw, strict=True)):
        tidx = np.full(len(r["windows"]), -1, dtype=np.int64)
        if use_align:
            for i, (sid, w) in enumerate(zip(r["scan_ids"], r["window_index"], strict=True)):
                text = texts.get((str(sid), int(w))) or texts.get((str(sid), -1))
                if text is not None:
                    if text not in text_pos:
                        text_pos[text] = len(unique_texts)
                        unique_texts.append(text)
                    tidx[i] = text_pos[text]
        ws = WindowSet(
            name=name,
            coords=torch.as_tensor(cohort.atlas.coords, dtype=torch.float32),
            windows=torch.from_numpy(r["windows"]),
            mask=torch.from_numpy(r["mask"]),
            scan_ids=r["scan_ids"],
            window_index=r["window_index"],
            subjects=r["subjects"],
            sites=np.asarray([site_of.get(f"{name}:{s}", -1) if s else -1 for s in r["sites"]]),
            text_index=torch.from_numpy(tidx),
            subject_target=None
            if subject_targets is None
            else torch.from_numpy(np.stack([subject_targets[c_index][str(sid)] for sid in r["scan_ids"]])),
        )
        is_val = subject_split(ws.subjects, cfg.val_fraction, seed=cfg.seed)
        sets_train.append(ws.subset(np.flatnonzero(~is_val)))
        if is_val.any():
            val_rows = np.flatnonzero(is_val)
            if len(val_rows) > cfg.max_val_windows:
                val_rows = np.sort(
                    np.random.default_rng(cfg.seed).choice(val_rows, cfg.max_val_windows, replace=False)
                )
            sets_val.append(ws.subset(val_rows))
        split_info[name] = {
            "cohort": str(cfg.cohorts[names.index(name)]),
            "atlas": cohort.atlas.name,
            "n_regions": cohort.atlas.n_regions,
            "train_windows": int((~is_val).sum()),
            "val_windows": int(is_val.sum()),
            "val_subjects": sorted(set(ws.subjects[is_val].tolist())),
        }
    if use_align and not unique_texts:
        raise FmriInputError(
            "No window of the cohorts has a descriptor text in the corpus (scan ids do not match)",
            file=cfg.corpus[0],
            fix="build the corpus from the same cohort with `fmrilm corpus build COHORT --out DIR`",
        )

    text_table = None
    if use_align:
        logger.info(
            "embedding %d descriptor texts with the frozen LLM %s",
            len(unique_texts),
            cfg.llm or "SmolLM2-135M-Instruct (default)",
        )
        embedder = _text_embedder(cfg, out_dir)
        text_table = embedder.embed(unique_texts, progress=show)
        if cfg.init_from and model_config.text_embed_dim not in (None, embedder.dim):
            raise FmriInputError(
                f"The initial tokenizer is aligned to a {model_config.text_embed_dim}-wide LLM, not {embedder.dim}",
                file=cfg.init_from,
                fix="use the --llm it was trained with",
            )
        model_config.text_embed_dim = embedder.dim
        del embedder
        logger.info(
            "aligning to %d distinct descriptor texts (LLM width %d)", len(unique_texts), text_table.shape[1]
        )
    if cfg.init_from:
        model = FmriTokenizerModel.from_pretrained(cfg.init_from, config=model_config)
    else:
        model = FmriTokenizerModel(model_config)
    if text_table is not None:
        # centre the LLM text embeddings on the training windows' texts (see FmriTokenizerModel.text_center)
        train_ids = torch.unique(torch.cat([ws.text_index for ws in sets_train]))
        train_ids = train_ids[train_ids >= 0]
        center = text_table[train_ids].mean(0)
        with torch.no_grad():
            model.text_center.copy_(center)
            model.text_scale.fill_(float((text_table[train_ids] - center).norm(dim=1).mean()))
        text_table = text_table - center

    loss_fn = TokenizerLoss(
        loss_cfg,
        model.config.hidden_size,
        text_embed_dim=model.config.text_embed_dim if use_align else None,
        num_sites=len(site_names),
        subject_dim=0 if subject_targets is None else int(next(iter(subject_targets[0].values())).shape[0]),
    )
    params = [p for p in list(model.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
    model, loss_fn, optimizer, scheduler = accelerator.prepare(model, loss_fn, optimizer, scheduler)
    device = accelerator.device

    state = TrainState()
    if resume:
        loaded = load_checkpoint(accelerator, out_dir)
        if loaded is None:
            logger.info("no checkpoint in %s: starting from step 0", out_dir)
        else:
            state = loaded
    if accelerator.is_main_process:
        write_json(out_dir / TRAIN_CONFIG, cfg.to_dict())
        write_json(
            out_dir / SPLIT_FILE, {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "cohorts": split_info}
        )
    metrics = MetricsLog(out_dir / METRICS_FILE, resume=resume, resume_step=state.step)
    metrics.set(
        "setup",
        {
            "alignment": use_align,
            "n_texts": len(unique_texts),
            "sites": site_names,
            "cohorts": split_info,
            "parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
            "subject_targets": 0 if subject_targets is None else loss_fn.subject_head.out_features,
        },
    )

    sizes = np.asarray([len(s) for s in sets_train], dtype=float)
    if sizes.sum() == 0:
        raise FmriInputError(
            "No training window is left after the validation split", fix="lower --val-fraction"
        )
    cohort_p = torch.as_tensor(sizes / sizes.sum())
    text_table_dev = text_table.to(device) if text_table is not None else None
    unwrapped = accelerator.unwrap_model(model)

    def batch_for(step: int):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        c = int(torch.multinomial(cohort_p, 1, generator=gen))
        ws = sets_train[c]
        rows = torch.randint(len(ws), (min(cfg.batch_size, len(ws)),), generator=gen)
        return ws, rows, gen

    # quantizer warm-up: decode continuous latents first, so that the k-means codebook initialisation (on the
    # first quantized batch) clusters latents that already carry the signal; measured on simulated data this
    # raised held-out R² after 300 steps from 0.06 to 0.10
    warmup = min(int(cfg.quantizer_warmup_steps), cfg.steps // 3)
    model.train()
    loss_fn.train()
    start_time, start_step = time.time(), state.step
    running: dict[str, list[float]] = {}
    with progress_bar(
        cfg.steps,
        initial=state.step,
        desc="stage 1 (tokenizer)",
        disable=None if show and cfg.progress is None else not show,
    ) as bar:
        while state.step < cfg.steps:
            ws, rows, gen = batch_for(state.step)
            x = ws.windows[rows].to(device)
            m = ws.mask[rows].to(device)
            coords = ws.coords.to(device)
            out = model(
                x,
                coords,
                m,
                mask_ratio=loss_cfg.mask_ratio,
                generator=gen,
                skip_quantization=state.step < warmup,
            )
            text_emb = text_index = None
            if text_table_dev is not None:
                tid = ws.text_index[rows]
                present = tid[tid >= 0]
                if present.numel():
                    uniq, local = torch.unique(present, return_inverse=True)
                    text_index = torch.full_like(tid, -1)
                    text_index[tid >= 0] = local
                    text_index = text_index.to(device)
                    text_emb = text_table_dev[uniq.to(device)]
            site_index = torch.as_tensor(ws.sites[rows.numpy()], device=device)
            subject_target = None if ws.subject_target is None else ws.subject_target[rows].to(device)
            total, parts = loss_fn(
                out,
                x,
                m,
                align_proj=unwrapped.align_proj,
                text_embeddings=text_emb,
                text_index=text_index,
                site_index=site_index,
                reversal_scale=loss_cfg.gradient_reversal_scale * dann_ramp(state.step, cfg.steps),
                subject_target=subject_target,
            )
            optimizer_step(accelerator, total, params, optimizer, scheduler, cfg.grad_clip)
            state.step += 1
            bar.update(1)
            parts["loss"] = float(total.detach())
            for k, v in parts.items():
                running.setdefault(k, []).append(v)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                avg = {k: float(np.mean(v)) for k, v in running.items()}
                running = {}
                elapsed = time.time() - start_time
                metrics.log(
                    "train",
                    step=state.step,
                    lr=scheduler.get_last_lr()[0],
                    steps_per_s=(state.step - start_step) / max(elapsed, 1e-9),
                    **avg,
                )
                bar.set_postfix(loss=f"{avg['loss']:.3f}", rec=f"{avg['reconstruction']:.3f}")
            if sets_val and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
                val = evaluate(unwrapped, sets_val, text_table, seed=cfg.seed)
                metrics.log("val", step=state.step, **val)
                score = val["r2"]
                if state.best_metric is None or score > state.best_metric:
                    state.best_metric, state.best_step = score, state.step
                logger.info(
                    "step %d: held-out R2 %.3f (masked patches %.3f), codebook usage %.2f, perplexity %.0f",
                    state.step,
                    val["r2"],
                    val.get("r2_masked", float("nan")),
                    val["usage"],
                    val["perplexity"],
                )
            if state.step % cfg.save_every == 0 or state.step == cfg.steps:
                save_checkpoint(accelerator, out_dir, state, keep=cfg.keep_checkpoints)

    if accelerator.is_main_process and cfg.connectome_tokens > 0:
        connectome = connectome if connectome is not None else fit_connectome(cohorts, cfg, show)
        if connectome is not None:
            unwrapped.set_connectome(connectome)
    if accelerator.is_main_process:
        save_tokenizer(unwrapped, out_dir)
        metrics.set(
            "summary", {"step": state.step, "best_r2": state.best_metric, "best_step": state.best_step}
        )
        logger.info("tokenizer written to %s", out_dir)
    accelerator.wait_for_everyone()
    return out_dir


def fit_connectome(cohorts: list[Any], cfg: Stage1Config, progress: bool = False) -> Any:
    """The connectome tokenizer fitted on every scan of the training cohorts (reference coordinates: the
    atlas with the most regions). Components shrink to what the scan count supports, with a log line saying so;
    with fewer scans than tokens there are none (a warning says so): a population of a handful of scans
    has no reference geometry worth tokenizing."""
    fitted = _fit_connectome(cohorts, cfg, progress)
    return None if fitted is None else fitted[0]


def check_subject_loss(cfg: Stage1Config, loss_cfg: Any) -> None:
    """The subject loss's settings, refused before anything is written: it needs connectome tokens (their
    components are its targets) and at least one component to predict."""
    if loss_cfg.subject_weight <= 0:
        return
    if cfg.connectome_tokens <= 0:
        raise FmriInputError(
            "--subject-weight needs connectome tokens: their components are the subject loss's targets",
            fix="set --connectome-tokens above 0, or --subject-weight 0",
        )
    if int(loss_cfg.subject_components) < 1:
        raise FmriInputError(
            f"subject_components is {loss_cfg.subject_components}: the subject loss needs at least one target",
            fix="give --subject-components 1 or more (default 32)",
        )


def subject_loss_targets(
    cohorts: list[Any], cfg: Stage1Config, loss_cfg: Any, progress: bool = False
) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """The connectome tokenizer (fitted before the window tokenizer, the same fit Stage 1 saves) and, per
    cohort, each scan's leading ``loss_cfg.subject_components`` components: what the subject loss asks every
    window of that scan to predict (settings already checked by `check_subject_loss`)."""
    fitted = _fit_connectome(cohorts, cfg, progress)
    if fitted is None:
        raise FmriInputError(
            f"--subject-weight needs connectome tokens, and {sum(len(c) for c in cohorts)} training scans are "
            f"too few for {cfg.connectome_tokens} of them",
            fix="lower --connectome-tokens, train on more scans, or set --subject-weight 0",
        )
    connectome, components = fitted
    k = min(int(loss_cfg.subject_components), components.shape[1])
    targets, start = [], 0
    for cohort in cohorts:
        ids = [str(s) for s in cohort.dataset["scan_id"]]
        targets.append(dict(zip(ids, components[start : start + len(ids), :k], strict=True)))
        start += len(ids)
    logger.info("subject loss: each window predicts its scan's %d leading connectome components", k)
    return connectome, targets


def _fit_connectome(cohorts: list[Any], cfg: Stage1Config, progress: bool = False) -> Any:
    """`fit_connectome`, with the fitted scans' components (cohort by cohort, scan by scan), or None."""
    from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

    scans = [c.scan(i) for c in cohorts for i in range(len(c))]
    settings = {"num_tokens": cfg.connectome_tokens, "seed": cfg.seed, **cfg.connectome}
    config = ConnectomeConfig(**settings)
    room = config.components_supported(len(scans))
    if room < config.components:
        if room < config.num_tokens:
            logger.warning(
                "no connectome tokens: %d training scans are too few for %d tokens (lower "
                "--connectome-tokens, or train on more scans)",
                len(scans),
                config.num_tokens,
            )
            return None
        logger.info("connectome tokens: %d components (%d scans support no more)", room, len(scans))
        config = ConnectomeConfig(**{**settings, "components": room})
    logger.info(
        "fitting connectome tokens on %d scans: %d tokens x %d components, %d residual levels",
        len(scans),
        config.num_tokens,
        config.group_dim,
        config.num_levels,
    )
    reference = max(cohorts, key=lambda c: c.atlas.n_regions).atlas  # the finest atlas keeps the most
    logger.info("connectome reference regions: %s (%d)", reference.name, reference.n_regions)
    return ConnectomeTokenizer.fit_transform(
        scans, config, reference_coords=reference.coords, progress=progress
    )


def dann_ramp(step: int, total: int) -> float:
    """Gradient-reversal strength from 0 to 1 over training, ``2 / (1 + exp(-10 p)) - 1`` (Ganin et al., 2016)."""
    import math

    return 2.0 / (1.0 + math.exp(-10.0 * step / max(1, total))) - 1.0


def save_tokenizer(model: Any, out_dir: Path) -> None:
    """``save_pretrained`` into a temporary folder, then move its files into ``out_dir`` (config last)."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp-", dir=out_dir))
    try:
        model.save_pretrained(tmp)
        files = sorted(tmp.iterdir(), key=lambda p: p.name == "config.json")
        for f in files:
            target = out_dir / f.name
            if f.is_dir() and target.is_dir():  # a folder written by an earlier run of this command
                old = out_dir / f".{f.name}.old"
                os.replace(target, old)
                os.replace(f, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def evaluate(model: Any, sets: list[WindowSet], text_table: Any = None, seed: int = 0) -> dict[str, float]:
    """Held-out metrics pooled over cohorts: R² (all / masked patches), codebook use, retrieval."""
    import torch

    from fmrilm.tokenizer.metrics import code_usage, reconstruction_r2, retrieval_accuracy

    device = model.device
    n_total, r2, r2m, codes_all, brains, text_ids = 0, 0.0, 0.0, [], [], []
    for ws in sets:
        x, m, c = ws.windows.to(device), ws.mask.to(device), ws.coords.to(device)
        res = reconstruction_r2(model, x, m, c, seed=seed)
        n = len(ws)
        r2 += res["r2"] * n
        r2m += res["r2_masked"] * n
        n_total += n
        codes_all.append(model.encode(x, c, m).cpu())
        if text_table is not None and model.align_proj is not None:
            has = ws.text_index >= 0
            if has.any():
                with torch.no_grad():
                    pooled = model.embed(x[has.to(device)], c, m[has.to(device)])
                    brains.append(model.align_proj(pooled).cpu())
                text_ids.append(ws.text_index[has])
    result = {"r2": r2 / n_total, "r2_masked": r2m / n_total}
    result.update(code_usage(torch.cat(codes_all), model.config.codebook_size))
    if brains:
        ids = torch.cat(text_ids)
        uniq, target = torch.unique(ids, return_inverse=True)
        ret = retrieval_accuracy(torch.cat(brains), text_table[uniq], target)
        result.update({f"retrieval_{k}": v for k, v in ret.items()})
    return result


# ------------------------------------------------------------------------------------------------------ CLI
#: Loss settings with a flag of their own (``--mask-ratio`` ...), defaulting to `TokenizerLossConfig`'s.
_LOSS_FLAGS = (
    "reconstruction_weight",
    "mask_ratio",
    "commitment_weight",
    "alignment_weight",
    "adversarial_weight",
    "site_weight",
    "subject_weight",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fmrilm.safety import nonnegative_float, nonnegative_int, positive_int, probability
    from fmrilm.tokenizer.losses import TokenizerLossConfig

    defaults = TokenizerLossConfig()
    p = parser
    p.add_argument(
        "--cohort", action="append", required=True, metavar="DIR", help="cohort folder (repeatable)"
    )
    p.add_argument(
        "--corpus", action="append", default=[], metavar="DIR", help="descriptor corpus (repeatable)"
    )
    p.add_argument(
        "--llm", default=None, help="base LLM for text embeddings: hub id, folder or .gguf (default: SmolLM2)"
    )
    p.add_argument(
        "--no-align", action="store_true", help="ignore the corpus: reconstruction + commitment only"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (tokenizer, metrics, checkpoints)"
    )
    p.add_argument("--init-from", default=None, metavar="DIR", help="start from a saved tokenizer")
    p.add_argument("--preset", default="small", choices=["tiny", "small", "base", "large"])
    p.add_argument("--quantizer", choices=["vq", "fsq"], default=None)
    p.add_argument("--codebook-size", type=positive_int, default=None)
    p.add_argument("--num-latents", type=positive_int, default=None)
    p.add_argument("--hidden-size", type=positive_int, default=None)
    add_loop_arguments(p, Stage1Config)
    p.add_argument(
        "--quantizer-warmup-steps",
        type=nonnegative_int,
        default=100,
        help="first steps decode continuous latents (at most a third of --steps)",
    )
    p.add_argument(
        "--val-fraction",
        type=probability,
        default=0.1,
        help="share of subjects held out per cohort (0: none)",
    )
    p.add_argument(
        "--connectome-tokens",
        type=nonnegative_int,
        default=Stage1Config.connectome_tokens,
        help="scan-level connectome tokens per fMRI part (tangent FC, fitted on the training cohorts); 0: none",
    )
    p.add_argument(
        "--connectome-components",
        type=positive_int,
        default=1024,
        help="the most tangent-FC PCA components the connectome tokens and the scan summary carry (a multiple "
        "of --connectome-tokens; a fit keeps as many as its training scans support, up to this)",
    )
    p.add_argument("--connectome-levels", type=positive_int, default=4, help="residual quantizer levels")
    p.add_argument(
        "--connectome-codebook-size", type=positive_int, default=256, help="entries of the shared codebook"
    )
    for name in _LOSS_FLAGS:
        kind = probability if name == "mask_ratio" else nonnegative_float
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    p.add_argument(
        "--subject-components",
        type=positive_int,
        default=defaults.subject_components,
        help="leading connectome components each window predicts under --subject-weight (default "
        '%(default)s); on ABIDE\'s 48-timepoint windows this did not train (BENCHMARKS.md, "Tokenizer")',
    )
    p.add_argument(
        "--text-columns",
        default=None,
        help="comma-separated corpus text columns to align to (e.g. text_fc); default: the combined text",
    )
    p.add_argument("--text-max-length", type=positive_int, default=256, help="LLM tokens per descriptor text")
    p.add_argument(
        "--text-pooling",
        choices=("hidden", "input"),
        default="hidden",
        help="descriptor embedding: mean of the LLM's last hidden states (paper; slow on CPU) or of its input "
        "token embeddings (no transformer pass; seconds on CPU)",
    )


def config_from_args(args: argparse.Namespace) -> Stage1Config:
    model = {
        k: v
        for k, v in {
            "quantizer": args.quantizer,
            "codebook_size": args.codebook_size,
            "num_latents": args.num_latents,
            "hidden_size": args.hidden_size,
        }.items()
        if v is not None
    }
    loss = {k: getattr(args, k) for k in _LOSS_FLAGS} | {"subject_components": args.subject_components}
    connectome = {
        "components": args.connectome_components,
        "num_levels": args.connectome_levels,
        "codebook_size": args.connectome_codebook_size,
    }
    return Stage1Config(
        connectome_tokens=args.connectome_tokens,
        connectome=connectome,
        cohorts=[str(c) for c in args.cohort],
        out=str(args.out),
        corpus=[str(c) for c in args.corpus],
        llm=args.llm,
        align=not args.no_align,
        text_columns=[c.strip() for c in args.text_columns.split(",")] if args.text_columns else [],
        text_max_length=args.text_max_length,
        text_pooling=args.text_pooling,
        init_from=args.init_from,
        preset=args.preset,
        model=model,
        loss=loss,
        quantizer_warmup_steps=args.quantizer_warmup_steps,
        val_fraction=args.val_fraction,
        **loop_kwargs(args),
    )


def run(args: argparse.Namespace) -> int:
    from fmrilm.train.common import setup_logging

    setup_logging()
    out = train_tokenizer(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    summary = json.loads((out / METRICS_FILE).read_text()).get("summary", {})
    print(f"tokenizer written to {out} (best held-out R2 {summary.get('best_r2')})")
    return 0
