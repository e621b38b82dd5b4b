"""`fmrilm demo --preset tiny`: the headline command, end to end, at toy size (simulated cohort only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk


@pytest.mark.slow
def test_the_tiny_demo_runs_every_step_and_reports_the_model_next_to_fc(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fmrilm.cli", "demo", "--preset", "tiny", "--out", str(out), "--threads", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    # every stage ran and the trained model folder loads as the demo says
    for step in ("Stage 1", "Stage 2", "Stage 3", "Reload and chat", "Evaluate 'diagnosis'"):
        assert step in text
    assert (out / "stage3_instruct" / "model" / "fmri_processor_config.json").exists()
    config = json.loads((out / "stage3_instruct" / "model" / "fmri_processor_config.json").read_text())
    assert config["connectome_tokens"] == 4  # the tiny preset's connectome tokens reached the model
    assert config["system_prompt"] == ""  # the preset's empty system turn is saved for chat
    # the scan's facts line is saved on, with the reference its instruction answers were computed against
    assert config["scan_facts"] and config["descriptor_references"][0] == json.loads(
        (out / "corpora" / "sim" / "reference.json").read_text()
    )
    run = json.loads((out / "stage3_instruct" / "train_config.json").read_text())
    assert run["task_weights"] == {"diagnosis": 2.0}  # and its task shares reached Stage 3
    assert run["scan_facts"]  # and its facts line
    assert run["lr_schedule"] == "constant" and run["warmup_steps"] == 5
    assert run["probe_init"]  # the preset's probe warm start reached Stage 3 ...
    assert run["soft_lr_scale"] == 1.0  # with the fitted projection tuned at the LoRA rate
    metrics = json.loads((out / "stage3_instruct" / "metrics.json").read_text())
    assert any(p["task"] == "diagnosis" for p in metrics["setup"]["probe_init"])  # ... and ran before tuning
    assert run["probe_teacher"] == 1.0  # with its probes distilled into the training answers
    (taught,) = [p["taught_examples"] for p in metrics["setup"]["probe_init"] if "taught_examples" in p]
    assert sum(taught.values()) > 0  # (on 32 simulated scans: the modularity question's; diagnosis has no
    # out-of-fold ranking there, so no teacher)
    # Stage 3 continues Stage 2's adapters: the dropout in effect is the one saved with them
    adapters = json.loads(
        (out / "stage3_instruct" / "model" / "adapters" / "adapter_config.json").read_text()
    )
    assert adapters["lora_dropout"] == 0.0
    # the held-out descriptor answers are scored next to the most-frequent-answer bar
    assert "held-out scans in a fresh chat (always '" in text
    assert "held-out scans as the second question of a chat (always '" in text  # a chat goes on about a scan
    assert "; one of the question's answers on " in text  # whether it answers the question asked at all
    rows = load_from_disk(str(out / "instructions" / "sim" / "dataset"))
    assert {"brain", "followup"} <= set(rows["paradigm"])  # and Stage 3 trained second questions
    report = json.loads((out / "eval" / "sim_diagnosis" / "report.json").read_text())
    methods = {r["method"] for r in report["results"]}
    assert {"fmrilm_zero_shot", "fc_linear", "tangent_linear"} <= methods
    # the held-out scans come from several simulated sites: the demo prints how each site reads
    (zero_shot,) = [r for r in report["results"] if r["method"] == "fmrilm_zero_shot"]
    assert len(zero_shot["by_site"]) >= 2
    assert (
        "By test site (balanced accuracy / AUC" in text and "| fmrilm_zero_shot | whole-test-part |" in text
    )
    # and how closely its answers rank the scans as the linear readers do, its own input's among them
    assert "Rank agreement with the linear readers" in text and "| code_probe |" in text
    assert {a["reader"] for a in report["agreement"] if a["method"] == "fmrilm_zero_shot"} >= {"fc_linear"}
    assert "Warning" not in text and "Warning" not in proc.stderr  # library warnings go to warnings.log
    assert "Loading weights" not in text + proc.stderr  # and transformers' own bars stay out of the demo's


def test_a_chat_answer_is_right_when_it_is_the_recorded_one_or_the_same_pair_reversed():
    from fmrilm.eval.demo import same_answer

    assert same_answer(" Higher.", "higher")
    assert same_answer("salience and  visual", "visual and salience")
    assert same_answer("visual and salience", "visual and salience")
    assert not same_answer("lower", "higher")
    assert not same_answer("visual and default-mode", "visual and salience")
    assert not same_answer("visual", "visual and salience")


def test_a_resumed_demo_refuses_other_held_out_sites_than_its_saved_split(tmp_path):
    from fmrilm.eval.demo import ABIDE_TEST_SITES, PRESETS, Demo

    split = tmp_path / "leave-sites-out.json"
    split.write_text(json.dumps({"params": {"test_sites": list(ABIDE_TEST_SITES)}}))
    same = Demo(tmp_path, PRESETS["tiny"], None, None, None, test_sites=tuple(reversed(ABIDE_TEST_SITES)))
    same.check_test_sites(split)  # the same sites in another order: the saved split is the one asked for
    other = Demo(tmp_path, PRESETS["tiny"], None, None, None, test_sites=("PITT", "MAX_MUN", "TRINITY"))
    with pytest.raises(SystemExit, match="--test-sites"):
        other.check_test_sites(split)


@pytest.mark.parametrize("name", ["cpu", "full", "gpu", "tiny"])
def test_every_preset_weights_and_evaluates_only_tasks_it_trains(name):
    """A preset's Stage-3 task weights and evaluated tasks name tasks its instruction sets build: a slip here
    would surface only after the tokenizer and Stage 2 have run (minutes to an hour into the demo)."""
    from fmrilm.eval.demo import PRESETS
    from fmrilm.train.stage3 import check_task_weights, parse_task_weights

    preset = PRESETS[name]
    cohort_tasks = preset.abide_tasks if preset.use_abide else preset.sim_tasks
    trained = set(cohort_tasks.split(","))
    if preset.instruct_sim or not preset.use_abide:
        trained |= set(preset.sim_tasks.split(","))
    if preset.instruct_task_weights:
        check_task_weights(parse_task_weights(preset.instruct_task_weights), trained)
    assert set(preset.eval_tasks) <= set(cohort_tasks.split(","))


def test_the_full_preset_trains_and_evaluates_every_phenotype_task():
    """`--preset full` is the run that judges sex and age as well as autism, on the cpu recipe."""
    from fmrilm.eval.demo import PRESETS

    full, cpu = PRESETS["full"], PRESETS["cpu"]
    assert {"diagnosis", "sex", "age"} <= set(full.abide_tasks.split(","))
    assert set(full.eval_tasks) == {"diagnosis", "sex", "age"}
    assert full.instruct_steps > cpu.instruct_steps and full.instruct_probe_init
    weights = dict(w.split("=") for w in full.instruct_task_weights.split(","))
    assert weights == {"diagnosis": "2", "sex": "2", "age": "2"}  # each phenotype task as often as autism


def test_the_full_presets_stage_3_is_the_cpu_recipe_with_every_phenotype_task(tmp_path, monkeypatch):
    """The presets' Stage-3 commands as the demo runs them (each step recorded, none run): both plant the
    first-order warm start (no calibration rounds, no teacher), the full preset with sex and age weighted as
    autism and more steps; every other flag is the same."""
    from fmrilm.eval.demo import PRESETS, Demo

    commands = {}
    for name in ("full", "cpu"):
        demo = Demo(tmp_path, PRESETS[name], abide=None, base=None, threads=None)
        recorded = []
        monkeypatch.setattr(demo, "step", lambda title, argv, done=None, seen=recorded: seen.append(argv))
        demo.train({"abide": {"dir": "c", "train": "c"}}, {"abide": "corpus"}, {"abide": "set"})
        commands[name] = next(a for a in recorded if a[:2] == ["train", "instruct"])
    full, cpu = commands["full"], commands["cpu"]
    for command in (full, cpu):
        assert "--probe-init" in command and "--probe-teacher" not in command
        assert command[command.index("--probe-rounds") + 1] == "0"
    assert full[full.index("--task-weights") + 1] == "diagnosis=2,sex=2,age=2"
    assert int(full[full.index("--steps") + 1]) > int(cpu[cpu.index("--steps") + 1])

    def rest(command: list[str]) -> list[str]:
        """The command without the two flags the presets set apart."""
        out, skip = [], 0
        for a in command:
            if skip:
                skip -= 1
            elif a in ("--steps", "--task-weights"):
                skip = 1
            else:
                out.append(a)
        return out

    assert rest(full) == rest(cpu)


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_presets_stage_3_runs_in_bf16_only_where_the_cpu_computes_it(tmp_path, monkeypatch, native):
    """bf16 autocast where it is measured to be faster with the same reading (the cpu and full presets on a
    CPU with native bf16); float32 on other CPUs."""
    import fmrilm.train.common as common
    from fmrilm.eval.demo import PRESETS, Demo

    monkeypatch.setattr(common, "cpu_computes_bf16", lambda: native)
    for name in ("cpu", "full"):
        demo = Demo(tmp_path / name, PRESETS[name], abide=None, base=None, threads=None)
        recorded = []
        monkeypatch.setattr(demo, "step", lambda title, argv, done=None, seen=recorded: seen.append(argv))
        demo.train({"abide": {"dir": "c", "train": "c"}}, {"abide": "corpus"}, {"abide": "set"})
        stage2, stage3 = (next(a for a in recorded if a[:2] == ["train", s]) for s in ("align", "instruct"))
        wanted = native
        assert (
            (stage3[stage3.index("--mixed-precision") + 1] == "bf16")
            if wanted
            else "--mixed-precision" not in stage3
        )
        assert "--mixed-precision" not in stage2
