"""check-config runs exactly the start-up checks of serve: a configuration it passes is one serve accepts, and
what serve refuses, check-config reports the same way, naming the key and the file (weights without their card,
TLS files that cannot be read, ports taken, a database that does not answer or holds a newer schema, folders that
cannot be written). check-config creates nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy import text

from immunode.cli import main as cli_main
from immunode.startup import check_startup
from storage.database import Database
from tests.certificates import make_certificates
from tests.conftest import REPO, free_port


def _write(tmp_path: Path, settings) -> Path:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return config


def _serve_refusal(config: Path, cwd: Path) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "immunode.cli", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    return completed.stderr


def test_what_serve_refuses_check_config_reports_naming_key_and_file(tmp_path: Path, make_settings, capsys) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    missing_weights = tmp_path / "weights" / "cytact.pt"
    absent_certificate = tmp_path / "tls" / "node.crt"
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    settings = make_settings(
        node={
            "port": busy,
            "tls": {
                "port": free_port(),
                "certificate": str(absent_certificate),
                "private_key": str(absent_certificate.with_suffix(".key")),
                "client_certificates": "none",
            },
        },
        monitoring={"port": busy},
        pipelines={"pet_quant": {"cytact": {"weights": str(missing_weights)}}},
        logging={"file": str(not_a_folder / "node.log")},
        database={"url": f"postgresql+psycopg://immunode@127.0.0.1:{free_port()}/immunode"},
    )
    config = _write(tmp_path, settings)
    expected = [
        f"pipelines.pet_quant.cytact.weights: model card {missing_weights}.card.json cannot be read",
        f"node.tls.certificate: cannot read {absent_certificate}: No such file or directory",
        f"node.port: cannot listen on 127.0.0.1:{busy}: Address already in use (is a node already running?)",
        f"monitoring.port: cannot listen on 127.0.0.1:{busy}: Address already in use",
        f"logging.file: {not_a_folder} is not a folder",
        "database.url: cannot reach the database postgresql+psycopg://immunode@127.0.0.1:",
    ]
    try:
        assert cli_main(["check-config", str(config)]) == 2
        captured = capsys.readouterr()
        assert "serve would refuse to start" in captured.out
        for problem in expected:
            assert f"error: {problem}" in captured.err, problem
        refused = _serve_refusal(config, tmp_path)
    finally:
        taken.close()
    assert "6 start-up problem(s)" in refused
    for problem in expected:
        assert problem in refused, problem
    assert not (tmp_path / "store").exists()  # neither created the storage root (nor an index in it)


def test_a_configuration_check_config_passes_starts(tmp_path: Path, make_settings, capsys, start_node) -> None:
    settings = make_settings(monitoring={"port": free_port()})
    config = _write(tmp_path, settings)
    assert cli_main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{config}: OK" in out and "pipelines.pet_quant.cytact.weights: immunode-cytact-cnn" in out
    assert "pipeline ct_radiomics: analyses CT series; reads PT series: lesions from the PET" in out
    assert "writes series SEG 992, SR 993; keeps FeatureExtractionRecord in radiomics_extractions" in out
    assert f"index: none yet at {settings.storage.root.resolve() / 'index.sqlite3'}" in out
    assert not settings.storage.root.exists()  # check-config created nothing
    node = start_node(settings)
    assert node.port == settings.node.port and node.monitoring_port == settings.monitoring.port
    # Checked again while the node runs: its ports are taken, which --skip-ports leaves out.
    assert cli_main(["check-config", str(config)]) == 2
    assert "is a node already running?" in capsys.readouterr().err
    assert cli_main(["check-config", str(config), "--skip-ports"]) == 0
    assert "index: schema" in capsys.readouterr().out


def test_an_index_of_a_newer_version_is_refused(tmp_path: Path, make_settings) -> None:
    settings = make_settings()
    database = Database(settings.database_url)
    with database.transaction() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    database.dispose()
    checked = check_startup(settings, ports=False)
    assert any("database.url" in p and "schema 0999, unknown to this version" in p for p in checked.problems)


def test_warnings_name_what_will_go_wrong(tmp_path: Path, make_settings, monkeypatch) -> None:
    settings = make_settings(
        peers={"allowed": []},
        routing={"rules": [{"name": "ct", "pipeline": "ct_radiomics"}]},
        storage={"retention": {"max_age_days": 30}},
    )
    warnings = check_startup(settings, ports=False).warnings
    assert any("peers.allowed is empty" in w and "every association is rejected" in w for w in warnings)
    assert any(
        "storage.retention.max_age_days (30) is shorter than the ct_radiomics pairing window (112 days)" in w
        for w in warnings
    )
    monkeypatch.setattr("immunode.startup._in_container", lambda: True)
    loopback = check_startup(make_settings(), ports=False).warnings
    assert any("only loopback addresses (127.0.0.1)" in w and "in a container" in w for w in loopback)


def test_the_tls_start_up_error_names_the_file(tmp_path: Path, make_settings) -> None:
    certs = make_certificates(tmp_path / "certs")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    cases = [
        (
            {"certificate": certs.server.certificate, "private_key": tmp_path / "absent.key"},
            f"node.tls.private_key: cannot read {tmp_path / 'absent.key'}: No such file or directory",
        ),
        (
            {"certificate": garbage, "private_key": certs.server.key},
            f"node.tls.certificate, private_key: {garbage} with {certs.server.key}: not a PEM certificate",
        ),
        (
            {
                "certificate": certs.server.certificate,
                "private_key": certs.server.key,
                "ca_certificates": garbage,
                "client_certificates": "required",
            },
            f"node.tls.ca_certificates: {garbage}: no PEM CA certificate",
        ),
    ]
    for tls, expected in cases:
        values = {"client_certificates": "none", **{k: str(v) for k, v in tls.items()}}
        (problem,) = check_startup(make_settings(node={"tls": values}), ports=False).problems
        assert problem.startswith(expected), problem
    destination = {
        "name": "pacs",
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": 104,
        "tls": {"ca_certificates": str(tmp_path / "pacs-ca.crt")},
    }
    (problem,) = check_startup(make_settings(destinations=[destination]), ports=False).problems
    assert (
        problem
        == f"destinations.0.tls.ca_certificates: cannot read {tmp_path / 'pacs-ca.crt'}: No such file or directory"
    )
