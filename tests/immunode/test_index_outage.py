"""PostgreSQL stopped while a job runs (a real server of the test's own, stopped and started again, `immunode
serve` in its own process): a job that finishes during the outage is recorded once the index answers again
(the recording is retried with back-off), or, when the outage outlasts `workers.record_retry_s`, handed back
to the queue by its own node and run again; no job stays RUNNING. Each result reaches the PACS once. The outage
is logged once when it starts and once when it ends (no traceback per poll) and shows in /metrics."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from pathlib import Path

import pydicom
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from common.states import JobState
from storage.database import Database
from storage.schema import Delivery, DeliveryState, Job, Output
from tests.conftest import free_port, serve, storescu, wait_until
from tests.synthetic import DEFAULT_LESIONS, write_study


def _index_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("immunode_index_")
    }


def _job(database: Database, job_id: int) -> Job | None:
    with database.session() as session:
        return session.get(Job, job_id)


def test_a_job_finishing_while_the_index_is_down_is_recorded_or_handed_back(
    tmp_path: Path, make_settings, own_postgres, pacs
) -> None:
    monitoring_port = free_port()
    settings = make_settings(
        database_url=own_postgres.url,
        routing={"study_stable_s": 1.0, "poll_interval_s": 0.3},
        workers={"processes": 1, "record_retry_s": 6},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        monitoring={"port": monitoring_port},
    )
    root = Path(settings.storage.root)
    log = tmp_path / "node.log"
    node = serve(tmp_path, "node", settings)
    database = Database(own_postgres.url, migrate=False)
    try:
        for number, outage in ((1, "short"), (2, "long")):
            study = write_study(
                tmp_path / f"study{number}",
                shape_zyx=(56, 80, 80),
                lesions=DEFAULT_LESIONS[:2],
                patient_id=f"IX{number}",
            )
            assert storescu(settings.node.port, list(study.pet_files)).returncode == 0
            # The worker has read the job's inputs from the index and is analysing (its scratch folder exists):
            # the index goes away now, and the job finishes while it is away.
            wait_until(lambda: any(root.glob("pet_quant-*")), 120, 0.05)
            own_postgres.stop()
            outputs = root / "outputs" / str(number)
            wait_until(lambda: len(list(outputs.glob("*.dcm"))) >= 2, 120)  # SEG and SR written: it finished ...
            wait_until(lambda: f"job {number}: outcome not recorded yet" in log.read_text(), 60)  # ... unrecorded
            assert _index_metrics(monitoring_port)["immunode_index_up"] == 0
            if outage == "long":  # past workers.record_retry_s: the worker gives up and removes its outputs
                wait_until(lambda: "goes back to the queue when it answers" in log.read_text(), 120)
                assert not any(outputs.glob("*.dcm"))
            own_postgres.start()
            wait_until(lambda: (job := _job(database, number)) is not None and job.state is JobState.SUCCEEDED, 180)
            job = _job(database, number)
            assert job.attempts == 1  # a recording that failed does not use up an attempt

        def delivered() -> bool:
            with database.session() as session:
                total = session.scalar(select(func.count(Delivery.id)))
                sent = session.scalar(select(func.count(Delivery.id)).where(Delivery.state == DeliveryState.SENT))
            return total and total == sent and len(pacs.received()) >= total

        wait_until(delivered, 120)
        with database.session() as session:
            assert session.scalar(select(func.count(Job.id)).where(Job.state == JobState.RUNNING)) == 0
            indexed = session.scalars(select(Output.path)).all()
        assert all((root / path).exists() for path in indexed)
        received = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pacs.received())
        assert len(received) == len(indexed) and set(received.values()) == {1}  # each result once, none lost
        metrics = _index_metrics(monitoring_port)
        assert metrics["immunode_index_up"] == 1 and metrics["immunode_index_outages_total"] == 2
        assert metrics["immunode_index_outage_seconds_total"] > 0
    finally:
        node.terminate()
        node.wait(30)
        database.dispose()
    text = log.read_text()
    assert "Traceback" not in text, text[-5000:]
    # One line when an outage starts and one when it ends, per process that met it (the node, the worker).
    assert 2 <= len(re.findall(r"index unavailable \(", text)) <= 4
    assert 2 <= len(re.findall(r"index available again after", text)) <= 4
    assert len(re.findall(r" ERROR ", text)) <= 8, text[-5000:]
