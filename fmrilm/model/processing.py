"""`FmriLMProcessor`: scans + chat messages -> ``input_ids`` through the base model's own chat template.

A message's content is a string or a list of parts: ``{"type": "text", "text": ...}`` and
``{"type": "fmri"}``. Each fMRI part takes the next scan given to the call (or carries its own ``"scan"``
or precomputed ``"codes"``), is encoded by the fMRI tokenizer into K codes per window and becomes the text
``<brain_start><brain_c1>...<brain_cWK><brain_end>``. The rendered conversation then goes through the text
tokenizer's ``apply_chat_template``, so any chat model formats brain tokens exactly as it formats words.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError
from fmrilm.model.brain_vocab import BrainTokenIds, BrainVocab, add_brain_tokens
from fmrilm.model.text_safety import escape_brain_tokens

PROCESSOR_CONFIG_NAME = "fmri_processor_config.json"
FMRI_TOKENIZER_SUBFOLDER = "fmri_tokenizer"
ADAPTERS_SUBFOLDER = "adapters"
IGNORE_INDEX = -100

#: Canonical instructions of the two Stage-2 tasks; `describe` and `forecast` use the same words.
DESCRIBE_PROMPT = "Describe this resting-state fMRI scan."
FORECAST_PROMPT = "Predict the brain activity in the next window."

#: Used only when a base model has no chat template of its own (e.g. GPT-2): ChatML, stated in the saved
#: tokenizer so every later load formats prompts the same way.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class FmriProcessorConfig:
    """What a saved model needs to turn a new scan into the same tokens: saved as ``fmri_processor_config.json``."""

    codebook_size: int = 512
    num_latents: int = 32
    brain_token_prefix: str = "brain"
    window_length: int = 48
    target_tr: float | None = 2.0
    max_windows: int | None = None
    forecast_context_windows: int | None = None
    atlas: dict[str, Any] | None = None
    descriptor_reference: dict[str, Any] | None = None
    base_model: str | None = None
    connectome_tokens: int = 0
    connectome_codebook_size: int = 0
    connectome_components: int = 0
    soft_tokens: bool = True
    #: the start marker of a part with connectome tokens also reads all of the scan's components at once
    #: (one projection of the whole vector: the LLM learns a scan-level trait from one position far faster
    #: than from 32 group positions; see BENCHMARKS.md, "scan summary")
    scan_summary: bool = False
    #: the scan summary reads the first this-many components (the top of the PCA spectrum; None: all, the
    #: default: fewer gained a one-pass learner nothing for autism and lost sex in leave-sites-out probes,
    #: BENCHMARKS.md, "Connectome components: whitened or not, how many")
    scan_summary_components: int | None = None
    #: how many of a part's connectome tokens the prompt shows (None: all M). With the scan summary the start
    #: marker already reads all M groups, so showing 1 keeps the whole vector in a prompt 31 tokens shorter
    #: (Stage 3 on a CPU costs per token; BENCHMARKS.md, "Does the LLM read the scan?")
    connectome_shown: int | None = None
    #: the system turn every prompt starts with when the conversation has none (None: the chat template's own
    #: default, e.g. SmolLM2's 21-token "You are a helpful AI assistant named SmolLM..."; "": an empty system
    #: turn, 4 tokens in ChatML). Training and chat read it from here, so they format prompts alike
    system_prompt: str | None = None
    #: a whole-scan part ends with a line of descriptor text computed from the scan by library code (the most
    #: elevated network-pair coupling against the reference; `fmrilm.descriptors.facts`): the connectome
    #: tokens do not carry which pair that is (BENCHMARKS.md, "Scan facts"). Needs the scan itself (not
    #: precomputed codes) and a reference of its atlas in ``descriptor_references``
    scan_facts: bool = False
    #: descriptor reference statistics of each atlas the model was instructed on (``ReferenceStats.to_dict``),
    #: what scan facts are z-scored against: the same statistics that made the instruction answers
    descriptor_references: list[dict[str, Any]] = field(default_factory=list)
    fmri_tokenizer_subfolder: str = FMRI_TOKENIZER_SUBFOLDER
    adapters_subfolder: str = ADAPTERS_SUBFOLDER
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab(self) -> BrainVocab:
        fc = self.connectome_codebook_size if self.connectome_tokens else 0
        return BrainVocab(self.codebook_size, self.brain_token_prefix, fc)

    @property
    def connectome_group_dim(self) -> int:
        return self.connectome_components // max(self.connectome_tokens, 1)

    @property
    def shown_connectome_tokens(self) -> int:
        """Connectome tokens one whole-scan part shows: the first ``connectome_shown`` of M (all by default)."""
        m = int(self.connectome_tokens)
        if self.connectome_shown is None or not m:
            return m
        return min(int(self.connectome_shown), m)

    @property
    def uses_soft_tokens(self) -> bool:
        """Whether connectome-token positions get the projection of their continuous values."""
        return bool(self.soft_tokens and self.connectome_tokens)

    @property
    def uses_scan_summary(self) -> bool:
        """Whether the start marker of a part with connectome tokens gets the projection of all its values."""
        return bool(self.uses_soft_tokens and self.scan_summary)

    @property
    def summary_components(self) -> int:
        """Components the scan summary reads: the first ``scan_summary_components`` (all by default)."""
        total = int(self.connectome_components)
        if self.scan_summary_components is None:
            return total
        return min(int(self.scan_summary_components), total)

    def __post_init__(self) -> None:
        if self.scan_summary_components is not None and int(self.scan_summary_components) < 1:
            raise FmriInputError(
                f"scan_summary_components must be at least 1 (or None for all), got {self.scan_summary_components}",
                fix="give the number of leading PCA components the scan summary reads, e.g. 64",
            )
        if self.connectome_shown is not None and int(self.connectome_shown) < 1:
            raise FmriInputError(
                f"connectome_shown must be at least 1 (or None for all tokens), got {self.connectome_shown}",
                fix="show at least one connectome token: the scan summary sits on the start marker before it",
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["processor_class"] = "FmriLMProcessor"
        vocab = self.vocab
        d["start_token"], d["end_token"] = vocab.start_token, vocab.end_token
        d["code_tokens"] = vocab.code_tokens
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FmriProcessorConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / PROCESSOR_CONFIG_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FmriProcessorConfig:
        path = Path(directory) / PROCESSOR_CONFIG_NAME
        if not path.exists():
            raise FmriInputError(
                f"No {PROCESSOR_CONFIG_NAME} in this folder, so it is not a saved fmrilm model",
                fix="pass a folder written by FmriLM.save_pretrained",
                file=directory,
            )
        return cls.from_dict(json.loads(path.read_text()))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class FmriLMProcessor:
    """Turns scans and chat messages into model inputs, and model outputs back into text and codes."""

    def __init__(self, tokenizer: Any, fmri_tokenizer: Any = None, config: FmriProcessorConfig | None = None):
        self.tokenizer = tokenizer
        self.fmri_tokenizer = fmri_tokenizer
        self.config = config or _config_from_fmri_tokenizer(fmri_tokenizer)
        self.vocab = self.config.vocab
        self.ids: BrainTokenIds = add_brain_tokens(tokenizer, self.vocab)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE

    # ------------------------------------------------------------------------------------------ scans
    def encode_scan(self, scan_or_codes: Any, *, limit: bool = True) -> np.ndarray:
        """``(W, K)`` int64 codes of a scan (through the fMRI tokenizer) or of given codes (checked).

        A scan's windows that are mostly padding (its last, short window) are dropped, as in training. With
        ``limit`` only the last ``config.max_windows`` windows are kept.
        """
        if _is_codes(scan_or_codes):
            codes = np.asarray(_to_numpy(scan_or_codes), dtype=np.int64)
            codes = codes[None] if codes.ndim == 1 else codes
        elif limit and self.config.max_windows == 0:  # connectome tokens only: no window is shown
            codes = np.zeros((0, self.config.num_latents), dtype=np.int64)
        else:
            if self.fmri_tokenizer is None:
                raise FmriInputError(
                    "This processor has no fMRI tokenizer, so it cannot encode a scan",
                    fix="load the model with its fmri_tokenizer subfolder, or pass precomputed codes",
                )
            codes = self._encode_with_tokenizer(scan_or_codes)
        if codes.ndim != 2 or codes.shape[1] != self.config.num_latents:
            raise FmriInputError(
                f"Brain codes must have shape (windows, {self.config.num_latents}), got {tuple(codes.shape)}",
                fix="encode scans with the fMRI tokenizer saved with this model",
            )
        if limit and self.config.max_windows is not None and len(codes) > self.config.max_windows:
            codes = codes[len(codes) - self.config.max_windows :]  # 0 keeps none: connectome tokens only
        return codes

    def _encode_with_tokenizer(self, scan: Any) -> np.ndarray:
        import torch

        tok = self.fmri_tokenizer
        with torch.no_grad():
            if not hasattr(scan, "timeseries"):  # windows (W, L, R): the caller chose them
                return _to_numpy(tok.encode(scan)).astype(np.int64)
            windows, mask = tok.windows(scan)
            keep = valid_windows(mask, tok.config.window_length, tok.config.patch_length)
            return _to_numpy(tok.encode(windows[keep], coords=scan, mask=mask[keep])).astype(np.int64)

    def n_brain_tokens(self, n_windows: int, connectome: bool = False) -> int:
        """Tokens one fMRI part of ``n_windows`` windows takes: start + (M connectome) + K per window + end."""
        return (
            2
            + self.config.num_latents * int(n_windows)
            + (self.config.shown_connectome_tokens if connectome else 0)
        )

    @property
    def connectome_tokenizer(self) -> Any:
        return getattr(self.fmri_tokenizer, "connectome", None) if self.config.connectome_tokens else None

    def encode_connectome(self, source: Any) -> Any:
        """A scan's `ConnectomeTokens` (or given ones, checked), or None when this model has none."""
        from fmrilm.tokenizer.connectome import ConnectomeTokens

        if not self.config.connectome_tokens:
            return None
        if isinstance(source, dict):
            source = ConnectomeTokens(np.asarray(source["codes"]), np.asarray(source["values"]))
        if isinstance(source, ConnectomeTokens):
            tokens = source
        elif hasattr(source, "timeseries"):
            if self.connectome_tokenizer is None:
                raise FmriInputError(
                    "This model reads connectome tokens but its fMRI tokenizer has no connectome part",
                    fix="load the model with its fmri_tokenizer/connectome subfolder",
                )
            tokens = self.connectome_tokenizer.encode(source)
        else:
            return None  # precomputed window codes only: the part shows no connectome tokens
        m, d = self.config.connectome_tokens, self.config.connectome_group_dim
        codes = np.asarray(tokens.codes).reshape(m, -1)
        values = np.asarray(tokens.values, dtype=np.float32).reshape(m, d)
        return ConnectomeTokens(codes=codes, values=values)

    # -------------------------------------------------------------------------------------- rendering
    def render_messages(
        self, messages: Sequence[dict[str, Any]], scans: Any = None, values_out: list | None = None
    ) -> list[dict[str, str]]:
        """Messages with every fMRI part replaced by its brain-token text; contents become plain strings.

        ``values_out`` receives, in order, each part's connectome values ``(M, group_dim)`` (soft tokens).
        """
        queue = _scan_queue(scans)
        rendered = []
        for message in messages:
            if "role" not in message or "content" not in message:
                raise FmriInputError(
                    "Each chat message needs a 'role' and a 'content'",
                    fix="pass messages like {'role': 'user', 'content': [...]}",
                )
            content = message["content"]
            if isinstance(content, str):
                text = escape_brain_tokens(content, self.vocab.prefix)  # user text stays text
            else:
                pieces = []
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind == "text":
                        pieces.append(escape_brain_tokens(str(part.get("text", "")), self.vocab.prefix))
                    elif kind == "fmri":
                        pieces.append(self._render_fmri_part(part, queue, values_out))
                    else:
                        raise FmriInputError(
                            f"Unknown message part {part!r}",
                            fix="use {'type': 'text', 'text': ...} or {'type': 'fmri'}",
                        )
                text = "\n".join(pieces)
            rendered.append({**{k: v for k, v in message.items() if k != "content"}, "content": text})
        if queue:
            raise FmriInputError(
                f"{len(queue)} scan(s) were given but the messages have no {{'type': 'fmri'}} part left for them",
                fix="add one fMRI part per scan to the messages",
            )
        return rendered

    def _render_fmri_part(
        self, part: dict[str, Any], queue: list[Any], values_out: list | None = None
    ) -> str:
        if "codes" in part:
            source = part["codes"]
            if isinstance(source, (list, tuple)) and not len(source):  # no window shown (max_windows 0)
                source = np.zeros((0, self.config.num_latents), dtype=np.int64)
        elif "scan" in part:
            source = part["scan"]
        elif queue:
            source = queue.pop(0)
        else:
            raise FmriInputError(
                "A message has more {'type': 'fmri'} parts than scans were given",
                fix="pass one scan per fMRI part",
            )
        windows = part.get("windows")
        codes = self.encode_scan(source, limit=windows is None)
        if windows is not None:  # indices into the scan's own windows, before any max_windows cap
            try:
                codes = (
                    codes[windows] if isinstance(windows, slice) else codes[np.asarray(windows, dtype=int)]
                )
            except IndexError:
                raise FmriInputError(
                    f"Window {windows} does not exist: the scan has {len(codes)} usable windows",
                    fix=f"ask for a window between 0 and {len(codes) - 1}",
                ) from None
            codes = codes[None] if codes.ndim == 1 else codes
        connectome = None
        facts = ""
        if windows is None:  # the whole scan: its connectome tokens come first, its facts last
            connectome = self.encode_connectome(part.get("connectome", source))
            facts = self._part_facts(part, source)
        if connectome is None:
            text = self.vocab.render(codes)
        else:
            if values_out is not None:
                values_out.append(connectome.values)
            text = self.vocab.render(codes, connectome.token_codes[: self.config.shown_connectome_tokens])
        return f"{text}\n{facts}" if facts else text

    # ------------------------------------------------------------------------------------------ facts
    def scan_facts(self, scan: Any) -> str:
        """The facts line of a whole scan (`fmrilm.descriptors.facts`); empty when this model states none
        (``config.scan_facts`` off) or has no descriptor reference of the scan's atlas."""
        if not self.config.scan_facts or not hasattr(scan, "timeseries"):
            return ""
        for facts in self._fact_makers():
            if facts.matches(scan):
                return facts.text(scan)
        return ""

    def _fact_makers(self) -> list[Any]:
        """One `CouplingFacts` per stored reference, built once (a reference is ~200 kB of JSON)."""
        from fmrilm.descriptors import ReferenceStats
        from fmrilm.descriptors.facts import CouplingFacts

        key = id(self.config.descriptor_references), len(self.config.descriptor_references)
        if getattr(self, "_facts_key", None) != key:
            self._facts = [
                CouplingFacts(ReferenceStats.from_dict(r)) for r in self.config.descriptor_references
            ]
            self._facts_key = key
        return self._facts

    def _part_facts(self, part: dict[str, Any], source: Any) -> str:
        if not self.config.scan_facts:
            return ""
        if "facts" in part:  # computed before (a chat's history, Stage 3's encoded scans): still only text
            return escape_brain_tokens(str(part["facts"] or ""), self.vocab.prefix)
        return self.scan_facts(part.get("scan", source))

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        scans: Any = None,
        *,
        add_generation_prompt: bool = True,
        values_out: list | None = None,
    ) -> str:
        """The prompt text, formatted by the base model's own chat template."""
        return self._template(self.render_messages(messages, scans, values_out), add_generation_prompt)

    def _template(self, rendered: list[dict[str, str]], add_generation_prompt: bool) -> str:
        system = self.config.system_prompt
        if system is not None and rendered and rendered[0].get("role") != "system":
            rendered = [{"role": "system", "content": system}, *rendered]
        return self.tokenizer.apply_chat_template(
            rendered, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode_text(self, text: str) -> list[int]:
        # The template already wrote BOS and markers; adding special tokens again would double them.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---------------------------------------------------------------------------------------- batching
    def __call__(
        self,
        conversations: Sequence[Any],
        scans: Any = None,
        *,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        return_tensors: str | None = "pt",
    ):
        """Tokenize one conversation or a batch of them (padded; left by default, for generation).

        ``scans`` is, per conversation, a scan / codes or a list of them, consumed by its fMRI parts in order.
        """
        batch, batch_scans = _as_batch(conversations, scans)
        examples = []
        for conv, sc in zip(batch, batch_scans, strict=True):
            values: list = []
            text = self.apply_chat_template(
                conv, sc, add_generation_prompt=add_generation_prompt, values_out=values
            )
            examples.append({"input_ids": self._encode_text(text), **self._values_entry(values)})
        return self.pad(examples, padding_side=padding_side, return_tensors=return_tensors)

    def _values_entry(self, values: list) -> dict[str, Any]:
        if not values or not self.config.uses_soft_tokens:
            return {}
        return {"connectome_values": np.concatenate(values).astype(np.float32)}

    def training_example(self, messages: Sequence[dict[str, Any]], scans: Any = None) -> dict[str, list[int]]:
        """``input_ids`` and ``labels`` for one conversation: only assistant turns are learned (-100 elsewhere).

        Each assistant turn is the difference between the template rendered up to and including it and the
        template rendered up to it with the generation prompt, so the labels cover exactly what the model must
        generate at inference (answer and end-of-turn marker) for any chat template that extends its prefix.
        """
        values: list = []
        rendered = self.render_messages(messages, scans, values)
        input_ids: list[int] = []
        labels: list[int] = []
        consumed = ""
        for j, message in enumerate(rendered):
            if message["role"] != "assistant":
                continue
            prompt = self._template(rendered[:j], add_generation_prompt=True)
            full = self._template(rendered[: j + 1], add_generation_prompt=False)
            if not prompt.startswith(consumed) or not full.startswith(prompt):
                raise FmriInputError(
                    "This chat template does not render conversations as growing prefixes, so assistant turns "
                    "cannot be located for training",
                    fix="use a base model whose chat template appends each message (ChatML, Llama, Qwen, ...)",
                )
            context = self._encode_text(prompt[len(consumed) :])
            answer = self._encode_text(full[len(prompt) :])
            input_ids += context + answer
            labels += [IGNORE_INDEX] * len(context) + answer
            consumed = full
        if not consumed:
            raise FmriInputError(
                "A training conversation needs an assistant message", fix="add the target answer"
            )
        rest = self._template(rendered, add_generation_prompt=False)[len(consumed) :]
        if rest:
            tail = self._encode_text(rest)
            input_ids += tail
            labels += [IGNORE_INDEX] * len(tail)
        return {"input_ids": input_ids, "labels": labels, **self._values_entry(values)}

    def pad(
        self,
        examples: Sequence[dict[str, Sequence[int]]],
        *,
        padding_side: str = "right",
        return_tensors: str | None = "pt",
    ):
        """Pad ``input_ids`` (pad token), ``labels`` (-100) and build ``attention_mask``."""
        import torch
        from transformers import BatchEncoding

        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        width = max(len(e["input_ids"]) for e in examples)
        pad_id = self.tokenizer.pad_token_id
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
        has_labels = all("labels" in e for e in examples)
        if has_labels:
            out["labels"] = []
        for e in examples:
            ids = list(e["input_ids"])
            n = width - len(ids)
            fill = (
                (lambda seq, v, n=n: [v] * n + seq)
                if padding_side == "left"
                else (lambda seq, v, n=n: seq + [v] * n)
            )
            out["input_ids"].append(fill(ids, pad_id))
            out["attention_mask"].append(fill([1] * len(ids), 0))
            if has_labels:
                out["labels"].append(fill(list(e["labels"]), IGNORE_INDEX))
        values = self._soft_values(examples, out["input_ids"])
        if return_tensors == "pt":
            tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
            if values is not None:
                tensors["connectome_values"] = torch.as_tensor(values)
            return BatchEncoding(tensors)
        if values is not None:
            out["connectome_values"] = values
        return BatchEncoding(out)

    def _soft_values(
        self, examples: Sequence[dict[str, Any]], padded_ids: list[list[int]]
    ) -> np.ndarray | None:
        """``(B, S, components)`` values at connectome-token positions (zero elsewhere), or None.

        The k-th connectome token of a part is group ``k`` of that scan's components: its values go in that
        group's block of columns, so one linear map of the block-sparse row is one projection per group.
        With a scan summary, the start marker just before a part's connectome tokens holds all of them.
        """
        if not any(len(e.get("connectome_values", ())) for e in examples):
            return None
        cfg = self.config
        m, d, shown = cfg.connectome_tokens, cfg.connectome_group_dim, cfg.shown_connectome_tokens
        ids = np.asarray(padded_ids)
        out = np.zeros((*ids.shape, cfg.connectome_components), dtype=np.float32)
        for b, e in enumerate(examples):
            rows = np.asarray(e.get("connectome_values", np.zeros((0, d))), dtype=np.float32).reshape(-1, d)
            positions = np.flatnonzero(self.ids.is_connectome(ids[b]))
            if len(positions) * m != len(rows) * shown:  # each part: `shown` tokens, M rows of values
                raise FmriInputError(
                    f"{len(positions)} connectome tokens but {len(rows)} rows of connectome values",
                    fix="build inputs with the processor, which keeps tokens and values together",
                )
            for k, pos in enumerate(positions):
                part, g = divmod(k, shown)
                out[b, pos, g * d : (g + 1) * d] = rows[part * m + g]
            if cfg.uses_scan_summary:
                for part, first in enumerate(range(0, len(positions), shown)):
                    start = positions[first] - 1
                    if start < 0 or ids[b, start] != self.ids.start_id:
                        raise FmriInputError(
                            "A part's connectome tokens do not follow its start marker",
                            fix="build inputs with the processor, which keeps tokens and values together",
                        )
                    out[b, start] = rows[part * m : (part + 1) * m].reshape(-1)
        return out

    # ---------------------------------------------------------------------------------------- decoding
    def decode(self, ids: Any, *, skip_special_tokens: bool = True) -> str:
        """Text of generated ids; brain tokens and chat markers are dropped by default."""
        return self.tokenizer.decode(_to_numpy(ids).tolist(), skip_special_tokens=skip_special_tokens).strip()

    def codes_from_ids(self, ids: Any) -> np.ndarray:
        """Brain codes found in a sequence of ids, in order, reshaped to ``(windows, K)`` (a partial window is dropped)."""
        arr = _to_numpy(ids).reshape(-1)
        lo = self.ids.first_code_id
        codes = arr[(arr >= lo) & (arr < lo + self.config.codebook_size)] - lo
        k = self.config.num_latents
        return codes[: (len(codes) // k) * k].reshape(-1, k).astype(np.int64)

    # ----------------------------------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Text tokenizer at the top level, processor config beside it, fMRI tokenizer in its subfolder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.config.save(directory)
        if self.fmri_tokenizer is not None:
            self.fmri_tokenizer.save_pretrained(directory / self.config.fmri_tokenizer_subfolder)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, load_fmri_tokenizer: bool = True
    ) -> FmriLMProcessor:
        from transformers import AutoTokenizer

        from fmrilm.safety import inside

        directory = Path(directory)
        config = FmriProcessorConfig.load(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)  # never run its code
        fmri_tokenizer = None
        where = directory / PROCESSOR_CONFIG_NAME
        sub = inside(directory, config.fmri_tokenizer_subfolder, "fmri_tokenizer_subfolder", where)
        inside(directory, config.adapters_subfolder, "adapters_subfolder", where)
        if load_fmri_tokenizer and (sub / "config.json").exists():
            from fmrilm.tokenizer import FmriTokenizerModel

            fmri_tokenizer = FmriTokenizerModel.from_pretrained(sub)
            fmri_tokenizer.eval()
        return cls(tokenizer, fmri_tokenizer, config)


# ------------------------------------------------------------------------------------------------ helpers
#: A window with fewer real samples than this share (the padded end of a scan) is not shown to the model.
MIN_VALID_SHARE = 0.5


def valid_windows(mask: np.ndarray, window_length: int, patch_length: int) -> np.ndarray:
    """Windows that are mostly real samples; the first window is kept even when the scan is short."""
    mask = np.asarray(mask)
    counts = mask.sum(1)
    need = max(patch_length, int(MIN_VALID_SHARE * window_length))
    keep = counts >= min(need, int(counts.max()) if len(counts) else 0)
    return keep


def _config_from_fmri_tokenizer(fmri_tokenizer: Any) -> FmriProcessorConfig:
    if fmri_tokenizer is None:
        return FmriProcessorConfig()
    c = fmri_tokenizer.config
    config = FmriProcessorConfig(
        codebook_size=int(c.codebook_size),
        num_latents=int(c.num_latents),
        window_length=int(c.window_length),
        target_tr=c.target_tr,
    )
    connectome = getattr(fmri_tokenizer, "connectome", None)
    if connectome is not None:
        config.connectome_tokens = int(connectome.config.num_tokens)
        config.connectome_codebook_size = int(connectome.config.codebook_size)
        config.connectome_components = int(connectome.config.components)
    return config


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _is_codes(x: Any) -> bool:
    if hasattr(x, "timeseries"):
        return False
    if hasattr(x, "dtype"):
        kind = str(x.dtype)
        return "int" in kind
    if isinstance(x, (list, tuple)) and x:
        first = x[0]
        if isinstance(first, (list, tuple)) and first:
            first = first[0]
        return isinstance(first, (int, np.integer))
    return False


def _scan_queue(scans: Any) -> list[Any]:
    if scans is None:
        return []
    if hasattr(scans, "timeseries") or _is_codes(scans):
        return [scans]
    return list(scans)


def _is_conversation(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and (len(x) == 0 or isinstance(x[0], dict))


def _as_batch(conversations: Any, scans: Any) -> tuple[list[Any], list[Any]]:
    if _is_conversation(conversations):
        return [conversations], [scans]
    batch = list(conversations)
    if scans is None:
        return batch, [None] * len(batch)
    scans = list(scans)
    if len(scans) != len(batch):
        raise FmriInputError(
            f"{len(batch)} conversations but {len(scans)} scan lists were given",
            fix="pass one scan (or list of scans) per conversation",
        )
    return batch, scans
