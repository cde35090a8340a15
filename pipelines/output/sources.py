"""Source images made safe to derive from: highdicom copies the Patient and Study modules of the source into
every SEG and SR, so whatever a vendor got wrong there would make our object invalid (and it would never be
sent). Before building, each source's copied attributes are conformed (in place, on our own read copies), at the root
and, recursively, in every item of their sequences, by the attribute types the standard gives them in the
modules copied (highdicom's module tables):

- an item that lacks a Type 1 attribute, or holds it empty or invalid (a Referenced Study Sequence item with an
  empty Referenced SOP Class UID, from a real Philips PET/CT), is left out; a sequence left without items is
  left out (Type 1C, 3) or kept empty (Type 2); an optional module whose Type 1 attribute cannot be kept is
  left out whole;
- empty Type 1C attributes are left out; Type 2 attributes a present module or item lacks are added empty;
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

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom import config as pydicom_config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VM, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
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
DEFAULT_REPERTOIRE = ("", "ISO_IR 6", "ISO 2022 IR 6")
DEIDENTIFICATION_NOT_STATED = "Not stated by the source; de-identified before receipt"


@dataclass(frozen=True)
class _Module:
    """A module highdicom copies from a source: its name, whether the IOD requires it, and its attributes by the
    path of sequences they sit in (() for the root)."""

    key: str
    mandatory: bool
    attributes: dict[tuple[str, ...], list[tuple[str, str]]]

    @property
    def name(self) -> str:
        return " ".join(word.capitalize() for word in self.key.split("-"))


@functools.cache
def _copied_modules(sop_class_uid: str) -> tuple[_Module, ...]:
    """The Patient and Study modules of the source's IOD (what highdicom copies), with every attribute the
    standard defines in them, nested ones included."""
    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return ()
    attribute_map = get_module_attribute_map()
    modules = []
    for module in get_iod_module_map()[iod]:
        if module["ie"] not in ("Patient", "Study"):
            continue
        attributes: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for item in attribute_map[module["key"]]:
            if tag_for_keyword(item["keyword"]) is not None:
                attributes.setdefault(tuple(item["path"]), []).append((item["keyword"], str(item["type"])))
        modules.append(_Module(module["key"], module["usage"] == "M", attributes))
    return tuple(modules)


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


def _empty(element: DataElement) -> bool:
    return element.value is None or element.value == "" or (element.VR == "SQ" and len(element.value) == 0)


def _conform_value(ds: Dataset, keyword: str, kind: str, where: str, changes: list[str]) -> str:
    """Make one non-sequence value valid for its VR (joined, cut, upper-cased, emptied or left out); returns
    the problem when a Type 1 value cannot be kept."""
    element = ds[keyword]
    value = element.value
    if element.VM > 1 and dictionary_VM(element.tag) == "1":
        # Several values where one is allowed (a backslash inside a description, say): text is joined.
        joined = " ".join(str(v) for v in value) if element.VR in TEXT_VRS else value[0]
        element.value = value = joined
        changes.append(f"{where}{keyword}: {element.VM} values where one is allowed, joined")
    limit = MAX_LENGTH.get(element.VR)
    if limit is not None and element.VM == 1 and len(str(value)) > limit:
        element.value = value = str(value)[:limit]
        changes.append(f"{where}{keyword}: cut to {limit} characters")
    if element.VR == "CS" and element.VM == 1 and str(value) != str(value).upper():
        element.value = value = str(value).upper()
        changes.append(f"{where}{keyword}: upper-cased")
    values = list(value) if element.VM > 1 else [value]
    if all(_valid(element.VR, v) for v in values):
        return ""
    if kind == "1":
        return f"{keyword} (Type 1) invalid for {element.VR}"
    if kind.startswith("2"):
        element.value = None
        changes.append(f"{where}{keyword}: invalid for {element.VR}, left empty")
    else:
        del ds[keyword]
        changes.append(f"{where}{keyword}: invalid for {element.VR}, left out")
    return ""


def _conform_level(
    ds: Dataset, module: _Module, path: tuple[str, ...], where: str, changes: list[str], present: bool
) -> list[str]:
    """Conform the attributes the module defines at `path` in `ds` (the root, or an item of a sequence),
    recursively; returns the Type 1 problems that make this level invalid (the caller leaves it out).
    `present`: the level exists (Type 2 attributes it lacks are added empty)."""
    problems = []
    for keyword, kind in module.attributes.get(path, []):
        if keyword not in ds:
            if kind == "1" and path:
                problems.append(f"{keyword} (Type 1) missing")
            elif kind == "2" and present:
                setattr(ds, keyword, None)
                changes.append(f"{where}{keyword}: missing, added empty")
            continue
        element = ds[keyword]
        if element.VR == "SQ":
            kept = []
            for number, item in enumerate(element.value, start=1):
                at = f"{where}{keyword} item {number} "
                wrong = _conform_level(item, module, (*path, keyword), at, changes, True)
                if wrong:
                    changes.append(f"{at.strip()}: {'; '.join(wrong)}; item left out")
                else:
                    kept.append(item)
            if len(kept) != len(element.value):
                element.value = kept
            if kept or kind.startswith("2"):
                continue
            if kind == "1":
                problems.append(f"{keyword} (Type 1) without a valid item")
            else:
                del ds[keyword]
                changes.append(f"{where}{keyword}: empty sequence left out")
            continue
        if _empty(element):
            if kind == "1":
                problems.append(f"{keyword} (Type 1) empty")
            elif kind == "1C":
                del ds[keyword]
                changes.append(f"{where}{keyword}: empty (Type 1C), left out")
            continue
        problem = _conform_value(ds, keyword, kind, where, changes)
        if problem:
            problems.append(problem)
    return problems


def _conform_frame_of_reference(ds: Dataset, changes: list[str]) -> None:
    """A Frame of Reference UID that is also the study's, series' or instance's UID (a real reference data set
    writes one UID for both) is not unique (PS3.5 9.1), and dciodvfy refuses the derived object: ours gets a
    Frame of Reference UID derived from it (the same for every source, so the stack stays one frame)."""
    frame = str(ds.get("FrameOfReferenceUID", ""))
    if not frame:
        return
    clashes = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if str(ds.get(k, "")) == frame]
    if clashes:
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["immunode-frame-of-reference", frame])
        changes.append(
            f"FrameOfReferenceUID: the same UID as the {', '.join(clashes)} (not unique), replaced by "
            f"{ds.FrameOfReferenceUID} derived from it"
        )


def conform_source(ds: Dataset) -> list[str]:
    """Make the attributes highdicom copies from `ds` valid, in items of sequences too; returns what was changed
    (keyword: what)."""
    changes: list[str] = []
    ds.remove_private_tags()
    for keyword in HIGHDICOM_READS:
        if keyword not in ds:
            setattr(ds, keyword, None)
            changes.append(f"{keyword}: missing, added empty")
    for module in _copied_modules(str(ds.get("SOPClassUID", ""))):
        root = module.attributes.get((), [])
        present = module.mandatory or any(keyword in ds for keyword, _ in root)
        if not present:
            continue
        problems = _conform_level(ds, module, (), "", changes, present)
        if problems and not module.mandatory:
            for keyword, _ in root:
                if keyword in ds:
                    del ds[keyword]
            changes.append(f"{module.name} module left out: {'; '.join(problems)}")
        elif problems:
            changes.append(f"{module.name} module: {'; '.join(problems)} (not repairable)")
    _conform_frame_of_reference(ds, changes)
    removed = str(ds.get("PatientIdentityRemoved", "")).strip().upper() == "YES"
    if removed and not ds.get("DeidentificationMethod") and not ds.get("DeidentificationMethodCodeSequence"):
        ds.DeidentificationMethod = DEIDENTIFICATION_NOT_STATED
        changes.append("DeidentificationMethod: not stated by the source, added as such")
    return changes


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def conform_geometry(datasets: Sequence[Dataset]) -> list[str]:
    """A stack of single-frame images as a SEG's Pixel Measures take it: highdicom copies the source's Spacing
    Between Slices, which some vendors write signed for the slice order (a real Philips CT: -3.0); one that is
    not positive is left out, so that the SEG's is computed from the image positions, positive whatever the
    order. A Slice Thickness that is missing or not positive is taken as the spacing of the positions."""
    images = [ds for ds in datasets if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds]
    multiframe = any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in images)
    if not images or len(images) != len(datasets) or multiframe:
        return []
    orientation = np.asarray(images[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.sort([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for ds in images])
    steps = np.diff(positions)
    spacing = float(np.median(steps)) if steps.size and np.median(steps) > 0 else None
    changes: dict[str, None] = {}
    for ds in images:
        between = _number(ds.get("SpacingBetweenSlices"))
        if "SpacingBetweenSlices" in ds and (between is None or between <= 0):
            changes.setdefault(
                f"SpacingBetweenSlices {ds.SpacingBetweenSlices}: not positive, left out (the SEG's is computed "
                "from the image positions)",
                None,
            )
            del ds.SpacingBetweenSlices
        thickness = _number(ds.get("SliceThickness"))
        if (thickness is None or thickness <= 0) and spacing is not None:
            ds.SliceThickness = f"{spacing:.6g}"
            note = f"SliceThickness: missing or not positive, the slice spacing {spacing:.6g} mm taken"
            changes.setdefault(note, None)
    return list(changes)


def conform_sources(datasets: Sequence[Dataset]) -> list[str]:
    """Conform every source and the geometry of the stack; returns the distinct changes (for the log and the
    SR)."""
    changes: dict[str, None] = {}
    for ds in datasets:
        for change in conform_source(ds):
            changes.setdefault(change, None)
    for change in conform_geometry(datasets):
        changes.setdefault(change, None)
    if changes:
        logger.warning("source attributes conformed before deriving: %s", "; ".join(changes))
    return list(changes)


def _encodable(dataset: Dataset) -> bool:
    """Whether every text value of the object can be written in its Specific Character Set."""
    declared = dataset.get("SpecificCharacterSet") or "ISO_IR 6"
    terms = list(declared) if isinstance(declared, (list, MultiValue)) else [declared]
    # The default repertoire is ASCII (pydicom decodes it leniently as Latin-1; a validator does not).
    codecs = [
        "ascii" if str(term).strip() in DEFAULT_REPERTOIRE else python_encoding.get(str(term).strip(), "ascii")
        for term in terms
    ]
    found: list[str] = []

    def walk(ds: Dataset) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)
            elif element.VR in TEXT_VRS and element.value:
                found.extend(str(v) for v in (element.value if element.VM > 1 else [element.value]))

    walk(dataset)
    for text in found:
        if not any(_encodes(text, codec) for codec in codecs):
            return False
    return True


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def conform_copied_attributes(dataset: Dataset) -> list[str]:
    """Truncate top-level values of our own object that arrived over-long from the source (e.g. an
    18-character StudyID), so that our object is valid even when its source was not; an object whose text
    its character set cannot hold (a "×" in a statement, a name from a Latin-1 source) is written in UTF-8
    (ISO_IR 192). Returns the keywords changed."""
    changed = []
    if not _encodable(dataset):
        dataset.SpecificCharacterSet = "ISO_IR 192"
        changed.append("SpecificCharacterSet")
    for element in dataset:
        limit = MAX_LENGTH.get(element.VR)
        if limit is None or element.value is None or element.VM != 1:
            continue
        text = str(element.value)
        if len(text) > limit:
            element.value = text[:limit]
            changed.append(element.keyword)
    if changed:
        logger.warning("conformed attributes of our object (from the source or our text): %s", ", ".join(changed))
    return changed
