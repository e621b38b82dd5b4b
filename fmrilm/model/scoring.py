"""Scored answers: the probability of each allowed answer string, never a parsed or defaulted reply.

Classification. For a prompt (the scan's brain tokens and the task's question, formatted exactly as Stage 3
trained it) every allowed answer is scored by the log-probability the model gives to its tokens, as the
assistant would write them (answer and end-of-turn marker, the tokens Stage 3 learns). The scores are
softmaxed over the allowed options ONLY, so the result is a real distribution over the task's answers and
AUCs computed from it are real. The prompts run once with the KV cache, which is then repeated for the
options (one forward for the prompts, one for all options of all prompts): the prompt, by far the longest
part, is never recomputed per option.

``normalize="sum"`` (default) uses the summed log-probability, i.e. ``log P(answer | prompt)``: with a model
trained on these answers, the softmax over options is the model's own conditional distribution restricted to
the allowed answers. ``normalize="mean"`` divides by the number of answer tokens (per-token geometric mean), a
common heuristic for zero-shot use when options of very different token lengths were never trained.

Regression. ``method="bins"`` (default) scores the task's bin answers as options and returns the expectation
of the bin values under their probabilities (a smooth, calibrated estimate that works even for small models);
``method="digits"`` decodes greedily under a digits-only constraint (a LogitsProcessor that allows only digit,
point, sign and end tokens that keep the text a valid number). Both return ``{"value", "method", ...}``.

Nothing is ever mapped to a default class: an unknown task, an option outside the task's answers or a
cohort value no answer map knows raises `FmriInputError`.

Tasks are given as a `TaskCard` (what a trained model stores for each task it learned, in its processor
config under ``extra["tasks"]``), as the name of such a stored task, or as a task spec object
(``fmrilm.instructions.spec.TaskSpec``, duck-typed so this module does not import the pipeline folders).
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fmrilm.cohort import is_missing as _missing
from fmrilm.errors import FmriInputError

SCORED_TYPES = ("binary", "multiclass", "regression")
NORMALIZATIONS = ("sum", "mean")
REGRESSION_METHODS = ("bins", "digits")
#: Where a trained model keeps its task cards: ``processor.config.extra[TASKS_KEY][name]``.
TASKS_KEY = "tasks"
#: Column prefix of option probabilities in `predict_cohort` tables: ``"p:" + option``.
PROB_PREFIX = "p:"


# ------------------------------------------------------------------------------------------------ task cards
@dataclass
class TaskCard:
    """What scoring needs to know about a task: its prompt, allowed answers and number format.

    ``instruction`` is the sentence appended to the question at inference, with the options listed in
    ``options`` order (training lists them in random orders). ``mapping`` (phenotype choice tasks) maps a
    canonical cohort value to its answer, so predictions can be put next to the truth. ``number`` (regression)
    holds ``decimals``, ``bins``, ``bin_values``, ``valid_range`` and ``unit``.
    """

    name: str
    type: str
    options: list[str]
    questions: list[str]
    instruction: str = ""
    target: str | None = None
    source: str = "phenotype"
    mapping: dict[str, str] | None = None
    number: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in SCORED_TYPES:
            raise FmriInputError(
                f"Task '{self.name}' is {self.type}: only binary, multiclass and regression answers are scored",
                fix="generate free text with model.chat(...) or model.describe(scan) instead",
            )
        if len(self.options) < 2:
            raise FmriInputError(
                f"Task '{self.name}' has fewer than two answer options to score ({self.options})",
                fix="give the task at least two answers",
            )
        if not self.questions:
            raise FmriInputError(f"Task '{self.name}' has no question", fix="give at least one question")

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_spec(
        cls, spec: Any, options: Sequence[str] | None = None, mapping: dict[str, str] | None = None
    ) -> TaskCard:
        """A card from a task spec (``fmrilm.instructions.spec.TaskSpec``, duck-typed).

        ``options`` / ``mapping`` are those the task was bound to on a cohort (an instruction set's meta
        stores them). Without them, a phenotype task with a single answer map uses that map; a task with
        several maps (e.g. diagnosis: autism / patient codings) needs ``options`` to say which answers to score.
        """
        ttype = getattr(spec, "type", None)
        if ttype == "open-ended":
            raise FmriInputError(
                f"Task '{spec.name}' is open-ended: its answer is free text, not scored",
                fix="generate it with model.chat(...) or model.describe(scan)",
            )
        number = None
        if ttype == "regression":
            number = spec.number.to_dict()
            bin_answers = list(spec.number.bin_answers())
            if options is not None and list(options) != bin_answers:
                _check_subset(spec.name, options, bin_answers)
            options = bin_answers
            instruction = spec.instruction_text([])
        else:
            maps = list(getattr(spec, "value_maps", None) or [])
            if mapping is None and options is not None and maps:
                wanted = set(options)
                mapping = next((dict(m["values"]) for m in maps if wanted <= set(m["values"].values())), None)
                if mapping is None:
                    known = sorted({a for m in maps for a in m["values"].values()})
                    _check_subset(spec.name, options, known)
            if mapping is None and len(maps) == 1:
                mapping = dict(maps[0]["values"])
            if options is None:
                options = spec.options(mapping) if (mapping is not None or not maps) else []
            if not options:
                names = ", ".join(str(m.get("name")) for m in maps) or "none"
                raise FmriInputError(
                    f"Task '{spec.name}' has several answer codings ({names}) or corpus-dependent answers, "
                    "so the options to score are not known",
                    fix="pass options=[...] (the answers the model was trained with), or use a model that "
                    "stores this task (trained on it by Stage 3 or fine-tuning)",
                )
            options = list(dict.fromkeys(options))
            instruction = spec.instruction_text(options)
        return cls(
            name=str(spec.name),
            type=str(ttype),
            options=list(options),
            questions=list(spec.questions),
            instruction=instruction,
            target=getattr(spec, "target", None),
            source=getattr(spec, "source", "phenotype"),
            mapping=None if mapping is None else {str(k): str(v) for k, v in mapping.items()},
            number=number,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskCard:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    # ------------------------------------------------------------------------------------------- prompts
    def prompt(self, question: int | str = 0) -> str:
        """The user text: a question (index into ``questions``, or any string) and the answer instruction."""
        q = (
            self.questions[int(question) % len(self.questions)]
            if isinstance(question, int)
            else str(question)
        )
        return f"{q} {self.instruction}".strip()

    def messages(self, question: int | str = 0) -> list[dict[str, Any]]:
        """The chat turn Stage 3 trains with (brain-tokens paradigm): the scan, then the question."""
        return [
            {"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": self.prompt(question)}]}
        ]

    def bin_values(self) -> list[float]:
        """Representative value of each regression option (bin), in ``options`` order."""
        number = self.number or {}
        if number.get("bin_values") is not None:
            return [float(v) for v in number["bin_values"]]
        edges = [float(b) for b in number.get("bins", [])]
        if len(edges) >= 2:
            return [(a + b) / 2.0 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        return [float(o) for o in self.options]

    def restricted(self, options: Sequence[str] | None) -> TaskCard:
        """This card scoring only ``options`` (a subset of its answers); anything else is an error."""
        if options is None or list(options) == self.options:
            return self
        if self.type == "regression":
            raise FmriInputError(
                f"Task '{self.name}' is a regression: its scored answers are its bins",
                fix="leave options out (or change the bins in the task YAML)",
            )
        _check_subset(self.name, options, self.options)
        return TaskCard.from_dict({**self.to_dict(), "options": list(dict.fromkeys(options))})

    def label_of(self, value: Any, *, subject: str | None = None) -> Any:
        """The answer string (choice) or number (regression) of a cohort value; None when it is missing.

        A value that no answer of the task covers raises, so the truth is never defaulted either.
        """
        if _missing(value):
            return None
        if self.type == "regression":
            try:
                number = float(value)
            except (TypeError, ValueError):
                return None
            lo_hi = (self.number or {}).get("valid_range")
            if not math.isfinite(number) or (lo_hi and not (lo_hi[0] <= number <= lo_hi[1])):
                return None
            return number
        if self.mapping is None:
            text = " ".join(str(value).split())
            if text in self.options:
                return text
            raise FmriInputError(
                f"Task '{self.name}': value '{value}' is not one of its answers {self.options}",
                subject=subject,
                fix="score a model that stores this task's answer map, or recode the column",
            )
        key = canonical_value(value)
        if key not in self.mapping:
            raise FmriInputError(
                f"Task '{self.name}': value '{value}' of column '{self.target}' has no answer "
                f"(known: {sorted(self.mapping)})",
                subject=subject,
                fix="add it to the task's answer map (task YAML) or recode the cohort column",
            )
        return self.mapping[key]


def canonical_value(value: Any) -> str:
    """Canonical form of a cohort value, as task answer maps key them (lower case, single spaces, 1.0 -> '1')."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return " ".join(str(value).strip().lower().split())


def _check_subset(task: str, options: Sequence[str], allowed: Sequence[str]) -> None:
    outside = [o for o in options if o not in set(allowed)]
    if outside:
        raise FmriInputError(
            f"{outside} {'is' if len(outside) == 1 else 'are'} not among the answers of task '{task}' "
            f"({list(allowed)})",
            fix="score only the task's own answers (no answer is mapped to another)",
        )
    if len(set(options)) < 2:
        raise FmriInputError(
            f"Scoring task '{task}' needs at least two distinct options, got {list(options)}",
            fix="pass two or more of the task's answers",
        )


def stored_tasks(model: Any) -> dict[str, dict[str, Any]]:
    """Task cards stored in a model's processor config (``{name: card dict}``), empty if none."""
    return dict((model.processor.config.extra or {}).get(TASKS_KEY) or {})


def store_tasks(model: Any, cards: Sequence[TaskCard]) -> None:
    """Record task cards in the model's processor config (saved with it), replacing same-named ones."""
    extra = model.processor.config.extra
    tasks = dict(extra.get(TASKS_KEY) or {})
    tasks.update({c.name: c.to_dict() for c in cards})
    extra[TASKS_KEY] = tasks


def resolve_task(model: Any, task: Any, options: Sequence[str] | None = None) -> TaskCard:
    """A `TaskCard` for ``task`` (card, stored task name, or task spec), restricted to ``options`` if given."""
    stored = stored_tasks(model)
    if isinstance(task, TaskCard):
        card = task
    elif isinstance(task, str):
        if task not in stored:
            known = ", ".join(sorted(stored)) or "none"
            raise FmriInputError(
                f"Unknown task '{task}' for this model (it stores: {known})",
                fix="use a task it was trained on, or pass a task spec: "
                "fmrilm.instructions.spec.load_task(NAME_OR_YAML)",
            )
        card = TaskCard.from_dict(stored[task])
    elif hasattr(task, "instruction_text") and hasattr(task, "questions"):
        name = str(getattr(task, "name", ""))
        if name in stored and options is None:
            saved = TaskCard.from_dict(stored[name])
            card = TaskCard.from_spec(task, options=saved.options, mapping=saved.mapping)
        else:
            card = TaskCard.from_spec(task, options=options)
    else:
        raise FmriInputError(
            f"Cannot score task {task!r}",
            fix="pass a task name the model stores, a TaskCard, or a TaskSpec from fmrilm.instructions.spec",
        )
    return card.restricted(options)


# --------------------------------------------------------------------------------------------------- scoring
def answer_ids(processor: Any, answer: str) -> list[int]:
    """Token ids of ``answer`` as the assistant writes it (answer + end-of-turn), exactly what Stage 3 learns."""
    example = processor.training_example(
        [{"role": "user", "content": "?"}, {"role": "assistant", "content": answer}]
    )
    return [t for t, lab in zip(example["input_ids"], example["labels"], strict=True) if lab != -100]


def option_logprobs(
    llm: Any, prompts: Any, options: Sequence[Sequence[int]], pad_id: int, embed_inputs: Any = None
) -> Any:
    """``(n_prompts, n_options)`` summed log-probabilities of each option's tokens after each prompt.

    ``prompts`` is a LEFT-padded batch (``input_ids``, ``attention_mask``). The prompts run once with the KV
    cache; the cache is repeated once per option and all options of all prompts run in one more forward.
    """
    import torch

    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    device = ids.device
    n_prompts, n_options = ids.shape[0], len(options)
    width = max(len(o) for o in options)
    opt = torch.full((n_options, width), int(pad_id), dtype=torch.long, device=device)
    opt_mask = torch.zeros((n_options, width), dtype=torch.long, device=device)
    for j, o in enumerate(options):
        opt[j, : len(o)] = torch.as_tensor(list(o), dtype=torch.long)
        opt_mask[j, : len(o)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # soft brain tokens: the prompt enters as embeddings (`FmriLM.embed_inputs`); the options as ids
    values = prompts.get("connectome_values") if hasattr(prompts, "get") else None
    if values is not None and embed_inputs is not None:
        first = {"inputs_embeds": embed_inputs(ids, values)}
    else:
        first = {"input_ids": ids}
    out = llm(**first, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (P, V): the first answer token
    scores = first[:, opt[:, 0]]  # (P, O)
    if width == 1:
        return scores
    from fmrilm.compat import output_cache, with_cache

    cache = output_cache(out)
    cache.batch_repeat_interleave(n_options)
    steps = width - 1
    ids2 = opt[:, :-1].repeat(n_prompts, 1)  # row p * O + j = option j after prompt p
    mask2 = torch.cat(
        [mask.repeat_interleave(n_options, dim=0), opt_mask[:, :-1].repeat(n_prompts, 1)], dim=1
    )
    start = positions[:, -1:].repeat_interleave(n_options, dim=0) + 1
    pos2 = start + torch.arange(steps, device=device)[None]
    out2 = llm(input_ids=ids2, attention_mask=mask2, position_ids=pos2, use_cache=True, **with_cache(cache))
    logp = torch.log_softmax(out2.logits.float(), dim=-1)
    targets = opt[:, 1:].repeat(n_prompts, 1)
    token_lp = logp.gather(-1, targets[..., None])[..., 0] * opt_mask[:, 1:].repeat(n_prompts, 1)
    return scores + token_lp.sum(-1).view(n_prompts, n_options)


def score_options(
    model: Any,
    scans: Sequence[Any],
    card: TaskCard,
    *,
    normalize: str = "sum",
    question: int | str = 0,
    paraphrases: int = 1,
) -> np.ndarray:
    """``(n_scans, n_options)`` probabilities of ``card.options`` for each scan (rows sum to 1).

    With ``paraphrases`` > 1 the probabilities are averaged over that many question paraphrases (starting
    at ``question``), which makes the answer less dependent on one wording.
    """
    import torch

    if normalize not in NORMALIZATIONS:
        raise FmriInputError(
            f"Unknown normalize '{normalize}'", fix=f"use one of {', '.join(NORMALIZATIONS)}"
        )
    processor = model.processor
    options = [answer_ids(processor, o) for o in card.options]
    lengths = torch.as_tensor([len(o) for o in options], dtype=torch.float32)
    questions = (
        [question] if not isinstance(question, int) else [question + i for i in range(max(1, paraphrases))]
    )
    total = np.zeros((len(scans), len(options)))
    llm = model.llm
    was_training = llm.training
    llm.eval()
    try:
        with torch.no_grad():
            for q in questions:
                convs = [card.messages(q) for _ in scans]
                prompts = processor(convs, [[s] for s in scans], add_generation_prompt=True).to(model.device)
                lp = option_logprobs(
                    llm, prompts, options, processor.tokenizer.pad_token_id, model.embed_inputs
                ).cpu()
                if normalize == "mean":
                    lp = lp / lengths[None]
                total += torch.softmax(lp, dim=-1).double().numpy()
    finally:
        llm.train(was_training)
    return total / len(questions)


# -------------------------------------------------------------------------------------------- digits decoding
class DigitsOnly:
    """LogitsProcessor for number answers: only tokens that keep the text a valid number, then an end token.

    The generated text must match ``-?\\d+(\\.\\d{1,decimals})?`` (leading spaces allowed); an end token is
    allowed only once it does, and a number longer than ``max_int_digits`` before the point is refused. With
    ``bounds`` (the task's valid range) a prefix that can only grow past them is refused, and the end is allowed
    only inside them.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_length: int,
        end_ids: Sequence[int],
        *,
        decimals: int = 0,
        max_int_digits: int = 6,
        bounds: Sequence[float] | None = None,
    ) -> None:
        vocab = _token_strings(tokenizer)
        self.lo, self.hi = (float(bounds[0]), float(bounds[1])) if bounds is not None else (None, None)
        self.strings = vocab
        self.candidates = [i for i, s in enumerate(vocab) if s and set(s) <= set(" 0123456789.-")]
        self.prompt_length = int(prompt_length)
        self.end_ids = [int(e) for e in end_ids]
        self.max_int_digits = int(max_int_digits)
        integer = rf"\d{{1,{int(max_int_digits)}}}"
        fraction = rf"(\.\d{{0,{int(decimals)}}})?" if decimals > 0 else ""
        self.prefix_re = re.compile(rf"\s*(-?({integer}{fraction})?)?")
        complete = rf"(\.\d{{1,{int(decimals)}}})?" if decimals > 0 else ""
        self.complete_re = re.compile(rf"\s*-?{integer}{complete}")

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        masked = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            text = "".join(self.strings[int(t)] for t in input_ids[row, self.prompt_length :])
            allowed = [i for i in self.candidates if self._can_grow(text + self.strings[i])]
            if self.complete_re.fullmatch(text) and self._inside(float(text)):
                allowed += self.end_ids
            if not allowed:  # cannot happen with digit tokens in the vocabulary; end rather than loop
                allowed = self.end_ids
            idx = torch.as_tensor(allowed, device=scores.device)
            masked[row, idx] = scores[row, idx]
        return masked

    def _inside(self, value: float) -> bool:
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def _can_grow(self, text: str) -> bool:
        """A valid number prefix that some completion (more digits, a point, decimals) keeps inside the bounds."""
        if not self.prefix_re.fullmatch(text):
            return False
        body = text.strip()
        sign = -1.0 if body.startswith("-") else 1.0
        digits = body.lstrip("-")
        if not digits:
            return body == "" or self.lo is None or self.lo < 0
        whole, point, frac = digits.partition(".")
        if point:  # completions lie in [v, v + 10^-len(frac)) away from zero
            v = float(f"{whole}.{frac or 0}")
            spans = [(v, v + 10.0 ** -len(frac))]
        else:  # v itself (plus decimals) or v followed by j more digits
            v = float(whole)
            spans = [(v * 10**j, (v + 1) * 10**j) for j in range(self.max_int_digits - len(whole) + 1)]
        for a, b in spans:  # completions lie in [a, b): in [a, b) when positive, in (-b, -a] when negative
            if sign > 0:
                fits = (self.hi is None or a <= self.hi) and (self.lo is None or b > self.lo)
            else:
                fits = (self.hi is None or -b < self.hi) and (self.lo is None or -a >= self.lo)
            if fits:
                return True
        return False


_TOKEN_STRINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_strings(tokenizer: Any) -> list[str]:
    """The text of every token id on its own (decoded once per tokenizer and vocabulary size)."""
    cached = _TOKEN_STRINGS.get(tokenizer)
    if cached is None or len(cached) != len(tokenizer):
        cached = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        _TOKEN_STRINGS[tokenizer] = cached
    return cached


def _end_ids(model: Any) -> list[int]:
    ids: list[int] = []
    eos = getattr(model.llm.generation_config, "eos_token_id", None)
    ids += [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    tok_eos = model.processor.tokenizer.eos_token_id
    if tok_eos is not None:
        ids.append(tok_eos)
    return list(dict.fromkeys(int(i) for i in ids))


def decode_number(model: Any, scan: Any, card: TaskCard, *, question: int | str = 0) -> tuple[float, str]:
    """Greedy decoding of a number under `DigitsOnly`: ``(value, generated text)``."""
    import torch
    from transformers import LogitsProcessorList

    number = card.number or {}
    decimals = int(number.get("decimals", 0))
    edges = number.get("bins") or []
    bounds = number.get("valid_range") or ([edges[0], edges[-1]] if edges else None)
    max_int = len(str(int(max(abs(float(v)) for v in bounds)))) if bounds else 6
    processor = model.processor
    inputs = processor([card.messages(question)], [[scan]], add_generation_prompt=True).to(model.device)
    prompt_len = inputs["input_ids"].shape[1]
    constraint = DigitsOnly(
        processor.tokenizer,
        prompt_len,
        _end_ids(model),
        decimals=decimals,
        max_int_digits=max_int,
        bounds=bounds,
    )
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_int + decimals + 3,
            do_sample=False,
            logits_processor=LogitsProcessorList([constraint]),
        )
    new = [int(t) for t in out[0, prompt_len:] if int(t) not in set(constraint.end_ids)]
    text = "".join(constraint.strings[t] for t in new).strip().rstrip(".")
    try:
        return float(text), text
    except ValueError as exc:  # only when the length limit cut the number before its first digit
        raise FmriInputError(
            f"Task '{card.name}': the digits-constrained answer '{text}' is not a number",
            fix="use method='bins' (expectation over the task's bins)",
        ) from exc


# ------------------------------------------------------------------------------------------------ predicting
def predict(
    model: Any,
    scan: Any,
    task: Any,
    *,
    options: Sequence[str] | None = None,
    method: str = "bins",
    normalize: str = "sum",
    question: int | str = 0,
    paraphrases: int = 1,
) -> dict[str, Any]:
    """The scored answer of ``task`` about one scan.

    Classification: ``{option: probability}`` over the task's allowed answers (or ``options``, a subset),
    summing to 1. Regression: ``{"value": float, "method": "bins" | "digits", ...}`` with the bin
    ``probabilities`` (bins) or the decoded ``text`` (digits).
    """
    if isinstance(scan, (str, os.PathLike)):  # a scan file: loaded (and checked) with the model's atlas
        from fmrilm.chat import load_chat_scan

        scan = load_chat_scan(scan, model=model)
    if not isinstance(paraphrases, int) or paraphrases < 1:
        raise FmriInputError(
            f"paraphrases must be a whole number >= 1, got {paraphrases!r}", fix="pass e.g. 1"
        )
    card = resolve_task(model, task, options)
    if card.type != "regression":
        probs = score_options(
            model, [scan], card, normalize=normalize, question=question, paraphrases=paraphrases
        )[0]
        return dict(zip(card.options, probs.tolist(), strict=True))
    if method not in REGRESSION_METHODS:
        raise FmriInputError(f"Unknown regression method '{method}'", fix="use 'bins' or 'digits'")
    if method == "digits":
        value, text = decode_number(model, scan, card, question=question)
        return {"value": value, "method": "digits", "text": text}
    probs = score_options(
        model, [scan], card, normalize=normalize, question=question, paraphrases=paraphrases
    )[0]
    value = float(np.dot(probs, card.bin_values()))
    return {
        "value": value,
        "method": "bins",
        "probabilities": dict(zip(card.options, probs.tolist(), strict=True)),
    }


def predict_cohort(
    model: Any,
    cohort: Any,
    task: Any,
    indices: Sequence[int] | None = None,
    *,
    options: Sequence[str] | None = None,
    method: str = "bins",
    normalize: str = "sum",
    question: int | str = 0,
    paraphrases: int = 1,
    batch_size: int = 8,
    progress: bool = False,
):
    """Scored answers for cohort rows ``indices`` (all by default), one DataFrame row per scan.

    Columns: ``index`` (cohort row), ``scan_id``, ``subject_id``, ``site``, ``task``, ``target`` (the raw
    cohort value, when the cohort has the task's column), ``label`` (its answer string, or number for
    regression; None when missing), ``prediction`` (most probable option, or the value), and for choice tasks
    and bins one ``"p:<option>"`` column per option (rows sum to 1). Regression adds ``method``.
    """
    import pandas as pd

    card = resolve_task(model, task, options)
    if method not in REGRESSION_METHODS:
        raise FmriInputError(f"Unknown regression method '{method}'", fix="use 'bins' or 'digits'")
    table = cohort.phenotype_table()
    rows = list(range(len(cohort))) if indices is None else [int(i) for i in indices]
    bad = [i for i in rows if not 0 <= i < len(cohort)]
    if bad:
        raise FmriInputError(
            f"Row indices {bad[:5]} are outside the cohort's {len(cohort)} scans",
            fix="pass valid row indices",
        )
    has_target = card.target is not None and card.target in table.columns
    records: list[dict[str, Any]] = []
    batches = [rows[s : s + max(1, int(batch_size))] for s in range(0, len(rows), max(1, int(batch_size)))]
    if progress:
        from fmrilm.progress import progress as show_progress

        batches = show_progress(batches, desc=f"scoring {card.name}", unit="batch")
    for batch in batches:
        scans = [cohort.scan(i) for i in batch]
        if card.type == "regression" and method == "digits":
            probs = None
            decoded = [decode_number(model, s, card, question=question) for s in scans]
        else:
            probs = score_options(
                model, scans, card, normalize=normalize, question=question, paraphrases=paraphrases
            )
        for j, i in enumerate(batch):
            rec = table.iloc[i]
            record: dict[str, Any] = {
                "index": i,
                "scan_id": str(rec.get("scan_id")),
                "subject_id": str(rec.get("subject_id")),
                "site": rec.get("site"),
                "task": card.name,
            }
            if has_target:
                record["target"] = rec[card.target]
                record["label"] = card.label_of(rec[card.target], subject=record["subject_id"])
            else:
                record["target"] = record["label"] = None
            if card.type == "regression":
                if probs is None:
                    record["prediction"] = decoded[j][0]
                else:
                    record["prediction"] = float(np.dot(probs[j], card.bin_values()))
                record["method"] = method
            else:
                record["prediction"] = card.options[int(np.argmax(probs[j]))]
            if probs is not None:
                record.update(
                    {PROB_PREFIX + o: float(p) for o, p in zip(card.options, probs[j], strict=True)}
                )
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame.attrs["task"] = card.name
    frame.attrs["options"] = list(card.options)
    return frame
