"""Small shims over library API changes, so that fmrilm calls each library the way its installed version wants
(and no deprecation warning reaches a user's conversation or report).

transformers 5.x renamed the KV cache from ``past_key_values`` to ``cache``: as a ``generate`` / ``forward``
argument and as an output field (the old names still work but warn). peft 0.21 reads transformers'
deprecated ``is_gradient_checkpointing`` whenever it wraps a model (`peft_wrapping`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

#: the one deprecation `peft_wrapping` keeps quiet: peft's own read of a transformers property, not the user's
PEFT_DEPRECATION = r".*is_gradient_checkpointing.*"


@cache
def cache_argument() -> str:
    """The name ``generate`` and ``forward`` take the KV cache under: ``cache`` (newer) or ``past_key_values``."""
    try:
        from transformers.generation.utils import GenerateDecoderOnlyOutput
    except ImportError:  # pragma: no cover - very old or very new layouts
        return "past_key_values"
    fields = getattr(GenerateDecoderOnlyOutput, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


def with_cache(cache_value: Any) -> dict[str, Any]:
    """``{"cache": value}`` or ``{"past_key_values": value}``, whichever this transformers expects."""
    return {cache_argument(): cache_value}


def output_cache(output: Any) -> Any:
    """The KV cache of a model or ``generate`` output (None when it has none), read without the deprecated name."""
    keys = output.keys() if hasattr(output, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys:
            return output[name]
    return None


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Wrap or load adapters without peft's FutureWarning about ``is_gradient_checkpointing``.

    The warning is about peft's code (it reads the deprecated property to decide whether to enable input
    gradients), so a user of `FmriLM.from_pretrained` can do nothing about it; every other warning passes.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        yield
