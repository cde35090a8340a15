"""Result records in the index: one mechanism for every pipeline's records (`common.records`).

A declared record type (`RecordTable`) maps to a SQLAlchemy Core table built from its fields' types: `id`,
`job_fk`, `study_fk` when declared, one column per field (enums as their values, tuples and mappings as JSON,
read back as tuples and dicts), and, for an `Entries` field, a name/value table of its own. `write_records`
stores a job's records in the tables of their types; `read_records` and `record_from` turn rows back into
records; `record_table` gives the table to queries that join it (research, baselines, the patient's slide).

The tables are created by migrations (the core's in `storage/migrations/versions`, a pipeline's in its own
package); the objects built here only read and write them, and hold no foreign keys (the database does).
Retention finds them through the database's own foreign keys (`storage.retention`).

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator, TypeEngine

from common.records import FieldKind, RecordField, RecordTable
from storage.errors import UndeclaredRecord


class EnumValue(TypeDecorator):
    """An enum kept as its member's value (text), read back as the member."""

    impl = String(64)
    cache_ok = True

    def __init__(self, enum_type: type[enum.Enum]) -> None:
        super().__init__()
        self.enum_type = enum_type

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return value.value if isinstance(value, enum.Enum) else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.enum_type(value)


def _listed(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_listed(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _listed(v) for k, v in value.items()}
    return value.value if isinstance(value, enum.Enum) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


class JsonArray(TypeDecorator):
    """A tuple (of tuples) kept as a JSON array, read back as tuples."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else _listed(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else _tupled(value)


class JsonObject(TypeDecorator):
    """A mapping kept as a JSON object, read back as a dict."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else _listed(value)


_TYPES: dict[FieldKind, TypeEngine | type[TypeEngine]] = {
    FieldKind.TEXT: Text,
    FieldKind.INTEGER: Integer,
    FieldKind.REAL: Float,
    FieldKind.BOOLEAN: Boolean,
    FieldKind.DATE: Date,
    FieldKind.DATETIME: DateTime,
    FieldKind.ARRAY: JsonArray,
    FieldKind.OBJECT: JsonObject,
}


def _column_type(field: RecordField) -> TypeEngine | type[TypeEngine]:
    if field.kind is FieldKind.ENUM:
        assert field.enum_type is not None
        return EnumValue(field.enum_type)
    return _TYPES[field.kind]


@functools.cache
def record_table(declared: RecordTable) -> Table:
    """The table that keeps a declared record type (each in a MetaData of its own: declarations never clash here;
    the registry keeps table names unique)."""
    columns = [Column("id", Integer, primary_key=True), Column("job_fk", Integer, nullable=False)]
    if declared.study_column:
        columns.append(Column("study_fk", Integer, nullable=False))
    columns += [Column(f.column, _column_type(f), nullable=f.nullable) for f in declared.fields()]
    return Table(declared.table, MetaData(), *columns)


@functools.cache
def entries_table(declared: RecordTable) -> Table:
    """The name/value table of a declared record type's `Entries` field."""
    if declared.entries is None:
        raise ValueError(f"{declared.describe()} keeps no entries")
    entries = declared.entries
    return Table(
        entries.table,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column(entries.parent_column, Integer, nullable=False),
        Column("name", String(128), nullable=False),
        Column("value", Float, nullable=False),
    )


def _values(declared: RecordTable, record: object) -> dict[str, Any]:
    return {f.column: getattr(record, f.name) for f in declared.fields()}


def write_records(
    session: Session, job_id: int, study_id: int, records: Iterable[object], declared: Sequence[RecordTable]
) -> None:
    """A job's records into the tables of their types, in order; UndeclaredRecord (nothing written) for a record
    of a type `declared` does not hold."""
    by_type = {d.record: d for d in declared}
    records = list(records)
    undeclared = sorted({type(r).__name__ for r in records if type(r) not in by_type})
    if undeclared:
        raise UndeclaredRecord(
            f"job {job_id}: records of type {', '.join(undeclared)}, which its pipeline does not declare "
            f"(it declares {', '.join(d.describe() for d in declared) or 'none'})"
        )
    for record in records:
        table_of = by_type[type(record)]
        values = _values(table_of, record) | {"job_fk": job_id}
        if table_of.study_column:
            values["study_fk"] = study_id
        inserted = session.execute(insert(record_table(table_of)).values(values))
        if table_of.entries is not None:
            (row_id,) = inserted.inserted_primary_key
            mapping = getattr(record, table_of.entries.field)
            if mapping:
                session.execute(
                    insert(entries_table(table_of)),
                    [
                        {table_of.entries.parent_column: row_id, "name": name, "value": value}
                        for name, value in mapping.items()
                    ],
                )


def record_from(declared: RecordTable, row: Any, entries: Mapping[str, float] | None = None) -> Any:
    """A record from a row of its table (selected with all its columns), its entries given when it keeps some."""
    values = {f.name: row._mapping[record_table(declared).c[f.column]] for f in declared.fields()}
    if declared.entries is not None:
        values[declared.entries.field] = dict(entries or {})
    return declared.record(**values)


def entries(session: Session, declared: RecordTable, row_id: int) -> dict[str, float]:
    """The name/value entries of one record row."""
    table = entries_table(declared)
    assert declared.entries is not None
    parent = table.c[declared.entries.parent_column]
    return dict(session.execute(select(table.c.name, table.c.value).where(parent == row_id).order_by(table.c.id)).all())


def read_records(
    session: Session, declared: RecordTable, *where: ColumnElement[bool], job_id: int | None = None
) -> list:
    """The records of a declared type (of one job, and/or matching `where` on `record_table(declared)`), in the
    order they were written."""
    table = record_table(declared)
    query = select(table).order_by(table.c.id)
    if job_id is not None:
        query = query.where(table.c.job_fk == job_id)
    found = []
    for row in session.execute(query.where(*where)).all():
        kept = entries(session, declared, row.id) if declared.entries is not None else None
        found.append(record_from(declared, row, kept))
    return found
