"""`fmrilm.model.scoring`'s model-free parts on hand-made inputs: task cards (which answers are scored, how a
cohort value becomes the truth, the value of each regression bin) and the digits constraint's bounds.

No model is built (a few-token stand-in tokenizer serves `DigitsOnly`), so these run in about a second; they
are part of the fast test subset `make mutants` runs `fmrilm/model/scoring.py` against (tests/mutants.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fmrilm.instructions.spec import load_task

from fmrilm.errors import FmriInputError
from fmrilm.model.scoring import DigitsOnly, TaskCard, _end_ids, resolve_task


def _card(**kw) -> TaskCard:
    base = dict(
        name="t", type="multiclass", options=["a", "b", "c"], questions=["Q?"], instruction="Say a, b or c."
    )
    return TaskCard(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ task cards
def test_a_card_refuses_what_cannot_be_scored():
    with pytest.raises(
        FmriInputError, match="Task 't' is open-ended: only binary, multiclass and regression"
    ):
        _card(type="open-ended")
    with pytest.raises(FmriInputError, match=r"fewer than two answer options to score \(\['a'\]\)"):
        _card(options=["a"])
    with pytest.raises(FmriInputError, match="Task 't' has no question. Fix: give at least one question"):
        _card(questions=[])


def test_a_card_from_a_task_picks_the_coding_its_options_come_from():
    diagnosis = load_task("diagnosis")
    card = TaskCard.from_spec(diagnosis, options=["typical development", "autism"])
    assert card.options == ["typical development", "autism"] and card.source == "phenotype"
    assert card.mapping == {"autism": "autism", "control": "typical development"}
    assert card.label_of("Control") == "typical development" and card.label_of(" AUTISM ") == "autism"
    patient = TaskCard.from_spec(diagnosis, options=["patient", "control"])
    assert patient.label_of("control") == "control"
    with pytest.raises(FmriInputError, match=r"\['sick'\] is not among the answers of task 'diagnosis'"):
        TaskCard.from_spec(diagnosis, options=["sick", "control"])
    with pytest.raises(FmriInputError, match="several answer codings \\(autism, patient\\)"):
        TaskCard.from_spec(diagnosis)
    sex = TaskCard.from_spec(load_task("sex"))  # one coding: used without being named
    assert sex.mapping == {"male": "male", "female": "female"} and set(sex.options) == {"male", "female"}
    with pytest.raises(
        FmriInputError, match="is open-ended: its answer is free text.*Fix: generate it with model"
    ):
        TaskCard.from_spec(load_task("describe"))


def test_a_regression_card_scores_its_bins_and_nothing_else():
    age = load_task("age")
    card = TaskCard.from_spec(age)
    assert card.options == age.number.bin_answers() and card.number["valid_range"] == [0.0, 120.0]
    assert TaskCard.from_spec(age, options=age.number.bin_answers()).options == card.options
    with pytest.raises(FmriInputError, match=r"\['200'\] is not among the answers of task 'age'"):
        TaskCard.from_spec(age, options=["6", "200"])
    with pytest.raises(FmriInputError, match="is a regression: its scored answers are its bins"):
        card.restricted(["6", "9"])
    assert card.restricted(None) is card


def test_a_card_keeps_the_source_a_task_declares_and_defaults_to_phenotype():
    spec = SimpleNamespace(
        name="hand", type="binary", questions=["Which hand?"], value_maps=[], target="hand",
        options=lambda mapping: ["left", "right"], instruction_text=lambda options: "Answer left or right.",
    )  # fmt: skip
    assert TaskCard.from_spec(spec).source == "phenotype"
    spec.source = "descriptors"
    card = TaskCard.from_spec(spec)
    assert (
        card.source == "descriptors" and card.mapping is None and card.instruction == "Answer left or right."
    )


def test_each_bin_is_worth_its_stated_value_or_its_midpoint():
    assert _card(type="regression", options=["1", "2"], number={"bin_values": [1, 2.5]}).bin_values() == [
        1.0,
        2.5,
    ]
    assert _card(type="regression", options=["x", "y"], number={"bins": [0, 10, 30]}).bin_values() == [
        5.0,
        20.0,
    ]
    assert _card(type="regression", options=["x", "y"], number={"bins": [4, 8]}).bin_values() == [6.0]
    assert _card(type="regression", options=["3", "7.5"], number={}).bin_values() == [3.0, 7.5]


def test_the_truth_of_a_cohort_value():
    number = _card(type="regression", options=["1", "2"], number={"valid_range": [0, 100]})
    assert number.label_of("42") == 42.0 and number.label_of(100) == 100.0
    for missing in (None, float("nan"), "abc", 101, -1, float("inf")):
        assert number.label_of(missing) is None, missing
    plain = _card(options=["left", "right hand"])
    assert plain.label_of("right   hand") == "right hand"
    with pytest.raises(FmriInputError, match="value 'both' is not one of its answers") as err:
        plain.label_of("both", subject="sub-3")
    assert err.value.subject == "sub-3"


def test_subsets_name_every_answer_outside_the_task():
    card = _card()
    assert card.restricted(["c", "a", "c"]).options == ["c", "a"]
    with pytest.raises(FmriInputError, match=r"\['x'\] is not among"):
        card.restricted(["a", "x"])
    with pytest.raises(
        FmriInputError, match=r"\['x', 'y'\] are not among the answers of task 't' \(\['a', 'b', 'c'\]\)"
    ):
        card.restricted(["x", "y"])


def test_resolve_task_refuses_anything_else():
    model = SimpleNamespace(processor=SimpleNamespace(config=SimpleNamespace(extra={})))
    with pytest.raises(FmriInputError, match="Unknown task 'hand' for this model \\(it stores: none\\)"):
        resolve_task(model, "hand")
    with pytest.raises(FmriInputError, match="Cannot score task 3"):
        resolve_task(model, 3)
    card = _card()
    assert resolve_task(model, card, ["a", "b"]).options == ["a", "b"]


# ----------------------------------------------------------------------------------------- digits constraint
class _Tokens:
    """A stand-in tokenizer: one token per digit, '.', '-', ' ', two words and an end token (id 15)."""

    vocab = [*"0123456789", ".", "-", " ", "ab", "7a", "</s>"]
    eos_token_id = 15

    def __len__(self) -> int:
        return len(self.vocab)

    def batch_decode(self, ids):
        return [self.vocab[i[0]] for i in ids]


def _allowed(constraint: DigitsOnly, text: str) -> set[str]:
    tok = _Tokens()
    ids = [tok.vocab.index(c) for c in text]
    scores = constraint(torch.tensor([[0, *ids]]), torch.zeros(1, len(tok)))
    return {
        "<end>" if i == tok.eos_token_id else tok.vocab[i]
        for i in torch.isfinite(scores[0]).nonzero()[:, 0].tolist()
    }


def test_only_tokens_made_of_number_characters_are_candidates():
    constraint = DigitsOnly(_Tokens(), prompt_length=1, end_ids=[15], decimals=1, max_int_digits=3)
    assert constraint.candidates == list(range(13))  # "ab" and "7a" are never a number's part
    assert "-" in _allowed(constraint, "") and {"<end>", "."} <= _allowed(constraint, "12")


def test_negative_bounds_steer_the_sign():
    constraint = DigitsOnly(_Tokens(), 1, [15], decimals=0, max_int_digits=2, bounds=(-20, -5))
    start = _allowed(constraint, "")
    assert "-" in start and not set("0123456789") & start  # only a negative number lands in -20..-5
    after = _allowed(constraint, "-")
    assert {"1", "2", "5", "9"} <= after and not {"3", "4"} & after  # -3x and -4x are below -20
    assert _allowed(constraint, "-1") == set("0123456789")  # -1 is outside, -10..-19 inside
    assert _allowed(constraint, "-12") == {"<end>"}


def test_a_digit_that_can_only_end_outside_the_bounds_is_refused():
    """With one digit allowed and bounds 5..9, '4' cannot become a valid answer, so it is never started (the
    fallback would otherwise end the answer at 4, outside the task's range)."""
    constraint = DigitsOnly(_Tokens(), 1, [15], decimals=0, max_int_digits=1, bounds=(5, 9))
    assert _allowed(constraint, "") == set(" 56789")  # leading spaces are allowed
    two = DigitsOnly(_Tokens(), 1, [15], decimals=0, max_int_digits=2, bounds=(70, 79))
    assert _allowed(two, "") == {" ", "7"}
    assert _allowed(two, "7") == set("0123456789")
    decimals = DigitsOnly(_Tokens(), 1, [15], decimals=1, max_int_digits=2, bounds=(13, 20))
    assert _allowed(decimals, "1") == set("3456789")  # 12.x stays below 13


def test_the_end_tokens_are_the_generation_configs_and_the_tokenizers():
    def model(eos, tok_eos):
        return SimpleNamespace(
            llm=SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos)),
            processor=SimpleNamespace(tokenizer=SimpleNamespace(eos_token_id=tok_eos)),
        )

    assert _end_ids(model([3, 4], 4)) == [3, 4]
    assert _end_ids(model(7, 2)) == [7, 2]
    assert _end_ids(model(None, 2)) == [2] and _end_ids(model(None, None)) == []


def test_a_task_the_model_stores_is_scored_with_the_stored_answers():
    """A task spec whose name the model stores is scored with the answers the model was trained with (here one
    of diagnosis's two codings), so the caller need not name them; explicit options still win."""
    from fmrilm.model.scoring import store_tasks

    model = SimpleNamespace(processor=SimpleNamespace(config=SimpleNamespace(extra={})))
    diagnosis = load_task("diagnosis")
    store_tasks(model, [TaskCard.from_spec(diagnosis, options=["typical development", "autism"])])
    card = resolve_task(model, diagnosis)
    assert (
        card.options == ["typical development", "autism"]
        and card.label_of("control") == "typical development"
    )
    assert resolve_task(model, "diagnosis").options == card.options
    assert resolve_task(model, diagnosis, ["patient", "control"]).options == ["patient", "control"]
