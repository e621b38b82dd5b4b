"""Imaging descriptors: features of a scan's windows, z values against reference statistics, and text.

    ref = ReferenceStats.fit(train_cohort)          # or ReferenceStats.load("reference.json")
    for d in ref.describe(scan):                     # one Descriptor per window
        print(d.window, d.text)                      # sentences per family; d.z is the z-feature vector

Families: functional connectivity (``fc``), graph metrics (``graph``), functional gradients (``gradient``) and
group-ICA component time courses (``ica``). The same code builds the training corpus and describes scans at
inference, so the text a model reads never drifts from what it was trained on.
"""

from fmrilm.descriptors.features import FAMILIES, FeatureConfig, FeatureExtractor, feature_names
from fmrilm.descriptors.ica import GroupICA
from fmrilm.descriptors.reference import Descriptor, ReferenceStats
from fmrilm.descriptors.text import TextContext, format_z, humanize_network, render, z_bin

__all__ = [
    "FAMILIES",
    "Descriptor",
    "FeatureConfig",
    "FeatureExtractor",
    "GroupICA",
    "ReferenceStats",
    "TextContext",
    "feature_names",
    "format_z",
    "humanize_network",
    "render",
    "z_bin",
]
