"""The command line: `immunode process` (the pipelines on a folder, no network, for research use), global
options anywhere on the line, and the commands that read the index refusing to create one."""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import pytest
import yaml

from immunode.cli import build_parser
from immunode.cli import main as cli_main
from storage.database import Database
from tests.conftest import dciodvfy_errors
from tests.synthetic import DEFAULT_LESIONS, write_study


def test_process_folder_writes_valid_seg_and_sr_and_reports_bad_files(tmp_path: Path, capsys) -> None:
    source = tmp_path / "in"
    write_study(source, vendor="philips", shape_zyx=(40, 64, 64), lesions=DEFAULT_LESIONS[:2])
    (source / "notes.txt").write_text("not DICOM")
    truncated = source / "PT" / "pt_0005.dcm"
    (source / "broken.dcm").write_bytes(truncated.read_bytes()[:200])
    out = tmp_path / "out"
    assert cli_main(["process", str(source), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "notes.txt: not readable as DICOM" in captured.err
    assert "broken.dcm: not readable as DICOM" in captured.err
    assert "Research use only" in captured.out
    written = sorted(out.iterdir())
    assert len(written) == 2
    for path in written:
        assert dciodvfy_errors(path) == []
    seg = next(hd.seg.segread(p) for p in written if "SEG:" in captured.out and p.name.endswith("001.dcm"))
    assert len(seg.SegmentSequence) == 2


def test_process_folder_without_pet_says_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    assert cli_main(["process", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    assert "no series under" in capsys.readouterr().err


def _config(tmp_path: Path, make_settings, with_index: bool) -> tuple[Path, Path]:
    """A config file on a storage root of its own, and the index file it names (created when asked)."""
    settings = make_settings()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    if with_index:
        Database(settings.database_url).dispose()
    return config, settings.storage.root / "index.sqlite3"


@pytest.mark.parametrize(
    "arguments",
    [
        ["--config", "{config}", "status"],
        ["status", "--config", "{config}"],
        ["-c", "{config}", "audit", "--since", "1h"],
        ["audit", "--since", "1h", "-c", "{config}"],
    ],
)
def test_global_options_before_or_after_the_command(tmp_path: Path, make_settings, capsys, arguments) -> None:
    config, _ = _config(tmp_path, make_settings, with_index=True)
    assert cli_main([a.format(config=config) for a in arguments]) == 0
    out = capsys.readouterr().out
    assert "Studies" in out or "no audit records" in out


def test_global_options_of_nested_commands_and_their_precedence() -> None:
    parse = build_parser().parse_args
    fusion = ["train", "fusion", "--cohort", "c.csv"]
    assert parse(["--config", "a.yaml", *fusion]).config == "a.yaml"  # not overwritten by the sub-command's default
    assert parse([*fusion, "--config", "b.yaml"]).config == "b.yaml"
    assert parse(["train", "-c", "b.yaml", "fusion", "--cohort", "c.csv"]).config == "b.yaml"
    assert parse(["--config", "a.yaml", *fusion, "--config", "b.yaml"]).config == "b.yaml"  # the last one given
    assert parse(fusion).config is None
    assert parse(["import", "blood", "x.csv", "--config", "b.yaml"]).config == "b.yaml"


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["audit"],
        ["retry", "--job", "1"],
        ["train", "ar-signature", "--features", "P_a"],
        ["analyse-radiomics", "--out", "unused"],
    ],
)
def test_reading_commands_refuse_to_create_an_index(tmp_path: Path, make_settings, capsys, command) -> None:
    config, index = _config(tmp_path, make_settings, with_index=False)
    assert cli_main([*command, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"no index at {index.resolve()}" in err
    assert f"is --config pointing at the node's config? (config: {config})" in err
    assert not index.parent.exists()  # neither the index nor its storage root was made


def test_without_a_config_the_refusal_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("IMMUNODE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["status"]) == 2
    assert "(config: embedded defaults (no --config, no $IMMUNODE_CONFIG))" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_imports_create_the_index(tmp_path: Path, make_settings, capsys) -> None:
    config, index = _config(tmp_path, make_settings, with_index=False)
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("PatientID,therapy_start\nP1,2024-01-01\n")
    assert cli_main(["import", "clinical", str(clinical), "--config", str(config)]) == 0
    assert index.exists() and "1 new" in capsys.readouterr().out
    assert cli_main(["status", "--config", str(config)]) == 0


def test_status_prints_the_snapshot_searched_and_filtered(tmp_path: Path, make_settings, capsys) -> None:
    """`immunode status` prints the same snapshot as the page: the health line, then the study list (search,
    state filter, paging) with each study's job, results and deliveries and their next attempt."""
    from datetime import timedelta

    from common.states import JobState
    from storage import deliveries
    from storage.files import FileLayout
    from storage.schema import utcnow
    from storage.store import InstanceStore
    from tests.storage.conftest import job_with_result, store_study

    config, _ = _config(tmp_path, make_settings, with_index=True)
    settings = make_settings()
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    store = InstanceStore(database, layout)
    done, _ = store_study(
        store,
        tmp_path / "a",
        "ACME-1",
        AccessionNumber="A1",
        StudyDate="20260105",
        StudyDescription="PET-CT whole body",
        PatientName="Doe^Jane",
    )
    waiting, _ = store_study(store, tmp_path / "b", "ACME-2", AccessionNumber="A2", StudyDate="20260210")
    failed, _ = store_study(store, tmp_path / "c", "OTHER-3", AccessionNumber="B3", StudyDate="20260301")
    job_with_result(database, layout, done, JobState.SUCCEEDED)
    job_with_result(database, layout, waiting, JobState.SUCCEEDED, ["pacs"])
    job_with_result(database, layout, failed, JobState.FAILED)
    with database.session() as session:
        (due,) = deliveries.due_deliveries(session, layout, utcnow() + timedelta(seconds=1))["pacs"]
        deliveries.record_delivery_attempt(session, due.delivery_id, False, "refused", 3, utcnow() + timedelta(hours=1))
    database.dispose()

    assert cli_main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Health: ATTENTION | index reachable | disk ")
    assert "  - 1 job(s) failed in the last 24 h" in out
    assert "Studies (3 matching; page 1 of 1, newest last instance first)" in out
    assert "ACME-1 (issuer IMMUNODE-TEST)  acc A1  2026-01-05  PT 'PET-CT whole body'  2 instance(s)  done" in out
    assert "Doe^Jane" not in out  # names only when monitoring.show_patient_names
    assert "pet_quant SUCCEEDED: 1 lesion" in out and "pet_quant FAILED: no PET series" in out
    assert re.search(r"SR -> pacs: 1 attempt\(s\), next \S+ \S+Z \(in \d+ min\): refused", out)
    assert cli_main(["status", "--config", str(config), "--patient", "acme", "--state", "delivering"]) == 0
    out = capsys.readouterr().out
    assert "Studies (1 matching; page 1 of 1" in out and "ACME-2" in out and "ACME-1 " not in out
    assert cli_main(["status", "-c", str(config), "--from", "2026-02-01", "--page-size", "1", "--page", "2"]) == 0
    out = capsys.readouterr().out
    assert "Studies (2 matching; page 2 of 2" in out and "ACME-2" in out and "OTHER-3 " not in out
    assert cli_main(["status", "-c", str(config), "--accession", "zzz"]) == 0
    assert "Studies (0 matching" in capsys.readouterr().out


def test_purge_lists_what_is_due_and_purges_only_without_a_running_node(tmp_path: Path, make_settings, capsys) -> None:
    import os
    import socket

    from sqlalchemy import update

    from common.states import JobState
    from storage import runs
    from storage.files import FileLayout
    from storage.schema import Study, utcnow
    from storage.store import InstanceStore
    from tests.storage.conftest import job_with_result, store_study

    settings = make_settings(storage={"retention": {"max_age_days": 30}})
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    store = InstanceStore(database, layout)
    old, _ = store_study(store, tmp_path / "old", "OLD-1")
    recent, _ = store_study(store, tmp_path / "recent", "NEW-1")
    for uid in (old, recent):
        job_with_result(database, layout, uid, JobState.SUCCEEDED)
    with database.session() as session:
        session.execute(
            update(Study).where(Study.study_instance_uid == old).values(last_received_at=utcnow().replace(year=2020))
        )
        live = runs.begin_run(session, socket.gethostname(), os.getpid()).run_id  # as a running node
    assert cli_main(["purge", "--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert old in out and recent not in out and "more than 30 day(s) ago" in out
    assert "1 stud(ies)" in out and "due for purging now" in out
    assert cli_main(["purge", "--config", str(config)]) == 1
    assert "a node is running on this index" in capsys.readouterr().err
    with database.session() as session:
        runs.end_run(session, live)
    assert cli_main(["purge", "--config", str(config)]) == 0
    assert "purged 1 stud(ies)" in capsys.readouterr().out
    assert cli_main(["status", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "Studies (1 matching" in listed and "NEW-1" in listed and "OLD-1" not in listed
    database.dispose()
