"""Engine, sessions and migrations of the SQL index (SQLite by default, PostgreSQL supported)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from storage.errors import IndexMissing, IndexUnavailable

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the SCP threads, the scheduler and worker processes read while one writes;
    # synchronous=FULL makes a commit durable before the SCP answers success.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for in-memory SQLite and other databases."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1] if "///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """Owns the engine and hands out transactional sessions.

    create=False opens an index that must already exist (for the commands that read it): IndexMissing, and
    nothing created, when there is no database file or the database has no immunode schema."""

    def __init__(self, url: str, migrate: bool = True, create: bool = True) -> None:
        self.url = url
        file = sqlite_file(url)
        if not create and file is not None and not file.is_file():
            raise IndexMissing(f"no index at {file}")
        self.engine = make_engine(url)
        if not create:
            self._check_schema()
        if migrate:
            upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _check_schema(self) -> None:
        try:
            found = inspect(self.engine).has_table("alembic_version")
        except SQLAlchemyError as error:
            self.engine.dispose()
            raise IndexUnavailable(f"cannot open the index: {error.__class__.__name__}: {error}") from error
        if not found:
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            raise IndexMissing(f"no index at {where} (the database has no immunode schema)")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as error:
            session.rollback()
            raise IndexUnavailable(f"index transaction failed: {error.__class__.__name__}: {error}") from error
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in a transaction (the ingest hot path, where ORM overhead counts)."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as error:
            raise IndexUnavailable(f"index transaction failed: {error.__class__.__name__}: {error}") from error

    def dispose(self) -> None:
        self.engine.dispose()
