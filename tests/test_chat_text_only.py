"""A chat answer is words: chat, `reply` and `describe` never generate brain tokens (`TextTokensOnly`), while
`forecast` still generates them (it generates nothing else).

The tiny model is pushed towards brain tokens by a logits processor that adds a large bonus to their logits,
so without the restriction it would answer with brain tokens only: what the restriction removes is visible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmrilm.chat import ChatSession, TextTokensOnly
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer

K, CODEBOOK, NEW_TOKENS = 4, 16, 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class PreferBrain:
    """Adds 100 to every brain token's logit: a model that would rather write brain tokens than words."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = torch.tensor(ids)

    def __call__(self, input_ids, scores):
        return scores.index_add(-1, self.ids, torch.full((scores.shape[0], len(self.ids)), 100.0))


@pytest.fixture(scope="module")
def model() -> FmriLM:
    llm, tok = tiny_causal_lm("llama", initializer_range=0.5)
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    return FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok).eval()


@pytest.fixture
def generated(model, monkeypatch) -> list[list[int]]:
    """The new token ids of every `generate` call the model makes (the prompts cut off)."""
    calls: list[list[int]] = []
    original = model.generate

    def recording(**kwargs):
        out = original(**kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        calls.append(sequences[0, kwargs["input_ids"].shape[1] :].tolist())
        return out

    monkeypatch.setattr(model, "generate", recording)
    return calls


def brain(model) -> set[int]:
    return set(model.processor.ids.all_ids)


def test_the_chat_writes_words_even_where_the_model_prefers_brain_tokens(model, generated):
    push = [PreferBrain(model.processor.ids.all_ids)]
    session = ChatSession(model, max_new_tokens=NEW_TOKENS, tools=False, logits_processor=push)
    session.ask("Hello, how are you?")
    (ids,) = generated
    assert ids and not set(ids) & brain(model)  # words only
    assert all(p["type"] == "text" for p in session.history[-1]["content"])  # no brain part kept

    generated.clear()  # the same session with the restriction off: the push wins, brain tokens come out
    loose = ChatSession(model, max_new_tokens=NEW_TOKENS, tools=False, text_only=False, logits_processor=push)
    text = loose.ask("Hello, how are you?")
    (ids,) = generated
    assert set(ids) <= brain(model) and text == ""  # and they never reach the text
    assert any(p["type"] == "fmri" for p in loose.history[-1]["content"])


def test_chat_function_reply_and_describe_write_words(model, generated):
    push = [PreferBrain(model.processor.ids.all_ids)]
    codes = np.arange(2 * K).reshape(2, K) % CODEBOOK
    model.chat(codes, "What do you see?", max_new_tokens=NEW_TOKENS, tools=False, logits_processor=push)
    model.describe(codes, max_new_tokens=NEW_TOKENS, logits_processor=push)
    model.reply([{"role": "user", "content": "Hi"}], max_new_tokens=NEW_TOKENS, logits_processor=push)
    assert len(generated) == 3
    for ids in generated:
        assert ids and not set(ids) & brain(model)
    generated.clear()
    model.reply(
        [{"role": "user", "content": "Hi"}], max_new_tokens=NEW_TOKENS, logits_processor=push, text_only=False
    )
    assert set(generated[0]) <= brain(model)


def test_forecast_still_generates_brain_codes(model):
    scan = random_scan(64, seed=1)
    codes = model.forecast_codes(scan, windows=2)
    assert codes.shape == (2, K) and codes.min() >= 0 and codes.max() < CODEBOOK


def test_text_tokens_only_leaves_the_words_renormalised():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    masked = TextTokensOnly([3, 4, 99])(None, scores.clone())  # an id beyond the vocabulary is ignored
    assert torch.isinf(masked[0, 3:]).all() and masked[0, 3:].max() < 0
    torch.testing.assert_close(masked.softmax(-1)[0, :3], scores[0, :3].softmax(-1))
