"""The VQ fMRI tokenizer: a window of region time series -> K discrete codes -> signal for any set of regions.

Encoder: every region's window is cut into temporal patches; a patch token is a linear embedding of the patch
plus the region's position (Fourier features of its MNI coordinates) plus the patch's time slot. There is no
region-index embedding, so the encoder is a set function of (region signal, region position) pairs: codes do
not depend on region order, and scans from different atlases share one tokenizer. A transformer mixes the
patch tokens; K learned queries cross-attend to them and compress the window to K latents, which a
vector-quantize-pytorch quantizer turns into K codes.

Decoder: for any regions (given by their coordinates), one query per (region, patch) cross-attends to the K
quantized latents and reads out the patch. It reconstructs the window during training and turns generated
codes back into signal (forecasting) at inference.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from vector_quantize_pytorch import FSQ, VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

from fmrilm.errors import FmriInputError
from fmrilm.tokenizer.config import FmriTokenizerConfig

#: Seed of the codebook used when an untrained VQ tokenizer is run in eval mode (k-means init needs training).
_UNTRAINED_CODEBOOK_SEED = 0


def dead_code_kwargs(threshold: float, codebook_size: int) -> dict[str, float]:
    """`VectorQuantize` arguments that replace codes whose EMA cluster size falls below ``threshold``.

    vector-quantize-pytorch 1.34 replaced ``threshold_ema_dead_code`` (a count) by ``dead_code_threshold_ratio``
    (a share of the mean cluster size) and logs a deprecation warning for the old name; this passes the ratio
    the library itself converts the count to where it knows the new name (training exactly as 1.34 does with
    the count, and without the warning a user would see in every run), and the count before 1.34.
    """
    import inspect

    if "dead_code_threshold_ratio" in inspect.signature(VectorQuantize.__init__).parameters:
        ratio = threshold / codebook_size if threshold >= 1.0 else threshold
        return {"dead_code_threshold_ratio": float(ratio)}
    return {"threshold_ema_dead_code": float(threshold)}


@dataclass
class FmriTokenizerOutput(ModelOutput):
    """What `FmriTokenizerModel.forward` returns (all batch-first)."""

    reconstruction: torch.Tensor | None = None  # (B, L, R)
    codes: torch.Tensor | None = None  # (B, K) long
    latents: torch.Tensor | None = None  # (B, K, D) before quantization
    quantized: torch.Tensor | None = None  # (B, K, D) after quantization (straight-through in training)
    pooled: torch.Tensor | None = None  # (B, D) mean of the quantized latents: the window's embedding
    commit_loss: torch.Tensor | None = None  # scalar
    visible: torch.Tensor | None = None  # (B, R, P) bool: patches the encoder saw (all valid ones in eval)
    patch_valid: torch.Tensor | None = None  # (B, R, P) bool: patches with at least one real sample


class CoordinateEncoding(nn.Module):
    """MNI coordinates (mm) -> hidden vector, through multi-scale sin/cos features and a small MLP.

    Wavelengths run geometrically from ``coord_min_wavelength_mm`` (finer than most parcels) to
    ``coord_max_wavelength_mm`` (larger than the brain), so nearby regions get similar positions.
    """

    def __init__(self, config: FmriTokenizerConfig) -> None:
        super().__init__()
        self.num_frequencies = config.coord_num_frequencies
        self.min_wavelength = config.coord_min_wavelength_mm
        self.max_wavelength = config.coord_max_wavelength_mm
        in_dim = 3 + 3 * 2 * self.num_frequencies
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        # unit-scale output from the first step: with small initial weights a position signal would otherwise
        # be ~100x weaker than the patch content, and regions would be hard to tell apart early in training
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        wavelengths = torch.logspace(
            math.log10(self.min_wavelength),
            math.log10(self.max_wavelength),
            self.num_frequencies,
            device=coords.device,
            dtype=coords.dtype,
        )
        angles = coords[..., None] * (2 * math.pi / wavelengths)  # (..., 3, F)
        features = torch.cat([coords / 100.0, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)
        return self.norm(self.mlp(features))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (queries attend to a memory) followed by an MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, memory_padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        kv = self.norm_kv(memory)
        attended, _ = self.attn(
            self.norm_q(queries), kv, kv, key_padding_mask=memory_padding, need_weights=False
        )
        queries = queries + attended
        return queries + self.mlp(self.norm_mlp(queries))


def _self_attention_stack(config: FmriTokenizerConfig, depth: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            config.hidden_size,
            config.num_heads,
            int(config.hidden_size * config.mlp_ratio),
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        for _ in range(depth)
    )


class FmriTokenizerPreTrainedModel(PreTrainedModel):
    config_class = FmriTokenizerConfig
    base_model_prefix = "fmri_tokenizer"
    main_input_name = "windows"
    _no_split_modules: list[str] = []

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        if module is getattr(self, "patch_embed", None):  # unit-scale patch content from the first step
            init.xavier_normal_(module.weight)
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, FmriTokenizerModel):
            if module.config.text_embed_dim:
                init.zeros_(module.text_center)
                init.ones_(module.text_scale)
            for param in (module.latent_queries, module.patch_time, module.slot_embed, module.decoder_time):
                init.normal_(param, mean=0.0, std=1.0 / math.sqrt(self.config.hidden_size))
        elif isinstance(module, Codebook) and not module.learnable_codebook:
            # A seeded random codebook, used only if an untrained tokenizer is run in eval mode; training
            # replaces it by k-means on the first batch (``initted`` stays False until then).
            gen = torch.Generator().manual_seed(_UNTRAINED_CODEBOOK_SEED)
            embed = torch.randn(module.embed.shape, generator=gen)
            if module.use_cosine_sim:
                embed = F.normalize(embed, dim=-1)
            init.copy_(module.embed, embed)
            init.copy_(module.embed_avg, embed)
            init.ones_(module.cluster_size)
        elif isinstance(module, VectorQuantize):
            init.zeros_(module.zero)  # non-persistent buffer: re-created after from_pretrained
        elif isinstance(module, FSQ):
            # non-persistent buffers: recompute them, since from_pretrained leaves them uninitialised
            levels = torch.tensor(self.config.fsq_levels, dtype=torch.int32)
            init.copy_(module._levels, levels)
            init.copy_(module._basis, torch.cumprod(torch.tensor([1] + self.config.fsq_levels[:-1]), 0).int())
            init.copy_(module.implicit_codebook, module._indices_to_codes(torch.arange(module.codebook_size)))


class FmriTokenizerModel(FmriTokenizerPreTrainedModel):
    """Window of (time, regions) signal + region MNI coordinates -> K codes -> signal on any regions.

    Public API (no training machinery needed):
    - ``windows(scan)`` -> ``(windows (W, L, R), mask (W, L))`` with this tokenizer's signal settings;
    - ``encode(scan_or_windows, coords=None)`` -> LongTensor ``(W, K)``;
    - ``decode(codes, coords_or_atlas)`` -> FloatTensor ``(W, window_length, R)``;
    - ``embed(scan_or_windows, coords=None)`` -> FloatTensor ``(W, hidden)``: pooled quantized latent;
    - ``codebook_vectors()`` -> ``(codebook_size, codebook_dim)``; ``code_embeddings()`` ->
      ``(codebook_size, hidden)``; ``code_text_embeddings()`` -> codebook in the aligned LLM text space.
    """

    def __init__(self, config: FmriTokenizerConfig) -> None:
        super().__init__(config)
        d, k, n_patches = config.hidden_size, config.num_latents, config.num_patches
        # encoder
        self.patch_embed = nn.Linear(config.patch_length, d)
        self.patch_time = nn.Parameter(torch.zeros(n_patches, d))
        self.encoder_coords = CoordinateEncoding(config)
        self.encoder = _self_attention_stack(config, config.encoder_layers)
        self.encoder_norm = nn.LayerNorm(d)
        self.latent_queries = nn.Parameter(torch.zeros(k, d))
        self.pool_maps = nn.Linear(d, k)
        self.compress = CrossAttentionBlock(d, config.num_heads, config.mlp_ratio, config.dropout)
        self.latent_encoder = _self_attention_stack(config, config.latent_layers)
        self.latent_norm = nn.LayerNorm(d)
        # quantizer
        if config.quantizer == "fsq":
            # FSQ computes its codebook size with .item(), impossible on the meta device from_pretrained uses
            with torch.device("cpu"):
                self.quantizer = FSQ(
                    levels=config.fsq_levels, dim=d, preserve_symmetry=2 in config.fsq_levels
                )
        else:
            self.quantizer = VectorQuantize(
                dim=d,
                codebook_size=config.codebook_size,
                codebook_dim=config.codebook_dim,
                decay=config.vq_decay,
                kmeans_init=config.vq_kmeans_init,
                use_cosine_sim=config.vq_cosine,
                **dead_code_kwargs(config.vq_dead_code_threshold, config.codebook_size),
                commitment_weight=1.0,  # the weight is applied by the training loss
            )
        # decoder
        self.slot_embed = nn.Parameter(torch.zeros(k, d))
        self.latent_decoder = _self_attention_stack(config, config.decoder_layers)
        self.decoder_coords = CoordinateEncoding(config)
        self.decoder_time = nn.Parameter(torch.zeros(n_patches, d))
        self.unpool_maps = nn.Linear(d, k)
        self.readout = nn.ModuleList(
            CrossAttentionBlock(d, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.decoder_layers)
        )
        self.readout_norm = nn.LayerNorm(d)
        self.readout_head = nn.Linear(d, config.patch_length)
        # projection of the pooled window latent into the LLM's text-embedding space (Stage 1 alignment)
        self.align_proj = nn.Linear(d, config.text_embed_dim) if config.text_embed_dim else None
        if config.text_embed_dim:
            # LLM text embeddings share one large common direction (cosine ~0.98 between any two descriptor
            # texts with SmolLM2), so alignment works on embeddings minus their training mean; the mean and
            # the typical centred norm are kept to map brain vectors back into the LLM's own space
            self.register_buffer("text_center", torch.zeros(config.text_embed_dim))
            self.register_buffer("text_scale", torch.ones(()))
        self.post_init()

    # ---------------------------------------------------------------------------------------- core pieces
    def encode_latents(
        self,
        windows: torch.Tensor,
        coords: torch.Tensor,
        time_mask: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows (B, L, R) + coords (R, 3) or (B, R, 3) -> (latents (B, K, D), visible, patch_valid).

        With ``mask_ratio`` > 0 (training), a random share of the valid patch tokens is hidden from the
        encoder (MAE-style: dropped, which also makes the step cheaper); ``visible`` (B, R, P) says which.
        """
        cfg = self.config
        b, length, n_regions = windows.shape
        n_patches, plen = cfg.num_patches, cfg.patch_length
        if time_mask is None:
            time_mask = torch.ones(b, length, dtype=torch.bool, device=windows.device)
        x = windows.float() * time_mask[..., None]
        patches = x.reshape(b, n_patches, plen, n_regions).permute(0, 3, 1, 2)  # (B, R, P, plen)
        patch_valid = (
            time_mask.reshape(b, n_patches, plen).any(-1)[:, None, :].expand(b, n_regions, n_patches)
        )
        position = self.encoder_coords(coords.float())  # (R, D) or (B, R, D)
        if position.dim() == 2:
            position = position[None]
        where = (position[:, :, None, :] + self.patch_time).expand(b, -1, -1, -1)  # (B, R, P, D)
        where = where.reshape(b, n_regions * n_patches, -1)
        tokens = self.patch_embed(patches).reshape(b, n_regions * n_patches, -1) + where
        valid = patch_valid.reshape(b, -1)
        n_tokens = tokens.shape[1]
        visible = valid
        if mask_ratio > 0:
            n_keep = max(1, int(round(n_tokens * (1.0 - mask_ratio))))
            scores = torch.rand(b, n_tokens, device=tokens.device, generator=generator)
            scores = scores + (~valid).float() * 2.0  # padded patches are dropped first
            keep = scores.argsort(dim=1)[:, :n_keep]
            tokens = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
            where = where.gather(1, keep[..., None].expand(-1, -1, where.shape[-1]))
            kept_valid = valid.gather(1, keep)
            visible = torch.zeros_like(valid).scatter(1, keep, kept_valid)
            valid = kept_valid
        padding = ~valid
        all_padding = padding.all(dim=1)
        if (
            all_padding.any()
        ):  # a window with no real sample: attend to its (zero) first patch, not to nothing
            padding[all_padding, 0] = False
        for layer in self.encoder:
            tokens = layer(tokens, src_key_padding_mask=padding)
        tokens = self.encoder_norm(tokens)
        # linear "spatial map" pooling: each latent slot weighs tokens by where/when they are (easy to learn,
        # like a PCA/ICA unmixing); cross-attention then adds content-dependent pooling
        maps = self.pool_maps(where) * (~padding)[..., None].float()  # (B, N, K)
        pooled = torch.einsum("bnk,bnd->bkd", maps, tokens) / (~padding).sum(1).clamp_min(1)[:, None, None]
        latents = self.compress(self.latent_queries + pooled, tokens, padding)
        for layer in self.latent_encoder:
            latents = layer(latents)
        latents = self.latent_norm(latents)
        return latents, visible.reshape(b, n_regions, n_patches), patch_valid

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents (B, K, D) -> (quantized (B, K, D), codes (B, K), commitment loss)."""
        if isinstance(self.quantizer, FSQ):
            quantized, codes = self.quantizer(latents)
            return quantized, codes.long(), latents.new_zeros(())
        with self._untrained_codebook_guard():
            quantized, codes, commit = self.quantizer(latents)
        return quantized, codes.long(), commit.sum()

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, K) -> quantized latents (B, K, D), as the decoder sees them."""
        codes = codes.long()
        if isinstance(self.quantizer, FSQ):
            return self.quantizer.indices_to_codes(codes)
        return self.quantizer.get_output_from_indices(codes)

    def decode_latents(self, quantized: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, K, D) + coords (R, 3) or (B, R, 3) -> signal (B, window_length, R)."""
        cfg = self.config
        b = quantized.shape[0]
        z = quantized + self.slot_embed
        for layer in self.latent_decoder:
            z = layer(z)
        position = self.decoder_coords(coords.float())
        if position.dim() == 2:
            position = position[None]
        n_regions = position.shape[1]
        queries = position[:, :, None, :] + self.decoder_time  # (B|1, R, P, D)
        queries = queries.expand(b, -1, -1, -1).reshape(b, n_regions * cfg.num_patches, -1)
        # linear "spatial map" mixing of the latents (the decoder-side mirror of the encoder's pooling)
        queries = queries + torch.einsum("bnk,bkd->bnd", self.unpool_maps(queries), z)
        for block in self.readout:
            queries = block(queries, z)
        out = self.readout_head(self.readout_norm(queries))  # (B, R*P, plen)
        out = out.reshape(b, n_regions, cfg.num_patches, cfg.patch_length).permute(0, 2, 3, 1)
        return out.reshape(b, cfg.window_length, n_regions)

    def forward(
        self,
        windows: torch.Tensor,
        coords: torch.Tensor,
        time_mask: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        skip_quantization: bool = False,
        return_dict: bool = True,
        **_: Any,
    ) -> FmriTokenizerOutput:
        """Encode, quantize and reconstruct a batch of windows; ``mask_ratio`` hides patches (training),
        drawn with ``generator`` when given (reproducible runs). ``skip_quantization`` decodes the continuous
        latents (quantizer warm-up: the codebook is then k-means-initialised on latents that mean something);
        codes are then -1."""
        latents, visible, patch_valid = self.encode_latents(windows, coords, time_mask, mask_ratio, generator)
        if skip_quantization:
            quantized, commit = latents, latents.new_zeros(())
            codes = torch.full(latents.shape[:2], -1, dtype=torch.long, device=latents.device)
        else:
            quantized, codes, commit = self.quantize(latents)
        reconstruction = self.decode_latents(quantized, coords)
        return FmriTokenizerOutput(
            reconstruction=reconstruction,
            codes=codes,
            latents=latents,
            quantized=quantized,
            pooled=quantized.mean(dim=1),
            commit_loss=commit,
            visible=visible,
            patch_valid=patch_valid,
        )

    # ------------------------------------------------------------------------------------ connectome part
    #: The fitted `ConnectomeTokenizer` (whole-scan FC tokens), or None. Kept outside the module tree: it is
    #: fitted, not trained, and saved in its own ``connectome/`` subfolder beside this model's weights.
    connectome: Any = None

    def set_connectome(self, connectome: Any) -> None:
        object.__setattr__(self, "connectome", connectome)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        from fmrilm.tokenizer.connectome import SUBFOLDER

        super().save_pretrained(save_directory, *args, **kwargs)
        if self.connectome is not None:
            self.connectome.save_pretrained(Path(save_directory) / SUBFOLDER)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        from fmrilm.tokenizer.connectome import SUBFOLDER, ConnectomeTokenizer

        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        sub = Path(pretrained_model_name_or_path) / SUBFOLDER
        if ConnectomeTokenizer.exists(sub):
            model.set_connectome(ConnectomeTokenizer.from_pretrained(sub))
        return model

    # ------------------------------------------------------------------------------------- user-facing API
    def windows(self, scan: Any) -> tuple[np.ndarray, np.ndarray]:
        """Cut a `Scan` into this tokenizer's windows: ``(windows (W, L, R) float32, mask (W, L) bool)``."""
        from fmrilm.signal import scan_windows

        return scan_windows(scan, self.config.signal_config())

    @torch.no_grad()
    def encode(
        self,
        scan_or_windows: Any,
        coords: Any = None,
        mask: Any = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """A `Scan` (cut with ``windows``) or windows ``(W, L, R)`` -> codes LongTensor ``(W, K)``.

        Coordinates come from the scan's atlas, or from ``coords`` (an `Atlas` or an ``(R, 3)`` array in MNI
        mm). Always runs in eval mode (deterministic, no codebook update).
        """
        windows, time_mask, coords_t = self._prepare(scan_or_windows, coords, mask)
        with self._eval_mode():
            codes = []
            for start in range(0, windows.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                latents, _, _ = self.encode_latents(windows[sl], coords_t, time_mask[sl])
                codes.append(self.quantize(latents)[1])
        return torch.cat(codes) if codes else torch.zeros(0, self.config.num_latents, dtype=torch.long)

    @torch.no_grad()
    def embed(
        self, scan_or_windows: Any, coords: Any = None, mask: Any = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Pooled quantized latent of each window, ``(W, hidden_size)``: a fixed-size summary for probes."""
        windows, time_mask, coords_t = self._prepare(scan_or_windows, coords, mask)
        with self._eval_mode():
            out = []
            for start in range(0, windows.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                latents, _, _ = self.encode_latents(windows[sl], coords_t, time_mask[sl])
                out.append(self.quantize(latents)[0].mean(dim=1))
        return torch.cat(out) if out else torch.zeros(0, self.config.hidden_size)

    @torch.no_grad()
    def decode(self, codes: Any, coords_or_atlas: Any, batch_size: int = 64) -> torch.Tensor:
        """Codes ``(W, K)`` (or ``(K,)``) -> signal FloatTensor ``(W, window_length, R)`` for the given regions.

        ``coords_or_atlas`` is an `Atlas`, a `Scan` with an atlas, or an ``(R, 3)`` array of MNI coordinates:
        the regions need not be those the codes were encoded from.
        """
        codes_t = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes).long()
        if codes_t.dim() == 1:
            codes_t = codes_t[None]
        k = self.config.num_latents
        if codes_t.dim() != 2 or codes_t.shape[1] != k:
            raise FmriInputError(
                f"Codes have shape {tuple(codes_t.shape)}, not (windows, {k})",
                fix=f"pass the (windows, {k}) codes returned by encode()",
            )
        if codes_t.numel() and (codes_t.min() < 0 or codes_t.max() >= self.config.codebook_size):
            raise FmriInputError(
                f"Codes must lie in [0, {self.config.codebook_size})",
                fix="pass codes produced by this tokenizer",
            )
        coords_t = self._coords_tensor(coords_or_atlas)
        codes_t = codes_t.to(self.device)
        with self._eval_mode():
            out = [
                self.decode_latents(self.dequantize(codes_t[s : s + batch_size]), coords_t)
                for s in range(0, codes_t.shape[0], batch_size)
            ]
        if not out:
            return torch.zeros(0, self.config.window_length, coords_t.shape[-2])
        return torch.cat(out)

    @torch.no_grad()
    def codebook_vectors(self) -> torch.Tensor:
        """The codebook, ``(codebook_size, codebook_dim)`` (FSQ: the implicit grid, one column per level)."""
        if isinstance(self.quantizer, FSQ):
            return self.quantizer.implicit_codebook.detach().float().clone()
        return self.quantizer.codebook.detach().float().clone()

    @torch.no_grad()
    def code_embeddings(self) -> torch.Tensor:
        """Each code as the decoder sees it, ``(codebook_size, hidden_size)`` (after the output projection)."""
        return self.dequantize(torch.arange(self.config.codebook_size, device=self.device)[None])[0].detach()

    @torch.no_grad()
    def code_text_embeddings(self) -> torch.Tensor | None:
        """Each code mapped into the LLM's text-embedding space ``(codebook_size, text_embed_dim)`` (same
        centre and typical norm as the LLM's descriptor embeddings), or None without text alignment."""
        if self.align_proj is None:
            return None
        return self.to_text_space(self.code_embeddings()).detach()

    def to_text_space(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled window latents ``(N, hidden)`` -> points in the LLM's text-embedding space ``(N, E)``:
        the aligned direction, scaled to the typical centred text norm, plus the text centre."""
        if self.align_proj is None:
            raise FmriInputError(
                "This tokenizer was trained without text alignment",
                fix="train it with a descriptor corpus (fmrilm train tokenizer --corpus DIR)",
            )
        return F.normalize(self.align_proj(pooled), dim=-1) * self.text_scale + self.text_center

    @torch.no_grad()
    def embed_text_space(self, scan_or_windows: Any, coords: Any = None, mask: Any = None) -> torch.Tensor:
        """Each window of a scan as a point in the LLM's text-embedding space ``(W, text_embed_dim)``: compare
        it (after subtracting ``text_center``) with LLM embeddings of descriptor texts, e.g. for retrieval."""
        return self.to_text_space(self.embed(scan_or_windows, coords, mask))

    # ------------------------------------------------------------------------------------------- helpers
    @contextmanager
    def _eval_mode(self):
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @contextmanager
    def _untrained_codebook_guard(self):
        """In eval mode, an untrained k-means codebook must not be k-means-initialised from the data being
        encoded (codes would depend on the first batch): use the seeded codebook instead."""
        codebook = getattr(self.quantizer, "_codebook", None)
        fake = codebook is not None and not self.training and not bool(codebook.initted)
        if fake:
            codebook.initted.fill_(True)
        try:
            yield
        finally:
            if fake:
                codebook.initted.fill_(False)

    @property
    def is_codebook_initialized(self) -> bool:
        codebook = getattr(self.quantizer, "_codebook", None)
        return codebook is None or bool(codebook.initted)

    def _coords_tensor(self, coords_or_atlas: Any) -> torch.Tensor:
        from fmrilm.atlas import Atlas

        value = coords_or_atlas
        if hasattr(value, "timeseries") and hasattr(value, "atlas"):  # a Scan
            if value.atlas is None:
                raise FmriInputError(
                    "The scan has no atlas, so its region coordinates are unknown",
                    subject=getattr(value, "subject_id", None),
                    fix="load it with an atlas (load_scan(..., atlas=...)) or pass coords=(R, 3) MNI coordinates",
                )
            value = value.atlas
        if isinstance(value, Atlas):
            value = value.coords
        if value is None:
            raise FmriInputError(
                "No region coordinates were given",
                fix="pass an Atlas, a Scan with an atlas, or an (R, 3) array of MNI coordinates",
            )
        coords = torch.as_tensor(np.asarray(value, dtype=np.float32) if not torch.is_tensor(value) else value)
        if coords.shape[-1] != 3 or coords.dim() not in (2, 3):
            raise FmriInputError(
                f"Region coordinates have shape {tuple(coords.shape)}, not (regions, 3)",
                fix="pass one MNI x, y, z row per region",
            )
        return coords.float().to(self.device)

    def _prepare(
        self, scan_or_windows: Any, coords: Any, mask: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        subject = None
        if hasattr(scan_or_windows, "timeseries"):  # a Scan
            subject = scan_or_windows.subject_id
            coords_src = coords if coords is not None else scan_or_windows
            coords_t = self._coords_tensor(coords_src)
            windows, mask = self.windows(scan_or_windows)
        else:
            windows = scan_or_windows
            coords_t = self._coords_tensor(coords)
        windows_t = torch.as_tensor(
            np.asarray(windows, dtype=np.float32) if not torch.is_tensor(windows) else windows
        )
        if windows_t.dim() == 2:
            windows_t = windows_t[None]
        if windows_t.dim() != 3 or windows_t.shape[1] != cfg.window_length:
            raise FmriInputError(
                f"Windows have shape {tuple(windows_t.shape)}, not (windows, {cfg.window_length}, regions)",
                subject=subject,
                fix="cut the scan with tokenizer.windows(scan) or pass the Scan itself",
            )
        if windows_t.shape[2] != coords_t.shape[-2]:
            raise FmriInputError(
                f"The windows have {windows_t.shape[2]} regions but {coords_t.shape[-2]} coordinates were given",
                subject=subject,
                fix="pass the atlas the scan was parcellated with",
            )
        if not torch.isfinite(windows_t).all():
            raise FmriInputError(
                "The windows contain NaN or infinite values",
                subject=subject,
                fix="clean the scan first (fmrilm.signal.preprocess repairs bad regions)",
            )
        if mask is None:
            mask_t = torch.ones(windows_t.shape[:2], dtype=torch.bool)
        else:
            mask_t = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).bool()
            if mask_t.dim() == 1:
                mask_t = mask_t[None]
        return windows_t.to(self.device), mask_t.to(self.device), coords_t
