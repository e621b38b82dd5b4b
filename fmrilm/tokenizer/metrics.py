"""How good a tokenizer is: reconstruction R², codebook use, and fMRI -> text retrieval.

Shared by the Stage 1 trainer (validation) and the benchmark, so both report the same quantities.

R² is ``1 - SSE / SST`` pooled over real samples, where SST is taken around each window's per-region mean: a
model must beat "every region flat at its own mean over the window", not just "zero", to score above 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def reconstruction_r2(
    model: Any,
    windows: torch.Tensor,
    time_mask: torch.Tensor,
    coords: torch.Tensor,
    *,
    mask_ratio: float = 0.5,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """R² of the reconstruction from codes, over all patches (``r2``), and R² of the patches hidden from the
    encoder when ``mask_ratio`` of them are dropped (``r2_masked``, comparable to masked-patch R²)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=windows.device).manual_seed(seed)
    sums = {"sse": 0.0, "sst": 0.0, "sse_m": 0.0, "sst_m": 0.0}
    cfg = model.config
    try:
        for start in range(0, windows.shape[0], batch_size):
            x = windows[start : start + batch_size].float()
            m = time_mask[start : start + batch_size]
            w = m.float()[..., None].expand_as(x)
            mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
            dev = ((x - mean) ** 2) * w
            full = model(x, coords, m).reconstruction
            sums["sse"] += float((((full - x) ** 2) * w).sum())
            sums["sst"] += float(dev.sum())
            if mask_ratio > 0:
                out = model(x, coords, m, mask_ratio=mask_ratio, generator=gen)
                hidden = (~out.visible) & out.patch_valid  # (B, R, P)
                hidden_t = hidden.permute(0, 2, 1).repeat_interleave(cfg.patch_length, dim=1).float() * w
                sums["sse_m"] += float((((out.reconstruction - x) ** 2) * hidden_t).sum())
                sums["sst_m"] += float((dev * hidden_t).sum())
    finally:
        model.train(was_training)
    result = {"r2": 1.0 - sums["sse"] / max(sums["sst"], 1e-12)}
    if mask_ratio > 0:
        result["r2_masked"] = 1.0 - sums["sse_m"] / max(sums["sst_m"], 1e-12)
    return result


def code_usage(codes: torch.Tensor | np.ndarray, codebook_size: int) -> dict[str, float]:
    """Share of the codebook used, number of codes used, and perplexity (exp of the code entropy)."""
    flat = np.asarray(codes.cpu() if torch.is_tensor(codes) else codes).reshape(-1)
    if flat.size == 0:
        return {"usage": 0.0, "codes_used": 0, "perplexity": 0.0}
    counts = np.bincount(flat, minlength=codebook_size).astype(float)
    p = counts[counts > 0] / counts.sum()
    return {
        "usage": float((counts > 0).mean()),
        "codes_used": int((counts > 0).sum()),
        "perplexity": float(math.exp(-(p * np.log(p)).sum())),
    }


def retrieval_accuracy(
    brain: torch.Tensor, texts: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """fMRI -> text retrieval: rank the ``texts`` (T, E) by cosine to each brain vector (N, E); top-k is
    right when ``target`` (N,), the index of the window's own text, is among the k best. Chance is k / T."""
    b = torch.nn.functional.normalize(brain.float(), dim=-1)
    t = torch.nn.functional.normalize(texts.float(), dim=-1)
    scores = b @ t.T
    n_texts = t.shape[0]
    result: dict[str, float] = {"n_queries": int(b.shape[0]), "n_texts": int(n_texts)}
    own = scores.gather(1, target[:, None].long())
    rank = (scores > own).sum(1)  # 0 = best
    for k in ks:
        result[f"top{k}"] = float((rank < k).float().mean()) if b.shape[0] else 0.0
        result[f"chance_top{k}"] = min(1.0, k / max(1, n_texts))
    return result
