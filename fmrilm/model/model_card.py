"""The model card (``README.md``) of a saved fMRI-LM, written with ``huggingface_hub.ModelCard``.

`FmriLM.save_pretrained` writes it into every model folder, so a folder pushed to the Hugging Face Hub
(``huggingface_hub.upload_folder`` or ``HfApi().upload_folder``) arrives with its card: YAML metadata
(``library_name: fmrilm``, ``base_model``, ``license``, ``tags``) and what a reader needs: how it was trained
(stages, cohorts, atlas, steps), how to load it, what it is for and what it must not be used for (it is not a
diagnostic device). peft's empty template card in ``adapters/`` is replaced by a short real one.

What the card knows comes from the processor config (base model, atlas, TR, brain vocabulary, stored tasks),
from training records stored in it (``config.extra["training"]``: a list of dicts, one per stage, added with
`record_training`), and from the run folder's ``train_config.json`` when the model is saved inside a training
output folder. ``fmrilm eval --update-card`` appends its results table (`add_evaluation`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

#: ``config.extra`` key of the training records (a list of dicts, one per stage).
TRAINING_KEY = "training"
CARD_NAME = "README.md"
DEFAULT_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: Licenses of base models fmrilm knows; the card's license is the base model's (the weights derive from it).
KNOWN_LICENSES = {DEFAULT_BASE_ID: "apache-2.0"}
TAGS = ["fmrilm", "fmri", "neuroscience", "brain-tokens", "resting-state", "connectomics", "peft", "lora"]
EVAL_HEADING = "## Evaluation results"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_STAGE_NAMES = {
    "tokenizer": "Stage 1: fMRI tokenizer",
    "align": "Stage 2: LLM alignment on the descriptor corpus",
    "instruct": "Stage 3: multi-task instruction tuning",
    "finetune": "Fine-tuning on a new cohort",
}


def record_training(model: Any, stage: str, info: dict[str, Any] | None = None) -> None:
    """Store one stage's record (``{"stage": ..., "cohorts": [...], "steps": ..., ...}``) in the model's processor
    config, where it is saved with the model, carried into later stages and listed on the card."""
    config = getattr(getattr(model, "processor", model), "config", model)
    records = list(config.extra.get(TRAINING_KEY) or [])
    record = {"stage": str(stage), **{k: _jsonable(v) for k, v in (info or {}).items()}}
    records = [r for r in records if r.get("stage") != record["stage"]] + [record]
    config.extra[TRAINING_KEY] = records


def hub_base_model(name: str | None) -> str | None:
    """The Hub id of a base model name (``smollm2`` -> SmolLM2-135M-Instruct); None for a local path or a class."""
    if not name:
        return None
    from fmrilm.model.base_model import DEFAULT_BASE_NAMES

    text = str(name)
    if text.lower() in DEFAULT_BASE_NAMES or text.lower().endswith("smollm2-135m-instruct.gguf"):
        return DEFAULT_BASE_ID
    if _HUB_ID.match(text) and not Path(text).expanduser().exists():
        return text
    return None


def training_records(config: Any, directory: Path | None = None) -> list[dict[str, Any]]:
    """Stored stage records, plus the run's ``train_config.json`` beside the folder when it is not recorded yet."""
    records = [dict(r) for r in (config.extra.get(TRAINING_KEY) or []) if isinstance(r, dict)]
    if directory is None:
        return records
    run_config = Path(directory).parent / "train_config.json"
    if run_config.is_file():
        try:
            data = json.loads(run_config.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            stage = _stage_of(data)
            if stage and not any(r.get("stage") == stage for r in records):
                records.append({"stage": stage, **_run_summary(data)})
    return records


def _stage_of(data: dict[str, Any]) -> str | None:
    if "instructions" in data:
        return "instruct"
    if "tokenizer" in data and "corpus" in data:
        return "align"
    if "task" in data and "shots" in data:
        return "finetune"
    return None


def _run_summary(data: dict[str, Any]) -> dict[str, Any]:
    keep = ("cohorts", "corpus", "instructions", "steps", "batch_size", "lr", "seed", "lora", "task", "shots")
    out = {k: data[k] for k in keep if data.get(k) not in (None, [], {})}
    for key in ("cohorts", "corpus", "instructions"):
        if key in out:
            out[key] = [Path(str(p)).name or str(p) for p in out[key]]
    return out


def card_data(config: Any):
    """``ModelCardData``: library, base model (when it is a Hub id), license, tags, pipeline tag."""
    from huggingface_hub import ModelCardData

    base_id = hub_base_model(config.base_model)
    license_id = config.extra.get("license") or KNOWN_LICENSES.get(base_id or "", "other")
    data = ModelCardData(
        library_name="fmrilm",
        license=license_id,
        tags=list(TAGS),
        pipeline_tag="text-generation",
        language=["en"],
    )
    if base_id:
        data.base_model = base_id
    if license_id == "other":
        data.license_name = "same-as-base-model"
    return data


def build_model_card(config: Any, *, directory: str | os.PathLike | None = None, has_adapters: bool = False):
    """The card (``huggingface_hub.ModelCard``) of a model with this processor config."""
    from huggingface_hub import ModelCard

    data = card_data(config)
    body = _body(config, Path(directory) if directory else None, has_adapters)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_model_card(model: Any, directory: str | os.PathLike) -> Path:
    """Write ``README.md`` (and a real card in ``adapters/`` in place of peft's template); returns its path."""
    directory = Path(directory)
    config = model.processor.config
    adapters = directory / config.adapters_subfolder
    has_adapters = (adapters / "adapter_config.json").exists()
    card = build_model_card(config, directory=directory, has_adapters=has_adapters)
    path = directory / CARD_NAME
    _write_text(path, str(card))
    if adapters.is_dir():
        _write_text(adapters / CARD_NAME, _adapter_card(config))
    return path


def add_evaluation(model_dir: str | os.PathLike, title: str, table: str, note: str = "") -> Path:
    """Append (or replace, by ``title``) one results table under "Evaluation results" of the model's card."""
    from huggingface_hub import ModelCard

    from fmrilm.model.processing import FmriProcessorConfig

    model_dir = Path(model_dir)
    path = model_dir / CARD_NAME
    if path.exists():
        text = ModelCard.load(path).content
    else:  # a folder saved before cards existed: build its card first
        config = FmriProcessorConfig.load(model_dir)
        adapters = (model_dir / config.adapters_subfolder / "adapter_config.json").exists()
        text = str(build_model_card(config, directory=None, has_adapters=adapters))
    section = f"### {title}\n\n{note.strip() + chr(10) + chr(10) if note.strip() else ''}{table.strip()}\n"
    head, sep, tail = text.partition(EVAL_HEADING)
    if not sep:
        text = text.rstrip() + f"\n\n{EVAL_HEADING}\n\n{section}"
    else:
        blocks = re.split(r"(?m)^(?=### )", tail)
        intro, parts = blocks[0], [b for b in blocks[1:] if not b.startswith(f"### {title}\n")]
        intro = re.sub(r"(?s)Not evaluated yet.*?\n\n", "", intro)
        rest = ""
        if parts and re.search(r"(?m)^## ", parts[-1]):  # a later top-level section stays after the results
            last = parts[-1]
            cut = re.search(r"(?m)^## ", last).start()
            parts[-1], rest = last[:cut], last[cut:]
        text = head + sep + intro.rstrip() + "\n\n" + "".join(p.rstrip() + "\n\n" for p in parts) + section
        text += ("\n" + rest) if rest else ""
    ModelCard(text)  # still a valid card
    _write_text(path, text)
    return path


# ----------------------------------------------------------------------------------------------- the text
def _body(config: Any, directory: Path | None, has_adapters: bool) -> str:
    base = config.base_model or "an unrecorded base model"
    base_id = hub_base_model(config.base_model)
    base_text = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{base}`"
    atlas = config.atlas or {}
    atlas_name = atlas.get("name", "none stored")
    n_regions = len(atlas.get("labels") or []) or "?"
    tasks = sorted((config.extra.get("tasks") or {}).keys())
    lines = [
        "# fMRI-LM (fmrilm)",
        "",
        f"A causal language model that reads and writes resting-state fMRI, built with "
        f"fmrilm on {base_text}. A VQ fMRI tokenizer turns a parcellated scan into "
        "discrete brain tokens that are part of the LLM's vocabulary; the LLM answers questions about the scan in "
        "text, scores the answer options of known tasks, and can forecast the next windows of signal.",
        "",
        "## Model details",
        "",
        f"- **Base model:** {base_text}",
        f"- **Brain vocabulary:** {config.codebook_size} window codes ({config.num_latents} per window of "
        f"{config.window_length} samples at TR {config.target_tr} s)"
        + (
            f", {config.connectome_tokens} connectome tokens per scan ({config.connectome_codebook_size} codes)"
            if config.connectome_tokens
            else ""
        ),
        f"- **Soft brain tokens:** {'yes' if config.uses_soft_tokens else 'no'} (continuous values projected "
        "into the embeddings of connectome-token positions)",
        f"- **Atlas:** {atlas_name} ({n_regions} regions; any atlas is read by its regions' MNI coordinates)",
        f"- **Adapters:** {'LoRA adapters in `adapters/` (peft)' if has_adapters else 'none (merged or full)'}",
        f"- **Tasks with scored answers:** {', '.join(tasks) if tasks else 'none stored'}",
        "",
        "## Training",
        "",
    ]
    records = training_records(config, directory)
    if records:
        lines += ["| stage | cohorts | steps | details |", "| --- | --- | --- | --- |"]
        for r in records:
            stage = _STAGE_NAMES.get(str(r.get("stage")), str(r.get("stage")))
            cohorts = ", ".join(map(str, r.get("cohorts") or [])) or "-"
            steps = r.get("steps", "-")
            details = "; ".join(
                f"{k}: {_short(v)}" for k, v in r.items() if k not in ("stage", "cohorts", "steps")
            )
            lines.append(f"| {stage} | {cohorts} | {steps} | {details or '-'} |")
    else:
        lines.append(
            "No training record was stored with this model (records are kept in "
            '`fmri_processor_config.json`, `extra["training"]`).'
        )
    lines += [
        "",
        "fmrilm trains in three stages (fMRI-LM, Wei et al., 2025): Stage 1 fits the fMRI tokenizer aligned to "
        "the LLM's text space; Stage 2 aligns the LLM with LoRA on a corpus of fMRI descriptors (functional "
        "connectivity, graph metrics, gradients) rendered as text; Stage 3 tunes it on multi-task instructions. "
        "Reference statistics of the training population are stored in the processor config.",
        "",
        "## How to load",
        "",
        "```python",
        "import fmrilm",
        "",
        'model = fmrilm.FmriLM.from_pretrained("PATH_OR_HUB_ID")',
        'scan = fmrilm.load_scan("sub-01_timeseries.tsv", tr=2.0)  # the model\'s atlas, or atlas=...',
        'answer, history = model.chat(scan, "Which networks are most strongly coupled?")',
        'model.predict(scan, "diagnosis")  # answer probabilities, when the task is stored',
        "```",
        "",
        "```bash",
        "fmrilm chat --model PATH_OR_HUB_ID --scan sub-01_timeseries.tsv --tr 2.0",
        "```",
        "",
        "The LLM part also loads with plain transformers (`AutoModelForCausalLM` and `AutoTokenizer` on "
        "the folder), its adapters with peft (`PeftModel` on `adapters/`); "
        "the fMRI tokenizer sits in `fmri_tokenizer/`. Weights are safetensors; nothing is unpickled.",
        "",
        "## Intended use and limits",
        "",
        "- **Research use** on resting-state fMRI: exploring what a language model can read from a scan, "
        "describing connectivity, comparing scans, and benchmarking against connectivity baselines.",
        "- **Not a diagnostic device.** It is not a medical device, has not been clinically validated, and must "
        "not be used to diagnose, screen, or make any decision about a person's health or care.",
        "- Answers can be wrong while sounding fluent; task answers are probabilities from a small model trained "
        "on limited (and possibly simulated) cohorts, and are only as good as the evaluation below shows.",
        "- Results depend on the acquisition site, preprocessing, atlas and scan length; cohorts unlike the "
        "training cohorts (age range, scanners, populations) can give unreliable answers.",
        "- Training data may carry biases of the source cohorts (e.g. sex and site imbalance in ABIDE).",
        "",
        EVAL_HEADING,
        "",
        "Not evaluated yet: run `fmrilm eval --model PATH --cohort DIR --task NAME --out DIR --update-card` to "
        "add a results table here.",
        "",
    ]
    return "\n".join(lines)


def _adapter_card(config: Any) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="peft", tags=["fmrilm", "lora", "fmri"])
    base_id = hub_base_model(config.base_model)
    if base_id:
        data.base_model = base_id
    body = (
        "# LoRA adapters of an fMRI-LM\n\n"
        "These are the LoRA adapters (and trained brain-token rows) of the fmrilm model in the parent folder; "
        "its `README.md` is the model card. Load the whole model with "
        '`fmrilm.FmriLM.from_pretrained("PARENT_FOLDER")`, or these adapters with '
        '`peft.PeftModel.from_pretrained(llm, "PARENT_FOLDER/adapters")` on the LLM loaded from the parent '
        "folder. Not a diagnostic device: see the parent card's intended use and limits.\n"
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload fmrilm model",
    api: Any = None,
) -> str:
    """Upload a saved model folder (card included) to the Hugging Face Hub; returns the repository URL.

    The folder must hold a model written by `FmriLM.save_pretrained` (its card is written then, or here when
    missing). The repository is created (private by default) when it does not exist. ``api`` is a
    ``huggingface_hub.HfApi`` (tests pass a stand-in; nothing else reaches the network).
    """
    from fmrilm.errors import FmriInputError
    from fmrilm.model.processing import PROCESSOR_CONFIG_NAME

    folder = Path(folder)
    if not (folder / PROCESSOR_CONFIG_NAME).exists():
        raise FmriInputError(
            "Not a saved fmrilm model folder (no fmri_processor_config.json)",
            file=folder,
            fix="save the model with FmriLM.save_pretrained first, or give its folder",
        )
    if not (folder / CARD_NAME).exists():
        from fmrilm.model.processing import FmriProcessorConfig

        config = FmriProcessorConfig.load(folder)
        adapters = (folder / config.adapters_subfolder / "adapter_config.json").exists()
        _write_text(folder / CARD_NAME, str(build_model_card(config, has_adapters=adapters)))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=[".*", "**/.*"],
    )
    return str(url)
