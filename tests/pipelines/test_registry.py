"""What the registry checks of the declarations (names, Series Numbers with their versions and SEG encodings,
record types and tables) and what a job's inputs hold of a study (only what the pipeline reads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from common.records import Entries, RecordTable, UnsupportedRecord
from common.types import LESION_RESULTS, LesionRecord, PatientData, SeriesFiles, StoredFile
from pipelines.builtin import BUILTIN
from pipelines.errors import RegistryConflict
from pipelines.pet.settings import PetQuantSettings
from pipelines.registry import JobInputs, Pipeline, Reads, Writes


def pipeline(name: str, writes: Writes, reads: Reads = Reads("PT")) -> Pipeline:
    """A registration (its analysis is never run here)."""

    class Declared(Pipeline):
        def analyse(self, inputs, pipelines, workdir):
            raise AssertionError("not run")

        def report(self, inputs, result, pipelines, new_path):
            raise AssertionError("not run")

    Declared.name, Declared.title, Declared.settings_model = name, name, PetQuantSettings
    Declared.reads, Declared.writes = reads, writes
    return Declared()


@pytest.mark.parametrize(
    ("writes", "taken"),
    [
        (Writes(sr_series_number=995), "histology: SR series 995"),  # histology's own SR
        (Writes(sr_series_number=1005), "histology: SR series 995"),  # its SR's 2nd version would take 1005
        (Writes(sr_series_number=890), "pet_quant: SEG series 990"),  # its 11th version would take 990
        (Writes(sr_series_number=1992), "ct_radiomics: SEG series 992"),  # the CT SEG as a label map
        # A SEG 3 is also 1003 (label map), 2003 (binary) and 13, 23, ... (versions): the CT SR's last digit.
        (Writes(sr_series_number=996, seg_series_number=3), "ct_radiomics: SR series 993"),
    ],
)
def test_series_numbers_that_would_meet_are_refused_naming_both_pipelines(writes: Writes, taken: str) -> None:
    with pytest.raises(RegistryConflict) as refused:
        BUILTIN.with_pipeline(pipeline("newcomer", writes))
    owner, what = taken.split(": ")
    assert f"pipelines {owner} and newcomer" in str(refused.value) and what in str(refused.value)


def test_its_own_seg_and_sr_may_not_meet_either() -> None:
    with pytest.raises(RegistryConflict, match="pipelines newcomer and newcomer: SEG series 996 and SR series 2006"):
        BUILTIN.with_pipeline(pipeline("newcomer", Writes(sr_series_number=2006, seg_series_number=996)))


def test_a_pipeline_declares_what_it_reads_and_writes() -> None:
    undeclared = pipeline("newcomer", Writes(sr_series_number=997))
    del type(undeclared).writes
    with pytest.raises(TypeError, match=r"pipeline newcomer \(Declared\) declares no writes"):
        BUILTIN.with_pipeline(undeclared)


def test_numbers_of_their_own_last_digits_are_registered() -> None:
    registry = BUILTIN.with_pipeline(pipeline("newcomer", Writes(sr_series_number=997, seg_series_number=996)))
    assert registry.names[-1] == "newcomer"


def test_a_name_a_record_type_and_a_table_are_one_pipelines_own() -> None:
    with pytest.raises(RegistryConflict, match=r"pipeline pet_quant \(PetQuant\) and pipeline pet_quant \(Declared\)"):
        BUILTIN.with_pipeline(pipeline("pet_quant", Writes(sr_series_number=997)))
    with pytest.raises(RegistryConflict, match="shared block annotations .* and pipeline annotations"):
        BUILTIN.with_pipeline(pipeline("annotations", Writes(sr_series_number=997)))
    with pytest.raises(RegistryConflict, match="pipelines pet_quant and newcomer: both write record type LesionRecord"):
        BUILTIN.with_pipeline(pipeline("newcomer", Writes(sr_series_number=997, records=(LESION_RESULTS,))))
    elsewhere = RecordTable(Scores, "ct_lesion_results")
    with pytest.raises(RegistryConflict, match="ct_radiomics and newcomer: both write table ct_lesion_results"):
        BUILTIN.with_pipeline(pipeline("newcomer", Writes(sr_series_number=997, records=(elsewhere,))))


@dataclass(frozen=True)
class Scores:
    series_instance_uid: str
    scores: dict[str, float]


@dataclass
class Mutable:
    value: int


@dataclass(frozen=True)
class Untyped:
    value: object


@dataclass(frozen=True)
class Either:
    value: int | str


def test_a_record_type_its_table_cannot_keep_is_refused_where_it_is_declared() -> None:
    with pytest.raises(UnsupportedRecord, match="not a frozen dataclass"):
        RecordTable(Mutable, "mutable")
    with pytest.raises(UnsupportedRecord, match=r"Untyped.value: <class 'object'> cannot be kept in a column"):
        RecordTable(Untyped, "untyped")
    with pytest.raises(UnsupportedRecord, match="Either.value: .* a column holds one type or None"):
        RecordTable(Either, "either")
    with pytest.raises(UnsupportedRecord, match="Scores has no field score"):
        RecordTable(Scores, "scores", columns=(("score", "value"),))
    with pytest.raises(UnsupportedRecord, match="entries are kept of a mapping"):
        RecordTable(Scores, "scores", entries=Entries("series_instance_uid", "score_entries", "scores_fk"))


def test_undeclared_record_types_are_named() -> None:
    writes = Writes(sr_series_number=997, records=(LESION_RESULTS,))
    lesion = LesionRecord("1.2", 1, "2.25.1", 5, 3, 4, 2, 6, 15, 10, True)
    assert writes.undeclared((lesion, Scores("1.2", {}), Scores("1.3", {}))) == ("Scores",)
    assert writes.undeclared((lesion,)) == ()


def _series(uid: str, modality: str, sop_class: str = "1.2.840.10008.5.1.4.1.1.128") -> SeriesFiles:
    return SeriesFiles(uid, modality, "1.2.9", (StoredFile(f"{uid}.1", sop_class, Path(f"/{uid}.dcm")),))


STUDY = (
    _series("1", "PT"),
    _series("2", "PT"),
    _series("3", "CT", "1.2.840.10008.5.1.4.1.1.2"),
    _series("4", "SEG", "1.2.840.10008.5.1.4.1.1.66.4"),
    _series("5", "SM", "1.2.840.10008.5.1.4.1.1.77.1.6"),
    _series("6", "OT", "1.2.840.10008.5.1.4.1.1.481.3"),  # an RT Structure Set filed under another modality
)
PATIENT = PatientData("P1", "", None, None)


@pytest.mark.parametrize(
    ("reads", "series", "patient"),
    [
        (Reads("PT"), ["1", "2"], False),  # its modality, selected or not
        (Reads("PT", context=(("CT", "anatomy"),)), ["1", "2", "3"], False),
        (Reads("PT", annotations=True, patient_data=True), ["1", "2", "4", "6"], True),
        (Reads("SM", patient_data=True), ["1", "5"], True),  # the selected series always
    ],
)
def test_a_jobs_inputs_hold_what_its_pipeline_reads_no_more(reads: Reads, series: list[str], patient: bool) -> None:
    inputs = JobInputs.read_by(reads, "1.2.3", ("1",), STUDY, PATIENT, job_id=7)
    assert [s.series_instance_uid for s in inputs.series] == series
    assert (inputs.patient is PATIENT) is patient and inputs.job_id == 7


def test_the_builtin_pipelines_declare_what_they_read_and_write() -> None:
    declared = {p.name: (p.modality, p.longitudinal, p.writes.series_numbers()) for p in BUILTIN.pipelines}
    assert declared == {
        "pet_quant": ("PT", False, (("SEG", 990), ("SR", 991))),
        "ct_radiomics": ("CT", True, (("SEG", 992), ("SR", 993))),
        "histology": ("SM", False, (("SEG", 994), ("SR", 995))),
    }
    assert {t.table for p in BUILTIN.pipelines for t in p.writes.records} == {
        "lesion_results",
        "radiomics_extractions",
        "ct_lesion_results",
        "ct_assessments",
        "slide_results",
    }
    assert BUILTIN.migrations == ()  # the core's migrations made their tables
