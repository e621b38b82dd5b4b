"""Task specs and instruction sets: YAML-only tasks, validation errors, seeding, no phenotype in prompts."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
from fmrilm.instructions.builder import (
    DescriptorIndex,
    build_instructions,
    load_instruction_set,
    n_windows,
)
from fmrilm.instructions.spec import MIN_QUESTIONS, TaskSpec, builtin_tasks, load_task, load_tasks

from fmrilm.atlas import Atlas
from fmrilm.cli import main as cli_main
from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

QUESTIONS = [f"Which hand does participant number variant {i} prefer?" for i in range(MIN_QUESTIONS)]


def toy_cohort(n: int = 8, **extra_columns) -> Cohort:
    rng = np.random.default_rng(0)
    atlas = Atlas(
        name="toy",
        labels=[f"r{i}" for i in range(6)],
        coords=rng.normal(size=(6, 3)),
        networks=["A"] * 3 + ["B"] * 3,
    )
    scans, pheno = [], []
    for i in range(n):
        scans.append(
            Scan(
                rng.normal(size=(60, 6)),
                tr=2.0,
                atlas=atlas,
                scan_id=f"scan{i}",
                subject_id=f"sub{i}",
                site=f"SITE{i % 2}",
            )
        )
        row = {
            "sex": "male" if i % 2 else "female",
            "age": None if i == 3 else 20.0 + i,
            "diagnosis": "patient" if i % 3 == 0 else "control",
        }
        row.update({k: v[i] for k, v in extra_columns.items()})
        pheno.append(row)
    return Cohort.from_scans(scans, pheno, atlas=atlas)


def write_task(tmp_path, name="handedness", **overrides) -> str:
    spec = {
        "name": name,
        "type": "binary",
        "target": "hand",
        "questions": QUESTIONS,
        "answers": {"maps": [{"name": "lr", "values": {"L": "left", "R": "right"}}]},
        "sentences": ["The participant is probably {answer}-handed."],
        "paradigms": ["brain", "open", "multi"],
    }
    spec.update(overrides)
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def user_text(row) -> str:
    messages = json.loads(row["messages"])
    return " ".join(p["text"] for p in messages[0]["content"] if p["type"] == "text")


# ------------------------------------------------------------------------------------------------- task specs
@pytest.mark.parametrize("name", builtin_tasks())
def test_every_builtin_task_validates(name):
    spec = load_task(name)
    assert len({q.lower() for q in spec.questions}) >= MIN_QUESTIONS
    assert spec.paradigms
    if spec.type == "regression":
        answers = spec.number.bin_answers()
        assert len(set(answers)) == len(answers) == len(spec.number.bins) - 1
        assert all(re.fullmatch(r"-?\d+(\.\d+)?", a) for a in answers)  # digits only
    for m in spec.value_maps:
        options = list(dict.fromkeys(m["values"].values()))
        assert len({o.lower() for o in options}) == len(options) >= 2
    assert TaskSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()  # round-trips


def test_builtin_set_covers_the_required_tasks():
    names = set(builtin_tasks())
    assert {"sex", "age", "diagnosis", "fiq", "describe"} <= names
    assert any(load_task(n).source == "descriptors" and load_task(n).is_choice for n in names)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(FmriInputError, match=r"Unknown task 'handednes'.*sex"):
        load_task("handednes")


def test_malformed_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nquestions: [unclosed\n")
    with pytest.raises(FmriInputError, match=r"broken\.yaml.*not valid YAML"):
        load_task(str(path))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"questions": QUESTIONS[:5]}, "fewer than 20"),
        ({"type": "ordinal"}, "Unknown task type 'ordinal'"),
        ({"answers": {"maps": [{"values": {"L": "left", "R": "Left"}}]}}, "differ only in case"),
        ({"answers": {"maps": [{"values": {"L": "left", "R": "left hand"}}]}}, "is the start of answer"),
        ({"paradigms": ["brain", "telepathy"]}, "Bad `paradigms`"),
        ({"colour": "blue"}, r"Unknown key\(s\) \['colour'\]"),
        ({"sentences": []}, "no `sentences`"),
    ],
)
def test_bad_specs_are_rejected_with_the_file_named(tmp_path, overrides, message):
    path = write_task(tmp_path, **overrides)
    with pytest.raises(FmriInputError, match=message) as info:
        load_task(path)
    assert "handedness.yaml" in str(info.value)


def test_unknown_answer_value_is_an_error_not_a_default():
    cohort = toy_cohort()
    table = cohort.phenotype_table()
    table.loc[2, "diagnosis"] = "adhd"
    spec = load_task("diagnosis")
    with pytest.raises(FmriInputError, match=r"no answer map covers.*\['adhd'\]"):
        spec.answer_map(table["diagnosis"].tolist())
    with pytest.raises(FmriInputError, match="value 'adhd'"):
        spec.answer_for("adhd", spec.answer_map(["autism", "control"])[1])


def test_diagnosis_map_follows_the_cohort_coding():
    spec = load_task("diagnosis")
    assert spec.answer_map(["autism", "control"])[1] == {"autism": "autism", "control": "typical development"}
    assert spec.answer_map(["patient", "control"])[1] == {"patient": "patient", "control": "control"}


# --------------------------------------------------------------------------------------------- instruction sets
def test_yaml_only_task_builds_end_to_end(tmp_path):
    """A new task is a YAML file, no code: write one, build through the CLI, load the set back."""
    hands = ["L" if i % 3 == 0 else "R" for i in range(8)]
    hands[5] = None  # missing target: skipped and counted, never defaulted
    cohort = toy_cohort(hand=hands)
    cohort.save(tmp_path / "cohort")
    task_file = write_task(tmp_path)
    out = tmp_path / "instr"
    assert (
        cli_main(
            [
                "instructions",
                "build",
                str(tmp_path / "cohort"),
                "--tasks",
                f"{task_file},sex",
                "--out",
                str(out),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    ds, meta, specs = load_instruction_set(out)
    assert set(specs) == {"handedness", "sex"}  # the set carries its task specs
    rows = [r for r in ds if r["task"] == "handedness" and r["paradigm"] != "followup"]
    assert len(rows) == 7 * 2  # 7 scans with a value x (brain, open)
    assert meta["counts"]["handedness"]["followup_rows"] == 7  # every paradigm by default: followup too
    assert meta["counts"]["handedness"]["skipped_missing"] == 2
    by_scan = {f"scan{i}": {"L": "left", "R": "right"}.get(h) for i, h in enumerate(hands)}
    for r in rows:
        assert r["label"] == by_scan[r["scan_id"]]
        assert r["options"] == ["left", "right"]
        messages = json.loads(r["messages"])
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"][0] == {"type": "fmri", "scan_id": r["scan_id"], "window": None}
        assert messages[1]["content"] == [{"type": "text", "text": r["answer"]}]
        if r["paradigm"] == "brain":
            assert r["answer"] == r["label"]
            assert "left" in user_text(r) and "right" in user_text(r)  # options listed
        else:
            assert r["answer"] == f"The participant is probably {r['label']}-handed."
    multi = [r for r in ds if r["paradigm"] == "multi"]
    assert multi and all(len(json.loads(r["subtasks"])) >= 2 for r in multi)


def test_build_is_seeded():
    cohort = toy_cohort()
    tasks = load_tasks("sex,age,diagnosis")
    a, _ = build_instructions(cohort, tasks, seed=1)
    b, _ = build_instructions(cohort, tasks, seed=1)
    c, _ = build_instructions(cohort, tasks, seed=2)
    assert list(a["messages"]) == list(b["messages"])
    assert list(a["messages"]) != list(c["messages"])

    def single(ds):
        return [(r["scan_id"], r["task"], r["paradigm"], r["label"]) for r in ds if r["paradigm"] != "multi"]

    assert single(a) == single(c)  # answers do not depend on the seed


def test_no_phenotype_or_identity_reaches_a_prompt():
    """A prompt is exactly a paraphrase from the YAML plus the answer instruction: nothing about the person."""
    cohort = toy_cohort()
    tasks = {t.name: t for t in load_tasks("sex,age,diagnosis")}
    ds, _ = build_instructions(cohort, list(tasks.values()), seed=0, paradigms=["brain", "open"])
    for r in ds:
        spec, text = tasks[r["task"]], user_text(r)
        question = next(q for q in spec.questions if text.startswith(q))
        rest = text[len(question) :].strip()
        if r["paradigm"] == "open":
            assert rest == ""
        elif spec.is_choice:
            listed = re.fullmatch(r"Answer with one of: (.+)\.", rest).group(1).split(", ")
            assert sorted(listed) == sorted(r["options"])
        else:
            assert rest == "Answer with a number of years."


def test_split_column_and_missing_rows_counted():
    cohort = toy_cohort()
    split = {"train": [0, 1, 2, 3, 4, 5], "test": [6, 7]}
    ds, meta = build_instructions(cohort, load_tasks("age"), split=split, paradigms=["brain"])
    assert meta["counts"]["age"] == {"rows": 7, "skipped_missing": 1}
    assert {r["scan_id"]: r["split"] for r in ds}["scan7"] == "test"
    assert all(r["value"] == float(r["label"]) for r in ds)


def test_windows_mode_matches_the_signal_windowing():
    from fmrilm.signal import SignalConfig, scan_windows

    cohort = toy_cohort(n=2)
    ds, _ = build_instructions(cohort, load_tasks("sex"), windows="all", paradigms=["brain"])
    expected = len(scan_windows(cohort.scan(0), SignalConfig())[0])
    assert expected == n_windows(60, 2.0)
    assert sorted(r["window"] for r in ds if r["scan_id"] == "scan0") == list(range(expected))


def descriptor_index(cohort: Cohort, text: str = "Modularity is typical (z = 0.1).") -> DescriptorIndex:
    names = [
        "fc.between.A~B",
        "fc.between.A~C",
        "fc.between.B~C",
        "fc.segregation.A",
        "fc.segregation.B",
        "graph.modularity",
    ]
    rng = np.random.default_rng(1)
    index = DescriptorIndex(feature_names=names, source="toy-corpus")
    for sid in cohort.dataset["scan_id"]:
        index.z[(sid, -1)] = rng.normal(size=len(names))
        index.texts[(sid, -1)] = {"fc": text, "graph": ""}
    return index


def test_descriptor_tasks_answer_from_z_features():
    cohort = toy_cohort()
    index = descriptor_index(cohort)
    tasks = load_tasks("coupled_pair,decoupled_pair,modularity,describe")
    ds, meta = build_instructions(cohort, tasks, descriptors=index, paradigms=["brain", "open"])
    names = index.feature_names
    for r in ds:
        z = dict(zip(names, index.z[(r["scan_id"], -1)], strict=True))
        between = {k: v for k, v in z.items() if k.startswith("fc.between.")}
        pair = lambda k: " and ".join(k.split(".")[-1].split("~")).lower()  # noqa: E731
        if r["task"] == "coupled_pair":
            assert r["label"] == pair(max(between, key=between.get))
            assert set(r["options"]) == {"a and b", "a and c", "b and c"}
        elif r["task"] == "decoupled_pair":
            assert r["label"] == pair(min(between, key=between.get))
        elif r["task"] == "modularity":
            assert r["label"] == ("higher" if z["graph.modularity"] > 0 else "lower")
        else:
            assert r["task"] == "describe" and r["answer"] == "Modularity is typical (z = 0.1)."
    assert meta["descriptors"] == "toy-corpus"


def test_descriptor_text_only_in_its_paradigm_and_never_with_phenotypes():
    cohort = toy_cohort()
    index = descriptor_index(cohort)
    ds, _ = build_instructions(
        cohort, load_tasks("sex"), descriptors=index, paradigms=["brain", "brain_descriptors"]
    )
    for r in ds:
        assert ("Modularity is typical" in user_text(r)) == (r["paradigm"] == "brain_descriptors")
    leaky = descriptor_index(cohort, text="Coupling is typical for a female participant.")
    with pytest.raises(FmriInputError, match="mentions 'female'"):
        build_instructions(cohort, load_tasks("sex"), descriptors=leaky)


def test_descriptor_task_without_corpus_and_missing_column_are_clear_errors(tmp_path):
    cohort = toy_cohort()
    with pytest.raises(FmriInputError, match="no corpus was given"):
        build_instructions(cohort, load_tasks("modularity"))
    with pytest.raises(FmriInputError, match="needs column 'fiq'"):
        build_instructions(cohort, load_tasks("fiq"))


def test_cli_reports_bad_task_file_without_traceback(tmp_path, capsys):
    cohort = toy_cohort()
    cohort.save(tmp_path / "cohort")
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("name: bad\ntype: binary\n"))
    code = cli_main(
        ["instructions", "build", str(tmp_path / "cohort"), "--tasks", str(bad), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "no `target`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_instruction_set_from_a_real_descriptor_corpus(tmp_path):
    """`fmrilm corpus build` output feeds descriptor tasks and the brain+descriptor paradigm."""
    from fmrilm.data_gen.corpus import build_corpus, load_corpus

    rng = np.random.default_rng(0)
    seitzman = Atlas.builtin("seitzman300")
    atlas = seitzman.subset(np.sort(rng.choice(300, 30, replace=False)))
    scans = [
        Scan(
            rng.normal(size=(100, 30)),
            tr=2.0,
            atlas=atlas,
            scan_id=f"scan{i}",
            subject_id=f"sub{i}",
            site="SITEA",
        )
        for i in range(6)
    ]
    cohort = Cohort.from_scans(scans, [{"sex": "male" if i % 2 else "female"} for i in range(6)], atlas=atlas)
    cohort.save(tmp_path / "cohort")
    build_corpus(cohort, tmp_path / "corpus", units=("window", "scan"), progress=False)
    corpus, meta, _ = load_corpus(tmp_path / "corpus")
    out = tmp_path / "instr"
    argv = ["instructions", "build", str(tmp_path / "cohort"), "--corpus", str(tmp_path / "corpus")]
    assert cli_main([*argv, "--tasks", "sex,modularity,coupled_pair,describe", "--out", str(out)]) == 0
    ds, _, _ = load_instruction_set(out)
    whole = {r["scan_id"]: r for r in corpus if r["window"] == -1}
    names = meta["feature_names"]
    for r in ds:
        z = dict(zip(names, whole[r["scan_id"]]["z"], strict=True))
        if r["task"] == "modularity":
            assert r["label"] == ("higher" if z["graph.modularity"] > 0 else "lower")
        if r["task"] == "describe":
            assert r["answer"] == " ".join(
                t
                for t in (
                    whole[r["scan_id"]][c] for c in ("text_fc", "text_graph", "text_gradient", "text_ica")
                )
                if t
            )
        if r["paradigm"] == "brain_descriptors":
            assert whole[r["scan_id"]]["text_fc"] in user_text(r)
    assert {r["task"] for r in ds} == {"sex", "modularity", "coupled_pair", "describe", "multi"}
    ds_w, _ = build_instructions(
        cohort,
        load_tasks("modularity"),
        descriptors=DescriptorIndex.from_corpus(tmp_path / "corpus"),
        windows="all",
    )
    per_window = {(r["scan_id"], r["window"]) for r in corpus if r["window"] >= 0}
    assert sorted((r["scan_id"], r["window"]) for r in ds_w) == sorted(per_window)


def test_question_message_asks_like_the_instruction_sets():
    from fmrilm.instructions.builder import question_message

    spec = load_task("diagnosis")
    options = spec.options(spec.answer_map(["autism", "control"])[1])
    msg = question_message(spec, options, scan_id="s1", seed=4)
    assert msg["role"] == "user" and msg["content"][0] == {"type": "fmri", "scan_id": "s1", "window": None}
    text = msg["content"][-1]["text"]
    assert any(text.startswith(q) for q in spec.questions)
    assert sorted(re.search(r"one of: (.+)\.$", text).group(1).split(", ")) == [
        "autism",
        "typical development",
    ]
    assert question_message(spec, options, scan_id="s1", seed=4) == msg  # seeded
    with_desc = question_message(
        spec, options, paradigm="brain_descriptors", descriptor_text="Coupling is typical."
    )
    assert with_desc["content"][1]["text"].endswith("Coupling is typical.")
    with pytest.raises(FmriInputError, match="needs the scan's descriptor text"):
        question_message(spec, options, paradigm="brain_descriptors")


def test_regression_bins_give_an_expectation():
    fmt = load_task("age").number
    p = np.zeros(len(fmt.bin_answers()))
    p[fmt.bin_index(24.0)] = 3.0  # unnormalized scores are normalized
    assert fmt.expectation(p) == pytest.approx(fmt.centers()[fmt.bin_index(24.0)])
    assert fmt.expectation(np.ones(len(p))) == pytest.approx(np.mean(fmt.centers()))
    assert fmt.format(23.6) == "24" and not fmt.is_valid(-9999) and not fmt.is_valid(None)


def test_followup_rows_ask_a_second_question_about_the_same_scan_in_a_later_turn():
    """A chat asks several questions about one scan: followup rows train the second turn (the scan is only in
    the first one), its first turn being another task's brain row of that scan, word for word."""
    cohort = toy_cohort()
    tasks = {t.name: t for t in load_tasks("sex,age,diagnosis")}
    ds, meta = build_instructions(cohort, list(tasks.values()), seed=0, paradigms=["brain", "followup"])
    brain = {(r["scan_id"], r["task"]): r for r in ds if r["paradigm"] == "brain"}
    followups = [r for r in ds if r["paradigm"] == "followup"]
    assert len(followups) == len(brain)  # one per brain row: every scan has 2+ answerable tasks here
    assert meta["counts"]["sex"]["followup_rows"] == len(cohort)
    first_tasks = set()
    for r in followups:
        messages = json.loads(r["messages"])
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        earlier = next(
            b
            for (scan, task), b in brain.items()
            if scan == r["scan_id"] and json.loads(b["messages"]) == messages[:2]
        )
        assert earlier["task"] != r["task"]
        first_tasks.add(earlier["task"])
        assert all(p["type"] == "text" for p in messages[2]["content"])  # the scan is not sent again
        question = messages[2]["content"][0]["text"]
        assert any(question.startswith(q) for q in tasks[r["task"]].questions)
        assert messages[3]["content"][0]["text"] == r["answer"] == brain[(r["scan_id"], r["task"])]["answer"]
    assert first_tasks == set(tasks)  # the first question varies
    alone, _ = build_instructions(cohort, [tasks["sex"]], seed=0, paradigms=["brain", "followup"])
    assert set(alone["paradigm"]) == {"brain"}  # one task: nothing to follow up


def _last_question(row) -> str:
    return json.loads(row["messages"])[-2]["content"][-1]["text"]


def test_bare_questions_ask_a_share_of_rows_as_a_chat_user_would():
    """With ``bare_questions`` a seeded share of brain and followup rows asks the question alone (no "Answer with
    one of: ..."), so the tuned model learns to answer the question a user types; the answers stay the same and
    with share 0 every row is as before, word for word."""
    cohort = toy_cohort(n=24)
    tasks = {t.name: t for t in load_tasks("sex,diagnosis")}
    kwargs = {"seed": 0, "paradigms": ["brain", "followup"]}
    plain, _ = build_instructions(cohort, list(tasks.values()), **kwargs)
    zero, _ = build_instructions(cohort, list(tasks.values()), bare_questions=0.0, **kwargs)
    assert list(zero["messages"]) == list(plain["messages"])
    every, meta = build_instructions(cohort, list(tasks.values()), bare_questions=1.0, **kwargs)
    assert meta["bare_questions"] == 1.0
    assert list(every["answer"]) == list(plain["answer"]) and list(every["label"]) == list(plain["label"])
    for row in every:
        assert _last_question(row) in tasks[row["task"]].questions  # a paraphrase as written, nothing added
    half, _ = build_instructions(cohort, list(tasks.values()), bare_questions=0.5, **kwargs)
    bare = [_last_question(r) in tasks[r["task"]].questions for r in half]
    assert 0.3 < np.mean(bare) < 0.7
    with pytest.raises(FmriInputError, match="bare_questions must be a share from 0 to 1"):
        build_instructions(cohort, list(tasks.values()), bare_questions=1.5, **kwargs)


def test_bare_questions_flag_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["instructions", "build", "c", "--out", str(tmp_path / "o"), "--bare-questions", "2"])
    assert "argument --bare-questions:" in capsys.readouterr().err


def test_two_hot_bins_enclose_the_value_and_average_to_it():
    """The two bins of a two-hot answer are the neighbours of the value among the bin values, and their weights
    make the value their mean; values beyond the first / last bin value go all to that bin."""
    number = load_tasks("age")[0].number
    centers = number.centers()
    for value in (6.0, 7.5, 12.0, 12.9, 24.0, 50.0, 72.0):
        (lo, w_lo), (hi, w_hi) = number.two_hot(value)
        assert centers[lo] <= value <= centers[hi] and w_lo >= 0 and w_hi >= 0
        assert w_lo + w_hi == pytest.approx(1.0)
        assert w_lo * centers[lo] + w_hi * centers[hi] == pytest.approx(value)
    (lo, w_lo), (hi, w_hi) = number.two_hot(3.0)
    assert w_lo * centers[lo] + w_hi * centers[hi] == pytest.approx(min(centers))
    (lo, w_lo), (hi, w_hi) = number.two_hot(90.0)
    assert w_lo * centers[lo] + w_hi * centers[hi] == pytest.approx(max(centers))


def test_regression_answers_as_bins_teach_the_scored_bins():
    """``regression_answers="bins"`` writes each age answer as one of the two bin answers enclosing the age,
    drawn per row with its two-hot weight, so the answers' mean over many rows is the age; the other tasks'
    answers stay as they were, and an unknown choice is refused."""
    ages = [6.0 + 1.7 * i for i in range(40)]
    cohort = toy_cohort(n=40, age=ages)
    tasks = load_tasks("age,sex")
    kwargs = {"seed": 0, "paradigms": ["brain", "open", "followup", "multi"]}
    plain, plain_meta = build_instructions(cohort, tasks, **kwargs)
    binned, meta = build_instructions(cohort, tasks, regression_answers="bins", **kwargs)
    assert plain_meta["regression_answers"] == "value" and meta["regression_answers"] == "bins"
    age = next(t for t in tasks if t.name == "age")
    bin_answers = age.number.bin_answers()
    assert len(binned) == len(plain)
    labels, values = [], []
    for old, new in zip(plain, binned, strict=True):
        if new["task"] != "age":
            assert (
                new["answer"] == old["answer"] or new["task"] == "multi"
            )  # a followup's first turn may be age
            continue
        assert old["label"] == age.number.format(old["value"])  # the number itself by default
        assert new["label"] in bin_answers and new["value"] == old["value"]
        (lo, _), (hi, _) = age.number.two_hot(new["value"])
        assert new["label"] in (bin_answers[lo], bin_answers[hi])
        labels.append(float(new["label"]))
        values.append(new["value"])
    assert len(set(labels)) > 5
    assert abs(np.mean(labels) - np.mean(values)) < 1.0  # unbiased: the draws average to the ages
    with pytest.raises(FmriInputError, match="Unknown regression_answers"):
        build_instructions(cohort, tasks, regression_answers="digits", **kwargs)


def test_regression_answers_flag_reaches_the_instruction_set(tmp_path):
    """`fmrilm instructions build --regression-answers bins` writes age rows as bin answers and records it."""
    toy_cohort(n=12).save(tmp_path / "cohort")
    out = tmp_path / "instr"
    argv = ["instructions", "build", str(tmp_path / "cohort"), "--tasks", "age", "--out", str(out)]
    assert cli_main([*argv, "--regression-answers", "bins"]) == 0
    ds, meta, _ = load_instruction_set(out)
    assert meta["regression_answers"] == "bins"
    bins = load_tasks("age")[0].number.bin_answers()
    assert ds.num_rows > 0 and all(r["label"] in bins for r in ds if r["task"] == "age")
