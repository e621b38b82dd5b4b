"""fmrilm: let any Hugging Face causal LLM read and write fMRI.

Public names, and the pipeline packages (`fmrilm.data_gen`, `fmrilm.instructions`, `fmrilm.train`,
`fmrilm.eval`) with their modules, are imported lazily so that `import fmrilm` stays light (no torch until a
model is used).
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

#: The pipeline packages (installed inside fmrilm), imported on first use: after `import fmrilm`,
#: `fmrilm.data_gen.simulate.simulate_cohort(...)` and `fmrilm.train.finetune.load_finetuned(...)` work.
_SUBPACKAGES = ("data_gen", "instructions", "train", "eval")

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"fmrilm.{name}")  # the import sets the attribute for next time
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fmrilm' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
