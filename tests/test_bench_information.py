"""The information ladder's LLM rows read what the LLM receives where the ladder says they do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fmrilm.eval.bench_information import llm_rows

from fmrilm.tokenizer.connectome import ConnectomeTokens
from tests.test_connectome import tiny_connectome_model


def test_ladder_rows_are_the_summary_input_and_the_answer_position_state():
    model, tok, scans = tiny_connectome_model(14)
    tokens = [tok.encode(s) for s in scans[:5]]
    tokens = [ConnectomeTokens(t.codes, t.values) for t in tokens]
    rows = llm_rows(model, tokens, batch_size=2)
    hidden = model.llm.config.hidden_size
    assert rows["llm_input_summary"].shape == (5, hidden)
    assert rows["llm_input_soft"].shape == (5, tok.config.num_tokens * hidden)
    assert rows["llm_hidden_last"].shape == (5, hidden)
    # the summary row is the start marker's input embedding, and it differs between scans (it reads the values)
    assert not np.allclose(rows["llm_input_summary"][0], rows["llm_input_summary"][1])
    start_row = model.llm.get_input_embeddings().weight[model.processor.ids.start_id].detach().numpy()
    assert not np.allclose(rows["llm_input_summary"][0], start_row)
    with torch.no_grad():
        model.soft_projection.summary.weight.zero_()
    again = llm_rows(model, tokens[:1])
    np.testing.assert_allclose(
        again["llm_input_summary"][0], start_row, atol=1e-6
    )  # no summary: the code row
    # the answer-position row is the final hidden state at the prompt's last token
    batch = model.processor(
        [
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "fmri",
                            "codes": np.zeros((0, model.processor.config.num_latents), np.int64),
                            "connectome": tokens[0],
                        },
                        {"type": "text", "text": "Describe this resting-state fMRI scan."},
                    ],
                }
            ]
        ],
        add_generation_prompt=True,
    )
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch.get("connectome_values"))
        out = model.llm(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    np.testing.assert_allclose(again["llm_hidden_last"][0], out.hidden_states[-1][0, -1].numpy(), atol=1e-5)


def test_per_fold_auc_is_each_folds_own_and_shows_what_pooling_hides():
    """Two folds that each rank their scans perfectly, with offset scores: pooled AUC falls below 1, each
    fold's own AUC (the ladder's per-fold column) stays 1 and equals scikit-learn's on that fold alone."""
    from fmrilm.eval.bench_information import fold_values
    from fmrilm.eval.report import MethodResult
    from sklearn.metrics import roc_auc_score

    classes = ["control", "patient"]
    folds = []
    for k, offset in enumerate((0.0, 0.45)):
        truth = np.array(["control", "patient"] * 5)
        p = np.where(truth == "patient", 0.5, 0.1) + offset + np.linspace(0, 0.04, 10)
        score = np.stack([1 - p, p], axis=1)
        folds.append(
            MethodResult(
                method="probe",
                task="diagnosis",
                task_type="binary",
                y_true=truth.tolist(),
                y_pred=np.asarray(classes)[score.argmax(1)].tolist(),
                y_score=score,
                classes=classes,
                subject_ids=[f"s{k}-{i}" for i in range(10)],
            )
        )
    values = fold_values(folds, "auc")
    assert values == [
        roc_auc_score(np.asarray(f.y_true) == "patient", np.asarray(f.y_score)[:, 1]) for f in folds
    ]
    assert values == [1.0, 1.0]
    pooled = MethodResult.pooled(folds)
    assert roc_auc_score(np.asarray(pooled.y_true) == "patient", np.asarray(pooled.y_score)[:, 1]) < 0.9


def test_each_trained_model_needs_its_own_test_sites(tmp_path):
    """Several trained models are read one fold each (`--model` / `--test-sites` in pairs); a model without its
    sites, or several folds of sites without models, is refused before anything is loaded."""
    from fmrilm.eval.bench_information import main

    missing = str(tmp_path / "no_abide")
    with pytest.raises(SystemExit) as err:
        main(["--abide", missing, "--model", "a", "--test-sites", "X", "--model", "b"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["--abide", missing, "--test-sites", "X", "--test-sites", "Y"])
    assert err.value.code == 2
