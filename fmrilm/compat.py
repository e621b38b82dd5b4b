"""Small shims over library API changes, so that fmrilm calls each library the way its installed version wants
(and no deprecation warning reaches a user's conversation or report).

transformers 5.x renamed the KV cache from ``past_key_values`` to ``cache``: as a ``generate`` / ``forward``
argument and as an output field (the old names still work but warn).
"""

from __future__ import annotations

from functools import cache
from typing import Any


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
