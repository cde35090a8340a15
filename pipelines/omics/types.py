"""Values of imported genomic and clinical data and of the response models served with the PET and histology
reports."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.types import ModelIdentity


@dataclass(frozen=True)
class ResponsePredictions:
    """Patient-level response models served with the PET and histology reports; each part says why when absent."""

    expression_probability: float | None = None
    expression_model: ModelIdentity | None = None
    expression_sample: str = ""
    expression_not_computed: str = ""
    fusion_probability: float | None = None
    fusion_weights: tuple[tuple[str, float], ...] = ()  # (modality, weight) of the modalities present
    fusion_model: ModelIdentity | None = None
    fusion_not_computed: str = ""
    lipi: str = ""  # good / intermediate / poor
    dnlr: float | None = None
    lipi_not_computed: str = ""
    blood_changes: tuple[BloodChange, ...] = ()  # T0 -> T1 of the imported blood immune profile
    blood_not_computed: str = ""


@dataclass(frozen=True)
class BloodChange:
    """A blood marker at T0 and T1 and its relative change, Δ% = (T1 - T0) / T0 x 100 (None when T0 is 0)."""

    marker: str
    unit: str
    t0: float
    t1: float
    delta_percent: float | None


@dataclass(frozen=True)
class ImportProblem:
    """One rejected value of an import file: where it is and why (rows count from 1, the header is row 1)."""

    file: str
    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column!r}" if self.column else "")
        return f"{self.file}: {where}: {self.reason}"
