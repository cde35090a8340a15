"""The deployment files cannot be run here (no Docker): their content is checked instead. The compose file
runs two nodes, PostgreSQL, a Dask scheduler with two workers and Orthanc; the nodes' configuration is valid;
the image's health check asks the liveness endpoint."""

from __future__ import annotations

import yaml

from immunode.config import parse_settings
from tests.conftest import REPO


def test_the_compose_file_and_the_node_configuration() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "dask-scheduler", "dask-worker-1", "dask-worker-2", "node1", "node2", "orthanc"} <= set(
        services
    )
    # Nodes and workers mount the same storage root.
    assert "store:/var/lib/immunode" in services["node1"]["volumes"]
    assert "store:/var/lib/immunode" in services["dask-worker-2"]["volumes"]
    settings = parse_settings(yaml.safe_load((REPO / "deploy" / "node.yaml").read_text()), "deploy/node.yaml")
    assert settings.workers.engine == "dask" and settings.database_url.startswith("postgresql")
    assert settings.monitoring.host == "0.0.0.0" and settings.monitoring.username
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    for package in ("common", "research", "dicom_node", "pipelines", "models", "storage", "immunode"):
        assert f"COPY {package} ./{package}" in dockerfile
