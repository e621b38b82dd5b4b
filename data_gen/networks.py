"""Canonical network names, so the simulator's named effects mean the same thing in every atlas.

Atlases name their networks differently (Seitzman-300: "DefaultMode", "FrontoParietal", "SomatomotorDorsal";
Dosenbach-160: "default", "fronto-parietal", "sensorimotor"; Yeo-style: "Default", "Cont", "SomMot"). The
simulator states its ground truth on canonical names and records which atlas networks each one covers.

Mapping (case, spaces, '-' and '_' ignored):

| canonical          | atlas network names                                                      | role          |
| ------------------ | ------------------------------------------------------------------------ | ------------- |
| DMN                | DefaultMode, default, Default, DMN                                       | dmn           |
| FrontoParietal     | FrontoParietal, fronto-parietal, FPN, Cont, Control                      | task_positive |
| DorsalAttention    | DorsalAttention, DAN, DorsAttn                                           | task_positive |
| CinguloOpercular   | CinguloOpercular, cingulo-opercular, CON                                 | task_positive |
| VentralAttention   | VentralAttention, VAN, SalVentAttn                                       | task_positive |
| Salience           | Salience, SAL                                                            | task_positive |
| Visual             | Visual, occipital, Vis                                                   | sensory       |
| Somatomotor        | SomatomotorDorsal, SomatomotorLateral, sensorimotor, Somatomotor, SomMot | sensory       |
| Auditory           | Auditory                                                                 | sensory       |
| (any other name)   | kept as it is (e.g. cerebellum, Reward, MedialTemporalLobe)              | other         |
| unassigned         | unassigned                                                               | unassigned    |

The default-mode network is coupled negatively to every task-positive network (the classic anticorrelation).
"""

from __future__ import annotations

import re

UNASSIGNED = "unassigned"

_ALIASES: dict[str, str] = {
    "defaultmode": "DMN",
    "default": "DMN",
    "defaultmodenetwork": "DMN",
    "dmn": "DMN",
    "frontoparietal": "FrontoParietal",
    "fpn": "FrontoParietal",
    "cont": "FrontoParietal",
    "control": "FrontoParietal",
    "dorsalattention": "DorsalAttention",
    "dan": "DorsalAttention",
    "dorsattn": "DorsalAttention",
    "cinguloopercular": "CinguloOpercular",
    "con": "CinguloOpercular",
    "ventralattention": "VentralAttention",
    "van": "VentralAttention",
    "salventattn": "VentralAttention",
    "salience": "Salience",
    "sal": "Salience",
    "visual": "Visual",
    "occipital": "Visual",
    "vis": "Visual",
    "somatomotordorsal": "Somatomotor",
    "somatomotorlateral": "Somatomotor",
    "somatomotor": "Somatomotor",
    "sensorimotor": "Somatomotor",
    "sommot": "Somatomotor",
    "auditory": "Auditory",
    "unassigned": UNASSIGNED,
}

TASK_POSITIVE = ("FrontoParietal", "DorsalAttention", "CinguloOpercular", "VentralAttention", "Salience")
SENSORY = ("Visual", "Somatomotor", "Auditory")


def canonical_network(name: str) -> str:
    """The canonical name of an atlas network (unknown names are returned unchanged)."""
    key = re.sub(r"[\s_\-]+", "", str(name)).lower()
    return _ALIASES.get(key, str(name))


def network_role(canonical: str) -> str:
    """'dmn', 'task_positive', 'sensory', 'unassigned' or 'other' for a canonical network name."""
    if canonical == "DMN":
        return "dmn"
    if canonical in TASK_POSITIVE:
        return "task_positive"
    if canonical in SENSORY:
        return "sensory"
    if canonical == UNASSIGNED:
        return UNASSIGNED
    return "other"


def atlas_network_map(networks: list[str]) -> dict[str, list[str]]:
    """Canonical name -> the atlas network names it covers, for the ground-truth record."""
    out: dict[str, list[str]] = {}
    for name in dict.fromkeys(networks):
        out.setdefault(canonical_network(name), []).append(name)
    return out
