"""Stage 3 instruction tuning: answer-only labels, a YAML-only task end to end, resume, and a planted effect
learned from brain tokens and predicted on held-out subjects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from fmrilm.instructions.builder import build_instructions, save_instruction_set
from fmrilm.instructions.spec import MIN_QUESTIONS, load_task, load_tasks
from fmrilm.train.stage3 import InstructConfig, build_examples, encode_scans, train_instruct

from fmrilm.atlas import Atlas
from fmrilm.cli import main as cli_main
from fmrilm.cohort import Cohort, load_cohort
from fmrilm.model.modeling import FmriLM
from fmrilm.model.processing import IGNORE_INDEX
from fmrilm.model.scoring import answer_ids
from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.scan import Scan
from fmrilm.splits import save_split

K, CODEBOOK = 4, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def toy_cohort(n: int = 12) -> Cohort:
    rng = np.random.default_rng(0)
    atlas = Atlas(
        name="toy",
        labels=[f"r{i}" for i in range(6)],
        coords=rng.normal(size=(6, 3)) * 30,
        networks=["A"] * 6,
    )
    scans = [
        Scan(
            rng.normal(size=(48, 6)).astype(np.float32),
            tr=2.0,
            atlas=atlas,
            scan_id=f"scan{i}",
            subject_id=f"sub{i}",
        )
        for i in range(n)
    ]
    pheno = [{"hand": "L" if i % 2 else "R", "sex": "male" if i % 3 else "female"} for i in range(n)]
    return Cohort.from_scans(scans, pheno, atlas=atlas)


def write_task(tmp_path) -> str:
    """A task the package does not know: only a YAML file."""
    spec = {
        "name": "handedness",
        "type": "binary",
        "target": "hand",
        "questions": [f"Which hand does participant variant {i} write with?" for i in range(MIN_QUESTIONS)],
        "answers": {"maps": [{"name": "lr", "values": {"L": "left", "R": "right"}}]},
        "sentences": ["The participant is probably {answer}-handed."],
        "paradigms": ["brain", "open"],
    }
    path = tmp_path / "handedness.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def save_base(path, arch: str = "llama") -> str:
    llm, tok = tiny_causal_lm(arch, initializer_range=0.5)  # logits wide enough to learn with LoRA alone
    fmri_tok = tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K)
    FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # ChatML and a plain '### role:' template
def test_only_the_answer_tokens_are_learned(tmp_path, arch):
    cohort = toy_cohort(4)
    tasks = [load_task(write_task(tmp_path)), load_task("sex")]
    rows, _ = build_instructions(cohort, tasks, paradigms=["brain", "open"], seed=0)
    model = FmriLM.from_pretrained(save_base(tmp_path / "base", arch))
    proc = model.processor
    codes = encode_scans(cohort, proc.fmri_tokenizer)
    examples, skipped = build_examples(proc, rows, codes)
    assert len(examples) == len(rows) and not skipped
    brain = set(proc.ids.all_ids)
    for example, row in zip(examples, rows, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        learned = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
        assert learned == list(range(learned[0], learned[-1] + 1))  # one block: the assistant turn
        assert [ids[i] for i in learned] == [labels[i] for i in learned] == answer_ids(proc, row["answer"])
        assert proc.tokenizer.decode([ids[i] for i in learned]).startswith(row["answer"])
        prompt = ids[: learned[0]]
        n_windows = len(codes[row["scan_id"]])
        assert sum(t in brain for t in prompt) == proc.n_brain_tokens(n_windows)  # the scan is in the prompt
        assert not any(t in brain for t in ids[learned[0] :])  # and none of it is learned
        assert example["task"] == row["task"]


def test_yaml_only_task_trains_answers_and_resumes(tmp_path, monkeypatch):
    """Write a YAML, build a split instruction set, tune through the CLI, load, answer; resume gives the
    weights of an uninterrupted run; test rows are never trained on."""
    cohort = toy_cohort(12)
    cohort.save(tmp_path / "cohort")
    test_rows = [1, 4, 9]
    save_split(
        tmp_path / "cohort",
        "s",
        {"train": [i for i in range(12) if i not in test_rows], "test": test_rows},
        kind="manual",
    )
    task_file = write_task(tmp_path)
    base = save_base(tmp_path / "base")
    build = ["instructions", "build", str(tmp_path / "cohort"), "--tasks", f"{task_file},sex", "--split", "s"]
    assert cli_main([*build, "--out", str(tmp_path / "instr")]) == 0
    train = ["train", "instruct", "--model", base, "--instructions", str(tmp_path / "instr"), "--lr", "1e-2"]
    train += ["--batch-size", "4", "--save-every", "3", "--no-progress"]

    assert cli_main([*train, "--out", str(tmp_path / "run"), "--steps", "6"]) == 0
    model = FmriLM.from_pretrained(tmp_path / "run" / "model")
    probs = model.predict(cohort.scan(1), "handedness")  # a held-out subject, a task known only as YAML
    assert list(probs) == ["left", "right"] and sum(probs.values()) == pytest.approx(1.0)
    assert set(model.predict(cohort.scan(1), "sex")) == {"male", "female"}

    data = json.loads((tmp_path / "run" / "data.json").read_text())
    (info,) = data["sets"].values()
    rows_per_scan = info["rows"] // 12
    assert info["test_rows_left_out"] == rows_per_scan * len(test_rows)
    assert sum(info["train_examples"].values()) == rows_per_scan * (12 - len(test_rows))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"][-1]["step"] == 6 and "loss_handedness" in metrics["train"][-1]

    # Interrupted after the step-3 checkpoint, then resumed: same batches, optimizer, schedule and RNG, so
    # the same final adapters as the uninterrupted run.
    import fmrilm.train.stage3 as stage3

    batch_rows = stage3.balanced_batch_rows  # the default sampler (class-balanced)

    def crash_at_step_4(weights, batch_size, seed, step):
        if step == 4:
            raise KeyboardInterrupt
        return batch_rows(weights, batch_size, seed, step)

    monkeypatch.setattr(stage3, "balanced_batch_rows", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        cli_main([*train, "--out", str(tmp_path / "resumed"), "--steps", "6"])
    assert not (tmp_path / "resumed" / "model").exists()
    monkeypatch.setattr(stage3, "balanced_batch_rows", batch_rows)
    assert cli_main([*train, "--out", str(tmp_path / "resumed"), "--steps", "6", "--resume"]) == 0
    resumed = FmriLM.from_pretrained(tmp_path / "resumed" / "model")
    straight, again = dict(model.llm.named_parameters()), dict(resumed.llm.named_parameters())
    for name, param in straight.items():
        if "lora_" in name or "trainable_tokens" in name:
            torch.testing.assert_close(param, again[name])
    logged = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["train"]
    assert [e["step"] for e in logged] == [e["step"] for e in metrics["train"]]
    # Starting over in a folder that holds a run is refused (exit status 2, one sentence).
    assert cli_main([*train, "--out", str(tmp_path / "run"), "--steps", "6"]) == 2


def test_bf16_autocast_on_the_cpu_trains_float32_weights_that_load_and_answer(tmp_path, monkeypatch):
    """`--mixed-precision bf16` (the cpu demo's Stage 3 on a CPU that computes bf16): every training forward
    runs under CPU autocast, the adapters learn, and the saved model keeps float32 weights that load and
    answer with probabilities, as a float32 run's do."""
    cohort = toy_cohort(8)
    cohort.save(tmp_path / "cohort")
    base = save_base(tmp_path / "base")
    build = ["instructions", "build", str(tmp_path / "cohort"), "--tasks", "sex"]
    assert cli_main([*build, "--out", str(tmp_path / "instr")]) == 0
    autocast_seen = []
    forward = FmriLM.forward

    def spy(self, *args, **kwargs):
        if self.llm.training:
            autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FmriLM, "forward", spy)
    from fmrilm.train import probe_init

    warm_autocast = []

    def warm_spy(*args, **kwargs):  # the warm start measures the model as it will train: under bf16 too
        # (this base has no scan summary to warm-start; tests/test_probe_init.py runs it under bf16)
        warm_autocast.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return []

    monkeypatch.setattr(probe_init, "warm_start_summary", warm_spy)
    train = ["train", "instruct", "--model", base, "--instructions", str(tmp_path / "instr"), "--lr", "1e-2"]
    train += ["--batch-size", "4", "--steps", "3", "--no-progress"]
    train += ["--mixed-precision", "bf16", "--probe-init"]
    assert cli_main([*train, "--out", str(tmp_path / "run")]) == 0
    assert autocast_seen and all(autocast_seen)
    assert warm_autocast == [torch.bfloat16]
    tuned = FmriLM.from_pretrained(tmp_path / "run" / "model")
    learned = [p for n, p in tuned.llm.named_parameters() if "lora_B" in n]  # LoRA's B starts at zero
    assert learned and all(p.dtype == torch.float32 for p in learned)
    assert any(p.abs().sum() > 0 for p in learned)
    probs = tuned.predict(cohort.scan(0), "sex")
    assert set(probs) == {"male", "female"} and sum(probs.values()) == pytest.approx(1.0)


def test_bf16_counts_as_native_only_on_a_cpu_with_its_instructions_and_no_accelerator(monkeypatch):
    from fmrilm.train.common import cpu_computes_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    for helper in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, helper, lambda: False, raising=False)
    assert not cpu_computes_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_computes_bf16()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU: accelerate's own settings decide
    assert not cpu_computes_bf16()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for helper in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, helper)  # a torch without the private helpers
    assert not cpu_computes_bf16()


def test_stages_run_in_one_process_may_each_take_their_own_precision(tmp_path, monkeypatch):
    """`fmrilm demo` runs Stage 2 in float32 and then Stage 3 in bf16 in one process; accelerate's one
    process-wide state must not refuse the second, nor pass a stage's bf16 on to a later stage that asks for
    the launcher's default."""
    from fmrilm.train.common import make_accelerator

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert make_accelerator(tmp_path / "a", mixed_precision="no").mixed_precision == "no"
    assert make_accelerator(tmp_path / "b", mixed_precision="bf16").mixed_precision == "bf16"
    assert make_accelerator(tmp_path / "c").mixed_precision == "no"
    # what `accelerate launch --mixed_precision` sets
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert make_accelerator(tmp_path / "d").mixed_precision == "bf16"


def mini_atlas() -> Atlas:
    """32 Dosenbach regions, half of them default-mode, so the planted DMN effect shapes most windows."""
    full = Atlas.builtin("dosenbach160")
    nets = np.asarray(full.networks)
    keep = np.concatenate(
        [
            np.flatnonzero(nets == n)[:k]
            for n, k in [("default", 16), ("fronto-parietal", 8), ("occipital", 4), ("sensorimotor", 4)]
        ]
    )
    return Atlas(
        name="dosenbach-mini",
        labels=[full.labels[i] for i in keep],
        coords=full.coords[keep],
        networks=[full.networks[i] for i in keep],
    )


def test_planted_diagnosis_effect_is_predicted_above_chance_on_held_out_subjects(tmp_path):
    """Simulated cohort with a strong diagnosis effect on default-mode coupling -> brief Stage-1 tokenizer ->
    Stage 3 on the train subjects -> scored answers on held-out subjects have AUC well above 0.5."""
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort
    from fmrilm.train.stage1 import Stage1Config, train_tokenizer
    from sklearn.metrics import roc_auc_score

    from fmrilm.splits import stratified_split
    from fmrilm.tokenizer import FmriTokenizerModel

    seed = 1
    config = SimulationConfig(
        n_subjects=100, atlas=mini_atlas(), n_sites=1, timepoints=(240, 240), tr_range=(2.0, 2.0),
        diagnosis_effect=1.8, sex_effect=0.0, age_effect=0.0, noise_range=(0.05, 0.1), drift_range=(0.0, 0.0),
        spike_rate_range=(0.0, 0.0), global_signal=0.0, seed=seed,
    )  # fmt: skip
    cohort = simulate_cohort(config)
    cohort.save(tmp_path / "cohort")
    train_tokenizer(
        Stage1Config(
            cohorts=[str(tmp_path / "cohort")],
            out=str(tmp_path / "tok"),
            preset="tiny",
            model={"codebook_size": CODEBOOK, "num_latents": K, "window_length": 16, "patch_length": 8},
            loss={"mask_ratio": 0.0},
            steps=100,
            batch_size=32,
            lr=3e-3,
            warmup_steps=10,
            eval_every=10_000,
            save_every=10_000,
            log_every=50,
            val_fraction=0.0,
            seed=seed,
            progress=False,
        )  # fmt: skip
    )
    llm, tok = tiny_causal_lm("llama", initializer_range=0.5)
    fmri_tok = FmriTokenizerModel.from_pretrained(tmp_path / "tok")
    FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok).save_pretrained(tmp_path / "base")

    split = stratified_split(cohort, label="diagnosis", test_size=0.25, seed=seed)
    tasks = load_tasks("diagnosis")
    sets = []
    for s in range(
        3
    ):  # three paraphrase draws per subject, so the question text cannot stand in for the scan
        rows, meta = build_instructions(cohort, tasks, split=split, paradigms=["brain"], seed=s)
        meta["cohort_dir"] = str(tmp_path / "cohort")
        sets.append(str(save_instruction_set(rows, meta, tasks, tmp_path / f"instr{s}")))
    cfg = InstructConfig(
        model=str(tmp_path / "base"), instructions=sets, out=str(tmp_path / "run"), steps=200, batch_size=8,
        lr=6e-3, warmup_steps=5, lora={"r": 8, "alpha": 16, "dropout": 0.0}, eval_every=10_000,
        save_every=10_000, log_every=50, seed=seed, progress=False,
    )  # fmt: skip
    model = FmriLM.from_pretrained(train_instruct(cfg))

    test = model.predict_cohort(load_cohort(tmp_path / "cohort"), "diagnosis", split["test"])
    held_out = set(test["subject_id"])
    trained = {cohort.scan(i).subject_id for i in split["train"]}
    assert held_out and not held_out & trained
    assert set(test["label"]) == {"patient", "control"}
    auc = roc_auc_score(test["label"] == "patient", test["p:patient"])
    assert auc > 0.75, f"held-out AUC {auc:.3f}"


def test_a_task_with_other_answers_in_a_second_set_is_kept_under_its_cohort_name(tmp_path):
    """Two cohorts label diagnosis differently (simulator 'patient', ABIDE 'autism'): both stay scorable."""
    from types import SimpleNamespace

    from fmrilm.train.stage3 import InstructionSource, task_cards

    spec = load_task("diagnosis")

    def source(name: str, options: list[str]) -> InstructionSource:
        meta = {"tasks": {"diagnosis": {"options": options}}}
        return InstructionSource(tmp_path / name, None, meta, {"diagnosis": spec}, SimpleNamespace(name=name))

    cards = {
        c.name: c
        for c in task_cards([source("sim", ["control", "patient"]), source("abide", ["autism", "control"])])
    }
    assert set(cards) == {"diagnosis", "diagnosis@abide"}
    assert set(cards["diagnosis"].options) == {"control", "patient"}
    assert set(cards["diagnosis@abide"].options) == {"autism", "control"}


def test_gradient_checkpointing_gives_the_same_gradients():
    """`--gradient-checkpointing` trades compute for memory only: LoRA and brain-row gradients are unchanged."""
    from fmrilm.train.common import enable_gradient_checkpointing

    from fmrilm.model.adapters import LoraSettings

    def lora_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        llm, tok = tiny_causal_lm("llama", initializer_range=0.3)
        model = FmriLM.from_base(
            llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=CODEBOOK)
        )
        model.add_adapters(LoraSettings(r=4, alpha=8, dropout=0.0))
        model.llm.train()
        if checkpointing:
            enable_gradient_checkpointing(model.llm)
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.llm.modules())
        ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(0))
        labels = ids.clone()
        labels[:, :16] = IGNORE_INDEX
        out = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, loss_reduction="example"
        )
        out.loss.backward()
        return {
            n: p.grad.clone()
            for n, p in model.llm.named_parameters()
            if p.requires_grad and p.grad is not None
        }

    plain, checkpointed = lora_grads(False), lora_grads(True)
    assert plain and plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_balanced_batches_give_every_task_and_every_answer_the_same_share():
    from fmrilm.train.stage3 import balanced_batch_rows, balanced_weights

    examples = (
        [{"task": "diagnosis", "answer": "autism"}] * 30
        + [{"task": "diagnosis", "answer": "typical"}] * 90
        + [{"task": "sex", "answer": "female"}] * 5
        + [{"task": "sex", "answer": "male"}] * 25
        + [{"task": "describe", "answer": f"free text {i}"} for i in range(40)]  # many answers: uniform
    )
    w = balanced_weights(examples)
    share = lambda task, answer=None: sum(  # noqa: E731
        wi for wi, e in zip(w, examples, strict=True) if e["task"] == task and answer in (None, e["answer"])
    )
    for task in ("diagnosis", "sex", "describe"):
        assert share(task) == pytest.approx(1 / 3)
    assert share("diagnosis", "autism") == pytest.approx(share("diagnosis", "typical"))
    assert share("sex", "female") == pytest.approx(1 / 6)
    rows = balanced_batch_rows(w, 4000, seed=0, step=3)
    assert np.array_equal(rows, balanced_batch_rows(w, 4000, seed=0, step=3))  # a function of (seed, step)
    drawn = np.mean([examples[i]["answer"] == "female" for i in rows])
    assert drawn == pytest.approx(1 / 6, abs=0.03)  # 5 of 190 examples, drawn a sixth of the time


def test_task_weights_set_each_tasks_share_and_refuse_unknown_tasks_and_bad_numbers():
    """``--task-weights diagnosis=2``: diagnosis gets half of three tasks' batches, its classes still
    balanced; a task not being trained or a weight that is not positive gets one clear error."""
    import argparse

    from fmrilm.train.stage3 import balanced_weights, parse_task_weights

    from fmrilm.errors import FmriInputError

    examples = (
        [{"task": "diagnosis", "answer": "autism"}] * 10
        + [{"task": "diagnosis", "answer": "typical"}] * 30
        + [{"task": "sex", "answer": "male"}] * 20
        + [{"task": "modularity", "answer": "higher"}] * 20
    )
    w = balanced_weights(examples, parse_task_weights("diagnosis=2"))
    share = lambda task, answer=None: sum(  # noqa: E731
        wi for wi, e in zip(w, examples, strict=True) if e["task"] == task and answer in (None, e["answer"])
    )
    assert share("diagnosis") == pytest.approx(1 / 2)
    assert share("sex") == pytest.approx(1 / 4) and share("modularity") == pytest.approx(1 / 4)
    assert share("diagnosis", "autism") == pytest.approx(1 / 4)
    assert np.allclose(balanced_weights(examples, {"sex": 1.0}), balanced_weights(examples))
    with pytest.raises(FmriInputError, match="'age'.*not among.*diagnosis, modularity, sex"):
        balanced_weights(examples, {"age": 2.0})
    with pytest.raises(FmriInputError, match="weight"):
        balanced_weights(examples, {"sex": 0.0})
    for bad in ("diagnosis", "diagnosis=-1", "diagnosis=x", "=2", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_task_weights(bad)
    assert parse_task_weights(" diagnosis=2, sex=0.5 ") == {"diagnosis": 2.0, "sex": 0.5}


def test_constant_schedule_holds_the_peak_rate_after_warm_up_where_cosine_decays(tmp_path):
    """`--lr-schedule constant` (what a short CPU run wants) keeps ``--lr`` to the last step; the default decays."""
    cohort = toy_cohort(8)
    cohort.save(tmp_path / "cohort")
    base = save_base(tmp_path / "base")
    assert cli_main(["instructions", "build", str(tmp_path / "cohort"), "--tasks", "sex", "--out",
                     str(tmp_path / "instr")]) == 0  # fmt: skip
    train = ["train", "instruct", "--model", base, "--instructions", str(tmp_path / "instr"), "--lr", "1e-3"]
    train += ["--batch-size", "2", "--steps", "6", "--warmup-steps", "2", "--log-every", "1", "--no-progress"]
    rates = {}
    for schedule in ("constant", "cosine"):
        out = tmp_path / schedule
        assert cli_main([*train, "--out", str(out), "--lr-schedule", schedule]) == 0
        rates[schedule] = [e["lr"] for e in json.loads((out / "metrics.json").read_text())["train"]]
        assert json.loads((out / "train_config.json").read_text())["lr_schedule"] == schedule
    assert rates["constant"][1:] == pytest.approx([1e-3] * 5)
    assert rates["cosine"][-1] == pytest.approx(1e-4) and rates["cosine"][1] == pytest.approx(1e-3)
    with pytest.raises(SystemExit):
        cli_main([*train, "--out", str(tmp_path / "bad"), "--lr-schedule", "linear"])
    assert not (tmp_path / "bad").exists()


def test_a_probe_teacher_without_the_warm_start_is_refused_before_anything_is_written(tmp_path):
    from fmrilm.train.stage3 import InstructConfig, train_instruct

    from fmrilm.errors import FmriInputError

    out = tmp_path / "run"
    cfg = InstructConfig(model="m", instructions=["i"], out=str(out), probe_teacher=1.0)
    with pytest.raises(FmriInputError, match="--probe-init"):
        train_instruct(cfg)
    assert not out.exists()


def test_the_warm_starts_calibration_rounds_are_a_training_setting():
    import argparse

    from fmrilm.train.probe_init import CALIBRATION_ROUNDS
    from fmrilm.train.stage3 import InstructConfig, add_arguments, config_from_args

    from fmrilm.errors import FmriInputError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "m", "--instructions", "i", "--out", "o", "--probe-init"]
    assert config_from_args(parser.parse_args(base)).probe_rounds == CALIBRATION_ROUNDS
    assert InstructConfig.probe_rounds == CALIBRATION_ROUNDS
    assert config_from_args(parser.parse_args([*base, "--probe-rounds", "0"])).probe_rounds == 0
    with pytest.raises((SystemExit, FmriInputError)):
        parser.parse_args([*base, "--probe-rounds", "-1"])


def test_a_batch_split_by_length_gives_the_same_gradient(tmp_path, monkeypatch):
    """Short and long examples run as two padded groups (a quarter less of a CPU step for the demo's prompts):
    the gradient the update sees is the whole batch's, and the logged example losses are the same."""
    import fmrilm.train.common as common
    from fmrilm.train.common import length_groups
    from fmrilm.train.stage3 import LoopConfig, fit

    from fmrilm.model.adapters import LoraSettings

    def one_step(split: bool) -> tuple[list[torch.Tensor], list[float]]:
        torch.manual_seed(0)
        llm, tok = tiny_causal_lm("llama", initializer_range=0.3)
        model = FmriLM.from_base(
            llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=CODEBOOK)
        )
        model.add_adapters(LoraSettings(r=4, alpha=8, dropout=0.0))
        rng = np.random.default_rng(0)
        examples = []
        for i, windows in enumerate((1, 6, 1, 6)):  # two short prompts, two long ones
            codes = rng.integers(0, CODEBOOK, (windows, K))
            messages = [
                {
                    "role": "user",
                    "content": [{"type": "fmri", "codes": codes}, {"type": "text", "text": "Sex?"}],
                },
                {"role": "assistant", "content": ["male", "female"][i % 2]},
            ]
            examples.append({**model.processor.training_example(messages), "task": "sex"})
        lengths = [len(e["input_ids"]) for e in examples]
        assert len(length_groups(lengths)) == 2  # this batch does split
        grads: list[torch.Tensor] = []

        def keep_gradients(accelerator, params, optimizer, scheduler, grad_clip):
            grads.extend(p.grad.detach().clone() for p in params)
            optimizer.zero_grad(set_to_none=True)

        monkeypatch.setattr(common, "apply_gradients", keep_gradients)
        cfg = LoopConfig(
            steps=1, batch_size=4, warmup_steps=0, balance=False, progress=False, split_by_length=split,
            log_every=1, eval_every=100, save_every=100,
        )  # fmt: skip
        fit(model, examples, [], cfg, tmp_path / f"run-{split}")
        logged = json.loads((tmp_path / f"run-{split}" / "metrics.json").read_text())["train"][0]
        return grads, [logged["loss_sex"]]

    whole, whole_loss = one_step(False)
    split, split_loss = one_step(True)
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)


def test_length_groups_split_only_where_padding_is_saved():
    from fmrilm.train.common import length_groups

    assert length_groups([40, 80, 41, 79]) == [[0, 2], [1, 3]]
    assert length_groups([78, 80, 79, 80]) == [[0, 1, 2, 3]]  # all alike: one group
    assert length_groups([50]) == [[0]] and length_groups([]) == [[]]
