"""The simulator's ground truth is true: each planted effect moves the couplings the way the cohort's
``cohort.json`` says (``direction``), on the pairs it names, by about the ``size`` it states.

Two levels. The coupling matrices the simulator actually integrates are recorded while it runs (block means
against the atlas template give each subject's coupling multiplier, compared between groups with the stated
``1 + sign * size * z``). And the simulated signal itself: functional connectivity of the named pairs moves in
the stated direction (a weaker coupling means a weaker correlation, positive or anticorrelation alike).
Everything the tests compare against is read back from the saved cohort, not from the simulator's code.
"""

from __future__ import annotations

import numpy as np
import pytest
from fmrilm.data_gen import simulate as simulate_module
from fmrilm.data_gen.simulate import CouplingModel, SimulationConfig, simulate_cohort

from fmrilm.atlas import Atlas
from fmrilm.cohort import load_cohort


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    """Every third Dosenbach region: 54 regions, all six networks."""
    return Atlas.builtin("dosenbach160").subset(list(range(0, 160, 3)), name="dosenbach54")


def saved_truth(cohort, folder) -> tuple[dict, object]:
    """The effects as ``cohort.json`` states them (after save and load), and the loaded phenotype table."""
    cohort.save(folder)
    loaded = load_cohort(folder)
    return {e["phenotype"]: e for e in loaded.meta["simulator"]["effects"]}, loaded.phenotype_table()


def regions_of(atlas: Atlas, effect: dict, network: str) -> np.ndarray:
    """Regions of a canonical network, through the atlas network names ``cohort.json`` maps it to."""
    names = set(effect["atlas_networks"][network])
    idx = np.flatnonzero([n in names for n in atlas.networks])
    assert len(idx) >= 3, (network, names)
    return idx


def block_mean(matrix: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    block = matrix[np.ix_(a, b)]
    if np.array_equal(a, b):
        block = block[~np.eye(len(a), dtype=bool)]
    return float(block.mean())


def group_code(effect: dict, table) -> np.ndarray:
    """Each subject's ``z`` as ``cohort.json``'s coding line states it."""
    column = table[effect["phenotype"]]
    if effect["phenotype"] == "diagnosis":
        assert effect["coding"] == "z = +0.5 patient, -0.5 control"
        return np.where(column == "patient", 0.5, -0.5)
    if effect["phenotype"] == "sex":
        assert effect["coding"] == "z = +0.5 female, -0.5 male"
        return np.where(column == "female", 0.5, -0.5)
    assert effect["coding"].startswith("z = (age - mid) / (max - min)")
    return None  # age: see the caller (needs the config's age range)


def sign_of(effect: dict) -> float:
    assert effect["direction"] in ("increase", "decrease")
    return 1.0 if effect["direction"] == "increase" else -1.0


@pytest.mark.parametrize("phenotype", ["diagnosis", "sex", "age"])
def test_planted_couplings_move_as_cohort_json_says_by_the_stated_size(
    phenotype, atlas, tmp_path, monkeypatch
):
    """One effect at a time, 120 subjects; the signal is not needed, so the dynamics are replaced by noise."""
    recorded: list[np.ndarray] = []

    def record(rng, coupling, sampler, n_timepoints, tau_s):
        recorded.append(coupling.copy())
        return rng.standard_normal((n_timepoints, coupling.shape[0]))

    monkeypatch.setattr(simulate_module, "bold_from_coupling", record)
    sizes = {"diagnosis_effect": 0.0, "sex_effect": 0.0, "age_effect": 0.0, f"{phenotype}_effect": 0.6}
    config = SimulationConfig(n_subjects=120, atlas=atlas, timepoints=(20, 20), seed=5, **sizes)
    cohort = simulate_cohort(config)
    truth, table = saved_truth(cohort, tmp_path / "sim")
    effect = truth[phenotype]
    assert effect["size"] == 0.6 and len(recorded) == len(table)
    template = CouplingModel(atlas, config).template  # the group coupling, before any subject's effects
    if phenotype == "age":
        lo, hi = config.age_range
        z = (table["age"].to_numpy(dtype=float) - (lo + hi) / 2) / (hi - lo)
    else:
        z = group_code(effect, table)
    named = set()
    for a, b in effect["pairs"]:
        ia, ib = regions_of(atlas, effect, a), regions_of(atlas, effect, b)
        named |= {(a, b), (b, a)}
        multiplier = np.asarray([block_mean(w, ia, ib) / block_mean(template, ia, ib) for w in recorded])
        if phenotype == "age":
            slope = np.polyfit(z, multiplier, 1)[0] / multiplier.mean()  # change per unit z, relative
            assert np.sign(slope) == sign_of(effect), (a, b, slope)
            assert slope == pytest.approx(sign_of(effect) * effect["size"], abs=0.2), (a, b)
        else:
            ratio = multiplier[z > 0].mean() / multiplier[z < 0].mean()
            stated = (1 + sign_of(effect) * effect["size"] / 2) / (1 - sign_of(effect) * effect["size"] / 2)
            assert (ratio > 1) == (effect["direction"] == "increase"), (a, b, ratio)
            assert ratio == pytest.approx(stated, rel=0.12), (a, b, ratio, stated)
    # A pair the effect does not name keeps its coupling.
    canon_pairs = [("Visual", "Visual"), ("Somatomotor", "Somatomotor"), ("DMN", "DMN")]
    other = next(p for p in canon_pairs if p not in named)
    idx = {n: np.flatnonzero([x in _atlas_names(truth, n) for x in atlas.networks]) for n in set(other)}
    multiplier = np.asarray(
        [
            block_mean(w, idx[other[0]], idx[other[1]]) / block_mean(template, idx[other[0]], idx[other[1]])
            for w in recorded
        ]
    )
    if phenotype == "age":
        assert abs(np.polyfit(z, multiplier, 1)[0] / multiplier.mean()) < 0.2
    else:
        assert multiplier[z > 0].mean() / multiplier[z < 0].mean() == pytest.approx(1.0, abs=0.1)


def _atlas_names(truth: dict, network: str) -> set[str]:
    """Atlas network names of a canonical network, from whichever stored effect maps it."""
    for effect in truth.values():
        if network in effect["atlas_networks"]:
            return set(effect["atlas_networks"][network])
    raise KeyError(network)


def test_simulated_connectivity_moves_in_the_stated_direction(atlas, tmp_path):
    """The default effect sizes, real dynamics: each named pair's correlation is weaker ("decrease") or stronger
    ("increase") in the group with the larger z, by more than 2.5 standard errors, for every effect and pair."""
    config = SimulationConfig(n_subjects=120, atlas=atlas, timepoints=(150, 150), seed=2)
    cohort = simulate_cohort(config)
    truth, table = saved_truth(cohort, tmp_path / "sim")
    fc = np.asarray([np.corrcoef(np.asarray(ts, dtype=float).T) for ts in cohort.dataset["timeseries"]])
    lo, hi = config.age_range
    for phenotype, effect in truth.items():
        assert effect["size"] > 0
        z = (
            (table["age"].to_numpy(dtype=float) - (lo + hi) / 2) / (hi - lo)
            if phenotype == "age"
            else group_code(effect, table)
        )
        high = z > np.median(z) if phenotype == "age" else z > 0
        for a, b in effect["pairs"]:
            ia, ib = regions_of(atlas, effect, a), regions_of(atlas, effect, b)
            strength = np.asarray([block_mean(f, ia, ib) for f in fc])
            polarity = np.sign(strength.mean())  # anticorrelated pairs get weaker by moving up towards 0
            magnitude = polarity * strength
            diff = magnitude[high].mean() - magnitude[~high].mean()
            se = np.sqrt(
                magnitude[high].var(ddof=1) / high.sum() + magnitude[~high].var(ddof=1) / (~high).sum()
            )
            assert np.sign(diff) == sign_of(effect), (phenotype, a, b, diff / se)
            assert abs(diff / se) > 2.5, (phenotype, a, b, diff / se)
