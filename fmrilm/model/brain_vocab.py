"""Brain tokens as LLM vocabulary: ``<brain_i>`` per codebook entry plus start/end markers.

The codes of one window become K consecutive special tokens, so a stock ``AutoModelForCausalLM`` reads
them as words, generates them (forecasting) and keeps every Hugging Face feature (KV cache, PEFT, export).
New rows start from a projection of the codebook fitted to the statistics of the LLM's own embedding
table, so brain tokens begin inside the text-embedding distribution with the codebook's geometry instead
of at random.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError


@dataclass(frozen=True)
class BrainVocab:
    """Names of the brain tokens for a codebook of ``codebook_size`` entries."""

    codebook_size: int
    prefix: str = "brain"
    connectome_size: int = 0

    @property
    def start_token(self) -> str:
        return f"<{self.prefix}_start>"

    @property
    def end_token(self) -> str:
        return f"<{self.prefix}_end>"

    def code_token(self, code: int) -> str:
        return f"<{self.prefix}_{int(code)}>"

    @property
    def code_tokens(self) -> list[str]:
        return [self.code_token(i) for i in range(self.codebook_size)]

    def connectome_token(self, code: int) -> str:
        return f"<{self.prefix}_fc_{int(code)}>"

    @property
    def connectome_tokens(self) -> list[str]:
        return [self.connectome_token(i) for i in range(self.connectome_size)]

    @property
    def all_tokens(self) -> list[str]:
        """Codes first (so code i has id ``first_code_id + i``), the two markers, then the connectome codes
        (after the markers, so a vocabulary without them keeps the same ids)."""
        return self.code_tokens + [self.start_token, self.end_token] + self.connectome_tokens

    def render(self, codes: Any, connectome: Any = None) -> str:
        """Text of one fMRI part: the start marker, the scan's connectome tokens (if any), every window's
        codes in order, the end marker."""
        arr = np.asarray(codes)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.size and (arr.min() < 0 or arr.max() >= self.codebook_size):
            raise FmriInputError(
                f"Brain codes must lie in [0, {self.codebook_size}), got {arr.min()}..{arr.max()}",
                fix="encode the scan with the fMRI tokenizer saved with this model",
            )
        head = ""
        if connectome is not None:
            fc = np.asarray(connectome).reshape(-1)
            if fc.size and (fc.min() < 0 or fc.max() >= self.connectome_size):
                raise FmriInputError(
                    f"Connectome codes must lie in [0, {self.connectome_size}), got {fc.min()}..{fc.max()}",
                    fix="encode the scan with the fMRI tokenizer saved with this model",
                )
            head = "".join(self.connectome_token(c) for c in fc.tolist())
        body = "".join(self.code_token(c) for c in arr.reshape(-1).tolist())
        return f"{self.start_token}{head}{body}{self.end_token}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BrainTokenIds:
    """Token ids of the brain vocabulary in one text tokenizer."""

    first_code_id: int
    codebook_size: int
    start_id: int
    end_id: int
    first_connectome_id: int = -1
    connectome_size: int = 0

    @property
    def code_ids(self) -> list[int]:
        return list(range(self.first_code_id, self.first_code_id + self.codebook_size))

    @property
    def connectome_ids(self) -> list[int]:
        return list(range(self.first_connectome_id, self.first_connectome_id + self.connectome_size))

    @property
    def all_ids(self) -> list[int]:
        return self.code_ids + [self.start_id, self.end_id] + self.connectome_ids

    def is_connectome(self, ids: Any) -> Any:
        """Mask of connectome-token positions in an id array or tensor."""
        lo = self.first_connectome_id
        return (ids >= lo) & (ids < lo + self.connectome_size)

    def codes_from_ids(self, ids: Any) -> np.ndarray:
        """Token ids of brain codes back to codes (markers and other ids are an error)."""
        arr = np.asarray(ids, dtype=np.int64) - self.first_code_id
        if arr.size and (arr.min() < 0 or arr.max() >= self.codebook_size):
            raise ValueError("Token ids outside the brain-code range cannot be turned into codes")
        return arr


def add_brain_tokens(tokenizer: Any, vocab: BrainVocab) -> BrainTokenIds:
    """Add the brain tokens to a text tokenizer as special tokens (never split, skipped when decoding).

    Tokens already present (a tokenizer saved by fmrilm) are reused; the code ids must be consecutive so that
    code -> id is one addition.
    """
    from tokenizers import AddedToken

    vocab_now = tokenizer.get_vocab()
    missing = [t for t in vocab.all_tokens if t not in vocab_now]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False, single_word=False) for t in missing],
            special_tokens=True,
        )
    return brain_token_ids(tokenizer, vocab)


def brain_token_ids(tokenizer: Any, vocab: BrainVocab) -> BrainTokenIds:
    """Ids of an already-added brain vocabulary; checks that the codes are consecutive."""
    ids = tokenizer.convert_tokens_to_ids(vocab.all_tokens)
    n = vocab.codebook_size
    code_ids, fc_ids = ids[:n], ids[n + 2 :]
    unk = getattr(tokenizer, "unk_token_id", None)
    consecutive = code_ids == list(range(code_ids[0], code_ids[0] + n)) and (
        not fc_ids or fc_ids == list(range(fc_ids[0], fc_ids[0] + len(fc_ids)))
    )
    if any(i is None or (unk is not None and i == unk) for i in ids) or not consecutive:
        raise FmriInputError(
            "The text tokenizer's brain tokens are missing or not consecutive",
            fix="rebuild the model with FmriLM.from_base so the brain vocabulary is added in one block",
        )
    first_fc = fc_ids[0] if fc_ids else -1
    return BrainTokenIds(code_ids[0], n, ids[n], ids[n + 1], first_fc, len(fc_ids))


# ----------------------------------------------------------------------------------------- embedding init
def fit_codebook_projection(
    codebook: np.ndarray, table: np.ndarray, *, max_rank: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit an affine map codebook space -> embedding space: a rotation onto the table's principal axes.

    The codebook's principal axes are sent, in order of variance, onto the embedding table's principal axes
    (an isometry: distances between codes are kept exactly up to one global scale), the result is shifted to
    the table mean and scaled so that rows lie as far from the mean as real embeddings do. Returns
    ``(weight (D, H), bias (H,), scale (1,))`` with ``rows = (codebook - mean_c) @ weight * scale + bias``:
    nearby codes get nearby embeddings, in the directions the LLM's own tokens vary most, at their scale.
    """
    codebook = np.asarray(codebook, dtype=np.float64)
    table = np.asarray(table, dtype=np.float64)
    mean_c, mean_t = codebook.mean(0), table.mean(0)
    cc, ct = codebook - mean_c, table - mean_t
    rank = min(cc.shape[1], ct.shape[1])
    if max_rank is not None:
        rank = min(rank, max_rank)
    _, _, vc = np.linalg.svd(cc, full_matrices=False)
    # The table can be large (50k x 576): the covariance eigendecomposition is cheaper than a full SVD.
    evals, evecs = np.linalg.eigh(ct.T @ ct)
    axes_t = evecs[:, np.argsort(evals)[::-1][:rank]]
    rank = min(rank, len(vc))
    weight = vc[:rank].T @ axes_t[:, :rank].T  # (D, H), orthonormal rows in the codebook's span
    got_norm = np.linalg.norm(cc @ weight, axis=1).mean()
    target_norm = np.linalg.norm(ct, axis=1).mean()
    scale = float(target_norm / got_norm) if got_norm > 0 else 1.0
    return weight.astype(np.float32), mean_t.astype(np.float32), np.full(1, scale, np.float32)


def initial_brain_rows(
    table: np.ndarray, codebook: np.ndarray | None, n_codes: int, *, seed: int = 0, n_extra: int = 0
) -> np.ndarray:
    """``(n_codes + 2 + n_extra, H)`` starting rows: the codes (projected codebook), the start and end markers,
    then ``n_extra`` more (the connectome codes, random: their meaning comes from the soft projection).

    Without a codebook, and for the markers, rows are random directions at the typical distance of real
    embeddings from their mean, so no new token starts far outside the table's distribution.
    """
    rng = np.random.default_rng(seed)
    table = np.asarray(table, dtype=np.float64)
    mean_t = table.mean(0)
    typical = np.linalg.norm(table - mean_t, axis=1).mean()

    def random_rows(n: int) -> np.ndarray:
        d = rng.standard_normal((n, table.shape[1]))
        return mean_t + d / np.linalg.norm(d, axis=1, keepdims=True) * typical

    if codebook is not None and float(np.var(np.asarray(codebook, dtype=np.float64), axis=0).sum()) < 1e-12:
        codebook = None  # an untrained (constant) codebook carries no geometry to keep
    if codebook is None:
        code_rows = random_rows(n_codes)
    else:
        codebook = np.asarray(codebook, dtype=np.float64)
        if len(codebook) != n_codes:
            raise ValueError(f"codebook has {len(codebook)} entries, expected {n_codes}")
        weight, bias, scale = fit_codebook_projection(codebook, table)
        code_rows = (codebook - codebook.mean(0)) @ weight * float(scale[0]) + bias
    return np.concatenate([code_rows, random_rows(2 + n_extra)]).astype(np.float32)


def resize_and_init(
    model: Any,
    ids: BrainTokenIds,
    new_vocab_size: int,
    codebook: np.ndarray | None = None,
    *,
    seed: int = 0,
) -> None:
    """Resize the LLM's embeddings to ``new_vocab_size`` and initialise the brain rows (input and output).

    With ``codebook`` None the code rows are random at the embedding statistics (used before a tokenizer
    exists, e.g. in tests). Tied output embeddings follow the input rows automatically.
    """
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if new_vocab_size != old:
        model.resize_token_embeddings(new_vocab_size, mean_resizing=False)
    code_ids = ids.code_ids
    base_rows = list(range(min(old, ids.first_code_id)))

    def init(weight: torch.Tensor, seed_offset: int) -> None:
        table = weight.detach()[base_rows].float().cpu().numpy()
        rows = initial_brain_rows(
            table, codebook, len(code_ids), seed=seed + seed_offset, n_extra=ids.connectome_size
        )
        with torch.no_grad():
            weight[ids.all_ids] = torch.as_tensor(rows, dtype=weight.dtype, device=weight.device)

    inp = model.get_input_embeddings().weight
    init(inp, 0)
    out_layer = model.get_output_embeddings()
    if out_layer is not None and out_layer.weight.data_ptr() != inp.data_ptr():
        init(out_layer.weight, 100)
        bias = getattr(out_layer, "bias", None)
        if bias is not None:
            with torch.no_grad():
                bias[ids.all_ids] = bias[base_rows].mean()
