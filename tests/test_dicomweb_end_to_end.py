"""DICOMweb through the whole node, against Orthanc with its DICOMweb plugin: Orthanc STOWs a PET/CT study into the
node, the node analyses it and STOWs its SEG and SR back (only to the destination its routing rule names); and a
follow-up CT's missing baseline is found by QIDO-RS and retrieved by WADO-RS from Orthanc, then paired."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from common.passwords import hash_password
from common.states import JobState, PairingOutcome
from storage.schema import AuditDirection, AuditKind, AuditOutcome, AuditRecord, Delivery, DeliveryState, Instance
from tests.conftest import StoreSCP, storescu, wait_until
from tests.synthetic import DEFAULT_LESIONS, write_study
from tests.synthetic_ct import BASELINE_LESIONS, FOLLOW_UP_LESIONS, SHIFT_MM, write_ct_study
from tests.test_ct_radiomics_end_to_end import CT_RULES, _finished, _job_of, _pairings, _study_files

PASSWORD = "orthanc's own password"


def test_orthanc_stows_a_study_in_and_gets_the_results_back_by_stow(
    tmp_path: Path, make_settings, start_node, orthanc_dicomweb, pacs: StoreSCP
) -> None:
    study = write_study(tmp_path / "src", vendor="ge", shape_zyx=(40, 64, 64), lesions=DEFAULT_LESIONS[:2])
    files = list(study.pet_files) + list(study.ct_files)
    orthanc_study = orthanc_dicomweb.upload(files)
    settings = make_settings(
        node={
            "dicomweb": {
                "host": "127.0.0.1",
                "port": 0,
                "clients": [{"name": "ORTHANC", "username": "orthanc", "password_hash": hash_password(PASSWORD)}],
            }
        },
        destinations=[
            {"name": "orthanc-web", "protocol": "dicomweb", "url": orthanc_dicomweb.dicomweb_url},
            {"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port},  # receives results
        ],
        routing={
            "rules": [
                {
                    "name": "pet-lesions",
                    "pipeline": "pet_quant",
                    "series": {"modality": "PT"},
                    "destinations": ["orthanc-web"],  # this rule's results go there only
                }
            ]
        },
    )
    node = start_node(settings)
    orthanc_dicomweb.add_dicomweb_server("immunode", f"http://127.0.0.1:{node.dicomweb_port}/", "orthanc", PASSWORD)
    orthanc_dicomweb.post("/dicom-web/servers/immunode/stow", json.dumps({"Resources": [orthanc_study]}), 120)
    with node.database.session() as session:  # Orthanc's STOW-RS answered: every instance is indexed
        received = session.scalars(select(Instance)).all()
        assert len(received) == len(files) and {i.calling_ae_title for i in received} == {"ORTHANC"}
        (inbound,) = session.scalars(select(AuditRecord).where(AuditRecord.kind == AuditKind.STOW)).all()
    assert (inbound.direction, inbound.outcome, inbound.instances) == (
        AuditDirection.INBOUND,
        AuditOutcome.COMPLETED,
        len(files),
    )
    series = wait_until(
        lambda: (
            (found := orthanc_dicomweb.series_of_study(study.study_uid))
            and {"SEG", "SR"} <= {s.get("Modality") for s in found}
            and found
        ),
        timeout_s=240,
    )
    derived = {s["Modality"]: s for s in series if s.get("Modality") in ("SEG", "SR")}
    assert {s["SeriesDescription"] for s in derived.values()} == {
        "immunode PET lesions (RESEARCH USE ONLY)",
        "immunode PET lesion report (RESEARCH USE ONLY)",
    }
    with node.database.session() as session:
        deliveries = session.scalars(select(Delivery)).all()
        assert {(d.destination, d.state) for d in deliveries} == {("orthanc-web", DeliveryState.SENT)}
        sends = session.scalars(select(AuditRecord).where(AuditRecord.kind == AuditKind.SEND)).all()
    assert sends and all(s.called_ae_title == "orthanc-web" for s in sends)
    assert pacs.received() == []  # a destination the rule does not name gets nothing


def test_missing_baseline_found_by_qido_and_retrieved_by_wado(
    tmp_path: Path, make_settings, start_node, orthanc_dicomweb
) -> None:
    baseline = write_ct_study(tmp_path / "t0", BASELINE_LESIONS, "20260105")
    follow_up = write_ct_study(tmp_path / "t1", FOLLOW_UP_LESIONS, "20260316", shift_mm=SHIFT_MM, seed=2)
    orthanc_dicomweb.upload(_study_files(baseline))  # the PACS holds the baseline; the node never saw it
    settings = make_settings(
        routing=CT_RULES,
        pipelines={"ct_radiomics": {"pairing": {"baseline_wait_s": 240}}},
        query_retrieve={"protocol": "dicomweb", "url": orthanc_dicomweb.dicomweb_url, "name": "ORTHANC-WEB"},
    )
    node = start_node(settings)
    assert storescu(node.port, _study_files(follow_up)).returncode == 0
    t1_job = wait_until(lambda: _finished(node, follow_up.study_uid), timeout_s=300)
    assert t1_job.state is JobState.SUCCEEDED, t1_job.error
    retrieving, paired = _pairings(node, t1_job.id)
    assert retrieving.outcome is PairingOutcome.RETRIEVING and retrieving.baseline_study_uid == baseline.study_uid
    assert "at ORTHANC-WEB" in retrieving.reason
    assert f"WADO-RS: {len(_study_files(baseline))} stored, 0 refused" in retrieving.reason  # CT series + RTSTRUCT
    assert paired.outcome is PairingOutcome.PAIRED
    t0_job = _job_of(node, baseline.study_uid)
    assert t0_job.state is JobState.SUCCEEDED
    assert "2 new, 1 progressive." in t1_job.summary
    with node.database.session() as session:
        kinds = [(a.kind, a.outcome) for a in session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()]
    assert (AuditKind.QUERY, AuditOutcome.COMPLETED) in kinds and (AuditKind.RETRIEVE, AuditOutcome.COMPLETED) in kinds
