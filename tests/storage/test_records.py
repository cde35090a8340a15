"""One mechanism keeps every pipeline's result records: a declared record type is written to its table and read
back equal, whatever its fields' types (text, numbers, flags, dates, enums, tuples, mappings, None, name/value
entries); a record of a type its pipeline does not declare is refused, and nothing of the job's is written."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

import pytest
from sqlalchemy import text

from common.records import Entries, RecordTable
from common.types import LESION_RESULTS, LesionRecord
from storage.database import Database
from storage.errors import UndeclaredRecord
from storage.records import entries_table, read_records, record_table, write_records


class Grade(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclass(frozen=True)
class Everything:
    label: str
    count: int
    score: float
    flagged: bool
    taken_on: date
    taken_at: datetime
    grade: Grade
    box: tuple[tuple[int, int], ...]
    extra: Mapping[str, float | None]
    optional: float | None
    optional_grade: Grade | None
    features: Mapping[str, float]


EVERYTHING = RecordTable(
    Everything,
    "test_everything",
    columns=(("count", "number_of"),),
    study_column=True,
    entries=Entries("features", "test_everything_features", "everything_fk"),
)


@dataclass(frozen=True)
class Other:
    label: str


def _record(label: str, grade: Grade | None, features: dict[str, float]) -> Everything:
    return Everything(
        label,
        3,
        0.25,
        True,
        date(2026, 12, 5),
        datetime(2026, 12, 5, 10, 30, 15),
        Grade.HIGH,
        ((1, 2), (3, 4)),
        {"a": 1.5, "b": None},
        None if grade is None else 2.0,
        grade,
        features,
    )


def test_a_record_of_every_kind_of_field_comes_back_equal(database_url: str) -> None:
    database = Database(database_url)
    try:
        record_table(EVERYTHING).create(database.engine)
        entries_table(EVERYTHING).create(database.engine)
        written = [_record("first", Grade.LOW, {"f1": 1.0, "f2": -2.5}), _record("second", None, {})]
        with database.session() as session:
            write_records(session, 7, 3, written, [LESION_RESULTS, EVERYTHING])
            write_records(session, 8, 3, [_record("other job", None, {"f": 0.0})], [EVERYTHING])
        with database.session() as session:
            assert read_records(session, EVERYTHING, job_id=7) == written
            table = record_table(EVERYTHING)
            (other,) = read_records(session, EVERYTHING, table.c.label == "other job")
            assert other.features == {"f": 0.0}
            # As the table holds them: the renamed column, the job and study, the enum's value.
            stored = session.execute(
                text("SELECT job_fk, study_fk, number_of, grade, optional_grade FROM test_everything ORDER BY id")
            ).all()
            assert [tuple(row) for row in stored] == [(7, 3, 3, "high", "low"), (7, 3, 3, "high", None)] + [
                (8, 3, 3, "high", None)
            ]
            count = session.execute(text("SELECT count(*) FROM test_everything_features")).scalar()
            assert count == 3
    finally:
        database.dispose()


def test_a_record_of_an_undeclared_type_is_refused_and_nothing_written(database_url: str) -> None:
    database = Database(database_url)
    try:
        lesion = LesionRecord("1.2", 1, "2.25.1", 5, 3, 4, 2, 6, 15, 10, True)
        with database.session() as session:  # committed: whatever write_records wrote before refusing would stay
            with pytest.raises(UndeclaredRecord, match="records of type Other, which its pipeline does not declare"):
                write_records(session, 1, 1, [lesion, Other("x")], [LESION_RESULTS])
        with database.session() as session:
            assert read_records(session, LESION_RESULTS) == []
    finally:
        database.dispose()
