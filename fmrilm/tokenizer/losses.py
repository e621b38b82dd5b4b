"""Stage 1 training losses for the fMRI tokenizer, each with its own weight.

- reconstruction: MSE of the decoded window against the input over real (unpadded) samples; the encoder saw
  only a random share of the patches (``mask_ratio``), so this is masked-patch prediction plus compression;
- commitment: keeps encoder latents close to their codes (VQ only; FSQ has none);
- alignment (SigLIP): the pooled window latent, projected into the frozen LLM's text-embedding space, must
  match the embedding of that window's descriptor text and not the other texts in the batch (a sigmoid loss
  per pair, so windows that share a text are all positives);
- domain-adversarial: a discriminator tells projected brain latents from LLM text embeddings; a gradient
  reversal layer makes the tokenizer fool it, pulling brain latents into the region of the LLM's text space;
- site-adversarial (optional): a site classifier on the pooled latent behind gradient reversal, which
  removes site identity from the codes;
- subject (optional): a linear head on the pooled quantized latent must predict the leading connectome
  components of the window's whole scan (its tangent-space FC relative to the training population), meant to
  make a window's codes keep who the scan belongs to (reconstruction alone leaves autism at chance in the window
  codes). Measured on ABIDE it does not train at 48-timepoint windows and the codes stay at chance
  (BENCHMARKS.md, "Tokenizer"), so it is off by default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TokenizerLossConfig:
    """Weights and settings of every Stage 1 loss term (0 switches a term off)."""

    reconstruction_weight: float = 1.0
    mask_ratio: float = 0.5
    commitment_weight: float = 0.25
    alignment_weight: float = 0.5
    adversarial_weight: float = 0.05
    site_weight: float = 0.0
    subject_weight: float = 0.0
    #: leading connectome components the subject head predicts (the strongest, best-estimated directions)
    subject_components: int = 32
    gradient_reversal_scale: float = 1.0
    siglip_init_scale: float = 10.0
    siglip_init_bias: float = -10.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerLossConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def gradient_reversal(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward (Ganin & Lempitsky, 2015)."""
    return _GradientReversal.apply(x, scale)


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, time_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over real samples; padded samples (``time_mask`` False) do not count."""
    err = (reconstruction - target.float()) ** 2
    if time_mask is None:
        return err.mean()
    weight = time_mask.float()[..., None].expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def siglip_loss(
    brain: torch.Tensor, text: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP pairwise sigmoid loss; ``positives`` (B, T) bool marks matching (window, text) pairs.

    Averaged over pairs (SigLIP sums over texts and averages over images): measured at batch 32, the sum gave
    the encoder a gradient 22x the reconstruction's and stalled reconstruction under gradient clipping.
    """
    logits = F.normalize(brain, dim=-1) @ F.normalize(text, dim=-1).T * scale.exp() + bias
    signs = positives.float() * 2.0 - 1.0
    return -F.logsigmoid(signs * logits).mean()


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class TokenizerLoss(nn.Module):
    """All Stage 1 losses plus the small trainable parts they need (SigLIP scale/bias, discriminators).

    These parts exist only for training; they are checkpointed with the optimizer state but not saved with
    the tokenizer.
    """

    def __init__(
        self,
        config: TokenizerLossConfig,
        hidden_size: int,
        text_embed_dim: int | None = None,
        num_sites: int = 0,
        subject_dim: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.use_alignment = bool(text_embed_dim) and config.alignment_weight > 0
        self.use_adversarial = bool(text_embed_dim) and config.adversarial_weight > 0
        self.use_site = num_sites > 1 and config.site_weight > 0
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.siglip_init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(config.siglip_init_bias)))
        self.domain_discriminator = (
            _mlp(text_embed_dim, max(32, text_embed_dim // 4), 1) if self.use_adversarial else None
        )
        self.site_classifier = _mlp(hidden_size, hidden_size, num_sites) if self.use_site else None
        self.use_subject = subject_dim > 0 and config.subject_weight > 0
        self.subject_head = nn.Linear(hidden_size, subject_dim) if self.use_subject else None

    def forward(
        self,
        output: Any,
        windows: torch.Tensor,
        time_mask: torch.Tensor | None = None,
        align_proj: nn.Module | None = None,
        text_embeddings: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
        site_index: torch.Tensor | None = None,
        reversal_scale: float | None = None,
        subject_target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts.

        ``text_embeddings`` (T, E) are the frozen LLM embeddings of the batch's distinct descriptor texts;
        ``text_index`` (B,) says which text each window has (-1: none). ``site_index`` (B,) is the site of
        each window (-1: unknown). ``reversal_scale`` overrides ``gradient_reversal_scale`` (the trainer ramps it
        up from 0, as in DANN, so the adversaries do not disturb the encoder before it has learned anything).
        ``subject_target`` (B, subject_dim) holds the connectome components of each window's scan (NaN rows:
        none known).
        """
        cfg = self.config
        grl = cfg.gradient_reversal_scale if reversal_scale is None else float(reversal_scale)
        parts: dict[str, torch.Tensor] = {}
        parts["reconstruction"] = reconstruction_loss(output.reconstruction, windows, time_mask)
        total = cfg.reconstruction_weight * parts["reconstruction"]
        if cfg.commitment_weight > 0 and output.commit_loss is not None:
            parts["commitment"] = output.commit_loss
            total = total + cfg.commitment_weight * output.commit_loss
        has_text = (
            text_embeddings is not None
            and text_index is not None
            and align_proj is not None
            and bool((text_index >= 0).any())
        )
        if has_text and (self.use_alignment or self.use_adversarial):
            rows = text_index >= 0
            brain = align_proj(output.pooled[rows])
            text = text_embeddings.float().detach()
            if self.use_alignment:
                positives = text_index[rows][:, None] == torch.arange(text.shape[0], device=text.device)[None]
                parts["alignment"] = siglip_loss(brain, text, positives, self.logit_scale, self.logit_bias)
                total = total + cfg.alignment_weight * parts["alignment"]
            if self.use_adversarial:
                fake = self.domain_discriminator(gradient_reversal(F.normalize(brain, dim=-1), grl))
                real = self.domain_discriminator(F.normalize(text, dim=-1))
                parts["adversarial"] = 0.5 * (
                    F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
                    + F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                )
                total = total + cfg.adversarial_weight * parts["adversarial"]
        if self.use_site and site_index is not None and bool((site_index >= 0).any()):
            rows = site_index >= 0
            logits = self.site_classifier(gradient_reversal(output.pooled[rows], grl))
            parts["site"] = F.cross_entropy(logits, site_index[rows])
            total = total + cfg.site_weight * parts["site"]
        if self.use_subject and subject_target is not None:
            rows = ~torch.isnan(subject_target).any(dim=1)
            if bool(rows.any()):
                predicted = self.subject_head(output.pooled[rows])
                parts["subject"] = F.mse_loss(predicted, subject_target[rows].to(predicted.dtype))
                total = total + cfg.subject_weight * parts["subject"]
        return total, {k: float(v.detach()) for k, v in parts.items()}
