"""Studies: completion once quiet, the jobs routing queues, what a study holds as a job reads it."""

from __future__ import annotations

from datetime import timedelta

import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage
from sqlalchemy import select

from common.states import JobState, OutputKind
from immunode.config import RoutingRule
from immunode.routing import arrival_reason, route
from pipelines.builtin import BUILTIN
from storage import studies
from storage.schema import Job, Output, Study, StudyState
from storage.store import InstanceStore
from storage.types import ArrivalKind, InstanceHeader
from tests.storage.conftest import complete

RULES = [RoutingRule(name="pet", pipeline="pet_quant")]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SR_SERIES = "1.2.826.0.1.3680043.10.9"


def test_quiet_study_completes_once_and_queues_its_job(stored) -> None:
    database, layout, study = stored
    with database.session() as session:
        assert studies.quiet_studies(session, timedelta(hours=1)) == []  # not quiet yet
    (job_id,) = complete(database, study.pet_series_uid)
    with database.session() as session:
        assert session.scalar(select(Study.state)) is StudyState.COMPLETE
        assert studies.quiet_studies(session, timedelta(0)) == []
        job = session.get(Job, job_id)
        series = {s.series_instance_uid: s for s in studies.study_series(session, layout, study.study_uid)}
    assert job.series_uids == study.pet_series_uid and job.state is JobState.PENDING
    assert len(series[study.pet_series_uid].files) == 4 and len(series) == 2


def _arrive(database, layout, study, sop_class: str, modality: str, series_uid: str, sop_uid: str) -> None:
    """One more instance of the study, from another AE (its content is not read here)."""
    patient = pydicom.dcmread(study.pet_files[0], stop_before_pixels=True)
    header = InstanceHeader(
        sop_class,
        sop_uid,
        study.study_uid,
        series_uid,
        str(ExplicitVRLittleEndian),
        str(patient.PatientID),
        str(patient.get("IssuerOfPatientID", "")),
        modality,
    )
    InstanceStore(database, layout).store(header, b"annotation", "READSTATION")


def _quiet(database, stable_s: float, annotations_s: float) -> list:
    with database.session() as session:
        return studies.quiet_studies(session, timedelta(seconds=stable_s), timedelta(seconds=annotations_s))


def test_what_reopened_a_study_decides_how_long_it_must_be_quiet(stored) -> None:
    """A reader's annotation on an analysed study goes after the short annotation time; new images after the
    study's own; our own results coming back count as annotations and re-run nothing."""
    database, layout, study = stored
    complete(database, study.pet_series_uid)
    seg_series = "1.2.826.0.1.3680043.10.7.1"
    _arrive(database, layout, study, str(SegmentationStorage), "SEG", seg_series, f"{seg_series}.1")
    assert _quiet(database, 3600, 3600) == []
    (reopened,) = _quiet(database, 3600, 0)
    assert reopened.revision == 2 and reopened.arrival is ArrivalKind.ANNOTATIONS
    (arrived,) = reopened.arrived
    assert (arrived.modality, arrived.instances, arrived.calling_ae_titles, arrived.annotation) == (
        "SEG",
        1,
        ("READSTATION",),
        True,
    )
    reason = arrival_reason(reopened)
    assert "a reader's annotation arrived after the analysis (revision 2): 1 SEG instance(s)" in reason
    with database.session() as session:
        due = studies.next_quiet_due(session, timedelta(hours=1), timedelta(seconds=5))
        last = session.scalar(select(Study.last_received_at))
        assert due == last + timedelta(seconds=5)
        studies.complete_study(session, reopened, [])
    # New images: the study grew; the annotation time does not apply.
    _arrive(database, layout, study, str(CTImageStorage), "CT", study.ct_series_uid, "1.2.826.0.1.3680043.10.8.1")
    assert _quiet(database, 3600, 0) == []
    (grown,) = _quiet(database, 0, 0)
    assert grown.arrival is ArrivalKind.IMAGES
    assert "the study grew after its analysis (revision 3)" in arrival_reason(grown)
    with database.session() as session:
        studies.complete_study(session, grown, [])
        job = session.scalars(select(Job)).first()
        ours = Output(job_fk=job.id, kind=OutputKind.SR, sop_class_uid=COMPREHENSIVE_3D_SR, path="out.dcm")
        ours.sop_instance_uid, ours.series_instance_uid = f"{SR_SERIES}.1", SR_SERIES
        session.add(ours)
    # Our own SR sent back by a PACS: quiet after the annotation time, routed to nothing.
    _arrive(database, layout, study, COMPREHENSIVE_3D_SR, "SR", SR_SERIES, f"{SR_SERIES}.1")
    (own,) = _quiet(database, 3600, 0)
    assert own.arrival is ArrivalKind.OWN_RESULTS and route(own, RULES, BUILTIN) == ()
