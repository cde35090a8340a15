"""The longitudinal CT method through the node: dcmtk storescu sends a baseline and a follow-up CT with reader
contours; the node pairs them from its store (or retrieves the baseline from dcmtk's dcmqrscp), tracks the
lesions, computes RECIST, Δ radiomics and the resistance pattern, and sends SEG + TID 1500 SR to storescp."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select

from common.states import JobState, PairingOutcome
from common.types import CT_ASSESSMENTS, CT_LESION_RESULTS, RADIOMICS_EXTRACTIONS, LesionRole
from storage.records import read_records
from storage.schema import Job, Pairing, Study
from tests.conftest import SHARED_DATA, StoreSCP, dciodvfy_errors, free_port, require_tool, storescu, wait_until
from tests.synthetic_ct import (
    BASELINE_LESIONS,
    FOLLOW_UP_LESIONS,
    SHIFT_MM,
    CtLesionSpec,
    write_ct_study,
    write_planning_ct,
)

PUBLISHED = SHARED_DATA / "delta_radiomics_published.csv"
CT_RULES = {"rules": [{"name": "ct-radiomics", "pipeline": "ct_radiomics", "series": {"modality": "CT"}}]}


def _study_files(study) -> list[Path]:
    return list(study.ct_files) + [study.rtstruct]


def _job_of(node, study_uid: str) -> Job | None:
    with node.database.session() as session:
        return session.scalar(
            select(Job).join(Study, Study.id == Job.study_fk).where(Study.study_instance_uid == study_uid)
        )


def _finished(node, study_uid: str) -> Job | None:
    job = _job_of(node, study_uid)
    return job if job is not None and job.state in (JobState.SUCCEEDED, JobState.FAILED) else None


def _pairings(node, job_id: int) -> list[Pairing]:
    with node.database.session() as session:
        return list(session.scalars(select(Pairing).where(Pairing.job_fk == job_id).order_by(Pairing.id)).all())


def _reports(pacs: StoreSCP) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in pacs.received():
        ds = pydicom.dcmread(path)
        assert not dciodvfy_errors(path), dciodvfy_errors(path)
        found.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return found


def _sr(datasets: list[pydicom.Dataset]) -> hd.sr.Comprehensive3DSR:
    (sr,) = [ds for ds in datasets if ds.Modality == "SR"]
    return hd.sr.Comprehensive3DSR.from_dataset(sr)


def _tracking(sr: hd.sr.Comprehensive3DSR) -> dict[str, str]:
    """Lesion label in the SEG-referenced groups → tracking UID, via the group's tracking identifier text."""
    return {str(g.tracking_identifier): str(g.tracking_uid) for g in sr.content.get_volumetric_roi_measurement_groups()}


def _texts(sr: hd.sr.Comprehensive3DSR) -> list[str]:
    texts = []

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                texts.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return texts


def _coded(sr: hd.sr.Comprehensive3DSR, name: str) -> list[str]:
    values = []

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == name:
                values.append(str(item.ConceptCodeSequence[0].CodeValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return values


def _numbers(sr: hd.sr.Comprehensive3DSR) -> dict[str, float]:
    values = {}

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "NUM":
                values[str(item.ConceptNameCodeSequence[0].CodeMeaning)] = float(
                    item.MeasuredValueSequence[0].NumericValue
                )
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return values


def test_follow_up_paired_from_the_store_tracked_and_reported(
    tmp_path: Path, make_settings, pacs: StoreSCP, start_node, database_url: str
) -> None:
    baseline = write_ct_study(tmp_path / "t0", BASELINE_LESIONS, "20260105")
    follow_up = write_ct_study(tmp_path / "t1", FOLLOW_UP_LESIONS, "20260316", shift_mm=SHIFT_MM, seed=2)
    settings = make_settings(
        database_url,
        routing=CT_RULES,
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        pipelines={"ct_radiomics": {"published_signature": str(PUBLISHED)}},
    )
    node = start_node(settings)
    # Both at once: the follow-up must wait for the baseline's analysis, then pair with it.
    assert storescu(node.port, _study_files(baseline) + _study_files(follow_up)).returncode == 0
    t0_job = wait_until(lambda: _finished(node, baseline.study_uid), timeout_s=300)
    t1_job = wait_until(lambda: _finished(node, follow_up.study_uid), timeout_s=300)
    assert t0_job.state is JobState.SUCCEEDED, t0_job.error
    assert t1_job.state is JobState.SUCCEEDED, t1_job.error
    t0_pairing = [p.outcome for p in _pairings(node, t0_job.id)]
    assert t0_pairing == [PairingOutcome.BASELINE_ITSELF]  # the follow-up is stored: it names its baseline
    t1_pairings = _pairings(node, t1_job.id)
    assert [p.outcome for p in t1_pairings] == [PairingOutcome.WAITING, PairingOutcome.PAIRED]
    assert all(p.baseline_study_uid == baseline.study_uid for p in t1_pairings)
    assert "PD" in t1_job.summary and "2 new, 1 progressive." in t1_job.summary
    assert "not acquired resistance" in t1_job.summary  # a progression at the first assessment is primary

    with node.database.session() as session:
        by_label = {row.label: row for row in read_records(session, CT_LESION_RESULTS, job_id=t1_job.id)}
        before = {row.label: row for row in read_records(session, CT_LESION_RESULTS, job_id=t0_job.id)}
        (assessment,) = read_records(session, CT_ASSESSMENTS, job_id=t1_job.id)
        extractions = {job.id: read_records(session, RADIOMICS_EXTRACTIONS, job_id=job.id) for job in (t0_job, t1_job)}
    features = {(job_id, e.volume): e.features for job_id, found in extractions.items() for e in found}
    features = {key: value for key, value in features.items() if key[1] in ("P", "M")}
    # Matched lesions keep the baseline identity; new ones do not.
    for label in ("Primary tumour", "Met liver", "LN mediastinal"):
        assert by_label[label].tracking_uid == before[label].tracking_uid and by_label[label].status == "matched"
    for label in ("Met new", "Met new 2"):
        assert by_label[label].status == "new"
        assert by_label[label].tracking_uid not in {row.tracking_uid for row in before.values()}
    assert by_label["Primary tumour"].role is LesionRole.PRIMARY and by_label["Met liver"].role is LesionRole.METASTASIS
    assert by_label["Primary tumour"].progressive and not by_label["LN mediastinal"].progressive
    assert assessment.time_point == "T1" and assessment.category == "PD" and assessment.pattern == ""
    assert (assessment.assessment, assessment.resistance, assessment.best_response) == (1, "primary", "PD")
    assert assessment.new_lesions == 2 and assessment.progressive_lesions == 1
    # Features per study and volume in SQL, with the parameter file, for both time points.
    assert {v for (_, v) in features} == {"P", "M"} and len(features[(t1_job.id, "P")]) > 800
    assert all("binWidth: 25" in e.parameters and e.parameters_sha256 for found in extractions.values() for e in found)
    name = "original_glcm_ClusterTendency"
    expected = (features[(t1_job.id, "P")][name] - features[(t0_job.id, "P")][name]) / features[(t0_job.id, "P")][name]
    assert assessment.deltas[f"P_{name}"] == pytest.approx(expected)

    reports = wait_until(lambda: (r := _reports(pacs)) and sum(len(v) for v in r.values()) >= 4 and r, timeout_s=120)
    t0_sr, t1_sr = _sr(reports[baseline.study_uid]), _sr(reports[follow_up.study_uid])
    t0_ids, t1_ids = _tracking(t0_sr), _tracking(t1_sr)
    assert len(t0_ids) == 4 and len(t1_ids) == 5
    shared = set(t0_ids.values()) & set(t1_ids.values())
    assert len(shared) == 3  # primary, liver metastasis and node carry the same tracking UID in both SRs
    # Time point context, the baseline reference and the research wording.
    texts = _texts(t1_sr)
    assert "T1 first assessment" in texts and "T0 baseline" in _texts(t0_sr)
    other = t1_sr.PertinentOtherEvidenceSequence[0]
    assert other.StudyInstanceUID == baseline.study_uid
    referenced = {
        str(i.ReferencedSOPInstanceUID) for s in other.ReferencedSeriesSequence for i in s.ReferencedSOPSequence
    }
    assert str(t0_sr.SOPInstanceUID) in referenced
    assert any(f"Baseline (T0): study {baseline.study_uid}" in t and str(t0_sr.SOPInstanceUID) in t for t in texts)
    published = [t for t in texts if t.startswith("delta P_") or t.startswith("delta M_")]
    assert len(published) == 15
    assert all("Research reference, not a diagnosis" in t or "not defined" in t for t in published)
    assert any("no class is given" in t for t in texts)
    assert _coded(t1_sr, "RECIST_RESP") == ["RECIST_PD"] and _coded(t1_sr, "AR_PATTERN") == []
    assert _coded(t1_sr, "RESISTANCE") == ["RES_PRIMARY"]
    numbers = _numbers(t1_sr)
    assert numbers["Number of new lesions"] == 2 and numbers["Number of progressive lesions"] == 1
    assert numbers[f"delta P_{name}"] == pytest.approx(expected)
    assert _coded(t0_sr, "RECIST_RESP") == []  # the baseline has no response


RESPONDING = tuple(CtLesionSpec(s.label, s.centre_mm, s.radius_mm * 0.5) for s in BASELINE_LESIONS)
PROGRESSING = BASELINE_LESIONS + tuple(
    CtLesionSpec(f"Met new {i}", (x, -35, z), 6) for i, (x, z) in enumerate([(-80, -40), (80, 0), (-20, -55), (30, 50)])
)


@pytest.mark.parametrize("sent", ["in date order", "latest first"])
def test_a_patient_followed_to_progression_after_response(
    sent: str, tmp_path: Path, make_settings, pacs: StoreSCP, start_node
) -> None:
    """Baseline, a response at T1 (10 weeks), progression with four new lesions at T2 (23 weeks), sent in one
    association (in date order, or the latest first): T2 pairs with the same baseline (a later assessment), its
    nadir is T1's sum, and the progression after the response is acquired resistance, systemic, counted there;
    the patient's course gives T1's Δ and that label. Every arrival order: `tests/immunode/test_flow.py`."""
    from research.radiomics import patient_courses, table_from_store
    from storage.results import ct_assessments

    baseline = write_ct_study(tmp_path / "t0", BASELINE_LESIONS, "20260105")
    t1 = write_ct_study(tmp_path / "t1", RESPONDING, "20260316", seed=2)
    t2 = write_ct_study(tmp_path / "t2", PROGRESSING, "20260615", seed=3)
    settings = make_settings(
        routing=CT_RULES,
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        pipelines={"ct_radiomics": {"per_lesion_features": False}},
    )
    node = start_node(settings)
    order = (baseline, t1, t2) if sent == "in date order" else (t2, t1, baseline)
    assert storescu(node.port, [f for study in order for f in _study_files(study)]).returncode == 0
    jobs = [wait_until(lambda s=s: _finished(node, s.study_uid), timeout_s=400) for s in (baseline, t1, t2)]
    assert all(job.state is JobState.SUCCEEDED for job in jobs), [job.error for job in jobs]
    t2_pairings = _pairings(node, jobs[2].id)
    assert t2_pairings[-1].outcome is PairingOutcome.PAIRED
    assert t2_pairings[-1].baseline_study_uid == baseline.study_uid  # not T1, although T1 is in the window
    assert "a later assessment of baseline" in t2_pairings[-1].reason
    with node.database.session() as session:
        (first,), (second,) = (read_records(session, CT_ASSESSMENTS, job_id=j.id) for j in jobs[1:])
        assessments = ct_assessments(session, "ct_radiomics")
    assert (first.time_point, first.category, first.resistance) == ("T1", "PR", "none")
    assert (second.time_point, second.category, second.best_response) == ("T2", "PD", "PR")
    assert (second.resistance, second.pattern, second.new_lesions) == ("acquired", "systemic", 4)
    # The lesions halved at T1 and are back at their baseline size: grown ~100 % and 7-12 mm since their nadir,
    # progressive (by growth since the baseline none would be).
    assert second.progressive_lesions >= 3
    assert second.nadir_mm == pytest.approx(first.sum_t1_mm) and second.weeks == pytest.approx(23.0)
    assert first.deltas and not second.deltas  # the method's Δ features are T1 against T0
    (course,) = patient_courses(assessments, {})
    assert (course.resistance, course.pattern, course.best_response) == ("acquired", "systemic", "PR")
    table, left_out = table_from_store([course], None)
    assert table.systemic.tolist() == [True] and left_out == [] and len(table.features) > 800
    # The T0 and T1 feature values travel with the Δ: the redundancy filter runs on the paper's datasets.
    assert table.t0 is not None and table.t1 is not None and table.t0.shape == table.values.shape
    reports = wait_until(lambda: (r := _reports(pacs)) and sum(len(v) for v in r.values()) >= 6 and r, timeout_s=120)
    t2_sr = _sr(reports[t2.study_uid])
    assert _coded(t2_sr, "RESISTANCE") == ["RES_ACQUIRED"] and _coded(t2_sr, "AR_PATTERN") == ["AR_SYSTEMIC"]
    assert any("Assessment T2 of the same baseline; earlier: T1 PR" in text for text in _texts(t2_sr))


DCMQRSCP_CONFIG = """NetworkTCPPort  = {port}
MaxPDUSize      = 16384
MaxAssociations = 16
HostTable BEGIN
immunode = ({node_ae}, 127.0.0.1, {node_port})
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
QRPACS {storage} RW (200, 1024mb) ANY
AETable END
"""


@pytest.fixture
def qr_pacs(tmp_path: Path):
    """dcmtk dcmqrscp as the hospital's query/retrieve PACS; `start(node_port)` writes its config and runs it."""
    processes: list[subprocess.Popen] = []

    def start(node_port: int) -> int:
        storage = tmp_path / "qr-storage"
        storage.mkdir()
        port = free_port()
        config = tmp_path / "dcmqrscp.cfg"
        config.write_text(DCMQRSCP_CONFIG.format(port=port, node_ae="IMMUNODE", node_port=node_port, storage=storage))
        process = subprocess.Popen(
            [require_tool("dcmqrscp"), "-c", str(config), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        from tests.conftest import _port_open

        wait_until(lambda: _port_open(port), 10)
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def test_missing_baseline_retrieved_from_a_query_retrieve_peer(
    tmp_path: Path, make_settings, qr_pacs, start_node
) -> None:
    baseline = write_ct_study(tmp_path / "t0", BASELINE_LESIONS, "20260105")
    follow_up = write_ct_study(tmp_path / "t1", FOLLOW_UP_LESIONS, "20260316", shift_mm=SHIFT_MM, seed=2)
    node_port = free_port()
    qr_port = qr_pacs(node_port)
    # The PACS holds the baseline; the node never saw it.
    assert storescu(qr_port, _study_files(baseline), called="QRPACS").returncode == 0
    settings = make_settings(
        node={"port": node_port},
        routing=CT_RULES,
        peers={"allowed": [{"ae_title": "STORESCU", "host": "127.0.0.1"}, {"ae_title": "QRPACS", "host": "127.0.0.1"}]},
        pipelines={"ct_radiomics": {"pairing": {"baseline_wait_s": 240}}},
        query_retrieve={"ae_title": "QRPACS", "host": "127.0.0.1", "port": qr_port, "timeout_s": 30},
    )
    node = start_node(settings)
    assert storescu(node.port, _study_files(follow_up)).returncode == 0
    waiting = wait_until(
        lambda: (j := _job_of(node, follow_up.study_uid)) and j.state is JobState.WAITING_BASELINE and j,
        timeout_s=60,
    )
    (retrieving,) = _pairings(node, waiting.id)
    assert retrieving.outcome is PairingOutcome.RETRIEVING and retrieving.baseline_study_uid == baseline.study_uid
    t1_job = wait_until(lambda: _finished(node, follow_up.study_uid), timeout_s=300)
    assert t1_job.state is JobState.SUCCEEDED, t1_job.error
    t0_job = _finished(node, baseline.study_uid)
    assert t0_job.state is JobState.SUCCEEDED
    assert [p.outcome for p in _pairings(node, t0_job.id)] == [PairingOutcome.BASELINE_ITSELF]
    assert [p.outcome for p in _pairings(node, t1_job.id)] == [PairingOutcome.RETRIEVING, PairingOutcome.PAIRED]
    assert "2 new, 1 progressive." in t1_job.summary


def test_planning_ct_with_organ_contours_and_an_identical_follow_up(
    tmp_path: Path, make_settings, pacs: StoreSCP, start_node
) -> None:
    """Shaped like the real lung planning CT: 136 slices of 512 x 512, de-identified without a method, GTV-1
    beside Lung-Left, Lung-Right and Spinal-Cord (ORGAN); a copy 10 weeks later as follow-up. The organs are
    not lesions, GTV-1 keeps every voxel the left lung's contour shares with it, both SEGs are valid, every
    delta is 0, and the follow-up is not registered again (the CTs already correlate as acquired: what made
    this job take 1,000 s on a real planning CT, now 47 s; a duration is reported here, never asserted)."""
    baseline = write_planning_ct(tmp_path / "t0", "20260105")
    follow_up = write_planning_ct(tmp_path / "t1", "20260316")  # the same images, 10 weeks later
    settings = make_settings(
        routing=CT_RULES,
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        pipelines={"ct_radiomics": {"published_signature": str(PUBLISHED)}},
    )
    node = start_node(settings)
    assert storescu(node.port, list(baseline.ct_files) + [baseline.rtstruct]).returncode == 0
    t0_job = wait_until(lambda: _finished(node, baseline.study_uid), timeout_s=300)
    assert t0_job.state is JobState.SUCCEEDED, t0_job.error
    assert storescu(node.port, list(follow_up.ct_files) + [follow_up.rtstruct]).returncode == 0
    t1_job = wait_until(lambda: _finished(node, follow_up.study_uid), timeout_s=300)
    assert t1_job.state is JobState.SUCCEEDED, t1_job.error
    seconds = (t1_job.finished_at - t1_job.started_at).total_seconds()
    print(f"follow-up CT job: {seconds:.0f} s")
    assert "Lung-Left: RT ROI Interpreted Type ORGAN" in t1_job.summary
    with node.database.session() as session:
        (lesion,) = read_records(session, CT_LESION_RESULTS, job_id=t1_job.id)
        (assessment,) = read_records(session, CT_ASSESSMENTS, job_id=t1_job.id)
        volumes = {e.volume for e in read_records(session, RADIOMICS_EXTRACTIONS)}
    sphere_ml = 4 / 3 * 3.14159 * baseline.gtv_radius_mm**3 / 1000
    assert lesion.label == "GTV-1" and lesion.role is LesionRole.PRIMARY and lesion.status == "matched"
    assert lesion.volume_ml == pytest.approx(sphere_ml, rel=0.1)  # none of it lost to Lung-Left
    assert "M" not in volumes  # the lungs and the cord are not "metastases"
    assert assessment.deltas and all(value in (0.0, None) for value in assessment.deltas.values())
    reports = wait_until(lambda: (r := _reports(pacs)) and sum(len(v) for v in r.values()) >= 4 and r, timeout_s=120)
    for study in (baseline, follow_up):
        (seg,) = [ds for ds in reports[study.study_uid] if ds.Modality == "SEG"]
        assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["CT lesion 1: GTV-1"]
        sr = _sr(reports[study.study_uid])
        assert any("GTV-1" in identifier for identifier in _tracking(sr))
        assert sr.PatientIdentityRemoved == "YES" and sr.DeidentificationMethod
        assert any("Spinal-Cord: RT ROI Interpreted Type ORGAN" in t for t in _texts(sr))
    follow_up_texts = _texts(_sr(reports[follow_up.study_uid]))
    assert any("Registration of the follow-up to T0: none needed" in t for t in follow_up_texts), follow_up_texts
