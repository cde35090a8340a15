"""Opening the index: the commands that only read it open it with create=False and never create one."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from storage.database import Database, sqlite_file
from storage.errors import IndexMissing


def test_an_index_that_must_exist_is_never_created(database_url: str) -> None:
    file = sqlite_file(database_url)
    with pytest.raises(IndexMissing, match="no index at"):
        Database(database_url, create=False)
    if file is not None:
        assert not file.exists()
    Database(database_url).dispose()  # as the node (or an import) creates it
    opened = Database(database_url, create=False)
    try:
        with opened.session() as session:
            assert session.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        opened.dispose()


def test_a_database_without_immunode_schema_is_not_an_index(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    url = f"sqlite:///{other}"
    database = Database(url, migrate=False)  # some other SQLite file at the configured path
    with database.transaction() as connection:
        connection.execute(text("CREATE TABLE notes (id INTEGER)"))
    database.dispose()
    with pytest.raises(IndexMissing, match=f"no index at sqlite:///{other}.*no immunode schema"):
        Database(url, create=False)
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql+psycopg://u@h/db") is None and sqlite_file(url) == other
