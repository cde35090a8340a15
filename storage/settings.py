"""Configuration blocks of the store: where files go, what is deleted when, and which SQL database indexes them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from common.settings import Strict


class RetentionSettings(Strict):
    """What the node deletes on its own: nothing by default. A purge removes a complete study (files and index
    rows, results included) whose analyses and deliveries are all finished, oldest last instance first."""

    # Studies whose last instance arrived longer ago than this are purged; None: no age limit.
    max_age_days: float | None = Field(None, gt=0)
    # Disk watermarks (free space under the storage root): below `purge_below_free_mb`, studies are purged oldest
    # first until `purge_until_free_mb` are free again. None: no watermark.
    purge_below_free_mb: int | None = Field(None, ge=0)
    purge_until_free_mb: int | None = Field(None, ge=0)
    interval_s: float = Field(60.0, gt=0)  # how often the policy is applied

    @model_validator(mode="after")
    def _watermarks_in_order(self) -> RetentionSettings:
        below, until = self.purge_below_free_mb, self.purge_until_free_mb
        if (below is None) != (until is None):
            raise ValueError("purge_below_free_mb and purge_until_free_mb go together")
        if below is not None and until <= below:
            raise ValueError("purge_until_free_mb must be larger than purge_below_free_mb")
        return self

    @property
    def enabled(self) -> bool:
        return self.max_age_days is not None or self.purge_below_free_mb is not None


class StorageSettings(Strict):
    root: Path = Path("./immunode-data")
    # Stores are refused with 0xA700 (out of resources) below this much free disk.
    min_free_mb: int = Field(200, ge=0)
    # Files and folders the node creates (storage root, SQLite index, log) are readable by the service user
    # only (umask 077, root folder mode 0700); false leaves the process umask as it is.
    private: bool = True
    # After a received file is renamed into objects/ and fsynced, its folder is fsynced too ("always"), or only
    # where that file's fsync does not already make the rename durable ("auto": ext4 and XFS do, so the folder's
    # fsync, one more device flush per acknowledgement, is skipped there; storage.files.JOURNALLED_RENAMES).
    fsync_folders: Literal["auto", "always"] = "auto"
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="after")
    def _purge_before_refusing(self) -> StorageSettings:
        below = self.retention.purge_below_free_mb
        if below is not None and below <= self.min_free_mb:
            raise ValueError(
                f"retention.purge_below_free_mb ({below}) must be larger than min_free_mb ({self.min_free_mb}), "
                "or stores are refused before anything is purged"
            )
        return self


class DatabaseSettings(Strict):
    # None: SQLite file `index.sqlite3` under the storage root. PostgreSQL: postgresql+psycopg://user:pw@host/db
    url: str | None = None
