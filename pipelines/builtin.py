"""The pipelines every node runs, and the configuration blocks they share."""

from __future__ import annotations

from pipelines.compute import ComputeSettings
from pipelines.ct.pipeline import CT_RADIOMICS
from pipelines.histology.pipeline import HISTOLOGY
from pipelines.imaging.settings import AnnotationSettings
from pipelines.omics.settings import ResponseModelSettings
from pipelines.pet.pipeline import PET_QUANT
from pipelines.registry import Registry

BUILTIN = Registry(
    pipelines=(PET_QUANT, CT_RADIOMICS, HISTOLOGY),
    shared=(
        ("annotations", AnnotationSettings),
        ("response", ResponseModelSettings),
        ("compute", ComputeSettings),
    ),
)
