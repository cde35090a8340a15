"""A study is not complete while a sender is still sending it: a scanner that pauses longer than the quiet time
in the middle of its association (a slow reconstruction, a loaded network) does not get half its study analysed.
A real node, pynetdicom as the sender holding its association open across the pause."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import func, select

from storage.schema import Instance, Series, Study, StudyState
from tests.conftest import wait_until
from tests.synthetic import write_study

# Studies complete after 1 s of quiet (the test settings); the pause is three times that.
PAUSE_S = 3.0
# No pipeline for PT: completing the study is all that happens (no analysis to wait for).
NO_PET_RULE = {"rules": [{"name": "mr-only", "pipeline": "pet_quant", "series": {"modality": "MR"}}]}


def _study(node, uid: str) -> tuple[StudyState, int, int]:
    with node.database.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        count = session.scalar(
            select(func.count(Instance.id))
            .join(Series, Series.id == Instance.series_fk)
            .where(Series.study_fk == study.id)
        )
        return study.state, study.revision, int(count or 0)


def test_a_study_is_not_complete_while_its_association_still_sends_it(
    tmp_path: Path, make_settings, start_node
) -> None:
    study = write_study(tmp_path / "scanner", with_ct=False, shape_zyx=(6, 16, 16), lesions=())
    files = sorted(study.pet_files)
    settings = make_settings(routing=NO_PET_RULE)
    node = start_node(settings)
    ae = AE(ae_title="TESTSCU")
    first = pydicom.dcmread(files[0])
    ae.add_requested_context(first.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="IMMUNODE")
    assert assoc.is_established
    try:
        for path in files[:3]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        time.sleep(PAUSE_S)  # quiet three times as long as the quiet time, the association open
        assert _study(node, study.study_uid) == (StudyState.RECEIVING, 1, 3)
        for path in files[3:]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    finally:
        assoc.release()
    # The sender's end starts the route stage: complete once, with every instance, within the quiet time.
    wait_until(lambda: _study(node, study.study_uid)[0] is StudyState.COMPLETE, timeout_s=10)
    assert _study(node, study.study_uid) == (StudyState.COMPLETE, 1, len(files))


def test_a_sender_that_moved_on_to_another_study_is_done_with_the_previous_one(
    tmp_path: Path, make_settings, start_node
) -> None:
    """A PACS forwarding several studies over one association: each completes after its quiet time once the
    association has moved on to the next, without waiting for the association to end."""
    first = write_study(tmp_path / "a", with_ct=False, shape_zyx=(3, 16, 16), lesions=(), patient_id="P1")
    second = write_study(tmp_path / "b", with_ct=False, shape_zyx=(3, 16, 16), lesions=(), patient_id="P2")
    settings = make_settings(routing=NO_PET_RULE)
    node = start_node(settings)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(pydicom.dcmread(first.pet_files[0]).SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="IMMUNODE")
    assert assoc.is_established
    try:
        for path in [*first.pet_files, second.pet_files[0]]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        wait_until(lambda: _study(node, first.study_uid)[0] is StudyState.COMPLETE, timeout_s=10)
        assert _study(node, second.study_uid)[0] is StudyState.RECEIVING  # still being sent
    finally:
        assoc.release()
    wait_until(lambda: _study(node, second.study_uid)[0] is StudyState.COMPLETE, timeout_s=10)
