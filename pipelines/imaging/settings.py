"""Configuration block `pipelines.annotations`: which readers' contours and segments are lesions, and when
overlapping regions are one lesion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from common.settings import Strict, valid_regex


class AnnotationSettings(Strict):
    """Readers' annotations (RTSTRUCT ROIs, SEG segments): which are lesions, which are lymph nodes."""

    # RTSTRUCT ROIs of these RT ROI Interpreted Types are not lesions, unless their name is a TG-263 gross tumour
    # volume (GTV..., the target name wins over the type; see pipelines/imaging/contours.py `classify`).
    non_lesion_roi_types: list[str] = Field(
        default_factory=lambda: [
            "ORGAN",
            "EXTERNAL",
            "PTV",
            "CTV",
            "AVOIDANCE",
            "BOLUS",
            "SUPPORT",
            "FIXATION",
            "CONTROL",
            "REGISTRATION",
            "ISOCENTER",
            "MARKER",
            "DOSE_REGION",
            "CONTRAST_AGENT",
            "CAVITY",
            "BRACHY_CHANNEL",
            "BRACHY_ACCESSORY",
            "BRACHY_SRC_APP",
            "BRACHY_CHNL_SHLD",
            "TREATED_VOLUME",
            "IRRAD_VOLUME",
            "OAR",
        ]  # fmt: skip
    )
    # Planning volumes (by TG-263 name CTV/ITV/PTV..., or by type CTV/PTV) are not lesions unless listed here.
    planning_volumes: list[Literal["CTV", "ITV", "PTV"]] = Field(default_factory=list)
    # Regions of different annotations (PET and CT contours, a SEG and an RTSTRUCT, two readers) are one lesion
    # when their overlap on the analysed grid is at least this fraction of the smaller region (our choice).
    merge_overlap: float = Field(0.5, gt=0, le=1)
    # An ROI without a type, or a SEG segment, labelled like this is a lesion ...
    lesion_label: str = r"(?i)(gtv|\bmet|metast|lesion|tumou?r|nodul|mass|\bnode|\bLN\b|primary)"
    # ... and otherwise, labelled like this, an organ, the body outline or a planning volume.
    non_lesion_label: str = (
        r"(?i)^(z_|opt|ptv|ctv|itv|prv|body|external|skin|outline|patient|couch|table)|"
        r"(lung|heart|cord|spinal|esophag|oesophag|trachea|bronch|liver|kidney|spleen|stomach|bowel|"
        r"bladder|rectum|femur|brain|stem|chiasm|optic|lens|eye|cochlea|parotid|mandible|larynx|thyroid|"
        r"pharyn|constrictor|cavity|bone|rib|sternum|vertebra|muscle|aorta|vessel|artery|vein|plexus)"
    )
    # Labels matching this are lymph nodes (RECIST 1.1 short-axis rule).
    lymph_node_label: str = r"(?i)(lymph|\bnode|\bLN\b)"

    @field_validator("lymph_node_label", "lesion_label", "non_lesion_label")
    @classmethod
    def _regex(cls, value: str) -> str:
        return valid_regex(value)

    @field_validator("non_lesion_roi_types")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [item.strip().upper() for item in value]
