"""Descriptor corpus: one row of text (per family and combined) and one z-feature vector per window of a cohort.

Stage 2 aligns the LLM to brain tokens on this corpus, so it must be reproducible and safe to build on a big
cohort: reference statistics are fitted once (on the training part only when a split is given: fitting them on
test scans would leak the test population into every z value) and saved next to the corpus; scans are processed
in shards, each written atomically, so an interrupted build resumes where it stopped; ``datasets.map`` spreads a
shard over ``num_proc`` workers.

Folder layout::

    OUT/reference.json        the ReferenceStats the z values and texts were computed with
    OUT/corpus.json           build settings, feature names, text columns, skipped scans, row count
    OUT/feature_names.json    the name of every entry of the ``z`` vector
    OUT/shards/shard-NNNNN/   finished shards (removed when the build completes)
    OUT/dataset/              the corpus (``datasets.load_from_disk``), written last

Columns: ``scan_id``, ``subject_id``, ``session_id``, ``window`` (-1 = whole scan), ``unit``, ``text_fc``,
``text_graph``, ``text_gradient``, ``text_ica``, ``text`` (all families), ``z`` (float32 feature vector; a
feature undefined in a window is 0, the population mean). No phenotype and no site is written: join them from
the cohort by ``scan_id`` when a task needs a label.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.cohort import Cohort
from fmrilm.descriptors import FAMILIES, FeatureConfig, ReferenceStats
from fmrilm.errors import FmriInputError

CORPUS_META = "corpus.json"
REFERENCE_FILE = "reference.json"
FEATURE_NAMES_FILE = "feature_names.json"
DATASET_DIR = "dataset"
SHARDS_DIR = "shards"
TEXT_COLUMNS = tuple(f"text_{f}" for f in FAMILIES)
#: Marker row for a scan that could not be described (too short, rejected bad regions): carries the reason.
_SKIP_WINDOW = -2


def build_corpus(
    cohort: Cohort,
    out_dir: str | os.PathLike,
    *,
    reference: ReferenceStats | str | os.PathLike | None = None,
    fit_indices: list[int] | None = None,
    fit_on: str | None = None,
    units: tuple[str, ...] = ("window",),
    num_proc: int = 1,
    seed: int = 0,
    shard_size: int | None = None,
    feature_config: FeatureConfig | None = None,
    signal_config: Any = None,
    max_reference_scans: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the descriptor corpus of ``cohort`` into ``out_dir`` and return the dataset folder.

    ``reference``: fitted statistics (object or JSON path); otherwise they are fitted on the scans at
    ``fit_indices`` (default: all scans; pass the training rows of a split) and saved. ``fit_on`` is a free
    description of those rows (e.g. "split stratified:train") kept in the metadata. Re-running with the same
    arguments resumes: finished shards are kept, the saved reference is reused.

    ``out_dir`` must be new, empty or a corpus folder holding nothing else; ``overwrite`` builds a new corpus
    beside an earlier one and replaces it only once complete (`fmrilm.safety`).
    """
    import datasets

    from fmrilm.progress import progress as show_progress

    out = Path(out_dir)
    units = tuple(units)
    for unit in units:
        if unit not in ("window", "scan"):
            raise FmriInputError(f"Unknown corpus unit '{unit}'", fix="use 'window' and/or 'scan'")
    from fmrilm.safety import CORPUS_OUTPUT, check_run_folder, discard_stage, make_stage, publish

    markers = (REFERENCE_FILE, "build.json", CORPUS_META)
    earlier = check_run_folder(
        out, markers, CORPUS_OUTPUT.name, resume=True, overwrite=overwrite, allowed=CORPUS_OUTPUT.entries
    )
    if earlier and overwrite:  # build the new corpus beside the old one; swap them once it is complete
        stage = make_stage(out)
        try:
            build_corpus(
                cohort, stage, reference=reference, fit_indices=fit_indices, fit_on=fit_on, units=units,
                num_proc=num_proc, seed=seed, shard_size=shard_size, feature_config=feature_config,
                signal_config=signal_config, max_reference_scans=max_reference_scans, progress=progress,
            )  # fmt: skip
            publish(stage, out, CORPUS_OUTPUT, overwrite=True)
        except BaseException:
            discard_stage(stage)
            raise
        return out / DATASET_DIR
    if (out / DATASET_DIR).exists() and (out / CORPUS_META).exists():
        meta = json.loads((out / CORPUS_META).read_text())
        if meta.get("complete"):
            _check_same_build(out, meta, cohort, units, seed)
            return out / DATASET_DIR
    out.mkdir(parents=True, exist_ok=True)

    ref = _reference(
        cohort, out, reference, fit_indices, fit_on, feature_config, signal_config, max_reference_scans, seed,
        progress, num_proc,
    )  # fmt: skip
    names = ref.feature_names
    plan = {
        "cohort": cohort.name,
        "n_scans": len(cohort),
        "scan_ids_sha1": _ids_hash(cohort),
        "units": list(units),
        "seed": int(seed),
        "reference_sha1": _file_hash(out / REFERENCE_FILE),
    }
    plan_path = out / "build.json"
    if plan_path.exists():
        previous = json.loads(plan_path.read_text())
        if previous != plan:
            changed = sorted(k for k in plan if previous.get(k) != plan.get(k))
            raise FmriInputError(
                f"The folder holds part of a corpus built with other settings ({', '.join(changed)} differ)",
                file=out,
                fix="re-run with the same cohort, units, seed and reference, give a new --out folder, or pass "
                "--overwrite to build it afresh",
            )
    else:
        _write_json(plan_path, plan)
    _write_json(out / FEATURE_NAMES_FILE, names)

    shard_size = int(shard_size or max(32, 16 * max(num_proc, 1)))
    n_shards = max(1, int(np.ceil(len(cohort) / shard_size)))
    shard_root = out / SHARDS_DIR
    shard_root.mkdir(exist_ok=True)
    features = _features(len(names))
    done = [i for i in range(n_shards) if (shard_root / _shard_name(i)).exists()]
    resumed = sum(len(range(i * shard_size, min((i + 1) * shard_size, len(cohort)))) for i in done)
    bar = show_progress(total=len(cohort), initial=resumed, desc="corpus", unit="scan", disable=not progress)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar (scans) instead of one per shard, worker and save
    try:
        for i in range(n_shards):
            target = shard_root / _shard_name(i)
            if target.exists():
                continue
            rows = range(i * shard_size, min((i + 1) * shard_size, len(cohort)))
            part = cohort.dataset.select(rows).with_format("numpy")
            result = part.map(
                _describe_batch,
                batched=True,
                batch_size=4,
                remove_columns=part.column_names,
                features=features,
                num_proc=num_proc if num_proc > 1 and len(rows) > 1 else None,
                keep_in_memory=True,
                new_fingerprint=f"corpus-{plan['reference_sha1'][:16]}-{i}",
                fn_kwargs={
                    "reference": ref,
                    "atlas": cohort.atlas,
                    "units": units,
                    "seed": int(seed),
                    "known": ref.fitted_features.subset(part["scan_id"]),
                },
            )
            _save_atomic(result, target)
            bar.update(len(rows))
        bar.close()
        shards = [datasets.load_from_disk(str(shard_root / _shard_name(i))) for i in range(n_shards)]
        full = datasets.concatenate_datasets(shards)
        is_skip = np.asarray(full["window"]) == _SKIP_WINDOW
        skipped = full.select(np.flatnonzero(is_skip))
        corpus = full.select(np.flatnonzero(~is_skip))
        if len(corpus) == 0:
            raise FmriInputError(
                "No scan of the cohort could be described",
                file=out,
                fix="check the scans' length (at least SignalConfig.min_timepoints) and regions",
            )
        _save_atomic(corpus, out / DATASET_DIR)
    finally:
        bar.close()
        if was_enabled:
            datasets.enable_progress_bars()
    meta = {
        **plan,
        "complete": True,
        "n_rows": len(corpus),
        "n_described_scans": len(set(corpus["scan_id"])),
        "families": list(FAMILIES),
        "text_columns": [*TEXT_COLUMNS, "text"],
        "feature_names_file": FEATURE_NAMES_FILE,
        "n_features": len(names),
        "reference_file": REFERENCE_FILE,
        "reference_fit_on": ref.meta.get("fit_on", ref.meta.get("cohort")),
        "reference_n_scans": ref.meta.get("n_scans"),
        "skipped": [
            {"scan_id": s, "reason": r} for s, r in zip(skipped["scan_id"], skipped["text"], strict=True)
        ],
    }
    _write_json(out / CORPUS_META, meta)
    shutil.rmtree(shard_root, ignore_errors=True)
    return out / DATASET_DIR


def load_corpus(directory: str | os.PathLike):
    """``(datasets.Dataset, metadata dict, ReferenceStats)`` of a corpus folder written by :func:`build_corpus`."""
    import datasets

    directory = Path(directory)
    meta_path = directory / CORPUS_META
    if not meta_path.exists() or not (directory / DATASET_DIR).exists():
        raise FmriInputError(
            "Not a finished corpus folder (no corpus.json and dataset/)",
            file=directory,
            fix="build it with `fmrilm corpus build COHORT --out DIR` (re-run it to resume an interrupted build)",
        )
    meta = json.loads(meta_path.read_text())
    meta["feature_names"] = json.loads((directory / FEATURE_NAMES_FILE).read_text())
    return (
        datasets.load_from_disk(str(directory / DATASET_DIR)),
        meta,
        ReferenceStats.load(directory / REFERENCE_FILE),
    )


# ----------------------------------------------------------------------------------------------- the worker
def _describe_batch(
    batch: dict[str, Any], reference: ReferenceStats, atlas, units, seed: int, known: Any = None
) -> dict[str, list]:
    """Rows of every window (and/or whole scan) of a batch of cohort rows; runs in datasets.map workers.
    ``known``: features the reference fit already computed (`FittedFeatures`), used for the same series only."""
    from fmrilm.scan import Scan

    out: dict[str, list] = {k: [] for k in _columns()}
    for i in range(len(batch["scan_id"])):
        bad = batch.get("bad_regions", [None] * len(batch["scan_id"]))[i]
        scan = Scan(
            timeseries=np.asarray(batch["timeseries"][i], dtype=np.float32),
            tr=float(batch["tr"][i]),
            atlas=atlas,
            scan_id=str(batch["scan_id"][i]),
            subject_id=str(batch["subject_id"][i]),
            session_id=str(batch["session_id"][i] if "session_id" in batch else ""),
            flags={"bad_regions": [int(b) for b in bad]} if bad is not None and len(bad) else {},
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # repaired regions are recorded in the cohort, not re-warned
                ts = reference.prepare(scan)
            descriptors = []
            for unit in units:
                found = known.lookup(scan.scan_id, ts, unit) if known else None
                values, index = found or reference.features_from_timeseries(ts, unit)
                descriptors += reference.describe_values(
                    values, index, scan.scan_id, str(scan.subject_id), unit, seed
                )
        except FmriInputError as exc:
            _append(out, scan, _SKIP_WINDOW, "skipped", {f: "" for f in FAMILIES}, str(exc), None)
            continue
        if not descriptors:
            _append(
                out, scan, _SKIP_WINDOW, "skipped", {f: "" for f in FAMILIES}, "no window long enough", None
            )
        for d in descriptors:
            z = np.nan_to_num(d.z, nan=0.0).astype(np.float32)
            _append(out, scan, d.window, "scan" if d.window < 0 else "window", d.texts, d.text, z)
    return out


def _append(out, scan, window, unit, texts, text, z) -> None:
    out["scan_id"].append(scan.scan_id)
    out["subject_id"].append(str(scan.subject_id))
    out["session_id"].append(scan.session_id or "")
    out["window"].append(int(window))
    out["unit"].append(unit)
    for f in FAMILIES:
        out[f"text_{f}"].append(texts.get(f, ""))
    out["text"].append(text)
    out["z"].append(z)


def _columns() -> list[str]:
    return ["scan_id", "subject_id", "session_id", "window", "unit", *TEXT_COLUMNS, "text", "z"]


def _features(n_features: int):
    import datasets

    return datasets.Features(
        {
            "scan_id": datasets.Value("string"),
            "subject_id": datasets.Value("string"),
            "session_id": datasets.Value("string"),
            "window": datasets.Value("int32"),
            "unit": datasets.Value("string"),
            **{c: datasets.Value("string") for c in TEXT_COLUMNS},
            "text": datasets.Value("string"),
            "z": datasets.List(datasets.Value("float32")),
        }
    )


# -------------------------------------------------------------------------------------------------- helpers
def _reference(
    cohort,
    out,
    reference,
    fit_indices,
    fit_on,
    feature_config,
    signal_config,
    max_scans,
    seed,
    progress,
    num_proc=1,
):
    saved = out / REFERENCE_FILE
    if reference is not None:
        ref = reference if isinstance(reference, ReferenceStats) else ReferenceStats.load(reference)
        if saved.exists() and ReferenceStats.load(saved).to_dict() != ref.to_dict():
            raise FmriInputError(
                "The folder holds part of a corpus built with other reference statistics",
                file=out,
                fix="give a new --out folder, the same --reference as before, or --overwrite to build it afresh",
            )
    elif saved.exists():
        ref = ReferenceStats.load(saved)  # resuming: reuse exactly what the finished shards used
    else:
        fit = cohort if fit_indices is None else cohort.select(list(fit_indices), name=f"{cohort.name}-fit")
        ref = ReferenceStats.fit(
            fit,
            signal_config=signal_config,
            feature_config=feature_config,
            max_scans=max_scans,
            seed=seed,
            progress=progress,
            n_jobs=num_proc,
            keep_features=True,  # the corpus describes these scans again: their features are reused
        )
        ref.meta["fit_on"] = fit_on or (
            f"all scans of {cohort.name}" if fit_indices is None else "given rows"
        )
    if ref.atlas.n_regions != cohort.atlas.n_regions:
        raise FmriInputError(
            f"The reference statistics use atlas '{ref.atlas.name}' ({ref.atlas.n_regions} regions) but the "
            f"cohort uses '{cohort.atlas.name}' ({cohort.atlas.n_regions})",
            file=out,
            fix="fit reference statistics on a cohort of the same atlas",
        )
    if not saved.exists():
        ref.save(saved)
    return ref


def _check_same_build(out: Path, meta: dict, cohort: Cohort, units, seed) -> None:
    if (
        meta.get("scan_ids_sha1") != _ids_hash(cohort)
        or meta.get("units") != list(units)
        or (meta.get("seed") != int(seed))
    ):
        raise FmriInputError(
            "The folder already holds a finished corpus built from other scans or settings",
            file=out,
            fix="give a new --out folder, or pass --overwrite to rebuild it (the old corpus is replaced once "
            "the new one is complete)",
        )


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _save_atomic(dataset, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        dataset.save_to_disk(str(tmp / "data"))
        if target.exists():
            shutil.rmtree(target)
        (tmp / "data").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ids_hash(cohort: Cohort) -> str:
    return hashlib.sha1("\n".join(map(str, cohort.dataset["scan_id"])).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
