"""Conversations about scans: history, scan attachment, streamed generation with the KV cache.

A conversation is a plain list of chat messages in `FmriLMProcessor`'s format, so it can be passed back for the
next turn, saved as JSON or fed to training code. Each attached scan is stored in its user message as an fMRI
part holding the scan's brain codes (``{"type": "fmri", "codes": [[...]], "scan_id": ...}``): the scan is
encoded once, every later turn re-renders the same brain tokens, and scans attached on earlier turns stay in the
context when a later turn attaches another one.

`ChatSession` also keeps the model's KV cache between turns: a new turn only runs the LLM over the tokens that
differ from what the cache already holds (the new message), not over the whole conversation and its brain
tokens again. A chat answer is words: brain tokens (the vocabulary rows the model added for codes, markers and
connectome tokens) cannot be generated (`TextTokensOnly`; the rest of the distribution is renormalised), because
their output rows take probability from the words; ``text_only=False`` lets them through again. Answers are
decoded with special tokens skipped, so chat markers never reach the user as text. Forecasting
(`FmriLM.forecast`) is the opposite: it generates brain codes only.

A few questions are answered by computing instead of generating (`fmrilm.chat_questions`: "which networks drive
this prediction?", "what if the default mode network were weaker?"): a fixed dispatch on recognised wordings
that calls `fmrilm.perturb` on the last scan attached and phrases its result; ``tools=False`` turns it off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError

History = list[dict[str, Any]]
#: ``False``/``None``: silent; ``True``: print to stdout as tokens arrive; a callable: called with each text piece.
Stream = bool | Callable[[str], None] | None


# ------------------------------------------------------------------------------------------------- scans
def load_chat_scan(
    path: str | os.PathLike, *, atlas: Any = None, tr: float | None = None, model: Any = None
) -> Any:
    """Load a scan file for a model: the model's own atlas when none is given, so a bare region table just works.

    ``model`` is an `FmriLM`, its processor or its `FmriProcessorConfig`. Errors are `FmriInputError` sentences
    from `fmrilm.io.load_scan` (file, subject, fix); when the model's atlas was used implicitly, the fix says so,
    because the user never typed it.
    """
    from fmrilm.io import load_scan

    implicit = None
    if atlas is None and model is not None:
        implicit = model_atlas(model)
        atlas = implicit
    try:
        return load_scan(path, atlas=atlas, tr=tr)
    except FmriInputError as exc:
        if implicit is None or "atlas" not in exc.problem:
            raise
        raise FmriInputError(
            exc.problem,
            fix=f"{exc.fix.replace(', or omit atlas=', '')}; this model's atlas '{implicit.name}' "
            f"({implicit.n_regions} regions) was used because none was given: pass --atlas on the command line "
            "or atlas= in Python",
            file=exc.file,
            subject=exc.subject,
        ) from exc


def model_atlas(model: Any) -> Any:
    """The `Atlas` saved with a model (an `FmriLM`, its processor or its config); None when it has none."""
    config = getattr(model, "processor", model)
    config = getattr(config, "config", config)
    if not getattr(config, "atlas", None):
        return None
    from fmrilm.atlas import Atlas

    return Atlas.from_dict(config.atlas)


def fmri_part(processor: Any, scan: Any) -> dict[str, Any]:
    """The history's fMRI part of a scan (or of precomputed codes): encoded once, stored as its codes."""
    codes = processor.encode_scan(scan)
    part: dict[str, Any] = {"type": "fmri", "codes": codes.tolist()}
    connectome = processor.encode_connectome(scan)
    if connectome is not None:  # the whole scan's connectome tokens, kept with the history
        part["connectome"] = {"codes": connectome.codes.tolist(), "values": connectome.values.tolist()}
    facts = processor.scan_facts(scan)
    if facts:  # the scan's facts line, kept with the history like its tokens
        part["facts"] = facts
    scan_id = getattr(scan, "scan_id", None)
    if scan_id is not None:
        part["scan_id"] = str(scan_id)
    return part


def _scan_list(scan: Any) -> list[Any]:
    """None -> [], one scan / codes / path -> [it], a list or tuple of them -> the list."""
    from fmrilm.model.processing import _is_codes

    if scan is None:
        return []
    if isinstance(scan, (list, tuple)) and not _is_codes(scan):
        if any(isinstance(s, dict) and "role" in s for s in scan):
            raise FmriInputError(
                "chat() takes a scan, a message and the history, but a list of chat messages was given as the scan",
                fix="call model.chat(scan, message, history) or, for ready-made messages, model.reply(messages, scans)",
            )
        return list(scan)
    return [scan]


# ---------------------------------------------------------------------------------------------- streaming
def make_streamer(tokenizer: Any, stream: Stream) -> Any:
    """A transformers streamer for ``stream`` (None when silent): skips the prompt and all special tokens."""
    if stream is None or stream is False:
        return None
    from transformers import TextStreamer

    if stream is True:
        return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if not callable(stream):
        raise FmriInputError(
            f"stream must be True, False or a function of one text argument, not {type(stream).__name__}",
            fix="pass stream=True to print, or stream=callback",
        )

    class CallbackStreamer(TextStreamer):
        """Hands each finished piece of text to a callback; leading whitespace of the answer is dropped."""

        started = False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            if text:
                stream(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


# --------------------------------------------------------------------------------------------- decoding
class TextTokensOnly:
    """Logits processor that forbids the brain vocabulary, so generated text is words only.

    Brain tokens sit in the LLM's output layer (tied to the input rows in SmolLM2), so even a trained model puts
    some probability on them where an answer has words; sampling from the rest renormalises the word
    distribution, and greedy decoding can no longer pick a brain token.
    """

    def __init__(self, brain_ids: Sequence[int]) -> None:
        import torch

        self.ids = torch.as_tensor(sorted({int(i) for i in brain_ids}), dtype=torch.long)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        ids = self.ids.to(scores.device)
        return scores.index_fill(-1, ids[ids < scores.shape[-1]], float("-inf"))


def text_only_kwargs(processor: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate`` keywords with `TextTokensOnly` for ``processor``'s brain tokens added to any given
    ``logits_processor``."""
    from transformers import LogitsProcessorList

    brain = TextTokensOnly(processor.ids.all_ids)
    return {
        **kwargs,
        "logits_processor": LogitsProcessorList([*(kwargs.get("logits_processor") or []), brain]),
    }


# ------------------------------------------------------------------------------------------------ session
class ChatSession:
    """One conversation with an `FmriLM`: history, scans waiting for the next message, and the KV cache.

    ``session.attach(scan)`` queues a scan (a `Scan`, codes, or a file path loaded with the model's atlas) for
    the next message; ``session.ask(text)`` returns the answer and appends both turns to ``session.history``.
    With ``tools`` (default), recognised attribution and what-if questions are computed on the last attached
    scan (`fmrilm.chat_questions`) instead of generated. With ``text_only`` (default) brain tokens cannot be
    generated (`TextTokensOnly`).
    """

    def __init__(
        self,
        model: Any,
        history: Sequence[dict[str, Any]] | None = None,
        *,
        reuse_cache: bool = True,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        tools: bool = True,
        text_only: bool = True,
        **generate_kwargs: Any,
    ) -> None:
        self.model = model
        self.text_only = bool(text_only)
        self.history: History = list(history or [])
        self.pending: list[dict[str, Any]] = []
        #: Scans attached in this session, with their signal (what computed answers perturb).
        self.scans: list[Any] = []
        self.tools = bool(tools)
        self.reuse_cache = reuse_cache
        self.generate_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, **generate_kwargs)
        self._cache: Any = None
        self._cache_ids: Any = None
        #: Tokens the LLM actually ran over in the last turn's prefill (prompt minus the reused cache).
        self.last_prefill_tokens = 0

    @property
    def processor(self) -> Any:
        return self.model.processor

    def attach(self, scan: Any, *, atlas: Any = None, tr: float | None = None) -> dict[str, Any]:
        """Queue a scan for the next message; returns its fMRI part (``codes``, ``scan_id``)."""
        if isinstance(scan, (str, os.PathLike)):
            scan = load_chat_scan(Path(scan), atlas=atlas, tr=tr, model=self.model)
        part = fmri_part(self.processor, scan)
        self.pending.append(part)
        if hasattr(scan, "timeseries"):
            self.scans.append(scan)
        return part

    def reset(self) -> None:
        """Forget the conversation, the queued scans and the cache."""
        self.history = []
        self.pending = []
        self.scans = []
        self._cache = self._cache_ids = None

    def ask(self, message: str, scans: Any = None, *, stream: Stream = False, **generate_kwargs: Any) -> str:
        """Send a user message (with any queued or given scans) and return the assistant's answer text."""
        user = self._user_turn(message, scans)
        computed = self._computed_answer(message) if self.tools else None
        if computed is not None:
            _emit(stream, computed)
            return self._record(user, computed)
        answer_ids = self._generate(
            [*self.history, user], stream, {**self.generate_kwargs, **generate_kwargs}
        )
        return self._record(user, answer_ids)

    def _user_turn(self, message: str, scans: Any = None) -> dict[str, Any]:
        """The user message: queued and given scans, then the text (checked: text, not empty)."""
        for scan in _scan_list(scans):
            self.attach(scan)
        if not isinstance(message, str):
            raise FmriInputError(
                f"The message must be text, not {type(message).__name__}", fix="pass the question as a string"
            )
        content: list[dict[str, Any]] = list(self.pending)
        if message.strip():
            content.append({"type": "text", "text": message})
        if not content:
            raise FmriInputError("The message is empty and no scan is attached", fix="type a question")
        return {"role": "user", "content": content}

    def _record(self, user: dict[str, Any], answer: Any) -> str:
        """Append the turn to the history; ``answer`` is computed text or generated ids. Returns the text."""
        if isinstance(answer, str):
            text, reply = answer, [{"type": "text", "text": answer}]
        else:
            text = self.processor.decode(answer)
            reply = [{"type": "text", "text": text}]
            codes = self.processor.codes_from_ids(answer)
            if len(codes):  # the model wrote brain tokens: keep them in the context, never in the text
                reply.append({"type": "fmri", "codes": codes.tolist()})
        self.history = [*self.history, user, {"role": "assistant", "content": reply}]
        self.pending = []
        return text

    def _computed_answer(self, message: str) -> str | None:
        """The computed answer to a recognised question (`fmrilm.chat_questions`), or None for the LLM."""
        from fmrilm.chat_questions import answer, recognise

        scan = self.scans[-1] if self.scans else None
        atlas = scan.atlas if scan is not None and scan.atlas is not None else model_atlas(self.model)
        question = recognise(message, atlas.network_names if atlas is not None else [])
        if question is None:
            return None
        return answer(self.model, question, message, scan, self.history)

    # -------------------------------------------------------------------------------------- generation
    def _generate(self, messages: History, stream: Stream, kwargs: dict[str, Any]) -> Any:
        import torch

        from fmrilm.compat import output_cache, with_cache

        model = self.model
        inputs = self.processor(messages, add_generation_prompt=True)
        ids = inputs["input_ids"]
        kwargs["max_new_tokens"] = _fit_context(model, ids.shape[1], int(kwargs.get("max_new_tokens") or 256))
        cache = self._reusable_cache(ids[0]) if self.reuse_cache else None
        self.last_prefill_tokens = ids.shape[1] - (0 if cache is None else cache.get_seq_length())
        streamer = make_streamer(self.processor.tokenizer, stream)
        values = inputs.get("connectome_values")
        if values is not None:
            kwargs["connectome_values"] = values.to(model.device)
        if self.text_only:
            kwargs = text_only_kwargs(self.processor, kwargs)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=inputs["attention_mask"].to(model.device),
                streamer=streamer,
                return_dict_in_generate=True,
                **with_cache(cache),
                **kwargs,
            )
        sequence = out.sequences[0].cpu()
        self._cache = output_cache(out) if self.reuse_cache else None
        self._cache_ids = None if self._cache is None else sequence[: self._cache.get_seq_length()]
        return sequence[ids.shape[1] :]

    def _reusable_cache(self, ids: Any) -> Any:
        """The previous turn's cache cut back to its longest prefix shared with ``ids`` (None if unusable)."""
        from transformers import DynamicCache

        cache, cached = self._cache, self._cache_ids
        self._cache = self._cache_ids = None  # handed to generate, which extends it in place
        if not isinstance(cache, DynamicCache) or cached is None:
            return None
        n = min(len(cached), len(ids) - 1)  # at least one new token must go through the model
        same = (cached[:n] == ids[:n]).long()
        keep = int(same.cumprod(0).sum()) if n > 0 else 0
        if keep == 0:
            return None
        try:
            if keep < cache.get_seq_length():
                cache.crop(
                    keep - cache.get_seq_length()
                )  # transformers 5: a negative count removes from the end
        except Exception:  # sliding-window or recurrent layers that cannot roll back: recompute
            return None
        return cache if cache.get_seq_length() == keep else None


def _emit(stream: Stream, text: str) -> None:
    """Hand a computed answer to the stream target (as generated answers are streamed)."""
    if stream is True:
        print(text, end="", flush=True)
    elif callable(stream):
        stream(text)


def _fit_context(model: Any, prompt_tokens: int, max_new_tokens: int) -> int:
    """``max_new_tokens`` cut to the model's context; a prompt that does not fit at all is a clear error."""
    config = model.base_llm.config if hasattr(model, "base_llm") else model.llm.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit:
        return max_new_tokens
    if prompt_tokens >= limit:
        raise FmriInputError(
            f"The conversation is {prompt_tokens} tokens long, beyond this model's context of {limit} tokens",
            fix="start a new conversation (/reset in the chat) or attach fewer or shorter scans",
        )
    return min(max_new_tokens, int(limit) - prompt_tokens)


# --------------------------------------------------------------------------------------------- functions
def chat(
    model: Any,
    scan: Any,
    message: str,
    history: Sequence[dict[str, Any]] | None = None,
    *,
    stream: Stream = False,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    tools: bool = True,
    text_only: bool = True,
    **generate_kwargs: Any,
) -> tuple[str, History]:
    """One turn: ``(answer, history)``; pass ``history`` back with the next message to continue.

    ``scan`` is a `Scan`, precomputed codes, a file path (loaded with the model's atlas), a list of these, or
    None to go on talking about the scans already in ``history``. ``tools``: recognised attribution and
    what-if questions are computed on the scans given in this call (`fmrilm.chat_questions`). ``text_only``:
    brain tokens cannot be generated (`TextTokensOnly`).
    """
    session = ChatSession(
        model,
        history,
        reuse_cache=False,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        tools=tools,
        text_only=text_only,
        **generate_kwargs,
    )
    answer = session.ask(message, scan, stream=stream)
    return answer, session.history


def chat_batch(
    model: Any,
    scans: Sequence[Any],
    message: str,
    histories: Sequence[History | None] | None = None,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    tools: bool = True,
    text_only: bool = True,
) -> list[tuple[str, History]]:
    """The same message in many conversations at once: ``[(answer, history), ...]``, one per scan.

    Each conversation is ``chat(model, scans[i], message, histories[i], ...)``; they are generated together, a
    left-padded batch of ``batch_size`` in one greedy ``generate``, which costs about what one conversation
    does on a CPU (evaluating a chat on held-out scans asks one question of each). Greedy decoding of a padded
    batch gives each conversation the answer it gets alone, up to floating-point rounding. ``scans[i]`` is
    None to go on talking about the scans in ``histories[i]``.
    """
    import torch

    histories = list(histories) if histories is not None else [None] * len(scans)
    if len(histories) != len(scans):
        raise FmriInputError(
            f"chat_batch got {len(scans)} scans but {len(histories)} histories",
            fix="give one history (or None) per scan",
        )
    if int(batch_size) < 1:
        raise FmriInputError(
            f"batch_size must be at least 1, got {batch_size}", fix="pass batch_size=1 or more"
        )
    sessions = [ChatSession(model, h, reuse_cache=False, tools=tools, text_only=text_only) for h in histories]
    answers: list[str | None] = [None] * len(sessions)
    waiting = []  # (index, user turn) of the conversations the LLM answers
    for i, (session, scan) in enumerate(zip(sessions, scans, strict=True)):
        user = session._user_turn(message, scan)
        computed = session._computed_answer(message) if tools else None
        if computed is not None:
            answers[i] = session._record(user, computed)
        else:
            waiting.append((i, user))
    processor = model.processor
    stops = _stop_ids(model)
    for start in range(0, len(waiting), int(batch_size)):
        chunk = waiting[start : start + int(batch_size)]
        inputs = processor([[*sessions[i].history, user] for i, user in chunk], add_generation_prompt=True)
        ids = inputs["input_ids"]
        kwargs: dict[str, Any] = {"max_new_tokens": _fit_context(model, ids.shape[1], int(max_new_tokens))}
        if inputs.get("connectome_values") is not None:
            kwargs["connectome_values"] = inputs["connectome_values"].to(model.device)
        if text_only:
            kwargs = text_only_kwargs(processor, kwargs)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=inputs["attention_mask"].to(model.device),
                do_sample=False,
                **kwargs,
            )
        for row, (i, user) in zip(out[:, ids.shape[1] :].cpu(), chunk, strict=True):
            ended = [k for k, t in enumerate(row.tolist()) if t in stops]
            answers[i] = sessions[i]._record(user, row[: ended[0] + 1] if ended else row)
    return [(str(a), s.history) for a, s in zip(answers, sessions, strict=True)]


def _stop_ids(model: Any) -> set[int]:
    """Token ids that end a generated answer (the generation config's end-of-sequence ids)."""
    config = getattr(model.llm, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = model.processor.tokenizer.eos_token_id
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


def print_stream(text: str) -> None:
    """Stream target that writes to stdout as soon as text arrives (the CLI's default)."""
    sys.stdout.write(text)
    sys.stdout.flush()
