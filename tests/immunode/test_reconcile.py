"""Files written but never indexed (a crash between the durable write and the index commit) are reconciled
at start-up: indexed when valid, complete and new; removed when the same bytes are indexed; quarantined
otherwise; counted in the run's record and shown by `immunode status`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from io import BytesIO
from pathlib import Path

import pydicom
import yaml
from sqlalchemy import select

from dicom_node.ingest import parse_received
from immunode.cli import main as cli_main
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Instance, NodeRun, Patient, QuarantinedFile, Series, Study
from storage.store import InstanceStore
from tests.conftest import REPO
from tests.synthetic import write_study


def _age(path: Path) -> None:
    """Older than the reconciliation grace period (files younger may be in flight on another node)."""
    old = time.time() - 3600
    os.utime(path, (old, old))


def _orphan(layout: FileLayout, data: bytes) -> Path:
    path = layout.new_object_path()
    layout.write_durably(data, path)
    _age(path)
    return path


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_orphans_of_an_unclean_run_are_indexed_removed_or_quarantined(
    tmp_path: Path, make_settings, start_node, database_url: str, capsys
) -> None:
    settings = make_settings(database_url)
    study = write_study(tmp_path / "s", with_ct=False, shape_zyx=(5, 16, 16), lesions=(), patient_id="P-RECON")
    layout = FileLayout(settings.storage.root)
    database = Database(settings.database_url)
    store = InstanceStore(database, layout)
    indexed = study.pet_files[0].read_bytes()
    store.store(parse_received(indexed), indexed, "STORESCU")
    with database.session() as session:  # a run that never stopped: killed
        session.add(NodeRun(host="crashed", pid=1))
    database.dispose()

    valid = _orphan(layout, study.pet_files[1].read_bytes())
    truncated = _orphan(layout, study.pet_files[2].read_bytes()[:700])
    duplicate = _orphan(layout, indexed)
    other_bytes = pydicom.dcmread(study.pet_files[0])
    other_bytes.SeriesDescription = "changed after the fact"
    different = _orphan(layout, _bytes(other_bytes))
    stray = pydicom.dcmread(study.pet_files[3])
    stray.PatientID = "SOMEONE-ELSE"
    conflicting = _orphan(layout, _bytes(stray))
    young = layout.new_object_path()
    layout.write_durably(study.pet_files[4].read_bytes(), young)  # in flight: left alone

    node = start_node(settings)
    with node.database.session() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.path, Patient.patient_id)
            .join(Series, Series.id == Instance.series_fk)
            .join(Study, Study.id == Series.study_fk)
            .join(Patient, Patient.id == Study.patient_fk)
        ).all()
        quarantined = session.scalars(select(QuarantinedFile)).all()
        run = session.scalar(select(NodeRun).order_by(NodeRun.id.desc()))
    by_uid = {uid: (path, patient) for uid, path, patient in rows}
    valid_uid = pydicom.dcmread(study.pet_files[1]).SOPInstanceUID
    assert by_uid[valid_uid] == (layout.relative(valid), "P-RECON")
    assert len(by_uid) == 2
    assert not duplicate.exists() and not truncated.exists() and not different.exists()
    assert not conflicting.exists() and young.exists()
    reasons = sorted(q.reason for q in quarantined)
    assert len(reasons) == 3
    assert any("another copy" in r for r in reasons) and any("another patient" in r for r in reasons)
    assert all((layout.root / q.path).exists() for q in quarantined)
    assert (run.orphans_indexed, run.orphans_quarantined) == (1, 3)

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    assert cli_main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "reconciliation indexed 1 and quarantined 3 file(s)" in out
    assert "3 file(s) in quarantine" in out and "1 earlier run(s) ended without a clean stop" in out


def test_after_a_clean_stop_nothing_is_scanned(tmp_path: Path, make_settings, start_node) -> None:
    settings = make_settings()
    node = start_node(settings)
    node.stop()
    # A file that is not the index's, but the previous run stopped cleanly: start-up does not look.
    stray = _orphan(FileLayout(settings.storage.root), b"not even DICOM")
    node = start_node(settings)
    assert stray.exists()
    with node.database.session() as session:
        assert session.scalar(select(QuarantinedFile.id)) is None


def test_a_process_killed_between_write_and_commit_leaves_a_file_that_the_next_start_indexes(
    tmp_path: Path, make_settings, start_node
) -> None:
    """A real crash: a process writes a received instance durably and dies (os._exit) before its index
    commit; the next start of the node finds the file and indexes it under its patient."""
    settings = make_settings()
    study = write_study(tmp_path / "s", with_ct=False, shape_zyx=(2, 16, 16), lesions=(), patient_id="P-KILL")
    start_node(settings).stop()  # a clean run first, then the crash
    script = textwrap.dedent(
        f"""
        import os, socket, sys
        sys.path.insert(0, {str(REPO)!r})
        from dicom_node.ingest import parse_received
        from storage.database import Database
        from storage.files import FileLayout
        from storage.runs import begin_run
        from storage.store import InstanceStore
        database = Database({settings.database_url!r})
        with database.session() as session:
            begin_run(session, socket.gethostname(), os.getpid())  # a node of this machine, then it dies
        store = InstanceStore(database, FileLayout({str(settings.storage.root)!r}))
        store._index = lambda *args, **kwargs: os._exit(9)  # dies between the write and the commit
        data = open({str(study.pet_files[0])!r}, "rb").read()
        store.store(parse_received(data), data, "STORESCU")
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 9, completed.stderr
    (orphan,) = FileLayout(settings.storage.root).object_files()
    _age(orphan)
    node = start_node(settings)
    with node.database.session() as session:
        patient = session.scalar(
            select(Patient.patient_id)
            .join(Study, Study.patient_fk == Patient.id)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Instance.path == FileLayout(settings.storage.root).relative(orphan))
        )
    assert patient == "P-KILL"
