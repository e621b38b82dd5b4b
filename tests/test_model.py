"""FmriLM on tiny random Llama, Qwen3 and GPT-2: one-folder layout, plain-transformers loading, adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fmrilm.errors import FmriInputError
from fmrilm.model.adapters import LoraSettings
from fmrilm.model.brain_vocab import fit_codebook_projection
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer

ARCHS = ["llama", "qwen3", "gpt2"]
K, CODEBOOK = 4, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def build(arch: str, fmri_tokenizer=None, **kwargs) -> FmriLM:
    llm, tok = tiny_causal_lm(arch)
    return FmriLM.from_base(
        llm, tokenizer=tok, fmri_tokenizer=fmri_tokenizer, codebook_size=CODEBOOK, num_latents=K, **kwargs
    ).eval()


def batch_for(model: FmriLM):
    rng = np.random.default_rng(0)
    convs = [
        [{"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": "Describe this scan."}]}],
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Compare"}, {"type": "fmri"}, {"type": "fmri"}],
            }
        ],
    ]
    scans = [
        [rng.integers(0, CODEBOOK, (2, K))],
        [rng.integers(0, CODEBOOK, (1, K)), rng.integers(0, CODEBOOK, (3, K))],
    ]
    return model.processor(convs, scans)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def perturb_adapters(model: FmriLM, seed: int = 0) -> None:
    """Make the (zero-initialised) adapters do something, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.llm.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("arch", [*ARCHS, "qwen2"])
def test_saved_folder_loads_with_plain_transformers(arch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = build(arch)
    batch = batch_for(model)
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert "model.safetensors" in files and "fmri_processor_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(model, batch), logits(plain, batch), rtol=0, atol=0)
    text_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    prompt = model.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "fmri"}]}], [np.arange(K)[None] % CODEBOOK]
    )
    assert text_tok(prompt, add_special_tokens=False)["input_ids"] == model.processor._encode_text(prompt)
    assert text_tok.convert_tokens_to_ids("<brain_0>") == model.processor.ids.first_code_id

    again = FmriLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(logits(model, batch), logits(again, batch), rtol=0, atol=0)
    assert again.processor.config.to_dict() == model.processor.config.to_dict()


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_save_load_and_merge_give_the_same_outputs(arch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = build(arch)
    batch = batch_for(model)
    before = logits(model, batch)
    model.add_adapters(LoraSettings(r=4, dropout=0.0))
    perturb_adapters(model)
    expected = logits(model, batch)
    assert not torch.allclose(before, expected), "adapters must change the outputs"

    model.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "adapters" / "adapter_model.safetensors").exists()
    torch.testing.assert_close(logits(FmriLM.from_pretrained(tmp_path / "a"), batch), expected)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "a").eval()
    torch.testing.assert_close(logits(base, batch), before, rtol=0, atol=0)  # top level = the base LLM
    peft_model = PeftModel.from_pretrained(base, tmp_path / "a" / "adapters").eval()
    torch.testing.assert_close(logits(peft_model, batch), expected)

    model.save_pretrained(tmp_path / "merged", merge_adapters=True)
    assert model.has_adapters, "saving merged must not strip the live model's adapters"
    assert not (tmp_path / "merged" / "adapters").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, batch), expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(logits(model.merge_adapters(), batch), expected, rtol=1e-3, atol=1e-3)
    assert not model.has_adapters


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # tied and untied output layer
def test_training_moves_only_lora_and_brain_token_rows(arch):
    model = build(arch)
    ids = model.processor.ids
    emb_before = model.llm.get_input_embeddings().weight.detach().clone()
    out_before = model.llm.get_output_embeddings().weight.detach().clone()
    model.add_adapters(LoraSettings(r=4, dropout=0.0))
    trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)

    example = model.processor.training_example(
        [
            {"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": "Next?"}]},
            {"role": "assistant", "content": [{"type": "fmri", "codes": np.arange(K)[None]}]},
        ],
        [np.arange(K)[None] + 2],
    )
    batch = model.processor.pad([example])
    optimizer = torch.optim.AdamW([p for p in model.llm.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.merge_adapters()
    brain = ids.all_ids
    text_rows = [i for i in range(emb_before.shape[0]) if i not in set(brain)]
    emb_after = model.llm.get_input_embeddings().weight.detach()
    out_after = model.llm.get_output_embeddings().weight.detach()
    torch.testing.assert_close(emb_after[text_rows], emb_before[text_rows], rtol=0, atol=0)
    torch.testing.assert_close(out_after[text_rows], out_before[text_rows], rtol=0, atol=0)
    assert not torch.allclose(emb_after[brain], emb_before[brain])
    assert not torch.allclose(out_after[brain], out_before[brain]), (
        "brain tokens must be learnable as outputs"
    )


def test_brain_embeddings_start_from_the_codebook_inside_the_text_distribution():
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    model = build("llama", fmri_tokenizer=fmri_tok)
    ids = model.processor.ids
    emb = model.llm.get_input_embeddings().weight.detach().double()
    text = emb[: ids.first_code_id]
    brain = emb[ids.code_ids]
    spread_text = (text - text.mean(0)).norm(dim=1).mean()
    spread_brain = (brain - text.mean(0)).norm(dim=1).mean()
    assert 0.8 < float(spread_brain / spread_text) < 1.25
    codebook = fmri_tok.codebook_vectors().double()
    # nearby codes get nearby embeddings: pairwise distances are strongly correlated
    d_code = torch.cdist(codebook, codebook)[np.triu_indices(CODEBOOK, 1)]
    d_emb = torch.cdist(brain, brain)[np.triu_indices(CODEBOOK, 1)]
    assert np.corrcoef(d_code.numpy(), d_emb.numpy())[0, 1] > 0.8


def test_codebook_projection_preserves_geometry_up_to_the_embedding_rank():
    rng = np.random.default_rng(0)
    codebook = rng.standard_normal((64, 8)) * np.array([5, 4, 3, 2, 1, 1, 1, 1])
    table = rng.standard_normal((500, 32)) * 0.02 + 0.1
    weight, bias, scale = fit_codebook_projection(codebook, table)
    rows = (codebook - codebook.mean(0)) @ weight * scale[0] + bias
    np.testing.assert_allclose(rows.mean(0), table.mean(0), atol=1e-6)
    d_code = np.linalg.norm(codebook[:, None] - codebook[None], axis=-1)
    d_rows = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
    assert np.corrcoef(d_code.ravel(), d_rows.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_describe_and_forecast_run_end_to_end(arch, tmp_path):
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    model = build(arch, fmri_tokenizer=fmri_tok)
    scan = random_scan(48)
    assert isinstance(model.describe(scan, max_new_tokens=4), str)
    forecast = model.forecast(scan, windows=2)
    codes = np.asarray(forecast.flags["codes"])
    assert codes.shape == (2, K) and codes.min() >= 0 and codes.max() < CODEBOOK
    assert forecast.timeseries.shape == (2 * fmri_tok.config.window_length, scan.n_regions)
    expected = fmri_tok.decode(codes, scan.atlas).reshape(-1, scan.n_regions).numpy()
    np.testing.assert_allclose(forecast.timeseries, expected, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    again = FmriLM.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(again.forecast_codes(scan, 2), model.forecast_codes(scan, 2))


def test_quantized_loading_fails_clearly_without_bitsandbytes():
    from fmrilm.model.quantization import bitsandbytes_status, bnb_quantization_config, make_optimizer

    if bitsandbytes_status() is None:
        pytest.skip("bitsandbytes works on this machine; the error path cannot be exercised")
    with pytest.raises(FmriInputError, match="not available on this machine"):
        bnb_quantization_config("4bit")
    with pytest.raises(FmriInputError, match="8-bit optimizer"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, eight_bit=True)
    with pytest.raises(FmriInputError, match="Unknown quantization"):
        bnb_quantization_config("3bit")


def test_from_pretrained_on_a_non_model_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FmriInputError, match="not a saved fmrilm model"):
        FmriLM.from_pretrained(tmp_path)
