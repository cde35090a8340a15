"""Logging configuration, applied only by entry points (the CLI and the worker-process entry).

`logging.format`: text (one line a record) or json (one JSON object a line: time, level, process, logger, message,
and the exception when there is one; python-json-logger). Third-party records that say nothing to act on are
dropped precisely (`common.log_filters`); Python warnings go through the same handlers.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

from common.log_filters import quiet_third_party
from immunode.config import LoggingSettings

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
JSON_FIELDS = {"asctime": "time", "levelname": "level", "processName": "process", "name": "logger"}


def formatter(format_name: str) -> logging.Formatter:
    if format_name == "json":
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
            rename_fields=JSON_FIELDS,
            json_ensure_ascii=False,
        )
    return logging.Formatter(FORMAT)


def configure_logging(settings: LoggingSettings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter(settings.format))
    logging.basicConfig(level=settings.level, handlers=handlers, force=True)
    logging.captureWarnings(True)  # warnings as records, in the same format (filtered below like the rest)
    quiet_third_party()
    # pynetdicom logs every PDU, highdicom every copied module, pyradiomics every step of every extraction at
    # INFO: warnings only.
    for chatty in ("pynetdicom", "highdicom", "radiomics"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    # The stages are started as events as well as on the poll: APScheduler's "skipped: already running"
    # warnings are expected, its errors are not.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, logging.getLogger().level))
