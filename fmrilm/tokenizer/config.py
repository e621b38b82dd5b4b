"""Configuration of the VQ fMRI tokenizer, a transformers `PretrainedConfig` so it saves as `config.json`.

The signal settings (TR, window, filtering) live here too: a saved tokenizer carries everything needed to cut
a new scan into the windows it was trained on, so inference cannot silently use different preprocessing.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

#: Named sizes. "tiny" is for tests, "small" (the default) trains usefully in minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32, num_heads=2, encoder_layers=1, latent_layers=1, decoder_layers=1, codebook_dim=8
    ),
    "small": dict(
        hidden_size=64, num_heads=4, encoder_layers=2, latent_layers=1, decoder_layers=1, codebook_dim=8
    ),
    "base": dict(
        hidden_size=128, num_heads=4, encoder_layers=4, latent_layers=2, decoder_layers=2, codebook_dim=16
    ),
    "large": dict(
        hidden_size=256, num_heads=8, encoder_layers=6, latent_layers=2, decoder_layers=3, codebook_dim=32
    ),
}


class FmriTokenizerConfig(PretrainedConfig):
    """Sizes of the encoder/quantizer/decoder and the signal settings the tokenizer expects.

    A window of ``window_length`` samples (at ``target_tr`` seconds) is cut into ``window_length //
    patch_length`` temporal patches per region (default 2: on simulated data, 24-sample patches reached a
    higher held-out R² than 16-sample ones within a few hundred CPU steps, at two thirds of the cost); each region carries its MNI coordinates as position (Fourier
    features), never its index, so codes do not depend on region order and any atlas can be read.
    ``num_latents`` learned queries compress the window into K latents, each quantized to one of
    ``codebook_size`` codes. ``quantizer`` is "vq" (k-means init, EMA, cosine distance) or "fsq" (finite
    scalar quantization with ``fsq_levels``, whose product must equal ``codebook_size``).
    """

    model_type = "fmri_tokenizer"

    def __init__(
        self,
        codebook_size: int = 512,
        num_latents: int = 32,
        codebook_dim: int = 8,
        hidden_size: int = 64,
        num_heads: int = 4,
        encoder_layers: int = 2,
        latent_layers: int = 1,
        decoder_layers: int = 1,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        window_length: int = 48,
        patch_length: int = 24,
        target_tr: float | None = 2.0,
        stride: int | None = None,
        detrend: bool = True,
        standardize: bool = True,
        low_pass: float | None = None,
        high_pass: float | None = None,
        bad_regions: str = "repair",
        min_timepoints: int = 24,
        quantizer: str = "vq",
        fsq_levels: list[int] | None = None,
        vq_decay: float = 0.9,
        vq_kmeans_init: bool = True,
        vq_cosine: bool = True,
        vq_dead_code_threshold: float = 1.0,
        coord_num_frequencies: int = 8,
        coord_min_wavelength_mm: float = 10.0,
        coord_max_wavelength_mm: float = 320.0,
        text_embed_dim: int | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        self.codebook_size = int(codebook_size)
        self.num_latents = int(num_latents)
        self.codebook_dim = int(codebook_dim)
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.encoder_layers = int(encoder_layers)
        self.latent_layers = int(latent_layers)
        self.decoder_layers = int(decoder_layers)
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        self.window_length = int(window_length)
        self.patch_length = int(patch_length)
        self.target_tr = None if target_tr is None else float(target_tr)
        self.stride = None if stride is None else int(stride)
        self.detrend = bool(detrend)
        self.standardize = bool(standardize)
        self.low_pass = low_pass
        self.high_pass = high_pass
        self.bad_regions = bad_regions
        self.min_timepoints = int(min_timepoints)
        self.quantizer = quantizer
        self.fsq_levels = (
            list(fsq_levels) if fsq_levels is not None else _default_fsq_levels(self.codebook_size)
        )
        self.vq_decay = float(vq_decay)
        self.vq_kmeans_init = bool(vq_kmeans_init)
        self.vq_cosine = bool(vq_cosine)
        self.vq_dead_code_threshold = float(vq_dead_code_threshold)
        self.coord_num_frequencies = int(coord_num_frequencies)
        self.coord_min_wavelength_mm = float(coord_min_wavelength_mm)
        self.coord_max_wavelength_mm = float(coord_max_wavelength_mm)
        self.text_embed_dim = None if text_embed_dim is None else int(text_embed_dim)
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)
        self._validate()

    # --------------------------------------------------------------------------------------------- helpers
    @property
    def num_patches(self) -> int:
        return self.window_length // self.patch_length

    @property
    def effective_codebook_dim(self) -> int:
        """Dimension of one codebook vector: ``codebook_dim`` for VQ, the number of FSQ levels for FSQ."""
        return len(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_dim

    def signal_config(self):
        """The `fmrilm.signal.SignalConfig` that cuts scans into this tokenizer's windows."""
        from fmrilm.signal import SignalConfig

        return SignalConfig(
            target_tr=self.target_tr,
            window_length=self.window_length,
            stride=self.stride,
            detrend=self.detrend,
            standardize=self.standardize,
            low_pass=self.low_pass,
            high_pass=self.high_pass,
            bad_regions=self.bad_regions,
            min_timepoints=self.min_timepoints,
        )

    @classmethod
    def from_preset(cls, name: str = "small", **overrides: Any) -> FmriTokenizerConfig:
        """A config from a named size ("tiny", "small", "base", "large") with any field overridden."""
        if name not in PRESETS:
            from fmrilm.errors import FmriInputError

            raise FmriInputError(f"Unknown tokenizer preset '{name}'", fix=f"use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def _validate(self) -> None:
        problems = []
        if self.window_length % self.patch_length:
            problems.append(
                f"window_length {self.window_length} is not a multiple of patch_length {self.patch_length}"
            )
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.quantizer not in ("vq", "fsq"):
            problems.append(f"quantizer '{self.quantizer}' is neither 'vq' nor 'fsq'")
        if self.quantizer == "fsq" and math.prod(self.fsq_levels) != self.codebook_size:
            problems.append(
                f"fsq_levels {self.fsq_levels} give {math.prod(self.fsq_levels)} codes, not codebook_size "
                f"{self.codebook_size}"
            )
        if problems:
            raise ValueError("Invalid FmriTokenizerConfig: " + "; ".join(problems))


def _default_fsq_levels(codebook_size: int) -> list[int]:
    """FSQ levels whose product is exactly ``codebook_size``, as few and as even as possible."""
    levels, rest = [], codebook_size
    for f in (8, 7, 6, 5, 4, 3):
        while rest % f == 0 and rest > 1:
            levels.append(f)
            rest //= f
    return levels + ([rest] if rest > 1 else [])
