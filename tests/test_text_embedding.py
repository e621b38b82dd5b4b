"""Descriptor text embeddings with input-embedding pooling: the fast CPU target space of Stage 1."""

from __future__ import annotations

import pytest
import torch

from fmrilm.model.testing import tiny_causal_lm
from fmrilm.tokenizer.text_embedding import TextEmbedder


def test_input_pooling_is_the_mean_of_input_token_embeddings_and_skips_the_transformer():
    model, tok = tiny_causal_lm("llama")
    texts = ["default-mode coupling is markedly reduced", "modularity is typical"]
    emb = TextEmbedder(model, tok, pooling="input")
    vecs = emb.embed(texts)
    for text, vec in zip(texts, vecs, strict=True):
        ids = tok(text, return_tensors="pt")["input_ids"][0]
        expected = model.get_input_embeddings()(ids).mean(0)
        torch.testing.assert_close(vec, expected.detach())
    assert not torch.equal(vecs[0], vecs[1])

    hidden = TextEmbedder(model, tok, pooling="hidden").embed(texts[:1])
    assert not torch.allclose(hidden[0], vecs[0]), "the two poolings give different targets"


def test_unknown_pooling_is_refused():
    model, tok = tiny_causal_lm("llama")
    with pytest.raises(ValueError, match="pooling"):
        TextEmbedder(model, tok, pooling="cls")
