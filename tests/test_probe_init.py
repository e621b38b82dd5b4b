"""The probe warm start of Stage 3: the tuned model starts from a linear reading of the scan it is shown."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmrilm.errors import FmriInputError
from tests.test_connectome import tiny_connectome_model

N_SCANS = 48


@pytest.fixture(scope="module")
def setting():
    """A tiny model with a scan summary, and training rows whose answer is planted in component 0."""
    from fmrilm.train.stage3 import EncodedScans

    model, tok, scans = tiny_connectome_model(N_SCANS)
    codes = EncodedScans(
        {s.scan_id: np.zeros((0, model.processor.config.num_latents), np.int64) for s in scans}
    )
    codes.connectome = {s.scan_id: tok.encode(s) for s in scans}
    signal = np.asarray([codes.connectome[s.scan_id].values.reshape(-1)[0] for s in scans])
    answers = np.where(signal > np.median(signal), "yes", "no")
    rows = [
        {
            "task": "planted",
            "scan_id": s.scan_id,
            "site": f"site{i % 4}",
            "answer": str(a),
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "fmri", "scan_id": s.scan_id},
                        {"type": "text", "text": "Yes or no?"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": str(a)}]},
            ],
        }
        for i, (s, a) in enumerate(zip(scans, answers, strict=True))
    ]
    card = SimpleNamespace(name="planted", type="binary", options=("no", "yes"))
    return model, rows, codes, card, (answers == "yes").astype(int)


def margins(model, rows, codes, card) -> np.ndarray:
    from fmrilm.train.probe_init import answer_margins
    from fmrilm.train.stage3 import resolve_messages

    return answer_margins(model, [resolve_messages(r["messages"], codes) for r in rows], card.options)


def test_the_warm_start_makes_the_models_answer_follow_the_probe(setting):
    import copy

    from fmrilm.train.probe_init import SCALE_BOUNDS, warm_start_summary

    model, rows, codes, card, y = setting
    model = copy.deepcopy(model)
    before = margins(model, rows, codes, card)
    other = SimpleNamespace(name="three", type="choice", options=("a", "b", "c"))  # not a two-answer task
    (probe,) = warm_start_summary(model, [(rows, codes)], [card, other], seed=0, rounds=2)
    after = margins(model, rows, codes, card)
    assert probe.name == "planted" and probe.n_scans == N_SCANS
    components = np.stack([codes.connectome[r["scan_id"]].values.reshape(-1) for r in rows])
    logit = components @ probe.weights
    assert np.corrcoef(after - before, logit)[0, 1] > 0.8  # the margin moved along the probe's logit
    assert roc_auc_score(y, after) > 0.9  # so the warm-started model reads the answer from the scan summary
    # calibrated within its bounds (a tiny random LLM saturates: it cannot reach one-for-one inside them)
    assert SCALE_BOUNDS[0] <= abs(probe.scale) <= SCALE_BOUNDS[1] and probe.slope > 0
    summary = probe.summary()
    assert summary["task"] == "planted" and summary["scans"] == N_SCANS


def test_the_first_order_step_alone_moves_the_margin_without_measuring_it(setting, monkeypatch):
    """``rounds=0`` (the presets' warm start): the first-order step is planted, and no margin is measured for a
    calibration that does not happen; the slope is left unknown rather than made up."""
    import copy

    import fmrilm.train.probe_init as probe_init

    model, rows, codes, card, y = setting
    model = copy.deepcopy(model)
    before = margins(model, rows, codes, card)

    def refuse(*args, **kwargs):
        raise AssertionError("rounds=0 measures no margin")

    monkeypatch.setattr(probe_init, "answer_margins", refuse)
    (probe,) = probe_init.warm_start_summary(model, [(rows, codes)], [card], seed=0, rounds=0)
    monkeypatch.undo()
    after = margins(model, rows, codes, card)
    components = np.stack([codes.connectome[r["scan_id"]].values.reshape(-1) for r in rows])
    assert np.corrcoef(after - before, components @ probe.weights)[0, 1] > 0.8
    assert probe.scale == 1.0 and np.isnan(probe.slope)
    assert probe.summary()["margin_per_logit"] is None


def test_the_warm_start_calibrates_under_the_stages_bf16_autocast(setting, monkeypatch):
    """`train instruct --mixed-precision bf16` runs the warm start under bf16 autocast (`precision_autocast`):
    the calibration edits the projection in place between measurements, so each measurement must read the
    edited weight (autocast's weight cache would keep the first cast: no response, a scale of 0)."""
    import copy

    import torch
    from fmrilm.train.common import precision_autocast
    from fmrilm.train.probe_init import SCALE_BOUNDS, warm_start_summary

    model, rows, codes, card, y = setting
    model = copy.deepcopy(model)
    with precision_autocast("bf16", model.device):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        (probe,) = warm_start_summary(model, [(rows, codes)], [card], seed=0, rounds=2)
    assert probe.slope > 0 and SCALE_BOUNDS[0] <= abs(probe.scale) <= SCALE_BOUNDS[1] + 1e-9
    assert roc_auc_score(y, margins(model, rows, codes, card)) > 0.9
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for off in ("no", None):
        with precision_autocast(off, model.device):
            assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    with precision_autocast(None, model.device):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_only_the_summary_projection_changes(setting):
    import copy

    import torch
    from fmrilm.train.probe_init import warm_start_summary

    model, rows, codes, card, _ = setting
    model = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.llm.train()  # as Stage 3 hands it over
    warm_start_summary(model, [(rows, codes)], [card], seed=0)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    assert changed and all("summary" in k for k in changed)
    assert model.llm.training  # measured in eval mode, handed back in the mode it came in


def test_a_model_without_a_scan_summary_is_refused(setting):
    import copy

    from fmrilm.train.probe_init import warm_start_summary

    model, rows, codes, card, _ = setting
    model = copy.deepcopy(model)
    model.soft_projection.summary = None
    with pytest.raises(FmriInputError, match="scan summary"):
        warm_start_summary(model, [(rows, codes)], [card])


def test_a_task_with_one_answer_only_is_skipped(setting):
    from fmrilm.train.probe_init import fit_probe

    model, rows, codes, card, _ = setting
    one_answer = [{**r, "answer": "yes"} for r in rows]
    from fmrilm.train.probe_init import warm_start_summary

    assert warm_start_summary(model, [(one_answer, codes)], [card]) == []
    with pytest.raises(FmriInputError, match="per answer"):
        fit_probe(np.zeros((5, 3)), np.array([1, 1, 1, 1, 0]), None)


BINS = ("6", "9", "13", "17", "23", "35")


def test_a_binned_regression_is_warm_started_from_a_ridge_probe(setting):
    """Age is scored as the expectation over its bins: the warm start moves that value along a ridge probe."""
    import copy

    from fmrilm.train.probe_init import answer_margins, warm_start_summary
    from fmrilm.train.stage3 import resolve_messages

    model, rows, codes, card, y = setting
    model = copy.deepcopy(model)
    signal = np.asarray([codes.connectome[r["scan_id"]].values.reshape(-1)[0] for r in rows])
    age = 15.0 + 5.0 * (signal - signal.mean()) / signal.std()
    age_rows = [
        {**r, "task": "age", "answer": f"{a:.0f}", "value": float(a)} for r, a in zip(rows, age, strict=True)
    ]
    values = [float(b) for b in BINS]
    age_card = SimpleNamespace(name="age", type="regression", options=BINS, bin_values=lambda: values)
    messages = [resolve_messages(r["messages"], codes) for r in age_rows]
    before = answer_margins(model, messages, BINS, values)
    probes = warm_start_summary(model, [(rows + age_rows, codes)], [card, age_card], seed=0)
    after = answer_margins(model, messages, BINS, values)
    assert [p.name for p in probes] == ["planted", "age"]
    ridge = probes[1]
    assert ridge.summary()["kind"] == "ridge"
    assert np.all((after >= min(values)) & (after <= max(values)))  # still an expectation over the bins
    # the scored age moved with the planted age. The probe reads it exactly (r 1.00); the tiny random LLM turns
    # the summary offset into the answer only roughly linearly: r 0.88 with the former whitened raw-feature
    # tokens, 0.68 with standardized ones (a wrong sign or an ignored probe gives r <= 0)
    assert np.corrcoef(after - before, age)[0, 1] > 0.5
    assert roc_auc_score(y, margins(model, rows, codes, card)) > 0.9  # the two-answer task's too, beside it


def test_a_regression_probe_needs_varied_targets():
    from fmrilm.train.probe_init import fit_ridge_probe

    with pytest.raises(FmriInputError, match="different values"):
        fit_ridge_probe(np.zeros((5, 3)), np.full(5, 12.0), None)


def test_the_teacher_ranks_training_scans_by_their_planted_answer(setting):
    from fmrilm.train.probe_init import teacher_probabilities

    model, rows, codes, card, y = setting
    X = np.stack([codes.connectome[r["scan_id"]].values.reshape(-1) for r in rows])
    groups = np.asarray([r["site"] for r in rows])
    q, auc = teacher_probabilities(X, y, groups, C=1.0, seed=0)
    assert q is not None and q.shape == (N_SCANS,) and np.all((q > 0) & (q < 1))
    assert auc > 0.8 and roc_auc_score(y, q) > 0.9
    # Platt-scaled: confident where the probe is right out of fold, not the raw logits' near-0.5 everywhere
    assert q.max() - q.min() > 0.5


def taught_examples(model, rows, codes, probe):
    from fmrilm.train.stage3 import attach_teachers, build_examples

    examples, _ = build_examples(model.processor, rows, codes)
    return examples, attach_teachers(model.processor, examples, [probe])


def test_distillation_adds_its_term_to_the_taught_examples_only(setting):
    import copy

    import torch
    from fmrilm.train.probe_init import warm_start_summary

    from fmrilm.model.scoring import answer_ids

    model, rows, codes, card, y = setting
    model = copy.deepcopy(model)
    (probe,) = warm_start_summary(model, [(rows, codes)], [card], seed=0, rounds=0, teachers=True)
    assert probe.teacher is not None and len(probe.teacher) == N_SCANS
    assert probe.summary()["teacher_scans"] == N_SCANS
    examples, taught = taught_examples(model, rows, codes, probe)
    assert taught == {"planted": N_SCANS}
    firsts = tuple(answer_ids(model.processor, o)[0] for o in card.options)
    assert all(e["answer_options"] == firsts for e in examples)
    part = examples[:4]
    part[1] = {k: v for k, v in part[1].items() if k not in ("teacher", "answer_options")}  # one untaught
    batch = model.processor.pad(
        [{k: e[k] for k in ("input_ids", "labels", "connectome_values")} for e in part]
    )
    options = torch.as_tensor([e.get("answer_options", (-1, -1)) for e in part])
    teacher = torch.as_tensor([e.get("teacher", float("nan")) for e in part])
    model.llm.eval()
    with torch.no_grad():
        plain = model(**batch, loss_reduction="example")
        out = model(
            **batch, loss_reduction="example", answer_options=options, teacher=teacher, teacher_weight=2.0
        )
        full = model.llm(inputs_embeds=model.embed_inputs(batch["input_ids"], batch.get("connectome_values")))
    # the margin is the options' first-token logit difference where the answer starts
    for i in range(len(part)):
        start = int((batch["labels"][i] != -100).nonzero()[0, 0]) - 1
        want = full.logits[i, start, firsts[1]] - full.logits[i, start, firsts[0]]
        if i != 1:
            assert float(out.margins[i]) == pytest.approx(float(want), abs=1e-3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        out.margins, teacher.nan_to_num(0.5), reduction="none"
    )
    added = out.example_losses - plain.example_losses
    assert float(added[1]) == 0.0
    keep = [0, 2, 3]
    assert torch.allclose(added[keep], 2.0 * bce[keep], atol=1e-4)


def test_distillation_moves_the_answer_towards_the_teacher(setting):
    import copy

    import torch
    from fmrilm.train.probe_init import warm_start_summary

    model, rows, codes, card, y = setting
    model = copy.deepcopy(model)
    (probe,) = warm_start_summary(model, [(rows, codes)], [card], seed=0, rounds=0, teachers=True)
    examples, _ = taught_examples(model, rows, codes, probe)
    teacher = np.asarray([e["teacher"] for e in examples])

    def batch_of(part):
        batch = model.processor.pad(
            [{k: e[k] for k in ("input_ids", "labels", "connectome_values")} for e in part]
        )
        options = torch.as_tensor([e["answer_options"] for e in part])
        return {**batch, "answer_options": options, "teacher": torch.as_tensor([e["teacher"] for e in part])}

    def gap() -> float:
        """The distillation term alone, over every example: how far the answers are from the teacher."""
        model.llm.eval()
        with torch.no_grad():
            first = model(**batch_of(examples), loss_reduction="example").margins
        model.llm.train()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(first, torch.as_tensor(teacher).float())
        return float(loss)

    before = gap()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    model.llm.train()
    for step in range(36):  # six passes: 24 left the gap at 0.52 of where it began with standardized tokens
        part = examples[(step * 8) % N_SCANS :][:8]
        out = model(**batch_of(part), loss_reduction="example", teacher_weight=5.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert gap() < 0.5 * before


def test_a_resumed_run_gets_the_same_teachers_without_touching_the_model(setting):
    import copy

    import torch
    from fmrilm.train.probe_init import probe_teachers, warm_start_summary

    model, rows, codes, card, y = setting
    model = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (fresh,) = probe_teachers(model, [(rows, codes)], [card], seed=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    (warm,) = warm_start_summary(
        copy.deepcopy(model), [(rows, codes)], [card], seed=0, rounds=0, teachers=True
    )
    assert fresh.teacher == warm.teacher and len(fresh.teacher) == N_SCANS
    np.testing.assert_allclose(fresh.weights, warm.weights)


def test_two_instruction_sets_sharing_scan_ids_keep_their_own_teachers(setting):
    """Scan ids are unique within a cohort only: a second set whose scans share the first's ids (their
    components mirrored, so its answers flip) must not lend its teacher to the first set's examples."""
    from dataclasses import replace

    from fmrilm.train.probe_init import probe_teachers
    from fmrilm.train.stage3 import EncodedScans, attach_teachers, build_examples

    model, rows, codes, card, y = setting
    mirrored = EncodedScans(codes)
    mirrored.connectome = {k: replace(v, values=-v.values) for k, v in codes.connectome.items()}
    flip = {"yes": "no", "no": "yes"}
    flipped = []
    for r in rows:
        answer = flip[r["answer"]]
        messages = [*r["messages"][:1], {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        flipped.append({**r, "answer": answer, "messages": messages})
    (probe,) = probe_teachers(model, [(rows, codes), (flipped, mirrored)], [card], seed=0)
    assert probe.teacher is not None and len(probe.teacher) == 2 * N_SCANS
    examples = []
    for source, (set_rows, set_codes) in enumerate([(rows, codes), (flipped, mirrored)]):
        built, _ = build_examples(model.processor, set_rows, set_codes)
        examples += [{**e, "source": source} for e in built]
    assert attach_teachers(model.processor, examples, [probe]) == {"planted": 2 * N_SCANS}
    for source, set_rows in enumerate([rows, flipped]):
        taught = [e["teacher"] for e in examples if e["source"] == source]
        labels = [r["answer"] == "yes" for r in set_rows]
        assert roc_auc_score(labels, taught) > 0.9  # each set's own teacher, which reads its own answers


@pytest.mark.parametrize("binned", [False, True])
def test_the_margin_gradient_of_many_prompts_is_the_mean_of_each_prompts(setting, binned, monkeypatch):
    """Prompts of different lengths run together, left-padded and in chunks: the gradient is the same as one
    prompt at a time (for two answers, and for the expectation over multi-token bins)."""
    import fmrilm.train.probe_init as probe_init
    from fmrilm.train.stage3 import resolve_messages

    model, rows, codes, card, _ = setting
    messages = [resolve_messages(r["messages"], codes) for r in rows[:5]]
    messages[1][0]["content"][1]["text"] = "Is this scan, as far as you can tell from its summary, yes or no?"
    options, values = (BINS, [float(b) for b in BINS]) if binned else (card.options, None)
    one_by_one = np.mean([probe_init.margin_gradient(model, [m], options, values) for m in messages], axis=0)
    monkeypatch.setattr(probe_init, "GRADIENT_TOKENS", 140)  # two prompts a chunk (the longest has 69 tokens)
    together = probe_init.margin_gradient(model, messages, options, values)
    assert np.linalg.norm(one_by_one) > 0
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-6 * np.abs(one_by_one).max())
