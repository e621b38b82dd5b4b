"""In-silico perturbation and attribution: what a user relies on when asking "what if this network changed?"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.model.scoring import TaskCard, store_tasks
from fmrilm.perturb import Change, perturb_scan, select_regions
from fmrilm.scan import Scan
from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SMALL = ConnectomeConfig(num_tokens=2, components=8, codebook_size=8, num_levels=2, quantizer_steps=20)
DIAGNOSIS = TaskCard(
    name="diagnosis",
    type="binary",
    options=["autism", "control"],
    questions=["Does this participant have autism?"],
    instruction="Answer with one of: autism, control.",
)
HAND = TaskCard(
    name="hand",
    type="multiclass",
    options=["left", "right", "both"],
    questions=["Which hand does this participant write with?"],
    instruction="Answer with one of: left, right, both.",
)


def small_atlas() -> Atlas:
    """Four regions of each of dosenbach160's six networks."""
    full = Atlas.builtin("dosenbach160")
    nets = np.asarray(full.networks)
    keep = np.concatenate([np.flatnonzero(nets == n)[:4] for n in full.network_names])
    return full.subset(keep)


def structured_scan(atlas: Atlas, seed: int, n_timepoints: int = 80) -> Scan:
    """Regions sharing a few latent sources with subject-specific loadings (real FC structure)."""
    rng = np.random.default_rng(seed)
    sources = rng.standard_normal((n_timepoints, 4))
    loadings = rng.standard_normal((4, atlas.n_regions))
    ts = 100.0 + 3.0 * (sources @ loadings + 0.5 * rng.standard_normal((n_timepoints, atlas.n_regions)))
    return Scan(ts.astype(np.float32), tr=2.0, atlas=atlas, scan_id=f"s{seed}", subject_id=f"sub-{seed}")


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return small_atlas()


@pytest.fixture(scope="module")
def model(atlas):
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    host = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    host.set_connectome(ConnectomeTokenizer.fit([structured_scan(atlas, i) for i in range(14)], SMALL))
    llm, tok = tiny_causal_lm(initializer_range=0.3)  # wide logits: answers far from uniform
    model = FmriLM.from_base(llm, host, tokenizer=tok, atlas=atlas).eval()
    store_tasks(model, [DIAGNOSIS, HAND])
    return model


@pytest.fixture(scope="module")
def scan(atlas) -> Scan:
    return structured_scan(atlas, 100)


def _corr(ts: np.ndarray) -> np.ndarray:
    return np.corrcoef(np.asarray(ts, np.float64).T)


# ------------------------------------------------------------------------------------------- the signal
@pytest.mark.parametrize("change", ["scale:1", "couple:0", "couple:-0"])
def test_a_zero_change_leaves_the_scan_and_every_answer_unchanged(model, scan, change):
    same = perturb_scan(scan, network="default", change=change)
    np.testing.assert_array_equal(same.timeseries, scan.timeseries)
    frame = model.perturb(scan, network="default", change=change)
    assert set(frame["task"]) == {"diagnosis", "hand"}  # every stored task, every option
    assert len(frame) == len(DIAGNOSIS.options) + len(HAND.options)
    assert np.abs(frame["delta"].to_numpy()).max() < 1e-6
    direct = model.predict(scan, "diagnosis")
    got = frame[frame.task == "diagnosis"].set_index("option")["before"]
    for option, p in direct.items():
        assert got[option] == pytest.approx(p, abs=1e-6)


def test_silencing_a_network_changes_only_it_and_moves_the_answers(model, scan, atlas):
    idx = select_regions(atlas, network="default")
    assert len(idx) == 4 and all(atlas.networks[i] == "default" for i in idx)
    silent = perturb_scan(scan, network="default", change="silence")
    rest = np.setdiff1d(np.arange(atlas.n_regions), idx)
    np.testing.assert_array_equal(silent.timeseries[:, rest], scan.timeseries[:, rest])
    # Each region keeps its own level and spread (standardisation would undo a plain rescale) ...
    np.testing.assert_allclose(silent.timeseries[:, idx].mean(0), scan.timeseries[:, idx].mean(0), rtol=1e-5)
    np.testing.assert_allclose(silent.timeseries[:, idx].std(0), scan.timeseries[:, idx].std(0), rtol=1e-4)
    # ... but no longer shares the signal of the others.
    before, after = _corr(scan.timeseries), _corr(silent.timeseries)
    assert np.abs(after[np.ix_(idx, rest)]).mean() < 0.5 * np.abs(before[np.ix_(idx, rest)]).mean()
    frame = model.perturb(scan, network="default", change="silence")
    assert np.abs(frame["delta"].to_numpy()).max() > 1e-4
    for _, task in frame.groupby("task"):
        assert task["after"].sum() == pytest.approx(1.0) and task["delta"].sum() == pytest.approx(
            0.0, abs=1e-6
        )
    assert frame.attrs["regions"] == [atlas.labels[i] for i in idx]


def test_scale_keeps_that_share_of_each_regions_coupling(atlas):
    long = structured_scan(atlas, 7, n_timepoints=4000)
    idx = select_regions(atlas, network="occipital")
    rest = np.setdiff1d(np.arange(atlas.n_regions), idx)
    before = _corr(long.timeseries)[np.ix_(idx, rest)]
    after = _corr(perturb_scan(long, network="occipital", change="scale:0.5").timeseries)[np.ix_(idx, rest)]
    strong = np.abs(before) > 0.3
    np.testing.assert_allclose(after[strong] / before[strong], 0.5, atol=0.1)


def test_couple_strengthens_or_weakens_the_regions_shared_signal(scan, atlas):
    idx = select_regions(atlas, network="fronto-parietal")
    inside = ~np.eye(len(idx), dtype=bool)

    def within(s: Scan) -> float:
        return float(_corr(s.timeseries)[np.ix_(idx, idx)][inside].mean())

    ts = scan.timeseries.copy()
    ts[:, idx] += 8.0 * np.random.default_rng(5).standard_normal((len(ts), 1))  # a coupled network
    coupled = Scan(ts, 2.0, atlas, scan_id="coupled")
    base = within(coupled)
    assert 0.2 < base < 0.8
    assert within(perturb_scan(coupled, network="fronto-parietal", change="couple:+0.5")) > base + 0.1
    assert within(perturb_scan(coupled, network="fronto-parietal", change="couple:-0.5")) < base - 0.1
    # Removing the shared signal entirely leaves regions that sum to (about) zero: mean r near -1/(n-1).
    gone = within(perturb_scan(coupled, network="fronto-parietal", change="couple:-1"))
    assert gone == pytest.approx(-1 / (len(idx) - 1), abs=0.05)


def test_zero_sets_the_regions_to_zero_and_the_model_repairs_them_quietly(model, scan):
    zeroed = perturb_scan(scan, regions=[0, 1], change="zero")
    assert not zeroed.timeseries[:, :2].any()
    assert {0, 1} <= set(zeroed.flags["bad_regions"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no BadRegionWarning reaches the user
        model.perturb(scan, regions=[0, 1], change="zero", tasks="diagnosis")


def test_the_noise_is_seeded(scan):
    a = perturb_scan(scan, network="default", change="scale:0.3", seed=1)
    b = perturb_scan(scan, network="default", change="scale:0.3", seed=1)
    c = perturb_scan(scan, network="default", change="scale:0.3", seed=2)
    np.testing.assert_array_equal(a.timeseries, b.timeseries)
    assert not np.array_equal(a.timeseries, c.timeseries)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"network": "defualt"}, r"Unknown network 'defualt' \(network=\).*did you mean 'default'"),
        ({"network": ["default", "limbic"]}, r"Unknown network 'limbic' \(network=\)"),
        ({"regions": ["precuneus 99"]}, r"Unknown region 'precuneus 99' \(regions=\)"),
        ({"regions": [999]}, r"Region index 999 \(regions=\) is outside"),
        ({"regions": []}, r"regions= is empty"),
        ({}, r"exactly one of regions= and network="),
        ({"regions": [0], "network": "default"}, r"exactly one of regions= and network="),
        ({"network": "default", "change": "scale:1.5"}, r"larger than the signal allows"),
        ({"network": "default", "change": "scale:-0.2"}, r"larger than the signal allows"),
        ({"network": "default", "change": "couple:2"}, r"larger than the signal allows"),
        ({"network": "default", "change": "louder"}, r"Unknown change 'louder' \(change=\)"),
        ({"network": "default", "change": "scale:abc"}, r"'abc' is not a number"),
        ({"regions": [3], "change": "couple:0.3"}, r"needs at least two"),
    ],
)
def test_bad_perturbations_are_one_clear_error_naming_the_argument(model, scan, kwargs, message):
    with pytest.raises(FmriInputError, match=message) as info:
        model.perturb(scan, **kwargs)
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


def test_a_region_without_signal_cannot_be_perturbed_and_a_network_skips_it(model, scan, atlas):
    ts = scan.timeseries.copy()
    idx = select_regions(atlas, network="default")
    ts[:, idx[0]] = 0.0
    broken = Scan(ts, 2.0, atlas, scan_id="broken", subject_id="sub-broken")
    with pytest.raises(
        FmriInputError,
        match=r"Subject 'sub-broken': Region\(s\) 'ACC 14' \(regions=\) carry no usable signal",
    ):
        model.perturb(broken, regions=[int(idx[0])], change="silence")
    frame = model.perturb(broken, network="default", change="silence", tasks=["diagnosis"])
    assert frame.attrs["skipped_bad_regions"] == [atlas.labels[idx[0]]]
    assert len(frame.attrs["regions"]) == 3
    with pytest.raises(FmriInputError, match="stores no tasks"):
        from fmrilm.perturb import perturb

        bare = type("Bare", (), {"processor": type("P", (), {"config": type("C", (), {"extra": {}})()})()})()
        perturb(bare, scan, network="default")


# ------------------------------------------------------------------------------------------- attribution
def test_attribution_ranks_every_network_once_and_is_deterministic(model, scan, atlas):
    frame = model.attribute(scan, "diagnosis")
    assert sorted(frame["network"]) == sorted(atlas.network_names)
    assert frame["rank"].tolist() == list(range(1, len(atlas.network_names) + 1))
    assert (np.diff(frame["effect"].to_numpy()) <= 0).all()  # largest effect first
    assert (frame["effect"] >= 0).all() and frame["effect"].max() > 0
    assert (frame["n_regions"] == 4).all()
    top = frame.iloc[0]
    # The top network's row is exactly what perturbing that network alone does to the answer.
    alone = model.perturb(scan, network=top["network"], change="silence", tasks="diagnosis")
    row = alone.set_index("option").loc[top["option"]]
    assert top["after"] == pytest.approx(row["after"], abs=1e-6)
    assert top["effect"] == pytest.approx(np.abs(alone["delta"]).sum() / 2, abs=1e-6)
    pd.testing.assert_frame_equal(frame, model.attribute(scan, "diagnosis"))


def test_attribution_by_region_lists_every_region_once(model, scan, atlas):
    frame = model.attribute(scan, HAND, by="region", change="scale:0.5", option="left", repeats=2)
    assert sorted(frame["region"]) == sorted(atlas.labels)
    assert set(frame["option"]) == {"left"}
    by_label = frame.set_index("region")
    for label, net in zip(atlas.labels, atlas.networks, strict=True):
        assert by_label.loc[label, "network"] == net
    with pytest.raises(FmriInputError, match="option 'middle' is not an answer"):
        model.attribute(scan, HAND, by="region", option="middle")
    with pytest.raises(FmriInputError, match="Unknown by='lobe'"):
        model.attribute(scan, HAND, by="lobe")


def test_change_strings_round_trip():
    assert str(Change.parse("silence")) == "silence" and Change.parse("scale:0") == Change.parse("silence")
    assert str(Change.parse("couple:0.3")) == "couple:+0.3" and Change.parse("Scale: 1").identity


def test_a_network_is_found_by_its_name_in_words():
    """Atlases whose networks come from Seitzman-300 say "DefaultMode"; the README writes "default mode"."""
    seitzman = Atlas.builtin("seitzman300")
    expected = np.flatnonzero(np.asarray(seitzman.networks) == "DefaultMode")
    for name in ("default mode", "Default-Mode", "DefaultMode"):
        np.testing.assert_array_equal(select_regions(seitzman, network=name), expected)


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def saved(model, scan, tmp_path_factory):
    root = tmp_path_factory.mktemp("perturb")
    model.save_pretrained(root / "model")
    np.save(root / "scan.npy", scan.timeseries)
    return root


def test_cli_prints_the_table_and_draws_it_on_the_brain(saved, capsys):
    from fmrilm.cli import main

    base = ["perturb", "--model", str(saved / "model"), "--scan", str(saved / "scan.npy"), "--tr", "2"]
    png = saved / "dmn.png"
    assert main(base + ["--network", "default", "--change", "silence", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "silence on 4 region(s)" in out and "diagnosis" in out and "hand" in out and "delta" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    drivers = saved / "drivers.png"
    assert main(base + ["--attribute", "diagnosis", "--png", str(drivers)]) == 0
    out = capsys.readouterr().out
    assert "attribution of 'diagnosis'" in out and "sensorimotor" in out
    assert drivers.read_bytes()[:4] == b"\x89PNG"
    before = drivers.read_bytes()
    assert main(base + ["--attribute", "diagnosis", "--png", str(drivers)]) == 2  # an existing file is kept
    assert "already exists" in capsys.readouterr().err and drivers.read_bytes() == before
    assert main(base + ["--attribute", "diagnosis", "--png", str(drivers), "--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--network", "defualt"], "Unknown network 'defualt' (network=)"),
        (["--regions", "nowhere"], "Unknown region 'nowhere' (regions=)"),
        (["--network", "default", "--change", "scale:3"], "larger than the signal allows"),
        ([], "Say what to perturb"),
        (["--network", "default", "--png", "map.jpg"], "--png must name a .png file"),
    ],
)
def test_cli_bad_input_is_one_line_before_the_model_loads(saved, capsys, extra, message):
    from fmrilm.cli import main

    base = ["perturb", "--model", str(saved / "model"), "--scan", str(saved / "scan.npy"), "--tr", "2"]
    assert main(base + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
