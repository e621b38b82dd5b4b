"""What drives a prediction, and what if a network changed: attribution on a model that learned a planted effect,
and the chat answering both questions by calling `attribute` / `perturb` (`fmrilm.chat_questions`).

A small simulated cohort plants a large diagnosis effect on default-mode coupling (patients: weaker DMN
within-network coupling and DMN-FrontoParietal anticorrelation); a tiny FmriLM with connectome tokens is trained
for a few dozen full-batch steps to answer "patient" / "control"; held-out scans are then explained.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fmrilm.atlas import Atlas
from fmrilm.chat import ChatSession
from fmrilm.chat_questions import find_networks, recognise
from fmrilm.model.scoring import TaskCard, store_tasks
from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

NETWORKS = ("default", "fronto-parietal", "cingulo-opercular", "occipital", "sensorimotor")
N_TRAIN = 32
DIAGNOSIS = TaskCard(
    name="diagnosis",
    type="binary",
    options=["patient", "control"],
    questions=["Is this a patient?"],
    instruction="Answer with one of: patient, control.",
)
WHICH = "Which networks drive this prediction?"
WHAT_IF = "What if the default mode network were weaker?"


@pytest.fixture(scope="module")
def planted():
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    full = Atlas.builtin("dosenbach160")
    nets = np.asarray(full.networks)
    atlas = full.subset(np.concatenate([np.flatnonzero(nets == n)[:4] for n in NETWORKS]), name="mini")
    config = SimulationConfig(
        n_subjects=40, atlas=atlas, n_sites=1, timepoints=(120, 120), tr_range=(2.0, 2.0), diagnosis_effect=1.6,
        sex_effect=0.0, age_effect=0.0, noise_range=(0.05, 0.1), drift_range=(0.0, 0.0),
        spike_rate_range=(0.0, 0.0), global_signal=0.0, seed=0,
    )  # fmt: skip
    cohort = simulate_cohort(config)
    scans = [cohort.scan(i) for i in range(len(cohort))]
    labels = cohort.phenotype_table()["diagnosis"].tolist()
    host = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    small = ConnectomeConfig(num_tokens=2, components=8, codebook_size=8, num_levels=2, quantizer_steps=20)
    host.set_connectome(ConnectomeTokenizer.fit(scans[:N_TRAIN], small))
    llm, tok = tiny_causal_lm(initializer_range=0.3)
    model = FmriLM.from_base(llm, host, tokenizer=tok, atlas=atlas)
    model.processor.config.max_windows = 0  # connectome tokens only: short prompts
    store_tasks(model, [DIAGNOSIS])
    examples = [
        model.processor.training_example(
            [*DIAGNOSIS.messages(0), {"role": "assistant", "content": labels[i]}], [scans[i]]
        )
        for i in range(N_TRAIN)
    ]
    batch = model.processor.pad(examples)
    params = [*model.llm.parameters(), *model.soft_projection.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(45):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    held_out = list(zip(scans[N_TRAIN:], labels[N_TRAIN:], strict=True))
    return model, held_out


# ------------------------------------------------------------------------------------------- attribution
def test_attribution_ranks_the_planted_network_first(planted):
    model, held_out = planted
    p_patient = np.asarray([model.predict(s, "diagnosis")["patient"] for s, _ in held_out])
    truth = np.asarray([label == "patient" for _, label in held_out])
    assert ((p_patient > 0.5) == truth).mean() >= 0.75  # the model learned the planted effect
    controls = [s for s, label in held_out if label == "control"]
    assert len(controls) >= 3
    for scan in controls:
        frame = model.attribute(scan, "diagnosis")
        assert frame["network"].iloc[0] == "default", frame
        assert frame["effect"].iloc[0] > 0.2 and frame["effect"].iloc[0] > 5 * frame["effect"].iloc[2]
    # No change, no effect: every network's effect is exactly zero.
    unchanged = model.attribute(controls[0], "diagnosis", change="scale:1")
    assert (unchanged["effect"].abs() < 1e-6).all()


# ---------------------------------------------------------------------------------------------- the chat
def test_chat_answers_which_networks_drive_the_prediction_with_attributes_ranking(planted):
    model, held_out = planted
    scan = next(s for s, label in held_out if label == "control")
    session = ChatSession(model)
    session.attach(scan)
    answer = session.ask(WHICH)
    frame = model.attribute(scan, "diagnosis")
    top = frame["network"].head(3).tolist()
    assert "For diagnosis" in answer and top[0] == "default"
    positions = [answer.index(f"{name} (effect") for name in top if f"{name} (effect" in answer]
    assert len(positions) >= 2 and positions == sorted(positions)  # named in attribute's order
    assert f"{top[0]} (effect {frame['effect'].iloc[0]:.3f}" in answer
    assert session.history[-1] == {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    # The scan stays in the conversation: a follow-up what-if needs no new attachment.
    follow = session.ask(WHAT_IF)
    assert follow.startswith("If the default network were weaker")


def test_chat_answers_what_if_the_default_mode_network_were_weaker_with_perturbs_numbers(planted):
    model, held_out = planted
    scan = next(s for s, label in held_out if label == "control")
    answer, history = model.chat(scan, WHAT_IF)
    frame = model.perturb(scan, network="default", change="scale:0.5")
    top = frame.loc[frame["before"].idxmax()]
    assert "default network were weaker (scale:0.5 on its 4 regions" in answer
    assert f"diagnosis: '{top['option']}' {top['before']:.2f} -> {top['after']:.2f}" in answer
    assert history[-1]["content"][0]["text"] == answer
    stronger, _ = model.chat(scan, "What would happen if the fronto-parietal network were stronger?")
    assert "fronto-parietal network" in stronger and "couple:+0.5" in stronger
    silenced, _ = model.chat(scan, "Suppose the DMN was switched off?")
    assert "default network were silenced (silence on its 4 regions" in silenced


def test_the_dispatch_is_a_fixed_list_of_wordings(planted):
    model, held_out = planted
    scan = held_out[0][0]
    names = scan.atlas.network_names
    assert recognise("Which networks drive this prediction?", names).kind == "attribute"
    assert recognise("What drives the diagnosis?", names).kind == "attribute"
    assert recognise("Which regions matter most for this answer?", names).by == "region"
    for other in ("Describe this scan.", "What if I were older?", "Which networks are most coupled?", ""):
        assert recognise(other, names) is None
    assert find_networks("the DMN and visual cortex", names) == ["default", "occipital"]
    seitzman = ["DefaultMode", "SomatomotorDorsal", "SomatomotorLateral", "Visual"]
    assert find_networks("default mode network", seitzman) == ["DefaultMode"]
    assert find_networks("somatomotor network", seitzman) == ["SomatomotorDorsal", "SomatomotorLateral"]
    unknown, _ = model.chat(scan, "What if the limbic network were weaker?")
    assert unknown.startswith("Which network? This scan's atlas has: default, fronto-parietal")
    # Without the scan's signal (only its brain tokens in the history) nothing can be computed.
    _, history = model.chat(scan, "Describe this scan.", max_new_tokens=2)
    again, _ = model.chat(None, WHICH, history=history)
    assert again.startswith("I need the scan's signal")
    # tools=False: the LLM answers, whatever it says.
    generated, _ = model.chat(scan, WHICH, tools=False, max_new_tokens=3)
    assert "drive it most" not in generated


def test_fmrilm_chat_prints_the_computed_answer(planted, tmp_path, capsys):
    from fmrilm.cli import main

    model, held_out = planted
    scan = next(s for s, label in held_out if label == "control")
    model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "scan.npy", scan.timeseries)
    atlas = scan.atlas
    table = {"label": atlas.labels, "network": atlas.networks}
    table.update({axis: atlas.coords[:, j] for j, axis in enumerate("xyz")})
    pd.DataFrame(table).to_csv(tmp_path / "atlas.csv", index=False)  # pandas hands out read-only arrays
    base = ["chat", "--model", str(tmp_path / "model"), "--scan", str(tmp_path / "scan.npy"), "--tr", "2"]
    assert main([*base, "--atlas", str(tmp_path / "atlas.csv"), "--message", WHICH]) == 0
    captured = capsys.readouterr()
    assert "For diagnosis" in captured.out and "default (effect" in captured.out
    assert "warning" not in captured.err.lower()  # no torch warning about read-only atlas coordinates
