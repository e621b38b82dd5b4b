"""LoRA adapters through peft, with the brain-token rows trainable, and their merge.

The LLM's weights stay frozen; LoRA learns the attention/MLP updates and peft's ``trainable_token_indices``
learns only the rows of the brain tokens in the input embedding (and in the output layer when it is not tied),
so an adapter of a 135M model is a few MB and the text vocabulary is untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    peft_model = get_peft_model(model, config)
    light_trainable_tokens(peft_model)
    return peft_model


def light_trainable_tokens(model: Any) -> int:
    """Give ``model``'s peft TrainableTokens layers a forward that reads the trained rows directly; returns
    how many layers it changed.

    peft's forward copies the whole table with the trained rows written in (``index_copy``), then looks up or
    multiplies by that copy, so every forward copies the vocabulary (SmolLM2: 49k x 576, twice, as its output
    layer is tied) and every backward builds a gradient of its full size, for a few hundred trained rows: 0.28 s
    a training forward and backward on 2 CPU cores, a tenth of a Stage-3 step (BENCHMARKS.md, "peft's trained
    token rows"). This forward computes the same values from the frozen table and the trained rows: an
    embedding looks up the frozen table and takes the trained row where the id is a trained token, an output
    layer multiplies by the frozen table and writes the trained rows' logits. Only the layers' class changes
    (to a subclass of peft's): saving, merging and loading are peft's; anything else (merged or disabled
    adapters, several active adapters, a bias, a max-norm embedding) runs peft's forward.
    """
    if not is_peft_model(model):
        return 0
    light = _light_tokens_class()
    changed = 0
    for module in model.modules():
        if isinstance(module, light.__base__) and not isinstance(module, light):
            module.__class__ = light
            changed += 1
    return changed


def _light_tokens_class() -> type:
    global _LIGHT_TOKENS
    if _LIGHT_TOKENS is not None:
        return _LIGHT_TOKENS
    import torch
    import torch.nn.functional as F
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    class LightTrainableTokensLayer(TrainableTokensLayer):
        """peft's TrainableTokensLayer whose forward reads the trained rows without copying the table."""

        def forward_adapters(self, x: Any, active_adapters: Any, *args: Any, **kwargs: Any) -> Any:
            base = self.base_layer
            names = list(active_adapters or [])
            plain = type(base) in (torch.nn.Embedding, torch.nn.Linear)
            if (
                self.disable_adapters
                or self.merged
                or len(names) != 1
                or names[0] not in self.token_indices
                or args
                or kwargs
                or not plain
                or getattr(base, "bias", None) is not None
                or getattr(base, "max_norm", None) is not None
            ):
                return super().forward_adapters(x, active_adapters, *args, **kwargs)
            weight = base.weight
            index = torch.as_tensor(self.token_indices[names[0]], dtype=torch.long, device=weight.device)
            rows = self.trainable_tokens_delta[names[0]].to(weight)  # the trained rows' values (peft's name)
            if isinstance(base, torch.nn.Embedding):
                out = F.embedding(
                    x, weight, padding_idx=base.padding_idx, scale_grad_by_freq=base.scale_grad_by_freq
                )
                slot = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
                slot[index] = torch.arange(len(index), device=weight.device)
                where = slot[x]
                out = torch.where(
                    (where >= 0)[..., None], F.embedding(where.clamp(min=0), rows).to(out.dtype), out
                )
                scale = self._get_embed_scale()
                return out if scale is None else out * scale.to(out.dtype)
            out = F.linear(x, weight)  # a tied output layer: the trained rows' logits from their values
            return out.index_copy(-1, index.to(out.device), F.linear(x, rows).to(out.dtype))

    _LIGHT_TOKENS = LightTrainableTokensLayer
    return _LIGHT_TOKENS


_LIGHT_TOKENS: type | None = None


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
