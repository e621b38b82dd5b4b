"""`FmriLM`: a stock causal LM with brain tokens, its fMRI tokenizer and its processor, saved as one folder.

Saved layout (one folder)::

    config.json, model.safetensors, generation_config.json   the resized LLM   -> AutoModelForCausalLM
    tokenizer.json, tokenizer_config.json, chat_template.*    text tokenizer     -> AutoTokenizer
    fmri_processor_config.json                                atlas, TR, window, brain-token names, descriptor stats
    fmri_tokenizer/                                           FmriTokenizerModel (config.json + safetensors)
    adapters/                                                 LoRA + brain-token rows -> peft.PeftModel

Everything is safetensors or JSON; nothing is unpickled on load.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmrilm.errors import FmriInputError
from fmrilm.model.adapters import LoraSettings, add_lora, base_state_dict, is_peft_model, merge_lora
from fmrilm.model.brain_vocab import resize_and_init
from fmrilm.model.processing import (
    DESCRIBE_PROMPT,
    FORECAST_PROMPT,
    IGNORE_INDEX,
    PROCESSOR_CONFIG_NAME,
    FmriLMProcessor,
    FmriProcessorConfig,
    _config_from_fmri_tokenizer,
)

#: Output-layer positions whose vocabulary-wide logits exist at one time in the training loss (256 positions x
#: 49k SmolLM2 tokens = 50 MB in float32, against ~0.5 GB for a Stage-2 batch's answers at once).
LOSS_CHUNK = 256
#: Architectures whose logits are exactly the output layer's output (no soft-capping or scaling after it), so
#: the training loss can run the output layer itself, in chunks; others keep transformers' own head.
CHUNKED_LOSS_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "qwen2_moe",
        "qwen3_moe",
        "gpt2",
        "phi3",
        "olmo",
        "olmo2",
        "smollm3",
    }
)


def chunked_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, chunk: int | None = None
) -> torch.Tensor:
    """Per-position cross-entropy of ``head(hidden)`` against ``targets``, ``chunk`` positions at a time; with
    gradients on, each chunk's logits are recomputed in the backward pass instead of kept (activation
    checkpointing of the output layer), so the loss never holds more than one chunk of logits."""
    from torch.utils.checkpoint import checkpoint

    chunk = int(chunk or LOSS_CHUNK)

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(head(h).float(), t, reduction="none")

    parts = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        grad = torch.is_grad_enabled() and (
            h.requires_grad or any(p.requires_grad for p in head.parameters())
        )
        parts.append(checkpoint(piece, h, t, use_reentrant=False) if grad else piece(h, t))
    return torch.cat(parts) if parts else hidden.new_zeros(0)


class BrainCodesOnly:
    """Logits processor that allows only brain-code tokens (used while generating a forecast window)."""

    def __init__(self, first_code_id: int, codebook_size: int) -> None:
        self.lo, self.hi = first_code_id, first_code_id + codebook_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.lo : self.hi] = scores[:, self.lo : self.hi]
        return masked


class FmriLM(nn.Module):
    """An ``AutoModelForCausalLM`` (optionally wrapped by peft) that reads and writes brain tokens.

    ``llm`` is the language model, ``processor`` turns scans + messages into ``input_ids`` and
    ``fmri_tokenizer`` (frozen here) turns scans into codes and codes back into signal.
    """

    def __init__(
        self, llm: Any, processor: FmriLMProcessor, soft_projection: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.llm = llm
        self.processor = processor
        self.fmri_tokenizer = processor.fmri_tokenizer
        if self.fmri_tokenizer is not None:
            self.fmri_tokenizer.requires_grad_(False)
            self.fmri_tokenizer.eval()
        if soft_projection is None and processor.config.uses_soft_tokens:
            soft_projection = SoftBrainProjection.for_llm(llm, processor.config)
        self.soft_projection = soft_projection

    # ---------------------------------------------------------------------------------------- soft tokens
    def embed_inputs(
        self, input_ids: torch.Tensor, connectome_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Input embeddings, with the soft-token projection of ``connectome_values`` added at connectome-token
        positions (the LLaVA pattern: placeholders filled through ``inputs_embeds``)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        if connectome_values is None or self.soft_projection is None:
            return embeds
        ids = self.processor.ids
        values = connectome_values.to(device=embeds.device, dtype=embeds.dtype)
        summary = (input_ids == ids.start_id) if self.soft_projection.summary is not None else None
        return embeds + self.soft_projection(values, ids.is_connectome(input_ids), summary)

    def _with_soft_tokens(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with ``connectome_values`` turned into ``inputs_embeds`` (ids kept for generation)."""
        values = batch.pop("connectome_values", None)
        if values is None or self.soft_projection is None or batch.get("input_ids") is None:
            return batch
        batch["inputs_embeds"] = self.embed_inputs(batch["input_ids"], values)
        return batch

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_base(
        cls,
        base: Any = None,
        fmri_tokenizer: Any = None,
        *,
        tokenizer: Any = None,
        codebook_size: int | None = None,
        num_latents: int | None = None,
        dtype: Any = None,
        quantization: str | None = None,
        device_map: Any = None,
        lora: LoraSettings | bool | None = None,
        atlas: Any = None,
        descriptor_reference: Any = None,
        seed: int = 0,
        soft_tokens: bool = True,
        scan_summary: bool = True,
        scan_summary_components: int | None = None,
    ) -> FmriLM:
        """A new fMRI-LM on a base LM: brain tokens added, their rows initialised from the codebook.

        ``base`` is a hub id / folder / ``.gguf`` path / None (SmolLM2 default), or an already-loaded
        transformers model (then pass its ``tokenizer``). ``fmri_tokenizer`` is a trained
        `FmriTokenizerModel`; without it, ``codebook_size`` and ``num_latents`` size the vocabulary and the
        brain rows start random (tests, or codes computed elsewhere). ``lora`` adds adapters right away.
        ``soft_tokens`` / ``scan_summary``: connectome positions (and the start marker) read the continuous
        values as well as the codes (see `SoftBrainProjection`); the summary reads the first
        ``scan_summary_components`` of them (None: all).
        """
        from fmrilm.model.base_model import load_base_model

        if base is None or isinstance(base, (str, os.PathLike)):
            llm, text_tokenizer = load_base_model(
                base, dtype=dtype, quantization=quantization, device_map=device_map
            )
            base_name = "smollm2" if base is None else str(base)
        else:
            if tokenizer is None:
                raise FmriInputError(
                    "A loaded base model needs its tokenizer", fix="pass tokenizer=... with the model"
                )
            llm, text_tokenizer = base, tokenizer
            base_name = getattr(llm.config, "_name_or_path", None) or type(llm).__name__
        if fmri_tokenizer is not None:
            config = _config_from_fmri_tokenizer(fmri_tokenizer)
            config.soft_tokens = bool(soft_tokens)
            config.scan_summary = bool(scan_summary)
            config.scan_summary_components = scan_summary_components
        else:
            config = FmriProcessorConfig(
                codebook_size=int(codebook_size or 512), num_latents=int(num_latents or 32)
            )
        config.base_model = base_name
        if atlas is not None:
            config.atlas = atlas.to_dict() if hasattr(atlas, "to_dict") else dict(atlas)
        if descriptor_reference is not None:
            config.descriptor_reference = _as_jsonable(descriptor_reference)
        processor = FmriLMProcessor(text_tokenizer, fmri_tokenizer, config)
        resize_and_init(
            llm,
            processor.ids,
            max(len(text_tokenizer), llm.get_input_embeddings().weight.shape[0]),
            codebook=_codebook_for_init(fmri_tokenizer),
            seed=seed,
        )
        _sync_special_ids(llm, text_tokenizer)
        model = cls(llm, processor)
        if lora:
            model.add_adapters(lora if isinstance(lora, LoraSettings) else LoraSettings())
        return model

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        adapters: bool = True,
        is_trainable: bool = False,
        dtype: Any = None,
        quantization: str | None = None,
        device_map: Any = None,
    ) -> FmriLM:
        """Load a folder written by `save_pretrained` (a hub id works too when it is in the local cache)."""
        from transformers import AutoModelForCausalLM

        from fmrilm.model.quantization import bnb_quantization_config
        from fmrilm.safety import model_folder_errors

        directory = _local_dir(path)
        with model_folder_errors(directory):
            processor = FmriLMProcessor.from_pretrained(directory)
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if quantization:
            kwargs["quantization_config"] = bnb_quantization_config(quantization)
        if device_map is not None:
            kwargs["device_map"] = device_map
        with model_folder_errors(directory):  # a model folder is data: its own code is never run
            llm = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=False, **kwargs)
        adapter_dir = directory / processor.config.adapters_subfolder
        if adapters and (adapter_dir / "adapter_config.json").exists():
            from peft import PeftModel

            from fmrilm.compat import peft_wrapping
            from fmrilm.model.adapters import look_up_brain_rows

            with peft_wrapping():
                llm = look_up_brain_rows(
                    PeftModel.from_pretrained(llm, adapter_dir, is_trainable=is_trainable)
                )
        if not is_trainable:
            llm.eval()
        soft = None
        if processor.config.uses_soft_tokens:
            soft = SoftBrainProjection.for_llm(llm, processor.config)
            soft.load(directory)
        return cls(llm, processor, soft)

    # ------------------------------------------------------------------------------------------ adapters
    def add_adapters(self, settings: LoraSettings | None = None) -> FmriLM:
        """Wrap the LLM with LoRA (peft) and make the brain-token rows trainable."""
        if is_peft_model(self.llm):
            raise FmriInputError(
                "This model already has adapters", fix="merge them first with merge_adapters()"
            )
        was_training = self.llm.training
        self.llm = add_lora(self.llm, self.processor.ids, settings)
        self.llm.train(was_training)  # peft switches to training mode; keep the caller's choice
        return self

    def merge_adapters(self) -> FmriLM:
        """Fold the adapters into the base weights (in place): the LLM becomes a plain transformers model."""
        self.llm = merge_lora(self.llm)
        return self

    @property
    def has_adapters(self) -> bool:
        return is_peft_model(self.llm)

    @property
    def base_llm(self) -> Any:
        """The transformers model (under the peft wrapper, if any)."""
        return self.llm.get_base_model() if self.has_adapters else self.llm

    # ---------------------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str | os.PathLike, *, merge_adapters: bool = False) -> Path:
        """Write the one-folder layout (see module docstring); written aside and renamed, never half-written.

        With ``merge_adapters`` the adapters are folded into the saved LLM (this model keeps its adapters).
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            self._write(tmp, merge_adapters)
            if target.exists():
                old = target.with_name(f".{target.name}-old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _write(self, directory: Path, merge_adapters: bool) -> None:
        llm = self.llm
        if self.has_adapters and merge_adapters:
            llm = merge_lora(copy.deepcopy(llm))
        if is_peft_model(llm):
            base = llm.get_base_model()
            base.save_pretrained(directory, state_dict=base_state_dict(llm))
            llm.save_pretrained(
                directory / self.processor.config.adapters_subfolder, save_embedding_layers=False
            )
        else:
            llm.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        if self.soft_projection is not None:
            self.soft_projection.save(directory)
        from fmrilm.model.model_card import write_model_card

        write_model_card(self, directory)  # README.md, the Hugging Face model card (and adapters/README.md)

    # ------------------------------------------------------------------------------------------- running
    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def forward(
        self,
        *,
        loss_reduction: str = "token",
        answer_options: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
        teacher_weight: float = 0.0,
        **batch: Any,
    ) -> Any:
        """The LLM's forward (``input_ids``, ``attention_mask``, ``labels`` ...): loss and logits as usual.

        With ``loss_reduction="example"`` and ``labels`` (what Stages 2 and 3 and fine-tuning use), the output
        layer runs only where a label is learned, and there in chunks of `LOSS_CHUNK` positions whose logits
        are recomputed in the backward pass, so no more than one chunk of vocabulary-wide logits exists at a
        time (the same loss and gradients as transformers' full-logits loss: ``tests/test_training_loss.py``).
        The loss is the mean over examples of each example's mean token loss, so a long answer does not
        outweigh a short one; ``example_losses`` (B,) come back too, and ``logits`` at the learned positions for
        architectures outside `CHUNKED_LOSS_TYPES` (they may transform logits after the output layer).

        ``answer_options`` ``(B, 2)`` first-token ids of a two-answer task's options (-1: none) and ``teacher``
        ``(B,)`` a teacher's probability of the second option (NaN: none) add ``teacher_weight`` times the
        binary cross-entropy between that probability and the answer's first-token margin (``logit(option 1) -
        logit(option 0)`` where the answer starts) to those examples' losses: knowledge distillation from a
        linear probe (`train.probe_init.teacher_probabilities`), so the answer ranks scans as the probe does.
        """
        batch = self._with_soft_tokens(dict(batch))
        if "inputs_embeds" in batch:
            batch.pop("input_ids")
        if loss_reduction == "token" or batch.get("labels") is None:
            return self.llm(**batch)
        if loss_reduction != "example":
            raise ValueError("loss_reduction must be 'token' or 'example'")
        from transformers.modeling_outputs import ModelOutput

        labels = batch.pop("labels")
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position p predicts token p + 1
        targets = labels[:, 1:][keep[:, :-1]]
        logits = hidden = None
        if getattr(self.llm.config, "model_type", None) in CHUNKED_LOSS_TYPES:
            hidden = self._hidden_at(batch, keep)
            token_loss = chunked_cross_entropy(hidden, targets, self.llm.get_output_embeddings())
        else:
            logits = self.llm(**batch, logits_to_keep=keep).logits
            token_loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="none"
            )
        rows = keep.nonzero()[:, 0]
        n_tokens = torch.bincount(rows, minlength=labels.shape[0]).clamp(min=1)
        example_losses = (
            torch.zeros(labels.shape[0], device=token_loss.device).index_add(0, rows, token_loss) / n_tokens
        )
        has_answer = keep.any(dim=1)
        margins = None
        if answer_options is not None and teacher is not None:
            first = torch.searchsorted(rows, torch.arange(labels.shape[0], device=rows.device))
            taught = has_answer & (answer_options[:, 0] >= 0) & ~torch.isnan(teacher)
            margins = self._first_token_margins(
                logits, hidden if logits is None else None, first, answer_options
            )
            if teacher_weight and taught.any():
                distill = nn.functional.binary_cross_entropy_with_logits(
                    margins[taught].float(), teacher[taught].float(), reduction="none"
                )
                example_losses = example_losses.index_add(
                    0, taught.nonzero()[:, 0], float(teacher_weight) * distill
                )
        loss = example_losses[has_answer].mean() if has_answer.any() else example_losses.sum() * 0.0
        return ModelOutput(loss=loss, example_losses=example_losses, logits=logits, margins=margins)

    def _first_token_margins(
        self,
        logits: torch.Tensor | None,
        hidden: torch.Tensor | None,
        first: torch.Tensor,
        options: torch.Tensor,
    ) -> torch.Tensor:
        """``logit(options[:, 1]) - logit(options[:, 0])`` ``(B,)`` at each example's first learned position
        (``first`` indexes the learned positions; -1 options give 0), from the logits or the output layer's input."""
        if logits is not None:
            logits = logits.reshape(-1, logits.shape[-1])
        index = first.clamp(max=(logits if logits is not None else hidden).shape[0] - 1)
        ids = options.clamp(min=0)
        if logits is not None:
            at = logits[index].float()
            margin = at.gather(1, ids[:, 1:]) - at.gather(1, ids[:, :1])
            margin = margin[:, 0]
        else:
            head = self.llm.get_output_embeddings()
            direction = head.weight[ids[:, 1]] - head.weight[ids[:, 0]]
            margin = (hidden[index] * direction).sum(-1).float()
            if getattr(head, "bias", None) is not None:
                margin = margin + (head.bias[ids[:, 1]] - head.bias[ids[:, 0]]).float()
        return torch.where(options[:, 0] >= 0, margin, torch.zeros_like(margin))

    def _hidden_at(self, batch: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
        """The output layer's input at the ``keep`` positions ``(n, hidden)``: the LLM runs as usual with
        ``logits_to_keep=keep``, and a hook takes what its output layer receives and hands it an empty slice."""
        head = self.llm.get_output_embeddings()
        taken: list[torch.Tensor] = []

        def take(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            taken.append(args[0])
            return (args[0][:0], *args[1:])

        handle = head.register_forward_pre_hook(take)
        try:
            self.llm(**batch, logits_to_keep=keep)
        finally:
            handle.remove()
        return taken[0].reshape(-1, taken[0].shape[-1])

    def generate(self, **kwargs: Any) -> torch.LongTensor:
        """The LLM's ``generate``; ``connectome_values`` (from the processor) become soft-token embeddings and
        the returned sequences still start with the prompt's ids."""
        kwargs.setdefault("pad_token_id", self.processor.tokenizer.pad_token_id)
        return self.llm.generate(**self._with_soft_tokens(kwargs))

    def chat(
        self,
        scan: Any,
        message: str,
        history: list[dict[str, Any]] | None = None,
        *,
        stream: Any = False,
        max_new_tokens: int = 256,
        **generate_kwargs: Any,
    ) -> tuple[str, list[dict[str, Any]]]:
        """Ask about a scan: ``(answer, history)``; pass ``history`` back with the next message to continue.

        ``scan`` is a `Scan`, codes, a file path, a list of them, or None to keep talking about the scans already
        in ``history``; ``stream=True`` prints the answer as it is generated, a callable receives each piece.
        See `fmrilm.chat` (and `fmrilm.chat.ChatSession`, which also keeps the KV cache between turns).
        """
        from fmrilm.chat import chat

        return chat(
            self, scan, message, history, stream=stream, max_new_tokens=max_new_tokens, **generate_kwargs
        )

    @torch.no_grad()
    def reply(
        self,
        messages: list[dict[str, Any]],
        scans: Any = None,
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        text_only: bool = True,
        **generate_kwargs: Any,
    ) -> str:
        """One assistant reply to ``messages`` (fMRI parts take ``scans`` in order), generated with the KV cache;
        ``text_only``: brain tokens cannot be generated (`fmrilm.chat.TextTokensOnly`), the answer is words."""
        inputs = self.processor(messages, scans, add_generation_prompt=True).to(self.device)
        if text_only:
            from fmrilm.chat import text_only_kwargs

            generate_kwargs = text_only_kwargs(self.processor, generate_kwargs)
        out = self.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **generate_kwargs)
        return self.processor.decode(out[0, inputs["input_ids"].shape[1] :])

    def describe(
        self,
        scan: Any,
        *,
        window: int | None = None,
        prompt: str = DESCRIBE_PROMPT,
        max_new_tokens: int = 256,
        **kwargs: Any,
    ) -> str:
        """A plain-language description of a scan, or of one of its windows (what Stage 2 teaches: descriptors)."""
        part: dict[str, Any] = {"type": "fmri"}
        if window is not None:
            part["windows"] = [int(window)]
        messages = [{"role": "user", "content": [part, {"type": "text", "text": prompt}]}]
        return self.reply(messages, [scan], max_new_tokens=max_new_tokens, **kwargs)

    @torch.no_grad()
    def forecast_codes(
        self,
        scan: Any,
        windows: int = 1,
        *,
        context_windows: int | None = None,
        do_sample: bool = False,
        **generate_kwargs: Any,
    ) -> np.ndarray:
        """Codes ``(windows, K)`` of the windows that follow the scan, generated one window at a time.

        Each step prompts with the last ``context_windows`` windows (default: as many as Stage 2 trained
        with, else all; generated ones are
        appended) and the forecast instruction, opens the answer with the start marker and generates exactly K
        tokens restricted to brain codes.
        """
        from transformers import LogitsProcessorList

        if windows < 1:
            raise FmriInputError("windows must be at least 1", fix="ask for one or more windows")
        proc = self.processor
        k = proc.config.num_latents
        context = proc.encode_scan(scan, limit=False)
        if context_windows is None:  # as Stage 2 trained; else the windows a whole-scan part shows
            context_windows = proc.config.forecast_context_windows or proc.config.max_windows or None
        restrict = LogitsProcessorList([BrainCodesOnly(proc.ids.first_code_id, proc.config.codebook_size)])
        produced = []
        for _ in range(windows):
            ctx = context if context_windows is None else context[-context_windows:]
            messages = [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "fmri",
                            "codes": ctx,
                            "windows": slice(None),
                        },  # all of ctx, whatever max_windows
                        {"type": "text", "text": FORECAST_PROMPT},
                    ],
                }
            ]
            inputs = proc(messages, add_generation_prompt=True)
            start = torch.tensor([[proc.ids.start_id]])
            input_ids = torch.cat([inputs["input_ids"], start], dim=1).to(self.device)
            attention = torch.ones_like(input_ids)
            out = self.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=k,
                min_new_tokens=k,
                do_sample=do_sample,
                logits_processor=restrict,
                **generate_kwargs,
            )
            new = proc.ids.codes_from_ids(out[0, input_ids.shape[1] :].cpu().numpy())[None]
            produced.append(new[0])
            context = np.concatenate([context, new])
        return np.stack(produced)

    def forecast(self, scan: Any, windows: int = 1, **kwargs: Any):
        """The next ``windows`` windows of signal after ``scan``, as a `Scan` at the model's TR.

        Brain tokens are generated by the LLM (`forecast_codes`) and decoded to ``(time, regions)`` signal on
        the scan's own regions by the fMRI tokenizer's decoder; the codes are kept in ``flags["codes"]``.
        """
        from fmrilm.scan import Scan

        if self.fmri_tokenizer is None:
            raise FmriInputError(
                "Forecasting needs the fMRI tokenizer to decode brain tokens to signal",
                fix="load a model saved with its fmri_tokenizer subfolder",
            )
        codes = self.forecast_codes(scan, windows, **kwargs)
        atlas = getattr(scan, "atlas", None)
        if atlas is None and self.processor.config.atlas is not None:
            from fmrilm.atlas import Atlas

            atlas = Atlas.from_dict(self.processor.config.atlas)
        signal = self.fmri_tokenizer.decode(codes, atlas if atlas is not None else scan)
        signal = signal.reshape(-1, signal.shape[-1]).cpu().numpy().astype(np.float32)
        scan_id = getattr(scan, "scan_id", "scan")
        return Scan(
            timeseries=signal,
            tr=float(self.processor.config.target_tr or getattr(scan, "tr", 2.0)),
            atlas=atlas,
            scan_id=f"{scan_id}-forecast",
            subject_id=getattr(scan, "subject_id", None),
            session_id=getattr(scan, "session_id", None),
            site=getattr(scan, "site", None),
            source="fmrilm.forecast",
            flags={"forecast_windows": int(windows), "codes": codes.tolist()},
        )

    def predict(self, scan: Any, task: Any, **kwargs: Any) -> dict[str, Any]:
        """Scored answer: ``{option: probability}`` over the task's allowed answers (regression: value + method).

        ``task`` is a task this model learned (its name), or a task spec; see `fmrilm.model.scoring.predict`.
        """
        from fmrilm.model.scoring import predict

        return predict(self, scan, task, **kwargs)

    def predict_cohort(self, cohort: Any, task: Any, indices: Any = None, **kwargs: Any):
        """Scored answers for cohort rows as a DataFrame; see `fmrilm.model.scoring.predict_cohort`."""
        from fmrilm.model.scoring import predict_cohort

        return predict_cohort(self, cohort, task, indices, **kwargs)

    def embed(self, scan: Any, windows: bool = False, **kwargs: Any) -> Any:
        """What the LLM makes of a scan: one vector (per window with ``windows``); see `fmrilm.model.embedding`."""
        from fmrilm.model.embedding import embed

        return embed(self, scan, windows=windows, **kwargs)

    def perturb(
        self, scan: Any, regions: Any = None, network: Any = None, change: Any = "scale:0.5", **kw: Any
    ):
        """How each task's answer changes when regions or a network are perturbed; see `fmrilm.perturb`."""
        from fmrilm.perturb import perturb

        return perturb(self, scan, regions, network, change, **kw)

    def attribute(self, scan: Any, task: Any, by: str = "network", **kwargs: Any):
        """Networks or regions ranked by how much perturbing each moves the answer; see `fmrilm.perturb`."""
        from fmrilm.perturb import attribute

        return attribute(self, scan, task, by, **kwargs)

    def networks(self, scan_or_cohort: Any, n_networks: int = 7, **kwargs: Any):
        """Every region assigned to one of ``n_networks`` networks from the model alone (no network labels):
        a DataFrame ``region, x, y, z, network, usable, atlas_network``; see `fmrilm.networks`."""
        from fmrilm.networks import discover_networks

        return discover_networks(self, scan_or_cohort, n_networks, **kwargs)


class SoftBrainProjection(nn.Module):
    """Connectome values ``(..., components)`` -> embedding offsets ``(..., hidden)``.

    ``proj``, one linear map whose block-sparse input (see `FmriLMProcessor.pad`) makes it one projection per
    connectome token; ``summary`` (with a scan summary), a second map of the first ``summary_components`` of
    the component vector (the top of the PCA spectrum), added at the part's start marker: one position that
    holds the whole scan.
    """

    WEIGHTS_NAME = "fmri_soft_tokens.safetensors"

    def __init__(
        self,
        components: int,
        hidden: int,
        group_dim: int,
        scale: float = 0.02,
        summary: bool = False,
        summary_components: int | None = None,
    ) -> None:
        super().__init__()
        self.summary_components = int(summary_components or components)
        self.proj = nn.Linear(components, hidden, bias=False)
        self.summary = nn.Linear(self.summary_components, hidden, bias=False) if summary else None
        with torch.no_grad():  # offsets start at the size of the LLM's own embeddings, not larger
            self.proj.weight.normal_(0.0, scale / max(group_dim, 1) ** 0.5)
            if self.summary is not None:
                self.summary.weight.normal_(0.0, scale / self.summary_components**0.5)

    @classmethod
    def for_llm(cls, llm: Any, config: FmriProcessorConfig) -> SoftBrainProjection:
        table = llm.get_input_embeddings().weight
        module = cls(
            config.connectome_components,
            table.shape[1],
            config.connectome_group_dim,
            scale=float(table.detach()[: min(len(table), 4096)].float().std()),
            summary=config.uses_scan_summary,
            summary_components=config.summary_components,
        )
        return module.to(device=table.device, dtype=table.dtype if table.is_floating_point() else None)

    def forward(
        self,
        values: torch.Tensor,
        connectome_mask: torch.Tensor,
        summary_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Offsets at connectome positions (``connectome_mask``) and, with a summary, at ``summary_mask``."""
        offsets = self.proj(values) * connectome_mask[..., None].to(values.dtype)
        if self.summary is not None and summary_mask is not None:
            top = values[..., : self.summary_components]
            offsets = offsets + self.summary(top) * summary_mask[..., None].to(values.dtype)
        return offsets

    def save(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(Path(directory) / self.WEIGHTS_NAME))

    def load(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        path = Path(directory) / self.WEIGHTS_NAME
        if not path.exists():
            raise FmriInputError(
                f"The model reads soft brain tokens but {self.WEIGHTS_NAME} is missing",
                file=directory,
                fix="re-save the model with FmriLM.save_pretrained",
            )
        state = load_file(str(path))
        self.load_state_dict({k: v.to(self.proj.weight.dtype) for k, v in state.items()})


# ---------------------------------------------------------------------------------------------- helpers
def _codebook_for_init(fmri_tokenizer: Any) -> np.ndarray | None:
    """The codebook as seen by the LLM: its Stage-1 text-aligned projection when trained with one."""
    if fmri_tokenizer is None:
        return None
    vectors = None
    if hasattr(fmri_tokenizer, "code_text_embeddings"):
        vectors = fmri_tokenizer.code_text_embeddings()
    if vectors is None:
        vectors = fmri_tokenizer.codebook_vectors()
    return vectors.detach().float().cpu().numpy()


def _sync_special_ids(llm: Any, tokenizer: Any) -> None:
    """Make generation stop at the tokenizer's end-of-turn token and pad with its pad token."""
    gen = getattr(llm, "generation_config", None)
    if gen is None:
        return
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        llm.config.pad_token_id = tokenizer.pad_token_id
    eos = gen.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    if eos_ids:
        gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids


def _as_jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _as_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _local_dir(path: str | os.PathLike) -> Path:
    """The model folder for ``path``, checked (JSON parses, weights whole); a hub id only when meant as one."""
    from fmrilm.safety import HUB_ID_HINT, check_model_folder, looks_like_hub_id

    directory = Path(path).expanduser()
    if directory.is_dir():
        nested = directory / "model"  # a Stage-2 output folder holds its model in model/
        if not (directory / PROCESSOR_CONFIG_NAME).exists() and (nested / PROCESSOR_CONFIG_NAME).exists():
            directory = nested
        check_model_folder(directory)
        return directory
    if directory.exists():
        raise FmriInputError(
            "No saved fmrilm model here (this is a file, not a model folder)",
            fix="pass a folder written by FmriLM.save_pretrained",
            file=path,
        )
    if not looks_like_hub_id(str(path)):
        raise FmriInputError(
            "No such model folder",
            fix=f"check the path (a folder written by FmriLM.save_pretrained); {HUB_ID_HINT}",
            file=path,
        )
    try:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(str(path)))
    except Exception as exc:  # offline and not cached, or no such repo
        raise FmriInputError(
            f"There is no folder '{path}' here, and the hub model '{path}' is not in the local Hugging Face "
            f"cache ({type(exc).__name__})",
            fix="pass a local folder written by FmriLM.save_pretrained (check the path), or download the hub "
            "model first while online",
        ) from exc
    check_model_folder(directory)
    return directory
