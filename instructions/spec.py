"""Task specs: one YAML file per question a model learns to answer, validated into a :class:`TaskSpec`.

A new task is a new YAML file, no code: the file says which column (or descriptor feature) holds the answer,
how the question may be phrased (at least 20 paraphrases, so the model learns the task and not one sentence),
which answer strings are allowed (classification) or how numbers are written (regression), and in which
paradigms the task is asked. Built-in specs live in ``instructions/tasks/*.yaml``; any path to a ``.yaml``
file works wherever a task name does.

Schema (keys not listed are an error, so typos do not pass silently)::

    name: sex                       # task name (unique)
    description: ...                # one line, for reports
    type: binary                    # binary | multiclass | regression | open-ended
    source: phenotype               # phenotype (a cohort column, default) | descriptors (a corpus feature/text)
    target: sex                     # the cohort column, or for source: descriptors the corpus column/feature
    questions: [...]                # >= 20 distinct paraphrases
    instruction: "Answer with one of: {options}."   # optional; appended to the question
    list_options: auto              # auto (list when <= 12 options) | true | false
    answers:                        # binary / multiclass with source: phenotype
      maps:                         # cohort value -> answer; the first map covering every value in the cohort
        - name: abide               # is used, so one task can serve cohorts that code the same target
          values: {autism: autism, control: typical development}   # differently
    number:                         # regression
      decimals: 0                   # digits after the point in the answer string
      unit: years
      valid_range: [0, 120]         # values outside are treated as missing (e.g. ABIDE's FIQ -9999)
      bins: [0, 10, 20]             # edges, for expectation-over-bins scoring
      bin_values: [5, 15]           # optional representative value per bin (default: midpoints)
    derive:                         # source: descriptors, binary/multiclass: how the answer is read
      rule: argmax                  # argmax | argmin over features matching `features` (a regex whose
      features: '^fc\\.between\\.(?P<a>.+)__(?P<b>.+)$'   # named groups fill `label`), or threshold
      label: "{a} and {b}"          # on one `feature`: `above` if z > threshold else `below`;
      humanize: true                # network names as the descriptor text writes them (default true)
    sentences: ["... {answer} ..."] # full-sentence answers for the open paradigm
    paradigms: [brain, brain_descriptors, multi, open]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError

TASK_TYPES = ("binary", "multiclass", "regression", "open-ended")
SOURCES = ("phenotype", "descriptors")
#: brain: brain tokens only; brain_descriptors: brain tokens plus the scan's descriptor text; multi: several
#: questions in one turn; open: the answer is a full sentence (or, for open-ended tasks, a free description);
#: followup: the question asked in a second turn of a chat whose first turn asked another task about the same
#: scan (built for every task with the brain paradigm), so a chat answers each question, not only the first.
PARADIGMS = ("brain", "brain_descriptors", "multi", "open", "followup")
#: Paradigms a task YAML need not list: built from another one it lists (followup from brain).
DERIVED_PARADIGMS = {"followup": "brain"}
DERIVE_RULES = ("argmax", "argmin", "threshold")
MIN_QUESTIONS = 20
LIST_OPTIONS_AUTO_MAX = 12
TOP_KEYS = {
    "name",
    "description",
    "type",
    "source",
    "target",
    "questions",
    "instruction",
    "list_options",
    "answers",
    "number",
    "derive",
    "sentences",
    "paradigms",
}
DEFAULT_INSTRUCTIONS = {
    "choice": "Answer with one of: {options}.",
    "choice_unlisted": "Answer with the name only.",
    "regression": "Answer with a number ({unit}).",
    "open-ended": "",
}


def _norm(value: Any) -> str:
    """Canonical form of a cohort value or answer string: lower case, single spaces, floats like 1.0 -> '1'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).strip().lower().split())


@dataclass
class NumberFormat:
    """How a regression answer is written, and the bins used to score it as an expectation over bins."""

    decimals: int = 0
    unit: str = ""
    valid_range: tuple[float, float] | None = None
    bins: list[float] = field(default_factory=list)
    bin_values: list[float] | None = None

    def format(self, value: float) -> str:
        """Digits only (optional sign and point), so answers can be decoded under a digits constraint."""
        text = f"{float(value):.{int(self.decimals)}f}"
        return "0" if text in ("-0", "") else text

    def is_valid(self, value: Any) -> bool:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(value):
            return False
        if self.valid_range is not None:
            lo, hi = self.valid_range
            return lo <= value <= hi
        return True

    def centers(self) -> list[float]:
        if self.bin_values is not None:
            return [float(v) for v in self.bin_values]
        return [(a + b) / 2.0 for a, b in zip(self.bins[:-1], self.bins[1:], strict=True)]

    def bin_answers(self) -> list[str]:
        """The answer strings scored for expectation over bins (one per bin, its representative value)."""
        return [self.format(c) for c in self.centers()]

    def bin_index(self, value: float) -> int:
        """Index of the bin holding ``value`` (values beyond the edges go to the first / last bin)."""
        import bisect

        i = bisect.bisect_right(self.bins, float(value)) - 1
        return min(max(i, 0), len(self.bins) - 2)

    def two_hot(self, value: float) -> tuple[tuple[int, float], tuple[int, float]]:
        """The two bins whose representative values enclose ``value``, each with the weight that makes their
        weighted mean ``value`` (a "two-hot" target, clipped to the first / last value): training on these
        answers teaches the bin distribution whose expectation `fmrilm eval` reads."""
        import bisect

        centers = self.centers()
        order = sorted(range(len(centers)), key=centers.__getitem__)
        ranked = [centers[i] for i in order]
        v = min(max(float(value), ranked[0]), ranked[-1])
        hi = min(max(bisect.bisect_left(ranked, v), 1), len(ranked) - 1)
        lo = hi - 1
        span = ranked[hi] - ranked[lo]
        upper = 0.0 if span <= 0 else (v - ranked[lo]) / span
        return (order[lo], 1.0 - upper), (order[hi], upper)

    def expectation(self, probabilities) -> float:
        """Expected value over bins: sum of each bin's probability times its representative value."""
        import numpy as np

        p = np.asarray(probabilities, dtype=float)
        return float(np.dot(p / p.sum(), self.centers()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decimals": self.decimals, "unit": self.unit, "bins": list(self.bins)}
        if self.valid_range is not None:
            out["valid_range"] = list(self.valid_range)
        if self.bin_values is not None:
            out["bin_values"] = list(self.bin_values)
        return out


@dataclass
class TaskSpec:
    """One validated task. Build with :meth:`from_yaml` / :func:`load_task`; see the module docstring."""

    name: str
    type: str
    target: str
    questions: list[str]
    description: str = ""
    source: str = "phenotype"
    instruction: str | None = None
    list_options: str | bool = "auto"
    value_maps: list[dict[str, Any]] = field(default_factory=list)  # [{"name": str, "values": {norm: ans}}]
    number: NumberFormat | None = None
    derive: dict[str, Any] | None = None
    sentences: list[str] = field(default_factory=list)
    paradigms: list[str] = field(default_factory=lambda: ["brain"])
    path: str | None = None

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(cls, path: str | Path) -> TaskSpec:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FmriInputError(
                "The task file does not exist", file=path, fix="give the path of a task .yaml file"
            )
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise FmriInputError(
                f"The task file is not valid YAML{line} ({getattr(exc, 'problem', exc)})",
                file=path,
                fix="fix the YAML syntax (indentation, quotes, colons) and compare with instructions/tasks/sex.yaml",
            ) from exc
        return cls.from_dict(data, file=path)

    @classmethod
    def from_dict(cls, data: Any, *, file: str | Path | None = None) -> TaskSpec:
        """Validate a parsed YAML mapping; every problem is a one-sentence FmriInputError naming the file."""

        def bad(problem: str, fix: str) -> FmriInputError:
            return FmriInputError(problem, fix=fix, file=file)

        if not isinstance(data, dict):
            raise bad(
                "The task spec is not a mapping of keys to values", "write `name:`, `type:`, ... at top level"
            )
        unknown = sorted(set(data) - TOP_KEYS)
        if unknown:
            raise bad(f"Unknown key(s) {unknown} in the task spec", f"use only {sorted(TOP_KEYS)}")
        for key in ("name", "type", "target", "questions"):
            if key not in data or data[key] in (None, ""):
                raise bad(f"The task spec has no `{key}`", f"add `{key}:` (see instructions/tasks/sex.yaml)")
        name = str(data["name"]).strip()
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise bad(f"Task name '{name}' is not a simple identifier", "use letters, digits, '_' or '-'")
        ttype = str(data["type"]).strip()
        if ttype not in TASK_TYPES:
            raise bad(f"Unknown task type '{ttype}'", f"use one of {', '.join(TASK_TYPES)}")
        source = str(data.get("source", "phenotype")).strip()
        if source not in SOURCES:
            raise bad(f"Unknown source '{source}'", f"use one of {', '.join(SOURCES)}")
        questions = data["questions"]
        if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
            raise bad("`questions` must be a list of non-empty strings", "write one paraphrase per `- ` line")
        questions = [" ".join(q.split()) for q in questions]
        distinct = {q.lower() for q in questions}
        if len(distinct) < MIN_QUESTIONS:
            raise bad(
                f"Task '{name}' has {len(distinct)} distinct question paraphrases, fewer than {MIN_QUESTIONS}",
                f"add paraphrases until there are at least {MIN_QUESTIONS} different ones",
            )
        if len(distinct) != len(questions):
            raise bad(f"Task '{name}' repeats a question paraphrase", "remove the duplicate line")
        paradigms = data.get("paradigms", ["brain"])
        if isinstance(paradigms, str):
            paradigms = [paradigms]
        if not isinstance(paradigms, list) or not paradigms or any(p not in PARADIGMS for p in paradigms):
            raise bad(f"Bad `paradigms` {paradigms!r}", f"give a non-empty list from {', '.join(PARADIGMS)}")
        list_options = data.get("list_options", "auto")
        if list_options not in ("auto", True, False):
            raise bad(f"Bad `list_options` {list_options!r}", "use auto, true or false")
        sentences = data.get("sentences") or []
        if not isinstance(sentences, list) or any(
            not isinstance(s, str) or ("{answer}" not in s and ttype != "open-ended") for s in sentences
        ):
            raise bad(
                "`sentences` must be strings that contain '{answer}'", "write e.g. 'It looks {answer}.'"
            )
        if "open" in paradigms and ttype != "open-ended" and not sentences:
            raise bad(
                f"Task '{name}' lists the open paradigm but has no `sentences`",
                "add full-sentence answer templates with '{answer}', or drop `open` from `paradigms`",
            )
        instruction = data.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise bad("`instruction` must be a string", "write e.g. 'Answer with one of: {options}.'")

        spec = cls(
            name=name,
            type=ttype,
            target=str(data["target"]).strip(),
            questions=questions,
            description=str(data.get("description", "")).strip(),
            source=source,
            instruction=instruction,
            list_options=list_options,
            sentences=[" ".join(s.split()) for s in sentences],
            paradigms=list(dict.fromkeys(paradigms)),
            path=None if file is None else str(file),
        )
        if ttype in ("binary", "multiclass"):
            if source == "phenotype":
                spec.value_maps = _parse_maps(data.get("answers"), name, bad)
                for m in spec.value_maps:
                    _check_options(list(dict.fromkeys(m["values"].values())), ttype, name, bad)
            else:
                spec.derive = _parse_derive(data.get("derive"), ttype, name, bad)
                if spec.derive["rule"] == "threshold":
                    _check_options([spec.derive["above"], spec.derive["below"]], ttype, name, bad)
        elif data.get("answers") is not None:
            raise bad(f"`answers` is only for binary/multiclass tasks, not {ttype}", "remove `answers`")
        if ttype == "regression":
            spec.number = _parse_number(data.get("number"), name, bad)
        elif data.get("number") is not None:
            raise bad(f"`number` is only for regression tasks, not {ttype}", "remove `number`")
        if data.get("derive") is not None and spec.derive is None:
            raise bad(
                "`derive` is only for binary/multiclass tasks with source: descriptors", "remove `derive`"
            )
        if ttype == "open-ended" and source != "descriptors":
            raise bad(
                "Open-ended tasks read their answer from the descriptor corpus",
                "set `source: descriptors` and `target:` to a corpus text column (or 'all')",
            )
        if ttype == "open-ended" and set(spec.paradigms) != {"open"}:
            raise bad(
                "An open-ended task's answer is the descriptor text, so it is asked only in the open paradigm",
                "set `paradigms: [open]`",
            )
        return spec

    # ------------------------------------------------------------------------------------------------ answers
    @property
    def is_choice(self) -> bool:
        return self.type in ("binary", "multiclass")

    def answer_map(self, values: list[Any] | None = None) -> tuple[str, dict[str, str]]:
        """The (name, value->answer map) to use for a cohort whose non-missing target values are ``values``.

        The first map whose keys cover every value is chosen; a value no map knows raises an error that
        names it, so no value is ever mapped to a default answer.
        """
        if not self.value_maps:
            raise FmriInputError(
                f"Task '{self.name}' has no value maps", fix="add `answers: maps:`", file=self.path
            )
        present = {_norm(v) for v in (values or [])}
        for m in self.value_maps:
            if present <= set(m["values"]):
                return m["name"], dict(m["values"])
        known = sorted({k for m in self.value_maps for k in m["values"]})
        unknown = sorted(present - set(known)) or sorted(present)
        raise FmriInputError(
            f"Task '{self.name}': no answer map covers the cohort's '{self.target}' values {unknown} "
            f"(the maps know {known})",
            fix=f"add a map for these values under `answers: maps:` in {self.path or 'the task YAML'}, "
            "or recode the cohort column",
            file=self.path,
        )

    def answer_for(self, value: Any, mapping: dict[str, str], *, subject: str | None = None) -> str:
        """The answer string for one cohort value under ``mapping``; an unknown value is an error."""
        key = _norm(value)
        if key not in mapping:
            raise FmriInputError(
                f"Task '{self.name}': value '{value}' of column '{self.target}' has no answer "
                f"(known: {sorted(mapping)})",
                fix=f"add it to the answer map in {self.path or 'the task YAML'} or recode the cohort column",
                file=self.path,
                subject=subject,
            )
        return mapping[key]

    def options(self, mapping: dict[str, str] | None = None) -> list[str]:
        """The allowed answer strings (classification: the map's answers; regression: the bin answers)."""
        if self.type == "regression":
            return self.number.bin_answers()
        if mapping is not None:
            return list(dict.fromkeys(mapping.values()))
        if self.derive is not None and self.derive["rule"] == "threshold":
            return [self.derive["above"], self.derive["below"]]
        return []

    # ------------------------------------------------------------------------------------------------ prompts
    def instruction_text(self, options: list[str]) -> str:
        """The sentence appended to a question: the listed options, the unit, or nothing."""
        if self.is_choice:
            listed = self.list_options is True or (
                self.list_options == "auto" and len(options) <= LIST_OPTIONS_AUTO_MAX
            )
            template = self.instruction or DEFAULT_INSTRUCTIONS["choice" if listed else "choice_unlisted"]
            return template.format(options=", ".join(options), unit="")
        if self.type == "regression":
            template = self.instruction or DEFAULT_INSTRUCTIONS["regression"]
            return template.format(options="", unit=self.number.unit or "a number")
        return (self.instruction or "").format(options="", unit="")

    def to_dict(self) -> dict[str, Any]:
        """The YAML-shaped mapping (round-trips through :meth:`from_dict`)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "source": self.source,
            "target": self.target,
            "questions": list(self.questions),
            "list_options": self.list_options,
            "paradigms": list(self.paradigms),
        }
        if self.instruction is not None:
            out["instruction"] = self.instruction
        if self.value_maps:
            out["answers"] = {
                "maps": [{"name": m["name"], "values": dict(m["values"])} for m in self.value_maps]
            }
        if self.number is not None:
            out["number"] = self.number.to_dict()
        if self.derive is not None:
            out["derive"] = dict(self.derive)
        if self.sentences:
            out["sentences"] = list(self.sentences)
        return out


# ---------------------------------------------------------------------------------------------------- parsing
def _parse_maps(answers: Any, name: str, bad) -> list[dict[str, Any]]:
    if not isinstance(answers, dict) or "maps" not in answers:
        raise bad(
            f"Task '{name}' has no `answers: maps:`",
            "add `answers: {maps: [{name: default, values: {cohort_value: answer}}]}`",
        )
    maps = answers["maps"]
    if isinstance(maps, dict):  # a single map may be written directly
        maps = [{"name": "default", "values": maps}]
    if not isinstance(maps, list) or not maps:
        raise bad("`answers: maps:` must be a non-empty list", "give at least one value map")
    out = []
    for i, m in enumerate(maps):
        if not isinstance(m, dict) or not isinstance(m.get("values"), dict) or not m["values"]:
            raise bad(
                f"Answer map #{i + 1} has no `values` mapping", "write `values: {cohort_value: answer}`"
            )
        values: dict[str, str] = {}
        for k, v in m["values"].items():
            if not isinstance(v, str) or not v.strip():
                raise bad(
                    f"Answer for value '{k}' in map #{i + 1} is not a non-empty string", "quote the answer"
                )
            values[_norm(k)] = " ".join(v.split())
        out.append({"name": str(m.get("name", f"map{i + 1}")), "values": values})
    return out


def _check_options(options: list[str], ttype: str, name: str, bad) -> None:
    """Allowed answers must be distinct and none a prefix of another, so scoring can tell them apart."""
    normed = [_norm(o) for o in options]
    if len(set(normed)) != len(normed):
        raise bad(
            f"Task '{name}' has answer options that differ only in case or spaces", "make them distinct"
        )
    if ttype == "binary" and len(normed) != 2:
        raise bad(f"Binary task '{name}' has {len(normed)} distinct answers {options}", "give exactly two")
    if ttype == "multiclass" and len(normed) < 2:
        raise bad(f"Multiclass task '{name}' has fewer than two answers", "give at least two")
    for a in normed:
        for b in normed:
            if a != b and b.startswith(a + " "):
                raise bad(
                    f"Answer '{a}' is the start of answer '{b}' in task '{name}'",
                    "choose answers whose words differ, so their probabilities are scored apart",
                )


def _parse_number(number: Any, name: str, bad) -> NumberFormat:
    if not isinstance(number, dict):
        raise bad(
            f"Regression task '{name}' has no `number:` format",
            "add `number: {decimals: 0, unit: ..., bins: [...]}`",
        )
    unknown = sorted(set(number) - {"decimals", "unit", "valid_range", "bins", "bin_values"})
    if unknown:
        raise bad(
            f"Unknown key(s) {unknown} under `number`", "use decimals, unit, valid_range, bins, bin_values"
        )
    try:
        decimals = int(number.get("decimals", 0))
        bins = [float(b) for b in number.get("bins") or []]
        bin_values = None if number.get("bin_values") is None else [float(v) for v in number["bin_values"]]
        rng = number.get("valid_range")
        valid_range = None if rng is None else (float(rng[0]), float(rng[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise bad(f"`number` of task '{name}' has a non-numeric value ({exc})", "write numbers only") from exc
    if not 0 <= decimals <= 6:
        raise bad(f"`decimals` must be 0..6, got {decimals}", "give e.g. decimals: 0")
    if len(bins) < 3 or any(b >= c for b, c in zip(bins[:-1], bins[1:], strict=False)):
        raise bad(
            f"`bins` of task '{name}' must be at least 3 increasing edges", "give e.g. bins: [0, 10, 20, 40]"
        )
    if bin_values is not None and len(bin_values) != len(bins) - 1:
        raise bad(
            "`bin_values` needs one value per bin (len(bins) - 1)", "give one representative value per bin"
        )
    fmt = NumberFormat(
        decimals=decimals,
        unit=str(number.get("unit", "")),
        valid_range=valid_range,
        bins=bins,
        bin_values=bin_values,
    )
    answers = fmt.bin_answers()
    if len(set(answers)) != len(answers):
        raise bad(
            f"Bins of task '{name}' give duplicate answers {answers} at {decimals} decimals",
            "widen the bins, set `bin_values`, or raise `decimals`",
        )
    return fmt


def _parse_derive(derive: Any, ttype: str, name: str, bad) -> dict[str, Any]:
    if not isinstance(derive, dict) or derive.get("rule") not in DERIVE_RULES:
        raise bad(
            f"Descriptor task '{name}' needs `derive: {{rule: ...}}`",
            f"set rule to one of {', '.join(DERIVE_RULES)}",
        )
    allowed = {
        "rule",
        "features",
        "label",
        "rename",
        "humanize",
        "exclude_same",
        "feature",
        "threshold",
        "above",
        "below",
    }
    unknown = sorted(set(derive) - allowed)
    if unknown:
        raise bad(f"Unknown key(s) {unknown} under `derive`", f"use only {sorted(allowed)}")
    rule = derive["rule"]
    if rule == "threshold":
        for key in ("feature", "above", "below"):
            if not derive.get(key):
                raise bad(f"`derive` with rule threshold needs `{key}`", f"add `{key}:`")
        if ttype != "binary":
            raise bad("rule threshold gives a binary answer", "set `type: binary`")
        return {
            "rule": rule,
            "feature": str(derive["feature"]),
            "threshold": float(derive.get("threshold", 0.0)),
            "above": " ".join(str(derive["above"]).split()),
            "below": " ".join(str(derive["below"]).split()),
        }
    for key in ("features", "label"):
        if not derive.get(key):
            raise bad(f"`derive` with rule {rule} needs `{key}`", f"add `{key}:`")
    try:
        pattern = re.compile(str(derive["features"]))
    except re.error as exc:
        raise bad(f"`derive: features` is not a valid regular expression ({exc})", "fix the pattern") from exc
    groups = set(pattern.groupindex)
    needed = set(re.findall(r"\{(\w+)\}", str(derive["label"])))
    if not needed <= groups:
        raise bad(
            f"`derive: label` uses {sorted(needed - groups)} that the `features` pattern does not capture",
            "name the groups in the pattern, e.g. (?P<a>...)",
        )
    out = {"rule": rule, "features": pattern.pattern, "label": str(derive["label"])}
    if derive.get("rename"):
        out["rename"] = {str(k): str(v) for k, v in dict(derive["rename"]).items()}
    if derive.get("humanize") is not None:
        out["humanize"] = bool(derive["humanize"])
    if derive.get("exclude_same") is not None:
        out["exclude_same"] = bool(derive["exclude_same"])
    return out


# ----------------------------------------------------------------------------------------------------- lookup
def builtin_task_dir() -> Path:
    return Path(str(resources.files("fmrilm.instructions") / "tasks"))


def builtin_tasks() -> list[str]:
    """Names of the task specs shipped with fmrilm."""
    return sorted(p.stem for p in builtin_task_dir().glob("*.yaml"))


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name, or any task YAML by path; an unknown name lists the known ones."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        return TaskSpec.from_yaml(path)
    builtin = builtin_task_dir() / f"{text}.yaml"
    if builtin.is_file():
        return TaskSpec.from_yaml(builtin)
    raise FmriInputError(
        f"Unknown task '{text}'",
        fix=f"use one of {', '.join(builtin_tasks())}, or give the path of a task .yaml file",
    )


def load_tasks(spec: str | list[str] | None) -> list[TaskSpec]:
    """Parse ``"sex,age,path/to/task.yaml"`` (or a list); names must be unique."""
    if spec is None or spec == "" or spec == "all":
        items = builtin_tasks()
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    tasks = [load_task(s) for s in items]
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FmriInputError(f"Task name(s) {dup} given twice", fix="give each task once (names are unique)")
    return tasks
