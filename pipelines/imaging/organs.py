"""The organ of a lesion in words a RECIST reader uses, for the "two target lesions per organ" rule.

RECIST 1.1 counts paired organs and all lymph nodes as one organ each (EORTC RECIST FAQ, "Paired organs":
lung, kidney, ovaries, lymph nodes are one organ whatever their parts). A lesion's organ comes, in this order,
from what the reader said (a TID 1500 Finding Site, a SEG Anatomic Region, an RTSTRUCT ROI or SEG segment
name; a region marked a lymph node) and else from the CT (`pipelines.petlesions.anatomy`: lung, bone); otherwise it
is unknown (""), and the patient summary handles unknown organs conservatively (`pipelines.pet.cytact`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LYMPH_NODE = "lymph node"
UNKNOWN = ""

# First match wins: node words before organ words ("LN hilar lung" is a node, "Lung_L" a lung).
_ORGAN_WORDS: tuple[tuple[str, str], ...] = (
    (r"lymph|\bnod(e|al)|(^|[^a-z])LN([^a-z]|$)|adenopath", LYMPH_NODE),
    (r"lung|pulmon|\bRUL\b|\bRML\b|\bRLL\b|\bLUL\b|\bLLL\b", "lung"),
    (r"pleura", "pleura"),
    (r"liver|hepat", "liver"),
    (r"adrenal", "adrenal gland"),
    (r"kidney|renal", "kidney"),
    (r"spleen|splen", "spleen"),
    (r"pancrea", "pancreas"),
    (r"brain|cerebr|cerebell", "brain"),
    (r"bone|osseous|skelet|vertebra|spine|rib\b|ribs|sternum|pelvic bone|ilium|iliac bone|sacrum|femur|"
     r"femoral head|humerus|skull|scapula|clavicle", "bone"),
    (r"peritone|omentum|mesenter", "peritoneum"),
    (r"tonsil|pharyn|larynx|laryng|tongue|oral|parotid|submandibular|thyroid", "head and neck mucosa or gland"),
    (r"breast", "breast"),
    (r"ovar", "ovary"),
    (r"prostat", "prostate"),
    (r"bladder", "urinary bladder"),
    (r"oesophag|esophag", "oesophagus"),
    (r"stomach|gastr", "stomach"),
    (r"colon|rectum|bowel|intestin|duoden", "bowel"),
    (r"skin|subcutan|soft tissue|muscle|thigh|extremit|limb|\barm\b|\bleg\b", "soft tissue"),
)
_COMPILED = tuple((re.compile(pattern, re.IGNORECASE), organ) for pattern, organ in _ORGAN_WORDS)


def organ_from_text(text: str) -> str:
    """The organ a reader's words name (a finding site's code meaning, a contour or segment name), "" if none."""
    for pattern, organ in _COMPILED:
        if pattern.search(text or ""):
            return organ
    return UNKNOWN


def reader_organ(lymph_node: bool, words: Sequence[str]) -> tuple[str, str]:
    """The organ from what the reader said (a node mark, then each finding site or name in turn) and where it came
    from; ("", "") when the reader's words name none."""
    if lymph_node:
        return LYMPH_NODE, "marked a lymph node by the reader"
    for text in words:
        organ = organ_from_text(text)
        if organ:
            return organ, f"from the reader's {text!r}"
    return UNKNOWN, ""
