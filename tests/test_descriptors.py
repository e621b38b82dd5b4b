"""Descriptor features, reference statistics and text: each metric against an independent computation."""

from __future__ import annotations

import re
import warnings

import networkx as nx
import numpy as np
import pytest

from fmrilm.atlas import Atlas
from fmrilm.descriptors import ReferenceStats, format_z, humanize_network, z_bin
from fmrilm.descriptors.connectivity import correlation, fc_feature_names, fc_features, fisher_z
from fmrilm.descriptors.features import FeatureConfig
from fmrilm.descriptors.gradients import diffusion_map, procrustes_align
from fmrilm.descriptors.graph import (
    clustering,
    global_efficiency,
    graph_feature_names,
    graph_features,
    modularity,
    participation,
    proportional_threshold,
)
from fmrilm.descriptors.ica import GroupICA, timecourse_features
from fmrilm.descriptors.text import TextContext, render
from fmrilm.scan import Scan

NETS = ["Visual"] * 6 + ["DefaultMode"] * 7 + ["FrontoParietal"] * 5 + ["Salience"] * 4 + ["unassigned"] * 2


def small_atlas() -> Atlas:
    rng = np.random.default_rng(1)
    return Atlas(
        name="toy",
        labels=[f"r{i}" for i in range(len(NETS))],
        coords=rng.uniform(-60, 60, (len(NETS), 3)),
        networks=NETS,
    )


def network_series(n_time: int, atlas: Atlas, rng: np.random.Generator, coupling: float = 0.8) -> np.ndarray:
    """Regions = their network's latent signal + noise, so FC has a network structure."""
    nets = atlas.network_names
    latent = {n: rng.standard_normal(n_time) for n in nets}
    ts = np.stack([coupling * latent[n] + rng.standard_normal(n_time) for n in atlas.networks], axis=1)
    return ts.astype(np.float32)


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return small_atlas()


@pytest.fixture(scope="module")
def windows(atlas) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([network_series(48, atlas, rng, c) for c in (0.4, 0.8, 1.2)])


# ----------------------------------------------------------------------------------------------- connectivity
def test_correlation_matches_nilearn(windows):
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    expected = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance()).fit_transform(
        list(windows.astype(np.float64))
    )
    np.testing.assert_allclose(correlation(windows), expected, atol=1e-10)


def test_dead_region_gives_zero_correlation_not_nan(windows):
    ts = windows[0].copy()
    ts[:, 3] = 0.0
    r = correlation(ts[None])[0]
    assert np.isfinite(r).all()
    assert np.all(r[3, np.arange(r.shape[0]) != 3] == 0.0)


def test_network_pair_means_match_a_loop(windows, atlas):
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    z_nl = np.arctanh(
        np.clip(
            ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance()).fit_transform(
                [windows[1].astype(np.float64)]
            )[0],
            -1 + 1e-7,
            1 - 1e-7,
        )
    )
    values = dict(
        zip(fc_feature_names(atlas), fc_features(fisher_z(correlation(windows[1:2])), atlas)[0], strict=True)
    )
    nets = np.asarray(atlas.networks)
    vis, dmn = np.flatnonzero(nets == "Visual"), np.flatnonzero(nets == "DefaultMode")
    within = [z_nl[i, j] for i in vis for j in vis if i < j]
    between = [z_nl[i, j] for i in vis for j in dmn]
    assert values["fc.within.Visual"] == pytest.approx(np.mean(within), abs=1e-9)
    assert values["fc.between.Visual~DefaultMode"] == pytest.approx(np.mean(between), abs=1e-9)
    iu = np.triu_indices(len(nets), 1)
    assert values["fc.mean"] == pytest.approx(z_nl[iu].mean(), abs=1e-9)
    assigned = np.flatnonzero(nets != "unassigned")
    others = [j for j in assigned if nets[j] != "Visual"]
    seg_vis = np.mean(within) - np.mean([z_nl[i, j] for i in vis for j in others])
    assert values["fc.segregation.Visual"] == pytest.approx(seg_vis, abs=1e-9)
    same = [z_nl[i, j] for i in assigned for j in assigned if i < j and nets[i] == nets[j]]
    diff = [z_nl[i, j] for i in assigned for j in assigned if i < j and nets[i] != nets[j]]
    assert values["fc.segregation"] == pytest.approx(np.mean(same) - np.mean(diff), abs=1e-9)
    # 'unassigned' is not a network: no feature names it
    assert not any("unassigned" in n for n in values)
    # stronger latent coupling -> more segregated networks
    seg = fc_features(fisher_z(correlation(windows)), atlas)[:, 1]
    assert seg[0] < seg[1] < seg[2]


# ------------------------------------------------------------------------------------------------------ graph
def _nx_graph(w: np.ndarray) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(w.shape[0]))
    for i, j in zip(*np.nonzero(np.triu(w, 1)), strict=True):
        g.add_edge(int(i), int(j), weight=float(w[i, j]))
    return g


@pytest.mark.parametrize("density", [0.1, 0.25])
def test_graph_metrics_match_networkx(windows, atlas, density):
    z = fisher_z(correlation(windows))
    w = proportional_threshold(z, density)
    iu = np.triu_indices(z.shape[1], 1)
    k = round(density * len(iu[0]))
    nets = np.asarray(atlas.networks)
    partition = [set(np.flatnonzero(nets == n).tolist()) for n in atlas.network_names]
    eff, mod, clu = global_efficiency(w), modularity(w, _onehot(atlas)), clustering(w)
    part = participation(w, _onehot(atlas))
    for b in range(len(w)):
        # the kept edges are exactly the k strongest pairs
        kept = w[b][iu] > 0
        assert kept.sum() == k
        assert z[b][iu][kept].min() >= z[b][iu][~kept].max()
        g = _nx_graph(w[b])
        assert eff[b] == pytest.approx(nx.global_efficiency(g), abs=1e-12)
        assert mod[b] == pytest.approx(
            nx.algorithms.community.modularity(g, partition, weight="weight"), abs=1e-12
        )
        assert clu[b] == pytest.approx(nx.average_clustering(g, weight="weight"), abs=1e-12)
        for node in range(w.shape[1]):
            k_i = sum(d["weight"] for _, _, d in g.edges(node, data=True))
            if k_i == 0:
                assert part[b, node] == 0.0
                continue
            by_mod = [sum(g[node][v]["weight"] for v in g[node] if v in p) for p in partition]
            assert part[b, node] == pytest.approx(1 - sum((s / k_i) ** 2 for s in by_mod), abs=1e-12)


def _onehot(atlas):
    from fmrilm.descriptors.connectivity import membership

    return membership(atlas)


def test_global_efficiency_on_a_path_and_disconnected_graph():
    # path 0-1-2 plus isolated node 3: pairs at distance 1,1,2 (each both ways) -> (2+2+1)/12
    w = np.zeros((1, 4, 4))
    for i, j in ((0, 1), (1, 2)):
        w[0, i, j] = w[0, j, i] = 1.0
    assert global_efficiency(w)[0] == pytest.approx(5 / 12)


def test_graph_features_per_network(windows, atlas):
    feats = graph_features(fisher_z(correlation(windows)), atlas, 0.2)
    names = graph_feature_names(atlas)
    assert feats.shape == (3, len(names))
    assert np.isfinite(feats).all()
    # stronger within-network coupling -> more modular graph under the atlas partition
    mod = feats[:, names.index("graph.modularity")]
    assert mod[0] < mod[2]


# -------------------------------------------------------------------------------------------------- gradients
def test_diffusion_map_solves_the_markov_eigenproblem(windows):
    from fmrilm.descriptors.gradients import affinity

    a = affinity(correlation(windows[:1]))[0]
    emb, lam = diffusion_map(a[None], n_components=3)
    # independent: alpha=0.5 kernel, random-walk matrix P; right eigenvectors psi satisfy P psi = lambda psi
    d = a.sum(1)
    k = a / np.sqrt(np.outer(d, d))
    p = k / k.sum(1, keepdims=True)
    for i in range(3):
        psi = emb[0, :, i] / (lam[0, i] / (1 - lam[0, i]))
        np.testing.assert_allclose(p @ psi, lam[0, i] * psi, atol=1e-8)
    top = np.sort(np.linalg.eigvals(p).real)[::-1][1:4]
    np.testing.assert_allclose(lam[0], top, atol=1e-8)


def test_procrustes_undoes_rotation_and_sign_flip():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((30, 3))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    moved = ref @ q * np.array([1, -1, 1])
    np.testing.assert_allclose(procrustes_align(moved[None], ref)[0], ref, atol=1e-10)


# -------------------------------------------------------------------------------------------------------- ica
def test_dual_regression_recovers_time_courses(atlas):
    rng = np.random.default_rng(4)
    maps = rng.standard_normal((atlas.n_regions, 4))
    tc = rng.standard_normal((2, 60, 4))
    data = tc @ maps.T
    ica = GroupICA(maps=maps, unmixing=np.linalg.pinv(maps), mean=np.zeros(atlas.n_regions))
    got, window_maps = ica.dual_regression(data)
    # stage 1 uses spatially demeaned maps, so time courses are recovered up to nothing (no noise)
    np.testing.assert_allclose(got, tc, atol=1e-8)
    np.testing.assert_allclose(window_maps, np.repeat(maps.T[None], 2, 0), atol=1e-8)


def test_timecourse_features_match_scipy():
    from scipy.signal import periodogram

    rng = np.random.default_rng(5)
    t = np.arange(96) * 2.0
    slow = np.sin(2 * np.pi * 0.03 * t) + 0.1 * rng.standard_normal(96)
    fast = np.sin(2 * np.pi * 0.2 * t) + 0.1 * rng.standard_normal(96)
    tc = np.stack([slow, fast, rng.standard_normal(96)], axis=1)[None]
    amp, ratio, falff, ac, coup = timecourse_features(tc, 2.0)[0]
    for c in range(3):
        x = tc[0, :, c]
        f, p = periodogram(x, fs=0.5, detrend="constant", scaling="spectrum")
        p[1:-1] /= 2  # back from one-sided (every bin but DC and Nyquist doubled) to |FFT|^2 up to a constant
        lo, hi, nz = (f >= 0.01) & (f <= 0.08), (f > 0.08) & (f <= 0.25), f > 0
        assert ratio[c] == pytest.approx(np.log10(p[lo].sum() / p[hi].sum()), rel=1e-9)
        assert falff[c] == pytest.approx(np.sqrt(p[lo]).sum() / np.sqrt(p[nz]).sum(), rel=1e-9)
        xc = x - x.mean()
        assert amp[c] == pytest.approx(x.std(), rel=1e-12)
        assert ac[c] == pytest.approx((xc[1:] * xc[:-1]).sum() / (xc * xc).sum(), rel=1e-12)
        others = [abs(np.corrcoef(x, tc[0, :, o])[0, 1]) for o in range(3) if o != c]
        assert coup[c] == pytest.approx(np.mean(others), rel=1e-9)
    assert ratio[0] > 1 > -1 > ratio[1]
    assert falff[0] > falff[2] > falff[1]


# ------------------------------------------------------------------------------------------------------- text
@pytest.mark.parametrize(
    ("z", "label"),
    [
        (-3.0, "markedly reduced"),
        (-2.01, "markedly reduced"),
        (-1.96, "markedly reduced"),  # printed as -2.0, so labelled as -2.0
        (-1.5, "somewhat reduced"),
        (-1.0, "somewhat reduced"),
        (-0.94, "typical"),
        (0.0, "typical"),
        (0.96, "somewhat elevated"),
        (1.5, "somewhat elevated"),
        (2.0, "markedly elevated"),
        (4.2, "markedly elevated"),
    ],
)
def test_z_bins(z, label):
    assert z_bin(z) == label


def test_format_and_network_names():
    assert format_z(-1.26) == "z = -1.3"
    assert format_z(-0.04) == "z = 0.0"
    assert format_z(2) == "z = 2.0"
    assert humanize_network("DefaultMode") == "default-mode"
    assert humanize_network("SomatomotorDorsal") == "dorsal somatomotor"
    assert humanize_network("CinguloOpercular") == "cingulo-opercular"
    assert humanize_network("SomeNewNetwork") == "some new network"


def _hand_context():
    return TextContext(
        networks={"Visual": "visual", "DefaultMode": "default-mode", "Salience": "salience"},
        components=["visual", "default-mode and salience"],
        gradient_ends=("visual", "default-mode"),
    )


HAND_Z = {
    "fc.mean": 0.3,
    "fc.segregation": -1.34,
    "fc.within.Visual": 2.46,
    "fc.within.DefaultMode": 0.2,
    "fc.between.Visual~DefaultMode": -2.2,
    "fc.between.Visual~Salience": 1.6,
    "fc.between.DefaultMode~Salience": 0.5,
    "fc.segregation.Visual": 1.1,
    "graph.global_efficiency": -0.5,
    "graph.modularity": 1.5,
    "graph.clustering": float("nan"),
    "graph.strength.Visual": 0.1,
    "graph.participation.Visual": -1.2,
    "gradient.range.G1": 1.04,
    "gradient.position.DefaultMode": -1.5,
    "ica.amplitude.IC1": 0.2,
    "ica.amplitude.IC2": -2.6,
    "ica.coupling": 0.0,
}


def test_render_hand_made_z_values():
    names, z = list(HAND_Z), np.array(list(HAND_Z.values()))
    texts = render(z, names, _hand_context(), seed=0)
    fc = texts["fc"]
    assert "typical (z = 0.3)" in fc
    assert "somewhat reduced (z = -1.3)" in fc  # segregation
    assert "within the visual network (z = 2.5, markedly elevated)" in fc or (
        "within the visual network: markedly elevated (z = 2.5)" in fc
    )
    assert "between the visual and default-mode networks" in fc and "z = -2.2" in fc
    # further notable between-network pairs are listed, typical ones are not
    assert "the visual and salience networks (z = 1.6, somewhat elevated)" in fc
    assert "default-mode and salience" not in fc
    graph = texts["graph"]
    assert "somewhat elevated (z = 1.5)" in graph  # modularity
    assert "clustering" not in graph.lower()  # NaN feature: no sentence rather than a made-up one
    assert "the visual network (z = -1.2, somewhat reduced)" in graph
    gradient = texts["gradient"].lower()
    assert "principal gradient is somewhat elevated (z = 1.0)" in gradient or (
        "principal functional gradient, the range is somewhat elevated (z = 1.0)" in gradient
    )
    assert re.search(r"the default-mode network .*visual end.*\(z = -1\.5\)", gradient)
    assert "component 2 (default-mode and salience)" in texts["ica"]
    assert "markedly reduced (z = -2.6)" in texts["ica"]
    for text in texts.values():
        assert text == "" or text[0].isupper()


def test_phrasing_depends_on_seed_only():
    names, z = list(HAND_Z), np.array(list(HAND_Z.values()))
    ctx = _hand_context()
    assert render(z, names, ctx, seed=7) == render(z, names, ctx, seed=7)
    variants = {render(z, names, ctx, seed=s)["fc"] for s in range(12)}
    assert len(variants) > 3
    # every phrasing keeps the same z values
    numbers = {tuple(sorted(re.findall(r"z = (-?\d+\.\d)", v))) for v in variants}
    assert len(numbers) == 1


# -------------------------------------------------------------------------------------------- reference stats
def _toy_scans(atlas, n=6, n_time=100):
    rng = np.random.default_rng(7)
    return [
        Scan(network_series(n_time, atlas, rng, 0.5 + 0.1 * i), tr=2.0, atlas=atlas, scan_id=f"s{i}")
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def toy_reference(atlas):
    return ReferenceStats.fit(
        _toy_scans(atlas), feature_config=FeatureConfig(n_components=4), progress=False, seed=0
    )


def test_reference_stats_json_round_trip(toy_reference, tmp_path, atlas):
    path = toy_reference.save(tmp_path / "reference.json")
    loaded = ReferenceStats.load(path)
    assert loaded.to_dict() == toy_reference.to_dict()
    scan = _toy_scans(atlas, n=1, n_time=150)[0]
    a, b = toy_reference.describe(scan, seed=3), loaded.describe(scan, seed=3)
    assert [d.text for d in a] == [d.text for d in b]
    np.testing.assert_allclose(np.stack([d.z for d in a]), np.stack([d.z for d in b]))


def test_reference_z_values_are_standardized(toy_reference, atlas):
    names = toy_reference.feature_names
    values = np.concatenate([toy_reference.features(s, "window")[0] for s in _toy_scans(atlas)], axis=0)
    z = toy_reference.zscore(values, "window")
    assert z.shape == (len(values), len(names))
    finite = np.isfinite(z).all(axis=0)
    np.testing.assert_allclose(z[:, finite].mean(axis=0), 0.0, atol=1e-9)
    # per feature SD over the reference windows is 1 (ddof=1) unless the feature is constant
    sd = z[:, finite].std(axis=0, ddof=1)
    assert np.all((np.abs(sd - 1) < 1e-6) | (sd == 0))


def test_describe_windows_and_whole_scan(toy_reference, atlas):
    scan = _toy_scans(atlas, n=1, n_time=130)[0]
    wins = toy_reference.describe(scan, unit="window")
    # 130 timepoints -> windows at 0, 48, 96; the last has 34 real timepoints >= min_valid 24
    assert [d.window for d in wins] == [0, 1, 2]
    whole = toy_reference.describe(scan, unit="scan")
    assert [d.window for d in whole] == [-1]
    for d in wins + whole:
        assert set(d.texts) == {"fc", "graph", "gradient", "ica"}
        assert all(d.texts.values())
        assert d.z.shape == (len(toy_reference.feature_names),)


def test_scan_with_another_atlas_is_refused(toy_reference):
    from fmrilm.errors import FmriInputError

    scan = Scan(np.random.default_rng(0).standard_normal((100, 5)), tr=2.0, scan_id="x", subject_id="sub-x")
    with pytest.raises(FmriInputError, match="sub-x.*5 regions"):
        toy_reference.describe(scan)


# ---------------------------------------------------------------------------------------- no phenotype words
PHENOTYPE_WORDS = [
    "male", "female", "man", "men", "woman", "women", "boy", "girl", "sex", "gender", "autism", "autistic",
    "asd", "td", "control", "controls", "patient", "patients", "diagnosis", "diagnosed", "age", "aged",
    "years", "year", "old", "young", "child", "children", "adult", "adolescent", "iq", "fiq", "site",
    "scanner",
]  # fmt: skip


def test_abide_descriptors_never_mention_phenotypes(abide_dir):
    import pandas as pd

    pheno = pd.read_csv(abide_dir / "phenotypes.csv")
    atlas = Atlas.from_centroids_table(abide_dir / "cc200_centroids.csv")
    sample = pheno.iloc[np.linspace(0, len(pheno) - 1, 30).astype(int)]
    with np.load(abide_dir / "timeseries_cc200.npz") as npz:
        scans = [
            Scan(npz[row.FILE_ID].astype(np.float32), tr=float(row.TR), atlas=atlas, scan_id=row.FILE_ID,
                 subject_id=str(row.SUB_ID), site=row.SITE_ID)
            for row in sample.itertuples()
        ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ABIDE has all-zero regions; repairs are warned about elsewhere
        ref = ReferenceStats.fit(scans[:20], feature_config=FeatureConfig(n_components=8), progress=False)
        descriptors = [d for s in scans for unit in ("window", "scan") for d in ref.describe(s, unit=unit)]
    sites = {s.lower() for s in pheno.SITE_ID.unique()} | {
        p.lower() for s in pheno.SITE_ID.unique() for p in re.split(r"[_\W]+", s) if len(p) > 2
    }
    banned = re.compile(
        r"\b(" + "|".join(map(re.escape, sorted(set(PHENOTYPE_WORDS) | sites))) + r")\b", re.I
    )
    assert len(descriptors) > 60
    for d in descriptors:
        hit = banned.search(d.text)
        assert hit is None, f"'{hit.group(0)}' in descriptor of {d.scan_id}: {d.text}"
        assert d.scan_id.lower() not in d.text.lower()
