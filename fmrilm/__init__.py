"""fmrilm: let any Hugging Face causal LLM read and write fMRI.

Public names are imported lazily so that `import fmrilm` stays light (no torch until a model is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Atlas": "fmrilm.atlas",
    "resolve_atlas": "fmrilm.atlas",
    "Scan": "fmrilm.scan",
    "FmriInputError": "fmrilm.errors",
    "load_scan": "fmrilm.io",
    "load_scans": "fmrilm.io",
    "Cohort": "fmrilm.cohort",
    "load_cohort": "fmrilm.cohort",
    "import_cohort": "fmrilm.cohort_import",
    "ReferenceStats": "fmrilm.descriptors",
    "FmriTokenizerConfig": "fmrilm.tokenizer",
    "FmriTokenizerModel": "fmrilm.tokenizer",
    "FmriLM": "fmrilm.model.modeling",
    "FmriLMProcessor": "fmrilm.model.processing",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fmrilm' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
