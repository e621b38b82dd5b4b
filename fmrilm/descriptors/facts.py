"""Scan facts: a short line of descriptor text, computed from a whole scan, that prompts carry beside its tokens.

The connectome tokens keep the trait signal that connectivity models use, but not which network pair is most
or least coupled relative to the reference: a linear reader of everything the LLM receives names the most
coupled pair of a held-out scan on 10.3% of scans against 9.0% for always giving the most frequent pair
(BENCHMARKS.md, "Descriptor questions: what the input allows"). That ranking is a computation on the scan, so
library code does it (the same code and reference statistics that built the corpus's answers) and the prompt
states it in words; the LLM reads those words next to the brain tokens::

    Most elevated coupling: visual and medial temporal lobe.

One pair, about ten tokens: every training prompt carries the line, and a CPU step costs per token. Nothing here
sees a phenotype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fmrilm.descriptors.connectivity import correlation, fc_feature_names, fc_features, fisher_z
from fmrilm.descriptors.text import humanize_network

FACTS_PREFIX = "Most elevated coupling:"


class CouplingFacts:
    """The facts line of scans of one reference's atlas: z of every between-network pair, ranked.

    Computes only the FC family (one correlation matrix per scan), the same numbers the corpus's full
    feature extractor gives in its first block, z-scored with the reference's whole-scan statistics.
    """

    def __init__(self, reference: Any) -> None:
        self.reference = reference
        names = fc_feature_names(reference.atlas)
        index = {n: i for i, n in enumerate(reference.feature_names)}
        missing = [n for n in names if n not in index]
        if missing or "scan" not in reference.stats:
            raise ValueError("reference statistics without whole-scan FC statistics cannot state scan facts")
        self.columns = np.array([index[n] for n in names])
        self.pairs = [
            (i, tuple(n[len("fc.between.") :].split("~")))
            for i, n in enumerate(names)
            if n.startswith("fc.between.")
        ]

    def matches(self, scan: Any) -> bool:
        """Whether ``scan`` is on this reference's atlas: the same name and the same regions, in any order."""
        atlas = getattr(scan, "atlas", None)
        ref = self.reference.atlas
        return (
            atlas is not None
            and atlas.name == ref.name
            and atlas.n_regions == ref.n_regions
            and sorted(map(str, atlas.labels)) == sorted(map(str, ref.labels))
        )

    def _in_reference_order(self, scan: Any) -> Any:
        """The scan with its regions in the reference atlas's order (networks are read by region)."""
        labels = [str(x) for x in scan.atlas.labels]
        wanted = [str(x) for x in self.reference.atlas.labels]
        if labels == wanted:
            return scan
        from dataclasses import replace

        position = {label: i for i, label in enumerate(labels)}
        order = np.array([position[label] for label in wanted])
        moved = {int(old): new for new, old in enumerate(order)}
        flags = dict(scan.flags)
        if "bad_regions" in flags:  # region indices follow the regions
            flags["bad_regions"] = sorted(moved[int(i)] for i in flags["bad_regions"])
        return replace(scan, timeseries=scan.timeseries[:, order], atlas=self.reference.atlas, flags=flags)

    def pair_z(self, scan: Any) -> dict[tuple[str, str], float]:
        """z of every between-network pair's mean coupling in the whole scan, against the reference."""
        import warnings

        from fmrilm.descriptors.features import _blas_limit
        from fmrilm.signal import BadRegionWarning

        with warnings.catch_warnings():  # the scan's tokens already reported its bad regions once
            warnings.simplefilter("ignore", BadRegionWarning)
            ts = self.reference.prepare(self._in_reference_order(scan))
        with _blas_limit():
            fc = fc_features(fisher_z(correlation(ts[None])), self.reference.atlas)[0]
        values = np.full(len(self.reference.feature_names), np.nan)  # the other families are not needed
        values[self.columns] = fc
        z = self.reference.zscore(values[None], unit="scan")[0][self.columns]
        return {pair: float(z[i]) for i, pair in self.pairs if np.isfinite(z[i])}

    def text(self, scan: Any) -> str:
        """The facts line of ``scan``; empty when its atlas has no between-network pair."""
        return render_coupling_facts(self.pair_z(scan))


def render_coupling_facts(pair_z: dict[tuple[str, str], float]) -> str:
    """The most elevated between-network pair, named as the instruction answers name it ("A and B")."""
    if not pair_z:
        return ""
    a, b = max(pair_z, key=pair_z.get)  # first of equals in feature order, as the corpus's argmax
    return f"{FACTS_PREFIX} {humanize_network(a)} and {humanize_network(b)}."
