"""Adding a pipeline is its module, one registry entry, its configuration block and its tests: a test-only SUV
statistics pipeline (`tests/suv_statistics_pipeline.py`), registered here and nowhere else, runs end to end
through the SCP, its worker and the dispatcher, and its SR arrives validated at the PACS, in the series it
declares (a number no other pipeline's outputs may come to take). A test pipeline that also keeps result records
and brings its own migration: docs/architecture.md, "Adding a pipeline"."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest
from sqlalchemy import select

from common.states import JobState
from immunode.config import ConfigError, parse_settings
from pipelines.builtin import BUILTIN
from pipelines.errors import RegistryConflict
from pipelines.registry import Writes
from storage.schema import Job
from tests.conftest import dciodvfy_errors, storescu, wait_until
from tests.sr_content import sr_numbers
from tests.suv_statistics_pipeline import SUV_STATISTICS
from tests.synthetic import DEFAULT_LESIONS, write_study

REGISTRY = BUILTIN.with_pipeline(SUV_STATISTICS)


def test_its_series_numbers_are_its_own() -> None:
    reusing = type("Reusing", (type(SUV_STATISTICS),), {"writes": Writes(sr_series_number=995)})
    with pytest.raises(RegistryConflict, match="pipelines histology and suv_statistics: SR series 995 and SR series"):
        BUILTIN.with_pipeline(reusing())


def test_its_configuration_block_is_composed_and_checked() -> None:
    settings = parse_settings({"pipelines": {"suv_statistics": {"percentiles": [25, 75]}}}, registry=REGISTRY)
    assert settings.pipelines.suv_statistics.percentiles == [25.0, 75.0]
    assert settings.pipelines.pet_quant.beta == 0.3  # the built-in blocks are still there
    with pytest.raises(ConfigError, match="pipelines.suv_statistics.percentile: unknown key"):
        parse_settings({"pipelines": {"suv_statistics": {"percentile": [25]}}}, registry=REGISTRY)
    with pytest.raises(ConfigError, match="pipelines.suv_statistics: unknown key"):
        parse_settings({"pipelines": {"suv_statistics": {}}})  # not registered: not a block
    with pytest.raises(ConfigError, match="routing.rules.0.pipeline: .*unknown pipeline 'suv_statistics'"):
        parse_settings({"routing": {"rules": [{"name": "x", "pipeline": "suv_statistics"}]}})


def test_a_pipeline_registered_in_a_test_runs_end_to_end(tmp_path: Path, make_settings, start_node, pacs) -> None:
    settings = make_settings(
        registry=REGISTRY,
        routing={"rules": [{"name": "suv-stats", "pipeline": "suv_statistics"}]},  # series: its modality, PET
        pipelines={"suv_statistics": {"percentiles": [50, 95]}},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
    )
    study = write_study(tmp_path / "scanner", shape_zyx=(24, 48, 48), lesions=DEFAULT_LESIONS[:1])
    node = start_node(settings)
    assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
    (received,) = wait_until(lambda: pacs.received(), timeout_s=120)
    assert dciodvfy_errors(received) == []
    sr = hd.sr.srread(received)  # reads back with highdicom
    assert sr.SeriesDescription == "test SUV statistics (RESEARCH USE ONLY)"
    assert sr.SeriesNumber == SUV_STATISTICS.writes.sr_series_number == 996  # declared, none other's
    assert sr.StudyInstanceUID == study.study_uid
    numbers = sr_numbers(sr.ContentSequence)
    assert len(numbers["Percentile of SUVbw inside the body"]) == 2
    (maximum, mean) = sorted(numbers["SUVbw"], reverse=True)
    assert maximum > mean > 0
    with node.database.session() as session:
        (job,) = session.scalars(select(Job)).all()
        assert (job.pipeline, job.state) == ("suv_statistics", JobState.SUCCEEDED)
        assert job.series_uids == study.pet_series_uid  # the CT was not selected
        assert "SUV statistics of" in job.summary
