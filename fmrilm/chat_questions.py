"""Questions the chat answers by computing, not by generating: a fixed dispatch on recognised wordings.

Two kinds of question are recognised (English, case ignored) and answered by calling `fmrilm.perturb` on the
scan attached to the conversation, then phrasing its table as a sentence; every other message goes to the LLM.

- **Attribution**: "Which networks drive this prediction?", "What drives the diagnosis?", "Which regions matter
  most for sex?" -> `attribute` (each network, or region, silenced in turn; ranked by how much the answer
  moves). The task is the one the message names ("diagnosis@abide" names that one, "diagnosis" every task of
  that name), else the one whose answer the model gave last in the conversation, else every task it stores.
- **What-if**: "What if the default mode network were weaker?" (also stronger, silenced / switched off /
  removed) -> `perturb` on that network (weaker: ``scale:0.5``, silenced: ``silence``, stronger:
  ``couple:+0.5``), every stored task answered before and after. Networks are found by their atlas names,
  loosely ("default mode", "DMN", "fronto-parietal", "visual" for "occipital", ...).

This is a lookup table, not language understanding: a question worded otherwise reaches the LLM like any other
message. `recognise` says what a message would trigger; `ChatSession(tools=False)` (``fmrilm chat --no-tools``)
turns the dispatch off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fmrilm.errors import FmriInputError

_WORD = re.compile(r"[a-z0-9]+")
_ATTRIBUTE = re.compile(
    r"\b(which|what)\b[^?]*\b(networks?|regions?|areas?|parts?)\b[^?]*\b(drives?|driving|driven|explains?|"
    r"matters?|responsible|influences?|contributes?|important|behind)\b"
    r"|\bwhat\b[^?]*\b(drives?|is behind|explains?)\b[^?]*\b(predictions?|answers?|diagnosis|result)\b",
    re.IGNORECASE,
)
_WHAT_IF = re.compile(
    r"\b(what if|what would happen if|what happens if|what would you (say|answer|predict) if|suppose|imagine|"
    r"if)\b",
    re.IGNORECASE,
)
#: (pattern, change, how it is said, what it does); the first pattern found wins.
_CHANGES = (
    (
        r"\b(silenced|silent|switched off|turned off|shut down|removed|absent|inactive|lesioned|knocked out|"
        r"disconnected|gone)\b",
        "silence",
        "silenced",
        "each keeps only noise of its own variance",
    ),
    (
        r"\b(stronger|strengthened|more (connected|coupled|synchroni[sz]ed|active)|increased|boosted|"
        r"hyperconnected)\b",
        "couple:+0.5",
        "more strongly coupled",
        "half of each one's signal is replaced by the network's shared signal",
    ),
    (
        r"\b(weaker|weakened|less (connected|coupled|synchroni[sz]ed|active)|reduced|decreased|diminished|"
        r"dampened|hypoconnected)\b",
        "scale:0.5",
        "weaker",
        "each keeps half of its own signal, the rest is noise",
    ),
)
#: Common abbreviations and synonyms -> words of atlas network names.
_ALIASES = {
    "dmn": "default",
    "default mode": "default",
    "fpn": "fronto parietal",
    "frontoparietal": "fronto parietal",
    "control": "fronto parietal",
    "con": "cingulo opercular",
    "dan": "dorsal attention",
    "van": "ventral attention",
    "visual": "occipital visual",
    "vision": "occipital visual",
    "motor": "sensorimotor somatomotor",
    "somatomotor": "sensorimotor somatomotor",
    "sensorimotor": "sensorimotor somatomotor",
    "smn": "sensorimotor somatomotor",
    "salience": "salience",
}


@dataclass
class Question:
    """What a message asks: ``kind`` "attribute" or "what_if", and what it names."""

    kind: str
    by: str = "network"
    networks: list[str] = field(default_factory=list)
    change: str = ""
    change_words: str = ""
    change_means: str = ""
    asks_network: bool = False


def _words(text: str) -> str:
    """Lower-case words joined by single spaces, camelCase split ("DefaultMode" -> "default mode")."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(text))
    return " ".join(_WORD.findall(spaced.lower()))


def find_networks(message: str, network_names: list[str]) -> list[str]:
    """Atlas networks a message names (loosely: case, spaces, hyphens, camelCase, common abbreviations)."""
    text = f" {_words(message)} "
    for alias, meaning in _ALIASES.items():
        if f" {alias} " in text:
            text += f"{meaning} "
    found = []
    for name in network_names:
        if name == "unassigned":
            continue
        words = _words(name)
        first = words.split()[0] if words else ""
        joined = words.replace(" ", "")
        if f" {words} " in text or f" {joined} " in text:
            found.append(name)
        elif first and len(first) >= 4 and f" {first} " in text and len(words.split()) > 1:
            found.append(name)  # "somatomotor" names SomatomotorDorsal and SomatomotorLateral
    return found


def recognise(message: str, network_names: list[str] | None = None) -> Question | None:
    """The computed question a message asks, or None (then the LLM answers it)."""
    if not isinstance(message, str) or not message.strip():
        return None
    if _ATTRIBUTE.search(message):
        by = "region" if re.search(r"\b(regions?|areas?)\b", message, re.IGNORECASE) else "network"
        return Question("attribute", by=by)
    if not _WHAT_IF.search(message):
        return None
    change = next((rest for pattern, *rest in _CHANGES if re.search(pattern, message, re.IGNORECASE)), None)
    if change is None:
        return None
    networks = find_networks(message, list(network_names or []))
    asks = bool(re.search(r"\bnetworks?\b", message, re.IGNORECASE))
    if not networks and not asks:
        return None
    return Question(
        "what_if",
        networks=networks,
        change=change[0],
        change_words=change[1],
        change_means=change[2],
        asks_network=asks,
    )


# -------------------------------------------------------------------------------------------- answering
def answer(model: Any, question: Question, message: str, scan: Any, history: list[dict[str, Any]]) -> str:
    """The phrased answer to a recognised question about ``scan`` (None: no scan signal to compute with)."""
    if scan is None:
        return (
            "I need the scan's signal to work that out, and this conversation holds only its brain tokens: "
            "attach the scan again with your question (/scan PATH, or scan= in Python)."
        )
    try:
        if question.kind == "attribute":
            return _attribution(model, question, message, scan, history)
        return _what_if(model, question, scan)
    except FmriInputError as exc:
        return f"I cannot work that out: {exc}"


def _task_names(model: Any, message: str, history: list[dict[str, Any]]) -> list[str]:
    from fmrilm.model.scoring import TaskCard, stored_tasks

    stored = stored_tasks(model)
    if not stored:
        raise FmriInputError(
            "this model has learned no tasks, so it makes no prediction to explain",
            fix="use a model trained by Stage 3 (fmrilm train instruct) or fine-tuned on a task",
        )
    text = f" {_words(message)} "
    exact = [name for name in stored if "@" in name and f" {_words(name)} " in text]  # "diagnosis@abide"
    if exact:
        return sorted(exact)
    named = [name for name in stored if f" {_words(name.split('@')[0])} " in text]
    if named:
        return sorted(named)
    last = next((m for m in reversed(history) if m.get("role") == "assistant"), None)
    if last is not None:
        content = last.get("content")
        said = (
            content
            if isinstance(content, str)
            else " ".join(
                p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"
            )
        )
        said = f" {_words(said)} "
        answered = [
            name
            for name, card in stored.items()
            if any(f" {_words(o)} " in said for o in TaskCard.from_dict(card).options)
        ]
        if answered:
            return sorted(answered)
    return sorted(stored)


def _attribution(
    model: Any, question: Question, message: str, scan: Any, history: list[dict[str, Any]]
) -> str:
    from fmrilm.perturb import attribute

    parts = []
    for task in _task_names(model, message, history):
        frame = attribute(model, scan, task, by=question.by)
        key = "region" if question.by == "region" else "network"
        moving = frame[frame["effect"] > 0]
        top = moving.head(3 if question.by == "network" else 5)
        option, before = frame["option"].iloc[0], float(frame["before"].iloc[0])
        said = "expected value" if option == "value" else f"'{option}'"
        if top.empty:
            parts.append(
                f"For {task} ({said} {before:.2f}), silencing any one {key} does not move the answer."
            )
            continue
        ranked = "; ".join(
            f"{row[key]}{_in_network(row, question.by)} (effect {row['effect']:.3f}: {said} "
            f"{before:.2f} -> {row['after']:.2f})"
            for _, row in top.iterrows()
        )
        least = frame.iloc[-1][key]
        parts.append(
            f"For {task} ({said} {before:.2f}), the {key}s that drive it most are: {ranked}. Least: {least}."
        )
    unit = "network" if question.by == "network" else "region"
    return (
        " ".join(parts)
        + f" (Each {unit} was silenced in turn, its signal replaced by noise of equal variance, and the {unit}s are "
        "ranked by how far the answer's probabilities moved.)"
    )


def _in_network(row: Any, by: str) -> str:
    return f" [{row['network']}]" if by == "region" else ""


def _what_if(model: Any, question: Question, scan: Any) -> str:
    from fmrilm.perturb import perturb

    names = [n for n in scan.atlas.network_names if n != "unassigned"] if scan.atlas is not None else []
    if not question.networks:
        return (
            "Which network? This scan's atlas has: "
            + ", ".join(names)
            + ". Ask e.g. 'What if the "
            + (names[0] if names else "default")
            + " network were weaker?'"
        )
    frame = perturb(model, scan, network=question.networks, change=question.change)
    which = " and ".join(question.networks)
    n = len(frame.attrs["regions"])
    lines = []
    for task, rows in frame.groupby("task", sort=True):
        if (rows["option"] == "value").any():
            row = rows[rows["option"] == "value"].iloc[0]
            lines.append(
                f"{task}: expected value {row['before']:.2f} -> {row['after']:.2f} ({row['delta']:+.2f})"
            )
            continue
        top = rows.loc[rows["before"].idxmax()]
        after_top = rows.loc[rows["after"].idxmax()]
        change = (
            f", and the most probable answer would become '{after_top['option']}'"
            if after_top["option"] != top["option"]
            else ""
        )
        lines.append(
            f"{task}: '{top['option']}' {top['before']:.2f} -> {top['after']:.2f} ({top['delta']:+.2f}){change}"
        )
    return (
        f"If the {which} network were {question.change_words} ({question.change} on its {n} regions: "
        f"{question.change_means}), the answers would move: " + "; ".join(lines) + "."
    )
