"""The fMRI-LM: a stock Hugging Face causal LM whose vocabulary includes brain tokens.

- `base_model`: resolve the base LM (hub id or folder, GGUF file, or the offline SmolLM2 default);
- `brain_vocab`: ``<brain_i>`` tokens and their embedding initialisation from the codebook;
- `processing`: `FmriLMProcessor`, chat messages with fMRI parts -> ``input_ids``;
- `modeling`: `FmriLM` (from_pretrained / save_pretrained / describe / forecast);
- `adapters`: LoRA through peft; `quantization`: bitsandbytes loading and 8-bit optimizers.

Names are imported lazily so that importing the package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FmriLM": "fmrilm.model.modeling",
    "FmriLMProcessor": "fmrilm.model.processing",
    "FmriProcessorConfig": "fmrilm.model.processing",
    "BrainVocab": "fmrilm.model.brain_vocab",
    "LoraSettings": "fmrilm.model.adapters",
    "load_base_model": "fmrilm.model.base_model",
    "resolve_base_model": "fmrilm.model.base_model",
    "convert_gguf": "fmrilm.model.base_model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fmrilm.model' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
