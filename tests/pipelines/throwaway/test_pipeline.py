"""Adding a pipeline that keeps result records edits no shared file: the throw-away pipeline of this folder, registered
by the line below and nowhere else, runs on the node (SCP, routing, its worker), its migration creates its table
(an Alembic branch of its own, found through its declaration), and its one record per series is written to the
index and read back (SQLite, and PostgreSQL when IMMUNODE_TEST_DATABASE_URL is set); retention purges it with its
study; and once its migration made the index, start-up refuses the index to a node that no longer registers it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy import select

from common.states import JobState, OutputKind
from immunode.startup import check_startup
from pipelines.builtin import BUILTIN
from storage import retention
from storage.database import head_revisions, indexed_revisions, pending_heads
from storage.records import read_records
from storage.schema import Job, Output
from tests.conftest import REPO, storescu, wait_until
from tests.pipelines.throwaway.pipeline import INSTANCE_COUNTS, THROWAWAY, Coverage, InstanceCountRecord
from tests.synthetic import write_study

REGISTRY = BUILTIN.with_pipeline(THROWAWAY)  # the one registry line
HERE = Path(__file__).resolve().parent


def test_its_record_is_kept_in_its_own_table_and_read_back(tmp_path: Path, make_settings, start_node, database_url):
    settings = make_settings(
        database_url=database_url,
        registry=REGISTRY,
        routing={"rules": [{"name": "count", "pipeline": "throwaway"}]},  # series: its modality, PET
        pipelines={"throwaway": {"minimum_instances": 5}},
    )
    study = write_study(tmp_path / "scanner", shape_zyx=(4, 16, 16), lesions=())
    node = start_node(settings)
    # The index is at its branch's revision, which depends on (and so stands for) the core's head.
    found = indexed_revisions(settings.database_url)
    assert found == ("throwaway_0001",) and pending_heads(found, REGISTRY.migrations) == ()
    assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0

    def finished() -> Job | None:
        with node.database.session() as session:
            return session.scalar(select(Job).where(Job.state.in_((JobState.SUCCEEDED, JobState.FAILED))))

    job = wait_until(finished, timeout_s=120)
    assert (job.pipeline, job.state, job.series_uids) == ("throwaway", JobState.SUCCEEDED, study.pet_series_uid)
    images = [pydicom.dcmread(path) for path in study.pet_files]
    expected = InstanceCountRecord(
        study.pet_series_uid,
        4,
        (16, 16),
        float(np.mean([image.pixel_array.mean() for image in images])),
        Coverage.SPARSE,
        "fewer than 5 instances",
    )
    with node.database.session() as session:
        assert read_records(session, INSTANCE_COUNTS, job_id=job.id) == [expected]
        (sr,) = session.scalars(select(Output).where(Output.job_fk == job.id)).all()
        assert (sr.kind, sr.series_number) == (OutputKind.SR, 997)  # the number it declares
        (candidate,) = retention.candidates(session)
    assert retention.purge_study(node.database, node.layout, candidate, "test", node.store.deleting_series)
    with node.database.session() as session:
        assert read_records(session, INSTANCE_COUNTS) == []  # found through the database's foreign keys
    without = make_settings(database_url=database_url)  # the same index, the pipeline no longer registered
    problems = check_startup(without, ports=False).problems
    assert any("schema throwaway_0001, unknown to this version" in problem for problem in problems), problems


def test_its_migration_is_a_branch_found_through_its_declaration() -> None:
    assert head_revisions() == ("0011",)  # the core's migrations know nothing of it
    assert REGISTRY.migrations == (HERE / "migrations",)
    assert head_revisions(REGISTRY.migrations) == ("0011", "throwaway_0001")


def test_no_file_outside_its_folder_names_it() -> None:
    """Its package, settings, record type, table and migration are all here; the registration is the line above.
    Documentation may point at it as the example; no code, configuration or migration elsewhere names it."""
    names = ("throwaway", "InstanceCountRecord", "INSTANCE_COUNTS")
    skipped = {".git", ".venv", "node_modules", "docs", "__pycache__"}
    naming = []
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO)
        if skipped & set(relative.parts) or not path.is_file() or path.is_relative_to(HERE):
            continue
        if path.suffix not in (".py", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".sh", ".mako"):
            continue
        text = path.read_text(errors="replace")
        naming += [f"{relative}: {name}" for name in names if name in text]
    assert naming == []
