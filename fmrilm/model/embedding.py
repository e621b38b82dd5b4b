"""Scan embeddings: what the LLM makes of a scan, as one vector per scan (or per window), for your own models.

The prompt is the one Stage 2 trains with for descriptions: a user turn holding the scan's fMRI part and
`DESCRIBE_PROMPT`, in the base model's chat template (generation prompt added). The LLM runs once over it
(soft brain tokens filled in as in every other call) and its last hidden state is averaged over the scan's
brain-token positions:

- ``windows=False`` (default): over the connectome tokens when the model has them (the whole scan's FC, the
  trait signal), else over all window tokens; one vector ``(hidden,)`` per scan;
- ``windows=True``: over each window's K tokens; ``(W, hidden)`` per scan, for the windows the LLM reads
  (a short last window is dropped and only the last ``max_windows`` are kept, exactly as in every prompt).

Prompts of a batch are left-padded with explicit position ids, so a scan's embedding does not depend on what
it is batched with. The LLM is causal, so the prompt is cut after the last position averaged: what follows
cannot change those hidden states (half the tokens for scan embeddings), only the time it takes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError


def embed_messages() -> list[dict[str, Any]]:
    """The embedding prompt: the fMRI part, then the describe instruction (Stage 2's description task)."""
    from fmrilm.model.processing import DESCRIBE_PROMPT

    return [{"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": DESCRIBE_PROMPT}]}]


def embed(
    model: Any, scan: Any, *, windows: bool = False, batch_size: int = 8, progress: bool = False
) -> Any:
    """Embeddings of one scan (a `Scan` or a scan file) or of a list of them; see the module docstring.

    One scan: ``(hidden,)`` (or ``(W, hidden)`` with ``windows``). A list: ``(N, hidden)`` (or a list of
    ``(W_i, hidden)`` arrays). float32 numpy arrays.
    """
    single = hasattr(scan, "timeseries") or isinstance(scan, (str, os.PathLike))
    scans = [scan] if single else list(scan)
    if not scans:
        raise FmriInputError("No scans to embed", fix="pass a scan or a non-empty list of scans")
    scans = [_as_scan(model, s) for s in scans]
    if int(batch_size) < 1:
        raise FmriInputError(f"batch_size must be at least 1, got {batch_size}", fix="pass e.g. 8")
    out: list[np.ndarray] = []
    batches = [scans[i : i + int(batch_size)] for i in range(0, len(scans), int(batch_size))]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="embedding", unit="batch")
    for batch in batches:
        out.extend(embed_batch(model, batch, windows=windows))
    if single:
        return out[0]
    return out if windows else np.stack(out)


def embed_batch(model: Any, scans: Sequence[Any], *, windows: bool = False) -> list[np.ndarray]:
    """One forward over a batch of scans: per scan ``(hidden,)`` or ``(W, hidden)`` float32 arrays."""
    import torch

    processor = model.processor
    ids_info = processor.ids
    k = processor.config.num_latents
    batch = processor([embed_messages() for _ in scans], [[s] for s in scans], add_generation_prompt=True).to(
        model.device
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lo = ids_info.first_code_id
    window_mask = (ids >= lo) & (ids < lo + processor.config.codebook_size)
    connectome_mask = ids_info.is_connectome(ids) if processor.config.connectome_tokens else None
    if windows or connectome_mask is None:
        needed = window_mask
    else:  # per scan: its connectome tokens, or its window tokens when it has none
        has = connectome_mask.any(-1, keepdim=True)
        needed = torch.where(has, connectome_mask, window_mask)
    used = needed.any(0).nonzero()
    stop = int(used.max()) + 1 if len(used) else ids.shape[1]  # causal LM: later tokens change nothing here
    values = batch.get("connectome_values")
    ids, mask = ids[:, :stop], mask[:, :stop]
    values = None if values is None else values[:, :stop]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    llm = model.llm
    was_training = llm.training
    llm.eval()
    try:
        with torch.no_grad():
            embeds = model.embed_inputs(ids, values)
            out = llm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,
            )
    finally:
        llm.train(was_training)
    hidden = out.hidden_states[-1].float().cpu()
    window_mask = window_mask[:, :stop].cpu()
    connectome_mask = None if connectome_mask is None else connectome_mask[:, :stop].cpu()
    results = []
    for b in range(len(scans)):
        if windows:
            rows = hidden[b][window_mask[b]]
            if len(rows) % k:  # cannot happen with prompts built by the processor
                raise RuntimeError(f"{len(rows)} window tokens are not a multiple of K={k}")
            results.append(rows.view(-1, k, rows.shape[-1]).mean(1).numpy().astype(np.float32))
            continue
        where = connectome_mask[b] if connectome_mask is not None and connectome_mask[b].any() else None
        where = window_mask[b] if where is None else where
        results.append(hidden[b][where].mean(0).numpy().astype(np.float32))
    return results


def _as_scan(model: Any, scan: Any) -> Any:
    if isinstance(scan, (str, os.PathLike)):
        from fmrilm.chat import load_chat_scan

        return load_chat_scan(scan, model=model)
    if not hasattr(scan, "timeseries"):
        raise FmriInputError(
            f"Cannot embed {type(scan).__name__}: embeddings need a scan",
            fix="pass a fmrilm Scan (fmrilm.io.load_scan) or a scan file path",
        )
    return scan
