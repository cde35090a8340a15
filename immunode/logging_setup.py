"""Logging configuration, applied only by entry points (the CLI and the worker-process entry)."""

from __future__ import annotations

import logging

from immunode.config import LoggingSettings

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(settings: LoggingSettings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.file, encoding="utf-8"))
    logging.basicConfig(level=settings.level, format=FORMAT, handlers=handlers, force=True)
    # pynetdicom logs every PDU, highdicom every copied module, apscheduler every poll at INFO: warnings only.
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    # The stages are started as events as well as on the poll: APScheduler's "skipped: already running"
    # warnings are expected, its errors are not.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, logging.getLogger().level))
