"""bitsandbytes 4-bit / 8-bit loading (QLoRA) and 8-bit optimizers, where the machine supports them.

bitsandbytes needs an accelerator (CUDA, or a backend it supports); on a CPU-only machine or without the
package these helpers fail early with one sentence that says what to do, instead of a deep import error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

from fmrilm.errors import FmriInputError

QUANTIZATION_CHOICES = ("4bit", "8bit")


def bitsandbytes_status() -> str | None:
    """None when bitsandbytes can be used here, else the reason it cannot."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "the bitsandbytes package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (bitsandbytes quantization needs one)"
    return None


def _require_bitsandbytes(what: str) -> None:
    reason = bitsandbytes_status()
    if reason is not None:
        raise FmriInputError(
            f"{what} is not available on this machine: {reason}",
            fix="on a CUDA machine run `pip install 'fmrilm[quant]'`; here, drop the quantization option "
            "(float32 or bfloat16 works everywhere)",
        )


def bnb_quantization_config(quantization: str, *, compute_dtype: Any = None):
    """A transformers ``BitsAndBytesConfig`` for "4bit" (NF4, double quantization) or "8bit"."""
    if quantization not in QUANTIZATION_CHOICES:
        raise FmriInputError(
            f"Unknown quantization '{quantization}'",
            fix=f"use one of {', '.join(QUANTIZATION_CHOICES)} or none",
        )
    _require_bitsandbytes(f"{quantization} loading")
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
    )


def is_quantized(model: Any) -> bool:
    """True for a model loaded in 4-bit or 8-bit (it then needs LoRA, not full fine-tuning)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def make_optimizer(params: Iterable[Any], *, lr: float, weight_decay: float = 0.0, eight_bit: bool = False):
    """AdamW, or bitsandbytes' 8-bit AdamW (a quarter of the optimizer memory) when asked and supported."""
    import torch

    params = list(params)
    if params and isinstance(params[0], dict):  # parameter groups (each may set its own lr)
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        params = [p for p in params if getattr(p, "requires_grad", True)]
    if eight_bit:
        _require_bitsandbytes("The 8-bit optimizer")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
