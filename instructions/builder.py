"""Instruction sets: cohort + task specs (+ descriptor corpus) -> a seeded `datasets` table of chat examples.

One row per (scan, window or whole scan, task, paradigm); ``multi`` rows ask several tasks in one turn. Messages
are in the chat format :class:`fmrilm.model.FmriLMProcessor` consumes, with fMRI parts that name the scan and
window (Stage 3 resolves them to brain tokens)::

    [{"role": "user", "content": [{"type": "fmri", "scan_id": "s1", "window": null},
                                  {"type": "text", "text": "What is the sex ...? Answer with one of: ..."}]},
     {"role": "assistant", "content": [{"type": "text", "text": "male"}]}]

stored as a JSON string in the ``messages`` column (nested heterogeneous parts do not fit Arrow features).
Nothing about the participant reaches a prompt: questions are static, descriptor text is added only in the
``brain_descriptors`` paradigm and is checked for phenotype words first. A row whose target is missing (or
outside the task's valid range) is skipped, never defaulted, and counted in the set's ``meta``.
Every random choice (paraphrase, option order, sentence, multi-task grouping) comes from an RNG seeded by
``(seed, scan, window, task, paradigm)``, so a row does not change when other tasks or scans are added.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fmrilm.instructions.spec import DERIVED_PARADIGMS, PARADIGMS, TaskSpec

from fmrilm.cohort import is_missing as _missing
from fmrilm.errors import FmriInputError

INSTRUCTIONS_META = "instructions.json"
DATASET_DIR = "dataset"
TASKS_DIR = "tasks"
#: The descriptor text of a whole scan is stored with window -1 in the corpus (``fmrilm.descriptors``).
WHOLE_SCAN = -1
REGRESSION_ANSWERS = ("value", "bins")  # how a regression answer is written in a training row
MULTI_HEADER = "Answer each question on its own line, numbered like the questions."
DESCRIPTOR_HEADER = "Descriptors of this scan, relative to a reference population:"
#: Words that would reveal a phenotype; descriptor text containing one is refused (whole words, any case).
PHENOTYPE_WORDS = (
    "male", "female", "man", "woman", "men", "women", "boy", "girl", "sex", "gender", "age", "aged",
    "years old", "year-old", "autism", "autistic", "asd", "adhd", "patient", "patients", "diagnosis",
    "diagnosed", "diagnostic", "control group", "healthy control", "iq", "intelligence", "site", "scanner",
)  # fmt: skip
_PHENOTYPE_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in PHENOTYPE_WORDS) + r")\b", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------ descriptors
@dataclass
class DescriptorIndex:
    """Descriptor z-features and texts by (scan_id, window); ``window == -1`` is the whole scan."""

    feature_names: list[str]
    z: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    texts: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    source: str | None = None

    def windows(self, scan_id: str) -> list[int]:
        return (
            sorted(w for s, w in self.z if s == scan_id)
            if self.z
            else sorted(w for s, w in self.texts if s == scan_id)
        )

    def zmap(self, scan_id: str, window: int) -> dict[str, float] | None:
        z = self.z.get((scan_id, window))
        return (
            None
            if z is None
            else dict(zip(self.feature_names, np.asarray(z, dtype=float).tolist(), strict=True))
        )

    def text(self, scan_id: str, window: int, family: str = "all") -> str | None:
        texts = self.texts.get((scan_id, window))
        if not texts:
            return None
        if family == "all":
            joined = " ".join(t for t in texts.values() if t)
            return joined or None
        return texts.get(family) or None

    @classmethod
    def from_descriptors(cls, descriptors: Sequence[Any], feature_names: Sequence[str]) -> DescriptorIndex:
        """From :class:`fmrilm.descriptors.Descriptor` objects (e.g. ``ReferenceStats.describe(scan)``)."""
        index = cls(feature_names=list(feature_names))
        for d in descriptors:
            key = (str(d.scan_id), int(d.window))
            index.z[key] = np.asarray(d.z, dtype=float)
            index.texts[key] = dict(d.texts)
        return index

    @classmethod
    def from_corpus(cls, directory: str | Path) -> DescriptorIndex:
        """Read a corpus written by ``fmrilm corpus build`` (see :func:`fmrilm.data_gen.corpus`)."""
        return _load_corpus(Path(directory))


def _load_corpus(directory: Path) -> DescriptorIndex:
    """Descriptors of a corpus folder (:func:`fmrilm.data_gen.corpus.load_corpus`): z vectors and texts."""
    from fmrilm.data_gen.corpus import TEXT_COLUMNS, load_corpus

    ds, meta, _ = load_corpus(directory)
    index = DescriptorIndex(feature_names=list(meta["feature_names"]), source=str(directory))
    cols = ["scan_id", "window", "z", *[c for c in TEXT_COLUMNS if c in ds.column_names]]
    families = [c[len("text_") :] for c in cols[3:]]
    for row in ds.select_columns(cols):
        key = (str(row["scan_id"]), int(row["window"]))
        if key[1] < WHOLE_SCAN:  # marker rows of scans that could not be described
            continue
        index.z[key] = np.asarray(row["z"], dtype=float)
        index.texts[key] = {f: row[f"text_{f}"] or "" for f in families}
    return index


def check_no_phenotype(
    text: str, *, extra: Sequence[str] = (), file: Any = None, subject: str | None = None
) -> None:
    """Refuse descriptor text that names a phenotype (or the scan's site): it would leak the answer."""
    hit = _PHENOTYPE_RE.search(text)
    if hit is None:
        for word in extra:
            if word and re.search(r"\b" + re.escape(word) + r"\b", text):
                hit = word
                break
    else:
        hit = hit.group(0)
    if hit is not None:
        raise FmriInputError(
            f"Descriptor text mentions '{hit}', which could reveal a phenotype or site to the model",
            file=file,
            subject=subject,
            fix="rebuild the corpus with fmrilm.descriptors (its text never names phenotypes or sites)",
        )


# ------------------------------------------------------------------------------------------------- answering
def _rng(seed: int, *key: Any) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32("|".join(map(str, key)).encode())])


@dataclass
class BoundTask:
    """A task bound to one cohort: its answer map (phenotype tasks) or option labels (descriptor tasks)."""

    spec: TaskSpec
    mapping: dict[str, str] | None = None
    map_name: str | None = None
    options: list[str] = field(default_factory=list)
    features: dict[str, str] = field(default_factory=dict)  # descriptor feature name -> option label

    def answer(
        self, value: Any = None, zmap: dict[str, float] | None = None, texts=None, subject=None
    ) -> tuple[str | None, Any]:
        """``(answer string, raw value)`` or ``(None, reason)`` when the row must be skipped."""
        spec = self.spec
        if spec.source == "phenotype":
            if _missing(value):
                return None, "missing"
            if spec.type == "regression":
                if not spec.number.is_valid(value):
                    return None, "out_of_range"
                return spec.number.format(float(value)), float(value)
            return spec.answer_for(value, self.mapping, subject=subject), value
        if spec.type == "open-ended":
            return (texts, texts) if texts else (None, "no_descriptor")
        if zmap is None:
            return None, "no_descriptor"
        if spec.type == "regression":
            z = zmap.get(spec.target)
            if z is None or not spec.number.is_valid(z):
                return None, "missing"
            return spec.number.format(z), float(z)
        rule = spec.derive
        if rule["rule"] == "threshold":
            z = zmap.get(rule["feature"])
            if z is None or not np.isfinite(z):
                return None, "missing"
            return (rule["above"] if z > rule["threshold"] else rule["below"]), float(z)
        values = {f: zmap[f] for f in self.features if f in zmap and np.isfinite(zmap[f])}
        if not values:
            return None, "missing"
        pick = (max if rule["rule"] == "argmax" else min)(values, key=values.get)
        return self.features[pick], float(values[pick])


def bind_task(
    spec: TaskSpec, table, descriptors: DescriptorIndex | None, *, cohort_file: Any = None
) -> BoundTask:
    """Check that the task applies to the cohort (column / descriptors present) and fix its options."""
    if spec.source == "phenotype":
        if spec.target not in table.columns:
            present = [c for c in table.columns if c not in ("timeseries", "bad_regions")]
            raise FmriInputError(
                f"Task '{spec.name}' needs column '{spec.target}', which the cohort does not have",
                file=cohort_file,
                fix=f"drop the task or import that column (the cohort has: {', '.join(present)})",
            )
        if spec.is_choice:
            values = [v for v in table[spec.target].tolist() if not _missing(v)]
            name, mapping = spec.answer_map(values)
            return BoundTask(spec, mapping=mapping, map_name=name, options=spec.options(mapping))
        return BoundTask(spec, options=spec.options())
    if descriptors is None:
        raise FmriInputError(
            f"Task '{spec.name}' is answered from descriptors but no corpus was given",
            fix="pass --corpus DIR (from `fmrilm corpus build`) or drop the task",
        )
    if spec.type == "open-ended":
        return BoundTask(spec)
    if spec.type == "regression":
        _require_feature(spec, spec.target, descriptors)
        return BoundTask(spec, options=spec.options())
    rule = spec.derive
    if rule["rule"] == "threshold":
        _require_feature(spec, rule["feature"], descriptors)
        return BoundTask(spec, options=spec.options())
    pattern = re.compile(rule["features"])
    features: dict[str, str] = {}
    for name in descriptors.feature_names:
        m = pattern.search(name)
        if m is None:
            continue
        groups = {k: _display(v, rule) for k, v in m.groupdict().items()}
        if rule.get("exclude_same") and len(set(groups.values())) < len(groups):
            continue
        features[name] = rule["label"].format(**groups)
    options = list(dict.fromkeys(features.values()))
    if len(options) < 2:
        raise FmriInputError(
            f"Task '{spec.name}': fewer than two descriptor features match '{rule['features']}'",
            file=spec.path,
            fix="check the pattern against the corpus feature names (e.g. fc.between.A~B, graph.modularity)",
        )
    return BoundTask(spec, options=options, features=features)


def _display(value: str, rule: dict[str, Any]) -> str:
    if value in rule.get("rename", {}):
        return rule["rename"][value]
    if rule.get("humanize", True):
        from fmrilm.descriptors import humanize_network

        return humanize_network(value)
    return value


def _require_feature(spec: TaskSpec, feature: str, descriptors: DescriptorIndex) -> None:
    if feature not in descriptors.feature_names:
        raise FmriInputError(
            f"Task '{spec.name}' reads descriptor feature '{feature}', which the corpus does not have",
            file=spec.path,
            fix=f"use one of the corpus features (e.g. {', '.join(descriptors.feature_names[:5])})",
        )


# ---------------------------------------------------------------------------------------------------- prompts
def _fmri(scan_id: str, window: int | None) -> dict[str, Any]:
    return {"type": "fmri", "scan_id": scan_id, "window": window}


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _question(bound: BoundTask, rng: np.random.Generator, instruct: bool = True) -> str:
    """A seeded paraphrase plus the answer instruction (listed options in random order, or the unit).

    The open paradigm answers in a sentence, so it gets the question alone."""
    spec = bound.spec
    q = spec.questions[int(rng.integers(len(spec.questions)))]
    if not instruct:
        return q
    listed = list(bound.options) if spec.is_choice else []
    if listed:
        listed = [listed[i] for i in rng.permutation(len(listed))]  # no fixed option order to learn
    instr = spec.instruction_text(listed)
    return f"{q} {instr}".strip()


def question_message(
    spec: TaskSpec,
    options: Sequence[str] | None = None,
    *,
    paradigm: str = "brain",
    scan_id: str | None = None,
    window: int | None = None,
    descriptor_text: str | None = None,
    seed: int | np.random.Generator = 0,
    instruct: bool = True,
) -> dict[str, Any]:
    """The user turn that asks ``spec`` about one scan, exactly as instruction sets phrase it.

    Use it at inference (zero-shot ``predict``, evaluation) so a model is asked the way it was tuned: a seeded
    paraphrase, the options listed in a seeded order (``options`` default: the task's own, e.g. regression
    bins or threshold answers; pass the bound answer map's options for phenotype tasks), the descriptor text
    first in the ``brain_descriptors`` paradigm, no instruction in the ``open`` paradigm. ``instruct=False``
    asks the question alone, as a user in a chat does (`build_instructions`' ``bare_questions``).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    bound = BoundTask(spec, options=list(options if options is not None else spec.options()))
    user: list[dict[str, Any]] = [_fmri(scan_id, window)]
    if paradigm == "brain_descriptors":
        if not descriptor_text:
            raise FmriInputError(
                "The brain_descriptors paradigm needs the scan's descriptor text",
                fix="pass descriptor_text (fmrilm.descriptors ReferenceStats.describe) or use paradigm 'brain'",
            )
        user.append(_text(f"{DESCRIPTOR_HEADER} {descriptor_text}"))
    user.append(_text(_question(bound, rng, instruct=instruct and paradigm != "open")))
    return {"role": "user", "content": user}


def _answer_text(bound: BoundTask, answer: str, paradigm: str, rng: np.random.Generator) -> str:
    spec = bound.spec
    if paradigm == "open" and spec.type != "open-ended":
        return spec.sentences[int(rng.integers(len(spec.sentences)))].format(answer=answer)
    return answer


# ---------------------------------------------------------------------------------------------------- building
def build_instructions(
    cohort: Any,
    tasks: Sequence[TaskSpec],
    *,
    descriptors: DescriptorIndex | None = None,
    split: Mapping[str, Sequence[int]] | None = None,
    windows: str | int = "whole",
    paradigms: Sequence[str] | None = None,
    max_multi: int = 3,
    seed: int = 0,
    cohort_file: Any = None,
    signal_config: Any = None,
    bare_questions: float = 0.0,
    regression_answers: str = "value",
) -> tuple[Any, dict[str, Any]]:
    """Build the instruction rows of ``cohort`` for ``tasks``; returns ``(datasets.Dataset, meta)``.

    ``windows``: ``"whole"`` (one fMRI part with every window of the scan), ``"all"`` (one row per window) or
    an integer N (N windows per scan, drawn with the seed). With a descriptor corpus, the windows are the
    corpus's (its whole-scan descriptor, window -1, for ``"whole"``); without one they are counted with
    ``signal_config`` (the model's :class:`fmrilm.signal.SignalConfig`, default settings when None).
    ``paradigms`` restricts the YAMLs' lists. ``bare_questions``: the share of ``brain`` and ``followup`` rows
    (a seeded draw per row) whose question comes without the answer instruction ("Answer with one of: ..."),
    the way people ask in a chat, so a tuned model answers the question asked and not only its listed form.
    ``regression_answers``: ``"value"`` writes a regression answer as the number itself; ``"bins"`` writes one
    of the two bin values that enclose it, drawn per row with the weights whose mean is the number
    (`NumberFormat.two_hot`), so the answers taught are the bin answers whose expectation is scored.
    """
    import datasets

    if not tasks:
        raise FmriInputError("No task given", fix="pass --tasks sex,age,... (or 'all')")
    if not 0.0 <= float(bare_questions) <= 1.0:
        raise FmriInputError(
            f"bare_questions must be a share from 0 to 1, got {bare_questions}",
            fix="give e.g. 0.5 (or 0 for none)",
        )
    unknown = sorted(set(paradigms or []) - set(PARADIGMS))
    if unknown:
        raise FmriInputError(f"Unknown paradigm(s) {unknown}", fix=f"use {', '.join(PARADIGMS)}")
    if regression_answers not in REGRESSION_ANSWERS:
        raise FmriInputError(
            f"Unknown regression_answers '{regression_answers}'", fix=f"use {' or '.join(REGRESSION_ANSWERS)}"
        )
    table = cohort.phenotype_table()
    bound = [bind_task(t, table, descriptors, cohort_file=cohort_file) for t in tasks]
    wanted = set(paradigms or PARADIGMS)
    if descriptors is None:
        if paradigms and "brain_descriptors" in paradigms:
            raise FmriInputError(
                "The brain_descriptors paradigm needs descriptor text, but no corpus was given",
                fix="pass --corpus DIR (from `fmrilm corpus build`) or drop brain_descriptors from --paradigms",
            )
        wanted.discard("brain_descriptors")  # not applicable without a corpus: not a skipped row
    needs_text = "brain_descriptors" in wanted or any(b.spec.source == "descriptors" for b in bound)
    if descriptors is not None and windows == "whole" and needs_text:
        if not any(w == WHOLE_SCAN for _, w in (descriptors.z or descriptors.texts)):
            raise FmriInputError(
                "The corpus has per-window descriptors only, but whole-scan rows were asked for (--windows whole)",
                file=descriptors.source,
                fix="use --windows all (or N), or rebuild the corpus with `fmrilm corpus build ... --scan-level`",
            )
    part_of = {int(i): p for p, idx in (split or {}).items() for i in idx}
    # Site names of 3+ characters are refused in descriptor text too (shorter ones collide with words).
    site_names = (
        sorted({str(s) for s in table["site"].dropna() if len(str(s)) >= 3})
        if "site" in table.columns
        else []
    )
    rows: list[dict[str, Any]] = []
    counts: dict[str, Counter] = defaultdict(Counter)
    checked_text: set[tuple[str, int]] = set()

    for i in range(len(table)):
        rec = table.iloc[i]
        scan_id, subject = str(rec["scan_id"]), str(rec["subject_id"])
        base = {
            "scan_id": scan_id,
            "subject_id": subject,
            "site": str(rec.get("site") or ""),
            "split": part_of.get(i),
        }
        for window in _scan_windows(rec, windows, descriptors, seed, signal_config):
            key = (scan_id, WHOLE_SCAN if window is None else window)
            zmap = descriptors.zmap(*key) if descriptors else None
            if descriptors and key not in checked_text:
                for text in (descriptors.texts.get(key) or {}).values():
                    check_no_phenotype(text, extra=site_names, file=descriptors.source, subject=subject)
                checked_text.add(key)
            multi: list[tuple[BoundTask, str, Any]] = []
            turns: list[
                tuple[BoundTask, dict[str, Any], str, str, Any]
            ] = []  # brain turns, for followup rows
            for b in bound:
                spec = b.spec
                texts = (
                    descriptors.text(*key, family="all" if spec.target in ("all", "text") else spec.target)
                    if (descriptors and spec.type == "open-ended")
                    else None
                )
                answer, value = b.answer(
                    rec.get(spec.target) if spec.source == "phenotype" else None, zmap, texts, subject
                )
                todo = [p for p in spec.paradigms if p in wanted and p not in DERIVED_PARADIGMS]
                followup = "followup" in wanted and (
                    "followup" in spec.paradigms or DERIVED_PARADIGMS["followup"] in spec.paradigms
                )
                if answer is None:
                    counts[spec.name][f"skipped_{value}"] += len([p for p in todo if p != "multi"])
                    continue
                # a followup row's first turn is the brain question, built here even when brain rows are not
                for paradigm in todo + (["brain"] if followup and "brain" not in todo else []):
                    if regression_answers == "bins" and spec.type == "regression":
                        answer = _bin_answer(
                            spec, value, _rng(seed, scan_id, window, spec.name, paradigm, "bin")
                        )
                    if paradigm == "multi":
                        multi.append((b, answer, value))
                        continue
                    rng = _rng(seed, scan_id, window, spec.name, paradigm)
                    desc = descriptors.text(*key) if descriptors and paradigm == "brain_descriptors" else None
                    if paradigm == "brain_descriptors" and desc is None:
                        counts[spec.name]["skipped_no_descriptor"] += 1
                        continue
                    user = question_message(
                        spec,
                        b.options,
                        paradigm=paradigm,
                        scan_id=scan_id,
                        window=window,
                        descriptor_text=desc,
                        seed=rng,
                        instruct=not _bare(bare_questions, paradigm, seed, scan_id, window, spec.name),
                    )["content"]
                    reply = _answer_text(b, answer, paradigm, rng)
                    if followup and paradigm == "brain":
                        turns.append((b, {"role": "user", "content": user}, reply, answer, value))
                    if paradigm in todo:
                        rows.append(
                            _row(base, window, spec, paradigm, user, reply, answer, b.options, value, [])
                        )
                        counts[spec.name]["rows"] += 1
            for k, (b, _, reply, answer, value) in enumerate(turns if len(turns) >= 2 else []):
                rng = _rng(seed, scan_id, window, b.spec.name, "followup")
                first = [t for j, t in enumerate(turns) if j != k][int(rng.integers(len(turns) - 1))]
                history = [first[1], {"role": "assistant", "content": [_text(first[2])]}]
                bare = _bare(bare_questions, "followup", seed, scan_id, window, b.spec.name)
                user = [_text(_question(b, rng, instruct=not bare))]  # the scan is already in the chat
                rows.append(
                    _row(base, window, b.spec, "followup", user, reply, answer, b.options, value, [], history)
                )
                counts[b.spec.name]["followup_rows"] += 1
            if len(multi) >= 2:
                rng = _rng(seed, scan_id, window, "multi")
                n = int(rng.integers(2, min(max_multi, len(multi)) + 1))
                chosen = [multi[j] for j in rng.permutation(len(multi))[:n]]
                lines = [
                    f"{k + 1}. {_question(b, _rng(seed, scan_id, window, b.spec.name, 'multi'))}"
                    for k, (b, _, _) in enumerate(chosen)
                ]
                answers = [f"{k + 1}. {a}" for k, (_, a, _) in enumerate(chosen)]
                user = [_fmri(scan_id, window), _text(MULTI_HEADER + "\n" + "\n".join(lines))]
                parts = [{"task": b.spec.name, "answer": a, "options": b.options} for b, a, _ in chosen]
                rows.append(
                    _row(
                        base,
                        window,
                        None,
                        "multi",
                        user,
                        "\n".join(answers),
                        "\n".join(answers),
                        [],
                        None,
                        parts,
                    )
                )
                counts["multi"]["rows"] += 1
    if not rows:
        raise FmriInputError(
            "No instruction row could be built (every target is missing or no paradigm applies)",
            file=cohort_file,
            fix="check the task targets against the cohort columns, or give a corpus for descriptor tasks",
        )
    dataset = datasets.Dataset.from_list(rows, features=_features())
    meta = {
        "cohort": getattr(cohort, "name", None),
        "n_rows": len(rows),
        "seed": int(seed),
        "windows": windows,
        "paradigms": sorted(wanted),
        "bare_questions": float(bare_questions),
        "regression_answers": regression_answers,
        "tasks": {
            b.spec.name: {
                "type": b.spec.type,
                "source": b.spec.source,
                "target": b.spec.target,
                "options": b.options,
                "answer_map": b.map_name,
                "file": f"{TASKS_DIR}/{b.spec.name}.yaml",
            }
            for b in bound
        },
        "counts": {k: dict(v) for k, v in counts.items()},
        "split": None if split is None else {p: len(idx) for p, idx in split.items()},
        "descriptors": None if descriptors is None else descriptors.source,
    }
    return dataset, meta


def _bin_answer(spec: TaskSpec, value: float, rng: np.random.Generator) -> str:
    """One of the two bin answers enclosing ``value``, drawn with its two-hot weight."""
    (lo, w_lo), (hi, _) = spec.number.two_hot(value)
    return spec.number.bin_answers()[lo if rng.random() < w_lo else hi]


def _bare(share: float, paradigm: str, seed: int, scan_id: str, window: Any, task: str) -> bool:
    """Whether this row asks its question without the answer instruction: a draw of its own, so the rows
    and their wording stay as they were with ``share`` 0."""
    if share <= 0 or paradigm not in ("brain", "followup"):
        return False
    return bool(_rng(seed, scan_id, window, task, paradigm, "bare").random() < share)


def _row(
    base, window, spec, paradigm, user, reply, answer, options, value, parts, history=()
) -> dict[str, Any]:
    """One instruction row; ``history`` holds earlier turns of the chat (the followup paradigm's first question)."""
    messages = [*history, {"role": "user", "content": user}, {"role": "assistant", "content": [_text(reply)]}]
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return {
        **base,
        "window": window,
        "task": "multi" if spec is None else spec.name,
        "type": "multi" if spec is None else spec.type,
        "paradigm": paradigm,
        "messages": json.dumps(messages),
        "answer": reply,
        "label": answer,
        "options": list(options),
        "value": float(value) if numeric and spec is not None and spec.type == "regression" else None,
        "subtasks": json.dumps(parts) if parts else "",
    }


def _features():
    import datasets

    seq = getattr(datasets, "List", datasets.Sequence)
    return datasets.Features(
        {
            "scan_id": datasets.Value("string"),
            "subject_id": datasets.Value("string"),
            "site": datasets.Value("string"),
            "split": datasets.Value("string"),
            "window": datasets.Value("int32"),
            "task": datasets.Value("string"),
            "type": datasets.Value("string"),
            "paradigm": datasets.Value("string"),
            "messages": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "label": datasets.Value("string"),
            "options": seq(datasets.Value("string")),
            "value": datasets.Value("float64"),
            "subtasks": datasets.Value("string"),
        }
    )


def _scan_windows(
    rec, windows: str | int, descriptors: DescriptorIndex | None, seed: int, signal_config: Any = None
) -> list[int | None]:
    """Windows of the scan in table row ``rec`` to build rows for (None = the whole scan as one fMRI part)."""
    if windows == "whole":
        return [None]
    scan_id = str(rec["scan_id"])
    if descriptors is not None:
        available = [w for w in descriptors.windows(scan_id) if w != WHOLE_SCAN]
    else:
        available = list(range(n_windows(int(rec["n_timepoints"]), float(rec["tr"]), signal_config)))
    if windows == "all":
        return available
    n = int(windows)
    if n >= len(available):
        return available
    return sorted(int(w) for w in _rng(seed, scan_id, "windows").choice(available, size=n, replace=False))


def n_windows(n_timepoints: int, tr: float, config: Any = None) -> int:
    """How many windows :func:`fmrilm.signal.scan_windows` cuts from a scan (exactly, via the same code)."""
    from fmrilm.signal import SignalConfig, make_windows, resample

    config = config or SignalConfig()
    probe = np.zeros((int(n_timepoints), 1), dtype=np.float32)
    if config.target_tr is not None and not np.isclose(tr, config.target_tr, rtol=1e-6):
        probe = resample(probe, tr, config.target_tr)
    return len(make_windows(probe, config.window_length, config.stride)[0])


# ------------------------------------------------------------------------------------------------- persistence
def save_instruction_set(
    dataset: Any,
    meta: dict[str, Any],
    tasks: Sequence[TaskSpec],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``DIR/dataset``, ``DIR/instructions.json`` and ``DIR/tasks/*.yaml`` beside ``DIR`` and rename.

    ``DIR`` must be new, empty, or (with ``overwrite``) an earlier instruction set holding nothing else, which
    is replaced only once the new one is complete (`fmrilm.safety.staged_output`).
    """
    import yaml

    from fmrilm.safety import INSTRUCTIONS_OUTPUT, staged_output

    out_dir = Path(out_dir)
    with staged_output(out_dir, INSTRUCTIONS_OUTPUT, overwrite=overwrite) as tmp:
        dataset.save_to_disk(str(tmp / DATASET_DIR))
        (tmp / TASKS_DIR).mkdir()
        for t in tasks:  # the set carries its task specs, so Stage 3 and eval score exactly these answers
            (tmp / TASKS_DIR / f"{t.name}.yaml").write_text(
                yaml.safe_dump(t.to_dict(), sort_keys=False, allow_unicode=True)
            )
        (tmp / INSTRUCTIONS_META).write_text(json.dumps(meta, indent=1))
    return out_dir


def load_instruction_set(directory: str | Path) -> tuple[Any, dict[str, Any], dict[str, TaskSpec]]:
    """``(dataset, meta, {task name: TaskSpec})`` of a folder written by ``fmrilm instructions build``."""
    import datasets

    directory = Path(directory)
    if not (directory / INSTRUCTIONS_META).exists() or not (directory / DATASET_DIR).exists():
        raise FmriInputError(
            "Not an instruction-set folder (no instructions.json and dataset/)",
            file=directory,
            fix="build it with `fmrilm instructions build COHORT --tasks ... --out DIR`",
        )
    meta = json.loads((directory / INSTRUCTIONS_META).read_text())
    specs = {p.stem: TaskSpec.from_yaml(p) for p in sorted((directory / TASKS_DIR).glob("*.yaml"))}
    return datasets.load_from_disk(str(directory / DATASET_DIR)), meta, specs
