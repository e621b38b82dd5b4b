"""The VQ fMRI tokenizer (Stage 1): scan windows -> K discrete brain codes -> signal.

Importing this package registers the model with transformers' Auto classes, so
``AutoConfig.from_pretrained(dir)`` and ``AutoModel.from_pretrained(dir)`` load a saved tokenizer.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from fmrilm.tokenizer.config import PRESETS, FmriTokenizerConfig
from fmrilm.tokenizer.modeling import FmriTokenizerModel, FmriTokenizerOutput

AutoConfig.register(FmriTokenizerConfig.model_type, FmriTokenizerConfig, exist_ok=True)
AutoModel.register(FmriTokenizerConfig, FmriTokenizerModel, exist_ok=True)

__all__ = ["PRESETS", "FmriTokenizerConfig", "FmriTokenizerModel", "FmriTokenizerOutput"]
