"""Network discovery: group every region of an atlas into K networks from the model alone (no network labels).

`discover_networks(model, scans, n_networks=K)` (``FmriLM.networks``) measures how alike each pair of regions
is *to the model*, averages that similarity over the scans, and cuts the regions into K groups by spectral
clustering. The atlas's own network labels are never read; `compare_networks` scores a result against them
afterwards. Three ways to ask the model (``method=``):

- ``"llm"`` (default for an `FmriLM`): each region is silenced in turn (`fmrilm.perturb`'s ``"silence"``: its
  own signal replaced by noise of equal variance) and the LLM's scan embedding (`FmriLM.embed`: last hidden state
  over the brain tokens) is read again. A region's *response* is how the embedding moved; regions whose silencing
  moves it the same way belong together. One LLM forward per region and scan, so it is the slow one.
- ``"connectome"``: the same perturbations, read at the connectome tokenizer's continuous values (the
  tangent-FC components the connectome tokens and soft tokens carry, before the LLM). No LLM run; needs a model
  (or Stage-1 tokenizer) with connectome tokens.
- ``"encoder"``: the fMRI tokenizer's encoder output for each region (its patch tokens in every window, after the
  self-attention layers); each region's tokens minus their mean over the scan (what stays is how the region's
  representation changes over time), and regions whose representations change together belong together.

Responses are centred over regions (the part every silencing shares is removed) and compared by cosine; the
similarities of the scans are averaged, kept positive, sparsified to each region's nearest tenth and clustered
with scikit-learn's `SpectralClustering` (``assign_labels="cluster_qr"``: no random restarts). `fc_networks` does
the same on the mean Fisher-z FC of the scans: the baseline any model-based result should be read next to.

Region order changes nothing: scans are put in one canonical order (MNI x, then y, then z, then label) before
anything is computed (the silencing noise is seeded by that order), and networks are numbered 1..K by their first
region in it; the result is returned in the scan's own order. Regions that carry no signal in a scan (constant,
all-zero or non-finite) are left out of that scan's similarities; a region without signal in every scan takes the
network of the nearest region (MNI distance) that has one, and is marked ``usable=False``.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError

METHODS = ("llm", "connectome", "encoder")
#: Each region keeps its similarities to this share of the others (its nearest), at least `MIN_NEIGHBOURS`.
NEIGHBOUR_SHARE = 0.1
MIN_NEIGHBOURS = 3


# ------------------------------------------------------------------------------------------------ input
def check_n_networks(n_networks: Any, n_regions: int, *, usable: int | None = None) -> int:
    """``n_networks`` as an int, or one clear error (K must be a whole number from 2 to the number of regions)."""
    ok = isinstance(n_networks, (int, np.integer)) and not isinstance(n_networks, bool)
    if not ok and isinstance(n_networks, str) and n_networks.strip().isdigit():
        n_networks, ok = int(n_networks), True
    if not ok:
        raise FmriInputError(
            f"n_networks must be a whole number, got {n_networks!r}", fix="pass e.g. n_networks=7"
        )
    k = int(n_networks)
    if k < 2:
        raise FmriInputError(
            f"n_networks={k} cannot split regions into networks (it needs at least 2)",
            fix="pass n_networks between 2 and the number of regions",
        )
    if k > n_regions:
        raise FmriInputError(
            f"n_networks={k} is more than the atlas's {n_regions} regions",
            fix=f"pass n_networks between 2 and {n_regions}",
        )
    if usable is not None and k > usable:
        raise FmriInputError(
            f"n_networks={k} is more than the {usable} regions that carry signal in these scans",
            fix=f"pass n_networks between 2 and {usable}",
        )
    return k


def check_method(method: Any, model: Any) -> str:
    """The method to use (``None``: "llm" for an `FmriLM`, else "connectome" when there are connectome tokens,
    else "encoder"), or one clear error naming the known methods."""
    is_lm = hasattr(model, "processor") and hasattr(model, "llm")
    tokenizer = _fmri_tokenizer(model)
    if method is None:
        if is_lm:
            return "llm"
        return "connectome" if getattr(tokenizer, "connectome", None) is not None else "encoder"
    name = check_method_name(method, tokenizer_only=not is_lm)
    if name == "connectome" and getattr(tokenizer, "connectome", None) is None:
        raise FmriInputError(
            "method='connectome' needs connectome tokens, and this model has none",
            fix="use method='encoder' (or 'llm'), or a model trained with --connectome-tokens",
        )
    if name == "connectome" and is_lm and not model.processor.config.connectome_tokens:
        raise FmriInputError(
            "method='connectome' needs connectome tokens, and this model reads none",
            fix="use method='encoder' or 'llm'",
        )
    if tokenizer is None:
        raise FmriInputError(
            "This model has no fMRI tokenizer, so it cannot read scans",
            fix="load the model with its fmri_tokenizer subfolder",
        )
    return name


def check_method_name(method: Any, *, tokenizer_only: bool = False) -> str:
    """``method`` as one of `METHODS`, or one clear error (naming the closest one)."""
    name = str(method).strip().lower()
    if name not in METHODS:
        near = difflib.get_close_matches(name, METHODS, n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise FmriInputError(
            f"Unknown method '{method}' (method=){hint}", fix=f"use one of {', '.join(METHODS)}"
        )
    if name == "llm" and tokenizer_only:
        raise FmriInputError(
            "method='llm' reads the LLM, but an fMRI tokenizer alone was given",
            fix="pass an FmriLM, or method='connectome' / 'encoder'",
        )
    return name


def _fmri_tokenizer(model: Any) -> Any:
    if hasattr(model, "processor"):
        return getattr(model, "fmri_tokenizer", None) or getattr(model.processor, "fmri_tokenizer", None)
    return model if hasattr(model, "encode_latents") else None


def resolve_scans(scan_or_cohort: Any, model: Any = None, *, max_scans: int | None = None, seed: int = 0):
    """A list of scans from a `Scan`, a scan file, a cohort (object or folder), or a list of scans / files.

    ``max_scans`` keeps a seeded choice of that many (in their original order). All scans must share one atlas.
    """
    from fmrilm.chat import load_chat_scan

    source = scan_or_cohort
    if hasattr(source, "timeseries"):
        items: list[Any] = [source]
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            from fmrilm.cohort import load_cohort

            source = load_cohort(path)
            items = list(range(len(source)))
        else:
            items = [load_chat_scan(path, model=model)]
    elif hasattr(source, "scan") and hasattr(source, "dataset"):
        items = list(range(len(source)))
    elif isinstance(source, (list, tuple)):
        items = list(source)
    else:
        raise FmriInputError(
            f"Cannot find networks in {type(source).__name__}: it needs scans",
            fix="pass a Scan, a list of scans, a cohort (fmrilm.load_cohort) or a cohort folder",
        )
    if not items:
        raise FmriInputError("No scans were given", fix="pass one or more scans, or a non-empty cohort")
    if max_scans is not None:
        if isinstance(max_scans, bool) or not isinstance(max_scans, (int, np.integer)) or max_scans < 1:
            raise FmriInputError(
                f"max_scans must be a whole number >= 1, got {max_scans!r}", fix="pass e.g. 16"
            )
        if len(items) > max_scans:
            keep = np.sort(np.random.default_rng(seed).choice(len(items), int(max_scans), replace=False))
            items = [items[i] for i in keep]
    scans = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not hasattr(item, "timeseries"):
            scans.append(source.scan(int(item)))
        elif isinstance(item, (str, os.PathLike)):
            scans.append(load_chat_scan(item, model=model))
        elif hasattr(item, "timeseries"):
            scans.append(item)
        else:
            raise FmriInputError(
                f"Cannot find networks in a list holding {type(item).__name__}",
                fix="pass Scans or scan files",
            )
    first = scans[0]
    if first.atlas is None:
        raise FmriInputError(
            "Network discovery needs the scans' atlas (region names and MNI coordinates)",
            subject=first.subject_id,
            file=first.source,
            fix="load the scans with their atlas (load_scan(..., atlas=...) or --atlas)",
        )
    for scan in scans:
        if (
            scan.atlas is None
            or scan.atlas.n_regions != first.atlas.n_regions
            or scan.n_regions != len(first.atlas.labels)
        ):
            raise FmriInputError(
                f"Scan '{scan.scan_id}' does not have the regions of scan '{first.scan_id}' "
                f"({scan.n_regions} vs {first.atlas.n_regions})",
                subject=scan.subject_id,
                file=scan.source,
                fix="find networks in scans of one atlas at a time",
            )
        if not np.allclose(scan.atlas.coords, first.atlas.coords, atol=1e-3):
            raise FmriInputError(
                f"Scan '{scan.scan_id}' has regions at other MNI coordinates than scan '{first.scan_id}'",
                subject=scan.subject_id,
                file=scan.source,
                fix="find networks in scans of one atlas (with one region order) at a time",
            )
    return scans


# ------------------------------------------------------------------------------------------ region order
def canonical_order(atlas: Any) -> np.ndarray:
    """Indices that put regions in a canonical order: MNI x, then y, then z (to 0.001 mm), then label."""
    coords = np.round(np.asarray(atlas.coords, dtype=np.float64), 3)
    labels = np.asarray(atlas.labels, dtype=str)
    return np.lexsort((labels, coords[:, 2], coords[:, 1], coords[:, 0]))


def reorder(scan: Any, order: np.ndarray) -> Any:
    """``scan`` with its regions (time series, atlas, recorded bad regions) in ``order``."""
    where = np.empty(len(order), dtype=int)
    where[order] = np.arange(len(order))
    flags = dict(scan.flags)
    if flags.get("bad_regions"):
        flags["bad_regions"] = sorted(int(where[i]) for i in flags["bad_regions"])
    return replace(scan, timeseries=scan.timeseries[:, order], atlas=scan.atlas.subset(order), flags=flags)


def number_by_first_region(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0..K-1 by the position of their first member (the same partition, a canonical naming)."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    rank = {int(labels[i]): n for n, i in enumerate(sorted(first))}
    return np.asarray([rank[int(v)] for v in labels], dtype=int)


# --------------------------------------------------------------------------------------------- clustering
def cluster_similarity(similarity: np.ndarray, n_networks: int, *, seed: int = 0) -> np.ndarray:
    """Spectral clustering of a region x region similarity (cosine / correlation scale): labels 0..K-1.

    Negative similarities are set to 0, each region keeps its similarities to its nearest ``NEIGHBOUR_SHARE``
    of the others (made symmetric), and a tiny floor keeps the graph connected.
    """
    from sklearn.cluster import SpectralClustering

    s = np.array(similarity, dtype=np.float64, copy=True)
    n = len(s)
    if n_networks >= n:
        return np.arange(n)
    s = np.nan_to_num(s, nan=0.0)
    s = 0.5 * (s + s.T)
    np.fill_diagonal(s, 0.0)
    affinity = np.clip(s, 0.0, None)
    m = min(n - 1, max(MIN_NEIGHBOURS, int(round(NEIGHBOUR_SHARE * n))))
    nearest = np.argsort(-s, axis=1, kind="stable")[:, :m]
    keep = np.zeros_like(affinity, dtype=bool)
    keep[np.arange(n)[:, None], nearest] = True
    affinity = np.where(keep | keep.T, affinity, 0.0) + 1e-6
    np.fill_diagonal(affinity, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected": the floor connects it
        labels = SpectralClustering(
            n_clusters=int(n_networks), affinity="precomputed", assign_labels="cluster_qr", random_state=seed
        ).fit_predict(affinity)
    return number_by_first_region(labels)


def _cosine(responses: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows after removing their mean over rows (what every row shares)."""
    x = np.asarray(responses, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 1e-12, norm, 1.0)
    return x @ x.T


def _full(sim: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n, n), np.nan)
    out[np.ix_(rows, rows)] = sim
    return out


# ---------------------------------------------------------------------------------------- similarities
def _usable(scan: Any) -> np.ndarray:
    from fmrilm.perturb import bad_regions

    bad = bad_regions(scan)
    return np.asarray([i for i in range(scan.n_regions) if i not in bad], dtype=int)


def _silenced(scan: Any, regions: np.ndarray, seed: int) -> list[Any]:
    from fmrilm.perturb import perturb_scan

    return [perturb_scan(scan, change="silence", seed=seed, _indices=np.asarray([r])) for r in regions]


def response_similarity(
    model: Any, scan: Any, method: str, *, seed: int = 0, batch_size: int = 8
) -> np.ndarray:
    """One scan's region x region similarity for ``method`` (NaN rows for regions without signal)."""
    from fmrilm.signal import BadRegionWarning

    n = scan.n_regions
    usable = _usable(scan)
    if len(usable) < 2:
        return np.full((n, n), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRegionWarning)
        if method == "encoder":
            return _encoder_similarity(_fmri_tokenizer(model), scan, usable)
        if method == "connectome":
            tok = _fmri_tokenizer(model).connectome
            base = tok.continuous(scan)[0]
            changed = tok.continuous(_silenced(scan, usable, seed))
            return _full(_cosine(changed - base[None]), usable, n)
        from fmrilm.model.embedding import embed_batch

        step = max(1, int(batch_size))
        base = embed_batch(model, [scan])[0]
        out = []
        for start in range(0, len(usable), step):
            out.extend(embed_batch(model, _silenced(scan, usable[start : start + step], seed)))
        return _full(_cosine(np.stack(out) - base[None]), usable, n)


def _encoder_similarity(tokenizer: Any, scan: Any, usable: np.ndarray) -> np.ndarray:
    """Cosine of the regions' encoder tokens over the scan, each region's mean over windows and patches removed."""
    import torch

    from fmrilm.model.processing import valid_windows

    cfg = tokenizer.config
    windows, mask = tokenizer.windows(scan)
    keep = valid_windows(mask, cfg.window_length, cfg.patch_length)
    windows, mask = windows[keep], mask[keep]
    captured: list[torch.Tensor] = []
    hook = tokenizer.encoder_norm.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with torch.no_grad(), tokenizer._eval_mode():
            coords = tokenizer._coords_tensor(scan)
            for start in range(0, len(windows), 16):
                w = torch.as_tensor(windows[start : start + 16], dtype=torch.float32, device=tokenizer.device)
                m = torch.as_tensor(mask[start : start + 16], dtype=torch.bool, device=tokenizer.device)
                tokenizer.encode_latents(w, coords, m)
    finally:
        hook.remove()
    tokens = torch.cat(captured).float().cpu().numpy()  # (W, R * P, D)
    n_windows, n = len(tokens), scan.n_regions
    tokens = tokens.reshape(n_windows, n, cfg.num_patches, -1)[:, usable]  # (W, R', P, D)
    tokens = tokens - tokens.mean(axis=(0, 2), keepdims=True)  # what changes over the scan
    features = tokens.transpose(1, 0, 2, 3).reshape(len(usable), -1)
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    features = features / np.where(norm > 1e-12, norm, 1.0)
    return _full(features @ features.T, usable, n)


def fc_similarity(scan: Any) -> np.ndarray:
    """Pearson correlation of the cleaned scan (detrended, z-scored at its own TR); NaN for bad regions."""
    from fmrilm.descriptors.connectivity import correlation
    from fmrilm.signal import BadRegionWarning, SignalConfig, preprocess

    usable = _usable(scan)
    config = SignalConfig(
        target_tr=None, detrend=True, standardize=True, bad_regions="repair", min_timepoints=10
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRegionWarning)
        clean = preprocess(scan, config)
    corr = correlation(clean.timeseries[:, usable])
    return _full(corr, usable, scan.n_regions)


def mean_similarity(per_scan: Sequence[np.ndarray], fisher: bool = False) -> np.ndarray:
    """Average of per-scan similarities over the scans where both regions have signal (Fisher z for FC)."""
    stack = np.stack(per_scan)
    if fisher:
        stack = np.arctanh(np.clip(stack, -0.999999, 0.999999))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pairs stay NaN
        mean = np.nanmean(stack, axis=0)
    return np.tanh(mean) if fisher else mean


# ------------------------------------------------------------------------------------------------ results
def _assign(
    similarity: np.ndarray, scans_c: list[Any], n_networks: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels for every region (canonical order) and which regions had signal somewhere."""
    n = len(similarity)
    has = np.isfinite(similarity).sum(axis=1) > 1
    rows = np.flatnonzero(has)
    check_n_networks(n_networks, n, usable=len(rows))
    labels = np.full(n, -1)
    labels[rows] = cluster_similarity(similarity[np.ix_(rows, rows)], n_networks, seed=seed)
    missing = np.flatnonzero(~has)
    if len(missing):  # regions silent in every scan: the network of the nearest region with signal
        coords = np.asarray(scans_c[0].atlas.coords, dtype=np.float64)
        d = ((coords[missing][:, None] - coords[rows][None]) ** 2).sum(-1)
        labels[missing] = labels[rows[np.argmin(d, axis=1)]]
    return number_by_first_region(labels), has


def _frame(
    scans: list[Any], order: np.ndarray, labels_c: np.ndarray, has_c: np.ndarray, sim_c: np.ndarray, **info
):
    import pandas as pd

    atlas = scans[0].atlas
    labels = np.empty(len(order), dtype=int)
    labels[order] = labels_c
    usable = np.empty(len(order), dtype=bool)
    usable[order] = has_c
    where = np.empty(len(order), dtype=int)
    where[order] = np.arange(len(order))
    coords = np.asarray(atlas.coords, dtype=float)
    frame = pd.DataFrame(
        {
            "region": atlas.labels,
            "x": coords[:, 0],
            "y": coords[:, 1],
            "z": coords[:, 2],
            "network": labels + 1,
            "usable": usable,
            "atlas_network": atlas.networks,
        }
    )
    frame.attrs.update(
        similarity=sim_c[np.ix_(where, where)],
        scan_ids=[s.scan_id for s in scans],
        n_scans=len(scans),
        **info,
    )
    return frame


def discover_networks(
    model: Any,
    scan_or_cohort: Any,
    n_networks: int = 7,
    *,
    method: str | None = None,
    max_scans: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
):
    """Assign every region to one of ``n_networks`` networks from the model alone (see the module docstring).

    ``model`` is an `FmriLM` or a (Stage-1) `FmriTokenizerModel`; ``scan_or_cohort`` a `Scan`, a scan file, a
    list of them, a cohort or a cohort folder (``max_scans``: a seeded choice of that many). Returns a DataFrame
    in the scans' region order: ``region, x, y, z, network`` (1..K), ``usable`` (False: no signal in any scan,
    network of the nearest region) and ``atlas_network`` (the atlas's label, never used, for comparison:
    `compare_networks`). ``frame.attrs``: ``method``, ``n_networks``, ``n_scans``, ``scan_ids``, ``similarity``
    (region x region, the scans' region order).
    """
    method = check_method(method, model)
    scans = resolve_scans(scan_or_cohort, model, max_scans=max_scans, seed=seed)
    n = scans[0].n_regions
    check_n_networks(n_networks, n)
    order = canonical_order(scans[0].atlas)
    scans_c = [reorder(s, order) for s in scans]
    items = scans_c
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(scans_c, desc=f"networks ({method})", unit="scan")
    per_scan = [response_similarity(model, s, method, seed=seed, batch_size=batch_size) for s in items]
    sim = mean_similarity(per_scan)
    labels, has = _assign(sim, scans_c, int(n_networks), seed)
    return _frame(scans, order, labels, has, sim, method=method, n_networks=int(n_networks), seed=int(seed))


def fc_networks(scan_or_cohort: Any, n_networks: int = 7, *, max_scans: int | None = None, seed: int = 0):
    """The baseline: the same clustering on the scans' mean Fisher-z FC (same columns as `discover_networks`)."""
    scans = resolve_scans(scan_or_cohort, max_scans=max_scans, seed=seed)
    n = scans[0].n_regions
    check_n_networks(n_networks, n)
    order = canonical_order(scans[0].atlas)
    scans_c = [reorder(s, order) for s in scans]
    sim = mean_similarity([fc_similarity(s) for s in scans_c], fisher=True)
    labels, has = _assign(sim, scans_c, int(n_networks), seed)
    return _frame(scans, order, labels, has, sim, method="fc", n_networks=int(n_networks), seed=int(seed))


# ------------------------------------------------------------------------------------------------ scoring
def compare_networks(
    found: Any, truth: Any = None, *, exclude: Sequence[str] = ("unassigned",)
) -> dict[str, Any]:
    """Agreement of discovered networks with reference labels: adjusted Rand index and accuracy after the
    best one-to-one matching of networks (Hungarian, scipy ``linear_sum_assignment``).

    ``found`` is a result of `discover_networks` / `fc_networks` (its ``atlas_network`` column is the default
    ``truth``) or a label sequence; regions whose reference label is in ``exclude`` are left out.
    Returns ``ari``, ``accuracy``, ``n_regions`` (scored), ``n_reference`` (networks) and ``matches``:
    ``{found network: (reference network, shared regions)}``.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score

    if truth is None:
        if not hasattr(found, "columns"):
            raise FmriInputError("compare_networks needs reference labels", fix="pass truth=[...] per region")
        truth = found["atlas_network"].tolist()
    pred = found["network"].to_numpy() if hasattr(found, "columns") else np.asarray(found)
    truth = np.asarray([str(t) for t in truth])
    if len(truth) != len(pred):
        raise FmriInputError(
            f"{len(pred)} discovered labels but {len(truth)} reference labels",
            fix="pass one reference label per region, in the same order",
        )
    keep = ~np.isin(truth, list(exclude))
    pred, truth = pred[keep], truth[keep]
    p_names, p = np.unique(pred, return_inverse=True)
    t_names, t = np.unique(truth, return_inverse=True)
    counts = np.zeros((len(p_names), len(t_names)), dtype=int)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(-counts)
    matches = {
        (p_names[r].item() if hasattr(p_names[r], "item") else p_names[r]): (
            str(t_names[c]),
            int(counts[r, c]),
        )
        for r, c in zip(rows, cols, strict=True)
    }
    return {
        "ari": float(adjusted_rand_score(truth, pred)) if len(truth) else float("nan"),
        "accuracy": float(counts[rows, cols].sum() / max(len(truth), 1)),
        "n_regions": int(len(truth)),
        "n_reference": int(len(t_names)),
        "matches": matches,
    }


def summary(found: Any) -> Any:
    """One row per discovered network: its size, the atlas network it shares most regions with, and a few of
    its regions (the atlas labels are read only here, to name what was found)."""
    import pandas as pd

    rows = []
    for net, part in found.groupby("network", sort=True):
        counts = part["atlas_network"].value_counts()
        top = counts.index[0] if len(counts) else ""
        rows.append(
            {
                "network": int(net),
                "n_regions": int(len(part)),
                "most_like": str(top),
                "share": float(counts.iloc[0] / len(part)) if len(counts) else 0.0,
                "regions": ", ".join(part["region"].astype(str).head(3))
                + (f" (+{len(part) - 3})" if len(part) > 3 else ""),
            }
        )
    return pd.DataFrame(rows)
