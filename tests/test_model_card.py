"""Model cards: save_pretrained writes a README.md that huggingface_hub parses, naming the base model, how the
model was trained and loaded and what it must not be used for; fmrilm eval --update-card adds its results."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

from fmrilm.model.model_card import DEFAULT_BASE_ID, add_evaluation, record_training
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer


def _model(lora: bool = True) -> FmriLM:
    torch.set_num_threads(1)
    llm, tok = tiny_causal_lm("llama")
    fmri_tok = tiny_fmri_tokenizer(codebook_size=16, num_latents=4, window_length=16)
    return FmriLM.from_base(
        llm, tokenizer=tok, fmri_tokenizer=fmri_tok, atlas=random_scan(32).atlas, lora=lora
    )


@pytest.fixture(scope="module")
def model() -> FmriLM:
    return _model()


def test_saved_card_parses_and_names_the_base_model(model, tmp_path):
    model.processor.config.base_model = "smollm2"
    model.save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "fmrilm" and data["base_model"] == DEFAULT_BASE_ID
    assert data["license"] == "apache-2.0" and {"fmri", "neuroscience", "brain-tokens"} <= set(data["tags"])
    text = card.text
    assert "not a diagnostic device" in text.lower()
    assert "FmriLM.from_pretrained" in text and "fmrilm chat --model" in text
    assert "**Atlas:** dosenbach160 (160 regions" in text  # the atlas from the processor config
    adapter_card = (tmp_path / "m" / "adapters" / "README.md").read_text()
    assert "[More Information Needed]" not in adapter_card  # peft's template is replaced
    assert ModelCard.load(tmp_path / "m" / "adapters" / "README.md").data.base_model == DEFAULT_BASE_ID
    assert FmriLM.from_pretrained(tmp_path / "m").has_adapters  # the folder still loads


def test_a_local_base_model_is_named_in_the_text_not_the_metadata(tmp_path):
    model = _model(lora=False)
    model.processor.config.base_model = str(tmp_path / "my-local-llm")
    model.save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert "base_model" not in card.data.to_dict()  # the Hub would refuse a path as a model id
    assert str(tmp_path / "my-local-llm") in card.text and card.data.license == "other"
    assert not (tmp_path / "m" / "adapters").exists()


def test_training_records_and_the_run_config_are_on_the_card(model, tmp_path):
    record_training(
        model, "align", {"cohorts": ["sim", "abide-train"], "steps": 300, "corpus": ["corpus/sim"]}
    )
    run = tmp_path / "stage3"
    run.mkdir()
    (run / "train_config.json").write_text(
        json.dumps({"instructions": ["/data/instr/sim"], "cohorts": [], "steps": 40, "lr": 2e-4, "seed": 0})
    )
    model.save_pretrained(run / "model")
    text = ModelCard.load(run / "model" / "README.md").text
    assert "| Stage 2: LLM alignment on the descriptor corpus | sim, abide-train | 300 |" in text
    assert "| Stage 3: multi-task instruction tuning | - | 40 |" in text and "instructions: " in text
    # the record travels with the model into the next save
    again = FmriLM.from_pretrained(run / "model")
    again.save_pretrained(tmp_path / "copy")
    assert "sim, abide-train | 300" in ModelCard.load(tmp_path / "copy" / "README.md").text


def test_eval_update_card_adds_and_replaces_its_table(model, tmp_path):
    from fmrilm.eval.cli import update_card

    model.save_pretrained(tmp_path / "m")
    table = "## Summary\n\nnote\n\n| method | shots | auc |\n| --- | --- | --- |\n| fmrilm | 0 | 0.61 |\n"
    cfg = SimpleNamespace(
        model=str(tmp_path / "m"), cohort=str(tmp_path / "abide"), task="diagnosis", split="leave-sites-out"
    )
    update_card(cfg, table, "report.md")
    update_card(cfg, table.replace("0.61", "0.66"), "report.md")  # the same evaluation again: replaced
    add_evaluation(
        tmp_path / "m", "sex on abide (stratified split)", "| method | auc |\n| --- | --- |\n| x | 0.7 |"
    )
    card = ModelCard.load(tmp_path / "m" / "README.md")
    text = card.text
    assert text.count("### diagnosis on abide (leave-sites-out split)") == 1
    assert "| fmrilm | 0 | 0.66 |" in text and "0.61" not in text and "| x | 0.7 |" in text
    assert "Not evaluated yet" not in text and "## Summary" not in text
    assert card.data.library_name == "fmrilm"


def test_push_to_hub_uploads_the_folder_with_its_card(model, tmp_path):
    """Offline: a stand-in for huggingface_hub.HfApi records what would be sent."""
    from fmrilm.errors import FmriInputError
    from fmrilm.model.model_card import push_to_hub

    class FakeApi:
        calls: list = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            self.calls.append(("upload_folder", kwargs))

    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "README.md").unlink()  # a folder saved before cards existed gets one on upload
    api = FakeApi()
    url = push_to_hub(tmp_path / "m", "me/fmrilm-test", api=api)
    assert url == "https://huggingface.co/me/fmrilm-test"
    assert api.calls[0] == (
        "create_repo",
        "me/fmrilm-test",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert api.calls[1][1]["folder_path"] == str(tmp_path / "m")
    assert ModelCard.load(tmp_path / "m" / "README.md").data.library_name == "fmrilm"
    with pytest.raises(FmriInputError, match="Not a saved fmrilm model folder"):
        push_to_hub(tmp_path, "me/x", api=api)
