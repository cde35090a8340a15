"""A filling disk, for real: a node whose storage root (files and SQLite index) is a 20 MB tmpfs receives study
after study from dcmtk's storescu, far more than fits. With the retention watermark set, every instance is
acknowledged (0x0000, nothing refused for lack of space): the oldest finished studies are purged, files and index
rows together, each in the audit trail, while a study whose result is still waiting to be delivered is kept.
Mounting a tmpfs needs root (the test machines run the suite as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from storage import audit
from storage.schema import AuditKind, Delivery, DeliveryState, Instance, Job, Output, Series, Study, StudyState
from tests.conftest import free_port, storescu, wait_until
from tests.synthetic import DEFAULT_LESIONS, write_study

MB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _filler_studies(folder: Path, count: int) -> list[list[Path]]:
    """`count` CT studies of 10 slices of 256 x 256 (about 1.3 MB each), each of its own patient: copies of one
    written study under new UIDs. No routing rule takes CT here: each completes at once with nothing to analyse."""
    template = write_study(folder / "template", shape_zyx=(10, 256, 256), lesions=(), with_ct=True).ct_files
    slices = [(path.name, pydicom.dcmread(path)) for path in template]
    studies = []
    for number in range(count):
        study_uid, series_uid = generate_uid(), generate_uid()
        target = folder / f"study{number:02d}"
        target.mkdir()
        for name, ds in slices:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientID, ds.AccessionNumber = f"FILL{number:02d}", f"F{number:02d}"
            ds.save_as(target / name, enforce_file_format=True)
        studies.append(sorted(target.iterdir()))
    return studies


def _study_state(database, study_uid: str) -> StudyState | None:
    with database.session() as session:
        return session.scalar(select(Study.state).where(Study.study_instance_uid == study_uid))


def _delivery_state(database, study_uid: str) -> DeliveryState | None:
    with database.session() as session:
        return session.scalar(
            select(Delivery.state)
            .join(Output, Output.id == Delivery.output_fk)
            .join(Job, Job.id == Output.job_fk)
            .join(Study, Study.id == Job.study_fk)
            .where(Study.study_instance_uid == study_uid)
            .limit(1)
        )


def _received(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "immunode_instances_received_total"
    }


def test_stores_keep_being_accepted_as_the_disk_fills(tmp_path: Path, small_disk: Path, make_settings, start_node):
    settings = make_settings(
        storage={
            "root": str(small_disk / "store"),
            "min_free_mb": 2,
            "retention": {"purge_below_free_mb": 8, "purge_until_free_mb": 12, "interval_s": 0.5},
        },
        routing={
            "study_stable_s": 0.5,
            "poll_interval_s": 0.2,
            "rules": [{"name": "pet", "pipeline": "pet_quant", "series": {"modality": "PT"}}],
        },
        # Nothing listens there and the next attempt is an hour away: the PET study's results stay undelivered.
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
        dispatch={"max_attempts": 5, "backoff_initial_s": 3600, "backoff_max_s": 3600, "timeout_s": 2},
    )
    node = start_node(settings)
    pending = write_study(tmp_path / "pet", shape_zyx=(16, 40, 40), lesions=DEFAULT_LESIONS[:1], patient_id="KEEP")
    assert storescu(node.port, list(pending.pet_files)).returncode == 0
    fillers = _filler_studies(tmp_path / "fillers", 24)
    sent = len(pending.pet_files)
    for number, files in enumerate(fillers):
        completed = storescu(node.port, files)
        assert completed.returncode == 0, completed.stderr
        sent += len(files)
        assert _received(node.monitoring_port) == {"0x0000": sent}, f"a store refused after study {number}"
        # Study after study: the next comes once this one is complete (a study still receiving is never purged,
        # so a sender faster than the quiet time would fill the disk with studies nothing may purge yet).
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        wait_until(lambda: _study_state(node.database, uid) is StudyState.COMPLETE, 60)
        if number == 9:  # from here on the PET study's result waits for its next delivery attempt
            wait_until(lambda: _delivery_state(node.database, pending.study_uid) is DeliveryState.PENDING, 300)

    def purged() -> list[tuple[str, ...]]:
        with node.database.session() as session:
            return [a.study_uids for a in audit.audit_records(session) if a.kind is AuditKind.PURGE]

    node.stop()  # no purge half done while the index and the disk are compared
    assert shutil.disk_usage(small_disk).free >= 2 * MB
    with node.database.session() as session:
        kept = dict(
            session.execute(
                select(Study.study_instance_uid, func.count(Instance.id))
                .join(Series, Series.study_fk == Study.id)
                .join(Instance, Instance.series_fk == Series.id)
                .group_by(Study.study_instance_uid)
            ).all()
        )
        paths = set(session.scalars(select(Instance.path)))
    filler_uids = [str(pydicom.dcmread(files[0]).StudyInstanceUID) for files in fillers]
    gone = [uid for (uid,) in reversed(purged())]
    assert len(gone) >= 10  # 24 studies of 1.3 MB never fit in 20 MB
    # Oldest first: the purged studies are the first fillers, in the order they came.
    assert sorted(gone, key=filler_uids.index) == filler_uids[: len(gone)]
    assert all(uid not in kept for uid in gone)
    assert kept[pending.study_uid] == len(pending.pet_files)  # its result is not delivered yet: kept whole
    assert _delivery_state(node.database, pending.study_uid) is DeliveryState.PENDING
    assert filler_uids[-1] in kept
    # Files and rows went together: every indexed instance has its file, every file its row.
    root = settings.storage.root.resolve()
    on_disk = {str(p.relative_to(root)) for p in (root / "objects").rglob("*.dcm")}
    assert on_disk == paths and list((root / "purging").iterdir()) == []
