"""Configuration: the shipped file, the embedded defaults and errors that name their key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.states import SegEncoding
from immunode.cli import main as cli_main
from immunode.config import ConfigError, Settings, load_settings, parse_settings
from tests.conftest import REPO


def test_shipped_config_equals_the_embedded_defaults() -> None:
    assert load_settings(REPO / "config.yaml") == Settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node:\n  prot: 104\n", "node.prot: unknown key"),
        ("node:\n  port: 70000\n", "node.port: Input should be less than or equal to 65535"),
        ("node:\n  ae_title: 'MUCH_TOO_LONG_AE_TITLE'\n", "node.ae_title"),
        ("peers:\n  allowed:\n    - ae_title: A\n      host: not-an-ip\n", "peers.allowed.0.host"),
        ("routing:\n  rules:\n    - name: r\n      pipeline: unknown\n", "routing.rules.0.pipeline"),
        (
            "routing:\n  rules:\n    - name: r\n      pipeline: pet_quant\n"
            "      series:\n        series_description: '('\n",
            "routing.rules.0.series.series_description",
        ),
        ("pipelines:\n  pet_quant:\n    background_inner_mm: 30\n", "pipelines.pet_quant"),
        (
            "destinations:\n  - {name: a, ae_title: A, host: h, port: 1}\n"
            "  - {name: a, ae_title: B, host: h, port: 2}\n",
            "destination names must be unique",
        ),
        (
            "destinations:\n  - {name: a, ae_title: A, host: h, port: 1}\n"
            "routing:\n  rules:\n    - {name: r, pipeline: pet_quant, destinations: [a, b]}\n",
            "routing.rules.0.destinations: unknown destination(s) 'b' (configured: a)",
        ),
        ("destinations:\n  - {name: w, protocol: dicomweb}\n", "destinations.0.dicomweb.url: Field required"),
        ("destinations:\n  - {name: w, protocol: dicomwep, url: 'http://h'}\n", "destinations.0: Input tag 'dicomwep'"),
        (
            "destinations:\n  - {name: w, protocol: dicomweb, url: 'https://user:pw@h/dicom-web'}\n",
            "destinations.0.dicomweb.url: Value error, credentials do not belong in the URL",
        ),
        (
            "destinations:\n  - {name: w, protocol: dicomweb, url: 'http://pacs.example.org/dicom-web',"
            " auth: {bearer_token: {env: TOKEN}}}\n",
            "would send the credentials in clear",
        ),
        (
            "destinations:\n  - {name: w, protocol: dicomweb, url: 'https://h', auth: {username: u}}\n",
            "destinations.0.dicomweb.auth: Value error, username and password go together",
        ),
        (
            "destinations:\n  - {name: w, protocol: dicomweb, url: 'https://h',"
            " auth: {bearer_token: {file: /t, env: T}}}\n",
            "destinations.0.dicomweb.auth.bearer_token: Value error, give exactly one of file or env",
        ),
        ("node:\n  dicomweb: {port: 8105}\n", "node.dicomweb: Value error, no client may store"),
        (
            "node:\n  dicomweb:\n    clients: [{name: A, username: u}]\n",
            "node.dicomweb.clients.0: Value error, username and password_hash go together",
        ),
        (
            "query_retrieve: {protocol: dicomweb, url: 'ftp://h'}\n",
            "query_retrieve.dicomweb.url: Value error, an http:// or https:// URL with a host",
        ),
        (
            "destinations:\n  - {name: a, ae_title: A, host: h, port: 1, seg_encoding: PNG}\n",
            "destinations.0.dimse.seg_encoding: Input should be 'FRACTIONAL', 'LABELMAP' or 'BINARY'",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("node: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert expected in str(raised.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("node:\n  port: 0\n  colour: blue\nstorage:\n  min_free_mb: -1\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert "3 problem(s)" in message
    assert "node.port" in message and "node.colour: unknown key" in message and "storage.min_free_mb" in message


def test_check_config_command(tmp_path: Path, capsys) -> None:
    assert cli_main(["check-config", str(REPO / "config.yaml"), "--skip-ports"]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("dispatch:\n  max_attempts: 0\n")
    assert cli_main(["check-config", str(bad)]) == 2
    assert "dispatch.max_attempts" in capsys.readouterr().err


def test_serve_with_invalid_config_stops_with_message_not_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  ae_titel: X\n")
    completed = subprocess.run(
        [sys.executable, "-m", "immunode.cli", "--config", str(bad), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert "node.ae_titel: unknown key" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_node_refuses_to_start_with_weights_that_do_not_match_their_card(tmp_path: Path, make_settings) -> None:
    from immunode.service import Node
    from models.cards import card_path
    from models.serving import SHIPPED_CYTACT_WEIGHTS

    tampered = tmp_path / SHIPPED_CYTACT_WEIGHTS.name
    tampered.write_bytes(SHIPPED_CYTACT_WEIGHTS.read_bytes()[:-1])
    card_path(tampered).write_text(card_path(SHIPPED_CYTACT_WEIGHTS).read_text())
    settings = make_settings(pipelines={"pet_quant": {"cytact": {"weights": str(tampered)}}})
    with pytest.raises(ConfigError, match="pipelines.pet_quant.cytact.weights: .*refused"):
        Node(settings)


def test_dimse_and_dicomweb_destinations_side_by_side(tmp_path: Path) -> None:
    """DIMSE destinations are written as before (no protocol key); DICOMweb ones say `protocol: dicomweb`; rules name
    the destinations their results go to, others get every destination that receives results."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "destinations:\n"
        "  - {name: pacs, ae_title: PACS, host: 10.0.0.5, port: 104}\n"
        "  - {name: archive, ae_title: ARCH, host: 10.0.0.6, port: 104, receives_results: false,\n"
        "     seg_encoding: BINARY}\n"
        "  - name: cloud\n    protocol: dicomweb\n    url: https://dicom.example.org/v2/\n    seg_encoding: LABELMAP\n"
        "    auth: {bearer_token: {file: /run/secrets/token}}\n    tls: {ca_certificates: /etc/ssl/hospital.pem}\n"
        "query_retrieve: {protocol: dicomweb, url: 'http://127.0.0.1:8042/dicom-web', name: ORTHANC}\n"
        "routing:\n  rules:\n"
        "    - {name: pet, pipeline: pet_quant, destinations: [cloud, archive]}\n"
        "    - {name: ct, pipeline: ct_radiomics}\n"
    )
    settings = load_settings(path)
    assert [d.protocol for d in settings.destinations] == ["dimse", "dimse", "dicomweb"]
    assert settings.destinations[2].url == "https://dicom.example.org/v2"  # no trailing slash
    assert settings.query_retrieve.protocol == "dicomweb"
    assert [d.name for d in settings.result_destinations("pet")] == ["archive", "cloud"]  # named: even archive
    assert [d.name for d in settings.result_destinations("ct")] == ["pacs", "cloud"]  # the default
    assert [d.name for d in settings.result_destinations("a rule since removed")] == ["pacs", "cloud"]
    # Each job writes the SEG encodings its destinations asked for (the default FRACTIONAL for `pacs`).
    assert settings.seg_encodings("pet") == (SegEncoding.LABELMAP, SegEncoding.BINARY)
    assert settings.seg_encodings("ct") == (SegEncoding.FRACTIONAL, SegEncoding.LABELMAP)
    assert parse_settings(settings.model_dump(mode="json")) == settings  # round trip (workers get it by pickle)


def test_start_up_names_an_unreadable_secret_or_tls_file(tmp_path: Path, make_settings, monkeypatch) -> None:
    from immunode.service import Node

    monkeypatch.delenv("IMMUNODE_NO_SUCH_TOKEN", raising=False)
    web = {"name": "cloud", "protocol": "dicomweb", "url": "https://dicom.example.org"}
    cases = [
        ({**web, "auth": {"bearer_token": {"env": "IMMUNODE_NO_SUCH_TOKEN"}}}, "destinations.0.auth: environment"),
        ({**web, "auth": {"username": "u", "password": {"file": str(tmp_path / "nope")}}}, "destinations.0.auth"),
        ({**web, "tls": {"ca_certificates": str(tmp_path / "missing-ca.pem")}}, "destinations.0.tls"),
    ]
    for destination, expected in cases:
        with pytest.raises(ConfigError) as raised:
            Node(make_settings(destinations=[destination]))
        assert expected in str(raised.value) and "dicom.example.org" not in str(raised.value)
    settings = make_settings(
        node={"dicomweb": {"accept_any": True, "tls": {"certificate": str(tmp_path / "c.pem"),
                                                        "private_key": str(tmp_path / "k.pem")}}}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="node.dicomweb.tls"):
        Node(settings)


def _model_types(annotation: object) -> list[type]:
    import typing

    from pydantic import BaseModel

    if typing.get_origin(annotation) is None:
        return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
    return [model for argument in typing.get_args(annotation) for model in _model_types(argument)]


def _leaf_keys(model: type, prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        nested = _model_types(field.annotation)
        keys |= set().union(*(_leaf_keys(sub, path) for sub in nested)) if nested else {path}
    return keys


def test_every_configuration_key_is_in_the_reference() -> None:
    """docs/configuration.md names every key an administrator can set: each leaf key (lists' items included) is
    in backticks on a row of its top-level section, as `section.key`, or grouped with it (`a.b`, `c`)."""
    import re

    rows = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines()
    keys = _leaf_keys(Settings)
    assert {"node.port", "pipelines.pet_quant.beta", "destinations.seg_encoding"} <= keys  # the walk reaches them
    undocumented = sorted(
        key
        for key in keys
        if not any(
            f"`{key.split('.')[0]}" in row and re.search(rf"`[^`]*\b{re.escape(key.split('.')[-1])}\b[^`]*`", row)
            for row in rows
        )
    )
    assert undocumented == []
