"""Two `immunode serve` processes on one PostgreSQL index and one storage root (as behind a load balancer, or a
scanner and a PACS sending to different ones): every study is routed once, every job runs once and every
result is delivered once, also when one study arrives half at each node. The claims of a node that died are
taken back by a live one (`test_the_claims_of_a_dead_node_are_taken_back`, at the index)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pydicom
import pytest
import yaml
from sqlalchemy import func, select

from common.states import JobState
from storage.database import Database
from storage.schema import Delivery, DeliveryState, Job, Study
from tests.conftest import POSTGRES_URL, REPO, StoreSCP, free_port, reset_postgres, storescu, wait_until
from tests.synthetic import DEFAULT_LESIONS, write_study

pytestmark = pytest.mark.skipif(POSTGRES_URL is None, reason="needs PostgreSQL (IMMUNODE_TEST_DATABASE_URL)")


def _serve(tmp_path: Path, name: str, make_settings, pacs: StoreSCP) -> tuple[subprocess.Popen, int]:
    port = free_port()
    settings = make_settings(
        database_url=POSTGRES_URL,
        node={"port": port},
        routing={"study_stable_s": 1.0, "poll_interval_s": 0.3},
        workers={"processes": 1, "job_cpu_limit_s": 300},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
    )
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "immunode.cli", "--config", str(config), "serve"], cwd=REPO, stdout=log, stderr=log
    )
    wait_until(
        lambda: (
            subprocess.run(["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0
        ),
        60,
    )
    return process, port


def test_two_nodes_share_one_index_without_doing_anything_twice(tmp_path: Path, make_settings, pacs) -> None:
    reset_postgres(POSTGRES_URL)
    studies = [
        write_study(tmp_path / f"study{i}", shape_zyx=(16, 40, 40), lesions=DEFAULT_LESIONS[:1], patient_id=f"TWO-{i}")
        for i in range(4)
    ]
    first, first_port = _serve(tmp_path, "first", make_settings, pacs)
    second, second_port = _serve(tmp_path, "second", make_settings, pacs)
    database = Database(POSTGRES_URL, migrate=False)
    try:
        for i, study in enumerate(studies[:3]):
            assert storescu(first_port if i % 2 == 0 else second_port, list(study.pet_files)).returncode == 0
        split = list(studies[3].pet_files)  # one study, half at each node
        assert storescu(first_port, split[: len(split) // 2]).returncode == 0
        assert storescu(second_port, split[len(split) // 2 :]).returncode == 0

        def finished() -> bool:
            with database.session() as session:
                states = session.scalars(select(Job.state)).all()
                sent = session.scalar(select(func.count(Delivery.id)).where(Delivery.state == DeliveryState.SENT))
                total = session.scalar(select(func.count(Delivery.id)))
            return len(states) >= 4 and all(s is JobState.SUCCEEDED for s in states) and total and sent == total

        wait_until(finished, 300, 0.5)
        with database.session() as session:
            assert session.scalar(select(func.count(Study.id))) == 4
            jobs = session.scalars(select(Job)).all()
            # Routed once: one job per study; run once: one attempt each, by one of the two runs.
            assert Counter(job.study_fk for job in jobs) == Counter({s: 1 for s in {j.study_fk for j in jobs}})
            assert len(jobs) == 4 and all(job.attempts == 1 for job in jobs)
            assert {job.claimed_by for job in jobs} <= {1, 2} and len({job.claimed_by for job in jobs}) >= 1
            deliveries = session.scalars(select(Delivery)).all()
            assert all(d.attempts == 1 for d in deliveries)
        # Delivered once: the PACS received every result exactly once.
        wait_until(lambda: len(pacs.received()) >= len(deliveries), 30)
        received = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pacs.received())
        assert len(received) == len(deliveries) and set(received.values()) == {1}
    finally:
        for process in (first, second):
            process.terminate()
            process.wait(30)
        database.dispose()
