"""Errors of the histology pipeline (all are pipeline errors: a job fails with their message)."""

from __future__ import annotations

from pipelines.errors import PipelineError


class SlideNotReadable(PipelineError):
    """The series is not a whole-slide image the reader can open (or its tiles cannot be decoded)."""


class NoTissue(PipelineError):
    """No patch of the slide holds enough tissue to analyse."""


class ModelsNotConfigured(PipelineError):
    """No (or unusable) encoder / MIL weights: the slide is stored, and analysed once weights are configured."""
