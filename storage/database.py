"""Engine, sessions and migrations of the SQL index (SQLite by default, PostgreSQL supported)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.base import Executable

from storage.errors import IndexMissing, IndexOutage, IndexUnavailable

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a server that does not answer (host down, no RST) fails within this, not minutes
# The index cannot be reached (server down or restarting, connection lost, pool exhausted, SQLite locked beyond its
# timeout or its disk full): an outage, retried, as opposed to a statement the index refuses (a bug).
OUTAGE_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


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
    timeout = {} if "connect_timeout" in url else {"connect_timeout": CONNECT_TIMEOUT_S}
    return create_engine(url, pool_pre_ping=True, connect_args=timeout)


def alembic_config(url: str, migrations: Sequence[Path] = ()) -> AlembicConfig:
    """The migrations of the core schema (`storage/migrations/versions`) and, in `migrations`, the folders of the
    pipelines' own migrations (each an Alembic branch of its own that depends on the core revision it needs)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if migrations:
        for option in ("path_separator", "version_path_separator"):  # the first for Alembic >= 1.16
            config.set_main_option(option, "os")
        folders = [MIGRATIONS_DIR / "versions", *(Path(m) for m in migrations)]
        config.set_main_option("version_locations", os.pathsep.join(str(f).replace("%", "%%") for f in folders))
    return config


def upgrade(engine: Engine, migrations: Sequence[Path] = ()) -> None:
    """Bring the schema to the newest migrations of the core and of the pipelines' branches (idempotent)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False), migrations)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "heads")


def _scripts(migrations: Sequence[Path]) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://", migrations))


def head_revisions(migrations: Sequence[Path] = ()) -> tuple[str, ...]:
    """The newest schema revisions this version of the code migrates to: the core's, and one per pipeline branch."""
    return tuple(sorted(_scripts(migrations).get_heads()))


def known_revision(revision: str, migrations: Sequence[Path] = ()) -> bool:
    """Whether this version's migrations know `revision` (an index written by a newer version: not)."""
    try:
        return _scripts(migrations).get_revision(revision) is not None
    except CommandError:
        return False


def pending_heads(found: Sequence[str], migrations: Sequence[Path] = ()) -> tuple[str, ...]:
    """The heads an index whose schema is at the revisions `found` has yet to be migrated to (none: current). A
    revision reaches its ancestors and what it depends on (a pipeline's branch depends on a core revision: the
    index then names only the branch's revision). `found` must be known (`known_revision`)."""
    scripts = _scripts(migrations)
    reached: set[str] = set()
    todo = list(found)
    while todo:
        script = scripts.get_revision(todo.pop())
        if script is None or script.revision in reached:
            continue
        reached.add(script.revision)
        for parent in (script.down_revision, script.dependencies):
            todo += [parent] if isinstance(parent, str) else list(parent or ())
    return tuple(head for head in sorted(scripts.get_heads()) if head not in reached)


def indexed_revisions(url: str, timeout_s: float = 10.0) -> tuple[str, ...] | None:
    """The schema revisions of an existing index (the core's, and one per pipeline branch applied); None when
    there is none yet (no SQLite file, or a database without immunode's schema). Creates nothing: a SQLite file
    is opened read-only. IndexUnavailable when the database cannot be reached."""
    file = sqlite_file(url)
    if file is not None:
        if not file.is_file():
            return None
        engine = create_engine(f"sqlite:///file:{file.resolve()}?mode=ro&uri=true")
    elif url.startswith("sqlite"):
        return None
    else:
        engine = create_engine(url, connect_args={"connect_timeout": max(1, int(timeout_s))})
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            return tuple(sorted(connection.execute(text("SELECT version_num FROM alembic_version")).scalars()))
    except SQLAlchemyError as error:
        where = engine.url.render_as_string(hide_password=True)
        reason = str(error.orig if getattr(error, "orig", None) else error).strip().splitlines()[0]
        raise IndexUnavailable(f"cannot reach the database {where}: {reason}") from None
    finally:
        engine.dispose()


class IndexHealth:
    """Whether the index answers, as this process's transactions find it. An outage is logged once when it starts
    and once when it ends, whatever the number of transactions that fail meanwhile, and counted (`/metrics`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None  # time.monotonic() of the first failure of the current outage
        self._answering_since = time.monotonic()  # since this process started, or the last outage ended
        self._failures = 0
        self.outages = 0
        self.outage_seconds = 0.0  # of the outages that ended

    @property
    def available(self) -> bool:
        return self._down_since is None

    def down_for(self) -> float:
        """Seconds the current outage has lasted (0 when the index answers)."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def answering_for(self) -> float:
        """Seconds the index has answered without an outage, since this process started (0 while it is down)."""
        return 0.0 if self._down_since is not None else time.monotonic() - self._answering_since

    def failed(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.outages += 1
        logger.error("index unavailable (%s): work that needs it waits and is retried until it answers", reason)

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted = time.monotonic() - self._down_since
            failures, self._down_since, self._failures = self._failures, None, 0
            self._answering_since = time.monotonic()
            self.outage_seconds += lasted
        logger.warning("index available again after %.1f s (%d transaction(s) failed meanwhile)", lasted, failures)


def _unavailable(error: SQLAlchemyError, health: IndexHealth) -> IndexUnavailable:
    """The domain error for a failed transaction; an outage is noted in `health`."""
    if isinstance(error, OUTAGE_ERRORS):
        cause = getattr(error, "orig", None) or error
        lines = str(cause).strip().splitlines()
        reason = f"{cause.__class__.__name__}: {lines[0] if lines else ''}"[:300]
        health.failed(reason)
        return IndexOutage(f"index unavailable: {reason}")
    return IndexUnavailable(f"index transaction failed: {error.__class__.__name__}: {error}")


class Database:
    """Owns the engine and hands out transactional sessions.

    create=False opens an index that must already exist (for the commands that read it): IndexMissing, and
    nothing created, when there is no database file or the database has no immunode schema. `migrations`: the
    folders of the registered pipelines' own migrations (`Registry.migrations`), applied with the core's."""

    def __init__(
        self, url: str, migrate: bool = True, create: bool = True, migrations: Sequence[Path] = ()
    ) -> None:
        self.url = url
        file = sqlite_file(url)
        if not create and file is not None and not file.is_file():
            raise IndexMissing(f"no index at {file}")
        self.engine = make_engine(url)
        self.health = IndexHealth()
        if not create:
            self._check_schema()
        if migrate:
            upgrade(self.engine, migrations)
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
        """A session committed on success and rolled back on any error (IndexOutage when the index cannot be
        reached, IndexUnavailable when it refuses the transaction)."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as error:
            _rollback(session)
            raise _unavailable(error, self.health) from error
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()
        self.health.succeeded()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in a transaction (the ingest hot path, where ORM overhead counts)."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as error:
            raise _unavailable(error, self.health) from error
        self.health.succeeded()

    def dispose(self) -> None:
        self.engine.dispose()


def _rollback(session: Session) -> None:
    """Roll back; a connection already lost cannot roll back, and the transaction's own error is the one to raise."""
    try:
        session.rollback()
    except SQLAlchemyError:
        session.invalidate()


class Prepared:
    """A Core statement compiled once for one dialect and run on the driver's cursor, inside a Core transaction.

    For the ingest hot path on SQLite, where SQLAlchemy's per-execution work (compiled-cache look-up, execution
    context, result set set-up) costs more than the statement itself. The values are bound exactly as SQLAlchemy
    would bind them (the compiled statement's parameters, each through its type's bind processor), and a driver
    error is raised as SQLAlchemy's wrapper of it (`DBAPIError.instance`), so that callers see what they see from
    `Connection.execute`. Only for positional parameter styles (SQLite's qmark); other dialects use `execute`."""

    def __init__(self, statement: Executable, dialect: Dialect, column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        if compiled.positiontup is None:
            raise ValueError(f"{dialect.name} binds parameters by name: use Connection.execute")
        self.sql = compiled.string
        self._compiled = compiled
        self._names = tuple(compiled.positiontup)
        # The dialect's own type (SQLite's DATETIME for DateTime), as SQLAlchemy binds it.
        types = {name: compiled.binds[name].type.dialect_impl(dialect) for name in self._names}
        processors = {name: bind_type.bind_processor(dialect) for name, bind_type in types.items()}
        self._processors = {name: processor for name, processor in processors.items() if processor is not None}
        self._dbapi_error = dialect.loaded_dbapi.Error

    def execute(self, connection: Connection, values: dict[str, object]) -> PreparedResult:
        """Run with `values` (by parameter name) on the connection's driver connection."""
        parameters = self._compiled.construct_params(values)
        processors = self._processors
        try:
            bound = tuple(
                processors[name](parameters[name]) if name in processors else parameters[name] for name in self._names
            )
        except Exception as error:  # a value its type cannot bind: what `Connection.execute` raises
            raise StatementError(str(error), self.sql, values, error) from error
        cursor = connection.connection.cursor()
        try:
            cursor.execute(self.sql, bound)
            return PreparedResult(cursor.fetchone() if cursor.description else None, cursor.rowcount)
        except self._dbapi_error as error:
            raise DBAPIError.instance(self.sql, bound, error, self._dbapi_error, dialect=connection.dialect) from error
        finally:
            cursor.close()


@dataclass(frozen=True)
class PreparedResult:
    """What a `Prepared` statement gave: its first row (None without one, or for a statement that returns none)
    and the rows it changed."""

    first: tuple | None
    rowcount: int
