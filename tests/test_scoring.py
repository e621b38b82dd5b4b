"""Scored answers: real probabilities over the allowed answers only, KV-cache scoring exact, no default class."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fmrilm.instructions.spec import _norm, load_task

from fmrilm.atlas import Atlas
from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError
from fmrilm.model.modeling import FmriLM
from fmrilm.model.scoring import (
    PROB_PREFIX,
    DigitsOnly,
    TaskCard,
    answer_ids,
    canonical_value,
    score_options,
    store_tasks,
)
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.scan import Scan

K, CODEBOOK = 4, 16
QUESTIONS = ["Which hand does this participant write with?", "Name the preferred hand."]
HAND = TaskCard(
    name="hand",
    type="multiclass",
    options=["left", "right hand", "typical development"],  # different token lengths on purpose
    questions=QUESTIONS,
    instruction="Answer with one of: left, right hand, typical development.",
    target="hand",
    mapping={"l": "left", "r": "right hand", "td": "typical development"},
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def build(arch: str = "llama") -> FmriLM:
    llm, tok = tiny_causal_lm(arch, initializer_range=0.3)  # wide logits: probabilities far from uniform
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    return FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok).eval()


@pytest.fixture(scope="module")
def model() -> FmriLM:
    return build("llama")


def naive_logprob(model: FmriLM, scan, card: TaskCard, answer: str) -> float:
    """log P(answer tokens | prompt) from one full forward over prompt + answer, without any cache."""
    prompt = model.processor([card.messages()], [[scan]])["input_ids"][0].tolist()
    ids = answer_ids(model.processor, answer)
    with torch.no_grad():
        logp = torch.log_softmax(model.llm(input_ids=torch.tensor([prompt + ids])).logits[0].float(), -1)
    return float(sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(ids)))


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_probabilities_are_the_softmax_of_each_allowed_answer_exact_log_probability(arch):
    """Only the allowed strings are scored, with the KV-cached batch equal to a plain forward per answer,
    for prompts of different lengths (left padding) and both normalisations."""
    model = build(arch)
    scans = [random_scan(32 + 32 * i, seed=i) for i in range(3)]  # 2, 4 and 6 windows
    lengths = np.asarray([len(answer_ids(model.processor, o)) for o in HAND.options])
    assert len(set(lengths)) > 1
    for normalize in ("sum", "mean"):
        probs = score_options(model, scans, HAND, normalize=normalize)
        for scan, row in zip(scans, probs, strict=True):
            exact = np.asarray([naive_logprob(model, scan, HAND, o) for o in HAND.options])
            if normalize == "mean":
                exact = exact / lengths
            expected = np.exp(exact - exact.max()) / np.exp(exact - exact.max()).sum()
            np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-6)
            assert row.sum() == pytest.approx(1.0)


def test_predict_returns_every_allowed_answer_and_nothing_else(model):
    store_tasks(model, [HAND])
    scan = random_scan(64)
    probs = model.predict(scan, "hand")
    assert list(probs) == HAND.options
    assert sum(probs.values()) == pytest.approx(1.0) and min(probs.values()) > 0
    sub = model.predict(scan, "hand", options=["typical development", "left"])
    assert list(sub) == ["typical development", "left"] and sum(sub.values()) == pytest.approx(1.0)
    # A subset renormalises the same scores: the ratio of two options does not change.
    assert sub["left"] / sub["typical development"] == pytest.approx(
        probs["left"] / probs["typical development"], rel=1e-4
    )
    two_questions = model.predict(scan, "hand", paraphrases=2)
    assert sum(two_questions.values()) == pytest.approx(1.0)


def test_no_answer_is_mapped_to_a_default(model):
    store_tasks(model, [HAND])
    scan = random_scan(64)
    with pytest.raises(FmriInputError, match="Unknown task 'handedness'.*hand"):
        model.predict(scan, "handedness")
    with pytest.raises(FmriInputError, match="'ambidextrous'.*not among the answers"):
        model.predict(scan, "hand", options=["left", "ambidextrous"])
    with pytest.raises(FmriInputError, match="at least two"):
        model.predict(scan, "hand", options=["left"])
    with pytest.raises(FmriInputError, match="open-ended"):
        model.predict(scan, load_task("describe"))
    # Diagnosis has two codings (autism / patient): which answers to score must be said, never guessed.
    with pytest.raises(FmriInputError, match="several answer codings"):
        model.predict(scan, load_task("diagnosis"))
    probs = model.predict(scan, load_task("diagnosis"), options=["patient", "control"])
    assert set(probs) == {"patient", "control"}
    with pytest.raises(FmriInputError, match="no answer"):
        HAND.label_of("ambidextrous", subject="sub-1")


def test_regression_expectation_over_bins_and_digits_constrained_decoding(model):
    age = load_task("age")
    scan = random_scan(64)
    bins = model.predict(scan, age)
    assert bins["method"] == "bins"
    assert list(bins["probabilities"]) == age.number.bin_answers()
    p = np.asarray(list(bins["probabilities"].values()))
    assert p.sum() == pytest.approx(1.0)
    assert bins["value"] == pytest.approx(float(p @ np.asarray(age.number.bin_values)))
    digits = model.predict(scan, age, method="digits")
    assert digits["method"] == "digits"
    assert re.fullmatch(r"\d{1,3}", digits["text"]) and digits["value"] == float(digits["text"])


def test_digits_constraint_allows_only_tokens_that_keep_a_valid_number(model):
    tok = model.processor.tokenizer
    end = tok.eos_token_id
    constraint = DigitsOnly(tok, prompt_length=1, end_ids=[end], decimals=1, max_int_digits=3)

    def allowed(text: str) -> set[str]:
        ids = [0] + tok(text, add_special_tokens=False)["input_ids"] if text else [0]
        scores = constraint(torch.tensor([ids]), torch.zeros(1, len(tok)))
        keep = torch.isfinite(scores[0]).nonzero()[:, 0].tolist()
        return {"<end>" if i == end else tok.decode([i]) for i in keep}

    start = allowed("")
    assert "<end>" not in start and "7" in start and "." not in start and "a" not in start
    assert {"<end>", ".", "7"} <= allowed("12")
    assert "<end>" not in allowed("12.") and "5" in allowed("12.")
    assert allowed("12.5") == {"<end>"}  # one decimal allowed, then only the end
    assert "4" not in allowed("123")  # at most 3 digits before the point

    constraint = DigitsOnly(
        tok, prompt_length=1, end_ids=[end], decimals=0, max_int_digits=2, bounds=(18, 65)
    )
    start = allowed("")
    assert {"1", "6"} <= start and not {"7", "9", "-", "."} & start  # 7x and 9x cannot land in 18..65
    assert "<end>" not in allowed("6") and "5" in allowed("6") and "6" not in allowed("6")
    assert allowed("65") == {"<end>"}


def test_predict_cohort_table(model):
    rng = np.random.default_rng(0)
    atlas = Atlas(
        name="toy",
        labels=[f"r{i}" for i in range(5)],
        coords=rng.normal(size=(5, 3)) * 30,
        networks=["A"] * 5,
    )
    scans = [
        Scan(
            rng.normal(size=(40, 5)).astype(np.float32),
            tr=2.0,
            atlas=atlas,
            scan_id=f"s{i}",
            subject_id=f"p{i}",
        )
        for i in range(5)
    ]
    cohort = Cohort.from_scans(scans, [{"hand": h} for h in ["L", "R", "TD", None, "R"]], atlas=atlas)
    store_tasks(model, [HAND])
    table = model.predict_cohort(cohort, "hand", [4, 0, 2, 3], batch_size=3)
    assert table["index"].tolist() == [4, 0, 2, 3]
    assert table["label"].tolist()[:3] == ["right hand", "left", "typical development"]
    assert table["label"].isna().tolist() == [False, False, False, True]  # missing truth stays missing
    probs = table[[PROB_PREFIX + o for o in HAND.options]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert table["prediction"].tolist() == [HAND.options[j] for j in probs.argmax(1)]
    single = model.predict(cohort.scan(2), "hand")
    np.testing.assert_allclose(
        probs[2], list(single.values()), rtol=1e-4, atol=1e-6
    )  # batching changes nothing
    bad = Cohort.from_scans(scans[:2], [{"hand": "L"}, {"hand": "both"}], atlas=atlas)
    with pytest.raises(FmriInputError, match="'both'"):
        model.predict_cohort(bad, "hand")


@pytest.mark.parametrize("value", ["Autism", " typical  Development ", 1.0, 2.5, True, 3, "M"])
def test_cohort_values_are_canonicalised_as_task_maps_are(value):
    assert canonical_value(value) == _norm(value)


def _aged_cohort() -> Cohort:
    rng = np.random.default_rng(1)
    atlas = Atlas(
        name="toy",
        labels=[f"r{i}" for i in range(5)],
        coords=rng.normal(size=(5, 3)) * 30,
        networks=["A"] * 5,
    )
    scans = [
        Scan(rng.normal(size=(40, 5)).astype(np.float32), tr=2.0, atlas=atlas, scan_id=f"s{i}", subject_id=f"p{i}",
             site=f"site-{i % 2}")
        for i in range(3)
    ]  # fmt: skip
    return Cohort.from_scans(scans, [{"age": a} for a in (9.0, 33.0, None)], atlas=atlas)


def test_predict_cohort_for_a_regression_by_bins_or_by_digits(model):
    cohort = _aged_cohort()
    age = load_task("age")
    card = TaskCard.from_spec(age)
    bins = model.predict_cohort(cohort, age, method="bins")
    assert bins["site"].tolist() == ["site-0", "site-1", "site-0"] and bins["subject_id"].tolist() == [
        "p0",
        "p1",
        "p2",
    ]
    assert bins["label"].tolist()[:2] == [9.0, 33.0] and bins["label"].isna().tolist()[2]
    probs = bins[[PROB_PREFIX + o for o in card.options]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(bins["prediction"], probs @ np.asarray(card.bin_values()), rtol=1e-6)
    assert set(bins["method"]) == {"bins"}
    digits = model.predict_cohort(cohort, age, [1], method="digits")
    assert set(digits["method"]) == {"digits"} and not [
        c for c in digits.columns if c.startswith(PROB_PREFIX)
    ]
    value = digits["prediction"].iloc[0]
    assert value == int(value) and 0 <= value <= 120  # no decimals, inside the valid range
    with pytest.raises(FmriInputError, match="Unknown regression method 'median'"):
        model.predict_cohort(cohort, age, method="median")


def test_the_digits_constraint_follows_the_tasks_number_format(model, monkeypatch):
    """decode_number builds its constraint from the card: its decimals, its valid range as bounds and as many
    integer digits as the range needs."""
    from fmrilm.model import scoring

    made = []

    class Spy(scoring.DigitsOnly):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(scoring, "DigitsOnly", Spy)
    card = TaskCard(
        name="score", type="regression", options=["1", "2"], questions=["How much?"],
        number={"decimals": 1, "valid_range": [-12.5, 3.0], "bins": [0, 1, 2]},
    )  # fmt: skip
    value, text = scoring.decode_number(model, random_scan(64), card)
    assert made[-1] == {"decimals": 1, "max_int_digits": 2, "bounds": [-12.5, 3.0]}
    assert -12.5 <= value <= 3.0 and re.fullmatch(r"-?\d{1,2}(\.\d)?", text)
    card.number = {"bins": [5, 10, 40]}  # no valid range: the bins' ends bound the answer
    scoring.decode_number(model, random_scan(64), card)
    assert made[-1] == {"decimals": 0, "max_int_digits": 2, "bounds": [5, 40]}
