"""Frozen LLM embeddings of descriptor texts: the target space Stage 1 aligns brain latents to.

A text's embedding is the mean of the base causal LM's last hidden states over its tokens (``pooling="hidden"``,
as in the paper), or the mean of its INPUT token embeddings (``pooling="input"``): no transformer pass, so
thousands of long descriptors embed in seconds on a CPU instead of an hour, and the target is the very space
brain tokens are injected into as input embeddings. The LLM is frozen
and the same texts recur across epochs, so embeddings are computed once and cached by the SHA-1 of the text
(in memory, and optionally in a safetensors file so a resumed or repeated run skips the LLM entirely).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


POOLINGS = ("hidden", "input")


class TextEmbedder:
    """Mean-pooled last hidden states (or input embeddings) of any ``AutoModelForCausalLM``, cached per text."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        max_length: int = 512,
        cache_path: str | os.PathLike | None = None,
        pooling: str = "hidden",
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.pooling = pooling
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, torch.Tensor] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self.load_cache(self.cache_path)

    @classmethod
    def from_pretrained(cls, spec: str | os.PathLike | None = None, **kwargs: Any) -> TextEmbedder:
        """Load the base LLM (a hub id or folder, a .gguf file, or None for the offline default) in float32."""
        from fmrilm.model.base_model import load_base_model

        model, tokenizer = load_base_model(spec, dtype=torch.float32)
        return cls(model, tokenizer, **kwargs)

    @property
    def dim(self) -> int:
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text_config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        """``(len(texts), dim)`` float32 embeddings; only texts not yet cached go through the LLM."""
        keys = [text_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            by_key = {k: t for k, t in zip(keys, texts, strict=True)}
            todo = [by_key[k] for k in missing]
            batches = range(0, len(todo), self.batch_size)
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc="embedding descriptor texts", unit="batch")
            device = next(self.model.parameters()).device
            for start in batches:
                chunk = todo[start : start + self.batch_size]
                enc = self.tokenizer(
                    chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
                ).to(device)
                if self.pooling == "input":
                    hidden = self.model.get_input_embeddings()(enc["input_ids"]).float()
                else:
                    out = self.model(
                        input_ids=enc["input_ids"],
                        attention_mask=enc["attention_mask"],
                        output_hidden_states=True,
                    )
                    hidden = out.hidden_states[-1].float()
                weight = enc["attention_mask"].float()[..., None]
                pooled = (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)
                for text, vec in zip(chunk, pooled.cpu(), strict=True):
                    self._cache[text_key(text)] = vec.clone()
            if self.cache_path is not None:
                self.save_cache(self.cache_path)
        if not keys:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[k] for k in keys])

    def save_cache(self, path: str | os.PathLike) -> None:
        """Write the cache atomically as safetensors (key = SHA-1 of the text)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self._cache.items()}, str(tmp))
        os.replace(tmp, path)

    def load_cache(self, path: str | os.PathLike) -> None:
        """Read a cache file; entries of another width (another LLM) are ignored."""
        from safetensors.torch import load_file

        dim = self.dim
        self._cache.update({k: v for k, v in load_file(str(path)).items() if v.shape == (dim,)})
