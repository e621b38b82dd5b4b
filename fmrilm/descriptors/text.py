"""Descriptor text: z values rendered as sentences, family by family, with several phrasings per template.

Every sentence keeps its z value ("(z = -1.3)") next to a five-level bin, so a language model sees both the
words and the number. Phrasings are drawn from a seeded ``random.Random`` so a corpus has varied wording but
the same window always gets the same text. Text is built only from feature z values, atlas network names and
ICA component labels: phenotypes, ages, sites and diagnoses never reach this module.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from fmrilm.atlas import UNASSIGNED
from fmrilm.descriptors.connectivity import fc_networks
from fmrilm.descriptors.ica import ICA_METRICS

#: Bin labels from most reduced to most elevated; symmetric: |z| >= 2 markedly, 1 <= |z| < 2 somewhat.
BINS = ("markedly reduced", "somewhat reduced", "typical", "somewhat elevated", "markedly elevated")
#: |z| at or above this counts as a deviation worth listing.
NOTABLE = 1.0
#: At most this many extra between-network pairs are listed (beyond the strongest and weakest).
MAX_LISTED = 4

NETWORK_NAMES = {
    "DefaultMode": "default-mode",
    "default": "default-mode",
    "CinguloOpercular": "cingulo-opercular",
    "DorsalAttention": "dorsal attention",
    "DorsalAttn": "dorsal attention",
    "VentralAttention": "ventral attention",
    "VentralAttn": "ventral attention",
    "FrontoParietal": "fronto-parietal",
    "MedialTemporalLobe": "medial temporal lobe",
    "ParietoMedial": "parieto-medial",
    "SomatomotorDorsal": "dorsal somatomotor",
    "SomatomotorLateral": "lateral somatomotor",
    UNASSIGNED: "unassigned",
}


def z_bin(z: float) -> str:
    """Five-level, symmetric label: z <= -2, (-2, -1], (-1, 1), [1, 2), z >= 2.

    The z is first rounded to one decimal, as printed, so "(z = 2.0)" is never called "somewhat elevated".
    """
    z = round(float(z), 1)
    if z <= -2.0:
        return BINS[0]
    if z <= -1.0:
        return BINS[1]
    if z < 1.0:
        return BINS[2]
    if z < 2.0:
        return BINS[3]
    return BINS[4]


def format_z(z: float) -> str:
    """``z = -1.3`` with one decimal and no negative zero."""
    value = round(float(z), 1)
    return f"z = {0.0 if value == 0 else value:.1f}"


def humanize_network(name: str) -> str:
    """Readable network name: 'DefaultMode' -> 'default-mode', 'SomatomotorDorsal' -> 'dorsal somatomotor'."""
    if name in NETWORK_NAMES:
        return NETWORK_NAMES[name]
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").split()
    return " ".join(w.lower() for w in words) or name


@dataclass
class TextContext:
    """What sentences need beyond z values: display names of networks and components, gradient end anchors."""

    networks: dict[str, str]
    components: list[str]
    gradient_ends: tuple[str, str]

    @classmethod
    def from_reference(cls, ref) -> TextContext:
        nets = fc_networks(ref.atlas)
        display = {n: humanize_network(n) for n in ref.atlas.network_names}
        comps = [" and ".join(humanize_network(p) for p in label.split("+")) for label in ref.ica.labels]
        owner = np.asarray(ref.atlas.networks)
        g1 = ref.group_gradients[:, 0]
        means = {n: float(g1[owner == n].mean()) for n in nets if (owner == n).any()}
        if means:
            low, high = min(means, key=means.get), max(means, key=means.get)
            ends = (display[low], display[high])
        else:
            ends = ("negative", "positive")
        return cls(networks=display, components=comps, gradient_ends=ends)


class _Writer:
    """Chooses phrasings with one seeded RNG and fills ``{bin}``/``{z}`` slots consistently."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, variants: tuple[str, ...], **slots) -> str:
        text = self.rng.choice(variants).format(**slots)
        return text[0].upper() + text[1:]


def _zs(z: float) -> str:
    return f"({format_z(z)})"


def _net(ctx: TextContext, name: str) -> str:
    return f"the {ctx.networks.get(name, humanize_network(name))} network"


def _pair(ctx: TextContext, name: str) -> str:
    """'within the visual network' / 'between the visual and default-mode networks'."""
    kind, rest = name.split(".", 2)[1:]
    if kind == "within":
        return f"within {_net(ctx, rest)}"
    a, b = rest.split("~")
    return f"between the {ctx.networks.get(a, humanize_network(a))} and {ctx.networks.get(b, humanize_network(b))} networks"


def _finite(zmap: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in zmap.items() if k.startswith(prefix) and np.isfinite(v)}


def _listing(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------------------------- families
def render_fc(zmap: dict[str, float], ctx: TextContext, w: _Writer) -> str:
    out = []
    if np.isfinite(z := zmap.get("fc.mean", np.nan)):
        out.append(
            w.pick(
                (
                    "overall functional coupling is {bin} {z}.",
                    "mean coupling across all region pairs is {bin} {z}.",
                    "across the whole brain, connectivity strength is {bin} {z}.",
                ),
                bin=z_bin(z),
                z=_zs(z),
            )
        )
    if np.isfinite(z := zmap.get("fc.segregation", np.nan)):
        out.append(
            w.pick(
                (
                    "network segregation is {bin} {z}.",
                    "the contrast between within- and between-network coupling is {bin} {z}.",
                    "segregation of the networks is {bin} {z}.",
                ),
                bin=z_bin(z),
                z=_zs(z),
            )
        )
    pairs = {**_finite(zmap, "fc.within."), **_finite(zmap, "fc.between.")}
    if pairs:
        hi = max(pairs, key=pairs.get)
        lo = min(pairs, key=pairs.get)
        out.append(
            w.pick(
                (
                    "relative to the reference, the strongest coupling is {pair} ({zv}, {bin}).",
                    "the most elevated network coupling is {pair} ({zv}, {bin}).",
                    "coupling is highest relative to the reference {pair}: {bin} ({zv}).",
                ),
                pair=_pair(ctx, hi),
                zv=format_z(pairs[hi]),
                bin=z_bin(pairs[hi]),
            )
        )
        if lo != hi:
            out.append(
                w.pick(
                    (
                        "the weakest coupling is {pair} ({zv}, {bin}).",
                        "the most reduced network coupling is {pair} ({zv}, {bin}).",
                        "coupling is lowest relative to the reference {pair}: {bin} ({zv}).",
                    ),
                    pair=_pair(ctx, lo),
                    zv=format_z(pairs[lo]),
                    bin=z_bin(pairs[lo]),
                )
            )
    between = {k: v for k, v in _finite(zmap, "fc.between.").items() if k not in (hi, lo)} if pairs else {}
    notable = sorted((k for k in between if abs(between[k]) >= NOTABLE), key=lambda k: -abs(between[k]))
    if notable:
        items = [
            f"{_pair(ctx, k).removeprefix('between ')} ({format_z(between[k])}, {z_bin(between[k])})"
            for k in notable[:MAX_LISTED]
        ]
        out.append(
            w.pick(
                (
                    "other notable between-network deviations: {items}.",
                    "coupling also departs from the reference between {items}.",
                ),
                items=_listing(items),
            )
        )
    within = _finite(zmap, "fc.within.")
    notable = sorted((k for k in within if abs(within[k]) >= NOTABLE), key=lambda k: -abs(within[k]))[:3]
    if notable:
        items = [f"{z_bin(within[k])} in {_net(ctx, k.split('.', 2)[2])} {_zs(within[k])}" for k in notable]
        out.append(
            w.pick(
                ("within-network coupling is {items}.", "coupling inside networks is {items}."),
                items=_listing(items),
            )
        )
    elif within:
        out.append(
            w.pick(
                (
                    "within-network coupling is typical in every network.",
                    "coupling inside each network is within the typical range.",
                )
            )
        )
    seg = _finite(zmap, "fc.segregation.")
    if seg:
        k = max(seg, key=lambda n: abs(seg[n]))
        out.append(
            w.pick(
                (
                    "segregation departs most from the reference in {net}: {bin} {z}.",
                    "the network whose segregation differs most is {net} ({zv}, {bin}).",
                ),
                net=_net(ctx, k.split(".", 2)[2]),
                bin=z_bin(seg[k]),
                z=_zs(seg[k]),
                zv=format_z(seg[k]),
            )
        )
    return " ".join(out)


def render_graph(zmap: dict[str, float], ctx: TextContext, w: _Writer) -> str:
    out = []
    templates = {
        "graph.global_efficiency": (
            "global efficiency of the thresholded connectivity graph is {bin} {z}.",
            "the graph's global efficiency is {bin} {z}.",
            "integration, measured as global efficiency, is {bin} {z}.",
        ),
        "graph.modularity": (
            "modularity of the network partition is {bin} {z}.",
            "the modular structure of the networks is {bin} {z}.",
            "modularity is {bin} {z}.",
        ),
        "graph.clustering": (
            "weighted clustering is {bin} {z}.",
            "local clustering of the graph is {bin} {z}.",
            "the clustering coefficient is {bin} {z}.",
        ),
    }
    for key, variants in templates.items():
        if np.isfinite(z := zmap.get(key, np.nan)):
            out.append(w.pick(variants, bin=z_bin(z), z=_zs(z)))
    for prefix, what in (("graph.strength.", "node strength"), ("graph.participation.", "participation")):
        values = _finite(zmap, prefix)
        if not values:
            continue
        top = sorted(values, key=lambda k: -abs(values[k]))[:2]
        if abs(values[top[0]]) < NOTABLE:
            out.append(
                w.pick(
                    ("{what} is typical in every network.", "no network stands out in {what}."),
                    what=what,
                )
            )
            continue
        items = [
            f"{_net(ctx, k[len(prefix) :])} ({format_z(values[k])}, {z_bin(values[k])})"
            for k in top
            if abs(values[k]) >= NOTABLE
        ]
        out.append(
            w.pick(
                ("{what} deviates most in {items}.", "the largest {what} deviations are in {items}."),
                what=what,
                items=_listing(items),
            )
        )
    return " ".join(out)


def render_gradient(zmap: dict[str, float], ctx: TextContext, w: _Writer) -> str:
    out = []
    ranges = list(_finite(zmap, "gradient.range.").values())
    ordinals = ("principal", "second", "third", "fourth", "fifth")
    if ranges:
        names = [ordinals[i] if i < len(ordinals) else f"G{i + 1}" for i in range(len(ranges))]
        values = [f"{z_bin(v)} {_zs(v)}" for v in ranges]
        out.append(
            w.pick(
                (
                    "the spread of the {names} {gradients} is {values}.",
                    "along the {names} functional {gradients}, the range is {values}.",
                ),
                names=_listing(names),
                gradients="gradients" if len(names) > 1 else "gradient",
                values=_listing(values),
            )
        )
    pos = _finite(zmap, "gradient.position.")
    if pos:
        low_end, high_end = ctx.gradient_ends
        top = [k for k in sorted(pos, key=lambda k: -abs(pos[k])) if abs(pos[k]) >= NOTABLE][:2]
        if not top:
            out.append(
                w.pick(
                    (
                        "every network sits at its typical position on the principal gradient.",
                        "network positions along the principal gradient are typical.",
                    )
                )
            )
        for k in top:
            end = high_end if pos[k] > 0 else low_end
            out.append(
                w.pick(
                    (
                        "on the principal gradient, {net} is shifted toward the {end} end {z}.",
                        "{net} sits closer to the {end} end of the principal gradient than usual {z}.",
                    ),
                    net=_net(ctx, k[len("gradient.position.") :]),
                    end=end,
                    z=_zs(pos[k]),
                )
            )
    return " ".join(out)


ICA_PHRASES = {
    "amplitude": "fluctuation amplitude",
    "lf_hf_log_ratio": "low-to-high frequency power ratio",
    "falff": "fractional amplitude of low-frequency fluctuations",
    "autocorr": "lag-1 autocorrelation",
    "coupling": "coupling with the other components",
    "map_similarity": "similarity to its group map",
}


def render_ica(zmap: dict[str, float], ctx: TextContext, w: _Writer) -> str:
    out = []
    for metric in ICA_METRICS:
        prefix = f"ica.{metric}.IC"
        values = _finite(zmap, prefix)
        if not values:
            continue
        k = max(values, key=lambda n: abs(values[n]))
        c = int(k[len(prefix) :])
        label = ctx.components[c - 1] if c - 1 < len(ctx.components) else ""
        out.append(
            w.pick(
                (
                    "{what} deviates most in component {c} ({label}): {bin} {z}.",
                    "among the group components, {what} is most atypical in component {c} ({label}), {bin} {z}.",
                    "component {c} ({label}) deviates most in {what}: {bin} {z}.",
                ),
                what=ICA_PHRASES[metric],
                c=c,
                label=label,
                bin=z_bin(values[k]),
                z=_zs(values[k]),
            )
        )
    if np.isfinite(z := zmap.get("ica.coupling", np.nan)):
        out.append(
            w.pick(
                (
                    "overall coupling between components is {bin} {z}.",
                    "coupling among the components is {bin} {z}.",
                ),
                bin=z_bin(z),
                z=_zs(z),
            )
        )
    return " ".join(out)


RENDERERS = {"fc": render_fc, "graph": render_graph, "gradient": render_gradient, "ica": render_ica}


def render(z: np.ndarray, names: list[str], ctx: TextContext, seed: int = 0) -> dict[str, str]:
    """Text of every family for one z vector; the same ``seed`` gives the same phrasing."""
    zmap = {n: float(v) for n, v in zip(names, np.asarray(z, dtype=np.float64), strict=True)}
    writer = _Writer(seed)
    return {family: fn(zmap, ctx, writer) for family, fn in RENDERERS.items()}
