"""Behaviour, not types: a forecast continues the END of a scan, and averaging over question paraphrases
really averages over different questions."""

from __future__ import annotations

import numpy as np
import pytest

from fmrilm.model.modeling import FmriLM
from fmrilm.model.scoring import PROB_PREFIX, TaskCard, score_options, store_tasks
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer

K, CODEBOOK = 4, 16
MEAN = "mean"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model() -> FmriLM:
    llm, tok = tiny_causal_lm("llama", initializer_range=0.3)  # wide logits: answers far from uniform
    return FmriLM.from_base(
        llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    ).eval()


# ----------------------------------------------------------------------------------------------- forecasting
def context_codes() -> np.ndarray:
    """Six windows whose codes tell them apart: window w holds codes 2w and 2w + 1 (so early and late windows
    share no code)."""
    return np.asarray([[2 * w, 2 * w + 1, 2 * w, 2 * w + 1] for w in range(6)], dtype=np.int64)


def prompted_codes(model: FmriLM, monkeypatch, **kwargs) -> tuple[list[np.ndarray], np.ndarray]:
    """Run `forecast_codes` and return the brain codes of each step's prompt (the generation is real)."""
    prompts: list[np.ndarray] = []
    real = model.generate
    ids = model.processor.ids

    def spy(**gen_kwargs):
        input_ids = gen_kwargs["input_ids"][0].cpu().numpy()
        brain = input_ids[(input_ids >= ids.first_code_id) & (input_ids < ids.first_code_id + CODEBOOK)]
        prompts.append(ids.codes_from_ids(brain).reshape(-1, K))
        return real(**gen_kwargs)

    monkeypatch.setattr(model, "generate", spy)
    out = model.forecast_codes(**kwargs)
    monkeypatch.undo()
    return prompts, out


def test_forecast_prompts_with_the_last_context_windows(model, monkeypatch):
    codes = context_codes()
    prompts, out = prompted_codes(model, monkeypatch, scan=codes, windows=2, context_windows=2)
    assert out.shape == (2, K) and ((out >= 0) & (out < CODEBOOK)).all()
    np.testing.assert_array_equal(prompts[0], codes[-2:])  # the end of the scan, not its start
    # the next step slides on: the last real window, then the window just generated
    np.testing.assert_array_equal(prompts[1], np.concatenate([codes[-1:], out[:1]]))
    # so the forecast is the one of the last two windows alone
    np.testing.assert_array_equal(model.forecast_codes(codes[-2:], 2, context_windows=2), out)


def test_forecast_default_context_is_the_trained_one_taken_from_the_end(model, monkeypatch):
    codes = context_codes()
    config = model.processor.config
    before = config.forecast_context_windows
    config.forecast_context_windows = 3
    try:
        prompts, _ = prompted_codes(model, monkeypatch, scan=codes, windows=1)
    finally:
        config.forecast_context_windows = before
    np.testing.assert_array_equal(prompts[0], codes[-3:])
    prompts, _ = prompted_codes(model, monkeypatch, scan=codes, windows=1)  # no trained length: every window
    np.testing.assert_array_equal(prompts[0], codes)


def test_forecast_of_a_scan_continues_its_last_windows(model, monkeypatch):
    """From a real scan: the prompt holds the codes of the scan's LAST windows, as the tokenizer encodes them."""
    scan = random_scan(16 * 5, seed=3)  # five windows of 16 samples
    all_codes = model.processor.encode_scan(scan)
    assert len(all_codes) >= 4 and not np.array_equal(all_codes[:2], all_codes[-2:])
    prompts, _ = prompted_codes(model, monkeypatch, scan=scan, windows=1, context_windows=2)
    np.testing.assert_array_equal(prompts[0], all_codes[-2:])


# ------------------------------------------------------------------------------------------------ paraphrases
CARD = TaskCard(
    name="hand",
    type="multiclass",
    options=["left", "right hand", "typical development"],
    questions=["Which hand does this participant write with?", "Name the preferred hand, please, quickly."],
    instruction="Answer with one of: left, right hand, typical development.",
    target="hand",
    mapping={"l": "left", "r": "right hand", "td": "typical development"},
)


def test_paraphrase_averaging_averages_the_answers_to_different_questions(model):
    """Per-token normalisation: the untrained model's summed log-probabilities favour the one-token answer so
    strongly that both questions would give probability 1 to it."""
    scans = [random_scan(48, seed=i, scan_id=f"s{i}") for i in range(3)]
    first = score_options(model, scans, CARD, question=0, normalize=MEAN)
    second = score_options(model, scans, CARD, question=1, normalize=MEAN)
    assert np.abs(first - second).max() > 1e-3  # the two wordings give different answers here
    both = score_options(model, scans, CARD, paraphrases=2, normalize=MEAN)
    np.testing.assert_allclose(both, (first + second) / 2, rtol=1e-6, atol=1e-9)
    assert np.abs(both - first).max() > 5e-4  # so averaging changed the result
    np.testing.assert_allclose(both.sum(axis=1), 1.0)
    # starting from the second question: the second, then the first again (questions wrap around)
    again = score_options(model, scans, CARD, question=1, paraphrases=2, normalize=MEAN)
    np.testing.assert_allclose(again, both, atol=1e-9)


def test_paraphrases_reach_predict_and_predict_cohort(model):
    from fmrilm.atlas import Atlas
    from fmrilm.cohort import Cohort

    store_tasks(model, [CARD])
    scans = [random_scan(48, seed=i, scan_id=f"s{i}") for i in range(2)]
    expected = score_options(model, scans, CARD, paraphrases=2, normalize=MEAN)
    assert np.abs(expected - score_options(model, scans, CARD, normalize=MEAN)).max() > 1e-3
    single = model.predict(scans[0], "hand", paraphrases=2, normalize=MEAN)
    np.testing.assert_allclose(list(single.values()), expected[0], rtol=1e-5, atol=1e-7)
    cohort = Cohort.from_scans(scans, [{"hand": "L"}, {"hand": "R"}], atlas=Atlas.builtin("dosenbach160"))
    table = model.predict_cohort(cohort, "hand", paraphrases=2, normalize=MEAN)
    probs = table[[PROB_PREFIX + o for o in CARD.options]].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
