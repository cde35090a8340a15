"""Third-party log records and warnings that tell an administrator nothing to act on, dropped precisely: each by
its logger (or warning category and module) and its message, with the reason. Measured on a node's log (a PET/CT
study and a CT follow-up analysed, results sent): these made about 70 % of its lines. Any other record of these
libraries still comes through.

Installed by the entry points (`immunode.logging_setup.configure_logging`) and in the processes a pipeline starts
itself (pyradiomics' extraction processes), which never configure logging.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    logger: str  # the logger that emits it (a logger's filter sees only the records logged at that logger)
    message: str  # regular expression, searched in the formatted message
    why: str


NOISE = (
    Noise(
        "pydicom",
        r"^The value length \(\d+\) exceeds the maximum length of \d+ allowed for VR [A-Z]{2}\.$",
        "a source header with an over-long value (e.g. a 18-character StudyID), repeated at every read of every "
        "file; the output module conforms such values and logs what it changed, once per object",
    ),
    Noise(
        "radiomics.glcm",
        r"^GLCM is symmetrical, therefore Sum Average = 2 \* Joint Average, only 1 needs to be calculated$",
        "the published feature set extracts both; pyradiomics says so for every volume and every image type",
    ),
    Noise(
        "alembic.runtime.migration",
        r"^(Context impl \w+\.|Will assume (non-)?transactional DDL\.)$",
        "alembic's set-up lines at every opening of the index; the migrations it runs are still logged",
    ),
)

# (message, category, module) for warnings.filterwarnings ("": any module).
WARNINGS = (
    # The same over-long value as the pydicom record above, as a Python warning.
    (r"The value length \(\d+\) exceeds the maximum length of \d+ allowed for VR", UserWarning, r"pydicom\."),
    # highdicom's check of a source's single-component Patient's Name copied into an output (attributed to its
    # caller): the warning quotes the patient's name, which never goes into the log.
    (r"The string \".*\" is unlikely to represent the intended person name", UserWarning, ""),
)


class DropNoise(logging.Filter):
    def __init__(self, patterns: tuple[re.Pattern[str], ...]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.patterns)


def quiet_third_party() -> None:
    """Install the filters (idempotent: a logger gets at most one)."""
    by_logger: dict[str, list[re.Pattern[str]]] = {}
    for noise in NOISE:
        by_logger.setdefault(noise.logger, []).append(re.compile(noise.message))
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        for installed in [f for f in logger.filters if isinstance(f, DropNoise)]:
            logger.removeFilter(installed)
        logger.addFilter(DropNoise(tuple(patterns)))
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
