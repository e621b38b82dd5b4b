"""Stage 1 training (`fmrilm train tokenizer`): it learns, it resumes, it mixes atlases, it aligns to an LLM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fmrilm.train.stage1 import Stage1Config, cohort_windows, train_tokenizer

from fmrilm.atlas import Atlas
from fmrilm.cohort import load_cohort
from fmrilm.tokenizer import FmriTokenizerModel
from fmrilm.tokenizer.metrics import code_usage, reconstruction_r2


@pytest.fixture(scope="module")
def sim_cohort(tmp_path_factory):
    """30 simulated subjects on a 54-region subset of Dosenbach-160 (small, so training stays fast)."""
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    atlas = Atlas.builtin("dosenbach160").subset(np.arange(0, 160, 3), name="dos54")
    cohort = simulate_cohort(
        SimulationConfig(n_subjects=30, atlas=atlas, n_sites=2, timepoints=(150, 200), seed=3)
    )
    return cohort.save(tmp_path_factory.mktemp("cohorts") / "sim54")


@pytest.fixture(scope="module")
def other_atlas_cohort(tmp_path_factory):
    """A second cohort on another atlas (a 40-region subset of Seitzman-300)."""
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    atlas = Atlas.builtin("seitzman300").subset(np.arange(0, 300, 7)[:40], name="seitz40")
    cohort = simulate_cohort(
        SimulationConfig(
            n_subjects=8, atlas=atlas, n_sites=1, timepoints=(100, 120), seed=4, name="sim-seitz"
        )
    )
    return cohort.save(tmp_path_factory.mktemp("cohorts") / "seitz40")


def quick_config(cohorts, out, **overrides) -> Stage1Config:
    values = dict(
        cohorts=[str(c) for c in cohorts],
        out=str(out),
        preset="tiny",
        model={"codebook_size": 128},
        steps=8,
        quantizer_warmup_steps=2,
        eval_every=4,
        save_every=4,
        log_every=2,
        val_fraction=0.2,
        progress=False,
        threads=1,  # the machine is shared: no thread oversubscription
    )
    values.update(overrides)
    return Stage1Config(**values)


def test_tiny_tokenizer_reconstructs_held_out_subjects_and_uses_its_codebook(sim_cohort, tmp_path):
    out = train_tokenizer(
        quick_config([sim_cohort], tmp_path / "run", steps=300, quantizer_warmup_steps=100, eval_every=300)
    )
    model = FmriTokenizerModel.from_pretrained(out)
    split = json.loads((out / "split.json").read_text())
    held_out = set(next(iter(split["cohorts"].values()))["val_subjects"])
    cohort = load_cohort(sim_cohort)
    assert held_out and held_out < set(cohort.phenotype_table()["subject_id"])
    table = cohort.phenotype_table()
    val = cohort.select(np.flatnonzero(table["subject_id"].isin(held_out)))
    data = cohort_windows(val, model.config)
    x, m = torch.from_numpy(data["windows"]), torch.from_numpy(data["mask"])
    coords = torch.as_tensor(cohort.atlas.coords)
    # R² > 0: better than every region flat at its own mean over the window
    r2 = reconstruction_r2(model, x, m, coords, mask_ratio=0.0)["r2"]
    assert r2 > 0.02, f"held-out R² {r2:.3f}"
    usage = code_usage(model.encode(x, coords, m), model.config.codebook_size)
    assert usage["usage"] > 0.25 and usage["perplexity"] > 16, usage
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"][-1]["step"] == 300 and metrics["setup"]["alignment"] is False
    assert metrics["train"][-1]["reconstruction"] < metrics["train"][0]["reconstruction"]


def test_training_resumes_after_a_crash_and_ends_where_an_uninterrupted_run_ends(
    sim_cohort, tmp_path, monkeypatch
):
    import fmrilm.train.common as common

    straight = train_tokenizer(quick_config([sim_cohort], tmp_path / "straight"))

    real_save = common.save_checkpoint

    def save_then_crash(accelerator, out_dir, state, keep=2):
        path = real_save(accelerator, out_dir, state, keep)
        if state.step == 4:
            raise KeyboardInterrupt("simulated crash")
        return path

    monkeypatch.setattr(common, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(quick_config([sim_cohort], tmp_path / "crashed"))
    monkeypatch.setattr(common, "save_checkpoint", real_save)
    assert not (tmp_path / "crashed" / "model.safetensors").exists(), "no final model after a crash"
    resumed = train_tokenizer(quick_config([sim_cohort], tmp_path / "crashed"), resume=True)

    a = FmriTokenizerModel.from_pretrained(straight).state_dict()
    b = FmriTokenizerModel.from_pretrained(resumed).state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], msg=f"{key} differs after resuming")
    steps = [e["step"] for e in json.loads((resumed / "metrics.json").read_text())["train"]]
    assert steps == sorted(set(steps)) and steps[-1] == 8, "metrics continue without duplicates"


def test_cohorts_with_different_atlases_train_together(sim_cohort, other_atlas_cohort, tmp_path):
    out = train_tokenizer(quick_config([sim_cohort, other_atlas_cohort], tmp_path / "mixed", steps=6))
    split = json.loads((out / "split.json").read_text())["cohorts"]
    assert sorted(v["n_regions"] for v in split.values()) == [40, 54]
    assert all(v["val_subjects"] for v in split.values())
    model = FmriTokenizerModel.from_pretrained(out)
    for path in (sim_cohort, other_atlas_cohort):
        scan = load_cohort(path).scan(0)
        assert model.encode(scan).shape[1] == model.config.num_latents


def test_cli_trains_and_refuses_to_overwrite_a_run(sim_cohort, tmp_path, capsys):
    from fmrilm.cli import main

    out = tmp_path / "cli"
    args = ["train", "tokenizer", "--cohort", str(sim_cohort), "--out", str(out), "--preset", "tiny"]
    args += ["--steps", "3", "--quantizer-warmup-steps", "1", "--codebook-size", "64", "--no-progress"]
    args += ["--threads", "1"]
    assert main(args) == 0
    assert "reconstruction + commitment only" in capsys.readouterr().err
    assert FmriTokenizerModel.from_pretrained(out).config.codebook_size == 64
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # already finished: nothing left to do, model rewritten


def _tiny_llm(path, texts):
    """A random tiny Llama with a word-level tokenizer over the corpus words: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.lower().replace(".", " ").replace(",", " ").split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_alignment_to_a_frozen_llm_uses_descriptor_texts(sim_cohort, tmp_path):
    import datasets

    cohort = load_cohort(sim_cohort)
    levels = ["reduced", "typical", "elevated"]
    rows = {"scan_id": [], "window": [], "fc_text": [], "graph_text": []}
    for i, scan_id in enumerate(cohort.phenotype_table()["scan_id"]):
        for w in range(4):
            rows["scan_id"].append(scan_id)
            rows["window"].append(w)
            rows["fc_text"].append(f"default coupling is {levels[(i + w) % 3]}.")
            rows["graph_text"].append(f"modularity is {levels[(i * w) % 3]}.")
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "corpus"))
    llm = _tiny_llm(tmp_path / "llm", rows["fc_text"] + rows["graph_text"])

    out = train_tokenizer(
        quick_config([sim_cohort], tmp_path / "aligned", corpus=[str(tmp_path / "corpus")], llm=str(llm))
    )
    model = FmriTokenizerModel.from_pretrained(out)
    assert model.config.text_embed_dim == 24
    assert model.code_text_embeddings().shape == (128, 24)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setup"]["alignment"] is True and 1 < metrics["setup"]["n_texts"] <= 9
    assert {"alignment", "adversarial"} <= set(metrics["train"][-1])
    val = metrics["val"][-1]
    # a share of the held-out windows (retrieval_accuracy itself is checked on constructed cases in
    # tests/test_metrics_trust.py): a whole number of right answers, and top-1 right implies top-5 right
    hits = val["retrieval_top1"] * val["retrieval_n_queries"]
    assert val["retrieval_n_queries"] > 0 and hits == pytest.approx(round(hits), abs=1e-6)
    assert val["retrieval_top1"] <= val["retrieval_top5"]
    assert metrics["val"][-1]["retrieval_chance_top1"] == pytest.approx(
        1 / metrics["val"][-1]["retrieval_n_texts"]
    )
    assert list(out.glob("text_embeddings-*.safetensors")), "text embeddings are cached"
    # brain vectors land in the LLM's space: centred on the mean descriptor embedding, at its typical radius
    assert model.text_center.abs().sum() > 0 and model.text_scale > 0
    radius = (model.code_text_embeddings() - model.text_center).norm(dim=1)
    torch.testing.assert_close(radius, torch.full_like(radius, float(model.text_scale)))


def test_text_embedder_caches_and_mean_pools(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fmrilm.tokenizer.text_embedding import TextEmbedder

    texts = ["default coupling is reduced.", "modularity is typical.", "default coupling is reduced."]
    path = _tiny_llm(tmp_path / "llm", texts)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    emb = TextEmbedder(model, tok, cache_path=tmp_path / "cache.safetensors")
    vecs = emb.embed(texts)
    assert vecs.shape == (3, 24)
    assert torch.equal(vecs[0], vecs[2]) and not torch.equal(vecs[0], vecs[1])
    enc = tok(texts[1:2], return_tensors="pt")
    hidden = model(**enc, output_hidden_states=True).hidden_states[-1][0].mean(0)
    torch.testing.assert_close(vecs[1], hidden.detach())
    # a new embedder reads the cache instead of running the model
    cached = TextEmbedder(model, tok, cache_path=tmp_path / "cache.safetensors")
    cached.model = None  # any model call would now fail
    assert torch.equal(cached.embed(texts[:2]), vecs[:2])


def test_subject_loss_trains_on_the_saved_connectome_and_needs_connectome_tokens(sim_cohort, tmp_path):
    """`--subject-weight`: every window predicts its scan's leading connectome components; the targets come
    from the same connectome fit the tokenizer saves, and without connectome tokens there are none to predict."""
    from fmrilm.errors import FmriInputError

    settings = dict(connectome_tokens=4, connectome={"components": 8}, loss={"subject_weight": 1.0})
    out = train_tokenizer(quick_config([sim_cohort], tmp_path / "subject", **settings))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setup"]["subject_targets"] == 8  # at most the fitted components
    assert all(np.isfinite(e["subject"]) for e in metrics["train"])
    model = FmriTokenizerModel.from_pretrained(out)
    assert model.connectome is not None and model.connectome.config.components == 8

    with pytest.raises(FmriInputError, match="needs connectome tokens"):
        train_tokenizer(
            quick_config([sim_cohort], tmp_path / "none", connectome_tokens=0, loss={"subject_weight": 1.0})
        )
    assert not (tmp_path / "none").exists()  # refused before anything is written


def test_loss_flags_refuse_negative_or_non_finite_weights(capsys):
    from fmrilm.cli import main

    for flag, value in (("--subject-weight", "-1"), ("--site-weight", "nan"), ("--subject-components", "0")):
        with pytest.raises(SystemExit):
            main(["train", "tokenizer", "--cohort", "c", "--out", "o", flag, value])
        assert flag in capsys.readouterr().err
