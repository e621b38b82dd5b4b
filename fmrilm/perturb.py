"""In-silico perturbation and attribution: "what would the model answer if these regions were different?"

`perturb` changes the signal of chosen regions (by name, index, or a whole network of ``scan.atlas.networks``),
scores every task again and returns how each answer's probability moved; `attribute` perturbs each network
(or region) in turn and ranks them by how much the task's answer moves.

What a change means. The model standardises every region before reading it (z-score per region, then FC and
windows of z-scored signal), so multiplying a region's signal by a number changes nothing the model sees.
Changes therefore act on what survives standardisation, the region's *shared signal*; each perturbed region
keeps its own mean and standard deviation:

- ``"scale:A"`` (0 <= A <= 1): the region keeps a share A of its own signal and the rest is replaced by
  white noise of equal variance (``A * x + sqrt(1 - A^2) * noise``): its correlation with every other region
  shrinks by the factor A. ``"scale:1"`` changes nothing. A above 1 cannot be made from the signal (there is no
  extra signal to amplify) and is refused.
- ``"silence"`` = ``"scale:0"``: the region carries none of its signal, only noise of its own variance; it is
  coupled to nothing. This is the default for attribution.
- ``"zero"``: the region is set to exactly 0. fMRI pipelines do this to regions outside the field of view, so
  the model treats it as a bad region: connectome tokens *fill it from its neighbours' signal* (Gaussian kernel on
  MNI distance; the nearest usable region when none is near) and window tokens see a flat region. "Zero"
  therefore means "replaced by its neighbours", not "inactive"; use ``"silence"`` for the latter.
- ``"couple:C"`` (-1 <= C <= 1, two or more regions): a shared component is mixed in. The shared component is
  the chosen regions' own mean signal (standardised): ``C > 0`` gives ``sqrt(1 - C) * z + sqrt(C) * s``
  (``C = 1``: all regions follow the shared signal), ``C < 0`` removes a share ``|C|`` of it
  (``z - |C| * corr(z, s) * s``); ``"couple:0"`` changes nothing.

The noise is seeded per region (``seed``), so a call is deterministic and a region gets the same noise
whichever other regions are perturbed with it. Bad regions of the scan (constant, all-zero or non-finite) are
never perturbed: a network skips them, naming them explicitly is an error.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError

CHANGE_KINDS = ("scale", "silence", "zero", "couple")
CHANGE_HELP = "'scale:A' (0 <= A <= 1), 'silence', 'zero' or 'couple:C' (-1 <= C <= 1)"
BY_CHOICES = ("network", "region")


# --------------------------------------------------------------------------------------------------- changes
@dataclass(frozen=True)
class Change:
    """A parsed change: ``kind`` is "scale", "zero" or "couple" ("silence" is scale 0)."""

    kind: str
    amount: float = 0.0

    @classmethod
    def parse(cls, text: Any) -> Change:
        if isinstance(text, Change):
            return text
        raw = str(text).strip().lower().replace(" ", "")
        name, _, value = raw.partition(":")
        if name in ("silence", "zero"):
            if value:
                raise FmriInputError(
                    f"change='{text}': '{name}' takes no amount", fix=f"pass change='{name}'"
                )
            return cls("scale", 0.0) if name == "silence" else cls("zero", 0.0)
        if name not in ("scale", "couple") or not value:
            raise FmriInputError(f"Unknown change '{text}' (change=)", fix=f"pass one of {CHANGE_HELP}")
        try:
            amount = float(value)
        except ValueError:
            raise FmriInputError(
                f"change='{text}': '{value}' is not a number", fix=f"pass one of {CHANGE_HELP}"
            ) from None
        if not math.isfinite(amount):
            raise FmriInputError(f"change='{text}' is not a finite number", fix=f"pass one of {CHANGE_HELP}")
        if name == "scale" and not 0.0 <= amount <= 1.0:
            why = (
                "the model standardises each region, so only the share of a region's own signal can change, "
                "and a share above 1 would need signal the scan does not have"
                if amount > 1
                else "a share of a region's signal cannot be negative"
            )
            raise FmriInputError(
                f"change='{text}' is larger than the signal allows: {why}",
                fix="pass a scale between 0 (silenced: noise only) and 1 (unchanged), or 'couple:C' to "
                "strengthen coupling",
            )
        if name == "couple" and not -1.0 <= amount <= 1.0:
            raise FmriInputError(
                f"change='{text}' is larger than the signal allows: at +1 the regions already follow their shared "
                "signal only, at -1 it is removed entirely",
                fix="pass a coupling between -1 and +1, e.g. 'couple:+0.3'",
            )
        return cls(name, amount)

    @property
    def identity(self) -> bool:
        """Whether this change leaves every signal as it is (scale 1, couple 0)."""
        return (self.kind == "scale" and self.amount == 1.0) or (self.kind == "couple" and self.amount == 0.0)

    def __str__(self) -> str:
        if self.kind == "scale":
            return "silence" if self.amount == 0.0 else f"scale:{self.amount:g}"
        if self.kind == "zero":
            return "zero"
        return f"couple:{self.amount:+g}"


# -------------------------------------------------------------------------------------------------- regions
def select_regions(atlas: Any, regions: Any = None, network: Any = None) -> np.ndarray:
    """Indices of the regions named by ``regions`` (labels or indices) or ``network`` (one name or several)."""
    if atlas is None:
        raise FmriInputError(
            "Perturbing regions needs the scan's atlas (region names, networks and coordinates)",
            fix="load the scan with its atlas (load_scan(..., atlas=...) or --atlas)",
        )
    if (regions is None) == (network is None):
        raise FmriInputError(
            "Say which regions to perturb with exactly one of regions= and network=",
            fix="pass regions=['name', ...] or network='default' (not both)",
        )
    if network is not None:
        names = [network] if isinstance(network, str) else list(network)
        if not names:
            raise FmriInputError("network= is empty", fix=f"name one of {', '.join(atlas.network_names)}")
        nets = np.asarray(atlas.networks)
        out = []
        for name in names:
            found = _match(str(name), atlas.network_names)
            if found is None:
                raise FmriInputError(
                    f"Unknown network '{name}' (network=) in atlas '{atlas.name}'{_close(name, atlas.network_names)}",
                    fix=f"use one of {', '.join(atlas.network_names)}",
                )
            out.extend(np.flatnonzero(nets == found).tolist())
        return np.asarray(sorted(set(out)), dtype=int)
    items = [regions] if isinstance(regions, (str, int, np.integer)) else list(regions)
    if not items:
        raise FmriInputError("regions= is empty", fix="name one or more regions of scan.atlas.labels")
    out = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < atlas.n_regions:
                raise FmriInputError(
                    f"Region index {item} (regions=) is outside atlas '{atlas.name}' (0..{atlas.n_regions - 1})",
                    fix="pass region names from scan.atlas.labels or indices inside the atlas",
                )
            out.append(int(item))
            continue
        text = str(item)
        if text in atlas.labels:
            out.append(atlas.labels.index(text))
            continue
        lowered = [label.lower() for label in atlas.labels]
        if text.lower() in lowered:
            out.append(lowered.index(text.lower()))
        elif text.isdigit() and 0 <= int(text) < atlas.n_regions:
            out.append(int(text))
        else:
            raise FmriInputError(
                f"Unknown region '{text}' (regions=) in atlas '{atlas.name}'{_close(text, atlas.labels)}",
                fix=f"use names from scan.atlas.labels (e.g. '{atlas.labels[0]}') or region indices",
            )
    return np.asarray(sorted(set(out)), dtype=int)


def _match(name: str, known: Sequence[str]) -> str | None:
    if name in known:
        return name

    def key(text: str) -> str:  # "default mode", "default-mode" and "DefaultMode" name one network
        return re.sub(r"[^0-9a-z]", "", text.lower())

    loose = {key(k): k for k in known}
    return loose.get(key(name))


def _close(name: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""


def bad_regions(scan: Any) -> set[int]:
    """Regions the model treats as bad: constant, all-zero or non-finite, or flagged by an earlier repair."""
    from fmrilm.signal import find_bad_regions

    nonfinite, constant = find_bad_regions(np.asarray(scan.timeseries))
    return {int(i) for i in nonfinite} | {int(i) for i in constant} | set(scan.flags.get("bad_regions", []))


# --------------------------------------------------------------------------------------------- perturbing
def perturb_scan(
    scan: Any,
    regions: Any = None,
    network: Any = None,
    change: Any = "scale:0.5",
    *,
    seed: int = 0,
    _indices: np.ndarray | None = None,
) -> Any:
    """A copy of ``scan`` with the chosen regions changed (see the module docstring); the scan is not modified.

    ``flags["perturbation"]`` records what was done (regions, change, seed, bad regions left alone).
    """
    change = Change.parse(change)
    idx = _indices if _indices is not None else select_regions(scan.atlas, regions, network)
    bad = bad_regions(scan)
    skipped = [int(i) for i in idx if int(i) in bad]
    usable = np.asarray([int(i) for i in idx if int(i) not in bad], dtype=int)
    if regions is not None and skipped:
        names = ", ".join(repr(scan.atlas.labels[i]) for i in skipped[:5])
        raise FmriInputError(
            f"Region(s) {names} (regions=) carry no usable signal in this scan (constant, all-zero or "
            "non-finite), so there is nothing to perturb",
            subject=scan.subject_id,
            file=scan.source,
            fix="choose regions with signal",
        )
    if not len(usable):
        raise FmriInputError(
            f"Network {network!r} (network=) has no region with usable signal in this scan",
            subject=scan.subject_id,
            file=scan.source,
            fix="choose another network",
        )
    if change.kind == "couple" and len(usable) < 2:
        raise FmriInputError(
            f"change='{change}' changes the coupling between regions and needs at least two, got {len(usable)}",
            subject=scan.subject_id,
            fix="perturb a network or several regions, or use 'scale:A' for one region",
        )
    ts = np.array(scan.timeseries, dtype=np.float64, copy=True)
    if not change.identity:
        ts = _apply(ts, usable, change, seed, scan)
    flags = dict(scan.flags)
    flags["perturbation"] = {
        "regions": [int(i) for i in usable],
        "change": str(change),
        "seed": int(seed),
        "skipped_bad_regions": skipped,
    }
    if change.kind == "zero":  # known bad regions: the model repairs them without a warning
        flags["bad_regions"] = sorted(set(scan.flags.get("bad_regions", [])) | {int(i) for i in usable})
    return replace(scan, timeseries=ts.astype(np.float32), flags=flags)


def _apply(ts: np.ndarray, idx: np.ndarray, change: Change, seed: int, scan: Any) -> np.ndarray:
    x = ts[:, idx]
    mean, sd = x.mean(axis=0), x.std(axis=0)
    if change.kind == "zero":
        ts[:, idx] = 0.0
        return ts
    z = (x - mean) / sd
    if change.kind == "scale":
        a = change.amount
        noise = np.stack([_noise(len(ts), seed, int(r)) for r in idx], axis=1)
        z = a * z + math.sqrt(max(0.0, 1.0 - a * a)) * noise
    else:
        s = z.mean(axis=1)
        if s.std() < 1e-8:
            raise FmriInputError(
                "These regions have no shared signal to strengthen or remove (their mean is flat)",
                subject=scan.subject_id,
                fix="choose regions that are not exact opposites of each other",
            )
        s = (s - s.mean()) / s.std()
        c = change.amount
        if c > 0:
            z = math.sqrt(1.0 - c) * z + math.sqrt(c) * s[:, None]
        else:
            beta = (z * s[:, None]).mean(axis=0)
            z = z - abs(c) * beta[None] * s[:, None]
    z_sd = z.std(axis=0)
    z = (z - z.mean(axis=0)) / np.where(z_sd > 1e-12, z_sd, 1.0)
    ts[:, idx] = mean + sd * z
    return ts


def _noise(n: int, seed: int, region: int) -> np.ndarray:
    """Unit white noise for one region: the same for a region whatever is perturbed with it."""
    e = np.random.default_rng([int(seed), int(region)]).standard_normal(n)
    return (e - e.mean()) / e.std()


# ------------------------------------------------------------------------------------------------- scoring
def _resolve_scan(model: Any, scan: Any) -> Any:
    if isinstance(scan, (str, os.PathLike)):
        from fmrilm.chat import load_chat_scan

        return load_chat_scan(scan, model=model)
    if not hasattr(scan, "timeseries"):
        raise FmriInputError(
            f"Cannot perturb {type(scan).__name__}: perturbation needs a scan's signal",
            fix="pass a fmrilm Scan (fmrilm.io.load_scan) or a scan file",
        )
    return scan


def _cards(model: Any, tasks: Any) -> list[Any]:
    from fmrilm.model.scoring import resolve_task, stored_tasks

    if tasks is None:
        names = sorted(stored_tasks(model))
        if not names:
            raise FmriInputError(
                "This model stores no tasks to answer (tasks=None means every task it stores)",
                fix="pass tasks=[...] (TaskCards or task specs), or use a model trained by Stage 3",
            )
        tasks = names
    elif isinstance(tasks, str) or not isinstance(tasks, (list, tuple)):
        tasks = [tasks]
    return [resolve_task(model, t) for t in tasks]


def _answers(model: Any, scans: Sequence[Any], card: Any, batch_size: int = 8) -> np.ndarray:
    """``(n_scans, n_options)`` probabilities (bad-region warnings of perturbed scans kept quiet)."""
    from fmrilm.model.scoring import score_options
    from fmrilm.signal import BadRegionWarning

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRegionWarning)
        for start in range(0, len(scans), max(1, int(batch_size))):
            out.append(score_options(model, list(scans[start : start + max(1, int(batch_size))]), card))
    return np.concatenate(out)


def perturb(
    model: Any,
    scan: Any,
    regions: Any = None,
    network: Any = None,
    change: Any = "scale:0.5",
    tasks: Any = None,
    *,
    seed: int = 0,
):
    """How each task's answer changes when the chosen regions are perturbed: a DataFrame with one row per task
    and option (``task, option, before, after, delta``); regression tasks add a ``value`` row (the expected
    value over their bins). ``tasks=None`` answers every task the model stores.

    ``frame.attrs`` holds ``regions`` (names), ``change``, ``seed`` and ``scan`` (the perturbed `Scan`).
    """
    import pandas as pd

    scan = _resolve_scan(model, scan)
    change = Change.parse(change)
    cards = _cards(model, tasks)
    changed = perturb_scan(scan, regions, network, change, seed=seed)
    rows = []
    for card in cards:
        before, after = _answers(model, [scan, changed], card)
        for option, b, a in zip(card.options, before, after, strict=True):
            rows.append({"task": card.name, "option": option, "before": b, "after": a, "delta": a - b})
        if card.type == "regression":
            values = np.asarray(card.bin_values())
            b, a = float(before @ values), float(after @ values)
            rows.append({"task": card.name, "option": "value", "before": b, "after": a, "delta": a - b})
    frame = pd.DataFrame(rows, columns=["task", "option", "before", "after", "delta"])
    info = changed.flags["perturbation"]
    frame.attrs.update(
        regions=[scan.atlas.labels[i] for i in info["regions"]],
        change=str(change),
        seed=int(seed),
        skipped_bad_regions=[scan.atlas.labels[i] for i in info["skipped_bad_regions"]],
        scan=changed,
    )
    return frame


def attribute(
    model: Any,
    scan: Any,
    task: Any,
    by: str = "network",
    *,
    change: Any = "silence",
    option: str | None = None,
    seed: int = 0,
    repeats: int = 1,
    batch_size: int = 8,
    progress: bool = False,
):
    """Rank networks (``by="network"``) or regions (``by="region"``) by how much perturbing each moves the answer.

    Each unit is perturbed alone with ``change`` (default ``"silence"``); ``repeats`` > 1 averages the answer
    over that many noise seeds. Columns: ``rank``, the unit (``network`` or ``region``, plus the region's
    ``network``), ``n_regions`` (perturbed), ``option`` (default: the answer most probable before; ``value``
    for regression), its probability ``before`` and ``after``, ``delta`` (after - before; negative: the unit
    supports that answer) and ``effect``: the total-variation distance between the answer distributions before
    and after (regression: |change of the expected value|). Every unit appears once, largest effect first (ties
    by name); units with no usable signal get effect 0 and ``n_regions`` 0.
    """
    import pandas as pd

    if by not in BY_CHOICES:
        raise FmriInputError(f"Unknown by='{by}'", fix="pass by='network' or by='region'")
    if not isinstance(repeats, int) or repeats < 1:
        raise FmriInputError(f"repeats must be a whole number >= 1, got {repeats!r}", fix="pass e.g. 1")
    scan = _resolve_scan(model, scan)
    change = Change.parse(change)
    (card,) = _cards(model, [task])
    atlas = scan.atlas
    if atlas is None:
        select_regions(None)  # raises the missing-atlas error
    if by == "network":
        units = [(name, select_regions(atlas, network=name)) for name in atlas.network_names]
    else:
        units = [(label, np.asarray([i])) for i, label in enumerate(atlas.labels)]
    bad = bad_regions(scan)
    if change.kind == "couple" and by == "region":
        raise FmriInputError(
            f"change='{change}' needs two or more regions, so it cannot attribute to single regions",
            fix="pass by='network', or change='silence' / 'scale:A'",
        )
    jobs: list[tuple[int, Any]] = []
    for u, (_, idx) in enumerate(units):
        usable = np.asarray([i for i in idx if int(i) not in bad], dtype=int)
        if len(usable) < (2 if change.kind == "couple" else 1):
            continue
        for r in range(repeats):
            jobs.append((u, perturb_scan(scan, change=change, seed=seed + r, _indices=usable)))
    before = _answers(model, [scan], card)[0]
    after = np.repeat(before[None], len(units), axis=0)
    if jobs:
        scored = []
        chunks = [jobs[s : s + max(1, int(batch_size))] for s in range(0, len(jobs), max(1, int(batch_size)))]
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"attributing {card.name} by {by}", unit="batch")
        for chunk in chunks:
            scored.append(_answers(model, [s for _, s in chunk], card, batch_size=len(chunk)))
        probs = np.concatenate(scored)
        owners = np.asarray([u for u, _ in jobs])
        for u in np.unique(owners):
            after[u] = probs[owners == u].mean(axis=0)
    counts = [int(sum(int(i) not in bad for i in idx)) for _, idx in units]
    if card.type == "regression":
        values = np.asarray(card.bin_values())
        chosen, b = "value", float(before @ values)
        a = after @ values
        effect = np.abs(a - b)
    else:
        if option is None:
            chosen = card.options[int(np.argmax(before))]
        elif option in card.options:
            chosen = option
        else:
            raise FmriInputError(
                f"option '{option}' is not an answer of task '{card.name}' ({card.options})",
                fix="pass one of the task's answers, or leave option out (the most probable one)",
            )
        j = card.options.index(chosen)
        b, a = float(before[j]), after[:, j]
        effect = 0.5 * np.abs(after - before[None]).sum(axis=1)
    key = "network" if by == "network" else "region"
    rows = []
    for u, (name, idx) in enumerate(units):
        row = {key: name}
        if by == "region":
            row["network"] = atlas.networks[int(idx[0])]
        row.update(
            n_regions=counts[u] if counts[u] >= (2 if change.kind == "couple" else 1) else 0,
            option=chosen,
            before=b,
            after=float(a[u]),
            delta=float(a[u]) - b,
            effect=float(effect[u]),
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["effect", key], ascending=[False, True], kind="mergesort")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame = frame.reset_index(drop=True)
    frame.attrs.update(task=card.name, by=by, change=str(change), seed=int(seed), repeats=int(repeats))
    return frame
