"""The brain-token rows' look-up forward gives what peft's own trainable-token forward gives, without its copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

from fmrilm.model.adapters import LoraSettings, brain_rows_lookup_class
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import tiny_causal_lm

K, CODEBOOK = 4, 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def adapted(arch: str) -> FmriLM:
    llm, tok = tiny_causal_lm(arch)
    model = FmriLM.from_base(llm, tokenizer=tok, codebook_size=CODEBOOK, num_latents=K)
    model.add_adapters(LoraSettings(r=4, dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking rows and adapters: zeros would hide a wrong row
        for name, p in model.llm.named_parameters():
            if "trainable_tokens_delta" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def brain_batch(model: FmriLM):
    example = model.processor.training_example(
        [
            {"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": "Next?"}]},
            {"role": "assistant", "content": [{"type": "fmri", "codes": np.arange(K)[None]}]},
        ],
        [np.arange(K)[None] + 2],
    )
    return model.processor.pad([example, example])


def token_layers(model: FmriLM) -> list[torch.nn.Module]:
    return [m for m in model.llm.modules() if isinstance(m, TrainableTokensLayer)]


def loss_and_grads(model: FmriLM, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.llm.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # tied and untied output layer
def test_lookup_gives_peft_outputs_and_gradients(arch):
    model = adapted(arch)
    layers = token_layers(model)
    assert layers and all(type(m) is brain_rows_lookup_class() for m in layers)
    batch = brain_batch(model)
    brain = model.processor.ids.all_ids
    assert np.isin(batch["input_ids"].numpy(), brain).any(), "the batch must read brain rows"
    logits, loss, grads = loss_and_grads(model, batch)

    for m in layers:  # peft's own forward, on the same parameters
        m.__class__ = TrainableTokensLayer
    ref_logits, ref_loss, ref_grads = loss_and_grads(model, batch)

    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    assert any("trainable_tokens_delta" in n for n in grads), "the brain rows must get a gradient"
    for name, grad in grads.items():  # float rounding of a different summation order, nothing more
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_lookup_survives_save_and_load_and_leaves_merging_to_peft(tmp_path):
    model = adapted("llama").eval()
    batch = brain_batch(model)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "m")
    loaded = FmriLM.from_pretrained(tmp_path / "m")
    assert all(type(m) is brain_rows_lookup_class() for m in token_layers(loaded))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected)
        merged = loaded.merge_adapters()(**batch).logits
    torch.testing.assert_close(merged, expected, rtol=1e-3, atol=1e-3)
