"""Errors of the research commands; each names the file, row and column or the missing input."""


class ResearchError(Exception):
    """Base class: a research command cannot use its input."""


class DeltaTableError(ResearchError):
    """A Δ table or label file cannot be used."""


class CohortError(ResearchError):
    """A cohort table (expression or fusion training) cannot be used."""


class ManifestError(ResearchError):
    """A lesion manifest for CytAct training cannot be used."""


class OutcomeTableError(ResearchError):
    """An outcome table cannot be used."""
