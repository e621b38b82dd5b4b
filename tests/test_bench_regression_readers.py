"""`bench_regression_readers`: a regression answer read several ways, the package's way among them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_bench_warm_start import planted_probe_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def bench_argv(root, cohort, split: dict) -> list[str]:
    """The benchmark's arguments for ``root/model`` and ``root/cohort``, the split written as `fmrilm eval` does."""
    from fmrilm.eval.evaluate import write_split_file

    split_file = write_split_file(root / "split.json", cohort, split, {"kind": "test"})
    return ["--model", str(root / "model"), "--cohort", str(root / "cohort"), "--split", str(split_file)]


def test_the_bins_expectation_row_is_what_fmrilm_eval_reads(tmp_path, capsys):
    from fmrilm.eval.bench_regression_readers import main
    from fmrilm.eval.evaluate import load_eval_task
    from fmrilm.eval.metrics import regression_metrics

    from fmrilm import FmriLM
    from fmrilm.cohort import load_cohort
    from fmrilm.splits import stratified_split

    planted_probe_set(tmp_path, 40)
    cohort = load_cohort(tmp_path / "cohort")
    split = stratified_split(cohort, label="diagnosis", test_size=0.25, seed=0)
    out = tmp_path / "readers.json"
    argv = bench_argv(tmp_path, cohort, split)
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["test_scans"] == len(split["test"])
    # the age task's bin values run from 6 to 72: every whole number between them is scored
    assert report["whole_numbers"] == ["6", "72"]
    card = load_eval_task("age", cohort.phenotype_table(), tmp_path / "cohort")[2]
    frame = FmriLM.from_pretrained(tmp_path / "model").predict_cohort(cohort, card, split["test"])
    expected = regression_metrics(frame["label"].astype(float), frame["prediction"].astype(float))
    assert report["results"]["bins: expectation"]["mae"] == pytest.approx(expected["mae"], rel=1e-6)
    assert report["results"]["bins: expectation"]["mean"] == pytest.approx(
        frame["prediction"].mean(), rel=1e-6
    )
    for name, r in report["results"].items():
        assert 6 <= r["mean"] <= 72, name
    assert "| whole numbers: median |" in capsys.readouterr().out


def test_the_median_reader_spreads_each_bins_mass_between_its_edges():
    from fmrilm.eval.bench_regression_readers import median_of

    edges = np.asarray([0.0, 10.0, 20.0, 40.0])
    probs = np.asarray([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.0, 0.75], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(median_of(probs, edges), [15.0, 10.0, 20.0 + 20.0 / 3, 5.0])


def test_a_task_with_decimals_has_no_whole_number_reader():
    from fmrilm.eval.bench_regression_readers import whole_number_card

    from fmrilm.errors import FmriInputError
    from fmrilm.model.scoring import TaskCard

    card = TaskCard(
        name="motion",
        type="regression",
        options=["0.1", "0.3"],
        questions=["How much did the head move?"],
        number={"decimals": 2, "bins": [0.0, 0.2, 0.4]},
    )
    with pytest.raises(FmriInputError, match="no whole-number reader"):
        whole_number_card(card)


def test_a_two_answer_task_is_refused_by_name(tmp_path):
    from fmrilm.eval.bench_regression_readers import main

    planted_probe_set(tmp_path, 24)
    argv = ["--model", str(tmp_path / "model"), "--cohort", str(tmp_path / "cohort"), "--split", "stratified"]
    with pytest.raises(SystemExit, match="Task 'diagnosis' is binary, not a regression"):
        main([*argv, "--task", "diagnosis"])


def test_a_test_part_without_ages_is_refused_by_name(tmp_path):
    from fmrilm.eval.bench_regression_readers import main

    from fmrilm.cohort import Cohort
    from tests.test_connectome import tiny_connectome_model

    model, _, scans = tiny_connectome_model(24)
    pheno = [
        {"diagnosis": "patient" if i % 2 else "control", "age": 20.0 if i < 18 else None} for i in range(24)
    ]
    cohort = Cohort.from_scans(scans, pheno, atlas=scans[0].atlas)
    cohort.save(tmp_path / "cohort")
    model.save_pretrained(tmp_path / "model")
    split = {"train": list(range(18)), "test": list(range(18, 24))}
    argv = bench_argv(tmp_path, cohort, split)
    with pytest.raises(SystemExit, match="test part has 0 scan.*'age' value"):
        main(argv)


def test_bins_given_by_their_values_alone_get_edges_midway_between_them():
    from fmrilm.eval.bench_regression_readers import edges_around

    np.testing.assert_allclose(edges_around(np.asarray([6.0, 7.0, 8.0])), [5.5, 6.5, 7.5, 8.5])
    np.testing.assert_allclose(edges_around(np.asarray([10.0, 20.0, 40.0])), [5.0, 15.0, 30.0, 50.0])
