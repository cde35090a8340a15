"""Configuration block `pipelines.response`: the response models served with the PET report, and the schema of
the blood immune profile a site imports."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from common.settings import Strict


class BloodMarker(Strict):
    """One column of the blood immune-profile import: its name in the file, its unit, what it is."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    unit: str = ""
    description: str = ""


DEFAULT_BLOOD_MARKERS = (
    BloodMarker(name="nlr", unit="1", description="neutrophil-to-lymphocyte ratio"),
    BloodMarker(name="dnlr", unit="1", description="derived NLR: neutrophils / (white cells - neutrophils)"),
    BloodMarker(name="lymphocytes", unit="10^9/L", description="absolute lymphocyte count"),
    BloodMarker(name="neutrophils", unit="10^9/L", description="absolute neutrophil count"),
    BloodMarker(name="monocytes", unit="10^9/L", description="absolute monocyte count"),
    BloodMarker(name="cd8", unit="cells/uL", description="CD8+ T cells"),
    BloodMarker(name="crp", unit="mg/L", description="C-reactive protein"),
    BloodMarker(name="il6", unit="pg/mL", description="interleukin-6"),
)


class ResponseModelSettings(Strict):
    """Patient-level response models added to the PET report when the patient has imported data."""

    # Trained weights (with their .card.json); None: that model is not run and the SR says so.
    expression_weights: Path | None = None
    fusion_weights: Path | None = None
    # The blood immune profile at T0 and T1 (`immunode import blood`): the columns a site has, each declared
    # here; a file with an undeclared column is rejected. Their change T0 -> T1 is reported beside LIPI.
    blood_markers: list[BloodMarker] = Field(default_factory=lambda: list(DEFAULT_BLOOD_MARKERS))

    @field_validator("blood_markers")
    @classmethod
    def _unique(cls, value: list[BloodMarker]) -> list[BloodMarker]:
        names = [m.name for m in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"blood markers declared twice: {', '.join(repeated)}")
        return value
