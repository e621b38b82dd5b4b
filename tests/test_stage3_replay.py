"""Stage 3 text replay (`--replay-weight`, `--replay-file`, `--replay-answers`): replay pairs take the asked share
of every batch, the phenotype tasks keep their balanced shares in the rest, replay examples learn only their
answer, and a run reports the "replay" task in its metrics."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from fmrilm.eval.bench_retention import QUESTIONS
from fmrilm.train.replay import REPLAY_PAIRS, own_answers, whole_sentences
from fmrilm.train.stage3 import LoopConfig, balanced_weights, replay_examples, step_examples

from fmrilm.cli import main as cli_main
from fmrilm.model.adapters import LoraSettings
from fmrilm.model.modeling import FmriLM
from fmrilm.model.processing import IGNORE_INDEX
from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.splits import save_split
from tests.test_stage3 import toy_cohort  # the same noise cohort (it also has a "hand" column)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TASKS = [
    {"task": task, "answer": answer}
    for task, answer, n in (("diagnosis", "autism", 30), ("diagnosis", "typical", 90), ("sex", "female", 5))
    + (("sex", "male", 25),)
    for _ in range(n)
]
REPLAY = [{"task": "replay", "answer": "", "pair": i} for i in range(7)]


def draw(weight: float, steps: int = 600, batch_size: int = 16, balance: bool = True):
    cfg = LoopConfig(batch_size=batch_size, seed=3, balance=balance)
    weights = balanced_weights(TASKS) if balance else None
    replay = REPLAY if weight > 0 else []
    return [step_examples(TASKS, replay, weights, cfg, weight, s) for s in range(steps)]


@pytest.mark.parametrize("weight", [0.25, 0.1])
def test_replay_takes_its_share_of_every_batch(weight):
    batches = draw(weight)
    per_step = [sum(e["task"] == "replay" for e in b) for b in batches]
    assert all(len(b) == 16 for b in batches)
    assert set(per_step) <= {int(np.floor(16 * weight)), int(np.ceil(16 * weight))}  # spread over the steps
    assert sum(per_step) == int(np.floor(weight * 16 * len(batches)))  # the asked share, to one row
    seen = Counter(e["pair"] for b in batches for e in b if e["task"] == "replay")
    assert len(seen) == len(REPLAY) and max(seen.values()) - min(seen.values()) <= 1  # every pair as often
    assert [e for e in batches[5]] == draw(weight, steps=6)[5]  # a function of (seed, step): resumable


def test_replay_leaves_the_phenotype_class_balance_as_it_was():
    def shares(batches) -> dict[tuple[str, str], float]:
        rows = [(e["task"], e["answer"]) for b in batches for e in b if e["task"] != "replay"]
        return {k: v / len(rows) for k, v in Counter(rows).items()}

    without, with_replay = shares(draw(0.0)), shares(draw(0.25))
    expected = {("diagnosis", "autism"): 1 / 4, ("diagnosis", "typical"): 1 / 4}
    expected |= {("sex", "female"): 1 / 4, ("sex", "male"): 1 / 4}  # both tasks, every answer, equal
    for key, share in expected.items():
        assert without[key] == pytest.approx(share, abs=0.02)
        assert with_replay[key] == pytest.approx(share, abs=0.02), key


def test_unbalanced_batches_still_see_every_task_row_equally_often():
    batches = draw(0.25, steps=100, balance=False)
    rows = Counter(id(e) for b in batches for e in b if e["task"] != "replay")
    assert sum(rows.values()) == 100 * 12
    assert len(rows) == len(TASKS) and set(rows.values()) == {8}  # 1200 rows over 150 examples: 8 each


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny fmrilm model saved without adapters."""
    path = tmp_path_factory.mktemp("replay") / "base"
    llm, tok = tiny_causal_lm("llama", initializer_range=0.5)
    FmriLM.from_base(
        llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=16)
    ).save_pretrained(path)
    return path


def test_replay_examples_learn_the_answer_only(base):
    processor = FmriLM.from_pretrained(base).processor
    (example,) = replay_examples(processor, [("What is 2 plus 2?", "2 plus 2 equals 4.")])
    ids, labels = example["input_ids"], example["labels"]
    learned = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert learned == list(range(learned[0], learned[-1] + 1))
    assert processor.tokenizer.decode([ids[i] for i in learned]).startswith("2 plus 2 equals 4.")
    assert "What is 2 plus 2?" in processor.tokenizer.decode(ids[: learned[0]])
    assert example["task"] == "replay"


def test_no_replay_prompt_is_a_benchmark_question():
    assert not {q for _, q in QUESTIONS} & {p for p, _ in REPLAY_PAIRS}


def test_a_run_trains_and_reports_the_replay_task(tmp_path, base):
    cohort = toy_cohort(12)
    cohort.save(tmp_path / "cohort")
    save_split(
        tmp_path / "cohort", "s", {"train": list(range(8)), "val": [8, 9], "test": [10, 11]}, kind="manual"
    )
    build = ["instructions", "build", str(tmp_path / "cohort"), "--tasks", "sex", "--split", "s"]
    assert cli_main([*build, "--out", str(tmp_path / "instr")]) == 0
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"prompt": "Say hi.", "response": "Hi!"}) + "\n")
    train = ["train", "instruct", "--model", str(base), "--instructions", str(tmp_path / "instr")]
    train += ["--batch-size", "4", "--steps", "4", "--eval-every", "2", "--log-every", "2", "--no-progress"]
    run = tmp_path / "run"
    assert cli_main([*train, "--out", str(run), "--replay-weight", "0.5", "--replay-file", str(extra)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert all("loss_replay" in e and "loss_sex" in e for e in metrics["train"])
    assert all("val_loss_replay" in e for e in metrics["val"])
    replay = json.loads((run / "data.json").read_text())["replay"]
    n_pairs = len(REPLAY_PAIRS) + 1
    assert replay["val_examples"] == n_pairs // 10 and replay["train_examples"] == n_pairs - n_pairs // 10
    assert json.loads((run / "train_config.json").read_text())["replay_weight"] == 0.5

    # one clear error each: a share that is not one, a file that would never be used, a missing file
    for bad in (["--replay-weight", "1"], ["--replay-weight", "0", "--replay-file", str(extra)]):
        assert cli_main([*train, "--out", str(tmp_path / "bad"), *bad]) == 2
    missing = ["--replay-weight", "0.2", "--replay-file", str(tmp_path / "none.jsonl")]
    assert cli_main([*train, "--out", str(tmp_path / "bad"), *missing]) == 2
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_own_answers_are_the_base_llms_with_the_adapters_off(base, monkeypatch):
    plain = FmriLM.from_pretrained(base)
    tuned = FmriLM.from_pretrained(base)
    tuned.add_adapters(LoraSettings(r=2))
    with torch.no_grad():
        for name, p in tuned.llm.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)

    def generated(model, call) -> list[list[int]]:
        ids, original = [], model.generate

        def recording(**kwargs):
            out = original(**kwargs)
            ids.append(out[0, kwargs["input_ids"].shape[1] :].tolist())
            return out

        monkeypatch.setattr(model, "generate", recording)
        call()
        monkeypatch.setattr(model, "generate", original)
        return ids

    prompts = ["Hello there.", "Name a colour."]
    base_ids = generated(plain, lambda: own_answers(plain, prompts, max_new_tokens=6))
    tuned.llm.train()  # as Stage 3 holds it
    tuned_ids = generated(tuned, lambda: own_answers(tuned, prompts, max_new_tokens=6))
    assert tuned_ids == base_ids  # the adapters are off while it answers
    assert tuned.llm.training  # and the training mode is given back
    tuned.llm.eval()
    on = generated(
        tuned, lambda: [tuned.reply([{"role": "user", "content": p}], max_new_tokens=6) for p in prompts]
    )
    assert on != base_ids  # (with them on it would answer otherwise)
    brain = set(plain.processor.ids.all_ids)
    assert not any(set(ids) & brain for ids in base_ids)  # words, as the chat writes


def test_an_unfinished_answer_is_kept_up_to_its_last_sentence():
    assert whole_sentences("Paris is the capital. It is large and", finished=False) == "Paris is the capital."
    assert whole_sentences("Paris is the capital. It is large and", finished=True) == (
        "Paris is the capital. It is large and"
    )
    assert whole_sentences("no sentence ends here", finished=False) is None
