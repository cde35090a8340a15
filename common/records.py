"""Result records and the index tables that keep them.

A pipeline's result leaves records in the index: instances of frozen dataclasses it declares (`Writes.records` in
`pipelines.registry`), each type with its table (`RecordTable`). The store maps every declared type to its table
by the types of its fields (`storage.records`): one row per record with the job that produced it (`job_fk`), one
column per field, named as the field unless `columns` renames it. A field may be

- `str`, `int`, `float`, `bool`, `date`, `datetime`: a column of that type;
- an `enum.Enum`: a text column holding the member's value;
- a `tuple` (of numbers, text, tuples): a JSON array, read back as tuples;
- a `Mapping` (`dict`): a JSON object, or name/value rows of a table of its own (`Entries`);
- any of these or `None` (`X | None`): a nullable column.

The table itself is created by the pipeline's migration; these declarations only say how records fill it.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime


class FieldKind(enum.Enum):
    """How a record's field is kept in its column."""

    TEXT = "text"
    INTEGER = "integer"
    REAL = "real"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    ENUM = "enum"  # its value, as text
    ARRAY = "array"  # a tuple as a JSON array
    OBJECT = "object"  # a mapping as a JSON object


_SCALARS: tuple[tuple[type, FieldKind], ...] = (  # bool before int, datetime before date: subclasses first
    (str, FieldKind.TEXT),
    (bool, FieldKind.BOOLEAN),
    (int, FieldKind.INTEGER),
    (float, FieldKind.REAL),
    (datetime, FieldKind.DATETIME),
    (date, FieldKind.DATE),
)


@dataclass(frozen=True)
class RecordField:
    """One field of a record type as its table keeps it."""

    name: str  # the dataclass field
    column: str
    kind: FieldKind
    nullable: bool
    enum_type: type[enum.Enum] | None = None  # FieldKind.ENUM: the enum the column's values are read back as


class UnsupportedRecord(TypeError):
    """A record type its table cannot keep: not a frozen dataclass, or a field of a type no column holds."""


def _kind(record: type, name: str, hint: object) -> tuple[FieldKind, bool, type[enum.Enum] | None]:
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(hint))
        if len(members) != 1:
            raise UnsupportedRecord(f"{record.__name__}.{name}: {hint} is a union; a column holds one type or None")
        hint = members[0]
    origin = typing.get_origin(hint) or hint
    if isinstance(origin, type):
        if issubclass(origin, enum.Enum):
            return FieldKind.ENUM, nullable, origin
        if issubclass(origin, tuple):
            return FieldKind.ARRAY, nullable, None
        if issubclass(origin, Mapping):
            return FieldKind.OBJECT, nullable, None
        for python, kind in _SCALARS:
            if issubclass(origin, python):
                return kind, nullable, None
    raise UnsupportedRecord(
        f"{record.__name__}.{name}: {hint} cannot be kept in a column (str, int, float, bool, date, datetime, an "
        "enum, a tuple or a mapping, or one of these or None)"
    )


@dataclass(frozen=True)
class Entries:
    """A mapping field of a record kept as name/value rows of a table of its own (`parent_column`: the record's
    row id), for mappings that queries read by name (radiomic features)."""

    field: str
    table: str
    parent_column: str


@dataclass(frozen=True)
class RecordTable:
    """A result record type (a frozen dataclass) and the index table that keeps it: one row per record, with the
    producing job (`job_fk`) and, with `study_column`, the job's study (`study_fk`)."""

    record: type
    table: str
    columns: tuple[tuple[str, str], ...] = ()  # (field, column) where the column is named otherwise
    study_column: bool = False
    entries: Entries | None = None

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.record) or not self.record.__dataclass_params__.frozen:
            raise UnsupportedRecord(f"{self.record!r} is not a frozen dataclass: a result record is one")
        names = {f.name for f in dataclasses.fields(self.record)}
        unknown = sorted({f for f, _ in self.columns} - names)
        if self.entries is not None and self.entries.field not in names:
            unknown.append(self.entries.field)
        if unknown:
            raise UnsupportedRecord(f"{self.record.__name__} has no field {', '.join(unknown)}")
        self.fields()  # every field has a column type, or the declaration fails where it is made

    def fields(self) -> tuple[RecordField, ...]:
        """The record's fields kept in this table's columns (an `entries` field is kept in its own table)."""
        hints = typing.get_type_hints(self.record)
        renamed = dict(self.columns)
        found = []
        for field in dataclasses.fields(self.record):
            kind, nullable, enum_type = _kind(self.record, field.name, hints[field.name])
            if self.entries is not None and field.name == self.entries.field:
                if kind is not FieldKind.OBJECT:
                    raise UnsupportedRecord(f"{self.record.__name__}.{field.name}: entries are kept of a mapping")
                continue
            found.append(RecordField(field.name, renamed.get(field.name, field.name), kind, nullable, enum_type))
        return tuple(found)

    def describe(self) -> str:
        return f"{self.record.__name__} in {self.table}" + (f" (+ {self.entries.table})" if self.entries else "")
