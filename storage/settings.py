"""Configuration blocks of the store: where files go and which SQL database indexes them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from common.settings import Strict


class StorageSettings(Strict):
    root: Path = Path("./immunode-data")
    # Stores are refused with 0xA700 (out of resources) below this much free disk.
    min_free_mb: int = Field(200, ge=0)
    # Files and folders the node creates (storage root, SQLite index, log) are readable by the service user
    # only (umask 077, root folder mode 0700); false leaves the process umask as it is.
    private: bool = True


class DatabaseSettings(Strict):
    # None: SQLite file `index.sqlite3` under the storage root. PostgreSQL: postgresql+psycopg://user:pw@host/db
    url: str | None = None
