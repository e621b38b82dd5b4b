"""Network discovery from the model alone (`fmrilm.networks`, `FmriLM.networks`, `fmrilm networks`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.networks import compare_networks, discover_networks, fc_networks
from fmrilm.scan import Scan
from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SMALL = ConnectomeConfig(num_tokens=2, components=8, codebook_size=8, num_levels=2, quantizer_steps=20)
PLANTED = ("default", "fronto-parietal", "occipital", "sensorimotor")


def mini_atlas() -> Atlas:
    """Six Dosenbach regions of each of four networks (the simulator plants these networks)."""
    full = Atlas.builtin("dosenbach160")
    nets = np.asarray(full.networks)
    keep = np.concatenate([np.flatnonzero(nets == n)[:6] for n in PLANTED])
    return full.subset(keep, name="dosenbach-mini")


@pytest.fixture(scope="module")
def cohort():
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    config = SimulationConfig(
        n_subjects=14, atlas=mini_atlas(), n_sites=1, timepoints=(150, 150), tr_range=(2.0, 2.0), seed=0
    )
    return simulate_cohort(config)


@pytest.fixture(scope="module")
def scans(cohort) -> list[Scan]:
    return [cohort.scan(i) for i in (12, 13)]  # subjects the connectome tokens were not fitted on


@pytest.fixture(scope="module")
def model(cohort):
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    host = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    host.set_connectome(ConnectomeTokenizer.fit([cohort.scan(i) for i in range(10)], SMALL))
    llm, tok = tiny_causal_lm(initializer_range=0.3)
    return FmriLM.from_base(llm, host, tokenizer=tok, atlas=cohort.atlas).eval()


def permuted(scan: Scan, perm: np.ndarray) -> Scan:
    return Scan(scan.timeseries[:, perm], scan.tr, scan.atlas.subset(perm), scan_id=scan.scan_id)


# ----------------------------------------------------------------------------------------------- results
def test_every_region_gets_one_of_k_networks_without_reading_the_labels(model, scans):
    found = model.networks(scans, n_networks=4)
    assert list(found.columns) == ["region", "x", "y", "z", "network", "usable", "atlas_network"]
    assert found["region"].tolist() == scans[0].atlas.labels
    assert sorted(found["network"].unique()) == [1, 2, 3, 4] and found["usable"].all()
    assert found.attrs["method"] == "llm" and found.attrs["n_scans"] == 2
    sim = found.attrs["similarity"]
    assert sim.shape == (24, 24) and np.allclose(sim, sim.T)
    # Renaming every network leaves the answer as it was: the atlas's labels are never read.
    renamed = [Scan(s.timeseries, s.tr, _renamed(s.atlas), scan_id=s.scan_id) for s in scans]
    again = model.networks(renamed, n_networks=4)
    np.testing.assert_array_equal(again["network"], found["network"])


def _renamed(atlas: Atlas) -> Atlas:
    return Atlas(atlas.name, atlas.labels, atlas.coords, [f"net{i % 3}" for i in range(atlas.n_regions)])


def test_raw_fc_finds_the_planted_networks_and_the_scores_say_so(scans):
    score = compare_networks(fc_networks(scans, 4))
    assert score["ari"] == pytest.approx(1.0) and score["accuracy"] == pytest.approx(1.0)
    assert score["n_reference"] == 4 and score["n_regions"] == 24
    assert {name for name, _ in score["matches"].values()} == set(PLANTED)


@pytest.mark.parametrize("method", ["connectome", "encoder"])
def test_the_models_own_representations_find_the_planted_networks(model, scans, method):
    """The connectome tokens (PCA of tangent FC fitted on the cohort) and even an untrained encoder keep the
    planted structure; the tiny random LLM's embedding need not (it is not asserted)."""
    score = compare_networks(model.networks(scans, n_networks=4, method=method))
    assert score["ari"] > 0.6, score


@pytest.mark.parametrize("method", ["llm", "connectome", "encoder"])
def test_permuting_the_regions_permutes_the_assignment(model, scans, method):
    perm = np.random.default_rng(3).permutation(scans[0].n_regions)
    found = model.networks(scans, n_networks=4, method=method)
    shuffled = model.networks([permuted(s, perm) for s in scans], n_networks=4, method=method)
    assert shuffled["region"].tolist() == [scans[0].atlas.labels[i] for i in perm]
    # The same partition, even the same network numbers (numbered by a canonical region order) ...
    np.testing.assert_array_equal(shuffled["network"].to_numpy(), found["network"].to_numpy()[perm])
    # ... so in particular the same up to renaming.
    assert compare_networks(shuffled["network"].to_numpy(), found["network"].to_numpy()[perm])["ari"] == 1.0
    np.testing.assert_allclose(shuffled.attrs["similarity"], found.attrs["similarity"][np.ix_(perm, perm)])


def test_a_region_without_signal_takes_the_network_of_its_nearest_neighbour(model, scans):
    dead = 5
    broken = []
    for s in scans:
        ts = s.timeseries.copy()
        ts[:, dead] = 0.0
        broken.append(Scan(ts, s.tr, s.atlas, scan_id=s.scan_id))
    found = model.networks(broken, n_networks=4, method="connectome")
    assert not found["usable"][dead] and found["usable"].drop(index=dead).all()
    coords = scans[0].atlas.coords.astype(float)
    dist = ((coords - coords[dead]) ** 2).sum(1)
    dist[dead] = np.inf
    assert found["network"][dead] == found["network"][int(np.argmin(dist))]


def test_a_stage1_tokenizer_alone_finds_networks_too(model, scans):
    tok = model.fmri_tokenizer
    found = discover_networks(tok, scans, 4)
    assert found.attrs["method"] == "connectome"
    assert discover_networks(tok, scans, 4, method="encoder").attrs["method"] == "encoder"
    with pytest.raises(FmriInputError, match="method='llm' reads the LLM"):
        discover_networks(tok, scans, 4, method="llm")


def test_compare_networks_matches_networks_one_to_one():
    truth = ["a", "a", "a", "b", "b", "c", "c", "unassigned"]
    same = compare_networks([7, 7, 7, 2, 2, 9, 9, 1], truth)
    assert same["ari"] == pytest.approx(1.0) and same["accuracy"] == 1.0 and same["n_regions"] == 7
    assert same["matches"] == {7: ("a", 3), 2: ("b", 2), 9: ("c", 2)}
    merged = compare_networks([1, 1, 1, 1, 1, 2, 2, 2], truth)  # a and b in one network: one of them is lost
    assert merged["accuracy"] == pytest.approx(5 / 7) and 0 < merged["ari"] < 1


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_networks": 1}, r"n_networks=1 cannot split regions"),
        ({"n_networks": 0}, r"n_networks=0 cannot split regions"),
        ({"n_networks": -3}, r"n_networks=-3 cannot split regions"),
        ({"n_networks": 25}, r"n_networks=25 is more than the atlas's 24 regions"),
        ({"n_networks": 2.5}, r"n_networks must be a whole number, got 2.5"),
        ({"n_networks": True}, r"n_networks must be a whole number"),
        ({"n_networks": "many"}, r"n_networks must be a whole number, got 'many'"),
        ({"n_networks": 4, "method": "lmm"}, r"Unknown method 'lmm' \(method=\) \(did you mean 'llm'\?\)"),
        ({"n_networks": 4, "method": "fc"}, r"Unknown method 'fc' \(method=\)"),
        ({"n_networks": 4, "max_scans": 0}, r"max_scans must be a whole number >= 1"),
    ],
)
def test_bad_input_is_one_clear_error(model, scans, kwargs, message):
    with pytest.raises(FmriInputError, match=message) as info:
        model.networks(scans, **kwargs)
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


def test_bad_scans_are_one_clear_error(model, scans, tmp_path):
    other = Atlas.builtin("dosenbach160").subset(np.arange(24))
    with pytest.raises(FmriInputError, match="other MNI coordinates"):
        model.networks([scans[0], Scan(scans[1].timeseries, 2.0, other, scan_id="b")], 4)
    fewer = Scan(scans[1].timeseries[:, :20], 2.0, scans[1].atlas.subset(np.arange(20)), scan_id="c")
    with pytest.raises(FmriInputError, match="does not have the regions of scan"):
        model.networks([scans[0], fewer], 4)
    with pytest.raises(FmriInputError, match="No scans were given"):
        model.networks([], 4)
    with pytest.raises(FmriInputError, match="Cannot find networks in dict"):
        model.networks({"a": 1}, 4)
    with pytest.raises(FmriInputError, match="needs the scans' atlas"):
        model.networks(Scan(scans[0].timeseries, 2.0, None, scan_id="x"), 4)
    dead = Scan(np.zeros_like(scans[0].timeseries), 2.0, scans[0].atlas, scan_id="flat")
    dead.timeseries[:, :3] = np.random.default_rng(0).standard_normal((150, 3))
    with pytest.raises(FmriInputError, match="n_networks=4 is more than the 3 regions that carry signal"):
        fc_networks(dead, 4)


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def saved(model, cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("networks")
    model.save_pretrained(root / "model")
    model.fmri_tokenizer.save_pretrained(root / "tokenizer")
    cohort.select([12, 13]).save(root / "cohort")
    return root


def test_cli_prints_networks_next_to_raw_fc_and_writes_csv_and_png(saved, capsys):
    from fmrilm.cli import main

    base = ["networks", "--model", str(saved / "model"), "--cohort", str(saved / "cohort"), "-k", "4"]
    csv, png = saved / "nets.csv", saved / "nets.png"
    assert main([*base, "--method", "connectome", "--csv", str(csv), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "4 networks of 2 scan(s)" in out and "method connectome" in out and "most_like" in out
    assert "agreement with the atlas's 4 networks over 24 regions" in out
    assert "model (connectome)" in out and "raw FC (mean Fisher z)  ARI +1.000  accuracy 1.000" in out
    table = pd.read_csv(csv)
    assert len(table) == 24 and set(table["network"]) == {1, 2, 3, 4}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    before = csv.read_bytes()
    assert main([*base, "--method", "encoder", "--csv", str(csv)]) == 2  # an existing file is kept
    assert "already exists" in capsys.readouterr().err and csv.read_bytes() == before
    tokenizer = [
        "networks",
        "--model",
        str(saved / "tokenizer"),
        "--cohort",
        str(saved / "cohort"),
        "-k",
        "3",
    ]
    assert main([*tokenizer, "--method", "encoder", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "method encoder" in out and "raw FC" not in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-k", "1"], "n_networks=1 cannot split regions"),
        (["-k", "99"], "n_networks=99 is more than the atlas's 24 regions"),
        (["-k", "four"], "n_networks must be a whole number, got 'four'"),
        (["--method", "lmm"], "Unknown method 'lmm' (method=) (did you mean 'llm'?)"),
        (["--csv", "nets.txt"], "--csv must name a .csv file"),
    ],
)
def test_cli_bad_input_is_one_line(saved, capsys, extra, message):
    from fmrilm.cli import main

    base = ["networks", "--model", str(saved / "model"), "--cohort", str(saved / "cohort")]
    assert main(base + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_refuses_a_folder_that_is_no_model(saved, capsys):
    from fmrilm.cli import main

    assert main(["networks", "--model", str(saved / "cohort"), "--cohort", str(saved / "cohort")]) == 2
    assert "neither a saved fmrilm model nor an fMRI tokenizer folder" in capsys.readouterr().err


def test_bench_networks_runs_at_toy_size_and_is_listed(tmp_path, capsys):
    import json

    from fmrilm.eval import bench, bench_networks

    assert "networks" in bench.available()
    out = tmp_path / "bench.json"
    argv = [
        "--datasets",
        "sim",
        "--sim-scans",
        "2",
        "--fit-scans",
        "10",
        "--methods",
        "encoder",
        "--json",
        str(out),
    ]
    assert bench_networks.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| sim | 6 | encoder | 2 |" in printed and "untrained stand-in" in printed
    row = json.loads(out.read_text())["results"]["sim"]["rows"][0]
    assert row["method"] == "encoder" and row["regions_scored"] == 160 and 0.5 < row["fc_ari"] <= 1.0
