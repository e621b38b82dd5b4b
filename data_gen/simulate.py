"""Synthetic resting-state cohorts with known phenotype effects on named network couplings.

Why: every later stage (tokenizer, descriptors, LLM training, evaluation) needs data whose ground truth is
known, offline and at any size. A simulated cohort looks like preprocessed resting-state BOLD of real atlases
and sites, and its phenotypes change named network couplings by a chosen amount, so a method that recovers
them is recovering something real, and a method that cannot is not rescued by an easy dataset.

Model, per subject (one scan each):

1. Coupling ``W`` (regions x regions, symmetric) built from the atlas: within-network coupling that decays
   slowly with distance, weak local coupling between neighbours of any network, positive coupling between
   sensory networks and between task-positive networks, and NEGATIVE coupling between the default-mode network
   and every task-positive network (canonical names: see ``data_gen/networks.py``). Role couplings are shared
   out over the partner networks and blocks divided by ``(size_i * size_j) ** (size_exponent / 2)``, so
   within-network FC is comparable across atlases and network sizes; the whole matrix is then scaled so its
   largest eigenvalue is ``coupling_gain`` (< 1: stable).
2. Individual variation: every network-pair block is scaled by a log-normal factor (``subject_variability``)
   and every edge gets a small Gaussian perturbation (``edge_noise``).
3. Phenotype effects (ground truth, in ``cohort.meta["simulator"]["effects"]``): each effect multiplies the
   coupling of named canonical network pairs by ``1 + sign * size * z``, where ``z`` is +-0.5 for the two
   groups of a binary phenotype and ``(age - mid) / (max - min)`` in [-0.5, 0.5] for age. So ``size`` is the
   difference in coupling multiplier between the groups (or between the oldest and the youngest); 0 = none.
4. Neural dynamics: the Ornstein-Uhlenbeck system ``dx = (W - I) x / tau dt + dB``, discretised exactly at a
   fine step (~``dt``), convolved with nilearn's HRF and sampled at the site's TR (``hemodynamics.py``).
   Each region is scaled to unit variance and a small shared global signal is added.
5. Site: TR, measurement noise, slow drift (linear + cosine), motion spikes (brief large deflections of
   every region) and signal amplitude differ by site; time series are mean-free, like preprocessed BOLD.

Phenotypes are drawn independently of each other and of site: sex ("male"/"female"), age (uniform in
``age_range``, years), diagnosis ("patient"/"control"). Everything is seeded: the same config gives the same
cohort, and subject ``i`` does not depend on how many subjects follow it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from fmrilm.atlas import Atlas, resolve_atlas
from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

from .hemodynamics import ModeSampler, hrf_kernel
from .networks import UNASSIGNED, atlas_network_map, canonical_network, network_role

#: Largest eigenvalue any subject's coupling may reach (keeps every mode decaying).
MAX_EIGENVALUE = 0.98
#: Extra simulated seconds beyond a scan, dropped afterwards: hides the wrap-around of the spectral draw.
PAD_SECONDS = 100.0


@dataclass(frozen=True)
class EffectSpec:
    """One phenotype's effect: which canonical network pairs change, and in which direction."""

    phenotype: str
    pairs: tuple[tuple[str, str], ...]
    sign: float
    coding: str
    description: str


#: The named effects. ``sign * size * z`` is added to the coupling multiplier of each pair.
EFFECTS: tuple[EffectSpec, ...] = (
    EffectSpec(
        "diagnosis",
        (("DMN", "DMN"), ("DMN", "FrontoParietal")),
        -1.0,
        "z = +0.5 patient, -0.5 control",
        "patients have weaker DMN within-network coupling and weaker DMN-FrontoParietal anticorrelation",
    ),
    EffectSpec(
        "sex",
        (("Visual", "Somatomotor"),),
        +1.0,
        "z = +0.5 female, -0.5 male",
        "females have stronger Visual-Somatomotor coupling",
    ),
    EffectSpec(
        "age",
        (("DMN", "DMN"),),
        -1.0,
        "z = (age - mid) / (max - min) of age_range, in [-0.5, 0.5]",
        "older subjects have weaker DMN within-network coupling",
    ),
)


@dataclass
class SimulationConfig:
    """Everything that defines a simulated cohort; ``to_dict`` is stored in the cohort as its provenance."""

    n_subjects: int = 200
    atlas: Any = "dosenbach160"  # built-in name, centroids table / labels image path, or an Atlas
    n_sites: int = 4
    seed: int = 0
    tr_range: tuple[float, float] = (1.5, 3.0)
    timepoints: tuple[int, int] = (150, 250)
    # phenotypes and their effects (size = difference in coupling multiplier; 0 = no effect)
    diagnosis_effect: float = 0.3
    sex_effect: float = 0.6
    age_effect: float = 0.7
    patient_fraction: float = 0.5
    female_fraction: float = 0.5
    age_range: tuple[float, float] = (18.0, 65.0)
    # coupling
    within_network: float = 1.0
    anticorrelation: float = 0.4
    sensory_coupling: float = 0.25
    task_positive_coupling: float = 0.15
    local_coupling: float = 0.3
    distance_mm: float = 50.0
    local_distance_mm: float = 15.0
    coupling_gain: float = 0.9
    size_exponent: float = 0.75
    subject_variability: float = 0.15
    edge_noise: float = 0.1
    # dynamics
    tau_s: float = 0.5
    dt: float = 0.1
    hrf_model: str = "glover"
    global_signal: float = 0.03
    # sites and measurement (ranges: each site draws its value uniformly)
    noise_range: tuple[float, float] = (0.3, 0.7)
    drift_range: tuple[float, float] = (0.0, 0.4)
    spike_rate_range: tuple[float, float] = (0.0, 0.01)
    spike_amplitude: float = 2.5
    amplitude_range: tuple[float, float] = (20.0, 60.0)
    name: str = "simulated"

    def effect_sizes(self) -> dict[str, float]:
        return {spec.phenotype: float(getattr(self, f"{spec.phenotype}_effect")) for spec in EFFECTS}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self) if not isinstance(self.atlas, Atlas) else None
        if data is None:
            data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
            data["atlas"] = self.atlas.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise FmriInputError(
                f"Unknown simulation settings: {', '.join(unknown)}",
                fix=f"use only {', '.join(known)}",
            )
        values = dict(data)
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        if isinstance(values.get("atlas"), dict):
            values["atlas"] = Atlas.from_dict(values["atlas"])
        return cls(**values)

    def validate(self) -> None:
        def bad(problem: str, fix: str) -> FmriInputError:
            return FmriInputError(problem, fix=fix)

        if int(self.n_subjects) < 1:
            raise bad(f"n_subjects is {self.n_subjects}", "simulate at least 1 subject")
        if int(self.n_sites) < 1:
            raise bad(f"n_sites is {self.n_sites}", "use at least 1 site")
        lo, hi = self.timepoints
        if not (16 <= lo <= hi):
            raise bad(f"timepoints range {lo}..{hi} is invalid", "give MIN <= MAX with MIN >= 16")
        tlo, thi = self.tr_range
        if not (0.2 <= tlo <= thi <= 10.0):
            raise bad(f"TR range {tlo}..{thi} s is invalid", "give 0.2 <= MIN <= MAX <= 10 seconds")
        for name, size in self.effect_sizes().items():
            if not (0.0 <= size < 1.9):
                raise bad(f"{name} effect size {size} is out of range", "use a value in [0, 1.9)")
        if not (0.0 < self.coupling_gain < MAX_EIGENVALUE):
            raise bad(f"coupling_gain {self.coupling_gain} is not in (0, {MAX_EIGENVALUE})", "use e.g. 0.9")
        if not (0.0 <= self.patient_fraction <= 1.0 and 0.0 <= self.female_fraction <= 1.0):
            raise bad("patient_fraction and female_fraction must lie in [0, 1]", "use e.g. 0.5")
        if self.age_range[1] <= self.age_range[0]:
            raise bad(f"age range {self.age_range} is empty", "give MIN < MAX years")


@dataclass
class Site:
    """Acquisition settings of one simulated site."""

    name: str
    tr: float
    noise: float
    drift: float
    spike_rate: float
    amplitude: float
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ coupling
class CouplingModel:
    """The group coupling matrix of an atlas plus what is needed to derive each subject's coupling."""

    def __init__(self, atlas: Atlas, config: SimulationConfig) -> None:
        from scipy.spatial.distance import pdist, squareform

        self.atlas = atlas
        self.canonical = [canonical_network(n) for n in atlas.networks]
        # unassigned regions form no network of their own: each is its own block
        block_names = [c if c != UNASSIGNED else f"{UNASSIGNED}#{i}" for i, c in enumerate(self.canonical)]
        self.blocks = list(dict.fromkeys(block_names))
        self.block_of = np.array([self.blocks.index(b) for b in block_names])
        canon = np.asarray(block_names)
        roles = np.array([network_role(c) for c in self.canonical])
        sizes = np.bincount(self.block_of)[self.block_of].astype(float)

        dist = squareform(pdist(atlas.coords.astype(float)))
        near = np.exp(-dist / config.distance_mm)
        same = canon[:, None] == canon[None, :]
        w = config.local_coupling * np.exp(-dist / config.local_distance_mm)
        w += same * config.within_network * (0.5 + 0.5 * near)
        # Role couplings are shared out over the partner networks, so an atlas that splits the task-positive
        # system into five networks (Seitzman) gets the same total coupling as one that splits it into two.
        n_sens = len({c for c, r in zip(self.canonical, roles, strict=True) if r == "sensory"})
        n_tp = len({c for c, r in zip(self.canonical, roles, strict=True) if r == "task_positive"})
        sens = (roles == "sensory")[:, None] & (roles == "sensory")[None, :] & ~same
        w += sens * (config.sensory_coupling / max(1, n_sens - 1)) * (0.5 + 0.5 * near)
        tp = roles == "task_positive"
        tp_pair = tp[:, None] & tp[None, :] & ~same
        w += tp_pair * (config.task_positive_coupling / max(1, n_tp - 1)) * (0.5 + 0.5 * near)
        dmn = roles == "dmn"
        anti = (dmn[:, None] & tp[None, :]) | (tp[:, None] & dmn[None, :])
        w -= anti * (config.anticorrelation / np.sqrt(max(1, n_tp))) * (0.5 + 0.5 * near)
        w /= (sizes[:, None] * sizes[None, :]) ** (config.size_exponent / 2)
        np.fill_diagonal(w, 0.0)
        top = np.linalg.eigvalsh(w)[-1]
        self.template = w * (config.coupling_gain / top)
        offdiag = ~np.eye(len(w), dtype=bool)
        self.edge_scale = float(np.abs(self.template[offdiag]).mean())

    def block_index(self, name: str) -> int | None:
        return self.blocks.index(name) if name in self.blocks else None

    def effect_multipliers(self, config: SimulationConfig, pheno: dict[str, Any]) -> np.ndarray:
        """(blocks, blocks) coupling multipliers of one subject from its phenotypes."""
        mult = np.ones((len(self.blocks), len(self.blocks)))
        sizes = config.effect_sizes()
        for spec in EFFECTS:
            size = sizes[spec.phenotype]
            if size == 0.0:
                continue
            z = phenotype_code(spec.phenotype, pheno[spec.phenotype], config)
            factor = max(0.05, 1.0 + spec.sign * size * z)
            for a, b in spec.pairs:
                ia, ib = self.block_index(a), self.block_index(b)
                mult[ia, ib] *= factor
                if ia != ib:
                    mult[ib, ia] *= factor
        return mult

    def subject_coupling(self, rng: np.random.Generator, config: SimulationConfig, pheno: dict) -> np.ndarray:
        k = len(self.blocks)
        var = np.exp(rng.normal(0.0, config.subject_variability, size=(k, k)))
        var = np.triu(var) + np.triu(var, 1).T
        mult = var * self.effect_multipliers(config, pheno)
        w = self.template * mult[self.block_of][:, self.block_of]
        noise = rng.normal(0.0, config.edge_noise * self.edge_scale, size=w.shape)
        w += np.triu(noise, 1) + np.triu(noise, 1).T
        np.fill_diagonal(w, 0.0)
        return w


def phenotype_code(phenotype: str, value: Any, config: SimulationConfig) -> float:
    """The ``z`` of a phenotype value in the effect multiplier ``1 + sign * size * z``."""
    if phenotype == "diagnosis":
        return 0.5 if value == "patient" else -0.5
    if phenotype == "sex":
        return 0.5 if value == "female" else -0.5
    if phenotype == "age":
        lo, hi = config.age_range
        return (float(value) - 0.5 * (lo + hi)) / (hi - lo)
    raise KeyError(phenotype)


def check_effect_networks(model: CouplingModel, config: SimulationConfig) -> None:
    """A non-zero effect on a network the atlas lacks would silently do nothing: refuse it."""
    for spec in EFFECTS:
        if config.effect_sizes()[spec.phenotype] == 0.0:
            continue
        for a, b in spec.pairs:
            for net in (a, b):
                if model.block_index(net) is None:
                    raise FmriInputError(
                        f"The {spec.phenotype} effect acts on network '{net}', which atlas "
                        f"'{model.atlas.name}' does not have (its networks: {', '.join(model.blocks[:12])})",
                        fix=f"use an atlas with that network or set the {spec.phenotype} effect size to 0",
                    )


# ---------------------------------------------------------------------------------------- measurement
def make_sites(rng: np.random.Generator, config: SimulationConfig) -> list[Site]:
    k = int(config.n_sites)
    lo, hi = config.tr_range
    trs = np.linspace(lo, hi, k) if k > 1 else np.array([rng.uniform(lo, hi)])
    trs = np.round(rng.permutation(trs), 3)
    width = max(1, len(str(k)))
    sites = []
    for i in range(k):
        sites.append(
            Site(
                name=f"site-{i + 1:0{width}d}",
                tr=float(trs[i]),
                noise=float(rng.uniform(*config.noise_range)),
                drift=float(rng.uniform(*config.drift_range)),
                spike_rate=float(rng.uniform(*config.spike_rate_range)),
                amplitude=float(rng.uniform(*config.amplitude_range)),
            )
        )
    return sites


def make_phenotypes(rng: np.random.Generator, config: SimulationConfig) -> dict[str, Any]:
    """One subject's sex, age and diagnosis, drawn independently of each other and of site."""
    female = rng.random() < config.female_fraction
    patient = rng.random() < config.patient_fraction
    return {
        "sex": "female" if female else "male",
        "age": round(float(rng.uniform(*config.age_range)), 2),
        "diagnosis": "patient" if patient else "control",
    }


def assign_sites(rng: np.random.Generator, n_subjects: int, n_sites: int) -> np.ndarray:
    """Balanced site labels: each consecutive block of ``n_sites`` subjects is a permutation of the sites."""
    blocks = -(-n_subjects // n_sites)
    return np.concatenate([rng.permutation(n_sites) for _ in range(blocks)])[:n_subjects]


def add_measurement(rng: np.random.Generator, bold: np.ndarray, site: Site, config: SimulationConfig):
    """Site noise, drift, motion spikes and amplitude on unit-variance BOLD; returns (series, spike frames)."""
    t_len, regions = bold.shape
    t = np.arange(t_len) / max(t_len - 1, 1)
    slope = rng.normal(0.0, 1.0, regions)
    period_frac = rng.uniform(0.5, 1.5)
    phase = rng.uniform(0, 2 * np.pi, regions)
    drift = site.drift * (slope * (t[:, None] - 0.5) + np.cos(2 * np.pi * t[:, None] / period_frac + phase))
    out = bold + drift + site.noise * rng.standard_normal(bold.shape)
    n_spikes = min(t_len, rng.poisson(site.spike_rate * t_len))
    frames = np.sort(rng.choice(t_len, size=n_spikes, replace=False)) if n_spikes else np.array([], int)
    for f in frames:
        kick = rng.choice([-1.0, 1.0]) * config.spike_amplitude * (0.5 + rng.random(regions))
        out[f] += kick
        if f + 1 < t_len:
            out[f + 1] += 0.4 * kick
    gain = site.amplitude * np.exp(rng.normal(0.0, 0.2, regions))
    out = out * gain
    out -= out.mean(axis=0)
    return out.astype(np.float32), frames


# -------------------------------------------------------------------------------------------- dynamics
def bold_from_coupling(
    rng: np.random.Generator, coupling: np.ndarray, sampler: ModeSampler, n_timepoints: int, tau_s: float
) -> np.ndarray:
    """Unit-variance BOLD ``(n_timepoints, R)`` of the OU system on ``coupling`` (fast spectral path)."""
    mu, vecs = np.linalg.eigh(coupling)
    if mu[-1] > MAX_EIGENVALUE:  # individual variation pushed a mode to the edge of stability
        mu = mu * (MAX_EIGENVALUE / mu[-1])
    rates = (1.0 - mu) / tau_s
    spectra = sampler.spectra(rates)
    modes = sampler.sample(rng, spectra)
    start = sampler.n_samples - n_timepoints
    bold = modes[start:] @ vecs.T
    region_var = (vecs**2) @ ModeSampler.variances(spectra)
    return bold / np.sqrt(region_var)


def simulate_euler(
    rng: np.random.Generator,
    coupling: np.ndarray,
    tr: float,
    n_timepoints: int,
    *,
    tau_s: float = 1.0,
    dt: float = 0.1,
    hrf_model: str = "glover",
    burn_in_s: float = PAD_SECONDS,
) -> np.ndarray:
    """Reference: the same OU system integrated by a per-timestep Euler-Maruyama loop, HRF, TR sampling.

    Slow by design (a Python loop over fine steps with a regions x regions product each); the fast path is
    checked against it in the tests and timed against it in ``eval/bench_simulate.py``.
    """
    oversample = max(1, int(round(tr / dt)))
    step = tr / oversample
    hrf = hrf_kernel(step, hrf_model)
    n_fine = (n_timepoints + int(np.ceil(burn_in_s / tr))) * oversample
    regions = coupling.shape[0]
    drift_matrix = (coupling - np.eye(regions)) / tau_s
    x = np.zeros(regions)
    fine = np.empty((n_fine, regions))
    scale = np.sqrt(step)
    for i in range(n_fine):
        x = x + step * (drift_matrix @ x) + scale * rng.standard_normal(regions)
        fine[i] = x
    from scipy.signal import fftconvolve

    bold = fftconvolve(fine, hrf[:, None], mode="full", axes=0)[:n_fine]
    sampled = bold[oversample - 1 :: oversample][-n_timepoints:]
    return (sampled - sampled.mean(0)) / sampled.std(0)


# -------------------------------------------------------------------------------------------- cohort
def simulate_cohort(config: SimulationConfig | None = None, *, progress: bool = False) -> Cohort:
    """Simulate a cohort (one scan per subject) with ground-truth effects in ``cohort.meta['simulator']``."""
    config = config or SimulationConfig()
    config.validate()
    atlas = resolve_atlas(config.atlas)
    if atlas is None:
        raise FmriInputError(
            "No atlas given", fix="give a built-in atlas name, a centroids table or an image"
        )
    model = CouplingModel(atlas, config)
    check_effect_networks(model, config)

    # One random stream per purpose and per subject, keyed by (seed, stream, subject): the same config gives
    # the same cohort, and subject i is the same whatever the number of subjects after it.
    seed, n = int(config.seed), int(config.n_subjects)
    sites = make_sites(np.random.default_rng([seed, 0]), config)
    site_of = assign_sites(np.random.default_rng([seed, 3]), n, len(sites))
    lo, hi = (int(v) for v in config.timepoints)
    phenotypes, lengths = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        phenotypes.append(make_phenotypes(rng, config))
        lengths.append(int(rng.integers(lo, hi + 1)))

    samplers = {}
    for s, site in enumerate(sites):
        pad = int(np.ceil(PAD_SECONDS / site.tr))
        samplers[s] = ModeSampler(site.tr, hi + pad, dt=config.dt, hrf_model=config.hrf_model)
    global_rate = np.array([(1.0 - config.coupling_gain) / config.tau_s])
    global_spectra = {s: sampler.spectra(global_rate) for s, sampler in samplers.items()}

    width = max(4, len(str(n)))
    scans: list[Scan] = []
    spikes: dict[str, int] = {}
    iterator = range(n)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="simulating", unit="subject")
    # Per-subject matrices are small: multi-threaded BLAS only adds overhead (25x slower eigh measured on a
    # busy 2-core machine), so the loop runs single-threaded.
    with threadpool_limits(limits=1):
        for i in iterator:
            rng = np.random.default_rng([seed, 1, i])
            site, sampler, t_len = sites[site_of[i]], samplers[site_of[i]], int(lengths[i])
            coupling = model.subject_coupling(rng, config, phenotypes[i])
            bold = bold_from_coupling(rng, coupling, sampler, t_len, config.tau_s)
            if config.global_signal > 0:
                g_spec = global_spectra[site_of[i]]
                g = sampler.sample(rng, g_spec)[sampler.n_samples - t_len :] / np.sqrt(g_spec.mean())
                bold = (bold + np.sqrt(config.global_signal) * g) / np.sqrt(1.0 + config.global_signal)
            series, frames = add_measurement(rng, bold, site, config)
            subject_id = f"sim-{i + 1:0{width}d}"
            spikes[subject_id] = int(len(frames))
            scans.append(
                Scan(
                    timeseries=series,
                    tr=site.tr,
                    atlas=atlas,
                    scan_id=subject_id,
                    subject_id=subject_id,
                    session_id="1",
                    site=site.name,
                )
            )
    meta = {"simulator": ground_truth(model, config, sites, spikes)}
    return Cohort.from_scans(
        scans,
        phenotypes,
        atlas=atlas,
        name=config.name,
        phenotype_kinds={"sex": "binary", "age": "regression", "diagnosis": "binary"},
        meta=meta,
    )


def ground_truth(model: CouplingModel, config: SimulationConfig, sites: list[Site], spikes: dict) -> dict:
    """What the cohort was built from, in plain JSON: effects, network mapping, sites, spikes per scan."""
    mapping = atlas_network_map(model.atlas.networks)
    sizes = config.effect_sizes()
    effects = []
    for spec in EFFECTS:
        effects.append(
            {
                "phenotype": spec.phenotype,
                "size": sizes[spec.phenotype],
                "pairs": [list(p) for p in spec.pairs],
                "atlas_networks": {net: mapping.get(net, []) for pair in spec.pairs for net in pair},
                "direction": "increase" if spec.sign > 0 else "decrease",
                "multiplier": "1 + sign * size * z" + f" with sign {spec.sign:+.0f}",
                "coding": spec.coding,
                "description": spec.description,
            }
        )
    return {
        "model": "Ornstein-Uhlenbeck on network coupling -> HRF -> site TR",
        "config": config.to_dict(),
        "network_map": mapping,
        "effects": effects,
        "sites": [dataclasses.asdict(s) for s in sites],
        "spikes_per_scan": spikes,
    }
