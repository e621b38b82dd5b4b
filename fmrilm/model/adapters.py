"""LoRA adapters through peft, with the brain-token rows trainable, and their merge.

The LLM's weights stay frozen; LoRA learns the attention/MLP updates and peft's ``trainable_token_indices``
learns only the rows of the brain tokens in the input embedding (and in the output layer when it is not tied),
so an adapter of a 135M model is a few MB and the text vocabulary is untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from fmrilm.model.brain_vocab import BrainTokenIds


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. ``target_modules`` is peft's: a list of module names or "all-linear"."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    train_brain_tokens: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _module_name(model: Any, module: Any) -> str | None:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return None


def _weights_tied(model: Any) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is None or out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr()


def brain_token_targets(model: Any, ids: BrainTokenIds) -> list[int] | dict[str, list[int]]:
    """peft ``trainable_token_indices`` for the brain rows: input embedding, plus the output layer if untied."""
    token_ids = ids.all_ids
    if _weights_tied(model):
        return token_ids  # peft ties the output layer to the trained input rows itself
    inp = _module_name(model, model.get_input_embeddings())
    out = _module_name(model, model.get_output_embeddings())
    return {inp.rsplit(".", 1)[-1]: token_ids, out.rsplit(".", 1)[-1]: token_ids}


def add_lora(model: Any, ids: BrainTokenIds | None, settings: LoraSettings | None = None):
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA and (by default) trainable brain-token rows."""
    from peft import LoraConfig, get_peft_model

    from fmrilm.compat import peft_wrapping
    from fmrilm.model.quantization import is_quantized

    settings = settings or LoraSettings()
    if is_quantized(model):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    trainable_tokens = (
        brain_token_targets(model, ids) if (ids is not None and settings.train_brain_tokens) else None
    )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        trainable_token_indices=trainable_tokens,
        task_type="CAUSAL_LM",
        **settings.extra,
    )
    with peft_wrapping():
        return look_up_brain_rows(get_peft_model(model, config))


def look_up_brain_rows(model: Any) -> Any:
    """Give ``model``'s peft brain-token rows (`peft.tuners.trainable_tokens.TrainableTokensLayer`) the
    look-up forward of `BrainRowsLookup`; returns ``model``. Nothing else changes: the same parameters, state
    dict, saving and merging.

    Why: peft's forward copies the whole embedding matrix with the brain rows swapped in on every call, in
    the input embedding and again in a tied output layer, and its backward builds a vocabulary-sized weight
    gradient: with a 49k-token vocabulary about 0.1 s a call and a third of the cpu demo's page faults; in a
    Stage-3 step measured in one process a 1.03x difference, within the noise (BENCHMARKS.md, "The `cpu` demo in
    14.9 minutes on an EPYC without AVX-512").
    """
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    lookup_class = brain_rows_lookup_class()
    for module in model.modules():
        if type(module) is TrainableTokensLayer:
            module.__class__ = lookup_class
    return model


@cache
def brain_rows_lookup_class() -> type:
    """`BrainRowsLookup`, defined on first use so that importing fmrilm does not import peft."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    class BrainRowsLookup(TrainableTokensLayer):
        """peft's trainable token rows, computed without materializing the merged weight matrix: the text
        rows come from the frozen weight as they are, the brain rows from the trained deltas (looked up in an
        embedding, one small extra matmul in an output layer). The same outputs and gradients as peft's forward
        (`tests/test_brain_rows.py`); any case it does not cover (merged, several adapters, a trainable or
        quantized base weight) runs peft's own forward."""

        def forward_adapters(self, x: Any, active_adapters: Any, *args: Any, **kwargs: Any) -> Any:
            import torch
            import torch.nn.functional as F

            base = self.base_layer
            active = [n for n in active_adapters if n in self.trainable_tokens_delta]
            plain = (
                type(base) in (torch.nn.Embedding, torch.nn.Linear) and base.weight.dtype.is_floating_point
            )
            covered = plain and not base.weight.requires_grad and not self.merged and len(active) == 1
            if self.disable_adapters or args or kwargs or not covered:
                return super().forward_adapters(x, active_adapters, *args, **kwargs)
            name = active[0]
            index, lookup = self._brain_index(name, base.weight.shape[0], base.weight.device)
            deltas = self.trainable_tokens_delta[name].to(base.weight)
            if isinstance(base, torch.nn.Embedding):
                out = F.embedding(
                    x, base.weight, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq
                )
                row = lookup[x]
                out = torch.where((row >= 0)[..., None], F.embedding(row.clamp(min=0), deltas), out)
                scale = self._get_embed_scale()
                return out if scale is None else out * scale.to(out.dtype)
            out = F.linear(x, base.weight, base.bias)
            brain = F.linear(x, deltas, None if base.bias is None else base.bias[index])
            return out.index_copy(-1, index, brain.to(out.dtype))

        def _brain_index(self, name: str, vocab: int, device: Any) -> tuple[Any, Any]:
            """The adapter's token ids and a vocabulary-sized table of each id's delta row (-1: a text row)."""
            import torch

            ids = tuple(int(i) for i in self.token_indices[name])
            key = (name, ids, vocab, str(device))
            cached = getattr(self, "_brain_index_cache", None)
            if cached is None or cached[0] != key:
                index = torch.as_tensor(ids, dtype=torch.long, device=device)
                lookup = torch.full((vocab,), -1, dtype=torch.long, device=device)
                lookup[index] = torch.arange(len(ids), device=device)
                cached = (key, index, lookup)
                self._brain_index_cache = cached
            return cached[1], cached[2]

    BrainRowsLookup.__module__ = __name__
    return BrainRowsLookup


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merge_lora(model: Any):
    """Fold the adapters (LoRA and trained token rows) into the base weights; returns a plain transformers model."""
    if not is_peft_model(model):
        return model
    return model.merge_and_unload()


#: Path components peft inserts between a module and its original tensors.
_WRAPPER_PARTS = ("base_layer", "original_module", "token_adapter")


def base_state_dict(peft_model: Any) -> dict[str, Any]:
    """The state dict of the base model under a peft wrapper, without adapter tensors and under its own names.

    peft injects wrapper modules (``q_proj.base_layer``, ``embed_tokens.token_adapter`` ...); saving the base
    model as is would write those names, which plain transformers cannot load. This keeps only the original
    tensors, renamed back, without copying any weight.
    """
    base = peft_model.get_base_model()
    clean: dict[str, Any] = {}
    for key, value in base.state_dict().items():
        parts = key.split(".")
        if any(p.startswith(("lora_", "trainable_tokens_")) or p == "modules_to_save" for p in parts):
            continue
        clean[".".join(p for p in parts if p not in _WRAPPER_PARTS)] = value
    return clean
