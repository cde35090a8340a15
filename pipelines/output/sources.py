"""Source images made safe to derive from: highdicom copies the Patient and Study modules of the source into
every SEG and SR, so whatever a vendor got wrong there would make our object invalid (and it would never be
sent). Before building, each source's copied attributes are conformed (in place, on our own read copies):

- empty sequences of type 3 (e.g. an empty Referenced Study Sequence) are left out;
- over-long text values are cut to their VR's length, lower-case code strings upper-cased;
- other values that break their VR are left out (type 3) or left empty (type 2);
- Patient Identity Removed = YES without a De-identification Method gets one that says the method was not
  stated by the source (the attribute is conditionally required, and research data sets often lack it);
- private elements are removed (never copied into our objects);
- type 2 Patient and Study attributes that highdicom reads and the source lacks are added empty.

What was changed is returned as text, so that the SR can say so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VM
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

logger = logging.getLogger(__name__)

TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC", "PN"}
MAX_LENGTH = {"SH": 16, "LO": 64, "CS": 16, "AE": 16, "ST": 1024, "LT": 10240, "PN": 64, "UC": 2**32 - 2}
# Type 2 attributes of the Patient and Study modules highdicom reads from every source (it fails without
# them); real whole-slide images often lack them (the sample in ../shared/data has no Patient module at all).
HIGHDICOM_READS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
DEIDENTIFICATION_NOT_STATED = "Not stated by the source; de-identified before receipt"


def _copied_attributes(sop_class_uid: str) -> list[tuple[str, str]]:
    """(keyword, type) of the root attributes highdicom copies from a source of this SOP class."""
    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return []
    modules = [m["key"] for m in get_iod_module_map()[iod] if m["ie"] in ("Patient", "Study")]
    attribute_map = get_module_attribute_map()
    return [(item["keyword"], str(item["type"])) for key in modules for item in attribute_map[key] if not item["path"]]


def _valid(vr: str, value: object) -> bool:
    if vr in ("DS", "IS"):  # pydicom's number types: validate the text they are written as
        value = str(value.original_string if getattr(value, "original_string", None) else value)
    try:
        validate_value(vr, value, pydicom_config.RAISE)
    except (ValueError, TypeError):
        return False
    if vr == "PN":  # at most five components (four carets) and 64 characters per component group
        return all(group.count("^") <= 4 and len(group) <= 64 for group in str(value).split("="))
    return True


def conform_source(ds: Dataset) -> list[str]:
    """Make the attributes highdicom copies from `ds` valid; returns what was changed (keyword: what)."""
    changes: list[str] = []
    ds.remove_private_tags()
    for keyword in HIGHDICOM_READS:
        if keyword not in ds:
            setattr(ds, keyword, None)
            changes.append(f"{keyword}: missing, added empty")
    for keyword, kind in _copied_attributes(str(ds.get("SOPClassUID", ""))):
        if keyword not in ds:
            continue
        element = ds[keyword]
        if element.VR == "SQ":
            if len(element.value) == 0 and kind.startswith(("1", "3")):
                del ds[keyword]
                changes.append(f"{keyword}: empty sequence left out")
            continue
        value = element.value
        if value is None or value == "":
            continue
        if element.VM > 1 and dictionary_VM(element.tag) == "1":
            # Several values where one is allowed (a backslash inside a description, say): text is joined.
            joined = " ".join(str(v) for v in value) if element.VR in TEXT_VRS else value[0]
            element.value = value = joined
            changes.append(f"{keyword}: {element.VM} values where one is allowed, joined")
        limit = MAX_LENGTH.get(element.VR)
        if limit is not None and element.VM == 1 and len(str(value)) > limit:
            element.value = value = str(value)[:limit]
            changes.append(f"{keyword}: cut to {limit} characters")
        if element.VR == "CS" and element.VM == 1 and str(value) != str(value).upper():
            element.value = value = str(value).upper()
            changes.append(f"{keyword}: upper-cased")
        values = list(value) if element.VM > 1 else [value]
        if all(_valid(element.VR, v) for v in values):
            continue
        if kind.startswith("2"):
            element.value = None
            changes.append(f"{keyword}: invalid for {element.VR}, left empty")
        else:
            del ds[keyword]
            changes.append(f"{keyword}: invalid for {element.VR}, left out")
    removed = str(ds.get("PatientIdentityRemoved", "")).strip().upper() == "YES"
    if removed and not ds.get("DeidentificationMethod") and not ds.get("DeidentificationMethodCodeSequence"):
        ds.DeidentificationMethod = DEIDENTIFICATION_NOT_STATED
        changes.append("DeidentificationMethod: not stated by the source, added as such")
    return changes


def conform_sources(datasets: Sequence[Dataset]) -> list[str]:
    """Conform every source; returns the distinct changes (for the log and the SR)."""
    changes: dict[str, None] = {}
    for ds in datasets:
        for change in conform_source(ds):
            changes.setdefault(change, None)
    if changes:
        logger.warning("source attributes conformed before deriving: %s", "; ".join(changes))
    return list(changes)


def conform_copied_attributes(dataset: Dataset) -> list[str]:
    """Truncate top-level values of our own object that arrived over-long from the source (e.g. an
    18-character StudyID), so that our object is valid even when its source was not; returns the keywords."""
    changed = []
    for element in dataset:
        limit = MAX_LENGTH.get(element.VR)
        if limit is None or element.value is None or element.VM != 1:
            continue
        text = str(element.value)
        if len(text) > limit:
            element.value = text[:limit]
            changed.append(element.keyword)
    if changed:
        logger.warning("truncated over-long attributes copied from the source: %s", ", ".join(changed))
    return changed
