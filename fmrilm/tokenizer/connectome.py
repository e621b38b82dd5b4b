"""Connectome tokens: a whole scan's functional connectivity as M tokens the LLM reads.

Window tokens carry dynamics but lose the trait signal that connectivity models use (a linear probe on them
is at chance for autism and sex on unseen ABIDE sites). Connectome tokens carry it: the scan's covariance is
mapped to the tangent space at the reference population's geometric mean (nilearn ``ConnectivityMeasure(
kind="tangent")``, the best pipeline of Dadi et al. 2019), its features z-scored over the reference population
and reduced by a PCA fitted on it (``ConnectomeConfig.standardize``, ``whiten``), cut into ``num_tokens`` groups
of ``components / num_tokens`` numbers, and each group quantized by a residual vector quantizer
(vector-quantize-pytorch ``ResidualVQ``, one codebook shared by all groups: the LLM tells groups apart by their
position after ``<brain_start>``).

Atlas-agnostic: a scan's regions are resampled onto the reference coordinates by a Gaussian kernel on MNI
distance (regions are read by position, never by index), so any atlas maps into one space and region order
changes nothing. Bad (all-zero) regions are left out of the kernel, so neighbours fill them in.

The continuous group vectors (``values``) are what "soft brain tokens" add to each token's embedding; the
codes name the tokens, so the LLM also works, with less, on codes alone.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmrilm.errors import FmriInputError

CONFIG_NAME = "connectome_config.json"
WEIGHTS_NAME = "connectome.safetensors"
SUBFOLDER = "connectome"


@dataclass
class ConnectomeConfig:
    """Sizes of the connectome tokenizer; ``components`` must be a multiple of ``num_tokens``."""

    num_tokens: int = 32
    #: The most components: a fit keeps as many as its training scans support, up to this (a PCA keeps at most
    #: one fewer component than scans, lowered to a multiple of ``num_tokens``). More read better: 384 rather
    #: than 256 read sex better on the development folds (BENCHMARKS.md, "Connectome components: how many"),
    #: and every supported component (512-576 there) better again than 384 (the warm-start probe's sex AUC 0.800
    #: against 0.782, autism 0.716 against 0.720; "Standardized tangent features, every component").
    components: int = 1024
    codebook_size: int = 256
    num_levels: int = 4
    kernel_sigma_mm: float = 4.0
    quantizer_steps: int = 200
    seed: int = 0
    #: Divide each PCA component by its own standard deviation; off (the default), all are divided by one
    #: number, the RMS of their standard deviations, so they keep their relative variance. Whitening helped a
    #: learner trained from random (BENCHMARKS.md, "Connectome components: whitened or not, how many"); since
    #: Stage 3 plants an L2 probe instead, the probe's reading decides, and it reads autism and sex better from
    #: components that keep their variance (AUC 0.716 / 0.800 against 0.704 / 0.789 whitened; BENCHMARKS.md,
    #: "Standardized tangent features, every component").
    whiten: bool = False
    #: z-score each tangent-FC feature over the reference population before the PCA, as the tangent-FC
    #: baseline standardizes its features: the components then span what that baseline's probe reads.
    standardize: bool = True

    def __post_init__(self) -> None:
        for name in ("num_tokens", "components", "codebook_size", "num_levels", "quantizer_steps"):
            if int(getattr(self, name)) < 1:
                raise FmriInputError(
                    f"Connectome {name} must be at least 1, got {getattr(self, name)}",
                    fix=f"give a positive {name}",
                )
        if self.components % self.num_tokens:
            raise FmriInputError(
                f"Connectome components ({self.components}) must be a multiple of num_tokens ({self.num_tokens})",
                fix="choose e.g. components=384 with num_tokens=32",
            )
        if not self.kernel_sigma_mm > 0:
            raise FmriInputError(
                f"kernel_sigma_mm must be positive, got {self.kernel_sigma_mm}", fix="give e.g. 4.0"
            )

    def components_supported(self, n_scans: int) -> int:
        """The most components ``n_scans`` training scans support as tokens: a PCA keeps at most one fewer
        component than scans, and the count must be a multiple of ``num_tokens`` (0: too few scans)."""
        return (int(n_scans) - 1) // self.num_tokens * self.num_tokens

    @property
    def group_dim(self) -> int:
        return self.components // self.num_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectomeConfig:
        # tokenizers saved before the fields existed whitened raw tangent features: they stay so whatever the
        # defaults become
        data = {"whiten": True, "standardize": False, **data}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class ConnectomeTokens:
    """One scan's connectome tokens: ``codes`` (M, levels) int64 and continuous ``values`` (M, group_dim)."""

    codes: np.ndarray
    values: np.ndarray

    @property
    def token_codes(self) -> np.ndarray:
        """The code each token shows to the LLM: the first residual level (M,)."""
        return self.codes[:, 0]


def resampling_weights(source: np.ndarray, target: np.ndarray, sigma_mm: float, usable=None) -> np.ndarray:
    """``(len(target), len(source))`` row-normalised Gaussian weights on MNI distance.

    Identical coordinates give (nearly) the identity for atlases whose regions are farther apart than a few
    sigma; ``usable`` (bool per source region) leaves bad regions out, so their neighbours fill them in.
    """
    src = np.asarray(source, dtype=np.float64)
    if usable is not None:
        usable = np.asarray(usable, dtype=bool)
    d2 = ((np.asarray(target, dtype=np.float64)[:, None, :] - src[None]) ** 2).sum(-1)
    if usable is not None:
        d2[:, ~usable] = np.inf
    logits = -(d2 - d2.min(axis=1, keepdims=True)) / (2.0 * sigma_mm**2)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


class ConnectomeTokenizer(nn.Module):
    """Fitted (not gradient-trained) scan -> connectome tokens map; see the module docstring."""

    def __init__(self, config: ConnectomeConfig, reference_coords: np.ndarray, n_features: int | None = None):
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ

        from fmrilm.tokenizer.modeling import dead_code_kwargs

        self.config = config
        r = len(reference_coords)
        f = n_features if n_features is not None else r * (r - 1) // 2
        self.register_buffer("reference_coords", torch.as_tensor(np.asarray(reference_coords, np.float32)))
        self.register_buffer("whitening", torch.zeros(r, r, dtype=torch.float64))
        self.register_buffer("pca_mean", torch.zeros(f, dtype=torch.float64))
        self.register_buffer("feature_scale", torch.ones(f, dtype=torch.float64))
        self.register_buffer("pca_components", torch.zeros(config.components, f, dtype=torch.float32))
        self.register_buffer("pca_scale", torch.ones(config.components, dtype=torch.float64))
        self.quantizer = ResidualVQ(
            dim=config.group_dim,
            num_quantizers=config.num_levels,
            codebook_size=config.codebook_size,
            kmeans_init=True,
            kmeans_iters=20,
            decay=0.9,
            **dead_code_kwargs(1.0, config.codebook_size),
        )

    # ------------------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        scans: Sequence[Any],
        config: ConnectomeConfig | None = None,
        *,
        reference_coords: np.ndarray | None = None,
        progress: bool = False,
    ) -> ConnectomeTokenizer:
        """Fit the reference mean, the PCA and the quantizer on a population of scans (training subjects only).

        ``reference_coords`` default to the first scan's atlas coordinates.
        """
        return cls.fit_transform(scans, config, reference_coords=reference_coords, progress=progress)[0]

    @classmethod
    def fit_transform(
        cls,
        scans: Sequence[Any],
        config: ConnectomeConfig | None = None,
        *,
        reference_coords: np.ndarray | None = None,
        progress: bool = False,
    ) -> tuple[ConnectomeTokenizer, np.ndarray]:
        """`fit`, and the fitted scans' components ``(N, components)`` (what `continuous` gives them) without
        computing their connectomes a second time."""
        from sklearn.decomposition import PCA

        from fmrilm import tangent

        config = config or ConnectomeConfig()
        scans = list(scans)
        if len(scans) < 3:
            raise FmriInputError(
                f"Fitting connectome tokens needs at least 3 scans, got {len(scans)}",
                fix="fit on a training cohort",
            )
        if reference_coords is None:
            reference_coords = _coords_of(scans[0])
        reference_coords = np.asarray(reference_coords, dtype=np.float64)
        room = config.components_supported(len(scans))
        if room < config.num_tokens:
            raise FmriInputError(
                f"{config.num_tokens} connectome tokens need more than {config.num_tokens} training scans, got "
                f"{len(scans)}",
                fix="fit on more scans or lower num_tokens",
            )
        if room < config.components:  # `components` is the most: a PCA keeps one fewer than its scans
            config = replace(config, components=room)
        tok = cls(config, reference_coords)
        workers = torch.get_num_threads()
        with one_blas_thread():
            series = [tok.reference_timeseries(s) for s in _progress(scans, progress, "connectome: signals")]
            # nilearn's tangent reference (ConnectivityMeasure(kind="tangent")), its per-scan work on threads
            covs = tangent.covariances(series, workers)
            white = tangent.whitening(tangent.geometric_mean(covs, workers))
            tok.whitening.copy_(torch.as_tensor(white, dtype=torch.float64))
            vectors = tangent.tangent_vectors(covs, white, workers)
            del covs
            mean = vectors.mean(axis=0)
            if config.standardize:
                sd = vectors.std(axis=0)
                tok.feature_scale.copy_(torch.as_tensor(np.where(sd > 1e-8, sd, 1.0)))
            pca = PCA(n_components=config.components, random_state=config.seed)
            pca.fit((vectors - mean) / tok.feature_scale.numpy())
        tok.pca_mean.copy_(torch.as_tensor(mean))
        tok.pca_components.copy_(torch.as_tensor(pca.components_, dtype=torch.float32))
        tok.pca_scale.copy_(torch.as_tensor(np.sqrt(np.maximum(pca.explained_variance_, 1e-12))))
        components = tok.components_of(vectors)
        tok.fit_quantizer(components)
        return tok, components.astype(np.float32)

    def fit_quantizer(self, z: np.ndarray) -> None:
        """EMA k-means training of the residual quantizer on the components ``(N, components)``."""
        cfg = self.config
        groups = torch.as_tensor(z, dtype=torch.float32).view(len(z), cfg.num_tokens, cfg.group_dim)
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # k-means init samples with the global generator
        self.quantizer.train()
        batch = min(len(groups), 256)
        for _ in range(cfg.quantizer_steps):
            idx = torch.randperm(len(groups), generator=gen)[:batch]
            self.quantizer(groups[idx])
        self.quantizer.eval()

    # -------------------------------------------------------------------------------------- transforming
    def reference_timeseries(self, scan: Any) -> np.ndarray:
        """The scan cleaned (bad regions zeroed, detrended, z-scored) and resampled onto the reference regions."""
        from fmrilm.signal import BadRegionWarning, SignalConfig, preprocess

        coords = _coords_of(scan)
        if scan.timeseries.shape[1] != len(coords):
            raise FmriInputError(
                f"The scan has {scan.timeseries.shape[1]} regions but its atlas has {len(coords)}",
                subject=scan.subject_id,
                file=scan.source,
                fix="load the scan with the atlas it was parcellated with",
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadRegionWarning)
            clean = preprocess(scan, SignalConfig(target_tr=None, detrend=True, standardize=True))
        ts = clean.timeseries.astype(np.float64)
        usable = ts.any(axis=0)
        w = resampling_weights(coords, self.reference_coords.numpy(), self.config.kernel_sigma_mm, usable)
        out = ts @ w.T
        sd = out.std(axis=0)
        return (out - out.mean(axis=0)) / np.where(sd > 1e-8, sd, 1.0)

    def tangent_vector(self, reference_series: np.ndarray) -> np.ndarray:
        """Upper triangle of log(W C W), C the Ledoit-Wolf covariance, W the reference whitening (nilearn's
        tangent transform, for one scan: nilearn's own transform refuses a single subject)."""
        from nilearn.connectome import sym_matrix_to_vec
        from sklearn.covariance import LedoitWolf

        cov = LedoitWolf(store_precision=False).fit(reference_series).covariance_
        w = self.whitening.numpy()
        vals, vecs = np.linalg.eigh(w @ cov @ w)
        logm = (vecs * np.log(np.maximum(vals, 1e-12))) @ vecs.T
        return sym_matrix_to_vec(logm, discard_diagonal=True)

    def components_of(self, vectors: np.ndarray) -> np.ndarray:
        """Tangent vectors ``(N, F)`` -> PCA components ``(N, components)``, unit variance on average over the
        components (each one, when ``config.whiten``)."""
        centred = (np.asarray(vectors, dtype=np.float64) - self.pca_mean.numpy()) / self.feature_scale.numpy()
        return (centred @ self._components_f64().T) / self.component_divisor()

    def _components_f64(self) -> np.ndarray:
        """The PCA axes in float64, converted once per value of the buffer (components x 19,900 numbers: the
        conversion per scan took 20 ms, a seventh of encoding a scan)."""
        buffer = self.pca_components
        key = (buffer.data_ptr(), buffer._version)
        cached = getattr(self, "_f64_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, buffer.numpy().astype(np.float64))
            self._f64_cache = cached
        return cached[1]

    def component_divisor(self) -> np.ndarray | float:
        """What the PCA scores are divided by: each component's SD (whitened) or their RMS (the default)."""
        scale = self.pca_scale.numpy()
        return scale if self.config.whiten else float(np.sqrt(np.mean(scale**2)))

    def continuous(self, scans: Sequence[Any] | Any, *, workers: int | None = None) -> np.ndarray:
        """Components ``(N, components)`` of scans: what the quantizer quantizes and soft tokens read.

        Several scans run on ``workers`` threads (default: torch's thread count), one BLAS thread each."""
        from concurrent.futures import ThreadPoolExecutor

        from fmrilm.signal import BadRegionWarning

        scans = [scans] if hasattr(scans, "timeseries") else list(scans)
        workers = min(len(scans), max(1, int(workers or torch.get_num_threads())))

        def vector(scan: Any) -> np.ndarray:
            return self.tangent_vector(self.reference_timeseries(scan))

        # the projection too: OpenBLAS threads left spinning after it slowed torch's next operations 3-4x. The
        # filter is set here for every thread: warnings.catch_warnings is not thread-safe, and each thread's
        # own (in reference_timeseries) restores a state that already holds this one
        with warnings.catch_warnings(), one_blas_thread():
            warnings.simplefilter("ignore", BadRegionWarning)
            if workers > 1:
                with ThreadPoolExecutor(workers) as pool:
                    vectors = list(pool.map(vector, scans))
            else:
                vectors = [vector(s) for s in scans]
            return self.components_of(np.stack(vectors)).astype(np.float32)

    @torch.no_grad()
    def quantize(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, components)`` -> codes ``(N, M, levels)`` and the dequantized components ``(N, components)``."""
        cfg = self.config
        groups = torch.as_tensor(np.asarray(z), dtype=torch.float32).view(-1, cfg.num_tokens, cfg.group_dim)
        self.quantizer.eval()
        quantized, codes, _ = self.quantizer(groups)
        return codes.long().numpy(), quantized.reshape(len(groups), -1).numpy()

    def encode(self, scan: Any) -> ConnectomeTokens:
        """One scan -> its M connectome tokens (codes and continuous values)."""
        z = self.continuous(scan)
        codes, _ = self.quantize(z)
        return ConnectomeTokens(codes=codes[0], values=z[0].reshape(self.config.num_tokens, -1))

    def encode_many(
        self, scans: Iterable[Any], *, workers: int | None = None, chunk: int = 64
    ) -> Iterator[ConnectomeTokens]:
        """`encode` of many scans, in order, with the same numbers: `continuous` and one quantizer call a chunk
        of scans; the one-BLAS-thread limit is lifted between chunks, so the caller's torch keeps its threads.

        Why: scan by scan, entering that limit and a quantizer call cost more than the connectome itself (18.7
        against 6.9 ms a scan; `eval/bench_encode.py`).
        """
        iterator = iter(scans)
        while batch := list(itertools.islice(iterator, max(1, int(chunk)))):
            z = self.continuous(batch, workers=workers)
            codes, _ = self.quantize(z)
            for c, v in zip(codes, z, strict=True):
                yield ConnectomeTokens(codes=c, values=v.reshape(self.config.num_tokens, -1))

    # -------------------------------------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {**self.config.to_dict(), "n_features": int(self.pca_mean.shape[0])}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=1))
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ConnectomeTokenizer:
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / CONFIG_NAME).read_text())
            state = load_file(str(directory / WEIGHTS_NAME))
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise FmriInputError(
                f"The connectome tokenizer could not be read ({exc})",
                file=directory,
                fix="re-save the tokenizer with fmrilm train tokenizer",
            ) from exc
        config = ConnectomeConfig.from_dict(meta)
        tok = cls(config, state["reference_coords"].numpy(), n_features=int(meta["n_features"]))
        if "feature_scale" not in state and not config.standardize:  # saved before standardizing existed
            state["feature_scale"] = tok.feature_scale.clone()
        try:
            tok.load_state_dict(state)
        except RuntimeError as exc:  # a missing or misshapen tensor: the files do not belong together
            raise FmriInputError(
                f"The connectome tokenizer's weights do not match its config ({str(exc).splitlines()[0]})",
                file=directory,
                fix="re-save the tokenizer with fmrilm train tokenizer",
            ) from exc
        tok.quantizer.eval()
        return tok

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        return (Path(directory) / CONFIG_NAME).exists()


def one_blas_thread():
    """Small (regions x regions) eigendecompositions run several times faster on one BLAS thread than on two
    (measured: 0.04 s vs 0.28 s for 200 x 200 on a 2-core machine), and never oversubscribe a busy one."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _coords_of(scan: Any) -> np.ndarray:
    atlas = getattr(scan, "atlas", None)
    if atlas is None:
        raise FmriInputError(
            "Connectome tokens need the scan's region coordinates, and the scan has no atlas",
            subject=getattr(scan, "subject_id", None),
            fix="load the scan with an atlas (load_scan(..., atlas=...))",
        )
    return np.asarray(atlas.coords, dtype=np.float64)


def _progress(items: Sequence[Any], show: bool, desc: str):
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="scan")
