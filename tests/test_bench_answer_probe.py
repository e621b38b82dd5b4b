"""`bench_answer_probe`: a tuned model's answers set beside the probe planted in its scan summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_bench_warm_start import planted_probe_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SCANS = 128  # a quarter held out: enough held-out scans for the decile table


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """`planted_probe_set` whose model's scan summary holds the warm start's probes (the start Stage 3 tunes
    from), saved with its tasks as a tuned model is (``root/tuned``)."""
    from fmrilm.train.probe_init import warm_start_summary
    from fmrilm.train.stage3 import TEST_PART, encode_scans, load_sources, task_cards

    from fmrilm.model.scoring import store_tasks

    root = tmp_path_factory.mktemp("answer_probe")
    model, instructions, n_test = planted_probe_set(root, SCANS)
    source = load_sources([str(instructions)])[0]
    ds = source.dataset
    train_rows = ds.select([i for i, p in enumerate(ds["split"]) if p != TEST_PART])
    codes = encode_scans(
        source.cohort, model.processor.fmri_tokenizer, {str(s) for s in train_rows["scan_id"]}, windows=False
    )
    cards = task_cards([source])
    warm_start_summary(model, [(train_rows, codes)], cards, seed=0, rounds=0)
    store_tasks(model, cards)
    model.save_pretrained(root / "tuned")
    return root, instructions, n_test


def test_the_answer_is_set_beside_its_probe_on_training_and_held_out_scans(tuned, capsys):
    from fmrilm.eval.bench_answer_probe import main
    from fmrilm.train.probe_init import PROBE_LOGIT_SD

    root, instructions, n_test = tuned
    out, picture = root / "answer_probe.json", root / "answer_probe.png"
    argv = ["--model", str(root / "tuned"), "--instructions", str(instructions), "--json", str(out)]
    assert main([*argv, "--plot", str(picture)]) == 0
    report = json.loads(out.read_text())["tasks"]["diagnosis"]
    assert report["held_out_scans"] == n_test and report["training_scans"] == SCANS - n_test
    probe = report["probe"]
    # the planted diagnosis is read by the probe on every kind of scan, and spread as the warm start plants it
    assert probe["in_sample"]["logit_sd"] == pytest.approx(PROBE_LOGIT_SD, rel=1e-6)
    assert min(probe[s]["auc"] for s in ("in_sample", "out_of_fold", "held_out")) > 0.9
    assert probe["in_sample"]["auc"] >= probe["out_of_fold"]["auc"] - 0.02
    # the warm-started answer follows its probe (a swapped pair of options would make both negative)
    assert report["answer"]["agreement"] > 0.6 and report["answer"]["auc"] > 0.85
    deciles = report["deciles"]
    assert len(deciles) == 10 and sum(d["scans"] for d in deciles) == n_test
    assert np.all(np.diff([d["probe_mean"] for d in deciles]) > 0)
    assert deciles[-1]["second_option_share"] > deciles[0]["second_option_share"]
    assert deciles[-1]["answer_mean"] > deciles[0]["answer_mean"]
    assert picture.read_bytes()[:4] == b"\x89PNG" and not list(root.glob("*.tmp*"))
    printed = capsys.readouterr().out
    assert "| diagnosis |" in printed and "by decile of the probe's logit" in printed


def test_a_task_without_two_answers_is_refused_by_name(tuned):
    from fmrilm.eval.bench_answer_probe import main

    root, instructions, _ = tuned
    with pytest.raises(SystemExit, match="age"):
        main(["--model", str(root / "tuned"), "--instructions", str(instructions), "--tasks", "age"])


def test_an_output_in_a_missing_folder_is_refused_before_any_work(tuned, tmp_path, capsys):
    from fmrilm.eval.bench_answer_probe import main

    root, instructions, _ = tuned
    missing = tmp_path / "no_such_folder" / "answer_probe.png"
    with pytest.raises(SystemExit):
        main(["--model", str(root / "tuned"), "--instructions", str(instructions), "--plot", str(missing)])
    assert "--plot" in capsys.readouterr().err and not missing.parent.exists()


def test_deciles_leave_out_too_few_scans_and_order_the_rest():
    from fmrilm.eval.bench_answer_probe import MIN_SCANS_PER_DECILE, deciles

    rng = np.random.default_rng(0)
    probe = rng.normal(size=40)
    rows = deciles(probe, 2 * probe, probe > 0)
    assert [d["decile"] for d in rows] == list(range(1, 11)) and sum(d["scans"] for d in rows) == 40
    assert rows[0]["second_option_share"] == 0.0 and rows[-1]["second_option_share"] == 1.0
    assert all(d["answer_mean"] == pytest.approx(2 * d["probe_mean"]) for d in rows)
    few = 10 * MIN_SCANS_PER_DECILE - 1
    assert deciles(probe[:few], probe[:few], probe[:few] > 0) == []


def test_out_of_fold_logits_show_what_a_probe_learnt_by_heart():
    """Labels that are noise in many components: a probe ranks its own training scans well in sample and at
    chance out of fold; the two must not be confused (the gap is what Stage 3 trains the LLM on)."""
    from fmrilm.eval.bench_answer_probe import planted_logits
    from fmrilm.train.probe_init import PROBE_LOGIT_SD, ProbeTask, fit_probe
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 200))
    y = rng.permutation(np.repeat([0, 1], 45))
    groups = np.repeat(["a", "b", "c"], 30)
    w, C = fit_probe(X, y, groups)
    w = w * PROBE_LOGIT_SD / np.std(X @ w)
    in_sample, out_of_fold = planted_logits(ProbeTask("noise", ("no", "yes"), w, C, len(y)), X, y, groups, 0)
    assert np.std(in_sample) == pytest.approx(PROBE_LOGIT_SD)
    assert roc_auc_score(y, in_sample) > 0.95 and roc_auc_score(y, out_of_fold) < 0.7


def test_the_start_marker_figures_are_what_the_llm_receives_there(tuned, capsys):
    """The reported offset is the difference the scan summary makes to the start marker's input embedding
    (through the processor and `FmriLM.embed_inputs`, as scoring sees it), and the printed line warns of the
    first layer's RMSNorm exactly when that offset is many times the marker's embedding."""
    import torch
    from fmrilm.eval.bench_answer_probe import SATURATING_RATIO, main
    from fmrilm.train.stage3 import TEST_PART, load_sources

    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.scoring import resolve_task

    root, instructions, _ = tuned
    out = root / "marker.json"
    argv = ["--model", str(root / "tuned"), "--instructions", str(instructions), "--json", str(out)]
    assert main(argv) == 0
    marker = json.loads(out.read_text())["start_marker"]
    printed = capsys.readouterr().out
    saturating = marker["offset_norm"]["training"] >= SATURATING_RATIO * marker["embedding_norm"]
    assert "start marker: its embedding's norm" in printed
    assert ("many times the embedding" in printed) == saturating

    model = FmriLM.from_pretrained(root / "tuned")
    source = load_sources([str(instructions)])[0]
    ds = source.dataset
    held = {str(s) for s, p in zip(ds["scan_id"], ds["split"], strict=True) if p == TEST_PART}
    ids = [str(s) for s in source.cohort.dataset["scan_id"]]
    card = resolve_task(model, "diagnosis")
    norms, plain = {}, model.llm.get_input_embeddings()
    for part, keep in (("training", lambda s: s not in held), ("held_out", lambda s: s in held)):
        scans = [source.cohort.scan(i) for i, s in enumerate(ids) if keep(s)]
        prompts = model.processor([card.messages(0) for _ in scans], [[s] for s in scans])
        with torch.no_grad():
            offset = model.embed_inputs(prompts["input_ids"], prompts["connectome_values"]) - plain(
                prompts["input_ids"]
            )
        at_marker = prompts["input_ids"] == model.processor.ids.start_id
        assert at_marker.sum(dim=1).tolist() == [1] * len(scans)
        norms[part] = float(np.median(offset[at_marker].norm(dim=1).numpy()))
        start_embedding = plain.weight[model.processor.ids.start_id].norm()
    assert marker["offset_norm"]["training"] == pytest.approx(norms["training"], rel=1e-4)
    assert marker["offset_norm"]["held_out"] == pytest.approx(norms["held_out"], rel=1e-4)
    assert marker["embedding_norm"] == pytest.approx(float(start_embedding), rel=1e-5)
    assert marker["offset_norm"]["training"] > 0
