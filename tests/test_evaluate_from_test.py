"""`fmrilm eval --few-shot-from test`: few-shot subjects drawn from the test sites, every method scored on the rest.

The protocol a lab meets with a new cohort (issue 11): for each k and seed, k labelled subjects per class are drawn
from the test part (every scan of a drawn subject is trained on), and the fine-tuned model, the zero-shot model,
the few-shot probes and the train-part baselines are all scored on the same remaining test subjects. A toy
cohort (2 sites, 32 regions, a second session for every test-site subject) and a tiny model keep it to a few seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmrilm.cli import main
from fmrilm.errors import FmriInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

PROTOCOL_LINE = (
    "few-shot from the test sites: k subjects per class drawn from the test part, scored on the rest"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import datasets
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    from fmrilm.atlas import Atlas
    from fmrilm.cohort import Cohort
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    root = tmp_path_factory.mktemp("eval_from_test")
    atlas = Atlas.builtin("dosenbach160").subset(range(0, 160, 5), name="dosenbach32")
    first = simulate_cohort(
        SimulationConfig(n_subjects=22, n_sites=2, timepoints=(40, 50), seed=3, atlas=atlas)
    )
    # A second session of every test-site subject (its time series reversed): a drawn subject brings both to
    # training, and every method scores both scans of a subject left to score.
    second = first.dataset.filter(lambda row: row["site"] == "site-1").map(
        lambda row: {
            "scan_id": row["scan_id"] + "-ses2",
            "session_id": "2",
            "timeseries": row["timeseries"][::-1],
        }
    )
    both = datasets.concatenate_datasets([first.dataset, second])
    cohort = Cohort(
        dataset=both, atlas=first.atlas, name=first.name, phenotypes=first.phenotypes, meta=first.meta
    )
    cohort.save(root / "cohort")
    llm, tok = tiny_causal_lm("llama", initializer_range=0.3)
    fmri_tok = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    model = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok, atlas=Atlas.builtin("seitzman300"))
    model.save_pretrained(root / "model")
    return root, cohort.phenotype_table()


def test_few_shot_from_the_test_sites_scores_every_method_on_the_same_remaining_subjects(setup):
    root, table = setup
    out = root / "report"
    rc = main(
        [
            "eval", "--model", str(root / "model"), "--cohort", str(root / "cohort"), "--task", "sex",
            "--split", "leave-sites-out", "--test-sites", "site-1", "--few-shot-from", "test", "--shots", "0,2",
            "--seeds", "2", "--steps", "1", "--n-boot", "20", "--no-progress", "--covariates", "", "--update-card",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    split = json.loads((out / "split.json").read_text())
    subjects = table["subject_id"].astype(str).to_numpy()
    test_subjects = {subjects[i] for i in split["parts"]["test"]}
    train_subjects = {subjects[i] for i in split["parts"]["train"]}
    sex = table.groupby(table["subject_id"].astype(str))["sex"].first()
    assert report["context"]["few_shot_from"] == "test"

    # Every result names its protocol; the whole-test-part ones are on the whole test part, as by default.
    assert {r["protocol"] for r in results} == {"whole-test-part", "few-shot-from-test"}
    whole = [r for r in results if r["protocol"] == "whole-test-part"]
    assert {"fmrilm_zero_shot", "fc_linear", "tangent_linear", "code_probe", "prior"} <= {
        r["method"] for r in whole
    }
    assert all(set(r["subject_ids"]) == test_subjects for r in whole)
    assert not any(r["method"].endswith("few_shot") for r in whole)  # no draw from the train part

    draws = [r for r in results if r["protocol"] == "few-shot-from-test"]
    assert {(r["shots"], r["seed"]) for r in draws} == {(2, 0), (2, 1)}
    zero_whole = next(r for r in whole if r["method"] == "fmrilm_zero_shot")
    for seed in (0, 1):
        mine = [r for r in draws if r["seed"] == seed]
        assert {r["method"] for r in mine} >= {
            "fmrilm_few_shot", "fmrilm_zero_shot", "fc_linear", "tangent_linear", "code_probe", "prior",
            "fc_linear_few_shot", "code_probe_few_shot",
        }  # fmt: skip
        (tuned,) = [r for r in mine if r["method"] == "fmrilm_few_shot"]
        drawn = set(tuned["info"]["train_subjects"])
        scored = tuned["subject_ids"]
        # k = 2 subjects per class, from the test part, both sessions of each trained on, none of them scored.
        assert drawn <= test_subjects and not drawn & train_subjects
        assert sorted(sex[sorted(drawn)].value_counts().tolist()) == [2, 2]
        assert tuned["info"]["n_train"] == 2 * len(drawn)
        assert not drawn & set(scored)
        assert set(scored) == test_subjects - drawn
        for r in mine:  # identical subjects, rows and order for every method of this draw
            assert r["subject_ids"] == scored, r["method"]
            assert r["info"]["scored_on"].startswith("test subjects left by the 2-per-class draw")
        for probe in ("fc_linear_few_shot", "code_probe_few_shot"):
            (r,) = [r for r in mine if r["method"] == probe]
            assert set(r["info"]["train_subjects"]) == drawn  # the model's own subjects
        # The zero-shot model on the rest: its whole-test-part answers for those rows, not new ones.
        (zero,) = [r for r in mine if r["method"] == "fmrilm_zero_shot"]
        assert len(zero_whole["subject_ids"]) == 2 * len(test_subjects)  # two scans per subject
        np.testing.assert_allclose(
            zero["y_score"], np.asarray(zero_whole["y_score"])[_rows_of(zero_whole, scored)]
        )

    # The summary: one table per protocol, each saying which subjects it scores; a draw's row is the mean of
    # each seed's metric on that seed's remaining subjects.
    md = (out / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert PROTOCOL_LINE in summary and "### Few-shot from the test sites" in summary
    assert "### Whole test part" in summary and "every method scored on the whole test part" in summary
    agg = {(a["protocol"], a["method"], a["shots"]): a for a in report["over_seeds"]}
    for method in ("fmrilm_few_shot", "fmrilm_zero_shot", "fc_linear"):
        a = agg[("few-shot-from-test", method, 2)]
        per_seed = [r["metrics"]["auc"]["value"] for r in draws if r["method"] == method]
        assert a["n_seeds"] == 2 and a["auc"]["mean"] == pytest.approx(np.mean(per_seed), nan_ok=True)
        cell = _summary_row(summary.split("### Few-shot from the test sites")[1], method)
        assert cell[1] == "2" and cell[2] == "2"
    assert ("whole-test-part", "fc_linear", None) in agg  # never averaged with the draws' rows
    assert report["protocols"]["few-shot-from-test"].startswith(PROTOCOL_LINE)
    assert "| fc_linear | few-shot-from-test | test | 2 | 0 |" in md  # the per-result table names it too
    # --update-card: the model card keeps both tables apart, each under its protocol
    card = (root / "model" / "README.md").read_text()
    assert "**Protocol `few-shot-from-test`: " + PROTOCOL_LINE in card
    assert "**Protocol `whole-test-part`: " in card and "drawn from the test part: each method" in card


def _rows_of(whole: dict, scored: list[str]) -> list[int]:
    """Positions in the whole-test-part result of the scored rows (subjects have two scans, in test-part
    order: the scored rows keep that order, so walk both lists together)."""
    out, i = [], 0
    ids = whole["subject_ids"]
    for s in scored:
        while ids[i] != s:
            i += 1
        out.append(i)
        i += 1
    return out


def _summary_row(block: str, method: str) -> list[str]:
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] == method:
            return cells
    raise AssertionError(f"{method} not in the summary block")


def test_k_the_test_part_cannot_supply_is_one_clear_error(setup, capsys):
    from fmrilm.eval.evaluate import EvalConfig, evaluate

    root, _ = setup
    cfg = EvalConfig(
        str(root / "model"), str(root / "cohort"), "sex", str(root / "bad"), test_sites=["site-1"],
        few_shot_from="test", shots=[0, 40], seeds=1, progress=False,
    )  # fmt: skip
    with pytest.raises(FmriInputError, match=r"Task 'sex': k=40 labelled subjects per class") as err:
        evaluate(cfg)
    assert "at most" in str(err.value) and "lower --shots" in str(err.value)
    # as typed: one sentence and its fix, no traceback, nothing written
    base = ["eval", "--model", str(root / "model"), "--cohort", str(root / "cohort"), "--task", "sex"]
    rc = main(
        [
            *base,
            "--test-sites",
            "site-1",
            "--few-shot-from",
            "test",
            "--shots",
            "40",
            "--out",
            str(root / "b"),
        ]
    )
    assert rc == 2
    text = capsys.readouterr().err
    assert "k=40" in text and "Fix:" in text and "Traceback" not in text
    assert not [p.name for p in root.iterdir() if p.name.startswith(("bad", "b", ".b"))]


def test_the_default_protocol_is_few_shot_from_the_train_part():
    import argparse

    from fmrilm.eval.cli import add_arguments, config_from_args
    from fmrilm.eval.evaluate import EvalConfig, command_line

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--cohort", "c", "--task", "sex", "--out", "o"])
    cfg = config_from_args(args)
    assert cfg.few_shot_from == EvalConfig("m", "c", "sex", "o").few_shot_from == "train"
    assert "--few-shot-from train" in command_line(cfg)  # and the command in full repeats it
    assert config_from_args(parser.parse_args(["--model", "m", "--cohort", "c", "--task", "sex", "--out", "o",
                                                "--few-shot-from", "test"])).few_shot_from == "test"  # fmt: skip
    help_text = " ".join(parser.format_help().split())
    assert "--few-shot-from {train,test}" in help_text and "test subjects each draw leaves" in help_text
