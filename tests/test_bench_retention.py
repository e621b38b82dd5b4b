"""`fmrilm bench retention`: the perplexity of the base model's own greedy answers under the tuned model
against under the base model, each figure recomputed by hand from transformers' own loss."""

from __future__ import annotations

import json
import math

import fmrilm.eval.bench_retention as bench
import pytest
import torch

from fmrilm.model.adapters import LoraSettings
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py
QUICK = ["--questions", "3", "--max-new-tokens", "6", "--threads", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``(plain, tuned)``: a tiny fmrilm model without adapters (whose folder is also a plain transformers model,
    the "base") and the same model with LoRA adapters moved away from zero."""
    root = tmp_path_factory.mktemp("retention")
    llm, tok = tiny_causal_lm("llama", initializer_range=0.5)
    model = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=8))
    model.save_pretrained(root / "plain")
    model.add_adapters(LoraSettings(r=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(root / "tuned")
    return root / "plain", root / "tuned"


def test_a_model_scored_against_itself_keeps_everything(models, tmp_path, capsys):
    plain, _ = models
    out = tmp_path / "r.json"
    assert bench.main(["--model", str(plain), "--base", str(plain), *QUICK, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["groups"]["all"]["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert all(r["ratio"] == pytest.approx(1.0, abs=1e-5) for r in result["questions"])
    assert result["aim_met"] and "raw distribution -> 1.00x, met" in capsys.readouterr().out


def test_the_figures_are_the_answer_tokens_mean_loss(models, tmp_path):
    plain, tuned = models
    out = tmp_path / "r.json"
    assert bench.main(["--model", str(tuned), "--base", str(plain), *QUICK, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["question"] for r in result["questions"]] == [q for _, q in bench.QUESTIONS[:3]]
    assert result["groups"]["all"]["ratio"] != pytest.approx(1.0, abs=1e-3)  # the adapters change the LLM

    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, tok = AutoModelForCausalLM.from_pretrained(plain), AutoTokenizer.from_pretrained(plain)
    model = FmriLM.from_pretrained(tuned)
    brain = torch.tensor(model.processor.ids.all_ids)
    nll = {"nll_base": 0.0, "nll_tuned": 0.0, "nll_chat": 0.0}
    tokens = 0
    for row in result["questions"]:
        prompt = bench.prompt_ids(tok, row["question"])
        answer = bench.greedy_answer(base, tok, prompt, 6, model.processor.ids.all_ids)
        assert not set(answer) & set(model.processor.ids.all_ids)  # the base answers in words
        assert (
            row["tokens"] == len(answer)
            and tok.decode(answer, skip_special_tokens=True).strip() == row["answer"]
        )
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        with torch.no_grad():  # transformers' own loss: the mean NLL of the labelled (answer) tokens
            for key, llm in (("nll_base", base), ("nll_tuned", model.llm)):
                mean = float(llm(input_ids=ids, labels=labels).loss)
                assert row[key] / len(answer) == pytest.approx(mean, rel=1e-4)
                nll[key] += mean * len(answer)
            # the chat's distribution: brain-token columns dropped, the words' probabilities renormalised
            logp = model.llm(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            words = torch.ones(logp.shape[-1], dtype=torch.bool)
            words[brain] = False
            logp = logp[:, words].log_softmax(-1)
            word_index = torch.cumsum(words.long(), 0) - 1  # vocabulary id -> column among the words
            chat = -float(logp[torch.arange(len(answer)), word_index[torch.tensor(answer)]].sum())
            assert row["nll_chat"] == pytest.approx(chat, rel=1e-4)
            assert row["nll_chat"] <= row["nll_tuned"]  # taking mass from brain tokens only adds to the words
            nll["nll_chat"] += chat
        tokens += len(answer)
    expected = math.exp(nll["nll_tuned"] / tokens) / math.exp(nll["nll_base"] / tokens)
    assert result["groups"]["all"]["ratio"] == pytest.approx(expected, rel=1e-4)
    chat_expected = math.exp(nll["nll_chat"] / tokens) / math.exp(nll["nll_base"] / tokens)
    assert result["groups"]["all"]["chat_ratio"] == pytest.approx(chat_expected, rel=1e-4)
    assert result["groups"]["all"]["chat_ratio"] < result["groups"]["all"]["ratio"]
    assert result["groups"]["all"]["tokens"] == tokens
    assert 0 < result["groups"]["all"]["brain_probability"] < 1
    # with the adapters switched off, the tuned folder is the plain one: nothing lost
    assert result["groups"]["all"]["adapters_off_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < result["groups"]["all"]["brain_probability_adapters_off"] < 1


def test_no_model_and_no_demo_model_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "DEFAULT_MODELS", (str(tmp_path / "demo_out" / "stage3_instruct" / "model"),))
    assert bench.main(QUICK) == 2
    err = capsys.readouterr().err
    assert "No tuned model given and no demo model found" in err and "--model DIR" in err
    assert "Traceback" not in err
